"""The operations a page-table walk performs on shared state, one ``yield`` each.

The walker and its visitors (:mod:`s2pt.pgtable`) are generator functions.
Every access to shared state is written as a ``yield`` of a small operation,
and the value sent back is the result, so the code reads like the kernel::

    old = yield READ_ONCE(ptep)
    ok = (yield cmpxchg(ptep, old, KVM_INVALID_PTE_LOCKED)) == old
    yield put_page(ptep)

Who performs the operation is up to the *driver*:

* :func:`run` (the sequential driver) performs each one immediately on a
  :class:`Machine`: that is what ``Stage2.map(...)`` does;
* the interleaving explorer runs several such generators and chooses which
  CPU performs its next operation, so every ``yield`` is a preemption point.

Because the machine performs every operation, it is the one place that sees
them all: memory reports use-after-free, the TLB log records invalidations,
and observers (checkers, traces) receive each operation as an event.

An operation is a plain tuple ``(name, *args)``; the constructors below only
give them kernel names.  **The op table** :data:`OPS` says, for every name,
what it does to table memory, whether it synchronises or is observed, how it
reads in a log and a race diagram, and what performing it does: its
sequential effect (a handler of :class:`Machine`), its concurrent effect (a
handler of the explorer's machine, :class:`s2pt.sim.sync.SimMachine`, when
different) and its blocking rule there.  Both machines build their dispatch
from this table, and an import-time check refuses a row that either machine
cannot perform (:func:`check_effects`).  Every other module asks the table;
adding an operation means a constructor, a row here, and the code that
yields it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

from . import descriptor as d
from .errors import KernelBug, S2ptError
from .memory import PAGE_POISON64, PhysMem

__all__ = [
    "READ_ONCE", "WRITE_ONCE", "smp_store_release", "cmpxchg", "xchg", "hw_read",
    "get_page", "put_page", "page_count", "get_page_unless_zero",
    "walker_get", "walker_get_unless_zero", "walker_put", "set_page_private", "page_private",
    "zalloc_page", "free_page", "tlbi", "dsb", "cmo", "rcu_read_lock",
    "rcu_read_unlock", "call_rcu", "spin_lock", "spin_unlock", "read_lock", "read_unlock",
    "write_lock", "write_unlock", "kvm_mmu_topup_memory_cache", "cpu_relax", "hw_walk_start",
    "memcache_nobjs", "mark_page_dirty_in_slot",
    "OpKind", "OPS", "View", "op_text", "result_text", "desc_text", "loc_text",
    "Machine", "run", "check_effects",
]


# ---- constructors (each returns the tuple a generator yields) -------------

def READ_ONCE(ptep):
    return ("READ_ONCE", ptep)


def WRITE_ONCE(ptep, value):
    return ("WRITE_ONCE", ptep, value)


def smp_store_release(ptep, value):
    return ("smp_store_release", ptep, value)


def cmpxchg(ptep, old, new):
    """Result: the value that was in memory (== old means it succeeded)."""
    return ("cmpxchg", ptep, old, new)


def xchg(ptep, new):
    """xchg(ptep, new): store ``new`` whatever was there; the result is the
    old value.  RFC v1's pruning walker (April 2022) took ownership of each
    descendant entry of an unlinked subtree with it
    (s2pt.pgtable.stage2_prune_lock_pte)."""
    return ("xchg", ptep, new)


def hw_read(pa, level=None):
    """A descriptor read by a vCPU's hardware page-table walker (not
    software), from a table of ``level`` when the walker knows it."""
    return ("hw_read", pa) if level is None else ("hw_read", pa, level)


def get_page(pa):
    return ("get_page", pa)


def put_page(pa):
    return ("put_page", pa)


def page_count(pa):
    return ("page_count", pa)


def get_page_unless_zero(pa):
    return ("get_page_unless_zero", pa)


# The walker count: a second count in struct page, apart from page_count
# (s2pt.memory; only the refcount teardown schemes of s2pt.schemes use it).
# ``field`` says where it lives: "_refcount" (the default: a count with
# _refcount's guarantee, legal to touch on a freed or reallocated page) or
# "ptdesc" (a field of the page-table descriptor, the table's only while the
# page is one: the mutation walker-count-in-ptdesc).

def _walker_op(name, pa, field):
    return (name, pa) if field == "_refcount" else (name, pa, field)


def walker_get(pa, field="_refcount"):
    """get_page() on the walker count of the table page at ``pa``."""
    return _walker_op("walker_get", pa, field)


def walker_get_unless_zero(pa, field="_refcount"):
    """get_page_unless_zero() on the walker count: result True if taken."""
    return _walker_op("walker_get_unless_zero", pa, field)


def walker_put(pa, field="_refcount"):
    """put_page_testzero() on the walker count: result True if it was the last."""
    return _walker_op("walker_put", pa, field)


def set_page_private(pa, value):
    """set_page_private(virt_to_page(pa), value): the unlinker records the
    level of an unlinked table in struct page (stage2_free_unlinked_table)."""
    return ("set_page_private", pa, value)


def page_private(pa):
    """page_private(virt_to_page(pa)): result the value set there."""
    return ("page_private", pa)


def mark_page_dirty_in_slot(vm, slot, gpa):
    """mark_page_dirty_in_slot(): set the memslot's dirty bit for ``gpa``
    (a store to the memslot's dirty bitmap, shared with every vCPU and with
    KVM_GET_DIRTY_LOG).  ``vm`` counts it."""
    return ("mark_page_dirty_in_slot", vm, slot, gpa)


def zalloc_page(mc):
    """mm_ops->zalloc_page(memcache): result is the new page's PA, or None."""
    return ("zalloc_page", mc)


