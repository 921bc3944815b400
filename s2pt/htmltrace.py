"""One run of a scenario, as the pieces of its panels and as a self-contained page.

The Python half of the one renderer behind both the
:class:`s2pt.widgets.Interleave` widget and ``python -m s2pt replay ...
--html out.html``.  Python describes each step's panels as pieces of HTML
(:class:`Frames`); one client-side script, ``s2pt/trace_page/trace.js``
(package data, with ``trace.css``), puts a step's panels together and
steps through them, in the page and in the widget alike.

* :class:`Recorder` steps a :class:`~s2pt.sim.world.World` and keeps, per
  step, what the panels need that the World forgets: the locks, RCU readers,
  grace periods and queued callbacks after each step (for the timeline), and
  which CPUs touched which table entries (the entries raced on).
* The pieces: :func:`cpu_parts` (one column per actor, its kernel call
  stack outermost first, the next operation highlighted, or why it cannot
  run), :func:`shared_state` (the rows: entries raced on, table pages and
  their ``page_count``, locks and holders, RCU readers, grace periods and
  callbacks, TLB and walk-cache contents; trace.js builds the table and
  highlights what the last step changed), :func:`timeline_svg` (one lane per
  actor, RCU read-side sections and grace periods as bands, lock holds as
  bars, the violation in red), :func:`tree_html` (``pgt.draw`` of the
  tables the CPUs touched, each walker on its next entry, LOCKED entries,
  unlinked, freed and reused pages marked, the violation's entry crossed in
  red, at full size; every untouched subtree one line that opens on a
  click) and :func:`verdict` (one sentence).
* :class:`Frames`: a run's steps as data -- each distinct piece stored once
  (a tree picture only when the tree or a walker's mark changed),
  shared-state rows as deltas (a step stores only the rows it changed).
* :func:`trace_html` / :func:`write_html`: the whole run as one file with
  the data gzipped (the browser unpacks it with ``DecompressionStream``),
  trace.js, trace.css and SVG inline -- no network, no fonts, no kernel --
  with Prev / Next / Play (skipping steps that change no shared state) and
  a jump to the violation.  A thousand-step counterexample is about 100 KB.

Nothing here knows a scenario by name: actors, locks, TLBs and table pages
are read off the World, so a scenario added later is shown the same way.
Pictures go through :mod:`s2pt.render` (``dot`` when present, else a
pip-installed Graphviz), as every drawing in the course does.
"""

from __future__ import annotations

import base64
import gzip
import html as _html
import json
import re
from importlib import resources
from pathlib import Path
from string import Template

from .descriptor import KVM_INVALID_PTE_LOCKED
from .errors import KernelBug, S2ptError
from .explorer import replay_command
from .invariants import reachable_tables
from .ops import OPS, desc_text, loc_text, op_text, result_text
from .render import Drawing, responsive_svg
from .sim.search import format_schedule
from .sim.state import PAGE_STATE
from .sim.world import World, stack_names

__all__ = ["Recorder", "Frames", "record", "verdict", "cpus_html", "shared_state",
           "timeline_svg", "timeline", "Timeline", "grace_periods", "tree_drawing", "tree_svg",
           "tree_html", "step_text", "event_html", "trace_html", "write_html", "asset", "CSS"]

#: Operations on one table entry (the entry a walker is at).
_ENTRY_OPS = frozenset(n for n, k in OPS.items()
                       if k.memory in ("read", "write", "atomic") and n != "page_count")


def _esc(s) -> str:
    return _html.escape(str(s), quote=True)


# ---------------------------------------------------------------------------
# Recording a run
# ---------------------------------------------------------------------------

def sync_of(world: World) -> tuple:
    """Locks, RCU readers, grace-period waits, queued callbacks and hardware
    walks in flight, now: ``(locks, readers, gp_waiters, callbacks, hw)``."""
    m = world.machine
    locks = tuple(sorted((name, w, tuple(sorted(r))) for name, (w, r) in m.locks.items()))
    cbs = tuple((tuple(sorted(waits)), getattr(fn, "__name__", str(fn)), args)
                for waits, fn, args in m.callbacks)
    return (locks, tuple(sorted(m.nesting.items())),
            tuple(sorted((c, tuple(sorted(w))) for c, w in m.gp_waiters.items())),
            cbs, tuple(sorted(m.hw_inflight)))


class Recorder:
    """A World being stepped, with the history the panels need.

    ``sync[k]`` is :func:`sync_of` after ``k`` steps (``sync[0]``: before
    any); ``touched[ptep]`` the actors that accessed that entry; ``locked_by``
    who last stored KVM_INVALID_PTE_LOCKED where.  ``schedule`` is the CPU of
    every step so far.  Build one on a fresh World (``Recorder(w)``) or
    replay a schedule (:meth:`replay`)."""

    def __init__(self, world: World):
        if world.nsteps:
            raise S2ptError(f"Recorder: the World has already taken {world.nsteps} steps; "
                            f"give it a fresh one (world.again()) or use Recorder.replay")
        if not world.record:
            raise S2ptError("Recorder: the World must record its events (record=True)")
        self.world = world
        self.sync = [sync_of(world)]
        self.touched: dict = {}
        self.locked_by: dict = {}
        self.locks_seen: dict = {}            # lock name -> None, in order first taken
        self.schedule: list = []
        #: The last tree drawn and what it was drawn from (tree_drawing).
        self.drawings: dict = {}

    @classmethod
    def replay(cls, world: World, schedule=()) -> "Recorder":
        """A fresh copy of ``world`` stepped along ``schedule`` (CPU ids); the
        run stops early if it ends."""
        rec = cls(world.again(record=True))
        for cpu in schedule:
            if rec.world.outcome is not None:
                break
            rec.step(cpu)
        return rec

    def step(self, cpu: int):
        """``world.step(cpu)``, recorded; returns the Event."""
        w = self.world
        ev = w.step(cpu)
        self.schedule.append(cpu)
        op = ev.op
        if op[0] in _ENTRY_OPS:
            self.touched.setdefault(op[1], set()).add(cpu)
            if OPS[op[0]].stores:
                new = op[3] if op[0] == "cmpxchg" else op[2]
                if new == KVM_INVALID_PTE_LOCKED:
                    self.locked_by[op[1]] = cpu
        s = sync_of(w)
        for name, _, _ in s[0]:
            self.locks_seen.setdefault(name, None)
        self.sync.append(s)
        return ev

    @property
    def steps(self) -> int:
        return len(self.schedule)

    def schedule_text(self) -> str:
        return format_schedule(self.schedule)


