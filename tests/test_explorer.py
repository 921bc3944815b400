"""The interleaving engine: declared outcomes, shortest schedules, replay
determinism, reduction soundness, RCU semantics, the CLI."""

from __future__ import annotations

import json
import random

import pytest

import s2pt
from s2pt import pgtable as pt
from s2pt.sim.violation import KINDS
from s2pt.cli import main
from s2pt.memory import PhysMem
from s2pt.ops import READ_ONCE, WRITE_ONCE, put_page, rcu_read_lock, rcu_read_unlock, tlbi
from s2pt.scenarios import SCENARIOS, SOMETIMES, Scenario
from s2pt.schemes import SCHEMES
from s2pt.explorer import explore, replay
from s2pt.sim.search import StateSpace, format_schedule, parse_schedule
from s2pt.ops import read_lock, read_unlock, write_lock, write_unlock
from s2pt.sim.sync import SimMachine, synchronize_rcu
from s2pt.sim.world import Setup

from scenario_cases import CASES as STACK_CASES, sampled  # noqa: E402

#: The (scenario, scheme) pairs the developer's loop checks (scenario_cases.sampled).
SAMPLE = set(STACK_CASES)

GiB, PAGE = 1 << 30, 4096


# ---------------------------------------------------------------------------
# A toy unlink/free litmus (the anchors' §2 model), on the real walker
# ---------------------------------------------------------------------------

def _toy_builder(scheme, bugs, late_reader=False, grace=True):
    pgt = s2pt.Stage2(ipa_bits=40, machine=SimMachine, mm_ops=scheme.mm_ops())
    pgt.map(GiB, PAGE, 0x10_4000_0000, force_pte=True)
    s = Setup(pgt, scheme, bugs)
    from s2pt.invariants import reachable_tables
    l2 = next(p.pa for p, lvl in reachable_tables(pgt) if lvl == 2)
    ptep = l2                       # L2[0] -> the L3 table

    def walker():
        """A shared walker: rcu_read_lock, load the table entry, read into it."""
        yield rcu_read_lock()
        e = yield READ_ONCE(ptep)
        if e & 3 == 3:
            yield READ_ONCE(e & pgt.addr_mask)
        yield rcu_read_unlock()

    def unlinker():
        """Unlink the L3 table, TLBI, wait for readers (or not), free it
        (the toy's free drops the one page entry's reference and the table's
        own, instead of the 512-entry boring traversal)."""
        e = yield READ_ONCE(ptep)
        yield WRITE_ONCE(ptep, 0)
        yield put_page(ptep)
        yield tlbi("ipa", GiB, None)
        if grace and scheme.name == "rcu":
            yield from synchronize_rcu()
        table = e & pgt.addr_mask
        yield WRITE_ONCE(table, 0)
        yield put_page(table)
        yield put_page(table)

    s.cpu("walker", "rcu reader", walker)
    s.cpu("unlink", "unlink + free", unlinker)
    if late_reader:
        s.cpu("late", "reader", walker)
    s.region = (GiB, 2 << 20)
    return s


TOY = Scenario("toy-unlink-free", "walker vs unlink + free", _toy_builder,
               {"none": {"use-after-free": SOMETIMES}, "rcu": {}})
TOY3 = Scenario("toy-unlink-free-3", "two walkers vs unlink + free", _toy_builder,
                {"none": {"use-after-free": SOMETIMES}, "rcu": {}}, cpus=3,
                params={"late_reader": True})


def _all_schedules_live(sc, scheme):
    """Every complete schedule, by brute-force replay on live worlds (no
    memo, no visited set): {schedule tuple: violation kinds}."""
    out = {}
    stack = [()]
    while stack:
        prefix = stack.pop()
        w = s2pt.world(sc, scheme, record=False)
        for c in prefix:
            w.step(c)
        if w.outcome is not None:
            out[prefix] = {v.kind for v in w.violations}
            continue
        for c in w.enabled():
            stack.append(prefix + (c,))
    return out


# ---------------------------------------------------------------------------
# Declared outcomes
# ---------------------------------------------------------------------------

CHEAP = ["collapse-vs-fault", "unmap-vs-fault", "split-vs-fault", "stash-old-pte",
         "collapse-vs-hw-walk", "collapse-vs-hw-walk-no-tlbi", "map-vs-map",
         "map-vs-map-no-shared", "unmap-vs-collapse"]
#: Scenarios whose exhaustive search takes seconds per scheme (tens of
#: thousands of states, a 512-entry table walked step by step).
EXPENSIVE = {"collapse-vs-fault-3", "collapse-vs-fault-4", "logging-mismatch", "split-double-put",
             "host-fault-vs-donate-shared"}


@pytest.mark.parametrize("name,scheme", sampled([(n, s) for n in CHEAP for s in SCHEMES
                                                 if s in SCENARIOS[n].expect]))
def test_declared_outcomes_hold(name, scheme):
    r = explore(name, scheme, details=False)
    assert r.complete
    assert r.check_declared() == [], r.summary()


@pytest.mark.slow
@pytest.mark.parametrize("scheme", list(SCENARIOS["collapse-vs-fault-3"].expect))
def test_declared_outcomes_three_vcpus(scheme):
    r = explore("collapse-vs-fault-3", scheme, details=False)
    assert r.complete and r.check_declared() == []


