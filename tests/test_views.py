"""The views: ptdump (kernel format, byte for byte), vmprint and draw.

Expected ptdump lines are written out by hand from the kernel's format
(arch/arm64/mm/ptdump.c note_page/dump_prot with arch/arm64/kvm/ptdump.c's
stage2_pte_bits after 8673e5b22e1e), never produced by the code under test.
The randomized tests compare the bulk and per-entry paths, and ptdump with
an independent re-implementation of the merge rule that reads the tables
straight from simulated memory.
"""

from __future__ import annotations

import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import s2pt
from s2pt import descriptor as d
from s2pt.draw import draw, translation_path
from s2pt.ptdump import (PtdumpRecord, debugfs_files, ipa_range, parse_ptdump, ptdump,
                        stage2_levels)
from s2pt.render import Drawing, render_svg
from s2pt.vmprint import vmprint

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
HEADER = "---[ Guest IPA ]---"
ADDR48 = ((1 << 48) - 1)


def line(start, end, size, level, attrs=""):
    """One range line, spelled out from the format: "0x%016lx-0x%016lx   "
    then "%9lu%c %s" (size, unit, level) then the attribute tail."""
    return f"0x{start:016x}-0x{end:016x}   {size:>10} {level}{attrs}"


# Attribute tails, column by column: " "/F, R, W, NX/"x ", AF, BLK/"   ".
RWX_BLK = "   R W x  AF BLK"
RW_BLK = "   R W NX AF BLK"
RWX_PAGE = "   R W x  AF    "
RW_PAGE = "   R W NX AF    "
R_PAGE = "   R   NX AF    "


def table_pa(pgt, ptep):
    """The next-level table a table descriptor points to, read from memory."""
    pte = pgt.mm.read64(ptep)
    assert pte & 3 == 3, hex(pte)
    return pte & ADDR48 & ~(pgt.page_size - 1)


@pytest.fixture
def small4k():
    """4K granule, 40-bit IPA (3 levels, start level 1, 2 PGD pages):
    a 2M RWX block, a 2M RW block, one RW page and two RWX pages."""
    p = s2pt.Stage2(ipa_bits=40, granule=4096)
    p.map(0x4000_0000, 2 * MiB, 0x8_0000_0000)
    p.map(0x4020_0000, 2 * MiB, 0x8_0020_0000, prot="RW")
    p.map(0x4040_0000, 4 * KiB, 0x9_0000_0000, prot="RW")
    p.map(0x4040_1000, 8 * KiB, 0x9_0000_1000, prot="RWX")
    return p


# ---------------------------------------------------------------------------
# ptdump: exact lines
# ---------------------------------------------------------------------------

def test_ptdump_4k_exact(small4k):
    assert ptdump(small4k) == "\n".join([
        HEADER,
        # 1 GiB of empty level-1 entries (PGD entry 0)
        line(0x0, 0x4000_0000, "1G", 1),
        line(0x4000_0000, 0x4020_0000, "2M", 2, RWX_BLK),
        line(0x4020_0000, 0x4040_0000, "2M", 2, RW_BLK),
        line(0x4040_0000, 0x4040_1000, "4K", 3, RW_PAGE),
        line(0x4040_1000, 0x4040_3000, "8K", 3, RWX_PAGE),
        # the rest of the level-3 table: 2 MiB - 12 KiB = 2036 KiB
        line(0x4040_3000, 0x4060_0000, "2036K", 3),
        # the rest of the level-2 table: 1 GiB - 6 MiB = 1018 MiB
        line(0x4060_0000, 0x8000_0000, "1018M", 2),
        # [0x80000000, 1 TiB) at level 1 is the final run: never printed
    ]) + "\n"


def test_ptdump_level3_lines_end_with_four_spaces(small4k):
    lines = ptdump(small4k).splitlines()
    assert lines[4].endswith(" AF    ") and lines[4][-4:] == "    "
    # Column layout: '-' at 18, size number right-aligned in 40..48, unit at 49.
    assert lines[1][18] == "-" and lines[1][37:40] == "   "
    assert lines[1][40:50] == "        1G" and lines[1][50:52] == " 1"


