"""TLB invalidation, as the kernel issues it for one VM (``struct kvm_s2_mmu``).

Every stage-2 change that could leave a stale translation cached must be
followed by a TLBI for the VM's VMID:

* ``__kvm_tlb_flush_vmid_ipa(mmu, ipa, level)`` -- one IPA, with a level
  hint (TTL); ``TLBI_TTL_UNKNOWN`` when the level is not known (unmapping a
  table entry);
* ``__kvm_tlb_flush_vmid_ipa_nsh`` -- the same, local to this CPU, used
  after relaxing permissions (a stale *stricter* entry only causes one
  more fault);
* ``kvm_tlb_flush_vmid_range(mmu, addr, size)`` -- a range; without
  FEAT_TLBIRANGE it becomes a whole-VMID flush;
* ``__kvm_tlb_flush_vmid`` -- everything for the VMID.

:class:`TlbiLog` records them in order.  Consecutive per-IPA invalidations
of neighbouring entries are stored as one run, so unmapping 16 million pages
keeps a small log while ``len(log)`` still counts every instruction.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ops import hw_read
from .snapshot import Frozen, Stateful

__all__ = ["Tlbi", "TlbiLog", "S2Mmu", "TLBI_TTL_UNKNOWN"]

TLBI_TTL_UNKNOWN = None


@dataclass(frozen=True)
class Tlbi:
    """One TLB invalidation: ``kind`` in {"ipa", "ipa_nsh", "range", "vmid"}.

    For "ipa"/"ipa_nsh", ``arg`` is the level hint (None = TTL unknown); for
    "range" it is the size in bytes.
    """

    kind: str
    addr: int
    arg: int | None
    vmid: int

    def __str__(self):
        if self.kind == "vmid":
            return f"TLBI VMALLS12E1IS vmid={self.vmid}"
        if self.kind == "range":
            return f"TLBI range vmid={self.vmid} [{self.addr:#x}, {self.addr + self.arg:#x})"
        ttl = "?" if self.arg is None else self.arg
        op = "IPAS2E1" if self.kind == "ipa_nsh" else "IPAS2E1IS"
        return f"TLBI {op} vmid={self.vmid} ipa={self.addr:#x} level={ttl}"


class TlbiLog:
    """An ordered log of TLBIs, run-length encoded.

    A run is ``[kind, first_addr, arg, count, stride]``: ``count``
    invalidations of the same kind and level at ``first_addr + i*stride``.
    """

    def __init__(self, vmid: int):
        self.vmid = vmid
        self.runs: list[list] = []
        self.count = 0

    def add(self, kind: str, addr: int, arg, count: int = 1, stride: int = 0):
        self.count += count
        if count == 1:
            stride = 0
        if self.runs and (kind == "ipa" or kind == "ipa_nsh"):
            r = self.runs[-1]
            if r[0] == kind and r[2] == arg:
                # Extend the last run when this continues its progression.
                step = addr - r[1] if r[3] == 1 else r[4]
                if step > 0 and addr == r[1] + r[3] * step and (count == 1 or stride == step):
                    r[4] = step
                    r[3] += count
                    return
        self.runs.append([kind, addr, arg, count, stride])

    def __len__(self):
        return self.count

    def __iter__(self):
        for kind, addr, arg, count, stride in self.runs:
            for i in range(count):
                yield Tlbi(kind, addr + i * stride, arg, self.vmid)

    def clear(self):
        self.runs.clear()
        self.count = 0

    def summary(self) -> dict:
        """How many TLBIs of each kind."""
        out: dict = {}
        for kind, _addr, _arg, count, _stride in self.runs:
            out[kind] = out.get(kind, 0) + count
        return out


class S2Mmu(Frozen):
    """struct kvm_s2_mmu: one stage-2 context (a VMID and its tables).

    The TLBIs the walker issues land here.  The per-vCPU TLB and walk-cache
    model (dirty logging and the interleaving engine) subscribes to them.
    """

    #: The TLBI log and the register naming the issuing vCPU are not state
    #: (s2pt.snapshot): the explorer's TLBs are parts of their own.
    sim_ignore = ("tlbi_log", "current_vcpu")

    def __init__(self, vmid: int = 1):
        self.vmid = vmid
        self.tlbi_log = TlbiLog(vmid)
        self.listeners: list = []
        self.current_vcpu = None     # whose local (nsh) TLBIs reach only itself

    def tlbi(self, kind: str, addr: int, arg):
        self.tlbi_log.add(kind, addr, arg)
        for fn in self.listeners:
            fn(kind, addr, arg)

    def tlbi_run(self, kind: str, addr: int, arg, count: int, stride: int):
        """``count`` per-IPA TLBIs at addr, addr+stride, ... (bulk paths)."""
        if count <= 0:
            return
        self.tlbi_log.add(kind, addr, arg, count, stride)
        for fn in self.listeners:
            run_fn = getattr(fn, "__self__", None)
            if run_fn is not None and hasattr(run_fn, "invalidate_run"):
                run_fn.invalidate_run(kind, addr, arg, count, stride)
            else:
                for i in range(count):
                    fn(kind, addr + i * stride, arg)


# ---------------------------------------------------------------------------
# Per-vCPU TLBs and walk caches, and the hardware walker that fills them
# ---------------------------------------------------------------------------

class VcpuTlb(Stateful):
    """One vCPU's cached stage-2 state for one VMID.

    * ``entries``: leaf translations, keyed by ``(level, block-aligned IPA)``,
      holding the descriptor as it was when the walk read it.  Only valid
      leaves with AF set are cached (an AF-clear entry faults instead).
    * ``walk``: walk-cache entries, keyed by ``(level, IPA prefix)``, holding
      the PA of the table that resolves ``level`` for that prefix.  A walk
      can start there, skipping the levels above.

    Like a real TLB they are small: ``capacity`` leaf entries and
    ``walk_capacity`` walk-cache entries; the oldest is evicted first (the
    architecture lets an implementation drop any entry at any time).

    Both are dropped by TLBIs for the VMID (``S2Mmu.listeners``): by IPA
    (walk-cache entries of any level, since KVM uses the non-"last level"
    TLBI IPAS2E1IS; leaves only of the level named by the TTL hint, or of
    every level when it is TLBI_TTL_UNKNOWN), by range, or all of them.  The local ``ipa_nsh`` variant only reaches the vCPU that
    issued it (``S2Mmu.current_vcpu``).

    Two hazards are checked here, the hardware side of break-before-make:

    * a table page freed while a walk cache still points into it: the MMU
      may walk it at any moment (use-after-free by the hardware walker);
    * a translation served from a TLB entry that grants more than the tables
      do now (another PA, or W/X that was taken away): a missing TLBI.
    """

    #: Counters, not state (the explorer's snapshot protocol, s2pt.snapshot);
    #: everything else is either state (the entries) or fixed.
    sim_ignore = ("hits", "misses")

    def __init__(self, pgt, vcpu: int, capacity: int = 2048, walk_capacity: int = 256,
                 window=None):
        """``window(ipa) -> bool``, when given: is ``ipa`` inside a
        break-before-make window (invalidated, its TLBI + DSB not yet
        complete)?  There the architecture lets a TLB keep using the old
        entry, so a hit is not a stale translation (the explorer passes
        casemate's automaton, s2pt.bbm.BbmChecker.tlbi_pending)."""
        self.pgt = pgt
        self.window = window
        self.vcpu = vcpu
        # Whose MMU this is, as messages name it: a guest's vCPU, or, on pKVM's
        # host stage 2 (a table built for EL2), a host CPU.
        self.cpu_name = f"host CPU{vcpu}" if getattr(pgt, "hyp", False) else f"vCPU{vcpu}"
        self.capacity = capacity
        self.walk_capacity = walk_capacity
        self.hits = 0
        self.misses = 0
        # Storage, chosen so that a TLBI finds its victims without a scan:
        # last-level leaves are filed by 2M (level-2) bucket, everything
        # else by level and aligned IPA.
        self._g2 = pgt.granule_size[2]
        self._l3: dict = {}                                   # bucket -> {base: pte}
        self._leaf = {lvl: {} for lvl in range(pgt.start_level, 3)}     # level -> {base: pte}
        self._walk = {lvl: {} for lvl in range(pgt.start_level + 1, 4)}  # level -> {base: table}
        self._walk_by_pfn: dict = {}     # table pfn -> walk-cache keys pointing at it
        # Fill order, for eviction: (level, base) -> None, oldest first.  An
        # entry leaves its order when it leaves the TLB, so the order is exact.
        self._fifo_leaf: dict = {}
        self._fifo_walk: dict = {}
        _spans(pgt)                      # pgt._tlb_spans
        pgt.mmu.listeners.append(self.invalidate)
        pgt.mm.free_hooks.append(self._on_free)

    @property
    def entries(self) -> dict:
        """{(level, base IPA): descriptor} of every cached leaf translation."""
        out = {(3, base): pte for d in self._l3.values() for base, pte in d.items()}
        out.update({(lvl, base): pte for lvl, d in self._leaf.items() for base, pte in d.items()})
        return out

    @property
    def walk(self) -> dict:
        """{(level, IPA prefix): table PA} of every walk-cache entry."""
        return {(lvl, base): t for lvl, d in self._walk.items() for base, t in d.items()}

    def __repr__(self):
        return (f"<VcpuTlb vcpu{self.vcpu}: {len(self._fifo_leaf)} entries, "
                f"{len(self._fifo_walk)} walk-cache>")

    @property
    def _n_leaf(self) -> int:
        return len(self._fifo_leaf)

    @property
    def _n_walk(self) -> int:
        return len(self._fifo_walk)

    # -- the explorer's snapshot protocol ------------------------------------
    def sim_state(self):
        """A hashable snapshot: every entry in fill order (s2pt.sim.search
        restores stored states with :meth:`sim_restore`, not deep copies)."""
        return (tuple((lvl, base, self._leaf_get(lvl, base)) for lvl, base in self._fifo_leaf),
                tuple((lvl, base, self._walk[lvl][base]) for lvl, base in self._fifo_walk))

    def sim_pointers(self, state):
        """The table pages this TLB's walk cache points into, in ``state``
        (for a race window: the MMU may walk them at any moment)."""
        return [table for _, _, table in state[1]]

    def sim_restore(self, state):
        leaves, walks = state
        self._l3 = {}
        self._leaf = {lvl: {} for lvl in self._leaf}
        self._walk = {lvl: {} for lvl in self._walk}
        self._walk_by_pfn = {}
        self._fifo_leaf, self._fifo_walk = {}, {}
        for lvl, base, pte in leaves:
            self.fill((lvl, base), pte)
        for lvl, base, table in walks:
            self.fill_walk((lvl, base), table)

    def _leaf_get(self, level: int, base: int) -> int:
        if level == 3:
            return self._l3[base // self._g2][base]
        return self._leaf[level][base]

    # -- filling, with eviction of the oldest entry --------------------------
    def fill(self, key, pte: int):
        """Cache a leaf translation."""
        level, base = key
        if level == 3:
            b = base // self._g2
            d = self._l3.get(b)
            if d is None:
                d = self._l3[b] = {}
        else:
            d = self._leaf[level]
        new = base not in d
        d[base] = pte
        if new:
            self._fifo_leaf[key] = None
            if len(self._fifo_leaf) > self.capacity:
                self._evict()

    def fill_walk(self, key, table_pa: int):
        """Cache a table pointer (a walk-cache entry)."""
        level, base = key
        d = self._walk[level]
        old = d.get(base)
        if old is not None:
            self._unindex(old, key)
        else:
            self._fifo_walk[key] = None
        d[base] = table_pa
        pfn = table_pa >> self.pgt.page_shift
        keys = self._walk_by_pfn.get(pfn)
        if keys is None:
            self._walk_by_pfn[pfn] = {key}
        else:
            keys.add(key)
        if len(self._fifo_walk) > self.walk_capacity:
            self._evict()

    def _unindex(self, table_pa: int, key):
        pfn = table_pa >> self.pgt.page_shift
        keys = self._walk_by_pfn[pfn]
        keys.discard(key)
        if not keys:
            del self._walk_by_pfn[pfn]

    def _evict(self):
        """Drop the oldest entries of whichever store is over capacity."""
        while len(self._fifo_leaf) > self.capacity:
            self._pop_leaf(*next(iter(self._fifo_leaf)))
        while len(self._fifo_walk) > self.walk_capacity:
            self._pop_walk(*next(iter(self._fifo_walk)))

    def _pop_leaf(self, level: int, base: int):
        if level == 3:
            b = base // self._g2
            d = self._l3.get(b)
            if d is not None and d.pop(base, None) is not None:
                del self._fifo_leaf[level, base]
                if not d:
                    del self._l3[b]
        elif self._leaf[level].pop(base, None) is not None:
            del self._fifo_leaf[level, base]

    def _pop_walk(self, level: int, base: int):
        table = self._walk[level].pop(base, None)
        if table is not None:
            del self._fifo_walk[level, base]
            pfn = table >> self.pgt.page_shift           # self._unindex(table, key)
            keys = self._walk_by_pfn[pfn]
            keys.discard((level, base))
            if not keys:
                del self._walk_by_pfn[pfn]

    # -- invalidation ----------------------------------------------------------
    def invalidate(self, kind: str, addr: int, arg):
        if kind == "range":
            lo, hi = addr, addr + arg
        elif kind == "vmid":
            self._l3.clear()
            for d in (*self._leaf.values(), *self._walk.values()):
                d.clear()
            self._walk_by_pfn.clear()
            self._fifo_leaf.clear()
            self._fifo_walk.clear()
            return
        else:
            if kind == "ipa_nsh" and self.pgt.mmu.current_vcpu != self.vcpu:
                return
            # ``arg`` is the TTL level hint (None: TLBI_TTL_UNKNOWN).
            self._drop(addr, addr + 1, arg)
            return
        self._drop(lo, hi, None)

    def _drop(self, lo: int, hi: int, leaf_level):
        """Drop the cached entries that overlap [lo, hi): leaves of every
        level, or only of ``leaf_level`` (a TLBI's TTL hint), and walk-cache
        entries of every level.

        TTL (FEAT_TTL, TLBI IPAS2E1IS bits [47:44]) names the level of the
        *leaf* entry for the address; the Arm ARM lets a TLBI with a wrong
        hint invalidate nothing ("If an incorrect value for the TTL field is
        specified for the entries being invalidated by the instruction, then
        no entries are required by the architecture to be invalidated"), and
        the kernel says the same in asm/tlbflush.h ("If the level is wrong,
        no invalidation may take place").  So a cached leaf of another level
        survives here: the stale-TLB check then catches a wrong hint.

        Walk-cache entries (cached table descriptors) are dropped at every
        level, as before.  The hint describes the leaf; the architecture
        ties the walk-cache entries on the way to it to the same TLBI and
        gives no separate rule for a table entry's own level, and the kernel
        never relies on one: whenever it invalidates a *table* entry it
        passes TLBI_TTL_UNKNOWN (stage2_unmap_put_pte, hyp_unmap_walker) or
        a range flush (stage2_try_break_pte -> kvm_tlb_flush_vmid_range).
        Keeping them unconditional can only hide a stale walk cache after a
        wrongly hinted TLBI, never invent one.
        """
        l3 = self._l3
        if l3 and (leaf_level is None or leaf_level == 3):
            g2 = self._g2
            first, last = lo // g2, (hi - 1) // g2
            if first == last:
                buckets = (first,) if first in l3 else ()
            elif last - first + 1 <= len(l3):
                buckets = [b for b in range(first, last + 1) if b in l3]
            else:
                buckets = [b for b in l3 if first <= b <= last]
            for b in buckets:
                d = l3[b]
                if b * g2 >= lo and (b + 1) * g2 <= hi:
                    fifo = self._fifo_leaf
                    for base in d:
                        del fifo[3, base]
                    del l3[b]
                else:
                    g3 = self.pgt.granule_size[3]
                    for base in [x for x in d if x < hi and x + g3 > lo]:
                        self._pop_leaf(3, base)
        # Each store holds the entries of one level, each covering ``span``
        # bytes from its base.  A TLBI that fits in one span has one candidate.
        spans = self.pgt._tlb_spans
        leaf_spans, walk_spans = spans[0], spans[1]
        for level, d in self._leaf.items():
            if d and (leaf_level is None or leaf_level == level):
                span = leaf_spans[level]
                first = lo & ~(span - 1)
                if hi - first <= span:
                    if first in d:
                        self._pop_leaf(level, first)
                else:
                    for base in _victims(d, lo, hi, first, span):
                        self._pop_leaf(level, base)
        for level, d in self._walk.items():
            if d:
                span = walk_spans[level]
                first = lo & ~(span - 1)
                if hi - first <= span:
                    if first in d:
                        self._pop_walk(level, first)
                else:
                    for base in _victims(d, lo, hi, first, span):
                        self._pop_walk(level, base)

    def invalidate_run(self, kind: str, addr: int, arg, count: int, stride: int):
        """``count`` per-IPA TLBIs ``stride`` apart.  When they are a page
        apart, every cached entry overlapping the run contains one of the
        IPAs, so one pass over the range does the same work -- restricted,
        like each TLBI, to leaves of the hinted level (``arg``)."""
        if stride == self.pgt.page_size and kind == "ipa" and count > 0:
            self._drop(addr, addr + count * stride, arg)
        else:
            for i in range(count):
                self.invalidate(kind, addr + i * stride, arg)

    def _on_free(self, page):
        keys = self._walk_by_pfn.get(page.pfn)
        if not keys:
            return
        for level, base in sorted(keys):
            self.pgt.mm.violation(
                "use-after-free",
                f"table page {page.pa:#x} freed while {self.cpu_name}'s walk cache still "
                f"points to it for IPA {base:#x} (level {level}): the hardware walker may "
                f"read it at any time; the TLBI must come before the free")

    def lookup(self, ipa: int):
        """The cached leaf (level, descriptor) that translates ``ipa``, or None."""
        if not self._fifo_leaf:
            return None
        pgt = self.pgt
        d = self._l3.get(ipa // self._g2)
        if d:
            pte = d.get(ipa & ~(pgt.granule_size[3] - 1))
            if pte is not None:
                return 3, pte
        leaf = self._leaf
        for level, span in pgt._tlb_spans[2]:
            d = leaf[level]
            if d:
                pte = d.get(ipa & ~(span - 1))
                if pte is not None:
                    return level, pte
        return None

    def lookup_walk(self, ipa: int):
        """The deepest walk-cache entry for ``ipa``: (level, table PA) or None."""
        if not self._fifo_walk:
            return None
        walk = self._walk
        for level, span in self.pgt._tlb_spans[3]:
            d = walk[level]
            if d:
                table = d.get(ipa & ~(span - 1))
                if table is not None:
                    return level, table
        return None

    def stale(self) -> list[str]:
        """Cached translations that grant more than the tables do now."""
        out = []
        for (level, base), pte in self.entries.items():
            why = self.pgt.stale_reason(base, level, pte)
            if why:
                out.append(f"{self.cpu_name} TLB entry for IPA {base:#x} (level {level}): {why}")
        return out


def _victims(d: dict, lo: int, hi: int, first: int, span: int) -> list:
    """The bases of the entries in ``d`` (each ``span`` bytes, aligned) that
    overlap [lo, hi); ``first`` is lo rounded down to ``span``."""
    n = (hi - first + span - 1) // span
    if n <= len(d):
        return [first + i * span for i in range(n) if first + i * span in d]
    return [x for x in d if x < hi and x + span > lo]


def _spans(pgt):
    """Per-geometry constants of the TLB model, kept on the (opaque) table:
    ``[0][level]`` the bytes a leaf entry of ``level`` covers, ``[1][level]``
    those of a walk-cache entry for ``level`` (one entry of level - 1), and
    the lookup orders, deepest first: ``[2]`` (level, span) of the leaf
    levels above 3, ``[3]`` (level, span) of the walk-cache levels."""
    sp = pgt.__dict__.get("_tlb_spans")
    if sp is None:
        g = pgt.granule_size
        sp = ({lvl: g[lvl] for lvl in range(pgt.start_level, 4)},
              {lvl: g[lvl - 1] for lvl in range(pgt.start_level + 1, 4)},
              tuple((lvl, g[lvl]) for lvl in range(2, pgt.start_level - 1, -1)),
              tuple((lvl, g[lvl - 1]) for lvl in range(3, pgt.start_level, -1)))
        pgt._tlb_spans = sp
    return sp


def hw_translate(tlb: VcpuTlb, ipa: int, write: bool = False, exec: bool = False):
    """The vCPU's MMU translating ``ipa`` (a generator: one ``hw_read`` per
    descriptor it fetches).  Returns a Translation or a Fault (not raised).

    TLB hit first; otherwise start from the deepest walk-cache entry that
    covers ``ipa`` (or VTTBR_EL2's PGD), read descriptors down to the leaf,
    and fill the walk cache and the TLB on the way.
    """
    pgt = tlb.pgt
    hit = tlb.lookup(ipa)
    if hit is not None:
        return _tlb_hit(tlb, ipa, hit, write, exec)
    tlb.misses += 1
    level, table = tlb.lookup_walk(ipa) or (
        pgt.start_level, pgt.pgd + pgt.pgd_page_idx(ipa) * pgt.page_size)
    while True:
        idx = (ipa >> pgt.granule_shift[level]) & (pgt.ptrs_per_pte - 1)
        pte = yield hw_read(table + 8 * idx, level)
        if level < 3 and pte & 3 == 3:
            table = pte & pgt.addr_mask
            level += 1
            tlb.fill_walk((level, ipa & ~(pgt.granule_size[level - 1] - 1)), table)
            continue
        # Only valid leaves with AF set are cached; a permission fault on
        # this access does not stop the entry being cached for the next one.
        if pte & 1 and pte & (1 << 10) and (level < 3 or pte & 2):
            tlb.fill((level, ipa & ~(pgt.granule_size[level] - 1)), pte)
        return pgt.classify(ipa, pte, level, write, exec, "walk", False)


def _tlb_hit(tlb: VcpuTlb, ipa: int, hit, write: bool, exec: bool):
    """A translation served by the TLB; a stale entry is a violation."""
    pgt = tlb.pgt
    tlb.hits += 1
    level, pte = hit
    why = pgt.stale_reason(ipa & ~(pgt.granule_size[level] - 1), level, pte, at=(ipa,))
    if why and tlb.window is not None and tlb.window(ipa):
        why = ""                      # inside the BBM window: the architecture allows it
    if why:
        pgt.mm.violation("stale-tlb", f"{tlb.cpu_name} used a stale TLB entry for IPA "
                                      f"{ipa:#x}: {why} (a TLBI is missing)")
    return pgt.classify(ipa, pte, level, write, exec, "tlb", False)


def hw_translate_now(tlb: VcpuTlb, ipa: int, write: bool = False, exec: bool = False):
    """:func:`hw_translate` performed at once, for the sequential driver
    when nobody watches the steps: the same generator, each ``hw_read``
    answered by the machine's own handler, without :func:`s2pt.ops.run`'s
    bookkeeping."""
    gen = hw_translate(tlb, ipa, write, exec)
    read = tlb.pgt.machine.dispatch["hw_read"]
    try:
        op = gen.send(None)
        while True:
            op = gen.send(read(op))
    except StopIteration as stop:
        return stop.value
