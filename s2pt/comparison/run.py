"""Running the comparison: the searches, the cost runs, the mutations, in
worker processes, with results cached by content (:func:`compare`).

Every piece of work is a job of one of three kinds, each independent and
deterministic, so that the results never depend on how many processes run
them or in which order:

* a **search**: one scenario (a registered one, or the cost scenario scaled
  to n vCPUs) under one scheme with some bugs, explored exhaustively up to
  a state bound.  Its outcome (what was found, the states, whether the race
  arose) makes a verdict cell, a cost cell's verdict or a mutation's score;
  a search that two of them need (the cost scenario at 4 vCPUs is
  ``collapse-vs-fault-4``, a column of the verdict table) runs once;
* a cost cell's **recorded runs** (:func:`s2pt.comparison.costs.run_costs`);
* the default run of each declared bug-free scenario, for what each scheme
  uses (cheap: run in this process).

``jobs`` > 1 runs them in worker processes: forked where ``fork`` exists,
spawned where it does not, and in this process if no worker can be
started.  With a cache (:class:`s2pt.comparison.cache.ResultCache`; the
command line uses one unless ``--no-cache``) each search and each cost
cell's runs are computed once per content of the code and the job.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass

from .. import scenarios as _scenarios
from .. import validate
from ..errors import S2ptError
from ..explorer import explore, world as _world
from ..scenarios import SCENARIOS, SOMETIMES, get_scenario
from ..schemes import SCHEMES
from ..sim.search import (MAX_RUNS, NEVER_ARISES, declaration_mismatches, pct_chooser,
                          random_chooser)
from ..sim.violation import KINDS
from .cache import ResultCache
from .costs import RunCosts, logging_off_refaults, run_costs, summarise, usage
from .results import Cell, Comparison, CostCell, MutationResult

__all__ = ["compare", "mutations", "scaled_scenario", "COST_SCENARIO", "COST_SCENE",
           "MAX_VCPUS", "MAX_STATES"]

#: The scenario the costs are measured on, scaled from 1 to MAX_VCPUS vCPUs:
#: vCPU0's collapse and n - 1 interchangeable readers (build_collapse_vs_readers).
COST_SCENARIO = "collapse-vs-fault-4"
#: What it is, for the cost table.
COST_SCENE = ("collapse-vs-fault-4 scaled from 1 to 4 vCPUs: vCPU0 collapses the level-3 "
              "table into a 2M block while each other vCPU, an interchangeable reader, takes an "
              "access-flag fault (handle_access_fault: mkyoung) on the same aged page of it")
MAX_VCPUS = 4
#: compare()'s bound on each exhaustive search: far above the largest it
#: makes (collapse-vs-fault-4 under rcu-rfc, about a million states), which
#: a cell that reaches it would report as not complete.
MAX_STATES = 8_000_000
#: The steps a cost run takes before it gives up as a livelock.  A clean run
#: of the cost scenario takes about a thousand (tests/test_compare.py checks
#: that none comes near); the World's own bound, twenty thousand, only made
#: the runs of a scheme that livelocks there (rwlock) cost a tenth of the
#: whole comparison, for runs whose costs are not counted.
RUN_STEPS = 5_000
#: The most worker processes compare() starts (each holds a search's state).
MAX_JOBS = 64


# ---------------------------------------------------------------------------
# Mutations and the cost scenario
# ---------------------------------------------------------------------------

def mutations() -> dict:
    """name -> mutation (:class:`s2pt.scenarios.Mutation`): every
    deliberately broken variant, from ``s2pt.scenarios.MUTATIONS``."""
    return dict(_scenarios.MUTATIONS)


def scaled_scenario(n: int, base: str = COST_SCENARIO):
    """``base`` with ``n`` vCPUs: a registered scenario with the same
    builder, bugs and parameters when there is one (so results are shared),
    else a copy of ``base``.  A scenario of interchangeable readers
    (``params["readers"]``) scales by its readers (n - 1 of them), any other
    by ``params["vcpus"]``."""
    sc = get_scenario(base)
    n = validate.integer("vcpus", n, 1, MAX_VCPUS, rule=f"a vCPU count from 1 to {MAX_VCPUS}")
    params = ({**sc.params, "readers": n - 1} if "readers" in sc.params
              else {**sc.params, "vcpus": n})
    if sc.params == params or (sc.cpus == n and "vcpus" not in sc.params
                               and "readers" not in sc.params):
        return sc
    for other in SCENARIOS.values():
        if other.builder is sc.builder and other.bugs == sc.bugs and other.params == params:
            return other
    return dataclasses.replace(sc, name=f"{sc.name}@{n}vcpu",
                               summary=f"{sc.name} with {n} vCPU{'s' if n > 1 else ''}",
                               cpus=n, params=params)


# ---------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Search:
    """One exhaustive search: ``scenario`` (a registered name) scaled to
    ``vcpus`` when given (the cost scenario), under ``scheme``, with
    ``bugs`` switched on besides the scenario's own, bounded by
    ``max_states``."""
    scenario: str
    scheme: str
    bugs: tuple = ()
    vcpus: int | None = None
    max_states: int = MAX_STATES

    def resolve(self):
        return (get_scenario(self.scenario) if self.vcpus is None
                else scaled_scenario(self.vcpus, self.scenario))

    def cache_key(self, cache: ResultCache) -> str:
        sc = self.resolve()
        return cache.key("search", scenario=sc.name, builder=_qualname(sc.builder),
                         params=sc.params, cpus=sc.cpus, own_bugs=sorted(sc.bugs),
                         scheme=self.scheme, bugs=list(self.bugs), max_states=self.max_states)

    def label(self) -> str:
        return (f"{self.scenario} under {self.scheme}"
                + (f" at {self.vcpus} vCPUs" if self.vcpus is not None else "")
                + "".join(f" + {b}" for b in self.bugs))


def _qualname(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def search_job(job: Search) -> dict:
    """Run one search; its outcome as JSON-ready data: ``found`` (kind ->
    schedule, steps, message, explanation, diagram, and a livelock's lasso),
    ``states``, ``executions``, ``seconds``, ``complete``, ``mode``,
    ``verdict``, ``race``; or ``error`` when the scenario cannot be built."""
    try:
        sc = job.resolve()
        res = explore(sc, job.scheme, bugs=job.bugs, max_states=job.max_states)
    except S2ptError as e:
        return {"error": str(e)}
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
    return {"found": found, "states": res.states, "executions": res.executions,
            "seconds": round(res.seconds, 3), "complete": res.complete, "mode": res.mode,
            "verdict": res.verdict, "race": res.window}


def cost_runs_job(scheme: str, n: int, runs: int, seed: int) -> dict:
    """The recorded runs of one cost cell: the default schedule, then seeded
    random and PCT schedules alternately; or ``error`` (the scenario cannot
    be built with ``n`` vCPUs)."""
    sc = scaled_scenario(n)
    try:
        template = _world(sc, scheme, record=False, max_steps=RUN_STEPS)
    except Exception as e:        # the builder (s2pt.scenarios) refuses this many vCPUs
        return {"error": f"{type(e).__name__}: {e}"}
    cpus = sum(1 for a in template.actors if not a.daemon)
    if cpus != n:
        return {"error": f"the builder gave {cpus} CPUs for {n} vCPUs"}
    rng = random.Random(seed * 1000003 + n)
    first = run_costs(sc, scheme, template=template)[1]
    out = [first]
    for j in range(1, runs):
        choose = (random_chooser(rng) if j % 2 else
                  pct_chooser(rng, template.n, 3, max(first.steps, 1)))
        out.append(run_costs(sc, scheme, choose=choose, template=template)[1])
    return {"scenario": sc.name, "runs": [dataclasses.asdict(r) for r in out]}


def _job_context():
    """The multiprocessing context for worker processes: fork where it
    exists (workers share what is loaded), else forkserver or spawn (each
    worker imports the package afresh); None when there is none."""
    import multiprocessing
    methods = multiprocessing.get_all_start_methods()
    for m in ("fork", "forkserver", "spawn"):
        if m in methods:
            return multiprocessing.get_context(m)
    return None


def _pool_map(jobs: int, fn, argss: list, say, labels: list) -> list:
    """``[fn(*a) for a in argss]``, in order; with ``jobs > 1`` in that many
    worker processes (:func:`_job_context`), or in this process when no
    worker can be started (it says so).  Each job is independent and
    deterministic, so the results are the same either way."""
    if jobs > 1 and len(argss) > 1:
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool
        ctx = _job_context()
        if ctx is not None:
            try:
                with ProcessPoolExecutor(max_workers=min(jobs, len(argss)),
                                         mp_context=ctx) as pool:
                    futures = [pool.submit(fn, *a) for a in argss]
                    out = []
                    for f, label in zip(futures, labels):
                        out.append(f.result())
                        say(label)
                    return out
            except (OSError, NotImplementedError, ImportError, BrokenProcessPool) as e:
                say(f"workers: none could be started ({type(e).__name__}: {e}); "
                    f"running in this process")
    out = []
    for a, label in zip(argss, labels):
        say(label)
        out.append(fn(*a))
    return out


def _cached_map(cache, keys, fn, argss, say, labels, jobs) -> list:
    """:func:`_pool_map` for the jobs whose key ``cache`` does not hold;
    the others are read from it (and said so)."""
    out = [None] * len(argss)
    todo = []
    for k, key in enumerate(keys):
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            out[k] = hit
            say(labels[k] + " (cached)")
        else:
            todo.append(k)
    done = _pool_map(jobs, fn, [argss[k] for k in todo], say, [labels[k] for k in todo])
    for k, value in zip(todo, done):
        out[k] = value
        if cache is not None and "error" not in value:
            cache.put(keys[k], value)
    return out


# ---------------------------------------------------------------------------
# From outcomes to cells
# ---------------------------------------------------------------------------

def _why_not(sc, scheme) -> str:
    """Why ``sc`` does not declare ``scheme`` (the declaration table's reason)."""
    return sc.why_not.get(scheme, "")


def _verdict_cell(scheme: str, sc, out: dict) -> Cell:
    """A verdict cell from a search's outcome, checked against the
    scenario's declaration as it is now."""
    if "error" in out:
        return Cell(scheme, sc.name, "unsupported", why=out["error"], bugs=sorted(sc.bugs))
    found = out["found"]
    status = ("violation" if found else "never-arises" if out["verdict"] == NEVER_ARISES
              else "safe")
    return Cell(scheme, sc.name, status, out["mode"], out["complete"], out["states"],
                out["executions"], out["seconds"], dict(found),
                expected=[k for k in KINDS if sc.expected(scheme, k) == SOMETIMES],
                mismatches=declaration_mismatches(
                    sc, scheme, {k: f["schedule"] for k, f in found.items()}, out["complete"]),
                bugs=sorted(sc.bugs), verdict=out["verdict"], race=out["race"])


def _mode(out: dict) -> str:
    return (f"exhaustive, {out['states']:,} states"
            + ("" if out["complete"] else ", NOT complete"))


def _mutation_result(m, out: dict) -> MutationResult:
    bugs = sorted(m.bugs)
    if "error" in out:
        return MutationResult(m.name, m.scheme, m.scenario, bugs, m.kind, [], "error", m.what,
                              message=out["error"])
    found = sorted(out["found"])
    if m.kind in out["found"]:
        status, sched = "caught", out["found"][m.kind]["schedule"]
    elif found:
        status, sched = "caught-other", out["found"][found[0]]["schedule"]
    else:
        status, sched = "missed", ""
    return MutationResult(m.name, m.scheme, m.scenario, bugs, m.kind, found, status, m.what,
                          sched, _mode(out))


def _cost_cell(scheme: str, n: int, out: dict | None, runs: dict | None) -> CostCell:
    """A cost cell from its search's outcome and its recorded runs."""
    base = get_scenario(COST_SCENARIO)
    if out is None:
        return CostCell(scheme, n, base.name, "unsupported: " + (_why_not(base, scheme)
                                                                 or "not declared"))
    if "error" in runs or "error" in out:
        return CostCell(scheme, n, scaled_scenario(n).name,
                        f"unsupported: {runs.get('error') or out.get('error')}")
    cell = CostCell(scheme, n, runs["scenario"], "safe", _mode(out), out["complete"],
                    {k: f["schedule"] for k, f in out["found"].items()},
                    [RunCosts(**r) for r in runs["runs"]])
    for r in cell.runs:
        for kind in r.kinds:                   # a bounded search may have missed it
            cell.found.setdefault(kind, "(found by a cost run)")
    # "safe" when a complete search found nothing; "nothing found" when it
    # hit its bound.
    cell.verdict = ("+".join(sorted(cell.found)) if cell.found else
                    "safe" if out["complete"] else "nothing found")
    clean = [r for r in cell.runs if r.outcome == "done" and not r.kinds]
    cell.clean_runs = len(clean)
    cell.summary = summarise(clean)
    cell.primitives = sorted(set().union(*[set(r.primitives) for r in cell.runs]))
    cell.grace_periods = any(r.grace_periods for r in cell.runs)
    cell.seconds = round(out["seconds"] + runs.get("seconds", 0.0), 3)
    return cell


def _timed_cost_runs(scheme: str, n: int, runs: int, seed: int) -> dict:
    t0 = time.perf_counter()
    out = cost_runs_job(scheme, n, runs, seed)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


# ---------------------------------------------------------------------------
# compare()
# ---------------------------------------------------------------------------

def _names(given, registry, what) -> list:
    """None (every registered name), one name, or a list of names, in the
    order given (each once)."""
    if given is None:
        return list(registry)
    if isinstance(given, str):
        given = [given]
    if not isinstance(given, (list, tuple)):
        raise S2ptError(f"{what}s={given!r}: a name, a list of names, or None for all")
    out = []
    for g in given:
        if not isinstance(g, str) or g not in registry:
            raise S2ptError(f"{what}s: {g!r} is not a {what}; choose from "
                            f"{', '.join(registry)}")
        if g not in out:
            out.append(g)
    if not out:
        raise S2ptError(f"{what}s: an empty list (give at least one, or None for all)")
    return out


def compare(schemes=None, scenarios=None, *, costs: bool = True, vcpus: int = MAX_VCPUS,
            runs: int = 12, seed: int = 0, mutations: bool = False,
            max_states: int = MAX_STATES, progress=None, jobs: int = 1,
            cache: ResultCache | None = None) -> Comparison:
    """Every scheme against every scenario; the costs; the mutations.

    ``schemes`` / ``scenarios``: names (default: every registered one).
    ``costs``: measure the costs on :data:`COST_SCENARIO` scaled to 1..``vcpus``
    vCPUs (each cell's verdict an exhaustive search, the readers searched
    once by symmetry), ``runs`` recorded runs per cell.  ``mutations``: also
    search every mutation (:func:`mutations`).  ``max_states`` bounds each
    exhaustive search (a cell that reaches it says NOT complete).
    ``progress``: called with a line of text as each part starts or ends.
    ``jobs``: worker processes (``python -m s2pt compare`` uses every core;
    each job is deterministic, so the tables do not depend on it).
    ``cache``: a :class:`~s2pt.comparison.cache.ResultCache` to read and
    write results by content (default: none; the command line uses one).
    """
    # The arguments, all checked here before any work.
    schemes = _names(schemes, SCHEMES, "scheme")
    scenarios = _names(scenarios, SCENARIOS, "scenario")
    vcpus = validate.integer("vcpus", vcpus, 1, MAX_VCPUS)
    runs = validate.integer("runs", runs, 1, MAX_RUNS,
                            rule=f"a number of recorded runs per cost cell from 1 to {MAX_RUNS:,}")
    seed = validate.integer("seed", seed, 0, (1 << 64) - 1,
                            rule="a seed is an integer from 0 to 2**64 - 1")
    max_states = validate.integer("max_states", max_states, 1)
    jobs = validate.integer("jobs", jobs, 1, MAX_JOBS,
                            rule=f"a number of worker processes from 1 to {MAX_JOBS}")
    costs = validate.flag("costs", costs)
    mutations = validate.flag("mutations", mutations)
    if progress is not None:
        validate.function("progress", progress, 1)
    if cache is not None and not isinstance(cache, ResultCache):
        raise S2ptError(f"cache={cache!r}: a s2pt.comparison.cache.ResultCache, or None")
    say = progress or (lambda text: None)
    timings = {}
    t_all = time.perf_counter()

    # 1. Every search: the declared verdict cells, the cost cells' verdicts
    #    and the mutations, each searched once.
    t0 = time.perf_counter()
    cells, searches = {}, {}
    for name in scenarios:
        sc = SCENARIOS[name]
        for s in schemes:
            if s not in sc.expect:
                cells[(s, name)] = Cell(s, name, "not-declared", why=_why_not(sc, s),
                                        bugs=sorted(sc.bugs))
            else:
                cells[(s, name)] = None           # keeps the table's order
                job = Search(name, s, max_states=max_states)
                searches.setdefault(job, f"verdict: {job.label()}")
    base = get_scenario(COST_SCENARIO)
    cost_search = {}
    if costs:
        for s in schemes:
            if s not in base.expect:
                continue
            for n in range(1, vcpus + 1):
                sc = scaled_scenario(n)
                job = (Search(sc.name, s, max_states=max_states) if sc.name in SCENARIOS
                       else Search(COST_SCENARIO, s, vcpus=n, max_states=max_states))
                cost_search[(s, n)] = job
                searches.setdefault(job, f"cost verdict: {s} at {n} vCPU{'s' if n > 1 else ''}")
    ms = [m for m in _scenarios.MUTATIONS.values() if m.scheme in schemes] if mutations else []
    mut_search = {}
    for m in ms:
        sc = SCENARIOS[m.scenario]
        job = Search(m.scenario, m.scheme, tuple(sorted(set(m.bugs) - set(sc.bugs))),
                     max_states=max_states)
        mut_search[m.name] = job
        searches.setdefault(job, f"mutation: {m.name}")
    # The largest searches first (by CPUs), so that the workers end together.
    order = sorted(searches, key=lambda j: -j.resolve().cpus)
    keys = [j.cache_key(cache) if cache is not None else None for j in order]
    outs = _cached_map(cache, keys, search_job, [(j,) for j in order], say,
                       [searches[j] for j in order], jobs)
    outcome = dict(zip(order, outs))
    for (s, name), cell in list(cells.items()):
        if cell is None:
            job = Search(name, s, max_states=max_states)
            cells[(s, name)] = _verdict_cell(s, SCENARIOS[name], outcome[job])
    timings["searches"] = time.perf_counter() - t0

    cmp = Comparison(schemes, scenarios, cells, mutations=None,
                     settings={"runs": runs, "seed": seed, "vcpus": vcpus,
                               "max_states": max_states, "cost_scenario": COST_SCENARIO,
                               "cost_scene": COST_SCENE})

    # What each scheme uses: the default run of each declared bug-free scenario.
    t0 = time.perf_counter()
    for s in schemes:
        prims, gp, seen = set(), False, []
        for name in scenarios:
            sc = SCENARIOS[name]
            if s not in sc.expect or sc.bugs:
                continue
            u = usage(sc, s)
            prims |= set(u["primitives"])
            gp = gp or u["grace_periods"]
            seen.append(name)
        if seen:
            cmp.usage[s] = {"primitives": sorted(prims), "grace_periods": gp, "scenarios": seen}
    timings["usage"] = time.perf_counter() - t0

    # 2. Costs: each cell's recorded runs, with its search's verdict.
    if costs:
        t0 = time.perf_counter()
        todo = [(s, n) for s in schemes for n in range(1, vcpus + 1) if (s, n) in cost_search]
        keys = [cache.key("cost-runs", scheme=s, vcpus=n, runs=runs, seed=seed)
                if cache is not None else None for s, n in todo]
        done = _cached_map(cache, keys, _timed_cost_runs, [(s, n, runs, seed) for s, n in todo],
                           say, [f"costs: {s} at {n} vCPU{'s' if n > 1 else ''}"
                                 for s, n in todo], jobs)
        got = dict(zip(todo, done))
        for s in schemes:
            for n in range(1, vcpus + 1):
                job = cost_search.get((s, n))
                cmp.costs[(s, n)] = _cost_cell(s, n, None if job is None else outcome[job],
                                               got.get((s, n)))
        timings["costs"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for s in schemes:
            if s in base.expect:
                cmp.logging_refaults[s] = logging_off_refaults(s)
        timings["logging_refaults"] = time.perf_counter() - t0

    # 3. Mutations.
    if mutations:
        cmp.mutations = [_mutation_result(m, outcome[mut_search[m.name]]) for m in ms]
    timings["total"] = time.perf_counter() - t_all
    cmp.timings = {k: round(v, 3) for k, v in timings.items()}
    return cmp
