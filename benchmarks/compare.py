"""``python -m s2pt compare --mutations``, timed cold and warm.

    python benchmarks/compare.py [--quick]

First the command as a reader runs it (a fresh interpreter, wall clock,
default settings: every scheme and scenario, costs with 1..4 vCPUs, every
mutation), twice with one fresh cache folder: **cold** (everything
computed) and **warm** (everything read back from the cache by content,
s2pt.comparison.cache); then ``s2pt.compare(..., mutations=True)`` in this
process, without a cache and in one process, for the per-part timings and
the slowest searches.  ``--quick`` skips the command runs.

Target (issue 22): ``compare --mutations`` in <= 60 s.  The machine is
shared: quote the figures with its load.  The last line is one JSON object.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def _cli(env) -> tuple:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "s2pt", "compare", "--mutations"], env=env,
                       capture_output=True, text=True)
    return round(time.perf_counter() - t0, 2), p.returncode


def main(argv):
    quick = "--quick" in argv
    out = {"benchmark": "compare", "load_before": os.getloadavg()[0]}
    if not quick:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, XDG_CACHE_HOME=cache,
                       PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
            for run in ("cold", "warm"):
                secs, rc = _cli(env)
                out[f"cli_{run}_seconds"], out[f"cli_{run}_exit"] = secs, rc
                print(f"python -m s2pt compare --mutations ({run} cache): {secs} s, exit {rc}",
                      file=sys.stderr, flush=True)
    import s2pt
    t0 = time.perf_counter()
    c = s2pt.compare(mutations=True)
    out["api_seconds_one_process"] = round(time.perf_counter() - t0, 2)
    out["parts"] = c.timings
    out["cells"] = len(c.declared_cells)
    out["mismatches"] = len(c.mismatches)
    out["mutation_score"] = list(c.mutation_score)
    out["incomplete_cost_cells"] = sorted(f"{s}@{n}" for (s, n), cc in c.costs.items()
                                          if cc.supported and not cc.complete)
    slow = sorted(((cell.seconds, f"{cell.scheme} x {cell.scenario}") for cell in c.cells.values()),
                  reverse=True)[:5]
    out["slowest_verdicts"] = [{"cell": n, "seconds": s} for s, n in slow]
    slow = sorted(((cc.seconds, f"{cc.scheme}@{cc.vcpus}") for cc in c.costs.values()),
                  reverse=True)[:5]
    out["slowest_cost_cells"] = [{"cell": n, "seconds": s} for s, n in slow]
    out["peak_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out["load_after"] = os.getloadavg()[0]
    out["target_seconds"] = 60
    if "cli_cold_seconds" in out:
        out["target_met_cold"] = out["cli_cold_seconds"] <= 60
        out["target_met_warm"] = out["cli_warm_seconds"] <= 60
    for k, v in c.timings.items():
        print(f"  {k:<18} {v:7.1f} s", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
