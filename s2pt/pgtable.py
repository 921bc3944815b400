"""The one stage-2 walker and its visitors (arch/arm64/kvm/hyp/pgtable.c).

Every table operation in KVM/arm64 is a *visitor* on one recursive walker:
``kvm_pgtable_walk`` -> ``_kvm_pgtable_walk`` (each concatenated PGD page)
-> ``__kvm_pgtable_walk`` (each entry of one table) <-> ``__kvm_pgtable_visit``
(one entry: call back, reload, maybe descend).  A visitor says which entries
it wants to see with flags:

* ``LEAF``       -- leaf and invalid entries;
* ``TABLE_PRE``  -- table entries on the way down;
* ``TABLE_POST`` -- table entries on the way back up (children first);
* ``SHARED``     -- other walkers may run at the same time: stores become
  cmpxchg, and losing a race returns ``-EAGAIN``;
* ``HANDLE_FAULT`` -- ``-EAGAIN`` stops the walk (a fault handler retries the
  guest instead); otherwise the walk "chugs along".

Map is ``TABLE_PRE | LEAF``; unmap and teardown are ``LEAF | TABLE_POST``;
split, age and the attribute updates are ``LEAF`` only.

**One source, two drivers.**  The walker and the visitors are generator
functions: every access to shared state is one ``yield`` of an operation from
:mod:`s2pt.ops` (``READ_ONCE``, ``cmpxchg``, ``put_page``, ``tlbi`` ...).
``ops.run`` performs them at once (that is ``Stage2.map``); the interleaving
explorer performs them one CPU step at a time.  There is no second copy.

**Bulk runs.**  Python cannot afford one generator step per descriptor for
16 million PTEs, so in sequential mode a visitor may also offer a ``bulk``
function that handles a run of entries inside one table with numpy, for the
cases where every entry of the run takes the same path (e.g. a run of empty
entries being mapped).  Whenever it cannot, it declines and the walker visits
entry by entry.  The tests run random operation sequences both ways and
require identical memory, refcounts and TLBI logs.

Error values are kernel-style negative errnos (``-EAGAIN``, ``-E2BIG`` ...).
"""

from __future__ import annotations

import errno
from enum import IntFlag

import numpy as np

from . import descriptor as d
from .descriptor import (
    KVM_INVALID_PTE_LOCKED, KVM_PTE_LEAF_ATTR_HI_SW, KVM_PTE_LEAF_ATTR_LO_S2_AF,
    KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W, KVM_PTE_LEAF_ATTR_HI_S2_XN, KVM_PTE_LEAF_ATTR_LO,
    KVM_PTE_LEAF_ATTR_HI, kvm_pte_table, kvm_pte_valid,
    stage2_pte_is_locked, stage2_pte_needs_update, stage2_pte_executable,
)
from .errors import KernelBug, S2ptError
from .snapshot import Frozen
from .ops import (READ_ONCE, WRITE_ONCE, smp_store_release, cmpxchg, xchg, get_page,
                  put_page, page_count, zalloc_page, tlbi, dsb, cmo, cpu_relax,
                  memcache_nobjs, set_page_private,
                  rcu_read_lock, rcu_read_unlock, call_rcu)

# numpy's C function, without the Python-level dispatch wrapper (numpy >= 2)
from numpy._core.multiarray import count_nonzero as _count_nonzero


def _zeros_before_first_set(seg) -> int:
    """How many entries of ``seg`` (a uint64 slice of a table page) are 0
    before the first non-zero one; ``len(seg)`` if all are.  What
    ``np.flatnonzero(seg)[0]`` says, without its Python-level wrappers: the
    bulk twins ask this once per table they pass, mostly of one entry."""
    if len(seg) == 1:
        return 0 if seg.item(0) else 1
    nz = seg != 0
    i = int(nz.argmax())
    return i if nz[i] else len(seg)


EAGAIN, E2BIG, ENOMEM, EINVAL, ERANGE, EPERM = (
    errno.EAGAIN, errno.E2BIG, errno.ENOMEM, errno.EINVAL, errno.ERANGE, errno.EPERM)


class WalkFlags(IntFlag):
    """enum kvm_pgtable_walk_flags."""
    LEAF = 1 << 0
    TABLE_PRE = 1 << 1
    TABLE_POST = 1 << 2
    SHARED = 1 << 3
    HANDLE_FAULT = 1 << 4
    SKIP_BBM_TLBI = 1 << 5
    SKIP_CMO = 1 << 6


LEAF, TABLE_PRE, TABLE_POST, SHARED, HANDLE_FAULT, SKIP_BBM_TLBI, SKIP_CMO = (
    int(f) for f in WalkFlags)

#: Not a flag of today's kernel: RFC v1 of the parallel-faults series (April
#: 2022; patches 02-03, "Only read the pte once per visit", "Return the next
#: table from map callbacks") let a callback hand back what it took out of
#: the entry, and the walk followed that instead of reloading the entry.  Its
#: pruning walker needs it: the entry now holds KVM_INVALID_PTE_LOCKED, and
#: the table to descend into is the one the callback swapped out.
FOLLOW_CB = 1 << 16
#: s2pt only, **not a kernel flag**: the model's rendering of Oliver Upton's
#: rwlock sketch in the 2022 thread ("a rwlock with unmap on the write side
#: and everything else on the read side").  A map walk with this flag never
#: replaces a table by a block (stage2_map_walk_table_pre declines), so a
#: fault under the read lock never unlinks a subtree.  It maps no block
#: either: the walk descends, maps pages into the empty entries it meets and
#: stops with -EAGAIN at the first valid leaf that would change only in
#: permissions -- for a permission fault, the faulting page itself, so such
#: a fault maps nothing and returns -EAGAIN every time it is taken (see
#: s2pt.schemes.RwlockScheme).  The ``rwlock`` schemes give it to their
#: read-side faults.
NO_COLLAPSE = 1 << 17


class Walker:
    """struct kvm_pgtable_walker: a callback, its argument, and flags.

    ``bulk`` (s2pt only) optionally handles a run of entries of one table at
    once in sequential mode; see the module docstring.
    """
    __slots__ = ("cb", "arg", "flags", "bulk")

    def __init__(self, cb, arg=None, flags=0, bulk=None):
        self.cb = cb
        self.arg = arg
        self.flags = flags if type(flags) is int else int(flags)
        self.bulk = bulk


class VisitCtx:
    """struct kvm_pgtable_visit_ctx: what a callback sees of one entry.

    ``old`` is the READ_ONCE snapshot taken before the callback; ``pgt``
    stands in for ``mm_ops`` (the kernel passes the mm_ops; the model
    passes the table, whose ``mm`` is the memory).
    """
    __slots__ = ("ptep", "old", "arg", "pgt", "start", "addr", "end", "level", "flags")

    def __init__(self, ptep, old, arg, pgt, start, addr, end, level, flags):
        self.ptep = ptep
        self.old = old
        self.arg = arg
        self.pgt = pgt
        self.start = start
        self.addr = addr
        self.end = end
        self.level = level
        self.flags = flags

    def __repr__(self):
        return (f"<ctx ptep={self.ptep:#x} old={self.old:#x} addr={self.addr:#x} "
                f"level={self.level}>")


