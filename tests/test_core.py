"""The core model against the kernel's encodings and the architecture's rules.

Expected values come from the kernel sources and the reference tables
(/work/shared/reference/kernel-stage2.md), written out by hand here, never
computed by the code under test.
"""

import errno

import pytest

import s2pt
from s2pt import descriptor as d
from s2pt.geometry import Geometry

GiB, MiB, KiB = 1 << 30, 1 << 20, 1 << 10


# ---------------------------------------------------------------------------
# Geometry: stage2_pgtable_levels, start level, kvm_pgd_pages (reference §2.4)
# ---------------------------------------------------------------------------

GEOMETRY_TABLE = [
    # granule, ipa, levels, start level, pgd pages
    (4096, 32, 2, 2, 4),
    (4096, 35, 3, 1, 1),
    (4096, 39, 3, 1, 1),
    (4096, 40, 3, 1, 2),     # kernel comment: "concatenate two first level page tables"
    (4096, 42, 3, 1, 8),
    (4096, 43, 3, 1, 16),
    (4096, 44, 4, 0, 1),
    (4096, 48, 4, 0, 1),
    (16384, 36, 2, 2, 1),
    (16384, 40, 2, 2, 16),   # kernel comment: "16K ... 16"
    (16384, 41, 3, 1, 1),
    (16384, 47, 3, 1, 1),
    (16384, 48, 3, 1, 2),
    (65536, 40, 2, 2, 1),
    (65536, 42, 2, 2, 1),
    (65536, 46, 2, 2, 16),
    (65536, 47, 3, 1, 1),
    (65536, 48, 3, 1, 1),
]


@pytest.mark.parametrize("granule,ipa,levels,start,pgd", GEOMETRY_TABLE)
def test_geometry_matches_reference_table(granule, ipa, levels, start, pgd):
    g = Geometry(ipa_bits=ipa, granule=granule)
    assert (g.levels, g.start_level, g.pgd_pages) == (levels, start, pgd)
    pgt = s2pt.Stage2(ipa_bits=ipa, granule=granule)
    assert len(pgt.pgd_pages) == pgd
    # The concatenated PGD is contiguous and aligned to its size.
    assert pgt.pgd % (pgd * granule) == 0


def test_64k_small_ipa_is_raised_to_two_levels():
    # stage2_pgtable_levels(32) with 64K pages is 1; kvm_get_vtcr raises it to 2.
    g = Geometry(ipa_bits=32, granule=65536)
    assert (g.levels, g.start_level, g.pgd_pages) == (2, 2, 1)


@pytest.mark.parametrize("granule,vtcr", [(4096, 0x802D3558), (16384, 0x802DB558),
                                          (65536, 0x802D7558)])
def test_vtcr_values(granule, vtcr):
    # RES1 | HA | VS16 | PS=48 bits | SH0 inner | ORGN0/IRGN0 WBWA | TG0 | SL0 | T0SZ=24
    assert s2pt.Stage2(ipa_bits=40, granule=granule).vtcr == vtcr


def test_vtcr_t0sz_and_sl0_for_48_bits():
    v = s2pt.Stage2(ipa_bits=48).vtcr
    assert v & 0x3F == 16
    assert (v >> 6) & 3 == 2            # SL0 = 2 - (4 - 4) -> start level 0


def test_vttbr_holds_pgd_and_vmid():
    pgt = s2pt.Stage2(vmid=5)
    assert pgt.vttbr == pgt.pgd | (5 << 48)
    assert pgt.vttbr & 1 == 0           # no CnP


def test_block_sizes_per_granule():
    assert Geometry(granule=4096).block_sizes() == [GiB, 2 * MiB, 4 * KiB]
    assert Geometry(granule=16384).block_sizes() == [32 * MiB, 16 * KiB]
    assert Geometry(granule=65536).block_sizes() == [512 * MiB, 64 * KiB]


@pytest.mark.parametrize("kw", [dict(granule=8192), dict(ipa_bits=31), dict(ipa_bits=49),
                                dict(ipa_bits=52), dict(ipa_bits="40")])
def test_bad_geometry_is_rejected(kw):
    with pytest.raises(s2pt.S2ptError) as e:
        s2pt.Stage2(**kw)
    assert str(list(kw.values())[0]) in str(e.value)


# ---------------------------------------------------------------------------
# Descriptor encodings
# ---------------------------------------------------------------------------

