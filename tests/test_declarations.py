"""The one declaration table (s2pt/scenarios/declarations.py): complete,
checked at import, and the only source of every scenario's expect/why_not.

(What each declaration says is checked by searching: tests/test_explorer.py,
tests/test_machine_state.py.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import s2pt
from s2pt.scenarios import (ABA_SAME, DECLARATIONS, MUTATIONS, SCENARIOS, SOMETIMES, WINDOWS,
                            table_problems)
from s2pt.scenarios import declarations as D
from s2pt.schemes import SCHEMES
from s2pt.sim.violation import KINDS

PKG = Path(s2pt.__file__).resolve().parent
ALL = list(SCENARIOS.values()) + [ABA_SAME]


def test_every_scenario_declares_every_scheme_or_says_why_not():
    assert table_problems(DECLARATIONS, ALL, list(SCHEMES)) == []
    assert list(DECLARATIONS) == list(SCENARIOS) + [ABA_SAME.name]   # the table orders them
    for sc in ALL:
        row = DECLARATIONS[sc.name]
        assert set(sc.expect) | set(sc.why_not) == set(SCHEMES)
        assert not set(sc.expect) & set(sc.why_not)
        for scheme, cell in row.items():
            if isinstance(cell, str):
                assert sc.why_not[scheme] == cell and sc.expected(scheme, "leak") is None
                with pytest.raises(s2pt.S2ptError) as e:
                    sc.check_scheme(scheme)
                assert cell in str(e.value)
            else:
                sc.check_scheme(scheme)
                assert {k for k in KINDS if sc.expected(scheme, k) == SOMETIMES} == set(cell)
                assert sc.expect[scheme] == {k: SOMETIMES for k in cell}


def test_each_scenario_has_one_race_window():
    assert set(WINDOWS) == set(SCENARIOS)
    assert all(WINDOWS[n] is sc.window is not None for n, sc in SCENARIOS.items())


def test_the_mutations_are_checked_against_the_table():
    for m in MUTATIONS.values():
        sc = SCENARIOS[m.scenario]
        assert m.scheme in sc.expect and m.kind in KINDS and sc.bugs <= m.bugs
    assert list(MUTATIONS) == list(D.MUTATIONS)


@pytest.mark.parametrize("break_it,needle", [
    (lambda t: t["collapse-vs-fault"].pop("rcu"), "collapse-vs-fault x rcu: not declared, and no "
                                                  "reason why not"),
    (lambda t: t["collapse-vs-fault"].__setitem__("nope", ()), "collapse-vs-fault x nope: no such "
                                                               "scheme"),
    (lambda t: t["unmap-vs-fault"].__setitem__("none", ("use-after-fre",)), "neither a tuple"),
    (lambda t: t["unmap-vs-fault"].__setitem__("none", ["use-after-free"]), "neither a tuple"),
    (lambda t: t["unmap-vs-fault"].__setitem__("none", " "), "an empty why-not"),
    (lambda t: t["unmap-vs-fault"].__setitem__("none", ("leak", "leak")), "names a kind twice"),
    (lambda t: t.pop("map-vs-map"), "scenario 'map-vs-map' has no row"),
    (lambda t: t.__setitem__("map-vs-nothing", {}), "row 'map-vs-nothing': no such scenario"),
])
def test_a_broken_table_is_named_cell_by_cell(break_it, needle):
    table = {n: dict(row) for n, row in DECLARATIONS.items()}
    break_it(table)
    problems = table_problems(table, ALL, list(SCHEMES))
    assert any(needle in p for p in problems), problems


def test_importing_the_scenarios_with_a_hole_in_the_table_fails():
    """The check runs at import: a table that leaves one cell out stops
    ``import s2pt.scenarios`` with the cell named.  (The table's module is
    loaded and changed first, on its own, so that the scenarios find it
    already imported.)"""
    probe = subprocess.run(
        [sys.executable, "-c",
         "import sys, importlib.util as u; "
         "spec = u.spec_from_file_location('s2pt.scenarios.declarations', %r); "
         "D = u.module_from_spec(spec); spec.loader.exec_module(D); "
         "sys.modules[spec.name] = D; "
         "del D.DECLARATIONS['split-vs-fault']['write-lock']; "
         "import s2pt.scenarios" % str(PKG / "scenarios" / "declarations.py")],
        capture_output=True, text=True, cwd=PKG.parent)
    assert probe.returncode != 0
    assert "split-vs-fault x write-lock: not declared, and no reason why not" in probe.stderr
