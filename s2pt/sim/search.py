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

import itertools
import random
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from ..errors import KernelBug, S2ptError
from .. import validate
from ..ops import BLOCKING, NOMEM as _NOMEM, OBSERVED as _OBSERVED, READS as _READS
from ..ops import REFS as _REFS, STORES as _WRITES, SYNC as _SYNC
from ..snapshot import audit_fields
from .violation import KINDS
from .world import World, default_choice, frames, freeze, stack_names

__all__ = ["search", "replay_world", "serial_outcomes", "Result", "Found", "parse_schedule",
           "format_schedule", "StateSpace", "SOMETIMES", "NEVER"]

#: A scenario's declared outcome for one kind of violation under one scheme.
SOMETIMES, NEVER = "Sometimes", "Never"


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

    @property
    def schedule_text(self) -> str:
        return format_schedule(self.schedule)

    def to_json(self) -> dict:
        out = {"kind": self.kind, "schedule": self.schedule_text, "steps": len(self.schedule),
               "diagram": self.diagram}
        if self.violation is not None:
            out.update({k: v for k, v in self.violation.to_json().items() if k != "kind"})
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

    @property
    def violations(self) -> list:
        return list(self.found.values())

    @property
    def kinds(self) -> set:
        return set(self.found)

    def check_declared(self) -> list:
        """Mismatches between this result and the scenario's declaration
        (a Never that was found; a Sometimes not found by a complete search)."""
        sc = self._scenario
        out = []
        for kind in KINDS:
            exp = sc.expected(self.scheme, kind)
            if exp is None:
                continue
            if exp == SOMETIMES and kind not in self.found and self.complete:
                out.append(f"{kind}: declared Sometimes, never found")
            elif exp != SOMETIMES and kind in self.found:
                out.append(f"{kind}: declared Never, found with schedule "
                           f"{self.found[kind].schedule_text}")
        return out

    def to_json(self) -> dict:
        out = {"scenario": self.scenario, "scheme": self.scheme, "mode": self.mode,
               "complete": self.complete, "seconds": round(self.seconds, 3),
               "violations": [f.to_json() for f in self.found.values()]}
        if self.mode in ("exhaustive", "unreduced"):
            out["states"] = self.states
            out["transitions"] = self.transitions
        out["executions"] = self.executions
        out.update(self.settings)
        return out

    def summary(self) -> str:
        what = (f"{self.states:,} states, {self.transitions:,} transitions"
                if self.mode in ("exhaustive", "unreduced") else f"{self.executions:,} executions")
        head = (f"{self.scenario} under {self.scheme}: {self.mode} search, {what}, "
                f"{self.seconds:.2f} s, {'complete' if self.complete else 'NOT complete'}")
        if self.bound_hits:
            head += f" ({self.bound_hits:,} choices exceeded the preemption bound)"
        if not self.found:
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


