"""Dirty logging end to end: faults, write-protect, split, collapse, TLBs, BBM.

Structure is checked through the kernel's own view, the ptdump, and the
dirty log against a flat model: a page is dirty exactly when the guest wrote
it since logging started or the log was last cleared.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import s2pt
from s2pt import pgtable as pt
from s2pt.bbm import BbmChecker
from s2pt.kvm import VM
from s2pt.ops import run
from s2pt.ptdump import parse_ptdump

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
BASE = 0x4000_0000


def leaves_in(vm, slot):
    """ptdump records of valid leaves inside the slot."""
    recs = parse_ptdump(vm.pgt.ptdump(final=True))
    return [r for r in recs if r.start >= slot.gpa and r.end <= slot.gpa + slot.size
            and not r.empty]


def vm_with_blocks(size=16 * MiB, backing="2M", **kw):
    vm = VM(**kw)
    slot = vm.add_memslot(BASE, size, backing=backing)
    vm.touch(BASE, size, write=True, stride=vm.pgt.granule_size[2] if backing != "4K" else 4096)
    return vm, slot


# ---------------------------------------------------------------------------
# Faults: user_mem_abort
# ---------------------------------------------------------------------------

def test_translation_fault_maps_largest_block_backing_allows():
    vm = VM()
    s2 = vm.add_memslot(BASE, 4 * MiB, backing="2M")
    s4 = vm.add_memslot(BASE + 4 * MiB, 4 * MiB, backing="4K")
    s1 = vm.add_memslot(4 * GiB, GiB, backing="1G")
    assert vm.fault(BASE + 0x1234).size == 2 * MiB
    assert vm.fault(BASE + 4 * MiB + 0x1234).size == 4 * KiB
    assert vm.fault(4 * GiB + 5 * MiB).size == GiB
    assert vm.translate(4 * GiB + 5 * MiB).level == 1
    assert [s.id for s in (s2, s4, s1)] == [0, 1, 2]
    vm.check()


def test_hugetlb_slot_not_covering_a_whole_gigabyte_falls_back_to_2m():
    vm = VM()
    vm.add_memslot(4 * GiB, GiB - 2 * MiB, backing="1G")
    assert vm.fault(4 * GiB).size == 2 * MiB


def test_fault_outside_memslots_is_an_mmio_exit_not_a_crash():
    vm = VM()
    vm.add_memslot(BASE, 2 * MiB)
    r = vm.fault(0x900_0000, write=True)
    assert r.outcome == "KVM_EXIT_MMIO" and r.fault.kind == "translation"
    assert vm.fault(0x900_0000, exec=True).outcome == "inject_pabt"
    assert vm.fault(1 << 41).outcome == "inject_dabt"
    ro = vm.add_memslot(2 * BASE, 2 * MiB, readonly=True)
    assert vm.fault(ro.gpa).outcome == "map"
    assert vm.fault(ro.gpa, write=True).outcome == "KVM_EXIT_MMIO"
    assert vm.stats["mmio_exits"] == 2


def test_access_flag_fault_goes_to_mkyoung():
    vm, slot = vm_with_blocks(2 * MiB)
    vm.pgt.test_clear_young(BASE, 2 * MiB)
    vm.pgt.flush_tlb()
    r = vm.fault(BASE + 0x3000)
    assert r.outcome == "mkyoung" and r.fault.kind == "access" and r.fault.level == 2
    assert vm.fault(BASE + 0x3000).outcome == "none"


# ---------------------------------------------------------------------------
# Dirty logging: write-protect, lazy split, dirty bitmap
# ---------------------------------------------------------------------------

def test_enable_write_protects_and_flushes():
    vm, slot = vm_with_blocks()
    tlbis = len(vm.pgt.tlbis)
    vm.enable_dirty_logging(slot)
    assert all(r.prot == "RX" for r in leaves_in(vm, slot))
    assert [t.kind for t in list(vm.pgt.tlbis)[tlbis:]] == ["range"]
    assert not vm.get_dirty_log(slot).any()


def test_lazy_split_maps_only_the_written_page():
    vm, slot = vm_with_blocks(4 * MiB)
    vm.enable_dirty_logging(slot)
    r = vm.fault(BASE + 0x5000, write=True)
    assert r.outcome == "map" and r.size == 4 * KiB and r.fault.kind == "permission"
    assert r.fault.level == 2
    assert vm.stats["lazy_splits"] == 1
    # The rest of the block is gone and faults back one page at a time.
    f = vm.fault(BASE + 0x6000)
    assert f.fault.kind == "translation" and f.fault.level == 3 and f.size == 4 * KiB
    assert vm.translate(BASE + 0x6000).prot == "RX"          # read fault while logging: RO
    assert vm.stats["refaults_after_split"] == 1
    log = vm.get_dirty_log(slot)
    assert log.nonzero()[0].tolist() == [5]
    assert vm.check() == []


def test_clear_dirty_log_write_protects_again():
    vm, slot = vm_with_blocks(2 * MiB)
    vm.enable_dirty_logging(slot)
    vm.access(BASE + 0x2000, write=True)
    vm.access(BASE + 0x2000, write=True)      # no second fault: page now writable
    assert vm.stats["dirty_marked"] == 1
    assert vm.clear_dirty_log(slot) == 1
    assert vm.translate(BASE + 0x2000).prot == "RX"
    r = vm.fault(BASE + 0x2000, write=True)
    assert r.outcome == "relax_perms" and r.fault.level == 3
    assert vm.get_dirty_log(slot)[2]


def test_plain_mode_get_clears_and_clear_is_refused():
    vm = VM(manual_protect=False)
    slot = vm.add_memslot(BASE, 2 * MiB)
    vm.enable_dirty_logging(slot)
    vm.access(BASE, write=True)
    assert vm.get_dirty_log(slot)[0]
    assert not vm.get_dirty_log(slot).any()
    with pytest.raises(s2pt.S2ptError, match="MANUAL_DIRTY_LOG_PROTECT2"):
        vm.clear_dirty_log(slot)


def test_initially_set_mode_protects_on_clear():
    vm = VM(initially_set=True, eager_split_chunk=2 * MiB)
    slot = vm.add_memslot(BASE, 4 * MiB)
    vm.touch(BASE, 4 * MiB, write=True, stride=2 * MiB)
    vm.enable_dirty_logging(slot)
    assert vm.get_dirty_log(slot).all()
    assert {r.level for r in leaves_in(vm, slot)} == {2}     # nothing done yet
    vm.clear_dirty_log(slot, 0, 512)                          # the first 2M
    recs = leaves_in(vm, slot)
    assert {(r.level, r.prot) for r in recs if r.start < BASE + 2 * MiB} == {(3, "RX")}
    assert {(r.level, r.prot) for r in recs if r.start >= BASE + 2 * MiB} == {(2, "RWX")}


# ---------------------------------------------------------------------------
# Eager split
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("chunk,backing", [(2 * MiB, "2M"), (2 * MiB, "1G"), (GiB, "1G"),
                                           (4 * KiB, "2M")])
def test_eager_split_leaves_every_page_level3_and_readonly(chunk, backing):
    vm = VM(eager_split_chunk=chunk)
    slot = vm.add_memslot(4 * GiB, GiB if backing == "1G" else 8 * MiB, backing=backing)
    vm.touch(slot.gpa, slot.size, write=True, stride=vm.pgt.granule_size[2])
    vm.enable_dirty_logging(slot)
    recs = leaves_in(vm, slot)
    assert recs and all(r.level == 3 and r.prot == "RX" for r in recs)
    assert sum(r.end - r.start for r in recs) == slot.size
    vm.check()
    # No write has been lost: the first write to each page still faults.
    r = vm.fault(slot.gpa + 0x7000, write=True)
    assert r.outcome == "relax_perms" and r.fault.level == 3


def test_split_cache_sizing_follows_kernel():
    vm = VM()
    assert vm.kvm_mmu_split_nr_page_tables(2 * MiB) == 2
    assert vm.kvm_mmu_split_nr_page_tables(GiB) == 513
    assert pt.stage2_block_get_nr_page_tables(vm.pgt, 1) == 513
    assert pt.stage2_block_get_nr_page_tables(vm.pgt, 2) == 1
    assert pt.stage2_block_get_nr_page_tables(vm.pgt, 3) == 0


def test_eager_vs_lazy_costs():
    costs = {}
    for chunk in (0, 2 * MiB):
        vm, slot = vm_with_blocks(8 * MiB, eager_split_chunk=chunk)
        before = vm.stats["faults"]
        vm.enable_dirty_logging(slot)
        vm.touch(BASE, 8 * MiB, write=True, stride=64 * KiB)
        costs[chunk] = vm.stats["faults"] - before
    # Lazy: each block's first write splits it (1 fault), then every other
    # page written faults in again; eager: one relax_perms per page written.
    assert costs[2 * MiB] == 128
    assert costs[0] == 128


# ---------------------------------------------------------------------------
# Collapse: lazily by faults, or by unmapping the memslot
# ---------------------------------------------------------------------------

def split_then_disable(size=8 * MiB):
    vm, slot = vm_with_blocks(size, eager_split_chunk=2 * MiB)
    vm.enable_dirty_logging(slot)
    l3 = {r.start for r in leaves_in(vm, slot)}
    assert len(l3) >= 1
    tables = [p for p, lvl in __import__("s2pt.invariants").invariants.reachable_tables(vm.pgt)
              if lvl == 3]
    vm.disable_dirty_logging(slot)
    return vm, slot, tables


def test_lazy_collapse_restores_blocks_and_frees_each_table_once():
    vm, slot, tables = split_then_disable()
    assert len(tables) == 4
    freed0 = {p.pfn: p.free_count for p in tables}
    tlbi0 = vm.pgt.tlbis.summary().get("range", 0)
    for gpa in range(slot.gpa, slot.gpa + slot.size, 2 * MiB):
        r = vm.fault(gpa + 0x1000, write=True)
        assert r.outcome == "map" and r.size == 2 * MiB
    recs = leaves_in(vm, slot)
    assert all(r.level == 2 and r.block for r in recs) and len(recs) >= 1
    assert all(p.freed and p.free_count == freed0[p.pfn] + 1 for p in tables)
    # One range TLBI per table entry broken (the whole 2M block range).
    assert vm.pgt.tlbis.summary()["range"] - tlbi0 == 4
    assert vm.check() == []


def test_collapse_by_unmapping_the_memslot():
    vm, slot, tables = split_then_disable()
    s0 = vm.stats
    vm.unmap_memslot(slot)
    s1 = vm.stats
    assert all(p.freed for p in tables)
    # Every page was cleared with its own TLBI, plus one per emptied table:
    # four level-3 tables, and the level-2 table that held only this slot.
    assert s1["tlbi"] - s0["tlbi"] == 8 * MiB // (4 * KiB) + 4 + 1
    vm.touch(slot.gpa, slot.size, stride=2 * MiB)
    assert vm.stats["faults"] - s1["faults"] == 4
    assert all(r.level == 2 for r in leaves_in(vm, slot))
    assert vm.check() == []


# ---------------------------------------------------------------------------
# TLBs and break-before-make: the checkers catch broken sequences
# ---------------------------------------------------------------------------

def test_missing_tlbi_after_write_protect_is_a_stale_translation():
    vm, slot = vm_with_blocks(2 * MiB, bugs={"no-flush-after-wp"})
    vm.enable_dirty_logging(slot)
    assert vm.check()                      # a TLB entry still grants write
    with pytest.raises(s2pt.KernelBug, match="stale TLB entry.*write permission was removed"):
        vm.access(BASE + 0x1000, write=True)


def test_correct_sequence_passes_every_checker():
    vm, slot = vm_with_blocks(4 * MiB, eager_split_chunk=2 * MiB)
    bbm = BbmChecker(vm.pgt)
    vm.enable_dirty_logging(slot)
    vm.touch(BASE, 4 * MiB, write=True, stride=16 * KiB)
    vm.clear_dirty_log(slot)
    vm.disable_dirty_logging(slot)
    vm.touch(BASE, 4 * MiB, write=True, stride=2 * MiB)
    vm.unmap_memslot(slot)
    vm.touch(BASE, 4 * MiB, stride=2 * MiB)
    assert bbm.violations == [] and bbm.check_clean() == []
    assert vm.check() == []


def broken_collapse_walker(free_before_tlbi):
    """stage2_map_walk_table_pre with its steps reordered, for the lesson."""
    from s2pt.ops import WRITE_ONCE, tlbi
    from s2pt.descriptor import KVM_INVALID_PTE_LOCKED

    def table_pre(ctx, visit):
        data = ctx.arg
        if visit != pt.TABLE_PRE or not pt.stage2_leaf_mapping_allowed(ctx, data):
            return (yield from pt.stage2_map_walker(ctx, visit))
        pgt = ctx.pgt
        childp = ctx.old & pgt.addr_mask
        yield WRITE_ONCE(ctx.ptep, KVM_INVALID_PTE_LOCKED)
        yield s2pt.ops.put_page(ctx.ptep)
        if free_before_tlbi:
            yield from pt.kvm_pgtable_stage2_free_unlinked(pgt, childp, ctx.level)
        size = pgt.granule_size[ctx.level]
        yield tlbi("range", ctx.addr & ~(size - 1), size)
        if not free_before_tlbi:
            yield from pt.kvm_pgtable_stage2_free_unlinked(pgt, childp, ctx.level)
        new = s2pt.descriptor.kvm_init_valid_leaf_pte(data.phys + ctx.addr - ctx.start,
                                                      data.attr, ctx.level)
        yield from pt.stage2_make_pte(ctx, new)
        return 0
    return table_pre


@pytest.mark.parametrize("free_before_tlbi", [True, False])
def test_free_before_tlbi_is_a_hardware_use_after_free(free_before_tlbi):
    vm, slot = vm_with_blocks(2 * MiB, eager_split_chunk=2 * MiB)
    vm.enable_dirty_logging(slot)
    vm.disable_dirty_logging(slot)
    vm.translate(BASE + 0x1000, vcpu=1)    # vCPU1's walk cache now points at the L3 table
    pgt = vm.pgt
    data = pt.Stage2MapData(phys=slot.pa, attr=s2pt.descriptor.stage2_set_prot_attr(
        s2pt.descriptor.prot_from_str("RWX")), memcache=None)
    walker = pt.Walker(broken_collapse_walker(free_before_tlbi), data, pt.TABLE_PRE | pt.LEAF)
    gen = pt.kvm_pgtable_walk(pgt, BASE, 2 * MiB, walker)
    if free_before_tlbi:
        with pytest.raises(s2pt.KernelBug, match="walk cache still points to it"):
            run(gen, pgt.machine)
    else:
        assert run(gen, pgt.machine) == 0
        assert vm.translate(BASE + 0x1000, vcpu=1).level == 2


def test_bbm_checker_catches_valid_to_valid_and_early_make():
    pgt = s2pt.Stage2()
    pgt.map(0, 2 * MiB, 0, force_pte=True)
    bbm = BbmChecker(pgt, on_violation=lambda m: None)
    ptep = (pgt.mem.read64((pgt.mem.read64(pgt.pgd) & ~3)) & ~3)
    from s2pt.ops import WRITE_ONCE
    run(iter_ops(WRITE_ONCE(ptep, 0x5000 | 0x7FF)), pgt.machine)      # new PA, in place
    assert bbm.violations[-1].startswith("BBM valid->valid")
    run(iter_ops(WRITE_ONCE(ptep + 8, 0), WRITE_ONCE(ptep + 8, 0x9000 | 0x7FF)), pgt.machine)
    assert bbm.violations[-1].startswith("BBM invalid unclean->valid")
    run(iter_ops(WRITE_ONCE(ptep + 16, 0)), pgt.machine)
    assert bbm.check_clean()
    bbm.detach()


def iter_ops(*ops):
    for op in ops:
        yield op


def test_bbm_cannot_release_table_with_unclean_children():
    pgt = s2pt.Stage2()
    pgt.map(0, 4096, 0)
    bbm = BbmChecker(pgt, on_violation=lambda m: None)
    l2 = pgt.mem.read64(pgt.pgd) & ~3
    l3 = pgt.mem.read64(l2) & ~3
    from s2pt.ops import WRITE_ONCE, put_page
    # unmap without any TLBI: clear leaf, clear table entry, free the table
    run(iter_ops(WRITE_ONCE(l3, 0), put_page(l3), WRITE_ONCE(l2, 0), put_page(l2),
                 put_page(l3)), pgt.machine)
    assert any(v.startswith("cannot release table where children are still unclean")
               for v in bbm.violations)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------

def test_bad_vm_input_changes_nothing():
    vm = VM(eager_split_chunk=0)          # the chunk is chosen: lazy
    slot = vm.add_memslot(BASE, 4 * MiB)
    vm.touch(BASE, 4 * MiB, stride=2 * MiB)
    before = (vm.pgt.mem.snapshot(), len(vm.memslots), vm.split_chunk)
    bad = [
        lambda: vm.add_memslot(BASE + 2 * MiB, 4 * MiB),          # overlap
        lambda: vm.add_memslot(1 << 40, 4096),                    # outside IPA space
        lambda: vm.add_memslot(BASE + 0x123, 4096 * 4),           # misaligned
        lambda: vm.add_memslot(8 * GiB, 2 * MiB, backing="3M"),    # unknown backing
        lambda: vm.enable_dirty_logging(vm.add_memslot(2 * BASE, 4096, readonly=True)),
        lambda: vm.enable_dirty_logging(slot, eager_split_chunk=3 * MiB),
        lambda: vm.enable_dirty_logging(slot, eager_split_chunk=2 * MiB),
        lambda: vm.enable_cap_eager_split(2 * MiB),
        lambda: vm.fault(BASE, vcpu=7),
        lambda: vm.fault(-1),
        lambda: vm.get_dirty_log(slot),                           # not logging
        lambda: vm.enable_dirty_logging(99),
    ]
    msgs = []
    for call in bad:
        n = len(vm.memslots)
        with pytest.raises(s2pt.S2ptError) as e:
            call()
        msgs.append(str(e.value))
        del vm.memslots[n:]          # the read-only slot added for one case
    assert "overlaps" in msgs[0] and "IPA space" in msgs[1] and "granule" in msgs[2]
    assert "read-only" in msgs[4] and "not a supported block size" in msgs[5]
    assert "memslots are empty" in msgs[6] and "memslots are empty" in msgs[7]
    assert (vm.pgt.mem.snapshot(), len(vm.memslots), vm.split_chunk) == before


def test_chunk_can_be_set_before_memslots_exist():
    vm = VM()
    vm.enable_cap_eager_split(GiB)
    assert vm.split_chunk == GiB


def test_first_chunk_given_at_enable_is_the_vms_choice():
    vm = VM()
    a = vm.add_memslot(BASE, 4 * MiB)
    b = vm.add_memslot(2 * BASE, 4 * MiB)
    vm.touch(BASE, 4 * MiB, write=True, stride=2 * MiB)
    vm.enable_dirty_logging(a, eager_split_chunk=2 * MiB)      # as the contract shows
    assert {r.level for r in leaves_in(vm, a)} == {3}
    with pytest.raises(s2pt.S2ptError, match="memslots are empty"):
        vm.enable_dirty_logging(b, eager_split_chunk=0)
    vm.enable_dirty_logging(b, eager_split_chunk=2 * MiB)       # the same value is fine


# ---------------------------------------------------------------------------
# Random interleavings of faults, logging toggles and dirty-log reads
# ---------------------------------------------------------------------------

class DirtyLogMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.vm = VM(vcpus=2, eager_split_chunk=0)
        self.slot = self.vm.add_memslot(BASE, 8 * MiB, backing="2M")
        self.logging = False
        self.written = set()      # pages written since logging / the last clear

    pages = st.integers(0, 8 * MiB // 4096 - 1)

    @rule(page=pages, write=st.booleans(), vcpu=st.integers(0, 1))
    def access(self, page, write, vcpu):
        gpa = BASE + page * 4096
        t = self.vm.access(gpa + 0x10, write=write, vcpu=vcpu)
        assert t.pa == self.slot.pa + page * 4096 + 0x10
        if write and self.logging:
            self.written.add(page)

    @rule(page=pages)
    def access_outside(self, page):
        assert self.vm.fault(0x1000 + page * 4096).outcome == "KVM_EXIT_MMIO"

    @precondition(lambda self: not self.logging)
    @rule()
    def enable(self):
        self.vm.enable_dirty_logging(self.slot)
        self.logging = True
        self.written = set()

    @precondition(lambda self: self.logging)
    @rule()
    def disable(self):
        self.vm.disable_dirty_logging(self.slot)
        self.logging = False

    @precondition(lambda self: self.logging)
    @rule()
    def read_log(self):
        log = self.vm.get_dirty_log(self.slot)
        assert set(log.nonzero()[0].tolist()) == self.written

    @precondition(lambda self: self.logging)
    @rule()
    def clear_log(self):
        assert self.vm.clear_dirty_log(self.slot) == len(self.written)
        self.written = set()

    @precondition(lambda self: not self.logging)
    @rule()
    def unmap_slot(self):
        self.vm.unmap_memslot(self.slot)

    @invariant()
    def quiescent_checks(self):
        assert self.vm.check() == []


TestDirtyLog = DirtyLogMachine.TestCase
TestDirtyLog.settings = settings(max_examples=40, stateful_step_count=30, deadline=None,
                                 suppress_health_check=[HealthCheck.too_slow])


def test_vm_bugs_are_chosen_when_it_is_built():
    with pytest.raises(s2pt.S2ptError, match="unknown"):
        VM(bugs={"no-such-bug"})
    for bad in ("no-bbm-tlbi", 3):
        with pytest.raises(s2pt.S2ptError, match="set of bug names"):
            VM(bugs=bad)
    vm = VM(bugs={"no-shared-walk", "no-bbm-tlbi"})
    assert not vm.fault_flags & pt.SHARED and vm.fault_flags & pt.SKIP_BBM_TLBI
    assert VM().fault_flags == pt.SHARED | pt.HANDLE_FAULT


def test_touch_write_every_writes_one_access_in_n():
    vm = VM()
    slot = vm.add_memslot(BASE, 2 * MiB, backing="4K")
    vm.enable_dirty_logging(slot)
    vm.touch(BASE, 2 * MiB, stride=64 * KiB, write_every=4)
    dirty = np.flatnonzero(vm.get_dirty_log(slot))
    assert list(dirty) == [j * 16 for j in range(0, 32, 4)]   # accesses 0, 4, 8, ... (16 pages apart)
    for bad in (0, -1, 1.5):
        with pytest.raises(s2pt.S2ptError, match="write_every"):
            vm.touch(BASE, 4 * KiB, write_every=bad)


# ---------------------------------------------------------------------------
# The schemes as a VM's locking (s2pt.schemes)
# ---------------------------------------------------------------------------

def _logged_vm(scheme, blocks=2):
    from s2pt.schemes import get_scheme
    sch = get_scheme(scheme)
    vm = VM(locking=sch, mm_ops=sch.mm_ops())
    slot = vm.add_memslot(BASE, blocks * 2 * MiB, backing="2M")
    vm.touch(BASE, slot.size, write=True, stride=2 * MiB)
    vm.enable_dirty_logging(slot)
    vm.touch(BASE, slot.size, write=True, stride=64 * KiB)   # lazy splits: L3 tables
    return vm, slot


def test_rwlock_turning_logging_off_unmaps_the_slot_and_blocks_fault_back():
    """rwlock: disable_dirty_logging unmaps the memslot under the write lock
    (kvm_stage2_unmap_range): nothing in it translates, every level-3 table
    is freed, and each 2M block comes back with one guest fault."""
    vm, slot = _logged_vm("rwlock")
    other = vm.add_memslot(BASE + slot.size, 4 * KiB, backing="4K")
    vm.access(other.gpa, write=True)
    tables = vm.stats["tables_live"]
    assert tables >= 2 + 1                   # two L3 tables in the slot, the L2 table
    vm.disable_dirty_logging(slot)
    for ipa in range(BASE, BASE + slot.size, 4 * KiB):
        assert isinstance(vm.translate(ipa), s2pt.Fault)
    assert vm.translate(other.gpa).pa        # outside the slot: untouched
    assert vm.stats["tables_live"] == tables - 2
    before = vm.counters["faults"]
    vm.touch(BASE, slot.size, stride=4 * KiB)
    assert vm.counters["faults"] - before == 2
    assert all(r.level == 2 for r in leaves_in(vm, slot))       # ptdump merges the blocks
    assert [vm.translate(BASE + k * 2 * MiB).level for k in range(2)] == [2, 2]
    assert vm.check() == []


@pytest.mark.parametrize("scheme", ["rcu", "none", "write-lock", "hyp-lock"])
def test_other_schemes_leave_the_pages_for_lazy_collapse(scheme):
    vm, slot = _logged_vm(scheme)
    leaves = leaves_in(vm, slot)
    vm.disable_dirty_logging(slot)
    assert leaves_in(vm, slot) == leaves and all(r.level == 3 for r in leaves)
    vm.touch(BASE + 4 * KiB, slot.size, write=True, stride=2 * MiB)   # collapse by fault
    assert all(r.level == 2 for r in leaves_in(vm, slot))       # ptdump merges the blocks
    assert [vm.translate(BASE + k * 2 * MiB).level for k in range(2)] == [2, 2]
    assert vm.check() == []


def test_disable_logging_without_commit_publishes_only_the_memslot():
    """commit=False: the new memslot (logging off) is visible, the table and
    the split cache are as logging left them (kvm_arch_commit_memory_region,
    where rwlock would unmap, has not run)."""
    vm, slot = _logged_vm("rwlock")
    vm.split_page_cache.topup(2)
    leaves = leaves_in(vm, slot)
    vm.disable_dirty_logging(slot, commit=False)
    assert not slot.logging and leaves_in(vm, slot) == leaves
    assert vm.split_page_cache.nobjs == 2


def test_rwlock_fault_maps_inside_a_table_instead_of_collapsing():
    """With the slot's tables still there (before the commit's unmap), an
    rwlock fault that wants 2M maps at the table's level: the level-3
    table stays, no table is freed."""
    vm, slot = _logged_vm("rwlock", blocks=1)
    vm.disable_dirty_logging(slot, commit=False)
    freed = vm.stats["tables_freed"]
    vm.fault(BASE + 12 * KiB, write=True)            # unmapped page in the table: 2M wanted
    assert vm.stats["tables_freed"] == freed
    assert vm.translate(BASE + 12 * KiB).level == 3
    assert all(r.level == 3 for r in leaves_in(vm, slot))
