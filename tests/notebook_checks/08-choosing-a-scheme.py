# Notebook 08: the cached comparison against the library as it is today, the live slice,
# the counterexample, the costs and the EL2 row.
# The cached comparison covers what the library has today ...
assert cmp.schemes == list(SCHEMES) and cmp.scenarios == list(SCENARIOS)
assert sorted(m.name for m in cmp.mutations) == sorted(MUTATIONS)
# ... and agrees with every scenario's declarations now: each complete
# search found exactly the kinds declared Sometimes.
for (scheme, scenario), c in cmp.cells.items():
    sc = SCENARIOS[scenario]
    if scheme not in sc.expect:
        assert c.status == "not-declared", (scheme, scenario)
        continue
    declared = {k for k, v in sc.expect[scheme].items() if v == "Sometimes"}
    assert c.complete and set(c.found) == declared, (scheme, scenario, c.found, declared)
assert not cmp.mismatches and cmp.mutation_score[0] == cmp.mutation_score[1]
# The live slice gives the same answers
for (scheme, scenario), c in live.cells.items():
    assert (c.states, sorted(c.found)) == (cmp.cell(scheme, scenario).states,
                                           sorted(cmp.cell(scheme, scenario).found))
# The counterexample replays to its violation
assert "lost-update" in {v.kind for v in aba_world.violations}
# Costs: the exclusive locks block, the parallel schemes do not; rcu-rfc's atomics
top = max(cmp.vcpus)
assert cmp.cost("write-lock", top).mean("blocked_per_fault") > cmp.cost("rcu", top).mean("blocked_per_fault")
assert cmp.cost("rcu-rfc", 2).mean("atomics_per_fault") > 10 * cmp.cost("rcu", 2).mean("atomics_per_fault")
assert refaults["rwlock"] == 8 and refaults["rcu"] == 0
# EL2: no scheme that queues RCU callbacks qualifies
el2 = dict((need, s) for need, s, _ in rows)["pKVM at EL2 / no RCU"]
assert "rcu" not in el2 and "rcu-rfc" not in el2
assert {"hyp-lock", "rwlock", "refcount-revalidate"} <= set(el2)
# The verdict table's "+N" cells are all listed in full after it
_more = [(s, sc) for (s, sc), c in cmp.cells.items() if len(c.found) > 2]
assert _more and all(sorted(cmp.cells[k].found)[0] for k in _more)
# What section 3's prose reads off the plots
for _s in ("write-lock", "hyp-lock"):
    assert 100 <= cmp.cost(_s, 2).mean("blocked_per_fault") < 1000, _s
says("**Lock-blocked steps per fault** are hundreds for `write-lock` and `hyp-lock`")
says(f"(8 blocks, 64 pages read in each)")
