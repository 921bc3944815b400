"""Race diagrams and state logs: what a run did, in words a reviewer knows.

A **race diagram** (:func:`race_diagram`) is the picture in a kernel commit
message: one column per CPU, time going down, and only the steps the
violation depends on (the causal slice, :mod:`s2pt.sim.causal`), each under
the kernel functions that perform it, nested as the kernel calls them::

    collapse-vs-fault under none (a counterfactual: no kernel ever shipped it)
    vCPU0: user_mem_abort(),             vCPU1: user_mem_abort(), relax_perms
    2M block (collapse)
    kvm_pgtable_stage2_map()
      stage2_map_walk_table_pre()
                                         kvm_pgtable_stage2_relax_perms()
                                           stage2_attr_walker()
                                             READ_ONCE(L2[0]) = L3 table
        stage2_map_walker_try_leaf()
          stage2_try_break_pte()
            cmpxchg(L2[0], L3 table -> LOCKED)
    ...
        mm_ops->free_unlinked_table()
          put_page(L3 table) /* freed */
                                             READ_ONCE(L3[1])
                                             ^^^ USE-AFTER-FREE ^^^

Tables are named by level (``L3 table``, entry ``L3[1]``; ``L3a``/``L3b``
with a legend when two tables of one level take part), never by model
address; values are never cut short, long lines wrap, and the whole fits
80 columns.  A walk's own frames (``kvm_pgtable_walk()`` down to
``__kvm_pgtable_visit()``) are shown as the visitor callback they run: the
``READ_ONCE`` of an entry appears under ``stage2_attr_walker()``, whose
``ctx->old`` it becomes.  Callbacks reached through ``mm_ops`` are shown as
such (``mm_ops->free_unlinked_table()``); the model's own helpers that have
no kernel name fold into their caller (:data:`MODEL_ONLY`).  Of the chain
of calls between two interesting frames only the ends are drawn: the entry
point, each walker callback, and each function where the slice's steps
part ways.

:func:`step_diagram` is the long form: every step, numbered, under its
innermost function, with repeated steps folded ("READ_ONCE(L3[2..511])
x1019"); :func:`state_log` lists every step with its result and what it
changed; :func:`email_text` is the race told as a commit message would
tell it, with the diagram and the command that replays it.

Plain ASCII, so it pastes into an email.
"""

from __future__ import annotations

from ..ops import DISPLAY, FOLDABLE as _FOLDABLE, OPS
from ..ops import desc_text as _desc_text, loc_text as _loc_text
from ..ops import op_text as _op_text, result_text as _result_text

__all__ = ["op_text", "desc_text", "loc_text", "result_text", "race_diagram", "step_diagram",
           "state_log", "email_text", "MODEL_ONLY", "WIDTH", "LINES"]


# A World's view of table memory names entries (L2[0], PGD[1]); the op
# table in s2pt.ops renders each operation (these take a World, or a View).

def _view(world):
    return getattr(world, "view", world)


def loc_text(world, ptep: int) -> str:
    return _loc_text(_view(world), ptep)


def desc_text(world, value, level=None) -> str:
    return _desc_text(_view(world), value, level)


def op_text(world, op) -> str:
    return _op_text(op, _view(world))


def result_text(world, ev) -> str:
    return _result_text(ev.op, ev.result, _view(world))


def _step_text(world, ev) -> str:
    s = op_text(world, ev.op)
    r = result_text(world, ev)
    return f"{s} = {r}" if r else s


# ---------------------------------------------------------------------------
# The race diagram
# ---------------------------------------------------------------------------

def _clip(s: str, width: int) -> str:
    return s if len(s) <= width else s[:width - 3] + "..."


