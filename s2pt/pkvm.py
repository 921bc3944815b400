"""pKVM's host stage 2: an identity map with big blocks, page donation, and
Android's coalescing (arch/arm64/kvm/hyp/nvhe/mem_protect.c).

Under pKVM the host kernel runs behind a stage-2 table that the hypervisor
(EL2) owns.  It maps every physical address to itself (``KVM_PGTABLE_S2_IDMAP``:
IPA == PA, IPA size == PA size, VMID 0) and uses blocks as big as the memory
layout allows.  Mainline fills it *lazily*, by the host's own stage-2
faults; android15-6.6 maps every memory region at init
(``prepopulate_host_stage2``) and faults only the rest (MMIO) lazily.
When a page is given away -- to the hypervisor or to a protected guest --
its host entry becomes an **invalid entry carrying the owner's id**; a
covering block is broken (break-before-make + TLBI) into a table.  Quentin
Perret's point in the teardown thread: when the guest dies the host takes
its pages back, and those tables should *coalesce* into blocks again.
Mainline never did that; Android does (``stage2_coalesce_walk_table_post``).

::

    >>> import s2pt
    >>> GiB = 1 << 30
    >>> host = s2pt.pkvm.Host(memory=[(0x8000_0000, 2 * GiB)], mmio=[(0x1000_0000, 0x100_0000)])
    >>> host.access(0x8000_1234).level            # memory was mapped at init: a 1G block
    1
    >>> host.donate(0x8000_3000, 1, to="guest")   # the block is broken
    >>> host.owner(0x8000_3000), hex(host.pgt.get_leaf(0x8000_3000)[0])
    ('guest', '0x8')
    >>> host.reclaim(0x8000_3000, 1)              # teardown: the tables coalesce into blocks
    >>> host.stats["tables_live"]
    0

What is modelled, and from where
--------------------------------
Fault path (mainline LN-MP, the same in ACK): ``handle_host_mem_abort`` ->
``host_stage2_idmap``: ``find_mem_range`` (memory regions sorted; a
non-memory address gets the *gap* between memory regions as its range, which
is what the kernel calls MMIO), ``host_stage2_adjust_range`` (-EAGAIN if a
valid leaf is already there, -EPERM for a non-zero invalid entry, else the
largest block-aligned range inside the region, with the kernel's
level-increment quirk kept), then ``host_stage2_idmap_locked`` =
``host_stage2_try(kvm_pgtable_stage2_map, ..., &host_s2_pool)``, which on
-ENOMEM recycles table pages and retries once: mainline's
``host_stage2_unmap_dev_all`` unmaps every non-memory range;
android15-6.6's ``host_stage2_unmap_unmoveable_regs`` runs
``kvm_pgtable_stage2_reclaim_leaves`` over them (its unmap refuses an
identity map).

Prot: memory ``PKVM_HOST_MEM_PROT`` = RWX, MMIO ``PKVM_HOST_MMIO_PROT`` = RW.
Neither carries ``KVM_PGTABLE_PROT_DEVICE``: the host's MMIO is mapped
*Normal* at stage 2 (and XN); the device type comes from the host's own
stage-1 attributes, which win when the two stages combine.  So the default
leaves are exactly ACK's ``KVM_HOST_S2_DEFAULT_MEM_PTE`` (0x7fc) and
``KVM_HOST_S2_DEFAULT_MMIO_PTE`` (0x0040_0000_0000_07fc) plus the address.

A host access to a page owned by the guest or the hypervisor hits the owner
annotation: ``host_stage2_adjust_range`` returns -EPERM.  Mainline then
``BUG_ON(ret && ret != -EAGAIN)`` -- a hypervisor panic.  **This model follows
Android**: ``host_inject_abort()`` gives the host a synchronous abort, which
``Host.access`` raises as :class:`s2pt.Fault` (kind ``"translation"``) and
counts in ``stats["host_aborts"]``.

Ownership.  ``kvm_pgtable_stage2_set_owner`` maps with ``force_pte`` and
``annotation``: a covering block gets -E2BIG, is replaced by a table
(break-before-make, TLBI), and the level-3 entry becomes
``FIELD_PREP(KVM_INVALID_PTE_OWNER_MASK, owner_id)``.  Owner ids:
``PKVM_ID_HOST`` = 0 (the zero PTE: "faults back to the default idmap"),
``PKVM_ID_HYP`` = 1 (pte 0x4), ``PKVM_ID_GUEST`` = 2 (pte 0x8).  Upstream
``KVM_MAX_OWNER_ID`` is 1, so mainline's host stage 2 cannot annotate a
guest owner this way (kvm_pgtable.h [LN-H]); **the model annotates guest
pages with owner id 2 and raises** ``pgt.max_owner_id`` **to 255**, as the
Android Common Kernel does (``KVM_MAX_OWNER_ID = FIELD_MAX(GENMASK(9, 2))``,
``PKVM_ID_GUEST = 2``; newer mainline adds a ``PKVM_ID_GUEST`` donation
annotation of its own in a different encoding).

Page state is kept where the post-2024 kernel keeps it, in the hypervisor's
``hyp_vmemmap`` (``hyp_page.host_state``): ``owned`` by default,
``nopage`` once donated, ``shared-owned`` while shared with the hypervisor
(``share_hyp``/``unshare_hyp``; the hypervisor side is ``shared-borrowed``).
Donation requires ``owned``.  MMIO cannot be donated or shared:
``host_stage2_set_owner_locked`` and ``check_range_allowed_memory`` return
-EPERM, which here is an :class:`s2pt.S2ptError`.

Coalescing, as android15-6.6 ships it (arch/arm64/kvm/hyp/pgtable.c and
nvhe/mem_protect.c of that tree; ``Host(coalesce=False)`` is mainline,
which never coalesces).  The table counts only *non-default* entries
(``host_stage2_pte_is_counted``: tables, non-zero invalid entries, leaves
whose attributes differ from the default ones for their PA), so a table
whose ``page_count`` is 1 holds only default identity mappings.

* The host's map walk (``kvm_pgtable_stage2_map``, which host faults and
  reclaims use) is ``TABLE_PRE | LEAF | TABLE_POST``.  Its ``TABLE_POST``
  visitor, ``stage2_coalesce_walk_table_post``, replaces such a table, at a
  level that can hold a block, by a block with the walk's attributes:
  ``stage2_try_break_pte`` (LOCKED; for a table,
  ``kvm_tlb_flush_vmid_range`` over the block, a range TLBI on the modelled
  CPU), ``stage2_make_pte``, then ``put_page`` of the table itself -- not
  ``mm_ops->free_unlinked_table``: the table holds nothing counted.  The
  annotation walk (``kvm_pgtable_stage2_annotate``) has no ``TABLE_POST``.
* Reclaim (``host_stage2_set_owner_locked(..., PKVM_ID_HOST)``) maps the
  pages back with the default prot (``host_stage2_idmap_locked``), so the
  tables it empties of annotations coalesce on the way back up.
* ``Host.coalesce`` is ``kvm_pgtable_stage2_reclaim_leaves``, the
  ``TABLE_POST``-only walk that discards such tables (``kvm_clear_pte``,
  ``kvm_tlb_flush_vmid_range``, put both pages); the host faults blocks back.
* ``prefault=True`` is ``KVM_PGTABLE_S2_PREFAULT_BLOCK``, which 6.6 always
  sets on the host: a broken block is refilled with copies of itself
  (``stage2_map_prefault_block``), every entry when the block is above
  level 2.  The model's default is off, so that a broken block's other
  pages fault back lazily; a coalesced table may then still have empty
  entries, which the block maps too (6.6's CONFIG_PKVM_STRICT_CHECKS check,
  ``debug_check_table_before_coalescing``, is not modelled).
* Coalescing is off until init is over (``kvm_protected_mode_initialized``:
  "We don't want to coalesce during pkvm initialisation").

Before 6.2, Android's coalescing ran on the set-owner walk of the old walker
instead (its ``TABLE_POST`` zapped the table with ``kvm_clear_pte`` and a
flush of the whole VMID, as android14-6.1 has it), and the host refaulted the
block.  What 6.6's code does that the model shows (tests/test_pkvm.py):
the coalesced block takes the attributes of whatever walk passes by, so a
table of default memory and MMIO mappings, or of memory and holes, becomes
one block over all of it; an MMIO fault next to memory can leave that
memory mapped execute-never.

Isolation (the security property): after every step, no host translation --
the tables, and every host CPU's TLB and walk-cache entries
(:class:`s2pt.tlb.VcpuTlb`) -- may reach a page owned by the guest or the
hypervisor.  A violation is reported through ``pgt.mm.violation("isolation",
...)``, which raises :class:`s2pt.KernelBug` in sequential use.  ``host.bugs``
switches on broken variants (:data:`s2pt.bugs.BUGS` of target ``host``;
``"donate-no-tlbi"``: set_owner skips the
break-before-make TLBI) so that the checker can be seen catching them.
"""

from __future__ import annotations

import bisect
import errno

import numpy as np

