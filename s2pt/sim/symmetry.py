"""Symmetry reduction: interchangeable CPUs are searched once.

Three vCPUs that take the same access-flag fault on the same page run the
same program on the same arguments; they differ only in which vCPU they are
(their index, their memcache, their TLB).  A state in which vCPU2 is inside
its walk and vCPU3 has not started has the same futures, up to renaming,
as the state with the two swapped.  TLC calls such CPUs a symmetry set; the
search keeps one representative of each orbit:

* a scenario marks the interchangeable CPUs (``Setup.cpu(..., sym="readers",
  vcpu=k, owns=(memcache, tlb))``);
* each such CPU's position is also fingerprinted with its own identity
  abstracted (its ``vcpu`` locals and owned parts by role, not by name): its
  **class**, shared by every member of its group;
* a state is **canonicalised** by sorting each group's members by (class,
  what the machine says of the member), renaming CPUs in the machine state
  (lock holders, RCU readers, grace-period waiters, MMU walks in flight)
  and moving each owned part's state to the member's new place;
* a member's node at another member's class is made by replaying that
  class's history with the member's own program, and must come out at the
  same class: a wrong ``sym`` declaration is refused, not believed.

Every state the search keeps is a real state of the machine; a schedule
found in the reduced graph is mapped back to the concrete CPUs by composing
the renamings along its path, and replays.  ``tests/test_symmetry.py``
checks that every verdict with and without symmetry agrees.
"""

from __future__ import annotations

from ..errors import S2ptError
from .world import freeze

__all__ = ["Symmetry", "compose", "invert"]

#: Symmetry.arrange's answer for positions that are their own representative.
_OWN = object()


