"""The kernel's stage-2 ptdump (arch/arm64/kvm/ptdump.c), byte for byte.

With ``CONFIG_PTDUMP_STAGE2_DEBUGFS``, every VM gets three read-only files in
``/sys/kernel/debug/kvm/<pid>-<fd>/``:

* ``stage2_page_tables`` -- the dump below, :func:`ptdump`;
* ``ipa_range``          -- ``"%2u\\n"`` of the IPA size, :func:`ipa_range`;
* ``stage2_levels``      -- ``"%1d\\n"`` of the number of levels, :func:`stage2_levels`.

**How the dump is made.**  ``kvm_ptdump_guest_show`` takes the MMU lock for
writing and walks ``[0, BIT(ia_bits))`` with the ordinary stage-2 walker and
one visitor, ``kvm_ptdump_visitor``, with flags ``LEAF`` only.  So the
visitor sees every *non-table* entry -- valid blocks and pages, and also
every empty or invalid entry -- at the level where the walk stopped, in IPA
order.  For each one it calls the generic arm64 ``note_page(addr, level, pte)``,
which keeps one "current run" and prints a line only when the run ends::

    ---[ Guest IPA ]---
    0x0000000000000000-0x0000000040000000           1G 1
    0x0000000040000000-0x0000000040200000           2M 2   R W x  AF BLK
    0x0000000040200000-0x0000000040201000           4K 3   R W NX AF    
    |  start (incl.)  | |   end (excl.)  |   size+unit L  attributes

A run ends when the *level* or the *masked attribute bits* change.  The
output address is masked out, so neighbouring entries merge even when their
PAs are not contiguous; empty entries merge into runs of their own per level
(and print no attributes at all).  The size is in KiB, divided by 1024 while
it divides exactly ("1536K", "18M", "1G").  The level column is the
architectural level, so every entry of a concatenated PGD prints the start
level.  Only the bits in the mask count (valid, type, S2AP R/W, AF, XN): a
LOCKED entry (BIT(10), mid break-before-make) prints as ``F ... AF``, but a
pKVM owner annotation for owner id 1 (bit 2) masks to zero and merges,
invisibly, with the empty entries around it.

**Which kernel.**  This follows mainline after commit 8673e5b22e1e ("KVM:
arm64: ptdump: Don't test PTE_VALID alongside other attributes", Sept 2025):
the attribute columns are ``F`` (invalid) ``R`` ``W`` ``NX``/``x `` (execute-
never / executable, as stage-1 ptdump prints PXN) ``AF`` ``BLK``.  The
v6.12 original printed ``X`` for execute-*never* (the bug that commit fixed)
and tested PTE_VALID in every column; the later FEAT_XNX version prints one
of ``px ux``/``PXNux``/``PXNUXN``/``px UXN``.  The modelled CPU has no
FEAT_XNX, and at 8673e5b22e1e ``KVM_PTE_LEAF_ATTR_HI_S2_XN`` is bit 54 only,
so that is the bit this dump masks.

**The last run is never printed.**  The generic ``ptdump_walk_pgd()`` ends
with ``note_page(st, 0, -1, 0)`` to flush the run in progress; KVM's show
function calls ``kvm_pgtable_walk`` directly and never does.  The end marker
``BIT(ia_bits)`` is never reached by a visited address either.  So the final
run -- usually the empty tail up to the top of the IPA space, but the last
*mapping* if it reaches the top -- is silently missing, and an empty table
dumps as the header alone.  :func:`ptdump` reproduces that by default;
``ptdump(pgt, final=True)`` adds the flush (see its docstring).

**Speed.**  The visitor is one generator step per entry: fine for the small
tables of the course, far too slow for a 64 GiB guest mapped with 4K pages
(16.7 M PTEs).  So the walker is also given :func:`kvm_ptdump_bulk`, which
takes a run of non-table entries of one table, finds with numpy the few
places where the masked attributes change, and calls the *same*
``note_page`` only there.  Calls it skips would not have printed anything,
so the output is identical (the tests check it on random tables).  The bulk
path is used only when nobody observes individual operations.

:func:`parse_ptdump` reads the text back into records, so tests and
notebooks can check structure ("every leaf of the slot is level 3 and
read-only") without string surgery.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .errors import S2ptError
from .validate import flag
from .ops import run
from .pgtable import LEAF, Walker, kvm_pgtable_walk

__all__ = ["ptdump", "parse_ptdump", "PtdumpRecord", "ipa_range", "stage2_levels",
           "debugfs_files", "STAGE2_PTE_BITS", "KERNEL_VERSION"]

#: The kernel this module prints like.
KERNEL_VERSION = "mainline after 8673e5b22e1e (ptdump exec-attribute fix), no FEAT_XNX"

KVM_PGTABLE_LAST_LEVEL = 3
KVM_PGTABLE_MAX_LEVELS = KVM_PGTABLE_LAST_LEVEL + 1

PTE_VALID = 1 << 0
PTE_TABLE_BIT = 1 << 1
KVM_PTE_LEAF_ATTR_LO_S2_S2AP_R = 1 << 6
KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W = 1 << 7
KVM_PTE_LEAF_ATTR_LO_S2_AF = 1 << 10
#: Bit 54 only at 8673e5b22e1e (the 2-bit field came with FEAT_XNX support).
KVM_PTE_LEAF_ATTR_HI_S2_XN = 1 << 54

#: static const struct ptdump_prot_bits stage2_pte_bits[]: (mask, val, set, clear).
#: dump_prot() prints " set" when (prot & mask) == val, else " clear".
STAGE2_PTE_BITS = (
    (PTE_VALID, PTE_VALID, " ", "F"),
    (KVM_PTE_LEAF_ATTR_LO_S2_S2AP_R, KVM_PTE_LEAF_ATTR_LO_S2_S2AP_R, "R", " "),
    (KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W, KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W, "W", " "),
    (KVM_PTE_LEAF_ATTR_HI_S2_XN, KVM_PTE_LEAF_ATTR_HI_S2_XN, "NX", "x "),
    (KVM_PTE_LEAF_ATTR_LO_S2_AF, KVM_PTE_LEAF_ATTR_LO_S2_AF, "AF", "  "),
    (PTE_TABLE_BIT | PTE_VALID, PTE_VALID, "BLK", "   "),
)

_UNITS = "KMGTPE"


# ---------------------------------------------------------------------------
# arch/arm64/mm/ptdump.c: struct ptdump_pg_state, note_page(), dump_prot()
# ---------------------------------------------------------------------------

class PtdumpPgLevel:
    """struct ptdump_pg_level: the name printed for a level, its prot bits and mask."""
    __slots__ = ("name", "bits", "mask")

    def __init__(self, name: str = "", bits=None, mask: int = 0):
        self.name, self.bits, self.mask = name, bits, mask


class PtdumpPgState:
    """struct ptdump_pg_state: the run in progress and the output ("seq_file").

    ``marker`` is the list of (start_address, name) address markers and
    ``marker_idx`` the current one (the kernel advances a pointer).
    """
    __slots__ = ("seq", "marker", "marker_idx", "level", "pg_level",
                 "start_address", "current_prot")

    def __init__(self, marker, pg_level):
        self.seq: list[str] = []
        self.marker = marker
        self.marker_idx = 0
        self.level = -1
        self.pg_level = pg_level
        self.start_address = 0
        self.current_prot = 0


def dump_prot(st: PtdumpPgState, bits) -> None:
    """dump_prot(): one " %s" per attribute entry whose string is not NULL."""
    prot = st.current_prot
    for mask, val, set_, clear in bits:
        s = set_ if (prot & mask) == val else clear
        if s is not None:
            st.seq.append(" " + s)


def note_page(st: PtdumpPgState, addr: int, level: int, val: int) -> None:
    """note_page() of arch/arm64/mm/ptdump.c (v6.12+, exported for KVM).

    Called once per visited entry.  Prints the finished run when the level
    or the masked attributes change, or when ``addr`` reaches the next
    address marker.  (The folded-level fixup under ``st->mm`` is skipped:
    KVM leaves ``mm`` NULL; ``check_wx`` is false, so note_prot_uxn/wx do
    nothing.)
    """
    pg_level = st.pg_level
    prot = val & pg_level[level].mask if level >= 0 else 0
    nxt = st.marker[st.marker_idx + 1][0] if st.marker_idx + 1 < len(st.marker) else None

    if st.level == -1:
        st.level = level
        st.current_prot = prot
        st.start_address = addr
        st.seq.append(f"---[ {st.marker[st.marker_idx][1]} ]---\n")
    elif prot != st.current_prot or level != st.level or (nxt is not None and addr >= nxt):
        st.seq.append(f"0x{st.start_address:016x}-0x{addr:016x}   ")
        delta = (addr - st.start_address) >> 10
        unit = 0
        while not delta & 1023 and unit + 1 < len(_UNITS):
            delta >>= 10
            unit += 1
        st.seq.append(f"{delta:9d}{_UNITS[unit]} {pg_level[st.level].name}")
        if st.current_prot and pg_level[st.level].bits:
            dump_prot(st, pg_level[st.level].bits)
        st.seq.append("\n")
        if nxt is not None and addr >= nxt:
            st.marker_idx += 1
            st.seq.append(f"---[ {st.marker[st.marker_idx][1]} ]---\n")
            nxt = (st.marker[st.marker_idx + 1][0]
                   if st.marker_idx + 1 < len(st.marker) else None)
        st.start_address = addr
        st.current_prot = prot
        st.level = level

    if nxt is not None and addr >= nxt:
        st.marker_idx += 1
        st.seq.append(f"---[ {st.marker[st.marker_idx][1]} ]---\n")


# ---------------------------------------------------------------------------
# arch/arm64/kvm/ptdump.c
# ---------------------------------------------------------------------------

def kvm_ptdump_build_levels(start_lvl: int) -> list[PtdumpPgLevel]:
    """kvm_ptdump_build_levels(): level names "%u" and one shared mask, the
    OR of every stage2_pte_bits mask, for levels start_lvl..3."""
    if start_lvl >= KVM_PGTABLE_LAST_LEVEL or start_lvl < 0:
        # WARN_ON_ONCE(start_lvl >= KVM_PGTABLE_LAST_LEVEL): the u32 also
        # rejects LPA2's level -1.  The open() then fails with -EINVAL.
        raise S2ptError(f"start_level={start_lvl}: kvm_ptdump_build_levels() accepts "
                        f"0..{KVM_PGTABLE_LAST_LEVEL - 1} only (-EINVAL)")
    mask = 0
    for m, _, _, _ in STAGE2_PTE_BITS:
        mask |= m
    levels = [PtdumpPgLevel() for _ in range(KVM_PGTABLE_MAX_LEVELS)]
    for i in range(start_lvl, KVM_PGTABLE_MAX_LEVELS):
        levels[i] = PtdumpPgLevel(f"{i}", STAGE2_PTE_BITS, mask)
    return levels


def kvm_ptdump_parser_create(pgt) -> PtdumpPgState:
    """kvm_ptdump_parser_create(): markers "Guest IPA" at 0 and a nameless
    end marker at BIT(ia_bits); level -1 means "nothing noted yet"."""
    levels = kvm_ptdump_build_levels(pgt.start_level)
    ipa_marker = [(0, "Guest IPA"), (1 << pgt.ia_bits, None)]
    return PtdumpPgState(ipa_marker, levels)


def kvm_ptdump_visitor(ctx, visit):
    """kvm_ptdump_visitor(): note_page(ctx->addr, ctx->level, ctx->old); 0."""
    note_page(ctx.arg, ctx.addr, ctx.level, ctx.old)
    return 0
    yield  # a generator that performs no operation of its own


def kvm_ptdump_bulk(data, pgt, table: int, level: int, idx: int) -> int:
    """Bulk twin of kvm_ptdump_visitor for a run of non-table entries.

    The visitor's note_page() only prints where the masked prot changes
    (addresses stay below the end marker), so calling it at the first entry
    and at each change point gives the same text.  Declines (returns 0) on a
    table entry, which the walker must descend, and on a freed page, so
    that the per-entry path reports the use-after-free.
    """
    page = pgt.mm.pages.get(table >> pgt.page_shift)
    if page is None or page.freed:
        return 0
    if level < KVM_PGTABLE_LAST_LEVEL and page.table.item(idx) & 3 == 3:
        return 0                  # a table entry: the walker descends into it
    shift = pgt.granule_shift[level]
    n = min(pgt.ptrs_per_pte - idx, ((data.end - 1) >> shift) - (data.addr >> shift) + 1)
    seg = page.table[idx:idx + n]
    if level < KVM_PGTABLE_LAST_LEVEL:
        tables = np.flatnonzero((seg & np.uint64(3)) == np.uint64(3))
        if len(tables):
            n = int(tables[0])
            if n == 0:
                return 0
            seg = seg[:n]
    st = data.walker.arg
    mask = st.pg_level[level].mask
    prot = seg & np.uint64(mask)
    gran = 1 << shift
    base = data.addr & ~(gran - 1)
    note_page(st, data.addr, level, int(seg[0]))
    for i in (np.flatnonzero(prot[1:] != prot[:-1]) + 1).tolist():
        note_page(st, base + i * gran, level, int(seg[i]))
    data.addr = base + n * gran
    return n


def _check_pgt(pgt, fn: str):
    if not hasattr(pgt, "machine") or not hasattr(pgt, "ia_bits"):
        raise S2ptError(f"{fn}: pgt={pgt!r} is not a stage-2 page table "
                        f"(expected an s2pt.Stage2)")
    if getattr(pgt, "destroyed", False):
        raise S2ptError(f"{fn}: the table was destroyed (kvm_pgtable_stage2_destroy)")


def ptdump(pgt, final: bool = False, bulk: bool | None = None) -> str:
    """The text of ``stage2_page_tables`` (kvm_ptdump_guest_show).

    Walks ``[0, BIT(ia_bits))`` with flags ``LEAF`` and the ptdump visitor,
    run by the sequential driver on ``pgt.machine``.  (The kernel holds
    ``write_lock(&kvm->mmu_lock)`` around the walk, so no entry is LOCKED
    mid break-before-make; the sequential model needs no lock.)

    ``final=False`` is the kernel: the last run is never printed.
    ``final=True`` adds the flush that the generic ``ptdump_walk_pgd()``
    does (``note_page(..., -1, 0)``), with the end address BIT(ia_bits), so
    the lines tile the whole IPA space.  The nameless end marker that this
    flush would then print as ``---[ (null) ]---`` is left out.

    ``bulk`` defaults to "when no observer is attached to the machine";
    ``bulk=False`` forces one visitor call per entry (the tests compare).
    """
    _check_pgt(pgt, "ptdump")
    final = flag("final", final)
    if bulk is not None:
        bulk = flag("bulk", bulk)
    st = kvm_ptdump_parser_create(pgt)
    walker = Walker(kvm_ptdump_visitor, st, LEAF, kvm_ptdump_bulk)
    if bulk is None:
        bulk = not pgt.machine.watched
    ret = run(kvm_pgtable_walk(pgt, 0, 1 << pgt.ia_bits, walker, bool(bulk)), pgt.machine)
    if ret:
        raise S2ptError(f"ptdump: kvm_pgtable_walk returned {ret}")
    if final and st.level != -1:
        # ptdump_walk_pgd(): "Flush out the last page".  The marker that the
        # kernel would print next has a NULL name; leave it out.
        end = 1 << pgt.ia_bits
        st.marker = st.marker[:1] + [(end + 1, None)]
        note_page(st, end, -1, 0)
    return "".join(st.seq)


def ipa_range(pgt) -> str:
    """kvm_pgtable_range_show(): the ``ipa_range`` file, ``"%2u\\n"`` of ia_bits."""
    _check_pgt(pgt, "ipa_range")
    return f"{pgt.ia_bits:2d}\n"


def stage2_levels(pgt) -> str:
    """kvm_pgtable_levels_show(): the ``stage2_levels`` file,
    ``"%1d\\n"`` of KVM_PGTABLE_MAX_LEVELS - start_level."""
    _check_pgt(pgt, "stage2_levels")
    return f"{KVM_PGTABLE_MAX_LEVELS - pgt.start_level:1d}\n"


def debugfs_files(pgt) -> dict[str, str]:
    """What ``ls /sys/kernel/debug/kvm/<pid>-<fd>/`` would show from
    kvm_s2_ptdump_create_debugfs(), with each file's contents."""
    return {"stage2_page_tables": ptdump(pgt), "ipa_range": ipa_range(pgt),
            "stage2_levels": stage2_levels(pgt)}


