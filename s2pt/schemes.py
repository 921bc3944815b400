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
    The model follows mainline today, not v6.2 itself: v6.2 named the
    callbacks ``stage2_free_removed_table[_rcu_cb]``,
    ``kvm_pgtable_stage2_free_removed`` and ``mm_ops->free_removed_table``
    (c14d08c5adb2 renamed them "unlinked" in v6.5), passed faults only
    ``KVM_PGTABLE_WALK_SHARED`` (``KVM_PGTABLE_WALK_HANDLE_FAULT`` came with
    ddcadb297ce5, v6.3), ran handle_access_fault under the write lock (until
    fc61f554e694, v6.3), lacked the reload of a9f0e3d5a089 (v6.4) and
    flushed the whole VMID when it broke a table entry (range TLBIs came in
    v6.6).  Traces use today's names.
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

``write-lock``, ``rwlock``, ``rwlock-collapse-write``, ``rwlock-relax-page``
    The baseline before the 2022 series (v6.1), Oliver Upton's alternative
    in the thread, and the two variants of it the thread leaves open: see
    their classes below.

To add a scheme, subclass :class:`Scheme`, override what differs, and
register it in :data:`SCHEMES`; scenarios declare their expected outcomes
per scheme name.
"""

from __future__ import annotations

from . import pgtable as pt
from .errors import S2ptError
from .kvm import MMU_LOCK, MmuLock, kvm_stage2_unmap_range
from .descriptor import kvm_pte_table
from .ops import read_lock, read_unlock, spin_lock, spin_unlock, write_lock, write_unlock
from .ops import (READ_ONCE, get_page, get_page_unless_zero, kernel_path, page_private,
                  put_page, set_page_private, walker_get, walker_get_unless_zero, walker_put)

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
    #: Where the scheme comes from, in a few words (the race diagram's title).
    history = ""
    #: Which kernel (or which proposal, on which kernel) the scheme models;
    #: ``kernel`` (s2pt.kvm.MmuLock) is the walker its VM's table follows.
    version = ""

    #: mm_ops->free_unlinked_table: the kernel's, call_rcu (stage2_free_unlinked_table)
    free_unlinked_table = staticmethod(pt.stage2_free_unlinked_table)

    def mm_ops(self, bugs=frozenset()) -> pt.MmOps:
        """The mm_ops a guest table is built with under this scheme (with
        the scenario's bug switches, for a scheme that has its own)."""
        return pt.MmOps(self.free_unlinked_table)

    def __repr__(self):
        return f"<scheme {self.name} ({self.version}): {self.summary}>"


class RcuScheme(Scheme):
    name = "rcu"
    history = "the kernel's scheme since 6.2"
    version = ("mainline today: the design of v6.2, with the names of v6.5 (c14d08c5adb2, "
               "'unlinked'), HANDLE_FAULT and handle_access_fault under the read lock "
               "(v6.3), the reload of a9f0e3d5a089 (v6.4) and range TLBIs (v6.6)")
    summary = ("faults under read_lock(mmu_lock) inside RCU read-side sections; other "
               "updates under write_lock; unlinked tables freed by call_rcu")


class NoneScheme(Scheme):
    name = "none"
    history = "a counterfactual: no kernel ever shipped it"
    version = "a counterfactual, on today's mainline walker"
    summary = ("counterfactual, never shipped: parallel faults under read_lock(mmu_lock), "
               "unlinked tables freed at once (no grace period)")
    free_unlinked_table = staticmethod(pt.free_unlinked_table_now)


class HypLockScheme(Scheme):
    """``hyp-lock``: pKVM's host stage 2 at EL2 (see the module docstring).

    **On the guest scenarios** it is declared as a question -- what if KVM
    guarded a guest's stage 2 with pKVM's lock? -- and those scenarios
    collapse tables (a block over the table dirty logging left).  pKVM's own
    guest stage 2 never does: android15-6.6's guest mm_ops have
    ``guest_s2_free_unlinked_table``, which is ``WARN_ON(1)`` ("We are trying
    to collapse a table into a block mapping. This is forbidden."), and
    mainline's guest mm_ops have no free_unlinked_table at all
    (``guest_stage2_force_pte_cb``).  That is the direct answer to Oliver
    Upton's question in the thread, "Does pKVM ever collapse tables into
    blocks?": for a guest, no; for the host, only when it coalesces
    (s2pt.pkvm).
    """
    name = "hyp-lock"
    history = "pKVM's host stage 2 at EL2"
    version = ("pKVM's host stage 2 at EL2 on today's mainline walker, with "
               "android15-6.6's coalescing (s2pt.pkvm)")
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
    all the vCPUs in a sufficiently large VM".

    **The kernel it models: v6.1**, walker included (``kernel = "6.1"``: the
    VM's table is built with the v6.1 switch of the one walker,
    s2pt.stage2.KvmPgtable).  Fault walks have flags 0 (exclusive: no
    KVM_PGTABLE_WALK_SHARED, and no KVM_PGTABLE_WALK_HANDLE_FAULT, which
    ddcadb297ce5 added in v6.3); handle_access_fault takes the write lock
    (fc61f554e694 moved it behind the read lock in v6.3).  A collapse is
    v6.1's anchor walk: stage2_map_walk_table_pre clears the table entry
    and flushes the whole VMID (__kvm_tlb_flush_vmid), the leaf visits put
    every page of the subtree and stage2_map_walk_table_post frees the
    tables on the way up and installs the block at the anchor, so the
    entry stays invalid for the whole teardown (a break-before-make window
    of over a thousand steps for a 2M collapse, like ``rcu-rfc``'s but with
    plain stores); 5c359cca1faf (v6.2) moved the teardown after the make.
    There is no mm_ops->free_unlinked_table in v6.1 (free_removed_table
    arrived with 5c359cca1faf); this scheme's ``free_unlinked_table`` is
    never called.  Replacing a leaf clears it first (stage2_put_pte), with
    no KVM_INVALID_PTE_LOCKED.  Simplification: the unmap and attribute
    walks run today's code on the v6.1 table (they differ in details that
    no scenario here reaches: TLBI level hints, the return value of an
    attribute walk that meets an invalid entry).  Eager page splitting
    arrived in v6.5: a write-lock VM refuses an eager split chunk, and the
    eager-split scenario does not declare this scheme.
    """

    name = "write-lock"
    history = "the kernel's scheme before 6.2"
    kernel = "6.1"
    version = "v6.1, walker included (the last kernel before the parallel-faults series)"
    summary = ("v6.1: a fault that only relaxes permissions under read_lock(mmu_lock), "
               "every other fault under write_lock; exclusive walks; a collapse tears the "
               "subtree down inside its break-before-make (the anchor walk)")
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
    table** (the model's NO_COLLAPSE walk flag, its rendering of the sketch,
    not a kernel flag: stage2_map_walk_table_pre declines).  The only walker
    that frees tables is the unmap (stage2_unmap_walker puts emptied tables
    at once), and it excludes every other software walker.  Faults are not
    RCU readers (``rcu_walkers=False``): nothing a read-side walker can be
    inside is ever freed, so there is no grace period to wait for.

    **What a declined collapse does.**  A fault whose block would replace a
    table maps no block.  The walk descends into the table and visits its
    entries in order as a map of the whole block range would: it maps pages
    into the empty entries it meets, and stops at the first valid leaf that
    differs from what it would install only in permissions (or not at all):
    stage2_map_walker_try_leaf returns -EAGAIN, which ends a HANDLE_FAULT
    walk.  user_mem_abort() returns 0 and the guest re-executes the access.
    For the write fault that follows dirty logging -- a write to a
    read-only page of the table, asking for the 2M block -- that leaf is the
    faulting page itself: the fault maps nothing, never gains its write
    permission, and returns -EAGAIN every time it is taken, until something
    removes the table.  Here that is turning logging off, which unmaps the
    whole memslot under the write lock (``logging_off``:
    kvm_stage2_unmap_range at kvm_arch_commit_memory_region); after it the
    fault maps its block into empty space, and the price is the guest's
    refaults.  Until that commit runs -- or for ever, for a table no commit
    unmaps -- the vCPU spins on the fault.  The two variants the thread
    leaves open are :class:`RwlockCollapseWriteScheme` (the fault that would
    unlink takes the write lock) and :class:`RwlockRelaxPageScheme` (the
    fault asks for the page, not the block).  A vCPU that looked the
    memslot up before the change may still fault with logging on: it maps
    a page, never unlinks.

    **The thread's pKVM question.**  pKVM's host stage 2 collapses tables
    when it coalesces (android15-6.6: from the TABLE_POST of a host map
    walk, s2pt.pkvm), so under this scheme coalescing would be write-side
    work, like unmap.  Whether host faults and donations could then share
    the read side, as the sketch suggests, the model answers no.  The host
    fault path is check-then-act: host_stage2_adjust_range reads the leaf
    (a get-leaf walk) and decides from it that the range is the host's, then
    host_stage2_idmap_locked maps that range.  A donation on the read side
    that lands between the two writes the guest's owner annotation -- or,
    for a larger range, a table holding it -- and the fault's map then
    overwrites the annotation (or collapses the table): the host maps the
    guest's page.  The explorer finds it in ``host-fault-vs-donate-shared``
    (shared walks and cmpxchg do not help: each store wins its own race).
    And host_stage2_try()'s -ENOMEM path frees table pages from the fault
    path itself (kvm_pgtable_stage2_reclaim_leaves in android15-6.6,
    host_stage2_unmap_dev_all in mainline), which on a read side would free
    tables other walkers are in.  EL2 also has only hyp_spinlock_t today and
    refuses shared walks (-EPERM), so the other pKVM scenarios run
    ``hyp-lock`` and do not declare this scheme.
    """

    name = "rwlock"
    history = "Oliver Upton's 2022 sketch, never merged"
    version = "Oliver Upton's sketch in the 2022 thread, on today's mainline walker"
    summary = ("Oliver Upton's sketch: faults in parallel under read_lock(mmu_lock) that never "
               "replace a table by a block; unmap under write_lock; logging off unmaps the "
               "memslot; no RCU, tables freed at once")
    fault_flags = pt.HANDLE_FAULT | pt.SHARED | pt.NO_COLLAPSE
    free_unlinked_table = staticmethod(pt.free_unlinked_table_now)

    def mm_ops(self, bugs=frozenset()) -> pt.MmOps:
        """Faults are no RCU readers: nothing is freed under the read lock."""
        return pt.MmOps(self.free_unlinked_table, rcu_walkers=False)

    def logging_off(self, vm, slot):
        """kvm_arch_commit_memory_region() -> unmap the slot
        (kvm_stage2_unmap_range) under write_lock(&kvm->mmu_lock)."""
        yield from self.update_lock()
        yield from kvm_stage2_unmap_range(vm, slot.gpa, slot.size)
        yield from self.update_unlock()


