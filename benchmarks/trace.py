"""The step data of a counterexample: what the HTML trace and the widget cost.

    python benchmarks/trace.py [--repeat 3]

For the shortest use-after-free of collapse-vs-fault under none (about a
thousand steps): the time to write the HTML trace (every step's panels,
every tree laid out) and its size; the time the Interleave widget takes to
load the schedule (``htmltrace.record(..., lazy=True)``: a tree only for
the steps that change shared state, the others drawn when shown), with how
many trees that lays out; and the time Play needs at the default speed to
reach the violation with skip on: the steps that change shared state, times
the default interval of trace.js (120 ms), the browser's own drawing left
out (the browser test measures that).  The race diagram and the email are
timed too.  Best of ``--repeat``; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import s2pt  # noqa: E402
from s2pt.explorer import replay_command  # noqa: E402
from s2pt.htmltrace import record, write_html  # noqa: E402
from s2pt.sim.report import email_text  # noqa: E402

SCENARIO, SCHEME, SCHEDULE = "collapse-vs-fault", "none", "0*5 1*5 0*1037 1"
PLAY_MS = 120                      # trace.js's default speed ("medium")


def best(fn, repeat):
    t = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        t = min(t, time.perf_counter() - t0)
    return t, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    w = s2pt.replay(SCENARIO, SCHEME, SCHEDULE)
    write_html(w, os.path.join(tempfile.gettempdir(), "warm.html"))   # Graphviz warmed up
    path = os.path.join(tempfile.gettempdir(), "s2pt-bench-trace.html")
    t_page, size = best(lambda: write_html(w, path), args.repeat)
    t_load, (_, frames) = best(lambda: record(w.again(), [e.cpu for e in w.events], lazy=True),
                               args.repeat)
    drawn = sum(1 for s in frames.steps if s[2] >= 0)
    shared = sum(1 for s in frames.steps[1:] if not s[5])
    t_diagram, _ = best(w.diagram, args.repeat)
    cmd = replay_command(SCENARIO, SCHEME, SCHEDULE, width=80)
    t_email, _ = best(lambda: email_text(w, cmd), args.repeat)
    out = {"scenario": f"{SCENARIO}/{SCHEME}", "steps": len(w.events),
           "page_bytes": size, "page_s": round(t_page, 2),
           "widget_load_s": round(t_load, 2), "trees_laid_out_on_load": drawn,
           "shared_steps": shared, "play_to_violation_s": round(shared * PLAY_MS / 1000, 2),
           "diagram_ms": round(t_diagram * 1000, 1), "email_ms": round(t_email * 1000, 1)}
    print(f"HTML trace: {size:,} bytes in {t_page:.2f} s; widget load {t_load:.2f} s "
          f"({drawn} trees of {len(frames.steps)} steps); Play with skip: {shared} steps x "
          f"{PLAY_MS} ms = {shared * PLAY_MS / 1000:.1f} s; race diagram "
          f"{t_diagram * 1000:.0f} ms, email {t_email * 1000:.0f} ms", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