def free_page(pa):
    return ("free_page", pa)


def tlbi(kind, addr=0, arg=0):
    """A TLB invalidation the kernel would issue.

    ``kind`` is "ipa" (__kvm_tlb_flush_vmid_ipa, ``arg`` = level or None for
    TLBI_TTL_UNKNOWN), "ipa_nsh" (the local variant used by relax_perms),
    "range" (kvm_tlb_flush_vmid_range, ``arg`` = size) or "vmid"
    (__kvm_tlb_flush_vmid).
    """
    return ("tlbi", kind, addr, arg)


def dsb(kind="ish"):
    return ("dsb", kind)


def cmo(kind, pa, size):
    """Cache maintenance: "dcache_clean_inval_poc" or "icache_inval_pou"."""
    return ("cmo", kind, pa, size)


def rcu_read_lock():
    return ("rcu_read_lock",)


def rcu_read_unlock():
    return ("rcu_read_unlock",)


def call_rcu(fn, *args):
    """Queue ``fn(*args)`` (a generator function) to run after a grace period."""
    return ("call_rcu", fn, args)


def spin_lock(lock: str):
    return ("spin_lock", lock)


def spin_unlock(lock: str):
    return ("spin_unlock", lock)


def read_lock(lock: str):
    return ("read_lock", lock)


def read_unlock(lock: str):
    return ("read_unlock", lock)


def write_lock(lock: str):
    return ("write_lock", lock)


def write_unlock(lock: str):
    return ("write_unlock", lock)


def kvm_mmu_topup_memory_cache(mc, min_objs: int):
    """kvm_mmu_topup_memory_cache(): fill a vCPU's memcache from the page
    allocator so that it holds at least ``min_objs`` pages (user_mem_abort()
    does it before every fault, outside mmu_lock).  The result is 0 or
    -ENOMEM.  One step: the page allocator is shared."""
    return ("kvm_mmu_topup_memory_cache", mc, min_objs)


def memcache_nobjs(mc):
    """Read ``mc->nobjs``: how many pages a memcache holds (stage2_split_walker
    decides how much of a block to split by it).  A read of the memcache,
    not of table memory; an operation, so that a CPU program never branches
    on machine state it did not read through one."""
    return ("memcache_nobjs", mc)


def cpu_relax():
    """A hint, not a shared access: this CPU cannot make progress until
    another one does (a vCPU that lost a cmpxchg goes back to the guest,
    which will fault again).  Like loom's and shuttle's ``yield_now``, it
    lets the default policy and PCT run someone else first, so that a retry
    loop does not spin forever in a live run.  Exhaustive search ignores it:
    every interleaving is explored anyway."""
    return ("cpu_relax",)


def hw_walk_start(ipa: int, tlb=None, who: str = "guest"):
    """A guest (or pKVM host) load or store reaches the MMU, which starts
    translating ``ipa`` (TLB and walk-cache lookups happen at this step).

    With ``tlb`` (the CPU's :class:`~s2pt.tlb.VcpuTlb`) a TLB hit is known
    here: the access completes at this step and no walk is in flight, so a
    TLBI + DSB elsewhere need not wait for it."""
    return ("hw_walk_start", ipa) if tlb is None else ("hw_walk_start", ipa, tlb, who)


