"""s2pt.compare (s2pt.comparison): the verdict table, the costs, the mutation score, the CLI.

Each expectation is computed independently of s2pt.compare: by the
explorer itself, by replaying a schedule and counting its events by hand,
or by stepping a live World and asking it who is blocked.
"""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

import s2pt
from s2pt import comparison as C
from s2pt import descriptor as d
from s2pt import scenarios as _scenarios
from s2pt.cli import main
from s2pt.errors import S2ptError
from s2pt.scenarios import SCENARIOS, SOMETIMES

SMALL_SCENARIOS = ["collapse-vs-fault", "unmap-vs-fault", "map-vs-map-no-shared",
                   "donate-vs-host-access", "donate-vs-host-access-no-tlbi"]
SMALL_SCHEMES = ["none", "rcu", "hyp-lock"]


@pytest.fixture(scope="module")
def cmp():
    return C.compare(SMALL_SCHEMES, SMALL_SCENARIOS, vcpus=2, runs=4, mutations=True)


# ---------------------------------------------------------------------------
# The verdict table
# ---------------------------------------------------------------------------

def test_collapse_vs_fault_under_none_is_a_use_after_free_that_replays(cmp):
    cell = cmp.cell("none", "collapse-vs-fault")
    assert cell.status == "violation" and cell.mode == "exhaustive" and cell.complete
    assert "use-after-free" in cell.kinds
    w = s2pt.replay("collapse-vs-fault", "none", cell.schedule("use-after-free"))
    assert "use-after-free" in {v.kind for v in w.violations}
    # The diagram is the replayed run's, and the cell's World is that run.
    assert "USE-AFTER-FREE" in cell.diagram()
    assert cell.world().outcome == "violation"
    assert cell.replay_command() == (f"python -m s2pt replay collapse-vs-fault --scheme none "
                                     f"--schedule '{cell.schedule()}'")


def test_collapse_vs_fault_under_rcu_is_safe_and_exhaustive(cmp):
    cell = cmp.cell("rcu", "collapse-vs-fault")
    r = s2pt.explore("collapse-vs-fault", "rcu", details=False)
    assert r.complete and not r.found
    assert cell.status == "safe" and cell.complete and cell.states == r.states
    assert cell.text() == (f"safe (exhaustive, {r.states:,} states; the race arose: "
                           f"{r.window['what']})")
    assert cell.short() == "safe"
    with pytest.raises(S2ptError, match="no violation"):
        cell.diagram()


def test_every_cell_agrees_with_the_explorer_and_the_declarations(cmp):
    for (scheme, name), cell in cmp.cells.items():
        sc = SCENARIOS[name]
        if scheme not in sc.expect:
            assert cell.status == "not-declared"
            continue
        r = s2pt.explore(name, scheme, details=False)
        assert set(cell.found) == r.kinds, (scheme, name)
        declared = {k for k in s2pt.sim.violation.KINDS if sc.expected(scheme, k) == SOMETIMES}
        assert set(cell.expected) == declared
        assert cell.mismatches == [] and r.kinds == declared
    assert cmp.mismatches == [] and cmp.ok
    assert "Declarations: all" in cmp.verdict_table()


def test_undeclared_cells_say_why_the_explorer_refuses_them(cmp):
    cell = cmp.cell("none", "donate-vs-host-access")
    assert cell.status == "not-declared" and cell.why
    with pytest.raises(S2ptError) as e:
        s2pt.explore("donate-vs-host-access", "none")
    assert cell.why in str(e.value)
    assert cell.text() == f"not declared: {cell.why}" and cell.short() == "-"
    assert cmp.cell("rcu", "donate-vs-host-access").why in cmp.verdict_table()


