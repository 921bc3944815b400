"""Teardown schemes: who may walk a table while someone unlinks it, and when
the unlinked subtree may be freed.

A scheme is a small object that the scenarios' CPU programs consult at the
points where the designs in the thread differ:

* ``fault_lock``/``fault_unlock``: what a vCPU fault handler takes around
  its walk (``read_lock(&kvm->mmu_lock)`` in the kernel since 6.2);
* ``update_lock``/``update_unlock``: what other table updates take (MMU
  notifier unmap, eager split: ``write_lock(&kvm->mmu_lock)``);
* ``fault_flags``: the walk flags of a fault (``SHARED | HANDLE_FAULT``);
* ``free_unlinked_table``: how ``mm_ops->free_unlinked_table`` frees an
  unlinked subtree; ``mm_ops()`` builds the table's mm_ops with it (a
  scenario builds its table with them: nothing is patched afterwards).

The schemes:

``rcu``
    The kernel's design since 6.2 (commit "KVM: arm64: Tear down unlinked
    stage-2 subtree after break-before-make" and the RCU series): faults run
    under the read lock inside RCU read-side sections (``kvm_pgtable_walk_begin``
    takes ``rcu_read_lock`` for shared walks), other updates under the write
    lock, and unlinked tables go to ``call_rcu``, whose callback frees the
    subtree with a "boring traversal" (``stage2_free_unlinked_table_rcu_cb``).
``none``
    A **counterfactual**: no kernel ever shipped it.  The same parallel
    faults under the read lock as ``rcu``, but the unlinked subtree is freed
    at once (``free_unlinked_table_now``).  It exists to show why the 2022
    series needed something more than the read lock: with parallel faults
    this is the use-after-free the thread is about.  (pKVM's host stage 2
    also frees at once, but under an exclusive lock: that is ``hyp-lock``.)
``hyp-lock``
    pKVM's hypervisor (EL2) and its host stage 2 (arch/arm64/kvm/hyp/nvhe/
    mem_protect.c): host faults (``handle_host_mem_abort`` ->
    ``host_stage2_idmap``), donations and reclaims (``__pkvm_host_donate_guest``,
    ``__pkvm_host_reclaim_page``) all take ``host_lock_component()``, i.e.
    ``hyp_spin_lock(&host_mmu.lock)``.  Every walk is exclusive (no
    ``KVM_PGTABLE_WALK_SHARED``: at EL2 ``kvm_pgtable_walk_begin`` refuses it
    with -EPERM), and unlinked tables are freed at once, under the lock
    (``host_s2_free_unlinked_table``; EL2 has no RCU).  The host CPUs' MMUs
    walk the table concurrently and take no lock: against them only the TLBI
    (and its DSB) before the free protects.  The pKVM scenarios declare
    it, and so do the guest scenarios, as a question: what if KVM guarded
    a guest's stage 2 with pKVM's lock (one spinlock, every fault and update
    exclusive)?  ``rcu`` and ``none`` (shared walks under ``kvm->mmu_lock``)
    cannot run at EL2.

``write-lock``, ``rwlock``
    The baseline before the 2022 series and Oliver Upton's alternative in
    the thread: see their classes below.

To add a scheme, subclass :class:`Scheme`, override what differs, and
register it in :data:`SCHEMES`; scenarios declare their expected outcomes
per scheme name.
"""

from __future__ import annotations

from . import pgtable as pt
from .errors import S2ptError
from .kvm import MMU_LOCK, MmuLock, kvm_stage2_unmap_range
from .ops import read_lock, read_unlock, spin_lock, spin_unlock, write_lock, write_unlock
from .ops import kernel_path

__all__ = ["Scheme", "SCHEMES", "get_scheme", "MMU_LOCK", "HOST_MMU_LOCK"]

#: pKVM's lock for the host stage 2 (struct host_mmu's hyp_spinlock_t).
HOST_MMU_LOCK = "host_mmu.lock"