class RwlockCollapseWriteScheme(RwlockScheme):
    """``rwlock-collapse-write``: the first variant the thread leaves open.
    A fault that would unlink -- user_mem_abort asks for a block larger
    than the granule the MMU reported, so a table stands where the block
    would go (``fault_lock``'s ``unlinks``) -- takes ``write_lock(&kvm->
    mmu_lock)`` and walks exclusively, without NO_COLLAPSE: it collapses the
    table and frees the subtree at once, as v6.1 did, while every other
    software walker is kept out.  Every other fault runs on the read side
    with NO_COLLAPSE, as in ``rwlock``: the ``unlinks`` test is made before
    the lock, from the fault the MMU reported, and a read-side fault that
    meets a table anyway still declines.  Turning logging off changes
    nothing at once (mainline's commit): blocks come back one collapsing
    fault at a time, each behind the write lock.  No RCU readers.

    The model's variant of the sketch (no kernel or posted patch)."""
    name = "rwlock-collapse-write"
    history = "a variant of Oliver Upton's 2022 sketch (the model's)"
    version = "a variant of Oliver Upton's sketch (the model's), on today's mainline walker"
    summary = ("rwlock whose faults that would replace a table by a block take write_lock and "
               "collapse exclusively (freeing at once); other faults on the read side never "
               "collapse; logging off unmaps nothing")

    def fault_lock(self, unlinks: bool = False, relax_only: bool = False):
        yield (write_lock if unlinks else read_lock)(MMU_LOCK)

    def fault_unlock(self, unlinks: bool = False, relax_only: bool = False):
        yield (write_unlock if unlinks else read_unlock)(MMU_LOCK)

    def fault_walk_flags(self, flags: int, unlinks: bool = False, relax_only: bool = False) -> int:
        """Under the write lock: an exclusive walk that may collapse."""
        if unlinks:
            return flags & ~(pt.SHARED | pt.NO_COLLAPSE)
        return flags

    def logging_off(self, vm, slot):
        """Mainline's commit: nothing; faults collapse lazily."""
        return
        yield