def test_final_run_is_never_printed_but_can_be_asked_for(small4k):
    text = ptdump(small4k)
    assert "0x0000010000000000" not in text
    full = ptdump(small4k, final=True)
    assert full == text + line(0x8000_0000, 1 << 40, "1022G", 1) + "\n"
    recs = parse_ptdump(full)
    assert recs[0].start == 0 and recs[-1].end == 1 << 40
    assert all(a.end == b.start for a, b in zip(recs, recs[1:]))


def test_empty_table_dumps_header_only():
    p = s2pt.Stage2(ipa_bits=40, granule=4096)
    assert ptdump(p) == HEADER + "\n"
    assert ptdump(p, final=True) == HEADER + "\n" + line(0, 1 << 40, "1T", 1) + "\n"


def test_merge_ignores_pa_but_not_level_or_attrs():
    p = s2pt.Stage2(ipa_bits=40, granule=4096)
    # Two pages with unrelated PAs merge (PA is masked out)...
    p.map(0x1000, 4 * KiB, 0x7_0000_0000)
    p.map(0x2000, 4 * KiB, 0x1_2345_6000)
    # ...an AF-clear page does not...
    p.map(0x3000, 4 * KiB, 0x7_0000_3000)
    p.test_clear_young(0x3000, 4 * KiB)
    # ...and a read-only page does not either.
    p.map(0x4000, 4 * KiB, 0x7_0000_4000, prot="R")
    assert ptdump(p).splitlines() == [
        HEADER,
        line(0x0, 0x1000, "4K", 3),
        line(0x1000, 0x3000, "8K", 3, RWX_PAGE),
        line(0x3000, 0x4000, "4K", 3, "   R W x " + "   " + "    "),
        line(0x4000, 0x5000, "4K", 3, R_PAGE),
        line(0x5000, 0x20_0000, "2028K", 3),
        # empty level-2 entries: a level change splits empty runs too
        line(0x20_0000, 0x4000_0000, "1022M", 2),
    ]


def test_level_1_block_and_sizes():
    p = s2pt.Stage2(ipa_bits=40, granule=4096)
    p.map(1 * GiB, 1 * GiB, 0x40_0000_0000)               # a level-1 block
    p.map(3 * GiB, 18 * MiB, 0x40_C000_0000, prot="RW")   # nine 2M blocks
    assert ptdump(p).splitlines() == [
        HEADER,
        line(0, 1 * GiB, "1G", 1),
        line(1 * GiB, 2 * GiB, "1G", 1, RWX_BLK),
        line(2 * GiB, 3 * GiB, "1G", 1),
        line(3 * GiB, 3 * GiB + 18 * MiB, "18M", 2, RW_BLK),
        line(3 * GiB + 18 * MiB, 4 * GiB, "1006M", 2),
    ]


def test_locked_entry_prints_F_and_owner_annotation_is_invisible():
    p = s2pt.Stage2(ipa_bits=40, granule=4096)
    p.map(0x0, 16 * KiB, 0x5_0000_0000, prot="RW")
    l2 = table_pa(p, p.pgd)
    l3 = table_pa(p, l2)
    p.mm.write64(l3 + 8 * 1, d.KVM_INVALID_PTE_LOCKED)     # mid break-before-make
    p.set_owner(0x10_0000, 8 * KiB, 1)                    # pKVM owner id 1: bit 2
    assert ptdump(p).splitlines() == [
        HEADER,
        line(0x0, 0x1000, "4K", 3, RW_PAGE),
        # BIT(10) is AF's position: invalid ("F"), XN clear ("x "), "AF"
        line(0x1000, 0x2000, "4K", 3, " F     x  AF    "),
        line(0x2000, 0x4000, "8K", 3, RW_PAGE),
        # The owner id lives in bits 9..2, outside the ptdump mask: the
        # annotated entries merge with the empty ones around them.
        line(0x4000, 0x20_0000, "2032K", 3),
        line(0x20_0000, 0x4000_0000, "1022M", 2),
    ]


