"""Partial-order reduction (s2pt.sim.por) changes how many states the search
keeps, never what it finds: every verdict with and without it agrees."""

from __future__ import annotations

import pytest

from s2pt.explorer import explore, replay

from reduction_checks import assert_same_verdicts


@pytest.mark.parametrize("name,scheme", [
    ("collapse-vs-fault", "none"),
    ("collapse-vs-fault", "refcount"),
    ("collapse-vs-fault", "refcount-revalidate"),
    pytest.param("aba-table-reuse", "refcount-revalidate", marks=pytest.mark.slow),
    ("stash-old-pte", "none"),
    ("collapse-vs-hw-walk-no-tlbi", "none"),
    ("unmap-vs-fault", "rcu"),
    ("collapse-vs-fault", "rwlock"),
    # Confined holders (Reduction._confined): readers inside the unlinked table.
    ("collapse-vs-fault", "rcu-rfc"),
    ("aba-table-reuse", "none"),
    pytest.param("collapse-vs-fault-3", "none", marks=pytest.mark.slow),
    pytest.param("collapse-vs-fault-3", "rcu-rfc", marks=pytest.mark.slow),
])
def test_verdicts_agree_with_and_without_por(name, scheme):
    assert_same_verdicts(name, scheme, por=False)


def test_a_table_handed_to_call_rcu_is_reachable_by_the_callback_thread():
    """The RCU callback queue holds the unlinked table's pointer: a walker's
    read of the table (here one that forgot rcu_read_lock()) is not private,
    because the callback thread will free the page under it.  With
    dead-variable reduction no stale local hides this any more: a test that
    counted only CPUs' locals took the read alone and missed the
    use-after-free."""
    red = explore("collapse-vs-fault", "rcu", bugs=("no-rcu-read-lock",), details=False)
    ref = explore("collapse-vs-fault", "rcu", bugs=("no-rcu-read-lock",), details=False,
                  por=False)
    assert red.complete and ref.complete
    assert red.kinds == ref.kinds == {"use-after-free"}
    assert red.states <= ref.states


def test_por_saves_states_where_a_subtree_is_freed():
    red = explore("collapse-vs-fault", "none", details=False)
    ref = explore("collapse-vs-fault", "none", details=False, por=False)
    assert red.states < ref.states


# ---------------------------------------------------------------------------
# A walker left in an unlinked subtree still reaches the tables below
# ---------------------------------------------------------------------------

GiB, PAGE = 1 << 30, 4096
MAGIC = 0x4                 # an invalid entry with a software bit set


def _subtree_builder(scheme, bugs, loop=False):
    """A level-2 table Q (L1 -> Q -> the level-3 table P) is unlinked while
    a walker holds a pointer into Q.  The unlinker then raises a flag in Q
    and writes MAGIC into P and takes it back.  The walker, once it sees
    the flag, steps from Q down into P: it holds no pointer into P until
    then, but it can reach P, so the unlinker's stores into P are not
    private to it.  The walker reading MAGIC is the "bug" to find.

    With ``loop``, the unlinker instead flips P[0] between 0 and MAGIC
    forever once Q is unlinked, and never raises the flag: each of its
    steps is then private, round a cycle of four positions.  The walker
    warns when it finds Q unlinked: a search that let the private loop run
    forever ahead of it (the ignoring problem) would miss that."""
    import s2pt
    from s2pt.errors import KernelBug
    from s2pt.invariants import reachable_tables
    from s2pt.ops import READ_ONCE, WRITE_ONCE
    from s2pt.sim.sync import SimMachine
    from s2pt.sim.world import Setup

    pgt = s2pt.Stage2(ipa_bits=40, machine=SimMachine, mm_ops=scheme.mm_ops())
    pgt.map(GiB, PAGE, 0x10_4000_0000, force_pte=True)
    tables = {lvl: p.pa for p, lvl in reachable_tables(pgt) if lvl > pgt.start_level}
    q, p = tables[2], tables[3]
    l1 = next(pg.pa + 8 * k for pg in pgt.pgd_pages for k in range(512)
              if pg.table[k] & 3 == 3 and int(pg.table[k]) & pgt.addr_mask == q)   # -> Q
    s = Setup(pgt, scheme, bugs)

    def walker():
        e = yield READ_ONCE(l1)
        if e & 3 != 3:
            if loop:
                raise KernelBug("warn", "the walker found Q unlinked")
            return 0
        table = e & pgt.addr_mask           # Q, held from here on
        if (yield READ_ONCE(table + 8)):    # the flag, Q[1]
            leaf_table = (yield READ_ONCE(table)) & pgt.addr_mask   # Q[0] -> P
            if (yield READ_ONCE(leaf_table)) == MAGIC:
                raise KernelBug("warn", "the walker read P while it held MAGIC")
        return 0

    def unlinker():
        yield WRITE_ONCE(l1, 0)             # Q (and P below it) unlinked
        while loop:
            v = yield READ_ONCE(p)
            yield WRITE_ONCE(p, v ^ MAGIC)
        yield WRITE_ONCE(q + 8, 1)          # the flag in Q
        yield WRITE_ONCE(p, MAGIC)          # P: no CPU holds a pointer into it ...
        yield WRITE_ONCE(p, 0)              # ... but the walker can reach it through Q

    s.cpu("walker", "walks down through Q", walker)
    s.cpu("unlinker", "unlinks Q, then writes P", unlinker)
    s.region = (GiB, 2 << 20)
    return s