from . import bugs as _bugs
from . import descriptor as d
from . import pgtable as pt
from .errors import Fault, KernelBug, S2ptError
from .ops import (WRITE_ONCE, cpu_relax, hw_walk_start, kernel_path, page_count, put_page,
                  read_lock, read_unlock, run, tlbi, write_lock, write_unlock)
from . import validate as v
from .geometry import PARANGE, PA_BITS, Geometry
from .snapshot import Stateful
from .stage2 import Stage2, Translation
from .tlb import VcpuTlb, hw_translate

__all__ = ["Host", "PKVM_HOST_MEM_PROT", "PKVM_HOST_MMIO_PROT", "KVM_HOST_S2_DEFAULT_MASK",
           "KVM_HOST_S2_DEFAULT_MEM_PTE", "KVM_HOST_S2_DEFAULT_MMIO_PTE",
           "host_stage2_pte_is_counted", "stage2_coalesce_walk_table_post",
           "kvm_pgtable_stage2_reclaim_leaves", "page_owner", "pkvm_host_donate_guest",
           "pkvm_host_reclaim_page", "host_accesses", "HOST_MMU_RWLOCK", "HOST_MMU_RWLOCK_SIDES",
           "pkvm_host_donate_guest_rw"]

EAGAIN, ENOMEM, EPERM, EINVAL = errno.EAGAIN, errno.ENOMEM, errno.EPERM, errno.EINVAL

PKVM_HOST_MEM_PROT = d.KVM_PGTABLE_PROT_R | d.KVM_PGTABLE_PROT_W | d.KVM_PGTABLE_PROT_X
PKVM_HOST_MMIO_PROT = d.KVM_PGTABLE_PROT_R | d.KVM_PGTABLE_PROT_W
#: The leaf attributes of the two default mappings (stage2_set_prot_attr).
HOST_MEM_ATTR = d.stage2_set_prot_attr(PKVM_HOST_MEM_PROT, "normal")
HOST_MMIO_ATTR = d.stage2_set_prot_attr(PKVM_HOST_MMIO_PROT, "normal")

#: ACK kvm_pgtable.h: which bits make a host leaf "default" (the OA is excluded).
KVM_HOST_S2_DEFAULT_MASK = d.KVM_PTE_LEAF_ATTR_HI | d.KVM_PTE_LEAF_ATTR_LO
#: MEMATTR(NORMAL) | S2AP_R | S2AP_W | AF | SH_IS
KVM_HOST_S2_DEFAULT_MEM_PTE = 0x7FC
#: ... | FIELD_PREP(S2_XN, XN_XN)
KVM_HOST_S2_DEFAULT_MMIO_PTE = KVM_HOST_S2_DEFAULT_MEM_PTE | (2 << 53)

#: The owner ids the host stage 2 can record (enum pkvm_component_id, ACK).
OWNER_IDS = {"host": d.PKVM_ID_HOST, "hyp": d.PKVM_ID_HYP, "guest": d.PKVM_ID_GUEST}
OWNER_NAMES = {v: k for k, v in OWNER_IDS.items()}
#: ACK: KVM_MAX_OWNER_ID = FIELD_MAX(KVM_INVALID_PTE_OWNER_MASK)
ACK_KVM_MAX_OWNER_ID = 255

assert HOST_MEM_ATTR & KVM_HOST_S2_DEFAULT_MASK == KVM_HOST_S2_DEFAULT_MEM_PTE
assert HOST_MMIO_ATTR & KVM_HOST_S2_DEFAULT_MASK == KVM_HOST_S2_DEFAULT_MMIO_PTE

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def _size(n: int) -> str:
    for unit, s in (("G", GiB), ("M", MiB), ("K", KiB)):
        if n >= s and n % s == 0:
            return f"{n // s}{unit}"
    return f"{n:#x}"


# ---------------------------------------------------------------------------
# Android's counting rule and the coalescing visitor (on the one walker)
# ---------------------------------------------------------------------------

def host_stage2_pte_is_counted(host: "Host", pte: int, level: int) -> bool:
    """ACK host_stage2_pte_is_counted(): does this entry hold a reference on
    its table?  Invalid: only if non-zero (an owner annotation).  Tables:
    always.  Leaves: only if they differ from the default identity mapping
    of their kind (memory or MMIO)."""
    if not pte & d.KVM_PTE_VALID:
        return pte != 0
    if d.kvm_pte_table(pte, level):
        return True
    default = (KVM_HOST_S2_DEFAULT_MEM_PTE if host.addr_is_memory(pte & host.pgt.addr_mask)
               else KVM_HOST_S2_DEFAULT_MMIO_PTE)
    return (pte & KVM_HOST_S2_DEFAULT_MASK) != default


class HostMapData(pt.Stage2MapData):
    """struct stage2_map_data for the host's walks, plus the model's counter
    of coalesced tables and its bug switch."""
    __slots__ = ("coalesced", "skip_coalesce_tlbi")

    def __init__(self, *a, skip_coalesce_tlbi=False, **kw):
        super().__init__(*a, **kw)
        self.coalesced = 0
        self.skip_coalesce_tlbi = skip_coalesce_tlbi


def stage2_coalesce_walk_table_post(ctx: pt.VisitCtx, data: HostMapData):
    """android15-6.6: on the way back up a host *map* walk, replace a table
    that holds only default identity mappings by a block.  "If we installed
    a non-refcounted valid mapping, and the table has no other raised
    references, then we can immediately collapse to a block mapping."

    Only on a map walk (phys valid: an annotation walk has no TABLE_POST),
    only where the level can hold a block, and only when ``page_count`` of
    the child is 1 under the host's counting rule.  The block is made with
    the walk's own attributes at the table's range.  "Breaking must succeed,
    as this is not a shared walk": stage2_try_break_pte (LOCKED, then for a
    table kvm_tlb_flush_vmid_range over the block, then put_page on the
    entry's table), stage2_make_pte (a default leaf holds no reference), and
    "Finally, free the unlinked table": put_page(childp) directly, not
    mm_ops->free_unlinked_table -- the child holds nothing counted.

    6.6 also prefaults every block it splits (KVM_PGTABLE_S2_PREFAULT_BLOCK),
    so the tables it coalesces are full of default leaves, which a
    CONFIG_NVHE_EL2_DEBUG build checks (debug_check_table_before_coalescing,
    not modelled).  Without ``Host(prefault=True)`` the model's broken blocks
    fault back lazily, so a coalesced table may still have empty entries; the
    block then maps them too, which for memory is what a later fault would
    have done.
    """
    pgt = ctx.pgt
    if data.annotation or not pgt.supports_block(ctx.level):   # !kvm_phys_is_valid(phys)
        return 0
    childp = ctx.old & pgt.addr_mask
    if (yield page_count(childp)) != 1:
        return 0
    size = pgt.granule_size[ctx.level]
    new = d.kvm_init_valid_leaf_pte(ctx.addr & ~(size - 1), data.attr, ctx.level,
                                    pgt.page_shift)
    if data.skip_coalesce_tlbi:
        ctx.flags |= pt.SKIP_BBM_TLBI               # the bug coalesce-no-tlbi
    if not (yield from pt.stage2_try_break_pte(ctx)):
        pgt.warn("stage2_coalesce_walk_table_post: breaking must succeed, as this is not a "
                 "shared walk")
        return 0
    yield from pt.stage2_make_pte(ctx, new)
    yield put_page(childp)                        # frees it: the host is exclusive
    data.coalesced += 1
    return 0


def host_map_walker(ctx: pt.VisitCtx, visit: int):
    """android15-6.6's stage2_map_walker: the map visitors of s2pt.pgtable,
    and stage2_coalesce_walk_table_post for TABLE_POST."""
    if visit == pt.TABLE_POST:
        return (yield from stage2_coalesce_walk_table_post(ctx, ctx.arg))
    return (yield from pt.stage2_map_walker(ctx, visit))


def stage2_reclaim_leaf_walker(ctx: pt.VisitCtx, visit: int):
    """android15-6.6: "If this table's refcount is not raised, we can safely
    discard it.  Any mappings that it contains can be re-created on
    demand."  Unlink it (kvm_clear_pte), flush the block's range
    (kvm_tlb_flush_vmid_range), drop the entry's reference and free it."""
    pgt = ctx.pgt
    data = ctx.arg
    childp = ctx.old & pgt.addr_mask
    if not pgt.supports_block(ctx.level) or (yield page_count(childp)) != 1:
        return 0
    size = pgt.granule_size[ctx.level]
    yield WRITE_ONCE(ctx.ptep, 0)                 # kvm_clear_pte
    if not data.skip_coalesce_tlbi:
        yield from pt.kvm_tlb_flush_vmid_range(pgt, ctx.addr & ~(size - 1), size)
    yield put_page(ctx.ptep)
    yield put_page(childp)                        # frees it: the host is exclusive
    data.coalesced += 1
    return 0


def kvm_pgtable_stage2_reclaim_leaves(pgt, addr: int, size: int,
                                      data: HostMapData | None = None):
    """ACK: a TABLE_POST-only walk that discards every table in the range
    holding only default entries ("Eagerly coalesce host page tables"); the
    host faults blocks back.  Also the -ENOMEM path's recycling in 6.6
    (host_stage2_unmap_unmoveable_regs)."""
    if data is None:
        data = HostMapData()
    walker = pt.Walker(stage2_reclaim_leaf_walker, data, pt.TABLE_POST)
    return (yield from pt.kvm_pgtable_walk(pgt, addr, size, walker))