def test_ptdump_16k_granule():
    # 16K, 40-bit IPA: 2 levels starting at 2, 16 concatenated PGD pages;
    # a level-2 entry maps 32 MiB, a level-3 entry 16 KiB.
    p = s2pt.Stage2(ipa_bits=40, granule=16384)
    p.map(0x4000_0000, 32 * MiB, 0x8_0000_0000)
    p.map(0x4200_0000, 48 * KiB, 0x9_0000_0000, prot="RW")
    assert ptdump(p).splitlines() == [
        HEADER,
        line(0, 0x4000_0000, "1G", 2),
        line(0x4000_0000, 0x4200_0000, "32M", 2, RWX_BLK),
        line(0x4200_0000, 0x4200_C000, "48K", 3, RW_PAGE),
        line(0x4200_C000, 0x4400_0000, "32720K", 3),
    ]
    assert ipa_range(p) == "40\n" and stage2_levels(p) == "2\n"


def test_ptdump_64k_granule():
    # 64K, 40-bit IPA: 2 levels from 2, one PGD page of 8192 entries;
    # level-2 blocks are 512 MiB, pages 64 KiB.
    p = s2pt.Stage2(ipa_bits=40, granule=65536)
    p.map(0x2000_0000, 512 * MiB, 0x20_0000_0000)
    p.map(0x4000_0000, 64 * KiB, 0x30_0000_0000, prot="R")
    assert ptdump(p).splitlines() == [
        HEADER,
        line(0, 0x2000_0000, "512M", 2),
        line(0x2000_0000, 0x4000_0000, "512M", 2, RWX_BLK),
        line(0x4000_0000, 0x4001_0000, "64K", 3, R_PAGE),
        line(0x4001_0000, 0x6000_0000, "524224K", 3),
    ]


@pytest.mark.parametrize("granule,ipa,rng,lvls", [
    (4096, 40, "40\n", "3\n"), (4096, 32, "32\n", "2\n"), (4096, 48, "48\n", "4\n"),
    (16384, 40, "40\n", "2\n"), (65536, 48, "48\n", "3\n")])
def test_ipa_range_and_stage2_levels_files(granule, ipa, rng, lvls):
    p = s2pt.Stage2(ipa_bits=ipa, granule=granule)
    files = debugfs_files(p)
    assert (files["ipa_range"], files["stage2_levels"]) == (rng, lvls)
    assert files["stage2_page_tables"] == HEADER + "\n"


def test_ptdump_runs_on_the_walker_and_observers_see_every_entry(small4k):
    seen = []
    small4k.machine.observers.append(lambda op, res: seen.append(op[0]))
    try:
        text = small4k.ptdump()            # observers attached: per-entry path
    finally:
        small4k.machine.observers.clear()
    assert text == ptdump(small4k, bulk=True)
    # 2 PGD pages + one L2 table + one L3 table = 2048 entries.  A table
    # entry is loaded once; a non-table entry twice (the visit, then the
    # reload after the callback, a9f0e3d5a089).
    assert seen.count("READ_ONCE") == 2 * (4 * 512 - 2) + 2
    assert set(seen) == {"READ_ONCE"}


def test_ptdump_bad_input():
    with pytest.raises(s2pt.S2ptError, match="not a stage-2 page table"):
        ptdump("not a table")


# ---------------------------------------------------------------------------
# parse_ptdump
# ---------------------------------------------------------------------------

def test_parse_ptdump_round_trip(small4k):
    recs = parse_ptdump(ptdump(small4k))
    assert recs[1] == PtdumpRecord(0x4000_0000, 0x4020_0000, 2 * MiB, 2,
                                   frozenset({"R", "W", "x", "AF", "BLK"}))
    assert [r.prot for r in recs if r.valid] == ["RWX", "RW", "RW", "RWX"]
    assert [r.block for r in recs if r.valid] == [True, True, False, False]
    assert recs[0].empty and not recs[0].valid
    # "Every leaf of this range is level 3 and read-write"
    pages = [r for r in recs if 0x4040_0000 <= r.start < 0x4060_0000 and r.valid]
    assert pages and all(r.level == 3 and "W" in r.attrs for r in pages)


