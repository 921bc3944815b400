"""Schedulers: manual, seeded random, seeded PCT, and exhaustive search.

A schedule is a list of CPU ids, one per step; manual, random and PCT runs
just choose the next id and step a live :class:`~s2pt.sim.world.World`.

**Exhaustive search is stateful** (TLC and Spin style), because that was
measured fastest on this problem (``synchronize_rcu`` conflicts with every
reader, which starves DPOR).  A state is

* the machine: every table page (refcount, freed, contents), the allocator's
  free list, the memcaches, locks and RCU (readers, grace periods, queued
  callbacks) and the fields of stateful observers such as per-vCPU TLBs;
* for each CPU, the position and local variables of its suspended generator,
  down its ``yield from`` chain (a *node*).

Two paths that reach the same state have the same futures, so the second is
cut.  Generators cannot be copied, so instead of replaying prefixes the
explorer **memoises each CPU's transitions**: node + result of its operation
-> next node (a CPU's code between two yields reads nothing shared, so that
is a function).  Moving to a stored state is then a restore of a few table
pages, not a replay; a live generator is needed only to discover a new node,
and is rebuilt by feeding a fresh one its own recorded results.  For CPUs
whose code between yields does touch shared state (a hardware walker that
fills its TLB), the memo is keyed on the machine state too, and the rebuild
restores the machine state each result was sent in.

The search is breadth-first, so the first violation of each kind is at the
smallest depth: the shortest counterexample.  Every counterexample is then
replayed on a live world, which both checks the memo (the replay must find
the same violation) and produces the events for the race diagram and the
state log.
"""

from __future__ import annotations

import gc
import itertools
import random
from array import array
import sys
import time
from collections import deque
from contextlib import contextmanager
from heapq import heappop, heappush
from dataclasses import dataclass, field

import numpy as np

from ..errors import KernelBug, S2ptError
from .. import validate
from ..ops import BLOCKING, OPS, NOMEM as _NOMEM, OBSERVED as _OBSERVED, PARTS as _PARTS
from ..ops import READS as _READS, REFS as _REFS, STORES as _WRITES, SYNC as _SYNC
from . import state as _state
from .state import NODE_BITS, NODE_MASK
from .violation import KINDS, Violation
from .por import Reduction
from .symmetry import Symmetry, compose, invert
from .window import BUILD, TEARDOWN, StepFacts
from .world import World, default_choice, frames, freeze, stack_names, stuck_kind

__all__ = ["search", "replay_world", "serial_outcomes", "Result", "Found", "parse_schedule",
           "format_schedule", "StateSpace", "SOMETIMES", "NEVER", "NEVER_ARISES"]

#: A scenario's declared outcome for one kind of violation under one scheme.
SOMETIMES, NEVER = "Sometimes", "Never"
#: The verdict of a complete search that found nothing and in which no run
#: reached the scenario's race window (s2pt.sim.window).
NEVER_ARISES = "safe: the race never arises"


# ---------------------------------------------------------------------------
# Schedule strings
# ---------------------------------------------------------------------------

#: The longest schedule parse_schedule() builds unless told otherwise (far
#: beyond any run's max_steps; it keeps "0*9999999999999" from filling memory).
SCHEDULE_LIMIT = 1_000_000


def parse_schedule(text, n: int | None = None, limit: int | None = SCHEDULE_LIMIT) -> list:
    """"0 0 1 1 0" -> [0, 0, 1, 1, 0]; "1*4 0" is shorthand for "1 1 1 1 0";
    a list of CPU ids is checked as it is.  ``n``: the number of CPUs;
    ``limit``: the most steps allowed, checked before a ``*COUNT`` is
    expanded (see :func:`s2pt.validate.schedule`)."""
    return validate.schedule(text, n, limit)


def format_schedule(schedule, compact: bool = True) -> str:
    """[1, 1, 1, 1, 0] -> "1*4 0" (runs of 3 or more are compacted)."""
    if not compact:
        return " ".join(map(str, schedule))
    out = []
    for cpu, grp in itertools.groupby(schedule):
        n = len(list(grp))
        out += [f"{cpu}*{n}"] if n >= 3 else [str(cpu)] * n
    return " ".join(out)


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------

@dataclass
class Found:
    """One violation kind found by a search, with its shortest schedule."""
    kind: str
    schedule: list
    message: str = ""
    violation: object = None         # checkers.Violation from the live replay
    diagram: str = ""
    log: str = ""
    #: A livelock's schedule is a lasso: the steps from ``cycle_start`` on
    #: repeat forever.
    cycle_start: int | None = None

    @property
    def schedule_text(self) -> str:
        return format_schedule(self.schedule)

    @property
    def cycle(self) -> list:
        """The repeated part of a livelock's lasso ([] otherwise)."""
        return [] if self.cycle_start is None else self.schedule[self.cycle_start:]

    def to_json(self) -> dict:
        out = {"kind": self.kind, "schedule": self.schedule_text, "steps": len(self.schedule),
               "diagram": self.diagram}
        if self.cycle_start is not None:
            out["cycle_start"] = self.cycle_start
            out["stem"] = format_schedule(self.schedule[:self.cycle_start])
            out["cycle"] = format_schedule(self.cycle)
        if self.violation is not None:
            out.update({k: v for k, v in self.violation.to_json().items() if k != "kind"})
        return out


def declaration_mismatches(scenario, scheme: str, found: dict, complete: bool) -> list:
    """Mismatches between what a search of ``scenario`` under ``scheme``
    found (``found``: kind -> its schedule, in words) and the scenario's
    declaration: a kind declared Never that was found, a kind declared
    Sometimes that a complete search never found."""
    out = []
    for kind in KINDS:
        exp = scenario.expected(scheme, kind)
        if exp is None:
            continue
        if exp == SOMETIMES and kind not in found and complete:
            out.append(f"{kind}: declared Sometimes, never found")
        elif exp != SOMETIMES and kind in found:
            out.append(f"{kind}: declared Never, found with schedule {found[kind]}")
    return out


@dataclass
class Result:
    scenario: str
    scheme: str
    mode: str
    complete: bool
    seconds: float
    states: int = 0
    transitions: int = 0
    executions: int = 0
    found: dict = field(default_factory=dict)          # kind -> Found
    bound_hits: int = 0
    settings: dict = field(default_factory=dict)
    #: What the search learnt about the scenario's race window (s2pt.sim.window):
    #: {"what", "reached", "stages": [{"what", "reached", "transitions",
    #: "schedule"}], "reason" when not reached}; None without a window.
    window: dict | None = None

    @property
    def violations(self) -> list:
        return list(self.found.values())

    @property
    def race_arose(self) -> bool | None:
        """Did some run reach the scenario's race window?  None: no window."""
        return None if self.window is None else bool(self.window["reached"])

    @property
    def verdict(self) -> str:
        """One of "violation", "safe" (complete, nothing found, the race
        arose), "safe: the race never arises" (complete, nothing found, and
        no run reached the race window), "nothing found" (incomplete)."""
        if self.found:
            return "violation"
        if not self.complete:
            return "nothing found"
        if self.race_arose is False:
            return NEVER_ARISES
        return "safe"

    @property
    def kinds(self) -> set:
        return set(self.found)

    def check_declared(self) -> list:
        """Mismatches between this result and the scenario's declaration
        (a Never that was found; a Sometimes not found by a complete search)."""
        return declaration_mismatches(self._scenario, self.scheme,
                                      {k: f.schedule_text for k, f in self.found.items()},
                                      self.complete)

    def to_json(self) -> dict:
        out = {"scenario": self.scenario, "scheme": self.scheme, "mode": self.mode,
               "complete": self.complete, "seconds": round(self.seconds, 3),
               "violations": [f.to_json() for f in self.found.values()]}
        if self.mode in ("exhaustive", "unreduced"):
            out["states"] = self.states
            out["transitions"] = self.transitions
        out["executions"] = self.executions
        out.update(self.settings)
        out["verdict"] = self.verdict
        if self.window is not None:
            out["window"] = self.window
        return out

    def summary(self) -> str:
        what = (f"{self.states:,} states, {self.transitions:,} transitions"
                if self.mode in ("exhaustive", "unreduced") else f"{self.executions:,} executions")
        head = (f"{self.scenario} under {self.scheme}: {self.mode} search, {what}, "
                f"{self.seconds:.2f} s, {'complete' if self.complete else 'NOT complete'}")
        if self.bound_hits:
            head += f" ({self.bound_hits:,} choices exceeded the preemption bound)"
        if not self.found:
            if self.verdict == NEVER_ARISES:
                return (head + f"\nno violation found; {NEVER_ARISES}: "
                        f"{self.window['reason']} (race window: {self.window['what']})")
            if self.window is not None and self.window["reached"]:
                first = self.window["stages"][-1]
                return (head + f"\nno violation found; the race arose "
                        f"({self.window['what']}: {first['transitions']:,} transitions, first "
                        f"with schedule {first['schedule'] or '(the default order)'})")
            return head + "\nno violation found"
        lines = [head]
        for f in self.found.values():
            lines.append(f"\n{f.kind.upper()}: {f.violation if f.violation else f.message}")
            lines.append(f"shortest schedule: {f.schedule_text or '(none needed: the default order)'}"
                         f"  (then: no preemption, lowest CPU first)")
            if f.diagram:
                lines.append("")
                lines.append(f.diagram)
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):
        p.text(self.summary())


# ---------------------------------------------------------------------------
# The state space
# ---------------------------------------------------------------------------

class _NullLog:
    """Stands in for the TLBI log during a search (it would grow forever)."""
    count = 0

    def add(self, *a, **k):
        pass

    def __len__(self):
        return 0


class History:
    """The results a CPU was fed on its way to a position (and, for an
    impure CPU, the machine state each left), as a sequence of ``(result,
    machine state)`` entries: the entries after its parent's history, and
    that parent.  A new position's history is one entry longer than the
    last; copying the whole tuple each time made a CPU's thousand-step walk
    cost a million copied entries, and as much memory."""
    __slots__ = ("parent", "tail", "n")

    def __init__(self, parent, tail: tuple):
        self.parent, self.tail = parent, tail
        self.n = len(tail) + (parent.n if parent is not None else 0)

    def __iter__(self):
        parts, h = [], self
        while h is not None:
            parts.append(h.tail)
            h = h.parent
        for tail in reversed(parts):
            yield from tail

    def __len__(self):
        return self.n

    def __add__(self, more):
        return History(self, tuple(more))


class Node:
    """One CPU's suspended position: its next operation and how it got here
    (``key``: its fingerprint, the frozen frames; ``pointers``: the table
    pages its locals point into, computed when a race window asks)."""
    __slots__ = ("cpu", "op", "stack", "edges", "hist", "done", "key", "pointers", "cls", "hid")

    def __init__(self, cpu, op, stack, hist, done=False, key=None):
        self.cpu, self.op, self.stack, self.hist, self.done = cpu, op, stack, hist, done
        self.edges = {}
        self.key = key
        self.pointers = None
        self.cls = None              # its class, for a symmetric CPU (s2pt.sim.symmetry)
        self.hid = None              # its history's id (StateSpace._hist_id)


#: What a CPU position says about whether it can step (StateSpace.run).
_DONE, _RUNS, _MAY_BLOCK = 0, 1, 2


