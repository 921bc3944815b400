# Notebook 05: the race stepped by hand, the explorer's verdicts, the race diagram the
# prose reads, the litmus tests, the MMU, and the sampled searches.
import re as _re
from collections import Counter as _Counter
from s2pt.scenarios import NEVER, SOMETIMES
# Stepping by hand: vCPU1 inside the table, vCPU0 frees it, vCPU1 reads poison
assert w.outcome == "violation"
v = w.violations[0]
assert v.kind == "use-after-free" and v.actor == "vCPU1" and v.function == "__kvm_pgtable_visit"
assert "vCPU0 freed" in v.explanation
# The diagram of that run, as the prose reads it
_l2 = [e.index for e in w.events if e.cpu == 1 and op_text(w, e.op).startswith("READ_ONCE(L2[0])")]
_cx = [e.index for e in w.events if e.cpu == 0 and e.op[0] == "cmpxchg"]
says(f"vCPU1 is inside the table after step {_l2[0]}. vCPU0's `cmpxchg` at step {_cx[0]}")
_fold = _re.search(r"\) x(\d{3,})\n", w.diagram())
says(f"(`x{_fold.group(1)}`: the free walk reads every one of the 512 entries, twice)")
assert int(_fold.group(1)) == 2 * 512 - 5
# Quiz 1: the step at which vCPU1 read the pointer that became dangling
_read = [e.index for e in by_hand.events if e.cpu == 1 and op_text(by_hand, e.op).startswith("READ_ONCE(L2[0])")]
says(f"(vCPU1 read it from the level-2 entry at step {_read[0]})")
# The same schedule under RCU: clean, the table freed by the callback after the readers
assert rw.outcome == "done" and not rw.violations
assert rw.pgt.mem.page_of(l3).freed and not rw.machine.callbacks
# Exhaustive search: the bug under none, nothing under rcu, both complete
assert r.complete and r.kinds == {"use-after-free"}
assert 20_000 < r.states < 30_000
says("Over twenty thousand states, every one of them visited")
assert r_rcu.complete and not r_rcu.kinds
assert r.check_declared() == [] and r_rcu.check_declared() == []
# The shortest schedule replays to the same violation
again = s2pt.replay("collapse-vs-fault", "none", f.schedule_text)
assert [x.kind for x in again.violations] == ["use-after-free"]
assert "^^^ USE-AFTER-FREE ^^^" in f.diagram
# What section 4 quotes from the shortest schedule's diagram
_runs = _re.findall(r"^\s*(\d+)-(\d+)\s", f.diagram, _re.M)
_long = [f"{a}-{b}" for a, b in _runs if int(b) - int(a) > 100]
assert len(_long) == 1, _runs
says(f"`{_long[0]}` is a folded run")
for _shown in ("`table 0x80002000`", "`LOCKED`", "`page 0x4000000000 RX`"):
    says(_shown)
    assert _shown.strip("`") in f.diagram, _shown
# The shortest schedule: vCPU0 first, both CPUs at the same state after ten steps
_toks = f.schedule_text.split()
assert _toks[0].startswith("0*") and _toks[1].startswith("1*")
# stash-old-pte: a9f0e3d5a089's bug is a use-after-free with an immediate free
assert st.kinds == {"use-after-free"}
assert SCENARIOS["unmap-vs-fault"].expected("none", "use-after-free") == NEVER
assert SCENARIOS["collapse-vs-fault"].expected("none", "use-after-free") == SOMETIMES
# The MMU: safe with the TLBI in both schemes, a use-after-free without it in both
assert not hw["collapse-vs-hw-walk", "none"].kinds and not hw["collapse-vs-hw-walk", "rcu"].kinds
assert hw["collapse-vs-hw-walk-no-tlbi", "rcu"].kinds == {"use-after-free"}
# Sampling: uniform random misses the ~1,000-step window, PCT of depth 2 hits it
assert not sampled["random"].found and "use-after-free" in sampled["pct"].found
assert int(_toks[0][2:]) + int(_toks[1][2:]) == 10
says("Both orders reach the same state after ten steps")
# Section 5: vCPU1's steps among vCPU0's in the default run under none
_default = s2pt.replay("collapse-vs-fault", "none", "")
_steps = _Counter(_default.actors[e.cpu].name for e in _default.events)
says(f"vCPU1's {['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine', 'ten'][_steps['vCPU1']]} steps "
     f"can be placed anywhere among the ~{round(_steps['vCPU0'], -1):,} steps of vCPU0")
# "Same verdict, about fifty times fewer steps"
assert bounded["exhaustive"].kinds == bounded["unreduced"].kinds
_ratio = bounded["unreduced"].transitions / bounded["exhaustive"].transitions
assert 45 <= _ratio < 55, _ratio
says("Same verdict, about fifty times fewer steps")
