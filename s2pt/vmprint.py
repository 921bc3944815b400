"""``vmprint``: the table tree as indented text, in the spirit of xv6.

xv6's ``vmprint()`` (the MIT 6.1810 page-table lab) prints one line per
valid PTE, indented by depth, so that you can *see* a page table::

    page table 0x0000000087f6b000
     ..0: pte 0x0000000021fd9c01 pa 0x0000000087f67000
     .. ..0: pte 0x0000000021fd9801 pa 0x0000000087f66000
     .. .. ..0: pte 0x0000000021fda01b pa 0x0000000087f68000

:func:`vmprint` does the same for a stage-2 table.  Two header lines give
the registers and the shape; then each non-empty entry gets a line::

    stage-2 page table: VTTBR_EL2 0x0001000080000000 (VMID 1, PGD at PA 0x80000000)
    40-bit IPA, 4K granule, levels 1..3, PGD = 2 concatenated level-1 tables
     ..[1] T IPA 0x0000000040000000 -> L2 table PA 0x80002000 (refcount 3)
     .. ..[0] B IPA 0x0000000040000000 2M block RWX normal PA 0x800000000
     .. ..[2] T IPA 0x0000000040400000 -> L3 table PA 0x80003000 (refcount 4)
     .. .. ..[0] P IPA 0x0000000040400000 4K page RW- normal PA 0x900000000
     .. .. ..[1..2] P IPA 0x0000000040401000 2x4K pages RWX normal PA 0x900001000+

* The indentation is one `` ..`` per level below the root; ``[i]`` is the
  entry's index in its table (for the concatenated PGD, in the PGD as a
  whole: entry 512 is the first entry of the second PGD page).
* The mark says what the entry is: ``T`` table, ``B`` block, ``P`` page,
  ``F`` a non-empty *invalid* entry (a LOCKED entry mid break-before-make, or
  a pKVM owner annotation).  Empty entries are not printed.
* Leaves show size, permissions (``R``/``W``/``X`` or ``-``), memory type,
  ``!AF`` when the access flag is clear, ``SW=`` when software bits are set,
  and the output address.  Table lines show the child's PA and its
  ``page_count`` (1 + the entries it holds).
* **Runs fold.**  Consecutive leaves with the same attributes whose output
  addresses follow each other (``PA 0x...+``) print as one line
  ``[i..j] ... NxSIZE pages``; identical invalid entries fold too.  A 64 GiB
  guest mapped with 4K pages is 32768 leaf tables: one ``T`` line and one
  folded ``P`` line each.
* ``max_entries`` caps the number of entry lines (default 100); the last
  line then says how many were left out.

The format is stable: graders and tests may compare lines.  It is one
visitor (``TABLE_PRE | LEAF``) on the one walker, with a bulk function that
folds a whole table's run of leaves with numpy when nobody is watching the
individual loads.
"""

from __future__ import annotations

import numpy as np

from . import descriptor as d
from .errors import S2ptError
from .validate import flag, optional_integer
from .geometry import kvm_get_vttbr, size_str
from .ops import page_count, run
from .pgtable import LEAF, TABLE_PRE, Walker, kvm_pgtable_walk

__all__ = ["vmprint"]

#: Entry kinds, as the views classify them.
EMPTY, LEAF_KIND, INVALID, TABLE = 0, 1, 2, 3

_M64 = (1 << 64) - 1


# ---------------------------------------------------------------------------
# Shared with s2pt.draw: classifying and folding entries
# ---------------------------------------------------------------------------

def entry_kind(pte: int, level: int) -> int:
    """EMPTY, LEAF_KIND (valid block/page), INVALID (nonzero) or TABLE."""
    if pte == 0:
        return EMPTY
    if not pte & d.KVM_PTE_VALID:
        return INVALID
    if level < 3 and pte & d.KVM_PTE_TYPE:
        return TABLE
    return LEAF_KIND


def similar(kind: int, prev: int, pte: int, gran: int, addr_mask: int) -> bool:
    """May ``pte`` extend a run whose last entry is ``prev`` (same kind)?

    Empty entries always; invalid entries when identical; leaves when every
    non-address bit is equal and the output address advances by one granule.
    """
    if kind == EMPTY:
        return True
    if kind == INVALID:
        return pte == prev
    if kind == LEAF_KIND:
        return ((pte & ~addr_mask) == (prev & ~addr_mask)
                and (pte & addr_mask) - (prev & addr_mask) == gran)
    return False


