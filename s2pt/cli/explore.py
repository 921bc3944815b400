"""``python -m s2pt explore | replay | scenarios``: the explorer's commands.

Exit status: 0 when no violation was found, 1 when one was, 2 on bad input
(one line on stderr, never a traceback).
"""

from __future__ import annotations

import json
import sys

from ..errors import S2ptError
from ..explorer import explore, replay
from ..scenarios import SCENARIOS, get_scenario
from ..schemes import SCHEMES, get_scheme
from ..sim.violation import KINDS
from .registry import arg, command, integer as _int, nonneg as _nonneg, positive as _pos


def _scheme_for(scenario: str, scheme: str | None) -> str:
    """The scheme to run: the one asked for, which the scenario must declare
    (it says why not otherwise), or by default rcu, else its first declared."""
    sc = get_scenario(scenario)
    if scheme is None:
        return "rcu" if "rcu" in sc.expect else next(iter(sc.expect))
    get_scheme(scheme)                   # an unknown scheme is its own error
    sc.check_scheme(scheme)
    return scheme


@command("explore", help="search a scenario's interleavings for violations", args=[
    arg("scenario", help="a scenario name (see: python -m s2pt scenarios)"),
    arg("--scheme", default=None, help="teardown scheme: none, rcu or hyp-lock (default: rcu, "
                                        "or the scenario's first declared scheme)"),
    arg("--exhaustive", action="store_true", help="stateful breadth-first search (the default)"),
    arg("--random", type=_pos, metavar="N", help="N seeded random schedules"),
    arg("--pct", type=_pos, metavar="N", help="N seeded PCT schedules (see --depth)"),
    arg("--depth", type=_pos, default=3, metavar="D", help="PCT bug depth (default 3)"),
    arg("--seed", type=_int, default=0, help="seed for --random and --pct (default 0)"),
    arg("--preemptions", type=_nonneg, metavar="K", help="bound on preemptive context switches"),
    arg("--bug", action="append", default=[], metavar="COMMIT",
        help="switch a historical bug back on: a9f0e3d5a089 (no reload after the TABLE_PRE "
             "callback) or f6a27d6dc51b (no final put of the subtree root); or a broken "
             "variant: no-bbm-tlbi, donate-no-tlbi, coalesce-no-tlbi"),
    arg("--max-states", type=_pos, default=2_000_000, metavar="N",
        help="stop an exhaustive search after N states (default 2,000,000)"),
    arg("--json", action="store_true", help="print one JSON object"),
])
def explore_cmd(args) -> int:
    """Run the scenario's CPUs under every interleaving (or N random / PCT
    ones) and report each kind of violation once, with its shortest
    schedule and a race diagram.  Replay a schedule with `s2pt replay`.

    Exit status: 0 no violation found, 1 violation found, 2 bad input.
    """
    args.scheme = _scheme_for(args.scenario, args.scheme)
    modes = [m for m in ("exhaustive", "random", "pct") if getattr(args, m)]
    if len(modes) > 1:
        raise S2ptError(f"choose one of --exhaustive, --random N, --pct N (got {', '.join(modes)})")
    mode = modes[0] if modes else "exhaustive"
    runs = args.random or args.pct or 1
    if mode in ("random", "pct") and args.preemptions is not None:
        raise S2ptError("--preemptions bounds the exhaustive search only")
    res = explore(args.scenario, args.scheme, mode=mode, runs=runs, depth=args.depth,
                  seed=args.seed, preemptions=args.preemptions, bugs=args.bug,
                  max_states=args.max_states, progress=sys.stderr.isatty() and not args.json)
    if args.json:
        print(json.dumps(res.to_json()))
    else:
        print(res.summary())
        for f in res.violations:
            print(f"\nreplay it: python -m s2pt replay {res.scenario} --scheme {res.scheme} "
                  f"--schedule '{f.schedule_text}'" + "".join(f" --bug {b}" for b in args.bug))
    return 1 if res.found else 0


@command("replay", help="replay one schedule: race diagram and state log", args=[
    arg("scenario", help="a scenario name"),
    arg("--scheme", default=None, help="teardown scheme (default: as for explore)"),
    arg("--schedule", default="", help="CPU ids, one per step, e.g. '1 1 1 1 0' or '1*4 0'; "
                                        "afterwards: no preemption, lowest CPU first"),
    arg("--bug", action="append", default=[], metavar="COMMIT", help="as for explore"),
    arg("--no-log", action="store_true", help="print the race diagram only"),
])
def replay_cmd(args) -> int:
    """Run the scenario with the given schedule and print the race diagram,
    then every step with its result and what it changed.

    Exit status: 0 the run was clean, 1 it showed a violation, 2 bad input.
    """
    args.scheme = _scheme_for(args.scenario, args.scheme)
    w = replay(args.scenario, args.scheme, args.schedule, bugs=args.bug)
    print(w.diagram())
    if not args.no_log:
        print()
        print(w.log())
    return 1 if w.violations else 0


@command("scenarios", help="list scenarios, schemes and declared outcomes")
def scenarios_cmd(args) -> int:
    """Every scenario with, per scheme, the violations it is declared to show
    Sometimes (every other kind is declared Never)."""
    print("Schemes:")
    for s in SCHEMES.values():
        print(f"  {s.name:<8} {s.summary}")
    print("\nScenarios (per scheme: the kinds expected Sometimes; all others Never):")
    for sc in SCENARIOS.values():
        print(f"\n  {sc.name}  ({sc.cpus} CPU{'s' if sc.cpus > 1 else ''})")
        print(f"    {sc.summary}")
        for name in SCHEMES:
            kinds = [k for k in KINDS if sc.expected(name, k) == "Sometimes"]
            if sc.expected(name, "leak") is None:
                print(f"    {name:<8} not declared (explore refuses it)")
                continue
            text = ", ".join(kinds) if kinds else "nothing (every kind Never)"
            print(f"    {name:<8} Sometimes: {text}")
    print("\nViolation kinds:")
    for k, v in KINDS.items():
        print(f"  {k:<15} {v}")
    return 0