def test_a_wrong_declaration_is_reported_loudly(monkeypatch, capsys):
    base = SCENARIOS["collapse-vs-fault"]
    wrong = dataclasses.replace(base, name="collapse-vs-fault-wrong",
                                expect={"none": {}, "rcu": {"use-after-free": SOMETIMES}})
    monkeypatch.setitem(SCENARIOS, wrong.name, wrong)
    c = C.compare(["none", "rcu"], [wrong.name], costs=False)
    assert {(s, sc) for s, sc, _ in c.mismatches} == {("none", wrong.name), ("rcu", wrong.name)}
    assert not c.ok
    assert "DECLARATION MISMATCH" in c.verdict_table()
    assert c.cell("none", wrong.name).short().endswith("!")
    assert main(["compare", "--scenario", wrong.name, "--scheme", "none,rcu", "--no-costs"]) == 1
    assert "DECLARATION MISMATCH" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# Costs, against hand counts
# ---------------------------------------------------------------------------

def _faults_by_hand(w):
    """The CPUs whose program is a fault handler, each handling one fault."""
    return sum(1 for a in w.actors if not a.daemon)


def test_counts_agree_with_a_replayed_world_counted_by_hand():
    for scheme, schedule in (("rcu", ""), ("rcu", "0*5 1*5"), ("none", "1*3 0*4")):
        w = s2pt.replay("collapse-vs-fault", scheme, schedule)
        w2, rc = C.run_costs("collapse-vs-fault", scheme, schedule)
        assert [e.op[0] for e in w2.events] == [e.op[0] for e in w.events]
        cmpxchg = sum(1 for e in w.events if e.op[0] == "cmpxchg")
        refs = sum(1 for e in w.events if e.op[0] in ("get_page", "put_page"))
        tlbis = sum(1 for e in w.events if e.op[0] == "tlbi")
        assert rc.ops.get("cmpxchg", 0) == cmpxchg and rc.atomics == cmpxchg
        assert rc.refcount_ops == refs and rc.tlbi == tlbis
        assert rc.faults == _faults_by_hand(w) == 2
        m = rc.metrics()
        assert m["atomics_per_fault"] == pytest.approx((cmpxchg + refs) / 2)
        assert m["steps"] == len(w.events)


def test_grace_period_is_the_steps_from_the_break_to_the_free():
    """Under rcu the level-3 table is unlinked when vCPU0's cmpxchg breaks
    the table entry (table -> LOCKED) and freed by the RCU callback: the
    World's own free log says when."""
    w, rc = C.run_costs("collapse-vs-fault", "rcu")
    brk = next(e for e in w.events if e.op[0] == "cmpxchg" and e.op[3] == d.KVM_INVALID_PTE_LOCKED
               and e.op[2] & 3 == 3 and e.result == e.op[2])
    table = (brk.op[2] & w.pgt.addr_mask) >> w.pgt.page_shift
    freed_at = w.frees[table][0]
    assert rc.grace == [freed_at - brk.index]
    assert rc.retained_peak == 1 and rc.unfreed == 0
    # Retained for every step from the break up to (not including) the free.
    assert rc.retained_mean == pytest.approx((freed_at - brk.index) / len(w.events))
    assert "rcu_do_batch" in w.frees[table][2] or w.actors[w.frees[table][1]].daemon


def test_blocked_steps_agree_with_the_live_world():
    """unmap-vs-fault: the notifier takes mmu_lock for write, vCPU1 waits for
    it for read.  Count, stepping a live World, the steps during which
    vCPU1 is blocked on its read_lock."""
    for seed in range(4):
        rng = random.Random(seed)
        w = s2pt.world("unmap-vs-fault", "rcu")
        sched, blocked = [], 0
        while w.outcome is None:
            en = w.enabled()
            c = rng.choice(en)
            for i in range(w.n):
                if i != c and not w.actors[i].daemon and w.cpus[i] is not None \
                        and w.blocked(i) and w.pending[i][0].endswith("lock"):
                    blocked += 1
            sched.append(c)
            w.step(c)
        _, rc = C.run_costs("unmap-vs-fault", "rcu", sched)
        assert rc.blocked_on_locks == blocked
        assert rc.refaults == 1            # the notifier unmapped the one mapped page


