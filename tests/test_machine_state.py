"""Verdicts a maintainer can trust: one machine state the explorer cannot
miss, audits that fire, no vacuous "safe", livelocks found.

* the machine-state registry (s2pt.sim.state) refuses what it cannot see,
  before any search;
* check mode (``explore(check=True)``) runs on every declared scenario x
  scheme pair and every mutation, and each of its audits fires on a
  deliberately broken model (a forgotten field, a wrong op-table flag, a
  field declared ignored that a step reads, a program that reads shared
  state between two operations);
* the reduction agrees with brute-force live replays that share nothing
  with the search;
* race windows: "safe" only where the race arose, "safe: the race never
  arises" (with its reason) elsewhere;
* livelocks are fair cycles of the state graph, reported as lassos that
  replay; starvation is told apart from deadlock.
"""

from __future__ import annotations

import json

import pytest

import s2pt
from s2pt import ops
from s2pt.cli import main
from s2pt.errors import S2ptError
from s2pt.explorer import explore, replay
from s2pt.memory import Page
from s2pt.ops import (READ_ONCE, WRITE_ONCE, check_effects, cpu_relax, put_page, run,
                      spin_lock, spin_unlock, write_lock)
from s2pt.scenarios import MUTATIONS, SCENARIOS, SOMETIMES, Scenario
from s2pt.sim import search as search_mod
from s2pt.sim import state as state_mod
from s2pt.sim import window as W
from s2pt.sim.search import NEVER_ARISES, StateSpace
from s2pt.sim.sync import SimMachine
from s2pt.sim.world import Setup, World, freeze
from s2pt.snapshot import Frozen, Stateful

from scenario_cases import sampled  # noqa: E402

GiB, PAGE = 1 << 30, 4096

#: Check mode's state bound in the sweep below: a search that reaches it
#: stops there (its first BOUND states in breadth-first order are audited).
BOUND = 4000
PAIRS = [(name, scheme) for name, sc in SCENARIOS.items() for scheme in sc.expect]


# ---------------------------------------------------------------------------
# Check mode on every declared pair and every mutation
# ---------------------------------------------------------------------------

#: The small ones run exhaustively in the fast loop (each well under
#: FAST_BOUND states: map-vs-map's largest is about 5,900); the sweep is `slow`.
FAST_BOUND = 10_000
FAST = [(n, s) for n, s in PAIRS if n in ("unmap-vs-fault", "map-vs-map", "stash-old-pte",
                                          "donate-vs-host-access", "coalesce-vs-host-fault",
                                          "donate-vs-host-access-no-tlbi")]


@pytest.mark.parametrize("name,scheme", sampled(FAST))
def test_check_mode_on_small_scenarios(name, scheme):
    r = explore(name, scheme, check=True, details=False, max_states=FAST_BOUND)
    assert r.complete, f"{name}/{scheme} grew past {FAST_BOUND} states"
    assert r.check_declared() == []


@pytest.mark.slow
@pytest.mark.parametrize("name,scheme", [p for p in PAIRS if p not in FAST])
def test_check_mode_on_every_declared_pair(name, scheme):
    """Exhaustive where the state space has at most BOUND states; otherwise
    the first BOUND states in breadth-first order, every step audited."""
    r = explore(name, scheme, check=True, details=False, max_states=BOUND)
    # States kept, and the steps taken inside runs of private steps, each
    # audited as well (s2pt.sim.por): a search that audits something.
    assert r.states + r.settings.get("por_private_steps", 0) >= min(BOUND, 50)
    if r.complete:
        assert r.check_declared() == []
    else:
        # Whatever a bounded search finds must be declared.
        assert not [k for k in r.kinds if SCENARIOS[name].expected(scheme, k) != SOMETIMES]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_check_mode_on_every_mutation(name):
    m = MUTATIONS[name]
    r = explore(m.scenario, m.scheme, bugs=m.bugs, check=True, details=False, max_states=BOUND)
    assert r.states > 0


# ---------------------------------------------------------------------------
# What the registry refuses before a search
# ---------------------------------------------------------------------------