# ---------------------------------------------------------------------------
# The verdict
# ---------------------------------------------------------------------------

def verdict(world: World) -> str:
    """One sentence: what went wrong, where and when, and who freed the page
    -- or that nothing did (yet)."""
    vs = world.violations
    if not vs:
        if world.outcome == "done":
            return (f"No violation: every CPU finished after {world.nsteps} steps and the "
                    f"end-of-run checks passed.")
        return "No violation so far."
    v = vs[0]
    more = ""
    if len(vs) > 1:
        more = f" (and {len(vs) - 1} more: {', '.join(x.kind for x in vs[1:])})"
    if v.step is None:
        return f"{v.kind} at the end of the run: {v.explanation.rstrip('.')}{more}."
    if v.kind in ("use-after-free", "double-free") and v.cpu is not None:
        ev = world.events[v.step] if v.step < len(world.events) else None
        page = _victim_page(world, v)
        freed = world.frees.get(page >> world.pgt.page_shift) if page is not None else None
        if ev is not None and page is not None and freed is not None and freed[0] != v.step:
            k = OPS.get(ev.op[0])
            verb = (k.verb if k is not None and k.verb else f"did {ev.op[0]} on")
            if v.kind == "double-free":
                verb = "freed"
            return (f"{v.kind}: {v.actor} {verb} table page {page:#x} at step {v.step} (in "
                    f"{v.function}()), after {world.actors[freed[1]].name} freed it at step "
                    f"{freed[0]} (in {freed[2]}()){more}.")
    where = f"at step {v.step}" + (f" on {v.actor} in {v.function}()" if v.actor else "")
    return f"{v.kind} {where}: {v.explanation.rstrip('.')}{more}."


def _victim_page(world, v):
    import re
    m = re.search(r"(?:table page|page|of) (0x[0-9a-f]+)", v.message)
    if m is None:
        return None
    return int(m.group(1), 16) & ~(world.pgt.page_size - 1)


# ---------------------------------------------------------------------------
# CPU columns
# ---------------------------------------------------------------------------

def step_text(world: World, ev) -> str:
    """``op = result`` for one event, as the race diagram writes it."""
    s = op_text(ev.op, world.view)
    r = result_text(ev.op, ev.result, world.view)
    return f"{s} = {r}" if r else s


def _event_parts(world: World, ev) -> tuple:
    """(actor name, function, step text, the rest) of the event line, each
    escaped HTML; the page stores them apart (the step text once, shared
    with the CPU column) and joins them as :func:`event_html` does."""
    rest = ""
    if ev.note:
        rest += f'<div class="note">→ {_esc(ev.note)}</div>'
    for kind, msg in ev.violations:
        rest += f'<div class="why">!! {_esc(kind)}: {_esc(msg)}</div>'
    return (_esc(world.actors[ev.cpu].name), _esc(ev.function),
            _esc(step_text(world, ev)), rest)


def event_html(world: World, ev) -> str:
    """The line saying what step ``ev`` did (``None``: before the first
    step), with its note and any violation it raised."""
    if ev is None:
        return "before the first step"
    name, fn, text, rest = _event_parts(world, ev)
    # The page's JavaScript writes the same markup (EVENT in _JS).
    return f"step {ev.index}: <b>{name}</b> in {fn}(): {text}{rest}"


def cpu_state(world: World, i: int) -> dict:
    """What actor ``i``'s column shows: name, role, stack (kernel functions,
    outermost first), next operation, and why it cannot run (or None)."""
    a = world.actors[i]
    why = world.blocked(i)
    gen = world.cpus[i]
    return {"name": a.name, "role": a.role, "finished": gen is None,
            "stack": stack_names(gen) if gen is not None else (),
            "next": world.pending_text(i) if gen is not None else "",
            "blocked": None if why in (None, "finished") else why,
            "enabled": gen is not None and why is None and world.outcome is None}


def cpu_parts(world: World, i: int, last=None) -> list:
    """Actor ``i``'s column as HTML pieces (joined, the column): a page
    stores each distinct piece once, and a CPU's stack rarely changes."""
    c = cpu_state(world, i)
    cls = "cpu" + (" fin" if c["finished"] else " blk" if c["blocked"] else "")
    moved = last is not None and last.cpu == i
    if moved:
        cls += " moved"
    parts = [f'<div class="{cls}"><div class="cname">{_esc(c["name"])} '
             f'<span class="cid">CPU {i}</span></div>'
             f'<div class="role">{_esc(c["role"])}</div>']
    if moved:                   # always parts[1]: the page rebuilds it (see trace_html)
        parts.append(_last_html(last.index, _esc(step_text(world, last))))
    if c["finished"]:
        parts.append('<div class="state">finished</div></div>')
        return parts
    parts.append('<ol class="stack">' + "".join(
        f'<li style="padding-left:{min(k, 12) * 4}px">{_esc(fn)}'
        f'{"()" if " " not in fn else ""}</li>' for k, fn in enumerate(c["stack"])) + "</ol>")
    parts.append(f'<div class="next">next: <code>{_esc(c["next"])}</code></div>')
    if c["blocked"]:
        parts.append(f'<div class="why">cannot run: {_esc(c["blocked"])}</div>')
    parts.append("</div>")
    return parts


def _last_html(index: int, text: str) -> str:
    # The page's JavaScript writes the same markup (LAST in _JS).
    return f'<div class="last">step {index}: {text}</div>'


def cpus_html(world: World, last=None) -> list:
    """One HTML column per actor (see :func:`cpu_state`); ``last`` is the
    event just performed (its CPU's column says so)."""
    return ["".join(cpu_parts(world, i, last)) for i in range(world.n)]


# ---------------------------------------------------------------------------
# Shared state
# ---------------------------------------------------------------------------

def _names(world, cpus) -> str:
    return ", ".join(world.actors[c].name if 0 <= c < world.n else f"CPU {c}"
                     for c in sorted(cpus)) or "none"


def _fmt_arg(a) -> str:
    return f"{a:#x}" if isinstance(a, int) and not isinstance(a, bool) and a > 9 else \
        getattr(a, "__name__", None) or type(a).__name__ if not isinstance(a, (int, str)) \
        else str(a)


