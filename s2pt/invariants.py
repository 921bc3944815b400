"""Global invariants of a stage-2 table, checked from the outside.

These checks read simulated memory directly with numpy; they deliberately do
not use the walker, so a walker bug cannot hide itself.  At a quiescent
point (no operation in flight):

1. Every table reachable from the PGD is allocated, and reachable exactly once.
2. Each table page's refcount is ``1 + its counted entries`` (a counted entry
   is any non-zero descriptor): ``page_count(table) == 1`` means empty.
3. No entry is ``KVM_INVALID_PTE_LOCKED``: every break-before-make finished.
4. Every allocated page is a reachable table, a PGD page, sitting in a
   memcache, or an unlinked table waiting for its RCU callback.  Anything else
   is a leak (the bug f6a27d6dc51b fixed).
5. A destroyed table (``Stage2.destroy``, kvm_pgtable_stage2_destroy) holds
   nothing: its PGD and every table page are free, and no RCU callback still
   refers to them.

The objects that own a table keep records of their own (pKVM's page owners,
a VM's memslots and dirty bitmaps); their ``check_invariants()`` add checks
of the table against those records (``s2pt.kvm.VM.check_invariants``,
``s2pt.pkvm.Host.check_invariants``).
"""

from __future__ import annotations

import numpy as np

from .errors import KernelBug
from .descriptor import KVM_INVALID_PTE_LOCKED

__all__ = ["reachable_tables", "leaves", "check_stage2"]


def reachable_tables(pgt):
    """[(page, level)] for every table reachable from the PGD, PGD first.

    Raises KernelBug if a table is reached twice or points into freed memory.
    """
    mm = pgt.mm
    out = []
    seen = set()
    stack = [(p, pgt.start_level) for p in reversed(pgt.pgd_pages)]
    while stack:
        page, level = stack.pop()
        if page.pfn in seen:
            raise KernelBug("invariant", f"table {page.pa:#x} is linked more than once")
        seen.add(page.pfn)
        if page.freed:
            raise KernelBug("use-after-free", f"freed page {page.pa:#x} is still linked as a level-{level} table")
        out.append((page, level))
        if level == 3:
            continue
        t = page.table
        tbl = np.flatnonzero((t & np.uint64(3)) == np.uint64(3))
        children = []
        for i in tbl.tolist():
            cpa = int(t[i]) & pgt.addr_mask
            child = mm.pages.get(cpa >> mm.page_shift)
            if child is None:
                raise KernelBug("invariant", f"entry {i} of table {page.pa:#x} points to {cpa:#x}, "
                                             f"which is not a page-table page")
            children.append((child, level + 1))
        stack.extend(reversed(children))
    return out


def leaves(pgt):
    """Every non-empty non-table entry: [(ipa, size, level, pte)] in IPA order."""
    out = []
    ptrs = pgt.ptrs_per_pte

    def visit(page, level, base):
        t = page.table
        gran = pgt.granule_size[level]
        for i in np.flatnonzero(t).tolist():
            v = int(t[i])
            ipa = base + i * gran
            if level < 3 and v & 3 == 3:
                child = pgt.mm.pages[(v & pgt.addr_mask) >> pgt.page_shift]
                visit(child, level + 1, ipa)
            else:
                out.append((ipa, gran, level, v))

    for n, page in enumerate(pgt.pgd_pages):
        visit(page, pgt.start_level, n * ptrs * pgt.granule_size[pgt.start_level])
    return out


def check_stage2(pgt, extra_owned=(), memcaches=None):
    """Raise KernelBug listing every broken invariant (none: returns None).
    ``memcaches``: the memcaches whose pages are not leaks (default: the
    table's owner's, ``pgt.memcaches``)."""
    problems = []
    if getattr(pgt, "destroyed", False):
        cached = {p.pfn for mc in (getattr(pgt, "memcaches", ()) if memcaches is None
                                   else memcaches) for p in mc.objects}
        cached.update(extra_owned)
        held = [p for pfn, p in pgt.mm.pages.items() if not p.freed and pfn not in cached]
        if held:
            problems.append(f"the table was destroyed but {len(held)} page(s) it held are "
                            f"still allocated (first {held[0].pa:#x})")
        if pgt.machine.rcu_callbacks:
            problems.append(f"the table was destroyed with {len(pgt.machine.rcu_callbacks)} "
                            f"RCU callback(s) still queued on it")
        if problems:
            raise KernelBug("invariant", "; ".join(problems))
        return
    try:
        tables = reachable_tables(pgt)
    except KernelBug as e:
        raise KernelBug("invariant", str(e)) from None
    owned = {p.pfn for p, _ in tables}
    for page, level in tables:
        t = page.table
        if getattr(pgt, "counts_every_entry", True):
            counted = int(np.count_nonzero(t))
        else:
            counted = sum(1 for v in t[np.flatnonzero(t)].tolist() if pgt.pte_is_counted(v, level))
        if page.refcount != counted + 1:
            problems.append(f"level-{level} table {page.pa:#x}: refcount {page.refcount}, "
                            f"but {counted} counted entries + 1")
        locked = np.flatnonzero(t == np.uint64(KVM_INVALID_PTE_LOCKED))
        if len(locked):
            problems.append(f"table {page.pa:#x} entry {int(locked[0])} is still "
                            f"KVM_INVALID_PTE_LOCKED at a quiescent point")
    for mc in getattr(pgt, "memcaches", ()) if memcaches is None else memcaches:
        owned.update(p.pfn for p in mc.objects)
    for fn, args in pgt.machine.rcu_callbacks:
        # An unlinked subtree waiting for its grace period: its pages are
        # allocated but deliberately unreachable.
        if len(args) >= 2:
            root = pgt.mm.pages.get(args[1] >> pgt.mm.page_shift)
            if root is not None:
                owned.update(_subtree(pgt, root, args[2] + 1))
    owned.update(extra_owned)
    for pfn, page in pgt.mm.pages.items():
        if not page.freed and pfn not in owned:
            problems.append(f"page {page.pa:#x} (refcount {page.refcount}) is allocated but "
                            f"neither reachable nor in a memcache nor awaiting RCU: a leak")
    if problems:
        raise KernelBug("invariant", "; ".join(problems))


def _subtree(pgt, page, level):
    out = {page.pfn}
    if level < 3 and not page.freed:
        t = page.table
        for i in np.flatnonzero((t & np.uint64(3)) == np.uint64(3)).tolist():
            child = pgt.mm.pages.get((int(t[i]) & pgt.addr_mask) >> pgt.page_shift)
            if child is not None:
                out |= _subtree(pgt, child, level + 1)
    return out
