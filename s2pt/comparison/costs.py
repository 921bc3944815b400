"""What one run cost, counted from its events (:func:`run_costs`), and the
refaults that turning dirty logging off causes (:func:`logging_off_refaults`).

Costs are counted from what the CPUs did (a World's events) using the op
table :data:`s2pt.ops.OPS` -- an operation's memory effect, whether it
blocks -- not from lists of the walker's functions.  :data:`METRICS` names
each number; :mod:`s2pt.comparison.report` tables and plots them.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field

from ..descriptor import KVM_INVALID_PTE_LOCKED
from ..errors import S2ptError
from ..explorer import world as _world
from ..invariants import leaves as _leaves
from ..kvm import VM
from ..ops import OPS
from ..scenarios import get_scenario
from ..schemes import get_scheme
from ..sim.search import StateSpace, parse_schedule
from ..sim.world import World, default_choice

__all__ = ["RunCosts", "METRICS", "SHOWN", "run_costs", "usage", "logging_off_refaults",
           "summarise", "blocked_over_all_schedules",
           "FAULT_HANDLERS", "GRACE_PERIOD_OPS", "LOCK_OPS", "ATOMIC_OPS", "REFCOUNT_OPS",
           "PRIMITIVE_OPS"]

#: The kernel's fault handlers: a CPU entering one of them handles one fault.
FAULT_HANDLERS = ("user_mem_abort", "handle_access_fault", "handle_host_mem_abort")
#: RCU's updater side: the operations that start or wait for a grace period
#: (rcu_read_lock() alone costs nothing when no one ever waits for readers).
GRACE_PERIOD_OPS = ("call_rcu", "synchronize_rcu")

_EAGAIN = 11                            # errno.EAGAIN (Linux)
#: Memory effects that can change which table pages are linked or freed.
_CHANGES = frozenset({"write", "atomic", "ref", "alloc", "any"})
#: Operations that take a lock and may have to wait for it (from the op table).
LOCK_OPS = frozenset(n for n, k in OPS.items() if k.blocks and k.sync and n.endswith("lock"))
#: Atomic read-modify-writes of a descriptor (cmpxchg, xchg, ...).
ATOMIC_OPS = frozenset(n for n, k in OPS.items() if k.memory == "atomic")
#: Atomic operations on a struct page's count: get_page, put_page,
#: get_page_unless_zero (and the walker count's).  free_page returns a page to
#: the allocator and set_page_private records the unlinked table's level in
#: page->private (a plain store): no count.
REFCOUNT_OPS = frozenset(n for n, k in OPS.items()
                         if k.memory == "ref" and n not in ("free_page", "set_page_private"))
#: What "a synchronisation primitive" is, for the simplest-code rule: locks,
#: RCU, atomics and refcount operations (the MMU's own steps excluded).
PRIMITIVE_OPS = frozenset(n for n, k in OPS.items() if k.sync and not n.startswith("hw_")) \
    | ATOMIC_OPS | REFCOUNT_OPS


# ---------------------------------------------------------------------------
# Costs of one run
# ---------------------------------------------------------------------------

@dataclass
class RunCosts:
    """What one run of a scenario cost, counted from its events.

    ``retained_peak`` / ``retained_mean``: table pages that were linked into
    the table, have been unlinked and are not yet freed (peak; mean over the
    run's steps).  ``grace``: for each such page that was freed, the steps
    from its unlink to its free.  ``blocked``: CPU-steps spent waiting to
    take a lock, by operation (a CPU counts one for every step another CPU
    takes while it waits).  ``faults``: fault handlers entered
    (:data:`FAULT_HANDLERS`).  ``ops``: every operation performed, by name.
    ``eagain``: faults whose walk gave up with -EAGAIN (the vCPU re-enters
    the guest and faults again).  ``refaults``: leaf mappings valid at the
    start of the run and gone at its end (each costs the guest a fault).
    """
    steps: int = 0
    outcome: str = ""
    kinds: list = field(default_factory=list)
    faults: int = 0
    ops: dict = field(default_factory=dict)
    cmpxchg_failed: int = 0
    blocked: dict = field(default_factory=dict)
    eagain: int = 0
    refaults: int | None = 0
    retained_peak: int = 0
    retained_mean: float = 0.0
    grace: list = field(default_factory=list)
    unfreed: int = 0
    bbm_window: int = 0

    @property
    def atomics(self) -> int:
        return sum(self.ops.get(n, 0) for n in ATOMIC_OPS)

    @property
    def refcount_ops(self) -> int:
        return sum(self.ops.get(n, 0) for n in REFCOUNT_OPS)

    @property
    def tlbi(self) -> int:
        return self.ops.get("tlbi", 0)

    @property
    def blocked_on_locks(self) -> int:
        return sum(self.blocked.get(n, 0) for n in LOCK_OPS)

    @property
    def grace_mean(self) -> float | None:
        return statistics.fmean(self.grace) if self.grace else None

    @property
    def primitives(self) -> list:
        return sorted(n for n in self.ops if n in PRIMITIVE_OPS)

    @property
    def grace_periods(self) -> bool:
        """Did the run start or wait for an RCU grace period?"""
        return any(self.ops.get(n) for n in GRACE_PERIOD_OPS)

    def per_fault(self, value) -> float | None:
        return value / self.faults if self.faults and value is not None else None

    def metrics(self) -> dict:
        """The numbers :data:`METRICS` names, for this run."""
        return {
            "retained_peak": self.retained_peak,
            "retained_mean": self.retained_mean,
            "grace_steps": self.grace_mean,
            "blocked_per_fault": self.per_fault(self.blocked_on_locks),
            "atomics_per_fault": self.per_fault(self.atomics + self.refcount_ops),
            "cmpxchg_per_fault": self.per_fault(self.ops.get("cmpxchg", 0)),
            "xchg_per_fault": self.per_fault(self.ops.get("xchg", 0)),
            "refcount_per_fault": self.per_fault(self.refcount_ops),
            "eagain": self.eagain,
            "bbm_window": self.bbm_window,
            "spin_per_fault": self.per_fault(self.ops.get("cpu_relax", 0)),
            "refaults": self.refaults,
            "tlbi": self.tlbi,
            "steps": self.steps,
        }


#: metric -> (label, what it is): the columns of the cost table and the plots.
METRICS = {
    "retained_peak": ("retained pages (peak)",
                      "table pages unlinked and not yet freed, at the worst step of a run"),
    "retained_mean": ("retained pages (mean)", "the same, averaged over a run's steps"),
    "grace_steps": ("unlink -> free (steps)",
                    "steps from a table's unlink to its free (the grace period, or the "
                    "teardown's own traversal)"),
    "blocked_per_fault": ("lock-blocked steps / fault",
                          "CPU-steps spent waiting to take a lock, per fault handled"),
    "atomics_per_fault": ("atomics / fault",
                          "cmpxchg, xchg and refcount operations per fault handled"),
    "cmpxchg_per_fault": ("cmpxchg / fault", "cmpxchg operations per fault"),
    "xchg_per_fault": ("xchg / fault", "xchg operations per fault"),
    "refcount_per_fault": ("refcount ops / fault",
                           "get_page, put_page, get_page_unless_zero per fault"),
    "eagain": ("-EAGAIN retries", "faults whose walk returned -EAGAIN, per run"),
    "bbm_window": ("BBM window (steps)",
                   "the longest break-before-make window of a run: steps from an entry's "
                   "break (LOCKED) to its make; any walker that meets the entry meanwhile "
                   "gets -EAGAIN"),
    "spin_per_fault": ("spins / fault",
                       "cpu_relax() steps per fault: a walker spinning on an entry another "
                       "walker holds LOCKED, or a vCPU re-entering the guest after -EAGAIN"),
    "refaults": ("mappings lost", "leaf mappings valid at the start and gone at the end of "
                                  "a run: each is a guest refault"),
    "tlbi": ("TLBIs", "TLB invalidations per run"),
    "steps": ("steps", "shared-memory steps per run"),
}
#: The metrics the plot and the text table show (the others are in the JSON).
SHOWN = ("retained_peak", "retained_mean", "grace_steps", "blocked_per_fault",
         "atomics_per_fault", "eagain", "refaults", "tlbi", "bbm_window")


def _linked(pgt) -> set:
    """pfns of the table pages reachable from the PGD now (tolerant: a freed
    page or a page linked twice mid-race is skipped, not an error)."""
    mm = pgt.mm
    shift, mask = mm.page_shift, pgt.addr_mask
    out = set()
    stack = [(p, pgt.start_level) for p in pgt.pgd_pages]
    while stack:
        page, level = stack.pop()
        if page.pfn in out or page.freed:
            continue
        out.add(page.pfn)
        if level < 3:
            t = page.table
            for v in t[(t & 3) == 3].tolist():
                child = mm.pages.get((v & mask) >> shift)
                if child is not None:
                    stack.append((child, level + 1))
    return out


def _freed(mm) -> set:
    return {pfn for pfn, p in mm.pages.items() if p.freed}


def _valid_leaves(pgt, region) -> list | None:
    """[(ipa, end)] of the valid leaves in ``region`` (None: not readable)."""
    try:
        ls = _leaves(pgt)
    except Exception:             # a table left broken by a violation
        return None
    lo, hi = (region[0], region[0] + region[1]) if region else (0, 1 << 64)
    return [(ipa, ipa + size) for ipa, size, _lvl, pte in ls
            if pte & 1 and ipa < hi and ipa + size > lo]


def _lost(start, end) -> int:
    """How many of ``start``'s ranges ``end`` does not cover entirely."""
    lost = 0
    for a, b in start:
        cover = sorted((max(a, x), min(b, y)) for x, y in end if x < b and y > a)
        at = a
        for x, y in cover:
            if x > at:
                break
            at = max(at, y)
        lost += at < b
    return lost


class _Tracker:
    """Follows a live World step by step: which table pages are linked,
    unlinked (waiting to be freed) and freed, and when."""

    def __init__(self, w):
        self.w = w
        self.pgt = w.pgt
        self.linked = _linked(self.pgt)
        self.ever = set(self.linked)
        self.freed = _freed(self.pgt.mm)
        self.unlinked: dict = {}          # pfn -> step it was unlinked
        self.grace: list = []
        self.retained_sum = 0
        self.retained_peak = 0
        self.steps = 0
        self.start = _valid_leaves(self.pgt, w.setup.region)
        # The table pages' contents before the run (pfn -> entries): what a
        # store that carries no old value (WRITE_ONCE) overwrites, for the
        # break-before-make windows (_costs_of).
        self.mem0 = {pfn: p.table.copy() for pfn, p in self.pgt.mm.pages.items()
                     if not p.freed}

    def after(self, ev):
        kind = OPS.get(ev.op[0])
        if kind is None or kind.memory in _CHANGES:
            linked = _linked(self.pgt)
            freed = _freed(self.pgt.mm)
            for pfn in self.ever - linked - freed:
                self.unlinked.setdefault(pfn, ev.index)
            for pfn in linked:
                self.unlinked.pop(pfn, None)          # linked again (or never left)
            for pfn in freed - self.freed:
                at = self.unlinked.pop(pfn, None)
                if at is not None:
                    self.grace.append(ev.index - at)
                self.ever.discard(pfn)
            self.ever |= linked
            self.linked, self.freed = linked, freed
        self.steps += 1
        n = len(self.unlinked)
        self.retained_sum += n
        self.retained_peak = max(self.retained_peak, n)


def _drive(w, schedule=(), choose=None) -> _Tracker:
    """Step ``w`` through ``schedule`` then ``choose(enabled, last, step,
    relaxed)`` (default: no preemption, lowest CPU first), tracking it."""
    tr = _Tracker(w)
    last, relaxed = None, False
    for k, tok in enumerate(parse_schedule(schedule, limit=w.max_steps)):
        if w.outcome is not None:
            break
        if not 0 <= tok < w.n:
            raise S2ptError(f"schedule step {k}: {tok!r} is not a CPU of this scenario "
                            f"(0..{w.n - 1})")
        ev = w.step(tok)                   # S2ptError when that CPU cannot step
        tr.after(ev)
        relaxed, last = ev.op[0] == "cpu_relax", tok
    while w.outcome is None:
        en = w.enabled()
        c = choose(en, last, w.nsteps, relaxed) if choose else default_choice(en, last, relaxed)
        ev = w.step(c)
        tr.after(ev)
        relaxed, last = ev.op[0] == "cpu_relax", c
    return tr


def _is_eagain(r) -> bool:
    if isinstance(r, int):
        return r == -_EAGAIN
    return bool(getattr(r, "eagain", False)) or getattr(r, "ret", 0) == -_EAGAIN


def _costs_of(w, tr: _Tracker) -> RunCosts:
    """The post-pass over a finished World's events."""
    events = w.events
    ops = Counter(e.op[0] for e in events)
    failed = sum(1 for e in events if e.op[0] == "cmpxchg" and e.result != e.op[2])
    # Break-before-make windows: an entry stores LOCKED (the break, since
    # v6.2) or 0 over a valid entry (the break before v6.2: kvm_clear_pte),
    # and later a value that is neither (the make).  Entries left broken (a
    # pruned subtree's, an unmapped one) close no window.
    locked_at, window = {}, 0
    shift, mask = w.pgt.mm.page_shift, w.pgt.mm.page_size - 1
    cur: dict = {}                        # ptep -> value last stored in this run

    def value(ptep):
        if ptep in cur:
            return cur[ptep]
        t = tr.mem0.get(ptep >> shift)
        return 0 if t is None else t.item((ptep & mask) >> 3)

    for e in events:
        op = e.op
        if op[0] == "zalloc_page" and isinstance(e.result, int):
            # A page handed out again starts zeroed: forget its old entries.
            base = e.result
            for ptep in [p for p in cur if p >> shift == base >> shift]:
                del cur[ptep]
            tr.mem0.pop(base >> shift, None)
            continue
        kind = OPS.get(op[0])
        if kind is None or not kind.stores:
            continue
        if op[0] == "cmpxchg":
            if e.result != op[2]:
                continue
            new = op[3]
        else:
            new = op[2]
        old = value(op[1])
        cur[op[1]] = new
        opened = locked_at.get(op[1])
        if new == KVM_INVALID_PTE_LOCKED:
            if opened is None:
                locked_at[op[1]] = (e.index, True)
        elif new == 0 and old & 1:
            if opened is None:
                locked_at[op[1]] = (e.index, False)
        elif opened is not None and (opened[1] or new != 0):
            # A LOCKED entry is made by any other store (0 included: an
            # owner annotation for the host); a cleared one by a non-zero one.
            window = max(window, e.index - locked_at.pop(op[1])[0])
    # Steps blocked: CPU c waits at step k when it is neither finished nor
    # enabled; what it waits for is its next operation (performed at its next
    # step, or still pending when the run ended).
    daemon = [a.daemon for a in w.actors]
    nxt = [w.pending[c] if w.cpus[c] is not None else None for c in range(w.n)]
    blocked = Counter()
    for ev in reversed(events):
        en = ev.enabled
        for c in range(w.n):
            if c != ev.cpu and not daemon[c] and nxt[c] is not None and c not in en:
                blocked[nxt[c][0]] += 1
        nxt[ev.cpu] = ev.op
    # Faults handled: a CPU entering a fault handler.  -EAGAIN: a vCPU's retry
    # loop (kvm_handle_guest_abort) re-enters the guest with cpu_relax() at its
    # outermost frame after user_mem_abort() returned -EAGAIN as 0; a CPU
    # whose last fault gave up returns that result.
    faults = eagain = 0
    prev: dict = {}
    for ev in events:
        before = prev.get(ev.cpu, ())
        faults += sum(1 for f in FAULT_HANDLERS if f in ev.stack and f not in before)
        prev[ev.cpu] = ev.stack
        if ev.op[0] == "cpu_relax" and len(ev.stack) <= 1:
            eagain += 1
    eagain += sum(1 for c, r in enumerate(w.results) if not daemon[c] and _is_eagain(r))
    end = _valid_leaves(w.pgt, w.setup.region) if w.outcome == "done" else None
    refaults = _lost(tr.start, end) if tr.start is not None and end is not None else None
    return RunCosts(
        steps=len(events), outcome=w.outcome, kinds=sorted({v.kind for v in w.violations}),
        faults=faults, ops=dict(sorted(ops.items())), cmpxchg_failed=failed,
        blocked=dict(sorted(blocked.items())), eagain=eagain, refaults=refaults,
        retained_peak=tr.retained_peak,
        retained_mean=tr.retained_sum / tr.steps if tr.steps else 0.0,
        grace=list(tr.grace), unfreed=len(tr.unlinked), bbm_window=window)


def run_costs(scenario, scheme="rcu", schedule="", bugs=(), *, choose=None,
              template=None) -> tuple:
    """Run ``scenario`` under ``scheme`` on a live, recorded World --
    ``schedule`` first (as for :func:`s2pt.replay`), then ``choose(enabled,
    last, step, relaxed)`` or the default (no preemption, lowest CPU first)
    -- and count what it cost.  Returns ``(world, RunCosts)``.
    ``template``: a fresh World to copy instead of building one."""
    w = (template.again(record=True) if template is not None
         else _world(scenario, scheme, bugs, record=True))
    tr = _drive(w, schedule, choose)
    return w, _costs_of(w, tr)


def usage(scenario, scheme) -> dict:
    """What the default-schedule run of ``scenario`` under ``scheme`` uses:
    ``{"primitives": [...], "grace_periods": bool}`` -- the synchronisation
    primitives among its operations (:data:`PRIMITIVE_OPS`), and whether
    it starts or waits for an RCU grace period (:data:`GRACE_PERIOD_OPS`).
    The same as :func:`run_costs`' ``primitives`` and ``grace_periods``,
    without counting the rest (a run that livelocks steps to the World's
    bound, and tracking every page at every step is what costs), and without
    the end-of-run checks (the lost-update oracle searches every serial
    order first)."""
    sc, sch = get_scenario(scenario), get_scheme(scheme)
    sc.check_scheme(sch.name)
    w = World(sc, sch, frozenset(), (), record=False)
    ops: set = set()
    last, relaxed = None, False
    while w.outcome is None:
        c = default_choice(w.enabled(), last, relaxed)
        ev = w.step(c)
        ops.add(ev.op[0])
        relaxed, last = ev.op[0] == "cpu_relax", c
    return {"primitives": sorted(ops & PRIMITIVE_OPS),
            "grace_periods": bool(ops & set(GRACE_PERIOD_OPS))}


# The cost runs' schedulers are the explorer's: sim.search.random_chooser and
# pct_chooser.

# ---------------------------------------------------------------------------
# Refaults after dirty logging is turned off (sequential)
# ---------------------------------------------------------------------------

def logging_off_refaults(scheme, blocks: int = 2, pages_per_block: int = 8) -> int:
    """Guest refaults caused by turning dirty logging off under ``scheme``.

    A VM whose locking is the scheme (one 2M-backed memslot of ``blocks``
    blocks) has dirty logging on; the guest reads ``pages_per_block`` pages
    of each block (each read fault maps one page); logging is turned off
    (``VM.disable_dirty_logging``, which does what the scheme does); the
    guest reads the same pages again.  Returns the faults that second pass
    takes: 0 when the pages stay mapped, one per block when the slot was
    unmapped and each block faults back as a 2M block."""
    sch = get_scheme(scheme)
    vm = VM(40, 4096, vcpus=1, locking=sch, mm_ops=sch.mm_ops())
    base, block = 1 << 30, 2 << 20
    slot = vm.add_memslot(base, blocks * block, backing="2M")
    ipas = [base + b * block + k * (block // pages_per_block)
            for b in range(blocks) for k in range(pages_per_block)]
    vm.enable_dirty_logging(slot)
    for ipa in ipas:
        vm.access(ipa)
    vm.disable_dirty_logging(slot)
    faults = 0
    for ipa in ipas:
        r = vm.fault(ipa)
        if r.outcome != "none":
            faults += 1
            vm.access(ipa)
    return faults



def summarise(runs: list) -> dict:
    """Per metric: mean, min, max and count over ``runs`` (those with a value)."""
    out = {}
    for m in METRICS:
        vals = [r.metrics()[m] for r in runs]
        vals = [v for v in vals if v is not None]
        if vals:
            out[m] = {"mean": round(statistics.fmean(vals), 3), "min": round(min(vals), 3),
                      "max": round(max(vals), 3), "n": len(vals)}
    return out


# ---------------------------------------------------------------------------
# Lock-blocked steps over every schedule (exhaustive, not sampled)
# ---------------------------------------------------------------------------

def blocked_over_all_schedules(scenario, scheme) -> dict:
    """The lock-blocked CPU-steps of :class:`RunCosts` (``blocked_on_locks``),
    over **every** schedule of ``scenario`` under ``scheme`` instead of a
    sample of runs: the least and the most any run pays, and the mean a
    uniformly random scheduler pays (each step, any enabled CPU with equal
    probability, as :func:`s2pt.sim.search.random_chooser` picks), computed
    over the whole state graph (no symmetry or partial-order reduction:
    they would merge runs whose costs differ).

    A step costs one for every other CPU that is neither finished nor
    enabled and waits to take a lock.  The graph must be acyclic -- no CPU
    spins or retries (an exclusive lock, no -EAGAIN) -- or the most is
    unbounded: S2ptError then.  Returns ``{"min", "max", "mean", "states",
    "runs"}`` (``runs``: complete schedules, counted)."""
    w = _world(scenario, scheme, record=False)
    space = StateSpace(World(w.scenario, w.scheme, w.bugs, (), record=False),
                       symmetry=False, por=False)
    name = f"{getattr(scenario, 'name', scenario)} under {scheme}"
    memo: dict = {}            # state -> (least, most, uniform mean, runs) from it to the end
    on_path: set = set()

    def waiting(s, en, c) -> int:
        """CPUs other than ``c`` that wait to take a lock in state ``s``."""
        return sum(1 for i, nid in enumerate(s[1])
                   if i != c and i not in en and not space.daemon[i]
                   and not space.nodes[nid].done and space.nodes[nid].op[0] in LOCK_OPS)

    # Depth first, without recursion: a run is thousands of steps long.
    stack = [(space.initial, None)]
    while stack:
        s, succ = stack[-1]
        if s in memo:
            stack.pop()
            continue
        if succ is None:                       # first visit: expand
            if s in on_path:
                raise S2ptError(f"{name}: a schedule comes back to a state it left (a CPU "
                                f"spins or retries), so the lock-blocked steps of a run are "
                                f"unbounded")
            en = space.enabled(s)
            succ = []
            for c in en:
                nxt, viols = space.step(s, c)
                if nxt is None:
                    raise S2ptError(f"{name}: a schedule ends in a violation "
                                    f"({viols[0].kind}); its cost is not a run's")
                succ.append((waiting(s, en, c), nxt))
            stack[-1] = (s, succ)
            on_path.add(s)
            for _, nxt in succ:
                if nxt not in memo:
                    if nxt in on_path:
                        raise S2ptError(f"{name}: a schedule comes back to a state it left (a "
                                        f"CPU spins or retries), so the lock-blocked steps of "
                                        f"a run are unbounded")
                    stack.append((nxt, None))
            continue
        stack.pop()                            # every successor is done
        on_path.discard(s)
        if not succ:
            memo[s] = (0, 0, 0.0, 1)
            continue
        parts = [(here + memo[nxt][0], here + memo[nxt][1], here + memo[nxt][2], memo[nxt][3])
                 for here, nxt in succ]
        memo[s] = (min(p[0] for p in parts), max(p[1] for p in parts),
                   sum(p[2] for p in parts) / len(parts), sum(p[3] for p in parts))
    lo, hi, mean, runs = memo[space.initial]
    return {"min": lo, "max": hi, "mean": round(mean, 3), "states": len(memo), "runs": runs}
