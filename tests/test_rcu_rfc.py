"""rcu-rfc: RFC v1's pruning walker (April 2022), checked against what the
series says it does.

Expected operations are derived from the cover letter and patch 09's
description (lock every descendant entry with an atomic exchange, inside the
break-before-make, follow what was swapped out, punt each table page's last
reference to RCU), with addresses read from raw table memory, not from the
walker.
"""

from __future__ import annotations

import pytest

import s2pt
from s2pt import pgtable as pt
from s2pt.comparison import run_costs
from s2pt.memory import PAGE_POISON64
from s2pt.ops import READ_ONCE, WRITE_ONCE, run, xchg
from s2pt.scenarios import MUTATIONS, SCENARIOS, SOMETIMES
from s2pt.schemes import SCHEMES

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
LOCKED = 1 << 10                      # KVM_INVALID_PTE_LOCKED
ADDR = ((1 << 48) - 1) & ~0xFFF       # output address bits, 4K granule
RFC = SCHEMES["rcu-rfc"]


def table_of(pgt, ptep):
    return pgt.mem.read64(ptep) & ADDR


def rfc_table():
    return s2pt.Stage2(ipa_bits=40, granule=4096, mm_ops=RFC.mm_ops())


# ---------------------------------------------------------------------------
# The op
# ---------------------------------------------------------------------------

def test_xchg_stores_unconditionally_and_returns_the_old_value():
    pgt = s2pt.Stage2()
    pgt.map(1 * GiB, 4 * KiB, 0x8_0000_0000)
    l2 = table_of(pgt, pgt.pgd + 8)
    l3 = table_of(pgt, l2)
    before = pgt.mem.read64(l3)

    def prog():
        a = yield xchg(l3, LOCKED)
        b = yield xchg(l3, LOCKED)
        c = yield READ_ONCE(l3)
        yield WRITE_ONCE(l3, before)
        return a, b, c

    assert run(prog(), pgt.machine) == (before, LOCKED, LOCKED)
    assert pgt.mem.read64(l3) == before
    # On a freed page it is a use-after-free, like every other access, and
    # the poison stays.
    pgt.mem.free_page(pgt.mem.page_of(l3))

    def late():
        yield xchg(l3, 0)

    with pytest.raises(s2pt.KernelBug, match="use-after-free"):
        run(late(), pgt.machine)
    assert int(pgt.mem.page_of(l3).table[0]) == PAGE_POISON64


# ---------------------------------------------------------------------------
# The prune, in a sequential trace
# ---------------------------------------------------------------------------

def test_collapse_xchgs_every_descendant_entry_between_break_and_make():
    pgt = rfc_table()
    pgt.map(1 * GiB, 2 * MiB, 0x8_0000_0000, force_pte=True)
    l2 = table_of(pgt, pgt.pgd + 8)
    l3 = table_of(pgt, l2)
    entries = [pgt.mem.read64(l3 + 8 * i) for i in range(pgt.ptrs_per_pte)]

    t = s2pt.trace(pgt.map, 1 * GiB, 2 * MiB, 0x8_0000_0000)

    ops = t.ops
    break_at = ops.index(("WRITE_ONCE", l2, LOCKED))      # exclusive walk: no cmpxchg
    make_at = next(k for k, op in enumerate(ops) if op[0] == "smp_store_release" and op[1] == l2)
    xchgs = [(k, s) for k, s in enumerate(t.steps) if s.op[0] == "xchg"]
    # One xchg per entry of the unlinked table, each entry once, all of them
    # between the break of the table entry and the make of the block.
    assert [s.op for _, s in xchgs] == [("xchg", l3 + 8 * i, LOCKED)
                                        for i in range(pgt.ptrs_per_pte)]
    assert all(break_at < k < make_at for k, _ in xchgs)
    # Each exchange hands back what the entry held.
    assert [s.result for _, s in xchgs] == entries
    assert {s.function for _, s in xchgs} == {"stage2_prune_lock_pte"}
    # Each counted entry's reference is dropped at once; the table's own
    # goes to an RCU callback, queued after the make.
    puts = [k for k, op in enumerate(ops) if op[0] == "put_page" and op[1] >> 12 == l3 >> 12]
    assert len(puts) == pgt.ptrs_per_pte + 1
    assert all(break_at < k < make_at for k in puts[:-1])
    rcu_at = next(k for k, op in enumerate(ops) if op[0] == "call_rcu")
    assert ops[rcu_at][2] == (pgt, l3) and make_at < rcu_at < puts[-1]
    assert t.steps[puts[-1]].function == "stage2_free_table_page_rcu_cb"
    assert pgt.mem.page_of(l3).freed
    assert t.summary()["xchg"] == pgt.ptrs_per_pte
    pgt.check_invariants()


