"""What :func:`s2pt.compare` returns: verdict cells, cost cells, mutation
results and the :class:`Comparison` that holds them, with their JSON.

The tables and plots are :mod:`s2pt.comparison.report`'s and the "which to
choose" rows :mod:`s2pt.comparison.rules`'s; :class:`Comparison`'s methods
of the same names call them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from ..errors import S2ptError
from ..explorer import replay, replay_command
from ..sim.search import NEVER_ARISES
from . import report, rules
from .costs import SHOWN, RunCosts
from .report import kind_abbrev

__all__ = ["Cell", "CostCell", "MutationResult", "Comparison"]


# ---------------------------------------------------------------------------
# Verdict cells
# ---------------------------------------------------------------------------

@dataclass
class Cell:
    """One scheme against one scenario.

    ``status``: "safe" (nothing found, and the scenario's race arose in
    some run), "never-arises" (nothing found, and no run reached the
    scenario's race window: safe for that reason alone), "violation",
    "not-declared" or "unsupported" (the scenario could not be built).
    ``verdict``: the search's verdict in words (s2pt.sim.search.Result.verdict);
    ``race``: what it learnt about the race window (reached or not, each
    stage's first schedule, and why it never arises).  ``found``: kind ->
    ``{"schedule", "steps", "message", "explanation", "diagram"}`` (a
    livelock adds "cycle_start", "stem" and "cycle": its lasso), the
    shortest schedule of each kind found.  ``mismatches``: disagreements
    with the scenario's declaration (empty when it holds).
    """
    scheme: str
    scenario: str
    status: str
    mode: str = ""                 # "exhaustive", or "sampled: ..." for a sampled verdict
    complete: bool = False
    states: int = 0
    executions: int = 0
    seconds: float = 0.0
    found: dict = field(default_factory=dict)
    why: str = ""
    expected: list = field(default_factory=list)     # the kinds declared Sometimes
    mismatches: list = field(default_factory=list)
    bugs: list = field(default_factory=list)         # bugs switched on (the scenario's own too)
    verdict: str = ""
    race: dict | None = None

    @property
    def kinds(self) -> list:
        return list(self.found)

    @property
    def safe(self) -> bool:
        """Nothing found (whether or not the race arose)."""
        return self.status in ("safe", "never-arises")

    @property
    def race_arose(self) -> bool | None:
        return None if self.race is None else bool(self.race.get("reached"))

    def text(self) -> str:
        """The cell in words: "safe (exhaustive, 49,777 states)", ..."""
        if self.status == "not-declared":
            return f"not declared: {self.why}" if self.why else "not declared"
        if self.status == "unsupported":
            return f"unsupported: {self.why}"
        how = (f"exhaustive, {self.states:,} states" if self.mode == "exhaustive"
               else self.mode)
        if self.mode == "exhaustive" and not self.complete:
            how += ", NOT complete: state budget reached"
        if not self.found:
            if not self.complete:
                return f"nothing found ({how})"
            if self.status == "never-arises":
                return f"{NEVER_ARISES}: {self.race.get('reason', '')} ({how})"
            if self.race:
                return f"safe ({how}; the race arose: {self.race['what']})"
            return f"safe ({how})"
        parts = [f"{k}: schedule '{f['schedule']}'" + ("" if f["schedule"] else
                                                       " (the default order)")
                 for k, f in self.found.items()]
        return "; ".join(parts) + f" ({how})"

    def short(self) -> str:
        """A few characters for the grid (see :func:`kind_abbrev`)."""
        mark = "!" if self.mismatches else ""
        if self.status == "not-declared":
            return "-"
        if self.status == "unsupported":
            return "n/a"
        if not self.found:
            if self.status == "never-arises":
                return "no race" + mark
            return ("safe" if self.complete else "safe?") + mark
        ks = [kind_abbrev(k) for k in self.found]
        return ("+".join(ks) if len(ks) <= 2 else f"{ks[0]}+{len(ks) - 1}") + mark

    def diagram(self, kind: str | None = None) -> str:
        """The race diagram of ``kind`` (default: the first kind found)."""
        return self._found(kind)["diagram"]

    def schedule(self, kind: str | None = None) -> str:
        return self._found(kind)["schedule"]

    def world(self, kind: str | None = None):
        """Replay the shortest schedule of ``kind`` on a live World."""
        return replay(self.scenario, self.scheme, self.schedule(kind), bugs=self.bugs)

    def replay_command(self, kind: str | None = None) -> str:
        return replay_command(self.scenario, self.scheme, self.schedule(kind), self.bugs)

    def _found(self, kind):
        if not self.found:
            raise S2ptError(f"{self.scheme} x {self.scenario}: no violation was found")
        if kind is None:
            kind = next(iter(self.found))
        if kind not in self.found:
            raise S2ptError(f"kind={kind!r}: not found in {self.scheme} x {self.scenario} "
                            f"(found: {', '.join(self.found)})")
        return self.found[kind]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Cell":
        return cls(**d)



# ---------------------------------------------------------------------------
# Cost cells and mutation results
# ---------------------------------------------------------------------------

@dataclass
class CostCell:
    """One scheme at one vCPU count: the verdict and the measured costs.

    ``verdict``: "safe" / the kinds found / "nothing found" (the search hit
    its state bound) / "unsupported: ..." (the scenario cannot be built
    with that many vCPUs); ``mode``: how the verdict was reached
    ("exhaustive, N states", and ", NOT complete" when the search hit its
    bound); ``complete``: the search covered every state.  ``runs``: the
    :class:`~s2pt.comparison.costs.RunCosts` of each measured run (the
    default schedule, then seeded random and PCT ones); ``summary``: per
    metric, the mean, min and max over the clean runs.
    """
    scheme: str
    vcpus: int
    scenario: str
    verdict: str
    mode: str = ""
    complete: bool = False
    found: dict = field(default_factory=dict)
    runs: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    clean_runs: int = 0
    primitives: list = field(default_factory=list)
    grace_periods: bool = False
    seconds: float = 0.0

    @property
    def supported(self) -> bool:
        return not self.verdict.startswith("unsupported")

    @property
    def safe(self) -> bool:
        return self.verdict == "safe"

    def mean(self, metric: str):
        s = self.summary.get(metric)
        return s["mean"] if s else None

    def max(self, metric: str):
        s = self.summary.get(metric)
        return s["max"] if s else None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "CostCell":
        d = dict(d)
        d["runs"] = [RunCosts(**r) for r in d.get("runs", [])]
        return cls(**d)


@dataclass
class MutationResult:
    name: str
    scheme: str
    scenario: str
    bugs: list
    expected: str
    found: list
    status: str                   # "caught", "caught-other", "missed", "error"
    what: str = ""
    schedule: str = ""
    mode: str = ""
    message: str = ""

    @property
    def caught(self) -> bool:
        return self.status == "caught"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)



# ---------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------

@dataclass
class Comparison:
    """What :func:`compare` returns: verdict cells, cost cells, the "which to
    choose" rows and (optionally) the mutation results, with the settings
    and timings.  ``str()`` is the plain-text report; :meth:`to_json` /
    :meth:`from_json` round-trip it."""
    schemes: list
    scenarios: list
    cells: dict                                   # (scheme, scenario) -> Cell
    costs: dict = field(default_factory=dict)     # (scheme, vcpus) -> CostCell
    logging_refaults: dict = field(default_factory=dict)   # scheme -> int
    #: scheme -> {"primitives": [...], "grace_periods": bool, "scenarios": [...]}: what the
    #: default-schedule run of each declared bug-free scenario used.
    usage: dict = field(default_factory=dict)
    mutations: list | None = None
    settings: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    # -- verdicts ----------------------------------------------------------------
    def cell(self, scheme: str, scenario: str) -> Cell:
        try:
            return self.cells[(scheme, scenario)]
        except KeyError:
            raise S2ptError(f"no cell {scheme!r} x {scenario!r} in this comparison "
                            f"(schemes: {', '.join(self.schemes)}; scenarios: "
                            f"{', '.join(self.scenarios)})") from None

    @property
    def mismatches(self) -> list:
        """``[(scheme, scenario, message)]``: declarations that did not hold."""
        return [(c.scheme, c.scenario, m) for c in self.cells.values() for m in c.mismatches]

    @property
    def declared_cells(self) -> list:
        return [c for c in self.cells.values()
                if c.status in ("safe", "never-arises", "violation")]

    def safe_schemes(self) -> list:
        """Schemes with no violation in any declared, bug-free scenario compared
        (and in no cost run)."""
        out = []
        for s in self.schemes:
            cells = [c for c in self.cells.values() if c.scheme == s
                     and c.status in ("safe", "never-arises", "violation") and not c.bugs]
            if not cells or any(c.found for c in cells):
                continue
            if any(cc.found for cc in self.costs.values() if cc.scheme == s):
                continue
            out.append(s)
        return out

    # -- costs -------------------------------------------------------------------
    @property
    def vcpus(self) -> list:
        return sorted({n for _, n in self.costs})

    def cost(self, scheme: str, vcpus: int) -> CostCell:
        try:
            return self.costs[(scheme, vcpus)]
        except KeyError:
            raise S2ptError(f"no cost cell for scheme {scheme!r} at {vcpus} vCPUs") from None

    @property
    def top_vcpus(self) -> int | None:
        """The largest vCPU count with measured costs."""
        ns = [n for (_, n), c in self.costs.items() if c.summary]
        return max(ns) if ns else None

    def choose(self) -> list:
        """The "which to choose" rows: ``[(need, [schemes], rule)]``, one per
        need of :data:`s2pt.comparison.rules.NEEDS` (:func:`s2pt.comparison.rules.choose`)."""
        return rules.choose(self)

    # -- mutations -----------------------------------------------------------------
    @property
    def mutation_score(self) -> tuple | None:
        if self.mutations is None:
            return None
        return sum(m.caught for m in self.mutations), len(self.mutations)

    @property
    def ok(self) -> bool:
        """Every declaration held (and, with mutations, every one was caught)."""
        if self.mismatches:
            return False
        if self.mutations is not None and not all(m.caught for m in self.mutations):
            return False
        return True

    # -- text ------------------------------------------------------------------------

    # -- text and plots (s2pt.comparison.report) -------------------------------------
    def verdict_table(self, width: int = 100) -> str:
        """The grid (rows: schemes; columns: scenarios, numbered), the legend,
        then each cell in words."""
        return report.verdict_table(self, width)

    def verdict_markdown(self) -> str:
        """The verdict grid as a Markdown table for a notebook (rows:
        scenarios; columns: schemes)."""
        return report.verdict_markdown(self)

    def costs_table(self) -> str:
        """Rows: scheme x vCPU count; columns: the verdict, then each cost."""
        return report.costs_table(self)

    def choose_table(self) -> str:
        return report.choose_table(self)

    def mutation_table(self) -> str:
        return report.mutation_table(self)

    def text(self) -> str:
        return report.text(self)

    __str__ = text

    def _repr_pretty_(self, p, cycle):
        p.text(self.text())

    def plot(self, metrics=SHOWN, ncols: int | None = None):
        """A matplotlib Figure: each metric against the vCPU count, one line
        per scheme, each scheme in its own colour and marker
        (:func:`s2pt.comparison.report.plot`)."""
        return report.plot(self, metrics, ncols)

    # -- JSON ----------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "schemes": list(self.schemes), "scenarios": list(self.scenarios),
            "cells": [c.to_json() for c in self.cells.values()],
            "mismatches": [list(m) for m in self.mismatches],
            "costs": [c.to_json() for c in self.costs.values()],
            "logging_refaults": dict(self.logging_refaults),
            "usage": {s: dict(u) for s, u in self.usage.items()},
            "choose": [{"need": n, "schemes": s, "rule": r} for n, s, r in self.choose()]
            if self.costs else [],
            "mutations": None if self.mutations is None else [m.to_json() for m in self.mutations],
            "mutation_score": list(self.mutation_score) if self.mutations is not None else None,
            "settings": dict(self.settings), "timings": dict(self.timings),
            "ok": self.ok,
        }

    @classmethod
    def from_json(cls, d) -> "Comparison":
        """The inverse of :meth:`to_json` (a dict or a JSON string)."""
        if isinstance(d, str):
            d = json.loads(d)
        cells = {}
        for c in d["cells"]:
            cell = Cell.from_json(c)
            cells[(cell.scheme, cell.scenario)] = cell
        costs = {}
        for c in d.get("costs", []):
            cc = CostCell.from_json(c)
            costs[(cc.scheme, cc.vcpus)] = cc
        muts = d.get("mutations")
        return cls(list(d["schemes"]), list(d["scenarios"]), cells, costs,
                   dict(d.get("logging_refaults", {})), dict(d.get("usage", {})),
                   None if muts is None else [MutationResult(**m) for m in muts],
                   dict(d.get("settings", {})), dict(d.get("timings", {})))
