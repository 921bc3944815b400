"""The guest scenarios: a VM (:mod:`s2pt.kvm`) built for the explorer.

Each builds a small VM and brings its stage-2 table into a known state with
the VM's own operations (memslots, dirty logging, guest accesses), then
gives each CPU one kernel path to run: the VM's own fault paths,
:func:`s2pt.kvm.user_mem_abort` and :func:`s2pt.kvm.handle_access_fault`
(the generators ``VM.fault`` runs to completion), and the other paths of
:mod:`s2pt.kvm` (the MMU notifier's unmap, eager splitting, a memslot's
commit, a vCPU's MMU), stepped one shared access at a time down through the
one walker (:mod:`s2pt.pgtable`).  The scheme (:mod:`s2pt.schemes`) is the
VM's locking and its table's mm_ops.

The table for the collapse scenarios, as dirty logging leaves it (40-bit
IPA, 4K granule, start level 1; a 2M-backed memslot at IPA 1 GiB)::

    PGD[1] -> L2 table: [0] -> L3 table: [0] page 0x40_0000_0000 R-X
                                          [1] page 0x40_0000_1000 R-X
                                          [2] page 0x40_0000_2000 R-X (AF clear)

Logging write-protected the slot and each read fault mapped one page; it is
now off, so the next write fault may map a 2M block over the whole L3 table.

``aba-table-reuse`` adds a read-only slot next to the collapse table, so that
the page of the freed level-3 table comes back from the (LIFO) allocator as
the new table of another region while a walker still holds its old pointer:
ABA, for the refcount schemes.  :data:`ABA_SAME` is its same-place twin
(the page comes back as the table at the same entry), replayed rather than
searched.

What each scheme is expected to show on each scenario is declared in one
table (:mod:`s2pt.scenarios.declarations`), not here.
"""

from __future__ import annotations

from dataclasses import replace as _dc_replace

from .. import bugs as _bugs
from .. import kvm as _kvm
from ..bbm import BbmChecker
from ..errors import Fault as _Fault
from ..errors import S2ptError
from ..kvm import (clear_dirty_log_split, guest_accesses, guest_fault, guest_faults,
                   handle_access_fault, kvm_arch_commit_memory_region, kvm_mmu_split_huge_pages,
                   kvm_unmap_gfn_range, user_mem_abort)
from ..sim import window as W
from ..sim.sync import SimMachine
from ..sim.world import Setup
from .scenario import INSTALL_RACE, UNLINK_HELD, Scenario

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PAGE, BLOCK = 4 * KiB, 2 * MiB
IPA = 1 * GiB                      # the 2M region every scenario races on
ROM = IPA + BLOCK                  # aba-table-reuse's read-only slot's first IPA


# ---------------------------------------------------------------------------
# Building the VM and its table
# ---------------------------------------------------------------------------

def _vm(scheme, bugs, vcpus=2, backing="2M", size=BLOCK):
    """A VM for the explorer: its table on the explorer's machine, with the
    scheme's mm_ops and locking and any bug switched on, and one memslot
    [IPA, IPA + size).  Its vCPU memcaches fill to exactly the minimum (see
    s2pt.memory.MemCache), so the state space does not carry 40 idle pages."""
    vm = _kvm.VM(40, 4096, vcpus=vcpus, locking=scheme, memcache_capacity=None,
                 bugs=_bugs.of(bugs, _bugs.VM, _bugs.WALKER), machine=SimMachine,
                 mm_ops=scheme.mm_ops(_bugs.of(bugs, _bugs.MM_OPS)))
    return vm, vm.add_memslot(IPA, size, backing=backing)


def _setup(vm, scheme, bugs, topup=None) -> Setup:
    """The explorer's view of a VM set up by the scenario: the vCPUs' TLBs
    start empty (kvm_flush_remote_tlbs), their memcaches are topped up, as
    user_mem_abort did before the earlier faults.

    The dirty bitmap is outside what the explorer compares: no path in
    these scenarios reads it, so a bit one interleaving set and another did
    not cannot change what happens next."""
    vm.pgt.flush_tlb()
    s = Setup(vm.pgt, scheme, bugs)
    for v in vm.vcpus:
        # ``topup``: the vCPUs whose faults may allocate (default: all); the
        # others' caches stay empty, as they are never used.
        s.memcache(vm._min_pages if topup is None or v.idx in topup else 0, v.memcache)
    s.share(vm, *vm.memslots)
    s.subject = vm
    return s