def test_the_prune_follows_what_it_swapped_out_down_a_two_level_subtree():
    """A 1G block over a level-2 table holding two level-3 tables: every
    entry of all three tables is exchanged, the walk descends into the two
    tables the exchanges took out of the level-2 entries, and each of the
    three table pages gets its own RCU callback."""
    pgt = rfc_table()
    pgt.map(1 * GiB, 4 * KiB, 0x8_4000_0000)
    pgt.map(1 * GiB + 5 * 2 * MiB, 4 * KiB, 0x8_4000_0000 + 5 * 2 * MiB)
    l2 = table_of(pgt, pgt.pgd + 8)
    l3s = [table_of(pgt, l2), table_of(pgt, l2 + 8 * 5)]
    t = s2pt.trace(pgt.map, 1 * GiB, 1 * GiB, 0x8_4000_0000)
    x = [s.op[1] for s in t.steps if s.op[0] == "xchg"]
    n = pgt.ptrs_per_pte
    want = ([l2 + 8 * i for i in range(0, 1)] + [l3s[0] + 8 * i for i in range(n)]
            + [l2 + 8 * i for i in range(1, 6)] + [l3s[1] + 8 * i for i in range(n)]
            + [l2 + 8 * i for i in range(6, n)])
    assert x == want
    queued = [s.op[2][1] for s in t.steps if s.op[0] == "call_rcu"]
    assert queued == [l3s[0], l3s[1], l2]          # post-order, then the root
    assert all(pgt.mem.page_of(p).freed for p in [l2] + l3s)
    pgt.check_invariants()


def test_pages_are_freed_only_after_a_grace_period():
    """In the explorer: vCPU1 is inside its RCU read-side section, in the
    level-3 table, when vCPU0 collapses it.  vCPU0 finishes, but the table
    page stays allocated (its entries all LOCKED) and the callback thread is
    blocked on the grace period until vCPU1 leaves; then the callback frees
    it."""
    w = s2pt.world("collapse-vs-fault", "rcu-rfc")
    l3 = [pfn << w.pgt.page_shift for pfn, lvl in w.view.levels.items() if lvl == 3]
    assert len(l3) == 1
    page = w.pgt.mm.page_of(l3[0])
    rcu = w.n - 1
    while not any(e.cpu == 1 and e.op[0] == "READ_ONCE" and e.op[1] >> 12 == l3[0] >> 12
                  for e in w.events):
        w.step(1)                                  # into the level-3 table
    while w.cpus[0] is not None:
        w.step(0)                                  # the whole collapse
    assert any(e.op[0] == "xchg" for e in w.events)
    assert not page.freed and all(int(v) == LOCKED for v in page.table)
    assert "grace period" in w.blocked(rcu)
    while w.cpus[1] is not None:
        assert not page.freed
        w.step(1)
    w.run()
    assert w.outcome == "done" and not w.violations and page.freed
    frees = [e for e in w.events if e.op == ("put_page", l3[0]) and e.cpu == rcu]
    assert len(frees) == 1 and "stage2_free_table_page_rcu_cb" in frees[0].stack


def test_the_pruner_spins_on_an_entry_another_walker_holds():
    """vCPU1 has broken an empty entry of the level-3 table (LOCKED) and not
    yet made its page when vCPU0's prune reaches it: the exchange returns
    LOCKED and vCPU0 spins; once vCPU1 publishes, the next exchange takes
    vCPU1's page, and its reference is dropped: nothing leaks."""
    w = s2pt.world("collapse-vs-map", "rcu-rfc")
    while not (w.events and w.events[-1].cpu == 1 and w.events[-1].op[0] == "cmpxchg"):
        w.step(1)
    ptep = w.events[-1].op[1]
    assert w.events[-1].result == 0                # vCPU1 now holds the entry
    while w.pending[0][0] != "cpu_relax":
        w.step(0)
    assert w.events[-1].op == ("xchg", ptep, LOCKED) and w.events[-1].result == LOCKED
    for _ in range(3):                             # it keeps spinning while vCPU1 waits
        w.step(0)
        w.step(0)
        assert w.events[-1].op == ("xchg", ptep, LOCKED) and w.events[-1].result == LOCKED
    while w.cpus[1] is not None:
        w.step(1)
    w.step(0)                                      # cpu_relax
    w.step(0)
    assert w.events[-1].op == ("xchg", ptep, LOCKED)
    took = w.events[-1].result
    assert took & 1 and took & ADDR == w.setup.subject.memslots[0].pa + 3 * 4096
    w.step(0)
    assert w.events[-1].op == ("put_page", ptep)   # vCPU1's reference on the table, dropped
    w.run()
    assert w.outcome == "done" and not w.violations, w.violations


# ---------------------------------------------------------------------------
# What it needs: the mutation
# ---------------------------------------------------------------------------