def leaf_segment(data, pgt, table: int, level: int, idx: int):
    """The entries from ``idx`` that a walk will visit next in this table,
    up to (not including) the first table entry: (page, seg) or None when
    there is nothing to hand to a bulk function (a table entry first, or a
    freed page, which the per-entry path must report)."""
    page = pgt.mm.pages.get(table >> pgt.page_shift)
    if page is None or page.freed:
        return None
    if level < 3 and page.table.item(idx) & 3 == 3:
        return None               # a table entry: the walker descends
    shift = pgt.granule_shift[level]
    n = min(pgt.ptrs_per_pte - idx, ((data.end - 1) >> shift) - (data.addr >> shift) + 1)
    seg = page.table[idx:idx + n]
    if level < 3:
        tables = np.flatnonzero((seg & np.uint64(3)) == np.uint64(3))
        if len(tables):
            if tables[0] == 0:
                return None
            seg = seg[:int(tables[0])]
    return page, seg


def split_runs(seg: np.ndarray, gran: int, addr_mask: int, fold: bool = True):
    """Split non-table entries into runs of :func:`similar` entries.

    Returns (kinds, starts): the kind of every entry and the offsets where a
    run starts (always including 0).  With ``fold=False`` only empty entries
    fold.
    """
    n = len(seg)
    first = int(seg[0])
    # Fast paths for the common shapes: all empty, or one run of leaves
    # whose output addresses advance by one granule (no carry out of the
    # address field, so every attribute bit is equal).
    if first == 0 and not seg.any():
        return np.zeros(n, dtype=np.int64), [0]
    if (fold and first & 1 and (int(seg[-1]) & ~addr_mask) == (first & ~addr_mask)
            and np.array_equal(seg, np.uint64(first)
                               + np.arange(n, dtype=np.uint64) * np.uint64(gran))):
        return np.full(n, LEAF_KIND, dtype=np.int64), [0]
    kinds = np.where(seg == 0, EMPTY, np.where(seg & np.uint64(1), LEAF_KIND, INVALID))
    if n < 2:
        return kinds, [0]
    prev, cur = seg[:-1], seg[1:]
    kc = kinds[1:]
    am = np.uint64(addr_mask)
    nam = np.uint64(~addr_mask & _M64)
    leafsim = ((cur & nam) == (prev & nam)) & ((cur & am) - (prev & am) == np.uint64(gran))
    cont = (kinds[:-1] == kc) & ((kc == EMPTY) | ((kc == INVALID) & (cur == prev))
                                 | ((kc == LEAF_KIND) & leafsim))
    if not fold:
        cont &= kc == EMPTY
    return kinds, [0] + (np.flatnonzero(~cont) + 1).tolist()


def leaf_text(pte: int, level: int, count: int, pgt) -> str:
    """"4K page RW- normal", "4x2M blocks RWX normal !AF", "invalid: owner 1"."""
    gran = pgt.granule_size[level]
    if not pte & d.KVM_PTE_VALID:
        many = f"{count}x{size_str(gran)} " if count > 1 else ""
        if d.stage2_pte_is_locked(pte):
            return f"{many}invalid: LOCKED"
        if pte & ~d.KVM_INVALID_PTE_OWNER_MASK == 0:
            return f"{many}invalid: owner {(pte & d.KVM_INVALID_PTE_OWNER_MASK) >> 2}"
        return f"{many}invalid {pte:#x}"
    what = "page" if level == 3 else "block"
    head = (f"{count}x{size_str(gran)} {what}s" if count > 1
            else f"{size_str(gran)} {what}")
    prot = d.kvm_pgtable_stage2_pte_prot(pte)
    perms = "".join(c if prot & b == b else "-" for c, b in (
        ("R", d.KVM_PGTABLE_PROT_R), ("W", d.KVM_PGTABLE_PROT_W), ("X", d.KVM_PGTABLE_PROT_X)))
    extra = ""
    if level == 3 and not pte & d.KVM_PTE_TYPE:
        extra += " reserved"
    if not pte & d.KVM_PTE_LEAF_ATTR_LO_S2_AF:
        extra += " !AF"
    sw = (pte & d.KVM_PTE_LEAF_ATTR_HI_SW) >> 55
    if sw:
        extra += f" SW={sw:#x}"
    return f"{head} {perms} {d.memattr_name(pte, pgt.fwb)}{extra}"


