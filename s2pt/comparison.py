"""Every teardown scheme side by side: verdicts, costs, mutations (``s2pt.compare``).

``s2pt.compare()`` (and ``python -m s2pt compare``) generates, never by hand:

1. **The verdict table.**  Rows are schemes (:data:`s2pt.schemes.SCHEMES`),
   columns are scenarios (:data:`s2pt.scenarios.SCENARIOS`).  Each cell is
   the explorer's exhaustive stateful search of that scenario under that
   scheme: "safe (exhaustive, N states)", or each violation kind with its
   shortest schedule (and the race diagram, :meth:`Cell.diagram`), or "not
   declared: <why>" when the scenario refuses the scheme.  Every declared
   cell is checked against the scenario's declaration
   (:meth:`s2pt.sim.search.Result.check_declared`): a mismatch is reported
   loudly and makes the command exit 1.

2. **Costs measured in the model**, per scheme, on one scenario scaled from
   1 to 4 vCPUs (:data:`COST_SCENARIO`, ``collapse-vs-fault``: one vCPU
   collapses a level-3 table into a block while the others fault inside it).
   For each scheme and vCPU count: the verdict (exhaustive up to
   :data:`EXHAUSTIVE_VCPUS` vCPUs; above it, sampled -- seeded PCT schedules,
   and the counterexamples found with fewer vCPUs replayed -- and the
   cell says so), then ``runs`` recorded runs -- the default
   schedule, then seeded random and PCT schedules, alternately -- each
   measured by :func:`run_costs`: table pages retained while waiting to be
   freed (peak and mean), steps from unlink to free (the grace period),
   CPU-steps blocked on locks, atomic operations per fault (cmpxchg, xchg,
   refcount operations), -EAGAIN retries, mappings the guest lost (each one
   a refault) and TLBIs.  A separate sequential measure,
   :func:`logging_off_refaults`, counts the guest refaults that turning
   dirty logging off causes (the price of an unmap-everything scheme).
   :meth:`Comparison.plot` draws each cost against the vCPU count, and
   :meth:`Comparison.choose_table` is the perfbook-style "which to choose"
   table generated from the same numbers, each need with its rule.

3. **Mutations**: every deliberately broken variant
   (``s2pt.scenarios.MUTATIONS``) is searched exhaustively and scored
   caught / total.

Everything is generic over the three registries: a scheme, scenario or
mutation added there appears here without a change.  Costs are counted from
what the CPUs did (a World's events) using the op table :data:`s2pt.ops.OPS`
-- an operation's memory effect, whether it blocks -- not from lists of the
walker's functions.
"""

from __future__ import annotations

import dataclasses
import json
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

from . import scenarios as _scenarios
from .errors import S2ptError
from .explorer import explore, replay, replay_command, world as _world
from .invariants import leaves as _leaves
from .descriptor import KVM_INVALID_PTE_LOCKED
from .ops import OPS
from .scenarios import SCENARIOS, SOMETIMES, get_scenario
from .schemes import SCHEMES, get_scheme
from .sim.search import NEVER_ARISES, format_schedule, parse_schedule, pct_chooser, random_chooser
from .sim.violation import KINDS
from .sim.world import default_choice

__all__ = ["compare", "Comparison", "Cell", "CostCell", "RunCosts", "MutationResult",
           "run_costs", "logging_off_refaults", "mutations", "scaled_scenario", "METRICS",
           "NEEDS", "COST_SCENARIO", "MAX_VCPUS", "EXHAUSTIVE_VCPUS"]

#: The scenario the costs are measured on, scaled from 1 to MAX_VCPUS vCPUs.
COST_SCENARIO = "collapse-vs-fault"
MAX_VCPUS = 4
#: Up to this many vCPUs a cost cell's verdict is an exhaustive search;
#: above it, seeded PCT and random sampling (the cell says so).
EXHAUSTIVE_VCPUS = 3
#: A sampled cell runs PCT in batches of ``sample_runs`` schedules (one seed
#: each) while a kind the same scheme showed with fewer vCPUs is still
#: unfound, at most this many batches.
SAMPLE_BATCHES = 6

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
#: get_page_unless_zero.  (free_page returns a page to the allocator: no count.)
REFCOUNT_OPS = frozenset(n for n, k in OPS.items() if k.memory == "ref" and n != "free_page")
#: What "a synchronisation primitive" is, for the simplest-code rule: locks,
#: RCU, atomics and refcount operations (the MMU's own steps excluded).
PRIMITIVE_OPS = frozenset(n for n, k in OPS.items()
                          if (k.sync or k.memory in ("atomic", "ref")) and not n.startswith("hw_"))


# ---------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------

def mutations() -> dict:
    """name -> mutation (:class:`s2pt.scenarios.Mutation`): every
    deliberately broken variant, from ``s2pt.scenarios.MUTATIONS``."""
    return dict(_scenarios.MUTATIONS)


# ---------------------------------------------------------------------------
# Verdict cells
# ---------------------------------------------------------------------------