def test_parse_ptdump_reads_kernel_cover_letter_sample():
    # The v9 cover letter's layout (older attribute strings parse too).
    text = ("---[ Guest IPA ]---\n"
            "0x0000000000000000-0x0000000001000000          16M 2\n"
            "0x0000000001020000-0x0000000001021000           4K 3   R W X AF    \n")
    a, b = parse_ptdump(text)
    assert (a.start, a.end, a.size, a.level, a.attrs) == (0, 16 * MiB, 16 * MiB, 2, frozenset())
    assert b.attrs == {"R", "W", "X", "AF"} and b.size == 4 * KiB


@pytest.mark.parametrize("text,needle", [
    ("hello\n", "not '0x"),
    ("0x0000000000000000-0x0000000000002000           4K 3\n", "size 4K"),
    (42, "must be a str"),
])
def test_parse_ptdump_rejects_bad_lines(text, needle):
    with pytest.raises(s2pt.S2ptError, match=needle):
        parse_ptdump(text)


# ---------------------------------------------------------------------------
# vmprint
# ---------------------------------------------------------------------------

def test_vmprint_lines(small4k):
    p = small4k
    l2 = table_pa(p, p.pgd + 8 * 1)
    l3 = table_pa(p, l2 + 8 * 2)
    assert vmprint(p).splitlines() == [
        "stage-2 page table: VTTBR_EL2 0x0001000080000000 (VMID 1, PGD at PA 0x80000000)",
        "40-bit IPA, 4K granule, levels 1..3, PGD = 2 concatenated level-1 tables",
        # L2 table: 2 blocks + 1 table entry + 1 = refcount 4
        f" ..[1] T IPA 0x0000000040000000 -> L2 table PA {l2:#x} (refcount 4)",
        " .. ..[0] B IPA 0x0000000040000000 2M block RWX normal PA 0x800000000",
        " .. ..[1] B IPA 0x0000000040200000 2M block RW- normal PA 0x800200000",
        f" .. ..[2] T IPA 0x0000000040400000 -> L3 table PA {l3:#x} (refcount 4)",
        " .. .. ..[0] P IPA 0x0000000040400000 4K page RW- normal PA 0x900000000",
        " .. .. ..[1..2] P IPA 0x0000000040401000 2x4K pages RWX normal PA 0x900001000+",
    ]


def test_vmprint_folds_only_contiguous_pas_and_marks_invalid_entries():
    p = s2pt.Stage2(ipa_bits=40, granule=4096)
    p.map(0x0, 12 * KiB, 0x7_0000_0000)
    p.map(0x3000, 4 * KiB, 0x1_0000_0000)           # same attrs, PA not contiguous
    p.set_owner(0x1_0000, 8 * KiB, 1)
    p.map(0x80_0000_0000, 4 * MiB, 0x4_0000_0000, prot="R")   # second PGD page
    lines = vmprint(p).splitlines()[2:]
    assert [ln.split(" IPA")[0] for ln in lines] == [
        " ..[0] T", " .. ..[0] T", " .. .. ..[0..2] P", " .. .. ..[3] P",
        " .. .. ..[16..17] F", " ..[512] T", " .. ..[0..1] B"]
    assert lines[4].endswith("IPA 0x0000000000010000 2x4K invalid: owner 1")
    assert lines[6].endswith("2x2M blocks R-- normal PA 0x400000000+")


def test_vmprint_max_entries_and_range(small4k):
    out = vmprint(small4k, max_entries=2).splitlines()
    assert len(out) == 2 + 2 + 1
    assert out[-1] == " ... 4 more lines (max_entries=2)"
    part = vmprint(small4k, ipa=0x4040_0000, size=2 * MiB).splitlines()[2:]
    assert [ln.split(" IPA")[0] for ln in part] == [
        " ..[1] T", " .. ..[2] T", " .. .. ..[0] P", " .. .. ..[1..2] P"]
    assert vmprint(s2pt.Stage2()).splitlines()[-1] == " (no entries: nothing is mapped)"