def shared_state(rec: Recorder) -> list:
    """``[(key, section, label, value)]``: the shared state now, in a stable
    order.  ``key`` identifies a row across steps (for highlighting what
    changed).  A table page's row gives its ``page_count`` (1 + its valid
    entries), and under a scheme with walker hooks its walker count too."""
    w = rec.world
    pgt = w.pgt
    mm = pgt.mm
    view = w.view
    rows = []
    # Entries: those two or more actors touched (raced on), then those one
    # actor stored to.
    raced = [p for p, who in rec.touched.items() if len(who) > 1]
    for ptep in sorted(raced):
        page = mm.pages.get(ptep >> mm.page_shift)
        lvl = view.levels.get(ptep >> mm.page_shift)
        if page is None:
            continue
        if page.freed:
            val = "(in a freed page: poisoned)"
        else:
            val = desc_text(view, page.table.item((ptep & (mm.page_size - 1)) >> 3), lvl)
        rows.append((("entry", ptep), "entries raced on",
                     f"{loc_text(view, ptep)} @{ptep:#x} ({_names(w, rec.touched[ptep])})", val))
    # Table pages: touched, unlinked or freed ones (not every PGD page).
    try:
        reach = {p.pfn for p, _ in reachable_tables(pgt)}
    except KernelBug:
        reach = set()
    # A scheme with walker hooks (refcount) keeps a second count: show both.
    walkers = pgt.mm_ops.table_enter is not None
    pfns = {p >> mm.page_shift for p in rec.touched} | set(w.frees)
    pfns |= {pfn for pfn in view.levels if pfn not in reach and pfn in mm.pages}
    for pfn in sorted(pfns):
        page = mm.pages.get(pfn)
        if page is None:
            continue
        lvl = view.levels.get(pfn)
        freed = w.frees.get(pfn)
        if page.freed:
            how = (f"freed at step {freed[0]} by {w.actors[freed[1]].name} in {freed[2]}()"
                   if freed else "free")
        elif freed is not None:
            how = f"reused: freed at step {freed[0]}, allocated again, page_count {page.refcount}"
        elif pfn in reach:
            how = f"linked, page_count {page.refcount}"
        else:
            how = f"unlinked, not freed yet, page_count {page.refcount}"
        if walkers and not page.freed:
            # The refcount schemes' second count (s2pt.memory), never page_count's.
            how += f", walker count {page.walkers}"
        name = f"L{lvl} table" if lvl is not None else "table page"
        rows.append((("page", pfn), "table pages", f"{name} {page.pa:#x}", how))
    # Locks, RCU, grace periods, callbacks, walks in flight.
    locks, readers, gps, cbs, hw = rec.sync[-1]
    held = {name: (wr, rd) for name, wr, rd in locks}
    for name in rec.locks_seen:
        wr, rd = held.get(name, (None, ()))
        val = (f"held for write by {_names(w, [wr])}" if wr is not None else
               f"held for read by {_names(w, rd)}" if rd else "free")
        rows.append((("lock", name), "locks", name, val))
    rows.append((("rcu",), "RCU", "read-side sections",
                 ", ".join(f"{w.actors[c].name} (depth {n})" for c, n in readers) or "none"))
    for c, left in gps:
        rows.append((("gp", c), "RCU", f"{w.actors[c].name}: synchronize_rcu()",
                     f"waits for {_names(w, left)}" if left else "grace period over"))
    for k, (waits, fn, args) in enumerate(cbs):
        what = ", ".join(_fmt_arg(a) for a in args[1:2]) if len(args) > 1 else ""
        rows.append((("cb", k), "RCU", f"callback {k + 1}: {fn}({what})",
                     f"waits for {_names(w, waits)}" if waits else "ready to run"))
    if hw:
        rows.append((("hw",), "MMU", "hardware walks in flight", _names(w, hw)))
    # TLBs and walk caches (any observer that has them).
    for o in w.stateful:
        if not (hasattr(o, "entries") and hasattr(o, "walk") and hasattr(o, "vcpu")):
            continue
        ent, wc = o.entries, o.walk
        leaf = "; ".join(f"L{lvl} {base:#x}: {desc_text(view, pte, lvl)}"
                         for (lvl, base), pte in sorted(ent.items())[:6])
        if len(ent) > 6:
            leaf += f"; ... {len(ent) - 6} more"
        walk = "; ".join(f"L{lvl} {base:#x} -> table {t:#x}" for (lvl, base), t in sorted(wc.items())[:6])
        if len(wc) > 6:
            walk += f"; ... {len(wc) - 6} more"
        rows.append((("tlb", o.vcpu), "TLBs", f"vCPU{o.vcpu} TLB", leaf or "empty"))
        rows.append((("walk", o.vcpu), "TLBs", f"vCPU{o.vcpu} walk cache", walk or "empty"))
    return rows


# trace.js builds the table from these pieces (Trace.shared): a section's
# header and a row's cells, each pooled once.
def _sec_html(section) -> str:
    return f'<tr class="sec"><th colspan="2">{_esc(section)}</th></tr>'


def _cells_html(label, value) -> str:
    return f"<td>{_esc(label)}</td><td>{_esc(value)}</td>"


# ---------------------------------------------------------------------------
# The tree
# ---------------------------------------------------------------------------

def _touched_tables(rec: Recorder) -> set:
    """Table pages holding an entry some CPU accessed (the raced path)."""
    mask = ~(rec.world.pgt.page_size - 1)
    return {p & mask for p in rec.touched}


#: The fields of a table page a drawing shows besides its descriptors.
_PAGE_FIELDS = tuple(f for f in PAGE_STATE if f != "table")