def leaf_pa(pte: int, level: int, pgt) -> int:
    return pte & pgt.addr_mask & ~(pgt.granule_size[level] - 1)


def table_index(pgt, ptep: int, level: int) -> tuple[int, int]:
    """(group, index) of an entry: the root level counts across the
    concatenated PGD pages (group = the PGD), other levels within one page."""
    if level == pgt.start_level:
        return pgt.pgd, (ptep - pgt.pgd) >> 3
    return ptep & ~(pgt.page_size - 1), (ptep & (pgt.page_size - 1)) >> 3


def check_range(pgt, ipa, size, fn: str) -> tuple[int, int]:
    """Default to the whole IPA space; else the same rules as Stage2.map."""
    limit = 1 << pgt.ia_bits
    if ipa is None and size is None:
        return 0, limit
    if ipa is None:
        ipa = 0
    if size is None:
        size = pgt.page_size
    gran = pgt.page_size
    for name, v in (("ipa", ipa), ("size", size)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise S2ptError(f"{fn}: {name}={v!r} must be a non-negative integer")
    ipa, size = int(ipa), int(size)
    if size == 0:
        raise S2ptError(f"{fn}: size=0: the range must not be empty")
    if ipa % gran or size % gran:
        raise S2ptError(f"{fn}: ipa={ipa:#x}, size={size:#x}: both must be multiples of "
                        f"the {gran // 1024}K granule")
    if ipa + size > limit:
        raise S2ptError(f"{fn}: [{ipa:#x}, {ipa + size:#x}) goes beyond the "
                        f"{pgt.ia_bits}-bit IPA space (limit {limit:#x})")
    return ipa, size


def check_pgt(pgt, fn: str):
    if not hasattr(pgt, "machine") or not hasattr(pgt, "ia_bits"):
        raise S2ptError(f"{fn}: pgt={pgt!r} is not a stage-2 page table "
                        f"(expected an s2pt.Stage2)")
    if getattr(pgt, "destroyed", False):
        raise S2ptError(f"{fn}: the table was destroyed (kvm_pgtable_stage2_destroy)")


def header_lines(pgt) -> list[str]:
    vmid = pgt.mmu.vmid
    g = pgt.geom
    root = (f"PGD = {g.pgd_pages} concatenated level-{g.start_level} tables"
            if g.pgd_pages > 1 else f"PGD = 1 level-{g.start_level} table")
    return [f"stage-2 page table: VTTBR_EL2 {kvm_get_vttbr(pgt.pgd, vmid):#018x} "
            f"(VMID {vmid}, PGD at PA {pgt.pgd:#x})",
            f"{pgt.ia_bits}-bit IPA, {pgt.page_size // 1024}K granule, "
            f"levels {g.start_level}..3, {root}"]


# ---------------------------------------------------------------------------
# vmprint
# ---------------------------------------------------------------------------

class _Run:
    __slots__ = ("group", "level", "first", "last", "kind", "first_pte", "last_pte",
                 "count", "ipa")

    def __init__(self, group, level, idx, ipa, kind, first_pte, last_pte, count):
        self.group, self.level, self.first, self.last = group, level, idx, idx + count - 1
        self.kind, self.first_pte, self.last_pte = kind, first_pte, last_pte
        self.count, self.ipa = count, ipa


class VmprintState:
    """The lines so far, the run being folded, and the line budget."""

    def __init__(self, pgt, max_entries, fold):
        self.pgt = pgt
        self.max_entries = max_entries
        self.fold = fold
        self.lines = header_lines(pgt)
        self.entries = 0          # entry lines produced (printed or not)
        self.pend: _Run | None = None

    def emit(self, line_fn):
        if self.max_entries is None or self.entries < self.max_entries:
            self.lines.append(line_fn())
        self.entries += 1

    def indent(self, level: int) -> str:
        return " .." * (level - self.pgt.start_level + 1)

    def feed(self, group, level, idx, ipa, kind, first_pte, last_pte, count):
        """Add ``count`` similar entries; extend the pending run if they continue it."""
        p = self.pend
        if (p is not None and self.fold and p.group == group and p.level == level
                and p.last + 1 == idx and p.kind == kind
                and similar(kind, p.last_pte, first_pte, self.pgt.granule_size[level],
                            self.pgt.addr_mask)):
            p.last += count
            p.count += count
            p.last_pte = last_pte
            return
        self.flush()
        self.pend = _Run(group, level, idx, ipa, kind, first_pte, last_pte, count)

    def flush(self):
        p, self.pend = self.pend, None
        if p is None or p.kind == EMPTY:
            return
        self.emit(lambda: self._leaf_line(p))

    def _leaf_line(self, p: _Run) -> str:
        pgt = self.pgt
        idx = f"[{p.first}]" if p.count == 1 else f"[{p.first}..{p.last}]"
        if p.kind == INVALID:
            return (f"{self.indent(p.level)}{idx} F IPA 0x{p.ipa:016x} "
                    f"{leaf_text(p.first_pte, p.level, p.count, pgt)}")
        mark = "P" if p.level == 3 else "B"
        plus = "+" if p.count > 1 else ""
        return (f"{self.indent(p.level)}{idx} {mark} IPA 0x{p.ipa:016x} "
                f"{leaf_text(p.first_pte, p.level, p.count, pgt)} "
                f"PA {leaf_pa(p.first_pte, p.level, pgt):#x}{plus}")

    def table(self, level, idx, ipa, child, refcount):
        self.flush()
        ind = self.indent(level)
        self.emit(lambda: f"{ind}[{idx}] T IPA 0x{ipa:016x} -> L{level + 1} table "
                          f"PA {child:#x} (refcount {refcount})")


def vmprint_walker(ctx, visit):
    """TABLE_PRE: print the table line; LEAF: fold the entry into the run."""
    st: VmprintState = ctx.arg
    pgt = ctx.pgt
    group, idx = table_index(pgt, ctx.ptep, ctx.level)
    if visit == TABLE_PRE:
        child = ctx.old & pgt.addr_mask
        rc = yield page_count(child)
        st.table(ctx.level, idx, ctx.addr, child, rc)
        return 0
    kind = entry_kind(ctx.old, ctx.level)
    st.feed(group, ctx.level, idx, ctx.addr, kind, ctx.old, ctx.old, 1)
    return 0


def vmprint_bulk(data, pgt, table: int, level: int, idx: int) -> int:
    """Bulk twin of vmprint_walker's LEAF case: fold a table's run of
    non-table entries with numpy, feeding the same state machine."""
    r = leaf_segment(data, pgt, table, level, idx)
    if r is None:
        return 0
    _, seg = r
    st: VmprintState = data.walker.arg
    n = len(seg)
    gran = pgt.granule_size[level]
    base = data.addr & ~(gran - 1)
    group, gidx = table_index(pgt, table + 8 * idx, level)
    kinds, starts = split_runs(seg, gran, pgt.addr_mask, st.fold)
    ends = starts[1:] + [n]
    for s, e in zip(starts, ends):
        ipa = data.addr if s == 0 else base + s * gran
        st.feed(group, level, gidx + s, ipa, int(kinds[s]), int(seg[s]), int(seg[e - 1]), e - s)
    data.addr = base + n * gran
    return n


def vmprint(pgt, max_entries: int | None = 100, *, ipa: int | None = None,
            size: int | None = None, fold: bool = True, bulk: bool | None = None) -> str:
    """The table as an indented tree, one line per non-empty entry (or run).

    ``max_entries`` caps the entry lines (None: no cap); ``ipa``/``size``
    restrict the walk to part of the IPA space (default: all of it);
    ``fold=False`` prints every leaf on its own line.  ``bulk`` defaults to
    "when no observer is attached"; the output is the same either way.
    """
    check_pgt(pgt, "vmprint")
    max_entries = optional_integer("max_entries", max_entries, 0)
    start, length = check_range(pgt, ipa, size, "vmprint")
    fold = flag("fold", fold)
    if bulk is not None:
        bulk = flag("bulk", bulk)
    st = VmprintState(pgt, max_entries, fold)
    walker = Walker(vmprint_walker, st, TABLE_PRE | LEAF, vmprint_bulk)
    if bulk is None:
        bulk = not pgt.machine.watched
    ret = run(kvm_pgtable_walk(pgt, start, length, walker, bool(bulk)), pgt.machine)
    if ret:
        raise S2ptError(f"vmprint: kvm_pgtable_walk returned {ret}")
    st.flush()
    if st.entries == 0:
        st.lines.append(" (no entries: nothing is mapped)")
    elif max_entries is not None and st.entries > max_entries:
        st.lines.append(f" ... {st.entries - max_entries} more lines "
                        f"(max_entries={max_entries})")
    return "\n".join(st.lines) + "\n"