class StateSpace:
    """Hashable states over one World, with memoised CPU transitions.

    A state is ``(machine id, nodes)``: the machine state ``(pages,
    allocator, memcaches, sync, observers)`` is interned to a small integer,
    and ``nodes`` holds each CPU's node id.  A transition is a function of
    the machine state and the stepping CPU's node alone, so it is memoised
    on ``(machine id, node id)``: CPUs that only read leave the machine as
    it was, and the other CPUs' positions do not matter, so most steps of a
    search are one dictionary lookup and never touch the live machine.
    """

    def __init__(self, world: World, check: bool = False, symmetry: bool = True,
                 por: bool = True, liveness: bool = True):
        self.w = w = world
        #: Fingerprint only the locals a CPU may still read (s2pt.sim.liveness).
        self.liveness = liveness
        w.record = False
        self.m = m = w.machine
        self.pgt = pgt = w.pgt
        self.mm = mm = pgt.mm
        pgt.mmu.tlbi_log = _NullLog()
        self.check = check
        self.shift = mm.page_shift
        self.pfns = sorted(mm.pages)
        self.index = {pfn: k for k, pfn in enumerate(self.pfns)}
        self.pages = [mm.pages[p] for p in self.pfns]
        self.cdata, self.cids = [], {}          # page contents, interned
        self.pdata, self.pids = [], {}          # (content id, *PAGE_STATE fields), interned
        #: The fields of struct page that are state (s2pt.sim.state.PAGE_STATE).
        self.page_fields = tuple(f for f in _state.PAGE_STATE if f != "table")
        self.live = _Live(len(self.pages))
        self.live.content = [self._content(k) for k in range(len(self.pages))]
        self.live.pages = tuple(self._pid(k) for k in range(len(self.pages)))
        self.registry = w.state                 # s2pt.sim.state: the one machine state
        self.mcs = list(self.registry.memcaches)
        self.stateful = list(self.registry.parts)
        self.impure = [not a.pure for a in w.actors]
        self.daemon = [a.daemon for a in w.actors]
        self.n = w.n
        #: Interchangeable CPUs (s2pt.sim.symmetry); None when there are none
        #: or the caller asked for no symmetry reduction.
        sym = Symmetry(self) if symmetry else None
        self.sym = sym if sym else None
        #: Partial-order reduction (s2pt.sim.por); None when switched off.
        self.por = Reduction(self) if por else None
        self.nodes: list[Node] = []
        self.node_ids: dict = {}
        self.gens: dict = {}
        #: Check mode computes every step twice; the second computation
        #: advances generators of its own (node id -> generator).
        self.spare: dict = {}
        self.mstates: list = []                 # machine id -> machine state tuple
        self.mids: dict = {}                    # machine state tuple -> machine id
        self.tmemo: dict = {}                   # machine id << NODE_BITS | node id -> transition
        #: node id -> _DONE, _RUNS or _MAY_BLOCK (its next op has a blocking rule)
        self.run: list = []
        self.bmemo: dict = {}                   # machine id << NODE_BITS | node id -> blocked?
        self._held: dict = {}                   # machine id -> pfns each MMU walk cache holds
        self._queued: dict = {}                 # machine id -> pfns the RCU callbacks hold
        #: The scenario's race window (s2pt.sim.window) and the step facts it needs.
        self.window = getattr(w.scenario, "window", None)
        self.needs = self.window.needs if self.window is not None else frozenset()
        self.facts = None
        self._linked_memo: dict = {}
        self._children_memo: dict = {}          # content id -> children_of
        self._parents_memo: dict = {}           # page ids -> {child pfn: parent pfns}
        self._ancestors_memo: dict = {}         # (page ids, pfn) -> ancestors_of
        self._holders = None
        self.end_memo: dict = {}
        #: (parent history id, history entry) -> history id (see _hist_id).
        self.hist_ids: dict = {}
        #: (machine id, CPU, history id) -> a run of private steps from there (run_alone).
        self.runs: dict = {}
        self.scoped_runs: dict = {}       # scope -> its runs (run_alone)
        #: (CPU, history id) -> what the CPU's (pure) program does, fed that
        #: history: (next op, its stack, done, return value, violations); and
        #: the node made there, if any (run_alone).
        self.prog: dict = {}
        self.hnode: dict = {}
        self.live.alloc = (tuple(mm.free_list), mm.allocated)
        self.live.mc = self._mc_state()
        self.live.sync = m.sim_state()
        self.live.st = self._st_state()
        mstate = self.machine_state()
        ids = []
        for i in range(self.n):
            gen = w.cpus[i]
            ids.append(self._node_from(i, gen, w.pending[i], History(None, ()), w.results[i],
                                       mstate))
        self.live.mid = self._intern(mstate)
        self.initial = (self.live.mid, tuple(ids))

    # -- machine snapshots ------------------------------------------------------
    def _content(self, k):
        b = self.pages[k].table.tobytes()
        cid = self.cids.get(b)
        if cid is None:
            import numpy as np
            cid = len(self.cdata)
            self.cids[b] = cid
            self.cdata.append(np.frombuffer(b, dtype=np.uint64))
        return cid

    def _pid(self, k):
        p = self.pages[k]
        key = (self.live.content[k],) + tuple([getattr(p, f) for f in self.page_fields])
        pid = self.pids.get(key)
        if pid is None:
            pid = len(self.pdata)
            self.pids[key] = pid
            self.pdata.append(key)
        return pid

    def _mc_state(self):
        return tuple(tuple(p.pfn for p in mc.objects) for mc in self.mcs)

    def _st_state(self):
        """The other parts' states: each one's ``sim_state()`` (the snapshot
        protocol, s2pt.snapshot): observers, then shared objects."""
        if not self.stateful:
            return ()
        return tuple(o.sim_state() for o in self.stateful)

    def machine_state(self, full=True) -> tuple:
        if full:
            if len(self.mm.pages) != len(self.pfns):
                raise S2ptError("a table page was allocated from the page allocator during "
                                "the run; scenarios must fill their memcaches up front")
            self.live.content = [self._content(k) for k in range(len(self.pages))]
            self.live.pages = tuple(self._pid(k) for k in range(len(self.pages)))
            self.live.alloc = (tuple(self.mm.free_list), self.mm.allocated)
            self.live.mc = self._mc_state()
            self.live.sync = self.m.sim_state()
            self.live.st = self._st_state()
        return (self.live.pages, self.live.alloc, self.live.mc, self.live.sync, self.live.st)

    def _intern(self, mstate) -> int:
        mid = self.mids.get(mstate)
        if mid is None:
            mid = self.mids[mstate] = len(self.mstates)
            self.mstates.append(mstate)
        return mid

    def restore(self, s):
        """Make the live machine equal to state ``s`` (or machine id ``s``)."""
        mid = s if isinstance(s, int) else s[0]
        if mid != self.live.mid:
            self._restore(self.mstates[mid])
            self.live.mid = mid

    def _restore(self, s):
        """Make the live machine equal to machine state tuple ``s``."""
        self.live.forget("mid")
        pages = s[0]
        if pages is not self.live.pages:
            live = list(self.live.pages) if self.live.pages is not None else [None] * len(pages)
            for k, pid in enumerate(pages):
                if live[k] != pid:
                    key = self.pdata[pid]
                    cid = key[0]
                    page = self.pages[k]
                    for f, v in zip(self.page_fields, key[1:]):
                        setattr(page, f, v)
                    if self.live.content[k] != cid:
                        page.table[:] = self.cdata[cid]
                        self.live.content[k] = cid
            self.live.pages = pages
        if s[1] != self.live.alloc:
            self.mm.free_list[:] = s[1][0]
            self.mm.allocated = s[1][1]
            self.live.alloc = s[1]
        if s[2] != self.live.mc:
            for mc, pfns in zip(self.mcs, s[2]):
                mc.objects = [self.mm.pages[p] for p in pfns]
            self.live.mc = s[2]
        if s[3] != self.live.sync:
            self.m.sim_restore(s[3])
            self.live.sync = s[3]
        if s[4] != self.live.st:
            for o, key in zip(self.stateful, s[4]):
                o.sim_restore(key)
            self.live.st = s[4]

    def _invalidate(self):
        """The live machine no longer matches any snapshot: the next
        restore rewrites everything."""
        self.live.forget()

    def _after_op(self, op):
        """Update the live snapshot after ``op``; return the machine state."""
        name = op[0]
        alloc = self.live.alloc[1]
        if name in _READS:
            pass
        elif name in _WRITES or name in _REFS:
            k = self.index.get(op[1] >> self.shift)
            if k is not None:
                page = self.pages[k]
                if name in _WRITES or page.freed:
                    self.live.content[k] = self._content(k)
                pid = self._pid(k)
                if pid != self.live.pages[k]:
                    lp = list(self.live.pages)
                    lp[k] = pid
                    self.live.pages = tuple(lp)
                if name in ("put_page", "free_page"):
                    self.live.alloc = (tuple(self.mm.free_list), self.mm.allocated)
        elif name == "zalloc_page":
            old = self.live.mc
            self.live.mc = self._mc_state()
            # The page handed out is a page table now (Page.ptdesc).
            left = {pfn for objs in self.live.mc for pfn in objs}
            for pfn in {pfn for objs in old for pfn in objs} - left:
                k = self.index.get(pfn)
                pid = self._pid(k)
                if pid != self.live.pages[k]:
                    lp = list(self.live.pages)
                    lp[k] = pid
                    self.live.pages = tuple(lp)
        elif name not in _NOMEM and name not in _PARTS:
            return self.machine_state(full=True)
        if name in _SYNC:
            self.live.sync = self.m.sim_state()
        if self.stateful and (name in _OBSERVED or name in _PARTS
                              or (name in _REFS and self.live.alloc[1] != alloc)):
            self.live.st = self._st_state()
        return (self.live.pages, self.live.alloc, self.live.mc, self.live.sync, self.live.st)

    # -- CPU nodes ---------------------------------------------------------------
    def _position(self, i, gen, op, ret=None) -> tuple:
        """CPU ``i``'s position as a hashable value: its frames and next
        operation, or ("done", its return value) once it has finished.  A
        symmetric CPU's is fingerprinted with its own identity abstracted,
        which is also its class's key (s2pt.sim.symmetry)."""
        fp = self.sym.fingerprint(i) if self.sym is not None else None
        opaque, vcpu = fp if fp is not None else (self.w.opaque, None)
        if gen is None:
            return ("done", freeze(ret, opaque))
        return (frames(gen, opaque, vcpu, self.liveness), freeze(op, opaque))

    def _node_from(self, i, gen, op, hist, ret, mstate):
        position = self._position(i, gen, op, ret)
        key = (i,) + position
        nid = self.node_ids.get(key)
        if nid is None:
            nid = len(self.nodes)
            if nid > NODE_MASK:
                raise S2ptError(f"the search reached {nid:,} CPU positions, more than the "
                                f"{NODE_MASK:,} a packed state can name (s2pt.sim.state.NODE_BITS)")
            self.node_ids[key] = nid
            node = Node(i, op, stack_names(gen) if gen is not None else (), hist, gen is None,
                        key)
            if self.sym is not None:
                node.cls = self.sym.cls(i, position)
            if self.impure[i] and not hist:
                node.hist = History(None, ((None, mstate),))
            self.nodes.append(node)
            self.run.append(_DONE if gen is None else
                            _MAY_BLOCK if op[0] in BLOCKING else _RUNS)
        if gen is not None and nid not in self.gens:
            self.gens[nid] = gen
        return nid

    def _rebuild(self, i, node, nid=None):
        """A fresh generator at ``node`` (id ``nid``): replay the CPU's own
        results.  In check mode, the replayed generator must come back to
        the same node: a program whose code between two operations reads
        shared state not passed through an operation would not."""
        w = self.w
        gen = self._replay(i, node.hist)
        if self.check and nid is not None:
            if self.node_ids.get((i,) + self._position(i, gen, node.op)) != nid:
                raise S2ptError(
                    f"CPU {i} ({w.name(i)}): replayed from its own results, its program did "
                    f"not come back to the same position (at {node.stack[-1] if node.stack else '?'}"
                    f"()): its code between two operations depends on something outside the "
                    f"machine state; read shared state only through an operation (s2pt.ops)")
        return gen

    def _replay(self, i, hist):
        """A fresh generator of CPU ``i`` fed the results ``hist`` (the
        history a node keeps)."""
        m = self.m
        gen = self.w.actors[i].start()
        impure = self.impure[i]
        entries = iter(hist)
        if impure:
            self.live.forget("st")
            self._restore(next(entries)[1])
        op = gen.send(None)
        for result, mstate in entries:
            if impure:
                self.live.forget("st")       # the code between yields changed observers
                self._restore(mstate)
            op = gen.send(result)
        if impure:
            self.live.forget("st")
            self.live.forget("pages")
        m.violations.clear()
        return gen

    def _advance(self, i, nid, node, result, mstate, fresh=False):
        """Run CPU ``i``'s code from ``node`` with ``result``: the edge.
        ``fresh``: from a rebuilt generator, registering nothing (check mode
        computes each step twice)."""
        m = self.m
        gen = self.spare.pop(nid, None) if fresh else self.gens.pop(nid, None)
        if gen is None:
            gen = self._rebuild(i, node, nid)
            if self.impure[i]:
                self._restore(mstate)
        elif fresh and self.impure[i]:
            self._restore(mstate)
        op2, done, ret, viols = self._resume(i, gen, result, mstate, node.op, node.stack)
        if viols:
            return (None, viols, None)
        if fresh:
            key = (i,) + self._position(i, None if done else gen, op2, ret)
            child = self.node_ids.get(key, -1)
            if not done and child >= 0 and child not in self.spare:
                self.spare[child] = gen          # a second generator at the child
        else:
            entry = (result, mstate if self.impure[i] else None)
            hist = node.hist + (entry,)
            child = self._node_from(i, None if done else gen, op2, hist, ret, None)
            cn = self.nodes[child]
            if cn.hid is None and cn.hist is hist and node.hid is not None:
                # A new node with this history: its id is one entry on from
                # the parent's (what _hist_id would find walking all of it).
                cn.hid = self._hist_next(node.hid, entry)
        post = self.machine_state(full=True) if self.impure[i] else None
        return (child, (), post)

    def _resume(self, i, gen, result, mstate, op, stack):
        """Send CPU ``i``'s generator the ``result`` of ``op`` (its code at
        ``stack``; None inside a run of private steps), on the machine state
        ``mstate`` the op left: (next op, done, return value, violations)."""
        m = self.m
        viols = []
        op2 = ret = None
        done = False
        try:
            op2 = gen.send(result)
        except StopIteration as stop:
            done, ret = True, stop.value
        except KernelBug as e:
            viols.append((e.kind, str(e).split(": ", 1)[-1]))
        viols += m.violations
        m.violations.clear()
        if self.impure[i]:
            self.live.forget("st")           # its code may have changed observers (a TLB fill)
        elif self.stateful:
            # A pure program changes shared parts only through operations:
            # its transition is memoised on (node, result), so a change made
            # between two yields would be lost on the next visit.
            after = self._st_state()
            if after != mstate[4]:
                parts = [type(o).__name__ for o, x, y in zip(self.stateful, mstate[4], after)
                         if x != y]
                raise S2ptError(
                    f"CPU {i} ({self.w.name(i)}) changed {', '.join(parts)} between two "
                    f"operations (after {op[0]} in "
                    f"{stack[-1] + '()' if stack else 'a run of private steps'}): a CPU program changes "
                    f"shared state only through an operation (s2pt.ops), or the explorer "
                    f"cannot see it")
        return op2, done, ret, viols

    def _hist_id(self, node) -> int:
        """A small integer naming ``node``'s history (the results its CPU was
        fed), interned one entry at a time: a pure program fed the same
        results is at the same position, with or without a node for it."""
        h = node.hid
        if h is None:
            h = 0
            for entry in node.hist:
                h = self._hist_next(h, entry)
            node.hid = h
        return h

    def _hist_next(self, h, entry) -> int:
        """The id of history ``h`` fed one more result ``entry`` (run_alone
        does the same inline, once per step of a run)."""
        ids = self.hist_ids
        x = ids.get((h, entry))
        if x is None:
            x = ids[(h, entry)] = len(ids) + 1
        return x

    def run_alone(self, mid, nid, i, guard, goes_on, cap, scope=None):
        """CPU ``i`` takes its step at node ``nid`` on machine ``mid``, then
        goes on stepping while ``goes_on(mid, i, op, guard, mid0)`` gives the
        guard of its next step (s2pt.sim.por: private for the same reason as
        the last; ``guard`` is the first step's): (the first step's
        transition, the machine id and node id where the run ends, its
        length), or False when the first step is a violation.

        The steps in between run on the live generator and are checked as
        every step is (the machine's checkers, the program's own), but no
        node is frozen for the positions they pass: only the end is a node.
        The run stops before a step that tells the race window something
        (the search sees those from a state it keeps) and before a
        violation (the machine is rolled back, and a program that raised is
        replayed to where it was), when the CPU finishes, before it performs
        an operation a third time on the same machine from the same call
        stack (a private loop, it seems), and after ``cap`` steps.

        Memoised on where it starts, named by the machine, the CPU and its
        history (:meth:`_hist_id`), and so on every position it passes: a
        run that starts there later, because the CPU got there a step at a
        time while some other CPU could still reach its page, goes on for
        the same reasons and ends where this one does.  ``scope``: the
        entries confined holders may touch (s2pt.sim.por), which decide
        where the run ends too: part of every key."""
        node = self.nodes[nid]
        hid = self._hist_id(node)
        runs = self.runs if scope is None else self.scoped_runs.setdefault(scope, {})
        r = runs.get((mid, i, hid))
        if r is not None:
            return r
        m, needs, ids, prog = self.m, self.needs, self.hist_ids, self.prog
        self.hnode[(i, hid)] = nid
        passed = [(mid, i, hid)]
        self.restore(mid)
        op, stack, done, ret = node.op, node.stack, False, None
        fed = []                     # the results fed since the node
        gen, at = None, 0            # a live generator, and how many of them it has seen

        def live():
            """A live generator at the current position."""
            nonlocal gen, at
            if gen is None:
                gen, at = self.gens.pop(nid, None), 0
                if gen is None:
                    gen, at = self._replay(i, node.hist + tuple(fed)), len(fed)
            for entry in fed[at:]:
                gen.send(entry[0])           # a pure program: what it does is known
            at = len(fed)
            m.violations.clear()
            return gen

        cur = mid
        count = 0
        first = None
        been: dict = {}
        # Check mode: a confined holder keeps its promise through the run.
        promise = self.por.promise(i, nid) if self.check and self.por is not None else None
        while True:
            if count:
                if done or count >= cap:
                    break
                # A third time at an operation it performed on this very
                # machine from the same call stack: a private loop, it seems,
                # so the run ends here and the search keeps the state (a
                # cheap test, which the free walk's two reads of each entry
                # pass; a run that ends early is still sound).
                here = (cur, op, stack)
                seen_here = been.get(here, 0)
                if seen_here == 2:
                    break
                been[here] = seen_here + 1
                g = goes_on(cur, i, op, guard, mid)
                if g is None or (needs and self._facts(i, stack, op) is not None):
                    break
                guard = g
            else:
                first = self._facts(i, stack, op) if needs else None
            m.cpu = i
            self.live.forget("mid")
            name = op[0]
            if promise is not None:
                self._audit_promise(cur, nid, i, op, None, f"CPU {i} ({self.w.name(i)}) "
                                    f"{name} in a run of private steps", promise)
            result = m.perform(op)
            if m.violations:
                m.violations.clear()
                self._invalidate()
                if not count:
                    runs[(mid, i, hid)] = False
                    return False
                self.restore(cur)            # the program has not seen the result
                break
            mstate = self._after_op(op)
            entry = (result, None)
            nhid = ids.get((hid, entry))          # _hist_next, inline: once a step
            if nhid is None:
                nhid = ids[(hid, entry)] = len(ids) + 1
            p = prog.get((i, nhid))
            if p is None:
                # What the program does with this history: run it (once).
                g = live()
                op2, done2, ret2, viols = self._resume(i, g, result, mstate, op, stack)
                at += 1
                if viols:
                    gen = None                   # it raised: a replay takes its place
                    p = (None, None, False, None, tuple(viols))
                else:
                    p = (op2, stack_names(g) if not done2 else (), done2, ret2, ())
                prog[(i, nhid)] = p
            if p[4]:
                self._invalidate()
                if not count:
                    runs[(mid, i, hid)] = False
                    return False
                self.restore(cur)
                break
            op, stack, done, ret = p[0], p[1], p[2], p[3]
            fed.append(entry)
            hid = nhid
            cur = self.live.mid = self._intern(mstate)
            passed.append((cur, i, hid))
            if self.check:
                # The Frozen objects once, where the run ends (below): one
                # the run changed stays changed, and a run of 16 thousand
                # steps would audit the same constant tables at each.
                self._audit(mstate, f"CPU {i} ({self.w.name(i)}) {name} in a run of private "
                                    f"steps", name, cur, frozen=False)
            count += 1
        if self.check and count:
            self.registry.audit_frozen(f"CPU {i} ({self.w.name(i)}) at the end of a run of "
                                       f"{count} private steps")
        end = self.hnode.get((i, hid))
        if end is None:
            hist = node.hist + tuple(fed)
            end = self._node_from(i, None, None, hist, ret, None) if done else \
                self._node_from(i, live(), op, hist, None, None)
            self.hnode[(i, hid)] = end
            en = self.nodes[end]
            if en.hid is None and en.hist is hist:
                en.hid = hid                 # the history the run interned on its way
        elif gen is not None and not done:
            self.gens.setdefault(end, live())
        if promise is not None:
            self._audit_promise(cur, nid, i, None, end, f"CPU {i} ({self.w.name(i)}) at the "
                                f"end of a run of {count} private steps", promise)
        passed.pop()                          # the end: a run from there goes on from scratch
        r = runs[passed[0]] = ((cur, end, (), first), cur, end, count)
        for k in range(1, len(passed)):
            runs[passed[k]] = ((cur, end, (), None), cur, end, count - k)
        return r

    # -- transitions ---------------------------------------------------------------
    def enabled(self, s) -> tuple:
        """The CPUs that can step in state ``s``, in CPU order."""
        return self.enabled_at(s[0], s[1])

    def enabled_at(self, mid, nodes) -> tuple:
        """:meth:`enabled` on machine ``mid`` with the CPUs at ``nodes``.
        Whether a CPU may block is a property of its position
        (``self.run``); whether it does is the op table's rule over locks
        and RCU alone, so it is memoised on (machine id, node id)."""
        run = self.run
        out = []
        for i, nid in enumerate(nodes):
            r = run[nid]
            if r == _RUNS or (r == _MAY_BLOCK and not self._blocked(mid, i, nid)):
                out.append(i)
        return tuple(out)

    def _blocked(self, mid, i, nid) -> bool:
        key = (mid << NODE_BITS) | nid
        b = self.bmemo.get(key)
        if b is None:
            sync = self.mstates[mid][3]
            if sync != self.live.sync:
                self.m.sim_restore(sync)
                self.live.sync = sync
                self.live.forget("mid")
            b = self.bmemo[key] = self.m.blocked(i, self.nodes[nid].op) is not None
        return b

    def release(self):
        """Let go of everything the search built, once it is over.  The
        space, its reduction and its symmetry point at each other, so
        without this their millions of tuples would wait for the cycle
        collector, which would traverse them all (collector_paused): now
        reference counting frees them at once.  ``with StateSpace(...) as
        space:`` releases it at the end of the block, however it ends."""
        for part in (self.por, self.sym):
            if part is not None:
                vars(part).clear()
        vars(self).clear()

    def __enter__(self) -> "StateSpace":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def all_done(self, s) -> bool:
        return all(self.nodes[nid].done or self.daemon[i] for i, nid in enumerate(s[1]))

    def step(self, s, i):
        """CPU ``i`` steps from state ``s``: (new state, None) or (None,
        violations).  ``self.facts`` is then what the race window needs to
        know about the step (s2pt.sim.window; None if nothing)."""
        mid, nodes = s
        nid = nodes[i]
        key = (mid << NODE_BITS) | nid
        t = self.tmemo.get(key)
        if t is None:
            t = self.tmemo[key] = self._step(mid, nid, i)
        self.facts = t[3]
        if t[2]:
            return None, list(t[2])
        return (t[0], nodes[:i] + (t[1],) + nodes[i + 1:]), None

    # -- race windows (s2pt.sim.window) ------------------------------------------
    def _facts(self, i, stack, op):
        """What the window's predicates need to know about CPU ``i``
        performing ``op`` on the live machine (before it does), its code at
        ``stack``: a compact tuple (unlinked, lost, stored, reached, mmu), or
        None."""
        name = op[0]
        needs = self.needs
        unlinked = stored = reached = None
        lost = mmu = False
        if name in _WRITES and len(op) > 2:
            ptep = op[1]
            k = self.index.get(ptep >> self.shift)
            if k is not None and not self.pages[k].freed:
                old = self.pages[k].table.item((ptep & (self.mm.page_size - 1)) >> 3)
                if name == "cmpxchg":
                    lost = old != op[2]
                    new = op[3] if not lost else old
                else:
                    new = op[2]
                if "unlink" in needs:
                    level = self._linked().get(ptep >> self.shift)
                    if level is not None and level < 3:
                        child = self._table_of(old)
                        if child is not None and child != self._table_of(new):
                            unlinked = child << self.shift
                if "store" in needs and new != old:
                    stored = (ptep >> self.shift) << self.shift
        if "reach" in needs and name in _ACCESS:
            pfn = op[1] >> self.shift
            k = self.index.get(pfn)
            if (k is not None and pfn not in self._linked() and pfn not in self._cached()
                    and not _state_teardown_or_build(stack)):
                reached = pfn << self.shift
        if "mmu" in needs and name in ("hw_read", "hw_walk_start"):
            mmu = True
        if unlinked is None and stored is None and reached is None and not lost and not mmu:
            return None
        return (unlinked, lost, stored, reached, mmu)

    def _table_of(self, v):
        """The pfn of the table page a (table) descriptor points at, or None."""
        if v is None or v & 3 != 3:
            return None
        pfn = (v & self.pgt.addr_mask) >> self.shift
        return pfn if pfn in self.index else None

    def _linked(self) -> dict:
        """pfn -> level of every table page reachable from the PGD in the
        live machine."""
        return self.linked_of(self.live.pages)

    def linked_of(self, pages) -> dict:
        """pfn -> level of every table page reachable from the PGD when the
        table pages are ``pages`` (a machine state's tuple of page ids;
        cached)."""
        key = pages
        out = self._linked_memo.get(key)
        if out is None:
            out = {}
            freed = 1 + self.page_fields.index("freed")
            todo = [(p.pfn, self.pgt.start_level) for p in self.pgt.pgd_pages]
            while todo:
                pfn, level = todo.pop()
                if pfn in out:
                    continue
                k = self.index[pfn]
                pd = self.pdata[pages[k]]
                if pd[freed]:
                    continue
                out[pfn] = level
                if level < 3:
                    todo += [(c, level + 1) for c in self.children_of(pd[0])]
            self._linked_memo[key] = out
        return out

    def children_of(self, cid) -> tuple:
        """The table pages that the descriptors of page contents ``cid``
        (an interned content id) point to: the pfns of every entry whose low
        bits are 0b11, read as a table descriptor (cached).  At level 3 the
        same bits mean a page; a caller that knows the level skips them."""
        out = self._children_memo.get(cid)
        if out is None:
            mask, shift, index = self.pgt.addr_mask, self.shift, self.index
            arr = self.cdata[cid]
            out = self._children_memo[cid] = tuple(
                c for c in (((v & mask) >> shift) for v in arr[(arr & 3) == 3].tolist())
                if c in index)
        return out

    def _cached(self) -> set:
        """pfns of the pages the memcaches hold (never linked yet)."""
        return {p.pfn for mc in self.mcs for p in mc.objects}

    def pointers(self, nid) -> frozenset:
        """pfns of the table pages node ``nid``'s locals point into."""
        node = self.nodes[nid]
        if node.pointers is None:
            node.pointers = self._pfns_in(node.key)
        return node.pointers

    def _pfns_in(self, value) -> frozenset:
        """pfns of the table pages the integers anywhere in ``value`` (nested
        tuples, as frozen) point into."""
        shift = self.shift
        return frozenset(a >> shift for a in self.table_addresses(value))

    def table_addresses(self, value) -> list:
        """The integers anywhere in ``value`` (nested tuples, as frozen) that
        point into a table page, as addresses (descriptor bits masked off)."""
        out = []
        mask, shift, index = self.pgt.addr_mask, self.shift, self.index
        todo = [value]
        while todo:
            v = todo.pop()
            if type(v) is tuple:
                todo.extend(v)
            elif type(v) is int:
                a = v & mask
                if (a >> shift) in index:
                    out.append(a)
        return out

    def others_hold(self, s, i, pa) -> bool:
        """Does a CPU other than ``i`` hold a pointer into the table page at
        ``pa`` in state ``s``: in its locals, or in its MMU's walk cache?"""
        return self.others_hold_pfn(s[0], s[1], i, pa >> self.shift)

    def others_hold_pfn(self, mid, nodes, i, pfn) -> bool:
        """:meth:`others_hold` of table page ``pfn`` on machine ``mid`` with
        the CPUs at ``nodes``."""
        return self.others_reach(mid, nodes, i, frozenset((pfn,)))

    def others_reach(self, mid, nodes, i, guard, harmless=None) -> bool:
        """Does a CPU other than ``i`` hold a pointer into one of the table
        pages ``guard`` on machine ``mid`` with the CPUs at ``nodes`` (in its
        locals, or in its MMU's walk cache)?  ``harmless(mid, j, nid,
        guard)``: a holder it says True of does not count (s2pt.sim.por)."""
        allnodes = self.nodes
        for j, nid in enumerate(nodes):
            if j != i:
                ptrs = allnodes[nid].pointers
                if ptrs is None:
                    ptrs = self.pointers(nid)
                if ptrs and not guard.isdisjoint(ptrs) and \
                        (harmless is None or not harmless(mid, j, nid, guard)):
                    return True
        held = self._held.get(mid)
        if held is None:
            held = self._held[mid] = self._walk_caches(mid)
        if held:
            vcpu_i = self.w.machine.vcpu_of.get(i)
            for vcpu, pfns in held:
                if vcpu != vcpu_i and not guard.isdisjoint(pfns):
                    return True
        return False

    def queued_reach(self, mid, i, guard) -> bool:
        """Does a queued RCU callback hold a pointer into one of the table
        pages ``guard`` on machine ``mid``, for a CPU other than ``i`` (the
        RCU callback thread, the world's last actor, will run it)?  The queue
        is machine state, not a CPU's locals: a table handed to call_rcu()
        is still reachable by the thread that will free it."""
        if i == self.n - 1:
            return False
        held = self._queued.get(mid)
        if held is None:
            held = self._queued[mid] = self._pfns_in(
                tuple(args for _, _, args in self.mstates[mid][3][3]))
        return bool(held) and not guard.isdisjoint(held)

    def ancestors_of(self, pages, pfn) -> frozenset:
        """``pfn`` and every table page from which a chain of table
        descriptors leads to it, when the table pages are ``pages`` (a
        machine state's tuple of page ids; freed pages included: a stale
        descriptor is a way in).  A CPU that holds a pointer into any of
        them can reach ``pfn``.  The level of an unlinked page is not known
        here, so every 0b11 entry counts as a descriptor (:meth:`children_of`):
        more ancestors, never fewer.  Cached."""
        key = (pages, pfn)
        out = self._ancestors_memo.get(key)
        if out is None:
            parents = self._parents_memo.get(pages)
            if parents is None:
                parents = self._parents_memo[pages] = {}
                for k, pid in enumerate(pages):
                    for c in self.children_of(self.pdata[pid][0]):
                        parents.setdefault(c, set()).add(self.pfns[k])
            seen, todo = {pfn}, [pfn]
            while todo:
                for p in parents.get(todo.pop(), ()):
                    if p not in seen:
                        seen.add(p)
                        todo.append(p)
            out = self._ancestors_memo[key] = frozenset(seen)
        return out

    def _walk_caches(self, mid) -> tuple:
        """(vCPU, pfns its MMU's walk cache points into) of each part that
        holds pointers (``sim_pointers``), on machine ``mid``."""
        holders = self._holders
        if holders is None:
            holders = self._holders = [(k, part.sim_pointers, getattr(part, "vcpu", None))
                                       for k, part in enumerate(self.stateful)
                                       if hasattr(part, "sim_pointers")]
        st = self.mstates[mid][4]
        shift = self.shift
        return tuple((vcpu, frozenset(p >> shift for p in held(st[k])))
                     for k, held, vcpu in holders)

    def held_by_other(self, s, i, lock) -> bool:
        """Does a CPU other than ``i`` hold ``lock`` in state ``s``?"""
        for name, (writer, readers) in self.mstates[s[0]][3][0]:
            if name == lock:
                return (writer is not None and writer != i) or bool(readers - {i})
        return False

    def step_facts(self, s, i, facts) -> StepFacts:
        """The StepFacts of CPU ``i`` stepping from ``s`` (for a window)."""
        node = self.nodes[s[1][i]]
        unlinked, lost, stored, reached, mmu = facts
        return StepFacts(i, node.op, node.stack, unlinked, lost, stored, reached, mmu,
                         lambda pa: self.others_hold(s, i, pa),
                         lambda lock: self.held_by_other(s, i, lock))

    def _step(self, mid, nid, i):
        """Perform node ``nid``'s operation on machine ``mid`` and run CPU
        ``i``'s code to its next yield: (machine id, child node, violations).
        In check mode every promise of the machine state is audited, and the
        step is computed again, fresh, with every ignored field perturbed."""
        t = self._step1(mid, nid, i)
        if self.check:
            self._check_step(mid, nid, i, t)
        return t

    def _step1(self, mid, nid, i, fresh=False):
        self.restore(mid)
        node = self.nodes[nid]
        m = self.m
        m.cpu = i
        op = node.op
        facts = self._facts(i, node.stack, op) if self.needs and not fresh else None
        self.live.forget("mid")
        result = m.perform(op)
        if m.violations:
            v = tuple(m.violations)
            m.violations.clear()
            self._invalidate()            # the step is not snapshotted: forget what is live
            return (None, None, v, facts)
        mstate = self._after_op(op)
        if fresh:
            edge = self._advance(i, nid, node, result, mstate, fresh=True)
        else:
            ekey = (result, mstate) if self.impure[i] else result
            edge = node.edges.get(ekey)
            if edge is None:
                edge = self._advance(i, nid, node, result, mstate)
                node.edges[ekey] = edge
        child, viols, post = edge
        if viols:
            self._invalidate()
            return (None, None, tuple(viols), facts)
        if post is not None:
            self._restore(post)
            mstate = post
        mid2 = self._intern(mstate)
        self.live.mid = mid2
        return (mid2, child, (), facts)

    def _check_step(self, mid, nid, i, t):
        """Check mode: audit the state the step reached, then compute it
        again from scratch with the ignored fields perturbed."""
        node = self.nodes[nid]
        where = (f"CPU {i} ({self.w.name(i)}) {node.op[0]} in "
                 f"{node.stack[-1] if node.stack else '?'}()")
        if not t[2]:
            self._audit(self.mstates[t[0]], where, node.op[0], t[0])
        self._audit_promise(mid, nid, i, node.op, t[1], where)
        self._invalidate()
        self.restore(mid)                 # then perturb: the restore must not undo it
        saved = self.registry.perturb_ignored()
        try:
            again = self._step1(mid, nid, i, fresh=True)
        finally:
            self.registry.restore_ignored(saved)
        same = (again[2] == t[2]) if (t[2] or again[2]) else again[:2] == t[:2]
        if not same:
            raise S2ptError(
                f"{where}: the step did something else when computed again with every "
                f"ignored field perturbed (s2pt.snapshot.perturb) or from a fresh generator: "
                f"{_describe(self, t)} the first time, {_describe(self, again)} the second; "
                f"a step depends on a field listed in some sim_ignore, or a CPU's code "
                f"between two operations reads state outside the machine state")
        self._invalidate()

    def _audit_promise(self, mid, nid, i, op, child, where, allowed=None):
        """Check mode: a confined holder at node ``nid`` (s2pt.sim.por) must
        keep its promise through its step (``op`` on machine ``mid``, to
        node ``child``); ``allowed``: the promise, when the caller read it."""
        if self.por is None:
            return
        if allowed is None:
            allowed = self.por.promise(i, nid)
            if allowed is None:
                return
        why = self.por.broken_promise(mid, allowed, i, op, child)
        if why is not None:
            raise S2ptError(
                f"{where}: a CPU the partial-order reduction counted as confined to "
                f"some entries of an unlinked table broke that promise: {why}; a visitor in "
                f"s2pt.sim.por.CONFINED_CODE touches more than the entry it visits")

    def _audit(self, mstate, where, name, mid=None, frozen=True):
        """Check mode: the machine state kept step by step (``mstate``, after
        op ``name``) must equal a full rebuild of the live machine, and the
        registry's audit of machine ``mid`` must pass (of its Frozen objects
        too unless ``frozen`` is false)."""
        full = self.machine_state(full=True)
        if full != mstate:
            parts = [n for n, x, y in zip(("table pages", "allocator", "memcaches",
                                           "locks and RCU", "parts"), full, mstate) if x != y]
            raise S2ptError(
                f"{where}: the machine state kept step by step differs from a full "
                f"rebuild in {', '.join(parts)}: the op table (s2pt.ops.OPS) says "
                f"{name!r} touches memory={_op_memory(name)!r}, but it changed "
                f"more, or a CPU changed shared state between two operations")
        if mid is not None:
            self.registry.audit(mid, where, frozen)

    def end_checks(self, s) -> list:
        """The end-of-run violations of terminal state ``s`` (memoised)."""
        out = self.end_memo.get(s[0])
        if out is None:
            self.restore(s)
            out = [(v.kind, v.explanation) for v in self.w.end_checks()]
            self.end_memo[s[0]] = out
        return out

    def terminal(self, s) -> list:
        """The violations of a state where no CPU can step: the end-of-run
        checks if every CPU finished, else a deadlock with each CPU's reason."""
        if self.all_done(s):
            return self.end_checks(s)
        waits = self.blocked_reasons(s)
        kind = stuck_kind(len(waits), sum(not d for d in self.daemon))
        return [(kind, "; ".join(f"CPU {i} {why}" for i, why in waits))]

    def blocked_reasons(self, s) -> list:
        self.restore(s)
        return [(i, self.m.blocked(i, self.nodes[nid].op)) for i, nid in enumerate(s[1])
                if not self.nodes[nid].done and not self.daemon[i]]


