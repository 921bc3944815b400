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
    (and its DSB) before the free protects.  Only the pKVM scenarios declare
    it; ``rcu`` and ``none`` (shared walks under ``kvm->mmu_lock``) cannot run
    there.

To add a scheme, subclass :class:`Scheme`, override what differs, and
register it in :data:`SCHEMES`; scenarios declare their expected outcomes
per scheme name.
"""

from __future__ import annotations

from . import pgtable as pt
from .errors import S2ptError
from .kvm import MMU_LOCK, MmuLock
from .ops import spin_lock, spin_unlock
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

    def fault_lock(self, unlinks: bool = False):
        yield spin_lock(HOST_MMU_LOCK)               # host_lock_component()

    def fault_unlock(self, unlinks: bool = False):
        yield spin_unlock(HOST_MMU_LOCK)             # host_unlock_component()

    def update_lock(self):
        yield spin_lock(HOST_MMU_LOCK)

    def update_unlock(self):
        yield spin_unlock(HOST_MMU_LOCK)


# The lock wrappers are not kernel functions: diagrams show their caller.
for _fn in (HypLockScheme.fault_lock, HypLockScheme.fault_unlock, HypLockScheme.update_lock,
            HypLockScheme.update_unlock):
    kernel_path(None)(_fn)

#: name -> Scheme instance, in the order listings show them.
SCHEMES: dict[str, Scheme] = {s.name: s for s in (NoneScheme(), RcuScheme(), HypLockScheme())}


def get_scheme(scheme) -> Scheme:
    if isinstance(scheme, Scheme):
        return scheme
    try:
        return SCHEMES[scheme]
    except (KeyError, TypeError):
        raise S2ptError(f"scheme={scheme!r}: unknown scheme; choose one of "
                        f"{', '.join(SCHEMES)}") from None


class RcuRfcScheme(Scheme):
    """``rcu-rfc``: RFC v1 of the parallel-faults series, the design the
    2022 thread replies to ("[RFC PATCH 09/17] KVM: arm64: Tear down
    unlinked page tables in parallel walk", Oliver Upton, April 2022).

    Faults run in parallel as in ``rcu`` (``read_lock(&kvm->mmu_lock)``,
    shared walks inside RCU read-side sections).  What differs is the
    teardown.  A fault that collapses a table into a block breaks the table
    entry (``stage2_try_break_pte``: LOCKED, TLBI), then, before it makes
    the block (``stage2_make_pte``), walks the subtree it has just unlinked.
    It "locks" every descendant entry with ``xchg`` so that no other walker
    can install into it, follows whatever each exchange took out, and
    drops each entry's reference at once
    (:func:`s2pt.pgtable.stage2_prune_unlinked_table`).  An entry already
    LOCKED by another walker is spun on.  Each table page's last reference
    goes to ``call_rcu``, with an rcu_head in the page's private data
    (:func:`s2pt.pgtable.stage2_free_table_page_rcu_cb`).

    The cost is on the break-before-make critical path: one ``xchg`` for
    each of the 512 entries of a level-3 table, and the table entry stays
    LOCKED the whole time, so every other fault in the range gets -EAGAIN
    and retries.  It was never merged.  v6.2 moved the teardown out of that
    path: the subtree is left alone until the RCU callback, which needs no
    atomics and no spinning, only "a boring traversal".  That is ``rcu``.
    """
    name = "rcu-rfc"
    summary = ("RFC v1 (April 2022, never merged): faults as in rcu, but a collapse locks every "
               "entry of the unlinked subtree with xchg inside its break-before-make, and each "
               "table page's last reference goes to call_rcu")
    free_unlinked_table = staticmethod(pt.stage2_put_unlinked_table_rcu)

    def mm_ops(self) -> pt.MmOps:
        return pt.MmOps(self.free_unlinked_table,
                        prune_unlinked_table=pt.stage2_prune_unlinked_table)


SCHEMES.update({s.name: s for s in (RcuRfcScheme(),)})