# ---------------------------------------------------------------------------
# The EL2 paths as generators: one copy, run by Host (sequentially) and by the
# interleaving explorer's scenarios (one shared access per step).  The lock
# (host_lock_component: hyp_spin_lock(&host_mmu.lock)) is the caller's: the
# sequential Host has one CPU and takes none; a scenario passes its scheme's.
# ---------------------------------------------------------------------------

def host_stage2_adjust_range(host: "Host", addr: int, rng):
    """host_stage2_adjust_range(): (0, range to map), (-EAGAIN, None) when a
    valid leaf is already there, (-EPERM, None) for an owner annotation."""
    pgt = host.pgt
    out = pt.LeafWalkData()
    yield from pt.kvm_pgtable_get_leaf(pgt, addr, out)
    pte, level = out.pte, out.level
    if d.kvm_pte_valid(pte):
        return -EAGAIN, None
    if pte:
        return -EPERM, None
    while True:
        g = pgt.granule_size[level]
        cur = (addr & ~(g - 1), (addr & ~(g - 1)) + g)
        level += 1
        # the kernel tests the *incremented* level; kept as it is
        if not (level <= 3 and not (pgt.supports_block(level)
                                     and rng[0] <= cur[0] and cur[1] <= rng[1])):
            break
    return 0, cur


def _non_memory(host: "Host"):
    """The gaps between memory regions, and above the last one."""
    addr = 0
    for b, s in host.memory:
        if b > addr:
            yield addr, b - addr
        addr = b + s
    limit = 1 << host.pgt.ia_bits
    if addr < limit:
        yield addr, limit - addr


def host_stage2_unmap_dev_all(host: "Host"):
    """Mainline: unmap every non-memory range: their table pages go back to
    host_s2_pool."""
    host._stats["unmap_dev_all"] += 1
    for addr, size in _non_memory(host):
        ret = yield from pt.kvm_pgtable_stage2_unmap(host.pgt, addr, size)
        if ret:
            return ret
    return 0


def host_stage2_unmap_unmoveable_regs(host: "Host", data: HostMapData | None = None):
    """android15-6.6: "Unmap all unmoveable regions to recycle the pages":
    kvm_pgtable_stage2_reclaim_leaves (host_stage2_unmap_reg_locked) over
    everything outside the memory regions -- table pages freed from the
    fault path itself.  (6.6's kvm_pgtable_stage2_unmap refuses an identity
    map: "stage2_unmap_walker's TLBI logic is unsafe for the pKVM host
    stage-2 table".)"""
    host._stats["unmap_unmoveable_regs"] += 1
    for addr, size in _non_memory(host):
        ret = yield from kvm_pgtable_stage2_reclaim_leaves(host.pgt, addr, size, data)
        if ret:
            return ret
    return 0


def host_stage2_try(host: "Host", walk):
    """The host_stage2_try() macro: run ``walk()`` (a generator function);
    on -ENOMEM recycle the MMIO tables and retry once (mainline:
    host_stage2_unmap_dev_all; android15-6.6, a coalescing host:
    host_stage2_unmap_unmoveable_regs)."""
    ret = yield from walk()
    if ret == -ENOMEM:
        host._stats["enomem_retries"] += 1
        if host.coalesce_on_reclaim:
            data = HostMapData()
            ret = yield from host_stage2_unmap_unmoveable_regs(host, data)
            host._stats["coalesced_tables"] += data.coalesced
        else:
            ret = yield from host_stage2_unmap_dev_all(host)
        if not ret:
            ret = yield from walk()
    return ret


def host_stage2_idmap_locked(host: "Host", addr: int, size: int, attr: int, mc=None,
                             data: HostMapData | None = None, flags: int = 0):
    """host_stage2_idmap_locked(): host_stage2_try(kvm_pgtable_stage2_map)
    from ``mc`` (default host_s2_pool).  On a coalescing host
    (android15-6.6) the map walk also visits TABLE_POST, where
    stage2_coalesce_walk_table_post turns tables of default mappings back
    into blocks."""
    mc = host.pool if mc is None else mc
    if data is None:
        data = HostMapData(skip_coalesce_tlbi="coalesce-no-tlbi" in host.bugs)
    cb = (host_map_walker if host.coalesce_on_reclaim and host.protected_mode_initialized
          else None)
    ret = yield from host_stage2_try(host, lambda: pt.kvm_pgtable_stage2_map(
        host.pgt, addr, size, addr, attr, mc, flags, data=data, cb=cb))
    host._stats["coalesced_tables"] += data.coalesced
    data.coalesced = 0
    return ret


def host_stage2_idmap(host: "Host", addr: int, mc=None, lock=None, unlock=None,
                      flags: int = 0):
    """host_stage2_idmap(): under host_mmu.lock (``lock``/``unlock``: the
    scheme's, None for the single-CPU Host), host_stage2_adjust_range() and
    host_stage2_idmap_locked() of the largest block that fits.  Check, then
    act: the range is computed from the leaf the get-leaf walk saw, and the
    map walk that follows trusts it -- safe only while nothing else can
    change the table in between (the lock held exclusively).  ``flags``:
    the map walk's (0 in every kernel; the shared read side of the rwlock
    question passes KVM_PGTABLE_WALK_SHARED)."""
    is_mem, rng = host.find_mem_range(addr)
    attr = HOST_MEM_ATTR if is_mem else HOST_MMIO_ATTR
    if lock is not None:
        yield from lock()                        # host_lock_component()
    ret, cur = yield from host_stage2_adjust_range(host, addr, rng)
    if not ret:
        ret = yield from host_stage2_idmap_locked(host, cur[0], cur[1] - cur[0], attr, mc,
                                                  flags=flags)
    if unlock is not None:
        yield from unlock()                      # host_unlock_component()
    return ret


def handle_host_mem_abort(host: "Host", addr: int, mc=None, lock=None, unlock=None,
                          flags: int = 0):
    """handle_host_mem_abort(): a host stage-2 fault at ``addr`` taken to EL2.
    -EPERM (an owner annotation) means the host touched a page it gave away:
    Android injects an abort (host_inject_abort), mainline BUG()s."""
    return (yield from host_stage2_idmap(host, addr, mc, lock, unlock, flags))


def host_stage2_set_owner_locked(host: "Host", addr: int, size: int, owner_id: int,
                                 data: "HostMapData | None" = None, flags: int | None = None,
                                 mc=None):
    """host_stage2_set_owner_locked().  To another owner:
    host_stage2_try(kvm_pgtable_stage2_set_owner) (ACK: _annotate), the
    TABLE_PRE | LEAF walk that writes the owner annotation, breaking blocks.
    Back to the host: android15-6.6 maps the range again with the default
    prot (host_stage2_idmap_locked), whose TABLE_POST coalesces; mainline
    writes owner 0, the empty entry, and the host faults back lazily.  The
    caller holds host_mmu.lock and updates the page state afterwards.
    ``flags`` None: SKIP_BBM_TLBI with the "donate-no-tlbi" bug, else 0."""
    mc = host.pool if mc is None else mc
    if data is None:
        data = HostMapData(skip_coalesce_tlbi="coalesce-no-tlbi" in host.bugs)
    if owner_id == d.PKVM_ID_HOST and host.coalesce_on_reclaim:
        attr = HOST_MEM_ATTR if host.addr_is_memory(addr) else HOST_MMIO_ATTR
        return (yield from host_stage2_idmap_locked(host, addr, size, attr, mc, data))
    if flags is None:
        flags = pt.SKIP_BBM_TLBI if "donate-no-tlbi" in host.bugs else 0

    def walk():
        return pt.kvm_pgtable_stage2_set_owner(host.pgt, addr, size, mc, owner_id,
                                               data=data, flags=flags)
    return (yield from host_stage2_try(host, walk))


# ---------------------------------------------------------------------------
# Isolation, as a function of (tables, owners, TLBs): shared by Host's
# per-step check and the explorer's IsolationChecker (s2pt.checkers)
# ---------------------------------------------------------------------------

def leaf_direct(pgt, pa: int):
    """(pte, level) of the entry translating ``pa``, read straight from the
    table pages (no walker operation, so a checker can use it mid-step);
    None if the path leads through a freed page."""
    level = pgt.start_level
    table = pgt.pgd + pgt.pgd_page_idx(pa) * pgt.page_size
    while True:
        page = pgt.mm.pages.get(table >> pgt.page_shift)
        if page is None or page.freed:
            return None
        idx = (pa >> pgt.granule_shift[level]) & (pgt.ptrs_per_pte - 1)
        pte = int(page.table[idx])
        if level < 3 and d.kvm_pte_table(pte, level):
            table = pte & pgt.addr_mask
            level += 1
            continue
        return pte, level