class _Live:
    """What the StateSpace knows about the live machine, part by part: the
    interned id of its whole state (``mid``), each page's content id and
    (refcount, freed, content) id, the allocator, the memcaches, locks and
    RCU, the observers.  ``None`` means "unknown": the next restore
    rewrites that part.  One reset, :meth:`forget`."""
    __slots__ = ("mid", "content", "pages", "alloc", "mc", "sync", "st", "npages")

    def __init__(self, npages: int):
        self.npages = npages
        self.forget()

    def forget(self, *parts):
        """Forget ``parts`` (all of them when none is named); forgetting
        any part forgets the interned id of the whole state too."""
        for p in parts or ("content", "pages", "alloc", "mc", "sync", "st"):
            setattr(self, p, [None] * self.npages if p == "content" else None)
        self.mid = None


#: Operations that touch a table page through a pointer (a race window's
#: "reaches a table"): descriptor accesses and the walker references.
_ACCESS = frozenset({"READ_ONCE", "hw_read", "WRITE_ONCE", "smp_store_release", "cmpxchg", "xchg",
                     "walker_get", "walker_get_unless_zero", "get_page_unless_zero",
                     "get_page"})
_NOT_A_RACE = TEARDOWN | BUILD


def _state_teardown_or_build(stack) -> bool:
    return any(f in _NOT_A_RACE for f in stack)


