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

import copy
import itertools
import random
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from ..errors import KernelBug, S2ptError
from .sync import BLOCKING
from .world import World, default_choice, frames, freeze, stack_names

__all__ = ["explore", "replay", "Result", "Found", "parse_schedule", "format_schedule",
           "StateSpace"]

_WRITES = frozenset({"WRITE_ONCE", "smp_store_release", "cmpxchg"})
_REFS = frozenset({"get_page", "put_page", "get_page_unless_zero", "free_page"})
_READS = frozenset({"READ_ONCE", "hw_read", "page_count"})
#: Operations that can change an observer's state (a TLB, the BBM automaton):
#: stores, TLBIs, allocations; a put_page that frees is caught separately.
_OBSERVED = frozenset({"WRITE_ONCE", "smp_store_release", "cmpxchg", "tlbi", "zalloc_page",
                       "free_page"})
_NOMEM = frozenset({"cpu_relax", "hw_walk_start", "tlbi", "dsb", "cmo", "rcu_read_lock", "rcu_read_unlock", "call_rcu",
                    "synchronize_rcu", "rcu_gp_wait", "rcu_next_callback", "rcu_barrier",
                    "spin_lock", "spin_unlock", "read_lock", "read_unlock", "write_lock",
                    "write_unlock"})
_SYNC = frozenset({"hw_read", "hw_walk_start", "rcu_read_lock", "rcu_read_unlock", "call_rcu", "synchronize_rcu",
                   "rcu_gp_wait", "rcu_next_callback", "spin_lock", "spin_unlock", "read_lock",
                   "read_unlock", "write_lock", "write_unlock"})


# ---------------------------------------------------------------------------
# Schedule strings
# ---------------------------------------------------------------------------

