"""The refcount schemes: the walker hooks in the one walker, the walker count
kept apart from page_count, ABA (elsewhere and at the same place), and
their mutations."""

from __future__ import annotations

import pytest

import s2pt
from s2pt import pgtable as pt
from s2pt.explorer import explore, replay
from s2pt.invariants import check_stage2, reachable_tables
from s2pt.kvm import VM
from s2pt.ops import Machine, OPS
from s2pt.scenarios import ABA_SAME, IPA, MUTATIONS, PAGE, ROM, SCENARIOS
from s2pt.schemes import SCHEMES
from s2pt.sim.search import format_schedule

REFCOUNT = ("refcount", "refcount-revalidate")
WALKER_OPS = {"walker_get", "walker_get_unless_zero", "walker_put"}
#: The unlinker records the level in page->private and the last walker reads
#: it back (the model's RCU path hands the level to call_rcu instead).
PRIVATE_OPS = {"set_page_private", "page_private"}


# ---------------------------------------------------------------------------
# The hooks: None costs nothing; set, they add only their own operations
# ---------------------------------------------------------------------------

class _Tracing(Machine):
    """A sequential machine that records every operation it performs."""

    def __init__(self, mem, mmu=None, stats=None):
        super().__init__(mem, mmu, stats)
        self.trace = []
        self.observers.append(lambda op, r: self.trace.append((op[0],) + tuple(
            a for a in op[1:] if isinstance(a, int))))


def _workload(mm_ops):
    """A VM whose faults walk shared (map 2M, logging: wrprotect, pages,
    relax_perms, logging off, collapse), traced step by step."""
    vm = VM(40, 4096, vcpus=2, machine=_Tracing, mm_ops=mm_ops)
    slot = vm.add_memslot(IPA, 2 << 20)
    vm.enable_dirty_logging(slot)
    for k in range(3):
        vm.access(IPA + k * PAGE, write=k == 1, vcpu=k % 2)
    vm.disable_dirty_logging(slot)
    vm.access(IPA, write=True)                 # collapse: the L3 table goes
    return vm


def test_no_hooks_no_steps():
    """MmOps() has no hooks; the walk performs no walker-count operation
    and takes RCU as the kernel does."""
    ops = pt.MmOps()
    assert ops.table_enter is None and ops.table_leave is None and ops.rcu_walkers
    vm = _workload(ops)
    names = {t[0] for t in vm.pgt.machine.trace}
    assert not names & WALKER_OPS
    assert "rcu_read_lock" in names


@pytest.mark.parametrize("scheme", REFCOUNT)
def test_hooks_add_only_their_own_steps(scheme):
    """The same workload under rcu and under a refcount scheme.  Strip RCU's
    steps (rcu_read_lock/unlock, call_rcu) and the hooks' own (the walker
    count's operations, page->private's, and under revalidation the re-read
    of the entry after each successful get): what is left is the same
    operations -- as a
    multiset, because a refcount scheme frees the unlinked table when its
    last reference goes and rcu after the run -- and memory ends identical."""
    base = _workload(SCHEMES["rcu"].mm_ops())
    hooked = _workload(SCHEMES[scheme].mm_ops())
    strip = {"rcu_read_lock", "rcu_read_unlock", "call_rcu"} | WALKER_OPS | PRIVATE_OPS
    trace = hooked.pgt.machine.trace
    if scheme == "refcount-revalidate":
        trace = _drop_rereads(trace)
    a = [t for t in base.pgt.machine.trace if t[0] not in strip]
    b = [t for t in trace if t[0] not in strip]
    assert sorted(a) == sorted(b)
    assert base.pgt.mm.snapshot() == hooked.pgt.mm.snapshot()
    names = [t[0] for t in hooked.pgt.machine.trace]
    assert not {"rcu_read_lock", "call_rcu"} & set(names)
    gets = names.count("walker_get") + names.count("walker_get_unless_zero")
    # One put per get, plus the collapse's drop of the parent's reference.
    assert gets > 0 and names.count("walker_put") == gets + 1