# ---------------------------------------------------------------------------
# Reading a dump back
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class PtdumpRecord:
    """One range line of a dump.

    ``attrs`` is the set of attribute words printed on the line, e.g.
    ``{"R", "W", "x", "AF", "BLK"}``: ``F`` invalid (nonzero), ``R``/``W``
    readable/writable, ``x`` executable and ``NX`` execute-never, ``AF``
    accessed, ``BLK`` a block.  An empty run has no attributes at all.
    (Dumps from other kernels parse too: v6.12 prints ``X`` for XN.)
    """

    start: int
    end: int
    size: int
    level: int
    attrs: frozenset

    @property
    def valid(self) -> bool:
        """A run of valid leaves (blocks or pages)."""
        return bool(self.attrs) and "F" not in self.attrs

    @property
    def empty(self) -> bool:
        """A run of all-zero entries (printed without attributes)."""
        return not self.attrs

    @property
    def block(self) -> bool:
        return "BLK" in self.attrs

    @property
    def prot(self) -> str:
        """"R", "RW", "RWX", ... for valid runs (this module's kernel format)."""
        if not self.valid:
            return ""
        return (("R" if "R" in self.attrs else "") + ("W" if "W" in self.attrs else "")
                + ("X" if "x" in self.attrs else ""))


_LINE = re.compile(r"0x([0-9a-f]{16})-0x([0-9a-f]{16})   ( *\d+)([KMGTPE]) (\d)(.*)")
_MARKER = re.compile(r"---\[ .* \]---")


def parse_ptdump(text: str) -> list[PtdumpRecord]:
    """Parse ptdump text (header and marker lines are skipped) into records.

    Raises S2ptError on a line that is not in the kernel format, or whose
    size column disagrees with its range.
    """
    if not isinstance(text, str):
        raise S2ptError(f"parse_ptdump: text={text!r} must be a str")
    mult = {u: 1 << (10 * (i + 1)) for i, u in enumerate(_UNITS)}
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or _MARKER.fullmatch(line):
            continue
        m = _LINE.fullmatch(line)
        if not m or len(m.group(3)) < 9:
            raise S2ptError(f"parse_ptdump: line {n} {line!r} is not "
                            f"'0x%016lx-0x%016lx   %9lu%c %s[ attrs]'")
        start, end = int(m.group(1), 16), int(m.group(2), 16)
        size = int(m.group(3)) * mult[m.group(4)]
        if end - start != size:
            raise S2ptError(f"parse_ptdump: line {n} {line!r}: size {m.group(3).strip()}"
                            f"{m.group(4)} is not end - start = {end - start:#x}")
        out.append(PtdumpRecord(start, end, size, int(m.group(5)),
                                frozenset(m.group(6).split())))
    return out
