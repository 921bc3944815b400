"""The interleaving engine: CPUs as generators, schedulers, reports.

* :mod:`s2pt.sim.sync`   -- locks and RCU (blocking operations), the machine
* :mod:`s2pt.sim.world`  -- a scenario's CPUs stepping on one table
* :mod:`s2pt.sim.search` -- manual, random, PCT and exhaustive schedulers
* :mod:`s2pt.sim.report` -- race diagrams and state logs
"""

from .world import Actor, Event, Setup, World

__all__ = ["Actor", "Event", "Setup", "World"]