def tree_drawing(rec: Recorder) -> Drawing:
    """``pgt.draw`` of the tables the run touched, with what it has done
    marked:

    * per entry, each walker about to access it ("vCPU1 next: READ_ONCE";
      the hardware walker's ``hw_read`` too), even in an unlinked or freed
      page, where a stale walker is the story;
    * LOCKED entries, and who locked them;
    * unlinked tables not yet freed (drawn detached), freed pages (a grey
      stub: who freed them and when), pages reused after a free;
    * once a checker fires, the entry (or page) of the violating step, with
      a ✖, its table drawn in red (``draw(alert=)``).

    Only those tables, the tables some CPU accessed and their ancestors are
    drawn; every other subtree is one "not drawn" row (and a line under the
    picture, :func:`tree_html`).
    """
    w = rec.world
    pgt, mm, view = w.pgt, w.pgt.mm, w.view
    marks, tables = {}, {}

    def label(pa, text, level=None):
        old = tables.get(pa)
        old_text = old[0] if isinstance(old, tuple) else old
        text = f"{old_text}; {text}" if old_text else text
        tables[pa] = (text, level) if level is not None else text

    def mark(ptep, text):
        marks[ptep] = f"{marks[ptep]}; {text}" if ptep in marks else text

    try:
        reach = {p.pfn: lvl for p, lvl in reachable_tables(pgt)}
    except KernelBug:
        reach = {}
    for pa in _touched_tables(rec):
        if pa >> mm.page_shift in reach and pa not in tables:
            tables[pa] = ""                   # drawn, no label of its own
    for pfn, (step, cpu, fn) in w.frees.items():
        page = mm.pages.get(pfn)
        if page is not None:
            label(page.pa, f"freed at step {step} by {w.actors[cpu].name}" if page.freed else
                  f"reused: allocated again after {w.actors[cpu].name} freed it at step {step}")
    for pfn, lvl in view.levels.items():
        page = mm.pages.get(pfn)
        if page is not None and not page.freed and pfn not in reach and pfn not in w.frees:
            label(page.pa, "unlinked, not freed yet", lvl)
    for i in range(w.n if w.outcome is None else 0):     # a finished run has no "next"
        op = w.pending[i]
        if w.cpus[i] is None or op is None or op[0] not in _ENTRY_OPS:
            continue
        if op[1] >> mm.page_shift in mm.pages:
            mark(op[1], f"{w.actors[i].name} next: {op_text(op, view).split('(')[0]}")
    for pfn in reach:
        page = mm.pages[pfn]
        hits = (page.table == KVM_INVALID_PTE_LOCKED).nonzero()[0]
        for idx in hits[:8].tolist():
            ptep = page.pa + idx * 8
            who = rec.locked_by.get(ptep)
            mark(ptep, "LOCKED" + (f" by {w.actors[who].name}" if who is not None else ""))
    alert = None
    v = next((v for v in w.violations if v.step is not None and v.step < len(w.events)), None)
    if v is not None:
        op = w.events[v.step].op
        what = f"{v.kind} at step {v.step}" + (f" ({v.actor})" if v.actor else "")
        if op[0] in _ENTRY_OPS and op[1] >> mm.page_shift in mm.pages:
            alert = op[1]
            mark(alert, what)
        else:
            page = _victim_page(w, v)
            if page is not None and page >> mm.page_shift in mm.pages:
                alert = page
                label(page, what)
    # A drawing is a function of the marks and labels above and of the table
    # pages' state: most steps only read, and their tree is the one before.
    key = (tuple(sorted(marks.items())), tuple(sorted(tables.items())), alert, pgt.mmu.vmid,
           tuple((pfn, p.table.tobytes()) + tuple([getattr(p, f) for f in _PAGE_FIELDS])
                 for pfn, p in mm.pages.items()))
    memo = rec.drawings
    if memo.get("key") == key:
        return memo["drawing"]
    m = w.machine
    saved = (list(m.violations), m.cpu)
    try:
        # bulk: runs of leaves are read straight from the pages, not one
        # operation each through the machine (a drawing is no part of the run).
        drawing = pgt.draw(marks=marks, tables=tables, alert=alert, max_tables=0,
                           max_children=0, bulk=True,
                           fold_note="untouched: listed under the picture")
        memo["key"], memo["drawing"] = key, drawing
        return drawing
    finally:
        # Drawing walks the tables through the machine; nothing it reads
        # may count as a step of the run.
        m.violations[:], m.cpu = saved[0], saved[1]


_SVG_CACHE: dict = {}


def tree_svg(rec: Recorder) -> str:
    """The tree picture as inline SVG at its own size, laid out top to
    bottom when left to right is too wide for the column (as every
    ``pgt.draw`` picture is: :class:`~s2pt.render.Drawing`); cached by its
    DOT source, so an unchanged tree is not laid out again."""
    d = tree_drawing(rec)
    svg = _SVG_CACHE.get(d.source)
    if svg is None:
        if len(_SVG_CACHE) > 512:
            _SVG_CACHE.clear()
        svg = _SVG_CACHE[d.source] = responsive_svg(d.svg())
    return svg


def _table_ipas(pgt) -> list:
    """(pa, level, ipa, parent pa) of every table below the PGD, parents first."""
    out = []
    stack = [(p, pgt.start_level, i << pgt.granule_shift[pgt.start_level - 1], None)
             for i, p in enumerate(pgt.pgd_pages)] if pgt.start_level else \
        [(p, 0, 0, None) for p in pgt.pgd_pages]
    mm = pgt.mm
    while stack:
        page, level, ipa, parent = stack.pop(0)
        if parent is not None:
            out.append((page.pa, level, ipa, parent))
        if level >= 3 or page.freed:
            continue
        for idx in ((page.table & 3) == 3).nonzero()[0].tolist():
            child = mm.pages.get((page.table.item(idx) & pgt.addr_mask) >> mm.page_shift)
            if child is not None:
                stack.append((child, level + 1, ipa + idx * pgt.granule_size[level], page.pa))
    return out


def tree_html(rec: Recorder) -> str:
    """The tree panel: the picture of the tables the run touched
    (:func:`tree_drawing`, at its own size: a wide tree scrolls), and each
    untouched subtree folded into one line that opens on a click (its
    entries, as ``vmprint`` lists them)."""
    w = rec.world
    pgt = w.pgt
    svg = tree_svg(rec)
    drawn = set(re.findall(r"<title>t([0-9a-f]+)</title>", svg))
    folds = []
    for pa, level, ipa, parent in _table_ipas(pgt):
        if f"{parent:x}" not in drawn and parent not in {p.pa for p in pgt.pgd_pages}:
            continue                          # inside a folded subtree: listed with it
        if f"{pa:x}" in drawn:
            continue
        size = pgt.granule_size[level - 1]
        page = pgt.mm.pages[pa >> pgt.page_shift]
        m = w.machine
        saved = (list(m.violations), m.cpu)
        try:
            body = pgt.vmprint(ipa=ipa, size=size, max_entries=64, bulk=True)
        finally:
            m.violations[:], m.cpu = saved[0], saved[1]
        folds.append(f"<details><summary>L{level} table PA {pa:#x}, IPA {ipa:#x}+, "
                     f"page_count {page.refcount}: no CPU touched it</summary>"
                     f"<pre>{_esc(body)}</pre></details>")
    return svg + "".join(folds)


