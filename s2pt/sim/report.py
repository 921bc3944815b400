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
fold into one line ("READ_ONCE(L3[2..511]) x510").  Plain ASCII except the
arrow, so it pastes into an email.

The **state log** lists every step with its result and what it changed
(descriptor values, refcounts, locks and RCU).
"""

from __future__ import annotations

from .. import descriptor as d
from ..memory import PAGE_POISON64

__all__ = ["op_text", "desc_text", "race_diagram", "state_log"]


def _level_of(world, pfn):
    return world.levels.get(pfn) if hasattr(world, "levels") else None


def loc_text(world, ptep: int) -> str:
    """L3[1] for entry 1 of a level-3 table; [0x...] when the level is unknown."""
    pgt = world.pgt
    pfn = ptep >> pgt.page_shift
    idx = (ptep & (pgt.page_size - 1)) >> 3
    level = _level_of(world, pfn)
    base = f"{pfn << pgt.page_shift:#x}"
    if level is None:
        return f"{base}[{idx}]"
    if level == pgt.start_level and pfn in world.pgd_pfns:
        return f"PGD[{idx + world.pgd_pfns.index(pfn) * pgt.ptrs_per_pte}]"
    if sum(1 for lv in world.levels.values() if lv == level) == 1:
        return f"L{level}[{idx}]"
    return f"L{level}@{base}[{idx}]"


def desc_text(world, value, level=None) -> str:
    """A descriptor in a few words: table 0x..., page 0x... R-X, LOCKED ..."""
    if value is None:
        return "-"
    if not isinstance(value, int):
        return str(value)
    if value == 0:
        return "0"
    if value == d.KVM_INVALID_PTE_LOCKED:
        return "LOCKED"
    if value == PAGE_POISON64:
        return "0xaaaa... (poison)"
    pgt = world.pgt
    if not value & 1:
        return f"{value:#x} (invalid)"
    pa = value & pgt.addr_mask
    if value & 2 and (level is None or level < 3) and pgt.mm.pages.get(pa >> pgt.page_shift):
        return f"table {pa:#x}"
    kind = "page" if level == 3 else "block" if level is not None else "leaf"
    af = "" if value & d.KVM_PTE_LEAF_ATTR_LO_S2_AF else " !AF"
    return f"{kind} {pa:#x} {d.prot_of(value)}{af}"


def _entry_level(world, ptep):
    return _level_of(world, ptep >> world.pgt.page_shift)


def op_text(world, op) -> str:
    name = op[0]
    pgt = world.pgt
    if name in ("READ_ONCE", "hw_read"):
        return f"{'MMU reads' if name == 'hw_read' else 'READ_ONCE'}({loc_text(world, op[1])})"
    if name in ("WRITE_ONCE", "smp_store_release"):
        return f"{name}({loc_text(world, op[1])}, {desc_text(world, op[2], _entry_level(world, op[1]))})"
    if name == "cmpxchg":
        lv = _entry_level(world, op[1])
        return (f"cmpxchg({loc_text(world, op[1])}, {desc_text(world, op[2], lv)} -> "
                f"{desc_text(world, op[3], lv)})")
    if name in ("get_page", "put_page", "page_count", "get_page_unless_zero", "free_page"):
        return f"{name}({op[1] & ~(pgt.page_size - 1):#x})"
    if name == "zalloc_page":
        return "zalloc_page(memcache)"
    if name == "tlbi":
        kind, addr, arg = op[1], op[2], op[3]
        if kind == "vmid":
            return "TLBI VMALLS12E1IS"
        if kind == "range":
            return f"TLBI range [{addr:#x}, +{arg:#x})"
        return f"TLBI IPAS2E1{'' if kind == 'ipa_nsh' else 'IS'} {addr:#x}"
    if name == "dsb":
        return f"dsb({op[1]})"
    if name == "cmo":
        return op[1]
    if name == "call_rcu":
        args = op[2]
        what = f", table {args[1]:#x}" if len(args) > 1 and isinstance(args[1], int) else ""
        return f"call_rcu({op[1].__name__}{what})"
    if name == "synchronize_rcu":
        return "synchronize_rcu(): grace period starts"
    if name == "rcu_gp_wait":
        return "synchronize_rcu(): readers gone"
    if name == "rcu_next_callback":
        return "callback"
    if name == "rcu_barrier":
        return "rcu_barrier()"
    if name == "hw_walk_start":
        return f"{op[3] if len(op) > 3 else 'guest'} access {op[1]:#x}: MMU starts"
    if name == "page_owner":
        return f"{op[3]}: PA {op[1]:#x} -> {op[2]}"
    if name == "kvm_mmu_topup_memory_cache":
        return f"kvm_mmu_topup_memory_cache(memcache, {op[2]})"
    if len(op) == 2 and isinstance(op[1], str):
        return f"{name}({op[1]})"
    if len(op) == 1:
        return f"{name}()"
    return f"{name}{op[1:]!r}"


def result_text(world, ev) -> str:
    name = ev.op[0]
    r = ev.result
    if name in ("READ_ONCE", "hw_read"):
        return desc_text(world, r, _entry_level(world, ev.op[1]))
    if name == "cmpxchg":
        return "ok" if r == ev.op[2] else f"failed, found {desc_text(world, r, _entry_level(world, ev.op[1]))}"
    if name in ("page_count", "get_page_unless_zero"):
        return str(r)
    if name == "zalloc_page":
        return f"{r:#x}" if isinstance(r, int) else "NULL"
    if name == "rcu_next_callback" and r:
        return r[0].__name__
    return ""


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


_FOLDABLE = {"READ_ONCE", "put_page", "page_count", "get_page", "hw_read", "cmo"}


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