def parse_schedule(text) -> list:
    """"0 0 1 1 0" -> [0, 0, 1, 1, 0]; "1*4 0" is shorthand for "1 1 1 1 0"."""
    if isinstance(text, (list, tuple)):
        return [int(t) for t in text]
    out = []
    for tok in str(text).replace(",", " ").split():
        cpu, _, times = tok.partition("*")
        try:
            c = int(cpu)
            n = int(times) if times else 1
        except ValueError:
            raise S2ptError(f"schedule token {tok!r}: expected a CPU number, optionally "
                            f"followed by *COUNT (e.g. '0 0 1*3')") from None
        if c < 0 or n < 1:
            raise S2ptError(f"schedule token {tok!r}: CPU numbers and counts are non-negative")
        out += [c] * n
    return out


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
        from ..checkers import KINDS
        from ..scenarios import SOMETIMES, get_scenario
        sc = getattr(self, "_scenario", None) or get_scenario(self.scenario)
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
        self.pdata, self.pids = [], {}          # (refcount, freed, content id), interned
        self.content = [self._content(k) for k in range(len(self.pages))]
        self.live_pages = tuple(self._pid(k) for k in range(len(self.pages)))
        self.mcs = list(w.setup.memcaches)
        self.stateful = list(w.setup.stateful)
        self.st_copies = {}
        self.impure = [not a.pure for a in w.actors]
        self.daemon = [a.daemon for a in w.actors]
        self.n = w.n
        self.nodes: list[Node] = []
        self.node_ids: dict = {}
        self.gens: dict = {}
        self.mstates: list = []                 # machine id -> machine state tuple
        self.mids: dict = {}                    # machine state tuple -> machine id
        self.tmemo: dict = {}                   # (machine id, node id) -> transition
        self.live_mid = None                    # the live machine's id, when known
        self.end_memo: dict = {}
        self.live_alloc = (tuple(mm.free_list), mm.allocated)
        self.live_mc = self._mc_state()
        self.live_sync = m.sync_state()
        self.live_st = self._st_state()
        mstate = self.machine_state()
        ids = []
        for i in range(self.n):
            gen = w.cpus[i]
            ids.append(self._node_from(i, gen, w.pending[i], (), w.results[i], mstate))
        self.live_mid = self._intern(mstate)
        self.initial = (self.live_mid, tuple(ids))

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
        key = (p.refcount, p.freed, self.content[k])
        pid = self.pids.get(key)
        if pid is None:
            pid = len(self.pdata)
            self.pids[key] = pid
            self.pdata.append(key)
        return pid

    def _mc_state(self):
        return tuple(tuple(p.pfn for p in mc.objects) for mc in self.mcs)

    def _st_state(self):
        """The observers' state: ``sim_state()`` where an observer offers
        it (a cheap hashable snapshot, restored by ``sim_restore``), else a
        frozen copy of its fields (restored from a deep copy)."""
        if not self.stateful:
            return ()
        out = []
        for o in self.stateful:
            snap = getattr(o, "sim_state", None)
            if snap is not None:
                out.append(snap())
            else:
                key = freeze(_fields(o), self.w.opaque)
                out.append(key)
                if (id(o), key) not in self.st_copies:
                    self.st_copies[id(o), key] = copy.deepcopy(_fields(o), self._memo())
        return tuple(out)

    def _memo(self):
        return {id(o): o for o in self.w.setup.opaque}

    def machine_state(self, full=True) -> tuple:
        if full:
            if len(self.mm.pages) != len(self.pfns):
                raise S2ptError("a table page was allocated from the page allocator during "
                                "the run; scenarios must fill their memcaches up front")
            self.content = [self._content(k) for k in range(len(self.pages))]
            self.live_pages = tuple(self._pid(k) for k in range(len(self.pages)))
            self.live_alloc = (tuple(self.mm.free_list), self.mm.allocated)
            self.live_mc = self._mc_state()
            self.live_sync = self.m.sync_state()
            self.live_st = self._st_state()
        return (self.live_pages, self.live_alloc, self.live_mc, self.live_sync, self.live_st)

    def _intern(self, mstate) -> int:
        mid = self.mids.get(mstate)
        if mid is None:
            mid = self.mids[mstate] = len(self.mstates)
            self.mstates.append(mstate)
        return mid

    def restore(self, s):
        """Make the live machine equal to state ``s`` (or machine id ``s``)."""
        mid = s if isinstance(s, int) else s[0]
        if mid != self.live_mid:
            self._restore(self.mstates[mid])
            self.live_mid = mid

    def _restore(self, s):
        """Make the live machine equal to machine state tuple ``s``."""
        self.live_mid = None
        pages = s[0]
        if pages is not self.live_pages:
            live = list(self.live_pages) if self.live_pages is not None else [None] * len(pages)
            for k, pid in enumerate(pages):
                if live[k] != pid:
                    rc, freed, cid = self.pdata[pid]
                    page = self.pages[k]
                    page.refcount, page.freed = rc, freed
                    if self.content[k] != cid:
                        page.table[:] = self.cdata[cid]
                        self.content[k] = cid
            self.live_pages = pages
        if s[1] != self.live_alloc:
            self.mm.free_list[:] = s[1][0]
            self.mm.allocated = s[1][1]
            self.live_alloc = s[1]
        if s[2] != self.live_mc:
            for mc, pfns in zip(self.mcs, s[2]):
                mc.objects = [self.mm.pages[p] for p in pfns]
            self.live_mc = s[2]
        if s[3] != self.live_sync:
            self.m.set_sync_state(s[3])
            self.live_sync = s[3]
        if s[4] != self.live_st:
            for o, key in zip(self.stateful, s[4]):
                if hasattr(o, "sim_restore"):
                    o.sim_restore(key)
                else:
                    for k, v in copy.deepcopy(self.st_copies[id(o), key], self._memo()).items():
                        setattr(o, k, v)
            self.live_st = s[4]

    def _invalidate(self):
        """The live machine no longer matches any snapshot: the next
        restore rewrites everything."""
        self.live_pages = self.live_mid = None
        self.content = [None] * len(self.pages)
        self.live_alloc = self.live_mc = self.live_sync = self.live_st = None

    def _after_op(self, op):
        """Update the live snapshot after ``op``; return the machine state."""
        name = op[0]
        alloc = self.live_alloc[1]
        if name in _READS:
            pass
        elif name in _WRITES or name in _REFS:
            k = self.index.get(op[1] >> self.shift)
            if k is not None:
                page = self.pages[k]
                if name in _WRITES or page.freed:
                    self.content[k] = self._content(k)
                pid = self._pid(k)
                if pid != self.live_pages[k]:
                    lp = list(self.live_pages)
                    lp[k] = pid
                    self.live_pages = tuple(lp)
                if name in ("put_page", "free_page"):
                    self.live_alloc = (tuple(self.mm.free_list), self.mm.allocated)
        elif name == "zalloc_page":
            self.live_mc = self._mc_state()
        elif name not in _NOMEM:
            return self.machine_state(full=True)
        if name in _SYNC:
            self.live_sync = self.m.sync_state()
        if self.stateful and (name in _OBSERVED or (name in _REFS and self.live_alloc[1] != alloc)):
            self.live_st = self._st_state()
        return (self.live_pages, self.live_alloc, self.live_mc, self.live_sync, self.live_st)

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
            self.live_st = None
            self._restore(hist[0][1])
            hist = hist[1:]
        op = gen.send(None)
        for result, mstate in hist:
            if impure:
                self.live_st = None       # the code between yields changed observers
                self._restore(mstate)
            op = gen.send(result)
        if impure:
            self.live_st = None
            self.live_pages = None
        m.violations.clear()
        w.warnings.clear()
        if self.check and not impure:
            key = (i, frames(gen, w.opaque), freeze(op, w.opaque))
            assert self.node_ids[key] is self.node_ids.get(key), "rebuild diverged"
        return gen

    def _advance(self, i, nid, node, result, mstate):
        """Run CPU ``i``'s code from ``node`` with ``result``: the edge."""
        w, m = self.w, self.m
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
        viols += m.violations + w.warnings
        m.violations.clear()
        w.warnings.clear()
        if self.impure[i]:
            self.live_st = None           # its code may have changed observers (a TLB fill)
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
                    if sync != self.live_sync:
                        self.m.set_sync_state(sync)
                        self.live_sync = sync
                        self.live_mid = None
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
        self.live_mid = None
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
        self.live_mid = mid2
        return (mid2, child, ())

    def end_checks(self, s) -> list:
        """The end-of-run violations of terminal state ``s`` (memoised)."""
        out = self.end_memo.get(s[0])
        if out is None:
            self.restore(s)
            from ..checkers import end_of_run
            out = [(v.kind, v.explanation) for v in end_of_run(self.w)]
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