def step_diagram(world, width: int | None = None, fold: bool = True) -> str:
    """Every step of the run, one column per CPU, with step numbers and the
    innermost kernel function (see the module docstring): the long form of
    :func:`race_diagram`.  ``width`` caps each column (default 46 for two
    CPUs, 34 for more)."""
    events = world.events
    cols = [i for i in range(world.n) if any(e.cpu == i for e in events)]
    if width is None:
        width = 46 if len(cols) <= 2 else 34
    if not cols:
        return "(no steps)"
    rows: list[tuple[str, int, str]] = []      # (step label, cpu, text)
    last_stack = {}
    i = 0
    while i < len(events):
        ev = events[i]
        j = i + 1
        cycle = _cycle(events, i) if fold else None
        if cycle is not None:
            period, reps = cycle
            end = i + period * reps
            rows.append(("", ev.cpu, f"+ {reps} times:"))
            fn_prev = None
            for k in range(period):
                evs = events[i + k:end:period]
                fn = evs[0].stack[-1] if evs[0].stack else ""
                if fn != fn_prev:
                    rows.append(("", ev.cpu, "| " + (fn if " " in fn else f"{fn}()")))
                    fn_prev = fn
                rows.append((f"{ev.index}-{events[end - 1].index}" if k == 0 else "", ev.cpu,
                             f"|   {_fold_text(world, evs)}"))
            rows.append(("", ev.cpu, "+"))
            last_stack[ev.cpu] = None
            i = end
            continue
        if fold:
            while (j < len(events) and events[j].cpu == ev.cpu and events[j].op[0] == ev.op[0]
                   and events[j].stack == ev.stack and not events[j].violations
                   and not ev.violations and ev.op[0] in _FOLDABLE):
                j += 1
        fn = ev.stack[-1] if ev.stack else ""
        if last_stack.get(ev.cpu) != fn:
            # kernel functions get "()"; descriptive labels ("guest (MMU)") do not
            rows.append(("", ev.cpu, fn if " " in fn else f"{fn}()"))
            last_stack[ev.cpu] = fn
        if j - i > 1:
            text = f"  {_fold_text(world, events[i:j])} x{j - i}"
            label = f"{ev.index}-{events[j - 1].index}"
        else:
            text = "  " + _step_text(world, ev)
            label = str(ev.index)
        rows.append((label, ev.cpu, text))
        for kind, _msg in ev.violations:
            rows.append(("", ev.cpu, f"  ^^^ {kind.upper()} ^^^"))
        i = j
    lw = max(4, max(len(r[0]) for r in rows))
    w = {c: min(width, max([len(world.actors[c].name)]
                           + [len(t) for _, cpu, t in rows if cpu == c])) for c in cols}
    out = []

    def line(label, cells):
        s = f"{label:>{lw}}  " + "  ".join(f"{_clip(cells.get(c, ''), w[c]):<{w[c]}}" for c in cols)
        out.append(s.rstrip())

    line("step", {c: world.actors[c].name for c in cols})
    line("", {c: _clip(world.actors[c].role, w[c]) for c in cols})
    line("", {c: "-" * min(w[c], len(world.actors[c].role) or 4) for c in cols})
    for label, cpu, text in rows:
        line(label, {cpu: text})
    tail = []
    for v in world.violations:
        if v.step is None:
            tail.append(f"  *** {v.kind}: {v.explanation}")
    if world.outcome == "done" or tail:
        out.append(f"{'':>{lw}}  (end of run: rcu_barrier(), then the end-of-run checks)")
    out += tail
    return "\n".join(out)


#: A loop folds into a block when it repeats at least this often.
_MIN_REPS = 3


def _key(ev):
    return (ev.cpu, ev.op[0], ev.stack)


def _cycle(events, i):
    """(period, repetitions) of the longest loop of 2 to 4 different steps
    that one CPU repeats from ``events[i]`` at least _MIN_REPS times, with
    no violation inside; or None.  (One step repeated is the plain fold.)"""
    best = None
    for p in (2, 3, 4):
        if i + p * _MIN_REPS > len(events):
            break
        pattern = [_key(e) for e in events[i:i + p]]
        if len(set(pattern)) < p or any(k[0] != pattern[0][0] for k in pattern):
            continue           # a step repeated inside, or two CPUs: not this period
        n = 0
        while (i + (n + 1) * p <= len(events)
               and all(_key(events[i + n * p + k]) == pattern[k] and not
                       events[i + n * p + k].violations for k in range(p))):
            n += 1
        if n >= _MIN_REPS and (best is None or n * p > best[0] * best[1]):
            best = (p, n)
    return best


def _fold_text(world, evs) -> str:
    """READ_ONCE(L3[1..511]) for a run of reads across one table; a short
    run of different operations lists them all (a walk's reads down the
    levels, the two put_pages that free a table), a long one its ends."""
    op = evs[0].op
    if op[0] in ("READ_ONCE", "hw_read"):
        first, last = evs[0].op[1], evs[-1].op[1]
        if first >> world.pgt.page_shift == last >> world.pgt.page_shift and first != last:
            a, b = loc_text(world, first), loc_text(world, last)
            head = a[:a.rindex("[")]
            return f"{op_text(world, op).split('(')[0]}({head}[{a[a.rindex('[') + 1:-1]}..{b[b.rindex('[') + 1:-1]}])"
    if op[0] in ("xchg", "WRITE_ONCE") and len({e.op[2:] for e in evs}) == 1:
        # The same value stored across one table: xchg(L3[3..511], LOCKED).
        first, last = evs[0].op[1], evs[-1].op[1]
        if first >> world.pgt.page_shift == last >> world.pgt.page_shift and first != last:
            a, b = loc_text(world, first), loc_text(world, last)
            text = op_text(world, op)
            return text.replace(a, f"{a[:a.rindex('[')]}[{a[a.rindex('[') + 1:-1]}.."
                                   f"{b[b.rindex('[') + 1:-1]}]", 1)
    texts = []
    for e in evs:
        t = op_text(world, e.op)
        if not texts or texts[-1] != t:
            texts.append(t)
    if len(texts) == 1:
        return texts[0]
    name = texts[0].split("(")[0]
    args = [t[len(name) + 1:-1] if t.startswith(name + "(") and t.endswith(")") else t
            for t in texts]
    if not all(t.startswith(name + "(") for t in texts):
        return ", ".join(texts) if len(texts) <= 3 else f"{texts[0]} .. {texts[-1]}"
    return f"{name}({', '.join(args) if len(args) <= 3 else args[0] + ' .. ' + args[-1]})"