def test_each_eagain_is_one_more_fault_in_map_vs_map():
    """Two vCPUs install the same level-3 table.  A walk that loses the
    cmpxchg, or meets the entry LOCKED by the other's break, returns
    -EAGAIN; user_mem_abort() returns 0 and the vCPU faults again
    (kvm_handle_guest_abort's loop): every -EAGAIN is one more fault than
    the two the vCPUs need."""
    retried = lost_total = 0
    for seed in range(40):
        rng = random.Random(seed)
        w, rc = C.run_costs("map-vs-map", "rcu", choose=lambda en, *a: rng.choice(en))
        assert w.outcome == "done"
        handlers = sum(1 for k, e in enumerate(w.events) if "user_mem_abort" in e.stack and
                       not any(p.cpu == e.cpu and "user_mem_abort" in p.stack
                               for p in _previous_of_cpu(w.events, k)))
        lost = sum(1 for e in w.events if e.op[0] == "cmpxchg" and e.result != e.op[2])
        assert rc.faults == handlers
        assert rc.eagain == handlers - 2 >= lost == rc.cmpxchg_failed
        retried += rc.eagain
        lost_total += lost
    assert retried and lost_total, "no seed made a vCPU retry, or lose the cmpxchg"


def _previous_of_cpu(events, k):
    """The event of the same CPU just before events[k] (as a list, maybe empty)."""
    cpu = events[k].cpu
    for e in reversed(events[:k]):
        if e.cpu == cpu:
            return [e]
    return []


def test_cost_cells(cmp):
    cell = cmp.cost("rcu", 2)
    assert cell.safe and not cell.sampled and cell.mode.startswith("exhaustive")
    assert len(cell.runs) == 4 and cell.clean_runs == 4
    assert cell.summary["retained_peak"]["max"] == 1
    assert cell.grace_periods and "call_rcu" in cell.primitives
    assert not cmp.cost("none", 2).grace_periods
    assert "use-after-free" in cmp.cost("none", 2).found
    # hyp-lock on a guest ("what if KVM used pKVM's lock"): safe, every fault
    # exclusive under one spinlock, no grace period.
    hl = cmp.cost("hyp-lock", 2)
    assert hl.supported and hl.safe and not hl.grace_periods
    assert "spin_lock" in hl.primitives and "read_lock" not in hl.primitives
    assert C.scaled_scenario(3) is SCENARIOS["collapse-vs-fault-3"]
    assert C.scaled_scenario(2) is SCENARIOS["collapse-vs-fault"]
    four = C.scaled_scenario(4)
    assert four.params["vcpus"] == 4 and four.cpus == 4 and four.name not in SCENARIOS


def test_logging_off_refaults(monkeypatch):
    assert C.logging_off_refaults("rcu") == 0       # the read-only pages stay mapped
    # rwlock unmaps the slot when logging goes off: one 2M refault per block.
    assert C.logging_off_refaults("rwlock", blocks=2) == 2
    assert C.logging_off_refaults("rwlock", blocks=3) == 3
    assert C.logging_off_refaults("write-lock") == 0
    from s2pt.kvm import VM

    def unmap_everything(vm, slot):                 # what an unmap-everything scheme does
        slot.logging = False
        vm.pgt.unmap(slot.gpa, slot.size)
    monkeypatch.setattr(VM, "disable_dirty_logging", unmap_everything)
    assert C.logging_off_refaults("rcu", blocks=2) == 2       # one 2M block fault each
    assert C.logging_off_refaults("rcu", blocks=3) == 3


def test_which_to_choose(cmp):
    rows = {need: schemes for need, schemes, _rule in cmp.choose()}
    assert list(rows) == list(C.NEEDS)
    assert "none" not in {s for v in rows.values() for s in v}      # unsafe
    # rcu queues its tables with call_rcu: it cannot run at EL2; hyp-lock can.
    w = s2pt.replay("collapse-vs-fault", "rcu", "")
    assert any(e.op[0] == "call_rcu" for e in w.events)
    assert "rcu" not in rows["pKVM at EL2 / no RCU"]
    assert "hyp-lock" in rows["pKVM at EL2 / no RCU"]
    for need, rule in C.NEEDS.items():
        assert rule in cmp.choose_table()