class Scheme(MmuLock):
    """A teardown scheme: the kernel's locking of ``kvm->mmu_lock``
    (:class:`s2pt.kvm.MmuLock`, whose lock methods it inherits) plus how
    unlinked tables are freed.  A scenario builds its VM with the scheme as
    its locking and its table with the scheme's mm_ops."""

    name = "?"
    summary = ""

    #: mm_ops->free_unlinked_table: the kernel's, call_rcu (stage2_free_unlinked_table)
    free_unlinked_table = staticmethod(pt.stage2_free_unlinked_table)

    def mm_ops(self) -> pt.MmOps:
        """The mm_ops a guest table is built with under this scheme."""
        return pt.MmOps(self.free_unlinked_table)

    def __repr__(self):
        return f"<scheme {self.name}: {self.summary}>"


class RcuScheme(Scheme):
    name = "rcu"
    summary = ("faults under read_lock(mmu_lock) inside RCU read-side sections; other "
               "updates under write_lock; unlinked tables freed by call_rcu")


class NoneScheme(Scheme):
    name = "none"
    summary = ("counterfactual, never shipped: parallel faults under read_lock(mmu_lock), "
               "unlinked tables freed at once (no grace period)")
    free_unlinked_table = staticmethod(pt.free_unlinked_table_now)


class HypLockScheme(Scheme):
    name = "hyp-lock"
    summary = ("pKVM at EL2: host faults, donations and reclaims under hyp_spin_lock("
               "&host_mmu.lock); exclusive walks; unlinked tables freed at once; the "
               "host CPUs' MMUs take no lock")
    #: host_stage2_idmap's kvm_pgtable_stage2_map: exclusive (flags 0).
    fault_flags = 0
    free_unlinked_table = staticmethod(pt.free_unlinked_table_now)   # host_s2_free_unlinked_table

    def fault_lock(self, unlinks: bool = False, relax_only: bool = False):
        yield spin_lock(HOST_MMU_LOCK)               # host_lock_component()

    def fault_unlock(self, unlinks: bool = False, relax_only: bool = False):
        yield spin_unlock(HOST_MMU_LOCK)             # host_unlock_component()

    def update_lock(self):
        yield spin_lock(HOST_MMU_LOCK)

    def update_unlock(self):
        yield spin_unlock(HOST_MMU_LOCK)


class WriteLockScheme(Scheme):
    """The baseline the 2022 parallel-faults series replaced (up to v6.1).

    Jing Zhang's dirty-logging patches made ``kvm->mmu_lock`` a read/write
    lock and let user_mem_abort() take it for read when a fault would merely
    relax permissions; the rule it had when the series landed
    (``use_read_lock``): the memslot logs dirty pages, a write permission
    fault, and the fault granule is PAGE_SIZE.  Every other fault
    (map, block over table, table over block) and handle_access_fault()
    took it for write.  No walk was KVM_PGTABLE_WALK_SHARED, so there were
    no RCU readers; the read-side relax (kvm_pgtable_stage2_relax_perms)
    stored with a plain WRITE_ONCE, harmless because only permission bits
    of a valid leaf change under the read lock.  An unlinked table was freed
    at once (stage2_map_walk_table_pre put its pages, nobody else could be
    in it).

    Safe, and its cost is the one the series was written for: faults that
    map or collapse serialise behind one lock and "predictably can pile up
    all the vCPUs in a sufficiently large VM".  The model runs today's
    walker with the old locking (flags 0: exclusive, no HANDLE_FAULT).
    """

    name = "write-lock"
    summary = ("before 6.2: a fault that only relaxes permissions under read_lock(mmu_lock), "
               "every other fault under write_lock; exclusive walks; unlinked tables freed "
               "at once")
    fault_flags = 0
    free_unlinked_table = staticmethod(pt.free_unlinked_table_now)

    def fault_lock(self, unlinks: bool = False, relax_only: bool = False):
        if relax_only:
            yield read_lock(MMU_LOCK)                # use_read_lock
        else:
            yield write_lock(MMU_LOCK)

    def fault_unlock(self, unlinks: bool = False, relax_only: bool = False):
        if relax_only:
            yield read_unlock(MMU_LOCK)
        else:
            yield write_unlock(MMU_LOCK)