# ---------------------------------------------------------------------------
# Rendering: names for table entries and descriptors
# ---------------------------------------------------------------------------

class View:
    """What a log needs to name table memory: the table (``pgt``), the level
    of each table page it has seen (``levels``: pfn -> level) and the PGD
    pages.  A World keeps one and teaches it the levels of new tables as
    they are linked; :func:`op_text` without a view prints raw addresses."""

    def __init__(self, pgt, levels: dict | None = None):
        self.pgt = pgt
        self.pgd_pfns = [p.pfn for p in pgt.pgd_pages]
        self.levels = dict(levels) if levels is not None else _table_levels(pgt)

    def learn(self, ptep: int, value: int):
        """A table descriptor was written at ``ptep``: its child's level is known."""
        pgt = self.pgt
        lvl = self.levels.get(ptep >> pgt.page_shift)
        if lvl is not None and lvl < 3 and value & 3 == 3:
            child = (value & pgt.addr_mask) >> pgt.page_shift
            if child in pgt.mm.pages:
                self.levels[child] = lvl + 1


def _table_levels(pgt) -> dict:
    """pfn -> level of every table reachable from the PGD (a plain scan of
    table memory; the walker is not used)."""
    mm = pgt.mm
    out = {}
    stack = [(p, pgt.start_level) for p in pgt.pgd_pages]
    while stack:
        page, level = stack.pop()
        if page.pfn in out or page.freed:
            continue
        out[page.pfn] = level
        if level < 3:
            for v in page.table[(page.table & 3) == 3].tolist():
                child = mm.pages.get((v & pgt.addr_mask) >> mm.page_shift)
                if child is not None:
                    stack.append((child, level + 1))
    return out


def loc_text(view, ptep: int) -> str:
    """L3[1] for entry 1 of a level-3 table; 0x...[idx] when the level is unknown."""
    if view is None:
        return f"[{ptep:#x}]"
    pgt = view.pgt
    pfn = ptep >> pgt.page_shift
    idx = (ptep & (pgt.page_size - 1)) >> 3
    level = view.levels.get(pfn)
    base = f"{pfn << pgt.page_shift:#x}"
    if level is None:
        return f"{base}[{idx}]"
    if level == pgt.start_level and pfn in view.pgd_pfns:
        return f"PGD[{idx + view.pgd_pfns.index(pfn) * pgt.ptrs_per_pte}]"
    if sum(1 for lv in view.levels.values() if lv == level) == 1:
        return f"L{level}[{idx}]"
    return f"L{level}@{base}[{idx}]"


def desc_text(view, value, level=None) -> str:
    """A descriptor in a few words: table 0x..., page 0x... R-X, LOCKED ..."""
    if value is None:
        return "-"
    if not isinstance(value, int):
        return str(value)
    if value == 0:
        return "0"
    if value == d.KVM_INVALID_PTE_LOCKED:
        return "LOCKED"
    if value == PAGE_POISON64:
        return "0xaaaa... (poison)"
    if not value & 1:
        return f"{value:#x} (invalid)"
    if view is None:
        return f"{value:#x}"
    pgt = view.pgt
    pa = value & pgt.addr_mask
    if value & 2 and (level is None or level < 3) and pgt.mm.pages.get(pa >> pgt.page_shift):
        return f"table {pa:#x}"
    kind = "page" if level == 3 else "block" if level is not None else "leaf"
    af = "" if value & d.KVM_PTE_LEAF_ATTR_LO_S2_AF else " !AF"
    return f"{kind} {pa:#x} {d.prot_of(value)}{af}"


def _lvl(view, ptep):
    return None if view is None else view.levels.get(ptep >> view.pgt.page_shift)


def _page(view, pa):
    return pa & ~(view.pgt.page_size - 1) if view is not None else pa


def _tlbi_text(view, op):
    kind, addr, arg = op[1], op[2], op[3]
    if kind == "vmid":
        return "TLBI VMALLS12E1IS"
    if kind == "range":
        return f"TLBI range [{addr:#x}, +{arg:#x})"
    return f"TLBI IPAS2E1{'' if kind == 'ipa_nsh' else 'IS'} {addr:#x}"


def _call_rcu_text(view, op):
    args = op[2]
    what = f", table {args[1]:#x}" if len(args) > 1 and isinstance(args[1], int) else ""
    return f"call_rcu({op[1].__name__}{what})"