def test_a_page_below_an_unlinked_subtree_root_is_not_private():
    from s2pt.scenarios import Scenario
    toy = Scenario("toy-subtree", "a walker in an unlinked Q reaches P below it",
                   _subtree_builder, {"none": {}})
    red = explore(toy, "none", details=False)
    ref = explore(toy, "none", details=False, por=False)
    assert red.complete and ref.complete
    # (The toy never frees Q and P: the end-of-run checks also say leak.)
    assert "warn" in ref.kinds                       # the unreduced search reads MAGIC
    assert red.kinds == ref.kinds                    # and so does the reduced one (before
    assert red.states <= ref.states                  # the fix: 17 states, no warn)
    w = replay(toy, "none", red.found["warn"].schedule_text)
    assert [v.kind for v in w.violations] == ["warn"]


def test_a_private_cycle_is_a_livelock_not_an_endless_run():
    """A run of private steps that comes round its loop again stops (at the
    third time it performs an operation on the same machine from the same
    call stack), so the search ends quickly, and the cycle proviso expands the state where it
    stopped: the search finds the unlinker's endless private loop as the
    unreduced search does, its lasso replays, and the walker still gets to
    find Q unlinked."""
    from s2pt.scenarios import Scenario
    toy = Scenario("toy-private-loop", "an unlinker flips a private page forever",
                   lambda scheme, bugs: _subtree_builder(scheme, bugs, loop=True),
                   {"none": {}})
    red = explore(toy, "none")
    ref = explore(toy, "none", por=False)
    assert red.complete and ref.complete
    assert red.kinds == ref.kinds == {"livelock", "warn"}
    assert red.settings["por_private_steps"] > 0
    lasso = red.found["livelock"]
    assert "unlinker never finishes" in lasso.message
    assert set(lasso.cycle) == {1}                   # the unlinker alone, round its loop


@pytest.mark.parametrize("name,scheme,runs", [
    ("collapse-vs-fault", "rcu", True),
    ("collapse-vs-fault", "refcount-revalidate", True),
    ("collapse-vs-fault", "rcu-rfc", True),
    pytest.param("aba-table-reuse", "refcount-revalidate", True, marks=pytest.mark.slow),
    pytest.param("collapse-vs-fault-3", "none", True, marks=pytest.mark.slow),
    ("collapse-vs-fault", "rwlock", False),        # a livelock, found through runs of one
])
def test_a_run_of_private_steps_is_one_transition(name, scheme, runs, monkeypatch):
    """The search takes a CPU's run of private steps (Reduction.goes_on) as
    one transition and keeps only the state where it ends.  Taken a step at
    a time, keeping every state, the search finds the same violations,
    reaches the race window the same way and comes to the same number of
    end states; it keeps more states, and the runs account for the
    difference."""
    import s2pt
    from s2pt.sim.por import Reduction
    from s2pt.sim.search import StateSpace, _bfs, format_schedule

    def run():
        space = StateSpace(s2pt.world(name, scheme, record=False))
        found, stats = _bfs(space)
        return found, stats, space.por.taken

    fast, fstats, ftaken = run()
    monkeypatch.setattr(Reduction, "goes_on", lambda self, *args: None)
    slow, sstats, staken = run()
    assert fstats["complete"] and sstats["complete"]
    assert set(fast) == set(slow)
    assert fstats["window"]["reached"] == sstats["window"]["reached"]
    assert fstats["terminals"] == sstats["terminals"]
    assert sstats["run_steps"] == 0
    if runs:
        assert fstats["run_steps"] > 0
        assert fstats["states"] < sstats["states"]
    for kind, what in fast.items():         # (a livelock's lasso is replayed as it is found)
        if kind != "livelock":
            w = replay(name, scheme, format_schedule(what[0]))
            assert kind in {v.kind for v in w.violations}