def _logged_table(vm, slot, pages=3, aged=(2,)):
    """Dirty logging's leftovers, made by dirty logging: logging on, the
    guest reads a few pages (each read fault maps one read-only page:
    force_pte, not writable), aging clears some access flags
    (kvm_age_gfn), and logging is turned off again.

    Returns the memslot as it was while logging was on: memslots are
    replaced, not changed in place (kvm_set_memslot), so a vCPU that looked
    the slot up before the change still sees logging on.  The scenarios
    start while that vCPU may still be in its fault handler: the new
    memslot is published, kvm_arch_commit_memory_region() has not run yet
    (it waits for the old memslot's users), so a scheme's commit
    (``rwlock``: unmap the slot) has not happened."""
    vm.enable_dirty_logging(slot)
    for k in range(pages):
        vm.access(slot.gpa + k * PAGE)
    for k in aged:
        vm.pgt.test_clear_young(slot.gpa + k * PAGE, PAGE)
    logging = _dc_replace(slot)
    vm.disable_dirty_logging(slot, commit=False)
    return logging


def _fault(vm, ipa, write=True, vcpu=0):
    """The abort vCPU ``vcpu`` takes on this access, as its MMU reports it
    walking the table (its TLB flushed first: aging clears access flags
    without a TLBI, so a cached entry would hide the access-flag fault)."""
    vm.pgt.flush_tlb()
    f = vm.translate(ipa, write=write, vcpu=vcpu)
    if not isinstance(f, _Fault):
        raise S2ptError(f"scenario setup: IPA {ipa:#x} does not fault")
    return f


def _one_page_short(vm, vcpu):
    """Give back all but one page of vCPU ``vcpu``'s memcache (it now holds
    one less than kvm_mmu_cache_min_pages), so that its next top-up takes a
    page from the allocator; the page given back is the allocator's spare."""
    mc = vm.vcpus[vcpu].memcache
    while mc.nobjs > vm._min_pages - 1:
        vm.pgt.mm.free_page(mc.objects.pop(), was_table=False)


# ---------------------------------------------------------------------------
# The builders
# ---------------------------------------------------------------------------

def build_collapse_vs_fault(scheme, bugs, vcpus=2):
    # One vCPU per page of the logged table: vCPU0 collapses, vCPU1 relaxes
    # page 1, and vCPU2, vCPU3, ... each take an access-flag fault on their
    # own aged page (pages 2, 3, ...).  With vcpus=1, vCPU0 collapses alone.
    # (s2pt.comparison scales the cost scenario from 1 to 4 vCPUs with it.)
    vm, slot = _vm(scheme, bugs, vcpus)
    pages = max(3, vcpus)
    logging = _logged_table(vm, slot, pages=pages, aged=tuple(range(2, pages)))
    faults = [_fault(vm, IPA + k * PAGE, write=k < 2) for k in range(vcpus)]
    s = _setup(vm, scheme, bugs)
    s.share(logging)
    # vCPU0 looked the slot up after logging was turned off: it may map 2M
    # again, over the level-3 table.  vCPU1 looked it up while logging was
    # still on: it relaxes the permissions of one page.
    # The guest re-executes its access as long as the fault returns -EAGAIN
    # (guest_fault): under a scheme that never collapses on the read side,
    # for ever (the memslot's commit, which would unmap the slot, is not
    # part of this scenario).
    s.cpu("vCPU0", "user_mem_abort: 2M block (collapse)", guest_fault, vm, 0, IPA, slot,
          faults[0], True)
    if vcpus > 1:
        s.cpu("vCPU1", "user_mem_abort: relax_perms", user_mem_abort, vm, 1, IPA + PAGE,
              logging, faults[1], True)
    for k in range(2, vcpus):
        s.cpu(f"vCPU{k}", "handle_access_fault: mkyoung", handle_access_fault, vm, k,
              IPA + k * PAGE, faults[k])
    s.region = (IPA, BLOCK)
    return s