def test_plot(cmp, tmp_path):
    fig = cmp.plot()
    assert len([a for a in fig.axes if a.get_visible()]) == len(C.SHOWN)
    with pytest.raises(S2ptError, match="nope"):
        cmp.plot(metrics=["nope"])
    # Two panels per row: the notebook's column (notebook 08)
    four = ["retained_peak", "blocked_per_fault", "atomics_per_fault", "eagain"]
    fig = cmp.plot(metrics=four, ncols=2)
    boxes = {(round(a.get_position().x0, 2), round(a.get_position().y0, 2)) for a in fig.axes}
    assert len({x for x, _ in boxes}) == 2 and len({y for _, y in boxes}) == 2
    assert fig.get_size_inches()[0] < 8
    for bad in (0, -1, 1.5, True):
        with pytest.raises(S2ptError, match="ncols"):
            cmp.plot(ncols=bad)


def test_verdict_markdown(cmp):
    md = cmp.verdict_markdown().splitlines()
    header, rows = md[0], md[2:2 + len(cmp.scenarios)]
    assert header.count("|") == len(cmp.schemes) + 2
    for sc, row in zip(cmp.scenarios, rows):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == f"`{sc}`"
        assert cells[1:] == [cmp.cell(s, sc).short() for s in cmp.schemes]
    assert "UAF: use-after-free" in md[-1]


# ---------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------

def test_every_mutation_is_caught(cmp):
    ms = [m for m in C.mutations().values() if m.scheme in SMALL_SCHEMES
          and m.scenario in SMALL_SCENARIOS]
    assert ms
    by = {m.name: m for m in cmp.mutations}
    for m in ms:
        r = by[m.name]
        assert r.status == "caught", r
        assert m.kind in s2pt.explore(m.scenario, m.scheme, bugs=m.bugs, details=False).kinds
    caught, total = cmp.mutation_score
    assert caught == total == len(cmp.mutations)
    assert f"MUTATIONS: {caught}/{total} caught" in cmp.mutation_table()


def test_a_mutation_that_is_not_caught_is_reported(monkeypatch, capsys):
    fake = _scenarios.Mutation("rcu-is-fine", "rcu", frozenset(), "collapse-vs-fault",
                             "use-after-free", "a mutation that changes nothing")
    monkeypatch.setattr(_scenarios, "MUTATIONS", {fake.name: fake}, raising=False)
    c = C.compare(["rcu"], ["collapse-vs-fault"], costs=False, mutations=True)
    assert [m.status for m in c.mutations] == ["missed"] and not c.ok
    assert main(["compare", "--scheme", "rcu", "--scenario", "collapse-vs-fault",
                 "--no-costs", "--mutations"]) == 1
    assert "MUTATIONS: 0/1 caught" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# JSON, the command line, bad input
# ---------------------------------------------------------------------------

def test_json_round_trips(cmp):
    doc = json.loads(json.dumps(cmp.to_json()))
    back = C.Comparison.from_json(json.dumps(doc))
    assert back.to_json() == doc
    assert back.text() == cmp.text()
    assert back.cell("none", "collapse-vs-fault").diagram() == \
        cmp.cell("none", "collapse-vs-fault").diagram()