def table_at(pgt, base: int, level: int):
    """The PA of the level-``level`` table the tree has for ``base`` now."""
    lvl = pgt.start_level
    table = pgt.pgd + pgt.pgd_page_idx(base) * pgt.page_size
    while lvl < level:
        idx = (base >> pgt.granule_shift[lvl]) & (pgt.ptrs_per_pte - 1)
        page = pgt.mm.pages.get(table >> pgt.page_shift)
        if page is None or page.freed:
            return None
        pte = int(page.table[idx])
        if not d.kvm_pte_table(pte, lvl):
            return None
        table = pte & pgt.addr_mask
        lvl += 1
    return table


def _reach_nonhost(pgt, page, level, first_nonhost_in):
    t = page.table
    for i in np.flatnonzero(t & np.uint64(1)).tolist():
        pte = int(t[i])
        if d.kvm_pte_table(pte, level):
            child = pgt.mm.pages.get((pte & pgt.addr_mask) >> pgt.page_shift)
            if child is not None and not child.freed:
                hit = _reach_nonhost(pgt, child, level + 1, first_nonhost_in)
                if hit is not None:
                    return hit
        else:
            size = pgt.granule_size[level]
            hit = first_nonhost_in(pte & pgt.addr_mask & ~(size - 1), size)
            if hit is not None:
                return hit
    return None


def reach_message(cpu, pa: int, owner_id: int, source: str) -> str:
    """A host access that reached a page the host gave away."""
    return (f"host CPU{cpu} reached PA {pa:#x}, owned by "
            f"{OWNER_NAMES.get(owner_id, owner_id)}, through its "
            f"{'TLB' if source == 'tlb' else 'stage-2 walk'}")


def isolation_problems(pgt, owner: dict, tlbs, first_nonhost_in, pages=()):
    """Yield one message for each way the host can still reach a page that
    is not its own (``owner``: pfn -> owner id, host pages absent):

    1. the tables at ``pages`` (pfns): a valid leaf maps one, or its entry
       is not the owner annotation;
    2. a TLB entry (``tlbs``: the host CPUs' VcpuTlb) covers one;
    3. a walk-cache entry points at a table that is no longer in the tree,
       through which one is reachable.

    ``first_nonhost_in(pa, size)`` is the first non-host PA in a range, or None."""
    shift = pgt.page_shift
    for pfn in pages:
        o = owner.get(pfn)
        if o is None:
            continue
        pa = pfn << shift
        leaf = leaf_direct(pgt, pa)
        if leaf is None:
            continue              # the use-after-free check reports this one
        pte, level = leaf
        if d.kvm_pte_valid(pte):
            yield (f"the host stage 2 maps PA {pa:#x} (level {level} leaf "
                   f"{pte:#x}) although {OWNER_NAMES[o]} owns it")
        elif pte != d.kvm_init_invalid_leaf_owner(o):
            yield (f"PA {pa:#x} is owned by {OWNER_NAMES[o]} but its host "
                   f"entry is {pte:#x}, not the owner annotation")
    if not owner:
        return
    for tlb in tlbs:
        for (level, base), pte in tlb.entries.items():
            size = pgt.granule_size[level]
            out = (pte & pgt.addr_mask & ~(size - 1))
            hit = first_nonhost_in(out, size)
            if hit is not None:
                yield (f"host CPU{tlb.vcpu}'s TLB still holds the level-{level} "
                       f"{'block' if level < 3 else 'page'} [{out:#x}, {out + size:#x}) "
                       f"although PA {hit:#x} in it now belongs to "
                       f"{OWNER_NAMES[owner[hit >> shift]]}: the host can reach it "
                       f"(a TLBI is missing)")
        for (level, base), table in tlb.walk.items():
            page = pgt.mm.pages.get(table >> shift)
            if page is None or page.freed:
                continue          # the use-after-free check reports this one
            if table_at(pgt, base, level) == table:
                continue
            hit = _reach_nonhost(pgt, page, level, first_nonhost_in)
            if hit is not None:
                yield (f"host CPU{tlb.vcpu}'s walk cache still points at the unlinked "
                       f"level-{level} table {table:#x} for PA {base:#x}, through which PA "
                       f"{hit:#x} ({OWNER_NAMES[owner[hit >> shift]]}) is reachable")


def _annotations(pgt):
    """(pa, level, pte) of every non-zero invalid entry (owner annotations,
    and anything else a bug leaves there), read from the table pages."""
    mm, shift = pgt.mm, pgt.page_shift
    out = []

    def visit(page, level, base):
        t = page.table
        gran = pgt.granule_size[level]
        for i in np.flatnonzero(((t & np.uint64(1)) == 0) & (t != 0)).tolist():
            out.append((base + i * gran, level, int(t[i])))
        if level < 3:
            for i in np.flatnonzero((t & np.uint64(3)) == np.uint64(3)).tolist():
                child = mm.pages.get((int(t[i]) & pgt.addr_mask) >> shift)
                if child is not None and not child.freed:
                    visit(child, level + 1, base + i * gran)

    top = pgt.granule_size[pgt.start_level] * pgt.ptrs_per_pte
    for n, page in enumerate(pgt.pgd_pages):
        visit(page, pgt.start_level, n * top)
    return out


class HostS2Pool:
    """host_s2_pool: the hypervisor's fixed pool of pages for the host
    stage 2 (a hyp_pool).  ``alloc`` is what mm_ops->zalloc_page draws on;
    table pages freed by the walker go back to it."""

    def __init__(self, mem, pages: int):
        self.mem, self.pages = mem, pages

    @property
    def nobjs(self) -> int:
        return self.mem.available()

    def alloc(self):
        return self.mem.alloc_page()


# ---------------------------------------------------------------------------
# The host
# ---------------------------------------------------------------------------