def test_vmprint_no_fold_and_bad_input(small4k):
    lines = vmprint(small4k, fold=False, max_entries=None).splitlines()
    assert " .. .. ..[2] P IPA 0x0000000040402000 4K page RWX normal PA 0x900002000" in lines
    with pytest.raises(s2pt.S2ptError, match="max_entries=-1"):
        vmprint(small4k, max_entries=-1)
    with pytest.raises(s2pt.S2ptError, match="granule"):
        vmprint(small4k, ipa=0x123, size=4096)


# ---------------------------------------------------------------------------
# draw
# ---------------------------------------------------------------------------

@pytest.fixture
def no_dot(monkeypatch, tmp_path):
    """A machine without Graphviz: empty PATH, `which` finds nothing."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)


def test_draw_labels_and_edges(small4k):
    p = small4k
    l2 = table_pa(p, p.pgd + 8 * 1)
    l3 = table_pa(p, l2 + 8 * 2)
    dr = draw(p)
    assert isinstance(dr, Drawing)
    src = dr.source
    for text in ["VTTBR_EL2 0x0001000080000000", "PGD page 0 of 2 (level 1)",
                 "entry 0: invalid", f"entry 1: table → L2 {l2:#x}",
                 "entries 2–511: invalid", f"L2 table  PA {l2:#x}",
                 "entry 0: 2M block RWX normal → PA 0x800000000",
                 f"entry 2: table → L3 {l3:#x}", "entries 3–511: invalid",
                 "entry 0: 4K page RW- normal → PA 0x900000000",
                 "entries 1–2: 2x4K pages RWX normal → PA 0x900001000+",
                 "refcount 4"]:
        assert text in src, text
    assert f"t80000000:e1:e -> t{l2:x}:w\n" in src
    assert f"t{l2:x}:e2:e -> t{l3:x}:w\n" in src
    assert "▶" not in src and "result" not in src


def test_draw_renders_without_dot(no_dot, small4k):
    svg = render_svg(draw(small4k, highlight=0x4040_1234).source)
    assert "<svg" in svg
    for text in ["entries 3–511: invalid", "PA 0x900001234", "VTTBR_EL2"]:
        assert text in svg, text


def test_draw_highlight_path_and_result(small4k):
    p = small4k
    l2 = table_pa(p, p.pgd + 8 * 1)
    l3 = table_pa(p, l2 + 8 * 2)
    path = translation_path(p, 0x4040_1234)
    assert [(ptep, lvl) for ptep, lvl, _, _ in path] == [
        (p.pgd + 8 * 1, 1), (l2 + 8 * 2, 2), (l3 + 8 * 1, 3)]
    src = draw(p, highlight=0x4040_1234).source
    assert "▶ entry 1: table" in src and "▶ entry 2: table" in src
    # The highlighted page gets a row of its own, out of the folded run.
    assert "▶ entry 1: 4K page RWX normal → PA 0x900001000" in src
    assert "entry 2: 4K page RWX normal → PA 0x900002000" in src
    assert "→ PA 0x900001234" in src and "level 3 page, RWX, normal" in src
    assert 'vttbr -> t80000000 [color="#c0392b"' in src
    assert f't{l3:x}:e1:e -> result [color=' in src


def test_draw_highlight_fault():
    p = s2pt.Stage2(ipa_bits=40, granule=4096)
    p.map(0x4000_0000, 2 * MiB, 0x8_0000_0000)
    src = draw(p, highlight=0x4060_0000).source
    assert "translation fault, level 2" in src
    assert "▶ entry 3: invalid" in src and "entries 4–511: invalid" in src
    src = draw(p, highlight=0x1234).source
    assert "translation fault, level 1" in src and "▶ entry 0: invalid" in src
    with pytest.raises(s2pt.S2ptError, match="highlight"):
        draw(p, highlight=1 << 40)


def test_draw_caps_tables_for_big_maps():
    p = s2pt.Stage2(ipa_bits=40, granule=4096)
    p.map(0, 1 * GiB, 0x10_0000_0000, force_pte=True)    # 512 level-3 tables
    src = draw(p, max_tables=3, max_children=8, highlight=0x3000_0000).source
    # The L2 table and L3 table 384 are on the path (always drawn); three
    # more L3 tables are drawn in IPA order; the other 508 fold.
    assert src.count("L3 table  PA") == 4
    assert "entries 3–383: 381 tables (not drawn)" in src
    assert "entries 385–511: 127 tables (not drawn)" in src
    assert "… 508 more level-3 tables" in src
    assert "▶ entry 0: 4K page RWX normal → PA 0x1030000000" in src
    assert "entries 1–511: 511x4K pages RWX normal → PA 0x1030001000+" in src
    assert "entries 0–511: 512x4K pages RWX normal → PA 0x1000000000+" in src


def test_draw_folds_empty_pgd_pages_16k():
    p = s2pt.Stage2(ipa_bits=40, granule=16384)        # 16 PGD pages
    p.map(0x4000_0000, 32 * MiB, 0x8_0000_0000)
    src = draw(p).source
    assert "PGD pages 1–15: all entries invalid" in src
    assert "entry 32: 32M block RWX normal → PA 0x800000000" in src
    assert "entries 33–2047: invalid" in src


def test_draw_64k_and_no_fold():
    p = s2pt.Stage2(ipa_bits=40, granule=65536)
    p.map(0x4000_0000, 3 * 64 * KiB, 0x30_0000_0000, prot="R")
    src = draw(p, fold=False).source
    assert "entry 1: 64K page R-- normal → PA 0x3000010000" in src
    assert "entries 3–8191: invalid" in src
    assert "entries 0–2: 3x64K pages" in draw(p).source


def test_draw_marks_entries_and_tables(small4k):
    p = small4k
    l2 = table_pa(p, p.pgd + 8 * 1)
    src = draw(p, marks={l2 + 8 * 1: "CPU1 walker"}, tables={l2: "locked by CPU0"}).source
    assert "entry 1: 2M block RW- normal → PA 0x800200000  ◀ CPU1 walker" in src
    assert "◀ locked by CPU0" in src


def _park(pgt, pgtable, level):
    """free_unlinked_table that only records the level: the subtree
    waits, unlinked, as it would for an RCU grace period."""
    pgt.mm.page_of(pgtable).private = level
    return
    yield


def test_draw_unlinked_and_freed_tables():
    p = s2pt.Stage2(ipa_bits=40, granule=4096, mm_ops=s2pt.pgtable.MmOps(_park))
    p.map(0x4000_0000, 8 * KiB, 0x8_0000_0000)
    l2 = table_pa(p, p.pgd + 8 * 1)
    old_l3 = table_pa(p, l2)

    p.map(0x4000_0000, 2 * MiB, 0x9_0000_0000)            # collapse into a block
    src = draw(p, tables={old_l3: "waiting for RCU"}).source
    assert "unlinked: not reachable from the PGD" in src
    assert "entries 0–1: 2x4K pages RWX normal → PA 0x800000000+" in src
    assert "◀ waiting for RCU" in src

    q = s2pt.Stage2(ipa_bits=40, granule=4096)
    q.map(0x4000_0000, 8 * KiB, 0x8_0000_0000)
    gone = table_pa(q, table_pa(q, q.pgd + 8 * 1))
    q.map(0x4000_0000, 2 * MiB, 0x9_0000_0000)            # freed after the grace period
    assert q.mm.page_of(gone).freed
    src = draw(q, tables={gone: "freed by collapse"}).source
    assert "freed (poisoned)" in src and "◀ freed by collapse" in src
    # A mark on an entry of the freed page shows in its stub; alert= marks
    # that entry with a cross and draws the page red.
    src = draw(q, marks={gone + 8: "stale walker"}, alert=gone + 8).source
    stub = next(line for line in src.splitlines() if line.startswith(f"\tt{gone:x} "))
    assert "✖ entry 1: ◀ stale walker" in stub and 'fillcolor="#f8c8c8"' in stub


def test_draw_alert_marks_the_entry_and_its_table(small4k):
    small4k.map(0x4000_0000, 8 * KiB, 0x8_0000_0000)
    l3 = table_pa(small4k, table_pa(small4k, small4k.pgd + 8 * 1))
    plain = draw(small4k).source
    assert "✖" not in plain and "#f8c8c8" not in plain
    src = draw(small4k, marks={l3 + 8: "here"}, alert=l3 + 8).source
    node = next(line for line in src.splitlines() if line.startswith(f"\tt{l3:x} "))
    assert "<e1> ✖ entry 1: 4K page" in node and "◀ here" in node
    assert 'fillcolor="#f8c8c8"' in node
    assert sum('fillcolor="#f8c8c8"' in line for line in src.splitlines()) == 1


def test_draw_bad_input(small4k):
    with pytest.raises(s2pt.S2ptError, match="max_tables"):
        draw(small4k, max_tables=-1)
    with pytest.raises(s2pt.S2ptError, match="marks key"):
        draw(small4k, marks={0x1003: "x"})
    with pytest.raises(s2pt.S2ptError, match="tables key"):
        draw(small4k, tables={0x1008: "x"})
    with pytest.raises(s2pt.S2ptError, match="alert=0x1003"):
        draw(small4k, alert=0x1003)


def test_stage2_methods_use_the_views(small4k):
    assert small4k.ptdump() == ptdump(small4k)
    assert small4k.vmprint(max_entries=3) == vmprint(small4k, max_entries=3)
    assert small4k.draw(highlight=0x4000_0000).source == draw(small4k, highlight=0x4000_0000).source


# ---------------------------------------------------------------------------
# Randomized: bulk == per-entry, and ptdump == an independent merge
# ---------------------------------------------------------------------------

PTDUMP_MASK = (1 << 0) | (1 << 1) | (1 << 6) | (1 << 7) | (1 << 10) | (1 << 54)


def entries_from_memory(p):
    """(addr, level, pte) of every non-table entry, by reading the tables
    directly (the concatenated PGD is one table of pgd_pages * ptrs entries)."""
    ps = p.geom.page_shift
    ptrs = p.page_size // 8
    out = []

    def rec(table, level, base, n):
        shift = (ps - 3) * (4 - level) + 3
        for i in range(n):
            pte = p.mm.read64(table + 8 * i)
            addr = base + (i << shift)
            if level < 3 and pte & 3 == 3:
                rec(pte & ADDR48 & ~(p.page_size - 1), level + 1, addr, ptrs)
            else:
                out.append((addr, level, pte))

    rec(p.pgd, p.geom.start_level, 0, p.geom.pgd_pages * ptrs)
    return out


def oracle_ptdump(p):
    def size(n):
        unit = "K"
        n >>= 10
        for u in "MGTPE":
            if n % 1024:
                break
            n //= 1024
            unit = u
        return f"{n}{unit}"

    def tail(prot):
        if not prot:
            return ""
        return ("  " if prot & 1 else " F") + (" R" if prot & 0x40 else "  ") \
            + (" W" if prot & 0x80 else "  ") + (" NX" if prot >> 54 & 1 else " x ") \
            + (" AF" if prot & 0x400 else "   ") + (" BLK" if prot & 3 == 1 else "    ")

    lines = [HEADER]
    cur = None
    for addr, level, pte in entries_from_memory(p):
        key = (level, pte & PTDUMP_MASK)
        if cur is None:
            cur = (addr, key)
        elif key != cur[1]:
            lines.append(line(cur[0], addr, size(addr - cur[0]), cur[1][0], tail(cur[1][1])))
            cur = (addr, key)
    return "\n".join(lines) + "\n"


GEOMS = [(4096, 36), (4096, 32), (16384, 36), (65536, 36)]


@st.composite
def programs(draw_):
    granule, ipa_bits = draw_(st.sampled_from(GEOMS))
    g = granule
    window = 2048 * g        # a few leaf tables' worth (1-2 level-2 entries)
    ops = []
    for _ in range(draw_(st.integers(1, 8))):
        kind = draw_(st.sampled_from(["map", "map", "map", "unmap", "wrprotect",
                                      "owner", "old", "lock"]))
        start = draw_(st.integers(0, window // g - 1)) * g
        npages = draw_(st.integers(1, 600))
        size = min(npages * g, window - start)
        pa_off = draw_(st.sampled_from([0, g, 7 * g]))
        prot = draw_(st.sampled_from(["RWX", "RW", "R"]))
        force = draw_(st.booleans())
        ops.append((kind, start, size, pa_off, prot, force))
    probe = draw_(st.integers(0, window // g - 1)) * g
    return granule, ipa_bits, ops, probe


def build(granule, ipa_bits, ops):
    p = s2pt.Stage2(ipa_bits=ipa_bits, granule=granule)
    base = 1 << 30 if ipa_bits > 32 else 0
    # Locks go last: an exclusive walk over a LOCKED entry is a kernel bug
    # (stage2_try_break_pte warns), and ptdump runs under the write lock.
    ops = sorted(ops, key=lambda op: op[0] == "lock")
    for kind, start, size, pa_off, prot, force in ops:
        ipa = base + start
        if kind == "map":
            p.map(ipa, size, 0x40_0000_0000 + start + pa_off, prot=prot, force_pte=force)
        elif kind == "unmap":
            p.unmap(ipa, size)
        elif kind == "wrprotect":
            p.wrprotect(ipa, size)
        elif kind == "owner":
            p.set_owner(ipa, size, 1)
        elif kind == "old":
            p.test_clear_young(ipa, size)
        elif kind == "lock":
            pte, level = p.get_leaf(ipa)
            if pte & 1:
                path = translation_path(p, ipa)
                p.mm.write64(path[-1][0], d.KVM_INVALID_PTE_LOCKED)
    return p


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_bulk_equals_per_entry_and_oracle(prog):
    granule, ipa_bits, ops, probe = prog
    p = build(granule, ipa_bits, ops)
    text = ptdump(p, bulk=True)
    assert text == ptdump(p, bulk=False)
    assert text == oracle_ptdump(p)
    full = ptdump(p, final=True, bulk=True)
    assert full == ptdump(p, final=True, bulk=False)
    recs = parse_ptdump(full)
    assert recs[0].start == 0 and recs[-1].end == 1 << p.ia_bits
    assert vmprint(p, max_entries=None, bulk=True) == vmprint(p, max_entries=None, bulk=False)
    assert vmprint(p, max_entries=None, fold=False, bulk=True) == \
        vmprint(p, max_entries=None, fold=False, bulk=False)
    # The highlighted entry (anywhere in a run) and a marked one get rows
    # of their own on both paths.
    hl = (1 << 30 if p.ia_bits > 32 else 0) + probe
    leaf_ptep = translation_path(p, hl)[-1][0]
    marks = {leaf_ptep + 8 if (leaf_ptep + 8) % p.page_size else leaf_ptep - 8: "mark"}
    assert draw(p, highlight=hl, marks=marks, bulk=True).source == \
        draw(p, highlight=hl, marks=marks, bulk=False).source
    assert draw(p, fold=False, max_tables=2, bulk=True).source == \
        draw(p, fold=False, max_tables=2, bulk=False).source


def test_draw_unlinked_subtree_with_a_labelled_child():
    """A 1G collapse unlinks an L2 table with an L3 table below it; both
    are labelled, the L3 is drawn inside the detached subtree, once."""
    p = s2pt.Stage2(ipa_bits=40, granule=4096, mm_ops=s2pt.pgtable.MmOps(_park))
    p.map(1 * GiB, 8 * KiB, 0x8_0000_0000)
    l2 = table_pa(p, p.pgd + 8 * 1)
    l3 = table_pa(p, l2)
    p.map(1 * GiB, 1 * GiB, 0x40_0000_0000)                # a level-1 block
    src = draw(p, tables={l2: "L2 waits", l3: "L3 waits"}).source
    assert src.count(f"\tt{l3:x} [") == 1 and "level unknown" not in src
    assert f"t{l2:x}:e0:e -> t{l3:x}:w\n" in src
    assert "entry 1: 1G block RWX normal → PA 0x4000000000" in src
