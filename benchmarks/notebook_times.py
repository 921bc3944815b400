"""How long each course notebook runs, and whether what the prose says about it is true.

    python benchmarks/notebook_times.py [notebooks/05-*.ipynb ...] [--tolerance 3]

Runs each notebook (default: all of notebooks/) top to bottom in a fresh
kernel, as tests/test_notebooks.py does (its checks included), and reports:

* each notebook's total run time, and every code cell that ran over 2 s;
* every run-time claim in the prose, "(about 12 s)" or "(about 10-15 s)" in
  the markdown cell just before a code cell (tests/test_course_text.py
  allows no other form), against that cell's measured time: a claim holds
  when the time is within ``--tolerance`` times of the stated range (these
  machines are shared, so a loaded run is slower; a claim off by more than
  that is wrong, in either direction);
* every cell over 2 s that neither states its time up front nor prints
  anything while it runs (its source passes no ``progress=`` and prints
  nothing) -- a student would stare at it in silence.

Exit status 1 when a claim does not hold or a slow cell is silent.  The last
line is one JSON object: {"notebooks": {name: seconds}, "claims": [...],
"silent": [...], "ok": bool}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"

from nbrun import run  # noqa: E402
from test_course_text import run_time_claims  # noqa: E402

SLOW = 2.0          # seconds: a cell longer than this shows progress or says how long it takes


def _talks(source: str) -> bool:
    """Does the cell say something while it runs?"""
    return bool(re.search(r"\bprogress\s*=|\bprint\(", source))


def measure(path: Path, tolerance: float) -> dict:
    t0 = time.perf_counter()
    nb, times = run(path)
    total = time.perf_counter() - t0
    seconds = dict(times)
    claimed = {}
    claims = []
    for cell, lo, hi in run_time_claims(path):
        took = seconds.get(cell)
        ok = took is not None and lo / tolerance <= took <= hi * tolerance
        claims.append({"notebook": path.name, "cell": cell, "claimed": [lo, hi],
                       "measured": round(took or 0, 1), "ok": ok})
        claimed[cell] = True
    slow = [(i, s) for i, s in times if s is not None and s > SLOW]
    silent = [{"notebook": path.name, "cell": i, "seconds": round(s, 1)} for i, s in slow
              if i not in claimed and not _talks(nb.cells[i].source)]
    return {"total": round(total, 1), "cells": round(sum(s or 0 for _, s in times), 1),
            "slow": [(i, round(s, 1)) for i, s in slow], "claims": claims, "silent": silent}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--tolerance", type=float, default=3.0)
    args = ap.parse_args()
    paths = [p.resolve() for p in args.notebooks] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    out = {"notebooks": {}, "claims": [], "silent": []}
    for path in paths:
        r = measure(path, args.tolerance)
        out["notebooks"][path.name] = r["cells"]
        out["claims"] += r["claims"]
        out["silent"] += r["silent"]
        print(f"{path.name}: {r['cells']:.1f} s in its cells ({r['total']:.1f} s with the kernel)"
              + "".join(f"\n    cell {i}: {s:.1f} s" for i, s in r["slow"]), flush=True)
        for c in r["claims"]:
            lo, hi = c["claimed"]
            said = f"about {lo:g} s" if lo == hi else f"about {lo:g}-{hi:g} s"
            print(f"    claim before cell {c['cell']}: {said}, measured {c['measured']:.1f} s"
                  + ("" if c["ok"] else "  <-- DOES NOT HOLD"), flush=True)
        for s in r["silent"]:
            print(f"    cell {s['cell']}: {s['seconds']:.1f} s with no progress and no stated time",
                  flush=True)
    out["ok"] = all(c["ok"] for c in out["claims"]) and not out["silent"]
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