class MmOps(Frozen):
    """struct kvm_pgtable_mm_ops, the parts whose choice matters here.

    ``free_unlinked_table(pgt, pgtable, level)`` (a generator function):
    how an unlinked subtree is freed -- :func:`stage2_free_unlinked_table`
    (call_rcu, kernel KVM) or :func:`free_unlinked_table_now` (pKVM's
    host_s2_free_unlinked_table, and the counterfactual "none" scheme).
    ``prune_unlinked_table(pgt, pgtable, level)`` (s2pt; None in every
    kernel since 6.2): RFC v1's pruning of an unlinked subtree *inside* the
    break-before-make window, between the break of the table entry and the
    make of the block (:func:`stage2_prune_unlinked_table`).
    ``dcache_clean_inval_poc`` / ``icache_inval_pou``: whether the owner
    provides cache maintenance at all.  The kernel's callbacks may be NULL,
    and the walker then skips them: kvm_s2_mm_ops has both, pKVM's
    host_mmu.mm_ops (prepare_s2_pool) has neither, so host maps do no CMOs.
    (zalloc_page, get_page, put_page, page_count, phys_to_virt are the
    memory's own, :mod:`s2pt.memory`.)

    **Walker hooks** (s2pt only: no kernel has them).  ``table_enter(ctx,
    childp)`` and ``table_leave(ctx, childp)`` are generator functions that
    a *shared* walk calls around its descent into the child table of entry
    ``ctx.ptep`` (in :func:`__kvm_pgtable_visit`).  ``table_enter`` returns
    the table to descend into, or None to visit the entry again from the
    start (its READ_ONCE, callbacks and reload).  They are what Quentin
    Perret's refcount teardown idea needs (s2pt.schemes: ``refcount``,
    ``refcount-revalidate``).  Exclusive walks never call them: they hold
    ``mmu_lock`` for write, or own the unlinked subtree they free.  None
    (the default) costs no step.  ``rcu_walkers``: shared walks are RCU
    readers (``kvm_pgtable_walk_begin`` takes ``rcu_read_lock``); a scheme
    that protects walkers otherwise turns it off.  ``walker_count``: where
    the hooks' walker count lives in struct page (s2pt.memory): "_refcount"
    (a count whose meaning survives the page's reallocation, so that
    get_page_unless_zero on a freed page is legal) or "ptdesc" (a field of
    the page-table descriptor that the page's next owner reuses: the
    mutation walker-count-in-ptdesc).
    """
    __slots__ = ("free_unlinked_table", "dcache_clean_inval_poc", "icache_inval_pou",
                 "prune_unlinked_table", "table_enter", "table_leave", "rcu_walkers",
                 "walker_count")

    def __init__(self, free_unlinked_table=None, dcache_clean_inval_poc: bool = True,
                 icache_inval_pou: bool = True, prune_unlinked_table=None, table_enter=None,
                 table_leave=None, rcu_walkers: bool = True, walker_count: str = "_refcount"):
        self.free_unlinked_table = (stage2_free_unlinked_table if free_unlinked_table is None
                                    else free_unlinked_table)
        self.dcache_clean_inval_poc = dcache_clean_inval_poc
        self.icache_inval_pou = icache_inval_pou
        self.prune_unlinked_table = prune_unlinked_table
        if (table_enter is None) != (table_leave is None):
            raise S2ptError("MmOps: table_enter and table_leave come together (both or "
                            "neither): a reference taken on the way down is dropped on the "
                            "way back")
        self.table_enter = table_enter
        self.table_leave = table_leave
        self.rcu_walkers = rcu_walkers
        if walker_count not in ("_refcount", "ptdesc"):
            raise S2ptError(f"MmOps: walker_count={walker_count!r}: the walker count lives in "
                            f"'_refcount' (a count whose meaning survives the page's "
                            f"reallocation) or 'ptdesc' (a field of the page-table "
                            f"descriptor: the mutation walker-count-in-ptdesc)")
        self.walker_count = walker_count

    def __repr__(self):
        out = (f"MmOps(free_unlinked_table={self.free_unlinked_table.__name__}, "
               f"dcache_clean_inval_poc={self.dcache_clean_inval_poc}, "
               f"icache_inval_pou={self.icache_inval_pou}")
        if self.prune_unlinked_table is not None:
            out += f", prune_unlinked_table={self.prune_unlinked_table.__name__}"
        if self.table_enter is not None:
            out += (f", table_enter={self.table_enter.__name__}, "
                    f"table_leave={self.table_leave.__name__}")
        if not self.rcu_walkers:
            out += ", rcu_walkers=False"
        if self.walker_count != "_refcount":
            out += f", walker_count={self.walker_count!r}"
        return out + ")"


class WalkData:
    """struct kvm_pgtable_walk_data (start, addr, end) plus the bulk switch."""
    __slots__ = ("walker", "start", "addr", "end", "bulk")

    def __init__(self, walker, start, addr, end, bulk=False):
        self.walker = walker
        self.start = start
        self.addr = addr
        self.end = end
        self.bulk = walker.bulk if bulk else None


# ---------------------------------------------------------------------------
# The walker
# ---------------------------------------------------------------------------

def kvm_pgtable_walk_continue(walker: Walker, r: int) -> bool:
    """-EAGAIN stops only a HANDLE_FAULT walk; any other error stops all."""
    if r == -EAGAIN:
        return not (walker.flags & HANDLE_FAULT)
    return not r


def __kvm_pgtable_visit(data: WalkData, pgt, ptep: int, level: int):
    walker = data.walker
    flags = walker.flags
    old = yield READ_ONCE(ptep)
    ctx = VisitCtx(ptep, old, walker.arg, pgt, data.start, data.addr, data.end, level, flags)
    ret = 0
    reload = False
    table = kvm_pte_table(old, level)

    if table and flags & TABLE_PRE:
        ret = yield from walker.cb(ctx, TABLE_PRE)
        # Before a9f0e3d5a089 only LEAF callbacks were followed by a reload;
        # the bug a9f0e3d5a089 (s2pt.bugs) brings that back.
        reload = pgt.reload_after_cb
    if not table and flags & LEAF:
        ret = yield from walker.cb(ctx, LEAF)
        reload = True

    # Reload the entry after the callback "to allow the walker to descend
    # into a newly installed or replaced table" (a9f0e3d5a089).  Without it,
    # a TABLE_PRE callback that replaced the table with a block and freed
    # the old table synchronously would be followed by a walk of freed memory.
    if reload:
        if not flags & FOLLOW_CB:
            ctx.old = yield READ_ONCE(ptep)
        table = kvm_pte_table(ctx.old, level)

    # "if (!kvm_pgtable_walk_continue(data->walker, ret)) goto out;".  In
    # this innermost loop ret is almost always 0, which always continues:
    # "ret and" skips the call then, with the same result.
    if ret and not kvm_pgtable_walk_continue(walker, ret):
        return ret
    if not table:
        gran = pgt.granule_size[level]
        data.addr = (data.addr & ~(gran - 1)) + gran
        return 0

    childp = ctx.old & pgt.addr_mask
    # The walker hooks (MmOps): only shared walks, only when a scheme sets them.
    enter = pgt.mm_ops.table_enter if flags & SHARED else None
    if enter is not None:
        childp = yield from enter(ctx, childp)
        if childp is None:
            # The entry no longer points at the table whose pointer was read:
            # visit it again from the start.
            return (yield from __kvm_pgtable_visit(data, pgt, ptep, level))
    ret = yield from __kvm_pgtable_walk(data, pgt, childp, level + 1)
    if ret and not kvm_pgtable_walk_continue(walker, ret):
        if enter is not None:
            yield from pgt.mm_ops.table_leave(ctx, childp)
        return ret

    if flags & TABLE_POST:
        ret = yield from walker.cb(ctx, TABLE_POST)
    if enter is not None:
        yield from pgt.mm_ops.table_leave(ctx, childp)

    # out:
    if not ret or kvm_pgtable_walk_continue(walker, ret):
        return 0
    return ret


def __kvm_pgtable_walk(data: WalkData, pgt, table: int, level: int):
    """Visit the entries of one table, from the index of data.addr onwards."""
    if level < 0 or level > 3:
        pgt.warn("__kvm_pgtable_walk: level out of range")
        return -EINVAL
    ptrs = pgt.ptrs_per_pte
    idx = (data.addr >> pgt.granule_shift[level]) & (ptrs - 1)
    bulk = data.bulk
    ret = 0
    while idx < ptrs:
        if data.addr >= data.end:
            break
        if bulk is not None:
            n = bulk(data, pgt, table, level, idx)
            if n:
                idx += n
                continue
        ret = yield from __kvm_pgtable_visit(data, pgt, table + 8 * idx, level)
        if ret:
            break
        idx += 1
    return ret


def _kvm_pgtable_walk(pgt, data: WalkData):
    limit = 1 << pgt.ia_bits
    if data.addr > limit or data.end > limit:
        return -ERANGE
    idx = pgt.pgd_page_idx(data.addr)
    ret = 0
    while data.addr < data.end:
        ret = yield from __kvm_pgtable_walk(data, pgt, pgt.pgd + idx * pgt.page_size,
                                            pgt.start_level)
        if ret:
            break
        idx += 1
    return ret


def kvm_pgtable_walk_begin(pgt, walker: Walker):
    """Shared walks are RCU readers in the kernel; at EL2 they are refused.
    (A scheme whose walkers are protected otherwise -- the refcount schemes
    -- sets ``mm_ops.rcu_walkers = False``: no rcu_read_lock step.)"""
    if walker.flags & SHARED:
        if pgt.hyp:
            # "only non-shared table walkers are allowed in the hypervisor"
            return -EPERM
        # pgt.shared_walk_rcu False: the bug "no-rcu-read-lock" (no kernel
        # commit, s2pt.bugs), a shared walker that is no RCU reader.
        # mm_ops.rcu_walkers = False: a scheme whose walkers are protected
        # otherwise (the refcount schemes), no RCU reader by design.
        if pgt.shared_walk_rcu and pgt.mm_ops.rcu_walkers:
            yield rcu_read_lock()
    return 0