def _rest():
    """Every declared (scenario, scheme) pair the two tests above leave out."""
    for name, sc in SCENARIOS.items():
        if name in CHEAP or name == "collapse-vs-fault-3":
            continue
        for scheme in sc.expect:
            if name in EXPENSIVE:
                yield pytest.param(name, scheme, marks=[pytest.mark.slow], id=f"{name}-{scheme}")
            else:
                yield from sampled([(name, scheme)])


@pytest.mark.parametrize("name,scheme", list(_rest()))
def test_every_other_declaration_holds_exhaustively(name, scheme):
    """With the three tests above: every correct scheme x scenario pair the
    registries hold passes its declaration, by an exhaustive search
    (collapse-vs-fault-4 under the refcount schemes too, since runs of
    private steps: seconds, where it was millions of states)."""
    r = explore(name, scheme, details=False)
    assert r.complete
    assert r.check_declared() == [], r.summary()


def _mutations():
    from s2pt.scenarios import MUTATIONS
    for m in MUTATIONS.values():
        fast = m.scenario not in EXPENSIVE and (m.scenario, m.scheme) in SAMPLE
        yield pytest.param(m, marks=[] if fast else [pytest.mark.slow], id=m.name)


@pytest.mark.parametrize("m", list(_mutations()))
def test_every_mutation_is_caught_with_its_kind(m):
    """Each deliberately broken variant in scenarios.MUTATIONS shows the
    violation it declares, and the same scheme without the mutation's own
    switches (the scenario's standing bugs kept) does not show it."""
    r = explore(m.scenario, m.scheme, bugs=m.bugs, details=False)
    assert m.kind in r.kinds, (m.name, r.summary())
    clean = explore(m.scenario, m.scheme, details=False)
    assert m.kind not in clean.kinds or m.bugs == SCENARIOS[m.scenario].bugs


def test_every_scheme_is_declared_and_undeclared_ones_are_refused():
    """Guest-stage-2 scenarios declare none and rcu; pKVM's declare hyp-lock.
    A scheme a scenario does not declare does not apply to its table: the
    explorer refuses it, saying why, instead of printing a verdict."""
    for scheme in SCHEMES:
        assert any(scheme in sc.expect for sc in SCENARIOS.values()), scheme
    for sc in SCENARIOS.values():
        assert sc.expect, sc.name
        for scheme in SCHEMES:
            if sc.expected(scheme, "leak") is not None:
                continue
            with pytest.raises(s2pt.S2ptError, match=f"does not declare scheme '{scheme}'"):
                s2pt.world(sc, scheme)


# ---------------------------------------------------------------------------
# Seeded bugs, shortest schedules
# ---------------------------------------------------------------------------

def test_toy_shortest_schedule_is_shortest():
    """BFS's schedule is as short as the shortest one brute force finds."""
    r = explore(TOY, "none")
    assert r.kinds == {"use-after-free"}
    brute = _all_schedules_live(TOY, "none")
    bad = [s for s, k in brute.items() if "use-after-free" in k]
    assert bad
    w = replay(TOY, "none", r.found["use-after-free"].schedule)
    uaf_step = next(v.step for v in w.violations if v.kind == "use-after-free")
    assert uaf_step + 1 == min(len(s) for s in bad)


def test_collapse_none_finds_the_thread_bug():
    r = explore("collapse-vs-fault", "none")
    f = r.found["use-after-free"]
    v = f.violation
    assert v.actor == "vCPU1" and v.function == "__kvm_pgtable_visit"
    assert "vCPU0 freed" in v.explanation
    assert "^^^ USE-AFTER-FREE ^^^" in f.diagram
    # vCPU1 gets into the table, vCPU0 collapses and frees it, vCPU1 reads.
    assert f.schedule[:9] in ([0] * 5 + [1] * 4, [1] * 4 + [0] * 5)
    w = replay("collapse-vs-fault", "none", f.schedule_text)
    assert [x.kind for x in w.violations] == ["use-after-free"]


def test_hardware_walker_needs_the_tlbi_not_the_grace_period():
    """With the TLBI, even an immediate free is safe from the MMU (its
    in-flight walk completes before TLBI + DSB does, and the walk cache is
    dropped); without it, the walk cache still points at the table when the
    RCU callback frees it: the grace period does not cover hardware walkers."""
    for scheme in ("none", "rcu"):
        r = explore("collapse-vs-hw-walk-no-tlbi", scheme)
        v = r.found["use-after-free"].violation
        assert "walk cache" in v.explanation
        assert v.actor == ("vCPU0" if scheme == "none" else "rcu")


def test_seeded_leak_f6a27d6dc51b():
    """free_unlinked without the final put_page of the subtree's root: the
    unlinked level-3 table keeps the reference its parent entry held."""
    r = explore("collapse-vs-fault", "rcu", bugs=["f6a27d6dc51b"], details=False)
    assert r.kinds == {"leak"}
    w = s2pt.world("collapse-vs-fault", "rcu")
    (l3,) = [pfn << w.pgt.page_shift for pfn, lvl in w.view.levels.items() if lvl == 3]
    assert f"page {l3:#x} (refcount 1) is allocated but neither reachable" in r.found["leak"].message