class Plain:
    """A plain shared object: neither Stateful nor Frozen."""

    def __init__(self):
        self.go = False


def _table(scheme):
    pgt = s2pt.Stage2(ipa_bits=40, machine=SimMachine, mm_ops=scheme.mm_ops())
    pgt.map(GiB, PAGE, 0x10_4000_0000, force_pte=True)
    from s2pt.invariants import reachable_tables
    l2 = next(p.pa for p, lvl in reachable_tables(pgt) if lvl == 2)
    return pgt, l2


def _plain_toy(scheme, bugs, share=False, flag_cls=Plain):
    """The issue's toy: CPU A sets a field of a shared object between two of
    its steps; CPU B branches on it and then frees a table it still uses."""
    pgt, l2 = _table(scheme)
    s = Setup(pgt, scheme, bugs)
    flag = flag_cls()
    if share:
        s.share(flag)

    def a(flag):
        yield READ_ONCE(l2)
        flag.go = True                 # between two operations
        yield READ_ONCE(l2)

    def b(flag):
        e = yield READ_ONCE(l2)
        if flag.go:
            yield WRITE_ONCE(l2, 0)
            yield put_page(l2)
            t = e & pgt.addr_mask
            yield WRITE_ONCE(t, 0)
            yield put_page(t)
            yield put_page(t)
        yield READ_ONCE(e & pgt.addr_mask)

    s.cpu("A", "sets the flag", a, flag)
    s.cpu("B", "branches on it", b, flag)
    return s


def test_a_plain_shared_object_is_refused_before_the_search():
    sc = Scenario("toy-plain-flag", "", _plain_toy, {"none": {}})
    with pytest.raises(S2ptError) as e:
        s2pt.world(sc, "none")
    msg = str(e.value)
    assert "Plain" in msg and "argument 0 of a()" in msg and "Setup.share()" in msg
    # Sharing it does not help: it is neither Stateful nor Frozen.
    sc2 = Scenario("toy-plain-flag-shared", "", _plain_toy, {"none": {}},
                   params={"share": True})
    with pytest.raises(S2ptError, match="Plain.*not part of the explorer's machine state"):
        s2pt.world(sc2, "none")


class Flag(Stateful):
    def __init__(self):
        self.go = False

    def sim_state(self):
        return self.go

    def sim_restore(self, state):
        self.go = state


def test_a_part_written_between_two_operations_is_refused_during_the_search():
    """Registered, but written by a CPU's code between two yields: the
    search would memoise the edge without the write, so it refuses."""
    sc = Scenario("toy-flag-between-yields", "", _plain_toy, {"none": {}},
                  params={"share": True, "flag_cls": Flag})
    with pytest.raises(S2ptError, match=r"CPU 0 \(A\) changed Flag between two operations"):
        explore(sc, "none", details=False)


def _memory_toy(scheme, bugs):
    """The toy done right: the flag is a word of table memory, written and
    read with operations.  B frees the level-3 table when it sees the flag
    and then reads through its stale pointer."""
    pgt, l2 = _table(scheme)
    s = Setup(pgt, scheme, bugs)
    flag = l2 + 8 * 7                # L2[7], otherwise unused

    def a():
        yield READ_ONCE(l2)
        yield WRITE_ONCE(flag, 2)    # an invalid descriptor: a flag, not a mapping
        yield READ_ONCE(l2)
        yield WRITE_ONCE(flag, 0)    # (an uncounted nonzero entry would fail the refcount check)

    def b():
        e = yield READ_ONCE(l2)
        if (yield READ_ONCE(flag)) == 2:
            yield WRITE_ONCE(l2, 0)
            yield put_page(l2)
            t = e & pgt.addr_mask
            yield WRITE_ONCE(t, 0)
            yield put_page(t)
            yield put_page(t)
        yield READ_ONCE(e & pgt.addr_mask)

    s.cpu("A", "sets the flag", a)
    s.cpu("B", "branches on it", b)
    s.region = (GiB, 2 << 20)
    return s


