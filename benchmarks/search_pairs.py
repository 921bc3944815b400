"""One exhaustive search per process, on this checkout or another, for
before/after comparisons of the explorer.

    python benchmarks/search_pairs.py [--tree PATH] [SCENARIO/SCHEME ...]

Runs the StateSpace and the breadth-first search alone (no replay of what
is found, no race diagram) and prints one JSON object: states (kept),
transitions, the steps taken inside runs of private steps without keeping
a state (``run_steps``; absent before runs existed), seconds and the peak
resident memory of the process.  With
``--tree PATH`` it imports ``s2pt`` from that checkout (e.g. a worktree of
an older commit), so the same command measures both sides; run the two
alternately, one process per search, and compare ratios: the machines are
noisy.  The default pairs are the collapse searches of docs/performance.md.
"""

from __future__ import annotations

import json
import resource
import sys
import time

DEFAULT = ("collapse-vs-fault-3/none", "collapse-vs-fault-3/rcu",
           "collapse-vs-fault-3/refcount-revalidate", "collapse-vs-fault-4/none",
           "collapse-vs-fault-4/refcount-revalidate")


def main(argv):
    tree = None
    if "--tree" in argv:
        k = argv.index("--tree")
        tree = argv[k + 1]
        argv = argv[:k] + argv[k + 2:]
        sys.path.insert(0, tree)
    import s2pt
    from s2pt.sim.search import StateSpace, _bfs

    pairs = argv or DEFAULT
    if len(pairs) > 1:
        # One search per process: memory peaks and memos would mix.
        import subprocess
        rows = []
        for pair in pairs:
            cmd = [sys.executable, __file__, *(["--tree", tree] if tree else []), pair]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr, flush=True)
        print(json.dumps({"benchmark": "search_pairs", "s2pt": s2pt.__file__, "runs": rows}))
        return
    if pairs[0].count("/") != 1:
        raise s2pt.S2ptError(f"{pairs[0]!r}: name a search as SCENARIO/SCHEME, e.g. "
                             f"collapse-vs-fault-4/rcu")
    scenario, scheme = pairs[0].split("/")
    space = StateSpace(s2pt.world(scenario, scheme=scheme, record=False))
    t0 = time.perf_counter()
    found, stats = _bfs(space, max_states=20_000_000)
    secs = time.perf_counter() - t0
    print(json.dumps({"pair": pairs[0], "states": stats["states"],
                      "transitions": stats["transitions"], "seconds": round(secs, 2),
                      "states_per_s": round(stats["states"] / max(secs, 1e-9)),
                      "run_steps": stats.get("run_steps", 0),
                      "found": sorted(found), "complete": stats["complete"],
                      "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))


if __name__ == "__main__":
    main(sys.argv[1:])