PA = 0x8_4020_0000


def leaf_at(prot="RWX", level=3, memattr="normal", **kw):
    pgt = s2pt.Stage2(**kw)
    size = pgt.granule_size[level]
    ipa = 0x4000_0000 - 0x4000_0000 % size + size
    pa = PA - PA % size
    pgt.map(ipa, size, pa, prot=prot, memattr=memattr)
    pte, lvl = pgt.get_leaf(ipa)
    assert lvl == level
    return pte, pa


def test_normal_rwx_page_is_pa_or_7ff():
    pte, pa = leaf_at("RWX", 3)
    assert pte == pa | 0x7FF


def test_rw_only_sets_xn_bit_54():
    pte, pa = leaf_at("RW", 3)
    assert pte == pa | 0x7FF | (1 << 54)


def test_level2_block_clears_type_bit():
    pte, pa = leaf_at("RWX", 2)
    assert pte == pa | 0x7FD


def test_level1_block_4k():
    pte, pa = leaf_at("RWX", 1)
    assert pte == pa | 0x7FD and pa % GiB == 0


def test_read_only_clears_s2ap_w():
    pte, pa = leaf_at("R", 3)
    assert pte == pa | 0x77F | (1 << 54)


def test_device_memory_encoding():
    # MT_S2_DEVICE_nGnRE = 1 in MemAttr[5:2]; device is never executable.
    pte, pa = leaf_at("RW", 3, memattr="device")
    assert pte == pa | (1 << 54) | 0x400 | 0x300 | 0xC0 | (1 << 2) | 0b11


def test_normal_nc_encoding():
    pte, pa = leaf_at("RW", 3, memattr="normal-nc")
    assert (pte >> 2) & 0xF == 0x5


def test_fwb_encodings():
    pte, pa = leaf_at("RWX", 3, fwb=True)
    assert (pte >> 2) & 0xF == 0x6          # MT_S2_FWB_NORMAL
    pte, pa = leaf_at("RW", 3, memattr="device", fwb=True)
    assert (pte >> 2) & 0xF == 0x1          # MT_S2_FWB_DEVICE_nGnRE


def test_table_descriptor_is_pa_or_3():
    pgt = s2pt.Stage2()
    pgt.map(0x4000_0000, 4096, PA)
    # Level-1 entry 1 of PGD page 0 now points to a level-2 table.
    l1 = pgt.mem.read64(pgt.pgd + 8 * 1)
    assert l1 & 3 == 3 and l1 & ~0xFFF & ((1 << 48) - 1) == l1 & ~3
    child = l1 & ~3
    l2 = pgt.mem.read64(child)
    assert l2 & 3 == 3


def test_locked_and_owner_encodings():
    assert d.KVM_INVALID_PTE_LOCKED == 1 << 10
    assert d.kvm_init_invalid_leaf_owner(1) == 1 << 2
    assert s2pt.decode(1 << 10, 3).kind == "locked"
    dec = s2pt.decode(1 << 2, 3)
    assert dec.kind == "owner" and dec.owner == 1


def test_decode_fields():
    dec = s2pt.decode(0x8_0000_0000 | 0x7FF, level=3)
    assert dec.kind == "page" and dec.pa == 0x8_0000_0000 and dec.prot == "RWX"
    names = {f.name: f.value for f in dec.fields}
    assert names["MemAttr"] == 0xF and names["AF"] == 1 and names["SH"] == 3
    assert names["S2AP[0]"] == 1 and names["S2AP[1]"] == 1 and names["XN"] == 0
    blk = s2pt.decode(0x4000_0000 | 0x7FD | (2 << 53), level=1)
    assert blk.kind == "block" and blk.size == GiB and blk.prot == "RW"
    assert s2pt.decode(0x1000 | 0x7FD, level=3).kind == "reserved"
    assert s2pt.decode(0x5000 | 3, level=2).kind == "table"
    assert s2pt.decode(0, 0).kind == "invalid"
    assert str(s2pt.decode(0x7FF, 3)).startswith("0x00000000000007ff at level 3")


@pytest.mark.parametrize("args", [(1 << 64, 3), (-1, 3), (0, 4), (0, -1)])
def test_decode_bad_input(args):
    with pytest.raises(s2pt.S2ptError):
        s2pt.decode(*args)