def state_log(world) -> str:
    """Every step: index, CPU, kernel function, operation = result, then
    what the step changed in shared state."""
    out = []
    nw = max(len(a.name) for a in world.actors)
    for ev in world.events:
        fn = ev.stack[-1] if ev.stack else "?"
        en = ",".join(str(c) for c in ev.enabled)
        out.append(f"{ev.index:>4}  {world.actors[ev.cpu].name:<{nw}}  {fn:<34} "
                   f"{_step_text(world, ev)}    [enabled: {en}]")
        if ev.note:
            out.append(f"{'':>6}{'':<{nw}}  -> {ev.note}")
        for kind, msg in ev.violations:
            out.append(f"{'':>6}{'':<{nw}}  !! {kind}: {msg}")
    out.append(f"outcome: {world.outcome}")
    for v in world.violations:
        out.append(f"  {v.kind}: {v.explanation}")
    return "\n".join(out)


# ---------------------------------------------------------------------------
# The race diagram (kernel style): the causal slice, nested calls, names
# ---------------------------------------------------------------------------

#: Lines are at most this wide (an email).
WIDTH = 80

#: Functions of the model with no kernel function of that name: the race
#: diagram folds each into its caller (the reason says what it stands for).
MODEL_ONLY = {
    "hw_translate": "the MMU's walk: hardware, not a kernel function",
    "free_unlinked_table_now": "mm_ops->free_unlinked_table that frees at once "
                               "(pKVM's host_s2_free_unlinked_table; the 'none' scheme)",
    "stage2_put_unlinked_table_rcu": "mm_ops->free_unlinked_table of RFC v1 (April 2022)",
    "stage2_prune_unlinked_table": "RFC v1's pruning, done in the RFC inside "
                                   "stage2_map_walker's visits",
    "stage2_prune_walker": "RFC v1's pruning visitor (inside stage2_map_walker in the RFC)",
    "stage2_prune_lock_pte": "RFC v1's xchg of one entry of the unlinked subtree",
    "table_enter": "the refcount schemes' walker hook (no kernel has it)",
    "table_leave": "the refcount schemes' walker hook (no kernel has it)",
    "table_enter_shared": "the refcount schemes' walker hook (no kernel has it)",
    "table_leave_shared": "the refcount schemes' walker hook (no kernel has it)",
    "free_unlinked_table_shared": "the refcount scheme's mm_ops->free_unlinked_table",
    "stage2_free_table_page_rcu_cb": "RFC v1's RCU callback that drops a pruned table "
                                     "page's last reference (patch 14; its name is the model's)",
}

#: MmOps slots a walk calls through, drawn as "mm_ops->slot()".
_MM_OPS_SLOTS = ("free_unlinked_table", "prune_unlinked_table", "table_enter", "table_leave")

_LOCKED = None          # s2pt.descriptor.KVM_INVALID_PTE_LOCKED, imported lazily
_POISON = 0xAAAA_AAAA_AAAA_AAAA


class _Names:
    """What the diagram calls the table pages it mentions: ``L3`` when one
    level-3 table takes part, ``L3a``, ``L3b`` (in order of first mention,
    with a legend) when several do."""

    def __init__(self, world, events):
        pgt = world.pgt
        self.world = world
        self.shift = pgt.page_shift
        self.mask = pgt.addr_mask
        self.pgd = set(world.view.pgd_pfns)
        self.levels = world.view.levels
        mm = pgt.mm
        seen: list = []

        def note(pfn):
            if pfn is not None and pfn in mm.pages and pfn not in seen and pfn not in self.pgd:
                seen.append(pfn)
        for e in events:
            k = OPS.get(e.op[0])
            if (k is not None and k.addr) or e.op[0] == "hw_read":
                note(e.op[1] >> self.shift)
            for v in (e.result, e.op[2] if len(e.op) > 2 else None,
                      e.op[3] if len(e.op) > 3 else None):
                if isinstance(v, int) and not isinstance(v, bool) and v & 3 == 3:
                    note((v & self.mask) >> self.shift)
            if e.op[0] == "zalloc_page" and isinstance(e.result, int):
                note(e.result >> self.shift)
            if e.op[0] == "call_rcu":
                for a in e.op[2]:
                    if isinstance(a, int) and not isinstance(a, bool):
                        note(a >> self.shift)
        by_level: dict = {}
        for pfn in seen:
            by_level.setdefault(self.levels.get(pfn), []).append(pfn)
        self.names: dict = {}
        self.legend: list = []
        allocs = {e.result >> self.shift: e for e in world.events
                  if e.op[0] == "zalloc_page" and isinstance(e.result, int)}
        legend = []
        for level, pfns in by_level.items():
            # A page never linked has no level: "new" (a table page allocated
            # in the run that no entry ever pointed to).
            base = f"L{level}" if level is not None else "new"
            if len(pfns) == 1:
                self.names[pfns[0]] = base
                continue
            for k, pfn in enumerate(pfns):
                name = self.names[pfn] = base + "abcdefghijklmnopqrstuvwxyz"[k % 26]
                a = allocs.get(pfn)
                legend.append(f"{name} is " + (f"the table {world.actors[a.cpu].name} allocated"
                                               if a is not None else "a table at the start"))
        self.legend = ["; ".join(legend)] if legend else []

    def table(self, pfn) -> str:
        """``L3`` (or ``L3a``) for a table page, ``PGD`` for a PGD page."""
        if pfn in self.pgd:
            return "PGD"
        return self.names.get(pfn, f"page {pfn << self.shift:#x}")

    def page(self, addr) -> str:
        """The table page holding ``addr``, as a noun: "L3 table"."""
        name = self.table(addr >> self.shift)
        return name if name.startswith("page ") else f"{name} table"

    def entry(self, ptep) -> str:
        pfn = ptep >> self.shift
        pgt = self.world.pgt
        idx = (ptep & (pgt.page_size - 1)) >> 3
        if pfn in self.pgd:
            return f"PGD[{idx + self.world.view.pgd_pfns.index(pfn) * pgt.ptrs_per_pte}]"
        return f"{self.table(pfn)}[{idx}]"

    def value(self, v, level=None) -> str:
        global _LOCKED
        if _LOCKED is None:
            from ..descriptor import KVM_INVALID_PTE_LOCKED
            _LOCKED = KVM_INVALID_PTE_LOCKED
        if v is None:
            return "-"
        if not isinstance(v, int):
            return str(v)
        if v == 0:
            return "0"
        if v == _LOCKED:
            return "LOCKED"
        if v == _POISON:
            return "poison"
        pfn = (v & self.mask) >> self.shift
        if v & 3 == 3 and (level is None or level < 3) and pfn in self.world.pgt.mm.pages:
            return self.page(pfn << self.shift)
        return _desc_text(self.world.view, v, level)


