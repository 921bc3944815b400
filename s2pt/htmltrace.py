"""One run of a scenario, as panels and as a self-contained HTML page.

The renderer behind both the :class:`s2pt.widgets.Interleave` widget and
``python -m s2pt replay ... --html out.html``: whatever the widget shows for
a step, the page shows for the same step, because both call the functions
here.

* :class:`Recorder` steps a :class:`~s2pt.sim.world.World` and keeps, per
  step, what the panels need that the World forgets: the locks, RCU readers,
  grace periods and queued callbacks after each step (for the timeline), and
  which CPUs touched which table entries (the entries raced on).
* The panels, each an HTML string: :func:`cpus_html` (one column per actor,
  its kernel call stack outermost first, the next operation highlighted, or
  why it cannot run), :func:`shared_html` (entries raced on, table pages and
  their ``page_count``, locks and holders, RCU readers, grace periods and
  callbacks, TLB and walk-cache contents; what the last step changed is
  highlighted), :func:`timeline_svg` (one lane per actor, RCU read-side
  sections and grace periods as bands, lock holds as bars, the violation in
  red), :func:`tree_svg` (``pgt.draw`` with each walker on its next entry,
  LOCKED entries, unlinked, freed and reused pages marked, and the
  violation's entry crossed in red) and :func:`verdict` (one sentence).
* :func:`trace_html` / :func:`write_html`: the whole run as one file with
  inline CSS, JavaScript and SVG -- no network, no fonts, no kernel -- with
  Prev / Next / Play through the steps.  Each distinct piece of a panel is
  stored once (a tree picture only when the tree or a walker's mark
  changed), shared-state rows as deltas (a step stores only the rows it
  changed), and the page rebuilds each step's panels from them; the data is
  gzipped JSON that the browser unpacks itself (``DecompressionStream``).
  A thousand-step counterexample is about 100 KB, even when every step
  changes the shared state.

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
from pathlib import Path

from .descriptor import KVM_INVALID_PTE_LOCKED
from .errors import KernelBug, S2ptError
from .explorer import replay_command
from .invariants import reachable_tables
from .ops import OPS, desc_text, loc_text, op_text, result_text
from .render import Drawing, responsive_svg
from .sim.search import format_schedule
from .sim.world import World, stack_names

__all__ = ["Recorder", "verdict", "cpus_html", "shared_html", "shared_state", "timeline_svg",
           "timeline", "Timeline", "grace_periods", "tree_drawing", "tree_svg", "step_text",
           "event_html", "trace_html", "write_html", "CSS"]

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


def shared_html(rows: list, before: list | None = None) -> str:
    """The shared-state panel; rows whose value differs from ``before``
    (the rows one step earlier) are highlighted."""
    old = {k: v for k, _, _, v in (before or ())}
    out = ['<table class="shared">']
    sec = None
    for key, section, label, value in rows:
        if section != sec:
            out.append(_sec_html(section))
            sec = section
        changed = before is not None and old.get(key) != value
        out.append(f'<tr{" class=chg" if changed else ""}>{_cells_html(label, value)}</tr>')
    out.append("</table>")
    return "".join(out)


# The page's JavaScript builds the same table from these pieces (SHARED in _JS).
def _sec_html(section) -> str:
    return f'<tr class="sec"><th colspan="2">{_esc(section)}</th></tr>'


def _cells_html(label, value) -> str:
    return f"<td>{_esc(label)}</td><td>{_esc(value)}</td>"


# ---------------------------------------------------------------------------
# The tree
# ---------------------------------------------------------------------------

def tree_drawing(rec: Recorder) -> Drawing:
    """``pgt.draw`` with what the run has done marked:

    * per entry, each walker about to access it ("vCPU1 next: READ_ONCE";
      the hardware walker's ``hw_read`` too), even in an unlinked or freed
      page, where a stale walker is the story;
    * LOCKED entries, and who locked them;
    * unlinked tables not yet freed (drawn detached), freed pages (a grey
      stub: who freed them and when), pages reused after a free;
    * once a checker fires, the entry (or page) of the violating step, with
      a ✖, its table drawn in red (``draw(alert=)``).
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
    m = w.machine
    saved = (list(m.violations), m.cpu)
    try:
        # bulk: runs of leaves are read straight from the pages, not one
        # operation each through the machine (a drawing is no part of the run).
        return pgt.draw(marks=marks, tables=tables, alert=alert, max_tables=8, bulk=True)
    finally:
        # Drawing walks the tables through the machine; nothing it reads
        # may count as a step of the run.
        m.violations[:], m.cpu = saved[0], saved[1]


_SVG_CACHE: dict = {}


def tree_svg(rec: Recorder) -> str:
    """The tree picture as inline, column-fitting SVG (cached by its DOT
    source, so an unchanged tree is not laid out again)."""
    src = tree_drawing(rec).source
    svg = _SVG_CACHE.get(src)
    if svg is None:
        if len(_SVG_CACHE) > 512:
            _SVG_CACHE.clear()
        svg = _SVG_CACHE[src] = responsive_svg(Drawing(src).svg())
    return svg


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
    ``responsive``: scale to the column (the widget, the HTML page); False
    gives the picture its pixel size (an ``image/svg+xml`` output)."""
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

    size = (f'width="100%" style="max-width:{width}px;height:auto;display:block"' if responsive
            else f'width="{width}" height="{height}"')
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
    out.append(f'<line {f"id={cursor_id!r} " if cursor_id else ""}x1="{cx:.1f}" y1="0" '
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
    SVG, and Jupyter shows it as an image (``image/svg+xml``, which GitHub
    renders too).  Made by :func:`timeline`."""

    def __init__(self, svg: str, periods: list):
        self.svg = svg
        self.periods = periods

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
# The page
# ---------------------------------------------------------------------------

CSS = """
.s2pt-trace{font:13px/1.35 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;max-width:100%}
.s2pt-trace code,.s2pt-trace .stack,.s2pt-trace .shared td{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11.5px}
.s2pt-trace .cols{display:flex;flex-wrap:wrap;gap:6px}
.s2pt-trace .cpu{flex:1 1 200px;min-width:0;border:1px solid #ccc;border-radius:4px;padding:4px 6px;background:#fafafa;overflow-wrap:anywhere}
.s2pt-trace .cpu.moved{border-color:#3b6fb6;box-shadow:0 0 0 1px #3b6fb6}
.s2pt-trace .cpu.blk{background:#f3f3f3;color:#666}
.s2pt-trace .cpu.fin{opacity:.6}
.s2pt-trace .cname{font-weight:600}.s2pt-trace .cid{color:#888;font-weight:400;font-size:11px}
.s2pt-trace .role{color:#555;font-size:11.5px}
.s2pt-trace .stack{margin:3px 0;padding:0;list-style:none;color:#444}
.s2pt-trace .next{background:#fff2cc;border-left:3px solid #e0a800;padding:2px 4px;margin-top:2px}
.s2pt-trace .why{color:#a33;font-size:12px;margin-top:2px}
.s2pt-trace .last{color:#1e5a9b;font-size:12px}
.s2pt-trace .shared{border-collapse:collapse;width:100%;table-layout:fixed}
.s2pt-trace .shared td{border-top:1px solid #eee;padding:1px 4px;vertical-align:top;overflow-wrap:anywhere}
.s2pt-trace .shared td:first-child{width:42%}
.s2pt-trace .shared .sec th{text-align:left;background:#eef;padding:2px 4px;font-size:12px}
.s2pt-trace .shared tr.chg td{background:#fff2cc;font-weight:600}
.s2pt-trace .banner{padding:6px 10px;border-radius:4px;margin:6px 0;font-weight:600}
.s2pt-trace .banner.bad{background:#f8d7da;color:#842029;border:1px solid #f5c2c7}
.s2pt-trace .banner.ok{background:#d1e7dd;color:#0f5132;border:1px solid #badbcc}
.s2pt-trace .banner.run{background:#eef;color:#333;border:1px solid #ccd}
.s2pt-trace .grid{display:flex;flex-wrap:wrap;gap:8px;margin-top:6px}
.s2pt-trace .grid>div{flex:1 1 340px;min-width:0}
.s2pt-trace .ev{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;margin:4px 0;overflow-wrap:anywhere}
.s2pt-trace .note{color:#555}
.s2pt-trace h4{margin:8px 0 2px;font-size:13px}
.s2pt-trace .tree{max-width:100%;overflow:hidden}
"""

_JS = r"""
(function(){
// The data is gzipped JSON in base64 (see trace_html), unpacked by the
// browser's own DecompressionStream: nothing is fetched.
const el=document.getElementById('s2pt-data');
if(typeof DecompressionStream==='undefined'){
  const b=document.getElementById('banner'); b.className='banner bad';
  b.textContent='This browser cannot unpack the steps (it needs DecompressionStream: Chrome 80, '+
    'Firefox 113, Safari 16.4 or later). The race diagram below is plain text.';
  return;
}
const bin=Uint8Array.from(atob(el.textContent.trim()),c=>c.charCodeAt(0));
new Response(new Blob([bin]).stream().pipeThrough(new DecompressionStream('gzip')))
  .text().then(t=>start(JSON.parse(t)));
function start(D){
const P=D.pool, S=D.steps, N=S.length-1;
let k=0, timer=null;
const $=id=>document.getElementById(id);
// Shared state: undo the deltas once (see trace_html): per step, the row
// ids in order, their cells, and the ids whose value changed.
let cur={};
const SH=S.map(s=>{ const hl={};
  for(const [kid,c,h] of s[1][1]){ cur[kid]=c; if(h) hl[kid]=1; }
  const order=P[s[1][0]].split(',').filter(x=>x!=='').map(Number);
  const next={}; for(const kid of order) next[kid]=cur[kid]; cur=next;
  return [order, order.map(kid=>cur[kid]), hl]; });
function SHARED(i){ const [order,cells,hl]=SH[i]; let out='<table class="shared">', sec=null;
  order.forEach((kid,j)=>{ if(D.keys[kid]!==sec){ sec=D.keys[kid]; out+=P[sec]; }
    out+='<tr'+(hl[kid]?' class=chg':'')+'>'+P[cells[j]]+'</tr>'; });
  return out+'</table>'; }
function LAST(i,text){ return '<div class="last">step '+i+': '+text+'</div>'; }
function EVENT(i,e){ if(typeof e==='number') return P[e];
  return 'step '+i+': <b>'+D.names[e[0]]+'</b> in '+P[e[1]]+'(): '+P[e[2]]+P[e[3]]; }
function show(i){
  k=Math.max(0,Math.min(N,i)); const s=S[k];
  $('cols').innerHTML=s[0].map(c=>c.map(j=>j<0?LAST(k-1,P[-1-j]):P[j]).join('')).join('');
  $('shared').innerHTML=SHARED(k); $('tree').innerHTML=P[s[2]];
  $('ev').innerHTML=EVENT(k-1,s[3]);
  $('pos').textContent='step '+k+' of '+N; $('slider').value=k;
  const b=$('banner'); b.className='banner '+P[s[4]].split('|')[0]; b.textContent=P[s[4]].slice(P[s[4]].indexOf('|')+1);
  const c=$('cursor'); const x=D.xs[Math.min(k,D.xs.length-1)];
  c.setAttribute('x1',x); c.setAttribute('x2',x);
}
function stop(){if(timer){clearInterval(timer);timer=null;$('play').textContent='Play';}}
function play(){ if(timer){stop();return;} if(k>=N) show(0);
  $('play').textContent='Pause';
  timer=setInterval(()=>{ let next=k+1;
      if($('skip').checked){ while(next<N && S[next][5]) next++; }
      show(next); if(k>=N) stop(); }, +$('speed').value); }
$('prev').onclick=()=>{stop();show(k-1)}; $('next').onclick=()=>{stop();show(k+1)};
$('first').onclick=()=>{stop();show(0)}; $('last').onclick=()=>{stop();show(N)};
$('play').onclick=play; $('slider').oninput=e=>{stop();show(+e.target.value)};
$('speed').onchange=()=>{ if(timer){stop();play();} };
document.addEventListener('keydown',e=>{ if(e.key==='ArrowRight'){stop();show(k+1)} if(e.key==='ArrowLeft'){stop();show(k-1)} });
window.s2ptShow=show; window.s2ptStep=()=>k;
show(0);
}
})();
"""


def _banner_class(world) -> str:
    return "bad" if world.violations else ("ok" if world.outcome == "done" else "run")


def trace_html(world: World, schedule=None, title: str | None = None) -> str:
    """The run of ``world``'s scenario under ``schedule`` (default: the CPUs
    of ``world.events``) as one self-contained HTML page; see the module
    docstring.  ``world`` may be fresh or already stepped; it is not changed."""
    if schedule is None:
        if world.nsteps and not world.record:
            raise S2ptError("trace_html: the World did not record its events (record=False); "
                            "pass the schedule")
        schedule = [ev.cpu for ev in world.events]
    else:
        from .sim.search import parse_schedule
        schedule = parse_schedule(schedule)
    # Replay, then run the default completion the way World.run does.
    rec = Recorder(world.again(record=True))
    w = rec.world
    frames = []
    pool: dict = {}

    def ref(s: str) -> int:
        j = pool.get(s)
        if j is None:
            j = pool[s] = len(pool)
        return j

    prev_rows = None
    # Shared-state rows are stored as deltas: each row key gets an id (and
    # its section, once); a step stores the order of the ids (a pooled
    # string: it rarely changes) and only the rows whose cells changed, with
    # a flag when the value changed (highlighted).  A step that changes one
    # row costs one small entry, however many rows there are.
    keys: dict = {}
    key_sec: list = []
    prev_cells: dict | None = None

    def shared_delta(rows):
        nonlocal prev_cells
        old = {k: v for k, _, _, v in prev_rows} if prev_rows is not None else None
        order, changes, cells = [], [], {}
        for key, section, label, value in rows:
            kid = keys.get((key, section))
            if kid is None:
                kid = keys[(key, section)] = len(key_sec)
                key_sec.append(ref(_sec_html(section)))
            c = cells[kid] = ref(_cells_html(label, value))
            order.append(kid)
            hl = old is not None and old.get(key) != value
            if prev_cells is None or prev_cells.get(kid) != c or hl:
                changes.append([kid, c, 1] if hl else [kid, c])
        prev_cells = cells
        return [ref(",".join(map(str, order))), changes]

    def snap(ev):
        nonlocal prev_rows
        rows = shared_state(rec)
        if ev is not None:
            name, fn, text, rest = _event_parts(w, ev)
        cols = []
        for i in range(w.n):
            parts = cpu_parts(w, i, ev)
            refs = [ref(p) for p in parts]
            if ev is not None and ev.cpu == i:      # the "last" line: its text is pooled
                assert parts[1] == _last_html(ev.index, text)
                refs[1] = -1 - ref(text)
            cols.append(refs)
        shared = shared_delta(rows)
        quiet = ev is not None and prev_rows is not None and rows == prev_rows
        prev_rows = rows
        if ev is None:
            evt = ref(event_html(w, None))
        else:
            assert ev.index == len(frames) - 1 and event_html(w, ev) == \
                f"step {ev.index}: <b>{name}</b> in {fn}(): {text}{rest}"
            evt = [ev.cpu, ref(fn), ref(text), ref(rest)]
        frames.append([cols, shared, ref(tree_svg(rec)), evt,
                       ref(f"{_banner_class(w)}|{verdict(w)}"), 1 if quiet else 0])

    snap(None)
    last, relaxed = None, False
    for k, cpu in enumerate(schedule):
        if w.outcome is not None:
            break
        if not isinstance(cpu, int) or not 0 <= cpu < w.n or cpu not in w.enabled():
            raise S2ptError(f"schedule step {k}: CPU {cpu!r} cannot step here "
                            f"({w.blocked(cpu) if isinstance(cpu, int) and 0 <= cpu < w.n else 'no such CPU'})")
        ev = rec.step(cpu)
        relaxed, last = ev.op[0] == "cpu_relax", cpu
        snap(ev)
    from .sim.world import default_choice
    while w.outcome is None:
        cpu = default_choice(w.enabled(), last, relaxed)
        ev = rec.step(cpu)
        relaxed, last = ev.op[0] == "cpu_relax", cpu
        snap(ev)
    # The end-of-run checks may have added violations after the last step.
    frames[-1][4] = ref(f"{_banner_class(w)}|{verdict(w)}")
    xs = step_positions(w.events)
    xs_px = [round(_LEFT + x * _WIDTH, 1) for x in xs]
    # The cursor sits on the step just taken (frame k = after k steps).
    cursor = [xs_px[0]] + [round((xs_px[k] + xs_px[k + 1]) / 2, 1) for k in range(len(w.events))]
    data = {"pool": list(pool), "steps": frames, "xs": cursor, "keys": key_sec,
            "names": [_esc(a.name) for a in w.actors]}
    name = getattr(w.scenario, "name", "?")
    scheme = getattr(w.scheme, "name", "?")
    sched_text = format_schedule(trimmed_schedule(rec))
    title = title or f"s2pt: {name} under {scheme}"
    bugs = "".join(f" + {b}" for b in sorted(w.bugs))
    cmd = replay_command(w.scenario, w.scheme, sched_text, w.bugs)
    blob = page_data_pack(data)
    diagram = w.diagram()
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<title>{_esc(title)}</title>
<style>body{{margin:12px;background:#fff}}{CSS}
.s2pt-trace .bar{{display:flex;flex-wrap:wrap;gap:6px;align-items:center;margin:6px 0}}
.s2pt-trace button{{font:inherit;padding:2px 10px}}
.s2pt-trace #slider{{flex:1 1 200px}}
.s2pt-trace pre{{font-size:11px;overflow:auto;max-height:30em;background:#f7f7f7;padding:6px}}
</style></head>
<body><div class="s2pt-trace">
<h3 style="margin:0">{_esc(name)} under {_esc(scheme)}{_esc(bugs)}</h3>
<div class="role">{_esc(getattr(w.scenario, "summary", ""))}</div>
<div class="ev">replay: <code>{_esc(cmd)}</code></div>
<div class="ev">at the end: {_esc(verdict(w))}</div>
<div id="banner" class="banner"></div>
<div class="bar"><button id="first">|&lt;</button><button id="prev">&lt; Prev</button>
<button id="next">Next &gt;</button><button id="last">&gt;|</button><button id="play">Play</button>
<label>speed <select id="speed"><option value="400">slow</option><option value="120" selected>medium</option>
<option value="25">fast</option><option value="1">fastest</option></select></label>
<label><input type="checkbox" id="skip" checked> skip steps that change no shared state</label>
<input type="range" id="slider" min="0" max="{len(frames) - 1}" value="0"><span id="pos"></span></div>
<div id="ev" class="ev"></div>
<div id="cols" class="cols"></div>
<h4>Timeline</h4>
{timeline_svg(rec, cursor=0, cursor_id="cursor")}
<div class="grid"><div><h4>Shared state</h4><div id="shared"></div></div>
<div><h4>Tree</h4><div id="tree" class="tree"></div></div></div>
<details><summary>Race diagram (plain text, for email)</summary><pre>{_esc(diagram)}</pre></details>
</div>
<script type="text/plain" id="s2pt-data">{blob}</script>
<script>{_JS}</script>
</body></html>
"""


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