def test_decode_bad_granule():
    with pytest.raises(s2pt.S2ptError, match="granule"):
        s2pt.decode(0, 3, granule=1000)


def test_prot_roundtrip():
    for prot in ["", "R", "W", "X", "RW", "RX", "WX", "RWX"]:
        attr = d.stage2_set_prot_attr(d.prot_from_str(prot))
        assert d.prot_of(attr | 1) == prot


# ---------------------------------------------------------------------------
# Mapping choices and translation faults
# ---------------------------------------------------------------------------

def test_largest_block_that_alignment_allows():
    pgt = s2pt.Stage2()
    # 1G-aligned IPA and PA, 1G + 2M + 4K: one 1G block, one 2M block, one page.
    pgt.map(GiB, GiB + 2 * MiB + 4096, 0x10_0000_0000)
    assert pgt.translate(GiB).level == 1
    assert pgt.translate(2 * GiB).level == 2
    assert pgt.translate(2 * GiB + 2 * MiB).level == 3
    with pytest.raises(s2pt.Fault) as e:
        pgt.translate(2 * GiB + 2 * MiB + 4096)
    assert e.value.kind == "translation" and e.value.level == 3


def test_misaligned_pa_forces_pages():
    pgt = s2pt.Stage2()
    pgt.map(2 * MiB, 2 * MiB, 0x10_0000_1000)       # PA not 2M-aligned
    t = pgt.translate(2 * MiB + 0x1234)
    assert t.level == 3 and t.pa == 0x10_0000_2234


def test_force_pte():
    pgt = s2pt.Stage2()
    pgt.map(0, 2 * MiB, 0, force_pte=True)
    assert pgt.translate(0x1000).level == 3
    assert pgt.stats["tables_allocated"] == 2      # a level-2 and a level-3 table


def test_translation_fault_levels():
    pgt = s2pt.Stage2()
    with pytest.raises(s2pt.Fault) as e:
        pgt.translate(0x1234)
    assert (e.value.kind, e.value.level, e.value.fsc) == ("translation", 1, 0x05)
    pgt.map(0, 4096, 0x1000)
    with pytest.raises(s2pt.Fault) as e:
        pgt.translate(2 * MiB)
    assert (e.value.kind, e.value.level) == ("translation", 2)
    with pytest.raises(s2pt.Fault) as e:
        pgt.translate(0x1000)
    assert (e.value.kind, e.value.level, e.value.fsc) == ("translation", 3, 0x07)


def test_permission_faults():
    pgt = s2pt.Stage2()
    pgt.map(0, 4096, 0x1000, prot="R")
    assert pgt.translate(0).prot == "R"
    with pytest.raises(s2pt.Fault) as e:
        pgt.translate(0, write=True)
    assert (e.value.kind, e.value.level, e.value.fsc) == ("permission", 3, 0x0F)
    with pytest.raises(s2pt.Fault) as e:
        pgt.translate(0, exec=True)
    assert e.value.kind == "permission"
    pgt.relax_perms(0, "RWX")
    assert pgt.translate(0, write=True).prot == "RWX"


def test_access_flag_fault_and_mkyoung():
    pgt = s2pt.Stage2()
    pgt.map(0, 2 * MiB, 0)
    assert pgt.test_clear_young(0, 2 * MiB) is True
    assert pgt.test_clear_young(0, 2 * MiB) is False
    with pytest.raises(s2pt.Fault) as e:
        pgt.translate(0x5000)
    assert (e.value.kind, e.value.level, e.value.fsc) == ("access", 2, 0x0A)
    assert pgt.mkyoung(0x5000) == 0
    assert pgt.translate(0x5000).pa == 0x5000


def test_wrprotect_issues_no_tlbi_and_map_same_prot_is_noop():
    pgt = s2pt.Stage2()
    pgt.map(0, 4 * 4096, 0x10000)
    pgt.wrprotect(0, 4 * 4096)
    assert len(pgt.tlbis) == 0
    assert pgt.translate(0x1000).prot == "RX"
    # Re-mapping the same PA with more permissions is -EAGAIN in the walker:
    # only the permission-fault path (relax_perms) may add permissions.
    pgt.map(0, 4096, 0x10000, prot="RWX")
    assert pgt.translate(0).prot == "RX"