def _change(names: _Names, old, new, lvl) -> str:
    """``old -> new``; for a leaf whose permissions or flags alone change,
    the output address once: ``page 0x40201000 RX -> RWX``."""
    a, b = names.value(old, lvl), names.value(new, lvl)
    pa, pb = a.split(" "), b.split(" ")
    if len(pa) > 2 and len(pb) > 2 and pa[:2] == pb[:2] and pa[0] in ("page", "block", "leaf"):
        return f"{a} -> {' '.join(pb[2:])}"
    return f"{a} -> {b}"


def _op_line(world, names: _Names, ev) -> str:
    """How one step reads in the race diagram."""
    op, r = ev.op, ev.result
    name = op[0]
    lvl = world.view.levels.get(op[1] >> names.shift) if len(op) > 1 and isinstance(op[1], int) \
        else None
    if name == "READ_ONCE":
        return f"READ_ONCE({names.entry(op[1])})" + (
            "" if ev.violations else f" = {names.value(r, lvl)}")
    if name == "hw_read":
        lvl = op[2] if len(op) > 2 else lvl
        return f"MMU reads {names.entry(op[1])}" + (
            "" if ev.violations else f" = {names.value(r, lvl)}")
    if name in ("WRITE_ONCE", "smp_store_release"):
        return f"{name}({names.entry(op[1])}, {names.value(op[2], lvl)})"
    if name == "cmpxchg":
        text = f"cmpxchg({names.entry(op[1])}, {_change(names, op[2], op[3], lvl)})"
        return text if r == op[2] else f"{text} fails: {names.value(r, lvl)}"
    if name == "xchg":
        return f"xchg({names.entry(op[1])}, {names.value(op[2], lvl)}) = {names.value(r, lvl)}"
    if name in ("get_page", "put_page", "free_page", "walker_get", "walker_put", "page_count",
                "get_page_unless_zero", "walker_get_unless_zero"):
        text = f"{name}({names.page(op[1])})"
        res = _result_text(op, r, world.view) if name != "walker_put" else ""
        return f"{text} = {res}" if res else text
    if name == "zalloc_page":
        return "zalloc_page(memcache)" + (f" = {names.page(r)}" if isinstance(r, int) else
                                          " = NULL")
    if name == "call_rcu":
        args = [names.page(a) for a in op[2][1:2] if isinstance(a, int)]
        fn = op[1].__name__
        return f"call_rcu({', '.join(([] if fn in MODEL_ONLY else [fn]) + args)})"
    if name == "rcu_next_callback":
        return "/* grace period over */"
    return _op_text(op, world.view)


def _stack_path(world, ev, mm_names: dict) -> list:
    """The frames of ``ev``'s stack the diagram may draw, outermost first,
    as ``(name, is_visitor, call)``: the program frame dropped (the column
    header names it), each walk's own frames replaced by its visitor
    callback, mm_ops callbacks named as such, model-only helpers folded.
    ``call`` tells two calls of one function apart (Event.calls)."""
    out: list = []
    walkers = list(ev.walkers)
    calls = ev.calls or (0,) * len(ev.stack)
    in_walk = False
    for name, call in zip(ev.stack[1:], calls[1:]):
        if name in _WALK_NAMES:
            if not in_walk:
                in_walk = True
                vis = walkers.pop(0) if walkers else "?"
                vis = mm_names.get(vis, vis)
                if vis not in MODEL_ONLY:
                    out.append((vis, True, call))
            continue
        in_walk = False
        name = mm_names.get(name, name)
        if name in MODEL_ONLY or " " in name:
            continue
        if out and out[-1][0] == name and out[-1][1]:
            continue                     # the visitor's own frame: drawn as its walk
        out.append((name, False, call))
    return out