def _fields(o) -> dict:
    """The state-bearing fields of an observer (counters and logs left out)."""
    skip = getattr(o, "_sim_ignore", ("hits", "misses", "violations", "on_violation", "pgt",
                                       "_old"))
    return {k: v for k, v in vars(o).items() if k not in skip}


# ---------------------------------------------------------------------------
# Exhaustive search
# ---------------------------------------------------------------------------

class _Progress:
    def __init__(self, enabled: bool, label: str):
        self.on = enabled
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
        sys.stderr.write(f"\r{self.label}: {states:,} states, depth {depth}, frontier "
                         f"{queue:,}, {rate:,.0f} states/s ")
        sys.stderr.flush()

    def done(self):
        if self.on and self.last != self.t0:
            sys.stderr.write("\r" + " " * 78 + "\r")
            sys.stderr.flush()


def _preempts(i, last, enabled) -> int:
    """1 if stepping CPU ``i`` preempts ``last`` (a switch away from a CPU
    that could have gone on), else 0."""
    return int(last is not None and i != last and last in enabled)


def _bfs(space: StateSpace, bound=None, max_states=2_000_000, max_depth=20000, progress=None,
         first_only=False):
    """Breadth-first stateful search.  Returns (found, stats)."""
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
        if progress is not None and not (sid & 1023):
            progress(len(states), depth[sid], len(queue))
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


def _pct_chooser(rng, n, depth, k):
    """PCT (Burckhardt et al. 2010): distinct random priorities, d-1
    priority-change points spread over the first k steps."""
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

def replay(scenario, scheme="rcu", schedule="", bugs=(), max_steps=20000) -> World:
    """Run ``schedule`` (then the default: no preemption, lowest CPU first)
    on a live world with every event recorded.  Returns the World: see
    ``.events``, ``.violations``, and :func:`s2pt.sim.report.race_diagram`."""
    from ..scenarios import get_scenario
    sc = get_scenario(scenario)
    w = World(sc, scheme, bugs, max_steps=max_steps)
    w.run(parse_schedule(schedule))
    return w


def trim_schedule(scenario, scheme, schedule, bugs=()) -> list:
    """Drop the tail of ``schedule`` that the default policy would choose
    anyway: the shorter schedule replays identically."""
    from ..scenarios import get_scenario
    w = World(get_scenario(scenario), scheme, bugs, record=False)
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


def _materialise(sc, scheme, bugs, kind, sched, msg, max_steps):
    """Replay a found schedule live: the events, diagram and log."""
    from .report import race_diagram, state_log
    w = World(sc, scheme, bugs, max_steps=max_steps)
    w.run(sched)
    viol = next((v for v in w.violations if v.kind == kind), None)
    if viol is None:
        raise AssertionError(f"explorer bug: schedule {format_schedule(sched)} for {kind} "
                             f"did not reproduce it on replay (got {w.outcome}: "
                             f"{[v.kind for v in w.violations]})")
    short = trim_schedule(sc, scheme, sched, bugs)
    return Found(kind, short, msg, viol, race_diagram(w), state_log(w))


