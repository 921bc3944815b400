"""Every teardown scheme side by side: verdicts, costs, mutations (``s2pt.compare``).

``s2pt.compare()`` (and ``python -m s2pt compare``) generates, never by hand:

1. **The verdict table.**  Rows are schemes (:data:`s2pt.schemes.SCHEMES`),
   columns are scenarios (:data:`s2pt.scenarios.SCENARIOS`).  Each cell is
   the explorer's exhaustive stateful search of that scenario under that
   scheme: "safe (exhaustive, N states)", or each violation kind with its
   shortest schedule (and the race diagram, :meth:`Cell.diagram`), or "not
   declared: <why>" when the scenario refuses the scheme.  Every declared
   cell is checked against the scenario's declaration (the one table,
   :mod:`s2pt.scenarios.declarations`): a mismatch is reported loudly and
   makes the command exit 1.

2. **Costs measured in the model**, per scheme, on one scenario scaled from
   1 to 4 vCPUs (:data:`COST_SCENARIO`, ``collapse-vs-fault-4``: vCPU0
   collapses a level-3 table into a block while each other vCPU, an
   interchangeable reader, takes an access-flag fault on the same page of
   it).  For each scheme and vCPU count: the verdict, an exhaustive search
   (the explorer's symmetry reduction searches the readers once), then
   ``runs`` recorded runs -- the default schedule, then seeded random and
   PCT schedules, alternately -- each measured by :func:`run_costs`: table
   pages retained while waiting to be freed (peak and mean), steps from
   unlink to free (the grace period), CPU-steps blocked on locks, atomic
   operations per fault (cmpxchg, xchg, refcount operations), -EAGAIN
   retries, mappings the guest lost (each one a refault) and TLBIs.  A
   separate sequential measure, :func:`logging_off_refaults`, counts the
   guest refaults that turning dirty logging off causes (the price of an
   unmap-everything scheme).  :meth:`Comparison.plot` draws each cost
   against the vCPU count, and :meth:`Comparison.choose_table` is the
   perfbook-style "which to choose" table generated from the same numbers,
   each need with its rule.

3. **Mutations**: every deliberately broken variant
   (``s2pt.scenarios.MUTATIONS``) is searched exhaustively and scored
   caught / total.

Everything is generic over the registries: a scheme, scenario or mutation
added there appears here without a change.  The modules:

* :mod:`~s2pt.comparison.run`: :func:`compare` -- the searches, the cost
  runs and the mutations as jobs in worker processes, cached by content
  (:mod:`~s2pt.comparison.cache`);
* :mod:`~s2pt.comparison.costs`: what one run cost (:func:`run_costs`,
  :data:`METRICS`);
* :mod:`~s2pt.comparison.results`: the cells and the :class:`Comparison`,
  with their JSON;
* :mod:`~s2pt.comparison.rules`: the "which to choose" rules (:data:`NEEDS`),
  which exercise 09's grader reuses;
* :mod:`~s2pt.comparison.report`: the tables and the plots;
* :mod:`~s2pt.comparison.check`: ``compare --check``, a stored comparison
  against the registries, without a search.
"""

from __future__ import annotations

from .costs import (METRICS, SHOWN, RunCosts, blocked_over_all_schedules, logging_off_refaults,
                    run_costs)
from .report import STYLES, kind_abbrev
from .results import Cell, Comparison, CostCell, MutationResult
from .rules import NEEDS
from .run import (COST_SCENARIO, COST_SCENE, MAX_JOBS, MAX_STATES, MAX_VCPUS, compare, mutations,
                  scaled_scenario)

__all__ = ["compare", "Comparison", "Cell", "CostCell", "RunCosts", "MutationResult",
           "run_costs", "logging_off_refaults", "blocked_over_all_schedules", "mutations",
           "scaled_scenario", "METRICS", "SHOWN", "NEEDS", "STYLES", "COST_SCENARIO",
           "COST_SCENE", "MAX_VCPUS", "MAX_STATES", "MAX_JOBS", "kind_abbrev"]
