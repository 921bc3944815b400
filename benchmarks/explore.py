"""Exhaustive exploration of every scenario under every scheme, and what the
reductions buy.

    python benchmarks/explore.py [--quick] [--no-table] [--budget N]

1. **Every scenario x scheme** (the explorer's defaults: stateful
   breadth-first search with symmetry and partial-order reduction): states,
   transitions, seconds, states/s, complete, what was found, the verdict.
2. **Reduction factors**, separately, on the collapse scenario with 1, 2
   and 3 interchangeable readers (2, 3 and 4 vCPUs: vCPU0 collapses, the
   others take the same access-flag fault; the 4-vCPU one is
   collapse-vs-fault-4): the same search with symmetry off, with
   partial-order reduction off, and with dead-variable reduction off
   (every local of a CPU's frames fingerprinted); each factor is states (or
   transitions) without the reduction over states with it.  A search that exceeds
   ``--budget`` states is reported as a lower bound.
3. Peak memory of the whole run.

Targets (issue 22): collapse-vs-fault-4 exhaustive under every scheme in at
most 60 s; at least 250 k states/s on the collapse scenarios; the 4-vCPU
runs within 2 GiB.  The machines are shared and noisy: compare ratios
measured in one run.  The last line is one JSON object.
"""

from __future__ import annotations

import json
import resource
import sys
import time

from s2pt.explorer import explore
from s2pt.scenarios import SCENARIOS, Scenario, build_collapse_vs_readers
from s2pt.schemes import SCHEMES

REDUCTION_SCHEMES = ("none", "rcu", "refcount-revalidate")


def readers(n: int) -> Scenario:
    """collapse-vs-fault-4's family with ``n`` readers (n + 1 vCPUs)."""
    base = SCENARIOS["collapse-vs-fault-4"]
    if n == 3:
        return base
    return Scenario(f"collapse-vs-{n}-readers", base.summary, build_collapse_vs_readers,
                    {s: dict(k) for s, k in base.expect.items()}, cpus=n + 1,
                    params={"readers": n}, window=base.window)


def run(sc, scheme, **kw) -> dict:
    t0 = time.perf_counter()
    r = explore(sc, scheme, details=False, **kw)
    secs = time.perf_counter() - t0
    return {"states": r.states, "transitions": r.transitions, "complete": r.complete,
            "seconds": round(secs, 2), "states_per_s": round(r.states / max(secs, 1e-9)),
            # Private steps taken alone, most of them inside runs that keep no state.
            "private_steps": r.settings.get("por_private_steps", 0),
            "found": sorted(r.kinds), "verdict": r.verdict,
            "declared_ok": not r.check_declared()}


def main(argv):
    quick = "--quick" in argv
    budget = int(argv[argv.index("--budget") + 1]) if "--budget" in argv else 6_000_000
    table = []
    if "--no-table" not in argv:
        for name, sc in SCENARIOS.items():
            if quick and sc.cpus > 2:
                continue
            for scheme in SCHEMES:
                if scheme not in sc.expect:
                    continue
                row = {"scenario": name, "scheme": scheme, "cpus": sc.cpus,
                       **run(name, scheme, max_states=budget)}
                table.append(row)
                print(f"{name:<30} {scheme:<21} {row['states']:>10,} states "
                      f"{row['transitions']:>11,} transitions {row['seconds']:8.2f} s "
                      f"{row['states_per_s']:>8,}/s  {row['verdict']}"
                      + ("" if row["complete"] else "  (NOT complete)"),
                      file=sys.stderr, flush=True)
    factors = []
    for n in (1, 2) if quick else (1, 2, 3):
        sc = readers(n)
        for scheme in REDUCTION_SCHEMES:
            both = run(sc, scheme, max_states=budget)
            no_sym = run(sc, scheme, symmetry=False, max_states=budget)
            no_por = run(sc, scheme, por=False, max_states=budget)
            no_live = run(sc, scheme, liveness=False, max_states=budget)
            row = {"vcpus": n + 1, "scheme": scheme, "reduced": both, "no_symmetry": no_sym,
                   "no_por": no_por, "no_liveness": no_live,
                   "symmetry_states_factor": round(no_sym["states"] / both["states"], 2),
                   "symmetry_exact": no_sym["complete"],
                   "por_states_factor": round(no_por["states"] / both["states"], 2),
                   "por_transitions_factor": round(no_por["transitions"] / both["transitions"],
                                                   2),
                   "liveness_states_factor": round(no_live["states"] / both["states"], 2),
                   "liveness_transitions_factor": round(no_live["transitions"]
                                                        / both["transitions"], 2),
                   "same_verdict": (no_sym["found"] == both["found"] == no_por["found"]
                                    == no_live["found"]
                                    if no_sym["complete"] and no_por["complete"]
                                    and no_live["complete"] else None)}
            factors.append(row)
            print(f"{n + 1} vCPUs {scheme:<5} {both['states']:>10,} states {both['seconds']:7.1f} s; "
                  f"symmetry x{row['symmetry_states_factor']}"
                  + ("" if no_sym["complete"] else " (at least: the unreduced search hit the budget)")
                  + f"; POR x{row['por_states_factor']} states, "
                  f"x{row['por_transitions_factor']} transitions; liveness "
                  f"x{row['liveness_states_factor']} states, "
                  f"x{row['liveness_transitions_factor']} transitions",
                  file=sys.stderr, flush=True)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    four = [r for r in table if r["scenario"] == "collapse-vs-fault-4"]
    collapse = [r for r in table if r["scenario"].startswith("collapse-vs-fault")]
    summary = {
        "four_vcpu_max_seconds": max((r["seconds"] for r in four), default=None),
        "four_vcpu_all_complete": all(r["complete"] for r in four) if four else None,
        "collapse_states_per_s_min": min((r["states_per_s"] for r in collapse
                                          if r["states"] > 10_000), default=None),
        "collapse_states_per_s_max": max((r["states_per_s"] for r in collapse), default=None),
        "declared_ok": all(r["declared_ok"] for r in table if r["complete"]),
        "peak_mib": round(peak_mib),
    }
    print(json.dumps({"benchmark": "explore", "runs": table, "reductions": factors,
                      "summary": summary}))


if __name__ == "__main__":
    main(sys.argv[1:])