@dataclass
class Cell:
    """One scheme against one scenario.

    ``status``: "safe" (nothing found, and the scenario's race arose in
    some run), "never-arises" (nothing found, and no run reached the
    scenario's race window: safe for that reason alone), "violation",
    "not-declared" or "unsupported" (the scenario could not be built).
    ``verdict``: the search's verdict in words (s2pt.sim.search.Result.verdict);
    ``race``: what it learnt about the race window (reached or not, each
    stage's first schedule, and why it never arises).  ``found``: kind ->
    ``{"schedule", "steps", "message", "explanation", "diagram"}`` (a
    livelock adds "cycle_start", "stem" and "cycle": its lasso), the
    shortest schedule of each kind found.  ``mismatches``: disagreements
    with the scenario's declaration (empty when it holds).
    """
    scheme: str
    scenario: str
    status: str
    mode: str = ""                 # "exhaustive", or "sampled: ..." for a sampled verdict
    complete: bool = False
    states: int = 0
    executions: int = 0
    seconds: float = 0.0
    found: dict = field(default_factory=dict)
    why: str = ""
    expected: list = field(default_factory=list)     # the kinds declared Sometimes
    mismatches: list = field(default_factory=list)
    bugs: list = field(default_factory=list)         # bugs switched on (the scenario's own too)
    verdict: str = ""
    race: dict | None = None

    @property
    def kinds(self) -> list:
        return list(self.found)

    @property
    def safe(self) -> bool:
        """Nothing found (whether or not the race arose)."""
        return self.status in ("safe", "never-arises")

    @property
    def race_arose(self) -> bool | None:
        return None if self.race is None else bool(self.race.get("reached"))

    def text(self) -> str:
        """The cell in words: "safe (exhaustive, 49,777 states)", ..."""
        if self.status == "not-declared":
            return f"not declared: {self.why}" if self.why else "not declared"
        if self.status == "unsupported":
            return f"unsupported: {self.why}"
        how = (f"exhaustive, {self.states:,} states" if self.mode == "exhaustive"
               else self.mode)
        if self.mode == "exhaustive" and not self.complete:
            how += ", NOT complete: state budget reached"
        if not self.found:
            if not self.complete:
                return f"nothing found ({how})"
            if self.status == "never-arises":
                return f"{NEVER_ARISES}: {self.race.get('reason', '')} ({how})"
            if self.race:
                return f"safe ({how}; the race arose: {self.race['what']})"
            return f"safe ({how})"
        parts = [f"{k}: schedule '{f['schedule']}'" + ("" if f["schedule"] else
                                                       " (the default order)")
                 for k, f in self.found.items()]
        return "; ".join(parts) + f" ({how})"

    def short(self) -> str:
        """A few characters for the grid (see :func:`kind_abbrev`)."""
        mark = "!" if self.mismatches else ""
        if self.status == "not-declared":
            return "-"
        if self.status == "unsupported":
            return "n/a"
        if not self.found:
            if self.status == "never-arises":
                return "no race" + mark
            return ("safe" if self.complete else "safe?") + mark
        ks = [kind_abbrev(k) for k in self.found]
        return ("+".join(ks) if len(ks) <= 2 else f"{ks[0]}+{len(ks) - 1}") + mark

    def diagram(self, kind: str | None = None) -> str:
        """The race diagram of ``kind`` (default: the first kind found)."""
        return self._found(kind)["diagram"]

    def schedule(self, kind: str | None = None) -> str:
        return self._found(kind)["schedule"]

    def world(self, kind: str | None = None):
        """Replay the shortest schedule of ``kind`` on a live World."""
        return replay(self.scenario, self.scheme, self.schedule(kind), bugs=self.bugs)

    def replay_command(self, kind: str | None = None) -> str:
        return replay_command(self.scenario, self.scheme, self.schedule(kind), self.bugs)

    def _found(self, kind):
        if not self.found:
            raise S2ptError(f"{self.scheme} x {self.scenario}: no violation was found")
        if kind is None:
            kind = next(iter(self.found))
        if kind not in self.found:
            raise S2ptError(f"kind={kind!r}: not found in {self.scheme} x {self.scenario} "
                            f"(found: {', '.join(self.found)})")
        return self.found[kind]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Cell":
        return cls(**d)


def kind_abbrev(kind: str) -> str:
    """"use-after-free" -> "UAF", "lost-update" -> "LU", "leak" -> "leak"."""
    parts = kind.split("-")
    return "".join(p[0] for p in parts).upper() if len(parts) > 1 else kind[:5]


def _cell_from_result(scheme, sc, res, bugs) -> Cell:
    found = {}
    for kind, f in res.found.items():
        v = f.violation
        found[kind] = {"schedule": f.schedule_text, "steps": len(f.schedule),
                       "message": f.message,
                       "explanation": getattr(v, "explanation", "") if v is not None else "",
                       "diagram": f.diagram}
        if f.cycle_start is not None:
            j = f.to_json()
            found[kind].update({k: j[k] for k in ("cycle_start", "stem", "cycle")})
    if res.mode == "exhaustive":
        mode = "exhaustive"
    else:
        mode = res.mode
    status = ("violation" if found else "never-arises" if res.verdict == NEVER_ARISES
              else "safe")
    return Cell(scheme, sc.name, status, mode, res.complete,
                res.states, res.executions, round(res.seconds, 3), found,
                expected=[k for k in KINDS if sc.expected(scheme, k) == SOMETIMES],
                bugs=sorted(bugs), verdict=res.verdict, race=res.window)


def _why_not(sc, scheme) -> str:
    """Why ``sc`` does not declare ``scheme`` (the declaration table's reason)."""
    return sc.why_not.get(scheme, "")


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
    for k, tok in enumerate(parse_schedule(schedule)):
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
    from .kvm import VM
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


# ---------------------------------------------------------------------------
# Cost cells: one scheme, one vCPU count
# ---------------------------------------------------------------------------