MEMORY_TOY = Scenario("toy-flag-in-memory", "", _memory_toy,
                      {"none": {"use-after-free": SOMETIMES}})


def _live_kinds(sc, scheme, bound=None):
    """Every schedule by brute-force replay on fresh live worlds (no state
    space, no memo, no visited set), with at most ``bound`` preemptions:
    the set of violation kinds seen."""
    out = set()
    stack = [((), 0)]
    while stack:
        prefix, pre = stack.pop()
        w = s2pt.world(sc, scheme, record=False)
        last = None
        for c in prefix:
            w.step(c)
            last = c
        if w.outcome is not None:
            out |= {v.kind for v in w.violations}
            continue
        en = w.enabled()
        for c in en:
            p = pre + int(last is not None and c != last and last in en)
            if bound is None or p <= bound:
                stack.append((prefix + (c,), p))
    return out


def test_the_toy_done_right_is_found_and_its_schedule_replays():
    r = explore(MEMORY_TOY, "none")
    assert r.kinds == {"use-after-free"} == _live_kinds(MEMORY_TOY, "none")
    w = replay(MEMORY_TOY, "none", r.found["use-after-free"].schedule)
    assert [v.kind for v in w.violations] == ["use-after-free"]


def test_a_mutable_container_handed_to_a_cpu_is_refused():
    def build(scheme, bugs):
        pgt, l2 = _table(scheme)
        s = Setup(pgt, scheme, bugs)

        def prog(box):
            yield READ_ONCE(l2 + box[0])
        s.cpu("A", "", prog, [0])
        return s
    with pytest.raises(S2ptError, match="mutable list"):
        s2pt.world(Scenario("toy-list", "", build, {"none": {}}), "none")


def test_no_object_is_fingerprinted_by_id():
    with pytest.raises(S2ptError, match="cannot fingerprint"):
        freeze(object(), {})
    import numpy as np
    with pytest.raises(S2ptError, match="ndarray"):
        freeze(np.zeros(3), {})
    # A function defined inside another is a new object on every call:
    # fingerprinted by what it is.

    def make(k):
        def f():
            return k
        return f
    assert freeze(make(3), {}) == freeze(make(3), {}) != freeze(make(4), {})


def test_an_object_is_fingerprinted_by_every_slot_of_its_class_and_its_bases():
    """A subclass's __slots__ names only its own fields: HostMapData (the
    host's struct stage2_map_data) was fingerprinted without the fields of
    Stage2MapData, so two host walks mapping different PAs were one
    position.  Every slot counts, and the dead-field variant
    (liveness) sees them too."""
    from s2pt.pgtable import Stage2MapData
    from s2pt.pkvm import HostMapData
    a = HostMapData(0x40000000, 0, 0, None)
    b = HostMapData(0x40200000, 0, 0, None)
    assert freeze(a, {}) != freeze(b, {})
    assert len(freeze(a, {})) == 1 + len(Stage2MapData.__slots__) + len(HostMapData.__slots__)
    a.coalesced = 1
    assert freeze(a, {}) != freeze(HostMapData(0x40000000, 0, 0, None), {})
    from s2pt.sim.world import _without
    assert _without(a, "coalesced", {}, {}) == _without(
        HostMapData(0x40000000, 0, 0, None), "coalesced", {}, {}) != _without(b, "coalesced", {}, {})


def test_a_page_field_without_a_decision_is_refused(monkeypatch):
    monkeypatch.setattr(state_mod, "PAGE_STATE", tuple(f for f in state_mod.PAGE_STATE
                                                       if f != "private"))
    with pytest.raises(S2ptError, match=r"Page has fields \['private'\]"):
        s2pt.world("unmap-vs-fault", "rcu")


def test_setup_share_refuses_a_plain_object():
    pgt, _ = _table(s2pt.schemes.get_scheme("rcu"))
    with pytest.raises(S2ptError, match="Setup.share\\(\\): .*Plain"):
        Setup(pgt, None).share(Plain())


# ---------------------------------------------------------------------------
# Each audit of check mode fires
# ---------------------------------------------------------------------------