class Host(Stateful):
    """The pKVM host and its stage-2 identity map.

    Parameters
    ----------
    memory, mmio : list of (base, size)
        Physical memory (memblock) and device regions, granule-aligned and
        disjoint.  Any address outside ``memory`` is MMIO to the kernel (it
        maps the gaps between memory regions as such); the model accepts
        host accesses only inside ``memory`` or ``mmio``.
    granule : 4096, 16384 or 65536
    pa_bits : the PA size, which is also the IPA size (prepare_host_vtcr).
    cpus : how many host CPUs (each with its TLB and walk cache).
    pool_pages : size of host_s2_pool; None = as many as the host stage 2 could
        ever need at page granularity for all memory (host_s2_pgtable_pages
        sizes it that way in the kernel), i.e. effectively unlimited.
    prefault : refill broken blocks with copies of themselves
        (KVM_PGTABLE_S2_PREFAULT_BLOCK, which android15-6.6 always sets on the
        host stage 2; off by default here, so that the rest of a broken block
        faults back lazily, as in mainline).
    coalesce : android15-6.6's coalescing (the TABLE_POST visitor of the host
        map walk, and reclaim mapping pages back); False models mainline,
        which never coalesces (reclaim writes owner 0).
    check : run the isolation checker after every step.
    el2_shared_walks : a hypothetical, for the thread's rwlock question: EL2
        accepts KVM_PGTABLE_WALK_SHARED walks (no kernel does: at EL2
        kvm_pgtable_walk_begin refuses them with -EPERM), and they are no RCU
        readers (EL2 has no RCU).

    In the explorer's machine state (s2pt.sim.state) the host's state is its
    record of page owners and shared pages; its statistics and a cache of
    the sorted owners are not state.
    """

    sim_ignore = ("_stats", "_nonhost_sorted")

    def sim_state(self):
        return (tuple(sorted(self._owner.items())), frozenset(self._shared))

    def sim_restore(self, state):
        owner, shared = state
        if owner != tuple(sorted(self._owner.items())):
            self._owner = dict(owner)
            self._nonhost_sorted = None
        self._shared = set(shared)

    def __init__(self, memory, mmio=(), granule: int = 4096, *, pa_bits: int = 40,
                 cpus: int = 2, pool_pages: int | None = None, prefault: bool = False,
                 coalesce: bool = True, check: bool = True, bugs=(), machine=None,
                 el2_shared_walks: bool = False):
        cpus = v.integer("cpus", cpus, 1, 64, rule="a number of host CPUs from 1 to 64")
        pool_pages = v.optional_integer("pool_pages", pool_pages, 1)
        bugs = _bugs.check_bugs(bugs, _bugs.HOST, _bugs.WALKER)
        sizes = [b for b in PARANGE if b <= PA_BITS]
        pa_bits = v.integer("pa_bits", pa_bits, rule=(
            f"the host's PA size (also its stage-2 IPA size, prepare_host_vtcr) is a "
            f"PARange size: one of {', '.join(map(str, sizes))} (52 needs LPA2, not modelled)"))
        if pa_bits not in sizes:
            raise S2ptError(f"pa_bits={pa_bits!r}: the host's PA size (also its stage-2 IPA "
                            f"size, prepare_host_vtcr) is a PARange size: one of "
                            f"{', '.join(map(str, sizes))} (52 needs LPA2, not modelled)")
        prefault = v.flag("prefault", prefault)
        coalesce = v.flag("coalesce", coalesce)
        check = v.flag("check", check)
        el2_shared_walks = v.flag("el2_shared_walks", el2_shared_walks)
        geom = Geometry(pa_bits, granule)
        self.granule = geom.granule
        self._ia_bits = geom.ipa_bits
        self.memory = self._check_regions(memory, "memory", allow_empty=False)
        self.mmio = self._check_regions(mmio, "mmio")
        for b, s in self.mmio:
            for mb, ms in self.memory:
                if b < mb + ms and mb < b + s:
                    raise S2ptError(f"mmio region [{b:#x}, {b + s:#x}) overlaps memory "
                                    f"[{mb:#x}, {mb + ms:#x})")
        self._mem_starts = [b for b, _ in self.memory]
        # kvm_host_prepare_stage2: KVM_HOST_S2_FLAGS = NOFWB | IDMAP, built for
        # EL2, with host_mmu.mm_ops (prepare_s2_pool): tables come from
        # host_s2_pool, unlinked ones are freed at once
        # (host_s2_free_unlinked_table), and there is no cache maintenance.
        pgt = Stage2(
            ipa_bits=pa_bits, granule=granule, vmid=0, hyp=not el2_shared_walks, idmap=True,
            ram_pages=None if pool_pages is None else geom.pgd_pages + pool_pages,
            mm_ops=pt.MmOps(pt.free_unlinked_table_now, dcache_clean_inval_poc=False,
                            icache_inval_pou=False, rcu_walkers=False),
            force_pte_cb=self.host_stage2_force_pte_cb,
            max_owner_id=ACK_KVM_MAX_OWNER_ID,
            pte_is_counted=lambda pte, level: host_stage2_pte_is_counted(self, pte, level),
            prefault_block=bool(prefault), machine=machine, bugs=_bugs.of(bugs, _bugs.WALKER))
        self.pgt = pgt
        self.pool = HostS2Pool(pgt.mm, pool_pages)
        self.prefault, self.coalesce_on_reclaim = prefault, coalesce
        self.check = check
        #: Broken variants switched on (s2pt.bugs: the host's and its walker's),
        #: fixed when the host is built.
        self.bugs = bugs
        self.cpus = [VcpuTlb(pgt, i) for i in range(cpus)]
        self._owner: dict[int, int] = {}          # pfn -> owner id (not host)
        self._shared: set[int] = set()            # pfns the host shares with hyp
        self._nonhost_sorted = None               # cache for the TLB checks
        self._stats = dict(faults=0, host_aborts=0, donations=0, reclaims=0,
                           coalesced_tables=0, unmap_dev_all=0, unmap_unmoveable_regs=0,
                           enomem_retries=0, isolation_checks=0)
        #: kvm_protected_mode_initialized: android15-6.6 coalesces only after it
        self.protected_mode_initialized = False
        if self.coalesce_on_reclaim:
            # android15-6.6's kvm_host_prepare_stage2 -> prepopulate_host_stage2():
            # every memory region is mapped at init (host_stage2_idmap_locked,
            # PKVM_HOST_MEM_PROT), before coalescing is switched on ("We don't
            # want to coalesce during pkvm initialisation").  Mainline maps
            # memory lazily, one host fault at a time.
            for b, size in self.memory:
                ret = self._run(host_stage2_idmap_locked(self, b, size, HOST_MEM_ATTR))
                if ret:
                    raise S2ptError(f"pool_pages={pool_pages!r}: host_s2_pool cannot hold the "
                                    f"tables that map memory region [{b:#x}, {b + size:#x}) "
                                    f"at init (prepopulate_host_stage2 returned {ret})")
        self.protected_mode_initialized = True

    # -- layout ------------------------------------------------------------------
    def _check_regions(self, regions, what, allow_empty=True):
        if isinstance(regions, (str, bytes, dict)):
            raise S2ptError(f"{what}={regions!r}: a list of (base, size) pairs")
        try:
            regs = [(b, s) for b, s in regions]
        except (TypeError, ValueError):
            raise S2ptError(f"{what}={regions!r}: a list of (base, size) pairs") from None
        if not regs and not allow_empty:
            raise S2ptError(f"{what}: the host needs at least one memory region")
        out = []
        for b, s in regs:
            if not v.is_int(b) or not v.is_int(s) or b < 0 or s <= 0:
                raise S2ptError(f"{what} region ({b!r}, {s!r}): base >= 0 and size > 0, integers")
            b, s = int(b), int(s)
            if b % self.granule or s % self.granule:
                raise S2ptError(f"{what} region [{b:#x}, +{s:#x}): must be aligned to the "
                                f"{self.granule // KiB}K granule")
            if b + s > 1 << self._ia_bits:
                raise S2ptError(f"{what} region [{b:#x}, {b + s:#x}): beyond the "
                                f"{self._ia_bits}-bit PA space")
            out.append((b, s))
        out.sort()
        for (b0, s0), (b1, _) in zip(out, out[1:]):
            if b1 < b0 + s0:
                raise S2ptError(f"{what} regions overlap at {b1:#x}")
        return out

    def find_mem_range(self, addr: int):
        """(is_memory, (start, end)): the memory region holding ``addr``, or
        the gap between the neighbouring memory regions (what the kernel
        then treats as MMIO)."""
        i = bisect.bisect_right(self._mem_starts, addr) - 1
        if i >= 0:
            b, s = self.memory[i]
            if addr < b + s:
                return True, (b, b + s)
        start = self.memory[i][0] + self.memory[i][1] if i >= 0 else 0
        end = self.memory[i + 1][0] if i + 1 < len(self.memory) else 1 << self.pgt.ia_bits
        return False, (start, end)

    def addr_is_memory(self, addr: int) -> bool:
        i = bisect.bisect_right(self._mem_starts, addr) - 1
        return i >= 0 and addr < self.memory[i][0] + self.memory[i][1]

    def range_is_memory(self, start: int, end: int) -> bool:
        is_mem, (b, e) = self.find_mem_range(start)
        return is_mem and end <= e

    def _is_mmio(self, addr: int) -> bool:
        return any(b <= addr < b + s for b, s in self.mmio)

    def host_stage2_force_pte_cb(self, addr: int, end: int, attr: int) -> bool:
        """Any non-default mapping is forced to pages: "the host stage-2
        page-table is in fact the only place where this state is stored"."""
        if self.range_is_memory(addr, end):
            return attr != HOST_MEM_ATTR
        return attr != HOST_MMIO_ATTR

    # -- the fault path ------------------------------------------------------------
    def _run(self, gen):
        return run(gen, self.pgt.machine)

    def _check_pa(self, pa, name="pa") -> int:
        self.pgt._check_live()
        return v.address(name, pa, self.pgt.ia_bits, "a physical address")

    def host_stage2_adjust_range(self, addr: int, rng):
        """0 and the range to map, -EAGAIN (already mapped) or -EPERM (owned)."""
        addr = self._check_pa(addr, "addr")
        try:
            lo, hi = rng
        except (TypeError, ValueError):
            raise S2ptError(f"rng={rng!r}: a (start, end) pair, as find_mem_range returns") \
                from None
        lo, hi = v.address("rng[0]", lo), v.address("rng[1]", hi)
        if not lo <= addr < hi:
            raise S2ptError(f"rng=({lo:#x}, {hi:#x}): must contain addr={addr:#x}")
        return self._run(host_stage2_adjust_range(self, addr, (lo, hi)))

    def host_stage2_try(self, fn):
        """Run ``fn()`` (a generator function); on -ENOMEM recycle the MMIO
        tables and retry once."""
        self.pgt._check_live()
        v.function("fn", fn, 0)
        return self._run(host_stage2_try(self, fn))

    def host_stage2_unmap_dev_all(self) -> int:
        """Unmap every non-memory range (the gaps between memory regions and
        above the last one): their table pages go back to host_s2_pool."""
        self.pgt._check_live()
        return self._run(host_stage2_unmap_dev_all(self))

    def host_stage2_idmap(self, addr: int) -> int:
        """host_stage2_idmap(): map the largest block around ``addr`` that
        fits its memory region (or MMIO gap).  0, -EAGAIN or -EPERM."""
        addr = self._check_pa(addr, "addr")
        return self._run(host_stage2_idmap(self, addr))

    def access(self, pa: int, write: bool = False, exec: bool = False, cpu: int = 0) -> Translation:
        """A host access to ``pa`` on host CPU ``cpu``: the MMU translates
        (TLB, walk cache, tables); a translation fault goes to
        handle_host_mem_abort and the access is retried.  Returns the
        :class:`~s2pt.Translation`; raises :class:`~s2pt.Fault` for the
        abort pKVM injects when the page belongs to the guest or hypervisor
        (Android; mainline would BUG), or for a permission fault (e.g.
        executing MMIO)."""
        pa = self._check_pa(pa)
        write, exec = v.flag("write", write), v.flag("exec", exec)
        cpu = v.cpu("cpu", cpu, len(self.cpus), "host CPU")
        if not self.addr_is_memory(pa) and not self._is_mmio(pa):
            raise S2ptError(f"pa={pa:#x}: neither host memory nor a declared MMIO region")
        if write and exec:
            raise S2ptError("write=True with exec=True: an access is a read, a write or a fetch")
        tlb = self.cpus[cpu]
        # With a model pool smaller than the kernel's, the fault may find no
        # table page even after recycling the MMIO tables: the kernel would
        # BUG (handle_host_mem_abort); the model refuses with nothing changed.
        restore = self._checkpoint() if self._may_run_dry(pa, self.granule) else None
        for _ in range(3):
            r = self._run(hw_translate(tlb, pa, write, exec))
            if isinstance(r, Translation):
                owner = self._owner.get(r.pa >> self.pgt.page_shift)
                if owner is not None:
                    self._violation(reach_message(cpu, r.pa, owner, r.source))
                self._after_step(())
                return r
            if r.kind != "translation":
                raise r
            self._stats["faults"] += 1
            ret = self._run(handle_host_mem_abort(self, pa))
            if ret == -EPERM:
                self._stats["host_aborts"] += 1
                owner = OWNER_NAMES.get(self._owner.get(pa >> self.pgt.page_shift), "?")
                raise Fault("translation", r.level, pa, write, exec,
                            f"PA {pa:#x} is owned by {owner}: pKVM injects an abort into "
                            f"the host (Android host_inject_abort; mainline BUG_ON)")
            if ret == -ENOMEM and restore is not None:
                restore()
                raise S2ptError(
                    f"pa={pa:#x}: host_s2_pool has {self.pool.nobjs} free page(s), too few "
                    f"for the tables this host stage-2 fault needs, even after recycling "
                    f"the MMIO tables (-ENOMEM: the kernel, whose pool is sized for every "
                    f"page, would BUG in handle_host_mem_abort); nothing was changed")
            if ret and ret != -EAGAIN:
                raise KernelBug("warn", f"host_stage2_idmap({pa:#x}) returned {ret}")
        raise KernelBug("warn", f"host access to {pa:#x} keeps faulting")

    # -- ownership ------------------------------------------------------------------
    def _check_pages(self, pa, npages, what, npages_name="npages"):
        self.pgt._check_live()
        pa = v.address("pa", pa, None, "a physical address")
        npages = v.integer(npages_name, npages, 1, rule="a positive number of pages")
        v.aligned("pa", pa, self.granule)
        end = pa + npages * self.granule
        if end > 1 << self.pgt.ia_bits:
            raise S2ptError(f"[{pa:#x}, {end:#x}): beyond the {self.pgt.ia_bits}-bit PA space")
        is_mem, (b, e) = self.find_mem_range(pa)
        if not is_mem:
            raise S2ptError(f"{what} of [{pa:#x}, {end:#x}): not memory (MMIO or a hole); "
                            f"host_stage2_set_owner_locked/check_range_allowed_memory "
                            f"return -EPERM")
        if end > e:
            raise S2ptError(f"{what} of [{pa:#x}, {end:#x}): runs past the end of memory "
                            f"region [{b:#x}, {e:#x}) (-EINVAL/-EPERM in the kernel)")
        return pa, npages

    def _set_owner(self, pa: int, size: int, owner_id: int) -> int:
        """host_stage2_set_owner_locked (it counts what it coalesces).
        Returns -ENOMEM when host_s2_pool ran dry even after recycling the
        MMIO tables (the caller refuses and rolls back); any other error is
        a KernelBug, as the kernel's WARN_ON."""
        ret = self._run(host_stage2_set_owner_locked(self, pa, size, owner_id))
        if ret and ret != -ENOMEM:
            raise KernelBug("warn", f"host_stage2_set_owner_locked({pa:#x}, {size:#x}, "
                                    f"{owner_id}) returned {ret}")
        return ret

    def _checkpoint(self):
        """Everything an ownership walk can change (table pages and the
        allocator, the machine's counters, the TLBI log, the host CPUs'
        TLBs, the host's records), and a function that puts it all back in
        place.  Used only when host_s2_pool may run dry: the kernel sizes
        host_s2_pool (host_s2_pgtable_pages) so that it never does, and
        WARNs if set_owner fails; the model's pool can be smaller, so a
        donation that runs out is refused with nothing changed."""
        mm, m, log = self.pgt.mm, self.pgt.machine, self.pgt.mmu.tlbi_log
        pages = {pfn: (p, p.refcount, p.walkers, p.freed, p.table.copy(), p.private,
                       p.ptdesc, p.generation, p.free_count) for pfn, p in mm.pages.items()}
        mm_fields = {k: x for k, x in vars(mm).items() if isinstance(x, (int, type(None)))}
        free_list = list(mm.free_list)
        stats, callbacks = m.stats.copy(), list(m.rcu_callbacks)
        runs, count = [list(r) for r in log.runs], log.count
        tlbs = [(t, t.sim_state(), t.hits, t.misses) for t in self.cpus]
        owner, shared, hstats = dict(self._owner), set(self._shared), dict(self._stats)
        nonhost = None if self._nonhost_sorted is None else list(self._nonhost_sorted)

        def restore():
            for pfn in [pfn for pfn in mm.pages if pfn not in pages]:
                del mm.pages[pfn]
            for pfn, (p, rc, walkers, freed, table, private, ptdesc, gen, frees) in pages.items():
                mm.pages[pfn] = p
                p.refcount, p.walkers, p.freed = rc, walkers, freed
                p.table[:] = table
                p.private, p.ptdesc = private, ptdesc
                p.generation, p.free_count = gen, frees
            for k, x in mm_fields.items():
                setattr(mm, k, x)
            mm.free_list[:] = free_list
            m.stats.clear()
            m.stats.update(stats)
            m.rcu_callbacks[:] = callbacks
            log.runs[:] = runs
            log.count = count
            for t, state, hits, misses in tlbs:
                t.sim_restore(state)
                t.hits, t.misses = hits, misses
            self._owner.clear()
            self._owner.update(owner)
            self._shared.clear()
            self._shared.update(shared)
            self._stats.clear()
            self._stats.update(hstats)
            self._nonhost_sorted = nonhost
        return restore

    def _may_run_dry(self, pa: int, size: int) -> bool:
        """Could host_s2_pool run out during an ownership walk over the
        range?  (An upper bound on the tables it allocates, against the
        pool's free pages; an unlimited pool never runs out.)"""
        avail = self.pool.nobjs
        return avail is not None and avail < self.pgt._map_table_bound(pa, size, pa, True)

    def donate(self, pa: int, npages: int = 1, to: str = "guest") -> None:
        """__pkvm_host_donate_guest (one page at a time, as the kernel) or
        __pkvm_host_donate_hyp (the whole range): every page must be in
        host state ``owned``; the host entries become owner annotations.

        All or nothing: the page states are checked before anything
        changes, as the kernel does (__host_check_page_state_range).  If
        host_s2_pool cannot hold the tables that breaking the covering
        blocks needs (even after host_stage2_try() recycles the MMIO
        tables), the donation is refused with -ENOMEM as an
        :class:`~s2pt.S2ptError` and everything is put back as it was (the
        kernel's pool is sized so that this cannot happen)."""
        to = v.choice("to", to, ("guest", "hyp"), "donate to one of")
        pa, npages = self._check_pages(pa, npages, "donation")
        shift = self.pgt.page_shift
        first = pa >> shift
        for pfn in range(first, first + npages):
            if pfn in self._owner:
                raise S2ptError(f"donation of PA {pfn << shift:#x}: the host does not own it "
                                f"(owner {OWNER_NAMES[self._owner[pfn]]}; "
                                f"__host_check_page_state_range returns -EPERM)")
            if pfn in self._shared:
                raise S2ptError(f"donation of PA {pfn << shift:#x}: it is shared with the "
                                f"hypervisor (host state shared-owned, not owned: -EPERM)")
        owner_id = OWNER_IDS[to]
        restore = self._checkpoint() if self._may_run_dry(pa, npages * self.granule) else None
        if to == "guest":
            ret = 0
            for i in range(npages):
                ret = self._set_owner(pa + i * self.granule, self.granule, owner_id)
                if ret:
                    break
        else:
            ret = self._set_owner(pa, npages * self.granule, owner_id)
        if ret:
            if restore is None:            # _may_run_dry is an upper bound: cannot happen
                raise KernelBug("warn", f"donation of [{pa:#x}, +{npages} pages): -ENOMEM "
                                        f"with host_s2_pool deemed large enough")
            restore()
            raise S2ptError(
                f"donation of [{pa:#x}, {pa + npages * self.granule:#x}): host_s2_pool has "
                f"{self.pool.nobjs} free page(s), too few for the tables that breaking the "
                f"covering blocks needs, even after recycling the MMIO tables (-ENOMEM; the "
                f"kernel sizes host_s2_pool so that this cannot happen); nothing was changed")
        for pfn in range(first, first + npages):
            self._owner[pfn] = owner_id          # host_state = PKVM_NOPAGE
        self._track_nonhost(first, npages, add=True)
        self._stats["donations"] += npages
        self._after_step(range(first, first + npages))

    def reclaim(self, pa: int, npages: int = 1) -> None:
        """Take pages back: a torn-down guest's (__pkvm_host_reclaim_page,
        one page at a time) or the hypervisor's (__pkvm_hyp_donate_host).
        The owner annotation becomes the zero PTE, tables left holding only
        default mappings coalesce, and the host faults blocks back lazily."""
        pa, npages = self._check_pages(pa, npages, "reclaim")
        shift = self.pgt.page_shift
        first = pa >> shift
        for pfn in range(first, first + npages):
            if pfn not in self._owner:
                raise S2ptError(f"reclaim of PA {pfn << shift:#x}: the host already owns it "
                                f"(it was never donated)")
        runs = []                     # (start pfn, n, owner) of same-owner runs
        for pfn in range(first, first + npages):
            o = self._owner[pfn]
            if runs and runs[-1][2] == o and o != d.PKVM_ID_GUEST:
                runs[-1][1] += 1
            else:
                runs.append([pfn, 1, o])
        for start, n, _o in runs:
            # Back to the zero PTE: no new table is needed, so no -ENOMEM.
            if self._set_owner(start << shift, n << shift, d.PKVM_ID_HOST):
                raise KernelBug("warn", f"reclaim of {start << shift:#x}: set_owner "
                                        f"returned -ENOMEM although it needs no new table")
        for pfn in range(first, first + npages):
            del self._owner[pfn]                 # host_state = PKVM_PAGE_OWNED
        self._track_nonhost(first, npages, add=False)
        self._stats["reclaims"] += npages
        self._after_step(range(first, first + npages))

    def coalesce(self, pa: int | None = None, size: int | None = None) -> int:
        """kvm_pgtable_stage2_reclaim_leaves over a range (default: all of
        memory): zap every table holding only default mappings.  Returns
        how many tables were dropped.  ``size`` (bytes, a multiple of the
        granule; default one page) needs ``pa``; the range must lie in one
        memory region."""
        self.pgt._check_live()
        if pa is None:
            if size is not None:
                raise S2ptError(f"size={size!r} without pa: give pa (and optionally size) "
                                f"for one range, or neither for all of memory")
            ranges = self.memory
        else:
            size = self.granule if size is None else v.size("size", size, self.granule)
            b, n = self._check_pages(pa, size // self.granule, "coalesce")
            ranges = [(b, n * self.granule)]
        data = HostMapData(skip_coalesce_tlbi="coalesce-no-tlbi" in self.bugs)
        for b, s in ranges:
            ret = self._run(kvm_pgtable_stage2_reclaim_leaves(self.pgt, b, s, data))
            if ret:
                raise KernelBug("warn", f"kvm_pgtable_stage2_reclaim_leaves returned {ret}")
        self._stats["coalesced_tables"] += data.coalesced
        self._after_step(())
        return data.coalesced

    def share_hyp(self, pa: int) -> None:
        """__pkvm_host_share_hyp: host owned -> shared-owned, hyp nopage ->
        shared-borrowed.  The host keeps its mapping (LN-MP keeps the state
        in hyp_vmemmap, not in the PTE)."""
        pa, _ = self._check_pages(pa, 1, "share")
        pfn = pa >> self.pgt.page_shift
        if pfn in self._owner or pfn in self._shared:
            raise S2ptError(f"share of PA {pa:#x}: host state is not owned (-EPERM)")
        self._shared.add(pfn)
        self._after_step(())

    def unshare_hyp(self, pa: int) -> None:
        """__pkvm_host_unshare_hyp: back to host owned, hyp nopage."""
        pa, _ = self._check_pages(pa, 1, "unshare")
        pfn = pa >> self.pgt.page_shift
        if pfn not in self._shared:
            raise S2ptError(f"unshare of PA {pa:#x}: not shared with the hypervisor (-EPERM)")
        self._shared.discard(pfn)
        self._after_step(())

    def owner(self, pa: int) -> str:
        """'host', 'guest' or 'hyp'."""
        pa = self._check_pa(pa)
        return OWNER_NAMES[self._owner.get(pa >> self.pgt.page_shift, d.PKVM_ID_HOST)]

    def page_state(self, pa: int, who: str = "host") -> str:
        """The page state pKVM tracks (hyp_page.host_state / hyp state):
        'owned', 'shared-owned', 'shared-borrowed' or 'nopage'."""
        pa = self._check_pa(pa)
        who = v.choice("who", who, ("host", "hyp", "guest"), "whose state:")
        pfn = pa >> self.pgt.page_shift
        o = self._owner.get(pfn)
        if who == "host":
            if not self.addr_is_memory(pa):
                return "nopage"
            return "nopage" if o is not None else ("shared-owned" if pfn in self._shared
                                                   else "owned")
        if who == "hyp":
            return ("owned" if o == d.PKVM_ID_HYP else
                    "shared-borrowed" if pfn in self._shared else "nopage")
        return "owned" if o == d.PKVM_ID_GUEST else "nopage"

    def owned_pages(self, owner: str | None = None) -> list[int]:
        """PAs of the pages the host has given away (to ``owner``, 'guest'
        or 'hyp', if named)."""
        self.pgt._check_live()
        if owner is not None:
            owner = v.choice("owner", owner, ("guest", "hyp"),
                             "whom the pages were given to (None: everyone):")
        want = None if owner is None else OWNER_IDS[owner]
        shift = self.pgt.page_shift
        return sorted(p << shift for p, o in self._owner.items() if want is None or o == want)

    # -- checks ------------------------------------------------------------------------
    def _violation(self, message: str):
        self.pgt.mm.violation("isolation", message)

    def _track_nonhost(self, first: int, n: int, add: bool):
        """Keep the sorted list of given-away pfns up to date (while someone
        uses it; otherwise drop it and rebuild on demand)."""
        lst = self._nonhost_sorted
        if lst is None:
            return
        if n > 64 or not self.check:
            self._nonhost_sorted = None
            return
        for pfn in range(first, first + n):
            if add:
                bisect.insort(lst, pfn)
            else:
                del lst[bisect.bisect_left(lst, pfn)]

    def _first_nonhost_in(self, pa: int, size: int):
        if self._nonhost_sorted is None:
            self._nonhost_sorted = sorted(self._owner)
        arr = self._nonhost_sorted
        shift = self.pgt.page_shift
        i = bisect.bisect_left(arr, pa >> shift)
        if i < len(arr) and arr[i] < (pa + size) >> shift:
            return arr[i] << shift
        return None

    def _after_step(self, changed):
        if self.check:
            self.check_isolation(changed)

    def check_isolation(self, pages=None, full: bool = False) -> None:
        """No host translation may reach a guest- or hyp-owned page.

        Checks (1) the tables at ``pages`` (pfns; every non-host page with
        ``full=True``): no valid leaf maps them, and the annotation names
        the owner; (2) every host CPU's TLB: no cached leaf covers a
        non-host page; (3) every walk-cache entry: it points at the table the
        tree has there now, or else nothing reachable through the stale table
        maps a non-host page.  Reports through ``pgt.mm.violation``."""
        if type(full) is not bool:
            full = v.flag("full", full)
        if pages is not None and not isinstance(pages, (list, tuple, range, set, frozenset)):
            raise S2ptError(f"pages={pages!r}: a list of page frame numbers, or None")
        self._stats["isolation_checks"] += 1
        if full:
            pages = list(self._owner)
        for msg in isolation_problems(self.pgt, self._owner, self.cpus, self._first_nonhost_in,
                                      pages or ()):
            self._violation(msg)

    def check_invariants(self) -> None:
        """Table invariants (refcounts under the host counting rule, no
        leaks), the full isolation check, and the table against the host's
        own records (:class:`~s2pt.KernelBug` naming each broken one):

        * every owner annotation in the table is a level-3 entry whose page
          the records give to that owner, and every page the records give
          away carries its annotation (a page annotated in the table but
          owned by the host in the records is lost: the host faults on it
          and cannot reclaim it);
        * recorded owners are the guest or the hypervisor, on memory pages;
          a page shared with the hypervisor is memory the host still owns;
        * the cache of given-away pages, when kept, matches the records."""
        self.pgt.check_invariants()
        problems = []
        shift = self.pgt.page_shift
        for pfn, o in self._owner.items():
            if o not in (d.PKVM_ID_HYP, d.PKVM_ID_GUEST):
                problems.append(f"PA {pfn << shift:#x} is recorded with owner id {o!r}")
            if not self.addr_is_memory(pfn << shift):
                problems.append(f"PA {pfn << shift:#x} is recorded as given away but is not "
                                f"memory")
        for pfn in sorted(self._shared):
            if pfn in self._owner or not self.addr_is_memory(pfn << shift):
                problems.append(f"PA {pfn << shift:#x} is recorded as shared with the "
                                f"hypervisor but the host does not own it")
        if self._nonhost_sorted is not None and self._nonhost_sorted != sorted(self._owner):
            problems.append("the sorted cache of given-away pages does not match the records")
        for ipa, level, pte in _annotations(self.pgt):
            if pte != pte & d.KVM_INVALID_PTE_OWNER_MASK:
                problems.append(f"the invalid entry for PA {ipa:#x} is {pte:#x}, not an "
                                f"owner annotation (a LOCKED entry at a quiescent point?)")
                continue
            o = (pte & d.KVM_INVALID_PTE_OWNER_MASK) >> 2      # FIELD_GET(OWNER_MASK)
            if level != 3:
                problems.append(f"a level-{level} entry for PA {ipa:#x} carries owner id {o}: "
                                f"ownership is annotated page by page (force_pte)")
            elif self._owner.get(ipa >> shift) != o:
                rec = OWNER_NAMES.get(self._owner.get(ipa >> shift, d.PKVM_ID_HOST), "?")
                problems.append(f"PA {ipa:#x} is annotated as owned by "
                                f"{OWNER_NAMES.get(o, o)} in the table but by {rec} in the "
                                f"records")
        if problems:
            raise KernelBug("invariant", "; ".join(problems))
        self.check_isolation(full=True)

    # -- views -----------------------------------------------------------------------------
    @property
    def stats(self) -> dict:
        s = self.pgt.stats
        out = dict(self._stats)
        out["tlbi"] = s.get("tlbi", 0)
        out["tables_allocated"] = s.get("tables_allocated", 0)
        out["tables_freed"] = s.get("tables_freed", 0)
        out["tables_live"] = s.get("tables_live", 0)
        out["tables_peak"] = self.pgt.mm.peak - self.pgt.geom.pgd_pages
        out["pool_free"] = self.pool.nobjs
        out["owned_by_guest"] = sum(1 for o in self._owner.values() if o == d.PKVM_ID_GUEST)
        out["owned_by_hyp"] = sum(1 for o in self._owner.values() if o == d.PKVM_ID_HYP)
        return out

    def leaf_sizes(self) -> dict:
        """{'1G': n, '2M': n, '4K': n, 'owned': n}: the valid leaves of the
        host stage 2 by size, and the owner annotations."""
        from .invariants import leaves
        out: dict = {}
        for _ipa, _size_, level, pte in leaves(self.pgt):
            key = _size(self.pgt.granule_size[level]) if pte & 1 else "owned"
            out[key] = out.get(key, 0) + 1
        return out

    def __repr__(self):
        mem = sum(s for _, s in self.memory)
        return (f"<pkvm.Host {_size(mem)} memory in {len(self.memory)} region(s), "
                f"{len(self.mmio)} MMIO, {self.stats['tables_live']} table pages, "
                f"{len(self._owner)} pages given away>")


# ---------------------------------------------------------------------------
# EL2 paths the explorer's CPUs run (s2pt.scenarios), each one shared access
# per step.  ``ctx`` is what the CPU programs of a scenario share: ``host``
# (this module's Host), ``scheme`` (host_mmu.lock: update_lock/update_unlock
# around a hypercall, fault_lock/fault_unlock around a host fault, and
# fault_flags), ``pool`` (host_s2_pool, a MemCache) and ``checker`` (the
# isolation checker, s2pt.checkers.IsolationChecker, which performs the
# page_owner steps and checks each host access).
# ---------------------------------------------------------------------------

def page_owner(pa: int, owner: str, kernel: str):
    """The hypervisor records that the page at ``pa`` now belongs to
    ``owner`` ("host", "guest" or "hyp"): hyp_vmemmap's host_state (pKVM's
    ``__host_update_page_state``), or, for a reclaim, the guest's loss of the
    page.  ``kernel`` names the step in diagrams.  Performed by the
    isolation checker attached to the machine (s2pt.checkers)."""
    if owner not in OWNER_IDS:
        raise S2ptError(f"page_owner: owner={owner!r} is not one of {', '.join(OWNER_IDS)}")
    return ("page_owner", pa, owner, kernel)


@kernel_path("__pkvm_host_donate_guest")
def pkvm_host_donate_guest(ctx, pa: int):
    """__pkvm_host_donate_guest(): under host_mmu.lock (and the guest's
    vm->lock: the guest's own stage 2 is not modelled), check that the host
    owns the page (hyp_vmemmap, no table access), then
    host_stage2_set_owner_locked(pa, PAGE_SIZE, PKVM_ID_GUEST): the walk
    meets the 2M block, cannot place a page there (-E2BIG), breaks the
    block (break-before-make: LOCKED, TLBI + DSB), installs an empty table,
    descends and writes the owner annotation.  Only after that maintenance
    does the hypervisor record the page as gone from the host
    (__host_update_page_state(PKVM_NOPAGE)), before the guest's stage 2 maps
    it: from that step on, isolation must hold."""
    s = ctx.scheme
    yield from s.update_lock()                       # host_lock_component()
    ret = yield from host_stage2_set_owner_locked(ctx.host, pa, ctx.host.granule,
                                                  d.PKVM_ID_GUEST, mc=ctx.pool)
    if not ret:
        yield page_owner(pa, "guest", "__host_update_page_state(PKVM_NOPAGE)")
    yield from s.update_unlock()                     # host_unlock_component()
    return ret


@kernel_path("__pkvm_host_reclaim_page")
def pkvm_host_reclaim_page(ctx, pa: int):
    """Guest teardown: __pkvm_host_reclaim_page() (mainline:
    __pkvm_host_reclaim_page_guest) under host_mmu.lock.  The guest's stage 2
    no longer maps the page and hyp_poison_page() has cleared it (neither is
    modelled), so the page has left the guest; then
    host_stage2_set_owner_locked(pa, PAGE_SIZE, PKVM_ID_HOST), which in
    android15-6.6 maps the page back with the default prot
    (host_stage2_idmap_locked), and on the way back up that map walk's
    stage2_coalesce_walk_table_post() turns each table left holding only
    default identity mappings into a block: stage2_try_break_pte (LOCKED,
    kvm_tlb_flush_vmid_range over the block), stage2_make_pte, then
    put_page of the table -- the host frees at once, under the lock."""
    s = ctx.scheme
    yield from s.update_lock()                       # host_lock_component()
    yield page_owner(pa, "host", "guest stage 2 unmapped, hyp_poison_page()")
    ret = yield from host_stage2_set_owner_locked(ctx.host, pa, ctx.host.granule,
                                                  d.PKVM_ID_HOST, mc=ctx.pool)
    yield from s.update_unlock()                     # host_unlock_component()
    return ret


@kernel_path("host CPU (MMU)")
def host_accesses(ctx, tlb: VcpuTlb, pas, lock=None, unlock=None, flags: int = 0):
    """A host CPU at EL1 touches memory: its MMU translates each access
    (s2pt.tlb.hw_translate: TLB, walk cache, then one descriptor per step,
    no lock) and may fill its TLB and walk cache.  A stage-2 translation
    fault traps to EL2: handle_host_mem_abort() -> host_stage2_idmap() maps
    the largest block that fits, under host_mmu.lock (``lock``/``unlock``:
    default, the scheme's fault_lock/fault_unlock; ``flags``: the fault
    walk's, default none), and the access is retried; a page the host
    gave away gets an abort injected instead (Android's host_inject_abort;
    mainline BUG()s).  Each access is retried at most twice here."""
    s = ctx.scheme
    lock = s.fault_lock if lock is None else lock
    unlock = s.fault_unlock if unlock is None else unlock
    for pa in pas:
        for _ in range(3):
            yield hw_walk_start(pa, tlb, "host")     # TLB and walk-cache lookup
            r = yield from hw_translate(tlb, pa)
            if not isinstance(r, Fault):
                ctx.checker.access(tlb.vcpu, r)
                break
            ret = yield from handle_host_mem_abort(ctx.host, pa, ctx.pool, lock, unlock, flags)
            if ret == -EPERM:
                break                                # host_inject_abort(): the host's problem


# The thread's rwlock question, asked of pKVM's host stage 2: could host
# faults and donations share the read side of an rwlock (Oliver Upton's
# sketch: "unmap on the write side and everything else on the read side")?
# A hypothetical EL2 that allows shared walks (Host(el2_shared_walks=True))
# and host_mmu.lock as an rwlock whose read side both paths take.  No
# kernel has it: pKVM has only hyp_spinlock_t.

#: The rwlock the question puts in place of host_mmu.lock's spinlock.
HOST_MMU_RWLOCK = "host_mmu.lock (rwlock)"


@kernel_path(None)
def _host_read_lock():
    yield read_lock(HOST_MMU_RWLOCK)


@kernel_path(None)
def _host_read_unlock():
    yield read_unlock(HOST_MMU_RWLOCK)


@kernel_path(None)
def _host_write_lock():
    yield write_lock(HOST_MMU_RWLOCK)


@kernel_path(None)
def _host_write_unlock():
    yield write_unlock(HOST_MMU_RWLOCK)


#: The hypothetical rwlock's two sides: side -> (lock, unlock).
HOST_MMU_RWLOCK_SIDES = {"read": (_host_read_lock, _host_read_unlock),
                         "write": (_host_write_lock, _host_write_unlock)}


@kernel_path("__pkvm_host_donate_guest")
def pkvm_host_donate_guest_rw(ctx, pa: int, lock, unlock):
    """__pkvm_host_donate_guest() under one side of the rwlock (``lock``,
    ``unlock``): the set-owner walk is shared (cmpxchg; a lost race is
    -EAGAIN and the donation is retried from the start), the page state is
    recorded once the annotation is in."""
    while True:
        yield from lock()
        ret = yield from host_stage2_set_owner_locked(
            ctx.host, pa, ctx.host.granule, d.PKVM_ID_GUEST, mc=ctx.pool,
            flags=pt.SHARED | pt.HANDLE_FAULT)
        if ret != -EAGAIN:
            break
        yield from unlock()
        yield cpu_relax()
    if not ret:
        yield page_owner(pa, "guest", "__host_update_page_state(PKVM_NOPAGE)")
    yield from unlock()
    return ret