def scaled_scenario(n: int, base: str = COST_SCENARIO):
    """``base`` with ``n`` vCPUs: a registered scenario with the same builder,
    bugs and ``vcpus=n`` when there is one (so results are shared), else a
    copy of ``base`` with ``params["vcpus"] = n``."""
    sc = get_scenario(base)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_VCPUS:
        raise S2ptError(f"vcpus={n!r}: a vCPU count from 1 to {MAX_VCPUS}")
    if sc.params.get("vcpus", sc.cpus) == n:
        return sc
    for other in SCENARIOS.values():
        if (other.builder is sc.builder and other.bugs == sc.bugs
                and other.params == {**sc.params, "vcpus": n}):
            return other
    return dataclasses.replace(sc, name=f"{sc.name}@{n}vcpu",
                               summary=f"{sc.name} with {n} vCPU{'s' if n > 1 else ''}",
                               cpus=n, params={**sc.params, "vcpus": n})


@dataclass
class CostCell:
    """One scheme at one vCPU count: the verdict and the measured costs.

    ``verdict``: "safe" / the kinds found / "unsupported: ..." (the scenario
    cannot be built with that many vCPUs); ``mode``: how the verdict was
    reached ("exhaustive, N states" or "sampled: ...").  ``runs``: the
    :class:`RunCosts` of each measured run (the default schedule, then
    seeded random and PCT ones); ``summary``: per metric, the mean, min and
    max over the clean runs.
    """
    scheme: str
    vcpus: int
    scenario: str
    verdict: str
    mode: str = ""
    sampled: bool = False
    found: dict = field(default_factory=dict)
    runs: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    clean_runs: int = 0
    primitives: list = field(default_factory=list)
    grace_periods: bool = False
    seconds: float = 0.0

    @property
    def supported(self) -> bool:
        return not self.verdict.startswith("unsupported")

    @property
    def safe(self) -> bool:
        return self.verdict == "safe"

    def mean(self, metric: str):
        s = self.summary.get(metric)
        return s["mean"] if s else None

    def max(self, metric: str):
        s = self.summary.get(metric)
        return s["max"] if s else None

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "CostCell":
        d = dict(d)
        d["runs"] = [RunCosts(**r) for r in d.get("runs", [])]
        return cls(**d)


def _summarise(runs: list) -> dict:
    out = {}
    for m in METRICS:
        vals = [r.metrics()[m] for r in runs]
        vals = [v for v in vals if v is not None]
        if vals:
            out[m] = {"mean": round(statistics.fmean(vals), 3), "min": round(min(vals), 3),
                      "max": round(max(vals), 3), "n": len(vals)}
    return out


# ---------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------

#: The "which to choose" table's needs, in order: name -> the rule, in words.
NEEDS = {
    "pKVM at EL2 / no RCU": (
        "safe in every bug-free scenario compared, and no run ever starts or waits for an RCU "
        "grace period (no call_rcu(), no synchronize_rcu()): EL2 has no RCU"),
    "many vCPUs": (
        "safe, and at the largest vCPU count measured its lock-blocked steps per fault are at "
        "most twice the least among the safe schemes, plus one"),
    "memory-tight": (
        "safe, and at the largest vCPU count measured its peak retained table pages are the "
        "least among the safe schemes and its mean unlink-to-free steps at most 1.25x the "
        "least"),
    "simplest code": (
        "safe, and its runs use the fewest distinct synchronisation primitives among the safe "
        "schemes (locks, RCU calls, atomics and refcount operations, by the op table)"),
}