def _op_memory(name) -> str:
    k = OPS.get(name)
    return k.memory if k is not None else "?"


def _describe(space, t) -> str:
    if t[2]:
        return "violations " + ", ".join(sorted({k for k, _ in t[2]}))
    child = space.nodes[t[1]] if 0 <= t[1] < len(space.nodes) else None
    where = (child.stack[-1] if child and child.stack else "finished") if child else "a new position"
    return f"machine state #{t[0]}, next at {where}"


def _diff(a, b) -> str:
    """Which fields of two frozen field dicts differ (for the audit's message)."""
    if isinstance(a, tuple) and isinstance(b, tuple) and a[:1] == b[:1] == ("dict",):
        da, db = dict(a[1:]), dict(b[1:])
        keys = [k for k in sorted(set(da) | set(db), key=str) if da.get(k) != db.get(k)]
        return "field(s) " + ", ".join(map(str, keys))
    return "its fields"


# ---------------------------------------------------------------------------
# Exhaustive search
# ---------------------------------------------------------------------------

class _Progress:
    def __init__(self, enabled, label: str):
        # True: stderr; a stream (anything with .write): that stream, e.g.
        # sys.stdout in a notebook, where stderr is shown as an error.
        self.on = bool(enabled)
        self.out = enabled if hasattr(enabled, "write") else None
        self.label = label
        self.t0 = time.perf_counter()
        self.last = self.t0
        self.width = 0          # the longest line written: "\r" then spaces clear it all

    def __call__(self, states, depth, queue):
        if not self.on:
            return
        now = time.perf_counter()
        if now - self.last < 0.5:
            return
        self.last = now
        rate = states / max(now - self.t0, 1e-9)
        out = self.out or sys.stderr
        line = (f"{self.label}: {states:,} states, depth {depth}, frontier "
                f"{queue:,}, {rate:,.0f} states/s")
        self.width = max(self.width, len(line))
        out.write("\r" + line.ljust(self.width))
        out.flush()

    def done(self):
        if self.on and self.width:
            out = self.out or sys.stderr
            out.write("\r" + " " * self.width + "\r")
            out.flush()


