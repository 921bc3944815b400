"""What a bug found in one run is, and how it is explained.

A :class:`Violation` carries the step, the CPU, the kernel function on that
CPU's stack and a one-sentence explanation -- what the race diagram, the
explorer's summary and the widgets print.  :data:`KINDS` lists every kind
the engine can report.

Most violations are noticed by whoever performs an operation (memory sees a
use-after-free, the TLB model a stale translation, the BBM automaton a
break-before-make error); the scheduler sees deadlocks and livelocks; the
end-of-run checks a World is given (see :mod:`s2pt.checkers`) see leaks,
refcount errors and lost updates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..ops import OPS

__all__ = ["Violation", "KINDS"]

#: Every kind of violation the explorer can report, with what it means.
KINDS = {
    "use-after-free": "an access to a freed table page (software, hardware walker or walk cache)",
    "double-free": "a table page freed twice",
    "leak": "after rcu_barrier(), a table page neither reachable nor free",
    "refcount": "at quiescence, a table's page_count is not 1 + its counted entries, "
                "or an entry is still LOCKED",
    "lost-update": "the final IPA -> PA map is not one any serial order gives",
    "bbm": "a break-before-make violation (casemate's automaton)",
    "stale-tlb": "a translation served from a TLB entry the tables no longer grant",
    "isolation": "a host translation (tables, TLB or walk cache) reaches a page the pKVM "
                 "host gave away, after the hypervisor recorded the new owner",
    "deadlock": "no CPU can make progress, and several wait that have not finished",
    "starvation": "one CPU waits forever for something no other CPU will do: all the others "
                  "have finished",
    "livelock": "a CPU keeps stepping and never finishes: a cycle of the state graph that a "
                "fair scheduler can follow forever (in a live run: the step bound was exceeded)",
    "warn": "a WARN_ON in the walker fired",
    "lock": "a lock released by a CPU that does not hold it",
    "rcu": "unbalanced rcu_read_unlock()",
}

_PAGE = re.compile(r"(?:table page|page) (0x[0-9a-f]+)")


@dataclass
class Violation:
    """One bug found in one run."""
    kind: str
    message: str
    step: int | None = None          # event index (None: end-of-run check)
    cpu: int | None = None
    actor: str = ""
    function: str = ""               # innermost kernel function on the CPU's stack
    stack: tuple = ()
    explanation: str = ""

    def __str__(self):
        where = (f" at step {self.step} on {self.actor} in {self.function}()"
                 if self.step is not None else "")
        return f"{self.kind}{where}: {self.explanation}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "message": self.message, "step": self.step, "cpu": self.cpu,
                "actor": self.actor, "function": self.function, "explanation": self.explanation}

    # -- constructors -----------------------------------------------------------
    @classmethod
    def at_step(cls, world, ev, kind: str, message: str) -> "Violation":
        actor = world.actors[ev.cpu].name
        fn = ev.stack[-1] if ev.stack else "?"
        return cls(kind, message, ev.index, ev.cpu, actor, fn, ev.stack,
                   _explain(world, ev, kind, message, actor, fn))

    @classmethod
    def deadlock(cls, world, kind: str = "deadlock") -> "Violation":
        waits = [f"{world.actors[i].name} {world.blocked(i)}" for i in world.live()]
        head = ("no CPU can make progress: " if kind == "deadlock" else
                "every other CPU has finished, and nothing will ever wake this one: ")
        return cls(kind, "; ".join(waits), world.nsteps - 1, None, "", "", (),
                   head + "; ".join(waits) + ".")

    @classmethod
    def lasso(cls, world, cycle_start: int, message: str) -> "Violation":
        """A livelock found as a cycle in the state graph: the run replayed
        to the end of one turn of the cycle, which starts at step
        ``cycle_start``."""
        ev = world.events[-1] if world.events else None
        cpu = ev.cpu if ev is not None else None
        return cls("livelock", message, cycle_start, cpu,
                   world.actors[cpu].name if cpu is not None else "",
                   ev.stack[-1] if ev is not None and ev.stack else "?",
                   ev.stack if ev is not None else (), message + ".")

    @classmethod
    def livelock(cls, world, ev) -> "Violation":
        return cls("livelock", f"{world.nsteps} steps", ev.index, ev.cpu,
                   world.actors[ev.cpu].name, ev.stack[-1] if ev.stack else "?", ev.stack,
                   f"the run exceeded the bound of {world.max_steps} steps without finishing: "
                   f"likely a CPU spinning or retrying forever.")

    @classmethod
    def at_end(cls, kind: str, message: str, explanation: str) -> "Violation":
        """A violation found by an end-of-run check (no step, no CPU)."""
        return cls(kind, message, explanation=explanation)


def _explain(world, ev, kind, message, actor, fn) -> str:
    if kind in ("use-after-free", "double-free"):
        m = _PAGE.search(message)
        page = int(m.group(1), 16) if m else None
        who = ""
        if page is not None:
            freed = world.frees.get(page >> world.pgt.page_shift)
            if freed is not None and freed[0] != ev.index:
                who = (f", which {world.actors[freed[1]].name} freed at step {freed[0]} "
                       f"(in {freed[2]}())")
        if kind == "double-free":
            return f"{actor} ({fn}) freed table page {page:#x} again{who}." if page else \
                f"{actor} ({fn}): {message}."
        if "walk cache" in message:
            return (f"{actor} ({fn}) freed a table page that a CPU's walk cache still points "
                    f"to: {message}.")
        if page is None:
            return f"{actor} ({fn}) followed a pointer read from freed memory: {message}."
        op = OPS.get(ev.op[0])
        verb = op.verb if op is not None and op.verb else f"did {ev.op[0]} on"
        return (f"{actor} ({fn}) {verb} table page {page:#x}{who}: it still held a pointer "
                f"into a subtree that had been unlinked and freed.")
    if kind == "warn":
        return f"WARN_ON in {fn}() on {actor}: {message}."
    return f"{actor} ({fn}): {message}."