# ---------------------------------------------------------------------------
# A confined holder: a walker that can only touch its own entry
# ---------------------------------------------------------------------------

def _confined_builder(scheme, bugs, magic=1, pages=1, visitor=None):
    """The level-3 table P (four pages mapped at 1 GiB) is unlinked while a
    reader may be inside it, in an access-flag walk of ``pages`` pages from
    entry 1 (stage2_update_leaf_attrs, as kvm_pgtable_stage2_mkyoung walks
    one: stage2_attr_walker, a confined visitor).  The unlinker then
    rewrites every entry the reader's walk does not cover, and, with
    ``magic`` (an entry index), puts MAGIC there and takes it back.  The
    reader meeting MAGIC (its walk gives up with -EAGAIN) is the "bug" to
    find: stores into the entries the reader's walk covers are not private
    to it, even one it has not reached yet; the others are.  ``visitor``:
    the reader's walk visits with it instead of stage2_attr_walker."""
    import s2pt
    from s2pt import descriptor as d
    from s2pt.errors import KernelBug
    from s2pt.invariants import reachable_tables
    from s2pt.ops import READ_ONCE, WRITE_ONCE, cpu_relax
    from s2pt.pgtable import (HANDLE_FAULT, LEAF, SHARED, Stage2AttrData, Walker,
                              kvm_pgtable_walk, stage2_update_leaf_attrs)
    from s2pt.sim.sync import SimMachine
    from s2pt.sim.world import Setup

    flags = SHARED | HANDLE_FAULT             # as handle_access_fault walks
    af = d.KVM_PTE_LEAF_ATTR_LO_S2_AF
    pgt = s2pt.Stage2(ipa_bits=40, machine=SimMachine, mm_ops=scheme.mm_ops())
    pgt.map(GiB, 4 * PAGE, 0x10_4000_0000, force_pte=True)
    tables = {lvl: p.pa for p, lvl in reachable_tables(pgt) if lvl > pgt.start_level}
    q, p = tables[2], tables[3]
    s = Setup(pgt, scheme, bugs)
    covered = tuple(range(1, 1 + pages))

    def reader():
        yield cpu_relax()                      # (the explorer checks locals at the first step)
        if visitor is None:
            ret = yield from stage2_update_leaf_attrs(pgt, GiB + PAGE, pages * PAGE, af, 0,
                                                      flags=flags)
        else:
            walker = Walker(visitor, Stage2AttrData(af, 0), flags | LEAF)
            ret = yield from kvm_pgtable_walk(pgt, GiB + PAGE, pages * PAGE, walker)
        if ret:
            raise KernelBug("warn", "the reader met MAGIC in an entry of its walk")
        return 0

    # What the collapse puts in Q[0] instead of P: a 2M block, valid, so that
    # a reader who comes after it sets the block's access flag and is done.
    block = (int(pgt.mm.read64(p)) & ~pgt.addr_mask & ~0b11) | 0x10_4000_0000 | 0b01

    def unlinker():
        yield WRITE_ONCE(q, block)             # Q[0] pointed to P: P unlinked
        for k in range(4):
            if k not in covered:               # entries the reader never touches
                old = yield READ_ONCE(p + 8 * k)
                yield WRITE_ONCE(p + 8 * k, old ^ MAGIC)
        if magic is not None:
            old = yield READ_ONCE(p + 8 * magic)
            yield WRITE_ONCE(p + 8 * magic, MAGIC)
            yield WRITE_ONCE(p + 8 * magic, old)

    s.cpu("reader", f"sets the access flag of {pages} page(s) from entry 1", reader)
    s.cpu("unlinker", "unlinks P, then rewrites its entries", unlinker)
    s.region = (GiB, 2 << 20)
    return s


