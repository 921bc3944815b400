"""The explorer's snapshot protocol: what every stateful part of a machine promises.

The interleaving explorer (:mod:`s2pt.sim.search`) prunes a state it has
seen before.  That is sound only if "the state" includes *everything* that
can change what happens next: table memory, locks and RCU, and every
observer with state of its own (a vCPU's TLB, casemate's break-before-make
automaton, pKVM's record of page owners).  So each such part implements
:class:`Stateful`:

* ``sim_state()`` returns a hashable value that captures every field that
  can affect the future;
* ``sim_restore(state)`` makes the object equal to the one that returned
  ``state``.

The explorer refuses, with an :class:`~s2pt.S2ptError`, to search a machine
that has an observer which is not :class:`Stateful` (or declared
:class:`Stateless`), and in its checking mode (``explore(check=True)``, run by
the tests on every scenario) it audits each object: after a restore, every
field not listed in ``sim_ignore`` must equal what it was when the state was
taken.  A field forgotten in ``sim_state`` is then caught, not silently
merged with another state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

__all__ = ["Stateful", "Stateless", "owner_of", "audit_fields"]


class Stateful(ABC):
    """A part of the machine whose state the explorer snapshots."""

    #: Fields that are not state: counters, logs, back-pointers to shared
    #: objects.  Everything else is audited in the explorer's checking mode.
    sim_ignore: tuple = ()

    @abstractmethod
    def sim_state(self):
        """A hashable snapshot of every field that affects the future."""

    @abstractmethod
    def sim_restore(self, state) -> None:
        """Make this object equal to the one whose ``sim_state()`` was ``state``."""


class Stateless:
    """An observer that records or counts but never changes what happens
    next (a trace, the World's own bookkeeping for its views).  The explorer
    accepts it without a snapshot."""


def owner_of(hook):
    """The object a registered hook (a bound method) belongs to, or the
    hook itself for a plain function."""
    return getattr(hook, "__self__", hook)


def audit_fields(obj) -> dict:
    """The fields of ``obj`` that its snapshot must cover (for the audit)."""
    skip = set(getattr(obj, "sim_ignore", ()))
    fields = getattr(obj, "__dict__", None)
    if fields is None:
        return {s: getattr(obj, s) for s in getattr(type(obj), "__slots__", ()) if s not in skip}
    return {k: v for k, v in fields.items() if k not in skip}
