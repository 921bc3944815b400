"""``python -m s2pt compare``: every scheme side by side (:func:`s2pt.compare`, :mod:`s2pt.comparison`).

Exit status: 0 when every declaration held (and, with ``--mutations``,
every mutation was caught); 1 on a declaration mismatch or a mutation
missed; 2 on bad input (one line on stderr, never a traceback).  With
``--check`` it searches nothing: 0 when the stored comparison agrees with
the registries, 1 when it does not.

Results are cached by content in the user's cache folder
(:mod:`s2pt.comparison.cache`) unless ``--no-cache``.
"""

from __future__ import annotations

import json
import os
import sys
import time

from ..comparison import MAX_JOBS, MAX_STATES, MAX_VCPUS, compare
from ..comparison.cache import ResultCache
from ..comparison.check import DATA, check_json, load
from ..errors import S2ptError
from ..scenarios import SCENARIOS
from ..schemes import SCHEMES
from .registry import arg, command, positive as _pos, seed64 as _seed


def _names(values):
    """--scheme a --scheme b,c -> [a, b, c] (None when not given)."""
    if not values:
        return None
    out = [v.strip() for vs in values for v in vs.split(",")]
    empty = [v for v in out if not v]
    if empty:
        raise S2ptError(f"an empty name in {values!r}")
    return out


class _Progress:
    """Progress on stderr, so that a run of minutes is never silent (stdout
    keeps the table or the JSON).  On a terminal one line is rewritten in
    place; otherwise (a pipe, a notebook's ``!python -m s2pt compare``) a
    line is printed when a part starts and at most every ``every`` seconds."""

    def __init__(self, live: bool, header: str, every: float = 5.0):
        self.live, self.header, self.every = live, header, every
        self.t0 = time.monotonic()
        self.last, self.part = None, None

    def __call__(self, text: str) -> None:
        if self.header:              # first said when the input has been accepted
            print(self.header, file=sys.stderr, flush=True)
            self.header = None
        now = time.monotonic() - self.t0
        line = f"[{now:5.0f} s] {text}"
        part = text.split(":", 1)[0]
        if self.live:
            print(f"\r\033[K{line}", end="", file=sys.stderr, flush=True)
        elif part != self.part or self.last is None or now - self.last >= self.every:
            print(line, file=sys.stderr, flush=True)
            self.last = now
        self.part = part

    def done(self) -> None:
        if self.header:
            return
        if self.live:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
        print(f"[{time.monotonic() - self.t0:5.0f} s] done", file=sys.stderr, flush=True)


@command("compare", help="every scheme against every scenario: verdicts, costs, mutations", args=[
    arg("--json", action="store_true", help="print one JSON document with everything"),
    arg("--mutations", action="store_true",
        help="also search every mutation (a deliberately broken variant) and print the score"),
    arg("--vcpus", type=_pos, default=MAX_VCPUS, metavar="N",
        help=f"measure the costs with 1..N vCPUs (N <= {MAX_VCPUS}; default {MAX_VCPUS})"),
    arg("--no-costs", action="store_true", help="the verdict table only (no cost sweep)"),
    arg("--runs", type=_pos, default=12, metavar="N",
        help="recorded runs per cost cell (default 12)"),
    arg("--seed", type=_seed, default=0,
        help="seed of the cost runs' random and PCT schedules, 0 .. 2**64-1 (default 0)"),
    arg("--scheme", action="append", default=[], metavar="NAME",
        help="only these schemes (repeat, or comma-separate; default: all)"),
    arg("--scenario", action="append", default=[], metavar="NAME",
        help="only these scenarios (repeat, or comma-separate; default: all)"),
    arg("--max-states", type=_pos, default=MAX_STATES, metavar="N",
        help=f"bound on each exhaustive search (default {MAX_STATES:,})"),
    arg("--plot", metavar="PNG", help="save the cost plots (matplotlib) to this file"),
    arg("--jobs", type=_pos, default=None, metavar="N",
        help=f"worker processes for the searches, at most {MAX_JOBS} (default: one per "
             f"core)"),
    arg("--no-cache", action="store_true",
        help="compute everything again (default: reuse results cached by content in "
             "$XDG_CACHE_HOME/s2pt/compare, else ~/.cache/s2pt/compare)"),
    arg("--check", nargs="?", const=str(DATA), metavar="JSON",
        help="search nothing: check a stored comparison (default "
             "notebooks/data/compare.json) against the registries -- every scheme, scenario, "
             "declaration, mutation and bug name -- and exit 0 if it agrees, 1 if not"),
])
def compare_cmd(args) -> int:
    """Run every scheme against every scenario (exhaustive stateful search)
    and print the verdict table, checking each scenario's declared
    outcomes; then the costs measured in the model as the vCPU count grows,
    the "which to choose" table generated from them, and with --mutations
    the mutation score.

    Exit status: 0 all declarations held (and every mutation was caught),
    1 a declaration mismatch (or a mutation missed), 2 bad input.  With
    --check, nothing is searched: a stored comparison (--json's output) is
    checked against the registries, exit 0 when it agrees, 1 when not.
    """
    if args.check is not None:
        return _check(args.check)
    if args.vcpus > MAX_VCPUS:
        raise S2ptError(f"--vcpus {args.vcpus}: at most {MAX_VCPUS}")
    if args.jobs is not None and args.jobs > MAX_JOBS:
        raise S2ptError(f"--jobs {args.jobs}: at most {MAX_JOBS} worker processes")
    if args.plot and args.no_costs:
        raise S2ptError("--plot needs the costs: drop --no-costs")
    if args.plot and not args.plot.lower().endswith((".png", ".svg", ".pdf")):
        raise S2ptError(f"--plot {args.plot!r}: give a .png, .svg or .pdf file name")
    schemes, scenarios = _names(args.scheme), _names(args.scenario)
    jobs = args.jobs or min(os.cpu_count() or 1, MAX_JOBS)
    progress = _Progress(sys.stderr.isatty(), header=(
        f"comparing {len(schemes or SCHEMES)} schemes on {len(scenarios or SCENARIOS)} scenarios"
        f" (exhaustive searches in {jobs} worker process{'es' if jobs > 1 else ''}"
        + ("" if args.no_costs else f", then costs with 1-{args.vcpus} vCPUs")
        + (", then every mutation" if args.mutations else "") + "); progress follows"))
    cache = None if args.no_cache else ResultCache()
    c = compare(schemes, scenarios, costs=not args.no_costs,
                vcpus=args.vcpus, runs=args.runs, seed=args.seed,
                mutations=args.mutations, max_states=args.max_states, progress=progress,
                jobs=jobs, cache=cache)
    if cache is not None:
        progress(f"cache: {cache.hits} of {cache.hits + cache.misses} results read from "
                 f"{cache.folder}")
    progress.done()
    if args.plot:
        try:
            c.plot().savefig(args.plot)
        except OSError as e:
            raise S2ptError(f"--plot {args.plot!r}: {e.strerror or e}") from None
    if args.json:
        print(json.dumps(c.to_json()))
    else:
        print(c.text())
        if args.plot:
            print(f"\nplots: {args.plot}")
    return 0 if c.ok else 1


def _check(path: str) -> int:
    """compare --check: the stored comparison against the registries."""
    problems = check_json(load(path))
    for p in problems:
        print(p)
    print(f"{path}: " + (f"{len(problems)} disagreement(s) with the registries" if problems
                         else "agrees with the registries (schemes, scenarios, declarations, "
                              "mutations, bugs)"))
    return 1 if problems else 0