def build_collapse_vs_readers(scheme, bugs, readers=3):
    # vCPU0 collapses as in collapse-vs-fault; vCPU1..vCPUn each take the
    # same access-flag fault on the aged page 2 (handle_access_fault:
    # mkyoung, no allocation).  The readers are interchangeable: the same
    # program and arguments but for their vCPU, its memcache and its TLB,
    # which the explorer searches once (symmetry reduction).  With
    # readers=0 vCPU0 collapses alone (s2pt.comparison scales the cost
    # scenario from 1 to 4 vCPUs with it).
    vm, slot = _vm(scheme, bugs, readers + 1)
    logging = _logged_table(vm, slot, pages=3, aged=(2,))
    f0 = _fault(vm, IPA)
    fr = _fault(vm, IPA + 2 * PAGE, write=False, vcpu=1) if readers else None
    s = _setup(vm, scheme, bugs, topup=(0,))
    s.share(logging)
    s.cpu("vCPU0", "user_mem_abort: 2M block (collapse)", guest_fault, vm, 0, IPA, slot, f0,
          True)
    for k in range(1, readers + 1):
        v = vm.vcpus[k]
        s.cpu(f"vCPU{k}", "handle_access_fault: mkyoung page 2", handle_access_fault, vm, k,
              IPA + 2 * PAGE, fr, vcpu=k, sym="readers", owns=(v.memcache, v.tlb))
    s.region = (IPA, BLOCK)
    return s


def build_unmap_vs_fault(scheme, bugs):
    vm, slot = _vm(scheme, bugs)
    _logged_table(vm, slot, pages=1, aged=(0,))
    fault = _fault(vm, IPA, write=False, vcpu=1)
    s = _setup(vm, scheme, bugs)
    s.cpu("notifier", "kvm_unmap_gfn_range: unmap 4K", kvm_unmap_gfn_range, vm, IPA, PAGE)
    s.cpu("vCPU1", "handle_access_fault: mkyoung", handle_access_fault, vm, 1, IPA, fault)
    s.region = (IPA, BLOCK)
    return s


def build_split_vs_fault(scheme, bugs):
    vm, slot = _vm(scheme, bugs)
    vm.access(IPA)                      # the guest ran on a 2M block ...
    vm.enable_dirty_logging(slot)       # ... that logging write-protected (lazy splitting)
    fault = _fault(vm, IPA + 5 * PAGE, vcpu=1)
    s = _setup(vm, scheme, bugs)
    s.memcache(1, vm.split_page_cache)                # mmu->split_page_cache
    s.cpu("split", "kvm_mmu_split_huge_pages: eager split", kvm_mmu_split_huge_pages, vm,
          IPA, BLOCK)
    s.cpu("vCPU1", "user_mem_abort: write while logging", user_mem_abort, vm, 1,
          IPA + 5 * PAGE, slot, fault, True)
    s.region = (IPA, BLOCK)
    return s


def build_stash_old_pte(scheme, bugs):
    # One vCPU collapses the table, with a9f0e3d5a089 reverted: after its
    # TABLE_PRE callback the walker does not reload the entry, so it still
    # believes it points to the old level-3 table, and descends into it.
    bugs = bugs | {"a9f0e3d5a089"}
    vm, slot = _vm(scheme, bugs, vcpus=1)
    _logged_table(vm, slot, pages=2, aged=())
    fault = _fault(vm, IPA)
    s = _setup(vm, scheme, bugs)
    s.cpu("vCPU0", "user_mem_abort: 2M block (collapse)", user_mem_abort, vm, 0, IPA, slot,
          fault, True)
    s.region = (IPA, BLOCK)
    return s


def build_collapse_vs_hw_walk(scheme, bugs):
    vm, slot = _vm(scheme, bugs)
    _logged_table(vm, slot)
    fault = _fault(vm, IPA)
    s = _setup(vm, scheme, bugs)
    tlb = vm.vcpus[1].tlb
    if "no-bbm-tlbi" not in bugs:
        # Without the TLBI, casemate's automaton would stop every run at the
        # first make ("BBM invalid unclean->valid"), before the walk cache
        # meets the freed table: that variant runs without it.
        s.share(BbmChecker(vm.pgt))
    s.cpu("vCPU0", "user_mem_abort: 2M block (collapse)", user_mem_abort, vm, 0, IPA, slot,
          fault, True)
    s.cpu("MMU1", "vCPU1's MMU: two guest loads", guest_accesses, tlb,
          (IPA + PAGE, IPA + 3 * PAGE), vcpu=1, pure=False)
    s.region = (IPA, BLOCK)
    return s


