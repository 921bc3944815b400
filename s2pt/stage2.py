"""``Stage2``: one VM's stage-2 page table, with the kernel's operations.

This is the friendly face of :mod:`s2pt.pgtable`.  Each method checks its
input (bad input raises :class:`~s2pt.S2ptError` and changes nothing), builds
the kernel's walk and runs it with the sequential driver::

    >>> import s2pt
    >>> pgt = s2pt.Stage2(ipa_bits=40, granule=4096)      # kvm_pgtable_stage2_init
    >>> pgt.map(0x4000_0000, 2 << 20, 0x8_0000_0000)       # one 2M block
    >>> t = pgt.translate(0x4000_1234)
    >>> hex(t.pa), t.level, t.prot
    ('0x800001234', 2, 'RWX')

Model of the CPU (stated once, used everywhere): 48-bit PA, 16-bit VMIDs,
FEAT_TLBIRANGE, no FEAT_S2FWB unless ``fwb=True``, no FEAT_HAFDBS (so the
MMU raises Access flag faults), no FEAT_XNX, no LPA2, one VMID per table.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

import numpy as np

from . import bugs as _bugs
from . import descriptor as d
from . import pgtable as pt
from .snapshot import Frozen
from .errors import Fault, KernelBug, S2ptError
from .geometry import Geometry
from .memory import MemCache, PhysMem
from .ops import Machine, run
from .tlb import S2Mmu, VcpuTlb
from . import validate as v

__all__ = ["Stage2", "Translation", "KvmPgtable"]

#: MAX_TLBI_RANGE_PAGES = __TLBI_RANGE_PAGES(31, 3): (31 + 1) << (5 * 3 + 1).
MAX_TLBI_RANGE_PAGES = 32 << 16


class KvmPgtable(Frozen):
    """struct kvm_pgtable, its mm_ops and the model's knobs.

    Everything is given when the table is built (kvm_pgtable_stage2_init
    takes the mm_ops, the flags and the force_pte callback too); nothing
    patches a table afterwards.  ``mm_ops`` (a :class:`s2pt.pgtable.MmOps`)
    says how unlinked tables are freed and whether the owner does cache
    maintenance; ``hyp``/``idmap``/``prefault_block`` are KVM_PGTABLE_S2_*
    flags as pKVM sets them (PREFAULT_BLOCK is Android's); ``pte_is_counted`` is stage2_pte_is_counted() (Android's host
    stage 2 counts only non-default entries); ``machine`` builds the machine
    that performs operations (the explorer passes its SimMachine);
    ``bugs``: names of walker bugs to switch back on (:data:`s2pt.bugs.BUGS`,
    target ``walker``): a9f0e3d5a089 (no reload after a TABLE_PRE callback),
    f6a27d6dc51b (free_unlinked keeps the root's last reference),
    1f0f4a2ef7a5 (the map walker's separate PA counter), c60d847be7b8 (the
    extra put_page after kvm_pgtable_stage2_free_unlinked()), and two
    deliberate breakages: rfc-plain-prune (RFC v1's pruning walker,
    mm_ops->prune_unlinked_table, with plain stores) and no-rcu-read-lock
    (shared walks that forget rcu_read_lock()).  The walker reads each as a
    plain attribute (``reload_after_cb``, ``free_unlinked_drops_root``,
    ``map_phys_from_ipa``, ``free_unlinked_once``, ``prune_xchg``,
    ``shared_walk_rcu``: True is today's kernel), set here from ``bugs``.

    ``kernel`` says which kernel's walker the table follows: None (the
    default) is mainline today; ``"6.1"`` is the walker before v6.2
    (5c359cca1faf, "Tear down unlinked stage-2 subtree after
    break-before-make"): the map walk is ``TABLE_PRE | LEAF | TABLE_POST``,
    a collapse clears the table entry, flushes the whole VMID and sets an
    "anchor", the leaf and ``TABLE_POST`` visits put every page of the
    subtree, and the block is installed only when the walk comes back to
    the anchor; a leaf is replaced by clearing it (stage2_put_pte), with no
    KVM_INVALID_PTE_LOCKED and no cmpxchg, because every walk was exclusive;
    the walker reloaded an entry only after a LEAF callback; relax_perms
    invalidated with a broadcast TLBI.  Everything else (unmap, the
    attribute walks) runs today's code on a v6.1 table: the model's
    simplification, stated where it matters (s2pt.schemes.WriteLockScheme).
    ``"rfc-v1"`` is RFC v1 of the parallel-faults series (April 2022,
    applied to fb649bda6f56): the model runs its teardown on today's walker
    (s2pt.schemes.RcuRfcScheme), and what the switch changes is the TLBI of
    a table break, which flushed the whole VMID (__kvm_tlb_flush_vmid, as
    stage2_try_break_pte did until v6.6's range TLBIs), the flush Oliver
    Upton's mail of 4 May 2022 calls "highly desirable" to avoid.

    The walker reads these fields in its inner loops, so they are plain
    attributes precomputed from the :class:`Geometry`.

    In the explorer's machine state (s2pt.sim.state) the table object is
    Frozen: its memory, machine and TLBs are parts of their own, and none of
    its configuration changes during a run.
    """

    def __init__(self, geom: Geometry, *, vmid: int = 1, fwb: bool = False,
                 ram_pages: int | None = None, hyp: bool = False, idmap: bool = False,
                 mm_ops: pt.MmOps | None = None, force_pte_cb=None,
                 max_owner_id: int = d.KVM_MAX_OWNER_ID, pte_is_counted=None,
                 machine=None, bugs=(), kernel: str | None = None,
                 prefault_block: bool = False):
        self.geom = geom
        self.ia_bits = geom.ipa_bits
        self.start_level = geom.start_level
        self.page_shift = geom.page_shift
        self.page_size = geom.granule
        self.ptrs_per_pte = geom.ptrs_per_pte
        self.granule_shift = {lvl: geom.granule_shift(lvl) for lvl in range(-1, 4)}
        self.granule_size = {lvl: 1 << s for lvl, s in self.granule_shift.items()}
        self.addr_mask = d.addr_mask(geom.page_shift)
        self._min_block_level = geom.min_block_level
        self.strides = {lvl: np.arange(self.ptrs_per_pte, dtype=np.uint64)
                        * np.uint64(self.granule_size[lvl]) for lvl in range(0, 4)}
        # CPU features and kernel configuration
        self.fwb = fwb
        self.tlb_range = True
        self.max_tlbi_range_pages = MAX_TLBI_RANGE_PAGES
        self.unmap_defer_tlb_flush = self.tlb_range and self.fwb   # stage2_unmap_defer_tlb_flush
        self.hyp = hyp                 # built for EL2: shared walks return -EPERM
        self.idmap = idmap             # KVM_PGTABLE_S2_IDMAP
        # KVM_PGTABLE_S2_PREFAULT_BLOCK (Android): a block split into a table
        # is refilled with copies of itself (stage2_map_prefault_block)
        self.prefault_block = bool(prefault_block)
        self.force_pte_cb = force_pte_cb
        self.max_owner_id = max_owner_id
        # stage2_pte_is_counted(): which entries hold a reference on their
        # table.  Upstream, every non-zero entry; Android's host stage 2
        # counts only non-default ones so that tables can coalesce.
        self.pte_is_counted = _counted_if_nonzero if pte_is_counted is None else pte_is_counted
        self.counts_every_entry = pte_is_counted is None
        # mm_ops: free_unlinked_table is call_rcu in the kernel, immediate in pKVM
        self.mm_ops = pt.MmOps() if mm_ops is None else mm_ops
        # Which kernel's walker: None (today's mainline) or "6.1" (before v6.2)
        if kernel not in KERNELS:
            raise S2ptError(f"kernel={kernel!r}: the walker follows one of "
                            f"{', '.join(repr(k) for k in KERNELS)} (None: today's mainline; "
                            f"'6.1': the map walker before v6.2, 5c359cca1faf; 'rfc-v1': the "
                            f"parallel-faults RFC of April 2022)")
        self.kernel = kernel
        self.pre_6_2 = kernel == "6.1"
        # stage2_try_break_pte on a table entry: __kvm_tlb_flush_vmid (the
        # RFC, and v6.2 to v6.5) instead of kvm_tlb_flush_vmid_range (v6.6)
        self.table_break_flushes_vmid = kernel == "rfc-v1"
        # The walker bugs switched back on (s2pt.bugs), as the plain
        # attributes the walker reads (all True = today's kernel).
        self.bugs = _bugs.check_bugs(bugs, _bugs.WALKER)
        # v6.1's __kvm_pgtable_visit reloaded the entry only after a LEAF
        # callback: its TABLE_PRE visitor (the anchor) cleared the table
        # entry and relied on descending into the table it had just
        # unlinked, through the entry as it was read before the callback.
        self.reload_after_cb = "a9f0e3d5a089" not in self.bugs and not self.pre_6_2
        self.free_unlinked_drops_root = "f6a27d6dc51b" not in self.bugs
        # RFC v1's pruning walker locks entries with xchg; rfc-plain-prune
        # uses plain READ_ONCE / WRITE_ONCE.
        self.prune_xchg = "rfc-plain-prune" not in self.bugs
        self.map_phys_from_ipa = "1f0f4a2ef7a5" not in self.bugs
        self.free_unlinked_once = "c60d847be7b8" not in self.bugs
        self.shared_walk_rcu = "no-rcu-read-lock" not in self.bugs
        # Memory, TLB bookkeeping and the machine that performs operations
        self.mm = PhysMem(geom.page_shift, limit=ram_pages, report=self._report)
        self.mmu = S2Mmu(vmid)
        self.machine = (Machine if machine is None else machine)(self.mm, self.mmu)
        pgd = self.mm.alloc_pages_exact(geom.pgd_pages)
        if pgd is None:
            raise S2ptError(
                f"ram_pages={ram_pages}: the PGD alone needs {geom.pgd_pages} pages "
                f"(kvm_pgtable_stage2_init would fail with -ENOMEM)")
        self.pgd_pages = pgd
        self.pgd = pgd[0].pa

    def _report(self, kind: str, message: str):
        self.machine.violation(kind, message)

    def supports_block(self, level: int) -> bool:
        return level >= self._min_block_level

    def pgd_page_idx(self, addr: int) -> int:
        return (addr & ((1 << self.ia_bits) - 1)) >> self.granule_shift[self.start_level - 1]

    def warn(self, message: str):
        """WARN_ON(): in the sequential model a warning is a bug."""
        raise KernelBug("warn", message)


#: What a Stage2 may be built with besides its geometry (see KvmPgtable).
_CONFIG = frozenset({"hyp", "idmap", "mm_ops", "force_pte_cb", "max_owner_id", "pte_is_counted",
                     "machine", "bugs", "kernel", "prefault_block"})

#: The kernels whose walker a table can follow (KvmPgtable's ``kernel``).
KERNELS = (None, "6.1", "rfc-v1")


def _counted_if_nonzero(pte: int, level: int) -> bool:
    return pte != 0        # d.stage2_pte_is_counted(pte), inlined: called on every break/make


@dataclass(frozen=True)
class Translation:
    """The result of a successful stage-2 translation."""

    ipa: int
    pa: int
    level: int
    prot: str
    memattr: str
    pte: int
    size: int
    source: str = "walk"       # "walk" (read from the tables) or "tlb" (a TLB hit)

    def __str__(self):
        return (f"IPA {self.ipa:#x} -> PA {self.pa:#x} (level {self.level} "
                f"{'page' if self.level == 3 else 'block'}, {self.prot}, {self.memattr})")


#: Kept for modules that imported it from here; the checks live in s2pt.validate.
_is_int = v.is_int

#: The configuration knobs that are yes/no switches (validated as such).
_CONFIG_FLAGS = ("hyp", "idmap", "reload_after_cb", "free_unlinked_drops_root", "prune_xchg",
                 "map_phys_from_ipa", "free_unlinked_once", "shared_walk_rcu")


class Stage2(KvmPgtable):
    """A VM's stage-2 page table: IPA -> PA.

    Parameters
    ----------
    ipa_bits : int
        Guest physical address size, 32..48 (KVM_VM_TYPE_ARM_IPA_SIZE).
    granule : int
        4096, 16384 or 65536.
    vmid : int
        The VMID that TLB invalidations name.
    fwb : bool
        Model FEAT_S2FWB (changes MemAttr encodings and unmap's TLBI batching).
    ram_pages : int or None
        How many pages the host can give to page tables; None = no limit.
        When a map would need more, it fails with -ENOMEM up front.
    """

    def __init__(self, ipa_bits: int = 40, granule: int = 4096, *, vmid: int = 1,
                 fwb: bool = False, ram_pages: int | None = None, **config):
        vmid = v.integer("vmid", vmid, 0, (1 << 16) - 1,
                         rule="VMIDs are 16-bit unsigned integers (0 to 65535)")
        ram_pages = v.optional_integer("ram_pages", ram_pages, 1)
        fwb = v.flag("fwb", fwb)
        unknown = set(config) - _CONFIG
        if unknown:
            raise S2ptError(f"Stage2: unknown argument(s) {sorted(unknown)}; the table's "
                            f"configuration is one of {sorted(_CONFIG)}")
        for k in _CONFIG_FLAGS:
            if k in config:
                config[k] = v.flag(k, config[k])
        if "max_owner_id" in config:
            config["max_owner_id"] = v.integer("max_owner_id", config["max_owner_id"], 0, 255,
                                               rule="an owner id field is 8 bits: 0 to 255")
        super().__init__(Geometry(ipa_bits, granule), vmid=vmid, fwb=fwb,
                         ram_pages=ram_pages, **config)
        #: Set by destroy(): kvm_pgtable_stage2_destroy() frees the PGD and
        #: sets pgt->pgd = NULL; nothing may use the table afterwards.
        self.destroyed = False

    # -- architectural registers ----------------------------------------------
    @property
    def vtcr(self) -> int:
        """VTCR_EL2 as kvm_get_vtcr() computes it."""
        return self.geom.vtcr

    @property
    def vttbr(self) -> int:
        """VTTBR_EL2: the PGD's physical address and the VMID (kvm_get_vttbr)."""
        from .geometry import kvm_get_vttbr
        return kvm_get_vttbr(self.pgd, self.mmu.vmid)

    @property
    def mem(self) -> PhysMem:
        """The simulated physical memory holding the tables."""
        return self.mm

    @property
    def tlbis(self):
        """Every TLB invalidation issued so far, in order (a TlbiLog)."""
        return self.mmu.tlbi_log

    @property
    def stats(self) -> dict:
        s = {k: n for k, n in self.machine.stats.items() if n}
        cached = sum(mc.nobjs for mc in getattr(self, "memcaches", ()))
        pgd = 0 if getattr(self, "destroyed", False) else self.geom.pgd_pages
        s["tables_live"] = self.mm.allocated - pgd - cached
        s["tables_freed"] = self.mm.table_frees
        s.setdefault("tables_allocated", 0)
        s.setdefault("tlbi", 0)
        return s

    # -- input checks ----------------------------------------------------------
    def _check_live(self):
        """Refuse to touch a destroyed table (its PGD is freed, pgt->pgd is NULL)."""
        if self.destroyed:
            raise S2ptError("this table was destroyed (kvm_pgtable_stage2_destroy freed its "
                            "PGD and set pgt->pgd = NULL): build a new Stage2")

    def _check_ipa(self, ipa, what="ipa"):
        self._check_live()
        ipa = v.address(what, ipa, None, "an IPA")
        if ipa >= 1 << self.ia_bits:
            raise S2ptError(
                f"{what}={ipa:#x}: beyond the {self.ia_bits}-bit IPA space "
                f"(limit {1 << self.ia_bits:#x})")
        return ipa

    def _check_range(self, ipa, size, what="ipa"):
        self._check_live()
        gran = self.page_size
        ipa = v.address(what, ipa, None, "an IPA")
        size = v.size("size", size, gran)
        v.aligned(what, ipa, gran)
        if ipa + size > 1 << self.ia_bits:
            raise S2ptError(
                f"[{ipa:#x}, {ipa + size:#x}): the range goes beyond the {self.ia_bits}-bit "
                f"IPA space (limit {1 << self.ia_bits:#x})")
        return ipa, size

    def _check_pa(self, pa, size):
        pa = v.address("pa", pa, None, "a physical address")
        v.aligned("pa", pa, self.page_size)
        if pa + size > 1 << self.geom.pa_bits:
            raise S2ptError(
                f"pa={pa:#x} + size={size:#x}: beyond the {self.geom.pa_bits}-bit physical "
                f"address space (VTCR_EL2.PS)")
        return pa

    # -- running walks ---------------------------------------------------------
    @property
    def _bulk(self) -> bool:
        """Bulk numpy runs are used only when nobody watches individual steps."""
        return not self.machine.watched

    def _map_table_bound(self, ipa: int, size: int, phys: int, force_pte: bool) -> int:
        """An upper bound on the table pages a map of this range can allocate:
        for each level below the root, the level-(L-1) slots that the range
        touches where a leaf at level L-1 or above cannot be used."""
        end = ipa + size
        total = 0
        for lvl in range(self.start_level + 1, 4):
            g = self.granule_size[lvl - 1]
            if force_pte or not self.supports_block(lvl - 1) or (ipa - phys) % g:
                spans = [(ipa, end)]
            else:
                head_end = min(end, -(-ipa // g) * g)
                tail_start = max(head_end, (end // g) * g)
                spans = [(ipa, head_end), (tail_start, end)]
            for s, e in spans:
                if e > s:
                    total += (e - 1) // g - s // g + 1
        return total

    def _topup(self, needed: int, what: str) -> MemCache:
        mc = MemCache(self.mm)
        if mc.topup(needed):
            avail = self.mm.available()
            raise S2ptError(
                f"{what} may need {needed} new table pages but only {avail} are left "
                f"(ram_pages={self.mm.limit}): kvm_mmu_topup_memory_cache() fails "
                f"with -ENOMEM before the walk starts")
        return mc

    # -- the operations ----------------------------------------------------------
    def map(self, ipa: int, size: int, pa: int, prot: str = "RWX", memattr: str = "normal",
            force_pte: bool = False) -> None:
        """kvm_pgtable_stage2_map(): map [ipa, ipa+size) to [pa, pa+size).

        Uses the largest block that the alignment of ``ipa`` and ``pa``
        allows, or pages only with ``force_pte``.  An existing mapping to
        another PA or with another memory type is replaced with
        break-before-make; a table where a block now fits is collapsed and
        its subtree freed (after an RCU grace period).

        A valid leaf that differs from the new one **only in permissions**
        (R, W, XN) is left as it is, as the kernel does:
        stage2_map_walker_try_leaf() finds that stage2_pte_needs_update() is
        false and returns -EAGAIN ("the vCPU will exit one more time ... path
        of relaxing permissions"), which a walk without HANDLE_FAULT steps
        over.  Change permissions with :meth:`relax_perms` or
        :meth:`wrprotect`, or unmap first.

        Tables come from a memcache topped up first, as kvm_phys_addr_ioremap
        does; unused pages go back afterwards.
        """
        ipa, size = self._check_range(ipa, size)
        pa = self._check_pa(pa, size)
        memattr = v.choice("memattr", memattr, d.MEMATTRS)
        force_pte = v.flag("force_pte", force_pte)
        attr = d.stage2_set_prot_attr(d.prot_from_str(prot), memattr, self.fwb)
        mc = self._topup(self._map_table_bound(ipa, size, pa, force_pte),
                         f"map of [{ipa:#x}, {ipa + size:#x})")
        ret = run(pt.kvm_pgtable_stage2_map(self, ipa, size, pa, attr, mc,
                                            force_pte=force_pte, bulk=self._bulk),
                  self.machine)
        mc.free_all()
        self._expect_ok(ret, "kvm_pgtable_stage2_map")

    def unmap(self, ipa: int, size: int) -> None:
        """kvm_pgtable_stage2_unmap(): clear leaves (whole blocks, even when
        the range covers part of one) and free tables that become empty."""
        ipa, size = self._check_range(ipa, size)
        self._expect_ok(run(pt.kvm_pgtable_stage2_unmap(self, ipa, size, bulk=self._bulk),
                            self.machine), "kvm_pgtable_stage2_unmap")

    def wrprotect(self, ipa: int, size: int) -> None:
        """kvm_pgtable_stage2_wrprotect(): clear S2AP_W on every leaf in the
        range, in place.  Issues no TLBI: the caller must flush
        (see ``flush_tlb``), as kvm_mmu_wp_memory_region() does."""
        ipa, size = self._check_range(ipa, size)
        self._expect_ok(run(pt.kvm_pgtable_stage2_wrprotect(self, ipa, size, bulk=self._bulk),
                            self.machine), "kvm_pgtable_stage2_wrprotect")

    def relax_perms(self, ipa: int, prot: str = "RW") -> int:
        """kvm_pgtable_stage2_relax_perms(): update the leaf at ``ipa`` for
        ``prot``, then a local TLBI.  Returns 0, or -EAGAIN if no valid leaf
        maps ``ipa`` (the fault would simply be retried).

        R and W in ``prot`` are *added* (S2AP bits are set, never cleared),
        but the XN field is *rewritten* from ``prot``, as the kernel does
        (stage2_set_xn_attr(): set |= xn, clr = ~xn; reference
        kernel-stage2.md 5.2, LN-P): a ``prot`` without X makes the leaf
        execute-never.  So the default ``"RW"`` on an RWX leaf gives RW,
        and the fault path passes ``"RWX"`` for normal memory
        (CACHE_DIC: always executable).  Give ``"RWX"`` to keep execute
        permission."""
        ipa = self._check_ipa(ipa)
        p = d.prot_from_str(prot)
        return run(pt.kvm_pgtable_stage2_relax_perms(self, ipa, p, pt.HANDLE_FAULT),
                   self.machine)

    def mkyoung(self, ipa: int) -> int:
        """kvm_pgtable_stage2_mkyoung(): set AF on the leaf at ``ipa``
        (handle_access_fault).  Returns 0 or -EAGAIN."""
        ipa = self._check_ipa(ipa)
        return run(pt.kvm_pgtable_stage2_mkyoung(self, ipa, pt.HANDLE_FAULT), self.machine)

    def test_clear_young(self, ipa: int, size: int, mkold: bool = True) -> bool:
        """kvm_pgtable_stage2_test_clear_young(): was any leaf in the range
        accessed?  With ``mkold``, clear AF (no TLBI: "Over in the core code")."""
        ipa, size = self._check_range(ipa, size)
        mkold = v.flag("mkold", mkold)
        return run(pt.kvm_pgtable_stage2_test_clear_young(self, ipa, size, mkold,
                                                          pt.Stage2AgeData(mkold)),
                   self.machine)

    def set_owner(self, ipa: int, size: int, owner_id: int) -> None:
        """kvm_pgtable_stage2_set_owner(): replace the range with invalid,
        counted entries that record ``owner_id`` (pKVM); blocks are broken."""
        ipa, size = self._check_range(ipa, size)
        owner_id = v.integer("owner_id", owner_id, 0, self.max_owner_id,
                             rule=f"must be 0..{self.max_owner_id} (KVM_MAX_OWNER_ID); "
                             f"set_owner returns -EINVAL otherwise")
        mc = self._topup(self._map_table_bound(ipa, size, ipa, True),
                         f"set_owner of [{ipa:#x}, {ipa + size:#x})")
        ret = run(pt.kvm_pgtable_stage2_set_owner(self, ipa, size, mc, int(owner_id),
                                                  bulk=self._bulk), self.machine)
        mc.free_all()
        self._expect_ok(ret, "kvm_pgtable_stage2_set_owner")

    def flush_tlb(self, ipa: int | None = None, size: int | None = None) -> None:
        """Flush the VM's TLB entries: the whole VMID, or one range
        (kvm_flush_remote_tlbs / kvm_flush_remote_tlbs_range)."""
        from .ops import tlbi
        self._check_live()
        if ipa is None:
            if size is not None:
                raise S2ptError(f"size={size!r} without ipa: give both (one range) or "
                                f"neither (the whole VMID)")
            run(_one(tlbi("vmid")), self.machine)
        else:
            ipa, size = self._check_range(ipa, size)
            run(pt.kvm_tlb_flush_vmid_range(self, ipa, size), self.machine)

    def destroy(self) -> None:
        """kvm_pgtable_stage2_destroy(): free every table below the PGD, then
        the PGD itself (``free_pages_exact``), and set ``pgt->pgd = NULL``.

        Afterwards the table is gone: every operation, view and a second
        ``destroy()`` raise :class:`~s2pt.S2ptError` (the kernel's caller,
        kvm_free_stage2_pgd(), clears ``mmu->pgt`` so it never destroys
        twice), and :meth:`check_invariants` checks that every page the
        table held was freed.  Unused pages in the owner's memcaches are not
        the table's: they go back when the owner frees its caches."""
        self._check_live()
        for hook in self.mmu.listeners:
            tlb = getattr(hook, "__self__", None)
            if isinstance(tlb, VcpuTlb) and tlb.walk:
                raise S2ptError(
                    f"destroy: vCPU{tlb.vcpu}'s walk cache still points into this table; "
                    f"the kernel destroys it only once no vCPU can walk it (flush_tlb() "
                    f"first, as a VMID rollover would)")
        run(pt.kvm_pgtable_stage2_destroy(self, bulk=self._bulk), self.machine)
        for page in self.pgd_pages:             # free_pages_exact(pgd, pgd_sz)
            self.mm.free_page(page)
        self.destroyed = True

    def _expect_ok(self, ret: int, fn: str):
        if ret and ret != -errno.EAGAIN:
            raise KernelBug("warn", f"{fn} returned {ret} ({errno.errorcode.get(-ret, '?')})")

    # -- looking things up -----------------------------------------------------
    def walk(self, ipa: int, size: int, visitor, flags="LEAF"):
        """Run your own visitor on the one walker (kvm_pgtable_walk).

        ``visitor(ctx, visit)`` is called for each entry the flags select
        (``"LEAF"``, ``"TABLE_PRE"``, ``"TABLE_POST"``, combined with ``|``).
        It may be a plain function (return 0 or a negative errno) or a
        generator that yields :mod:`s2pt.ops` operations.  Returns the walk's
        result.
        """
        ipa, size = self._check_range(ipa, size)
        v.function("visitor", visitor, 2)
        every = sum(int(f) for f in pt.WalkFlags)
        if isinstance(flags, str):
            try:
                bits = 0
                for name in flags.split("|"):
                    bits |= pt.WalkFlags[name.strip()]
            except KeyError as e:
                raise S2ptError(f"flags={flags!r}: unknown walk flag {e}; use LEAF, "
                                f"TABLE_PRE, TABLE_POST") from None
            flags = bits
        else:
            flags = v.integer("flags", flags, 0, every,
                              rule="walk flags: 'LEAF', 'TABLE_PRE', 'TABLE_POST' joined with '|', "
                              "or a combination of s2pt.pgtable.WalkFlags")
            if flags & ~every:
                raise S2ptError(f"flags={flags:#x}: bits {flags & ~every:#x} are not "
                                f"kvm_pgtable_walk_flags (s2pt.pgtable.WalkFlags)")
        if not flags & (pt.LEAF | pt.TABLE_PRE | pt.TABLE_POST):
            raise S2ptError(f"flags={flags:#x}: a walk visits nothing without LEAF, "
                            f"TABLE_PRE or TABLE_POST")
        import inspect
        if inspect.isgeneratorfunction(visitor):
            cb = visitor
        else:
            def cb(ctx, visit, _f=visitor):
                return _f(ctx, visit) or 0
                yield
        return run(pt.kvm_pgtable_walk(self, ipa, size, pt.Walker(cb, None, int(flags))),
                   self.machine)

    def get_leaf(self, ipa: int) -> tuple[int, int]:
        """kvm_pgtable_get_leaf(): (descriptor, level) that governs ``ipa``."""
        ipa = self._check_ipa(ipa)
        out = pt.LeafWalkData()
        run(pt.kvm_pgtable_get_leaf(self, ipa, out), self.machine)
        return out.pte, out.level

    def translate(self, ipa: int, write: bool = False, exec: bool = False) -> Translation:
        """What the MMU does for a guest access to ``ipa``.

        Returns a :class:`Translation` (``.pa``, ``.level``, ``.prot``) or
        raises :class:`~s2pt.Fault` with the kind and level the MMU reports:
        *translation* (an invalid entry, including a LOCKED or owner-annotated
        one), *access* (AF clear; the modelled CPU has no hardware AF update)
        or *permission* (S2AP/XN forbid the access).
        """
        ipa = self._check_ipa(ipa)
        write, exec = v.flag("write", write), v.flag("exec", exec)
        if write and exec:
            raise S2ptError("write=True with exec=True: an access is a read, a write or a fetch")
        out = pt.LeafWalkData()
        run(pt.kvm_pgtable_get_leaf(self, ipa, out), self.machine)
        return self.classify(ipa, out.pte, out.level, write, exec)

    def stale_reason(self, base: int, level: int, cached: int, at=None) -> str:
        """Why a cached leaf for [base, +granule) is dangerous now, or ''.

        Public because the TLB model (:mod:`s2pt.tlb`: ``VcpuTlb.stale`` and
        every TLB hit) asks it; it has no kernel counterpart -- it is the
        checker's question "does the hardware hold more than the tables?".

        ``at`` names the IPAs to check (default: the first and last page of
        the cached block, a cheap scan; a TLB hit checks its own IPA).

        It is dangerous when it grants what the tables no longer do: another
        output address or memory type, write or execute that was taken away,
        or any access where the tables now have no valid mapping.  A cached
        entry that is merely *stricter* (fewer permissions, AF since cleared)
        is allowed: the guest takes one more fault.
        """
        size = self.granule_size[level]
        for ipa in at if at is not None else (base, base + size - self.page_size):
            ipa &= ~(self.page_size - 1)
            out = pt.LeafWalkData()
            run(pt.kvm_pgtable_get_leaf(self, ipa, out), self.machine)
            cur, lvl = out.pte, out.level
            if not cur & d.KVM_PTE_VALID or (lvl == 3 and not cur & d.KVM_PTE_TYPE):
                return "the tables no longer map it"
            cur_size = self.granule_size[lvl]
            want = (cached & self.addr_mask & ~(size - 1)) + (ipa - base)
            have = (cur & self.addr_mask & ~(cur_size - 1)) + (ipa & (cur_size - 1))
            if want != have:
                return f"the tables now map it to PA {have:#x}, the TLB to {want:#x}"
            if (cached ^ cur) & d.KVM_PTE_LEAF_ATTR_LO_S2_MEMATTR:
                return "the memory type changed"
            if cached & d.KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W and not cur & d.KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W:
                return "write permission was removed"
            if d.stage2_pte_executable(cached) and not d.stage2_pte_executable(cur):
                return "execute permission was removed"
        return ""

    def classify(self, ipa, pte, level, write, exec, source="walk", raise_fault=True):
        """The Translation of an access through leaf ``pte``; or the Fault,
        raised (or returned, with ``raise_fault=False``: the MMU model).

        This is the architecture's stage-2 fault classification (translation,
        access flag, permission: what ESR_EL2.DFSC reports to
        kvm_handle_guest_abort), shared by :meth:`translate` and by the
        vCPU MMU model in :mod:`s2pt.tlb` (``source`` = "walk" or "tlb").
        """
        f = None
        if not pte & d.KVM_PTE_VALID:
            why = ("a break-before-make is in progress" if d.stage2_pte_is_locked(pte)
                   else "owned by another pKVM component" if pte else "no mapping")
            f = Fault("translation", level, ipa, write, exec, why)
        elif level == 3 and not pte & d.KVM_PTE_TYPE:
            f = Fault("translation", level, ipa, write, exec, "reserved level-3 encoding")
        elif not pte & d.KVM_PTE_LEAF_ATTR_LO_S2_AF:
            f = Fault("access", level, ipa, write, exec, "access flag clear")
        elif write and not pte & d.KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W:
            f = Fault("permission", level, ipa, write, exec, "S2AP forbids writes")
        elif exec and (pte >> 53) & 3 not in (0b00, 0b11):
            f = Fault("permission", level, ipa, write, exec, "XN forbids execution")
        elif not write and not exec and not pte & d.KVM_PTE_LEAF_ATTR_LO_S2_S2AP_R:
            f = Fault("permission", level, ipa, write, exec, "S2AP forbids reads")
        if f is not None:
            if raise_fault:
                raise f
            return f
        size = self.granule_size[level]
        pa = (pte & self.addr_mask & ~(size - 1)) | (ipa & (size - 1))
        return Translation(ipa, pa, level, d.prot_of(pte), d.memattr_name(pte, self.fwb),
                           pte, size, source)

    # -- views -----------------------------------------------------------------
    def ptdump(self, **kw) -> str:
        """The kernel's /sys/kernel/debug/kvm/<vm>/stage2_page_tables format
        (``final=True`` also prints the last run, which the kernel omits)."""
        from .ptdump import ptdump
        self._check_live()
        return ptdump(self, **kw)

    def vmprint(self, **kw) -> str:
        """An indented tree, one line per non-empty entry (xv6's vmprint)."""
        from .vmprint import vmprint
        self._check_live()
        return vmprint(self, **kw)

    def draw(self, highlight=None, **kw):
        """A Graphviz drawing of the table tree (see s2pt.draw.draw)."""
        from .draw import draw
        self._check_live()
        if v.is_int(highlight):
            highlight = int(highlight)          # numpy IPAs are IPAs (draw wants an int)
        return draw(self, highlight=highlight, **kw)

    def _repr_mimebundle_(self, include=None, exclude=None):
        return self.draw()._repr_mimebundle_(include, exclude)

    def check_invariants(self) -> None:
        """Raise KernelBug if refcounts, reachability or freed pages are
        wrong; after :meth:`destroy`, if any page the table held is still
        allocated."""
        from .invariants import check_stage2
        check_stage2(self)

    def __repr__(self):
        if self.destroyed:
            return (f"Stage2(ipa_bits={self.ia_bits}, granule={self.page_size}, "
                    f"destroyed)")
        return (f"Stage2(ipa_bits={self.ia_bits}, granule={self.page_size}, "
                f"levels={self.geom.levels}, start_level={self.start_level}, "
                f"pgd_pages={self.geom.pgd_pages}, tables={self.stats['tables_live']})")


def _one(op):
    yield op
