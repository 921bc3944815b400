"""Stage-2 descriptors, bit for bit (arch/arm64/include/asm/kvm_pgtable.h).

Every entry of every table is one 64-bit word::

    63..59  ignored by the MMU
    58..55  SW[3:0]   software bits (KVM_PGTABLE_PROT_SW0..3; pKVM page state)
    54..53  XN[1:0]   execute-never: 00 exec, 01 EL0 only, 10 none, 11 EL1 only
    52      Contiguous hint (KVM never sets it)
    51      DBM       (KVM leaves hardware dirty-bit management off)
    47..12  output address: next table, or the block/page PA (4K; [47:PAGE_SHIFT])
    11      nG        ignored at stage 2 (Android's MMIO note, not modelled)
    10      AF        access flag; on an INVALID entry: KVM_INVALID_PTE_LOCKED
    9..8    SH        shareability (3 = inner shareable)
    7       S2AP[1]   write allowed
    6       S2AP[0]   read allowed
    5..2    MemAttr   memory type (normal, normal-NC, device); on an INVALID
                      entry, bits 9..2 hold a pKVM owner id
    1       type      1 = table (levels 0-2) or page (level 3); 0 = block
    0       valid

A table descriptor is just ``childpa | 0b11``.  A normal-memory RWX page at
level 3 is ``pa | 0x7ff`` (valid, page, MemAttr 0b1111, R, W, SH=3, AF); a
level-2 block clears bit 1 (``pa | 0x7fd``); dropping X sets XN=0b10 (bit 54).

The functions keep their kernel names (``kvm_pte_valid``,
``kvm_init_valid_leaf_pte``, ``stage2_set_prot_attr`` ...) so a grep works in
both trees.  :func:`decode` turns any word into a per-field breakdown.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from .errors import S2ptError
from .geometry import GRANULES, PA_BITS, size_str, kvm_granule_size
from .validate import choice, flag, integer

__all__ = ["decode", "Decoded", "prot_from_str", "prot_to_str"]


def BIT(n: int) -> int:
    return 1 << n


def GENMASK(h: int, l: int) -> int:
    return ((1 << (h - l + 1)) - 1) << l


KVM_PTE_VALID = BIT(0)
KVM_PTE_TYPE = BIT(1)
KVM_PTE_TYPE_BLOCK = 0
KVM_PTE_TYPE_PAGE = 1
KVM_PTE_TYPE_TABLE = 1

KVM_PTE_LEAF_ATTR_LO = GENMASK(11, 2)
KVM_PTE_LEAF_ATTR_LO_S2_MEMATTR = GENMASK(5, 2)
KVM_PTE_LEAF_ATTR_LO_S2_S2AP_R = BIT(6)
KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W = BIT(7)
KVM_PTE_LEAF_ATTR_LO_S2_SH = GENMASK(9, 8)
KVM_PTE_LEAF_ATTR_LO_S2_SH_IS = 3
KVM_PTE_LEAF_ATTR_LO_S2_AF = BIT(10)

KVM_PTE_LEAF_ATTR_HI = GENMASK(63, 50)
KVM_PTE_LEAF_ATTR_HI_SW = GENMASK(58, 55)
KVM_PTE_LEAF_ATTR_HI_S2_XN = GENMASK(54, 53)
KVM_PTE_LEAF_ATTR_S2_PERMS = (KVM_PTE_LEAF_ATTR_LO_S2_S2AP_R
                              | KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W
                              | KVM_PTE_LEAF_ATTR_HI_S2_XN)

KVM_INVALID_PTE_OWNER_MASK = GENMASK(9, 2)
KVM_MAX_OWNER_ID = 1               # upstream; guest ownership lives elsewhere
KVM_INVALID_PTE_LOCKED = BIT(10)

KVM_PTE_ADDR_MASK = GENMASK(PA_BITS - 1, 12)   # narrowed to PAGE_SHIFT per granule

# enum kvm_pgtable_prot (kvm_pgtable.h, FEAT_XNX era values)
KVM_PGTABLE_PROT_PX = BIT(0)
KVM_PGTABLE_PROT_UX = BIT(1)
KVM_PGTABLE_PROT_X = KVM_PGTABLE_PROT_PX | KVM_PGTABLE_PROT_UX
KVM_PGTABLE_PROT_W = BIT(2)
KVM_PGTABLE_PROT_R = BIT(3)
KVM_PGTABLE_PROT_DEVICE = BIT(4)
KVM_PGTABLE_PROT_NORMAL_NC = BIT(5)
KVM_PGTABLE_PROT_SW0 = BIT(55)
KVM_PGTABLE_PROT_SW1 = BIT(56)
KVM_PGTABLE_PROT_SW2 = BIT(57)
KVM_PGTABLE_PROT_SW3 = BIT(58)
KVM_PGTABLE_PROT_RW = KVM_PGTABLE_PROT_R | KVM_PGTABLE_PROT_W
KVM_PGTABLE_PROT_RWX = KVM_PGTABLE_PROT_RW | KVM_PGTABLE_PROT_X

# Stage-2 MemAttr encodings (arch/arm64/include/asm/memory.h).  Without
# FEAT_S2FWB the field combines with stage 1; with FWB it forces the result.
MT_S2_NORMAL = 0xF
MT_S2_NORMAL_NC = 0x5
MT_S2_DEVICE_nGnRE = 0x1
MT_S2_FWB_NORMAL = 0x6
MT_S2_FWB_NORMAL_NC = 0x5
MT_S2_FWB_DEVICE_nGnRE = 0x1

MEMATTRS = ("normal", "device", "normal-nc")
_MEMATTR_CODE = {
    (False, "normal"): MT_S2_NORMAL, (False, "normal-nc"): MT_S2_NORMAL_NC,
    (False, "device"): MT_S2_DEVICE_nGnRE,
    (True, "normal"): MT_S2_FWB_NORMAL, (True, "normal-nc"): MT_S2_FWB_NORMAL_NC,
    (True, "device"): MT_S2_FWB_DEVICE_nGnRE,
}

# pKVM component ids (enum pkvm_component_id, nvhe/mem_protect.h).  0 and 1
# are the same everywhere.  2 differs: mainline's enum is {HOST, HYP, FFA}
# and mainline never writes an owner above KVM_MAX_OWNER_ID = 1; the Android
# Common Kernel's enum is {HOST, HYP, GUEST, ...}, and the model uses that.
PKVM_ID_HOST = 0
PKVM_ID_HYP = 1
PKVM_ID_GUEST = 2       # ACK's PKVM_ID_GUEST (mainline: PKVM_ID_FFA); see s2pt.pkvm


def _owner_name(owner: int) -> str:
    """What an owner id in an invalid descriptor (bits 9:2) means."""
    if owner == PKVM_ID_HYP:
        return "PKVM_ID_HYP, the hypervisor (mainline and Android alike)"
    if owner == PKVM_ID_GUEST:
        return ("PKVM_ID_GUEST, a protected guest, in the Android Common Kernel; mainline's "
                "id 2 is PKVM_ID_FFA and mainline never writes it (KVM_MAX_OWNER_ID is 1)")
    return ("not an id mainline writes (KVM_MAX_OWNER_ID is 1), nor one of the Android "
            "Common Kernel's ids that the model knows")


# ---------------------------------------------------------------------------
# Predicates and constructors (hyp/pgtable.c)
# ---------------------------------------------------------------------------

def kvm_pte_valid(pte: int) -> bool:
    return bool(pte & KVM_PTE_VALID)


def kvm_pte_table(pte: int, level: int) -> bool:
    """True for a valid table descriptor; never at level 3."""
    if level == 3 or not pte & KVM_PTE_VALID:
        return False
    return bool(pte & KVM_PTE_TYPE)


def addr_mask(page_shift: int) -> int:
    """KVM_PTE_ADDR_MASK = GENMASK(47, PAGE_SHIFT)."""
    return GENMASK(PA_BITS - 1, page_shift)


def kvm_pte_to_phys(pte: int, page_shift: int = 12) -> int:
    return pte & addr_mask(page_shift)


def kvm_phys_to_pte(pa: int, page_shift: int = 12) -> int:
    return pa & addr_mask(page_shift)


def kvm_init_table_pte(child_pa: int, page_shift: int = 12) -> int:
    return kvm_phys_to_pte(child_pa, page_shift) | KVM_PTE_TYPE | KVM_PTE_VALID


def kvm_init_valid_leaf_pte(pa: int, attr: int, level: int, page_shift: int = 12) -> int:
    """TYPE_PAGE at the last level, TYPE_BLOCK above it."""
    pte = kvm_phys_to_pte(pa, page_shift)
    pte |= attr & (KVM_PTE_LEAF_ATTR_LO | KVM_PTE_LEAF_ATTR_HI)
    if level == 3:
        pte |= KVM_PTE_TYPE
    return pte | KVM_PTE_VALID


def kvm_init_invalid_leaf_owner(owner_id: int) -> int:
    return (owner_id << 2) & KVM_INVALID_PTE_OWNER_MASK


def stage2_pte_needs_update(old: int, new: int) -> bool:
    """False when only R/W/XN differ: the permission-fault path relaxes them."""
    if not (old & KVM_PTE_VALID) or not (new & KVM_PTE_VALID):
        return True
    return bool((old ^ new) & ~KVM_PTE_LEAF_ATTR_S2_PERMS)


def stage2_pte_is_counted(pte: int) -> bool:
    """Valid entries and owner annotations hold a reference on their table."""
    return pte != 0


def stage2_pte_is_locked(pte: int) -> bool:
    return not (pte & KVM_PTE_VALID) and bool(pte & KVM_INVALID_PTE_LOCKED)


def stage2_pte_executable(pte: int) -> bool:
    return bool(pte & KVM_PTE_VALID) and not (pte & KVM_PTE_LEAF_ATTR_HI_S2_XN)


def memattr_code(memattr: str, fwb: bool = False) -> int:
    """PAGE_S2_MEMATTR(attr, has_fwb), already shifted into bits [5:2]."""
    return _MEMATTR_CODE[(fwb, memattr)] << 2


def stage2_pte_cacheable(pte: int, fwb: bool = False) -> bool:
    return (bool(pte & KVM_PTE_VALID)
            and (pte & KVM_PTE_LEAF_ATTR_LO_S2_MEMATTR) == memattr_code("normal", fwb))


# ---------------------------------------------------------------------------
# prot: "RWX" strings <-> enum kvm_pgtable_prot <-> attribute bits
# ---------------------------------------------------------------------------

def prot_from_str(prot: str) -> int:
    """'RW' -> KVM_PGTABLE_PROT_R | KVM_PGTABLE_PROT_W.  Raises S2ptError."""
    if not isinstance(prot, str):
        raise S2ptError(f"prot={prot!r}: prot must be a string of the letters R, W and X")
    bits = 0
    seen = set()
    for ch in prot.upper():
        if ch not in "RWX" or ch in seen:
            raise S2ptError(
                f"prot={prot!r}: prot must be a string of the letters R, W and X, "
                f"each at most once (got {ch!r})")
        seen.add(ch)
        bits |= {"R": KVM_PGTABLE_PROT_R, "W": KVM_PGTABLE_PROT_W, "X": KVM_PGTABLE_PROT_X}[ch]
    return bits


def prot_to_str(prot: int) -> str:
    return "".join(c for c, b in (("R", KVM_PGTABLE_PROT_R), ("W", KVM_PGTABLE_PROT_W),
                                  ("X", KVM_PGTABLE_PROT_X)) if prot & b == b)


def stage2_set_xn_attr(prot: int) -> int:
    """XN field for ``prot``.  Without FEAT_XNX, PX must equal UX (else -EINVAL)."""
    px, ux = bool(prot & KVM_PGTABLE_PROT_PX), bool(prot & KVM_PGTABLE_PROT_UX)
    if px != ux:
        raise S2ptError("prot: PX != UX needs FEAT_XNX, which the modelled CPU lacks")
    xn = 0b00 if px else 0b10
    return xn << 53


@functools.lru_cache(maxsize=256)
def stage2_set_prot_attr(prot: int, memattr: str = "normal", fwb: bool = False) -> int:
    """The leaf attribute bits for ``prot`` (hyp/pgtable.c:stage2_set_prot_attr).

    Device and normal-NC memory cannot be executable (-EINVAL in the kernel).
    SH is always inner-shareable (LPA2, which reuses the field, is not modelled);
    AF is always set on a new leaf; SW bits are copied from ``prot``.
    """
    if memattr not in MEMATTRS:
        raise S2ptError(f"memattr={memattr!r}: must be one of 'normal', 'device', 'normal-nc'")
    if memattr != "normal" and prot & KVM_PGTABLE_PROT_X:
        raise S2ptError(
            f"prot includes X with memattr={memattr!r}: stage2_set_prot_attr() refuses "
            f"executable device or non-cacheable mappings (-EINVAL)")
    attr = memattr_code(memattr, fwb)
    attr |= stage2_set_xn_attr(prot)
    if prot & KVM_PGTABLE_PROT_R:
        attr |= KVM_PTE_LEAF_ATTR_LO_S2_S2AP_R
    if prot & KVM_PGTABLE_PROT_W:
        attr |= KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W
    attr |= KVM_PTE_LEAF_ATTR_LO_S2_SH_IS << 8
    attr |= KVM_PTE_LEAF_ATTR_LO_S2_AF
    attr |= prot & KVM_PTE_LEAF_ATTR_HI_SW
    return attr


def kvm_pgtable_stage2_pte_prot(pte: int) -> int:
    """Recover ``enum kvm_pgtable_prot`` from a leaf (used by the split walker)."""
    prot = pte & KVM_PTE_LEAF_ATTR_HI_SW
    if not pte & KVM_PTE_VALID:
        return prot
    if pte & KVM_PTE_LEAF_ATTR_LO_S2_S2AP_R:
        prot |= KVM_PGTABLE_PROT_R
    if pte & KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W:
        prot |= KVM_PGTABLE_PROT_W
    xn = (pte & KVM_PTE_LEAF_ATTR_HI_S2_XN) >> 53
    prot |= {0b00: KVM_PGTABLE_PROT_X, 0b01: KVM_PGTABLE_PROT_UX,
             0b11: KVM_PGTABLE_PROT_PX}.get(xn, 0)
    return prot


def memattr_name(pte: int, fwb: bool = False) -> str:
    code = (pte & KVM_PTE_LEAF_ATTR_LO_S2_MEMATTR) >> 2
    for (f, name), c in _MEMATTR_CODE.items():
        if f == fwb and c == code:
            return name
    return f"MemAttr {code:#06b}"


def prot_of(pte: int) -> str:
    """The permission string of a valid leaf ("RW", "RWX", "R", "" ...)."""
    return prot_to_str(kvm_pgtable_stage2_pte_prot(pte))


# ---------------------------------------------------------------------------
# decode(): the per-field breakdown used by notebook 01
# ---------------------------------------------------------------------------

@dataclass
class Field:
    name: str
    hi: int
    lo: int
    value: int
    meaning: str

    @property
    def bits(self) -> str:
        return f"{self.hi}" if self.hi == self.lo else f"{self.hi}:{self.lo}"


@dataclass
class Decoded:
    """What one descriptor says, field by field.

    ``kind`` is one of "invalid", "locked" (a break-before-make in progress),
    "owner" (a pKVM ownership annotation), "table", "block", "page" or
    "reserved" (valid with type 0 at level 3, or a block at a level the
    granule does not allow, e.g. level 0 with 4K pages: the MMU treats
    either as a translation fault).
    """

    value: int
    level: int
    granule: int
    kind: str
    fields: list = field(default_factory=list)
    pa: int | None = None
    size: int | None = None
    prot: str | None = None
    memattr: str | None = None
    owner: int | None = None

    def __str__(self) -> str:
        head = f"{self.value:#018x} at level {self.level} ({self.granule // 1024}K granule): {self.summary()}"
        rows = [head]
        for f in self.fields:
            rows.append(f"  [{f.bits:>5}] {f.name:<9} = {f.value:#x}  {f.meaning}")
        return "\n".join(rows)

    __repr__ = __str__

    def summary(self) -> str:
        if self.kind in ("block", "page"):
            return (f"{self.kind} of {size_str(self.size)} at PA {self.pa:#x}, "
                    f"{self.prot or '-'}, {self.memattr}")
        if self.kind == "table":
            return f"table at PA {self.pa:#x}"
        if self.kind == "owner":
            return f"invalid, owned by pKVM component {self.owner}"
        if self.kind == "locked":
            return "invalid, KVM_INVALID_PTE_LOCKED (break-before-make in progress)"
        if self.kind == "reserved":
            if self.level == 3:
                return "reserved encoding (valid with type 0 at level 3): translation fault"
            return (f"reserved encoding (a block at level {self.level}, which the "
                    f"{self.granule // 1024}K granule does not allow): translation fault")
        return "invalid"

    def _repr_html_(self) -> str:
        cells = "".join(
            f"<tr><td><code>{f.bits}</code></td><td>{f.name}</td>"
            f"<td><code>{f.value:#x}</code></td><td>{f.meaning}</td></tr>" for f in self.fields)
        return (f"<p><code>{self.value:#018x}</code> at level {self.level}: "
                f"<b>{self.summary()}</b></p><table><tr><th>bits</th><th>field</th>"
                f"<th>value</th><th>meaning</th></tr>{cells}</table>")


def _get(v: int, hi: int, lo: int) -> int:
    return (v >> lo) & ((1 << (hi - lo + 1)) - 1)


def decode(value: int, level: int, granule: int = 4096, fwb: bool = False) -> Decoded:
    """Break a stage-2 descriptor into its fields.

    >>> decode(0x40000000 | 0x7ff, level=3).summary()
    'page of 4K at PA 0x40000000, RWX, normal'
    """
    granule = choice("granule", granule, GRANULES, "the granule must be one of")
    level = integer("level", level, 0, 3, rule="stage-2 lookup levels run from 0 to 3")
    value = integer("value", value, 0, (1 << 64) - 1,
                    rule="a descriptor is an unsigned 64-bit integer")
    fwb = flag("fwb", fwb)
    ps = GRANULES[granule]
    d = Decoded(value=value, level=level, granule=granule, kind="invalid")
    add = d.fields.append
    valid = value & 1
    add(Field("valid", 0, 0, valid, "valid" if valid else "invalid: the MMU ignores bits 63:1"))
    if not valid:
        if stage2_pte_is_locked(value):
            d.kind = "locked"
            add(Field("LOCKED", 10, 10, 1, "KVM_INVALID_PTE_LOCKED: a break-before-make is in progress"))
        elif value & KVM_INVALID_PTE_OWNER_MASK:
            d.kind = "owner"
            d.owner = _get(value, 9, 2)
            add(Field("owner", 9, 2, d.owner, f"pKVM owner id {d.owner}: {_owner_name(d.owner)}; "
                                              f"counted entry"))
        elif value:
            add(Field("ignored", 63, 1, value >> 1, "software-defined bits of an invalid entry"))
        return d
    typ = (value >> 1) & 1
    pa = value & addr_mask(ps)
    if level < 3 and typ:
        d.kind, d.pa = "table", pa
        add(Field("type", 1, 1, 1, "table: points to the next-level table"))
        add(Field("address", PA_BITS - 1, ps, pa >> ps, f"next-level table at PA {pa:#x}"))
        return d
    if level == 3 and not typ:
        d.kind = "reserved"
        add(Field("type", 1, 1, 0, "reserved at level 3 (a page must have type 1)"))
        return d
    if level < 3 and level < (1 if ps == 12 else 2):
        d.kind = "reserved"
        add(Field("type", 1, 1, 0, f"block not allowed at level {level} with this granule"))
        return d
    d.kind = "page" if level == 3 else "block"
    d.size = kvm_granule_size(ps, level)
    d.pa = pa & ~(d.size - 1)
    d.prot = prot_of(value)
    d.memattr = memattr_name(value, fwb)
    add(Field("type", 1, 1, typ, "page (level 3)" if level == 3 else "block"))
    ma = _get(value, 5, 2)
    add(Field("MemAttr", 5, 2, ma, d.memattr + (" (FWB encoding)" if fwb else "")))
    add(Field("S2AP[0]", 6, 6, _get(value, 6, 6), "read allowed" if value & BIT(6) else "no read"))
    add(Field("S2AP[1]", 7, 7, _get(value, 7, 7), "write allowed" if value & BIT(7) else "no write"))
    sh = _get(value, 9, 8)
    add(Field("SH", 9, 8, sh, {0: "non-shareable", 2: "outer shareable",
                               3: "inner shareable"}.get(sh, "reserved")))
    af = _get(value, 10, 10)
    add(Field("AF", 10, 10, af, "accessed" if af else "not accessed: an access faults (no FEAT_HAFDBS)"))
    add(Field("address", PA_BITS - 1, ps, pa >> ps, f"output address {d.pa:#x} ({size_str(d.size)})"))
    xn = _get(value, 54, 53)
    add(Field("XN", 54, 53, xn, {0: "executable", 1: "executable at EL0 only",
                                 2: "execute-never", 3: "executable at EL1 only"}[xn]))
    sw = _get(value, 58, 55)
    add(Field("SW", 58, 55, sw, "software bits" + (f" (pKVM page state {sw & 3})" if sw else "")))
    return d
