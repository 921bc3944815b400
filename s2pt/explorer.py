"""The explorer's entry points, by name: ``s2pt.explore``, ``s2pt.replay``, ``s2pt.world``.

The engine (:mod:`s2pt.sim`) knows no scenario, scheme or checker by name:
a :class:`~s2pt.sim.world.World` is given a scenario object, a scheme object
and its end-of-run checks.  This module, one layer up, looks the names up
(:mod:`s2pt.scenarios`, :mod:`s2pt.schemes`), gives the World the checks
that :func:`s2pt.checkers.end_checks` chooses for them, and calls the
search::

    >>> import s2pt
    >>> r = s2pt.explore("collapse-vs-fault", "none")       # every interleaving
    >>> sorted(r.kinds)
    ['use-after-free']
    >>> w = s2pt.replay("collapse-vs-fault", "none", r.found["use-after-free"].schedule_text)
    >>> w.outcome
    'violation'
"""

from __future__ import annotations

from . import validate
from .checkers import end_checks
from .scenarios import BUGS, get_scenario
from .schemes import get_scheme
from .sim.search import Result, replay_world, search
from .sim.world import World

__all__ = ["world", "explore", "replay", "replay_command", "MAX_STEPS"]

#: The default bound on one run's steps (a run that reaches it is a livelock).
MAX_STEPS = 20000


def world(scenario, scheme="rcu", bugs=(), *, max_steps: int = MAX_STEPS,
          record: bool = True) -> World:
    """A fresh World of ``scenario`` (a name or a Scenario) under ``scheme``
    (a name or a Scheme), ready to be stepped by hand (``w.step(cpu)``).
    ``max_steps`` (a positive integer) ends a run that has not finished by
    then as a livelock."""
    sc = get_scenario(scenario)
    sch = get_scheme(scheme)
    sc.check_scheme(sch.name)
    bugs = validate.names("bugs", bugs, BUGS, "bug")
    sc.check_bugs(bugs)
    max_steps = validate.integer("max_steps", max_steps, 1,
                                 rule="a positive number of steps (a run that reaches it ends "
                                 "as a livelock)")
    record = validate.flag("record", record)
    return World(sc, sch, bugs, end_checks(sc, sch, bugs), max_steps=max_steps, record=record)


def replay(scenario, scheme="rcu", schedule="", bugs=(), max_steps: int = MAX_STEPS) -> World:
    """Run ``schedule`` (CPU ids, e.g. ``"1*4 0"``; then the default: no
    preemption, lowest CPU first) on a live world with every event
    recorded.  Returns the World: ``.events``, ``.violations``,
    ``.diagram()``, ``.log()``."""
    return replay_world(world(scenario, scheme, bugs, max_steps=max_steps), schedule)


def replay_command(scenario, scheme, schedule="", bugs=(), width: int | None = None) -> str:
    """The shell command that replays a run: ``python -m s2pt replay
    SCENARIO --scheme SCHEME [--schedule '...'] [--bug B ...]``.

    ``schedule``: text or CPU ids ('' or []: the default order, no
    option); ``bugs``: those switched on, less the ones the scenario always
    switches on itself.  ``width``: break the line with shell continuations
    (`` \\``) so that no line is wider (an email)."""
    from .sim.search import format_schedule, parse_schedule
    sc = get_scenario(scenario)
    name = getattr(scheme, "name", scheme)
    sched = schedule if isinstance(schedule, str) else format_schedule(schedule)
    sched = format_schedule(parse_schedule(sched))
    parts = [f"python -m s2pt replay {sc.name}", f"--scheme {name}"]
    if sched:
        parts.append(f"--schedule '{sched}'")
    parts += [f"--bug {b}" for b in sorted(set(bugs) - set(sc.bugs))]
    if width is None:
        return " ".join(parts)
    lines, cur = [], parts[0]
    for p in parts[1:]:
        if len(cur) + 1 + len(p) + 2 > width:
            lines.append(cur + " \\")
            cur = "    " + p
        else:
            cur += " " + p
    return "\n".join(lines + [cur])


def explore(scenario, scheme="rcu", *, mode="exhaustive", runs=1000, depth=2, seed=0,
            preemptions=None, bugs=(), max_states=2_000_000, max_steps=MAX_STEPS,
            progress=False, details=True, check=False, cancel=None,
            symmetry=True, por=True, liveness=True) -> Result:
    """Search a scenario's interleavings for violations (see
    :func:`s2pt.sim.search.search`): ``mode`` "exhaustive" (the default,
    shortest schedules), "unreduced", "random" or "pct"; ``bugs`` switches
    historical bugs back on (:data:`s2pt.scenarios.BUGS`).  ``progress``
    (True: on stderr; a stream such as ``sys.stdout``; or ``fn(states, depth,
    frontier)``) and ``cancel`` (``fn() ->
    bool``) report on and stop a long exhaustive search."""
    w = world(scenario, scheme, bugs, max_steps=max_steps, record=False)
    return search(w, mode=mode, runs=runs, depth=depth, seed=seed, preemptions=preemptions,
                  max_states=max_states, details=details, check=check, progress=progress,
                  cancel=cancel, symmetry=symmetry, por=por, liveness=liveness)
