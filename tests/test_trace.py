"""s2pt.trace against sequences derived by hand from arch/arm64/kvm/hyp/pgtable.c.

The expected operations below are written from the kernel source, with
addresses computed from raw table memory, not from the walker or the trace.
"""

import doctest
import sys

import pytest

import s2pt
from s2pt import pgtable as pt
from s2pt.ops import run

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
LOCKED = 1 << 10                      # KVM_INVALID_PTE_LOCKED
ADDR = ((1 << 48) - 1) & ~0xFFF       # output address bits, 4K granule

# A normal-memory RWX leaf as stage2_set_prot_attr + kvm_init_valid_leaf_pte
# build it: valid, MemAttr 0xF (normal WB, no FWB), S2AP RW, SH inner, AF.
RWX_ATTRS = 1 | (0xF << 2) | (0b11 << 6) | (0b11 << 8) | (1 << 10)


def table_of(pgt, ptep):
    return pgt.mem.read64(ptep) & ADDR


def test_map_one_block_over_an_empty_level2_entry():
    pgt = s2pt.Stage2(ipa_bits=40, granule=4096)
    pgt.map(1 * GiB, 4 * KiB, 0x8_0000_0000)            # builds PGD[1] -> L2 -> L3
    pgd1 = pgt.pgd + 8 * 1                                # 40 bits, 4K: level-1 PGD, 1G per entry
    l2 = table_of(pgt, pgd1)
    l2_1 = l2 + 8 * 1                                     # IPA 1G + 2M: entry 1, empty
    assert pgt.mem.read64(l2_1) == 0
    pa = 0x8_0020_0000
    block = pa | RWX_ATTRS                                # level 2: bit 1 clear = block

    t = s2pt.trace(pgt.map, 1 * GiB + 2 * MiB, 2 * MiB, pa)

    assert t.ops == [
        ("READ_ONCE", pgd1),                  # __kvm_pgtable_visit: a table, TABLE_PRE
        ("READ_ONCE", pgd1),                  # reload after the TABLE_PRE callback
        ("READ_ONCE", l2_1),                  # the empty entry: LEAF callback
        ("WRITE_ONCE", l2_1, LOCKED),         # stage2_try_break_pte (exclusive: no cmpxchg),
                                              # old == 0: no TLBI, no put_page
        ("cmo", "dcache_clean_inval_poc", pa, 2 * MiB),
        ("cmo", "icache_inval_pou", pa, 2 * MiB),
        ("READ_ONCE", l2_1),                  # stage2_make_pte: WARN_ON(!locked)
        ("get_page", l2_1),
        ("smp_store_release", l2_1, block),
        ("READ_ONCE", l2_1),                  # reload after the LEAF callback
        ("dsb", "ishst"),                     # end of kvm_pgtable_stage2_map
    ]
    fn = {s.op[0]: s.function for s in t.steps}
    assert fn["cmo"] == "stage2_map_walker_try_leaf"
    assert fn["smp_store_release"] == fn["get_page"] == "stage2_make_pte"
    assert fn["dsb"] == "kvm_pgtable_stage2_map"
    assert fn["WRITE_ONCE"] == "stage2_try_break_pte"
    assert t.result is None
    text = str(t)
    assert text.splitlines()[0] == "Stage2.map(0x40200000, 0x200000, 0x800200000)"
    assert "WRITE_ONCE(L2[1], LOCKED)" in text
    assert f"smp_store_release(L2[1], block {pa:#x} RWX)" in text
    assert "READ_ONCE" not in text and "READ_ONCE(PGD[1])" in t.text(reads=True)
    s = t.summary()
    assert (s["operations"], s["reads"], s["stores"], s["TLBIs"], s["CMOs"]) == (11, 5, 2, 0, 2)
    assert s["tables allocated"] == s["tables freed"] == 0


def test_collapse_breaks_the_table_entry_flushes_the_range_and_frees_the_old_table():
    pgt = s2pt.Stage2(ipa_bits=40, granule=4096)
    pgt.map(1 * GiB, 2 * MiB, 0x8_0000_0000, force_pte=True)
    pgd1 = pgt.pgd + 8
    l2 = table_of(pgt, pgd1)
    l3 = table_of(pgt, l2)
    assert pgt.mem.page_count(l3) == 513

    t = s2pt.trace(pgt.map, 1 * GiB, 2 * MiB, 0x8_0000_0000)

    not_reads = [op for op in t.ops if op[0] not in ("READ_ONCE", "page_count")]
    # stage2_map_walk_table_pre -> stage2_map_walker_try_leaf on the table entry
    assert not_reads[:7] == [
        ("WRITE_ONCE", l2, LOCKED),                       # break
        ("tlbi", "range", 1 * GiB, 2 * MiB),              # old entry was a table
        ("put_page", l2),
        ("cmo", "dcache_clean_inval_poc", 0x8_0000_0000, 2 * MiB),
        ("cmo", "icache_inval_pou", 0x8_0000_0000, 2 * MiB),
        ("get_page", l2),                                 # make
        ("smp_store_release", l2, 0x8_0000_0000 | RWX_ATTRS),
    ]
    # stage2_free_unlinked_table: set_page_private(level), then call_rcu
    assert not_reads[7] == ("set_page_private", l3, 2)   # the level of the entry it was in
    call = not_reads[8]
    assert call[0] == "call_rcu" and call[2][1] == l3     # free_unlinked_table
    assert not_reads[9] == ("dsb", "ishst")
    # No reader: the callback runs at the end of the call.  stage2_free_walker
    # puts each entry's reference (put_page(ctx->ptep)), then
    # kvm_pgtable_stage2_free_unlinked puts the table's own (f6a27d6dc51b).
    assert not_reads[10:] == [("put_page", l3 + 8 * i) for i in range(512)] + [("put_page", l3)]
    assert pgt.mem.page_of(l3).freed
    text = str(t)
    assert "WRITE_ONCE(L2[0], LOCKED)" in text
    assert "TLBI range [0x40000000, +0x200000)" in text
    assert f"put_page({l3:#x}) x512" in text
    assert text.index("LOCKED") < text.index("TLBI range") < text.index("smp_store_release") \
        < text.index("x512")
    s = t.summary()
    assert s["TLBIs"] == 1 and s["tables freed"] == 1 and s["put_page"] == 514