def test_random_and_pct_find_the_bug_and_minimise():
    exact = explore(TOY3, "none").found["use-after-free"].schedule
    for mode in ("random", "pct"):
        r = explore(TOY3, "none", mode=mode, runs=200, seed=1, depth=2)
        assert "use-after-free" in r.kinds, mode
        f = r.found["use-after-free"]
        w = replay(TOY3, "none", f.schedule)
        assert any(v.kind == "use-after-free" for v in w.violations)
        assert len(f.schedule) <= len(exact) + 3, (f.schedule_text, exact)
        assert r.check_declared() == []      # incomplete: a missing Sometimes is no error
    # Seeded: the same seed, the same result.
    a = explore(TOY3, "none", mode="pct", runs=50, seed=5, details=False)
    b = explore(TOY3, "none", mode="pct", runs=50, seed=5, details=False)
    assert {k: f.schedule for k, f in a.found.items()} == {k: f.schedule for k, f in b.found.items()}


def test_map_vs_map_loser_retries_and_the_unshared_walk_loses_a_page():
    """The cmpxchg in stage2_try_break_pte() is what makes parallel faults
    safe: with it the loser frees its table and faults again (the final map
    always has both pages); with plain stores (no KVM_PGTABLE_WALK_SHARED)
    one table and its page are lost."""
    ok = explore("map-vs-map", "rcu")
    assert ok.complete and not ok.found
    bad = explore("map-vs-map-no-shared", "rcu")
    assert {"lost-update", "leak", "refcount"} <= bad.kinds
    w = replay("map-vs-map-no-shared", "rcu", bad.found["lost-update"].schedule)
    lost = next(v for v in w.violations if v.kind == "lost-update")
    assert "0x40000000" not in lost.message.split(" is not")[0]      # page 0 is gone
    # The schedule where vCPU1 loses the cmpxchg: it retries, and both pages end mapped.
    w = replay("map-vs-map", "rcu", "0*8 1*12 0")
    ops = [e.op[0] for e in w.events if e.cpu == 1]
    assert ops.count("kvm_mmu_topup_memory_cache") >= 2 and "put_page" in ops
    assert w.outcome == "done" and not w.violations
    slot = w.setup.subject.memslots[0]
    assert w.pgt.translate(0x4000_1000).pa == slot.pa + 0x1000
    assert w.pgt.translate(0x4000_0000).pa == slot.pa
    # The retry yields a cpu_relax() hint, so live runs do not spin: the default
    # policy, random and PCT all let the winner finish first.
    assert "cpu_relax" in ops
    w = replay("map-vs-map", "rcu", "0*8 1")
    assert w.outcome == "done" and len(w.events) < 200
    for mode in ("random", "pct"):
        r = explore("map-vs-map", "rcu", mode=mode, runs=100, depth=2, seed=4)
        assert not r.found, (mode, r.summary())


@pytest.mark.slow      # 36 random and PCT runs in check mode, each replayed live
def test_random_walks_through_the_memo_agree_with_live_runs():
    """Random and PCT runs walk the memoised state space; every schedule
    they produce must end the same way on a live world."""
    from s2pt.sim.search import _walk, pct_chooser
    rng = random.Random(3)
    for name, scheme in (("collapse-vs-fault", "none"), ("collapse-vs-hw-walk-no-tlbi", "rcu"),
                         ("stash-old-pte", "none")):
        space = StateSpace(s2pt.world(SCENARIOS[name], scheme, record=False), check=True)
        seen = set()
        for run in range(12):
            choose = (pct_chooser(rng, space.n, 2, 40) if run % 2
                      else (lambda en, last, step, relaxed: rng.choice(en)))
            sched, viols = _walk(space, choose, 20000)
            w = replay(name, scheme, sched)
            assert sorted(k for k, _ in viols) == sorted(v.kind for v in w.violations), sched
            assert len(w.events) == len(sched)
            seen |= {k for k, _ in viols}
        assert seen or name == "collapse-vs-fault"     # the UAF window is ~1,000 steps wide


# ---------------------------------------------------------------------------
# Determinism and the memo
# ---------------------------------------------------------------------------

def _trace(w):
    return [(e.cpu, repr(e.op), e.result, e.enabled, e.stack, e.note, e.violations)
            for e in w.events]


def test_replay_twice_gives_identical_enabled_sets_and_events():
    sched = explore("collapse-vs-fault", "none").found["use-after-free"].schedule
    a = replay("collapse-vs-fault", "none", sched)
    b = replay("collapse-vs-fault", "none", sched)
    assert _trace(a) == _trace(b) and len(a.events) > 1000


def _memory(pgt):
    return tuple(sorted((pfn, p.refcount, p.freed, p.table.tobytes())
                        for pfn, p in pgt.mm.pages.items()))


