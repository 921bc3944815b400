"""Test-wide set-up.

CI runs the suite with no standard input at all (file descriptor 0
closed).  IPython, which ipywidgets imports, asks the encoding of
``sys.stdin`` at import time, and pytest's stand-in for stdin answers only
while ``sys.__stdin__`` exists: give the process an empty stdin then, so
the widget tests run the same with and without a terminal.
"""

import os
import sys

if sys.__stdin__ is None:
    sys.__stdin__ = open(os.devnull)      # noqa: SIM115 -- lives as long as the process


# -- the contract suite's count of generated cases (tests/test_contract*.py) --

import collections  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def contract_counts(request):
    """A Counter the contract suites add their generated cases to:
    ``tried`` (every call made), ``passed`` (every call that kept the
    contract), and a key per outcome.  Printed at the end of the run."""
    config = request.config
    if not hasattr(config, "_s2pt_contract"):
        config._s2pt_contract = collections.Counter()
    return config._s2pt_contract


#: Module-scoped fixtures that take a minute to build (a whole compare()
#: run, every exercise built): the tests that use one are put in one xdist
#: group, so that it is built once, not once per worker.  (pytest 9.2 broke
#: pytest-xdist 3.8's loadgroup: it appends the group to a test's id, which
#: pytest 9.2 no longer lets it change, and every group was spread over the
#: workers.  pyproject.toml keeps pytest below 9.2.  The fixtures also cache
#: their value per process, so a worker builds each at most once.)
SHARED_FIXTURES = {"cmp": "compare", "serial": "compare-run", "fresh": "exercises"}


@pytest.hookimpl(tryfirst=True)       # before xdist reads the groups into the node ids
def pytest_collection_modifyitems(config, items):
    """The browser tests share one JupyterLab and one Chromium: keep them on
    one xdist worker (``--dist loadgroup``), and out of the developer's loop
    (they are ``slow``); keep the users of each of :data:`SHARED_FIXTURES`
    on one worker too."""
    for item in items:
        if "tests/browser/" in str(item.fspath).replace("\\", "/"):
            # A JupyterLab and a Chromium: CI's run, not the developer's loop.
            item.add_marker(pytest.mark.xdist_group("browser"))
            item.add_marker(pytest.mark.slow)
            continue
        for fixture, group in SHARED_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(group))
                break
    # The slow tests first, in their order, then the rest in theirs: xdist
    # hands work out in this order, so the long tests (a notebook, a browser,
    # a whole search) start early and the short ones even out the end,
    # instead of one worker finishing a half-minute test alone.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_sessionfinish(session):
    """On an xdist worker: hand the contract counts to the controller."""
    counts = getattr(session.config, "_s2pt_contract", None)
    if counts and hasattr(session.config, "workeroutput"):
        session.config.workeroutput["s2pt_contract"] = dict(counts)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """On the xdist controller: add up the workers' contract counts."""
    out = getattr(node, "workeroutput", {}).get("s2pt_contract")
    if out:
        config = node.config
        if not hasattr(config, "_s2pt_contract"):
            config._s2pt_contract = collections.Counter()
        config._s2pt_contract.update(out)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    counts = getattr(config, "_s2pt_contract", None)
    if counts:
        rest = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())
                         if k not in ("tried", "passed"))
        terminalreporter.write_line(
            f"bad-input contract: {counts['passed']} of {counts['tried']} generated cases "
            f"kept it ({rest})")