class Node:
    """One CPU's suspended position: its next operation and how it got here."""
    __slots__ = ("cpu", "op", "stack", "edges", "hist", "done")

    def __init__(self, cpu, op, stack, hist, done=False):
        self.cpu, self.op, self.stack, self.hist, self.done = cpu, op, stack, hist, done
        self.edges = {}


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

    def __init__(self, world: World, check: bool = False):
        self.w = w = world
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
        self.pdata, self.pids = [], {}          # (refcount, freed, content id, walkers), interned
        self.live = _Live(len(self.pages))
        self.live.content = [self._content(k) for k in range(len(self.pages))]
        self.live.pages = tuple(self._pid(k) for k in range(len(self.pages)))
        self.mcs = list(w.setup.memcaches)
        self.stateful = list(w.stateful)        # checked by World: each one is Stateful
        self.audits: dict = {}                  # (object index, state) -> its fields (check mode)
        self.impure = [not a.pure for a in w.actors]
        self.daemon = [a.daemon for a in w.actors]
        self.n = w.n
        self.nodes: list[Node] = []
        self.node_ids: dict = {}
        self.gens: dict = {}
        self.mstates: list = []                 # machine id -> machine state tuple
        self.mids: dict = {}                    # machine state tuple -> machine id
        self.tmemo: dict = {}                   # (machine id, node id) -> transition
        self.end_memo: dict = {}
        self.live.alloc = (tuple(mm.free_list), mm.allocated)
        self.live.mc = self._mc_state()
        self.live.sync = m.sim_state()
        self.live.st = self._st_state()
        mstate = self.machine_state()
        ids = []
        for i in range(self.n):
            gen = w.cpus[i]
            ids.append(self._node_from(i, gen, w.pending[i], (), w.results[i], mstate))
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
        key = (p.refcount, p.freed, self.live.content[k], p.walkers)
        pid = self.pids.get(key)
        if pid is None:
            pid = len(self.pdata)
            self.pids[key] = pid
            self.pdata.append(key)
        return pid

    def _mc_state(self):
        return tuple(tuple(p.pfn for p in mc.objects) for mc in self.mcs)

    def _st_state(self):
        """The observers' states: each one's ``sim_state()`` (the snapshot
        protocol, s2pt.snapshot).  In check mode, each object's fields are
        recorded with the state, so a restore can be audited."""
        if not self.stateful:
            return ()
        out = tuple(o.sim_state() for o in self.stateful)
        if self.check:
            for k, (o, st) in enumerate(zip(self.stateful, out)):
                fields = freeze(audit_fields(o), self.w.opaque)
                old = self.audits.setdefault((k, st), fields)
                if old != fields:
                    raise S2ptError(
                        f"{type(o).__name__}.sim_state() returned the same snapshot for two "
                        f"different states: a field it does not capture changed "
                        f"({_diff(old, fields)}); pruning on it would be unsound")
        return out

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
                    rc, freed, cid, walkers = self.pdata[pid]
                    page = self.pages[k]
                    page.refcount, page.freed, page.walkers = rc, freed, walkers
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
            for k, (o, key) in enumerate(zip(self.stateful, s[4])):
                o.sim_restore(key)
                if self.check:
                    fields = freeze(audit_fields(o), self.w.opaque)
                    want = self.audits.get((k, key))
                    if want is not None and want != fields:
                        raise S2ptError(
                            f"{type(o).__name__}.sim_restore() did not bring back the state "
                            f"it was given ({_diff(want, fields)})")
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
            self.live.mc = self._mc_state()
        elif name not in _NOMEM:
            return self.machine_state(full=True)
        if name in _SYNC:
            self.live.sync = self.m.sim_state()
        if self.stateful and (name in _OBSERVED or (name in _REFS and self.live.alloc[1] != alloc)):
            self.live.st = self._st_state()
        return (self.live.pages, self.live.alloc, self.live.mc, self.live.sync, self.live.st)

    # -- CPU nodes ---------------------------------------------------------------
    def _node_from(self, i, gen, op, hist, ret, mstate):
        if gen is None:
            key = (i, "done", freeze(ret, self.w.opaque))
        else:
            key = (i, frames(gen, self.w.opaque), freeze(op, self.w.opaque))
        nid = self.node_ids.get(key)
        if nid is None:
            nid = len(self.nodes)
            self.node_ids[key] = nid
            node = Node(i, op, stack_names(gen) if gen is not None else (), hist, gen is None)
            if self.impure[i] and not hist:
                node.hist = ((None, mstate),)
            self.nodes.append(node)
        if gen is not None and nid not in self.gens:
            self.gens[nid] = gen
        return nid

    def _rebuild(self, i, node):
        """A fresh generator at ``node``: replay the CPU's own results."""
        w, m = self.w, self.m
        gen = w.actors[i].start()
        impure = self.impure[i]
        hist = node.hist
        if impure:
            self.live.forget("st")
            self._restore(hist[0][1])
            hist = hist[1:]
        op = gen.send(None)
        for result, mstate in hist:
            if impure:
                self.live.forget("st")       # the code between yields changed observers
                self._restore(mstate)
            op = gen.send(result)
        if impure:
            self.live.forget("st")
            self.live.forget("pages")
        m.violations.clear()
        if self.check and not impure:
            key = (i, frames(gen, w.opaque), freeze(op, w.opaque))
            assert self.node_ids[key] is self.node_ids.get(key), "rebuild diverged"
        return gen

    def _advance(self, i, nid, node, result, mstate):
        """Run CPU ``i``'s code from ``node`` with ``result``: the edge."""
        m = self.m
        gen = self.gens.pop(nid, None)
        if gen is None:
            gen = self._rebuild(i, node)
            if self.impure[i]:
                self._restore(mstate)
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
        if viols:
            return (None, viols, None)
        hist = node.hist + ((result, mstate if self.impure[i] else None),)
        child = self._node_from(i, None if done else gen, op2, hist, ret, None)
        post = self.machine_state(full=True) if self.impure[i] else None
        return (child, (), post)

    # -- transitions ---------------------------------------------------------------
    def enabled(self, s) -> tuple:
        nodes = self.nodes
        out = []
        sync = None
        for i, nid in enumerate(s[1]):
            node = nodes[nid]
            if node.done:
                continue
            if node.op[0] in BLOCKING:
                if sync is None:
                    sync = self.mstates[s[0]][3]
                    if sync != self.live.sync:
                        self.m.sim_restore(sync)
                        self.live.sync = sync
                        self.live.forget("mid")
                if self.m.blocked(i, node.op) is not None:
                    continue
            out.append(i)
        return tuple(out)

    def all_done(self, s) -> bool:
        return all(self.nodes[nid].done or self.daemon[i] for i, nid in enumerate(s[1]))

    def step(self, s, i):
        """CPU ``i`` steps from state ``s``: (new state, None) or (None, violations)."""
        mid, nodes = s
        nid = nodes[i]
        key = (mid, nid)
        t = self.tmemo.get(key)
        if t is None:
            t = self.tmemo[key] = self._step(mid, nid, i)
        if t[2]:
            return None, list(t[2])
        return (t[0], nodes[:i] + (t[1],) + nodes[i + 1:]), None

    def _step(self, mid, nid, i):
        """Perform node ``nid``'s operation on machine ``mid`` and run CPU
        ``i``'s code to its next yield: (machine id, child node, violations)."""
        self.restore(mid)
        node = self.nodes[nid]
        m = self.m
        m.cpu = i
        op = node.op
        self.live.forget("mid")
        result = m.perform(op)
        if m.violations:
            v = tuple(m.violations)
            m.violations.clear()
            self._invalidate()            # the step is not snapshotted: forget what is live
            return (None, None, v)
        mstate = self._after_op(op)
        ekey = (result, mstate) if self.impure[i] else result
        edge = node.edges.get(ekey)
        if edge is None:
            edge = self._advance(i, nid, node, result, mstate)
            node.edges[ekey] = edge
        child, viols, post = edge
        if viols:
            self._invalidate()
            return (None, None, tuple(viols))
        if post is not None:
            self._restore(post)
            mstate = post
        mid2 = self._intern(mstate)
        self.live.mid = mid2
        return (mid2, child, ())

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
        return [("deadlock", "; ".join(f"CPU {i} {why}" for i, why in self.blocked_reasons(s)))]

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

    def __call__(self, states, depth, queue):
        if not self.on:
            return
        now = time.perf_counter()
        if now - self.last < 0.5:
            return
        self.last = now
        rate = states / max(now - self.t0, 1e-9)
        out = self.out or sys.stderr
        out.write(f"\r{self.label}: {states:,} states, depth {depth}, frontier "
                  f"{queue:,}, {rate:,.0f} states/s ")
        out.flush()

    def done(self):
        if self.on and self.last != self.t0:
            out = self.out or sys.stderr
            out.write("\r" + " " * 78 + "\r")
            out.flush()