class RwlockRelaxPageScheme(RwlockScheme):
    """``rwlock-relax-page``: the second variant the thread leaves open.  A
    fault that would replace a table by a block asks for the granule the
    MMU reported instead (``fault_map_size``): a permission fault relaxes
    that one page (kvm_pgtable_stage2_relax_perms), a translation fault maps
    that one page.  Nothing on the read side ever asks for a block over a
    table, so ``rwlock``'s -EAGAIN loop cannot happen; blocks come back as in
    ``rwlock``, when turning logging off unmaps the memslot.  No RCU readers.

    The model's variant of the sketch (no kernel or posted patch)."""
    name = "rwlock-relax-page"
    history = "a variant of Oliver Upton's 2022 sketch (the model's)"
    version = "a variant of Oliver Upton's sketch (the model's), on today's mainline walker"
    summary = ("rwlock whose faults ask for the page the MMU reported, not a block over a "
               "table (relax or map 4K); unmap under write_lock; logging off unmaps the memslot")

    def fault_map_size(self, vma_pagesize: int, fault_granule: int, perm: bool) -> int:
        return min(vma_pagesize, fault_granule)


# The lock wrappers are not kernel functions: diagrams show their caller.
for _fn in (HypLockScheme.fault_lock, HypLockScheme.fault_unlock, HypLockScheme.update_lock,
            HypLockScheme.update_unlock, WriteLockScheme.fault_lock,
            WriteLockScheme.fault_unlock, RwlockScheme.logging_off,
            RwlockCollapseWriteScheme.fault_lock, RwlockCollapseWriteScheme.fault_unlock,
            RwlockCollapseWriteScheme.logging_off):
    kernel_path(None)(_fn)