def _walk_names() -> frozenset:
    """The names of the walker's own frames (kvm_pgtable_walk down to
    __kvm_pgtable_visit, s2pt.pgtable), drawn as the visitor they call."""
    from .. import pgtable as pt
    return frozenset(f.__name__ for f in (pt.kvm_pgtable_walk, pt._kvm_pgtable_walk,
                                          getattr(pt, "__kvm_pgtable_walk"),
                                          getattr(pt, "__kvm_pgtable_visit")))


_WALK_NAMES = _walk_names()


def _mm_ops_names(world) -> dict:
    """Kernel-name (or model name) of each mm_ops callback -> "mm_ops->slot"."""
    mm_ops = world.pgt.mm_ops
    out = {}
    for slot in _MM_OPS_SLOTS:
        fn = getattr(mm_ops, slot, None)
        if fn is not None:
            f = getattr(fn, "__func__", fn)
            out[DISPLAY.get(getattr(f, "__code__", None)) or f.__name__] = f"mm_ops->{slot}"
    return out


def _shown(paths: list) -> list:
    """Which frames of each path to draw (see the module docstring): the
    outermost frame, the page-table API function entered (the first
    ``kvm_pgtable_*``, kvm_pgtable.h), visitors with steps of their own, the
    frame a visitor calls, mm_ops callbacks, frames where the paths part
    ways, and the first frame below such a parting."""
    children: dict = {}
    direct: set = set()
    for p in paths:
        for k in range(len(p)):
            children.setdefault(tuple(p[:k]), set()).add(p[k])
        direct.add(tuple(p))
    def branches(node):
        return len(children.get(node, ())) + (1 if node in direct else 0) >= 2
    out = []
    for p in paths:
        keep = []
        api = next((k for k, (name, _v, _c) in enumerate(p) if name.startswith("kvm_pgtable_")),
                   None)
        for k, (name, vis, _call) in enumerate(p):
            node = tuple(p[:k + 1])
            parent = tuple(p[:k])
            if (k == 0 or k == api or branches(node) or branches(parent)
                    or (vis and node in direct) or (k and p[k - 1][1])
                    or name.startswith("mm_ops->")):
                keep.append(node)
        out.append(keep)
    return out


def _wrap(text: str, width: int, indent: str) -> list:
    """``text`` in lines of at most ``width``, broken after ", ", before
    " -> " or " = ", or at a space; continuation lines indented by
    ``indent``.  Nothing is cut."""
    lines = []
    lead = len(text) - len(text.lstrip(" "))
    while len(text) > width:
        cut = -1
        for sep, keep in ((", ", 1), (" -> ", 0), (" = ", 0), (": ", 1), (" /* ", 0), (" ", 0)):
            j = text.rfind(sep, lead + 1, width - (0 if keep else len(sep)) + 1)
            if j > lead:
                cut = j + keep
                break
        if cut < 0:
            break                          # one unbreakable word: let it run long
        lines.append(text[:cut].rstrip())
        text = indent + text[cut:].lstrip()
        lead = len(indent)
    lines.append(text)
    return lines


def _title(world) -> str:
    sc = getattr(world.scenario, "name", "?")
    sch = world.scheme
    name = getattr(sch, "name", "?")
    hist = getattr(sch, "history", "")
    own = getattr(world.scenario, "bugs", frozenset())
    bugs = sorted(set(world.bugs) - set(own))
    return (f"{sc} under {name}" + "".join(f" + {b}" for b in bugs)
            + (f" ({hist})" if hist else ""))


def _end_text(names: _Names, v) -> str:
    """One short line for a violation found at the end of the run."""
    from .causal import victim_page
    pa = victim_page(names.world, v)
    what = names.page(pa) if pa is not None and pa >> names.shift in names.names else None
    if v.kind == "leak" and what:
        return f"*** at the end: LEAK: {what} is unreachable and never freed"
    if v.kind == "refcount" and what:
        import re
        m = re.search(r"refcount (\d+), but (\d+) counted entries", v.message)
        if m:
            return (f"*** at the end: REFCOUNT: page_count({what}) is {m.group(1)}, "
                    f"its entries + 1 make {int(m.group(2)) + 1}")
    if v.kind == "lost-update":
        return "*** at the end: LOST UPDATE: no serial order gives the final map"
    return f"*** at the end: {v.kind.upper()}"