def _preempts(i, last, enabled) -> int:
    """1 if stepping CPU ``i`` preempts ``last`` (a switch away from a CPU
    that could have gone on), else 0."""
    return int(last is not None and i != last and last in enabled)


def _bfs(space: StateSpace, bound=None, max_states=2_000_000, max_depth=20000, progress=None,
         first_only=False, cancel=None):
    """Breadth-first stateful search.  Returns (found, stats).  ``progress``
    is called with (states, depth, frontier) every 1024 states; ``cancel()``
    is asked as often and, when true, stops the search (incomplete)."""
    s0 = space.initial
    states = [s0]
    parent = [-1]
    via = [-1]
    depth = [0]
    pre = [0]
    seen = {(s0, None) if bound is not None else s0: 0}
    queue = deque([0])
    found: dict = {}
    transitions = terminals = bound_hits = 0
    complete = True

    def path(sid):
        out = []
        while sid > 0:
            out.append(via[sid])
            sid = parent[sid]
        return out[::-1]

    while queue:
        sid = queue.popleft()
        s = states[sid]
        if not (sid & 1023):
            if progress is not None:
                progress(len(states), depth[sid], len(queue))
            if cancel is not None and cancel():
                complete = False
                break
        en = space.enabled(s)
        if not en:
            terminals += 1
            for kind, msg in space.terminal(s):
                found.setdefault(kind, (path(sid), msg))
            continue
        if depth[sid] >= max_depth:
            found.setdefault("livelock", (path(sid), f"more than {max_depth} steps"))
            continue
        last = via[sid] if sid else None
        for i in en:
            p = pre[sid] + _preempts(i, last, en)
            if bound is not None and p > bound:
                bound_hits += 1
                continue
            t, viols = space.step(s, i)
            transitions += 1
            if viols:
                for kind, msg in viols:
                    found.setdefault(kind, (path(sid) + [i], msg))
                continue
            key = (t, i) if bound is not None else t
            old = seen.get(key)
            if old is not None and (bound is None or pre[old] <= p):
                continue
            if len(states) >= max_states:
                complete = False
                continue
            seen[key] = len(states)
            states.append(t)
            parent.append(sid)
            via.append(i)
            depth.append(depth[sid] + 1)
            pre.append(p)
            queue.append(len(states) - 1)
        if first_only and found:
            complete = False
            break
    if bound_hits:
        complete = False
    return found, {"states": len(seen), "transitions": transitions, "terminals": terminals,
                   "bound_hits": bound_hits, "complete": complete}


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


