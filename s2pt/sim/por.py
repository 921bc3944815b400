"""Partial-order reduction: a CPU working alone on a private table.

After a collapse unlinks a level-3 table and no other CPU holds a pointer
into it any more, the 512-entry walk that frees it (the RCU callback's
boring traversal, the last walker reference of the refcount schemes, the
collapsing CPU itself when it frees at once) touches memory that no other
CPU can reach: the table is not linked from the PGD, so nobody can read a
pointer to it, and nobody still holds one.  Each of those steps commutes
with everything every other CPU can do from here on, so exploring the
other CPUs' steps before it only multiplies interleavings that end in the
same states.  Such a step is a **persistent set** of its own (Godefroid's
stubborn sets, in the form SPIN's partial-order reduction calls a safe
"local" move): the search takes it alone.

A step is private when

* it is ``cpu_relax``, ``dsb`` or cache maintenance (they change nothing
  shared), or
* it is a descriptor access or a reference count change on one table page
  that is allocated, not linked from the PGD, not in a memcache, not being
  freed by this very step (a ``put_page`` of its last reference touches the
  allocator), and which no other CPU can reach, on a machine with no
  observer of stores.  A CPU can reach the page if it holds a pointer (in
  its locals, or in its MMU's walk cache) into the page or into any table
  page from which a chain of table descriptors leads to it: a walker left
  in an unlinked level-2 table can still read its entry and step down into
  the level-3 table below (``StateSpace.ancestors_of``).  A table handed
  to ``call_rcu()`` is reachable by the RCU callback thread that will free
  it: the callback queue's arguments count as pointers that thread holds
  (``StateSpace.queued_reach``).

  One holder does not count: a CPU whose next step is a
  ``walker_get_unless_zero`` (the ``_refcount`` walker count) on one of
  those pages that is allocated with a walker count of 0, and which after
  that step holds no pointer into them (``refcount-revalidate``'s walker
  that read the table pointer just before the last reference went: it
  fails, drops the pointer and retries from the parent entry).  Until the
  private step is taken nobody can make that count nonzero: only a
  ``walker_get``, a ``walker_get_unless_zero`` that succeeds or the
  allocator handing the page out again could, and each needs a pointer to
  the page, which nobody else holds, or the page freed, which it is not
  and which nobody else can do without a pointer.  So the step fails in
  every order, changes nothing, and leads to the same next position; it
  commutes with the private step, and so does everything after it.

One kind of holder is confined (``Reduction._confined``), on a table with no
walker hooks (``mm_ops.table_enter``): a CPU whose every pointer into those
pages is held inside walks of the one walker whose visitor only reads and
rewrites the entry it visits (``stage2_attr_walker``: mkyoung, relax_perms,
wrprotect; ``leaf_walker``) and that visit no table entry (no ``TABLE_PRE``
or ``TABLE_POST``).  Such a walk touches, from here on, only entries of the
range it still has to walk ([``data.addr``, ``data.end``)), at whatever
level: the entries at those indices, and those its locals point at.  It
takes, drops or reads no page reference, frees nothing, and writes only
leaves, so it cannot publish a pointer.  A step that touches none of those
entries (or only a page's reference count) commutes with everything such a
holder can still do, and with what every CPU that holds no pointer can do:
it is private all the same.  The confined holders' entries go with the run
that follows (its ``scope``), since whether it goes on depends on them.
(The three readers of ``collapse-vs-fault-4`` that raced into the unlinked
table are such holders: each will read one entry and may set its access
flag, while the collapsing CPU frees the other 511.)  Which visitors make
that promise is a declaration (``CONFINED_CODE``), read off the frozen
frames; check mode (``explore(check=True)``) holds every confined holder to
it at each of its steps (``broken_promise``), so a visitor changed to touch
a second entry, or a count, fails there instead of quietly making the
reduction unsound.

A CPU that has just stepped alone usually goes on alone: the free walk is
512 private steps in a row.  ``goes_on`` answers for it without looking
at the other CPUs again when nobody else moved and the step is guarded by
pages the last one was guarded by.  Such a run depends on nothing but the
CPU's own position and the machine, so the search takes it as one
transition and keeps only the state where it ends (``StateSpace.run_alone``):
the steps in between each have one successor in the reduced graph, every
one of them is checked, and contracting them loses no state of any other.
(Its steps commute with every other CPU's, so any interleaving can be
reordered to take the run in one piece: Lipton's reduction.)

The cycle proviso (C3) keeps the reduction sound in a graph with cycles: a
state whose run leads to a state already seen no deeper than itself is
expanded in full, the run counting as its CPU's step (see ``_bfs``).
``explore(por=False)`` is the unreduced reference; ``tests/test_por.py``
checks that every verdict agrees.
"""