def _read_result(view, op, r):
    return desc_text(view, r, _lvl(view, op[1]))


def _cmpxchg_result(view, op, r):
    return "ok" if r == op[2] else f"failed, found {desc_text(view, r, _lvl(view, op[1]))}"


def _field(op):
    """Where a walker-count op's count lives, when not the default."""
    return f", {op[2]}" if len(op) > 2 else ""


def _generic_text(view, op):
    if len(op) == 2 and isinstance(op[1], str):
        return f"{op[0]}({op[1]})"
    if len(op) == 1:
        return f"{op[0]}()"
    return f"{op[0]}{op[1:]!r}"


# ---------------------------------------------------------------------------
# The op table
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class OpKind:
    """What one kind of operation is.

    ``memory``: what it does to table pages -- "read" (a descriptor load),
    "write" (a plain store), "atomic" (a read-modify-write), "ref" (a
    ``struct page`` field: a refcount, page->private, or the allocator),
    "alloc" (a memcache), "part" (another shared part of the machine, such
    as a memslot's dirty bitmap: ``op[1]``..), "none", or "any" (it may
    change anything: snapshot all).  ``addr``: ``op[1]`` is a table-memory
    address.  ``sync``: it may change locks, RCU or the walks in flight.
    ``observed``: it may change an observer's state (a TLB, the BBM
    automaton).  ``fold``: consecutive ones of a CPU fold into one
    race-diagram line.  ``text(view, op)`` and ``result(view, op, result)``
    render it; ``verb`` says what a CPU did to a page in a use-after-free
    explanation.

    What performing it does: ``effect`` names the :class:`Machine` handler
    (default: the op's own name), ``sim_effect`` the explorer machine's
    handler when that differs (``s2pt.sim.sync.SimMachine``), and ``wait``
    its blocking rule there (``SimMachine._wait_<wait>``; empty: it never
    has to wait).  Only a simulated CPU can wait; on one CPU every
    operation completes.
    """
    name: str
    memory: str = "none"
    addr: bool = False
    sync: bool = False
    observed: bool = False
    fold: bool = False
    text: Callable | None = None
    result: Callable | None = None
    verb: str = ""
    effect: str = ""
    sim_effect: str = ""
    wait: str = ""

    @property
    def stores(self) -> bool:
        """A store to a descriptor (plain or atomic)."""
        return self.memory in ("write", "atomic")

    @property
    def blocks(self) -> bool:
        """It may have to wait (it has a blocking rule)."""
        return bool(self.wait)

    @property
    def seq(self) -> str:
        """The name of its sequential handler."""
        return self.effect or self.name

    @property
    def sim(self) -> str:
        """The name of its handler on the explorer's machine."""
        return self.sim_effect or self.seq


def _k(name, **kw):
    return OpKind(name, **kw)