@pytest.mark.parametrize("magic,pages", [(1, 1), (None, 1), (2, 2)])
def test_a_confined_holder_makes_only_its_own_entries_shared(magic, pages, monkeypatch):
    """A reader inside an access-flag walk of the unlinked table holds a
    pointer into it, but can only ever touch the entries its walk covers:
    the unlinker's stores into the other entries are private (fewer states
    than when every holder counts); its stores into a covered entry are
    not, even one the reader has not reached yet (the reduced search finds
    the reader meeting MAGIC, as the unreduced one does)."""
    from s2pt.scenarios import Scenario
    from s2pt.sim.por import Reduction
    toy = Scenario("toy-confined", "a reader confined to its entries of an unlinked table",
                   lambda scheme, bugs: _confined_builder(scheme, bugs, magic, pages),
                   {"none": {}})
    red = explore(toy, "none", details=False)
    ref = explore(toy, "none", details=False, por=False)
    assert red.complete and ref.complete
    assert red.kinds == ref.kinds
    assert ("warn" in ref.kinds) == (magic is not None)
    monkeypatch.setattr(Reduction, "_confined", lambda self, j, nid: False)
    strict = explore(toy, "none", details=False)
    assert strict.kinds == red.kinds
    assert red.states < strict.states <= ref.states
    if magic is not None:
        w = replay(toy, "none", red.found["warn"].schedule_text)
        assert "warn" in [v.kind for v in w.violations]


def _peeking_attr_walker(ctx, visit):
    """stage2_attr_walker that first reads the next entry and gives up if it
    holds MAGIC: not a kernel visitor, but a mutant of one that touches a
    second entry."""
    from s2pt.ops import READ_ONCE
    from s2pt.pgtable import EAGAIN, stage2_attr_walker
    if (yield READ_ONCE(ctx.ptep + 8)) == MAGIC:
        return -EAGAIN
    return (yield from stage2_attr_walker(ctx, visit))


def test_check_mode_catches_a_visitor_declared_confined_that_is_not(monkeypatch):
    """CONFINED_CODE (s2pt.sim.por) declares which visitors touch only the
    entry they visit, and the reduction trusts it.  Declared confined, a
    visitor that also reads the next entry makes the reduced search miss
    the reader meeting MAGIC there (the unreduced search finds it): the
    unlinker's stores into that entry were taken as private.  Check mode
    audits the promise at every step and names the one that breaks it."""
    from s2pt import S2ptError
    from s2pt.scenarios import Scenario
    from s2pt.sim import por
    monkeypatch.setattr(por, "CONFINED_CODE",
                        por.CONFINED_CODE | {_peeking_attr_walker.__code__})
    toy = Scenario("toy-peeking", "a reader whose visitor peeks at the next entry",
                   lambda scheme, bugs: _confined_builder(scheme, bugs, 2, 1,
                                                          _peeking_attr_walker),
                   {"none": {}})
    ref = explore(toy, "none", details=False, por=False)
    assert ref.complete and "warn" in ref.kinds
    red = explore(toy, "none", details=False)
    assert red.complete and "warn" not in red.kinds
    with pytest.raises(S2ptError, match=r"broke that promise: READ_ONCE of entry 2 "):
        explore(toy, "none", details=False, check=True)
    # Declared as it is (not confined), the visitor makes its CPU an
    # ordinary holder: the reduced search finds the bug, and check mode passes.
    monkeypatch.undo()
    assert "warn" in explore(toy, "none", details=False, check=True).kinds


def test_check_mode_audits_the_confined_holders_of_the_collapse(monkeypatch):
    """The reader of collapse-vs-fault that raced into the unlinked table is
    a confined holder; check mode audits its promise at its steps in the
    reduced search (it is asked, not skipped), and it keeps it: the search
    ends with its verdict and no audit error."""
    from s2pt.sim import por
    calls = []
    original = por.Reduction.broken_promise

    def counted(self, *args):
        why = original(self, *args)
        calls.append(why)
        return why

    monkeypatch.setattr(por.Reduction, "broken_promise", counted)
    r = explore("collapse-vs-fault", "rcu-rfc", details=False, check=True)
    assert r.complete and not r.kinds
    assert calls and set(calls) == {None}