from __future__ import annotations

from .. import pgtable as pt
from ..snapshot import all_slots
from .state import NODE_BITS
from .world import WALK_FRAMES

__all__ = ["Reduction"]

#: Operations that change nothing shared (statistics at most).
LOCAL = frozenset({"cpu_relax", "dsb", "cmo"})
#: Operations on one table page that may be private (see the module docstring).
ON_PAGE = frozenset({"READ_ONCE", "WRITE_ONCE", "smp_store_release", "cmpxchg", "xchg",
                     "get_page", "put_page", "page_count", "page_private", "set_page_private",
                     "walker_get", "walker_get_unless_zero", "walker_put"})


#: The operations of ON_PAGE that access one descriptor (the others touch
#: the page's counts or private data).
ON_ENTRY = frozenset({"READ_ONCE", "WRITE_ONCE", "smp_store_release", "cmpxchg", "xchg"})

#: Codes of Reduction._candidate besides a set of pfns.
_ALWAYS, _NEVER = -1, -2


class Reduction:
    """The private-step test of one state space (see the module docstring)."""

    def __init__(self, space):
        self.space = space
        m = space.m
        self.taken = 0
        #: machine id << NODE_BITS | node id -> _ALWAYS, _NEVER or the pfns
        #: whose holders make the step shared (see _candidate).
        self.memo: dict = {}
        #: machine id << NODE_BITS | node id -> what _failing says.
        self.fails: dict = {}
        #: Observers of every step (casemate's automaton, the isolation
        #: checker) see stores to any page: no step is private under them.
        self.on = not (m.observers or m.pre_observers)
        fields = space.page_fields
        if not {"refcount", "freed", "walkers"} <= set(fields):
            self.on = False              # a page's counts are not all state: no private steps
            return
        self.i_refcount = 1 + fields.index("refcount")
        self.i_freed = 1 + fields.index("freed")
        self.i_walkers = 1 + fields.index("walkers")
        self.pgd = {p.pfn for p in space.pgt.pgd_pages}
        # Confined holders (see _confined): only on a table whose walks take
        # no walker reference on the way down.
        self.confining = space.pgt.mm_ops.table_enter is None
        self.confined: dict = {}        # node id -> what _confined says
        self.page_mask = space.pgt.page_size - 1

    def private_in(self, mid, nodes, enabled):
        """(CPU, scope) for a CPU of ``enabled`` whose next step is private on
        machine ``mid`` with the CPUs at ``nodes`` (a state of
        s2pt.sim.search), or None.  ``scope``: None, or the entry indices of
        the confined holders the step does not touch (see the module
        docstring), which the run that follows must not touch either.
        What a step's own page says (allocated, unlinked, not cached, not
        its last reference, the pages that lead to it) is a function of the
        machine and the CPU's position, memoised on the pair; only who else
        can reach the page depends on the other CPUs."""
        if not self.on:
            return None
        memo, base = self.memo, mid << NODE_BITS
        space = self.space
        for i in enabled:
            nid = nodes[i]
            c = memo.get(base | nid)                 # candidate(), inline: once a state
            if c is None:
                c = memo[base | nid] = self._candidate(mid, i, nid)
            if type(c) is int:
                if c == _ALWAYS:
                    return i, None
                continue                             # _NEVER
            if space.queued_reach(mid, i, c):
                continue
            scope = self._scope(mid, nodes, i, c)
            if scope is not None:
                return i, scope or None
        return None

    def _scope(self, mid, nodes, i, guard):
        """When no other CPU that can reach the pages ``guard`` counts (see
        the module docstring) and CPU ``i``'s next step touches no entry of
        a confined one among them: the entry indices of those confined
        holders (empty when there are none); else None."""
        op = self.space.nodes[nodes[i]].op
        entry = (op[1] & self.page_mask) >> 3 if op[0] in ON_ENTRY else None
        scope = set()

        def harmless(mid_, j, nid, g):
            if self._fails(mid_, j, nid, g):
                return True
            if not self.confining:
                return False
            x = self._confined_at(j, nid)
            if x is False or entry in x:
                return False
            scope.update(x)
            return True

        if self.space.others_reach(mid, nodes, i, guard, harmless):
            return None
        return frozenset(scope)

    def _confined_at(self, j, nid):
        """:meth:`_confined`, memoised on the node."""
        x = self.confined.get(nid)
        if x is None:
            x = self.confined[nid] = self._confined(j, nid)
        return x

    def _confined(self, j, nid):
        """The entry indices CPU ``j`` at node ``nid`` may still touch in any
        unlinked table it points into, when it is a confined holder (see the
        module docstring); else False.  A function of the node alone: what
        its frozen frames say (``Node.key``: the live locals of each frame)."""
        space = self.space
        if space.impure[j]:
            return False
        node = space.nodes[nid]
        if node.done:
            return False
        frames, op = node.key[1], node.op
        pgt = space.pgt
        out, inside = set(), False
        for code, _lasti, items in frames:
            how = WALK_FRAMES.get(code)
            if how is None and not inside:
                continue              # above every walk: may hold no table pointer (below)
            if how is None:
                if code not in CONFINED_CODE:
                    return False      # some other code below a walk
            else:
                inside = True
                seen = False
                for name, v in items:
                    if name == "walker":
                        walker = v
                    elif name == "data":
                        if type(v) is not tuple or len(v) != len(_WALK_DATA) + 1 \
                                or v[0] is not pt.WalkData:
                            return False
                        walker = v[_WALK_DATA["walker"]]
                        if not _range_indices(pgt, v[_WALK_DATA["addr"]],
                                              v[_WALK_DATA["end"]], out):
                            return False
                    else:
                        continue
                    if not _confining_walker(walker):
                        return False
                    seen = True
                if not seen:
                    return False      # a walk frame whose walker cannot be read
            self._entries_of(items, out)
        if not inside:
            return False
        # Above the outermost walk: no table pointer at all.
        for code, _lasti, items in frames:
            if code in WALK_FRAMES:
                break
            if space._pfns_in(items):
                return False
        if op is not None:
            self._entries_of(op, out)
        return frozenset(out)

    def promise(self, i, nid):
        """The entry indices CPU ``i`` at node ``nid`` promised to stay within
        (it is a confined holder there), or None."""
        if not (self.on and self.confining):
            return None
        allowed = self._confined_at(i, nid)
        return None if allowed is False else allowed

    def broken_promise(self, mid, allowed, i, op, child):
        """Check mode: what CPU ``i``, a confined holder that promised the
        entry indices ``allowed`` (:meth:`promise`), broke by performing
        ``op`` on machine ``mid`` (None: no operation to check) and reaching
        node ``child`` (None: no position to check); None if nothing.

        ``_confined`` reads the promise off the frozen frames (``CONFINED_CODE``
        declares which visitors make it), and nothing else enforces it: from
        there on, the CPU touches no page count of an unlinked table and no
        entry of one outside those indices.  Each step keeps it when its own
        access is inside them and the position it reaches promises no more
        (a subset), or, having left the walk, holds no pointer into an
        unlinked table page.  So a visitor declared confined that touches a
        second entry, or a count, is caught at the step where it does, in
        any search that reaches that step in check mode."""
        space = self.space
        unlinked = self._unlinked(mid)
        if op is not None and op[0] in ON_PAGE and op[1] >> space.shift in unlinked:
            name, k = op[0], (op[1] & self.page_mask) >> 3
            if name not in ON_ENTRY:
                return (f"{name} on an unlinked table page, from a position confined to "
                        f"its entries {sorted(allowed)} (no page count)")
            if k not in allowed:
                return (f"{name} of entry {k} of an unlinked table page, from a position "
                        f"confined to its entries {sorted(allowed)}")
        if child is None:
            return None
        after = self.promise(i, child)
        if after is not None:
            if not after <= allowed:
                return (f"a position confined to entries {sorted(after)}, more than the "
                        f"{sorted(allowed)} it was confined to before")
            return None
        if not space.nodes[child].done and not space.pointers(child).isdisjoint(unlinked):
            return (f"a position outside a confining walk that holds a pointer into an "
                    f"unlinked table page, after one confined to entries {sorted(allowed)}")
        return None

    def _unlinked(self, mid) -> frozenset:
        """pfns of the table pages on machine ``mid`` that are allocated and
        not reachable from the PGD."""
        space = self.space
        ms = space.mstates[mid]
        linked = space.linked_of(ms[0])
        return frozenset(pfn for pfn, k in space.index.items()
                         if pfn not in linked and not space.pdata[ms[0][k]][self.i_freed])

    def _entries_of(self, value, out: set):
        """Add to ``out`` the entry index of every integer anywhere in
        ``value`` (nested tuples, as frozen) that points into a table page:
        an entry pointer's own, a table pointer's or descriptor's 0."""
        pmask = self.page_mask
        out.update((a & pmask) >> 3 for a in self.space.table_addresses(value))

    def goes_on(self, mid, i, op, guard, mid0):
        """The guard of CPU ``i``'s next step ``op`` on machine ``mid`` when it
        is private because the run's last step was (guarded by ``guard``;
        the run began on machine ``mid0``), else None.  Only CPU ``i`` has
        moved since the run began, and its private steps change nobody's
        pointers or walk caches and the RCU queue (the check below makes
        sure of the last two): nobody else can reach the pages of
        ``guard``, and a step guarded by a subset of them is private too,
        without looking at the other CPUs again.  (After a step that changes
        nothing shared, the next one must change nothing shared either: so a
        run that starts at any position this one passes decides as it does.)

        The answer depends on CPU ``i``'s own positions and the machine
        alone, so the search takes the whole run as one transition
        (s2pt.sim.search's ``run_alone``)."""
        c = self._guard(mid, i, op)
        if c == _ALWAYS:
            return c
        scope = None
        if type(guard) is tuple:
            # Confined holders reach these pages: not the entries of ``scope``.
            guard, scope = guard
            if op[0] in ON_ENTRY and (op[1] & self.page_mask) >> 3 in scope:
                return None
        if c == _NEVER or type(guard) is not frozenset or not c <= guard:
            return None
        m, m0 = self.space.mstates[mid], self.space.mstates[mid0]
        if m[3] != m0[3] or m[4] != m0[4]:          # locks and RCU queue; TLBs
            return None
        return c if scope is None else (c, scope)

    def _fails(self, mid, j, nid, guard) -> bool:
        """Is CPU ``j`` at node ``nid`` a holder that does not count (see the
        module docstring): its next step a walker_get_unless_zero on a page of
        ``guard`` that must fail, after which it holds no pointer into
        ``guard``?"""
        key = (mid << NODE_BITS) | nid
        f = self.fails.get(key)
        if f is None:
            f = self.fails[key] = self._failing(mid, j, nid)
        return f is not False and f[0] in guard and guard.isdisjoint(f[1])

    def _failing(self, mid, j, nid):
        """(pfn, the table pages CPU ``j`` points into after the step) when
        node ``nid``'s step on machine ``mid`` is a walker_get_unless_zero on
        the ``_refcount`` walker count of allocated table page pfn, whose count
        is 0, that changes nothing; else False."""
        space = self.space
        op = space.nodes[nid].op
        if op[0] != "walker_get_unless_zero" or len(op) != 2 or space.impure[j]:
            return False
        pfn = op[1] >> space.shift
        k = space.index.get(pfn)
        if k is None:
            return False
        key = space.pdata[space.mstates[mid][0][k]]
        if key[self.i_freed] or key[self.i_walkers] != 0:
            return False
        tk = (mid << NODE_BITS) | nid
        t = space.tmemo.get(tk)
        if t is None:
            t = space.tmemo[tk] = space._step(mid, nid, j)
        if t[2] or t[0] != mid:
            return False
        return (pfn, space.pointers(t[1]))

    def candidate(self, mid, i, nid):
        """:meth:`_candidate`, memoised on (machine, position)."""
        key = (mid << NODE_BITS) | nid
        c = self.memo.get(key)
        if c is None:
            c = self.memo[key] = self._candidate(mid, i, nid)
        return c

    def _candidate(self, mid, i, nid):
        """:meth:`_guard` of the step at node ``nid``."""
        return self._guard(mid, i, self.space.nodes[nid].op)

    def _guard(self, mid, i, op):
        """_ALWAYS (CPU ``i``'s step ``op`` on machine ``mid`` changes nothing
        shared), _NEVER, or the pfns of the unlinked, uncached, allocated
        table page the step touches and of the pages that lead to it
        (private if no other CPU holds a pointer into any of them)."""
        space = self.space
        name = op[0]
        if name in LOCAL:
            return _ALWAYS
        if name not in ON_PAGE or space.impure[i]:
            return _NEVER
        pfn = op[1] >> space.shift
        k = space.index.get(pfn)
        if k is None or pfn in self.pgd:
            return _NEVER
        ms = space.mstates[mid]
        key = space.pdata[ms[0][k]]
        if key[self.i_freed]:
            return _NEVER
        if name == "put_page" and key[self.i_refcount] <= 1:
            return _NEVER
        if name == "walker_put" and key[self.i_walkers] <= 1:
            return _NEVER
        if pfn in space.linked_of(ms[0]):
            return _NEVER
        if any(pfn in mc for mc in ms[2]):
            return _NEVER
        return space.ancestors_of(ms[0], pfn)