def test_cli_json_and_exit_codes(capsys, tmp_path):
    out = tmp_path / "costs.png"
    assert main(["compare", "--scheme", "none,rcu", "--scenario", "unmap-vs-fault",
                 "--vcpus", "2", "--runs", "2", "--json", "--plot", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and {c["scheme"] for c in doc["cells"]} == {"none", "rcu"}
    assert {(c["scheme"], c["vcpus"]) for c in doc["costs"]} == {
        ("none", 1), ("none", 2), ("rcu", 1), ("rcu", 2)}
    assert out.stat().st_size > 1000
    assert main(["compare", "--scheme", "rcu", "--scenario", "unmap-vs-fault",
                 "--no-costs"]) == 0
    # the write lock keeps the unmap and the fault apart: the race never arises
    assert "rcu x unmap-vs-fault: safe: the race never arises" in capsys.readouterr().out


@pytest.mark.parametrize("argv,needle", [
    (["--scheme", "bogus"], "'bogus'"),
    (["--scenario", "nowhere"], "'nowhere'"),
    (["--vcpus", "5"], "--vcpus 5"),
    (["--vcpus", "0"], "'0'"),
    (["--runs", "x"], "'x'"),
    (["--plot", "out.txt"], "out.txt"),
    (["--plot", "a.png", "--no-costs"], "--no-costs"),
])
def test_cli_bad_input(argv, needle, capsys):
    assert main(["compare"] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("s2pt compare: ") and needle in err and "Traceback" not in err


@pytest.mark.parametrize("kw,needle", [
    ({"schemes": ["bogus"]}, "'bogus'"),
    ({"scenarios": "nowhere"}, "'nowhere'"),
    ({"schemes": []}, "empty"),
    ({"vcpus": 0}, "vcpus=0"),
    ({"vcpus": 5}, "vcpus=5"),
    ({"runs": 0}, "runs=0"),
    ({"seed": -1}, "seed=-1"),
    ({"max_states": "many"}, "'many'"),
])
def test_api_bad_input(kw, needle):
    with pytest.raises(S2ptError) as e:
        C.compare(**kw)
    assert needle in str(e.value)


def test_bad_lookups(cmp):
    with pytest.raises(S2ptError, match="'nope'"):
        cmp.cell("nope", "collapse-vs-fault")
    with pytest.raises(S2ptError, match="use-after-free"):
        cmp.cell("none", "collapse-vs-fault").diagram("leak")
    with pytest.raises(S2ptError, match="vcpus=9"):
        C.scaled_scenario(9)
    with pytest.raises(S2ptError, match="schedule step 0"):
        C.run_costs("collapse-vs-fault", "rcu", "7")


def test_sampled_cost_cells_say_so(monkeypatch):
    """Above EXHAUSTIVE_VCPUS a cost cell's verdict is sampled (seeded PCT,
    and the smaller cell's counterexamples replayed), and says so; none's
    use-after-free is found, with a schedule that replays to it."""
    monkeypatch.setattr(C, "EXHAUSTIVE_VCPUS", 2)
    c = C.compare(["none", "rcu"], ["unmap-vs-fault"], vcpus=3, runs=2, sample_runs=100, seed=1)
    for s in ("none", "rcu"):
        assert not c.cost(s, 2).sampled
        cell = c.cost(s, 3)
        assert cell.sampled and cell.mode.startswith("sampled: 100 PCT") and "seed 1" in cell.mode
    sched = c.cost("none", 3).found["use-after-free"]
    w = s2pt.replay("collapse-vs-fault-3", "none", sched)
    assert "use-after-free" in {v.kind for v in w.violations}
    assert c.cost("rcu", 3).safe
    assert "Sampled verdicts (exhaustive search too large):\n  none at 3 vCPUs: sampled: " \
        in c.costs_table()


def test_a_counterexample_in_the_default_order_replays_from_its_command(capsys):
    """stash-old-pte needs no preemption: its schedule is empty, and the
    replay command leaves --schedule out."""
    cell = C.compare(["none"], ["stash-old-pte"], costs=False).cell("none", "stash-old-pte")
    assert cell.schedule("use-after-free") == ""
    cmd = cell.replay_command("use-after-free")
    assert "--schedule" not in cmd
    assert main(cmd.split()[3:]) == 1                 # python -m s2pt <replay ...>
    assert "USE-AFTER-FREE" in capsys.readouterr().out