def kvm_pgtable_walk_end(pgt, walker: Walker):
    if walker.flags & SHARED and not pgt.hyp and pgt.shared_walk_rcu and pgt.mm_ops.rcu_walkers:
        yield rcu_read_unlock()


def kvm_pgtable_walk(pgt, addr: int, size: int, walker: Walker, bulk: bool = False):
    """Walk [addr, addr + size) of ``pgt`` with ``walker``; 0 or -errno."""
    page_mask = pgt.page_size - 1
    start = addr & ~page_mask
    end = (start + size + page_mask) & ~page_mask
    # Bulk numpy runs only under the sequential driver with nobody watching
    # (Machine.bulk_ok): a walk stepped by the explorer must yield every access.
    data = WalkData(walker, start, start, end, bulk and pgt.machine.bulk_ok)
    shared = walker.flags & SHARED
    if shared:
        r = yield from kvm_pgtable_walk_begin(pgt, walker)
        if r:
            return r
    r = yield from _kvm_pgtable_walk(pgt, data)
    if shared:
        yield from kvm_pgtable_walk_end(pgt, walker)
    return r


# ---------------------------------------------------------------------------
# get_leaf
# ---------------------------------------------------------------------------

class LeafWalkData:
    __slots__ = ("pte", "level")

    def __init__(self):
        self.pte, self.level = 0, None


def leaf_walker(ctx, visit):
    ctx.arg.pte = ctx.old
    ctx.arg.level = ctx.level
    return 0
    yield  # a generator that performs no operation


def kvm_pgtable_get_leaf(pgt, addr: int, out: LeafWalkData, flags: int = 0):
    """The leaf (or invalid entry) that translates ``addr``, and its level."""
    walker = Walker(leaf_walker, out, LEAF | flags)
    ret = yield from kvm_pgtable_walk(pgt, addr & ~(pgt.page_size - 1), pgt.page_size, walker)
    return ret


# ---------------------------------------------------------------------------
# Break-before-make primitives
# ---------------------------------------------------------------------------

def stage2_try_set_pte(ctx: VisitCtx, new: int):
    """WRITE_ONCE when the walk is exclusive, cmpxchg when it is shared."""
    if not ctx.flags & SHARED:
        yield WRITE_ONCE(ctx.ptep, new)
        return True
    return (yield cmpxchg(ctx.ptep, ctx.old, new)) == ctx.old


def kvm_tlb_flush_vmid_range(pgt, addr: int, size: int):
    """Range TLBIs (FEAT_TLBIRANGE, which the modelled CPU has) in chunks of
    MAX_TLBI_RANGE_PAGES; without it the kernel flushes the whole VMID."""
    if not pgt.tlb_range:
        yield tlbi("vmid")
        return
    max_bytes = pgt.max_tlbi_range_pages * pgt.page_size
    while size > 0:
        chunk = min(size, max_bytes)
        yield tlbi("range", addr, chunk)
        addr += chunk
        size -= chunk


def stage2_try_break_pte(ctx: VisitCtx, mmu=None):
    """Invalidate an entry by the architecture's break-before-make rules.

    Installs KVM_INVALID_PTE_LOCKED (with cmpxchg on a shared walk, so the
    break doubles as a per-entry lock: a loser gets false, i.e. -EAGAIN),
    invalidates the TLB for the evicted entry (the whole block range for a
    table, the one IPA for a valid leaf) and drops the old entry's reference
    on the containing table.  Returns True if the entry was broken.
    """
    pgt = ctx.pgt
    if stage2_pte_is_locked(ctx.old):
        # "Should never occur if this walker has exclusive access"
        if not ctx.flags & SHARED:
            pgt.warn("stage2_try_break_pte: entry already locked on an exclusive walk")
        return False
    if not (yield from stage2_try_set_pte(ctx, KVM_INVALID_PTE_LOCKED)):
        return False
    if not ctx.flags & SKIP_BBM_TLBI:
        if kvm_pte_table(ctx.old, ctx.level):
            if pgt.table_break_flushes_vmid:
                # RFC v1 (and v6.2 to v6.5): the whole VMID
                yield tlbi("vmid")                    # __kvm_tlb_flush_vmid
            else:
                size = pgt.granule_size[ctx.level]
                yield from kvm_tlb_flush_vmid_range(pgt, ctx.addr & ~(size - 1), size)
        elif kvm_pte_valid(ctx.old):
            yield tlbi("ipa", ctx.addr, ctx.level)
    if ctx.pgt.pte_is_counted(ctx.old, ctx.level):
        yield put_page(ctx.ptep)
    return True


def stage2_make_pte(ctx: VisitCtx, new: int):
    """Finish a break-before-make: take the new entry's reference, publish it."""
    cur = yield READ_ONCE(ctx.ptep)
    if not stage2_pte_is_locked(cur):
        ctx.pgt.warn("stage2_make_pte: entry not locked")
    if ctx.pgt.pte_is_counted(new, ctx.level):
        yield get_page(ctx.ptep)
    yield smp_store_release(ctx.ptep, new)


# ---------------------------------------------------------------------------
# Map: kvm_pgtable_stage2_map / set_owner / create_unlinked
# ---------------------------------------------------------------------------

class Stage2MapData:
    """struct stage2_map_data.  ``anchor`` and ``childp`` are v6.1's (the
    table entry a collapse cleared, and the table it pointed to); they stay
    None on today's walker."""
    __slots__ = ("phys", "attr", "owner_id", "memcache", "force_pte", "annotation", "anchor",
                 "childp")

    def __init__(self, phys=0, attr=0, owner_id=0, memcache=None, force_pte=False,
                 annotation=False):
        self.phys = phys
        self.attr = attr
        self.owner_id = owner_id
        self.memcache = memcache
        self.force_pte = force_pte
        self.annotation = annotation
        self.anchor = None
        self.childp = None


def stage2_map_walker_phys_addr(ctx: VisitCtx, data: Stage2MapData) -> int:
    """The PA to map at ctx.addr: the walk's start PA plus how far the walk
    has got in IPA (1f0f4a2ef7a5, "Infer the PA offset from IPA in stage-2
    map walker": the IPA is the one source of truth).

    Before that fix (``pgt.map_phys_from_ipa`` False: the bug 1f0f4a2ef7a5)
    the map data carried its own PA, which stage2_map_walker_try_leaf()
    advanced by a granule after each leaf it installed, while the walker
    advanced the IPA only when the reloaded entry was a leaf.  A vCPU that
    installed a block and, on reloading, found that another vCPU had already
    replaced it by a table descended with the PA one block ahead of the IPA."""
    if not ctx.pgt.map_phys_from_ipa:
        return data.phys
    return data.phys + (ctx.addr - ctx.start)


def stage2_leaf_mapping_allowed(ctx: VisitCtx, data: Stage2MapData) -> bool:
    """force_pte forbids blocks; otherwise kvm_block_mapping_supported()."""
    if data.force_pte and ctx.level < 3:
        return False
    if data.annotation:
        return True
    pgt = ctx.pgt
    level = ctx.level
    if not pgt.supports_block(level):
        return False
    gran = pgt.granule_size[level]
    if gran > ctx.end - ctx.addr:
        return False
    phys = stage2_map_walker_phys_addr(ctx, data)
    return not (phys & (gran - 1)) and not (ctx.addr & (gran - 1))


def stage2_put_pte(ctx: VisitCtx):
    """v6.1's stage2_put_pte(): "Clear the existing PTE, and perform
    break-before-make with TLB maintenance if it was valid", then drop the
    entry's reference.  No KVM_INVALID_PTE_LOCKED, no cmpxchg: before v6.2
    every walk was exclusive, so the cleared entry needed no lock.  (Today
    the map path breaks with stage2_try_break_pte; unmap keeps a clear.)"""
    if kvm_pte_valid(ctx.old):
        yield WRITE_ONCE(ctx.ptep, 0)        # kvm_clear_pte
        if not ctx.flags & SKIP_BBM_TLBI:
            yield tlbi("ipa", ctx.addr, ctx.level)   # __kvm_tlb_flush_vmid_ipa
    yield put_page(ctx.ptep)