@pytest.mark.parametrize("name,scheme", [
    ("collapse-vs-fault", "rcu"), pytest.param("split-vs-fault", "rcu", marks=pytest.mark.slow),
    ("collapse-vs-hw-walk", "rcu"),
    ("collapse-vs-hw-walk-no-tlbi", "rcu"), ("map-vs-map", "rcu"),
    ("donate-vs-host-access", "hyp-lock"), ("donate-vs-host-access-no-tlbi", "hyp-lock"),
    ("coalesce-vs-host-fault", "hyp-lock"), ("coalesce-vs-host-fault-no-tlbi", "hyp-lock"),
])
def test_memoised_steps_match_live_runs(name, scheme):
    """Random schedules through the state space (memoised transitions,
    restores of memory and of the observers: TLBs, the BBM automaton, the
    isolation checker's owners) end in the same state as the same schedules
    run live."""
    rng = random.Random(7)
    space = StateSpace(s2pt.world(SCENARIOS[name], scheme, record=False), check=True)
    for _ in range(12):
        w = s2pt.world(SCENARIOS[name], scheme, record=False)
        s = space.initial
        while w.outcome is None:
            en = w.enabled()
            assert tuple(en) == space.enabled(s)
            c = rng.choice(en)
            w.step(c)
            s, viols = space.step(s, c)
            if viols is not None or w.outcome == "violation":
                assert sorted(k for k, _ in viols or ()) == sorted(
                    v.kind for v in w.violations), (viols, w.violations)
                break
        else:
            space.restore(s)
            assert _memory(space.pgt) == _memory(w.pgt)
            assert [type(o) for o in space.stateful] == [type(o) for o in w.stateful]
            for a, b in zip(space.stateful, w.stateful):   # TLBs, BBM, isolation checker
                assert a.sim_state() == b.sim_state()


@pytest.mark.parametrize("sc,scheme,bound", [
    (TOY, "none", None), (TOY, "rcu", None), (TOY3, "none", None), (TOY3, "rcu", None),
    ("unmap-vs-fault", "none", None), ("unmap-vs-fault", "rcu", None),
    ("stash-old-pte", "none", None), ("stash-old-pte", "rcu", 2),
    # The unreduced search of split-vs-fault runs 9 million transitions
    # (half a minute): slow, so the developer's loop leaves it to CI.
    pytest.param("split-vs-fault", "rcu", None, marks=pytest.mark.slow),
    ("collapse-vs-fault", "none", 1), ("collapse-vs-fault", "rcu", 1),
])
def test_reduction_never_changes_a_verdict(sc, scheme, bound):
    red = explore(sc, scheme, preemptions=bound, details=False)
    unr = explore(sc, scheme, mode="unreduced", preemptions=bound, details=False)
    assert red.kinds == unr.kinds
    assert red.transitions <= unr.transitions


def test_toy_verdicts_match_brute_force_live_replay():
    for sc in (TOY,):
        for scheme in ("none", "rcu"):
            brute = set().union(*_all_schedules_live(sc, scheme).values())
            assert explore(sc, scheme, details=False).kinds == brute


# ---------------------------------------------------------------------------
# RCU semantics
# ---------------------------------------------------------------------------

def _m(n=3):
    return SimMachine(PhysMem(), None)


def _do(m, cpu, op):
    m.cpu = cpu
    assert m.blocked(cpu, op) is None, m.blocked(cpu, op)
    return m.perform(op)


def test_reader_starting_after_the_grace_period_does_not_delay_it():
    m = _m()
    _do(m, 0, rcu_read_lock())
    _do(m, 2, ("synchronize_rcu",))          # the grace period starts: waits for CPU 0
    _do(m, 1, rcu_read_lock())               # a reader that arrives later
    assert "CPU 0" in m.blocked(2, ("rcu_gp_wait",))
    _do(m, 0, rcu_read_unlock())
    assert m.blocked(2, ("rcu_gp_wait",)) is None     # CPU 1 is still inside
    _do(m, 2, ("rcu_gp_wait",))


def test_nested_read_side_sections_end_at_the_outermost_unlock():
    m = _m()
    _do(m, 0, rcu_read_lock())
    _do(m, 0, rcu_read_lock())
    _do(m, 1, ("synchronize_rcu",))
    _do(m, 0, rcu_read_unlock())
    assert m.blocked(1, ("rcu_gp_wait",)) is not None
    _do(m, 0, rcu_read_unlock())
    assert m.blocked(1, ("rcu_gp_wait",)) is None


def test_call_rcu_callbacks_wait_for_pre_existing_readers_in_order():
    m = _m()
    _do(m, 0, rcu_read_lock())
    _do(m, 1, ("call_rcu", "first", ()))
    _do(m, 0, rcu_read_unlock())
    _do(m, 0, rcu_read_lock())               # a new section: the first callback ignores it
    _do(m, 1, ("call_rcu", "second", ()))
    assert m.blocked(2, ("rcu_next_callback",)) is None
    assert _do(m, 2, ("rcu_next_callback",)) == ("first", ())
    assert m.blocked(2, ("rcu_next_callback",)) is not None     # second waits for CPU 0
    assert m.blocked(2, ("rcu_barrier",)) is not None
    _do(m, 0, rcu_read_unlock())
    assert _do(m, 2, ("rcu_next_callback",)) == ("second", ())
    assert m.blocked(2, ("rcu_barrier",)) is None


def test_rwlock_readers_share_writers_exclude():
    m = _m()
    _do(m, 0, read_lock("L"))
    _do(m, 1, read_lock("L"))
    assert "held for read" in m.blocked(2, write_lock("L"))
    _do(m, 0, read_unlock("L"))
    _do(m, 1, read_unlock("L"))
    _do(m, 2, write_lock("L"))
    assert "held for write" in m.blocked(0, read_lock("L"))
    _do(m, 2, write_unlock("L"))