def _preempts(i, last, enabled) -> int:
    """1 if stepping CPU ``i`` preempts ``last`` (a switch away from a CPU
    that could have gone on), else 0."""
    return int(last is not None and i != last and last in enabled)


class _WindowLog:
    """What one search learns about the scenario's race window: for each
    stage, how many transitions reached it and the first (shortest, in
    breadth-first order) schedule that did."""

    def __init__(self, window):
        self.window = window
        self.first: list = [None] * len(window.stages)
        self.count: list = [0] * len(window.stages)

    def see(self, space, s, i, facts, path):
        f = space.step_facts(s, i, facts)
        for k, stage in enumerate(self.window.stages):
            if stage.test(f):
                self.count[k] += 1
                if self.first[k] is None:
                    self.first[k] = path()          # to the step, included

    def report(self, complete: bool) -> dict:
        w = self.window
        reached = [c > 0 for c in self.count]
        out = {"what": w.what, "reached": reached[-1] if reached else False,
               "stages": [{"what": st.what, "reached": hit, "transitions": c,
                           "schedule": format_schedule(sched) if sched is not None else None}
                          for st, hit, c, sched in zip(w.stages, reached, self.count, self.first)]}
        if not out["reached"]:
            out["reason"] = w.reason(reached) if complete else \
                "the search did not finish, so it may be reached further on"
        return out


class _Packed:
    """The states of one search, each packed into one integer: the machine
    id above ``n`` fields of NODE_BITS bits, CPU ``c``'s node id in field
    ``c``.  A step changes one field and the machine id, so a successor is
    two additions and a dictionary lookup, not a tuple built and hashed;
    and a state costs a few dozen bytes, so four vCPUs' millions of states
    fit in memory.  ``packed[sid]`` is state ``sid`` as the StateSpace's
    (machine id, nodes) tuple."""

    def __init__(self, n):
        self.n = n
        self.shifts = tuple(NODE_BITS * c for c in range(n))
        self.mshift = NODE_BITS * n
        self.nmask = (1 << self.mshift) - 1
        self.keys: list = []

    def pack(self, s) -> int:
        mid, nodes = s
        k = mid << self.mshift
        for sh, nid in zip(self.shifts, nodes):
            k |= nid << sh
        return k

    def nodes(self, nk) -> tuple:
        return tuple([(nk >> sh) & NODE_MASK for sh in self.shifts])

    def nodes_fn(self):
        """:meth:`nodes` as a function unrolled for this many CPUs (the
        search calls it once a state)."""
        m, b, b2, b3, b4, b5 = NODE_MASK, NODE_BITS, 2 * NODE_BITS, 3 * NODE_BITS, \
            4 * NODE_BITS, 5 * NODE_BITS
        return {1: lambda nk: (nk & m,),
                2: lambda nk: (nk & m, nk >> b),
                3: lambda nk: (nk & m, (nk >> b) & m, nk >> b2),
                4: lambda nk: (nk & m, (nk >> b) & m, (nk >> b2) & m, nk >> b3),
                5: lambda nk: (nk & m, (nk >> b) & m, (nk >> b2) & m, (nk >> b3) & m, nk >> b4),
                6: lambda nk: (nk & m, (nk >> b) & m, (nk >> b2) & m, (nk >> b3) & m,
                               (nk >> b4) & m, nk >> b5),
                }.get(self.n, self.nodes)

    def packer(self):
        """The node ids of a state (a tuple) packed, as :meth:`pack` of
        machine 0 does, unrolled for this many CPUs."""
        b, b2, b3, b4, b5 = NODE_BITS, 2 * NODE_BITS, 3 * NODE_BITS, 4 * NODE_BITS, 5 * NODE_BITS
        return {1: lambda t: t[0],
                2: lambda t: t[0] | t[1] << b,
                3: lambda t: t[0] | t[1] << b | t[2] << b2,
                4: lambda t: t[0] | t[1] << b | t[2] << b2 | t[3] << b3,
                5: lambda t: t[0] | t[1] << b | t[2] << b2 | t[3] << b3 | t[4] << b4,
                6: lambda t: t[0] | t[1] << b | t[2] << b2 | t[3] << b3 | t[4] << b4 | t[5] << b5,
                }.get(self.n, lambda t: self.pack((0, t)))

    def unpack(self, k) -> tuple:
        return (k >> self.mshift, self.nodes(k & self.nmask))

    def __getitem__(self, sid):
        return self.unpack(self.keys[sid])

    def __len__(self):
        return len(self.keys)


#: The most private steps one run takes (StateSpace.run_alone): a private
#: loop that never ends comes round again in the next run, from a state kept.
RUN_CAP = 1 << 14


