"""Does a stored comparison (``notebooks/data/compare.json``) still say what
the registries say?  ``python -m s2pt compare --check``, in seconds: no
search is run.

The document must cover every scheme (:data:`s2pt.schemes.SCHEMES`), every
scenario (:data:`s2pt.scenarios.SCENARIOS`) in the registries' order, every
declaration of the one table (each declared cell complete and finding
exactly the kinds declared Sometimes; each undeclared cell giving the
table's reason), every mutation (caught, as registered), the cost cells of
the cost scenario, and only bug names :data:`s2pt.bugs.BUGS` knows.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..bugs import BUGS
from ..errors import S2ptError
from ..scenarios import MUTATIONS, SCENARIOS, SOMETIMES
from ..schemes import SCHEMES
from ..sim.search import declaration_mismatches, parse_schedule
from ..sim.violation import KINDS
from .costs import METRICS
from .results import Comparison
from .run import COST_SCENARIO, MAX_VCPUS, scaled_scenario

__all__ = ["check_json", "load", "DATA"]

#: Where the course keeps the comparison: the repository's notebooks/data/.
DATA = Path(__file__).resolve().parent.parent.parent / "notebooks" / "data" / "compare.json"


def check_json(doc) -> list:
    """The ways ``doc`` (a JSON string or a dict, as ``compare --json``
    writes it; :func:`load` reads a file) disagrees with the registries; []
    when it agrees."""
    try:
        cmp = Comparison.from_json(doc)
    except (ValueError, KeyError, TypeError) as e:
        return [f"not a comparison that s2pt.comparison.Comparison.from_json reads: "
                f"{type(e).__name__}: {e}"]
    out = []
    if cmp.schemes != list(SCHEMES):
        out.append(f"schemes {cmp.schemes} are not the registry's {list(SCHEMES)}")
    if cmp.scenarios != list(SCENARIOS):
        out.append(f"scenarios {cmp.scenarios} are not the registry's {list(SCENARIOS)}")
    out += _cells(cmp) + _costs(cmp) + _mutations(cmp)
    named = {b for c in cmp.cells.values() for b in c.bugs}
    named |= {b for m in cmp.mutations or () for b in m.bugs}
    out += [f"bug {b!r}: not in s2pt.bugs.BUGS" for b in sorted(named - set(BUGS))]
    return out


def _cells(cmp) -> list:
    out = []
    for name in SCENARIOS:
        sc = SCENARIOS[name]
        for s in SCHEMES:
            c = cmp.cells.get((s, name))
            where = f"cell {s} x {name}"
            if c is None:
                out.append(f"{where}: missing")
                continue
            if c.bugs != sorted(sc.bugs):
                out.append(f"{where}: bugs {c.bugs}, the scenario's are {sorted(sc.bugs)}")
            if s not in sc.expect:
                if c.status != "not-declared" or c.why != sc.why_not.get(s, ""):
                    out.append(f"{where}: not declared (why: {sc.why_not.get(s)!r}), "
                               f"but the document says {c.status}: {c.why!r}")
                continue
            declared = [k for k in KINDS if sc.expected(s, k) == SOMETIMES]
            if c.status not in ("safe", "never-arises", "violation"):
                out.append(f"{where}: declared, but the document says {c.status}")
                continue
            if not c.complete:
                out.append(f"{where}: the search was not complete ({c.mode})")
            if c.expected != declared:
                out.append(f"{where}: expected {c.expected}, the table declares {declared}")
            wrong = declaration_mismatches(sc, s, {k: f["schedule"] for k, f in c.found.items()},
                                           c.complete)
            out += [f"{where}: {m}" for m in wrong]
            if c.mismatches:
                out.append(f"{where}: the document records mismatches {c.mismatches}")
            for k, f in c.found.items():
                try:
                    parse_schedule(f["schedule"])
                except S2ptError as e:
                    out.append(f"{where}: {k}'s schedule {f['schedule']!r}: {e}")
    extra = sorted(set(cmp.cells) - {(s, n) for s in SCHEMES for n in SCENARIOS})
    out += [f"cell {s} x {n}: not a scheme and scenario of the registries" for s, n in extra]
    return out


def _costs(cmp) -> list:
    out = []
    if not cmp.costs:
        return ["no cost cells (compare(costs=False)?)"]
    if cmp.settings.get("cost_scenario") != COST_SCENARIO:
        out.append(f"costs measured on {cmp.settings.get('cost_scenario')!r}, not on "
                   f"{COST_SCENARIO!r}")
    top = cmp.settings.get("vcpus", MAX_VCPUS)
    base = SCENARIOS[COST_SCENARIO]
    for s in SCHEMES:
        for n in range(1, top + 1):
            c = cmp.costs.get((s, n))
            where = f"cost cell {s} at {n} vCPUs"
            if c is None:
                out.append(f"{where}: missing")
            elif s not in base.expect:
                if c.supported:
                    out.append(f"{where}: {COST_SCENARIO} does not declare {s}")
            elif c.scenario != scaled_scenario(n).name:
                out.append(f"{where}: measured on {c.scenario}, not {scaled_scenario(n).name}")
            elif not c.complete:
                out.append(f"{where}: the search was not complete ({c.mode})")
            elif set(c.summary) - set(METRICS):
                out.append(f"{where}: unknown metrics {sorted(set(c.summary) - set(METRICS))}")
    return out


def _mutations(cmp) -> list:
    if cmp.mutations is None:
        return ["no mutations (compare --mutations)"]
    out = []
    got = {m.name: m for m in cmp.mutations}
    for name, m in MUTATIONS.items():
        r = got.get(name)
        if r is None:
            out.append(f"mutation {name}: missing")
            continue
        mine = (r.scheme, r.scenario, sorted(r.bugs), r.expected, r.what)
        want = (m.scheme, m.scenario, sorted(m.bugs), m.kind, m.what)
        if mine != want:
            out.append(f"mutation {name}: {mine} is not the registry's {want}")
        if r.status != "caught":
            out.append(f"mutation {name}: {r.status}")
    out += [f"mutation {n}: not in the registry" for n in got if n not in MUTATIONS]
    return out


def load(path) -> dict:
    """The JSON document at ``path`` (S2ptError when it cannot be read)."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as e:
        raise S2ptError(f"{path}: cannot be read ({e.strerror or e})") from None
    except ValueError as e:
        raise S2ptError(f"{path}: not JSON ({e})") from None