def _deadlock_builder(scheme, bugs):
    pgt = s2pt.Stage2(ipa_bits=40, machine=SimMachine)
    s = Setup(pgt, scheme, bugs)

    def sync_inside_reader():
        """synchronize_rcu() inside rcu_read_lock(): waits for itself."""
        yield rcu_read_lock()
        yield from synchronize_rcu()
        yield rcu_read_unlock()

    s.cpu("cpu0", "self-deadlock", sync_inside_reader)
    return s


def _livelock_builder(scheme, bugs):
    pgt = s2pt.Stage2(ipa_bits=40, machine=SimMachine)
    s = Setup(pgt, scheme, bugs)

    def spin():
        """Retry forever on an entry that stays invalid."""
        while not (yield READ_ONCE(pgt.pgd)):
            pass

    s.cpu("cpu0", "spins", spin)
    return s


def test_deadlock_and_livelock_are_reported():
    dead = Scenario("t-deadlock", "", _deadlock_builder, {"rcu": {"deadlock": SOMETIMES}}, 1)
    r = explore(dead, "rcu")
    assert r.kinds == {"deadlock"}
    assert "synchronize_rcu() waits for the read-side sections of CPU 0" in r.found["deadlock"].violation.explanation
    live = Scenario("t-livelock", "", _livelock_builder, {"rcu": {"livelock": SOMETIMES}}, 1)
    w = s2pt.world(live, "rcu", max_steps=50)
    w.run()
    assert w.outcome == "livelock" and w.violations[0].kind == "livelock"
    # The stateful search sees a cycle of states, not a run that grows: the
    # only CPU spins on an entry nothing will ever change, so the cycle is
    # fair (no other CPU could run instead) and it is a livelock, reported
    # as a lasso whatever the step bound.
    r = explore(live, "rcu", max_steps=50)
    assert r.complete and r.kinds == {"livelock"}
    assert r.found["livelock"].cycle == [0]          # one READ_ONCE, back where it was


# ---------------------------------------------------------------------------
# Schedules, views, CLI
# ---------------------------------------------------------------------------

def test_schedule_strings_round_trip():
    assert parse_schedule("0 0 1*3, 2") == [0, 0, 1, 1, 1, 2]
    assert format_schedule([1, 1, 1, 1, 0]) == "1*4 0"
    assert parse_schedule(format_schedule([0, 1, 1, 1, 2, 2])) == [0, 1, 1, 1, 2, 2]


def test_stepping_by_hand():
    w = s2pt.world(SCENARIOS["collapse-vs-fault"], "none")
    for c in [1, 1, 1, 1, 1]:          # topup, read_lock, rcu_read_lock, PGD, L2
        w.step(c)
    assert "next: READ_ONCE(L3[1])" in w.status()
    w.run([0])
    assert w.outcome == "violation" and w.violations[0].kind == "use-after-free"
    assert "vCPU0" in w.diagram() and "page_count" in w.log()


def test_violation_kinds_are_documented():
    for sc in SCENARIOS.values():
        for kinds in sc.expect.values():
            assert set(kinds) <= set(KINDS)


@pytest.mark.parametrize("argv", [
    ["explore", "no-such-scenario"],
    ["explore", "collapse-vs-fault", "--scheme", "nope"],
    ["explore", "collapse-vs-fault", "--random", "0"],
    ["explore", "collapse-vs-fault", "--random", "3", "--pct", "3"],
    ["explore", "collapse-vs-fault", "--preemptions", "-1"],
    ["explore", "collapse-vs-fault", "--bug", "deadbeef"],
    ["replay", "collapse-vs-fault", "--schedule", "7"],
    ["replay", "collapse-vs-fault", "--schedule", "x y"],
    ["explore"],
])
def test_bad_cli_input_exits_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("s2pt") and "Traceback" not in err