def _bfs(space: StateSpace, bound=None, max_states=2_000_000, max_depth=20000, progress=None,
         first_only=False, cancel=None):
    """Breadth-first stateful search (shallowest first, in steps: see
    below).  Returns (found, stats).  ``progress``
    is called with (states, depth, frontier) every 1024 states; ``cancel()``
    is asked as often and, when true, stops the search (incomplete).

    Without a preemption bound the search also keeps the state graph's
    edges, and once it is complete looks in it for livelocks: a cycle that
    a fair scheduler can follow forever while some CPU never finishes
    (:func:`_livelocks`).

    With partial-order reduction, a CPU's run of private steps (the free
    walk of an unlinked table: a thousand steps nobody else can see) is one
    transition: every step is taken and checked, but only the state where
    the run ends is kept (``run_alone``; ``stats["run_steps"]`` counts the
    steps passed inside runs).  A schedule through it names the CPU once
    per step.

    States are packed integers (:class:`_Packed`): a successor is an
    addition, and a state costs a few dozen bytes.  What is a function of
    one CPU's position and the machine (its step, whether it blocks,
    whether it is private) is memoised on the pair, in the StateSpace; what
    depends on all the positions (which CPUs may run, the symmetric
    representative) is a short loop over per-position facts, because
    nearly every state has positions of its own."""
    sym = space.sym
    por = space.por if bound is None else None
    pk = _Packed(space.n)
    shifts, mshift, nmask = pk.shifts, pk.mshift, pk.nmask
    s0 = space.initial
    s0, to0 = sym.canon(s0) if sym is not None else (s0, None)
    states = pk.keys
    states.append(pk.pack(s0))
    parent = array("q", [-1])
    via = array("b", [-1])       # the CPU that stepped to each state (in its parent's frame)
    perm = [to0]                 # the renaming that made each state canonical (symmetry)
    depth = array("i", [0])
    pre = array("i", [0])
    seen = {(states[0], None) if bound is not None else states[0]: 0}
    # States in order of depth in steps (a run is as deep as its length),
    # then of discovery: with runs of one step, breadth-first order.
    # (A bucket per depth, each expanded in order of state id, as a heap of
    # (depth, id) pairs would: pushes only ever go deeper than the bucket
    # being expanded, since every transition is at least one step.)
    buckets = {0: [0]}
    levels = [0]                 # the depths that have a bucket (a heap)
    queued = 1

    def queue():
        nonlocal queued
        while levels:
            d = heappop(levels)
            for sid in sorted(buckets.pop(d)):
                queued -= 1
                yield d, sid

    def push(d, sid):
        nonlocal queued
        queued += 1
        b = buckets.get(d)
        if b is None:
            buckets[d] = [sid]
            heappush(levels, d)
        else:
            b.append(sid)
    found: dict = {}
    transitions = terminals = bound_hits = 0
    complete = True
    window = _WindowLog(space.window) if space.window is not None else None
    graph = bound is None
    estart, edst, ecpu = array("q"), array("q"), array("b")
    order = array("q")           # the states in the order they were expanded (estart's)
    eperm: dict = {}             # edge index -> renaming, where it is not the identity
    back = set()                 # targets of edges that do not go one level deeper
    tmemo, allnodes = space.tmemo, space.nodes
    # Each symmetric CPU's neighbours in its group (the members before and
    # after it), which a canonical state keeps in class order.
    neighbours = {g[k]: (g[k - 1] if k else None, g[k + 1] if k + 1 < len(g) else None)
                  for g in (sym.groups if sym is not None else ()) for k in range(len(g))}
    enabled_at, step, pack_nodes = space.enabled_at, space._step, pk.packer()
    unpack, nodes_of = pk.unpack, pk.nodes_fn()
    private_in = por.private_in if por is not None and por.on else None
    goes_on = por.goes_on if private_in is not None else None
    candidate, run_alone = (por.candidate if por is not None else None), space.run_alone
    #: State -> the length of the run that reached it, where it is over 1.
    run_of: dict = {}
    #: Edge index -> the length of its run, where it is over 1.
    ecount: dict = {}
    chained = 0                  # steps taken inside runs, not kept as states

    def path(sid, then=(), frame=False):
        """The concrete schedule to state ``sid`` (then CPUs ``then``, named
        in ``sid``'s frame): with symmetry, each step's CPU is renamed back
        through the renamings along the way.  ``frame``: also return the
        renaming from ``sid``'s frame to the concrete CPUs."""
        steps = []
        while sid > 0:
            steps.append((via[sid], perm[sid], run_of.get(sid, 1)))
            sid = parent[sid]
        tau = invert(perm[0]) if perm[0] is not None else tuple(range(space.n))
        out = []
        for i, to, n in reversed(steps):
            out += [tau[i]] * n
            if to is not None:
                tau = compose(tau, invert(to))
        out += [tau[i] for i in then]
        return (out, tau) if frame else out

    def successor(mid, nk, nodes, i):
        """CPU ``i``'s step from (``mid``, ``nodes``; ``nk`` packed): (packed
        state, renaming, transition), canonical under symmetry; the packed
        state is None on a violation."""
        nid = nodes[i]
        tk = (mid << NODE_BITS) | nid
        t = tmemo.get(tk)
        if t is None:
            t = tmemo[tk] = step(mid, nid, i)
        if t[2]:
            return None, None, t
        return place(mid, nk, nodes, i, t[0], t[1]) + (t,)

    def place(mid, nk, nodes, i, cmid, child):
        """The state (packed, renaming) where CPU ``i`` has moved from
        (``mid``, ``nodes``; ``nk`` packed) to node ``child`` on machine
        ``cmid``, canonical under symmetry."""
        nid = nodes[i]
        nb = neighbours.get(i)
        if nb is not None:
            # Symmetry (s2pt.sim.symmetry): the group was in class order, and
            # only CPU i moved: is it still between its neighbours?
            c = allnodes[child].cls
            lo, hi = nb
            if (lo is not None and allnodes[nodes[lo]].cls > c) or \
                    (hi is not None and allnodes[nodes[hi]].cls < c):
                after = list(nodes)
                after[i] = child
                to, canon = sym.arrange(after)
                return (sym.rename(cmid, to) << mshift) | pack_nodes(canon), to
        return (cmid << mshift) | (nk + ((child - nid) << shifts[i])), None

    def run_step(mid, nk, nodes, i, scope):
        """CPU ``i``'s run of private steps (s2pt.sim.por) from (``mid``,
        ``nodes``; ``nk`` packed), not touching the entries ``scope`` (None:
        no confined holder), as (packed state, renaming, the first step's
        transition, length); None when its first step is a violation."""
        nid = nodes[i]
        guard = candidate(mid, i, nid)
        r = run_alone(mid, nid, i, guard if scope is None else (guard, scope), goes_on,
                      RUN_CAP, scope)
        if not r:
            return None
        first, m, n, count = r
        return place(mid, nk, nodes, i, m, n) + (first, count)

    for d, sid in queue():
        if d != depth[sid]:
            continue                           # found again, shallower, and queued again
        k = states[sid]
        mid, nk = k >> mshift, k & nmask
        if graph:
            estart.append(len(edst))
            order.append(sid)
        if not (sid & 1023):
            if progress is not None:
                progress(len(states), depth[sid], queued)
            if cancel is not None and cancel():
                complete = False
                break
        nodes = nodes_of(nk)
        en = enabled_at(mid, nodes)
        if not en:
            terminals += 1
            for kind, msg in space.terminal((mid, nodes)):
                if kind not in found:
                    found[kind] = (path(sid), msg)
            continue
        if depth[sid] >= max_depth:
            complete = False                   # a bound, not a finding
            continue
        ran = ri = None
        if private_in is not None:
            ri = private_in(mid, nodes, en)
            if ri is not None:
                ri, scope = ri
                ran = run_step(mid, nk, nodes, ri, scope)
                if ran is not None:
                    # CPU ri's private run goes alone (s2pt.sim.por), unless
                    # it ends in a state already seen no deeper than this one:
                    # the cycle proviso (C3), then every CPU steps, CPU ri
                    # its whole run.  Every cycle of the graph has an edge
                    # that goes no deeper (the depths go up and come back
                    # down), and an edge taken alone never does (a state is
                    # expanded at its final depth, shallowest first, and
                    # whatever is found later is deeper), so every cycle
                    # passes a state where every CPU stepped.  A run counts as one step of its
                    # CPU there: its steps commute with every other CPU's,
                    # so any interleaving of them can be reordered to take
                    # the run in one piece (Lipton's reduction).
                    old = seen.get(ran[0])
                    if old is None or depth[old] > depth[sid]:
                        en = (ri,)
        last = via[sid] if sid else None
        for i in en:
            if bound is not None:
                p = pre[sid] + _preempts(i, last, en)
                if p > bound:
                    bound_hits += 1
                    continue
            else:
                p = 0
            if i == ri and ran is not None:
                t, to, tr, count = ran
                por.taken += count
                chained += count - 1
            else:
                t, to, tr = successor(mid, nk, nodes, i)
                count = 1
            transitions += 1
            if window is not None and tr[3] is not None:
                window.see(space, (mid, nodes), i, tr[3], lambda: path(sid, (i,)))
            if t is None:
                for kind, msg in tr[2]:
                    if kind not in found:
                        found[kind] = (path(sid, (i,)), msg)
                continue
            key = (t, i) if bound is not None else t
            old = seen.get(key)
            if old is not None and depth[sid] + count < depth[old]:
                # Not expanded yet (nothing expanded is deeper than this
                # state), and shallower this way, as only runs make possible:
                # the shortest schedule to it comes through here (Dijkstra).
                parent[old], via[old], perm[old] = sid, i, to
                if count > 1:
                    run_of[old] = count
                else:
                    run_of.pop(old, None)
                depth[old] = depth[sid] + count
                push(depth[old], old)
            if old is not None and (bound is None or pre[old] <= p):
                if graph:
                    if to is not None:
                        eperm[len(edst)] = to
                    if count > 1:
                        ecount[len(edst)] = count
                    edst.append(old)
                    ecpu.append(i)
                    if depth[old] <= depth[sid]:
                        back.add(old)
                continue
            if len(states) >= max_states:
                complete = False
                continue
            new = len(states)
            seen[key] = new
            if graph:
                if to is not None:
                    eperm[len(edst)] = to
                if count > 1:
                    ecount[len(edst)] = count
                edst.append(new)
                ecpu.append(i)
            if count > 1:
                run_of[new] = count
            states.append(t)
            parent.append(sid)
            via.append(i)
            perm.append(to)
            depth.append(depth[sid] + count)
            pre.append(p)
            push(depth[new], new)
        if first_only and found:
            complete = False
            break
    if bound_hits:
        complete = False
    stats = {"states": len(seen), "transitions": transitions, "terminals": terminals,
             "bound_hits": bound_hits, "complete": complete, "run_steps": chained}
    if window is not None:
        stats["window"] = window.report(complete)
    if graph and complete and back and "livelock" not in found:
        estart.append(len(edst))
        if any(order[j] != j for j in range(len(order))):
            estart, edst, ecpu, eperm, ecount = _by_state(order, estart, edst, ecpu, eperm,
                                                          ecount)
        lasso = _livelocks(space, pk, estart, edst, ecpu, back, path, depth, eperm, ecount)
        if lasso is not None:
            found["livelock"] = lasso
    return found, stats


# ---------------------------------------------------------------------------
# Livelock: a fair cycle in the state graph
# ---------------------------------------------------------------------------

def _by_state(order, estart, edst, ecpu, eperm, ecount):
    """The edge arrays of a search whose states were expanded in ``order``
    (``estart[j]`` the first edge of the j-th expansion), rearranged so that
    state ``v``'s edges are ``estart[v]`` to ``estart[v + 1]``; the edge
    indices of ``eperm`` and ``ecount`` follow.  (A gather with numpy: the
    graph of a four-vCPU search has millions of edges.)"""
    n = len(order)
    es = np.frombuffer(estart, dtype=np.int64)
    first = np.empty(n, dtype=np.int64)
    first[np.frombuffer(order, dtype=np.int64)] = np.arange(n, dtype=np.int64)
    lengths = (es[1:] - es[:-1])[first]               # state v's edge count
    ns = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=ns[1:])
    # The old index of each edge in its new place.
    old = np.repeat(es[:-1][first] - ns[:-1], lengths) + np.arange(ns[-1], dtype=np.int64)
    new_of = np.empty_like(old)
    new_of[old] = np.arange(len(old), dtype=np.int64)
    nd = np.frombuffer(edst, dtype=np.int64)[old]
    nc = np.frombuffer(ecpu, dtype=np.int8)[old]

    def moved(d):
        keys = np.fromiter(d, dtype=np.int64, count=len(d))
        return dict(zip(new_of[keys].tolist(), d.values()))
    return (array("q", ns.tobytes()), array("q", nd.tobytes()), array("b", nc.tobytes()),
            moved(eperm), moved(ecount))