@dataclass
class MutationResult:
    name: str
    scheme: str
    scenario: str
    bugs: list
    expected: str
    found: list
    status: str                   # "caught", "caught-other", "missed", "error"
    what: str = ""
    schedule: str = ""
    mode: str = ""
    message: str = ""

    @property
    def caught(self) -> bool:
        return self.status == "caught"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Comparison:
    """What :func:`compare` returns: verdict cells, cost cells, the "which to
    choose" rows and (optionally) the mutation results, with the settings
    and timings.  ``str()`` is the plain-text report; :meth:`to_json` /
    :meth:`from_json` round-trip it."""
    schemes: list
    scenarios: list
    cells: dict                                   # (scheme, scenario) -> Cell
    costs: dict = field(default_factory=dict)     # (scheme, vcpus) -> CostCell
    logging_refaults: dict = field(default_factory=dict)   # scheme -> int
    #: scheme -> {"primitives": [...], "grace_periods": bool, "scenarios": [...]}: what the
    #: default-schedule run of each declared bug-free scenario used.
    usage: dict = field(default_factory=dict)
    mutations: list | None = None
    settings: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    # -- verdicts ----------------------------------------------------------------
    def cell(self, scheme: str, scenario: str) -> Cell:
        try:
            return self.cells[(scheme, scenario)]
        except KeyError:
            raise S2ptError(f"no cell {scheme!r} x {scenario!r} in this comparison "
                            f"(schemes: {', '.join(self.schemes)}; scenarios: "
                            f"{', '.join(self.scenarios)})") from None

    @property
    def mismatches(self) -> list:
        """``[(scheme, scenario, message)]``: declarations that did not hold."""
        return [(c.scheme, c.scenario, m) for c in self.cells.values() for m in c.mismatches]

    @property
    def declared_cells(self) -> list:
        return [c for c in self.cells.values()
                if c.status in ("safe", "never-arises", "violation")]

    def safe_schemes(self) -> list:
        """Schemes with no violation in any declared, bug-free scenario compared
        (and in no cost run)."""
        out = []
        for s in self.schemes:
            cells = [c for c in self.cells.values() if c.scheme == s
                     and c.status in ("safe", "never-arises", "violation") and not c.bugs]
            if not cells or any(c.found for c in cells):
                continue
            if any(cc.found for cc in self.costs.values() if cc.scheme == s):
                continue
            out.append(s)
        return out

    # -- costs -------------------------------------------------------------------
    @property
    def vcpus(self) -> list:
        return sorted({n for _, n in self.costs})

    def cost(self, scheme: str, vcpus: int) -> CostCell:
        try:
            return self.costs[(scheme, vcpus)]
        except KeyError:
            raise S2ptError(f"no cost cell for scheme {scheme!r} at {vcpus} vCPUs") from None

    @property
    def top_vcpus(self) -> int | None:
        """The largest vCPU count with measured costs."""
        ns = [n for (_, n), c in self.costs.items() if c.summary]
        return max(ns) if ns else None

    def choose(self) -> list:
        """The "which to choose" rows: ``[(need, [schemes], rule)]`` (see :data:`NEEDS`)."""
        safe = [s for s in self.safe_schemes()]
        top = {}
        for s in safe:
            cells = [c for (sch, _), c in self.costs.items() if sch == s and c.summary]
            if cells:
                top[s] = max(cells, key=lambda c: c.vcpus)
        rows = []
        # pKVM at EL2: no grace period in any run (the cost runs and each
        # declared scenario's default run).
        used = {s: self.usage.get(s, {}).get("grace_periods", False)
                or any(c.grace_periods for (sch, _), c in self.costs.items() if sch == s)
                for s in safe}
        rows.append([s for s in safe if not used[s]])
        # many vCPUs
        b = {s: c.mean("blocked_per_fault") for s, c in top.items()}
        b = {s: v for s, v in b.items() if v is not None}
        least = min(b.values(), default=None)
        rows.append([s for s in b if b[s] <= 2 * least + 1 + 1e-9])
        # memory-tight
        pk = {s: c.max("retained_peak") for s, c in top.items()}
        pk = {s: v for s, v in pk.items() if v is not None}
        gr = {s: top[s].mean("grace_steps") for s in pk}
        least_pk = min(pk.values(), default=None)
        least_gr = min((v for v in gr.values() if v is not None), default=None)
        rows.append([s for s in pk if pk[s] <= least_pk and (
            gr[s] is None or least_gr is None or gr[s] <= 1.25 * least_gr + 1e-9)])
        # simplest code: on the cost scenario, the same CPUs for every scheme
        prim = {s: len(set().union(*[set(c.primitives) for (sch, _), c in self.costs.items()
                                     if sch == s])) for s in top}
        least_p = min(prim.values(), default=None)
        rows.append([s for s in prim if prim[s] == least_p])
        return [(need, r, rule) for (need, rule), r in zip(NEEDS.items(), rows)]

    # -- mutations -----------------------------------------------------------------
    @property
    def mutation_score(self) -> tuple | None:
        if self.mutations is None:
            return None
        return sum(m.caught for m in self.mutations), len(self.mutations)

    @property
    def ok(self) -> bool:
        """Every declaration held (and, with mutations, every one was caught)."""
        if self.mismatches:
            return False
        if self.mutations is not None and not all(m.caught for m in self.mutations):
            return False
        return True

    # -- text ------------------------------------------------------------------------
    def verdict_table(self, width: int = 100) -> str:
        """The grid (rows: schemes; columns: scenarios, numbered), the legend,
        then each cell in words."""
        out = ["VERDICTS: every scheme against every scenario (exhaustive stateful search)", ""]
        idx = {sc: k + 1 for k, sc in enumerate(self.scenarios)}
        sw = max([len(s) for s in self.schemes] + [6])
        cw = max([len(c.short()) for c in self.cells.values()] + [5]) + 1
        per = max(1, (width - sw - 2) // cw)
        for start in range(0, len(self.scenarios), per):
            cols = self.scenarios[start:start + per]
            out.append(f"{'scheme':<{sw}}  " + "".join(f"{'[' + str(idx[c]) + ']':<{cw}}"
                                                       for c in cols).rstrip())
            for s in self.schemes:
                out.append(f"{s:<{sw}}  " + "".join(f"{self.cells[(s, c)].short():<{cw}}"
                                                     for c in cols).rstrip())
            out.append("")
        out.append("Scenarios:")
        for sc in self.scenarios:
            out.append(f"  [{idx[sc]}] {sc}")
        kinds = sorted({k for c in self.cells.values() for k in c.found})
        out.append("Legend: safe = nothing found, search complete, and the race arose; "
                   "no race = nothing found")
        out.append("        because the race never arises (no run reached the race window); "
                   "safe? = nothing")
        out.append("        found, search NOT complete;")
        out.append("        - = not declared; n/a = could not be built; ! = declaration mismatch")
        if kinds:
            out.append("        " + ", ".join(f"{kind_abbrev(k)} = {k}" for k in kinds))
        out.append("")
        out.append("Cells:")
        undeclared: dict = {}
        for s in self.schemes:
            for sc in self.scenarios:
                c = self.cells[(s, sc)]
                if c.status == "not-declared":
                    undeclared.setdefault((s, c.why), []).append(sc)
                    continue
                mark = "  !!" if c.mismatches else ""
                out.append(f"  {s} x {sc}: {c.text()}{mark}")
                for cmd in dict.fromkeys(c.replay_command(k) for k in c.found):
                    out.append(f"      replay: {cmd}")
        if undeclared:
            out.append("")
            out.append("Not declared (the explorer refuses these, and says why):")
            for (s, why), scs in undeclared.items():
                out.append(f"  {s} x {', '.join(scs)}: {why or '(the scenario gives no reason)'}")
        out.append("")
        mm = self.mismatches
        if mm:
            out.append("!" * 72)
            out.append(f"!!! DECLARATION MISMATCH in {len(mm)} place(s): a scenario's declared "
                       f"outcome did not hold")
            for s, sc, m in mm:
                out.append(f"!!!   {s} x {sc}: {m}")
            out.append("!" * 72)
        else:
            out.append(f"Declarations: all {len(self.declared_cells)} declared cells agree "
                       f"with their scenarios' Sometimes/Never declarations.")
        return "\n".join(out)

    def verdict_markdown(self) -> str:
        """The verdict grid as a Markdown table for a notebook, transposed
        so that it fits a column: rows are scenarios, columns schemes, each
        cell :meth:`Cell.short` ("safe", "UAF", "-" for not declared, ...),
        then the legend of the abbreviations used."""
        out = ["| scenario | " + " | ".join(f"`{s}`" for s in self.schemes) + " |",
               "|---|" + "|".join(":-:" for _ in self.schemes) + "|"]
        for sc in self.scenarios:
            out.append(f"| `{sc}` | " + " | ".join(self.cells[(s, sc)].short()
                                                   for s in self.schemes) + " |")
        kinds = sorted({k for c in self.cells.values() for k in c.found})
        out.append("")
        out.append("safe: nothing found, exhaustive search complete; -: the scenario does not "
                   "declare the scheme; " + "; ".join(f"{kind_abbrev(k)}: {k}" for k in kinds)
                   + "; +N: N more kinds; !: the declaration did not hold.")
        return "\n".join(out)

    def costs_table(self) -> str:
        """Rows: scheme x vCPU count; columns: the verdict, then each cost
        (mean over the clean runs; the JSON has min, max and every run)."""
        if not self.costs:
            return "COSTS: not measured"
        st = self.settings
        out = [f"COSTS measured in the model: {st.get('cost_scenario', COST_SCENARIO)} with "
               f"1..{max(self.vcpus)} vCPUs.  Each number: the mean over the clean runs of "
               f"{st.get('runs')} recorded runs (the default schedule, then seeded random and "
               f"PCT schedules, seed {st.get('seed')}); min, max and every run are in --json.",
               "Verdict: * = sampled (seeded PCT + the smaller cell's counterexamples replayed), otherwise exhaustive.", ""]
        sw = max(len(s) for s in self.schemes + ["scheme"])
        w = 9
        out.append(f"{'scheme':<{sw}}  n  {'verdict':<10}"
                   + "".join(f"{'(' + str(k + 1) + ')':>{w}}" for k in range(len(SHOWN))))
        notes = []
        for s in self.schemes:
            rows = 0
            for n in self.vcpus:
                c = self.costs.get((s, n))
                if c is None:
                    continue
                if not c.supported:
                    notes.append(f"  {s} at {n} vCPU{'s' if n > 1 else ''}: {c.verdict}")
                    continue
                v = "safe" if not c.found else "+".join(kind_abbrev(k) for k in c.found)
                v += "*" if c.sampled else ""
                out.append(f"{s:<{sw}}  {n}  {v:<10}"
                           + "".join(f"{_fmt(c.mean(m)):>{w}}" for m in SHOWN))
                rows += 1
            if rows:
                out.append("")
        out.append("Columns:")
        for k, m in enumerate(SHOWN):
            out.append(f"  ({k + 1}) {METRICS[m][0]}: {METRICS[m][1]}")
        sampled = [(s, n, c) for (s, n), c in self.costs.items() if c.sampled]
        if sampled:
            out.append("Sampled verdicts (exhaustive search too large):")
            out += [f"  {s} at {n} vCPUs: {c.mode}" for s, n, c in sampled]
        if notes:
            out.append("Not measured:")
            out += notes
        if self.logging_refaults:
            out.append("")
            out.append("Guest refaults caused by turning dirty logging off (logging_off_refaults: "
                       "a sequential VM, 2 blocks; the guest re-reads the 16 pages it read while "
                       "logging):")
            out.append("  " + ", ".join(f"{s}: {v}" for s, v in self.logging_refaults.items()))
        return "\n".join(out)

    def choose_table(self) -> str:
        if not self.costs:
            return "WHICH TO CHOOSE: needs the costs (compare(costs=True))"
        rows = self.choose()
        nw = max(len(r[0]) for r in rows)
        sw = max([len(", ".join(r[1]) or "(none)") for r in rows] + [7])
        out = [f"WHICH TO CHOOSE, generated from the verdicts and the costs at "
               f"{self.top_vcpus} vCPUs (safe schemes: {', '.join(self.safe_schemes()) or 'none'})",
               "", f"{'need':<{nw}}  {'schemes':<{sw}}  rule"]
        for need, schemes, rule in rows:
            out.append(f"{need:<{nw}}  {', '.join(schemes) or '(none)':<{sw}}  {rule}")
        return "\n".join(out)

    def mutation_table(self) -> str:
        if self.mutations is None:
            return ""
        caught, total = self.mutation_score
        out = [f"MUTATIONS: {caught}/{total} caught", ""]
        for m in self.mutations:
            found = ", ".join(m.found) or "nothing"
            out.append(f"  {m.status:<12} {m.name}: {m.scheme} + {', '.join(m.bugs) or '-'} on "
                       f"{m.scenario}; expected {m.expected}, found {found}"
                       + (f" ('{m.schedule}')" if m.schedule else "")
                       + (f" [{m.message}]" if m.message else ""))
        return "\n".join(out)

    def text(self) -> str:
        parts = [self.verdict_table()]
        if self.costs:
            parts += [self.costs_table(), self.choose_table()]
        if self.mutations is not None:
            parts.append(self.mutation_table())
        t = self.timings
        parts.append("Timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()))
        return "\n\n".join(parts)

    __str__ = text

    def _repr_pretty_(self, p, cycle):
        p.text(self.text())

    # -- plots -------------------------------------------------------------------------
    def plot(self, metrics=SHOWN, ncols: int | None = None):
        """A matplotlib Figure: each metric against the vCPU count, one line
        per scheme (mean over the clean runs; hollow markers where the
        verdict was sampled).  ``ncols``: panels per row (default 4, or
        fewer metrics); 2 gives a figure that fits a notebook's column."""
        if not self.costs:
            raise S2ptError("plot: this comparison has no costs (compare(costs=True))")
        bad = [m for m in metrics if m not in METRICS]
        if bad:
            raise S2ptError(f"metrics={bad!r}: unknown; choose from {', '.join(METRICS)}")
        if ncols is not None and (not isinstance(ncols, int) or isinstance(ncols, bool)
                                  or ncols < 1):
            raise S2ptError(f"ncols={ncols!r}: a positive number of panels per row")
        from matplotlib.figure import Figure        # no pyplot: no backend, no global state
        ncol = min(ncols or 4, len(metrics))
        nrow = (len(metrics) + ncol - 1) // ncol
        fig = Figure(figsize=(3.6 * ncol, 3.0 * nrow + 0.6), layout="constrained")
        axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
        for ax, m in zip(axes, metrics):
            for s in self.schemes:
                pts = [(n, c.mean(m), c.sampled) for (sch, n), c in sorted(self.costs.items())
                       if sch == s and c.mean(m) is not None]
                if not pts:
                    continue
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                line, = ax.plot(xs, ys, "-", label=s)
                for x, y, sampled in pts:
                    ax.plot([x], [y], "o", color=line.get_color(),
                            markerfacecolor="none" if sampled else line.get_color())
            ax.set_title(METRICS[m][0], fontsize=10)
            ax.set_xlabel("vCPUs")
            ax.set_xticks(self.vcpus)
            ax.grid(alpha=0.3)
        for ax in axes[len(metrics):]:
            ax.set_visible(False)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center",
                   ncol=max(1, min(len(labels), 2 * ncol)))
        fig.suptitle(f"Costs per scheme, {self.settings.get('cost_scenario', COST_SCENARIO)} "
                     f"(hollow: verdict sampled)", fontsize=11)
        return fig

    # -- JSON ----------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "schemes": list(self.schemes), "scenarios": list(self.scenarios),
            "cells": [c.to_json() for c in self.cells.values()],
            "mismatches": [list(m) for m in self.mismatches],
            "costs": [c.to_json() for c in self.costs.values()],
            "logging_refaults": dict(self.logging_refaults),
            "usage": {s: dict(u) for s, u in self.usage.items()},
            "choose": [{"need": n, "schemes": s, "rule": r} for n, s, r in self.choose()]
            if self.costs else [],
            "mutations": None if self.mutations is None else [m.to_json() for m in self.mutations],
            "mutation_score": list(self.mutation_score) if self.mutations is not None else None,
            "settings": dict(self.settings), "timings": dict(self.timings),
            "ok": self.ok,
        }

    @classmethod
    def from_json(cls, d) -> "Comparison":
        """The inverse of :meth:`to_json` (a dict or a JSON string)."""
        if isinstance(d, str):
            d = json.loads(d)
        cells = {}
        for c in d["cells"]:
            cell = Cell.from_json(c)
            cells[(cell.scheme, cell.scenario)] = cell
        costs = {}
        for c in d.get("costs", []):
            cc = CostCell.from_json(c)
            costs[(cc.scheme, cc.vcpus)] = cc
        muts = d.get("mutations")
        return cls(list(d["schemes"]), list(d["scenarios"]), cells, costs,
                   dict(d.get("logging_refaults", {})), dict(d.get("usage", {})),
                   None if muts is None else [MutationResult(**m) for m in muts],
                   dict(d.get("settings", {})), dict(d.get("timings", {})))


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{int(v)}" if v == int(v) else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