def _minimise(sc, scheme, bugs, kind, sched, max_steps):
    """Delta debugging (ddmin) on a schedule found by random or PCT search:
    the smallest schedule (with the default completion) that still shows
    ``kind``."""
    def shows(cand):
        try:
            w = World(sc, scheme, bugs, max_steps=max_steps, record=False)
            w.run(cand)
        except S2ptError:
            return False
        return any(v.kind == kind for v in w.violations)

    cur = trim_schedule(sc, scheme, sched, bugs)
    n = 2
    while len(cur) >= 2:
        chunk = max(1, len(cur) // n)
        reduced = False
        for start in range(0, len(cur), chunk):
            cand = cur[:start] + cur[start + chunk:]
            if shows(cand):
                cur = trim_schedule(sc, scheme, cand, bugs)
                n = max(n - 1, 2)
                reduced = True
                break
        if not reduced:
            if chunk == 1:
                break
            n = min(len(cur), n * 2)
    return cur


def explore(scenario, scheme="rcu", *, mode="exhaustive", runs=1000, depth=3, seed=0,
            preemptions=None, bugs=(), max_states=2_000_000, max_steps=20000,
            progress=False, details=True, check=False) -> Result:
    """Search a scenario's interleavings for violations.

    ``mode``: "exhaustive" (stateful breadth-first; shortest schedules),
    "unreduced" (every interleaving, no visited set: a baseline), "random"
    (``runs`` seeded random schedules) or "pct" (``runs`` seeded PCT
    schedules of depth ``depth``).  ``preemptions`` bounds the number of
    preemptive context switches (exhaustive modes).  ``bugs`` switches
    historical bugs back on (see :data:`s2pt.scenarios.BUGS`).

    Each violation kind comes back once, with its shortest schedule found
    (random/PCT schedules are minimised by delta debugging), replayed to a
    race diagram and a state log.
    """
    from ..scenarios import get_scenario
    from ..schemes import get_scheme
    sc = get_scenario(scenario)
    scheme = get_scheme(scheme).name
    bugs = frozenset(bugs)
    if preemptions is not None and (not isinstance(preemptions, int) or preemptions < 0):
        raise S2ptError(f"preemptions={preemptions!r}: a bound is a non-negative integer")
    t0 = time.perf_counter()
    settings = {"seed": seed} if mode in ("random", "pct") else {}
    if preemptions is not None:
        settings["preemptions"] = preemptions
    if mode in ("exhaustive", "unreduced"):
        space = StateSpace(World(sc, scheme, bugs, max_steps=max_steps, record=False), check)
        prog = _Progress(progress, f"{sc.name}/{scheme}") if progress else None
        if mode == "exhaustive":
            raw, st = _bfs(space, preemptions, max_states, max_steps, prog)
        else:
            raw, st = _unreduced(space, preemptions, max_states, max_steps)
        if prog:
            prog.done()
        res = Result(sc.name, scheme, mode, st["complete"], 0.0, st.get("states", 0),
                     st["transitions"], st.get("executions", 0), bound_hits=st["bound_hits"],
                     settings=settings)
    elif mode in ("random", "pct"):
        if not isinstance(runs, int) or runs < 1:
            raise S2ptError(f"runs={runs!r}: need a positive number of runs")
        if mode == "pct" and (not isinstance(depth, int) or depth < 1):
            raise S2ptError(f"depth={depth!r}: PCT depth is a positive integer")
        rng = random.Random(seed)
        space = StateSpace(World(sc, scheme, bugs, max_steps=max_steps, record=False), check)
        if mode == "random":
            def chooser():
                return lambda en, last, step, relaxed: rng.choice(en)
        else:
            k = len(_walk(space, lambda en, last, step, relaxed:       # lowest CPU first
                          next((c for c in en if not (relaxed and c == last)), en[0]),
                          max_steps)[0])
            def chooser():
                return _pct_chooser(rng, space.n, depth, k)
        raw = {}
        for _ in range(runs):
            sched, viols = _walk(space, chooser(), max_steps)
            for kind, msg in viols:
                if kind not in raw or len(sched) < len(raw[kind][0]):
                    raw[kind] = (sched, msg)
        res = Result(sc.name, scheme, mode, False, 0.0, executions=runs, settings=settings)
        if mode == "pct":
            res.settings["depth"] = depth
        raw = {kind: (_minimise(sc, scheme, bugs, kind, s, max_steps), msg)
               for kind, (s, msg) in raw.items()}
    else:
        raise S2ptError(f"mode={mode!r}: choose exhaustive, unreduced, random or pct")
    res.seconds = time.perf_counter() - t0
    res._scenario = sc
    for kind in sorted(raw):
        sched, msg = raw[kind]
        if details:
            res.found[kind] = _materialise(sc, scheme, bugs, kind, sched, msg, max_steps)
        else:
            res.found[kind] = Found(kind, sched, msg)
    return res