# ---------------------------------------------------------------------------
# The timeline
# ---------------------------------------------------------------------------

_LANE = 26
_LEFT = 70
_WIDTH = 760
_COLOURS = ["#3b6fb6", "#d9822b", "#2a9d8f", "#8e5bb5", "#b5495b", "#6b8e23"]


def step_positions(events) -> list:
    """x of each step in [0, 1]: long runs of one CPU repeating one foldable
    operation (a walk reading 500 entries) are squeezed, as the race diagram
    folds them, so the few steps that matter get the room."""
    n = len(events)
    weights = []
    for k, ev in enumerate(events):
        prev = events[k - 1] if k else None
        nxt = events[k + 1] if k + 1 < n else None
        k_ = OPS.get(ev.op[0])
        inner = (k_ is not None and k_.fold and prev is not None and nxt is not None
                 and prev.cpu == ev.cpu == nxt.cpu and prev.op[0] == ev.op[0] == nxt.op[0]
                 and not ev.violations)
        weights.append(0.04 if inner else 1.0)
    total = sum(weights) or 1.0
    xs, acc = [], 0.0
    for wgt in weights:
        xs.append(acc / total)
        acc += wgt
    return xs + [1.0]


def grace_periods(rec: Recorder) -> list:
    """The grace periods of the recorded run, from its sync history: one dict
    per ``call_rcu()`` callback and per ``synchronize_rcu()`` wait, with
    ``kind`` ("call_rcu" or "synchronize_rcu"), ``cpu`` (who started it; for
    a callback, the actor that queued it), ``start`` (the first step after
    it began), ``end`` (the first step after which it no longer waits for
    anyone: the grace period is over; None if it never ended),
    ``waited_for`` (actor ids of the read-side sections it waited for: those
    in progress when it started), ``invoked`` (for a callback: the first
    step after which it is no longer queued, i.e. the callback thread took
    it; else None) and ``fn`` (the callback's name).

    Steps count as the timeline's: ``start == k`` means "after k steps"."""
    w = rec.world
    n = len(rec.sync) - 1
    out = []
    # Callbacks: identified by (fn, args); queued by the CPU of the step
    # just before they first appear.
    seen: dict = {}
    for k in range(n + 1):
        cbs = rec.sync[k][3]
        present = set()
        for waits, fn, args in cbs:
            key = (fn, args)
            present.add(key)
            g = seen.get(key)
            if g is None:
                g = seen[key] = {"kind": "call_rcu", "fn": fn,
                                 "cpu": w.events[k - 1].cpu if k else None,
                                 "start": k, "end": None, "invoked": None,
                                 "waited_for": tuple(sorted(waits))}
                out.append(g)
            if not waits and g["end"] is None:
                g["end"] = k
        for key, g in seen.items():
            if key not in present and g["invoked"] is None and k > g["start"]:
                g["invoked"] = k
                if g["end"] is None:
                    g["end"] = k
    # synchronize_rcu(): gp_waiters (cpu, readers still awaited).
    open_: dict = {}
    for k in range(n + 1):
        now = dict(rec.sync[k][2])
        for c, left in now.items():
            g = open_.get(c)
            if g is None:
                g = open_[c] = {"kind": "synchronize_rcu", "fn": "synchronize_rcu", "cpu": c,
                                "start": k, "end": None, "invoked": None,
                                "waited_for": tuple(sorted(left))}
                out.append(g)
            if not left and g["end"] is None:
                g["end"] = k
        for c in [c for c in open_ if c not in now]:
            g = open_.pop(c)
            if g["end"] is None:
                g["end"] = k
    out.sort(key=lambda g: g["start"])
    return out


#: The timeline's colours, named once (the legend reads them too).
_READER, _GP_WAIT, _QUEUED, _GRACE = "#c8f0c8", "#ffd8a8", "#ffe9c7", "#f4a261"
_TOP = 14          # the row above the lanes for grace-period labels
_LEGEND = 18       # the legend's row below the axis