# ---------------------------------------------------------------------------
# compare()
# ---------------------------------------------------------------------------

class _Cache:
    """Search results within one compare() run, keyed on what was searched."""

    def __init__(self):
        self.results: dict = {}
        self.cost_cells: dict = {}        # (scheme, vcpus) -> (CostCell, template World)

    def explore(self, sc, scheme, bugs, **kw):
        key = (id(sc), scheme, frozenset(bugs) | sc.bugs, tuple(sorted(kw.items())))
        r = self.results.get(key)
        if r is None:
            r = self.results[key] = (sc, explore(sc, scheme, bugs=bugs, **kw))
        return r[1]


def _names(given, registry, what) -> list:
    if given is None:
        return list(registry)
    if isinstance(given, str):
        given = [given]
    out = []
    for g in given:
        if g not in registry:
            raise S2ptError(f"{what}={g!r}: unknown {what}; choose from {', '.join(registry)}")
        if g not in out:
            out.append(g)
    if not out:
        raise S2ptError(f"{what}s: an empty list (give at least one, or None for all)")
    return out


def _check_int(name, v, lo, hi=None):
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
        rng = f"from {lo} to {hi}" if hi is not None else f"at least {lo}"
        raise S2ptError(f"{name}={v!r}: an integer {rng}")