def race_diagram(world, violations=None, *, cycle_start: int | None = None,
                 width: int = WIDTH) -> str:
    """The run's causal slice as a kernel-style race diagram (see the
    module docstring), at most ``width`` columns wide.  ``violations``:
    the ones to explain (default: all of the run's).  ``cycle_start``: the
    index of the first step of a cycle that repeats forever (a livelock
    found as a lasso): a marker line goes before it."""
    from .causal import causal_slice
    sl = causal_slice(world, violations, cycle_start)
    events = world.events
    idx = sl.indices
    title = _title(world)
    if not world.violations and cycle_start is None:
        title += (": no violation" if world.outcome == "done" else ": no violation so far")
        if idx:
            title += "; what the CPUs shared"
    if not idx and not sl.end:
        return title + "\n(no CPU shares an entry with another: nothing to draw)"
    evs = [events[i] for i in idx]
    if not evs:
        tail = [_end_text(_Names(world, []), v) for v in sl.end]
        return "\n".join(_wrap(title, width, "  ") + [x for t in tail for x in _wrap(t, width, "    ")])
    names = _Names(world, evs)
    mm_names = _mm_ops_names(world)
    cpus = sorted({e.cpu for e in evs})
    # Each CPU's frames, and which of them to draw.
    def cpu_path(e):
        p = _stack_path(world, e, mm_names)
        # The outermost frame left, when the column header names it
        # ("vCPU0: user_mem_abort: 2M block"), need not be drawn again.
        if p and world.actors[e.cpu].role.startswith(p[0][0] + ":"):
            p = p[1:]
        return p

    paths = {e.index: cpu_path(e) for e in evs}
    keep = {}
    for c in cpus:
        mine = [e for e in evs if e.cpu == c]
        for e, k in zip(mine, _shown([paths[e.index] for e in mine])):
            keep[e.index] = k
    # The lines of each column, in time order: (time, cpu, depth, text).  A
    # function's line goes at the step its CPU entered it (the first step
    # of the run of steps whose stack holds it), the step's own line at
    # the step.
    rows: list = []
    printed = {c: [] for c in cpus}
    last_step = {c: -1 for c in cpus}
    full: dict = {}

    def path_of(i):
        p = full.get(i)
        if p is None:
            p = full[i] = tuple(cpu_path(events[i]))
        return p

    for e in evs:
        path = keep[e.index]
        prev = printed[e.cpu]
        j = 0
        while j < min(len(path), len(prev)) and path[j] == prev[j]:
            j += 1
        for k in range(j, len(path)):
            node = path[k]
            t = e.index
            for i in range(e.index - 1, -1, -1):
                if events[i].cpu != e.cpu:
                    continue
                if path_of(i)[:len(node)] != node or (prev and i <= last_step[e.cpu]):
                    break
                t = i
            rows.append((t, e.index, e.cpu, k, f"{node[-1][0]}()"))
        printed[e.cpu] = path
        last_step[e.cpu] = e.index
        note = sl.steps.get(e.index, "")
        text = _op_line(world, names, e) + (f" /* {note} */" if note else "")
        rows.append((e.index, e.index, e.cpu, len(path), text))
        for kind in sl.marks.get(e.index, ()):
            text = f"^^^ {kind.upper()} ^^^"
            if kind == "warn":
                msg = next((m for k_, m in e.violations if k_ == "warn"), "")
                text = f"^^^ WARN_ON: {msg} ^^^" if msg else text
            rows.append((e.index, e.index, e.cpu, len(path), text))
    if sl.cycle_start is not None and 0 <= sl.cycle_start < len(events):
        n = len(events) - sl.cycle_start
        rows.append((sl.cycle_start - 0.5, sl.cycle_start, None, 0,
                     f"--- from here the last {n} step{'s' if n != 1 else ''} repeat forever ---"))
    rows.sort(key=lambda r: (r[0], r[1]))
    rows = [(c, d, t) for _t, _i, c, d, t in rows]
    heads = {c: f"{world.actors[c].name}: {world.actors[c].role}" for c in cpus}
    return _layout(title, names.legend, cpus, heads, rows,
                   [_end_text(names, v) for v in sl.end], width)


#: The diagram's length the layout aims for (an email's screenful).
LINES = 25


def _layout(title, legend, cpus, heads, rows, tail, width) -> str:
    """Columns side by side within ``width``: each as wide as its widest
    line when they fit; else split to wrap the fewest lines (never cut).
    When that still leaves the diagram longer than :data:`LINES` (three
    CPUs with deep stacks), each column starts further right and its lines
    may run on under the next one's (every row holds one CPU's line)."""
    ind, gap = 2, 3
    lines = {c: [(" " * (d * ind), t) for cc, d, t in rows if cc == c] for c in cpus}

    def wrapped(c, cap):
        return [x for pad, t in lines[c] for x in _wrap(pad + t, cap, pad + "    ")]

    def fits(c, cap):
        return all(len(x) <= cap for x in wrapped(c, cap))

    def min_cap(c, hi):
        lo = 12
        while lo < hi:
            mid = (lo + hi) // 2
            if fits(c, mid):
                hi = mid
            else:
                lo = mid + 1
        return hi

    natural = {c: max([len(heads[c])] + [len(p) + len(t) for p, t in lines[c]]) for c in cpus}
    least = {c: max(min_cap(c, natural[c]), min(natural[c], 24)) for c in cpus}
    room = width - gap * (len(cpus) - 1)
    caps = None
    if sum(natural.values()) <= room:
        caps = dict(natural)
    elif len(cpus) == 2 and sum(least.values()) <= room:
        a, b = cpus
        best = None
        for ca in range(least[a], min(natural[a], room - least[b]) + 1):
            cb = min(room - ca, natural[b])
            n = (len(wrapped(a, ca)) + len(wrapped(b, cb))
                 + max(len(_wrap(heads[a], ca, "  ")), len(_wrap(heads[b], cb, "  "))))
            if best is None or n < best[0] or (n == best[0] and abs(ca - cb) < best[3]):
                best = (n, ca, cb, abs(ca - cb))
        caps = {a: best[1], b: best[2]}
    elif sum(least.values()) <= room:
        caps = dict(natural)
        while sum(caps.values()) > room:
            c = max((c for c in cpus if caps[c] > least[c]), key=lambda k: caps[k] - least[k])
            caps[c] -= 1
    clean = None
    if caps is not None:
        offs, x = {}, 0
        for c in cpus:
            offs[c] = x
            x += caps[c] + gap
        clean = _draw(title, legend, cpus, heads, rows, tail, width, offs, caps, caps)
        if clean.count("\n") < LINES or len(cpus) < 2:
            return clean
    # Evenly spaced starts, each column's lines reaching to the right
    # margin: the spacing is the largest that lets every column fit, and
    # with two columns the second starts where its widest line still fits.
    step = min((width - max(least[c], min(len(heads[c]), 40))) // j
               for j, c in enumerate(cpus) if j)
    if len(cpus) == 2 and width - natural[cpus[1]] >= 20:
        step = width - natural[cpus[1]]
    offs = {c: j * step for j, c in enumerate(cpus)}
    caps = {c: width - offs[c] for c in cpus}
    over = _draw(title, legend, cpus, heads, rows, tail, width, offs, caps, None)
    if clean is not None and clean.count("\n") <= over.count("\n"):
        return clean
    return over