def _sccs(n, estart, edst, roots, allowed=None):
    """Strongly connected components with a cycle (Tarjan, iterative), of
    the part of the graph reachable from ``roots`` (within ``allowed``, a
    set of states, when given)."""
    index = [-1] * n
    low = [0] * n
    onstack = bytearray(n)
    stack: list = []
    out = []
    counter = 0
    for root in sorted(roots):
        if index[root] != -1 or (allowed is not None and root not in allowed):
            continue
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        onstack[root] = 1
        work = [[root, estart[root]]]
        while work:
            top = work[-1]
            v, e = top
            if e < estart[v + 1]:
                top[1] = e + 1
                w = edst[e]
                if allowed is not None and w not in allowed:
                    continue
                if index[w] == -1:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    onstack[w] = 1
                    work.append([w, estart[w]])
                elif onstack[w] and index[w] < low[v]:
                    low[v] = index[w]
                continue
            work.pop()
            if work:
                u = work[-1][0]
                if low[v] < low[u]:
                    low[u] = low[v]
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    onstack[w] = 0
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1 or any(edst[e] == v for e in range(estart[v], estart[v + 1])):
                    out.append(comp)
    return out


def _livelocks(space, states, estart, edst, ecpu, back, path, depth, eperm=None, ecount=None):
    """The shortest livelock, as (stem + cycle, message, where the cycle
    starts), or None.

    A cycle of the state graph is a run that never ends.  It is a livelock
    when a fair scheduler could follow it while some CPU never finishes.
    Fair is *strong* fairness: every CPU that is able to run at some state
    of the cycle takes a step in it (a CPU that keeps getting the chance to
    run does run; a writer waiting for an rwlock gets it between two
    readers).  A vCPU spinning on -EAGAIN while the winner is descheduled,
    or while a writer waits for the lock it keeps taking, is no livelock.
    With symmetry reduction, interchangeable CPUs count as one for fairness
    (a cycle in which one of them runs is fair to the group).

    The fair components are found as in the Streett emptiness check: in a
    component where some able CPU never steps, drop the states where it is
    able, and look at what is left."""
    eperm = eperm or {}
    ecount = ecount or {}
    sym = space.sym
    best = None
    enabled_at: dict = {}

    def lab(c):
        return ("group", sym.group_of[c]) if sym is not None and c in sym.group_of else c

    def able(v):
        e = enabled_at.get(v)
        if e is None:
            e = enabled_at[v] = frozenset(lab(c) for c in space.enabled(states[v]))
        return e

    work = _sccs(len(states), estart, edst, back)
    while work:
        comp = work.pop()
        members = set(comp)
        taken = set()
        for v in comp:
            for e in range(estart[v], estart[v + 1]):
                if edst[e] in members:
                    taken.add(lab(ecpu[e]))
        enabled = {v: able(v) for v in comp}
        idle = set().union(*enabled.values()) - taken
        if idle:
            # Unfair as a whole: keep only the states where no idle CPU can
            # run, and look for fair cycles there.
            rest = {v for v in comp if not (enabled[v] & idle)}
            if rest:
                work += _sccs(len(states), estart, edst, rest, rest)
            continue
        entry = min(comp, key=lambda v: (depth[v], v))
        if best is not None and depth[entry] >= depth[best[0]]:
            continue
        best = (entry, comp, members, taken, enabled)
    if best is None:
        return None
    entry, comp, members, taken, enabled = best
    edges = _fair_cycle(entry, members, taken, enabled, estart, edst,
                        [lab(c) for c in ecpu])
    # The concrete CPUs: rename through the canonical frames (symmetry); a
    # cycle of the reduced graph may come back with the symmetric CPUs
    # swapped, so it is turned until they are back in place.
    stem, tau = path(entry, frame=True)
    start = tau
    cycle = []
    for _turn in range(720):
        for e in edges:
            cycle += [tau[ecpu[e]]] * ecount.get(e, 1)
            to = eperm.get(e)
            if to is not None:
                tau = compose(tau, invert(to))
        if tau == start:
            break
    else:
        raise AssertionError("livelock: the cycle never comes back to its concrete state")
    entry_state = _check_lasso(space, stem, cycle)
    w = space.w
    loop = sorted({c for c in cycle if not space.daemon[c]})
    waiting = sorted(c for c in range(space.n) if not space.daemon[c] and c not in loop
                     and not space.nodes[entry_state[1][c]].done)
    funcs = []
    s = entry_state
    for c in cycle:
        for f in space.nodes[s[1][c]].stack[:2]:     # the program and what it calls
            if f not in funcs and f is not None:
                funcs.append(f)
        s, _ = space.step(s, c)
    who = ", ".join(w.name(c) for c in loop)
    msg = (f"{who} never finish{'es' if len(loop) == 1 else ''}: after {len(stem)} steps, the "
           f"same {len(cycle)} steps (through {', '.join(f + '()' for f in funcs[:6])}) bring "
           f"every CPU and the machine back to where they were, and a fair scheduler can repeat "
           f"them forever")
    if waiting:
        msg += f"; {', '.join(w.name(c) for c in waiting)} never get{'s' if len(waiting) == 1 else ''} to run to the end"
    return (stem + cycle, msg, len(stem))


def _fair_cycle(entry, members, taken, enabled, estart, edst, elab) -> list:
    """A cycle of edges from ``entry`` inside the component that takes a
    step of every CPU (label) that steps in it and passes a state where
    each other one is disabled: fair by construction."""
    def route(src, goal):
        """The shortest list of edges inside the component from ``src`` that
        ends with an edge satisfying ``goal(v, e)``; and where it lands."""
        prev = {src: None}
        todo = deque([src])
        while todo:
            v = todo.popleft()
            for e in range(estart[v], estart[v + 1]):
                w = edst[e]
                if w not in members:
                    continue
                if goal(v, e):
                    seq = [e]
                    u = v
                    while prev[u] is not None:
                        u, pe = prev[u]
                        seq.append(pe)
                    return seq[::-1], w
                if w not in prev:
                    prev[w] = (v, e)
                    todo.append(w)
        raise AssertionError("livelock: the component is not strongly connected")

    labels = sorted(taken, key=repr)
    waits = sorted(set().union(*enabled.values()) - taken, key=repr)
    cycle, cur = [], entry
    for c in labels:
        seq, cur = route(cur, lambda v, e, c=c: elab[e] == c)
        cycle += seq
    for c in waits:
        if c not in enabled[cur]:
            continue
        seq, cur = route(cur, lambda v, e, c=c: c not in enabled[edst[e]])
        cycle += seq
    if cur != entry or not cycle:
        seq, cur = route(cur, lambda v, e: edst[e] == entry)
        cycle += seq
    return cycle


def _check_lasso(space, stem, cycle):
    """The lasso must replay through the state space, CPU by CPU as found
    (no renaming): the stem reaches a state, and the cycle comes back to
    exactly that state.  Returns it."""
    s = space.initial
    for c in stem:
        s, v = space.step(s, c)
        assert v is None, "livelock stem hits a violation"
    entry = s
    for c in cycle:
        s, v = space.step(s, c)
        assert v is None, "livelock cycle hits a violation"
    assert s == entry, "livelock cycle does not come back"
    return entry


def _unreduced(space: StateSpace, bound=None, max_executions=2_000_000, max_depth=20000):
    """Every interleaving, no visited set: the baseline the reduction is
    measured (and tested) against.  Depth-first; each branch point's state
    is restored, not replayed."""
    found: dict = {}
    executions = transitions = bound_hits = 0
    complete = True
    path: list = []
    # each frame: [state, enabled, next choice index, preemptions so far]
    s0 = space.initial
    stack = [[s0, space.enabled(s0), 0, 0]]
    while stack:
        top = stack[-1]
        s, en, k, p = top
        depth = len(stack) - 1
        if not en:
            executions += 1
            for kind, msg in space.terminal(s):
                found.setdefault(kind, (path[:depth], msg))
            stack.pop()
            if executions >= max_executions:
                complete = False
                break
            continue
        if k >= len(en) or depth >= max_depth:
            if depth >= max_depth:
                found.setdefault("livelock", (path[:depth], f"more than {max_depth} steps"))
                executions += 1
            stack.pop()
            continue
        top[2] = k + 1
        i = en[k]
        last = path[depth - 1] if depth else None
        q = p + _preempts(i, last, en)
        if bound is not None and q > bound:
            bound_hits += 1
            continue
        t, viols = space.step(s, i)
        transitions += 1
        del path[depth:]
        path.append(i)
        if viols:
            executions += 1
            for kind, msg in viols:
                found.setdefault(kind, (list(path), msg))
            continue
        stack.append([t, space.enabled(t), 0, q])
    if bound_hits:
        complete = False
    return found, {"executions": executions, "transitions": transitions,
                   "bound_hits": bound_hits, "complete": complete}


# ---------------------------------------------------------------------------
# Live runs: manual, random, PCT
# ---------------------------------------------------------------------------

def _walk(space: StateSpace, choose, max_steps):
    """One run from the initial state, ``choose(enabled, last, step,
    relaxed)`` picking each CPU (``relaxed``: the last step was a
    ``cpu_relax()`` hint), through the memoised state space (so repeated runs
    cost a dictionary lookup per step).  Returns (schedule, violations)."""
    s = space.initial
    sched = []
    last = None
    relaxed = False
    nodes = space.nodes
    while True:
        en = space.enabled(s)
        if not en:
            return sched, space.terminal(s)
        if len(sched) >= max_steps:
            return sched, [("livelock", f"more than {max_steps} steps")]
        c = choose(en, last, len(sched), relaxed)
        sched.append(c)
        last = c
        relaxed = nodes[s[1][c]].op[0] == "cpu_relax"
        s, viols = space.step(s, c)
        if viols:
            return sched, viols


def random_chooser(rng):
    """Seeded random scheduling: any enabled CPU, uniformly."""
    return lambda en, last, step, relaxed=False: rng.choice(en)


def pct_chooser(rng, n, depth, k):
    """PCT (Burckhardt et al. 2010): distinct random priorities, d-1
    priority-change points spread over the first k steps.  Like
    :func:`random_chooser`, it returns ``choose(enabled, last, step,
    relaxed)``, as live runs and :func:`_walk` call it."""
    prio = list(range(depth, depth + n))
    rng.shuffle(prio)
    points = sorted(rng.sample(range(1, max(k, depth) + 1), depth - 1)) if depth > 1 else []
    change = {pt: depth - 1 - j for j, pt in enumerate(points)}

    def choose(en, last, step, relaxed=False):
        if len(en) > 1 and step in change and last is not None:
            prio[last] = change[step]
        elif relaxed and len(en) > 1:
            prio[last] = min(prio) - 1       # a yield hint: below everyone (as shuttle does)
        return max(en, key=lambda c: prio[c])
    return choose


# ---------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------

def replay_world(world: World, schedule="") -> World:
    """Run ``schedule`` (then the default: no preemption, lowest CPU first)
    on ``world`` with every event recorded; returns it (see ``.events``,
    ``.violations``, ``.diagram()``)."""
    world.run(parse_schedule(schedule, world.n, world.max_steps))
    return world


def trim_schedule(template: World, schedule) -> list:
    """Drop the tail of ``schedule`` that the default policy would choose
    anyway: the shorter schedule replays identically."""
    w = template.again(record=False)
    keep = 0
    last = None
    relaxed = False
    for k, c in enumerate(schedule):
        if w.outcome is not None:
            break
        en = w.enabled()
        if c != default_choice(en, last, relaxed):
            keep = k + 1
        relaxed = w.step(c).op[0] == "cpu_relax"
        last = c
    return list(schedule[:keep])


def _materialise(template: World, kind, sched, msg, cycle_start=None):
    """Replay a found schedule live: the events, diagram and log.  A
    livelock's schedule is a lasso: it is replayed as it is (stem, then the
    cycle once) and the violation attached to where the cycle starts."""
    from .report import race_diagram, state_log
    w = template.again(record=True)
    if cycle_start is not None:
        w.run(sched, complete=False)
        w.stop(Violation.lasso(w, cycle_start, msg))
        viol = w.violations[-1]
        diagram = race_diagram(w, [viol], cycle_start=cycle_start)
        return Found(kind, list(sched), msg, viol, diagram, state_log(w), cycle_start)
    w.run(sched)
    viol = next((v for v in w.violations if v.kind == kind), None)
    if viol is None:
        raise AssertionError(f"explorer bug: schedule {format_schedule(sched)} for {kind} "
                             f"did not reproduce it on replay (got {w.outcome}: "
                             f"{[v.kind for v in w.violations]})")
    short = trim_schedule(template, sched)
    return Found(kind, short, msg, viol, race_diagram(w, [viol]), state_log(w))


