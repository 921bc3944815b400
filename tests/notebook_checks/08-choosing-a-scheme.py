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
assert {"hyp-lock", "rwlock-relax-page", "refcount-revalidate"} <= set(el2)
# rwlock livelocks on collapse-vs-fault, so it is in no row (section 4, quiz 2) ...
assert "livelock" in cmp.cell("rwlock", "collapse-vs-fault").found
assert not any("rwlock" in schemes for _, schemes, _ in rows)
assert not cmp.usage["rwlock"]["grace_periods"] and "rcu_read_lock" not in cmp.usage["rwlock"]["primitives"]
# ... and rwlock-relax-page is in every one
assert all("rwlock-relax-page" in schemes for _, schemes, _ in rows)
says("`rwlock-relax-page` appears in every row")
# Section 2: the stash-old-pte row, scheme by scheme
_stash = {s: cmp.cell(s, "stash-old-pte") for s in cmp.schemes}
assert {s for s, c in _stash.items() if "use-after-free" in c.found} == {
    "none", "hyp-lock", "rwlock-collapse-write", "refcount"}
assert {s for s, c in _stash.items() if c.safe} == {
    "rcu", "rcu-rfc", "refcount-revalidate", "rwlock", "rwlock-relax-page"}
assert _stash["write-lock"].status == "not-declared"
assert {s for s in cmp.schemes
        if cmp.cell(s, "collapse-vs-hw-walk-no-tlbi").safe} == {"rwlock", "rwlock-relax-page"}
# The verdict table's "+N" cells are all listed in full after it
_more = [(s, sc) for (s, sc), c in cmp.cells.items() if len(c.found) > 2]
assert _more and all(sorted(cmp.cells[k].found)[0] for k in _more)
# What section 3's prose reads off the plots
for _s in ("write-lock", "hyp-lock"):
    assert 100 <= cmp.cost(_s, 2).mean("blocked_per_fault") < 1000, _s
says("**Lock-blocked steps per fault** are hundreds for `write-lock` and `hyp-lock`")
assert max(cmp.cost("rwlock-collapse-write", n).mean("blocked_per_fault") for n in cmp.vcpus) > 100
for _s in ("none", "rcu", "rcu-rfc", "refcount", "refcount-revalidate", "rwlock-relax-page"):
    assert all(cmp.cost(_s, n).mean("blocked_per_fault") == 0 for n in cmp.vcpus), _s
for _s in ("write-lock", "rcu-rfc"):                       # the thousand-step windows
    assert all(cmp.cost(_s, n).mean("bbm_window") > 1000 for n in cmp.vcpus), _s
assert all(cmp.cost(_s, n).mean("bbm_window") < 20 for n in cmp.vcpus
           for _s in ("none", "rcu", "hyp-lock", "refcount", "refcount-revalidate"))
assert all(cmp.cost("write-lock", n).mean("eagain") == 0 for n in cmp.vcpus)
assert all(not cmp.cost("rwlock", n).summary and "livelock" in cmp.cost("rwlock", n).found
           for n in cmp.vcpus)                                 # no point on the plots
# Every cost cell's verdict is an exhaustive search that finished
assert all(c.complete for c in cmp.costs.values() if c.supported)
# The hyp-lock dip: a sampled mean that dips, over all schedules a cost that grows
_hl = [cmp.cost("hyp-lock", n).mean("blocked_per_fault") for n in cmp.vcpus]
assert _hl[-1] < _hl[-2]
says("`hyp-lock`'s mean at 4 vCPUs comes out below its mean at 3")
_ns = sorted(dip)
assert all(dip[a]["max"] / a < dip[b]["max"] / b and dip[a]["mean"] / a < dip[b]["mean"] / b
           for a, b in zip(_ns[1:], _ns[2:]))
_solo = cmp.cost("hyp-lock", 1).mean("steps")              # the collapse, run alone
assert dip[1]["max"] == 0 and all(abs(dip[n]["max"] / n - (n - 1) / n * _solo) < 0.05 * _solo
                                  for n in _ns[1:])
says("about (n - 1)/n of the collapse")
# Retained pages, TLBIs, mappings lost
for (_s, _n), _c in cmp.costs.items():
    if _c.summary:
        assert _c.mean("tlbi") == 1 and _c.mean("refaults") == 0, (_s, _n)
        assert _c.max("retained_peak") == (0 if _s == "rwlock-relax-page" else 1), (_s, _n)
assert all(cmp.cost("rwlock-relax-page", n).mean("grace_steps") is None for n in cmp.vcpus)
says(f"(8 blocks, 64 pages read in each)")