def test_audit_catches_a_field_the_snapshot_forgets(monkeypatch):
    """A TLB whose snapshot forgets its walk cache merges states that differ
    in it: the audit sees two different walk caches for one state id."""
    from s2pt.tlb import VcpuTlb
    real = VcpuTlb.sim_state
    monkeypatch.setattr(VcpuTlb, "sim_state", lambda self: (real(self)[0], ()))
    with pytest.raises(S2ptError, match="VcpuTlb fields .*_walk"):
        explore("collapse-vs-hw-walk", "rcu", check=True, details=False, max_states=3000)


def test_audit_catches_a_wrong_memory_flag_in_the_op_table(monkeypatch):
    """walker_get/walker_put marked as touching no memory: the state kept
    step by step no longer matches a full rebuild."""
    bad = {"walker_get", "walker_put", "walker_get_unless_zero"}
    monkeypatch.setattr(search_mod, "_REFS", search_mod._REFS - bad)
    monkeypatch.setattr(search_mod, "_NOMEM", search_mod._NOMEM | bad)
    with pytest.raises(S2ptError, match="differs from a full rebuild in table pages"):
        explore("collapse-vs-fault", "refcount", check=True, details=False, max_states=3000)


def test_audit_catches_a_state_field_declared_ignored(monkeypatch):
    """The walker count declared 'not state, no step depends on it': the
    perturbation audit sees a step (walker_get_unless_zero) behave
    differently when it is shifted."""
    monkeypatch.setattr(Page, "sim_ignore", Page.sim_ignore + ("walkers",))
    with pytest.raises(S2ptError, match="did something else when computed again"):
        explore("collapse-vs-fault", "refcount-revalidate", check=True, details=False,
                max_states=20000)


GLOBAL = {"n": 0}


def _reads_a_global(scheme, bugs):
    """A program whose code between two operations reads a module global
    (out of the registry's reach): replayed from its own results it does
    not come back to the same place."""
    pgt, l2 = _table(scheme)
    s = Setup(pgt, scheme, bugs)

    def prog():
        for _ in range(2):
            GLOBAL["n"] += 1
            yield READ_ONCE(l2 + 8 * (GLOBAL["n"] % 4))
    s.cpu("A", "", prog)
    s.cpu("B", "", prog)
    return s


def test_audit_catches_a_program_that_reads_state_outside_the_machine():
    sc = Scenario("toy-global", "", _reads_a_global, {"none": {}})
    with pytest.raises(S2ptError, match="outside the machine state|did something else"):
        explore(sc, "none", check=True, details=False)


def test_audit_catches_a_frozen_part_that_changes():
    class Config(Frozen):
        def __init__(self):
            self.calls = 0

    def build(scheme, bugs):
        pgt, l2 = _table(scheme)
        s = Setup(pgt, scheme, bugs)
        cfg = Config()
        s.share(cfg)

        def prog(cfg):
            yield READ_ONCE(l2)
            yield READ_ONCE(l2)
        s.cpu("A", "", prog, cfg)

        def bump(cfg):
            yield READ_ONCE(l2)
            cfg.calls += 1
            yield READ_ONCE(l2)
        s.cpu("B", "", bump, cfg)
        return s
    with pytest.raises(S2ptError, match="declared Frozen .* calls"):
        explore(Scenario("toy-frozen", "", build, {"none": {}}), "none", check=True,
                details=False)


def _free_walker_that_also(monkeypatch, poke):
    """The free walk (a run of private steps under ``rcu``: the unlinked
    subtree is no other CPU's) with ``poke(pgt)`` done at its last-level
    entries, which no step outside a run reaches."""
    from s2pt import pgtable
    real = pgtable.stage2_free_walker

    def walker(ctx, visit):
        if ctx.level == 3:
            poke(ctx.pgt)
        return (yield from real(ctx, visit))
    monkeypatch.setattr(pgtable, "stage2_free_walker", walker)