def test_remap_uses_break_before_make():
    pgt = s2pt.Stage2()
    pgt.map(0, 4096, 0x10000)
    pgt.map(0, 4096, 0x20000)
    assert pgt.translate(0).pa == 0x20000
    assert [str(t) for t in pgt.tlbis] == ["TLBI IPAS2E1IS vmid=1 ipa=0x0 level=3"]


def test_unmap_frees_empty_tables_and_counts_refs():
    pgt = s2pt.Stage2()
    pgt.map(0x4000_0000, 8 * 4096, 0x8000_0000)
    l2 = pgt.mem.read64(pgt.pgd + 8) & ~3
    l3 = pgt.mem.read64(l2) & ~3
    assert pgt.mem.page_count(l3) == 1 + 8
    assert pgt.mem.page_count(l2) == 1 + 1
    pgt.unmap(0x4000_0000, 4 * 4096)
    assert pgt.mem.page_count(l3) == 1 + 4
    pgt.unmap(0x4000_4000, 4 * 4096)
    # Both tables emptied and freed: the page metadata outlives the free.
    assert pgt.mem.page_of(l3).freed and pgt.mem.page_of(l2).freed
    assert pgt.mem.page_count(l3) == 0
    assert pgt.mem.read64(pgt.pgd + 8) == 0
    assert pgt.stats["tables_freed"] == 2
    pgt.check_invariants()


def test_unmap_of_part_of_a_block_unmaps_the_whole_block():
    pgt = s2pt.Stage2()
    pgt.map(0, 2 * MiB, 0)
    pgt.unmap(0x1000, 0x1000)
    with pytest.raises(s2pt.Fault):
        pgt.translate(0x10_0000)


def test_freed_table_is_poisoned_and_reused_lifo():
    pgt = s2pt.Stage2()
    pgt.map(0, 4096, 0)
    l2 = pgt.mem.read64(pgt.pgd) & ~3
    pgt.unmap(0, 4096)
    page = pgt.mem.page_of(l2)
    assert page.freed and int(page.table[0]) == 0xAAAA_AAAA_AAAA_AAAA
    with pytest.raises(s2pt.KernelBug, match="use-after-free"):
        pgt.mem.read64(l2)
    pgt.map(GiB, 4096, 0)
    # The most recently freed page comes back first.
    assert pgt.mem.read64(pgt.pgd + 8) & ~3 in (l2, l2 - 4096, l2 + 4096)
    pgt.check_invariants()


def test_collapse_frees_subtree_after_grace_period():
    pgt = s2pt.Stage2()
    pgt.map(0, 2 * MiB, 0, force_pte=True)
    assert pgt.translate(0).level == 3
    pgt.map(0, 2 * MiB, 0)      # a block fits now: table_pre collapses the table
    assert pgt.translate(0).level == 2
    kinds = [t.kind for t in pgt.tlbis]
    assert kinds == ["range"]               # the whole 2M range of the table entry
    assert pgt.stats["tables_freed"] == 1
    pgt.check_invariants()


def test_set_owner_breaks_block():
    pgt = s2pt.Stage2()
    pgt.map(0, 2 * MiB, 0)
    pgt.set_owner(0x3000, 0x1000, 1)
    with pytest.raises(s2pt.Fault) as e:
        pgt.translate(0x3000)
    assert e.value.kind == "translation" and e.value.level == 3
    pte, lvl = pgt.get_leaf(0x3000)
    assert pte == 1 << 2 and lvl == 3
    # The rest of the block was lost: faulted back lazily in the kernel.
    with pytest.raises(s2pt.Fault):
        pgt.translate(0x4000)
    pgt.check_invariants()


def test_memattr_device_cannot_be_executable():
    pgt = s2pt.Stage2()
    with pytest.raises(s2pt.S2ptError, match="executable"):
        pgt.map(0, 4096, 0, prot="RWX", memattr="device")


# ---------------------------------------------------------------------------
# Bad input: a clear S2ptError, and memory byte-for-byte unchanged
# ---------------------------------------------------------------------------

def populated():
    pgt = s2pt.Stage2(ram_pages=8)
    pgt.map(0, 2 * MiB, 0x1_0000_0000)
    pgt.map(4 * MiB, 16 * 4096, 0x2_0000_0000, prot="RW")
    return pgt