def _materialise(template: World, kind, sched, msg):
    """Replay a found schedule live: the events, diagram and log."""
    from .report import race_diagram, state_log
    w = template.again(record=True)
    w.run(sched)
    viol = next((v for v in w.violations if v.kind == kind), None)
    if viol is None:
        raise AssertionError(f"explorer bug: schedule {format_schedule(sched)} for {kind} "
                             f"did not reproduce it on replay (got {w.outcome}: "
                             f"{[v.kind for v in w.violations]})")
    short = trim_schedule(template, sched)
    return Found(kind, short, msg, viol, race_diagram(w), state_log(w))


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
        return (type(obj), id(obj))
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
    probe = World(scenario, scheme, bugs, checks, record=False)
    cpus = [i for i, a in enumerate(probe.actors) if not a.daemon]
    found = set()
    for order in itertools.permutations(cpus):
        w = probe.again()
        rank = {c: k for k, c in enumerate(order)}

        def policy(world, enabled, rank=rank):
            return min(enabled, key=lambda c: rank.get(c, len(rank)))

        w.run((), policy)
        if w.outcome == "done" and not w.violations:
            found.add(final(w))
    out = _SERIAL[key] = frozenset(found)
    return out


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
           progress=False, cancel=None) -> Result:
    """Search the interleavings of ``template``'s scenario (a fresh World:
    scenario, scheme, bugs and end-of-run checks) for violations.

    ``mode``: "exhaustive" (stateful breadth-first; shortest schedules),
    "unreduced" (every interleaving, no visited set: a baseline), "random"
    (``runs`` seeded random schedules) or "pct" (``runs`` seeded PCT
    schedules of depth ``depth``).  ``preemptions`` bounds the number of
    preemptive context switches (exhaustive modes).  ``check`` audits the
    snapshot protocol on every restore (slower; the tests use it).

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
    progress = False if progress is None else validate.stream_or_flag("progress", progress)
    runs = validate.integer("runs", runs, 1, MAX_RUNS,
                            rule=f"a number of runs from 1 to {MAX_RUNS:,}")
    depth = validate.integer("depth", depth, 1, template.max_steps,
                             rule=f"PCT depth is a positive integer, at most the run's "
                                  f"max_steps ({template.max_steps}): one priority change "
                                  f"point per step at most")
    seed = validate.integer("seed", seed, 0, (1 << 64) - 1,
                            rule="a seed is an integer from 0 to 2**64 - 1")
    max_steps = template.max_steps
    name = getattr(template.scenario, "name", "?")
    scheme = getattr(template.scheme, "name", "?")
    t0 = time.perf_counter()
    settings = {"seed": seed} if mode in ("random", "pct") else {}
    if preemptions is not None:
        settings["preemptions"] = preemptions
    if mode in ("exhaustive", "unreduced"):
        space = StateSpace(template.again(record=False), check)
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
        res = Result(name, scheme, mode, st["complete"], 0.0, st.get("states", 0),
                     st["transitions"], st.get("executions", 0), bound_hits=st["bound_hits"],
                     settings=settings)
    elif mode in ("random", "pct"):
        rng = random.Random(seed)
        space = StateSpace(template.again(record=False), check)
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
        sched, msg = raw[kind]
        if details:
            res.found[kind] = _materialise(template, kind, sched, msg)
        else:
            res.found[kind] = Found(kind, sched, msg)
    return res
