"""A VM: memslots, guest faults and dirty logging (arch/arm64/kvm/mmu.c).

This is where the design thread starts.  A guest runs on 2M blocks backed by
transparent huge pages.  Migration turns on **dirty logging**: KVM
write-protects the slot so that the first write to each page faults and can
be recorded, and breaks blocks into pages so that a dirty page means 4K to
copy, not 2M -- lazily, on the first write to each block, or eagerly, when
logging is enabled (``KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE``).  When logging is
turned off, nothing happens at once: later guest faults map blocks again
*over* the page tables (``stage2_map_walk_table_pre``), which unlinks each
old level-3 table -- the **unlinked subtree** that someone must free while
other CPUs may still be walking it.

The model follows ``kvm_handle_guest_abort`` -> ``user_mem_abort`` step by
step; the walks are the same :mod:`s2pt.pgtable` visitors as everywhere.
Guest accesses go through each vCPU's TLB and walk cache (:mod:`s2pt.tlb`),
so a missing TLBI shows up as a stale translation.

Simplifications, stated once: guest memory is always RAM (no device pfns,
no MTE); each memslot's host memory is one physically contiguous range whose
PA is congruent to its IPA modulo 1 GiB, and its ``backing`` says which host
page size (THP or hugetlbfs) stands behind it; the CPU has
ARM64_HAS_CACHE_DIC, so normal memory is mapped executable; faults are
handled one at a time here (the interleaving engine runs them concurrently).
"""

from __future__ import annotations

import errno
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from . import bugs as _bugs
from . import descriptor as d
from . import pgtable as pt
from . import validate as v
from .errors import Fault, KernelBug, S2ptError
from .memory import MemCache
from .ops import (cpu_relax, hw_walk_start, kernel_path, read_lock, read_unlock, run, write_lock,
                  write_unlock)
from .ops import kvm_mmu_topup_memory_cache as _topup_op, mark_page_dirty_in_slot
from .snapshot import Frozen, Stateful
from .stage2 import Stage2, Translation
from .tlb import VcpuTlb, hw_translate, hw_translate_now

__all__ = ["VM", "Memslot", "FaultResult", "MmuLock", "MMU_LOCK",
           "user_mem_abort", "handle_access_fault", "guest_fault", "guest_faults",
           "kvm_unmap_gfn_range", "kvm_mmu_split_huge_pages", "clear_dirty_log_split",
           "kvm_arch_commit_memory_region", "guest_accesses"]

#: KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE on arm64: the vCPU memcache's capacity.
KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE = 40

_SIZE_NAMES = {"4K": 4 << 10, "16K": 16 << 10, "64K": 64 << 10, "2M": 2 << 20,
               "32M": 32 << 20, "512M": 512 << 20, "1G": 1 << 30}


_FAULT_COUNTER = {k: f"faults_{k}" for k in ("translation", "access", "permission")}
_PROT_RX = d.KVM_PGTABLE_PROT_R | d.KVM_PGTABLE_PROT_X
_PROT_RWX = _PROT_RX | d.KVM_PGTABLE_PROT_W

#: The lock's name in diagrams: struct kvm's mmu_lock (an rwlock on arm64).
MMU_LOCK = "kvm->mmu_lock"

class MmuLock(Frozen):
    """How KVM serialises stage-2 updates of a guest: ``kvm->mmu_lock``.

    Mainline since 6.2 (the parallel-faults series): a vCPU's fault handler
    (user_mem_abort, handle_access_fault) walks under
    ``read_lock(&kvm->mmu_lock)`` with ``KVM_PGTABLE_WALK_SHARED |
    KVM_PGTABLE_WALK_HANDLE_FAULT``; every other update (the MMU notifier's
    unmap, write-protection, eager splitting) takes ``write_lock``.

    The teardown schemes of :mod:`s2pt.schemes` subclass this and override
    what they do differently; a VM is built with one (``VM(locking=...)``).
    Each method returns a generator, so a scheme may take several steps.
    """

    #: Flags of a vCPU fault's walk: shared, and -EAGAIN goes back to the guest.
    fault_flags = pt.HANDLE_FAULT | pt.SHARED
    #: Whose walker the VM's table follows (s2pt.stage2.KvmPgtable's
    #: ``kernel``): None, today's mainline; a locking that models an older
    #: kernel names it ("6.1": s2pt.schemes.WriteLockScheme).
    kernel = None

    def fault_lock(self, unlinks: bool = False, relax_only: bool = False):
        """Around a fault's walk.  ``unlinks``: this fault may replace a
        table with a block (a scheme may want a stronger lock for it).
        ``relax_only``: by the rule before 6.2 (user_mem_abort's
        ``use_read_lock``: logging is active, a write permission fault, the
        fault granule is PAGE_SIZE) this fault only relaxes permissions.
        handle_access_fault passes neither."""
        yield read_lock(MMU_LOCK)

    def fault_unlock(self, unlinks: bool = False, relax_only: bool = False):
        yield read_unlock(MMU_LOCK)

    def fault_walk_flags(self, flags: int, unlinks: bool = False, relax_only: bool = False) -> int:
        """The walk flags of one fault, given the VM's (``VM.fault_flags``)
        and what fault_lock was told.  Mainline: the same for every fault.
        (A model hook, no kernel function: a scheme whose fault may take the
        write lock walks exclusively then.)"""
        return flags

    def fault_map_size(self, vma_pagesize: int, fault_granule: int, perm: bool) -> int:
        """How much a fault asks to map (or relax), from user_mem_abort's
        ``vma_pagesize`` and the granule the MMU reported.  Mainline: the
        largest the backing allows, even where that replaces a table by a
        block (``vma_pagesize > fault_granule``).  (A model hook: a scheme
        that never replaces a table may ask for the fault granule instead.)"""
        return vma_pagesize

    def update_lock(self):
        """Around an exclusive update: MMU-notifier unmap, eager split."""
        yield write_lock(MMU_LOCK)

    def update_unlock(self):
        yield write_unlock(MMU_LOCK)

    def logging_off(self, vm: "VM", slot: "Memslot"):
        """What turning dirty logging off does to the table, at
        kvm_arch_commit_memory_region() (``VM.disable_dirty_logging``).
        Mainline: nothing; guest faults collapse the pages back into blocks
        lazily, each one unlinking a table."""
        return
        yield


# The lock wrappers are not kernel functions: traces and diagrams show their caller.
for _fn in (MmuLock.fault_lock, MmuLock.fault_unlock, MmuLock.update_lock, MmuLock.update_unlock,
            MmuLock.logging_off):
    kernel_path(None)(_fn)