class RwlockScheme(Scheme):
    """Oliver Upton's alternative in the 2022 thread: "a rwlock with unmap
    on the write side and everything else on the read side".

    Faults (user_mem_abort, handle_access_fault) walk in parallel under
    ``read_lock(&kvm->mmu_lock)`` with shared walks (cmpxchg, -EAGAIN), as
    in mainline; the MMU notifier's unmap (kvm_unmap_gfn_range) and the
    kernel's other exclusive updates (write-protect, eager split) take the
    write lock.  What makes it safe without RCU: **no fault ever unlinks a
    table**.  Where a block would replace a table, the fault maps inside the
    table, at the table's level, instead (the model's NO_COLLAPSE walk flag,
    its rendering of the sketch, not a kernel flag:
    stage2_map_walk_table_pre declines).  The only walker that frees tables
    is the unmap (stage2_unmap_walker puts emptied tables at once), and it
    excludes every other software walker.

    Blocks still come back after dirty logging: turning logging off unmaps
    the whole memslot under the write lock (``logging_off``:
    kvm_stage2_unmap_range at kvm_arch_commit_memory_region), and the guest
    faults blocks back into empty space; the price is those refaults.  A
    vCPU that looked the memslot up before the change may still fault with
    logging on: it maps a page, never unlinks.

    The thread's pKVM question, answered in the model: pKVM's host stage 2
    collapses tables only when it coalesces after a reclaim
    (stage2_coalesce_walk_table_post); under this scheme that is write-side
    work, like unmap, while host faults and donations (which break blocks
    into tables, never unlink) could share the read side.  No RCU is needed,
    so the scheme could run at EL2; but EL2 has only hyp_spinlock_t today
    and refuses shared walks (-EPERM), so the pKVM scenarios run
    ``hyp-lock`` and do not declare this scheme.
    """

    name = "rwlock"
    summary = ("Oliver Upton's sketch: faults in parallel under read_lock(mmu_lock) that never "
               "replace a table by a block; unmap under write_lock; logging off unmaps the "
               "memslot; no RCU, tables freed at once")
    fault_flags = pt.HANDLE_FAULT | pt.SHARED | pt.NO_COLLAPSE
    free_unlinked_table = staticmethod(pt.free_unlinked_table_now)

    def logging_off(self, vm, slot):
        """kvm_arch_commit_memory_region() -> unmap the slot
        (kvm_stage2_unmap_range) under write_lock(&kvm->mmu_lock)."""
        yield from self.update_lock()
        yield from kvm_stage2_unmap_range(vm, slot.gpa, slot.size)
        yield from self.update_unlock()


# The lock wrappers are not kernel functions: diagrams show their caller.
for _fn in (HypLockScheme.fault_lock, HypLockScheme.fault_unlock, HypLockScheme.update_lock,
            HypLockScheme.update_unlock, WriteLockScheme.fault_lock,
            WriteLockScheme.fault_unlock, RwlockScheme.logging_off):
    kernel_path(None)(_fn)

#: name -> Scheme instance, in the order listings show them.
SCHEMES: dict[str, Scheme] = {s.name: s for s in (NoneScheme(), RcuScheme(), HypLockScheme())}
SCHEMES.update({s.name: s for s in (WriteLockScheme(), RwlockScheme())})


def get_scheme(scheme) -> Scheme:
    if isinstance(scheme, Scheme):
        return scheme
    try:
        return SCHEMES[scheme]
    except (KeyError, TypeError):
        raise S2ptError(f"scheme={scheme!r}: unknown scheme; choose one of "
                        f"{', '.join(SCHEMES)}") from None