def build_map_vs_map(scheme, bugs):
    # A 4K-backed slot over two 2M regions; the guest has touched the second
    # (so the level-2 table exists), the first is empty: both faults need
    # the same new level-3 table.
    vm, slot = _vm(scheme, bugs, backing="4K", size=2 * BLOCK)
    vm.access(IPA + BLOCK, write=True)
    faults = [_fault(vm, IPA + k * PAGE, vcpu=k) for k in range(2)]
    s = _setup(vm, scheme, bugs)
    s.cpu("vCPU0", "user_mem_abort: map page 0", guest_fault, vm, 0, IPA, slot, faults[0])
    s.cpu("vCPU1", "user_mem_abort: map page 1", guest_fault, vm, 1, IPA + PAGE, slot,
          faults[1])
    s.region = (IPA, 2 * BLOCK)
    return s


def build_collapse_vs_map(scheme, bugs):
    # vCPU0 collapses as in collapse-vs-fault.  vCPU1 looked its memslot up
    # while logging was still on: it maps one page (force_pte) at an entry
    # of the level-3 table that is still empty -- an install into the
    # subtree that vCPU0 is unlinking.
    vm, slot = _vm(scheme, bugs)
    logging = _logged_table(vm, slot)
    faults = [_fault(vm, IPA), _fault(vm, IPA + 3 * PAGE, vcpu=1)]
    s = _setup(vm, scheme, bugs)
    s.share(logging)
    s.cpu("vCPU0", "user_mem_abort: 2M block (collapse)", user_mem_abort, vm, 0, IPA, slot,
          faults[0], True)
    s.cpu("vCPU1", "user_mem_abort: map page 3 (logging)", user_mem_abort, vm, 1,
          IPA + 3 * PAGE, logging, faults[1], True)
    # The lost-update oracle watches vCPU1's page: every serial order leaves
    # it mapped (by the block or by vCPU1's page).  The rest of the 2M is
    # the logging-mismatch race's business: when vCPU1 splits the new block
    # and vCPU0's walk goes on into vCPU1's table, a few pages end up mapped
    # and the rest fault back later -- correct (the walker infers the PA
    # from the IPA), but no serial order gives it.
    s.region = (IPA + 3 * PAGE, PAGE)
    return s


def build_unmap_vs_collapse(scheme, bugs):
    vm, slot = _vm(scheme, bugs)
    _logged_table(vm, slot)
    fault = _fault(vm, IPA)
    s = _setup(vm, scheme, bugs)
    # vCPU0 maps 2M again after logging (over the level-3 table where one is
    # left); the MMU notifier invalidates the whole 2M (a THP split or
    # migration: kvm_unmap_gfn_range over the block).
    s.cpu("vCPU0", "user_mem_abort: 2M block (collapse)", user_mem_abort, vm, 0, IPA, slot,
          fault, True)
    s.cpu("notifier", "kvm_unmap_gfn_range: unmap 2M", kvm_unmap_gfn_range, vm, IPA, BLOCK)
    s.region = (IPA, BLOCK)
    return s


def build_logging_mismatch(scheme, bugs):
    # A 2M-backed slot over one empty 2M region, and a 4K slot next to it
    # that the guest has touched, so that the level-2 table exists (the
    # race is at its entry 0, and turning logging off does not free it).
    vm, slot = _vm(scheme, bugs)
    other = vm.add_memslot(IPA + BLOCK, PAGE, backing="4K")
    vm.access(other.gpa, write=True)
    vm.enable_dirty_logging(slot)
    logging = _dc_replace(slot)       # the memslot as vCPU1 looked it up
    vm.disable_dirty_logging(slot, commit=False)      # as _logged_table
    last = IPA + BLOCK - PAGE
    faults = [_fault(vm, IPA, vcpu=0), _fault(vm, last, vcpu=1)]
    s = _setup(vm, scheme, bugs)
    s.share(logging)
    # The commit's picture: both vCPUs abort in the same 2M region; vCPU0
    # sees logging off and maps a PMD (2M block), vCPU1 sees it on and maps
    # a PTE (force_pte), replacing the block with a table if it finds one.
    # vCPU1's page is the region's last, so that a map walk that meets it
    # has mapped every other page first (its -EAGAIN stops the walk there):
    # whichever vCPU goes first, the region ends fully mapped or holding
    # vCPU1's page alone, as in the serial orders.
    s.cpu("vCPU0", "user_mem_abort: 2M block (logging off)", user_mem_abort, vm, 0, IPA, slot,
          faults[0], True)
    s.cpu("vCPU1", "user_mem_abort: 4K page (logging on)", user_mem_abort, vm, 1, last, logging,
          faults[1], True)
    s.region = (IPA, BLOCK)
    return s