#: name -> OpKind, for every operation any CPU program yields.
OPS: dict[str, OpKind] = {k.name: k for k in (
    _k("READ_ONCE", memory="read", addr=True, fold=True, verb="read an entry of", effect="read",
       text=lambda v, op: f"READ_ONCE({loc_text(v, op[1])})", result=_read_result),
    _k("hw_read", memory="read", sync=True, fold=True, verb="its MMU read an entry of",
       text=lambda v, op: f"MMU reads({loc_text(v, op[1])})", result=_read_result),
    _k("WRITE_ONCE", memory="write", addr=True, observed=True, verb="wrote an entry of",
       effect="write",
       text=lambda v, op: f"WRITE_ONCE({loc_text(v, op[1])}, "
                          f"{desc_text(v, op[2], _lvl(v, op[1]))})"),
    _k("smp_store_release", memory="write", addr=True, observed=True, verb="wrote an entry of",
       effect="write",
       text=lambda v, op: f"smp_store_release({loc_text(v, op[1])}, "
                          f"{desc_text(v, op[2], _lvl(v, op[1]))})"),
    _k("cmpxchg", memory="atomic", addr=True, observed=True, verb="did a cmpxchg on an entry of",
       text=lambda v, op: f"cmpxchg({loc_text(v, op[1])}, {desc_text(v, op[2], _lvl(v, op[1]))}"
                          f" -> {desc_text(v, op[3], _lvl(v, op[1]))})",
       result=_cmpxchg_result),
    _k("xchg", memory="atomic", addr=True, observed=True, verb="exchanged an entry of",
       text=lambda v, op: f"xchg({loc_text(v, op[1])}, {desc_text(v, op[2], _lvl(v, op[1]))})",
       result=_read_result),
    _k("get_page", memory="ref", addr=True, fold=True, verb="took a reference on",
       text=lambda v, op: f"get_page({_page(v, op[1]):#x})"),
    _k("put_page", memory="ref", addr=True, fold=True, verb="dropped a reference on",
       text=lambda v, op: f"put_page({_page(v, op[1]):#x})"),
    _k("page_count", memory="read", addr=True, fold=True, verb="read the refcount of",
       text=lambda v, op: f"page_count({_page(v, op[1]):#x})",
       result=lambda v, op, r: str(r)),
    _k("get_page_unless_zero", memory="ref", addr=True, verb="tried to take a reference on",
       text=lambda v, op: f"get_page_unless_zero({_page(v, op[1]):#x})",
       result=lambda v, op, r: str(r)),
    _k("walker_get", memory="ref", addr=True, fold=True,
       verb="took a walker reference on",
       text=lambda v, op: f"walker_get({_page(v, op[1]):#x}{_field(op)})"),
    _k("walker_get_unless_zero", memory="ref", addr=True,
       verb="tried to take a walker reference on",
       text=lambda v, op: f"walker_get_unless_zero({_page(v, op[1]):#x}{_field(op)})",
       result=lambda v, op, r: "got it" if r else "failed: count is 0"),
    _k("walker_put", memory="ref", addr=True, fold=True,
       verb="dropped a walker reference on",
       text=lambda v, op: f"walker_put({_page(v, op[1]):#x}{_field(op)})",
       result=lambda v, op, r: "last reference" if r else ""),
    _k("set_page_private", memory="ref", addr=True, verb="recorded the level in",
       text=lambda v, op: f"set_page_private({_page(v, op[1]):#x}, {op[2]!r})"),
    _k("page_private", memory="read", addr=True, verb="read the private data of",
       text=lambda v, op: f"page_private({_page(v, op[1]):#x})",
       result=lambda v, op, r: repr(r)),
    _k("free_page", memory="ref", addr=True, observed=True, verb="freed",
       text=lambda v, op: f"free_page({_page(v, op[1]):#x})"),
    _k("zalloc_page", memory="alloc", observed=True,
       text=lambda v, op: "zalloc_page(memcache)",
       result=lambda v, op, r: f"{r:#x}" if isinstance(r, int) else "NULL"),
    _k("kvm_mmu_topup_memory_cache", memory="any", effect="topup",
       text=lambda v, op: f"kvm_mmu_topup_memory_cache(memcache, {op[2]})",
       result=lambda v, op, r: str(r) if r else ""),
    _k("memcache_nobjs", text=lambda v, op: "mc->nobjs", result=lambda v, op, r: str(r)),
    _k("mark_page_dirty_in_slot", memory="part",
       text=lambda v, op: f"mark_page_dirty_in_slot(IPA {op[3]:#x})"),
    _k("tlbi", wait="tlbi", observed=True, text=_tlbi_text),
    _k("dsb", text=lambda v, op: f"dsb({op[1]})"),
    _k("cmo", fold=True, text=lambda v, op: op[1]),
    _k("rcu_read_lock", sync=True, text=lambda v, op: "rcu_read_lock()"),
    _k("rcu_read_unlock", sync=True, text=lambda v, op: "rcu_read_unlock()"),
    _k("call_rcu", sync=True, text=_call_rcu_text),
    _k("synchronize_rcu", sync=True, text=lambda v, op: "synchronize_rcu(): grace period starts"),
    _k("rcu_gp_wait", sync=True, wait="rcu_gp_wait",
       text=lambda v, op: "synchronize_rcu(): readers gone"),
    _k("rcu_next_callback", sync=True, wait="rcu_next_callback",
       text=lambda v, op: "callback", result=lambda v, op, r: r[0].__name__ if r else ""),
    _k("rcu_barrier", wait="rcu_barrier", text=lambda v, op: "rcu_barrier()"),
    _k("spin_lock", sync=True, effect="nop", sim_effect="write_lock", wait="write_lock",
       text=_generic_text),
    _k("spin_unlock", sync=True, effect="nop", sim_effect="write_unlock", text=_generic_text),
    _k("read_lock", sync=True, effect="nop", sim_effect="read_lock", wait="read_lock",
       text=_generic_text),
    _k("read_unlock", sync=True, effect="nop", sim_effect="read_unlock", text=_generic_text),
    _k("write_lock", sync=True, effect="nop", sim_effect="write_lock", wait="write_lock",
       text=_generic_text),
    _k("write_unlock", sync=True, effect="nop", sim_effect="write_unlock", text=_generic_text),
    _k("cpu_relax", effect="nop", text=lambda v, op: "cpu_relax()"),
    _k("hw_walk_start", sync=True, effect="nop", sim_effect="hw_walk_start",
       text=lambda v, op: f"{op[3] if len(op) > 3 else 'guest'} access {op[1]:#x}: MMU starts"),
    # pKVM: the hypervisor records a page's new owner (s2pt.checkers.page_owner);
    # the isolation checker performs it (Machine.register), so it may change an
    # observer's state.  Without a checker it records nothing.
    _k("page_owner", memory="none", observed=True, effect="nop",
       text=lambda v, op: f"{op[3]}: PA {op[1]:#x} -> {op[2]}"),
)}


