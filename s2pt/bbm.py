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
  freed while some entry in it still awaits its TLBI -- or while it belongs
  to a subtree whose linking table entry does;
* ``BBM write table descriptor with unclean children``: a table descriptor
  stored that points at a page of such a subtree (relinking it elsewhere
  before the TLBI).

When a *table* entry is invalidated, casemate's step_write_on_valid marks
every descriptor of the subtree it linked (mark_not_writable_cb) and only
releases them when a TLBI covering the old entry and its DSB complete
(step_dsb_invalid_unclean_unmark_children); a release-table hint walks the
subtree and fails on any unclean descriptor (check_release_cb).  Here the
pages of that subtree are *doomed* until the TLBI: freeing one, or linking
one anywhere, is a violation.  (A ``tlbi`` op is TLBI + DSB.)  casemate's
"Wrote on a page with an unclean parent" is not checked: the post-6.2
shared walker may legitimately cmpxchg an entry of a subtree another CPU
has just unlinked (the RCU-protected walker finishes its visit; the write is
lost with the table), which casemate, written for pKVM's exclusive walks,
does not meet.

A table becomes *retired* once the entry that linked it is invalidated and
clean: nothing can walk into it any more, so the RCU callback's "boring
traversal" may clear its entries without TLBIs -- even long after the TLBI
(collapse frees the subtree from an RCU callback; pKVM's coalescing flushes
the VMID before put_page).

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
        # Table pfns of a subtree whose linking entry is INVALID_UNCLEAN ->
        # that entry's ptep (casemate: the subtree's descriptors stay unclean
        # until the TLBI for the old table entry completes).
        self.doomed: dict = {}
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
        return (tuple(self.info.items()), tuple(self.unclean.items()), frozenset(self.retired),
                tuple(sorted(self.doomed.items())))

    def sim_restore(self, state):
        info, unclean, retired, doomed = state
        self.info, self.unclean, self.retired = dict(info), dict(unclean), set(retired)
        self.doomed = dict(doomed)

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

    def _subtree(self, table_pa: int, level: int, out: list) -> list:
        """The live table pages reachable from the table at ``table_pa``
        (whose entries are of ``level``), itself included."""
        pgt = self.pgt
        page = pgt.mm.pages.get(table_pa >> pgt.page_shift)
        if page is None or page.freed:
            return out
        out.append(page.pfn)
        if level < 3:
            t = page.table
            for i in np.flatnonzero((t & np.uint64(3)) == np.uint64(3)).tolist():
                self._subtree(int(t[i]) & pgt.addr_mask, level + 1, out)
        return out

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
        if name in ("WRITE_ONCE", "smp_store_release", "cmpxchg", "xchg"):
            page = self.pgt.mm.pages.get(op[1] >> self.pgt.page_shift)
            self._old = None if page is None or page.freed else page.table.item(
                (op[1] & (self.pgt.page_size - 1)) >> 3)

    def after(self, op, result):
        name = op[0]
        if name in ("WRITE_ONCE", "smp_store_release", "xchg"):
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
            self.doomed.pop(pfn, None)

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
            if old_table:
                # casemate's mark_not_writable_cb: the whole subtree waits
                # for the TLBI of this entry.
                for pfn in self._subtree(old & pgt.addr_mask, level + 1, []):
                    self.doomed[pfn] = ptep
        elif not old_valid and new_valid and ptep in self.unclean:
            self.report(f"BBM invalid unclean->valid: descriptor {ptep:#x} (IPA {ipa:#x}, "
                        f"level {level}) made valid ({new:#x}) before the TLBI for its old "
                        f"value {self.unclean[ptep][2]:#x}")
            del self.unclean[ptep]
            # Reported once: its subtree is no longer tracked as waiting.
            for pfn in [f for f, p in self.doomed.items() if p == ptep]:
                del self.doomed[pfn]
        if new_table:
            child = new & pgt.addr_mask
            parent = self.doomed.get(child >> pgt.page_shift)
            if parent is not None:
                # casemate's step_write_table_mark_children: a table may only
                # be linked when all it reaches is clean.
                self.report(f"BBM write table descriptor with unclean children: descriptor "
                            f"{ptep:#x} (IPA {ipa:#x}, level {level}) links table {child:#x}, "
                            f"part of the subtree unlinked at descriptor {parent:#x}, whose "
                            f"TLBI has not completed")
            self._link(child, ipa, level + 1)
            home = self.doomed.get(ptep >> pgt.page_shift)
            if home is not None:
                # A table installed inside a doomed subtree joins it.
                for pfn in self._subtree(child, level + 1, []):
                    self.doomed.setdefault(pfn, home)

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
        if hit and self.doomed:
            # The TLBI (+ DSB) for the old table entry has completed: its
            # subtree is clean and unreachable (casemate's
            # step_dsb_invalid_unclean_unmark_children).
            done = set(hit)
            for pfn in [f for f, p in self.doomed.items() if p in done]:
                del self.doomed[pfn]
                self.retired.add(pfn)

    def on_free(self, page):
        lo, hi = page.pa, page.pa + self.pgt.page_size
        left = [p for p in self.unclean if lo <= p < hi]
        parent = self.doomed.pop(page.pfn, None)
        if left:
            self.report(f"cannot release table where children are still unclean: table "
                        f"{page.pa:#x} freed while {len(left)} of its entries await a TLBI")
            for p in left:
                del self.unclean[p]
        elif parent is not None:
            ipa, size, _old, level = self.unclean.get(parent, (None, 0, 0, None))
            where = f" (IPA {ipa:#x}, level {level})" if ipa is not None else ""
            self.report(f"cannot release table where children are still unclean: table "
                        f"{page.pa:#x} freed while the table entry {parent:#x}{where} that "
                        f"linked its subtree awaits a TLBI")
        self.info.pop(page.pfn, None)
        self.retired.discard(page.pfn)

    def check_clean(self) -> list[str]:
        """Entries still awaiting a TLBI (call at a quiescent point)."""
        return [f"descriptor {p:#x} (IPA {ipa:#x}) invalidated but never TLBI'd"
                for p, (ipa, _s, _o, _l) in self.unclean.items()]