def _drop_rereads(trace):
    """The trace without the READ_ONCE that follows each successful
    walker_get_unless_zero (the revalidation re-read)."""
    out, skip = [], False
    for t in trace:
        if skip and t[0] == "READ_ONCE":
            skip = False
            continue
        skip = t[0] == "walker_get_unless_zero"
        out.append(t)
    return out


def test_hooks_come_in_pairs():
    with pytest.raises(s2pt.S2ptError, match="table_enter and table_leave"):
        pt.MmOps(table_enter=SCHEMES["refcount"].table_enter)


def test_walker_ops_are_in_the_op_table_as_refcount_operations():
    for name in WALKER_OPS:
        assert OPS[name].memory == "ref" and OPS[name].addr and OPS[name].verb


# ---------------------------------------------------------------------------
# Two counts, kept apart
# ---------------------------------------------------------------------------

def _step_until(w, cpu, pred):
    """Step ``cpu`` until its pending operation satisfies ``pred``."""
    sched = []
    while not pred(w.pending[cpu]):
        w.step(cpu)
        sched.append(cpu)
        assert w.cpus[cpu] is not None, "the CPU finished first"
    return sched


def _run(w, cpu):
    sched = []
    while w.cpus[cpu] is not None and w.outcome is None:
        w.step(cpu)
        sched.append(cpu)
    return sched


def _l3(w):
    return next(p for p, lvl in reachable_tables(w.pgt) if lvl == 3)


@pytest.mark.parametrize("scheme", REFCOUNT)
def test_a_walker_inside_a_table_changes_its_walker_count_not_page_count(scheme):
    w = s2pt.world("collapse-vs-fault", scheme)
    t = _l3(w)
    count, entries = t.refcount, int((t.table != 0).sum())
    assert count == 1 + entries and t.walkers == 1
    # vCPU1 (relax_perms) steps until it is inside the L3 table.
    _step_until(w, 1, lambda op: op[0] == "READ_ONCE" and op[1] >> 12 == t.pfn)
    assert t.walkers == 2 and t.refcount == count
    _run(w, 1)
    assert t.walkers == 1 and t.refcount == count
    check_stage2(w.pgt, memcaches=w.setup.memcaches)     # page_count == 1 + entries


@pytest.mark.parametrize("scheme", REFCOUNT)
def test_the_last_walker_to_leave_frees_the_unlinked_table(scheme):
    w = s2pt.world("collapse-vs-fault", scheme)
    t = _l3(w)
    _step_until(w, 1, lambda op: op[0] == "READ_ONCE" and op[1] >> 12 == t.pfn)
    _run(w, 0)                                  # vCPU0 collapses: unlinks, drops the parent's ref
    assert not t.freed and t.walkers == 1       # only vCPU1's reference is left
    _run(w, 1)
    w.run()
    assert t.freed and t.walkers == 0 and w.outcome == "done", w.status()
    frees = [e for e in w.events if e.op[0] == "walker_put" and e.result]
    assert [e.cpu for e in frees] == [1]        # vCPU1 dropped the last reference


def test_shared_counts_leak_the_unlinked_table():
    """The mutation: walker references in page_count.  The unlinked table's
    own entries hold page_count above zero, so it is never freed."""
    w = replay("collapse-vs-fault", "refcount-revalidate", "", bugs={"shared-walker-count"})
    assert {v.kind for v in w.violations} == {"leak"}
    assert not any(e.op[0] in WALKER_OPS for e in w.events)


# ---------------------------------------------------------------------------
# ABA
# ---------------------------------------------------------------------------

def _entry(pgt, ipa, level):
    """The PA of the level-``level`` entry that translates ``ipa``."""
    tables = {lvl: p for p, lvl in reachable_tables(pgt)}
    shift = pgt.granule_shift[level]
    return tables[level].pa + 8 * ((ipa >> shift) & (pgt.ptrs_per_pte - 1))


def _aba_elsewhere(scheme):
    """vCPU1 reads L2[0] -> T and stops before its reference; vCPU0
    collapses (T freed) and faults on the ROM (T reused there); vCPU1 goes on."""
    w = s2pt.world("aba-table-reuse", scheme)
    t = _l3(w)
    sched = _step_until(w, 1, lambda op: op[0].startswith("walker_get") and op[1] == t.pa)
    sched += _run(w, 0)
    return w, t, sched