def test_audit_catches_a_frozen_part_changed_inside_a_run_of_private_steps(monkeypatch):
    """Inside a run the Frozen parts are audited once, where it ends: a
    change made in the middle of the free walk is caught there."""
    def poke(pgt):
        pgt.poked = getattr(pgt, "poked", 0) + 1
    _free_walker_that_also(monkeypatch, poke)
    # caught where the run ends, not later by some other CPU's step
    with pytest.raises(S2ptError, match="at the end of a run of .* declared Frozen .* poked"):
        explore("collapse-vs-fault", "rcu", check=True, details=False, max_states=3000)


def test_audit_catches_a_fixed_field_that_a_step_changes(monkeypatch):
    """SimMachine's dispatch, blocking rules and registered operations are
    ``sim_fixed``: set when the World is built, audited against it."""
    def poke(pgt):
        pgt.machine.extensions["poke"] = len(pgt.machine.extensions)
    _free_walker_that_also(monkeypatch, poke)
    with pytest.raises(S2ptError, match="at the end of a run of .* declares field.*extensions "
                                        "fixed"):
        explore("collapse-vs-fault", "rcu", check=True, details=False, max_states=3000)


def test_audit_catches_a_page_whose_fixed_fields_change(monkeypatch):
    """A table page's state is in the machine state, which the audit
    rebuilds at every step; its address is fixed, and audited as such."""
    def poke(pgt):
        page = max(pgt.mm.pages.values(), key=lambda p: p.pfn)
        page.pa += 1 << 32
    _free_walker_that_also(monkeypatch, poke)
    with pytest.raises(S2ptError, match="at the end of a run of .* table page .* fixed fields"):
        explore("collapse-vs-fault", "rcu", check=True, details=False, max_states=3000)


def test_the_ignored_fields_are_perturbed_and_the_counters_do_not_matter():
    """VM.counters, PhysMem's statistics, the TLBs' hit counts: ignored, and
    check mode proves no step reads them (it perturbs them at every step)."""
    w = s2pt.world("collapse-vs-fault", "rcu")
    ignored = {(type(o).__name__, f) for o, f in w.state.ignored()}
    assert {("VM", "counters"), ("PhysMem", "peak"), ("VcpuTlb", "hits")} <= ignored
    vm = w.setup.subject
    before = vm.counters.copy()
    w.state.perturb_ignored()
    assert vm.counters != before and all(vm.counters[k] == before[k] + 7919 for k in before)


# ---------------------------------------------------------------------------
# Reduction against brute force, with no shared memo
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,scheme,bound", [
    (MEMORY_TOY, "none", None),
    ("unmap-vs-fault", "rcu", 2),
    ("stash-old-pte", "none", None),
    ("donate-vs-host-access-no-tlbi", "hyp-lock", 1),
    ("coalesce-vs-host-fault-no-tlbi", "hyp-lock", 1),
    ("map-vs-map-no-shared", "rcu", 1),
])
def test_reduction_agrees_with_brute_force_live_replay(name, scheme, bound):
    red = explore(name, scheme, preemptions=bound, details=False)
    brute = _live_kinds(name, scheme, bound)
    assert red.kinds == brute, (red.kinds, brute)


# ---------------------------------------------------------------------------
# Race windows: no vacuous "safe"
# ---------------------------------------------------------------------------

def test_every_scenario_declares_a_race_window():
    assert all(isinstance(sc.window, W.Window) for sc in SCENARIOS.values())


def test_safe_only_where_the_race_arose():
    rcu = explore("collapse-vs-fault", "rcu", details=False)
    assert rcu.verdict == "safe" and rcu.window["reached"]
    first = rcu.window["stages"][-1]["schedule"]
    # The first run that reached it: replayed, vCPU1 holds a pointer into
    # the level-3 table when vCPU0 breaks L2[0].
    assert first is not None
    wl = explore("collapse-vs-fault", "write-lock", details=False)
    assert wl.verdict == NEVER_ARISES and not wl.window["reached"]
    assert wl.window["stages"][0]["reached"]          # tables are unlinked ...
    assert "another CPU holds a pointer" in wl.window["reason"]   # ... never while walked
    rw = explore("collapse-vs-hw-walk", "rwlock", details=False)
    assert rw.verdict == NEVER_ARISES and rw.window["reason"] == "no run unlinks a table"
    assert NEVER_ARISES in rw.summary()