@pytest.mark.slow      # an exhaustive search of collapse-vs-map under rcu-rfc, then its replay
def test_plain_prune_is_caught_the_install_is_thrown_away_and_the_table_leaks():
    m = MUTATIONS["rfc-plain-prune/rcu-rfc"]
    assert (m.scheme, m.scenario, m.kind) == ("rcu-rfc", "collapse-vs-map", "leak")
    ok = s2pt.explore("collapse-vs-map", "rcu-rfc")
    assert ok.complete and not ok.found
    bad = s2pt.explore("collapse-vs-map", "rcu-rfc", bugs=sorted(m.bugs))
    assert bad.complete and bad.kinds == {"leak"}
    w = s2pt.replay("collapse-vs-map", "rcu-rfc", bad.found["leak"].schedule, bugs=m.bugs)
    # vCPU1 broke an entry of the level-3 table and installed its page; then
    # vCPU0's plain store wrote LOCKED over it without taking what was there.
    ev = w.events
    k = next(i for i, e in enumerate(ev) if e.cpu == 1 and e.op[0] == "cmpxchg"
             and e.result == e.op[2])
    ptep = ev[k].op[1]
    slot = w.setup.subject.memslots[0]
    put = next(i for i, e in enumerate(ev) if e.cpu == 1 and e.op[0] == "smp_store_release"
               and e.op[1] == ptep)
    assert put > k and ev[put].op[2] & ADDR == slot.pa + 3 * 4096
    assert any(e.cpu == 0 and e.op == ("WRITE_ONCE", ptep, LOCKED) for e in ev[put + 1:])
    assert not any(e.op[0] == "xchg" for e in ev)
    # The install is thrown away, and the reference vCPU1 took for it stays
    # on a table nobody frees.
    l3 = w.pgt.mm.page_of(ptep)
    assert not l3.freed and l3.refcount == 1
    assert int(l3.table[(ptep & 0xFFF) >> 3]) == LOCKED
    (leak,) = [v for v in w.violations if v.kind == "leak"]
    assert f"{l3.pa:#x}" in leak.message
    # The guest loses nothing: the block maps vCPU1's page, so the final map
    # is a serial outcome and the lost-update oracle has nothing to report.
    assert w.pgt.translate(0x4000_3000).level == 2


# ---------------------------------------------------------------------------
# Declarations and costs
# ---------------------------------------------------------------------------

RFC_CASES = [n for n, sc in SCENARIOS.items() if "rcu-rfc" in sc.expect]


def test_rcu_rfc_is_declared_on_every_guest_scenario_and_refused_at_el2():
    for name, sc in SCENARIOS.items():
        if "rcu" in sc.expect:
            assert "rcu-rfc" in sc.expect, name
        else:
            with pytest.raises(s2pt.S2ptError, match="kvm_pgtable_walk_begin"):
                s2pt.world(name, "rcu-rfc")
    assert "collapse-vs-map" in RFC_CASES
    assert set(SCENARIOS["collapse-vs-map"].expect) >= {"none", "rcu", "rcu-rfc"}


# rcu-rfc's declarations on every scenario that runs it are checked, by an
# exhaustive search each, with every other pair's in tests/test_explorer.py.


def test_costs_show_the_prune_on_the_critical_path():
    """Default order of collapse-vs-fault: one xchg per entry of the pruned
    table, and the table entry LOCKED for at least two steps per entry (the
    walk's READ_ONCE and the xchg) under rcu-rfc; under rcu, no xchg and a
    window of a few steps."""
    w, rfc = run_costs("collapse-vs-fault", "rcu-rfc")
    _, rcu = run_costs("collapse-vs-fault", "rcu")
    n = w.pgt.ptrs_per_pte
    assert rfc.ops["xchg"] == n and "xchg" not in rcu.ops
    assert rfc.metrics()["xchg_per_fault"] == n / rfc.faults
    assert rfc.metrics()["atomics_per_fault"] - rcu.metrics()["atomics_per_fault"] \
        == n / rfc.faults
    assert rfc.bbm_window >= 2 * n and rcu.bbm_window < 20
    # The break and the make are of the same entry, the level-2 table entry.
    locked = [e for e in w.events if e.op[0] in ("cmpxchg", "WRITE_ONCE") and e.op[-1] == LOCKED]
    assert locked and all(e.cpu == 0 for e in locked)


def test_step_diagram_folds_the_prune_loop_into_blocks():
    """The prune is a loop over 512 entries: the step diagram (the long
    form of the race diagram) folds each run of identical loop iterations
    into one block, counting them, so a collapse under rcu-rfc reads in a
    page instead of 1,500 lines."""
    w = s2pt.replay("collapse-vs-fault", "rcu-rfc", "")
    pgt = w.pgt
    l3 = [pfn for pfn, lvl in w.view.levels.items() if lvl == 3]
    counted = sum(1 for e in w.events if e.op[0] == "put_page" and e.op[1] >> 12 in l3
                  and "stage2_prune_walker" in e.stack)
    assert counted == 3                            # the three pages logging left
    full = w.step_diagram(fold=False)
    text = w.step_diagram()
    assert len(full.splitlines()) > 3 * pgt.ptrs_per_pte
    assert len(text.splitlines()) < 100
    assert f"+ {counted} times:" in text
    assert f"+ {pgt.ptrs_per_pte - counted} times:" in text
    assert f"xchg(L3[{counted}..{pgt.ptrs_per_pte - 1}], LOCKED)" in text
    assert f"READ_ONCE(L3[{counted}..{pgt.ptrs_per_pte - 1}])" in text