def stage2_map_walker_try_leaf(ctx: VisitCtx, data: Stage2MapData):
    pgt = ctx.pgt
    if not stage2_leaf_mapping_allowed(ctx, data):
        return -E2BIG
    phys = stage2_map_walker_phys_addr(ctx, data)
    if not data.annotation:
        new = d.kvm_init_valid_leaf_pte(phys, data.attr, ctx.level, pgt.page_shift)
    else:
        new = d.kvm_init_invalid_leaf_owner(data.owner_id)

    # "Skip updating the PTE if we are trying to recreate the exact same
    # mapping or only change the access permissions.  Instead, the vCPU will
    # exit one more time from guest if still needed and then go through the
    # path of relaxing permissions."  (v6.1 asked only when the old entry
    # was counted; an uncounted one is empty, and needs an update anyway.)
    if not stage2_pte_needs_update(ctx.old, new):
        return -EAGAIN

    if pgt.pre_6_2:
        # v6.1: clear the old entry (with its TLBI) and drop its reference.
        if pgt.pte_is_counted(ctx.old, ctx.level):
            yield from stage2_put_pte(ctx)
    else:
        # "If we're only changing software bits, then store them and go!"
        if not ctx.flags & SHARED and not ((ctx.old ^ new) & ~KVM_PTE_LEAF_ATTR_HI_SW):
            old_counted = pgt.pte_is_counted(ctx.old, ctx.level)
            if old_counted != pgt.pte_is_counted(new, ctx.level):
                yield put_page(ctx.ptep) if old_counted else get_page(ctx.ptep)
            if not (yield from stage2_try_set_pte(ctx, new)):
                pgt.warn("stage2_map_walker_try_leaf: exclusive store failed")
            if not pgt.map_phys_from_ipa and not data.annotation:
                data.phys += pgt.granule_size[ctx.level]     # before 1f0f4a2ef7a5
            return 0

        if not (yield from stage2_try_break_pte(ctx)):
            return -EAGAIN

        # RFC v1 only (mm_ops->prune_unlinked_table): a table entry just broken
        # for a block has its subtree locked and torn down here, before the make:
        # the entry stays LOCKED all that time.
        prune = pgt.mm_ops.prune_unlinked_table
        if prune is not None and kvm_pte_table(ctx.old, ctx.level):
            yield from prune(pgt, ctx.old & pgt.addr_mask, ctx.level)

    # Perform CMOs before installation of the guest stage-2 PTE (only where
    # the owner's mm_ops provide them: pKVM's host stage 2 has none).
    gran = pgt.granule_size[ctx.level]
    mm_ops = pgt.mm_ops
    if (not ctx.flags & SKIP_CMO and mm_ops.dcache_clean_inval_poc
            and d.stage2_pte_cacheable(new, pgt.fwb) and not pgt.fwb):
        yield cmo("dcache_clean_inval_poc", phys, gran)
    if not ctx.flags & SKIP_CMO and mm_ops.icache_inval_pou and stage2_pte_executable(new):
        yield cmo("icache_inval_pou", phys, gran)

    if pgt.pre_6_2:
        # v6.1: "smp_store_release(ptep, new); if (stage2_pte_is_counted(new))
        # mm_ops->get_page(ptep);"
        yield smp_store_release(ctx.ptep, new)
        if pgt.pte_is_counted(new, ctx.level):
            yield get_page(ctx.ptep)
    else:
        yield from stage2_make_pte(ctx, new)
    if not pgt.map_phys_from_ipa and not data.annotation:
        data.phys += gran           # "data->phys += granule", before 1f0f4a2ef7a5
    return 0


def stage2_map_walk_table_pre(ctx: VisitCtx, data: Stage2MapData):
    """A table where a block could go: replace it (collapse) and free it.

    try_leaf breaks the *table* entry (TLBI over the whole block range) and
    installs the block; the detached subtree goes to
    mm_ops->free_unlinked_table: call_rcu in the kernel, at once in pKVM.

    A walk with the model's NO_COLLAPSE flag (not a kernel flag: the
    ``rwlock`` scheme's rendering of Oliver Upton's sketch) declines here,
    so the walk descends and maps inside the table instead.

    **v6.1** (``pgt.kernel == "6.1"``): "The idea is that the TABLE_PRE
    callback runs for table entries on the way down, looking for table
    entries which we could conceivably replace with a block entry for this
    mapping.  If it finds one, then it sets the 'anchor' field in 'struct
    stage2_map_data' to point at the table entry, before clearing the entry
    to zero and descending into the now detached table."  It flushes the
    whole VMID ("as we may have numerous leaf entries below us which would
    otherwise need invalidating individually"); the leaf visits below the
    anchor drop their references and stage2_map_walk_table_post frees the
    tables on the way up and installs the block at the anchor -- the
    break-before-make window spans the whole teardown.  5c359cca1faf (v6.2)
    moved the teardown after the make.
    """
    pgt = ctx.pgt
    childp = ctx.old & pgt.addr_mask
    if ctx.flags & NO_COLLAPSE:
        return 0
    if pgt.pre_6_2 and data.anchor is not None:
        return 0
    if not stage2_leaf_mapping_allowed(ctx, data):
        return 0
    if pgt.pre_6_2:
        data.childp = childp
        yield WRITE_ONCE(ctx.ptep, 0)                 # kvm_clear_pte
        if not ctx.flags & SKIP_BBM_TLBI:
            yield tlbi("vmid")                        # __kvm_tlb_flush_vmid
        data.anchor = ctx.ptep
        return 0
    ret = yield from stage2_map_walker_try_leaf(ctx, data)
    if ret:
        return ret
    yield from pgt.mm_ops.free_unlinked_table(pgt, childp, ctx.level)
    return 0


def stage2_map_walk_table_post(ctx: VisitCtx, data: Stage2MapData):
    """v6.1 only: "the TABLE_POST callback does nothing if the anchor has
    not been set, but otherwise frees the page-table pages while walking
    back up the page-table, installing the block entry when it revisits the
    anchor pointer and clearing the anchor to NULL."  Each table below the
    anchor is put twice (its own last reference, and its parent entry's on
    the parent); at the anchor the block goes in first (stage2_map_walk_leaf
    on the cleared entry), then the old table's page goes."""
    if data.anchor is None:
        return 0
    ret = 0
    if data.anchor == ctx.ptep:
        childp = data.childp
        data.anchor = data.childp = None
        ctx.old = yield READ_ONCE(ctx.ptep)           # stage2_map_walk_leaf: pte = *ptep
        ret = yield from stage2_map_walk_leaf(ctx, data)
    else:
        childp = (yield READ_ONCE(ctx.ptep)) & ctx.pgt.addr_mask   # kvm_pte_follow(*ptep)
    yield put_page(childp)
    yield put_page(ctx.ptep)
    return ret


def stage2_map_walk_leaf(ctx: VisitCtx, data: Stage2MapData):
    """Install a leaf; where none fits, replace the entry with an empty table.

    "If we've run into an existing block mapping then replace it with a
    table.  Accesses beyond 'end' that fall within the new table will be
    mapped lazily."  The reload then descends into the new table.
    """
    pgt = ctx.pgt
    if data.anchor is not None:
        # v6.1, below the anchor: "we drop references to all valid leaves so
        # that the pages beneath the anchor can be freed".
        if pgt.pte_is_counted(ctx.old, ctx.level):
            yield put_page(ctx.ptep)
        return 0
    ret = yield from stage2_map_walker_try_leaf(ctx, data)
    if ret != -E2BIG:
        return ret
    if ctx.level == 3:
        pgt.warn("stage2_map_walk_leaf: no leaf allowed at the last level")
        return -EINVAL
    if data.memcache is None:
        return -ENOMEM
    childp = yield zalloc_page(data.memcache)
    if childp is None:
        return -ENOMEM
    if pgt.prefault_block:
        if pgt.idmap and pgt.pte_is_counted(ctx.old, ctx.level):
            pgt.warn("stage2_map_walk_leaf: the block being split is counted")
        yield from stage2_map_prefault_block(ctx, childp)
    if pgt.pre_6_2:
        # v6.1: clear the block (stage2_put_pte), then kvm_set_table_pte()
        # (smp_store_release) and take the new entry's reference.
        if pgt.pte_is_counted(ctx.old, ctx.level):
            yield from stage2_put_pte(ctx)
        yield smp_store_release(ctx.ptep, d.kvm_init_table_pte(childp, pgt.page_shift))
        yield get_page(ctx.ptep)
        return 0
    if not (yield from stage2_try_break_pte(ctx)):
        yield put_page(childp)
        return -EAGAIN
    new = d.kvm_init_table_pte(childp, ctx.pgt.page_shift)
    yield from stage2_make_pte(ctx, new)
    return 0