def _verdict_job(name: str, s: str, max_states: int) -> "Cell":
    """One verdict cell, searched in a worker process (see ``jobs``)."""
    sc = SCENARIOS[name]
    res = explore(sc, s, max_states=max_states)
    cell = _cell_from_result(s, sc, res, sc.bugs)
    cell.mismatches = res.check_declared()
    return cell


def _mutation_job(name: str, max_states: int) -> "MutationResult":
    return _run_mutation(_Cache(), mutations()[name], max_states)


def _pool_map(jobs: int, fn, argss: list, say, labels: list) -> list:
    """``[fn(*a) for a in argss]``, in order; with ``jobs > 1`` in that many
    forked worker processes (each search is independent and deterministic,
    so the results are the same as in one process)."""
    if jobs <= 1 or len(argss) < 2:
        out = []
        for a, label in zip(argss, labels):
            say(label)
            out.append(fn(*a))
        return out
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(max_workers=jobs,
                             mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(fn, *a) for a in argss]
        out = []
        for f, label in zip(futures, labels):
            out.append(f.result())
            say(label)
        return out


def compare(schemes=None, scenarios=None, *, costs: bool = True, vcpus: int = MAX_VCPUS,
            runs: int = 12, seed: int = 0, sample_runs: int = 300, mutations: bool = False,
            max_states: int = 2_000_000, progress=None, jobs: int = 1) -> Comparison:
    """Every scheme against every scenario; the costs; the mutations.

    ``schemes`` / ``scenarios``: names (default: every registered one).
    ``costs``: measure the costs on :data:`COST_SCENARIO` with 1..``vcpus``
    vCPUs (exhaustive verdicts up to :data:`EXHAUSTIVE_VCPUS`, above that
    ``sample_runs`` seeded PCT schedules, and the counterexamples found with
    fewer vCPUs replayed), ``runs``
    recorded runs per cell.  ``mutations``: also search every mutation
    (:func:`mutations`).  ``max_states`` bounds each exhaustive search (a
    cell that reaches it says NOT complete).  ``progress``: called with a
    line of text as each part starts.  ``jobs``: worker processes for the
    verdicts and the mutations (``python -m s2pt compare`` uses every core;
    each search is deterministic, so the tables do not depend on it).
    """
    schemes = _names(schemes, SCHEMES, "scheme")
    scenarios = _names(scenarios, SCENARIOS, "scenario")
    _check_int("vcpus", vcpus, 1, MAX_VCPUS)
    _check_int("runs", runs, 1)
    _check_int("seed", seed, 0)
    _check_int("sample_runs", sample_runs, 1)
    _check_int("max_states", max_states, 1)
    _check_int("jobs", jobs, 1, 64)
    say = progress or (lambda text: None)
    cache = _Cache()
    timings = {}
    t_all = time.perf_counter()

    # 1. Verdicts.
    t0 = time.perf_counter()
    cells, todo = {}, []
    for name in scenarios:
        sc = SCENARIOS[name]
        for s in schemes:
            if s not in sc.expect:
                cells[(s, name)] = Cell(s, name, "not-declared", why=_why_not(sc, s),
                                        bugs=sorted(sc.bugs))
            else:
                cells[(s, name)] = None           # keeps the table's order
                todo.append((name, s, max_states))
    done = _pool_map(jobs, _verdict_job, todo, say,
                     [f"verdict: {name} under {s}" for name, s, _ in todo])
    for (name, s, _), cell in zip(todo, done):
        cells[(s, name)] = cell
    timings["verdicts"] = time.perf_counter() - t0

    cmp = Comparison(schemes, scenarios, cells, mutations=None,
                     settings={"runs": runs, "seed": seed, "vcpus": vcpus,
                               "sample_runs": sample_runs, "max_states": max_states,
                               "cost_scenario": COST_SCENARIO,
                               "exhaustive_vcpus": EXHAUSTIVE_VCPUS})

    # What each scheme uses: the default run of each declared bug-free scenario.
    t0 = time.perf_counter()
    for s in schemes:
        prims, gp, seen = set(), False, []
        for name in scenarios:
            sc = SCENARIOS[name]
            if s not in sc.expect or sc.bugs:
                continue
            _, rc = run_costs(sc, s)
            prims |= set(rc.primitives)
            gp = gp or rc.grace_periods
            seen.append(name)
        if seen:
            cmp.usage[s] = {"primitives": sorted(prims), "grace_periods": gp, "scenarios": seen}
    timings["usage"] = time.perf_counter() - t0

    # 2. Costs.
    if costs:
        t0 = time.perf_counter()
        for s in schemes:
            for n in range(1, vcpus + 1):
                say(f"costs: {s} at {n} vCPU{'s' if n > 1 else ''}")
                cmp.costs[(s, n)] = _cost_cell(cache, s, n, runs, seed, sample_runs,
                                               max_states)
                cache.cost_cells[(s, n)] = (cmp.costs[(s, n)], cache.template)
        timings["costs"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        base = get_scenario(COST_SCENARIO)
        for s in schemes:
            if s in base.expect:
                cmp.logging_refaults[s] = logging_off_refaults(s)
        timings["logging_refaults"] = time.perf_counter() - t0

    # 3. Mutations.
    if mutations:
        t0 = time.perf_counter()
        ms = _mutations_for(schemes)
        cmp.mutations = _pool_map(jobs, _mutation_job, [(m.name, max_states) for m in ms], say,
                                  [f"mutation: {m.name}" for m in ms])
        timings["mutations"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_all
    cmp.timings = {k: round(v, 3) for k, v in timings.items()}
    return cmp


def _mutations_for(schemes) -> list:
    return [m for m in mutations().values() if m.scheme in schemes]


def _run_mutation(cache, m, max_states) -> MutationResult:
    bugs = sorted(m.bugs)
    try:
        sc = get_scenario(m.scenario)
        res = cache.explore(sc, m.scheme, frozenset(m.bugs), max_states=max_states)
    except S2ptError as e:
        return MutationResult(m.name, m.scheme, m.scenario, bugs, m.kind, [], "error",
                              m.what, message=str(e))
    found = sorted(res.found)
    if m.kind in res.found:
        status, sched = "caught", res.found[m.kind].schedule_text
    elif found:
        status, sched = "caught-other", res.found[found[0]].schedule_text
    else:
        status, sched = "missed", ""
    mode = f"exhaustive, {res.states:,} states" + ("" if res.complete else ", NOT complete")
    return MutationResult(m.name, m.scheme, m.scenario, bugs, m.kind, found, status, m.what,
                          sched, mode)


def _carry_over(cache, scheme, n, sc) -> dict:
    """kind -> schedule: the counterexamples of the scheme's cost cells with
    fewer vCPUs that, replayed on ``sc`` (CPUs matched by name, the others
    left to the default order), show the same kind of violation (the
    shortest such schedule of each kind)."""
    out = {}
    for m in range(n - 1, 0, -1):
        prev = cache.cost_cells.get((scheme, m))
        if prev is None or prev[1] is None:
            continue
        pcell, ptemplate = prev
        for kind, text in pcell.found.items():
            try:
                old = parse_schedule(text)
            except S2ptError:
                continue                      # "(found by a cost run)": no schedule kept
            w = _world(sc, scheme, record=False)
            ids = {a.name: i for i, a in enumerate(w.actors)}
            try:
                new = [ids[ptemplate.actors[c].name] for c in old]
                w.run(new)
            except (KeyError, IndexError, S2ptError):
                continue
            if any(v.kind == kind for v in w.violations) and (
                    kind not in out or len(new) < len(parse_schedule(out[kind]))):
                out[kind] = format_schedule(new)
    return out


def _cost_cell(cache, scheme, n, runs, seed, sample_runs, max_states) -> CostCell:
    t0 = time.perf_counter()
    cache.template = None
    base = get_scenario(COST_SCENARIO)
    if scheme not in base.expect:
        return CostCell(scheme, n, base.name, "unsupported: " + (_why_not(base, scheme)
                                                                 or "not declared"))
    sc = scaled_scenario(n)
    try:
        template = _world(sc, scheme, record=False)
    except Exception as e:        # the builder (s2pt.scenarios) refuses this many vCPUs
        return CostCell(scheme, n, sc.name, f"unsupported: {type(e).__name__}: {e}")
    cpus = sum(1 for a in template.actors if not a.daemon)
    if cpus != n:
        return CostCell(scheme, n, sc.name,
                        f"unsupported: the builder gave {cpus} CPUs for vcpus={n}")
    cache.template = template
    cell = CostCell(scheme, n, sc.name, "safe")
    if n <= EXHAUSTIVE_VCPUS:
        res = cache.explore(sc, scheme, (), max_states=max_states)
        cell.mode = f"exhaustive, {res.states:,} states" + ("" if res.complete
                                                             else ", NOT complete")
        found = dict(res.found)
        complete = res.complete
    else:
        # Too large to search exhaustively: seeded PCT schedules (depth 2: one
        # priority change, the preemption a reader needs), and each
        # counterexample found with fewer vCPUs, replayed here (the extra
        # vCPUs run in the default order): a replay that shows the violation
        # is a witness at this size too.
        found = _carry_over(cache, scheme, n, sc)
        carried = sorted(found)
        # The kinds the smaller cells found are worth more schedules: PCT
        # goes on, a batch of sample_runs per seed, until it has found them
        # too, for at most SAMPLE_BATCHES batches.
        wanted = set().union(*[set(c.found) for (s_, m), (c, _) in cache.cost_cells.items()
                               if s_ == scheme and m < n]) if n > 1 else set()
        batches = 0
        while True:
            pct = cache.explore(sc, scheme, (), mode="pct", runs=sample_runs,
                                seed=seed + batches, depth=2)
            batches += 1
            for k, f in pct.found.items():
                if k not in found or len(f.schedule) < len(parse_schedule(found[k])):
                    found[k] = f.schedule_text
            if wanted <= set(found) or batches >= SAMPLE_BATCHES:
                break
        seeds = f"seed {seed}" if batches == 1 else f"seeds {seed}..{seed + batches - 1}"
        cell.sampled = True
        cell.mode = (f"sampled: {batches * sample_runs} PCT schedules (depth 2, {seeds}), and "
                     f"the counterexamples found with fewer vCPUs replayed "
                     f"({', '.join(carried) or 'none'} reproduced)")
        complete = False
    if not cell.sampled:
        found = {k: f.schedule_text for k, f in found.items()}
    cell.found = dict(found)
    # The measured runs: the default schedule, then random and PCT alternately.
    rng = random.Random(seed * 1000003 + n)
    first = run_costs(sc, scheme, template=template)[1]
    cell.runs.append(first)
    for j in range(1, runs):
        choose = (random_chooser(rng) if j % 2 else
                  pct_chooser(rng, template.n, 3, max(first.steps, 1)))
        rc = run_costs(sc, scheme, choose=choose, template=template)[1]
        cell.runs.append(rc)
        for kind in rc.kinds:                  # a sampled verdict may have missed it
            cell.found.setdefault(kind, "(found by a cost run)")
    # "safe" when nothing was found by a complete search or by the sampling
    # (the mode says which); "nothing found" when the search hit its bound.
    cell.verdict = ("+".join(sorted(cell.found)) if cell.found else
                    "safe" if complete or cell.sampled else "nothing found")
    clean = [r for r in cell.runs if r.outcome == "done" and not r.kinds]
    cell.clean_runs = len(clean)
    cell.summary = _summarise(clean)
    cell.primitives = sorted(set().union(*[set(r.primitives) for r in cell.runs]))
    cell.grace_periods = any(r.grace_periods for r in cell.runs)
    cell.seconds = round(time.perf_counter() - t0, 3)
    return cell
