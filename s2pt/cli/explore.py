"""``python -m s2pt explore | replay | scenarios``: the explorer's commands.

Exit status: 0 when no violation was found, 1 when one was, 2 on bad input
(one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import S2ptError
import textwrap

from ..explorer import MAX_STEPS, explore, replay, replay_command
from ..htmltrace import verdict, write_html
from ..sim.report import WIDTH, email_text
from ..scenarios import BUGS, SCENARIOS, get_scenario
from ..schemes import SCHEMES, get_scheme
from ..sim.violation import KINDS
from ..sim.search import MAX_RUNS, parse_schedule
from .registry import arg, command, nonneg as _nonneg, positive as _pos, seed64 as _seed


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
    arg("--scheme", default=None, help=f"teardown scheme: {', '.join(SCHEMES)} (default: rcu, "
                                        "or the scenario's first declared scheme)"),
    arg("--exhaustive", action="store_true", help="stateful breadth-first search (the default)"),
    arg("--random", type=_pos, metavar="N",
        help=f"N seeded random schedules (N <= {MAX_RUNS:,})"),
    arg("--pct", type=_pos, metavar="N",
        help=f"N seeded PCT schedules (N <= {MAX_RUNS:,}; see --depth)"),
    arg("--depth", type=_pos, default=None, metavar="D",
        help="with --pct: the bug depth, the ordering constraints the bug needs, plus one "
             "(default 2: a use-after-free needs only the free between a reader's load and "
             "its access)"),
    arg("--seed", type=_seed, default=None, help="with --random or --pct: the seed, "
                                                  "0 .. 2**64-1 (default 0)"),
    arg("--preemptions", type=_nonneg, metavar="K", help="bound on preemptive context switches"),
    arg("--bug", action="append", default=[], metavar="COMMIT",
        help="switch a historical bug or a broken variant back on (repeatable): "
             + ", ".join(BUGS) + "; python -m s2pt scenarios says what each does"),
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
    if args.depth is not None and mode != "pct":
        raise S2ptError(f"--depth {args.depth}: the bug depth is for --pct N only")
    if args.seed is not None and mode not in ("random", "pct"):
        raise S2ptError(f"--seed {args.seed}: the seed is for --random N or --pct N only "
                        f"(the exhaustive search is not random)")
    if runs > MAX_RUNS:
        raise S2ptError(f"--{mode} {runs}: at most {MAX_RUNS:,} runs")
    if args.depth is not None and args.depth > MAX_STEPS:
        raise S2ptError(f"--depth {args.depth}: at most {MAX_STEPS:,} (one priority change "
                        f"point per step of a run at most)")
    res = explore(args.scenario, args.scheme, mode=mode, runs=runs,
                  depth=2 if args.depth is None else args.depth,
                  seed=0 if args.seed is None else args.seed,
                  preemptions=args.preemptions, bugs=args.bug,
                  max_states=args.max_states, progress=sys.stderr.isatty() and not args.json)
    if args.json:
        print(json.dumps(res.to_json()))
    else:
        # Every line within 80 columns: the race diagrams are; the sentences wrap.
        print("\n".join(textwrap.fill(line, WIDTH, subsequent_indent="  ",
                                      break_on_hyphens=False)
                        if len(line) > WIDTH else line for line in res.summary().splitlines()))
        for f in res.violations:
            print("\nreplay it:\n" + replay_command(res.scenario, res.scheme, f.schedule_text,
                                                     args.bug, width=WIDTH))
    return 1 if res.found else 0


def _schedule(text: str) -> str:
    """--schedule: refuse an empty one (leave the option out for the default
    order) and bad tokens, as usage errors."""
    try:
        steps = parse_schedule(text, limit=MAX_STEPS)
    except S2ptError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not steps:
        raise argparse.ArgumentTypeError(
            f"{text!r} is empty: give CPU ids, one per step (e.g. '1*5 0'), or leave "
            f"--schedule out to run the default order (no preemption, lowest CPU first)")
    return text


@command("replay", help="replay one schedule: race diagram, verdict, optional state log", args=[
    arg("scenario", help="a scenario name"),
    arg("--scheme", default=None, help="teardown scheme (default: as for explore)"),
    arg("--schedule", type=_schedule, default=None,
        help="CPU ids, one per step, e.g. '1 1 1 1 0' or '1*4 0'; afterwards (and without "
             "--schedule): no preemption, lowest CPU first"),
    arg("--bug", action="append", default=[], metavar="COMMIT", help="as for explore"),
    arg("--email", action="store_true",
        help="print the race as a patch review would carry it: a few sentences, the race "
             "diagram and the command that replays it (plain text, 80 columns)"),
    arg("--steps", action="store_true",
        help="instead of the race diagram, every step, numbered, one column per CPU "
             "(repeated steps folded)"),
    arg("--log", action="store_true",
        help="after the diagram, every step with its result and what it changed "
             "(a thousand lines or more)"),
    arg("--no-log", action="store_true", help=argparse.SUPPRESS),   # the old default's opt-out
    arg("--html", metavar="FILE",
        help="also write the run as one self-contained HTML page (steps, CPUs, shared "
             "state, timeline, tree, verdict), for a browser or an email attachment"),
])
def replay_cmd(args) -> int:
    """Run the scenario with the given schedule and print the race diagram
    (only the steps the violation depends on, under the kernel functions
    that perform them, 80 columns) and the verdict; with --email, the same
    as a patch review would carry it; with --steps, every step instead of
    the race diagram; with --log, then every step with its result and what
    it changed; with --html FILE, write the self-contained trace page.

    Exit status: 0 the run was clean, 1 it showed a violation, 2 bad input.
    """
    if args.html is not None and not args.html.strip():
        raise S2ptError(f"--html {args.html!r}: give a file name for the HTML page")
    args.scheme = _scheme_for(args.scenario, args.scheme)
    w = replay(args.scenario, args.scheme, args.schedule or "", bugs=args.bug)
    if args.email:
        print(email_text(w, replay_command(args.scenario, args.scheme, args.schedule or "",
                                           args.bug, width=WIDTH)))
    else:
        print(w.step_diagram() if args.steps else w.diagram())
        print()
        print(textwrap.fill(verdict(w), WIDTH, break_on_hyphens=False))
    if args.log and not args.no_log:
        print()
        print(w.log())
    if args.html is not None:
        n = write_html(w, args.html, schedule=args.schedule or "")
        print(f"\nwrote {args.html} ({n:,} bytes, {len(w.events)} steps)")
    return 1 if w.violations else 0


@command("scenarios", help="list scenarios, schemes and declared outcomes")
def scenarios_cmd(args) -> int:
    """Every scenario with, per scheme, the violations it is declared to show
    Sometimes (every other kind is declared Never)."""
    width = max(len(n) for n in SCHEMES)
    print("Schemes:")
    for s in SCHEMES.values():
        print(f"  {s.name:<{width}} {s.summary}")
        print(f"  {'':<{width}} models: {s.version}")
    print("\nScenarios (per scheme: the kinds expected Sometimes; all others Never):")
    for sc in SCENARIOS.values():
        print(f"\n  {sc.name}  ({sc.cpus} CPU{'s' if sc.cpus > 1 else ''})")
        print(f"    {sc.summary}")
        for name in SCHEMES:
            kinds = [k for k in KINDS if sc.expected(name, k) == "Sometimes"]
            if sc.expected(name, "leak") is None:
                print(f"    {name:<{width}} not declared (explore refuses it)")
                continue
            text = ", ".join(kinds) if kinds else "nothing (every kind Never)"
            print(f"    {name:<{width}} Sometimes: {text}")
    print("\nViolation kinds:")
    for k, v in KINDS.items():
        print(f"  {k:<15} {v}")
    print("\nBugs (--bug NAME switches one back on; each names what it switches):")
    for b in BUGS.values():
        print(textwrap.fill(f"[{b.target}] {b.what}", WIDTH, initial_indent=f"  {b.name:<24} ",
                            subsequent_indent=" " * 27, break_on_hyphens=False))
    return 0