def test_aba_elsewhere_breaks_the_naive_scheme():
    w, t, sched = _aba_elsewhere("refcount")
    assert t.generation == 1 and not t.freed             # freed, and reused ...
    rom_l2 = _entry(w.pgt, ROM, 2)
    assert w.pgt.mm.read64(rom_l2) & w.pgt.addr_mask == t.pa   # ... as the ROM's table
    sched += _run(w, 1)
    w.run()
    assert "lost-update" in {v.kind for v in w.violations}, w.status()
    # The same schedule, replayed from its string, gives the same verdict.
    again = replay("aba-table-reuse", "refcount", format_schedule(sched))
    assert {v.kind for v in again.violations} == {v.kind for v in w.violations}


def test_aba_elsewhere_revalidation_retries():
    w, t, sched = _aba_elsewhere("refcount-revalidate")
    assert t.generation == 1 and not t.freed
    l2_0 = _entry(w.pgt, IPA, 2)
    start = len(w.events)
    sched += _run(w, 1)
    w.run()
    assert w.outcome == "done" and not w.violations, w.status()
    mine = [(e.op[0], e.op[1] if len(e.op) > 1 else None, e.result)
            for e in w.events[start:] if e.cpu == 1]
    # get_page_unless_zero succeeds on the reused page; the entry now holds
    # the block; the reference is dropped (not the last: the ROM's entry
    # holds one) and the entry is visited again.
    assert mine[0] == ("walker_get_unless_zero", t.pa, True)
    assert mine[1][:2] == ("READ_ONCE", l2_0) and mine[1][2] & 3 == 1       # a block
    assert mine[2] == ("walker_put", t.pa, False)
    assert mine[3][:2] == ("READ_ONCE", l2_0)                               # the retry
    assert t.walkers == 1 and not t.freed                 # the ROM's table, untouched
    rom_pte = w.pgt.mm.read64(t.pa + 8)                   # ROM + 4K, index 1
    assert rom_pte & 1 and not rom_pte & s2pt.descriptor.KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W


@pytest.mark.parametrize("scheme", ["refcount", "refcount-revalidate"])
def test_aba_at_the_same_place_walks_the_new_table(scheme):
    """The page comes back as the new table at the same entry: the re-read
    finds the entry pointing at it, and the walker walks the new table --
    correctly, because with the reference held the page cannot change
    identity, and it is the table linked there now (same level, same IPA
    range).  Even the naive scheme is right here: ABA hurts only when the
    page comes back elsewhere."""
    w = s2pt.world(ABA_SAME, scheme)
    t = _l3(w)
    l2_0 = _entry(w.pgt, IPA, 2)
    sched = _step_until(w, 1, lambda op: op[0].startswith("walker_get") and op[1] == t.pa)
    sched += _run(w, 0)                             # collapse: T freed
    assert t.freed and w.pgt.mm.read64(l2_0) & 3 == 1
    sched += _run(w, 2)                             # the logging fault splits the block again
    assert t.generation == 1 and not t.freed
    assert w.pgt.mm.read64(l2_0) & w.pgt.addr_mask == t.pa      # same page, same entry
    start = len(w.events)
    sched += _run(w, 1)
    w.run()
    assert w.outcome == "done" and not w.violations, w.status()
    mine = [(e.op[0], e.op[1], e.result) for e in w.events[start:] if e.cpu == 1
            and len(e.op) > 1 and isinstance(e.op[1], int)]
    assert mine[0][:2] == (("walker_get_unless_zero" if scheme != "refcount" else
                            "walker_get"), t.pa)
    if scheme == "refcount-revalidate":
        assert mine[1] == ("READ_ONCE", l2_0, w.pgt.mm.read64(l2_0))   # still T: revalidated
    # vCPU1 then reads index 1 of the new table (empty there: relax_perms
    # returns -EAGAIN and the guest faults again, as it should).
    reads = [m for m in mine if m[0] == "READ_ONCE" and m[1] >> 12 == t.pfn]
    assert reads and reads[0][1] == t.pa + 8 and reads[0][2] == 0
    again = replay(ABA_SAME, scheme, format_schedule(sched))
    assert again.outcome == "done" and not again.violations