def build_split_double_put(scheme, bugs):
    vm, slot = _vm(scheme, bugs)
    vm.access(IPA)                      # the guest ran on a 2M block ...
    vm.enable_dirty_logging(slot)       # ... that logging write-protected,
    vm.pgt.test_clear_young(IPA, BLOCK)  # and aging cleared its access flag
    fault = _fault(vm, IPA + 5 * PAGE, write=False, vcpu=1)
    s = _setup(vm, scheme, bugs)
    s.memcache(1, vm.split_page_cache)                # mmu->split_page_cache
    # The split's break loses when the block changes under it.  Oliver
    # Upton's guess in the fix's thread was a hardware access-flag update
    # (FEAT_HAFDBS, which the model's CPU lacks); vCPU1's access-flag fault
    # makes the same change in software (kvm_pgtable_stage2_mkyoung's
    # cmpxchg), and can, once the split runs on the read side.
    s.cpu("split", "clear-dirty-log split under the read lock", clear_dirty_log_split, vm,
          IPA, BLOCK)
    s.cpu("vCPU1", "handle_access_fault: mkyoung", handle_access_fault, vm, 1,
          IPA + 5 * PAGE, fault)
    s.region = (IPA, BLOCK)
    return s


# ABA: a table page freed and reused while a walker holds its pointer.
# The collapse-vs-fault table, and a second memslot next to it: a read-only
# 4K-backed slot (a ROM) at IPA + 2M, so that a fault there needs a new
# level-3 table under L2[1].  The faulting vCPU's memcache is one page short
# of kvm_mmu_cache_min_pages, so its top-up takes a page from the page
# allocator -- which hands out the most recently freed page first (LIFO):
# the collapsed table, if it has been freed by then.  One spare page waits
# in the allocator for the runs where it has not.

def build_aba_table_reuse(scheme, bugs):
    vm, slot = _vm(scheme, bugs)
    rom = vm.add_memslot(ROM, BLOCK, backing="4K", readonly=True)
    logging = _logged_table(vm, slot)
    faults = [_fault(vm, IPA, write=True), _fault(vm, IPA + PAGE, write=True, vcpu=1),
              _fault(vm, ROM + PAGE, write=False)]
    s = _setup(vm, scheme, bugs)
    s.share(logging)
    _one_page_short(vm, 0)
    # vCPU0: collapse (the L3 table is unlinked and, once no walker holds it,
    # freed), then a read of the ROM: a new L3 table under L2[1] -- the
    # collapsed table's page, if the allocator has it back by then -- with
    # ROM + 4K mapped read-only at index 1.
    s.cpu("vCPU0", "collapse, then a read fault on the ROM slot", guest_faults, vm, 0,
          ((IPA, slot, faults[0], True), (ROM + PAGE, rom, faults[2], False)))
    # vCPU1: relax_perms at IPA + 4K, index 1 of the collapsed table.
    s.cpu("vCPU1", "user_mem_abort: relax_perms", user_mem_abort, vm, 1, IPA + PAGE, logging,
          faults[1], True)
    s.region = (IPA, 2 * BLOCK)
    return s


