"""The explorer's snapshot protocol: what every part of a machine promises.

The interleaving explorer (:mod:`s2pt.sim.search`) prunes a state it has
seen before.  That is sound only if "the state" includes *everything* that
can change what happens next.  Every object a CPU step can read or write is
therefore a declared **part** of the machine (:mod:`s2pt.sim.state` keeps
the one registry of them), and each part is one of:

* :class:`Stateful` -- ``sim_state()`` returns a hashable value that
  captures every field that can affect the future, and ``sim_restore(state)``
  makes the object equal to the one that returned it: table memory and the
  allocator, locks and RCU, a vCPU's TLB, casemate's break-before-make
  automaton, pKVM's record of page owners, a VM and its memslots (their
  dirty bitmaps);
* :class:`Frozen` -- it never changes while the explorer runs: a scheme, a
  table's configuration, the context a scenario hands its CPUs;
* :class:`Stateless` -- it records or counts, but nothing it keeps can
  change what happens next (a trace, the World's own bookkeeping).

Fields that are neither state nor fixed -- counters, logs, caches -- are
listed in ``sim_ignore``.  That is a promise too: nothing a CPU does may
depend on them.

The explorer refuses, with an :class:`~s2pt.S2ptError` naming the object,
its type and this rule, an object of any other kind that a scenario shares
with its CPUs or that a CPU can reach from its local variables.  In its
checking mode (``explore(check=True)``, run by the tests on every declared
scenario and scheme) it audits every promise after every step:

* every field of every part not listed in ``sim_ignore`` is a function of
  the machine state (two steps that reach the same state agree on it), so a
  field forgotten in ``sim_state`` is caught instead of silently merging two
  states; a :class:`Frozen` part's fields never change at all;
* each step is computed a second time with every ignored field perturbed
  (:func:`perturb`), and must do exactly the same thing.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod

__all__ = ["Stateful", "Stateless", "Frozen", "owner_of", "audit_fields", "perturb"]


class Stateful(ABC):
    """A part of the machine whose state the explorer snapshots."""

    #: Fields that are not state: counters, logs, back-pointers to other
    #: parts.  Everything else is audited in the explorer's checking mode;
    #: ignored fields are perturbed there, and no step may depend on them.
    sim_ignore: tuple = ()

    #: Fields set when the World is built that no step changes (a dispatch
    #: table, the list of observers): the checking mode audits them against
    #: the World as built, as it audits a Frozen part, not against each
    #: visit of a machine state.
    sim_fixed: tuple = ()

    @abstractmethod
    def sim_state(self):
        """A hashable snapshot of every field that affects the future."""

    @abstractmethod
    def sim_restore(self, state) -> None:
        """Make this object equal to the one whose ``sim_state()`` was ``state``."""


class Frozen:
    """A part that never changes while the explorer runs (a scheme, a
    configuration, a scenario's context object, a value such as a fault).

    Shared with the CPUs (``Setup.share``) it is fingerprinted by name; held
    in a CPU's locals without being shared, it is fingerprinted by value.
    The checking mode audits that none of its fields outside ``sim_ignore``
    ever changes."""

    sim_ignore: tuple = ()


class Stateless:
    """An observer that records or counts but never changes what happens
    next (a trace, the World's own bookkeeping for its views).  The explorer
    accepts it without a snapshot."""


def owner_of(hook):
    """The object a registered hook (a bound method) belongs to, or the
    hook itself for a plain function."""
    return getattr(hook, "__self__", hook)


def audit_fields(obj, fixed: bool = True) -> dict:
    """The fields of ``obj`` that its snapshot must cover (for the audit);
    without its ``sim_fixed`` ones if ``fixed`` is false."""
    skip = set(getattr(obj, "sim_ignore", ()))
    if not fixed:
        skip.update(getattr(obj, "sim_fixed", ()))
    fields = getattr(obj, "__dict__", None)
    if fields is None:
        return {s: getattr(obj, s) for s in all_slots(type(obj)) if s not in skip}
    out = {k: v for k, v in fields.items() if k not in skip}
    for s in all_slots(type(obj)):
        if s not in skip and s != "__dict__" and hasattr(obj, s):
            out[s] = getattr(obj, s)
    return out


@functools.cache
def all_slots(cls) -> tuple:
    """The ``__slots__`` of ``cls`` and its bases (a class's slots never
    change: the checking mode asks once per class)."""
    out = []
    for c in cls.__mro__:
        s = c.__dict__.get("__slots__", ())
        out += [s] if isinstance(s, str) else list(s)
    return tuple(out)


#: What :func:`perturb` adds to an ignored number: large and odd, so that
#: a step that reads the field (compares it, indexes with it) behaves
#: differently, while one that only adds to it does not care.
PERTURBATION = 7919


def perturb(value):
    """A copy of an ignored field's value that no honest step can tell
    apart from it: numbers shifted, counts (dicts and Counters of numbers)
    shifted entry by entry.  Returns ``value`` itself when it cannot be
    perturbed (a log, a back-pointer): the audit then relies on the
    field-by-field check alone."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value + PERTURBATION
    if isinstance(value, float):
        return value + PERTURBATION
    if isinstance(value, dict) and value and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
        out = value.copy()
        for k, v in value.items():
            out[k] = v + PERTURBATION
        return out
    return value