# ---------------------------------------------------------------------------
# Declarations and mutations
# ---------------------------------------------------------------------------

# aba-table-reuse's declarations under every scheme are checked, by an
# exhaustive search each, with every other pair's in tests/test_explorer.py.


def test_every_guest_scenario_declares_the_refcount_schemes_or_says_why_not():
    for sc in SCENARIOS.values():
        for s in REFCOUNT:
            assert s in sc.expect or sc.why_not.get(s), (sc.name, s)


@pytest.mark.parametrize("name", [m for m in MUTATIONS if MUTATIONS[m].scheme in REFCOUNT])
def test_refcount_mutations_are_caught_with_their_kind(name):
    m = MUTATIONS[name]
    r = explore(m.scenario, m.scheme, bugs=m.bugs, details=False)
    assert m.kind in r.kinds, (name, sorted(r.kinds))


def test_the_mutations_cover_both_breakages():
    ours = [m for m in MUTATIONS.values() if m.scheme in REFCOUNT]
    assert any(m.scheme == "refcount" for m in ours)                     # no revalidation
    assert any("shared-walker-count" in m.bugs for m in ours)            # one count
    assert any("walker-count-in-ptdesc" in m.bugs for m in ours)         # a foreign field


# ---------------------------------------------------------------------------
# Issue 18, item 7: the last walker frees at the level stored at unlink
# ---------------------------------------------------------------------------

def _ptep(pgt, ipa, level):
    """The address of the descriptor that resolves ``ipa`` at ``level``,
    walked from the PGD (the tree has several tables per level here)."""
    lvl, table = pgt.start_level, pgt.pgd + pgt.pgd_page_idx(ipa) * pgt.page_size
    while True:
        ptep = table + 8 * ((ipa >> pgt.granule_shift[lvl]) & (pgt.ptrs_per_pte - 1))
        if lvl == level:
            return ptep
        table, lvl = pgt.mem.read64(ptep) & pgt.addr_mask, lvl + 1


def _step(gen, machine, result=None):
    """Send ``result`` into ``gen`` and perform the op it yields: (op, result)."""
    op = gen.send(result)
    return op, machine.perform(op)


def test_last_walker_frees_a_reused_page_at_the_level_it_was_unlinked_at():
    """A walker reads L2[k] -> T (a level-3 table: ctx.level 2) and stops
    before its reference.  T is collapsed away and freed, and the LIFO
    allocator hands its page back as the level-2 table of another 1G
    region, where a 4K page then needs a level-3 table below it.  The
    walker's get_page_unless_zero succeeds (the page is live again), and
    before it re-reads the entry a 1G collapse unlinks the page at level 1
    and drops the parent's reference.  The walker's revalidation fails and
    its put is the last: the page must be freed as the level-2 table it is
    (the level kept in page->private), with its level-3 child -- not walked
    at ctx.level as a level-3 table, which would leak the child."""
    scheme = SCHEMES["refcount-revalidate"]
    pgt = s2pt.Stage2(mm_ops=scheme.mm_ops())
    ipa, other = 1 << 30, 2 << 30
    pgt.map(ipa, 3 * PAGE, 0x40_0000_0000, force_pte=True)        # L2[0] -> T
    l2e = _ptep(pgt, ipa, 2)
    t = pgt.mem.read64(l2e) & pgt.addr_mask
    ctx = pt.VisitCtx(l2e, pgt.mem.read64(l2e), None, pgt, ipa, ipa, ipa + (2 << 20), 2,
                      pt.SHARED)
    pgt.map(ipa, 2 << 20, 0x40_0000_0000)                         # collapse: T freed
    assert pgt.mm.page_of(t).freed
    # A page in another 1G region needs a level-2 and a level-3 table; the
    # allocator hands out the most recently freed pages, T's among them, and
    # the walk takes the level-2 table first.
    pgt.map(other, PAGE, 0x40_4000_0000, force_pte=True)
    page = pgt.mm.page_of(t)
    assert not page.freed and page.generation == 1
    assert pgt.mem.read64(_ptep(pgt, other, 1)) & pgt.addr_mask == t     # T: other's L2 table
    child = pgt.mem.read64(t) & pgt.addr_mask                     # its L2[0]: the L3 table
    assert pgt.mm.page_of(child).table[0] & 1
    enter = scheme.table_enter(ctx, t)
    op, got = _step(enter, pgt.machine)
    assert op[0] == "walker_get_unless_zero" and got            # the reused page is live
    pgt.map(other, 1 << 30, 0x40_4000_0000)                       # 1G collapse: unlinked at level 1
    assert not page.freed and page.private == 1 and page.walkers == 1
    try:
        while True:
            op, got = _step(enter, pgt.machine, got)
    except StopIteration as stop:
        assert stop.value is None                                 # revalidation failed: retry
    assert page.freed and pgt.mm.page_of(child).freed             # both levels freed
    check_stage2(pgt)                                             # no leak, sound counts


