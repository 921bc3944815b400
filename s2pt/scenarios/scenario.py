"""What a scenario and a mutation are (the registries are in :mod:`s2pt.scenarios`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import bugs as _bugs
from ..errors import S2ptError
from ..sim import window as W
from ..sim.search import NEVER, SOMETIMES
from ..sim.world import Setup

__all__ = ["Scenario", "Mutation", "SOMETIMES", "NEVER", "UNLINK_HELD", "INSTALL_RACE"]

#: The race windows (s2pt.sim.window) most scenarios are about.
UNLINK_HELD = W.window("a table is unlinked while another CPU holds a pointer into it",
                       W.unlinks(), W.unlinks_while_held())
INSTALL_RACE = W.window(
    "two CPUs race to change the same entry",
    W.any_of("a CPU's update meets another CPU's at the same entry",
             "no two CPUs ever update the same entry at once: the lock keeps them apart",
             W.loses_race(), W.unlinks_while_held()))


@dataclass
class Scenario:
    """A litmus test: ``builder(scheme, bugs, **params)`` builds the
    explorer's :class:`~s2pt.sim.world.Setup` (the table in a known state,
    one kernel path per CPU) under a teardown scheme.

    ``expect`` (scheme name -> ``{kind: SOMETIMES}``, every kind left out
    Never) and ``why_not`` (scheme name -> why the scenario does not declare
    it) of a shipped scenario come from the one declaration table
    (:data:`s2pt.scenarios.declarations.DECLARATIONS`); a scenario built by
    hand (a test's toy) gives them itself.  ``bugs``: bugs the scenario
    always switches on (:mod:`s2pt.bugs`).  ``window``: the race the scenario
    is about (s2pt.sim.window): the exhaustive search reports whether any
    run reached it, and a complete search that found nothing where none did
    is "safe: the race never arises".
    """
    name: str
    summary: str
    builder: object
    expect: dict = field(default_factory=dict)   # scheme name -> {kind: SOMETIMES}
    cpus: int = 2
    params: dict = field(default_factory=dict)
    bugs: frozenset = frozenset()     # bugs this scenario always switches on
    #: scheme name -> why this scenario does not declare it
    why_not: dict = field(default_factory=dict)
    window: object = None

    def build(self, scheme, bugs=frozenset()) -> Setup:
        self.check_scheme(getattr(scheme, "name", scheme))
        self.check_bugs(bugs)
        return self.builder(scheme, frozenset(bugs) | self.bugs, **self.params)

    def check_bugs(self, bugs) -> None:
        _bugs.check_bugs(bugs)

    def check_scheme(self, scheme: str) -> None:
        """Raise S2ptError unless this scenario declares outcomes for ``scheme``:
        a scheme that does not apply to the table a scenario races on has no
        meaningful verdict, so the explorer refuses it rather than guess."""
        if scheme in self.expect:
            return
        why = self.why_not.get(scheme, "")
        raise S2ptError(f"scenario {self.name!r} does not declare scheme {scheme!r} "
                        f"(it declares: {', '.join(self.expect)})" + (f": {why}" if why else ""))

    def expected(self, scheme: str, kind: str) -> str | None:
        """SOMETIMES, NEVER, or None when this scheme is not declared."""
        if scheme not in self.expect:
            return None
        return self.expect[scheme].get(kind, NEVER)

    def __repr__(self):
        return f"<scenario {self.name}: {self.summary}>"


@dataclass(frozen=True)
class Mutation:
    """A deliberately broken variant (in the style of TLC's
    ``EpochModel_buggy.cfg``): ``scheme`` with ``bugs`` switched on, run on
    ``scenario``, must show a violation of ``kind``.  ``python -m s2pt
    compare --mutations`` searches each one and scores caught / total."""
    name: str
    scheme: str
    bugs: frozenset
    scenario: str
    kind: str
    what: str