@dataclass(eq=False)
class Memslot(Stateful):
    """struct kvm_memory_slot: guest IPA range -> host memory.

    ``userspace_addr`` is the slot's host virtual address (the VMM's
    mapping, ``memslot->userspace_addr``); ``pa`` is the host physical
    address behind it.  The host memory is one contiguous range whose PA is
    congruent to the hva modulo 1 GiB: a THP or hugetlbfs page is naturally
    aligned, so PA and hva agree modulo the backing size (any size up to
    1 GiB).  By default the hva is congruent to the IPA modulo 1 GiB, so
    every block the backing allows can be mapped; add_memslot's
    ``userspace_addr`` can break that (fault_supports_stage2_huge_mapping).
    """

    id: int
    gpa: int
    size: int
    backing: int          # host page size behind the slot (THP / hugetlbfs)
    readonly: bool
    pa: int               # host PA of the slot's first byte
    logging: bool = False
    dirty: np.ndarray | None = field(default=None, repr=False)
    userspace_addr: int = 0   # host virtual address of the slot's first byte

    #: Where add_memslot places default hvas (an mmap-like user address), and
    #: the end of the user VA range access_ok() accepts (48-bit VAs).
    HVA_BASE = 0x7f00_0000_0000
    USER_VA_LIMIT = 1 << 48

    @property
    def npages(self) -> int:
        return len(self.dirty) if self.dirty is not None else None

    def contains(self, gpa: int) -> bool:
        return self.gpa <= gpa < self.gpa + self.size

    # -- the explorer's snapshot protocol (s2pt.snapshot) ----------------------
    def sim_state(self):
        """Whether the slot logs, and its dirty bitmap."""
        return (self.logging, None if self.dirty is None else self.dirty.tobytes())

    def sim_restore(self, state):
        logging, dirty = state
        self.logging = logging
        if dirty is None:
            self.dirty = None
        elif self.dirty is not None and self.dirty.nbytes == len(dirty):
            # In place: a memslot copied while logging (a vCPU's view of the
            # old slot) shares the bitmap with the slot it was copied from.
            self.dirty[:] = np.frombuffer(dirty, dtype=bool)
        else:
            self.dirty = np.frombuffer(dirty, dtype=bool).copy()

    def __repr__(self):
        flags = ("RO " if self.readonly else "") + ("logging" if self.logging else "")
        return (f"<Memslot {self.id}: IPA [{self.gpa:#x}, {self.gpa + self.size:#x}) "
                f"-> PA {self.pa:#x}, backing {_name(self.backing)} {flags}>".replace(" >", ">"))


def _name(size: int) -> str:
    for k, v in _SIZE_NAMES.items():
        if v == size:
            return k
    return f"{size:#x}"


@dataclass
class FaultResult:
    """What handling one guest abort did.

    ``outcome`` is one of:
    "none" (the access did not fault), "map" (kvm_pgtable_stage2_map),
    "relax_perms", "mkyoung" (handle_access_fault), "KVM_EXIT_MMIO" (no
    memslot, or a write to a read-only one: exit to userspace to emulate it),
    "inject_pabt" (an instruction fetch outside memory: the guest takes a
    prefetch abort), "inject_dabt" (an IPA beyond the VM's IPA size).
    """

    gpa: int
    outcome: str
    fault: Fault | None = None
    size: int = 0          # bytes mapped or relaxed
    ret: int = 0           # the kernel's return value (0 or -errno)
    translation: Translation | None = None
    #: The walk returned -EAGAIN (it lost a race); user_mem_abort() returns 0
    #: and the vCPU re-enters the guest, which faults again if it must.
    eagain: bool = False

    def __str__(self):
        f = f" after a {self.fault.kind} fault at level {self.fault.level}" if self.fault else ""
        size = f" ({_name(self.size)})" if self.size else ""
        return f"IPA {self.gpa:#x}: {self.outcome}{size}{f}"


class Vcpu:
    def __init__(self, vm: "VM", idx: int):
        self.idx = idx
        # vcpu->arch.mmu_page_cache, topped up before each fault
        self.memcache = MemCache(vm.pgt.mm, vm._memcache_capacity)
        self.tlb = VcpuTlb(vm.pgt, idx)