def test_never_arises_is_its_own_status_in_compare_and_json():
    from s2pt.comparison import compare
    c = compare(schemes=["rcu", "write-lock"], scenarios=["collapse-vs-fault"], costs=False,
                jobs=1)
    assert c.cell("rcu", "collapse-vs-fault").status == "safe"
    cell = c.cell("write-lock", "collapse-vs-fault")
    assert cell.status == "never-arises" and cell.short() == "no race"
    assert cell.text().startswith(NEVER_ARISES)
    d = json.loads(json.dumps(c.to_json()))
    j = next(x for x in d["cells"] if x["scheme"] == "write-lock")
    assert j["status"] == "never-arises" and j["verdict"] == NEVER_ARISES
    assert j["race"]["reached"] is False and "found" in j


def test_explore_json_carries_the_verdict_and_the_window(capsys):
    rc = main(["explore", "unmap-vs-fault", "--scheme", "rcu", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["verdict"] == NEVER_ARISES and out["window"]["reached"] is False


# ---------------------------------------------------------------------------
# Livelock, starvation, deadlock
# ---------------------------------------------------------------------------

def test_rwlock_collapse_vs_fault_is_a_livelock_with_a_lasso_that_replays():
    r = explore("collapse-vs-fault", "rwlock")
    assert "livelock" in r.found and r.check_declared() == []
    f = r.found["livelock"]
    assert f.cycle_start is not None and f.cycle
    assert "vCPU0 never finishes" in f.message and "user_mem_abort()" in f.message
    # The lasso replays: the state after the stem and after stem + cycle is
    # the same state of the machine and of every CPU ...
    space = StateSpace(s2pt.world("collapse-vs-fault", "rwlock", record=False))
    s = space.initial
    for c in f.schedule[:f.cycle_start]:
        s, v = space.step(s, c)
    entry = s
    for c in f.cycle:
        s, v = space.step(s, c)
    assert s == entry
    # ... and on a live world the cycle really loops: vCPU0 faults again.
    w = replay("collapse-vs-fault", "rwlock", f.schedule[:f.cycle_start] + f.cycle * 3,
               max_steps=len(f.schedule) + 2 * len(f.cycle))
    assert w.cpus[0] is not None
    assert "repeat forever" in f.diagram
    assert f.to_json()["cycle"] and f.to_json()["stem"]


def _spinner(scheme, bugs, fair=True):
    """CPU A waits for B to set a word.  With ``fair``, B sets it: A spins
    only while B is preempted (an unfair cycle, no livelock).  Without, B
    finishes without setting it: A spins forever (a livelock)."""
    pgt, l2 = _table(scheme)
    s = Setup(pgt, scheme, bugs)
    flag = l2 + 8 * 7

    def a():
        while (yield READ_ONCE(flag)) != 2:
            yield cpu_relax()
        yield WRITE_ONCE(flag, 0)

    def b():
        yield READ_ONCE(l2)
        if fair:
            yield WRITE_ONCE(flag, 2)
        yield READ_ONCE(l2)
    s.cpu("A", "spins", a)
    s.cpu("B", "sets the flag" if fair else "forgets", b)
    return s


def test_an_unfair_spin_is_not_a_livelock_a_fair_one_is():
    fair = Scenario("toy-spin", "", _spinner, {"none": {}})
    assert explore(fair, "none", details=False).kinds == set()
    stuck = Scenario("toy-spin-stuck", "", _spinner, {"none": {"livelock": SOMETIMES}},
                     params={"fair": False})
    r = explore(stuck, "none")
    assert r.kinds == {"livelock"} and "A never finishes" in r.found["livelock"].message


def _locks(scheme, bugs, deadlock=False):
    pgt, l2 = _table(scheme)
    s = Setup(pgt, scheme, bugs)

    def leaks():
        yield spin_lock("x")           # never released
        yield READ_ONCE(l2)

    def waits():
        yield READ_ONCE(l2)
        yield spin_lock("x")
        yield spin_unlock("x")

    def ab(first, second):
        yield spin_lock(first)
        yield spin_lock(second)
        yield spin_unlock(second)
        yield spin_unlock(first)
    if deadlock:
        s.cpu("A", "", ab, "x", "y")
        s.cpu("B", "", ab, "y", "x")
    else:
        s.cpu("A", "", leaks)
        s.cpu("B", "", waits)
    return s


def test_starvation_is_told_apart_from_deadlock():
    starve = Scenario("toy-starve", "", _locks, {"none": {}})
    assert "starvation" in explore(starve, "none", details=False).kinds
    dead = Scenario("toy-deadlock", "", _locks, {"none": {}}, params={"deadlock": True})
    kinds = explore(dead, "none", details=False).kinds
    assert "deadlock" in kinds and "starvation" not in kinds


def test_a_depth_bound_is_not_a_livelock():
    r = explore("collapse-vs-fault", "rcu", max_steps=30, details=False)
    assert not r.complete and "livelock" not in r.found


# ---------------------------------------------------------------------------
# The op table as the single source
# ---------------------------------------------------------------------------

def test_every_op_runs_on_both_machines():
    check_effects(ops.Machine)
    check_effects(SimMachine)
    m = ops.Machine(s2pt.memory.PhysMem())
    sim = SimMachine(s2pt.memory.PhysMem())
    for name in ops.OPS:
        assert callable(m.dispatch[name]) and callable(sim.dispatch[name])
        assert (name in sim.waits) == ops.OPS[name].blocks


def test_a_row_the_machines_cannot_perform_is_refused(monkeypatch):
    monkeypatch.setitem(ops.OPS, "frobnicate", ops.OpKind("frobnicate", effect="frobnicate"))
    with pytest.raises(AssertionError, match="frobnicate"):
        check_effects(ops.Machine)
    monkeypatch.setitem(ops.OPS, "frobnicate", ops.OpKind("frobnicate", effect="nop",
                                                           wait="never_written"))
    with pytest.raises(AssertionError, match="blocking rule .*frobnicate"):
        check_effects(SimMachine)


def test_rcu_operations_run_sequentially():
    """synchronize_rcu() and rcu_barrier() on one CPU: no KeyError, the
    grace period is immediate, the barrier runs the callbacks."""
    from s2pt.sim.sync import rcu_barrier, synchronize_rcu
    m = ops.Machine(s2pt.memory.PhysMem())
    ran = []

    def cb(x):
        ran.append(x)
        return
        yield

    def prog():
        yield ("call_rcu", cb, (1,))
        yield from synchronize_rcu()
        yield rcu_barrier()
        return len(ran)
    assert run(prog(), m) == 1

    def inside():
        yield ("rcu_read_lock",)
        yield from synchronize_rcu()
    with pytest.raises(s2pt.KernelBug, match="wait for itself"):
        run(inside(), m)


def test_blocking_comes_from_the_op_table():
    sim = SimMachine(s2pt.memory.PhysMem())
    sim.cpu = 0
    sim.perform(write_lock("l"))
    assert "held by CPU 0" in sim.blocked(1, write_lock("l"))
    assert sim.blocked(1, READ_ONCE(0)) is None


def test_packed_states_unpack_to_what_was_packed():
    """A state of the breadth-first search is one integer (search._Packed):
    the machine id above a field per CPU.  Packing then unpacking, and the
    unrolled unpacking the search uses, give back the same state, at the
    largest ids a field holds too."""
    import random

    from s2pt.sim.search import _Packed
    rng = random.Random(7)
    top = state_mod.NODE_MASK
    for n in range(1, 7):
        pk = _Packed(n)
        unrolled = pk.nodes_fn()
        for _ in range(300):
            nodes = tuple(rng.choice((0, 1, top, rng.randrange(top + 1))) for _ in range(n))
            mid = rng.choice((0, rng.randrange(1 << 40)))
            k = pk.pack((mid, nodes))
            assert pk.unpack(k) == (mid, nodes)
            assert unrolled(k & pk.nmask) == nodes