def _names(pred) -> frozenset:
    return frozenset(n for n, k in OPS.items() if pred(k))


#: Derived sets, for the inner loops that cannot afford an attribute lookup.
READS = _names(lambda k: k.memory == "read")
STORES = _names(lambda k: k.stores)
REFS = _names(lambda k: k.memory == "ref")
NOMEM = _names(lambda k: k.memory == "none")
SYNC = _names(lambda k: k.sync)
BLOCKING = _names(lambda k: k.blocks)
PARTS = _names(lambda k: k.memory == "part")
OBSERVED = _names(lambda k: k.observed)
ADDR = _names(lambda k: k.addr)
FOLDABLE = _names(lambda k: k.fold)


def op_text(op, view: View | None = None) -> str:
    """How ``op`` reads in a log: ``cmpxchg(L2[0], table 0x... -> LOCKED)``."""
    kind = OPS.get(op[0])
    if kind is None or kind.text is None:
        return _generic_text(view, op)
    return kind.text(view, op)


def result_text(op, result, view: View | None = None) -> str:
    """How the result of ``op`` reads ('' when there is nothing to say)."""
    kind = OPS.get(op[0])
    if kind is None or kind.result is None:
        return ""
    return kind.result(view, op, result)


class Machine:
    """Performs operations: physical memory plus the per-VM TLB bookkeeping.

    ``mmu`` is the :class:`s2pt.tlb.S2Mmu` whose VMID the TLBIs target.
    ``observers`` are called as ``observer(op, result)`` after each operation
    and ``pre_observers`` as ``observer(op)`` before it (checkers that need
    the old value of a descriptor hang there).  The sequential fast path,
    with its bulk numpy runs, is used only when both lists are empty.

    ``dispatch`` (op name -> handler) is built from the op table: each row's
    ``effect`` names one of :meth:`effects`.  The explorer's machine
    (s2pt.sim.sync.SimMachine) adds its own effects and builds it from the
    rows' ``sim_effect``.
    """

    #: Statistics and per-step registers, not state (the explorer's snapshot
    #: protocol, s2pt.snapshot).
    sim_ignore = ("stats",)

    def __init__(self, mem: PhysMem, mmu=None, stats: Counter | None = None):
        self.mem = mem
        self.mmu = mmu
        self.observers: list = []
        self.pre_observers: list = []
        #: operations registered by checkers (``register``): name -> handler
        self.extensions: dict = {}
        self.stats: Counter = Counter() if stats is None else stats
        self.rcu_nesting = 0
        self.rcu_callbacks: list = []
        self.sequential_depth = 0      # > 0 while run() drives this machine
        self.draining_rcu = False      # run() is invoking queued callbacks
        effects = self.effects()
        missing = sorted(n for n, k in OPS.items() if self._effect_of(k) not in effects)
        assert not missing, (f"op table rows whose effect {type(self).__name__} lacks: "
                             f"{missing}")
        self.dispatch = {name: effects[self._effect_of(k)] for name, k in OPS.items()}

    @staticmethod
    def _effect_of(kind: OpKind) -> str:
        return kind.seq

    def effects(self) -> dict:
        """Effect name -> handler(op), for every effect an op-table row may
        name.  The common memory operations are inlined closures: a live
        table page and an aligned address.  Anything unusual (a freed or
        missing page, a refcount about to reach zero) takes PhysMem's own
        method, which checks and reports it."""
        m = mem = self.mem
        pages, shift, mask = mem.pages, mem.page_shift, mem.page_size - 1

        def read(op):
            page = pages.get(op[1] >> shift)
            if page is None or page.freed or op[1] & 7:
                return m.read64(op[1])
            return page.table.item((op[1] & mask) >> 3)

        def hw_read(op):
            page = pages.get(op[1] >> shift)
            if page is None or page.freed or op[1] & 7:
                return m.read64(op[1], "hardware walker read")
            return page.table.item((op[1] & mask) >> 3)

        def write(op):
            page = pages.get(op[1] >> shift)
            if page is None or page.freed or op[1] & 7:
                return m.write64(op[1], op[2])
            page.table[(op[1] & mask) >> 3] = op[2]

        def cmpxchg(op):
            page = pages.get(op[1] >> shift)
            if page is None or page.freed or op[1] & 7:
                return m.cmpxchg64(op[1], op[2], op[3])
            table, i = page.table, (op[1] & mask) >> 3
            cur = table.item(i)
            if cur == op[2]:
                table[i] = op[3]
            return cur

        def xchg(op):
            page = pages.get(op[1] >> shift)
            if page is None or page.freed or op[1] & 7:
                return m.xchg64(op[1], op[2])
            table, i = page.table, (op[1] & mask) >> 3
            cur = table.item(i)
            table[i] = op[2]
            return cur

        def get_page(op):
            page = pages.get(op[1] >> shift)
            if page is None or page.freed:
                return m.get_page(op[1])
            page.refcount += 1

        def put_page(op):
            page = pages.get(op[1] >> shift)
            if page is None or page.freed or page.refcount < 1:
                return m.put_page(op[1])
            page.refcount -= 1
            if not page.refcount:
                m.free_page(page)            # the last reference: PhysMem.put_page frees it

        def page_count(op):
            page = pages.get(op[1] >> shift)
            if page is None:
                return m.page_count(op[1])
            return page.refcount

        def mark_page_dirty_in_slot(op):
            op[1]._mark_page_dirty(op[2], op[3])

        return {
            "read": read, "hw_read": hw_read, "write": write, "cmpxchg": cmpxchg, "xchg": xchg,
            "get_page": get_page, "put_page": put_page, "page_count": page_count,
            "get_page_unless_zero": lambda op: m.get_page_unless_zero(op[1]),
            "walker_get": lambda op: m.walker_get(*op[1:]),
            "walker_get_unless_zero": lambda op: m.walker_get_unless_zero(*op[1:]),
            "walker_put": lambda op: m.walker_put(*op[1:]),
            "set_page_private": lambda op: m.set_page_private(op[1], op[2]),
            "page_private": lambda op: m.page_private(op[1]),
            "zalloc_page": self._zalloc,
            "free_page": lambda op: m.free_page(m.page_of(op[1])),
            "topup": lambda op: op[1].topup(op[2]),
            "memcache_nobjs": lambda op: op[1].nobjs,
            "mark_page_dirty_in_slot": mark_page_dirty_in_slot,
            "tlbi": self._tlbi,
            "dsb": self._count_dsb,
            "cmo": self._count_cmo,
            "rcu_read_lock": self._rcu_lock,
            "rcu_read_unlock": self._rcu_unlock,
            "call_rcu": self._call_rcu,
            "synchronize_rcu": self._synchronize_rcu,
            "rcu_gp_wait": _nop,
            "rcu_barrier": self._rcu_barrier,
            "rcu_next_callback": self._rcu_next_callback,
            # One CPU: a lock is always free, a yield hint has no one to
            # yield to, and an MMU walk starts at once (s2pt.sim.sync's
            # SimMachine gives these their concurrent meaning).
            "nop": _nop,
        }

    def violation(self, kind: str, message: str):
        """A rule was broken (a use-after-free, a stale TLB entry, ...).
        The sequential machine raises :class:`~s2pt.KernelBug`; the
        explorer's machine records it against the step."""
        raise KernelBug(kind, message)

    def register(self, name: str, handler):
        """Let ``handler(op)`` perform operation ``name`` (a checker's own
        operation, such as pKVM's ``page_owner``; it must have a row in OPS)."""
        if name not in OPS:
            raise S2ptError(f"register({name!r}): no such operation in s2pt.ops.OPS")
        self.extensions[name] = handler
        self.dispatch[name] = handler

    def _count(self, op):
        self.stats[op[0] if op[0] != "cmo" else op[1]] += 1

    def _count_dsb(self, op):
        self.stats["dsb"] += 1

    def _count_cmo(self, op):
        self.stats[op[1]] += 1

    def _zalloc(self, op):
        mc = op[1]
        page = mc.alloc() if mc is not None else None
        if page is None:
            return None
        page.ptdesc = True             # handed to the walker as a page table
        self.stats["tables_allocated"] += 1
        return page.pa

    def _tlbi(self, op):
        self.stats["tlbi"] += 1
        if self.mmu is not None:
            self.mmu.tlbi(op[1], op[2], op[3])

    def _rcu_lock(self, op):
        self.rcu_nesting += 1

    def _rcu_unlock(self, op):
        self.rcu_nesting -= 1

    def _call_rcu(self, op):
        # One CPU, no concurrent readers: the sequential driver runs the
        # callback at the next quiescent point (the end of run()).
        self.rcu_callbacks.append((op[1], op[2]))

    def _synchronize_rcu(self, op):
        # One CPU: no other reader can be inside; but waiting for a grace
        # period inside one's own read-side section never returns.
        if self.rcu_nesting:
            raise KernelBug("rcu", "synchronize_rcu() inside an RCU read-side critical "
                                   "section: the grace period would wait for itself")

    def _rcu_barrier(self, op):
        # Every queued callback has run when rcu_barrier() returns.
        if self.rcu_nesting:
            raise KernelBug("rcu", "rcu_barrier() inside an RCU read-side critical section")
        while self.rcu_callbacks:
            fn, args = self.rcu_callbacks.pop(0)
            run(fn(*args), self)

    def _rcu_next_callback(self, op):
        # The RCU callback thread, on one CPU: the oldest callback, if any.
        if not self.rcu_callbacks or self.rcu_nesting:
            raise KernelBug("deadlock", "the RCU callback thread waits for a callback that one "
                                        "CPU can never queue while it waits")
        return self.rcu_callbacks.pop(0)

    @property
    def watched(self) -> bool:
        return bool(self.observers or self.pre_observers)

    @property
    def bulk_ok(self) -> bool:
        """May a walk started now take the numpy bulk path?  Only inside the
        sequential driver (``run``) and only when nobody watches the steps."""
        return self.sequential_depth > 0 and not (self.observers or self.pre_observers)

    def perform(self, op):
        for obs in self.pre_observers:
            obs(op)
        result = self.dispatch[op[0]](op)
        for obs in self.observers:
            obs(op, result)
        return result