class Symmetry:
    """The symmetry groups of one state space (see the module docstring)."""

    def __init__(self, space):
        self.space = space
        w = space.w
        actors = w.actors
        groups: dict = {}
        for i, a in enumerate(actors):
            if a.sym is not None:
                groups.setdefault(a.sym, []).append(i)
        self.groups = [g for g in groups.values() if len(g) > 1]
        self.group_of = {i: k for k, g in enumerate(self.groups) for i in g}
        # Each member's own parts: indices in the memcache tuple and in the
        # parts tuple of the machine state; each member's opaque names with
        # its own parts named by role.
        mcs = {id(mc): k for k, mc in enumerate(space.mcs)}
        parts = {id(p): k for k, p in enumerate(space.stateful)}
        self.own_mc: dict = {}
        self.own_part: dict = {}
        self.opaque: dict = {}
        for g in self.groups:
            first = actors[g[0]]
            for i in g:
                a = actors[i]
                if a.program is not first.program or len(a.owns) != len(first.owns):
                    raise S2ptError(
                        f"CPUs {first.name} and {a.name} are declared symmetric "
                        f"(sym={a.sym!r}) but run different programs or own different parts")
                mc, pt = [], []
                op = dict(w.opaque)
                for j, o in enumerate(a.owns):
                    op[id(o)] = f"<own{j}>"
                    if id(o) in mcs:
                        mc.append((j, mcs[id(o)]))
                    elif id(o) in parts:
                        pt.append((j, parts[id(o)]))
                    else:
                        raise S2ptError(f"CPU {a.name} owns {o!r}, which is neither a memcache "
                                        f"nor a Stateful part of the machine state")
                self.own_mc[i], self.own_part[i], self.opaque[i] = mc, pt, op
            shape = [self._abstract_args(i) for i in g]
            if any(x != shape[0] for x in shape):
                raise S2ptError(
                    f"CPUs {', '.join(actors[i].name for i in g)} are declared symmetric "
                    f"(sym={first.sym!r}) but their arguments differ beyond their own vCPU "
                    f"and parts")
        #: Every member of every group, in group order.
        self.members = tuple(i for g in self.groups for i in g)
        #: The members' node ids -> what arrange() does to them (memoised).
        self.arranged: dict = {}
        self.classes: dict = {}          # abstracted key -> class id
        self.by_class: dict = {}         # (cpu, class id) -> node id
        self.renamed: dict = {}          # (machine id, renaming) -> machine id

    def __bool__(self):
        return bool(self.groups)

    def _abstract_args(self, i):
        a = self.space.w.actors[i]
        return tuple("<self>" if x == a.vcpu and type(x) is int else freeze(x, self.opaque[i])
                     for x in a.args)

    # -- classes ---------------------------------------------------------------------
    def cls(self, i, position) -> int | None:
        """The class of CPU ``i`` at ``position`` (None: not symmetric), the
        position fingerprinted with its own identity abstracted
        (:meth:`fingerprint`)."""
        if i not in self.group_of:
            return None
        key = (self.group_of[i],) + position
        c = self.classes.get(key)
        if c is None:
            c = self.classes[key] = len(self.classes)
        return c

    def fingerprint(self, i):
        """(opaque names, own vCPU) to fingerprint member ``i``'s position
        with: its own parts named by role, its ``vcpu`` locals "<self>".
        For one CPU that is a renaming, one to one, so the fingerprint names
        its position as well as the concrete one would, and is its class's
        key: the search computes it once for both.  None when ``i`` is not
        a member of a group."""
        if i not in self.group_of:
            return None
        return self.opaque[i], self.space.w.actors[i].vcpu

    # -- canonical states --------------------------------------------------------------
    def canon(self, s):
        """(the representative of ``s``'s orbit, the renaming ``to`` that
        takes ``s`` there: CPU ``c`` of ``s`` is CPU ``to[c]`` of the
        representative), or (``s``, None) when ``s`` is its own."""
        mid, nodes = s
        order = self.arrange(nodes)
        if order is _OWN:
            return s, None
        to, new_nodes = order
        return (self.rename(mid, to), new_nodes), to

    def arrange(self, nodes):
        """The CPU positions ``nodes`` with each group's members sorted by
        class: (the renaming ``to``, the positions renamed), or ``_OWN`` when
        they are sorted already.  A function of the positions alone."""
        key = tuple([nodes[i] for i in self.members])
        out = self.arranged.get(key)
        if out is None:
            out = self.arranged[key] = self._arrange(nodes)
        if out is _OWN:
            return _OWN
        to, moved = out
        new_nodes = list(nodes)
        for c, nid in moved:
            new_nodes[c] = nid
        return to, tuple(new_nodes)

    def _arrange(self, nodes):
        """:meth:`arrange`, as (the renaming, the new node of each member),
        which depends on the members' positions alone."""
        allnodes = self.space.nodes
        to = None
        for g in self.groups:
            # Members are ordered by class; members at the same class are at
            # the same place in the same program, and are left as they are
            # (the representative is then not unique, which costs states,
            # never soundness: sorting ties by the member's own parts, its
            # TLB and memcache, was measured to save no state on the
            # collapse scenarios).
            cls = [allnodes[nodes[i]].cls for i in g]
            if all(cls[k] <= cls[k + 1] for k in range(len(cls) - 1)):
                continue
            order = sorted(range(len(g)), key=cls.__getitem__)
            if to is None:
                to = list(range(len(nodes)))
            for k, pos in enumerate(order):
                to[g[pos]] = g[k]
        if to is None:
            return _OWN
        to = tuple(to)
        return to, tuple((to[c], self.node_as(to[c], nodes[c])) for c in self.members
                         if to[c] != c)

    def rename(self, mid, to) -> int:
        """Machine ``mid`` with CPU ``c`` renamed ``to[c]`` (memoised)."""
        mid2 = self.renamed.get((mid, to))
        if mid2 is None:
            mid2 = self.renamed[(mid, to)] = self._rename(mid, to)
        return mid2

    def _rename(self, mid, to) -> int:
        """Machine state ``mid`` with CPU ``c`` renamed ``to[c]``: the lock
        holders, RCU readers and MMU walks renamed, each member's own parts'
        states moved to its new place."""
        space = self.space
        ms = space.mstates[mid]
        sync = ms[3]
        machine = space.m
        mc, parts = list(ms[2]), list(ms[4])
        for c in self.group_of:
            d = to[c]
            if d == c:
                continue
            for (j, k), (_, k2) in zip(self.own_mc[c], self.own_mc[d]):
                mc[k2] = ms[2][k]
            for (j, k), (_, k2) in zip(self.own_part[c], self.own_part[d]):
                parts[k2] = ms[4][k]
        ms2 = (ms[0], ms[1], tuple(mc), machine.sim_rename(sync, to), tuple(parts))
        return space._intern(ms2)

    def node_as(self, cpu, nid):
        """The node of CPU ``cpu`` at node ``nid``'s class (another member
        of its group): replay that node's history with ``cpu``'s own
        program; it must come out at the same class."""
        space = self.space
        node = space.nodes[nid]
        key = (cpu, node.cls)
        out = self.by_class.get(key)
        if out is not None:
            return out
        w = space.w
        gen = w.actors[cpu].start()
        op = gen.send(None)
        ret = None
        done = False
        for result, _ in node.hist:
            try:
                op = gen.send(result)
            except StopIteration as stop:
                done, ret = True, stop.value
                break
        space.m.violations.clear()
        out = space._node_from(cpu, None if done else gen, op, node.hist, ret, None)
        if space.nodes[out].cls != node.cls:
            raise S2ptError(
                f"{w.name(cpu)} and {w.name(node.cpu)} are declared symmetric, but replaying "
                f"{w.name(node.cpu)}'s steps on {w.name(cpu)} does not reach the same place "
                f"(at {node.stack[-1] if node.stack else '?'}()): they are not interchangeable")
        self.by_class[key] = out
        return out


def compose(outer, inner):
    """The renaming ``inner`` then ``outer`` (CPU ``c`` -> ``outer[inner[c]]``)."""
    return tuple(outer[x] for x in inner)


def invert(to):
    out = [0] * len(to)
    for c, d in enumerate(to):
        out[d] = c
    return tuple(out)