def test_unmap_of_a_page_issues_a_tlbi_with_level_3():
    pgt = s2pt.Stage2(ipa_bits=40, granule=4096)
    pgt.map(1 * GiB, 8 * KiB, 0x8_0000_0000)
    t = s2pt.trace(pgt.unmap, 1 * GiB + 4 * KiB, 4 * KiB)
    assert [op for op in t.ops if op[0] == "tlbi"] == [("tlbi", "ipa", 1 * GiB + 4 * KiB, 3)]
    assert "TLBI IPAS2E1IS 0x40001000, level 3" in str(t)
    assert next(s.function for s in t.steps if s.op[0] == "tlbi") == "stage2_unmap_put_pte"


def test_observer_is_removed_after_an_exception():
    vm = s2pt.VM()
    m = vm.pgt.machine
    before = list(m.observers)
    with pytest.raises(RuntimeError):
        with s2pt.trace(vm) as t:
            vm.pgt.map(1 * GiB, 4 * KiB, 0x8_0000_0000)
            raise RuntimeError("boom")
    assert m.observers == before and len(t) > 0
    with pytest.raises(s2pt.S2ptError):
        s2pt.trace(vm.pgt.map, 1 * GiB + 1, 4 * KiB, 0x8_0000_0000)   # misaligned
    assert m.observers == before
    # and the walker is free to take its bulk path again
    vm.pgt.map(2 * GiB, 2 * MiB, 0x9_0000_0000, force_pte=True)
    assert not m.watched


def test_a_trace_sees_every_entry_no_bulk_path():
    pgt = s2pt.Stage2(ipa_bits=40, granule=4096)
    t = s2pt.trace(pgt.map, 1 * GiB, 2 * MiB, 0x8_0000_0000, force_pte=True)
    stores = [op for op in t.ops if op[0] == "smp_store_release"]
    assert len(stores) == 512 + 2                  # 512 pages, the L2 and L3 table entries
    text = str(t)
    assert "┌ 512 times:" in text and "L3[0..511]" in text


@pytest.mark.parametrize("bad", [42, "pgt", None, lambda: None, print, s2pt.Stage2])
def test_bad_input_names_the_value_and_the_rule(bad):
    with pytest.raises(s2pt.S2ptError) as e:
        s2pt.trace(bad)
    assert repr(bad) in str(e.value) and "Stage2, a VM or a pkvm.Host" in str(e.value)


def test_arguments_without_a_method_are_refused():
    pgt = s2pt.Stage2()
    with pytest.raises(s2pt.S2ptError, match="arguments go with a method"):
        s2pt.trace(pgt, 1 * GiB)


def test_vm_fault_and_pkvm_host():
    vm = s2pt.VM()
    vm.add_memslot(1 * GiB, 2 * MiB, backing="4K")
    t = s2pt.trace(vm.fault, 1 * GiB, write=True)
    assert t.result.outcome == "map" and t.title.startswith("VM.fault(0x40000000, write=True)")
    names = [s.function for s in t.steps]
    assert "kvm_pgtable_walk_begin" in names and "stage2_make_pte" in names
    assert ("rcu_read_lock",) in t.ops and ("rcu_read_unlock",) in t.ops   # a shared walk

    # Mainline maps the host's memory lazily, so this access faults and maps
    # (android15-6.6 mapped it at init: Host's default, coalesce=True).
    host = s2pt.pkvm.Host(memory=[(2 * GiB, 1 * GiB)], coalesce=False)
    with s2pt.trace(host) as h:
        host.access(2 * GiB + 0x1000)
    assert h.summary()["stores"] >= 1 and host.pgt.machine.observers == []


def test_a_reader_held_over_a_collapse_defers_the_free():
    """The notebooks' pretend reader: a shared walk begun on another CPU."""
    pgt = s2pt.Stage2()
    pgt.map(1 * GiB, 2 * MiB, 0x8_0000_0000, force_pte=True)
    l3 = table_of(pgt, table_of(pgt, pgt.pgd + 8))
    reader = pt.Walker(None, None, pt.SHARED)
    run(pt.kvm_pgtable_walk_begin(pgt, reader), pgt.machine)
    t = s2pt.trace(pgt.map, 1 * GiB, 2 * MiB, 0x8_0000_0000)
    assert ("put_page", l3) not in t.ops and not pgt.mem.page_of(l3).freed
    with s2pt.trace(pgt) as u:
        run(pt.kvm_pgtable_walk_end(pgt, reader), pgt.machine)
    assert u.ops[0] == ("rcu_read_unlock",)
    assert [s.function for s in u.steps if s.op == ("put_page", l3)][-1] \
        == "kvm_pgtable_stage2_free_unlinked"
    assert pgt.mem.page_of(l3).freed and u.summary()["tables freed"] == 1


def test_module_doctest():
    mod = sys.modules["s2pt.trace"]                # s2pt.trace is the function
    failed, attempted = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert attempted > 0 and failed == 0
