"""Break-before-make, checked per descriptor the way casemate does.

The architecture forbids replacing a valid descriptor with a *different*
valid one (another output address, memory type, or block <-> table) in one
store: the TLB may hold the old and the new at once.  The sequence must be

    invalidate the entry  ->  TLBI for what it mapped (+ DSB)  ->  write the new entry

Each descriptor therefore goes through three states (casemate's names):

``VALID``            it holds a valid descriptor;
``INVALID_UNCLEAN``  it was valid and was invalidated, but no TLBI has
                     covered it yet: a TLB or walk cache may still use the
                     old value;
``INVALID``          invalid and clean.

and the checker reports, in casemate's words:

* ``BBM valid->valid``: a valid entry overwritten by a different valid one
  (permission and AF changes are allowed in place, as the kernel's attribute
  walker does);
* ``BBM invalid unclean->valid``: a new valid entry before the TLBI;
* ``cannot release table where children are still unclean``: a table page
  freed while some entry in it still awaits its TLBI.

A table becomes *retired* once the entry that linked it is invalidated and
clean: nothing can walk into it any more, so the RCU callback's "boring
traversal" may clear its entries without TLBIs.

Attach it to a table with ``BbmChecker(pgt)``; it observes the operations
the walker performs (which turns off the bulk fast path while attached).
"""

from __future__ import annotations

import numpy as np

from . import descriptor as d
from .snapshot import Stateful

__all__ = ["BbmChecker"]

# Bits that may change in place on a valid leaf: permissions, AF, SW bits.
_IN_PLACE = (d.KVM_PTE_LEAF_ATTR_S2_PERMS | d.KVM_PTE_LEAF_ATTR_LO_S2_AF
             | d.KVM_PTE_LEAF_ATTR_HI_SW)