def stage2_map_prefault_block(ctx: VisitCtx, childp: int):
    """Android (KVM_PGTABLE_S2_PREFAULT_BLOCK; android15-6.6's
    stage2_map_prefault_block): fill the table that replaces a valid block
    with copies of the block ("We can write non-atomically: ptep isn't yet
    live").  "Skip ptes in the range being modified by the caller if we're
    installing last level entries.  Otherwise, we need to temporarily put in
    a valid mapping to make sure the prefaulting logic is triggered on the
    next stage2_map_walk_leaf()": splitting a block above level 2 fills every
    entry.  A counted copy takes its reference.  Mainline leaves the new
    table empty and lets the rest fault back lazily."""
    pgt = ctx.pgt
    block = ctx.old
    if not kvm_pte_valid(block):
        return
    level = ctx.level + 1
    gran = pgt.granule_size[level]
    pa = block & pgt.addr_mask & ~(pgt.granule_size[ctx.level] - 1)
    counted = pgt.pte_is_counted(block, level)
    for i in range(pgt.ptrs_per_pte):
        if ctx.level < 2 or pa < ctx.addr or pa >= ctx.end:
            yield WRITE_ONCE(childp + 8 * i,
                             d.kvm_init_valid_leaf_pte(pa, block, level, pgt.page_shift))
            if counted:
                yield get_page(childp + 8 * i)
        pa += gran


def stage2_map_walker(ctx: VisitCtx, visit: int):
    data = ctx.arg
    if visit == TABLE_PRE:
        return (yield from stage2_map_walk_table_pre(ctx, data))
    if visit == LEAF:
        return (yield from stage2_map_walk_leaf(ctx, data))
    if visit == TABLE_POST and ctx.pgt.pre_6_2:
        return (yield from stage2_map_walk_table_post(ctx, data))
    return -EINVAL