def _minimise(template: World, kind, sched):
    """Delta debugging (ddmin) on a schedule found by random or PCT search:
    the smallest schedule (with the default completion) that still shows
    ``kind``."""
    def shows(cand):
        try:
            w = template.again(record=False)
            w.run(cand)
        except S2ptError:
            return False
        return any(v.kind == kind for v in w.violations)

    cur = trim_schedule(template, sched)
    n = 2
    while len(cur) >= 2:
        chunk = max(1, len(cur) // n)
        reduced = False
        for start in range(0, len(cur), chunk):
            cand = cur[:start] + cur[start + chunk:]
            if shows(cand):
                cur = trim_schedule(template, cand)
                n = max(n - 1, 2)
                reduced = True
                break
        if not reduced:
            if chunk == 1:
                break
            n = min(len(cur), n * 2)
    return cur


# ---------------------------------------------------------------------------
# The serial-order oracle
# ---------------------------------------------------------------------------

_SERIAL: dict = {}


def content_key(obj):
    """What a scenario or scheme *is*, for caching: its type and fields
    (functions by identity), not its name -- a reader who rebuilds
    ``Scenario("x", ...)`` with another builder gets a fresh oracle."""
    fields = getattr(obj, "__dict__", None)
    if fields is None:
        return (type(obj), freeze(obj, {}))
    return (type(obj),) + tuple((k, freeze(v, {})) for k, v in sorted(fields.items()))


def serial_outcomes(scenario, scheme, bugs, final, checks=()) -> frozenset:
    """``final(world)`` of every serial order of the scenario's CPUs (each
    runs to completion before the next starts; RCU callbacks run at the
    end), for the lost-update oracle.  Orders that hit a violation
    (including one of ``checks`` at the end) contribute nothing.  Cached on
    the scenario's and the scheme's content."""
    key = (content_key(scenario), content_key(scheme), frozenset(bugs), final, tuple(checks))
    out = _SERIAL.get(key)
    if out is not None:
        return out
    # Walked through one state space (memoised steps, shared by the orders):
    # an order whose running CPU comes back to a state it was in never
    # completes (it spins, as a vCPU refaulting on -EAGAIN does) and
    # contributes nothing.
    #
    # The running CPU goes on alone while it stays the first enabled CPU of
    # the order (StateSpace.run_alone): only where such a run ends is a CPU
    # position fingerprinted, which is most of the cost of a step.  A run
    # ends, too, before it performs an operation a third time on the same
    # machine from the same call stack, so a CPU that spins comes back to a
    # state it was in at a run's end, and is caught there.
    with StateSpace(World(scenario, scheme, bugs, checks, record=False)) as space:
        cpus = [i for i in range(space.n) if not space.daemon[i]]
        found = set()
        for order in itertools.permutations(cpus):
            rank = {c: k for k, c in enumerate(order)}
            s, seen, bad = space.initial, set(), False
            while True:
                en = space.enabled(s)
                if not en:
                    break
                if s in seen:
                    bad = True
                    break
                seen.add(s)
                c = min(en, key=lambda c: rank.get(c, len(rank)))
                if space.impure[c]:
                    s, viols = space.step(s, c)
                    if viols:
                        bad = True
                        break
                    continue
                s = _serial_run(space, s, c, [k for k in range(space.n)
                                              if rank.get(k, len(rank)) < rank.get(c, len(rank))])
                if s is None:
                    bad = True
                    break
            if bad or not space.all_done(s) or space.terminal(s):
                continue
            space.restore(s)
            found.add(final(space.w))
    out = _SERIAL[key] = frozenset(found)
    return out


def _serial_run(space, s, c, first):
    """CPU ``c`` steps from state ``s`` and goes on while no CPU of
    ``first`` (those before it in the order) can step and its own next
    operation does not block: the state where it stops, or None if its
    first step is a violation (a later one ends the run before it)."""
    mid, nodes = s
    m, allnodes = space.m, space.nodes
    others = [(k, allnodes[nodes[k]]) for k in first if not allnodes[nodes[k]].done]

    def goes_on(cur, i, op, guard, mid0):
        # The live machine is at ``cur`` while a run goes on.
        if m.blocked(i, op) is not None:
            return None
        for k, node in others:
            if m.blocked(k, node.op) is None:
                return None
        return guard

    space.runs.clear()            # a run's extent here depends on the order, not on its start
    r = space.run_alone(mid, nodes[c], c, True, goes_on, RUN_CAP)
    if not r:
        return None
    return (r[1], nodes[:c] + (r[2],) + nodes[c + 1:])


@contextmanager
def collector_paused():
    """Python's cycle collector off for the duration, back on after (if it
    was on).  A search's state space is millions of tuples, nodes and dicts
    that live as long as the search: each collection of the older
    generations traverses all of them again, for nothing, since a step
    makes no cyclic garbage (the space itself is the only cycle, and
    StateSpace.release breaks it).  Measured: a quarter of the time of the
    searches that fingerprint most positions.  (Not worth it for a few
    recorded runs: what they allocate is collected when it is back on, at
    about the cost the pause saved.)"""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# ---------------------------------------------------------------------------
# The search entry point
# ---------------------------------------------------------------------------

#: The search modes (see :func:`search`).
MODES = ("exhaustive", "unreduced", "random", "pct")
#: The most random or PCT runs one search accepts: about 25 minutes of
#: collapse-vs-fault runs (1.5 ms each); more is a typo, not a plan.
MAX_RUNS = 1_000_000


def search(template: World, *, mode="exhaustive", runs=1000, depth=2, seed=0,
           preemptions=None, max_states=2_000_000, details=True, check=False,
           progress=False, cancel=None, symmetry=True, por=True, liveness=True) -> Result:
    """Search the interleavings of ``template``'s scenario (a fresh World:
    scenario, scheme, bugs and end-of-run checks) for violations.

    ``mode``: "exhaustive" (stateful breadth-first; shortest schedules),
    "unreduced" (every interleaving, no visited set: a baseline), "random"
    (``runs`` seeded random schedules) or "pct" (``runs`` seeded PCT
    schedules of depth ``depth``).  ``preemptions`` bounds the number of
    preemptive context switches (exhaustive modes).  ``check`` audits the
    snapshot protocol on every restore (slower; the tests use it).
    ``symmetry``: search interchangeable CPUs once (s2pt.sim.symmetry; the
    exhaustive mode only).  ``por``: take a CPU's private steps alone
    (partial-order reduction, s2pt.sim.por; the exhaustive mode only).
    ``liveness``: a CPU's position is its live locals only (dead-variable
    reduction, s2pt.sim.liveness; False keeps every local, the reference).

    Each violation kind comes back once, with its shortest schedule found
    (random/PCT schedules are minimised by delta debugging), replayed to a
    race diagram and a state log.

    ``progress``: True prints a progress line on stderr, a stream (e.g.
    ``sys.stdout``, in a notebook) prints it there; a callable is
    called as ``progress(states, depth, frontier)`` every 1024 states of an
    exhaustive search.  ``cancel``: a callable asked as often; when it
    returns true the search stops and the Result says it is not complete
    (what was found so far is kept).  Neither changes what is found.
    """
    if cancel is not None and not callable(cancel):
        raise S2ptError(f"cancel={cancel!r}: give a function returning True to stop the search")
    if template.nsteps:
        raise S2ptError("search: the template World has already stepped; pass a fresh one")
    mode = validate.choice("mode", mode, MODES, "the search mode:")
    preemptions = validate.optional_integer("preemptions", preemptions, 0,
                                            rule="a bound is a non-negative integer")
    max_states = validate.integer("max_states", max_states, 1)
    details = validate.flag("details", details)
    check = validate.flag("check", check)
    symmetry = validate.flag("symmetry", symmetry)
    por = validate.flag("por", por)
    liveness = validate.flag("liveness", liveness)
    progress = False if progress is None else validate.stream_or_flag("progress", progress)
    runs = validate.integer("runs", runs, 1, MAX_RUNS,
                            rule=f"a number of runs from 1 to {MAX_RUNS:,}")
    depth = validate.integer("depth", depth, 1, template.max_steps,
                             rule=f"PCT depth is a positive integer, at most the run's "
                                  f"max_steps ({template.max_steps}): one priority change "
                                  f"point per step at most")
    seed = validate.integer("seed", seed, 0, (1 << 64) - 1,
                            rule="a seed is an integer from 0 to 2**64 - 1")
    # The search allocates millions of small tuples that live as long as it
    # does and none that form cycles: the cycle collector would only
    # traverse them again and again (a quarter of a search's time).
    with collector_paused():
        return _search(template, mode, runs, depth, seed, preemptions, max_states, details,
                       check, progress, cancel, symmetry, por, liveness)


def _search(template, mode, runs, depth, seed, preemptions, max_states, details, check,
            progress, cancel, symmetry, por, liveness) -> Result:
    """:func:`search`, its arguments checked."""
    max_steps = template.max_steps
    name = getattr(template.scenario, "name", "?")
    scheme = getattr(template.scheme, "name", "?")
    t0 = time.perf_counter()
    settings = {"seed": seed} if mode in ("random", "pct") else {}
    if preemptions is not None:
        settings["preemptions"] = preemptions
    if mode in ("exhaustive", "unreduced"):
        # (A preemption bound counts switches away from the CPU that ran
        # last: the search keeps it unreduced.)
        with StateSpace(template.again(record=False), check,
                        symmetry=symmetry and mode == "exhaustive" and preemptions is None,
                        por=por and mode == "exhaustive" and preemptions is None,
                        liveness=liveness) as space:
            if callable(progress):
                prog = progress
            else:
                prog = _Progress(progress, f"{name}/{scheme}") if progress else None
            if mode == "exhaustive":
                raw, st = _bfs(space, preemptions, max_states, max_steps, prog, cancel=cancel)
            else:
                raw, st = _unreduced(space, preemptions, max_states, max_steps)
            if isinstance(prog, _Progress):
                prog.done()
            if space.sym is not None:
                settings["symmetry"] = [[template.name(i) for i in g] for g in space.sym.groups]
            if space.por is not None and space.por.taken:
                settings["por_private_steps"] = space.por.taken
            res = Result(name, scheme, mode, st["complete"], 0.0, st.get("states", 0),
                         st["transitions"], st.get("executions", 0), bound_hits=st["bound_hits"],
                         settings=settings, window=st.get("window"))
    elif mode in ("random", "pct"):
        rng = random.Random(seed)
        with StateSpace(template.again(record=False), check, liveness=liveness) as space:
            if mode == "random":
                def chooser():
                    return random_chooser(rng)
            else:
                k = len(_walk(space, lambda en, last, step, relaxed:       # lowest CPU first
                              next((c for c in en if not (relaxed and c == last)), en[0]),
                              max_steps)[0])

                def chooser():
                    return pct_chooser(rng, space.n, depth, k)
            raw = {}
            for _ in range(runs):
                sched, viols = _walk(space, chooser(), max_steps)
                for kind, msg in viols:
                    if kind not in raw or len(sched) < len(raw[kind][0]):
                        raw[kind] = (sched, msg)
            res = Result(name, scheme, mode, False, 0.0, executions=runs, settings=settings)
            if mode == "pct":
                res.settings["depth"] = depth
            raw = {kind: (_minimise(template, kind, s), msg) for kind, (s, msg) in raw.items()}
    res.seconds = time.perf_counter() - t0
    res._scenario = template.scenario
    for kind in sorted(raw):
        sched, msg, *cyc = raw[kind]
        start = cyc[0] if cyc else None
        if details:
            res.found[kind] = _materialise(template, kind, sched, msg, start)
        else:
            res.found[kind] = Found(kind, sched, msg, cycle_start=start)
    return res