def build_aba_table_reuse_same(scheme, bugs):
    vm, slot = _vm(scheme, bugs, vcpus=3)
    logging = _logged_table(vm, slot)
    faults = [_fault(vm, IPA + k * PAGE, write=True, vcpu=v) for v, k in enumerate((0, 1, 3))]
    s = _setup(vm, scheme, bugs)
    s.share(logging)
    _one_page_short(vm, 2)
    s.cpu("vCPU0", "user_mem_abort: 2M block (collapse)", user_mem_abort, vm, 0, IPA, slot,
          faults[0], True)
    s.cpu("vCPU1", "user_mem_abort: relax_perms", user_mem_abort, vm, 1, IPA + PAGE, logging,
          faults[1], True)
    # vCPU2 took its translation fault on page 3 before the collapse, and
    # looked the slot up while logging was on: it maps 4K, and where it
    # meets the new 2M block it replaces the block with a table
    # (stage2_map_walk_leaf) -- at the same entry, L2[0], and, if the
    # collapsed table is back in the allocator by then, on the same page.
    s.cpu("vCPU2", "user_mem_abort: 4K write while logging", user_mem_abort, vm, 2,
          IPA + 3 * PAGE, logging, faults[2], True)
    s.region = (IPA, BLOCK)
    return s


def build_collapse_vs_commit(scheme, bugs):
    # collapse-vs-fault's vCPU0, without vCPU1, and the commit of the
    # memslot change running on another CPU.  Under rwlock vCPU0's fault
    # gets -EAGAIN until the commit has unmapped the slot; then its refault
    # maps the block into empty space.  (The guest re-executes the same
    # access: the model hands user_mem_abort the fault it took first.)
    vm, slot = _vm(scheme, bugs)
    logging = _logged_table(vm, slot)
    fault = _fault(vm, IPA)
    s = _setup(vm, scheme, bugs)
    s.share(logging)
    s.cpu("vCPU0", "user_mem_abort: 2M block (collapse)", guest_fault, vm, 0, IPA, slot,
          fault, True)
    s.cpu("commit", "kvm_arch_commit_memory_region: logging off", kvm_arch_commit_memory_region,
          vm, slot)
    s.region = (IPA, BLOCK)
    return s



# ---------------------------------------------------------------------------
# The guest scenarios, in the order of the declaration table
# ---------------------------------------------------------------------------