def test_cli_explore_json_and_exit_codes(capsys):
    assert main(["explore", "collapse-vs-fault", "--scheme", "none", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["complete"] and out["violations"][0]["kind"] == "use-after-free"
    assert out["states"] == explore("collapse-vs-fault", "none", details=False).states
    assert set(out) >= {"scenario", "scheme", "complete", "states", "seconds", "violations"}
    assert {"kind", "schedule", "diagram"} <= set(out["violations"][0])
    assert main(["explore", "unmap-vs-fault", "--scheme", "rcu"]) == 0
    capsys.readouterr()
    assert main(["replay", "collapse-vs-fault", "--scheme", "none", "--schedule", "1*5 0"]) == 1
    assert "USE-AFTER-FREE" in capsys.readouterr().out
    assert main(["scenarios"]) == 0
    assert "collapse-vs-fault" in capsys.readouterr().out


def _racy_rmw_builder(scheme, bugs):
    """Two CPUs update one leaf's attributes with a plain load and store
    (no cmpxchg): one update can overwrite the other."""
    from s2pt import descriptor as d
    pgt = s2pt.Stage2(ipa_bits=40, machine=SimMachine)
    pgt.map(GiB, PAGE, 0x10_4000_0000, prot="R", force_pte=True)
    s = Setup(pgt, scheme, bugs)
    out = pt.LeafWalkData()
    s2pt.ops.run(pt.kvm_pgtable_get_leaf(pgt, GiB, out), pgt.machine)
    from s2pt.invariants import reachable_tables
    l3 = next(p.pa for p, lvl in reachable_tables(pgt) if lvl == 3)

    def set_bits(bits):
        old = yield READ_ONCE(l3)
        yield WRITE_ONCE(l3, old | bits)

    s.cpu("cpu0", "set W", set_bits, d.KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W)
    s.cpu("cpu1", "clear XN", set_bits, 0)
    s.cpu("cpu2", "set AF", set_bits, d.KVM_PTE_LEAF_ATTR_LO_S2_AF)
    s.region = (GiB, 2 << 20)
    return s


def test_lost_update_is_found_against_serial_orders():
    sc = Scenario("t-racy-rmw", "", _racy_rmw_builder, {"rcu": {"lost-update": SOMETIMES}}, 3)
    r = explore(sc, "rcu")
    assert r.kinds == {"lost-update"}
    assert "serial order" in r.found["lost-update"].violation.explanation


def _serial_outcomes_live(sc, scheme, bugs, final, checks, bound=20_000):
    """The lost-update oracle by brute force: each serial order run on a
    live World, one step at a time (no state space, no runs); an order
    still running after ``bound`` steps spins and contributes nothing."""
    import itertools

    from s2pt.sim.world import World
    out = set()
    w0 = World(sc, scheme, bugs, checks, record=False, max_steps=bound)
    cpus = [i for i, a in enumerate(w0.actors) if not a.daemon]
    for order in itertools.permutations(cpus):
        rank = {c: k for k, c in enumerate(order)}
        w = w0.again(record=False)
        while w.outcome is None:
            w.step(min(w.enabled(), key=lambda c: rank.get(c, len(rank))))
        if w.outcome == "done":
            out.add(final(w))
    return frozenset(out)


@pytest.mark.parametrize("name,scheme,bugs,outcomes", [
    ("map-vs-map-no-shared", "rcu", (), 1),
    ("collapse-vs-fault", "rwlock", (), 0),       # every order spins: the declined collapse refaults
    ("logging-mismatch", "rcu", ("1f0f4a2ef7a5",), 2), ("split-double-put", "rcu", ("c60d847be7b8",), 1),
    pytest.param("collapse-vs-fault-3", "rwlock", (), 0, marks=pytest.mark.slow),
    pytest.param("split-vs-fault", "refcount", (), 2, marks=pytest.mark.slow),
])
def test_the_serial_oracle_agrees_with_serial_orders_run_one_step_at_a_time(name, scheme, bugs,
                                                                           outcomes):
    """serial_outcomes walks each order in runs of steps (and catches a CPU
    that spins where a run ends): the same outcomes as live Worlds stepped
    one by one, as many as each case has."""
    from s2pt.checkers import ipa_map_of, quiescent_table
    from s2pt.schemes import get_scheme
    from s2pt.sim.search import serial_outcomes
    sc, sch = SCENARIOS[name], get_scheme(scheme)
    bugs = frozenset(bugs) | frozenset(sc.bugs)
    got = serial_outcomes(sc, sch, bugs, ipa_map_of, (quiescent_table,))
    assert got == _serial_outcomes_live(sc, sch, bugs, ipa_map_of, (quiescent_table,))
    assert len(got) == outcomes


def test_a_level3_page_at_a_table_address_ends_the_hardware_walk():
    """The MMU's walk is in flight until it reads a leaf: a level-3 page
    descriptor ends it even when its output address is a table page's (a
    TLBI + DSB elsewhere must not wait for it forever)."""
    from s2pt.tlb import VcpuTlb, hw_translate
    pgt = s2pt.Stage2(ipa_bits=40, machine=SimMachine)
    ipa = 0x4000_0000
    pgt.map(ipa, 4096, pgt.pgd, prot="RW", force_pte=True)   # a page whose PA is the PGD's
    m = pgt.machine
    tlb = VcpuTlb(pgt, 0)
    m.cpu = 0
    m.perform(("hw_walk_start", ipa))
    gen = hw_translate(tlb, ipa)
    op = gen.send(None)
    levels = []
    try:
        while True:
            levels.append(op[2])
            result = m.perform(op)
            assert m.hw_inflight == (frozenset() if op[2] == 3 else {0})
            op = gen.send(result)
    except StopIteration as stop:
        assert stop.value.pa == pgt.pgd
    assert levels == [1, 2, 3] and m.hw_inflight == frozenset()


@pytest.mark.parametrize("name,scheme", STACK_CASES, ids=[f"{n}/{s}" for n, s in STACK_CASES])
def test_incremental_stacks_equal_a_fresh_walk_of_the_chain(name, scheme):
    """World.step keeps each CPU's kernel stack incrementally (StackCache);
    at every step it must equal stack_names(), which walks the whole
    ``yield from`` chain afresh.  The stacks are those of a scenario's
    programs and a scheme's teardown: every scenario once and every scheme
    once (tests/scenario_cases.py), each run to its end or for its first
    LIMIT steps (a livelock repeats one loop of stacks up to the run's
    bound of 20,000)."""
    from s2pt.sim.world import stack_names
    LIMIT = 5000                              # the longest run that ends: split-vs-fault, 4,121
    w = s2pt.world(name, scheme)
    k = 0
    while w.outcome is None and w.enabled() and k < LIMIT:
        en = w.enabled()
        cpu = en[k % len(en)]                 # rotate, so stacks grow and shrink on every CPU
        k += 1
        want = stack_names(w.cpus[cpu])
        ev = w.step(cpu)
        assert ev.stack == want, (name, scheme, ev.index)
    assert k > 0


# ---------------------------------------------------------------------------
# write-lock, rwlock, hyp-lock on a guest; the historical bugs of issue 10
# ---------------------------------------------------------------------------

def _run_until(w, cpu, opname):
    """Step ``cpu`` until its next operation is ``opname``; perform that too."""
    for _ in range(200):
        op = w.pending[cpu]
        w.step(cpu)
        if op[0] == opname:
            return op
    raise AssertionError(f"{w.name(cpu)} never reached {opname}")


def test_write_lock_serialises_maps_and_lets_only_the_relax_read():
    """Before 6.2 (write-lock): the collapsing fault takes mmu_lock for
    write, and while it holds it the relax_perms fault (a write permission
    fault on a logging memslot at PAGE_SIZE: use_read_lock) waits for the
    read side; the collapse's walk is exclusive, so it stores with plain
    WRITE_ONCE, never cmpxchg."""
    w = s2pt.world("collapse-vs-fault", "write-lock")
    assert _run_until(w, 0, "write_lock") == ("write_lock", "kvm->mmu_lock")
    assert w.pending[1][0] != "read_lock"
    _run_until_pending(w, 1, "read_lock")
    assert "held for write" in w.blocked(1)
    w.run()
    assert w.outcome == "done" and not w.violations
    ops0 = [e.op[0] for e in w.events if e.cpu == 0]
    assert "cmpxchg" not in ops0 and "WRITE_ONCE" in ops0
    assert "rcu_read_lock" not in {e.op[0] for e in w.events}
    ops1 = [e.op for e in w.events if e.cpu == 1]
    assert ("read_lock", "kvm->mmu_lock") in ops1
    # A second map fault also waits: the 3-vCPU scenario's mkyoung
    # (handle_access_fault took write_lock before 6.2) cannot run beside it.
    w = s2pt.world("collapse-vs-fault-3", "write-lock")
    _run_until(w, 0, "write_lock")
    _run_until_pending(w, 2, "write_lock")
    assert w.blocked(2) == "waits for kvm->mmu_lock, held by CPU 0"


def _run_until_pending(w, cpu, opname):
    for _ in range(200):
        if w.pending[cpu][0] == opname:
            return
        w.step(cpu)
    raise AssertionError(f"{w.name(cpu)} never reached {opname}")


def test_rwlock_faults_never_unlink_and_the_mutation_does():
    """rwlock: vCPU0's 2M fault meets the level-3 table dirty logging left
    and declines to collapse it (no TABLE_PRE break of the table entry, no
    free): it maps nothing, returns -EAGAIN and the guest faults again, for
    ever in this scenario (the livelock the explorer reports, and nothing
    else); with the NO_COLLAPSE flag taken away it collapses under the read
    lock and frees the table at once: the use-after-free of 'none'."""
    r = explore("collapse-vs-fault", "rwlock")
    assert r.complete and set(r.found) == {"livelock"} and not r.race_arose
    w = replay("collapse-vs-fault", "rwlock", "", max_steps=500)
    l2 = next(pfn << w.pgt.page_shift for pfn, lvl in w.view.levels.items() if lvl == 2)
    writes = [e for e in w.events if e.op[0] in ("cmpxchg", "WRITE_ONCE", "smp_store_release")]
    assert writes and all(not (l2 <= e.op[1] < l2 + PAGE) for e in writes)
    assert not any(e.op[0] in ("free_page", "call_rcu") for e in w.events)
    bad = explore("collapse-vs-fault", "rwlock", bugs=["collapse-under-read-lock"])
    assert "use-after-free" in bad.kinds
    assert bad.found["use-after-free"].violation.actor == "vCPU1"


@pytest.mark.slow                 # logging-mismatch is EXPENSIVE, as its mutation test
def test_logging_mismatch_pa_counter_maps_the_table_a_block_off():
    """1f0f4a2ef7a5 reverted: vCPU0 installs its block (its PA advances by
    2M), vCPU1 replaces the block with a table, vCPU0 reloads, descends and
    maps the table's pages 2M past where they belong.  Behind the write
    lock the same revert is harmless ("This arrangement worked fine when we
    handled faults behind the write lock")."""
    r = explore("logging-mismatch", "rcu", bugs=["1f0f4a2ef7a5"])
    f = r.found["lost-update"]
    w = replay("logging-mismatch", "rcu", f.schedule, bugs=["1f0f4a2ef7a5"])
    slot = w.setup.subject.memslots[0]
    assert w.pgt.translate(IPA_).pa == slot.pa + (2 << 20)      # one block off
    ok = replay("logging-mismatch", "rcu", f.schedule)
    assert ok.outcome == "done" and not ok.violations
    assert ok.pgt.translate(IPA_).pa == slot.pa
    assert not explore("logging-mismatch", "write-lock", bugs=["1f0f4a2ef7a5"]).found


IPA_ = 1 << 30


@pytest.mark.slow                 # split-double-put is EXPENSIVE: a 512-entry table step by step
def test_split_double_put_frees_the_unused_subtree_root_twice():
    """c60d847be7b8 reverted: the split that loses its break (vCPU1's
    mkyoung changed the block first) frees its new table with
    kvm_pgtable_stage2_free_unlinked(), which drops the root's last
    reference since f6a27d6dc51b, and then puts it once more."""
    r = explore("split-double-put", "rcu", bugs=["c60d847be7b8"])
    f = r.found["double-free"]
    v = f.violation
    assert v.actor == "split" and v.function == "stage2_split_walker"
    w = replay("split-double-put", "rcu", f.schedule, bugs=["c60d847be7b8"])
    lost = [e for e in w.events if e.cpu == 0 and e.op[0] == "cmpxchg"]
    assert lost and lost[-1].result != lost[-1].op[2]        # the break was lost
    # With the fix, the same schedule runs clean.
    ok = replay("split-double-put", "rcu", f.schedule[:-1])
    assert not ok.violations


def test_forgetting_rcu_read_lock_lets_the_callback_free_under_a_walker():
    w = replay("collapse-vs-fault", "rcu", "", bugs=["no-rcu-read-lock"])
    assert not any(e.op[0] == "rcu_read_lock" for e in w.events)
    r = explore("collapse-vs-fault", "rcu", bugs=["no-rcu-read-lock"])
    v = r.found["use-after-free"].violation
    assert v.actor == "vCPU1" and "rcu" in v.explanation


def test_progress_goes_to_the_stream_given(capsys, monkeypatch):
    """progress=True writes the progress line on stderr; progress=sys.stdout
    (a notebook, where stderr looks like an error) writes it there.  Neither
    changes the result."""
    import io
    import itertools
    from s2pt.sim import search as S
    ticks = itertools.count()
    monkeypatch.setattr(S.time, "perf_counter", lambda: float(next(ticks)))  # a second a call
    buf = io.StringIO()
    quiet = s2pt.explore("collapse-vs-fault", "rcu")
    shown = s2pt.explore("collapse-vs-fault", "rcu", progress=buf)
    assert (shown.states, shown.kinds) == (quiet.states, quiet.kinds)
    text = buf.getvalue()
    assert "collapse-vs-fault/rcu:" in text and "states" in text
    s2pt.explore("collapse-vs-fault", "rcu", progress=True)
    err = capsys.readouterr().err
    assert "collapse-vs-fault/rcu:" in err


def test_progress_line_is_cleared_whole():
    """Each progress line overwrites the last one in full, and the final
    clear covers the longest: no debris such as "found: nothingates/s"."""
    import io
    from s2pt.sim.search import _Progress
    buf = io.StringIO()
    p = _Progress(buf, "x" * 60)
    p.last = p.t0 - 1                       # due at once
    p(123_456_789, 1000, 99_999_999)
    long = buf.getvalue().split("\r")[-1]
    p.last = p.t0 - 1
    p(1, 0, 0)                              # a shorter line: padded to the longest
    short = buf.getvalue().split("\r")[-1]
    assert len(long) > 80 and len(short) == len(long) and short.rstrip().endswith("states/s")
    p.done()
    assert buf.getvalue().endswith("\r" + " " * len(long) + "\r")


def _screen(text: str) -> str:
    """What a terminal (or a notebook's stream output) shows after ``text``:
    each "\\r" returns to the start of the line, later characters overwrite."""
    line: list = []
    col = 0
    for ch in text:
        if ch == "\r":
            col = 0
        else:
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
    return "".join(line)


def test_no_progress_debris_after_a_search():
    import io
    from s2pt.sim import search as S
    buf = io.StringIO()
    p = S._Progress(buf, "collapse-vs-fault-3/refcount-revalidate")
    for states in (10_000_000, 5):
        p.last = p.t0 - 1
        p(states, 10, 12_345_678)
    p.done()
    buf.write("found: nothing")
    assert _screen(buf.getvalue()).rstrip() == "found: nothing"


def test_a_search_gives_the_cycle_collector_back_as_it_found_it():
    """A search pauses Python's cycle collector (s2pt.sim.search's
    collector_paused) and must hand it back: on if it was on, off if the
    caller had turned it off, and on again after a search that stops with
    an error half-way."""
    import gc
    assert gc.isenabled()
    s2pt.explore("collapse-vs-fault", "rcu", details=False)
    assert gc.isenabled()
    gc.disable()
    try:
        s2pt.explore("collapse-vs-fault", "rcu", details=False)
        assert not gc.isenabled()
    finally:
        gc.enable()

    def stop():
        raise RuntimeError("cancel() failed")
    with pytest.raises(RuntimeError, match="cancel"):
        s2pt.explore("collapse-vs-fault-3", "none", details=False, cancel=stop)
    assert gc.isenabled()
    # What the search built is freed by reference counting when it ends:
    # the collector finds next to nothing of it afterwards.
    gc.collect()
    s2pt.explore("collapse-vs-fault-3", "none", details=False)
    assert gc.collect() < 1000
