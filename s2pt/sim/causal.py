"""The causal slice of a run: the few steps a violation depends on.

A counterexample is a thousand steps, and a reviewer needs perhaps eight of
them: the read that gave a CPU the pointer it later followed, the store that
broke or unlinked the entry behind its back, the chain that freed the page,
and the bad access itself.  :func:`causal_slice` picks those steps out of a
recorded run (``World(record=True)``: each :class:`~s2pt.sim.world.Event`
carries its operation, its result and, for an operation on table memory,
the entry's value just before it).  The race diagram
(:func:`s2pt.sim.report.race_diagram`) draws only these steps, and the
email text (:func:`s2pt.sim.report.email_text`) tells them as sentences.

What is kept, by kind of violation (every rule is a data dependency in the
recorded run, never a guess from names):

* **use-after-free, double-free** on page P: the bad access; the last read
  by the same CPU (or, for a walk cache, by an MMU) that returned a table
  pointer to P -- the stale pointer; the store that took P out of its
  parent entry (the break) and that CPU's next store there (the make);
  every free of P before the access, a walker count's "last reference",
  the ``call_rcu()`` that deferred a free and the callback that ran it; if
  P came back from the allocator (ABA), its allocation and the store that
  linked it again; a failed ``cmpxchg`` of the CPU that then freed twice,
  and the store that made it fail.
* **stale-tlb, isolation**: the MMU's reads that filled its TLB, the first
  stores by another CPU to the entries it read (break and make), and the
  step that used or gave away the page.
* **leak, refcount, lost-update** (found at the end of the run): the
  *blind overwrites* -- a store over a value its CPU never saw, which
  another CPU had written -- with both CPUs' reads of the entry and the
  references their makes took; for a leak also the page's allocation, its
  link and unlink, and what last touched its count; for a lost update
  without a blind overwrite, a write through a stale pointer (ABA).
* **warn** and anything else at a step: the step, and each value its CPU
  read that another CPU had stored (with that store).
* **livelock** given as a lasso (``cycle_start``): every step of the
  repeated cycle and the stores by other CPUs that its reads depend on.
* **no violation**: what the CPUs shared -- each CPU's first and last
  access to every entry that two or more CPUs accessed, and every free of
  a table page and ``call_rcu()``.

Each CPU in the slice also contributes its entry point (the diagram's
column header).  The slice's ``roles`` name the steps for the email text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..ops import OPS

__all__ = ["Slice", "causal_slice", "victim_page"]

_READS = frozenset(("READ_ONCE", "hw_read"))
_STORES = frozenset(n for n, k in OPS.items() if k.stores)
_ENTRY = _READS | _STORES
_PAGE_RE = re.compile(r"(?:table page|table|page|of) (0x[0-9a-f]+)")


@dataclass
class Slice:
    """The steps of a run that its violations depend on.

    ``steps``: event index -> a note for the diagram ("freed", or "");
    ``marks``: event index -> the violation kinds raised at that step;
    ``end``: the violations found at the end of the run (no step);
    ``roles``: what some steps are, for the sentences of the email text
    ("stale", "unlink", "make", "free", "bad", "overwritten", "overwrite");
    ``cycle_start``: the first step of a repeated cycle, or None."""
    steps: dict = field(default_factory=dict)
    marks: dict = field(default_factory=dict)
    end: list = field(default_factory=list)
    roles: dict = field(default_factory=dict)
    cycle_start: int | None = None

    def add(self, ev, note: str = "", role: str | None = None):
        if ev is None:
            return
        if note or ev.index not in self.steps:
            self.steps[ev.index] = note or self.steps.get(ev.index, "")
        if role is not None:
            self.roles.setdefault(role, ev.index)

    @property
    def indices(self) -> list:
        return sorted(self.steps)

    def cpus(self, world) -> list:
        return sorted({world.events[i].cpu for i in self.steps})


def victim_page(world, v) -> int | None:
    """The table page a violation names (its message), as a PA."""
    m = _PAGE_RE.search(v.message or "")
    if m is None:
        return None
    return int(m.group(1), 16) & ~(world.pgt.page_size - 1)


class _Run:
    """What the slicer asks of a recorded run (the World's events)."""

    def __init__(self, world):
        self.w = world
        self.ev = world.events
        pgt = world.pgt
        self.shift = pgt.page_shift
        self.mask = pgt.addr_mask
        self.levels = world.view.levels

    def level(self, ev):
        if ev.op[0] == "hw_read" and len(ev.op) > 2:
            return ev.op[2]
        if ev.op[0] not in _ENTRY:
            return None
        return self.levels.get(ev.op[1] >> self.shift)

    def points_to(self, value, level) -> int | None:
        """The pfn a table descriptor ``value`` (in a table of ``level``) points to."""
        if not isinstance(value, int) or value & 3 != 3 or (level is not None and level >= 3):
            return None
        pfn = (value & self.mask) >> self.shift
        return pfn if pfn in self.w.pgt.mm.pages else None

    @staticmethod
    def written(ev):
        """The value a store event left in its entry (None: not a store, or
        a cmpxchg that failed)."""
        name = ev.op[0]
        if name == "cmpxchg":
            return ev.op[3] if ev.result == ev.op[2] else None
        if name in _STORES:
            return ev.op[2]
        return None

    @staticmethod
    def seen(ev):
        """The value a CPU learnt from an entry at this step (a read, or the
        old value an atomic returned)."""
        name = ev.op[0]
        if name in _READS or name in ("cmpxchg", "xchg"):
            return ev.result
        return None

    @staticmethod
    def old(ev):
        return ev.before[2] if isinstance(ev.before, tuple) else None

    def page(self, ev) -> int | None:
        k = OPS.get(ev.op[0])
        if (k is not None and k.addr) or ev.op[0] == "hw_read":
            return ev.op[1] >> self.shift
        return None

    def before(self, end, pred, cpu=None):
        """The last event before index ``end`` (of ``cpu``) for which pred holds."""
        for i in range(min(end, len(self.ev)) - 1, -1, -1):
            e = self.ev[i]
            if (cpu is None or e.cpu == cpu) and pred(e):
                return e
        return None

    def after(self, start, end, pred, cpu=None):
        for i in range(start + 1, min(end, len(self.ev))):
            e = self.ev[i]
            if (cpu is None or e.cpu == cpu) and pred(e):
                return e
        return None

    def store_to(self, addr):
        return lambda e: e.op[0] in _STORES and e.op[1] == addr and self.written(e) is not None

    def make_after(self, st, end):
        """The same CPU's next store to the entry it broke (the make)."""
        return self.after(st.index, end, self.store_to(st.op[1]), cpu=st.cpu)

    def frees_of(self, pfn, end) -> list:
        return [self.ev[s] for s, _c, p in self.w.free_log if p == pfn and s < end
                and s < len(self.ev)]

    def rcu_chain(self, s: Slice, pfn, end):
        """call_rcu() steps whose callback gets the page."""
        pa = pfn << self.shift
        for e in self.ev[:end]:
            if e.op[0] == "call_rcu" and pa in [a for a in e.op[2] if isinstance(a, int)]:
                s.add(e, role="defer")


def causal_slice(world, violations=None, cycle_start: int | None = None) -> Slice:
    """The steps of ``world``'s recorded run that ``violations`` (default:
    all of the run's) depend on; see the module docstring.  With
    ``cycle_start`` (a lasso: the steps from there on repeat forever), the
    cycle and what it reads."""
    run = _Run(world)
    s = Slice(cycle_start=cycle_start)
    vs = list(world.violations if violations is None else violations)
    n = len(run.ev)
    for v in vs:
        if v.step is None or v.step >= n:
            s.end.append(v)
            _at_end(run, s, v)
            continue
        e = run.ev[v.step]
        s.marks.setdefault(e.index, [])
        if v.kind not in s.marks[e.index]:
            s.marks[e.index].append(v.kind)
        s.add(e, role="bad")
        if v.kind in ("use-after-free", "double-free"):
            _freed_page(run, s, e, v)
        elif v.kind in ("stale-tlb", "isolation"):
            _stale_tlb(run, s, e, v)
        elif v.kind == "deadlock":
            for i in world.live():
                s.add(run.before(n, lambda x: True, cpu=i))
        else:
            _reads_from(run, s, e)
    if not vs and cycle_start is None:
        _shared(run, s)
    if cycle_start is not None and 0 <= cycle_start < n:
        for e in run.ev[cycle_start:]:
            s.add(e)
            _reads_from(run, s, e, limit=1)
    return s


# ---------------------------------------------------------------------------
# The rules
# ---------------------------------------------------------------------------

def _freed_page(run: _Run, s: Slice, e, v):
    """use-after-free / double-free at event ``e`` on the page ``v`` names."""
    pa = victim_page(run.w, v)
    pfn = pa >> run.shift if pa is not None else run.page(e)
    if pfn is None:
        _reads_from(run, s, e)
        return
    end = e.index
    # The chain that freed it: a walker count's last reference, each free,
    # and the RCU callback that did it.
    last = run.before(end, lambda x: x.op[0] == "walker_put" and x.result is True
                      and x.op[1] >> run.shift == pfn)
    s.add(last, "the last reference", role="free")
    frees = run.frees_of(pfn, end + 1)
    for f in frees:
        if f.index != e.index:
            s.add(f, "freed", role="free")
    if frees and frees[-1].index == e.index:
        s.steps[e.index] = "freed"
    run.rcu_chain(s, pfn, end)
    # The pointer the CPU followed: its own last read of a pointer to the
    # page; a walk cache's is an MMU's read.
    def ptr(x):
        return run.points_to(run.seen(x), run.level(x)) == pfn

    def read_ptr(x):
        return x.op[0] in _READS and ptr(x)
    stale = run.before(end, read_ptr, cpu=e.cpu) or run.before(end, ptr, cpu=e.cpu)
    if stale is None or (frees and frees[0].index == e.index):
        stale = run.before(end, lambda x: x.op[0] == "hw_read" and ptr(x)) or stale
    s.add(stale, role="stale")
    # The store that took the page out of its parent entry, and the make;
    # stores into it by other CPUs after that.
    unlink = _unlink_of(run, pfn, end)
    if unlink is not None:
        s.add(unlink, role="unlink")
        s.add(run.make_after(unlink, end), role="make")
        _late_writers(run, s, pfn, unlink, end)
    # ABA: the page came back from the allocator and was linked again.
    if frees:
        f0 = frees[0].index
        back = run.after(f0, end, lambda x: x.op[0] == "zalloc_page" and x.result == pfn << run.shift)
        if back is not None:
            relink = run.after(back.index, end, lambda x: run.written(x) is not None
                               and run.points_to(run.written(x), run.level(x)) == pfn)
            s.add(relink or back, "reused", role="relink")
    # A double free by a CPU that lost a race: its failed cmpxchg, and the
    # store that made it fail.
    if v.kind == "double-free":
        lost = run.before(end, lambda x: x.op[0] == "cmpxchg" and x.result != x.op[2], cpu=e.cpu)
        if lost is not None:
            s.add(lost, role="lost")
            s.add(run.before(lost.index, run.store_to(lost.op[1])), role="winner")


def _unlink_of(run: _Run, pfn, end):
    """The last store before ``end`` that took a pointer to ``pfn`` out of an entry."""
    return run.before(end, lambda x: x.op[0] in _STORES and run.written(x) is not None
                      and run.points_to(run.old(x), run.level(x)) == pfn
                      and run.points_to(run.written(x), run.level(x)) != pfn)


def _late_writers(run: _Run, s: Slice, pfn, unlink, end, limit: int = 2):
    """Stores into the table ``pfn`` by other CPUs after it was unlinked
    (they still held a pointer to it): per CPU and entry its last such
    store, the reference its make took on the table, and the read that
    gave the CPU the pointer."""
    last: dict = {}
    for x in run.ev[unlink.index + 1:end]:
        if (x.op[0] in _STORES and run.written(x) is not None and x.cpu != unlink.cpu
                and x.op[1] >> run.shift == pfn):
            last[(x.cpu, x.op[1])] = x
    for x in list(last.values())[:limit]:
        s.add(x, role="late")
        s.add(run.before(x.index, lambda y: y.op[0] == "get_page"
                         and y.op[1] >> run.shift == pfn, cpu=x.cpu))
        s.add(run.before(x.index, lambda y: y.op[0] in _READS
                         and run.points_to(run.seen(y), run.level(y)) == pfn, cpu=x.cpu),
              role="stale")


def _stale_tlb(run: _Run, s: Slice, e, v):
    """A TLB (or walk cache) entry used or left after the tables changed."""
    end = e.index
    mmu = e.cpu if e.op[0] in ("hw_walk_start", "hw_read") else None
    last = run.before(end, lambda x: x.op[0] == "hw_read", cpu=mmu)
    if last is None:
        _reads_from(run, s, e)
        return
    # The walk that filled the TLB: that MMU's reads back to its walk start.
    walk = []
    for i in range(last.index, -1, -1):
        x = run.ev[i]
        if x.cpu != last.cpu:
            continue
        if x.op[0] != "hw_read":
            break
        walk.append(x)
    for r in reversed(walk):
        s.add(r, role="stale")
        brk = run.after(r.index, end, run.store_to(r.op[1]))
        if brk is not None and brk.cpu != r.cpu:
            s.add(brk, role="unlink")
            s.add(run.make_after(brk, end), role="make")


def _reads_from(run: _Run, s: Slice, e, limit: int = 3):
    """For a step with no page of its own to blame: each value its CPU read
    (most recent first, up to ``limit``) that another CPU had stored, with
    that store, and the CPU's own store that the other one overwrote."""
    k = OPS.get(e.op[0])
    if k is not None and k.addr and k.memory in ("ref", "read") and e.op[0] not in _READS:
        pfn = e.op[1] >> run.shift
        unlink = _unlink_of(run, pfn, e.index)
        if unlink is not None:
            s.add(unlink, role="unlink")
            s.add(run.make_after(unlink, e.index), role="make")
            _late_writers(run, s, pfn, unlink, e.index)
    found = 0
    for i in range(e.index, -1, -1):
        r = run.ev[i]
        if r.cpu != e.cpu or r.op[0] not in _ENTRY or run.seen(r) is None:
            continue
        w = run.before(r.index, run.store_to(r.op[1]))
        if w is None or w.cpu == r.cpu:
            continue
        s.add(r, role="read")
        s.add(w, role="writer")
        mine = run.before(w.index, run.store_to(r.op[1]), cpu=r.cpu)
        s.add(mine, role="overwritten")
        found += 1
        if found >= limit:
            break


def _blind_overwrites(run: _Run, s: Slice, pages=None) -> int:
    """Stores over a value their CPU never saw, which another CPU had
    stored: both stores, both CPUs' reads of the entry, and the references
    each CPU's make took.  Returns how many were found."""
    n = 0
    last_seen: dict = {}            # (cpu, addr) -> value the CPU last read or stored there
    last_store: dict = {}           # addr -> event
    for e in run.ev:
        name = e.op[0]
        if name not in _ENTRY:
            continue
        addr = e.op[1]
        if name in _STORES:
            new = run.written(e)
            old = run.old(e)
            prev = last_store.get(addr)
            key = (e.cpu, addr)
            if (new is not None and prev is not None and prev.cpu != e.cpu and key in last_seen
                    and last_seen[key] != old and old == run.written(prev)
                    and (pages is None or addr >> run.shift in pages)):
                n += 1
                s.add(prev, role="overwritten")
                s.add(e, role="overwrite")
                s.add(run.before(e.index, lambda x, a=addr: x.op[0] in _READS
                                 and x.op[1] == a, cpu=e.cpu), role="read")
                for st in (prev, e):
                    mk = run.make_after(st, len(run.ev))
                    s.add(mk)
                    tail = mk or st
                    # the reference the make took on the entry's table
                    s.add(run.before(tail.index, lambda x, a=addr: x.op[0] == "get_page"
                                     and x.op[1] >> run.shift == a >> run.shift, cpu=st.cpu)
                          if pages is not None else None)
            if new is not None:
                last_store[addr] = e
                last_seen[(e.cpu, addr)] = new
            seen = run.seen(e)
            if seen is not None:
                last_seen[(e.cpu, addr)] = seen if new is None else new
        else:
            last_seen[(e.cpu, addr)] = run.seen(e)
    return n


def _at_end(run: _Run, s: Slice, v):
    n = len(run.ev)
    pa = victim_page(run.w, v)
    pfn = pa >> run.shift if pa is not None else None
    if v.kind == "leak" and pfn is not None:
        link = run.before(n, lambda x: run.written(x) is not None
                          and run.points_to(run.written(x), run.level(x)) == pfn)
        s.add(link, role="link")
        if link is None:
            s.add(run.before(n, lambda x: x.op[0] == "zalloc_page" and x.result == pa),
                  role="alloc")
        unlink = _unlink_of(run, pfn, n)
        if unlink is not None:
            s.add(unlink, role="unlink")
            if unlink.op[0] not in ("cmpxchg", "xchg"):
                # A plain store does not say what it replaced: the read does.
                s.add(run.before(unlink.index, lambda x: x.op[0] in _READS
                                 and x.op[1] == unlink.op[1], cpu=unlink.cpu), role="read")
            _late_writers(run, s, pfn, unlink, n)
        run.rcu_chain(s, pfn, n)
        s.add(run.before(n, lambda x: OPS.get(x.op[0]) is not None and OPS[x.op[0]].memory
                         in ("ref", "read") and x.op[0] not in _READS
                         and x.op[1] >> run.shift == pfn), role="last-ref")
        _blind_overwrites(run, s, pages={pfn} | ({unlink.op[1] >> run.shift} if unlink else set()))
    elif v.kind == "refcount" and pfn is not None:
        if not _blind_overwrites(run, s, pages={pfn}):
            s.add(run.before(n, lambda x: OPS.get(x.op[0]) is not None
                             and OPS[x.op[0]].memory == "ref"
                             and x.op[1] >> run.shift == pfn), role="last-ref")
    elif v.kind == "lost-update":
        if not _blind_overwrites(run, s) and not _stale_writes(run, s):
            _cross_reads(run, s)
    elif v.kind == "rcu" or v.kind == "lock":
        pass


def _stale_writes(run: _Run, s: Slice):
    """A lost update with no blind overwrite: a CPU wrote through a pointer
    to a table that was freed (and maybe reused) after it read it: the
    use-after-free chain of that page, ending at the write."""
    freed_at = {}
    for step, _cpu, pfn in run.w.free_log:
        freed_at.setdefault(pfn, step)
    for e in run.ev:
        if e.op[0] not in _STORES or run.written(e) is None:
            continue
        pfn = e.op[1] >> run.shift
        f = freed_at.get(pfn)
        if f is None or f > e.index:
            continue
        stale = run.before(e.index, lambda x: run.points_to(run.seen(x), run.level(x)) == pfn,
                           cpu=e.cpu)
        if stale is None or stale.index > f:
            continue
        s.add(e, role="bad")
        from .violation import Violation
        _freed_page(run, s, e, Violation("use-after-free", f"table page {pfn << run.shift:#x}"))
        return True
    return False


def _cross_reads(run: _Run, s: Slice, limit: int = 2):
    """A lost update with neither a blind overwrite nor a stale pointer: a
    CPU changed course on a value another CPU stored.  The last ``limit``
    such reads that the reader followed with a store, the store each read
    (and that CPU's break before it), and what the reader stored next (and
    its make)."""
    pairs = []
    for r in run.ev:
        if r.op[0] not in _READS:
            continue
        w = run.before(r.index, run.store_to(r.op[1]))
        if w is not None and w.cpu != r.cpu:
            nxt = run.after(r.index, len(run.ev), lambda x: run.written(x) is not None,
                            cpu=r.cpu)
            if nxt is not None:
                pairs.append((r, w, nxt))
    for r, w, nxt in pairs[-limit:]:
        s.add(r, role="read")
        s.add(w, role="writer")
        s.add(run.before(w.index, run.store_to(w.op[1]), cpu=w.cpu))
        if nxt is not None:
            s.add(nxt)
            s.add(run.make_after(nxt, len(run.ev)), role="consequence")


def _shared(run: _Run, s: Slice):
    """A run without a violation: the entries two or more CPUs accessed
    (each CPU's first and last access to each), frees and call_rcu()."""
    who: dict = {}
    for e in run.ev:
        if e.op[0] in _ENTRY:
            who.setdefault(e.op[1], set()).add(e.cpu)
    first: dict = {}
    last: dict = {}
    for e in run.ev:
        if e.op[0] in _ENTRY and len(who[e.op[1]]) > 1:
            first.setdefault((e.cpu, e.op[1]), e)
            last[(e.cpu, e.op[1])] = e
    for e in list(first.values()) + list(last.values()):
        s.add(e)
    for step, _cpu, _pfn in run.w.free_log:
        if step < len(run.ev):
            s.add(run.ev[step], "freed")
    for e in run.ev:
        if e.op[0] == "call_rcu":
            s.add(e)