class VM(Frozen):
    """A virtual machine: a Stage2 table, memslots, vCPUs with TLBs.

    In the explorer's machine state (s2pt.sim.state) a VM is Frozen: while
    its vCPUs race, no memslot is added or removed and no capability
    changes; its memslots and the vCPUs' memcaches and TLBs are parts of
    their own.  ``counters`` and ``_split_blocks`` (the blocks split
    lazily, which only feeds a counter) are statistics: no step depends on
    them (the explorer's checking mode perturbs them to make sure).

    >>> vm = VM()
    >>> slot = vm.add_memslot(0x4000_0000, 1 << 30, backing="2M")
    >>> str(vm.fault(0x4000_1000, write=True))
    'IPA 0x40000000: map (2M) after a translation fault at level 2'
    """

    #: Statistics (the snapshot protocol, s2pt.snapshot).
    sim_ignore = ("counters", "_split_blocks")

    def __init__(self, ipa_bits: int = 40, granule: int = 4096, *, vcpus: int = 2,
                 vmid: int = 1, eager_split_chunk: int | None = None, manual_protect: bool = True,
                 initially_set: bool = False, ram_pages: int | None = None,
                 fwb: bool = False, bugs=(), locking: MmuLock | None = None,
                 memcache_capacity: int | None = KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE,
                 **config):
        """``locking``: how faults and updates lock (default: mainline's
        :class:`MmuLock`; the explorer passes a teardown scheme).  ``bugs``:
        names from :data:`s2pt.bugs.BUGS` whose target is the VM's paths
        (``vm``) or its table's walker (``walker``, passed on to the
        table).  ``memcache_capacity``: the vCPU memcaches'
        capacity (the kernel's 40; None fills to exactly the minimum, as the
        explorer's scenarios do, see :class:`~s2pt.memory.MemCache`).  Any
        other keyword is the table's configuration, passed to
        :class:`~s2pt.stage2.Stage2` (``machine``, ``mm_ops``, ...)."""
        bugs = _bugs.check_bugs(bugs, _bugs.VM, _bugs.WALKER)
        if "bugs" in config:
            raise S2ptError("VM(bugs=...) takes the walker's bugs too: give them once")
        self.bugs = bugs                  # its own and its walker's
        vcpus = v.integer("vcpus", vcpus, 1, 64)
        manual_protect = v.flag("manual_protect", manual_protect)
        initially_set = v.flag("initially_set", initially_set)
        if initially_set and not manual_protect:
            raise S2ptError("initially_set=True needs manual_protect=True "
                            "(KVM_DIRTY_LOG_INITIALLY_SET is a flag of KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)")
        if locking is not None and not isinstance(locking, MmuLock):
            raise S2ptError(f"locking={locking!r}: an s2pt.kvm.MmuLock (or a teardown scheme "
                            f"from s2pt.schemes), or None for mainline's")
        memcache_capacity = v.optional_integer(
            "memcache_capacity", memcache_capacity, 1,
            rule="a capacity of at least kvm_mmu_cache_min_pages() (the table's levels - 1)")
        self.locking = locking if locking is not None else MmuLock()
        # The walk flags of a fault: the locking's, with any bug applied.
        flags = self.locking.fault_flags
        if "no-bbm-tlbi" in self.bugs:
            flags |= pt.SKIP_BBM_TLBI
        if "no-shared-walk" in self.bugs:
            flags &= ~pt.SHARED
        if "collapse-under-read-lock" in self.bugs:
            flags &= ~pt.NO_COLLAPSE
        self.fault_flags = flags
        self._memcache_capacity = memcache_capacity
        # The table follows the walker of the kernel the locking models.
        config.setdefault("kernel", getattr(self.locking, "kernel", None))
        config["bugs"] = _bugs.of(bugs, _bugs.WALKER)
        self.pgt = Stage2(ipa_bits, granule, vmid=vmid, ram_pages=ram_pages, fwb=fwb, **config)
        self._block_sizes = tuple(self.pgt.geom.block_sizes())    # largest first
        self._min_pages = self.pgt.geom.levels - 1                # kvm_mmu_cache_min_pages
        if memcache_capacity is not None and memcache_capacity < self._min_pages:
            raise S2ptError(
                f"memcache_capacity={memcache_capacity!r}: at least kvm_mmu_cache_min_pages() = "
                f"{self._min_pages} for this geometry (a smaller cache could never be topped "
                f"up: every fault would return -ENOMEM), or None; the kernel's is "
                f"{KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE}")
        self.manual_protect = manual_protect
        self.initially_set = initially_set
        self.memslots: list[Memslot] = []
        self.split_chunk = 0
        # Whether userspace has chosen the chunk (KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE);
        # until then the default 0 (lazy) applies, and the first explicit
        # choice is taken as made before the memslots were created.
        self._chunk_chosen = eager_split_chunk is not None
        if eager_split_chunk is not None:
            self._check_chunk(eager_split_chunk)
            self.split_chunk = int(eager_split_chunk)
        self.split_page_cache = MemCache(self.pgt.mm)     # mmu->split_page_cache
        self.vcpus = [Vcpu(self, i) for i in range(vcpus)]
        self.pgt.memcaches = [v.memcache for v in self.vcpus] + [self.split_page_cache]
        self.counters: Counter = Counter()
        self._split_blocks: set = set()     # blocks broken lazily while logging (a statistic)
        self._next_pa = 0x40_0000_0000      # host memory handed to memslots

    # -- capabilities and memslots --------------------------------------------
    def _check_chunk(self, chunk, explicit_cap: bool = False, name="eager_split_chunk"):
        chunk = v.integer(name, chunk, 0, rule="0 or a supported block size")
        if chunk and self.pgt.pre_6_2:
            raise S2ptError(f"eager_split_chunk={chunk:#x}: this VM models v6.1 (its locking's "
                            f"kernel), and eager page splitting "
                            f"(KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE) arrived in v6.5; use 0")
        sizes = self.pgt.geom.block_sizes()
        if chunk and chunk not in sizes:
            raise S2ptError(
                f"{name}={chunk:#x}: not a supported block size "
                f"(kvm_is_block_size_supported: one of {', '.join(_name(s) for s in sizes)}, "
                f"or 0 for lazy splitting only)")
        if chunk != self.split_chunk and self.memslots and (self._chunk_chosen or explicit_cap):
            raise S2ptError(
                f"{name}={chunk:#x}: KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE can only "
                f"change while all memslots are empty (-EINVAL); this VM has "
                f"{len(self.memslots)} memslot(s) and chunk {self.split_chunk:#x}")
        return chunk

    def enable_cap_eager_split(self, chunk: int) -> None:
        """KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE: 0 = lazy only (the default).
        Like the ioctl, this fails with -EINVAL once memslots exist."""
        self.pgt._check_live()
        self.split_chunk = self._check_chunk(chunk, explicit_cap=True, name="chunk")
        self._chunk_chosen = True

    def add_memslot(self, gpa: int, size: int, backing="2M", readonly: bool = False,
                    userspace_addr: int | None = None) -> Memslot:
        """KVM_SET_USER_MEMORY_REGION: guest IPAs [gpa, gpa+size) become RAM.

        ``backing`` is the host page size behind the slot: "4K" (no huge
        pages), "2M" (THP) or "1G" (hugetlbfs), or the 16K/64K equivalents.
        ``userspace_addr`` is the hva of the VMM's mapping (granule-aligned,
        as kvm_set_memory_region requires).  Default: the next free hva
        congruent to ``gpa`` modulo 1 GiB, so huge mappings are possible
        wherever the backing allows; an hva whose offset within a block
        differs from the IPA's gets pages there
        (fault_supports_stage2_huge_mapping).
        """
        self.pgt._check_live()
        g = self.pgt.page_size
        gpa = v.address("gpa", gpa, None, "a guest physical address")
        size = v.size("size", size)
        readonly = v.flag("readonly", readonly)
        allowed = [g] + self.pgt.geom.block_sizes()
        rule = (f"must be the page size or a block size of this granule, in bytes or by name "
                f"({', '.join(_name(x) for x in sorted(set(allowed)))})")
        if isinstance(backing, str):
            b = _SIZE_NAMES.get(backing.strip().upper())
            if b is None:
                raise S2ptError(f"backing={backing!r}: {rule}")
        else:
            b = v.integer("backing", backing, 1, rule=rule)
        if b not in allowed:
            raise S2ptError(f"backing={backing!r}: {rule}")
        if userspace_addr is not None and (not v.is_int(userspace_addr) or userspace_addr < 0
                                           or userspace_addr % g):
            # kvm_set_memory_region(): "(mem->userspace_addr & (PAGE_SIZE - 1))" is -EINVAL.
            raise S2ptError(f"userspace_addr={userspace_addr!r}: must be a non-negative "
                            f"integer aligned to the {g // 1024}K granule "
                            f"(kvm_set_memory_region returns -EINVAL)")
        if gpa % g or size % g:
            raise S2ptError(f"memslot [{gpa:#x}, +{size:#x}): gpa and size must be multiples "
                            f"of the {g // 1024}K granule")
        if gpa + size > 1 << self.pgt.ia_bits:
            raise S2ptError(f"memslot [{gpa:#x}, {gpa + size:#x}): beyond the {self.pgt.ia_bits}-bit "
                            f"IPA space (kvm_arch_prepare_memory_region returns -EFAULT)")
        for s in self.memslots:
            if gpa < s.gpa + s.size and s.gpa < gpa + size:
                raise S2ptError(f"memslot [{gpa:#x}, {gpa + size:#x}) overlaps memslot {s.id} "
                                f"[{s.gpa:#x}, {s.gpa + s.size:#x}) (-EEXIST)")
        align = 1 << 30
        if userspace_addr is None:
            # The next free hva, congruent to the IPA modulo 1 GiB.
            nxt = max((s.userspace_addr + s.size for s in self.memslots), default=Memslot.HVA_BASE)
            hva = -(-nxt // align) * align + gpa % align
        else:
            # kvm_set_memory_region(): "!access_ok(userspace_addr, memory_size)" is -EINVAL.
            hva = int(userspace_addr)
            if hva + size > Memslot.USER_VA_LIMIT:
                raise S2ptError(f"userspace_addr={userspace_addr!r}: [{hva:#x}, {hva + size:#x}) "
                                f"is not a user address range below {Memslot.USER_VA_LIMIT:#x} "
                                f"(access_ok fails: -EINVAL)")
        # The PA behind the hva is congruent to it modulo the backing size
        # (huge pages are naturally aligned); the model keeps it modulo 1 GiB.
        base = -(-self._next_pa // align) * align
        pa = base + hva % align
        if pa + size > 1 << self.pgt.geom.pa_bits:
            raise S2ptError(f"memslot of {size:#x} bytes: no host memory left below the "
                            f"{self.pgt.geom.pa_bits}-bit PA limit")
        self._next_pa = pa + size
        slot = Memslot(len(self.memslots), gpa, size, b, readonly, pa, userspace_addr=hva)
        self.memslots.append(slot)
        return slot

    def _slot(self, slot) -> Memslot:
        self.pgt._check_live()
        if isinstance(slot, Memslot) and any(s is slot for s in self.memslots):
            return slot
        if v.is_int(slot) and 0 <= slot < len(self.memslots):
            return self.memslots[slot]
        raise S2ptError(f"slot={slot!r}: not a memslot of this VM (a Memslot from "
                        f"add_memslot, or its id 0..{len(self.memslots) - 1})"
                        if self.memslots else f"slot={slot!r}: this VM has no memslots")

    def memslot_for(self, gpa: int) -> Memslot | None:
        """The memslot holding ``gpa`` (gfn_to_memslot), or None."""
        if type(gpa) is not int:
            gpa = v.address("gpa", gpa, None, "a guest physical address")
        for s in self.memslots:
            if s.gpa <= gpa < s.gpa + s.size:      # s.contains(gpa)
                return s
        return None

    # -- guest accesses and faults --------------------------------------------
    def _vcpu(self, vcpu) -> Vcpu:
        self.pgt._check_live()
        return self.vcpus[v.cpu("vcpu", vcpu, len(self.vcpus), "vCPU")]

    def translate(self, gpa: int, write: bool = False, exec: bool = False, vcpu: int = 0):
        """What vCPU ``vcpu``'s MMU does for an access: TLB, walk cache, then
        the tables.  Returns a Translation, or the Fault (not raised)."""
        cpu = self._vcpu(vcpu)
        gpa = self.pgt._check_ipa(gpa, "gpa")
        write, exec = v.flag("write", write), v.flag("exec", exec)
        if write and exec:
            raise S2ptError("write=True with exec=True: an access is a read, a write or a fetch")
        return self._mmu(cpu, gpa, write, exec)

    def _mmu(self, v: Vcpu, gpa: int, write: bool, exec: bool):
        pgt = self.pgt
        pgt.mmu.current_vcpu = v.idx
        m = pgt.machine
        if m.observers or m.pre_observers:
            return run(hw_translate(v.tlb, gpa, write, exec), m)
        return hw_translate_now(v.tlb, gpa, write, exec)    # nobody watches the steps

    def fault(self, gpa: int, write: bool = False, vcpu: int = 0, exec: bool = False) -> FaultResult:
        """One guest access that may abort, and KVM's handling of the abort
        (kvm_handle_guest_abort -> user_mem_abort / handle_access_fault)."""
        if type(gpa) is not int or gpa < 0:
            gpa = v.address("gpa", gpa, None, "a guest physical address")
        if type(write) is not bool:
            write = v.flag("write", write)
        if type(exec) is not bool:
            exec = v.flag("exec", exec)
        vcpus = self.vcpus
        cpu = vcpus[vcpu] if type(vcpu) is int and 0 <= vcpu < len(vcpus) else self._vcpu(vcpu)
        if write and exec:
            raise S2ptError("write=True with exec=True: an access is a read, a write or a fetch")
        pgt = self.pgt
        if pgt.destroyed:
            pgt._check_live()
        if gpa >= 1 << pgt.ia_bits:
            # fault_ipa >= BIT(pgt->ia_bits): kvm_inject_dabt / kvm_inject_pabt
            self.counters["injected_aborts"] += 1
            return FaultResult(gpa, "inject_pabt" if exec else "inject_dabt")
        res = self._mmu(cpu, gpa, write, exec)
        if isinstance(res, Translation):
            return FaultResult(gpa, "none", translation=res)
        return self._handle_guest_abort(cpu, gpa, res, write, exec)

    def access(self, gpa: int, write: bool = False, vcpu: int = 0, exec: bool = False,
               max_faults: int = 4):
        """A guest access, retried after each fault KVM handles, as the vCPU
        would re-execute the instruction.  Returns the Translation, or the
        FaultResult of an exit to userspace / injected abort.  After
        ``max_faults`` handled faults the access is tried once more without
        handling: if it still faults, that :class:`~s2pt.Fault` is raised
        (with the default of 4 that is a livelock in the model; 0 asks the
        MMU alone)."""
        gpa = v.address("gpa", gpa, None, "a guest physical address")
        write, exec = v.flag("write", write), v.flag("exec", exec)
        max_faults = v.integer("max_faults", max_faults, 0)
        cpu = self._vcpu(vcpu)
        if write and exec:
            raise S2ptError("write=True with exec=True: an access is a read, a write or a fetch")
        for _ in range(max_faults):
            r = self.fault(gpa, write, vcpu, exec)
            if r.outcome == "none":
                return r.translation
            if r.outcome not in ("map", "relax_perms", "mkyoung"):
                return r
        if gpa >= 1 << self.pgt.ia_bits:
            return self.fault(gpa, write, vcpu, exec)     # the injected abort (max_faults=0)
        res = self._mmu(cpu, gpa, write, exec)
        if isinstance(res, Translation):
            return res
        res.reason = (f"still faulting after {max_faults} handled fault(s) "
                      f"(max_faults={max_faults}): {res.reason}")
        raise res

    def touch(self, gpa: int, size: int, write: bool = False, stride: int | None = None,
              vcpu: int = 0, write_every: int | None = None) -> int:
        """Access every ``stride`` bytes (default: every page) of a range;
        returns how many faults that took.  ``write_every=n``: a mixed
        workload, where the 1st, (n+1)th, ... access writes and the others
        read (``write`` is then ignored)."""
        gpa = v.address("gpa", gpa, None, "a guest physical address")
        size = v.size("size", size)
        if gpa + size > 1 << self.pgt.ia_bits:
            raise S2ptError(f"[{gpa:#x}, {gpa + size:#x}): the range goes beyond the "
                            f"{self.pgt.ia_bits}-bit IPA space (limit {1 << self.pgt.ia_bits:#x})")
        write = v.flag("write", write)
        stride = v.optional_integer("stride", stride, 1, rule="a positive number of bytes")
        write_every = v.optional_integer("write_every", write_every, 1,
                                         rule="a positive integer (1: every access writes)")
        self._vcpu(vcpu)
        before = self.counters["faults"]
        step = stride or self.pgt.page_size
        if write_every is None:
            for a in range(gpa, gpa + size, step):
                self.access(a, write=write, vcpu=vcpu)
        else:
            for j, a in enumerate(range(gpa, gpa + size, step)):
                self.access(a, write=j % write_every == 0, vcpu=vcpu)
        return self.counters["faults"] - before

    def _handle_guest_abort(self, v: Vcpu, gpa: int, f: Fault, write: bool, exec: bool):
        """kvm_handle_guest_abort(): classify, find the memslot, dispatch."""
        c = self.counters
        c["faults"] += 1
        c[_FAULT_COUNTER[f.kind]] += 1
        slot = self.memslot_for(gpa)
        if slot is None or (write and slot.readonly):
            # Not RAM (or a write to ROM): an instruction fetch gets a
            # prefetch abort; a data access exits to userspace as MMIO.
            if exec:
                c["injected_aborts"] += 1
                return FaultResult(gpa, "inject_pabt", f)
            c["mmio_exits"] += 1
            return FaultResult(gpa, "KVM_EXIT_MMIO", f)
        if f.kind == "access":
            return run(handle_access_fault(self, v.idx, gpa, f), self.pgt.machine)
        res = run(user_mem_abort(self, v.idx, gpa, slot, f, write, exec), self.pgt.machine)
        if res.ret and res.outcome != "-ENOMEM":
            self.pgt._expect_ok(res.ret, "user_mem_abort")
        return res

    def _vma_pagesize(self, slot: Memslot, gpa: int) -> int:
        """The largest mapping the host backing and the slot allow at gpa
        (get_vma_page_shift + fault_supports_stage2_huge_mapping +
        transparent_hugepage_adjust, folded together).

        fault_supports_stage2_huge_mapping(memslot, hva, map_size): no block
        when ``(gpa_start & (map_size - 1)) != (uaddr_start & (map_size - 1))``
        (the kernel's "abcde" picture: the hva's huge page would back the
        wrong IPAs), nor when the block would stick out of the slot's uaddr
        range [uaddr_start, uaddr_end).  The PA needs no check of its own:
        it is congruent to the hva modulo the backing size (see Memslot).
        """
        page_size = self.pgt.page_size
        hva = slot.userspace_addr + (gpa - slot.gpa)     # gfn_to_hva_memslot_prot
        uaddr_start, uaddr_end = slot.userspace_addr, slot.userspace_addr + slot.size
        for size in self._block_sizes:
            if size > slot.backing:
                continue
            if size == page_size:
                return size
            mask = size - 1
            if (slot.gpa & mask) != (uaddr_start & mask):
                continue
            base = hva & ~mask
            if uaddr_start <= base and base + size <= uaddr_end:
                return size
        return page_size

    def _mark_page_dirty(self, slot: Memslot, gpa: int):
        """mark_page_dirty_in_slot(): one bit, for the (block-aligned) fault IPA."""
        if slot.logging and slot.dirty is not None:
            slot.dirty[(gpa - slot.gpa) >> self.pgt.page_shift] = True
            self.counters["dirty_marked"] += 1

    # -- dirty logging ----------------------------------------------------------
    def _apply_range(self, start: int, end: int, fn):
        """stage2_apply_range(): fn over chunks of the largest block size
        (1G with 4K pages), so the mmu_lock could be dropped between them."""
        step = self.pgt.granule_size[self.pgt.geom.min_block_level]
        addr = start
        while addr < end:
            nxt = min(end, (addr & ~(step - 1)) + step)
            run(fn(addr, nxt - addr), self.pgt.machine)
            addr = nxt

    def _wp_range(self, start: int, end: int):
        """stage2_wp_range(): write-protect every leaf in the range."""
        pgt = self.pgt
        self._apply_range(start, end, lambda a, s: pt.kvm_pgtable_stage2_wrprotect(
            pgt, a, s, bulk=pgt._bulk))

    def _flush_memslot(self, slot: Memslot):
        """kvm_flush_remote_tlbs_memslot(): a range TLBI over the slot."""
        if "no-flush-after-wp" in self.bugs:
            return
        run(pt.kvm_tlb_flush_vmid_range(self.pgt, slot.gpa, slot.size), self.pgt.machine)

    def kvm_mmu_split_nr_page_tables(self, size: int) -> int:
        """Tables needed to split ``size`` bytes of blocks down to pages:
        one per PMD-sized piece, plus one per PUD-sized piece with 4K pages."""
        if type(size) is not int or size <= 0:
            size = v.size("size", size)
        g = self.pgt.geom
        pmd = g.granule_size(2)
        n = -(-size // pmd)
        if g.min_block_level < 2:
            n += -(-size // g.granule_size(1))
        return n

    def _split_huge_pages(self, start: int, end: int):
        """kvm_mmu_split_huge_pages(): split blocks chunk by chunk, topping up
        the split cache (best effort) whenever it runs low."""
        chunk = self.split_chunk
        if not chunk:
            return 0
        pgt = self.pgt
        cache = self.split_page_cache
        capacity = self.kvm_mmu_split_nr_page_tables(chunk)
        cache.capacity = capacity
        addr = start
        while addr < end:
            if cache.nobjs < capacity:
                if cache.topup(capacity):
                    self.counters["split_enomem"] += 1
                    return -errno.ENOMEM
            nxt = min(end, (addr & ~(chunk - 1)) + chunk)
            ret = run(pt.kvm_pgtable_stage2_split(pgt, addr, nxt - addr, cache, bulk=pgt._bulk),
                      pgt.machine)
            if ret:
                return ret
            addr = nxt
        return 0

    def enable_dirty_logging(self, slot, eager_split_chunk: int | None = None) -> None:
        """Set KVM_MEM_LOG_DIRTY_PAGES on a memslot (kvm_arch_commit_memory_region).

        Unless manual-protect with initially-set is in use, this
        write-protects the slot (kvm_mmu_wp_memory_region), flushes its TLB
        entries and, with an eager split chunk, splits its blocks
        (kvm_mmu_split_memory_region).  ``eager_split_chunk`` is the VM's
        KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE: 0 splits lazily, a supported
        block size eagerly.  The kernel only lets userspace set it before
        memslots exist, so the first value given (here or to ``VM(...)``)
        is taken as chosen then; a different value later is -EINVAL.
        """
        s = self._slot(slot)
        if eager_split_chunk is not None:
            eager_split_chunk = self._check_chunk(eager_split_chunk)
        if s.readonly:
            raise S2ptError(f"memslot {s.id} is read-only: dirty logging applies only to "
                            f"writable memory (memslot_is_logging() is false for "
                            f"KVM_MEM_READONLY)")
        if eager_split_chunk is not None:
            self.split_chunk = eager_split_chunk
            self._chunk_chosen = True
        if s.logging:
            # __kvm_set_memory_region(): the flags do not change, "Nothing to
            # change": no commit, so no write-protect, and the bitmap is kept.
            return
        s.logging = True
        npages = s.size >> self.pgt.page_shift
        s.dirty = np.full(npages, self.initially_set, dtype=bool)
        self._split_blocks.clear()
        if self.manual_protect and self.initially_set:
            return      # write-protect and split lazily, per KVM_CLEAR_DIRTY_LOG
        self._wp_range(s.gpa, s.gpa + s.size)
        self._flush_memslot(s)
        self._split_huge_pages(s.gpa, s.gpa + s.size)

    def disable_dirty_logging(self, slot, commit: bool = True) -> None:
        """Clear KVM_MEM_LOG_DIRTY_PAGES.  kvm_set_memslot() publishes the
        new memslot (kvm_swap_active_memslots, whose synchronize_srcu waits
        for vCPUs still using the old one), then calls
        kvm_arch_commit_memory_region().  Mainline's commit frees only the
        split cache: blocks come back lazily, one guest fault at a time.
        The VM's locking may do more there (``MmuLock.logging_off``: the
        ``rwlock`` scheme unmaps the whole slot).

        ``commit=False`` stops after publishing: the state in which a vCPU
        that looks the memslot up already sees logging off while one that
        looked it up before may still be in its fault handler (the
        explorer's scenarios start there).  Nothing finishes it later.

        On a memslot that is not logging this does nothing, as in the kernel
        (the flags do not change: "Nothing to change"); in particular it
        does not free the split cache another memslot's eager split filled."""
        s = self._slot(slot)
        commit = v.flag("commit", commit)
        if not s.logging:
            return
        s.logging = False
        s.dirty = None
        if commit:
            run(self.locking.logging_off(self, s), self.pgt.machine)
            self.split_page_cache.free_all()

    def get_dirty_log(self, slot) -> np.ndarray:
        """KVM_GET_DIRTY_LOG: one bool per page of the slot, in order.

        With manual protect (the default, as QEMU uses it) this only reads
        the bitmap; in the plain mode it also clears it and write-protects
        the pages that were dirty, then flushes the TLB.
        """
        s = self._slot(slot)
        if not s.logging:
            raise S2ptError(f"memslot {s.id} is not logging dirty pages")
        bitmap = s.dirty.copy()
        if not self.manual_protect:
            self._clear_and_protect(s, 0, len(s.dirty))
        return bitmap

    def clear_dirty_log(self, slot, first: int = 0, npages: int | None = None) -> int:
        """KVM_CLEAR_DIRTY_LOG: clear bits and write-protect those pages again
        (kvm_arch_mmu_enable_log_dirty_pt_masked), splitting blocks on the way
        in initially-set mode.  Returns the number of bits cleared."""
        s = self._slot(slot)
        first = v.integer("first", first, 0, rule="a page index of the slot")
        if npages is not None:
            npages = v.integer("npages", npages, 0, rule="a number of pages, or None for all")
        if not self.manual_protect:
            raise S2ptError("KVM_CLEAR_DIRTY_LOG needs KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 "
                            "(VM(manual_protect=True)); plain mode clears in get_dirty_log")
        if not s.logging:
            raise S2ptError(f"memslot {s.id} is not logging dirty pages")
        # kvm_clear_dirty_log_protect(): first_page a multiple of 64 and not
        # past the slot; num_pages within it, a multiple of 64 unless it
        # reaches the slot's end (-EINVAL otherwise).
        total = len(s.dirty)
        first = v.integer("first", first, 0, total,
                          rule=f"a page index of the slot (0 to {total}) on a 64-page boundary")
        if first % 64:
            raise S2ptError(f"first={first}: KVM_CLEAR_DIRTY_LOG needs first_page on a "
                            f"64-page boundary (-EINVAL)")
        n = total - first if npages is None else v.integer(
            "npages", npages, 0, total - first,
            rule=f"a number of pages from first={first} to the end of the slot (0 to "
            f"{total - first}), or None for all of them")
        if n % 64 and first + n != total:
            raise S2ptError(f"npages={n}: KVM_CLEAR_DIRTY_LOG needs num_pages to be a multiple "
                            f"of 64 unless it reaches the end of the slot (-EINVAL)")
        return self._clear_and_protect(s, first, n)

    def _clear_and_protect(self, s: Memslot, first: int, n: int) -> int:
        bits = s.dirty[first:first + n]
        cleared = int(np.count_nonzero(bits))
        if not cleared:
            return 0
        shift = self.pgt.page_shift
        # One write-protect per 64-bit word of the bitmap, from its first to
        # its last set bit; runs of words that meet are merged (the result is
        # the same, in fewer walks).
        full = len(bits) // 64 * 64
        words = np.flatnonzero(bits[:full].reshape(-1, 64).any(axis=1))
        if full < len(bits) and bits[full:].any():
            words = np.append(words, full // 64)
        ranges = []
        for w in words.tolist():
            seg = bits[w * 64:(w + 1) * 64]
            nz = np.flatnonzero(seg)
            lo, hi = w * 64 + int(nz[0]), w * 64 + int(nz[-1]) + 1
            if ranges and ranges[-1][1] == lo:
                ranges[-1][1] = hi
            else:
                ranges.append([lo, hi])
        bits[:] = False
        for lo, hi in ranges:
            start = s.gpa + ((first + lo) << shift)
            end = s.gpa + ((first + hi) << shift)
            self._wp_range(start, end)
            if self.manual_protect and self.initially_set:
                self._split_huge_pages(start, end)
        self._flush_memslot(s)
        return cleared

    def unmap_memslot(self, slot) -> None:
        """Unmap the whole slot (kvm_stage2_unmap_range): the thread's
        alternative to lazy collapse -- the guest faults blocks back in."""
        s = self._slot(slot)
        run(kvm_stage2_unmap_range(self, s.gpa, s.size), self.pgt.machine)

    # -- views --------------------------------------------------------------------
    @property
    def stats(self) -> dict:
        """Counters: faults (by kind), maps, relax_perms, lazy_splits,
        refaults_after_split, dirty_marked, mmio_exits, tlbi,
        tables_allocated / _freed / _live, tables_peak."""
        s = dict(self.pgt.stats)
        s.update({k: v for k, v in self.counters.items() if v})
        for k in ("faults", "tlbi", "tables_allocated", "tables_freed"):
            s.setdefault(k, 0)
        # The peak counts every page allocated for tables, including pages
        # topped up into memcaches and not yet used.
        s["tables_peak"] = self.pgt.mm.peak - self.pgt.geom.pgd_pages
        return s

    def check(self) -> list[str]:
        """Quiescent checks: :meth:`check_invariants`, plus TLB entries that
        grant more than the tables (a missing TLBI).  Returns the stale
        entries."""
        self.check_invariants()
        if self.pgt.destroyed:
            return []
        return [line for cpu in self.vcpus for line in cpu.tlb.stale()]

    def check_invariants(self) -> None:
        """The table's invariants (:meth:`Stage2.check_invariants`), then the
        table against the VM's own records; raises :class:`~s2pt.KernelBug`
        naming every broken one:

        * memslots: ids in order, granule-aligned, inside the IPA space,
          disjoint; a read-only slot never logs;
        * a logging slot has a dirty bitmap of one bool per page (and a slot
          that does not log has none);
        * in a logging slot, every writable leaf covers only pages whose
          dirty bit is set: write access is given back only by a write
          fault, which marks the page (mark_page_dirty_in_slot), and
          clearing a bit write-protects its page again.  A writable page
          with a clear bit is a write the migration would miss.
        """
        self.pgt.check_invariants()
        problems = []
        g, shift = self.pgt.page_size, self.pgt.page_shift
        limit = 1 << self.pgt.ia_bits
        spans = []
        for k, s in enumerate(self.memslots):
            name = f"memslot {k}"
            if s.id != k:
                problems.append(f"{name} has id {s.id}")
            if s.gpa % g or s.size % g or s.size <= 0 or s.gpa + s.size > limit:
                problems.append(f"{name} [{s.gpa:#x}, +{s.size:#x}) is not a granule-aligned "
                                f"range inside the IPA space")
            spans.append((s.gpa, s.gpa + s.size, k))
            if s.logging and s.readonly:
                problems.append(f"{name} is read-only but marked as logging")
            npages = s.size >> shift
            if s.logging != (s.dirty is not None):
                problems.append(f"{name}: logging={s.logging} but its dirty bitmap is "
                                f"{'missing' if s.dirty is None else 'present'}")
            elif s.dirty is not None and (not isinstance(s.dirty, np.ndarray)
                                          or s.dirty.dtype != bool or s.dirty.shape != (npages,)):
                problems.append(f"{name}: the dirty bitmap is not {npages} bools")
            elif s.logging and not self.pgt.destroyed:
                bad = _writable_clean(self.pgt, s)
                if bad is not None:
                    problems.append(f"{name} is logging but IPA {bad:#x} is mapped writable "
                                    f"with its dirty bit clear: a write the log would miss")
        spans.sort()
        for (a0, a1, k0), (b0, _b1, k1) in zip(spans, spans[1:]):
            if b0 < a1:
                problems.append(f"memslots {k0} and {k1} overlap")
        if problems:
            raise KernelBug("invariant", "; ".join(problems))

    def __repr__(self):
        return (f"VM(ipa_bits={self.pgt.ia_bits}, granule={self.pgt.page_size}, "
                f"vcpus={len(self.vcpus)}, memslots={len(self.memslots)})")

    def measure(self) -> "Measure":
        """What a stretch of work costs, counted rather than timed::

            with vm.measure() as m:
                vm.enable_dirty_logging(slot)
            m["tables_allocated"], m["tlbi:range"]

        Afterwards ``m`` holds how much each counter of :attr:`stats` grew
        over the block, and how many TLBIs of each kind were issued
        (``"tlbi:ipa"``, ``"tlbi:range"``, ``"tlbi:ipa_nsh"``, ...); a key
        that did not change reads 0.  Nothing is reset: the VM's own
        counters and its TLBI log go on as before."""
        return Measure(self)


class Measure(dict):
    """The counters a ``with vm.measure()`` block changed (see :meth:`VM.measure`)."""

    def __init__(self, vm: VM):
        super().__init__()
        self.vm = vm

    def _now(self) -> dict:
        now = {k: v for k, v in self.vm.stats.items() if isinstance(v, (int, float))}
        now.update({f"tlbi:{k}": v for k, v in self.vm.pgt.tlbis.summary().items()})
        return now

    def __enter__(self) -> "Measure":
        self.clear()
        self._before = self._now()
        return self

    def __exit__(self, *exc) -> None:
        after = self._now()
        self.update({k: v - self._before.get(k, 0) for k, v in after.items()
                     if v != self._before.get(k, 0)})

    def __missing__(self, key):
        return 0

    @property
    def tlbis(self) -> int:
        """TLBIs of every kind issued in the block."""
        return sum(v for k, v in self.items() if k.startswith("tlbi:"))

    @property
    def broadcast_tlbis(self) -> int:
        """TLBIs every CPU had to act on: by IPA, by range, or the whole VMID
        (a local ``ipa_nsh`` one is not among them)."""
        return sum(v for k, v in self.items()
                   if k.startswith("tlbi:") and not k.endswith("_nsh"))


# ---------------------------------------------------------------------------
# The fault paths, as generators: VM.fault runs them to completion, the
# explorer's scenarios step them one shared access at a time.
# ---------------------------------------------------------------------------

def user_mem_abort(vm: VM, vcpu: int, gpa: int, slot: Memslot, fault: Fault,
                   write: bool = False, exec: bool = False):
    """user_mem_abort() (arch/arm64/kvm/mmu.c), for a fault KVM has already
    classified (kvm_handle_guest_abort found ``slot`` and the fault is not
    an access-flag fault).  Returns a :class:`FaultResult`.

    The steps, in the kernel's order:

    1. ``logging_active = memslot_is_logging(memslot)``: sampled once, from
       the memslot this vCPU looked up (a vCPU that looked it up before
       logging was turned off still sees it on);
    2. top up the vCPU's memcache (``kvm_mmu_topup_memory_cache``, outside
       the lock) unless this is a permission fault that needs no table;
    3. the mapping size: PAGE_SIZE when logging (force_pte), else the
       largest the backing and the slot's alignment allow
       (get_vma_page_shift, fault_supports_stage2_huge_mapping,
       transparent_hugepage_adjust); a permission fault on a block relaxes
       the whole block;
    4. ``read_lock(&kvm->mmu_lock)`` (the VM's locking);
    5. a permission fault whose mapping size equals the fault granule
       relaxes permissions (kvm_pgtable_stage2_relax_perms); anything else
       maps (kvm_pgtable_stage2_map), which may replace a table by a block
       (the unlinked subtree) or a block by a table;
    6. ``read_unlock``; mark the page dirty if it was mapped writable and
       the walk succeeded; -EAGAIN becomes 0 (the guest re-executes the
       access and faults again if it must).

    Simplification: the model has no MMU notifiers racing with the page
    lookup, so there is no ``mmu_invalidate_retry`` check.
    """
    pgt = vm.pgt
    # (No local holds vm.counters: the explorer fingerprints a CPU's locals,
    # and a counter is bookkeeping, not state.)
    logging_active = slot.logging and not slot.readonly
    fault_granule = pgt.granule_size[fault.level]
    perm = fault.kind == "permission"
    if not perm or (logging_active and write):
        # One step, always: it returns at once when the cache holds enough
        # (and the explorer replays a CPU from its recorded results, so a
        # program must not branch on state it did not read through an op).
        ret = yield _topup_op(vm.vcpus[vcpu].memcache, vm._min_pages)
        if ret:
            vm.counters["enomem"] += 1
            return FaultResult(gpa, "-ENOMEM", fault, ret=-errno.ENOMEM)
    if logging_active:
        # force_pte: the fault maps PAGE_SIZE.  It forces pages by the size
        # it asks to map; the walker has no force_pte for a guest
        # (kvm_pgtable_stage2_init passes no force_pte_cb: only pKVM's host
        # stage 2 has one).
        vma_pagesize = pgt.page_size
    else:
        vma_pagesize = vm._vma_pagesize(slot, gpa)
        if perm and vma_pagesize == pgt.page_size and fault_granule > pgt.page_size:
            vma_pagesize = fault_granule       # relax the whole block at once
    vma_pagesize = vm.locking.fault_map_size(vma_pagesize, fault_granule, perm)
    fault_ipa = gpa & ~(vma_pagesize - 1)
    writable = not slot.readonly and not (logging_active and not write)
    prot = _PROT_RWX if writable else _PROT_RX               # CACHE_DIC: always X
    if logging_active and fault.kind == "translation" and any(
            (gpa & ~(size - 1), size) in vm._split_blocks for size in vm._block_sizes):
        vm.counters["refaults_after_split"] += 1
    # Can this fault replace a table with a block (the unlinked subtree)?
    unlinks = vma_pagesize > fault_granule
    # Before 6.2 only this fault took the read lock (use_read_lock).
    relax_only = logging_active and perm and write and fault_granule == pgt.page_size
    lock = vm.locking
    flags = lock.fault_walk_flags(vm.fault_flags, unlinks, relax_only)
    yield from lock.fault_lock(unlinks, relax_only)      # read_lock(&kvm->mmu_lock)
    if perm and vma_pagesize == fault_granule:
        ret = yield from pt.kvm_pgtable_stage2_relax_perms(pgt, fault_ipa, prot, flags)
        outcome = "relax_perms"
    else:
        if perm and fault_granule > vma_pagesize:
            # A write to a write-protected block while logging: the map walk
            # replaces the block with an *empty* table (-E2BIG ->
            # stage2_map_walk_leaf); the rest of the block faults back.
            vm.counters["lazy_splits"] += 1
            vm._split_blocks.add((gpa & ~(fault_granule - 1), fault_granule))
        attr = d.stage2_set_prot_attr(prot, "normal", pgt.fwb)
        pa = slot.pa + (fault_ipa - slot.gpa)
        ret = yield from pt.kvm_pgtable_stage2_map(pgt, fault_ipa, vma_pagesize, pa, attr,
                                                   vm.vcpus[vcpu].memcache, flags)
        outcome = "map"
    yield from lock.fault_unlock(unlinks, relax_only)    # read_unlock(&kvm->mmu_lock)
    vm.counters["relax_perms" if outcome == "relax_perms" else "maps"] += 1
    if writable and not ret:
        yield mark_page_dirty_in_slot(vm, slot, fault_ipa)
    eagain = ret == -errno.EAGAIN
    return FaultResult(gpa, outcome, fault, vma_pagesize, 0 if eagain else ret, eagain=eagain)


def _writable_clean(pgt, slot: Memslot):
    """The first IPA in ``slot`` that a valid writable leaf maps while its
    dirty bit is clear, or None (read straight from the table pages, as
    s2pt.invariants does)."""
    mm, shift = pgt.mm, pgt.page_shift
    start, end = slot.gpa, slot.gpa + slot.size
    w = np.uint64(d.KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W | d.KVM_PTE_VALID)

    def visit(table_pa, level, base):
        page = mm.pages.get(table_pa >> shift)
        if page is None or page.freed:
            return None
        gran = pgt.granule_size[level]
        lo = max(0, (start - base) // gran)
        hi = min(pgt.ptrs_per_pte, -(-(end - base) // gran))
        if lo >= hi:
            return None
        seg = page.table[lo:hi]
        if level == 3:            # pages: one numpy test for the whole table
            wp = np.flatnonzero((seg & (w | np.uint64(d.KVM_PTE_TYPE)))
                                == (w | np.uint64(d.KVM_PTE_TYPE)))
            if not len(wp):
                return None
            first = (base + lo * gran - start) >> shift       # bit of entry lo (may be < 0)
            idx = wp + first
            idx = idx[(idx >= 0) & (idx < len(slot.dirty))]
            clean = idx[~slot.dirty[idx]]
            return None if not len(clean) else start + (int(clean[0]) << shift)
        for i in np.flatnonzero((seg & np.uint64(1)) == np.uint64(1)).tolist():
            pte = int(seg[i])
            ipa = base + (lo + i) * gran
            if level < 3 and d.kvm_pte_table(pte, level):
                hit = visit(pte & pgt.addr_mask, level + 1, ipa)
                if hit is not None:
                    return hit
                continue
            if (pte & int(w)) != int(w) or (level == 3 and not pte & d.KVM_PTE_TYPE):
                continue
            a, b = max(ipa, start), min(ipa + gran, end)
            bits = slot.dirty[(a - start) >> shift:(b - start) >> shift]
            if not bits.all():
                return a + (int(np.argmin(bits)) << shift)
        return None

    top = pgt.granule_size[pgt.start_level] * pgt.ptrs_per_pte
    for n, page in enumerate(pgt.pgd_pages):
        base = n * top
        if base < end and start < base + top:
            hit = visit(page.pa, pgt.start_level, base)
            if hit is not None:
                return hit
    return None


def kvm_stage2_unmap_range(vm: VM, start: int, size: int):
    """kvm_stage2_unmap_range() -> __unmap_stage2_range(): unmap with
    kvm_pgtable_stage2_unmap() one stage2_apply_range() chunk (the largest
    block size) at a time; the caller holds ``kvm->mmu_lock`` for write.
    The unmap walk frees every table it empties, at once."""
    pgt = vm.pgt
    step = pgt.granule_size[pgt.geom.min_block_level]
    addr, end = start, start + size
    ret = 0
    while addr < end and not ret:
        nxt = min(end, (addr & ~(step - 1)) + step)
        ret = yield from pt.kvm_pgtable_stage2_unmap(pgt, addr, nxt - addr, bulk=pgt._bulk)
        addr = nxt
    return ret


def handle_access_fault(vm: VM, vcpu: int, gpa: int, fault: Fault | None = None):
    """handle_access_fault() (arch/arm64/kvm/mmu.c): the guest touched a
    page whose access flag aging cleared; set it again with
    kvm_pgtable_stage2_mkyoung() under ``read_lock(&kvm->mmu_lock)`` (since
    fc61f554e694, v6.3; before that under the write lock, as the v6.1
    ``write-lock`` scheme takes it: fault_lock() with neither argument)."""
    pgt = vm.pgt
    lock = vm.locking
    yield from lock.fault_lock()                         # read_lock(&kvm->mmu_lock)
    ret = yield from pt.kvm_pgtable_stage2_mkyoung(pgt, gpa & ~(pgt.page_size - 1),
                                                   vm.fault_flags)
    yield from lock.fault_unlock()                       # read_unlock(&kvm->mmu_lock)
    return FaultResult(gpa, "mkyoung", fault, ret=ret)


# ---------------------------------------------------------------------------
# Kernel paths the explorer's CPUs run (s2pt.scenarios), each one shared
# access per step.  The VM's sequential methods above run their own loops;
# these are the paths a scenario gives a CPU, with the locking of the VM's
# scheme (vm.locking).
# ---------------------------------------------------------------------------

@kernel_path("kvm_handle_guest_abort")
def guest_fault(vm: VM, vcpu: int, ipa: int, slot: Memslot, fault: Fault, write: bool = True):
    """The vCPU takes ``fault`` and KVM handles it: user_mem_abort().  A
    lost cmpxchg returns -EAGAIN, user_mem_abort() returns 0 and the vCPU
    re-enters the guest, which executes the access again: the loop.  Its
    MMU walks the table as it is now and takes whatever abort that gives,
    or none (the access completes).  Each round tops up the vCPU's memcache
    again (the loser's table page went back to the page allocator).

    Simplification: the model reads the descriptors of that second walk
    with a software walk (kvm_pgtable_get_leaf's READ_ONCE, the same
    descriptors the MMU reads) and classifies them as the MMU does
    (Stage2.classify), leaving the vCPU's TLB alone.  It takes the fault
    lock around that walk: the MMU needs none (a teardown's TLBI + DSB waits
    for its walk), a software walk does.

    A vCPU spinning on -EAGAIN while the winner is descheduled between
    break and make is a cycle in the state graph that a fair scheduler does
    not follow (the winner runs): no livelock.  One that can never win is
    (s2pt.sim.search's livelock check)."""
    pgt = vm.pgt
    while True:
        if fault.kind == "access":
            res = yield from handle_access_fault(vm, vcpu, ipa, fault)
        else:
            res = yield from user_mem_abort(vm, vcpu, ipa, slot, fault, write)
        if not res.eagain:
            return res.ret
        yield cpu_relax()              # back to the guest; let the winner go on first
        out = pt.LeafWalkData()
        yield from vm.locking.fault_lock()
        yield from pt.kvm_pgtable_get_leaf(pgt, ipa, out)
        yield from vm.locking.fault_unlock()
        fault = pgt.classify(ipa, out.pte, out.level, write, False, raise_fault=False)
        if not isinstance(fault, Fault):
            return 0                   # the access goes through: someone mapped it


@kernel_path("vcpu_run")
def guest_faults(vm: VM, vcpu: int, faults):
    """The vCPU runs the guest, which takes each fault in turn:
    kvm_handle_guest_abort() -> user_mem_abort() once per ``(ipa, slot,
    fault, write)``, each with its own top-up, lock and walk."""
    for ipa, slot, fault, write in faults:
        yield from user_mem_abort(vm, vcpu, ipa, slot, fault, write)


@kernel_path("kvm_unmap_gfn_range")
def kvm_unmap_gfn_range(vm: VM, ipa: int, size: int):
    """The MMU notifier's invalidate_range_start -> kvm_unmap_gfn_range() ->
    __unmap_stage2_range(): kvm_pgtable_stage2_unmap() with mmu_lock held
    for write by the generic code.  The unmap walk frees tables it empties.
    One walk over the range: the scenarios unmap at most 2M, inside one of
    stage2_apply_range()'s chunks (kvm_stage2_unmap_range above walks chunk
    by chunk)."""
    pgt, s = vm.pgt, vm.locking
    yield from s.update_lock()                       # KVM_MMU_LOCK(kvm): write_lock
    ret = yield from pt.kvm_pgtable_stage2_unmap(pgt, ipa, size)
    yield from s.update_unlock()                     # KVM_MMU_UNLOCK(kvm)
    return ret


@kernel_path("kvm_mmu_split_huge_pages")
def kvm_mmu_split_huge_pages(vm: VM, ipa: int, size: int):
    """kvm_mmu_split_memory_region() -> kvm_mmu_split_huge_pages(): eager
    splitting when dirty logging starts, under write_lock(&kvm->mmu_lock).
    Each block becomes a new level-3 table built unlinked
    (kvm_pgtable_stage2_create_unlinked) and then swapped in.  One chunk
    covering the range, its split cache filled beforehand by the scenario;
    the VM's sequential eager split (VM.enable_dirty_logging) goes chunk by
    chunk and tops the cache up between chunks, as the kernel does."""
    pgt, s = vm.pgt, vm.locking
    yield from s.update_lock()                       # write_lock(&kvm->mmu_lock)
    ret = yield from pt.kvm_pgtable_stage2_split(pgt, ipa, size, vm.split_page_cache)
    yield from s.update_unlock()                     # write_unlock(&kvm->mmu_lock)
    return ret


@kernel_path("kvm_arch_mmu_enable_log_dirty_pt_masked")
def clear_dirty_log_split(vm: VM, ipa: int, size: int):
    """KVM_CLEAR_DIRTY_LOG -> kvm_arch_mmu_enable_log_dirty_pt_masked() ->
    kvm_mmu_split_huge_pages(), as Vipin Sharma's 2023 series proposed it
    ("Split huge pages during clear-dirty-log under MMU read lock", not
    merged): under ``read_lock(&kvm->mmu_lock)``, with a
    KVM_PGTABLE_WALK_SHARED split walk, so that vCPUs keep faulting.  Only a
    shared split can lose its break to a vCPU and take the walker's -EAGAIN
    path; mainline splits under the write lock."""
    pgt, s = vm.pgt, vm.locking
    yield from s.fault_lock()                        # read_lock(&kvm->mmu_lock)
    ret = yield from pt.kvm_pgtable_stage2_split(pgt, ipa, size, vm.split_page_cache,
                                                 flags=pt.SHARED)
    yield from s.fault_unlock()                      # read_unlock(&kvm->mmu_lock)
    return ret


@kernel_path("kvm_arch_commit_memory_region")
def kvm_arch_commit_memory_region(vm: VM, slot: Memslot):
    """The memslot change that turned dirty logging off, committing (after
    kvm_swap_active_memslots): mainline only frees the split cache, which
    does nothing to the table; the VM's locking may do more
    (``MmuLock.logging_off``: ``rwlock`` unmaps the slot under the write
    lock)."""
    yield from vm.locking.logging_off(vm, slot)
    return 0


@kernel_path("guest (MMU)")
def guest_accesses(tlb: VcpuTlb, ipas):
    """The guest on a vCPU touches memory: each access is translated by the
    vCPU's MMU (s2pt.tlb.hw_translate), which takes no lock, reads
    descriptors one by one, and caches table pointers in its walk cache and
    leaves in its TLB until a TLBI drops them."""
    for ipa in ipas:
        yield hw_walk_start(ipa)                     # TLB and walk-cache lookup
        yield from hw_translate(tlb, ipa)