def _draw(title, legend, cpus, heads, rows, tail, width, offs, caps, head_caps) -> str:
    ind = 2
    out = []
    out += _wrap(title, width, "  ")
    for line in legend:
        out += _wrap(line, width, "    ")
    if head_caps is None:
        # Overlapping columns: each CPU's header on a line of its own, at
        # its column.
        for c in cpus:
            for line in _wrap(heads[c], caps[c], "  "):
                out.append(_row({c: line}, offs))
    else:
        # The header: each CPU's name and role, wrapped in its column.
        head = {c: _wrap(heads[c], head_caps[c], "  ") for c in cpus}
        for j in range(max(len(v) for v in head.values())):
            out.append(_row({c: head[c][j] for c in cpus if j < len(head[c])}, offs))
    for c_, d, text in rows:
        if c_ is None:
            out += _wrap(text, width, "")
            continue
        pad = " " * (d * ind)
        for line in _wrap(pad + text, caps[c_], pad + "    "):
            out.append(_row({c_: line}, offs))
    for t in tail:
        out += _wrap(t, width, "    ")
    return "\n".join(out)


def _row(cells: dict, offs: dict) -> str:
    line = ""
    for c in sorted(cells, key=lambda c: offs[c]):
        line = line.ljust(offs[c]) + cells[c]
    return line.rstrip()


# ---------------------------------------------------------------------------
# The email: the race told as a commit message tells it
# ---------------------------------------------------------------------------

def _named(names: _Names, text: str) -> str:
    """``text`` with each table page address it mentions replaced by the
    diagram's name for that table ("table page 0x80002000" -> "L3 table")."""
    import re

    def sub(m):
        pfn = int(m.group(2), 16) >> names.shift
        return names.page(pfn << names.shift) if pfn in names.names else m.group(0)
    return re.sub(r"(table page|level-\d table|page) (0x[0-9a-f]+)", sub, text)


def _api(world, mm_names, ev, mm_ops: bool = False) -> str:
    """The function to name a step by in a sentence: the page-table API
    function it runs under (``kvm_pgtable_stage2_map``) -- or with
    ``mm_ops``, the mm_ops callback if there is one -- else its innermost
    drawn frame."""
    path = _stack_path(world, ev, mm_names)
    if mm_ops:
        for name, _v, _c in path:
            if name.startswith("mm_ops->"):
                return f"{name}()"
    for name, _v, _c in path:
        if name.startswith("kvm_pgtable_"):
            return f"{name}()"
    return f"{path[-1][0]}()" if path else f"{ev.stack[0]}()" if ev.stack else "its path"


