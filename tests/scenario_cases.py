"""Shared by the widget and trace tests (a module, not a conftest): each scenario x declared
scheme and the schedule to show for it, found once per session."""

from __future__ import annotations

import functools

import s2pt
from s2pt.scenarios import SCENARIOS
from s2pt.sim.search import SOMETIMES

#: (scenario, scheme) for every scheme each shipped scenario declares.
CASES = [(name, scheme) for name, sc in SCENARIOS.items() for scheme in sc.expect]


def sometimes(name: str, scheme: str) -> list:
    """The violation kinds the scenario declares Sometimes under the scheme."""
    return sorted(k for k, v in SCENARIOS[name].expect[scheme].items() if v == SOMETIMES)


@functools.lru_cache(maxsize=None)
def shortest(name: str, scheme: str):
    """(kind, schedule text) of the shortest counterexample for the first
    declared Sometimes kind (found by the exhaustive search), or None.  A
    livelock is left out: its lasso has no end for a live run to reach
    (tests/test_machine_state.py replays lassos through the state space)."""
    kinds = [k for k in sometimes(name, scheme) if k != "livelock"]
    if not kinds:
        return None
    r = s2pt.explore(name, scheme)
    f = min((r.found[k] for k in kinds), key=lambda f: len(f.schedule))
    return f.kind, f.schedule_text