BAD_CALLS = [
    ("map", (0x1001, 4096, 0), "aligned"),
    ("map", (0, 0, 0), "positive"),
    ("map", (0, 4095, 0), "multiple"),
    ("map", (0, 4096, 0x1001), "aligned"),
    ("map", ((1 << 40) - 4096, 8192, 0), "beyond"),
    ("map", (1 << 40, 4096, 0), "beyond"),
    ("map", (0, 4096, (1 << 48) - 4096 + 4096), "beyond"),
    ("map", (-4096, 4096, 0), "non-negative"),
    ("map", (0, 4096, 0, "RWZ"), "R, W and X"),
    ("map", (0, 4096, 0, "RR"), "at most once"),
    ("map", (0, 4096, 0, 7), "string"),
    ("map", (0, 4096, 0, "RW", "weird"), "memattr"),
    ("unmap", (0, 0), "positive"),
    ("unmap", (0x800, 4096), "aligned"),
    ("wrprotect", (0, 1 << 41), "beyond"),
    ("relax_perms", (0, "Q"), "R, W and X"),
    ("relax_perms", (1 << 40, "RW"), "beyond"),
    ("translate", (1 << 40,), "beyond"),
    ("translate", ("0x10",), "integer"),
    ("set_owner", (0, 4096, 7), "KVM_MAX_OWNER_ID"),
    # 16 pages of tables cannot be topped up from ram_pages=8.
    ("map", (1 << 39, 1 << 30, 0, "RWX", "normal", True), "ENOMEM"),
]


@pytest.mark.parametrize("method,args,needle", BAD_CALLS)
def test_bad_input_changes_nothing(method, args, needle):
    pgt = populated()
    before = pgt.mem.snapshot()
    tlbis = len(pgt.tlbis)
    with pytest.raises(s2pt.S2ptError) as e:
        getattr(pgt, method)(*args)
    assert needle in str(e.value)
    assert isinstance(e.value, ValueError)
    assert pgt.mem.snapshot() == before
    assert len(pgt.tlbis) == tlbis


def test_enomem_boundary_is_exact():
    # A 4K page at a fresh 1G slot needs a level-2 and a level-3 table.
    pgt = s2pt.Stage2(ram_pages=2 + 2)      # 2 PGD pages + 2 tables
    pgt.map(0, 4096, 0)
    pgt2 = s2pt.Stage2(ram_pages=2 + 1)
    with pytest.raises(s2pt.S2ptError, match="ENOMEM"):
        pgt2.map(0, 4096, 0)


def test_ebusy_free_unlinked_knob_reproduces_leak_f6a27d6dc51b():
    pgt = s2pt.Stage2(bugs={"f6a27d6dc51b"})    # before f6a27d6dc51b
    pgt.map(0, 2 * MiB, 0, force_pte=True)
    pgt.map(0, 2 * MiB, 0)                      # collapse
    with pytest.raises(s2pt.KernelBug, match="leak"):
        pgt.check_invariants()


def test_missing_reload_walks_freed_table_a9f0e3d5a089():
    # pKVM frees unlinked tables synchronously; without the reload after the
    # TABLE_PRE callback the walker descends into the table it just freed.
    from s2pt import pgtable as pt
    pgt = s2pt.Stage2(mm_ops=pt.MmOps(pt.free_unlinked_table_now), bugs={"a9f0e3d5a089"})
    pgt.map(0, 2 * MiB, 0, force_pte=True)
    with pytest.raises(s2pt.KernelBug, match="use-after-free"):
        pgt.map(0, 2 * MiB, 0)


def test_errno_values_are_kernel_style():
    pgt = s2pt.Stage2()
    assert pgt.relax_perms(0, "RW") == -errno.EAGAIN
    assert pgt.mkyoung(0) == -errno.EAGAIN


def test_queued_rcu_callbacks_run_in_order_without_nesting():
    """ops.run invokes call_rcu callbacks after the walk, oldest first, and a
    long queue must not nest one run() inside the next (recursion limit)."""
    from s2pt.memory import PhysMem
    from s2pt.ops import Machine, run
    m = Machine(PhysMem())
    done = []

    def cb(k):
        done.append(k)
        if k == 0:
            m.rcu_callbacks.append((cb, (-1,)))     # queued by a callback: runs last
        return 0
        yield

    def walk():
        return 0
        yield

    m.rcu_callbacks.extend((cb, (k,)) for k in range(5000))
    assert run(walk(), m) == 0
    assert done == list(range(5000)) + [-1] and not m.rcu_callbacks
