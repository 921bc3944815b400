"""Shared by the widget and trace tests (a module, not a conftest): each scenario x declared
scheme and the schedule to show for it, found once per session."""

from __future__ import annotations

import functools

import pytest

import s2pt
from s2pt.scenarios import SCENARIOS
from s2pt.sim.search import SOMETIMES

#: (scenario, scheme) for every scheme each shipped scenario declares.
ALL_CASES = [(name, scheme) for name, sc in SCENARIOS.items() for scheme in sc.expect]


def sometimes(name: str, scheme: str) -> list:
    """The violation kinds the scenario declares Sometimes under the scheme."""
    return sorted(k for k, v in SCENARIOS[name].expect[scheme].items() if v == SOMETIMES)


#: Scenarios whose counterexamples take a search of millions of states
#: (collapse-vs-fault-4: 1.3 M under none): sampled under a scheme whose
#: search is small.
CHEAPER = {"collapse-vs-fault-4": "write-lock"}


def _sample() -> list:
    """What the trace and widget tests need to see: every scenario once
    (under the first scheme it declares a violation for, else its first),
    and every scheme once (on collapse-vs-fault).  Their properties are a
    scenario's (what its CPUs, tables and shared state look like) or a
    scheme's (its locks and teardown in the panels), not a pair's; the
    exhaustive searches of every pair run in tests/test_explorer.py and
    tests/test_machine_state.py."""
    out = []
    for name, sc in SCENARIOS.items():
        if name in CHEAPER:
            out.append((name, CHEAPER[name]))
            continue
        bad = [s for s in sc.expect if [k for k in sometimes(name, s) if k != "livelock"]]
        out.append((name, (bad or list(sc.expect))[0]))
    out += [("collapse-vs-fault", s) for s in SCENARIOS["collapse-vs-fault"].expect
            if ("collapse-vs-fault", s) not in out]
    return out


#: The sample the trace and widget tests run (see _sample).
CASES = _sample()

#: Scenarios whose run, once its counterexample (or its default order) has
#: played, walks a 512-entry table several times: thousands of steps, each
#: a panel of the trace and of the widget.  Their cases are ``slow``.
LONG_RUNS = {"split-vs-fault", "split-double-put", "collapse-vs-hw-walk", "logging-mismatch",
             "collapse-vs-fault-3"}


def sampled(pairs) -> list:
    """``pairs`` of (scenario, scheme) as pytest params, each one not in the
    sample (:data:`CASES`: every scenario once, every scheme once) marked
    ``slow``.  For tests of a property that every pair has: the developer's
    loop (``-m "not slow"``) checks the sample, CI checks every pair."""
    fast = set(CASES)
    return [pytest.param(n, s, id=f"{n}-{s}",
                         marks=[] if (n, s) in fast else [pytest.mark.slow])
            for n, s in pairs]


def trace_cases() -> list:
    """:data:`CASES` as pytest params for the trace and widget tests, those
    of :data:`LONG_RUNS` marked ``slow``."""
    return [pytest.param(n, s, id=f"{n}/{s}",
                         marks=[pytest.mark.slow] if n in LONG_RUNS else [])
            for n, s in CASES]


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