#: name -> Scheme instance, in the order listings show them.
SCHEMES: dict[str, Scheme] = {s.name: s for s in (NoneScheme(), RcuScheme(), HypLockScheme())}
SCHEMES.update({s.name: s for s in (WriteLockScheme(), RwlockScheme(),
                                    RwlockCollapseWriteScheme(), RwlockRelaxPageScheme())})


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
    entry (``stage2_try_break_pte``: LOCKED, and a TLBI of the whole VMID,
    ``__kvm_tlb_flush_vmid``, as the RFC's patch 06 issued it for a table:
    Oliver Upton's mail of 4 May 2022 calls avoiding that flush "highly
    desirable"), then, before it makes the block (``stage2_make_pte``),
    walks the subtree it has just unlinked.  It "locks" every descendant
    entry with ``xchg`` so that no other walker can install into it, follows
    whatever each exchange took out, and drops each entry's reference at
    once (:func:`s2pt.pgtable.stage2_prune_unlinked_table`; patches 08-10).
    An entry already LOCKED by another walker is spun on.  Each table page's
    last reference goes to ``call_rcu``, with an rcu_head in the page's
    private data (:func:`s2pt.pgtable.stage2_free_table_page_rcu_cb`; patch
    14, "Punt last page reference to rcu callback for parallel walk").

    The cost is on the break-before-make critical path: one ``xchg`` for
    each of the 512 entries of a level-3 table, and the table entry stays
    LOCKED the whole time, so every other fault in the range gets -EAGAIN
    and retries.  That is where the teardown had always been: mainline's
    own collapse before v6.2 (``write-lock``, v6.1) also tore the subtree
    down between the break and the make, with plain stores under the write
    lock.  The RFC was never merged.  The series that landed in v6.2 moved
    the teardown after the make -- "A subsequent change to KVM will move
    the tear down of an unlinked stage-2 subtree out of the critical path of
    the break-before-make sequence" ("KVM: arm64: Add a helper to tear down
    unlinked stage-2 subtrees"; 5c359cca1faf did the move) -- and left the
    subtree alone until the RCU callback, which needs no atomics and no
    spinning, only "a boring traversal".  That is ``rcu``.

    The model runs the RFC's teardown on today's walker (the RFC itself
    still had the anchor walk: its TABLE_PRE broke the entry and set the
    anchor, and the block went in at TABLE_POST); the order of break, prune
    and make is the same.  ``kernel = "rfc-v1"`` switches the table break's
    TLBI to the whole VMID (s2pt.stage2.KvmPgtable).
    """
    name = "rcu-rfc"
    history = "RFC v1 of 2022, never merged"
    kernel = "rfc-v1"
    version = ("RFC v1 of the parallel-faults series (April 2022), its teardown on today's "
               "walker")
    summary = ("RFC v1 (April 2022, never merged): faults as in rcu, but a collapse locks every "
               "entry of the unlinked subtree with xchg inside its break-before-make, and each "
               "table page's last reference goes to call_rcu")
    free_unlinked_table = staticmethod(pt.stage2_put_unlinked_table_rcu)

    def mm_ops(self, bugs=frozenset()) -> pt.MmOps:
        return pt.MmOps(self.free_unlinked_table,
                        prune_unlinked_table=pt.stage2_prune_unlinked_table)


SCHEMES.update({s.name: s for s in (RcuRfcScheme(),)})


# ---------------------------------------------------------------------------
# Refcounted walkers: Quentin Perret's idea (2022-04-22), never merged
# ---------------------------------------------------------------------------

class RefcountScheme(Scheme):
    """``refcount``: walkers take a reference on each table page on the way
    down and drop it on the way back; the unlinker drops the parent's
    reference; the last reference frees the page.

    **History.**  Quentin Perret, replying to RFC patch 09 of the parallel
    faults series on 2022-04-22: RCU is a non-starter for pKVM's hypervisor,
    so "have all walkers take references on the pages as they walk down, and
    release them on their way back, but I'm still not sure how to make this
    race-safe".  It was never merged; the kernel took RCU (``rcu``).  This
    class is the idea taken literally, so that the explorer can show why he
    was unsure.

    **The counts.**  Walker references go in a second count of struct page
    (``s2pt.memory``'s walker count), never in ``page_count``: the kernel's
    ``page_count(table) == 1`` means "no valid entries" to
    ``stage2_unmap_walker`` and ``stage2_free_walker``.  A table's walker
    count starts at 1, the reference its parent entry holds.  Where that
    count lives is what makes ``refcount-revalidate``'s get_page_unless_zero
    legal: it needs ``_refcount``'s guarantee (s2pt.memory), a meaning that
    survives the page's reallocation; a field of the page-table descriptor,
    which the page's next owner reuses, would not do (the mutation
    ``walker-count-in-ptdesc``, ``MmOps.walker_count = "ptdesc"``).

    **The walk.**  The one walker calls the scheme's hooks (``MmOps.
    table_enter``/``table_leave``) around each descent of a shared walk:
    enter is ``get_page`` on the walker count of the table whose pointer the
    walker has just read, leave is ``put_page_testzero``.  Whoever drops the
    last reference frees the table *and the subtree below it*:
    ``kvm_pgtable_stage2_free_unlinked`` at the level the unlinker kept in
    page->private (``set_page_private`` when it unlinked the table, as
    ``stage2_free_unlinked_table`` does for RCU; ``page_private`` when the
    last reference goes).  Not the level of the entry the last walker
    entered the page from: a page freed and reused as a table of another
    level, and unlinked there while a stale walker still holds a reference,
    must be freed as what it is now, or its children leak.
    That freeing walk holds no walker reference and needs none: every walker
    below the table holds a reference on the table itself, so once its count
    is zero the subtree is the freeing CPU's alone.  It is an exclusive walk
    (no hooks), the same "boring traversal" as the RCU callback.

    **The unlinker.**  A collapse (``stage2_map_walk_table_pre``) calls
    ``mm_ops->free_unlinked_table``, which here drops the parent's reference
    instead of calling ``call_rcu``: the table is freed at once if no walker
    is inside, else by the last walker to leave.  Unmap
    (``stage2_unmap_walker``) frees emptied tables with ``put_page`` as the
    kernel does, under the write lock, when no shared walker can hold a
    reference.

    **The lock.**  The kernel's since 6.2, minus RCU: faults run in parallel
    under ``read_lock(&kvm->mmu_lock)``, the MMU notifier's unmap and eager
    splitting take it for write.  Shared walks are not RCU readers
    (``kvm_pgtable_walk_begin`` takes no ``rcu_read_lock``): the references
    are meant to work where there is no RCU, as at pKVM's EL2 (which would
    also need a read-write lock there; today pKVM has ``hyp_spin_lock``).

    **The race** (naive, as here): the walker reads the table pointer
    (``READ_ONCE`` of the parent entry) and only then takes its reference.
    In between the unlinker can drop the last reference and free the table;
    the walker's ``get_page`` then resurrects a freed page (a use after
    free), or -- the allocator is LIFO -- a page already reused as a table
    somewhere else, which the walker then walks as if it were the old one
    (ABA; scenario ``aba-table-reuse``).  ``refcount-revalidate`` fixes it.
    """

    name = "refcount"
    history = "Quentin Perret's 2022 idea, never merged"
    version = "Quentin Perret's idea in the 2022 thread, on today's mainline walker"
    summary = ("Quentin Perret's 2022 idea, naive: walkers get a reference on each table on "
               "the way down (after reading its pointer), put it on the way back; the "
               "unlinker drops the parent's reference; the last one frees. No RCU")

    #: The walker hooks' operations on the walker count (s2pt.ops).
    def mm_ops(self, bugs=frozenset()) -> pt.MmOps:
        if "shared-walker-count" in bugs:
            return pt.MmOps(self.free_unlinked_table_shared, table_enter=self.table_enter_shared,
                            table_leave=self.table_leave_shared, rcu_walkers=False)
        return pt.MmOps(self.free_unlinked_table, table_enter=self.table_enter,
                        table_leave=self.table_leave, rcu_walkers=False,
                        walker_count="ptdesc" if "walker-count-in-ptdesc" in bugs
                        else "_refcount")

    def table_enter(self, ctx, childp):
        """Naive: the pointer was read by the visit's READ_ONCE; take the
        reference now, whatever happened to the page in between."""
        yield walker_get(childp, ctx.pgt.mm_ops.walker_count)
        return childp

    def table_leave(self, ctx, childp):
        """put_page_testzero(); the last reference frees the subtree, at the
        level recorded when the table was unlinked (page_private), which is
        not ``ctx.level`` when the page came back elsewhere."""
        pgt = ctx.pgt
        if (yield walker_put(childp, pgt.mm_ops.walker_count)):
            level = yield page_private(childp)
            if level is None:
                pgt.warn("refcount: the last walker reference of a table that was never "
                         "unlinked")
                return
            yield from pt.kvm_pgtable_stage2_free_unlinked(pgt, childp, level)

    def free_unlinked_table(self, pgt, pgtable, level):
        """mm_ops->free_unlinked_table: record the level (set_page_private),
        drop the parent's reference instead of call_rcu; free now if it was
        the last."""
        yield set_page_private(pgtable, level)
        if (yield walker_put(pgtable, pgt.mm_ops.walker_count)):
            yield from pt.kvm_pgtable_stage2_free_unlinked(pgt, pgtable, level)

    # -- the mutation "shared-walker-count": walker references in page_count --
    def table_enter_shared(self, ctx, childp):
        yield get_page(childp)
        return childp

    def table_leave_shared(self, ctx, childp):
        # put_page(): the kernel's count frees the page when it reaches zero,
        # which the references of the table's own entries prevent.
        yield put_page(childp)

    def free_unlinked_table_shared(self, pgt, pgtable, level):
        yield set_page_private(pgtable, level)
        yield put_page(pgtable)


class RefcountRevalidateScheme(RefcountScheme):
    """``refcount-revalidate``: ``refcount`` with its race closed, in three
    steps on the way down (the ``table_enter`` hook):

    1. ``get_page_unless_zero`` on the walker count.  Struct page outlives
       the page, so this is legal on a freed page and fails there (count 0);
    2. with the reference held, re-read the parent entry (``READ_ONCE``) and
       check that it still holds a table pointer to this page;
    3. if either fails, drop the reference (``put_page_testzero``; the last
       one frees the subtree) and visit the entry again from the start.

    **Why the check holds even under ABA.**  The allocator reuses the most
    recently freed page first, so between the walker's read and its
    ``get_page_unless_zero`` the table may be freed and the page may come back
    as a new table, its count 1 again, so step 1 succeeds.  Step 2 decides:
    the reference is already held, so the page cannot be freed or reused
    after it; if the parent entry points at the page *after* the reference
    was taken, then the page is, at that moment and for as long as the
    reference is held, the table linked at this entry -- same level, same
    IPA range -- and walking it is exactly what a walker that read the entry
    now would do, whether it is the old table or a new one that came back
    at the same place (scenario ``aba-table-reuse-same``).  If it came back
    anywhere else, the entry no longer points at it and the walker retries
    (scenario ``aba-table-reuse``).  The parent table itself cannot change
    identity under the walker: the walker holds a reference on it (the PGD
    is never freed).

    Same lock, same unlinker and same freeing as ``refcount``; never merged
    (the kernel took RCU, ``rcu``).  The kernel's own pattern for this is
    the lockless page-cache lookup (``filemap_get_entry``:
    ``folio_try_get`` then re-check that the slot still holds the folio).
    """

    name = "refcount-revalidate"
    history = "refcount made race-safe, never merged"
    version = ("Quentin Perret's idea made race-safe (the model's), on today's mainline "
               "walker")
    summary = ("refcount made race-safe: get_page_unless_zero on the walker count, re-read "
               "the parent entry, and if it no longer points at the page, put and retry")

    def table_enter(self, ctx, childp):
        pgt = ctx.pgt
        if not (yield walker_get_unless_zero(childp, pgt.mm_ops.walker_count)):
            return None                                  # freed: visit the entry again
        cur = yield READ_ONCE(ctx.ptep)
        if kvm_pte_table(cur, ctx.level) and cur & pgt.addr_mask == childp:
            return childp
        yield from self.table_leave(ctx, childp)         # put (maybe the last), retry
        return None

    def table_enter_shared(self, ctx, childp):
        pgt = ctx.pgt
        if not (yield get_page_unless_zero(childp)):
            return None
        cur = yield READ_ONCE(ctx.ptep)
        if kvm_pte_table(cur, ctx.level) and cur & pgt.addr_mask == childp:
            return childp
        yield put_page(childp)
        return None


SCHEMES.update({s.name: s for s in (RefcountScheme(), RefcountRevalidateScheme())})
