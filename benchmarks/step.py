"""Live stepping: what one click of a widget's Step button costs the engine.

    python benchmarks/step.py [--repeat 5]

For every scenario, under the first scheme it declares: build a fresh
recorded World (``s2pt.world``) and step it to its end by the default
policy, one ``World.step(cpu)`` at a time, as a widget does on each click
(no memo, every event recorded with its stack and enabled set).  Reports
microseconds per step, best of ``--repeat``; building the World is timed
apart.  Target (issue 9): stepping must not get slower than before.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import s2pt  # noqa: E402
from s2pt.scenarios import SCENARIOS  # noqa: E402


def step_through(w) -> int:
    """Step by the default policy: keep running the last CPU while it can,
    otherwise the lowest-numbered enabled one."""
    last = None
    while w.outcome is None:
        en = w.enabled()
        if not en:
            break
        cpu = last if last in en else en[0]
        w.step(cpu)
        last = cpu
    return len(w.events)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    out = {}
    for name, sc in SCENARIOS.items():
        scheme = next(iter(sc.expect))
        best_step = best_build = float("inf")
        steps = 0
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            w = s2pt.world(name, scheme)
            t1 = time.perf_counter()
            steps = step_through(w)
            t2 = time.perf_counter()
            best_build = min(best_build, t1 - t0)
            best_step = min(best_step, (t2 - t1) / max(steps, 1))
        out[name] = {"scheme": scheme, "steps": steps, "us_per_step": round(best_step * 1e6, 2),
                     "build_ms": round(best_build * 1e3, 1)}
        print(f"{name:32} {scheme:8} {steps:6} steps  {best_step * 1e6:6.2f} us/step  "
              f"build {best_build * 1e3:6.1f} ms", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
