"""Race diagrams and state logs: what a run did, in words a reviewer knows.

A **race diagram** is the picture in a kernel commit message: one column per
CPU, time going down, the kernel function each step is in, and the failing
step marked::

     #  vCPU0 (collapse)                 vCPU1 (relax_perms)
        -----                            -----
     2                                   __kvm_pgtable_visit()
                                           READ_ONCE(L2[0]) = table 0x80002000
     4  stage2_try_break_pte()
          cmpxchg(L2[0], table -> LOCKED)
    ...
    31                                     READ_ONCE(L3[1])   <== use-after-free

Consecutive steps of one CPU with the same operation in the same function
fold into one line ("READ_ONCE(L3[2..511]) x510"), and a loop of a few
different steps repeated by one CPU (a walk visiting every entry of a
table: READ_ONCE, xchg, READ_ONCE, xchg ...) folds into one block::

             + 509 times:
               | __kvm_pgtable_visit()
    24-1041    |   READ_ONCE(L3[3..511])
               | stage2_prune_lock_pte()
               |   xchg(L3[3..511], LOCKED)
               +

Plain ASCII except the arrow, so it pastes into an email.

The **state log** lists every step with its result and what it changed
(descriptor values, refcounts, locks and RCU).
"""

from __future__ import annotations

from ..ops import FOLDABLE as _FOLDABLE
from ..ops import desc_text as _desc_text, loc_text as _loc_text
from ..ops import op_text as _op_text, result_text as _result_text

__all__ = ["op_text", "desc_text", "loc_text", "result_text", "race_diagram", "state_log"]


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


def race_diagram(world, width: int | None = None, fold: bool = True) -> str:
    """The run as a plain-text race diagram (see the module docstring).
    ``width`` caps each column (default 46 for two CPUs, 34 for more)."""
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
