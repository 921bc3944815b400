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


def _subtree_builder(scheme, bugs):
    """A level-2 table Q (L1 -> Q -> the level-3 table P) is unlinked while
    a walker holds a pointer into Q.  The unlinker then raises a flag in Q
    and writes MAGIC into P and takes it back.  The walker, once it sees
    the flag, steps from Q down into P: it holds no pointer into P until
    then, but it can reach P, so the unlinker's stores into P are not
    private to it.  The walker reading MAGIC is the "bug" to find."""
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
            return 0
        table = e & pgt.addr_mask           # Q, held from here on
        if (yield READ_ONCE(table + 8)):    # the flag, Q[1]
            leaf_table = (yield READ_ONCE(table)) & pgt.addr_mask   # Q[0] -> P
            if (yield READ_ONCE(leaf_table)) == MAGIC:
                raise KernelBug("warn", "the walker read P while it held MAGIC")
        return 0

    def unlinker():
        yield WRITE_ONCE(l1, 0)             # Q (and P below it) unlinked
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


@pytest.mark.parametrize("name,scheme", [
    ("collapse-vs-fault", "rcu"),
    ("collapse-vs-fault", "refcount-revalidate"),
    pytest.param("aba-table-reuse", "refcount-revalidate", marks=pytest.mark.slow),
    ("collapse-vs-hw-walk", "rcu"),
])
def test_going_on_alone_is_a_shortcut_to_the_same_graph(name, scheme, monkeypatch):
    """Reduction.chain_in lets the CPU that just stepped alone go on alone
    without asking every other CPU again.  On these scenarios it picks the
    CPU private_in would have picked, so the graph is the same, state for
    state; only the time changes."""
    from s2pt.sim.por import Reduction
    fast = explore(name, scheme, details=False)
    monkeypatch.setattr(Reduction, "chain_in", lambda self, *args: None)
    slow = explore(name, scheme, details=False)
    assert (fast.states, fast.transitions, fast.kinds) == (slow.states, slow.transitions,
                                                            slow.kinds)
    assert fast.settings.get("por_private_steps") == slow.settings.get("por_private_steps")