class BbmChecker(Stateful):
    #: Not state: the table, the report channel, the violations seen so far,
    #: and the old value carried from before() to after() within one store.
    sim_ignore = ("pgt", "machine", "violations", "on_violation", "_old")

    def __init__(self, pgt, on_violation=None, machine=None):
        """Observe ``machine`` (default: the table's own).  Violations go to
        ``on_violation(message)`` if given, else the machine's ``violation``
        (which raises KernelBug in sequential use, records in the explorer)."""
        self.pgt = pgt
        self.machine = pgt.machine if machine is None else machine
        self.violations: list[str] = []
        self.on_violation = on_violation
        self.info: dict = {}       # table pfn -> (base IPA, level)
        self.unclean: dict = {}    # ptep -> (ipa, size, old value)
        self.retired: set = set()  # table pfns no longer reachable by any walker
        self._old = None
        for n, page in enumerate(pgt.pgd_pages):
            span = pgt.ptrs_per_pte * pgt.granule_size[pgt.start_level]
            self._link(page.pa, n * span, pgt.start_level)
        self.machine.pre_observers.append(self.before)
        self.machine.observers.append(self.after)
        pgt.mm.free_hooks.append(self.on_free)

    def detach(self):
        self.machine.pre_observers.remove(self.before)
        self.machine.observers.remove(self.after)
        self.pgt.mm.free_hooks.remove(self.on_free)

    # -- the explorer's snapshot protocol ---------------------------------
    def sim_state(self):
        """A hashable snapshot of the automaton (s2pt.sim.search restores
        stored states with :meth:`sim_restore` instead of deep copies)."""
        return (tuple(self.info.items()), tuple(self.unclean.items()), frozenset(self.retired))

    def sim_restore(self, state):
        info, unclean, retired = state
        self.info, self.unclean, self.retired = dict(info), dict(unclean), set(retired)

    # -- bookkeeping -------------------------------------------------------
    def report(self, message: str):
        self.violations.append(message)
        if self.on_violation is not None:
            self.on_violation(message)
        else:
            self.machine.violation("bbm", message)

    def _link(self, table_pa: int, base: int, level: int):
        """Record where a (newly linked) table sits, and its subtables."""
        pgt = self.pgt
        page = pgt.mm.pages.get(table_pa >> pgt.page_shift)
        if page is None or page.freed:
            return
        self.info[page.pfn] = (base, level)
        self.retired.discard(page.pfn)
        if level < 3:
            gran = pgt.granule_size[level]
            t = page.table
            for i in np.flatnonzero((t & np.uint64(3)) == np.uint64(3)).tolist():
                self._link(int(t[i]) & pgt.addr_mask, base + i * gran, level + 1)

    def _retire(self, table_pa: int, level: int):
        pgt = self.pgt
        page = pgt.mm.pages.get(table_pa >> pgt.page_shift)
        if page is None or page.freed or page.pfn in self.retired:
            return
        self.retired.add(page.pfn)
        if level < 3:
            t = page.table
            for i in np.flatnonzero((t & np.uint64(3)) == np.uint64(3)).tolist():
                self._retire(int(t[i]) & pgt.addr_mask, level + 1)

    def where(self, ptep: int):
        """(IPA, level) of a descriptor in a known live table, else None."""
        pfn = ptep >> self.pgt.page_shift
        if pfn in self.retired or pfn not in self.info:
            return None
        base, level = self.info[pfn]
        idx = (ptep & (self.pgt.page_size - 1)) >> 3
        return base + idx * self.pgt.granule_size[level], level

    def tlbi_pending(self, ipa: int) -> bool:
        """Does ``ipa`` lie under an entry that was invalidated and still
        awaits its TLBI (``INVALID_UNCLEAN``)?  Until that TLBI (and its DSB)
        completes, the architecture lets a TLB keep using the old value."""
        return any(b <= ipa < b + size for b, size, _o, _l in self.unclean.values())

    # -- observing operations ----------------------------------------------
    def before(self, op):
        name = op[0]
        if name in ("WRITE_ONCE", "smp_store_release", "cmpxchg"):
            page = self.pgt.mm.pages.get(op[1] >> self.pgt.page_shift)
            self._old = None if page is None or page.freed else page.table.item(
                (op[1] & (self.pgt.page_size - 1)) >> 3)

    def after(self, op, result):
        name = op[0]
        if name in ("WRITE_ONCE", "smp_store_release"):
            self._store(op[1], self._old, op[2])
        elif name == "cmpxchg":
            if result == op[2]:
                self._store(op[1], self._old, op[3])
        elif name == "tlbi":
            self._tlbi(op[1], op[2], op[3])
        elif name == "zalloc_page" and result is not None:
            pfn = result >> self.pgt.page_shift
            self.info.pop(pfn, None)
            self.retired.discard(pfn)

    def _store(self, ptep: int, old, new: int):
        if old is None or old == new:
            return
        loc = self.where(ptep)
        if loc is None:
            return                       # an unlinked or retired table
        ipa, level = loc
        pgt = self.pgt
        old_valid, new_valid = bool(old & 1), bool(new & 1)
        old_table = d.kvm_pte_table(old, level)
        new_table = d.kvm_pte_table(new, level)
        if old_valid and new_valid:
            if old_table != new_table or (old ^ new) & ~_IN_PLACE & ((1 << 64) - 1):
                self.report(f"BBM valid->valid: descriptor {ptep:#x} (IPA {ipa:#x}, level "
                            f"{level}) changed from {old:#x} to {new:#x} without "
                            f"break-before-make")
        elif old_valid and not new_valid:
            self.unclean[ptep] = (ipa, pgt.granule_size[level], old, level)
        elif not old_valid and new_valid and ptep in self.unclean:
            self.report(f"BBM invalid unclean->valid: descriptor {ptep:#x} (IPA {ipa:#x}, "
                        f"level {level}) made valid ({new:#x}) before the TLBI for its old "
                        f"value {self.unclean[ptep][2]:#x}")
            del self.unclean[ptep]
        if new_table:
            self._link(new & pgt.addr_mask, ipa, level + 1)

    def _tlbi(self, kind, addr, arg):
        if kind == "vmid":
            hit = list(self.unclean)
        elif kind == "range":
            hit = [p for p, (ipa, size, _o, _l) in self.unclean.items()
                   if ipa < addr + arg and ipa + size > addr]
        else:
            hit = [p for p, (ipa, size, _o, _l) in self.unclean.items() if ipa <= addr < ipa + size]
        for p in hit:
            ipa, size, old, level = self.unclean.pop(p)
            if d.kvm_pte_table(old, level):
                self._retire(old & self.pgt.addr_mask, level + 1)

    def on_free(self, page):
        lo, hi = page.pa, page.pa + self.pgt.page_size
        left = [p for p in self.unclean if lo <= p < hi]
        if left:
            self.report(f"cannot release table where children are still unclean: table "
                        f"{page.pa:#x} freed while {len(left)} of its entries await a TLBI")
            for p in left:
                del self.unclean[p]
        self.info.pop(page.pfn, None)
        self.retired.discard(page.pfn)

    def check_clean(self) -> list[str]:
        """Entries still awaiting a TLBI (call at a quiescent point)."""
        return [f"descriptor {p:#x} (IPA {ipa:#x}) invalidated but never TLBI'd"
                for p, (ipa, _s, _o, _l) in self.unclean.items()]
