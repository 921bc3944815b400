"""Stage-2 geometry: granules, levels, the start level and concatenated PGDs.

A stage-2 walk splits the IPA into one index per level, exactly like a
stage-1 walk.  With the 4K granule and a 40-bit IPA (KVM's default)::

    39..39 -- 1 bit: which of the 2 concatenated level-1 tables (PGD page)
    38..30 -- 9 bits of level-1 index  (1 GiB per entry)
    29..21 -- 9 bits of level-2 index  (2 MiB per entry)
    20..12 -- 9 bits of level-3 index  (4 KiB per entry)
    11..0  -- 12 bits of offset inside the 4 KiB page

Each table is one granule of 8-byte descriptors, so it resolves
``PAGE_SHIFT - 3`` bits.  Stage 2 may *concatenate* up to 16 tables at the
first level, which resolves up to 4 more bits without an extra level: that is
why the kernel computes the level count from ``ipa - 4`` and why a 40-bit IPA
with 4K pages needs only 3 levels and a 2-page PGD.

Every function here mirrors a kernel helper of the same name
(``kvm_pgtable.h``, ``stage2_pgtable.h``, ``pgtable-hwdef.h``, ``kvm_arm.h``,
``pgtable.c:kvm_get_vtcr``).  Levels run from 0 to 3; LPA2's level -1 and
52-bit addresses are not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import S2ptError
from .validate import choice, integer, is_int

__all__ = [
    "Geometry", "GRANULES", "PA_BITS", "KVM_PGTABLE_LAST_LEVEL",
    "kvm_granule_shift", "kvm_granule_size", "stage2_pgtable_levels",
    "kvm_pgd_pages", "kvm_get_vtcr", "kvm_get_vttbr", "size_str",
]

#: Granule size -> PAGE_SHIFT.
GRANULES = {4096: 12, 16384: 14, 65536: 16}

KVM_PGTABLE_FIRST_LEVEL = 0    # -1 with LPA2, not modelled
KVM_PGTABLE_LAST_LEVEL = 3

#: The modelled CPU's physical address size (ID_AA64MMFR0_EL1.PARange = 48 bits).
PA_BITS = 48

#: IPA sizes KVM accepts (kvm_ipa_limit ranges from 32 up; 52 needs LPA2).
IPA_MIN, IPA_MAX = 32, 48

# ---- VTCR_EL2 fields (arch/arm64/include/asm/kvm_arm.h) -------------------
VTCR_EL2_T0SZ_MASK = 0x3F          # [5:0]   T0SZ = 64 - IPA bits
VTCR_EL2_SL0_SHIFT = 6             # [7:6]   starting level
VTCR_EL2_SL0_MASK = 0x3 << 6
VTCR_EL2_IRGN0_WBWA = 1 << 8       # [9:8]   inner write-back write-allocate walks
VTCR_EL2_ORGN0_WBWA = 1 << 10      # [11:10] outer write-back write-allocate walks
VTCR_EL2_SH0_INNER = 3 << 12       # [13:12] inner shareable walks
VTCR_EL2_TG0_SHIFT = 14            # [15:14] granule: 0 = 4K, 1 = 64K, 2 = 16K
VTCR_EL2_PS_SHIFT = 16             # [18:16] physical address size
VTCR_EL2_VS_16BIT = 1 << 19        # [19]    16-bit VMIDs
VTCR_EL2_HA = 1 << 21              # [21]    hardware Access flag update
VTCR_EL2_RES1 = 1 << 31            # [31]    RES1
VTCR_EL2_COMMON_BITS = (VTCR_EL2_SH0_INNER | VTCR_EL2_ORGN0_WBWA
                        | VTCR_EL2_IRGN0_WBWA | VTCR_EL2_RES1)
VTCR_EL2_TG0 = {4096: 0, 65536: 1, 16384: 2}
#: VTCR_EL2_TGRAN_SL0_BASE: SL0 = BASE - (4 - levels).
VTCR_EL2_TGRAN_SL0_BASE = {4096: 2, 16384: 3, 65536: 3}
#: ID_AA64MMFR0_EL1.PARange encodings (also VTCR_EL2.PS).
PARANGE = {32: 0, 36: 1, 40: 2, 42: 3, 44: 4, 48: 5, 52: 6}

VTTBR_VMID_SHIFT = 48              # VTTBR_EL2[63:48] = VMID (16-bit VMIDs)
VTTBR_BADDR_MASK = ((1 << 48) - 1) & ~1   # [47:1]; bit 0 is CnP (not set here)


def kvm_granule_shift(page_shift: int, level: int) -> int:
    """ARM64_HW_PGTABLE_LEVEL_SHIFT(level) = (PAGE_SHIFT - 3) * (4 - level) + 3."""
    return (page_shift - 3) * (4 - level) + 3


def kvm_granule_size(page_shift: int, level: int) -> int:
    """Bytes mapped by one entry at ``level`` (BIT(kvm_granule_shift(level)))."""
    return 1 << kvm_granule_shift(page_shift, level)


def arm64_hw_pgtable_levels(va_bits: int, page_shift: int) -> int:
    """ARM64_HW_PGTABLE_LEVELS(va_bits) = (va_bits - 4) / (PAGE_SHIFT - 3)."""
    return (va_bits - 4) // (page_shift - 3)


def stage2_pgtable_levels(ipa_bits: int, page_shift: int) -> int:
    """stage2_pgtable_levels(ipa) = ARM64_HW_PGTABLE_LEVELS(ipa - 4).

    "Concatenation of up to 16 tables at stage2 entry level ... resolve 4
    additional bits" (stage2_pgtable.h), hence the ``- 4``.
    """
    return arm64_hw_pgtable_levels(ipa_bits - 4, page_shift)


def kvm_pgd_pages(ipa_bits: int, start_level: int, page_shift: int) -> int:
    """kvm_pgd_pages(): kvm_pgd_page_idx(pgt, -1ULL) + 1.

    The index of the last PGD page is the top IPA bits above what one table
    at ``start_level`` covers, i.e. above kvm_granule_shift(start_level - 1).
    """
    shift = kvm_granule_shift(page_shift, start_level - 1)
    return (((1 << ipa_bits) - 1) >> shift) + 1


def kvm_get_vtcr(ipa_bits: int, granule: int, pa_bits: int = PA_BITS) -> int:
    """kvm_get_vtcr(mmfr0, mmfr1, phys_shift) for the modelled CPU.

    Sets VTCR_EL2_FLAGS (inner-shareable write-back walks, TG0, RES1),
    PS from PARange, T0SZ, SL0 from the level count (raised to at least 2
    "to prevent splitting host PMD huge pages at stage2"), HA (set
    unconditionally with CONFIG_ARM64_HW_AFDBM) and VS for 16-bit VMIDs.

    Simplification: the modelled CPU does *not* implement FEAT_HAFDBS, so the
    HA bit KVM writes is RES0/ignored and the MMU raises Access flag faults
    instead of setting AF itself (this is what kvm's handle_access_fault()
    exists for).
    """
    page_shift = GRANULES[granule]
    vtcr = VTCR_EL2_COMMON_BITS | (VTCR_EL2_TG0[granule] << VTCR_EL2_TG0_SHIFT)
    vtcr |= PARANGE[pa_bits] << VTCR_EL2_PS_SHIFT
    vtcr |= (64 - ipa_bits) & VTCR_EL2_T0SZ_MASK
    lvls = max(stage2_pgtable_levels(ipa_bits, page_shift), 2)
    sl0 = VTCR_EL2_TGRAN_SL0_BASE[granule] - (4 - lvls)   # VTCR_EL2_LVLS_TO_SL0
    vtcr |= sl0 << VTCR_EL2_SL0_SHIFT
    vtcr |= VTCR_EL2_HA
    vtcr |= VTCR_EL2_VS_16BIT
    return vtcr


def kvm_get_vttbr(pgd_phys: int, vmid: int) -> int:
    """kvm_get_vttbr(): BADDR = the PGD's physical address, VMID in [63:48].

    CnP (bit 0) is left clear: the modelled CPU has no FEAT_TTCNP.
    """
    return (pgd_phys & VTTBR_BADDR_MASK) | ((vmid & 0xFFFF) << VTTBR_VMID_SHIFT)


def size_str(n: int) -> str:
    """Human size as the kernel's ptdump prints it: 4K, 2M, 1G, 512G, 16M."""
    for unit, shift in (("P", 50), ("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n >= (1 << shift) and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n}B"


@dataclass(frozen=True)
class Geometry:
    """The shape of one stage-2 table: what VTCR_EL2 tells the MMU.

    >>> g = Geometry(ipa_bits=40, granule=4096)
    >>> (g.levels, g.start_level, g.pgd_pages)
    (3, 1, 2)
    """

    ipa_bits: int = 40
    granule: int = 4096
    pa_bits: int = PA_BITS
    page_shift: int = field(init=False)
    levels: int = field(init=False)
    start_level: int = field(init=False)
    pgd_pages: int = field(init=False)
    ptrs_per_pte: int = field(init=False)
    vtcr: int = field(init=False)

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "granule", choice("granule", self.granule, GRANULES,
                                     "the granule in bytes (TG0 encodes only 4K, 16K "
                                     "and 64K): one of"))
        set_(self, "ipa_bits", integer(
            "ipa_bits", self.ipa_bits, IPA_MIN, IPA_MAX,
            rule=f"the IPA size must be an integer from {IPA_MIN} to {IPA_MAX} "
            f"(52-bit IPAs need LPA2, which is not modelled)"))
        if not is_int(self.pa_bits) or self.pa_bits not in PARANGE or self.pa_bits > PA_BITS:
            raise S2ptError(f"pa_bits={self.pa_bits!r}: must be a PARange size up to {PA_BITS}")
        set_(self, "pa_bits", int(self.pa_bits))
        ps = GRANULES[self.granule]
        lvls = max(stage2_pgtable_levels(self.ipa_bits, ps), 2)
        start = 4 - lvls
        pgd_pages = kvm_pgd_pages(self.ipa_bits, start, ps)
        if pgd_pages > 16:
            # The architecture allows at most 16 concatenated tables
            # (kvm_arm_setup_stage2 refuses the rest); unreachable with
            # the "- 4" rule above, but kept as the architectural check.
            raise S2ptError(
                f"ipa_bits={self.ipa_bits} with granule={self.granule} needs {pgd_pages} "
                f"concatenated PGD pages; the architecture allows at most 16")
        set_(self, "page_shift", ps)
        set_(self, "levels", lvls)
        set_(self, "start_level", start)
        set_(self, "pgd_pages", pgd_pages)
        set_(self, "ptrs_per_pte", 1 << (ps - 3))
        set_(self, "vtcr", kvm_get_vtcr(self.ipa_bits, self.granule, self.pa_bits))

    # -- the kvm_pgtable.h helpers, bound to this geometry --------------------
    def granule_shift(self, level: int) -> int:
        return kvm_granule_shift(self.page_shift, level)

    def granule_size(self, level: int) -> int:
        return 1 << kvm_granule_shift(self.page_shift, level)

    @property
    def min_block_level(self) -> int:
        """KVM_PGTABLE_MIN_BLOCK_LEVEL: 1 for 4K pages, 2 otherwise."""
        return 1 if self.page_shift == 12 else 2

    def supports_block(self, level: int) -> bool:
        """kvm_level_supports_block_mapping(): level >= KVM_PGTABLE_MIN_BLOCK_LEVEL."""
        return level >= self.min_block_level

    def block_sizes(self) -> list[int]:
        """kvm_supported_block_sizes(), as a list from largest to smallest."""
        return [self.granule_size(lvl) for lvl in range(self.min_block_level, 4)]

    def idx(self, addr: int, level: int) -> int:
        """kvm_pgtable_idx(): the index of ``addr`` in a table at ``level``."""
        return (addr >> self.granule_shift(level)) & (self.ptrs_per_pte - 1)

    def pgd_page_idx(self, addr: int) -> int:
        """kvm_pgd_page_idx(): which concatenated PGD page holds ``addr``."""
        return (addr & ((1 << self.ipa_bits) - 1)) >> self.granule_shift(self.start_level - 1)

    @property
    def ipa_limit(self) -> int:
        return 1 << self.ipa_bits

    @property
    def sl0(self) -> int:
        return (self.vtcr & VTCR_EL2_SL0_MASK) >> VTCR_EL2_SL0_SHIFT

    def describe_vtcr(self) -> dict:
        """VTCR_EL2 split into named fields, for the translation notebook."""
        v = self.vtcr
        return {
            "T0SZ": v & 0x3F, "SL0": (v >> 6) & 3, "IRGN0": (v >> 8) & 3,
            "ORGN0": (v >> 10) & 3, "SH0": (v >> 12) & 3, "TG0": (v >> 14) & 3,
            "PS": (v >> 16) & 7, "VS": (v >> 19) & 1, "HA": (v >> 21) & 1,
            "HD": (v >> 22) & 1, "RES1": (v >> 31) & 1,
        }

    def index_bits(self) -> list[tuple[str, int, int]]:
        """The xv6-style split of an IPA: [(name, hi_bit, lo_bit), ...]."""
        out = []
        top = self.ipa_bits - 1
        lo_pgd = self.granule_shift(self.start_level - 1)
        if self.pgd_pages > 1:
            out.append(("PGD page", top, lo_pgd))
            top = lo_pgd - 1
        for lvl in range(self.start_level, 4):
            lo = self.granule_shift(lvl)
            out.append((f"level {lvl} index", top, lo))
            top = lo - 1
        out.append(("page offset", top, 0))
        return out
