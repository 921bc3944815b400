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
_fold = _re.search(r"\) x(\d{3,})\n", w.step_diagram())
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
assert 350 <= r.states < 450, r.states
says("About four hundred states kept")
# Partial-order reduction: the unreduced search of the same scenario keeps more states
_nopor = s2pt.explore("collapse-vs-fault", "none", por=False, details=False)
assert _nopor.kinds == r.kinds and round(_nopor.states / 1000) == 25, (_nopor.states, r.states)
says("Without the reduction the search keeps about 25 thousand states.")
# The free walk is taken as one transition: about a thousand steps in a run
assert r.settings["por_private_steps"] > 1000
# The race window: reached under rcu, first by the prose's schedule
assert r_rcu.verdict == "safe" and r_rcu.window["reached"]
_first = r_rcu.window["stages"][-1]["schedule"]
says(f"the first schedule that did: `{_first}` is your schedule of section 2 with the two vCPUs' first five steps swapped")
assert _first == "0*5 1*5 0"
assert [s["what"] for s in r_rcu.window["stages"]] == [
    "a table is unlinked", "a table is unlinked while another CPU holds a pointer into it"]
says('here "a table is unlinked", then "a table is unlinked while another CPU holds a pointer into it"')
assert r_rcu.complete and not r_rcu.kinds
assert r.check_declared() == [] and r_rcu.check_declared() == []
# The shortest schedule replays to the same violation
again = s2pt.replay("collapse-vs-fault", "none", f.schedule_text)
assert [x.kind for x in again.violations] == ["use-after-free"]
assert "^^^ USE-AFTER-FREE ^^^" in f.diagram
# What section 4 quotes from the shortest schedule's diagram (the causal slice)
_lines = f.diagram.splitlines()
assert max(len(l) for l in _lines) <= 80, max(len(l) for l in _lines)
for _shown in ("READ_ONCE(L2[0]) = L3 table", "cmpxchg(L2[0], L3 table -> LOCKED)", "smp_store_release(L2[0],",
               "put_page(L3 table) /* freed */", "READ_ONCE(L3[1])", "^^^ USE-AFTER-FREE ^^^",
               "kvm_pgtable_stage2_map()", "stage2_map_walk_table_pre()", "stage2_attr_walker()",
               "block 0x4000000000 RWX"):
    assert _shown in f.diagram, _shown
for _shown in ("`kvm_pgtable_stage2_map()`", "`stage2_map_walk_table_pre()`", "`stage2_attr_walker()`",
               "`L3 table`", "`L3[1]`", "`LOCKED`", "`block 0x4000000000 RWX`", "`^^^ USE-AFTER-FREE ^^^`"):
    says(_shown)
assert len(_lines) < 25, len(_lines)              # a slice, not the thousand steps
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

# Section 6: unmap-vs-fault is "safe: the race never arises" under both schemes, with the reason the prose gives
from s2pt.sim.search import NEVER_ARISES as _NA
for _scheme in ("none", "rcu"):
    _u = s2pt.explore("unmap-vs-fault", _scheme, details=False)
    assert _u.complete and not _u.kinds and _u.verdict == _NA, (_scheme, _u.verdict)
    assert [s["reached"] for s in _u.window["stages"]] == [True, False]
assert "no fault walker is ever inside the table then" in _PROSE[[i for i, p in enumerate(_PROSE) if "race never arises**" in p][0]]
assert u.window["reason"] == "no table is ever unlinked while another CPU holds a pointer into it"
# Section 8: the vCPUs that loop on -EAGAIN run kvm_handle_guest_abort, the others one user_mem_abort
from s2pt.sim.world import stack_names as _stack
def _entry(name):
    _w = s2pt.world(name, "rcu")
    for _c in range(2):
        _w.step(_c)
    return [_stack(_w.cpus[_c])[0] for _c in range(2)]
assert _entry("collapse-vs-fault") == ["kvm_handle_guest_abort", "user_mem_abort"]
assert _entry("map-vs-map") == ["kvm_handle_guest_abort", "kvm_handle_guest_abort"]
says("(vCPU0 in `collapse-vs-fault`, both vCPUs in `map-vs-map`)")