def stage2_map_bulk(data: WalkData, pgt, table: int, level: int, idx: int) -> int:
    """Bulk twin of stage2_map_walk_leaf for a run of *empty* entries where a
    leaf is allowed: each becomes a fresh leaf (break of an empty entry
    issues no TLBI; make takes one reference each)."""
    if not pgt.counts_every_entry or not pgt.map_phys_from_ipa:
        return 0          # the numpy twin assumes "counted = non-zero" and 1f0f4a2ef7a5
    mdata = data.walker.arg
    if (mdata.annotation or mdata.anchor is not None or (mdata.force_pte and level < 3)
            or not pgt.supports_block(level)):
        return 0
    gran = pgt.granule_size[level]
    addr = data.addr
    phys = mdata.phys + (addr - data.start)
    if addr & (gran - 1) or phys & (gran - 1):
        return 0
    n = min(pgt.ptrs_per_pte - idx, (data.end - addr) // gran)
    if n < 2:
        return 0          # a single entry: the per-entry visit is cheaper
    page = pgt.mm.pages[table >> pgt.page_shift]
    if page.freed:
        return 0
    seg = page.table[idx:idx + n]
    first = _zeros_before_first_set(seg)
    if first < n:
        n = first
        if n == 0:
            return 0
        seg = seg[:n]
    new = d.kvm_init_valid_leaf_pte(phys, mdata.attr, level, pgt.page_shift)
    np.add(pgt.strides[level][:n], np.uint64(new), out=seg)
    page.refcount += n
    if not data.walker.flags & SKIP_CMO:
        stats, mm_ops = pgt.machine.stats, pgt.mm_ops
        if mm_ops.dcache_clean_inval_poc and d.stage2_pte_cacheable(new, pgt.fwb) and not pgt.fwb:
            stats["dcache_clean_inval_poc"] += n
        if mm_ops.icache_inval_pou and stage2_pte_executable(new):
            stats["icache_inval_pou"] += n
    data.addr = addr + n * gran
    return n


def kvm_pgtable_stage2_map(pgt, addr: int, size: int, phys: int, attr: int, mc,
                           flags: int = 0, force_pte: bool = False, bulk: bool = False,
                           data: Stage2MapData | None = None, cb=None):
    """Map [addr, addr+size) to phys with leaf attributes ``attr``.

    Kernel: ``prot`` is turned into ``attr`` by stage2_set_prot_attr() inside;
    here the caller passes the attribute bits (Stage2.map computes them) so
    that bad prot strings are rejected before anything runs.  ``data`` lets
    the caller keep its own counters; ``cb`` is Android's map walker, which
    adds a ``TABLE_POST`` visit (s2pt.pkvm.host_map_walker, android15-6.6's
    coalescing); the walk then asks for ``TABLE_POST`` too.
    """
    force = force_pte or (pgt.force_pte_cb is not None
                          and pgt.force_pte_cb(addr, addr + size, attr))
    if data is None:
        data = Stage2MapData(phys & ~(pgt.page_size - 1), attr, 0, mc, force)
    else:
        data.phys, data.attr, data.owner_id = phys & ~(pgt.page_size - 1), attr, 0
        data.memcache, data.force_pte, data.annotation = mc, force, False
    # Since v6.2 the map walk has no TABLE_POST; v6.1's tore the subtree
    # down and installed the block there, and Android's coalesces there.
    post = TABLE_POST if pgt.pre_6_2 or cb is not None else 0
    walker = Walker(stage2_map_walker if cb is None else cb, data,
                    flags | TABLE_PRE | LEAF | post, stage2_map_bulk)
    if pgt.idmap and addr != phys:
        pgt.warn("kvm_pgtable_stage2_map: identity map with addr != phys")
        return -EINVAL
    ret = yield from kvm_pgtable_walk(pgt, addr, size, walker, bulk)
    yield dsb("ishst")
    return ret


def kvm_pgtable_stage2_set_owner(pgt, addr: int, size: int, mc, owner_id: int,
                                 bulk: bool = False, data: Stage2MapData | None = None,
                                 flags: int = 0, cb=None):
    """Annotate [addr, addr+size) as owned by ``owner_id`` (pKVM): invalid,
    counted leaves at page granularity; covering blocks are broken.

    Mainline (and android15-6.6's kvm_pgtable_stage2_annotate) walks
    ``TABLE_PRE | LEAF`` with stage2_map_walker; ``cb`` is a visitor that
    adds a ``TABLE_POST`` visit, and the walk then asks for it too.  ``data``
    lets the caller keep its own counters."""
    if owner_id > pgt.max_owner_id:
        return -EINVAL
    if data is None:
        data = Stage2MapData()
    data.memcache, data.owner_id = mc, owner_id
    data.force_pte, data.annotation = True, True
    if cb is None:
        post = TABLE_POST if pgt.pre_6_2 else 0          # v6.1: the anchor's TABLE_POST
        walker = Walker(stage2_map_walker, data, flags | TABLE_PRE | LEAF | post)
    else:
        walker = Walker(cb, data, flags | TABLE_PRE | LEAF | TABLE_POST)
    return (yield from kvm_pgtable_walk(pgt, addr, size, walker, bulk))


def kvm_pgtable_stage2_create_unlinked(pgt, phys: int, level: int, prot: int, mc,
                                       force_pte: bool, bulk: bool = False):
    """Build a detached subtree mapping one block's worth at ``level``.

    Not yet reachable, so no break-before-make TLBIs and no CMOs.  Returns
    the new table's PA or a negative errno.
    """
    # kvm_pgtable_stage2_pte_prot() reports no memory type, so the new
    # leaves are normal memory: eager splitting only ever meets RAM.
    attr = d.stage2_set_prot_attr(prot, "normal", pgt.fwb)
    data = Stage2MapData(phys=phys, attr=attr, memcache=mc, force_pte=force_pte)
    walker = Walker(stage2_map_walker, data, LEAF | SKIP_BBM_TLBI | SKIP_CMO, stage2_map_bulk)
    if phys & (pgt.granule_size[level] - 1):
        return -EINVAL
    pgtable = yield zalloc_page(mc)
    if pgtable is None:
        return -ENOMEM
    wd = WalkData(walker, 0, 0, pgt.granule_size[level], bulk)
    ret = yield from __kvm_pgtable_walk(wd, pgt, pgtable, level + 1)
    if ret:
        yield from kvm_pgtable_stage2_free_unlinked(pgt, pgtable, level)
        if not pgt.free_unlinked_once:
            yield put_page(pgtable)      # the double put c60d847be7b8 removed
        return ret
    return pgtable


# ---------------------------------------------------------------------------
# Unmap
# ---------------------------------------------------------------------------

def stage2_unmap_put_pte(ctx: VisitCtx):
    """Clear the entry (break-before-make if it was valid) and drop its ref.

    An entry the table does not count (Android's host stage 2: a default
    identity leaf) is only cleared -- ACK's stage2_clear_pte() instead of
    stage2_put_pte().
    """
    if kvm_pte_valid(ctx.old):
        yield WRITE_ONCE(ctx.ptep, 0)        # kvm_clear_pte
        if kvm_pte_table(ctx.old, ctx.level):
            yield tlbi("ipa", ctx.addr, None)   # TLBI_TTL_UNKNOWN
        elif not ctx.pgt.unmap_defer_tlb_flush:
            yield tlbi("ipa", ctx.addr, ctx.level)
    if ctx.pgt.pte_is_counted(ctx.old, ctx.level):
        yield put_page(ctx.ptep)


def stage2_unmap_walker(ctx: VisitCtx, visit: int):
    pgt = ctx.pgt
    childp = None
    need_flush = False
    if not kvm_pte_valid(ctx.old):
        if pgt.pte_is_counted(ctx.old, ctx.level):
            yield WRITE_ONCE(ctx.ptep, 0)
            yield put_page(ctx.ptep)
        return 0
    if kvm_pte_table(ctx.old, ctx.level):
        childp = ctx.old & pgt.addr_mask
        if (yield page_count(childp)) != 1:
            return 0
    elif d.stage2_pte_cacheable(ctx.old, pgt.fwb):
        need_flush = not pgt.fwb and pgt.mm_ops.dcache_clean_inval_poc
    # "We unmap the entire block entry and rely on the remaining portions
    # being faulted back lazily."
    yield from stage2_unmap_put_pte(ctx)
    if need_flush:
        yield cmo("dcache_clean_inval_poc", ctx.old & pgt.addr_mask,
                  pgt.granule_size[ctx.level])
    if childp is not None:
        yield put_page(childp)
    return 0


def _runs(mask: np.ndarray):
    """(start, length) of each run of True in a boolean array."""
    if not len(mask):
        return []
    m = np.concatenate(([False], mask, [False]))
    edges = np.flatnonzero(m[1:] != m[:-1])
    return list(zip(edges[::2].tolist(), (edges[1::2] - edges[::2]).tolist()))


def _leaf_run(pgt, data: WalkData, table: int, level: int, idx: int):
    """The run of entries from idx that the walk will visit in this table and
    that are all empty or valid leaves: (page, seg, n), or None."""
    page = pgt.mm.pages[table >> pgt.page_shift]
    if page.freed:
        return None
    shift = pgt.granule_shift[level]
    n = min(pgt.ptrs_per_pte - idx, ((data.end - 1) >> shift) - (data.addr >> shift) + 1)
    if n < 2:
        return None       # a single entry: the per-entry visit is cheaper
    seg = page.table[idx:idx + n]
    if level < 3:
        ok = (seg == 0) | ((seg & np.uint64(3)) == np.uint64(1))
    else:
        ok = (seg == 0) | ((seg & np.uint64(1)) == np.uint64(1))
    if not ok.all():
        n = int(np.argmin(ok))
        seg = seg[:n]
    return page, seg, n


def stage2_unmap_bulk(data: WalkData, pgt, table: int, level: int, idx: int) -> int:
    """Bulk twin of stage2_unmap_walker for runs of empty and valid-leaf entries."""
    if not pgt.counts_every_entry:
        return 0          # the numpy twin assumes "counted = non-zero"
    r = _leaf_run(pgt, data, table, level, idx)
    if r is None or r[2] == 0:
        return 0
    page, seg, n = r
    gran = pgt.granule_size[level]
    base = data.addr & ~(gran - 1)
    valid = seg != 0
    cnt = int(np.count_nonzero(valid))
    if cnt:
        if not pgt.unmap_defer_tlb_flush:
            for start, length in _runs(valid):
                # The first entry's ctx.addr is data.addr itself (maybe not
                # block-aligned when a partial range hits a block).
                first = data.addr if start == 0 else base + start * gran
                pgt.mmu.tlbi("ipa", first, level)
                pgt.mmu.tlbi_run("ipa", base + (start + 1) * gran, level, length - 1, gran)
                pgt.machine.stats["tlbi"] += length
        if not pgt.fwb and pgt.mm_ops.dcache_clean_inval_poc:
            memattr = (seg[valid] & np.uint64(d.KVM_PTE_LEAF_ATTR_LO_S2_MEMATTR)) >> np.uint64(2)
            pgt.machine.stats["dcache_clean_inval_poc"] += int(
                np.count_nonzero(memattr == np.uint64(d.MT_S2_NORMAL)))
        seg[valid] = 0
        page.refcount -= cnt
        if page.refcount <= 0:
            raise KernelBug("refcount", f"stage2_unmap_bulk: table {page.pa:#x} refcount underflow")
    data.addr = base + n * gran
    return n


def kvm_pgtable_stage2_unmap(pgt, addr: int, size: int, bulk: bool = False):
    walker = Walker(stage2_unmap_walker, None, LEAF | TABLE_POST, stage2_unmap_bulk)
    ret = yield from kvm_pgtable_walk(pgt, addr, size, walker, bulk)
    if pgt.unmap_defer_tlb_flush:
        yield from kvm_tlb_flush_vmid_range(pgt, addr, size)
    return ret


# ---------------------------------------------------------------------------
# Attribute updates: wrprotect, mkyoung, relax_perms; test_clear_young
# ---------------------------------------------------------------------------

class Stage2AttrData:
    __slots__ = ("attr_set", "attr_clr", "pte", "level")

    def __init__(self, attr_set, attr_clr):
        self.attr_set, self.attr_clr, self.pte, self.level = attr_set, attr_clr, 0, None


def stage2_attr_walker(ctx: VisitCtx, visit: int):
    """Set/clear attribute bits of a valid leaf in place: no break-before-make."""
    data = ctx.arg
    if not kvm_pte_valid(ctx.old):
        return -EAGAIN
    data.level = ctx.level
    data.pte = ctx.old
    pte = (ctx.old & ~data.attr_clr) | data.attr_set
    # "We may race with the CPU trying to set the access flag here, but
    # worst-case the access flag update gets lost and will be set on the
    # next access instead."
    if ctx.old != pte:
        if (ctx.pgt.mm_ops.icache_inval_pou and stage2_pte_executable(pte)
                and not stage2_pte_executable(ctx.old)):
            yield cmo("icache_inval_pou", pte & ctx.pgt.addr_mask,
                      ctx.pgt.granule_size[ctx.level])
        if not (yield from stage2_try_set_pte(ctx, pte)):
            return -EAGAIN
    return 0


def stage2_attr_bulk(data: WalkData, pgt, table: int, level: int, idx: int) -> int:
    """Bulk twin of stage2_attr_walker on a run of empty and valid-leaf
    entries, for walks where -EAGAIN on an empty entry does not stop."""
    if data.walker.flags & (HANDLE_FAULT | SHARED):
        return 0
    r = _leaf_run(pgt, data, table, level, idx)
    if r is None or r[2] == 0:
        return 0
    page, seg, n = r
    adata = data.walker.arg
    valid = seg != 0
    if valid.any():
        last = int(np.flatnonzero(valid)[-1])
        adata.level = level
        adata.pte = int(seg[last])
        old = seg[valid]
        new = (old & np.uint64(~adata.attr_clr & (2**64 - 1))) | np.uint64(adata.attr_set)
        xn = np.uint64(KVM_PTE_LEAF_ATTR_HI_S2_XN)
        if pgt.mm_ops.icache_inval_pou:
            became_exec = ((new & xn) == 0) & ((old & xn) != 0)
            pgt.machine.stats["icache_inval_pou"] += int(np.count_nonzero(became_exec))
        seg[valid] = new
    gran = pgt.granule_size[level]
    data.addr = (data.addr & ~(gran - 1)) + n * gran
    return n


def stage2_update_leaf_attrs(pgt, addr, size, attr_set, attr_clr, out=None, flags=0,
                             bulk=False):
    mask = KVM_PTE_LEAF_ATTR_LO | KVM_PTE_LEAF_ATTR_HI
    data = out if out is not None else Stage2AttrData(0, 0)
    data.attr_set, data.attr_clr = attr_set & mask, attr_clr & mask
    walker = Walker(stage2_attr_walker, data, flags | LEAF, stage2_attr_bulk)
    return (yield from kvm_pgtable_walk(pgt, addr, size, walker, bulk))


def kvm_pgtable_stage2_wrprotect(pgt, addr, size, bulk=False):
    """Clear S2AP_W over a range.  No TLBI here: the caller flushes
    (kvm_mmu_wp_memory_region -> kvm_flush_remote_tlbs_memslot)."""
    return (yield from stage2_update_leaf_attrs(pgt, addr, size, 0,
                                                KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W, bulk=bulk))


def kvm_pgtable_stage2_mkyoung(pgt, addr, flags=0):
    """Set AF on the leaf for one address (handle_access_fault)."""
    ret = yield from stage2_update_leaf_attrs(pgt, addr, 1, KVM_PTE_LEAF_ATTR_LO_S2_AF, 0,
                                              flags=flags)
    if not ret:
        yield dsb("ishst")
    return ret


def kvm_pgtable_stage2_relax_perms(pgt, addr, prot: int, flags=0):
    """Add permissions to one leaf; then a *local* TLBI (a stale stricter
    entry elsewhere only costs one more permission fault)."""
    if prot & KVM_PTE_LEAF_ATTR_HI_SW:
        return -EINVAL
    set_ = 0
    if prot & d.KVM_PGTABLE_PROT_R:
        set_ |= d.KVM_PTE_LEAF_ATTR_LO_S2_S2AP_R
    if prot & d.KVM_PGTABLE_PROT_W:
        set_ |= KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W
    xn = d.stage2_set_xn_attr(prot)
    set_ |= xn & KVM_PTE_LEAF_ATTR_HI_S2_XN
    clr = ~xn & KVM_PTE_LEAF_ATTR_HI_S2_XN
    data = Stage2AttrData(0, 0)
    ret = yield from stage2_update_leaf_attrs(pgt, addr, 1, set_, clr, data, flags)
    if not ret or ret == -EAGAIN:
        # Kernel passes the level the attr walker saw (TTL unknown if none).
        # v6.1 invalidated on every CPU (__kvm_tlb_flush_vmid_ipa); the
        # local __kvm_tlb_flush_vmid_ipa_nsh came later.
        yield tlbi("ipa" if pgt.pre_6_2 else "ipa_nsh", addr, data.level)
    return ret


class Stage2AgeData:
    __slots__ = ("mkold", "young")

    def __init__(self, mkold):
        self.mkold, self.young = mkold, False


def stage2_age_walker(ctx: VisitCtx, visit: int):
    new = ctx.old & ~KVM_PTE_LEAF_ATTR_LO_S2_AF
    data = ctx.arg
    if not kvm_pte_valid(ctx.old) or new == ctx.old:
        return 0
    data.young = True
    if data.mkold and not (yield from stage2_try_set_pte(ctx, new)):
        return -EAGAIN
    # "But where's the TLBI?!", you scream.  "Over in the core code", I sigh.
    return 0


def kvm_pgtable_stage2_test_clear_young(pgt, addr, size, mkold: bool, out: Stage2AgeData):
    walker = Walker(stage2_age_walker, out, LEAF)
    ret = yield from kvm_pgtable_walk(pgt, addr, size, walker)
    if ret:
        pgt.warn("kvm_pgtable_stage2_test_clear_young: walk failed")
    return out.young


# ---------------------------------------------------------------------------
# Split (eager page splitting)
# ---------------------------------------------------------------------------

def stage2_block_get_nr_page_tables(pgt, level: int) -> int:
    """Tables needed to map one block at ``level`` down to pages: a level-1
    block needs 1 + 512 (4K granule), a level-2 block 1, a page 0."""
    if level == 3:
        return 0
    if level == 2:
        return 1
    if level == 1:
        return pgt.ptrs_per_pte + 1
    return -EINVAL


def stage2_split_walker(ctx: VisitCtx, visit: int):
    pgt = ctx.pgt
    mc = ctx.arg
    pte = ctx.old
    level = ctx.level
    if level == 3:
        return 0          # no huge pages at the last level
    if not kvm_pte_valid(pte):
        return 0          # only valid block mappings are split
    nr_pages = stage2_block_get_nr_page_tables(pgt, level)
    if nr_pages < 0:
        return nr_pages
    nobjs = yield memcache_nobjs(mc)
    if nobjs >= nr_pages:
        force_pte = True          # build a tree mapped down to pages
    else:
        # Not enough for the whole tree: one table of the next level's
        # blocks; the walk reloads, descends, and splits those in turn.
        force_pte = False
        nr_pages = 1
    if nobjs < nr_pages:
        return -ENOMEM
    phys = pte & pgt.addr_mask
    prot = d.kvm_pgtable_stage2_pte_prot(pte)
    childp = yield from kvm_pgtable_stage2_create_unlinked(pgt, phys, level, prot, mc,
                                                           force_pte, pgt.machine.bulk_ok)
    if childp < 0:
        return childp
    if not (yield from stage2_try_break_pte(ctx)):
        yield from kvm_pgtable_stage2_free_unlinked(pgt, childp, level)
        if not pgt.free_unlinked_once:
            # Before c60d847be7b8 (2024, "Fix double-free following
            # kvm_pgtable_stage2_free_unlinked()"), the caller dropped the
            # root's reference a second time, after f6a27d6dc51b had made
            # free_unlinked drop it itself.
            yield put_page(childp)
        return -EAGAIN
    # smp_store_release() in stage2_make_pte orders the subtree's contents
    # before the table entry that publishes it.
    yield from stage2_make_pte(ctx, d.kvm_init_table_pte(childp, pgt.page_shift))
    return 0


def stage2_split_bulk(data: WalkData, pgt, table: int, level: int, idx: int) -> int:
    """Bulk twin of stage2_split_walker for the entries it ignores: every
    last-level entry, and runs of invalid entries above it."""
    shift = pgt.granule_shift[level]
    n = min(pgt.ptrs_per_pte - idx, ((data.end - 1) >> shift) - (data.addr >> shift) + 1)
    if level < 3:
        page = pgt.mm.pages[table >> pgt.page_shift]
        if page.freed:
            return 0
        n = _zeros_before_first_set(page.table[idx:idx + n] & np.uint64(1))
    if n <= 0:
        return 0
    gran = pgt.granule_size[level]
    data.addr = (data.addr & ~(gran - 1)) + n * gran
    return n


def kvm_pgtable_stage2_split(pgt, addr, size, mc, bulk=False, flags: int = 0):
    """Split the blocks in a range (eager page splitting).  The kernel
    walks LEAF only, under write_lock(&kvm->mmu_lock); ``flags`` may add
    SHARED, as Vipin Sharma's 2023 series proposed for KVM_CLEAR_DIRTY_LOG
    (split under the read lock; not merged): only then can the split lose
    its break to another walker and take its -EAGAIN path."""
    walker = Walker(stage2_split_walker, mc, flags | LEAF, stage2_split_bulk)
    ret = yield from kvm_pgtable_walk(pgt, addr, size, walker, bulk)
    yield dsb("ishst")
    return ret


# ---------------------------------------------------------------------------
# Teardown: free_unlinked and destroy
# ---------------------------------------------------------------------------

def stage2_free_walker(ctx: VisitCtx, visit: int):
    if not ctx.pgt.pte_is_counted(ctx.old, ctx.level):
        return 0
    if visit == LEAF:
        yield put_page(ctx.ptep)                       # stage2_free_leaf
        return 0
    if visit == TABLE_POST:                            # stage2_free_table_post
        childp = ctx.old & ctx.pgt.addr_mask
        if (yield page_count(childp)) != 1:
            return 0
        # "Drop references and clear the now stale PTE to avoid rewalking
        # the freed page table."
        yield put_page(ctx.ptep)
        yield put_page(childp)
        yield WRITE_ONCE(ctx.ptep, 0)
        return 0
    return -EINVAL


def stage2_free_bulk(data: WalkData, pgt, table: int, level: int, idx: int) -> int:
    """Bulk twin of stage2_free_walker's LEAF case: one put per counted entry."""
    if not pgt.counts_every_entry:
        return 0          # the numpy twin assumes "counted = non-zero"
    page = pgt.mm.pages[table >> pgt.page_shift]
    if page.freed:
        return 0
    shift = pgt.granule_shift[level]
    ptrs = pgt.ptrs_per_pte
    n = min(ptrs - idx, ((data.end - 1) >> shift) - (data.addr >> shift) + 1)
    seg = page.table if n == ptrs else page.table[idx:idx + n]
    if level < 3:
        is_table = (seg & np.uint64(3)) == np.uint64(3)
        if is_table.any():
            n = int(np.argmax(is_table))
            if n == 0:
                return 0
            seg = seg[:n]
    cnt = int(_count_nonzero(seg))
    if cnt >= page.refcount:
        return 0          # the last put would free the page: let the slow path report it
    page.refcount -= cnt
    gran = pgt.granule_size[level]
    data.addr = (data.addr & ~(gran - 1)) + n * gran
    return n


def kvm_pgtable_stage2_free_unlinked(pgt, pgtable: int, level: int, bulk: bool = False):
    """Tear down a detached subtree: put every counted entry, free emptied
    tables bottom-up, then drop the root's last reference (f6a27d6dc51b)."""
    walker = Walker(stage2_free_walker, None, LEAF | TABLE_POST, stage2_free_bulk)
    # The RCU callback runs later, on whatever drives it: bulk only when
    # that is the sequential driver with nobody watching the steps.
    data = WalkData(walker, 0, 0, pgt.granule_size[level], bulk or pgt.machine.bulk_ok)
    ret = yield from __kvm_pgtable_walk(data, pgt, pgtable, level + 1)
    if ret:
        pgt.warn("kvm_pgtable_stage2_free_unlinked: walk failed")
    if (yield page_count(pgtable)) != 1:
        pgt.warn("kvm_pgtable_stage2_free_unlinked: root still referenced")
    if pgt.free_unlinked_drops_root:
        yield put_page(pgtable)


def stage2_free_unlinked_table_rcu_cb(pgt, pgtable: int, level: int):
    """The RCU callback: by now no walker can see the subtree, so a "boring
    traversal" with plain accesses frees it."""
    yield from kvm_pgtable_stage2_free_unlinked(pgt, pgtable, level)


def stage2_free_unlinked_table(pgt, pgtable: int, level: int):
    """mm_ops->free_unlinked_table for kernel KVM: defer by call_rcu.

    The level travels in page->private (set_page_private) in the kernel.
    """
    yield set_page_private(pgtable, level)
    yield call_rcu(stage2_free_unlinked_table_rcu_cb, pgt, pgtable, level)


def free_unlinked_table_now(pgt, pgtable: int, level: int):
    """mm_ops->free_unlinked_table for pKVM's host stage 2 (and the "none"
    scheme): free synchronously.  Safe only with exclusive walkers."""
    yield from kvm_pgtable_stage2_free_unlinked(pgt, pgtable, level)


# ---------------------------------------------------------------------------
# RFC v1 (April 2022): prune the unlinked subtree inside the walk
# ---------------------------------------------------------------------------
#
# "[RFC PATCH 09/17] KVM: arm64: Tear down unlinked page tables in parallel
# walk" and its neighbours (patches 08-14 of Oliver Upton's "KVM: arm64:
# Parallelize stage 2 fault handling", 2022-04-15).  The collapsing walker
# broke the table entry and then, still inside its break-before-make, walked
# the subtree it had unlinked and "locked" every descendant entry with an
# atomic exchange, so that no other walker could install into it any more;
# because an entry may turn out to hold a table or a page, one helper served
# the pre-order and the leaf visits, and the recursion followed what the
# exchange took out.  Each table page's last reference went to an RCU
# callback (an rcu_head in the page's private data; rcu_barrier() when the
# stage 2 is destroyed).  Never merged: v6.2 leaves the subtree untouched
# until the RCU callback, which needs no atomics ("a boring traversal",
# stage2_free_unlinked_table_rcu_cb above).
#
# The model's names are its own (the RFC did this inside stage2_map_walker's
# visits below an "anchor" entry); what each step does follows the series.

def stage2_prune_lock_pte(ctx: VisitCtx):
    """Take exclusive ownership of one entry of the unlinked subtree: xchg in
    KVM_INVALID_PTE_LOCKED and keep what was there (``ctx.old``, which the
    walk then follows).  An entry that was already LOCKED belongs to another
    walker in the middle of its own break-before-make: spin (cpu_relax)
    until it publishes its new entry, then take that.

    With ``pgt.prune_xchg`` False (the bug ``rfc-plain-prune``) the
    same is done with plain accesses: READ_ONCE, then WRITE_ONCE(LOCKED).
    Between the two, another walker can install into the entry, and the
    store throws its entry (and the reference it took) away."""
    ptep = ctx.ptep
    if ctx.pgt.prune_xchg:
        while True:
            old = yield xchg(ptep, KVM_INVALID_PTE_LOCKED)
            if not stage2_pte_is_locked(old):
                break
            yield cpu_relax()                  # another walker owns it: spin
    else:
        old = ctx.old                          # the walk's READ_ONCE
        while stage2_pte_is_locked(old):
            yield cpu_relax()
            old = yield READ_ONCE(ptep)
        yield WRITE_ONCE(ptep, KVM_INVALID_PTE_LOCKED)
    ctx.old = old


def stage2_prune_walker(ctx: VisitCtx, visit: int):
    """The pruning visitor (TABLE_PRE | LEAF | TABLE_POST, FOLLOW_CB).

    TABLE_PRE and LEAF: lock the entry (:func:`stage2_prune_lock_pte`) and
    drop the reference the old entry held on its table, at once (it is not
    the table's last: the table's own is).  If what was swapped out is a
    table, the walk descends into it (FOLLOW_CB).  TABLE_POST: every entry
    of the child table is now locked ("Assume a table pte is already owned
    in post-order traversal", patch 10): punt the child page's last
    reference to RCU (patch 14)."""
    pgt = ctx.pgt
    if visit == TABLE_POST:
        yield call_rcu(stage2_free_table_page_rcu_cb, pgt, ctx.old & pgt.addr_mask)
        return 0
    yield from stage2_prune_lock_pte(ctx)
    if pgt.pte_is_counted(ctx.old, ctx.level):
        yield put_page(ctx.ptep)
    return 0


def stage2_free_table_page_rcu_cb(pgt, table: int):
    """RFC patch 14's RCU callback: drop a pruned table page's last
    reference, which frees it.  Its entries are all LOCKED (counted by
    nothing), so there is nothing left to traverse."""
    yield put_page(table)


def stage2_prune_unlinked_table(pgt, pgtable: int, level: int):
    """mm_ops->prune_unlinked_table under RFC v1: lock every descendant
    entry of the subtree just unlinked at ``level`` (all of them: 512 per
    table with 4K pages, invalid ones included), with a deep call into the
    one walker, as kvm_pgtable_stage2_free_unlinked does.  It runs between
    the break of the table entry and the make of the block, so the entry
    stays LOCKED meanwhile and every other walker that meets it gets
    -EAGAIN.

    Modelled from the series' cover letter and the thread, not from the
    patch text: the exchange is used on exclusive walks too (harmless:
    nobody races there), and the spin on an entry another walker holds is
    where the thread's "no need for atomics/spinning" places it."""
    walker = Walker(stage2_prune_walker, None, LEAF | TABLE_PRE | TABLE_POST | FOLLOW_CB)
    data = WalkData(walker, 0, 0, pgt.granule_size[level])
    ret = yield from __kvm_pgtable_walk(data, pgt, pgtable, level + 1)
    if ret:
        pgt.warn("stage2_prune_unlinked_table: walk failed")


def stage2_put_unlinked_table_rcu(pgt, pgtable: int, level: int):
    """mm_ops->free_unlinked_table under RFC v1: the subtree was pruned
    before the make; only the root page's last reference is left, and it
    goes to RCU like every other table page's (patch 14)."""
    yield call_rcu(stage2_free_table_page_rcu_cb, pgt, pgtable)


def kvm_pgtable_stage2_destroy(pgt, bulk: bool = False):
    """Free every table below the PGD (the PGD itself is freed by the caller)."""
    walker = Walker(stage2_free_walker, None, LEAF | TABLE_POST, stage2_free_bulk)
    ret = yield from kvm_pgtable_walk(pgt, 0, 1 << pgt.ia_bits, walker, bulk)
    if ret:
        pgt.warn("kvm_pgtable_stage2_destroy: walk failed")
    return ret