def _sentences(world, sl, names: _Names) -> list:
    ev = world.events
    mm_names = _mm_ops_names(world)
    r = {k: ev[i] for k, i in sl.roles.items()}
    who = lambda e: world.actors[e.cpu].name          # noqa: E731
    out = []
    bad = r.get("bad")
    marks = [k for i in sl.marks for k in sl.marks[i]]
    freed_kinds = [k for k in marks if k in ("use-after-free", "double-free")]
    if bad is not None and (freed_kinds or "relink" in r):
        stale, unlink, make, free = r.get("stale"), r.get("unlink"), r.get("make"), r.get("free")
        table = "table"
        if stale is not None:
            lvl = world.view.levels.get(stale.op[1] >> names.shift) if stale.op[0] != "hw_read" \
                else (stale.op[2] if len(stale.op) > 2 else None)
            table = names.value(stale.result, lvl)
            if stale.op[0] == "hw_read":
                out.append(f"{who(stale)} walks {names.entry(stale.op[1])} and caches a "
                           f"pointer to the {table} in its walk cache.")
            else:
                out.append(f"In {_api(world, mm_names, stale)}, {who(stale)} reads "
                           f"{names.entry(stale.op[1])} and gets a pointer to the {table}.")
        if unlink is not None:
            lvl = world.view.levels.get(unlink.op[1] >> names.shift)
            what = (f"replaces {names.entry(unlink.op[1])} with "
                    f"{names.value(make.op[2], lvl)}" if make is not None and make.op[0] in
                    ("smp_store_release", "WRITE_ONCE") else
                    f"breaks {names.entry(unlink.op[1])}")
            tlbi = (", with no TLBI, so the walk cache still points at the table"
                    if stale is not None and stale.op[0] == "hw_read" else "")
            out.append(f"{who(unlink)}, in {_api(world, mm_names, unlink)}, then {what}, "
                       f"unlinking the {table}{tlbi}.")
        if "lost" in r:
            lost, win = r["lost"], r.get("winner")
            out.append(f"{who(lost)}'s cmpxchg on {names.entry(lost.op[1])} fails"
                       + (f": {who(win)} changed the entry first ({_op_line(world, names, win)})"
                          if win is not None else "") + ".")
        if table == "table" and free is not None and free.op[0] in ("put_page", "free_page"):
            table = names.page(free.op[1])
        if "defer" in r:
            out.append(f"{_api(world, mm_names, r['defer'], True)} hands it to call_rcu(), "
                       f"and the RCU callback frees it after a grace period.")
        elif free is not None and free.index != bad.index:
            how = ("drops the last walker reference to it" if free.op[0] == "walker_put"
                   else f"frees the {table}" if "lost" in r else "frees it at once")
            out.append(f"{who(free)} {how}, in {_api(world, mm_names, free, True)}.")
        if "relink" in r:
            rl = r["relink"]
            out.append(f"The allocator hands the same page to {who(rl)} as a new table"
                       + (f" at {names.entry(rl.op[1])}." if rl.op[0] in _STORES else "."))
        if "late" in r:
            lt = r["late"]
            out.append(f"{who(lt)}, still holding its pointer, stores into the table: "
                       f"{_op_line(world, names, lt)}.")
        kind = freed_kinds[0] if freed_kinds else None
        if kind == "double-free":
            out.append(f"{who(bad)} then frees it again: a double free.")
        elif kind is None:
            out.append(f"{who(bad)}'s {_op_line(world, names, bad)} then writes through its "
                       f"stale pointer into the reused page: another region's table (ABA).")
        elif sl.steps.get(bad.index) == "freed":
            out.append(f"{who(bad)} then frees the {table} while "
                       f"{who(stale) if stale is not None else 'a walk cache'} still points at "
                       f"it: a use-after-free.")
        elif free is not None and free.op[0] == "walker_put" and not any(
                sl.steps.get(i) == "freed" for i in sl.steps):
            out.append(f"{who(bad)}'s next access, {_op_line(world, names, bad)}, touches "
                       f"a table whose last reference is gone, being freed: a "
                       f"use-after-free.")
        else:
            out.append(f"{who(bad)}'s next access, {_op_line(world, names, bad)}, touches "
                       f"freed memory: a use-after-free.")
    elif "overwrite" in r:
        o, p = r["overwrite"], r["overwritten"]
        rd = r.get("read")
        lvl = world.view.levels.get(o.op[1] >> names.shift)
        seen = (f"reads {names.entry(o.op[1])} = {names.value(rd.result, lvl)}, then stores "
                f"{names.value(_written(o), lvl)} into it"
                if rd is not None and rd.cpu == o.cpu else
                f"stores {names.value(_written(o), lvl)} into {names.entry(o.op[1])}")
        out.append(f"{who(o)} {seen} over the {names.value(_written(p), lvl)} that "
                   f"{who(p)} stored there in between, which {who(o)} never saw.")
    elif bad is not None:
        for v in world.violations:
            if v.step == bad.index:
                out.append(_named(names, v.explanation))
                break
    for v in sl.end:
        out.append(f"At the end of the run: {_named(names, v.explanation)}")
    return out


def _written(ev):
    if ev.op[0] == "cmpxchg":
        return ev.op[3]
    return ev.op[2] if len(ev.op) > 2 else None


_STORES = frozenset(n for n, k in OPS.items() if k.stores)


def email_text(world, command: str, width: int = WIDTH) -> str:
    """The run as a patch review would carry it, in plain text no wider
    than ``width``: a subject line, a few sentences saying what races with
    what (from the causal slice), the race diagram, and ``command`` (the
    shell command that replays it, e.g. from
    :func:`s2pt.explorer.replay_command`)."""
    from .causal import causal_slice
    import textwrap
    sl = causal_slice(world)
    names = _Names(world, [world.events[i] for i in sl.indices])
    kinds = sorted({v.kind for v in world.violations})
    sc = getattr(world.scenario, "name", "?")
    bugs = "".join(f" + {b}" for b in sorted(set(world.bugs)
                                              - set(getattr(world.scenario, "bugs", ()))))
    under = f"under {getattr(world.scheme, 'name', '?')}{bugs}"
    head = f"{sc}: {', '.join(kinds)} {under}" if kinds else f"{sc}: no violation {under}"
    hist = getattr(world.scheme, "history", "")
    body = _sentences(world, sl, names) if kinds else [
        f"Every CPU finished after {world.nsteps} steps and the end-of-run checks passed."]
    if hist:
        body.append(f"The scheme: {getattr(world.scheme, 'name', '?')}, {hist}.")
    out = textwrap.wrap(head, width, break_on_hyphens=False) + [""]
    out += textwrap.wrap(" ".join(body), width, break_on_hyphens=False) + [""]
    out += [world.diagram(width=width), "", "Replay it with:", ""]
    out += ["  " + line for line in command.splitlines()]
    return "\n".join(out)
