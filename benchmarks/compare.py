"""``python -m s2pt compare``, timed: the verdict table, the cost sweep, the mutations.

    python benchmarks/compare.py [--quick]

First the command itself, as a reader runs it (a fresh interpreter, wall
clock, default settings: every scheme and scenario, costs with 1..4 vCPUs);
then ``s2pt.compare(..., mutations=True)`` in this process for the
per-part timings (verdicts, usage, costs, logging refaults, mutations) and
the slowest cells.  ``--quick`` skips the fresh-interpreter run.

Target (issue 10): ``python -m s2pt compare`` completes in <= 2 minutes.
The last line is one JSON object.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time


def main(argv):
    quick = "--quick" in argv
    out = {"benchmark": "compare"}
    if not quick:
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "s2pt", "compare"], env=env,
                           capture_output=True, text=True)
        out["cli_seconds"] = round(time.perf_counter() - t0, 2)
        out["cli_exit"] = p.returncode
        print(f"python -m s2pt compare: {out['cli_seconds']} s, exit {p.returncode}",
              file=sys.stderr, flush=True)
    import s2pt
    t0 = time.perf_counter()
    c = s2pt.compare(mutations=True)
    out["api_seconds_with_mutations"] = round(time.perf_counter() - t0, 2)
    out["parts"] = c.timings
    out["cells"] = len(c.declared_cells)
    out["mismatches"] = len(c.mismatches)
    out["mutation_score"] = list(c.mutation_score)
    out["sampled_cost_cells"] = sorted(f"{s}@{n}" for (s, n), cc in c.costs.items() if cc.sampled)
    slow = sorted(((cell.seconds, f"{cell.scheme} x {cell.scenario}") for cell in c.cells.values()),
                  reverse=True)[:5]
    out["slowest_verdicts"] = [{"cell": n, "seconds": s} for s, n in slow]
    slow = sorted(((cc.seconds, f"{cc.scheme}@{cc.vcpus}") for cc in c.costs.values()),
                  reverse=True)[:5]
    out["slowest_cost_cells"] = [{"cell": n, "seconds": s} for s, n in slow]
    out["peak_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out["target_seconds"] = 120
    if "cli_seconds" in out:
        out["target_met"] = out["cli_seconds"] <= 120
    for k, v in c.timings.items():
        print(f"  {k:<18} {v:7.1f} s", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
