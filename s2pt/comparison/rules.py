"""Which scheme to choose: the rules, as functions of a comparison.

perfbook ends its comparison of deferred-processing mechanisms with a table
of needs and the mechanisms that meet them; :func:`choose` generates that
table (notebook 08, section 4) from a :class:`~s2pt.comparison.Comparison`
-- its verdicts, the costs at the largest vCPU count measured, and what
each scheme's runs used -- one rule per need (:data:`NEEDS`), each stated
in words beside its answer.

Each rule is a function of the comparison with its thresholds as
arguments, so that exercise 09's grader (solutions/09-choose-a-scheme.ipynb)
can state the exercise's stricter rules with the same code: the least
blocking, ties only (``many_vcpus(cmp, factor=1, plus=0)``), the fewest
retained pages alone (``memory_tight(cmp, grace_factor=None)``).

Only the comparison's data are read (``safe_schemes()``, ``costs``,
``usage``): this module imports nothing of the library.
"""

from __future__ import annotations

__all__ = ["NEEDS", "choose", "at_top", "least", "el2", "many_vcpus", "memory_tight",
           "simplest"]

#: The "which to choose" table's needs, in order: name -> the rule, in words.
NEEDS = {
    "pKVM at EL2 / no RCU": (
        "safe in every bug-free scenario compared, and no run ever starts or waits for an RCU "
        "grace period (no call_rcu(), no synchronize_rcu()): EL2 has no RCU"),
    "many vCPUs": (
        "safe, and at the largest vCPU count measured its lock-blocked steps per fault are at "
        "most twice the least among the safe schemes, plus one"),
    "memory-tight": (
        "safe, and at the largest vCPU count measured its peak retained table pages are the "
        "least among the safe schemes and its mean unlink-to-free steps at most 1.25x the "
        "least"),
    "simplest code": (
        "safe, and its runs use the fewest distinct synchronisation primitives among the safe "
        "schemes (locks, RCU calls, atomics and refcount operations, by the op table)"),
}

#: Slack for comparing means computed in floating point.
_EPS = 1e-9


def at_top(cmp) -> dict:
    """scheme -> its cost cell at the largest vCPU count it was measured at,
    for each safe scheme with measured costs."""
    top = {}
    for s in cmp.safe_schemes():
        cells = [c for (sch, _), c in cmp.costs.items() if sch == s and c.summary]
        if cells:
            top[s] = max(cells, key=lambda c: c.vcpus)
    return top


def least(values: dict, factor: float = 1.0, plus: float = 0.0) -> list:
    """The keys of ``values`` whose value is at most ``factor`` times the
    least value, plus ``plus`` (None values never qualify): ``factor=1,
    plus=0`` is the least and its ties."""
    vals = {k: v for k, v in values.items() if v is not None}
    if not vals:
        return []
    bound = factor * min(vals.values()) + plus + _EPS
    return [k for k, v in vals.items() if v <= bound]


def el2(cmp) -> list:
    """pKVM at EL2: the safe schemes none of whose runs -- each declared
    bug-free scenario's default run (``usage``) and every cost run -- starts
    or waits for an RCU grace period."""
    return [s for s in cmp.safe_schemes()
            if not cmp.usage.get(s, {}).get("grace_periods", False)
            and not any(c.grace_periods for (sch, _), c in cmp.costs.items() if sch == s)]


def many_vcpus(cmp, factor: float = 2.0, plus: float = 1.0) -> list:
    """Many vCPUs: the safe schemes whose mean lock-blocked steps per fault
    at the largest vCPU count are at most ``factor`` times the least, plus
    ``plus``."""
    return least({s: c.mean("blocked_per_fault") for s, c in at_top(cmp).items()}, factor, plus)


def memory_tight(cmp, grace_factor: float | None = 1.25) -> list:
    """Memory-tight: the safe schemes with the least peak retained table
    pages (the maximum over the runs) at the largest vCPU count, and --
    unless ``grace_factor`` is None -- mean unlink-to-free steps at most
    ``grace_factor`` times the least among the safe schemes (a scheme that
    frees nothing there has no such steps, and passes)."""
    top = at_top(cmp)
    peaks = {s: c.max("retained_peak") for s, c in top.items()}
    fewest = least(peaks)
    if grace_factor is None:
        return fewest
    grace = {s: top[s].mean("grace_steps") for s, p in peaks.items() if p is not None}
    known = [g for g in grace.values() if g is not None]
    if not known:
        return fewest
    bound = grace_factor * min(known) + _EPS
    return [s for s in fewest if grace[s] is None or grace[s] <= bound]


def simplest(cmp) -> list:
    """Simplest code: the safe schemes whose cost runs use the fewest
    distinct synchronisation primitives (on the cost scenario every scheme
    runs the same CPUs)."""
    prims = {s: len(set().union(*[set(c.primitives) for (sch, _), c in cmp.costs.items()
                                  if sch == s]))
             for s in at_top(cmp)}
    return least(prims)


def choose(cmp) -> list:
    """The "which to choose" rows: ``[(need, [schemes], rule)]``, one per
    :data:`NEEDS`."""
    rows = [el2(cmp), many_vcpus(cmp), memory_tight(cmp), simplest(cmp)]
    return [(need, r, rule) for (need, rule), r in zip(NEEDS.items(), rows)]