def _nop(op):
    return None


#: code object -> the kernel function name to show in traces and race
#: diagrams (None: a helper frame that is not shown, such as a lock wrapper).
DISPLAY: dict = {}


def kernel_path(name: str | None):
    """Decorator: show this generator as kernel function ``name`` in traces
    and race diagrams (None: do not show its frame; its caller shows)."""
    def mark(fn):
        DISPLAY[fn.__code__] = name
        fn.kernel_name = name
        return fn
    return mark


def run(gen, machine: Machine):
    """The sequential driver: perform each operation at once, to completion.

    Returns the generator's return value (a kernel-style int: 0 or -errno).
    Deferred ``call_rcu`` callbacks run afterwards: with one CPU there is no
    reader left, so the grace period has already elapsed.
    """
    send = gen.send
    result = None
    machine.sequential_depth += 1
    try:
        if machine.observers or machine.pre_observers:
            perform = machine.perform
            while True:
                result = perform(send(result))
        else:
            dispatch = machine.dispatch
            while True:
                op = send(result)
                result = dispatch[op[0]](op)
    except StopIteration as stop:
        ret = stop.value
    finally:
        machine.sequential_depth -= 1
    if not machine.draining_rcu:
        # One loop invokes the callbacks, in queue order, including those
        # that callbacks queue: a run() per callback, never nested.
        machine.draining_rcu = True
        try:
            while machine.rcu_callbacks and machine.rcu_nesting == 0:
                fn, args = machine.rcu_callbacks.pop(0)
                run(fn(*args), machine)
        finally:
            machine.draining_rcu = False
    return ret


def check_effects(machine_cls) -> None:
    """The op table's promise, checked at import: every row's effect exists
    on ``machine_cls`` (its ``effect`` on this sequential machine, its
    ``sim_effect`` on the explorer's), and on the explorer's machine every
    row with a blocking rule has one.  Raises AssertionError naming the
    rows."""
    # Building one builds its dispatch (and, for the explorer's machine, its
    # blocking rules) from the table, and says which rows it lacks.
    machine_cls(PhysMem())


check_effects(Machine)