#: The guest scenarios (s2pt.scenarios.SCENARIOS orders them as the
#: declaration table does).
SCENARIOS = (
    Scenario(
        "collapse-vs-fault",
        "vCPU0 maps a 2M block over a level-3 table and tears the table down while vCPU1's "
        "relax_perms walks through it",
        build_collapse_vs_fault,
        window=UNLINK_HELD),
    Scenario(
        "collapse-vs-fault-3",
        "collapse-vs-fault with a third vCPU taking an access-flag fault (mkyoung) in the same "
        "table",
        build_collapse_vs_fault,
        cpus=3,
        params={"vcpus": 3},
        window=UNLINK_HELD),
    Scenario(
        "collapse-vs-fault-4",
        "collapse-vs-fault with four vCPUs: vCPU0 maps the 2M block over the level-3 table "
        "while vCPU1, vCPU2 and vCPU3 each take an access-flag fault on the same aged page of "
        "it (handle_access_fault); the three readers are interchangeable, searched once",
        build_collapse_vs_readers,
        cpus=4,
        params={"readers": 3},
        window=UNLINK_HELD),
    Scenario(
        "unmap-vs-fault",
        "an MMU-notifier unmap empties and frees a level-3 table while vCPU1's mkyoung fault "
        "wants to walk it; the write lock keeps them apart",
        build_unmap_vs_fault,
        window=UNLINK_HELD),
    Scenario(
        "split-vs-fault",
        "an eager split replaces a write-protected 2M block with a table while vCPU1's write "
        "fault on the same block maps a page",
        build_split_vs_fault,
        window=W.window("the split changes the table while the fault walks it",
                        W.stores_while_held())),
    Scenario(
        "stash-old-pte",
        "a9f0e3d5a089 reverted: after collapsing, the map walker keeps the old table PTE and "
        "descends into the table it just unlinked; freed at once (the counterfactual 'none', or"
        " an exclusive lock) that is a use-after-free, deferred by RCU it is harmless",
        build_stash_old_pte,
        cpus=1,
        # The builder switches the bug on itself; declared here too, so that
        # the scenario says so (s2pt.compare does not count a bug's
        # violations against a scheme, and replay commands leave the switch
        # out).
        bugs=frozenset({"a9f0e3d5a089"}),
        window=W.window("the collapsing walker reaches the table it unlinked", W.unlinks(),
                        W.reaches_unlinked())),
    Scenario(
        "collapse-vs-hw-walk",
        "vCPU0 collapses the level-3 table while vCPU1's MMU walks it and caches the table "
        "pointer in its walk cache; the break's TLBI comes before the free",
        build_collapse_vs_hw_walk,
        window=UNLINK_HELD),
    Scenario(
        "collapse-vs-hw-walk-no-tlbi",
        "collapse-vs-hw-walk with the break-before-make TLBI left out: the walk cache still "
        "points at the table when it is freed, with or without a grace period",
        build_collapse_vs_hw_walk,
        bugs=frozenset({"no-bbm-tlbi"}),
        window=UNLINK_HELD),
    Scenario(
        "map-vs-map",
        "two vCPUs fault on neighbouring pages of an empty 2M region at once; both want to "
        "install the level-3 table, and stage2_map_walk_leaf()'s cmpxchg lets one win while the"
        " other frees its table and faults again",
        build_map_vs_map,
        window=INSTALL_RACE),
    Scenario(
        "map-vs-map-no-shared",
        "map-vs-map with the faults' walks not marked KVM_PGTABLE_WALK_SHARED: both store a "
        "table into the same entry, one table and its page mapping are lost",
        build_map_vs_map,
        bugs=frozenset({"no-shared-walk"}),
        window=INSTALL_RACE),
    Scenario(
        "collapse-vs-map",
        "vCPU0 maps a 2M block over a level-3 table while vCPU1, which still sees dirty logging"
        " on, maps a page into an empty entry of that table: an install into the subtree being "
        "unlinked",
        build_collapse_vs_map,
        window=UNLINK_HELD),
    Scenario(
        "unmap-vs-collapse",
        "vCPU0 maps a 2M block over a level-3 table (the collapse) while the MMU notifier "
        "unmaps the same 2M under the write lock, which frees the tables it empties",
        build_unmap_vs_collapse,
        window=UNLINK_HELD),
    Scenario(
        "logging-mismatch",
        "two vCPUs abort in one empty 2M region, one seeing dirty logging off (a 2M block), the"
        " other on (a page, replacing the block with a table if it finds one): the race of "
        "1f0f4a2ef7a5 ('Infer the PA offset from IPA in stage-2 map walker'); under 'none' the "
        "block also replaces a fresh table while its installer is inside",
        build_logging_mismatch,
        window=INSTALL_RACE),
    Scenario(
        "split-double-put",
        "a split under the read lock (the 2023 proposal to split during KVM_CLEAR_DIRTY_LOG "
        "with a shared walk) loses its break to vCPU1 setting the block's access flag, and "
        "frees its unused subtree: the -EAGAIN path whose double put c60d847be7b8 removed",
        build_split_double_put,
        window=W.window("the split's break loses to another CPU's update", W.loses_race())),
    Scenario(
        "aba-table-reuse",
        "ABA elsewhere: vCPU0 collapses the level-3 table that vCPU1's relax_perms is walking "
        "into, then faults on a read-only slot, and the allocator hands it the freed table's "
        "page as that slot's new level-3 table; a walker that took its reference only after "
        "reading the old pointer walks the ROM's table and makes a ROM page writable",
        build_aba_table_reuse,
        window=UNLINK_HELD),
    Scenario(
        "collapse-vs-commit",
        "vCPU0 faults for a 2M block over the level-3 table dirty logging left while the "
        "memslot change that turned logging off commits (kvm_arch_commit_memory_region): under "
        "rwlock the commit unmaps the slot, which ends the -EAGAIN refaults that "
        "collapse-vs-fault shows as a livelock",
        build_collapse_vs_commit,
        window=UNLINK_HELD),
)

#: ABA at the same place.  Not in SCENARIOS: with three CPUs and the
#: 512-entry walk that frees the collapsed table, its exhaustive search
#: exceeds two million states (beyond the engine's 60 s target), so it is
#: replayed with chosen schedules instead (tests/test_refcount.py, notebook 07).
ABA_SAME = Scenario(
    "aba-table-reuse-same",
    "ABA at the same place: while vCPU1 holds a pointer to the level-3 table, vCPU0 "
    "collapses and frees it and vCPU2's logging fault splits the block again, getting the "
    "same page back as the new table at the same entry; a walker that checks the entry "
    "after taking its reference walks the new table, which is correct",
    build_aba_table_reuse_same,
    cpus=3,
    window=UNLINK_HELD)