#: Code below a confining walk's frames: its visitors and what they call.
CONFINED_CODE = frozenset({pt.stage2_attr_walker.__code__, pt.stage2_try_set_pte.__code__,
                           pt.leaf_walker.__code__, pt.kvm_pgtable_walk_begin.__code__,
                           pt.kvm_pgtable_walk_end.__code__})


#: Where freeze() puts each field of a WalkData and of a Walker (after the type).
_WALK_DATA = {s: k + 1 for k, s in enumerate(all_slots(pt.WalkData))}
_WALKER = {s: k + 1 for k, s in enumerate(all_slots(pt.Walker))}


def _confining_walker(walker) -> bool:
    """Is ``walker`` (a Walker, as frozen) a walk whose visitor only touches
    the leaf it visits, and no table entry?"""
    if type(walker) is not tuple or len(walker) != len(_WALKER) + 1 or walker[0] is not pt.Walker:
        return False
    cb, flags = walker[_WALKER["cb"]], walker[_WALKER["flags"]]
    return cb in CONFINED_CODE and type(flags) is int \
        and not flags & (pt.TABLE_PRE | pt.TABLE_POST)


def _range_indices(pgt, addr, end, out: set) -> bool:
    """Add to ``out`` the index, at every level, of each entry that covers an
    address of [addr, end) (what a walk with that much left can still
    visit).  False when that is every index of some level (or the range
    cannot be read): no confinement worth the name."""
    if type(addr) is not int or type(end) is not int:
        return False
    if addr >= end:
        return True
    ptrs = pgt.ptrs_per_pte
    for level in range(pgt.start_level, 4):
        shift = pgt.granule_shift[level]
        first, last = addr >> shift, (end - 1) >> shift
        if last - first + 1 >= ptrs:
            return False
        out.update(k & (ptrs - 1) for k in range(first, last + 1))
    return True