def timeline_svg(rec: Recorder, cursor: int | None = None, cursor_id: str = "",
                 grace: bool = False, legend: bool = False, responsive: bool = True) -> str:
    """One lane per actor: a tick per step it took, RCU read-side sections
    (green band) and grace periods it waits in (orange band), lock holds
    (bar under the lane: solid for write, light for read), frees (black
    marks), the violation (red).  ``cursor``: the step to mark.

    ``grace``: also draw each grace period (:func:`grace_periods`) as a
    band across every lane, perfbook-style, from ``call_rcu()`` (or
    ``synchronize_rcu()``) to the end of the last read-side section it
    waited for, labelled above the lanes.  ``legend``: a key below the axis.
    The picture always has its pixel size (no label under 10 px);
    ``responsive`` False adds a white background (an ``image/svg+xml``
    output)."""
    w = rec.world
    events = w.events
    n = len(events)
    xs = step_positions(events)
    nl = w.n
    top = _TOP if grace else 0
    body = nl * _LANE + 22
    width = _LEFT + _WIDTH + 10
    keys = _legend(rec, grace, width) if legend else []
    height = top + body + (max(k[1] for k in keys) + _LEGEND if keys else 0)

    def X(k):   # left edge of step k (k may be n)
        return _LEFT + xs[min(k, n)] * _WIDTH

    # At its own size, always: scaled down to a narrow column its 10 px
    # labels would shrink; the page and the widget put it in a box that
    # scrolls.
    size = f'width="{width}" height="{height}" style="max-width:none;display:block"'
    out = [f'<svg class="timeline" viewBox="0 0 {width} {height}" {size} '
           f'xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="10">']
    if not responsive:
        out.append(f'<rect width="{width}" height="{height}" fill="#fff"/>')
    if grace:
        for g in grace_periods(rec):
            a = g["start"]
            b = g["end"] if g["end"] is not None else n
            who = _names(w, g["waited_for"])
            what = (f"{g['kind']}() by {w.actors[g['cpu']].name}" if g["cpu"] is not None
                    else g["kind"] + "()")
            out.append(f'<rect x="{X(a):.1f}" y="{top - 2}" width="{max(X(b) - X(a), 2):.1f}" '
                       f'height="{nl * _LANE + 6}" fill="{_GRACE}" fill-opacity="0.22" '
                       f'stroke="{_GRACE}" stroke-dasharray="4,2"><title>grace period: '
                       f'{_esc(what)} at step {max(a - 1, 0)}; waits for {_esc(who)}; over after '
                       f'step {b - 1}</title></rect>')
            out.append(f'<text x="{X(a) + 2:.1f}" y="{top - 4}" fill="#b85c00">grace period '
                       f'(waits for {_esc(who)})</text>')
    out.append(f'<g transform="translate(0,{top})">')
    # Bands from the sync history: sync[k+1] is after step k.
    def spans(pred):
        """[(start step, end step)] where pred(sync after k steps) holds."""
        res, start = [], None
        for k in range(n + 1):
            on = pred(rec.sync[k])
            if on and start is None:
                start = k
            elif not on and start is not None:
                res.append((start, k))
                start = None
        if start is not None:
            res.append((start, n))
        return res

    for i in range(nl):
        y = i * _LANE + 4
        out.append(f'<text x="2" y="{y + 13}">{_esc(w.actors[i].name[:11])}</text>')
        out.append(f'<line x1="{_LEFT}" y1="{y + 9}" x2="{_LEFT + _WIDTH}" y2="{y + 9}" '
                   f'stroke="#ddd"/>')
        for a, b in spans(lambda s, i=i: any(c == i for c, _ in s[1])):
            out.append(f'<rect x="{X(a):.1f}" y="{y}" width="{max(X(b) - X(a), 1):.1f}" '
                       f'height="18" fill="{_READER}"><title>{_esc(w.actors[i].name)}: RCU '
                       f'read-side section, steps {a}-{b - 1}</title></rect>')
        for a, b in spans(lambda s, i=i: any(c == i and left for c, left in s[2])):
            out.append(f'<rect x="{X(a):.1f}" y="{y}" width="{max(X(b) - X(a), 1):.1f}" '
                       f'height="18" fill="{_GP_WAIT}"><title>{_esc(w.actors[i].name)}: '
                       f'synchronize_rcu() waits for a grace period</title></rect>')
        if w.actors[i].daemon:
            for a, b in spans(lambda s: bool(s[3])):
                out.append(f'<rect x="{X(a):.1f}" y="{y}" width="{max(X(b) - X(a), 1):.1f}" '
                           f'height="18" fill="{_QUEUED}"><title>RCU callbacks queued, '
                           f'waiting for their grace period</title></rect>')
        for li, name in enumerate(rec.locks_seen):
            for mode, colour in (("W", "#444"), ("R", "#9ab")):
                def held(s, i=i, name=name, mode=mode):
                    for nm, wr, rd in s[0]:
                        if nm == name:
                            return wr == i if mode == "W" else i in rd
                    return False
                for a, b in spans(held):
                    out.append(f'<rect x="{X(a):.1f}" y="{y + 19 + li * 3}" '
                               f'width="{max(X(b) - X(a), 1):.1f}" height="2.5" fill="{colour}">'
                               f'<title>{_esc(name)} held for {"write" if mode == "W" else "read"}'
                               f' by {_esc(w.actors[i].name)}, steps {a}-{b - 1}</title></rect>')
    # Ticks: runs of steps by one CPU.
    k = 0
    while k < n:
        c = events[k].cpu
        j = k
        while j + 1 < n and events[j + 1].cpu == c:
            j += 1
        y = c * _LANE + 4
        col = _COLOURS[c % len(_COLOURS)]
        out.append(f'<rect x="{X(k):.1f}" y="{y + 5}" width="{max(X(j + 1) - X(k), 1.2):.1f}" '
                   f'height="8" fill="{col}" opacity="0.85"><title>{_esc(w.actors[c].name)}: '
                   f'steps {k}-{j}</title></rect>')
        k = j + 1
    for pfn, (step, cpu, fn) in w.frees.items():
        if step < n:
            y = cpu * _LANE + 4
            out.append(f'<path d="M{X(step):.1f} {y} v18" stroke="#000" stroke-width="1.5">'
                       f'<title>step {step}: {_esc(fn)}() frees table page '
                       f'{pfn << w.pgt.page_shift:#x}</title></path>')
            if grace:
                out.append(f'<text x="{X(step) - 3:.1f}" y="{y + 14}" text-anchor="end">'
                           f'free</text>')
    for v in w.violations:
        if v.step is not None and v.step < n:
            xv = X(v.step)
            out.append(f'<rect x="{xv - 1:.1f}" y="0" width="{max(X(v.step + 1) - xv, 2) + 2:.1f}" '
                       f'height="{nl * _LANE + 4}" fill="#d62728" opacity="0.8">'
                       f'<title>step {v.step}: {_esc(v.kind)}</title></rect>')
    # Step axis labels: the first, the last, and the violation.
    marks = {0, n - 1} | {v.step for v in w.violations if v.step is not None and v.step < n}
    for s in sorted(m for m in marks if 0 <= m < n):
        anchor = ' text-anchor="end"' if s == n - 1 and s else ""
        out.append(f'<text x="{X(s + 1 if anchor else s):.1f}" y="{body - 4}" fill="#666"'
                   f'{anchor}>{s}</text>')
    cx = X(cursor) if cursor is not None else X(n)
    out.append(f'<line class="s2pt-cursor" {f"id={cursor_id!r} " if cursor_id else ""}x1="{cx:.1f}" y1="0" '
               f'x2="{cx:.1f}" y2="{nl * _LANE + 4}" stroke="#c00" stroke-width="1.5" '
               f'stroke-dasharray="3,2"/>')
    out.append("</g>")
    for x, y, colour, label in keys:
        out.append(f'<rect x="{x}" y="{top + body + y}" width="10" height="10" fill="{colour}"'
                   + (' fill-opacity="0.5"' if colour == _GRACE else "") + "/>")
        out.append(f'<text x="{x + 13}" y="{top + body + y + 9}">{_esc(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _legend(rec: Recorder, grace: bool, width: int) -> list:
    """The timeline's key: ``[(x, y, colour, label)]`` for what this run's
    picture shows, wrapped to ``width`` (y from the top of the key)."""
    w, sync = rec.world, rec.sync
    n = len(w.events)
    keys = [(_READER, "RCU read-side section", any(s[1] for s in sync)),
            (_QUEUED, "callback queued", any(s[3] for s in sync)),
            (_GP_WAIT, "synchronize_rcu() waits", any(s[2] for s in sync)),
            (_GRACE, "grace period", grace and any(s[3] or s[2] for s in sync)),
            ("#444", "lock held for write", any(wr is not None for s in sync
                                                for _, wr, _ in s[0])),
            ("#9ab", "lock held for read", any(rd for s in sync for _, _, rd in s[0])),
            ("#000", "table page freed", any(st < n for st, _, _ in w.frees.values())),
            ("#d62728", "violation", bool(w.violations))]
    out, x, y = [], 2, 2
    for colour, label, shown in keys:
        if not shown:
            continue
        step = 13 + 5.6 * len(label) + 12
        if x + step > width and x > 2:
            x, y = 2, y + _LEGEND
        out.append((round(x, 1), y, colour, label))
        x += step
    return out


class Timeline:
    """A timeline picture for a notebook cell: ``str(t)`` / ``t.svg`` is the
    SVG.  Jupyter shows it inline at its own size, in a box that scrolls
    when the column is narrower (``text/html``); ``image/svg+xml`` is there
    too, which GitHub renders.  Made by :func:`timeline`."""

    def __init__(self, svg: str, periods: list):
        self.svg = svg
        self.periods = periods

    def _repr_html_(self):
        return f'<div style="max-width:100%;overflow-x:auto">{self.svg}</div>'

    def _repr_svg_(self):
        return self.svg

    def __str__(self):
        return self.svg


def timeline(world: World, grace: bool = True, legend: bool = True) -> Timeline:
    """The timeline of a recorded run (``s2pt.replay(...)`` or a World
    stepped with ``record=True``), as the widget draws it, here with each
    grace period drawn as a band across the lanes and a legend.  The World
    is replayed into a :class:`Recorder` (it is not changed).  The result's
    ``periods`` are :func:`grace_periods`."""
    if not world.record:
        raise S2ptError("timeline: the World did not record its events (record=False); "
                        "use s2pt.replay(...) or a World made with record=True")
    rec = Recorder.replay(world, [ev.cpu for ev in world.events])
    return Timeline(timeline_svg(rec, grace=grace, legend=legend, responsive=False),
                    grace_periods(rec))


# ---------------------------------------------------------------------------
# The step data, and the page
# ---------------------------------------------------------------------------

def asset(name: str) -> str:
    """A file of the trace page (s2pt/trace_page: trace.js, trace.css,
    page.html, page.js, widget.js), read as package data."""
    return resources.files("s2pt").joinpath("trace_page", name).read_text(encoding="utf-8")


#: The stylesheet of the trace page and the widget (s2pt/trace_page/trace.css).
CSS = asset("trace.css")


def _banner_class(world) -> str:
    return "bad" if world.violations else ("ok" if world.outcome == "done" else "run")


class Frames:
    """A run's step data, as s2pt/trace_page/trace.js reads it: the HTML
    trace stores it in the page, the Interleave widget sends it to its
    panels (:class:`s2pt.widgets.TraceView`).

    Each distinct piece of a panel is stored once, in ``pool``; a step
    refers to its pieces by index.  The shared-state rows are stored as
    deltas: each row key gets an id (and its section, once); a step stores
    the order of the ids (a pooled string: it rarely changes) and only the
    rows whose cells changed, with a flag when the value changed
    (highlighted).  :meth:`snap` adds the step a Recorder has just taken
    (or, before any, the start); :meth:`truncate` drops steps, for a run
    that goes another way from there; :meth:`data` is everything,
    :meth:`since` what changed after a count of steps and pool strings."""

    def __init__(self, world: World):
        self.index: dict = {}                 # string -> its pool index
        self.pool: list = []
        self.steps: list = []
        self.keys: dict = {}                  # (row key, section) -> row id
        self.key_sec: list = []               # row id -> its section's pool index
        self._cells: list = []                # per step: {row id: cells index}
        self._rows: list = []                 # per step: shared_state rows
        self.names = [_esc(a.name) for a in world.actors]
        self.timeline = 0
        self.xs: list = []

    def ref(self, s: str) -> int:
        j = self.index.get(s)
        if j is None:
            j = self.index[s] = len(self.pool)
            self.pool.append(s)
        return j

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` steps (the start is step 0)."""
        del self.steps[n:], self._cells[n:], self._rows[n:]

    def snap(self, rec: Recorder, ev=None, lazy: bool = False) -> None:
        """Add the panels of ``rec``'s World now, ``ev`` being the step it
        has just taken (None: the start).  ``lazy``: leave the tree of a
        step that changes no shared state to be drawn when it is shown
        (:meth:`fill_tree`; trace.js shows the last tree drawn meanwhile,
        and says so): laying a tree out is most of a step's cost."""
        w = rec.world
        rows = shared_state(rec)
        prev_rows = self._rows[-1] if self._rows else None
        prev_cells = self._cells[-1] if self._cells else None
        old = {k: v for k, _, _, v in prev_rows} if prev_rows is not None else None
        order, changes, cells = [], [], {}
        for key, section, label, value in rows:
            kid = self.keys.get((key, section))
            if kid is None:
                kid = self.keys[(key, section)] = len(self.key_sec)
                self.key_sec.append(self.ref(_sec_html(section)))
            c = cells[kid] = self.ref(_cells_html(label, value))
            order.append(kid)
            hl = old is not None and old.get(key) != value
            if prev_cells is None or prev_cells.get(kid) != c or hl:
                changes.append([kid, c, 1] if hl else [kid, c])
        cols = []
        text = _esc(step_text(w, ev)) if ev is not None else ""
        for i in range(w.n):
            refs = [self.ref(p) for p in cpu_parts(w, i, ev)]
            if ev is not None and ev.cpu == i:      # the "last step" line: its text is pooled
                refs[1] = -1 - self.ref(text)
            cols.append(refs)
        if ev is None:
            evt = self.ref(event_html(w, None))
        else:
            name, fn, text, rest = _event_parts(w, ev)
            evt = [ev.cpu, self.ref(fn), self.ref(text), self.ref(rest)]
        quiet = ev is not None and prev_rows is not None and rows == prev_rows
        tree = -1 if lazy and quiet and w.outcome is None else self.ref(tree_html(rec))
        self.steps.append([cols, [self.ref(",".join(map(str, order))), changes],
                           tree, evt, self.ref(f"{_banner_class(w)}|{verdict(w)}"),
                           1 if quiet else 0])
        self._cells.append(cells)
        self._rows.append(rows)

    def fill_tree(self, k: int, rec: Recorder) -> bool:
        """Draw step ``k``'s tree if it was left (``rec`` is at step k);
        True if it was."""
        if self.steps[k][2] >= 0:
            return False
        self.steps[k][2] = self.ref(tree_html(rec))
        return True

    def set_timeline(self, rec: Recorder) -> None:
        """The timeline of ``rec``'s run so far, with a cursor that sits on
        the step just taken (step k: after k steps)."""
        evs = rec.world.events
        xs = [round(_LEFT + x * _WIDTH, 1) for x in step_positions(evs)]
        self.xs = [xs[0]] + [round((xs[k] + xs[k + 1]) / 2, 1) for k in range(len(evs))]
        self.timeline = self.ref(timeline_svg(rec, cursor=0, responsive=False))

    def data(self) -> dict:
        return {"pool": list(self.pool), "steps": self.steps, "keys": self.key_sec,
                "names": self.names, "timeline": self.timeline, "xs": self.xs}

    def since(self, steps: int, pool: int) -> dict:
        """The steps from ``steps`` on and the pool strings from ``pool`` on,
        with the rest of what trace.js's ``splice`` needs."""
        return {"from": steps, "pool": self.pool[pool:], "steps": self.steps[steps:],
                "keys": self.key_sec, "names": self.names, "timeline": self.timeline,
                "xs": self.xs}


def record(world: World, schedule, lazy: bool = False) -> tuple:
    """Replay ``schedule`` on a fresh copy of ``world``, then the default
    completion as World.run does, snapping every step (``lazy``: see
    :meth:`Frames.snap`): (Recorder, Frames)."""
    from .sim.world import default_choice
    rec = Recorder(world.again(record=True))
    w = rec.world
    frames = Frames(w)
    frames.snap(rec)
    last, relaxed = None, False
    for k, cpu in enumerate(schedule):
        if w.outcome is not None:
            break
        if not isinstance(cpu, int) or not 0 <= cpu < w.n or cpu not in w.enabled():
            raise S2ptError(f"schedule step {k}: CPU {cpu!r} cannot step here "
                            f"({w.blocked(cpu) if isinstance(cpu, int) and 0 <= cpu < w.n else 'no such CPU'})")
        ev = rec.step(cpu)
        relaxed, last = ev.op[0] == "cpu_relax", cpu
        frames.snap(rec, ev, lazy)
    while w.outcome is None:
        cpu = default_choice(w.enabled(), last, relaxed)
        ev = rec.step(cpu)
        relaxed, last = ev.op[0] == "cpu_relax", cpu
        frames.snap(rec, ev, lazy)
    # The end-of-run checks may have added violations after the last step.
    frames.steps[-1][4] = frames.ref(f"{_banner_class(w)}|{verdict(w)}")
    frames.set_timeline(rec)
    return rec, frames


def trace_html(world: World, schedule=None, title: str | None = None) -> str:
    """The run of ``world``'s scenario under ``schedule`` (default: the CPUs
    of ``world.events``) as one self-contained HTML page: the step data
    (:class:`Frames`, gzipped), trace.js and trace.css inline, and the race
    diagram as plain text.  ``world`` may be fresh or already stepped; it is
    not changed."""
    if schedule is None:
        if world.nsteps and not world.record:
            raise S2ptError("trace_html: the World did not record its events (record=False); "
                            "pass the schedule")
        schedule = [ev.cpu for ev in world.events]
    else:
        from .sim.search import parse_schedule
        schedule = parse_schedule(schedule)
    rec, frames = record(world, schedule)
    w = rec.world
    name = getattr(w.scenario, "name", "?")
    scheme = getattr(w.scheme, "name", "?")
    sched_text = format_schedule(trimmed_schedule(rec))
    bugs = "".join(f" + {b}" for b in sorted(w.bugs))
    return Template(asset("page.html")).substitute(
        title=_esc(title or f"s2pt: {name} under {scheme}"),
        css=CSS, heading=f"{_esc(name)} under {_esc(scheme)}{_esc(bugs)}",
        summary=_esc(getattr(w.scenario, "summary", "")),
        command=_esc(replay_command(w.scenario, w.scheme, sched_text, w.bugs)),
        verdict=_esc(verdict(w)), diagram=_esc(w.diagram()),
        blob=page_data_pack(frames.data()), js=asset("trace.js") + "\n" + asset("page.js"))


def page_data_pack(data) -> str:
    """The page's data as gzipped JSON in base64.  A step that moves a walker
    by one entry redraws the tree, so a thousand-step walk stores a thousand
    tree pictures that differ in one row: gzip takes them (and everything
    else repeated) from 4.6 MB to under 100 KB.  ``mtime=0``: the same run
    gives the same bytes."""
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.b64encode(gzip.compress(raw, 9, mtime=0)).decode("ascii")


def page_data(text: str):
    """The data of a page written by :func:`trace_html` (for tests and tools)."""
    import re
    m = re.search(r'<script type="text/plain" id="s2pt-data">([A-Za-z0-9+/=\s]*)</script>', text)
    if m is None:
        raise S2ptError("page_data: no s2pt trace data in this text")
    return json.loads(gzip.decompress(base64.b64decode(m.group(1))))


def trimmed_schedule(rec: Recorder) -> list:
    """The recorded schedule without the tail the default order would take anyway."""
    from .sim.search import trim_schedule
    return trim_schedule(rec.world, rec.schedule)


def write_html(world: World, path, schedule=None) -> int:
    """Write :func:`trace_html` to ``path``; returns its size in bytes."""
    target = Path(path)
    if not target.parent.is_dir():
        raise S2ptError(f"html path {str(path)!r}: its directory {str(target.parent)!r} "
                        f"does not exist")
    data = trace_html(world, schedule or None).encode("utf-8")
    try:
        target.write_bytes(data)
    except OSError as e:
        raise S2ptError(f"html path {str(path)!r}: cannot write it ({e.strerror})") from None
    return len(data)