# ---------------------------------------------------------------------------
# Issue 18, item 8: where the walker count lives
# ---------------------------------------------------------------------------

def test_get_unless_zero_on_a_freed_or_reused_page_is_legal_only_with_refcount_semantics():
    """The walker count has _refcount's guarantee (s2pt.memory): the page
    allocator owns it, 0 while the page is free and 1 for whoever gets it
    next, so get_page_unless_zero on a page freed (fails) or reallocated
    (succeeds, and its put restores it) is harmless.  Kept in a field of
    the page-table descriptor instead, the same calls touch a field that
    belongs to the page's next owner: a use-after-free."""
    from s2pt.memory import MemCache, PhysMem

    def reported(mm):
        out = []
        mm._report = lambda kind, msg: out.append(kind)
        return out

    mm = PhysMem()
    seen = reported(mm)
    mc = MemCache(mm)
    mc.topup(1)
    page = mc.alloc()
    page.ptdesc = True                      # zalloc_page: a page table now
    assert mm.walker_get_unless_zero(page.pa, "ptdesc") and mm.walker_put(page.pa, "ptdesc") is False
    mm.free_page(page)
    assert mm.walker_get_unless_zero(page.pa) is False and seen == []       # free: count 0
    mc.topup(1)                             # the allocator hands the page out again
    assert mc.objects == [page] and not page.ptdesc and page.walkers == 1
    assert mm.walker_get_unless_zero(page.pa) and not mm.walker_put(page.pa) and seen == []
    assert page.walkers == 1                # the next owner's count, as it was
    assert mm.walker_get_unless_zero(page.pa, "ptdesc") is False
    assert seen == ["use-after-free"]       # a field the next owner reuses
    mc.free_all()
    mm.walker_get_unless_zero(page.pa, "ptdesc")
    assert seen == ["use-after-free"] * 2   # ... and so does the page allocator


@pytest.mark.slow      # test_explorer.py also searches this mutation in the fast loop
def test_walker_count_in_ptdesc_is_caught_and_the_scheme_is_not():
    """The mutation walker-count-in-ptdesc: the explorer finds vCPU1's
    get_page_unless_zero on the collapsed table's page after its free; the
    same search without the switch finds nothing."""
    m = MUTATIONS["walker-count-in-ptdesc/refcount-revalidate"]
    bad = explore(m.scenario, m.scheme, bugs=m.bugs)
    f = bad.found["use-after-free"]
    w = replay(m.scenario, m.scheme, f.schedule_text, bugs=m.bugs)
    hit = next(e for e in w.events if e.violations)
    assert hit.op[0] == "walker_get_unless_zero" and hit.op[2] == "ptdesc"
    assert "next owner" in hit.violations[0][1]
    good = explore(m.scenario, m.scheme, details=False)
    assert good.complete and not good.kinds
    assert SCHEMES["refcount-revalidate"].mm_ops().walker_count == "_refcount"
    with pytest.raises(s2pt.S2ptError, match="walker_count='slab'"):
        pt.MmOps(walker_count="slab")
