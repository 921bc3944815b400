"""pKVM's host stage 2 under the interleaving explorer (issue 5, part 5):
the hyp-lock scheme, donate-vs-host-access and coalesce-vs-host-fault, their
broken variants, and the isolation checker as an engine checker."""

from __future__ import annotations


import pytest

import s2pt
from s2pt import pkvm
from s2pt.checkers import IsolationChecker
from s2pt.sim.violation import KINDS
from s2pt.cli import main
from s2pt.scenarios import NEIGHBOUR, OTHER, SCENARIOS, VICTIM
from s2pt.sim.report import op_text
from s2pt.explorer import explore, replay
from s2pt.tlb import VcpuTlb

PKVM = ["donate-vs-host-access", "donate-vs-host-access-no-tlbi",
        "coalesce-vs-host-fault", "coalesce-vs-host-fault-no-tlbi"]


def _events(w, cpu, name):
    return [e for e in w.events if e.cpu == cpu and e.op[0] == name]


# ---------------------------------------------------------------------------
# Declarations, exhaustively
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", PKVM)
def test_declared_outcomes_hold(name):
    assert list(SCENARIOS[name].expect) == ["hyp-lock"]
    r = explore(name, "hyp-lock", details=False)
    assert r.complete and r.states > 100
    assert r.check_declared() == [], r.summary()


@pytest.mark.parametrize("name,bound", [("donate-vs-host-access", 3),
                                        ("donate-vs-host-access-no-tlbi", None),
                                        ("coalesce-vs-host-fault", 3),
                                        ("coalesce-vs-host-fault-no-tlbi", None)])
def test_reduction_never_changes_a_verdict(name, bound):
    """The stateful search against every interleaving with no visited set
    (the correct scenarios at 3 preemptions: unbounded takes 3-9 s)."""
    red = explore(name, "hyp-lock", preemptions=bound, details=False)
    unr = explore(name, "hyp-lock", mode="unreduced", preemptions=bound, details=False)
    assert red.kinds == unr.kinds
    assert bound is not None or unr.complete
    assert red.transitions < unr.transitions


@pytest.mark.parametrize("name", ["donate-vs-host-access", "coalesce-vs-host-fault"])
@pytest.mark.parametrize("scheme", ["none", "rcu"])
def test_schemes_that_cannot_run_at_el2_are_refused(name, scheme):
    with pytest.raises(s2pt.S2ptError, match=f"does not declare scheme '{scheme}'.*-EPERM"):
        explore(name, scheme)


def test_isolation_is_an_engine_kind():
    assert "isolation" in KINDS


# ---------------------------------------------------------------------------
# donate-vs-host-access
# ---------------------------------------------------------------------------

def test_donation_without_tlbi_breaks_isolation_at_the_owner_change():
    r = explore("donate-vs-host-access-no-tlbi", "hyp-lock")
    f = r.found["isolation"]
    v = f.violation
    assert v.actor == "CPU0" and v.function == "__pkvm_host_donate_guest"
    assert "host CPU1's TLB still holds the level-1 block" in v.message
    assert f"PA {VICTIM:#x}" in v.message
    assert "^^^ ISOLATION ^^^" in f.diagram and "__host_update_page_state" in f.diagram
    # The race: CPU1's MMU caches the 1G block before CPU0 breaks it, and no
    # TLBI follows; the violation is the step that records the new owner.
    w = replay("donate-vs-host-access-no-tlbi", "hyp-lock", f.schedule_text)
    assert [x.kind for x in w.violations] == ["isolation"]
    fill = next(e.index for e in _events(w, 1, "hw_read") if e.result & 3 == 1)  # the block
    brk = next(e.index for e in _events(w, 0, "WRITE_ONCE")
               if e.op[2] == s2pt.descriptor.KVM_INVALID_PTE_LOCKED)
    assert fill < brk and not _events(w, 0, "tlbi")
    assert w.events[-1].op[0] == "page_owner" and w.violations[0].step == w.events[-1].index
    # BFS: no shorter schedule shows it (the unreduced search finds none shorter).
    unr = explore("donate-vs-host-access-no-tlbi", "hyp-lock", mode="unreduced", details=False)
    assert len(f.schedule) <= len(unr.found["isolation"].schedule)


def test_replay_is_deterministic():
    sched = explore("donate-vs-host-access-no-tlbi", "hyp-lock").found["isolation"].schedule
    a = replay("donate-vs-host-access-no-tlbi", "hyp-lock", sched)
    b = replay("donate-vs-host-access-no-tlbi", "hyp-lock", sched)
    trace = [[(e.cpu, op_text(w, e.op), e.result, e.enabled, e.stack, e.note, e.violations)
              for e in w.events] for w in (a, b)]
    assert trace[0] == trace[1] and a.diagram() == b.diagram()


# CPU1: hw_walk_start(NEIGHBOUR) and one descriptor read fill its TLB with
# the 1G block (the host's memory, mapped at init); CPU0: lock, the PGD read,
# zalloc, then the break (LOCKED); then CPU1 starts its load from VICTIM.
IN_BBM_WINDOW = "1*2 0*4 1"


def test_the_old_block_may_be_used_inside_the_bbm_window():
    """Between the break and its TLBI the page is still the host's, and the
    architecture lets CPU1 keep using its cached block: no violation.  The
    TLB hit is no walk, so CPU0's TLBI + DSB does not wait for it."""
    w = replay("donate-vs-host-access", "hyp-lock", IN_BBM_WINDOW)
    assert w.outcome == "done" and not w.violations, w.status()
    start = w.events[6]
    assert start.cpu == 1 and start.op[:2] == ("hw_walk_start", VICTIM)
    assert w.events[5].op[0] == "WRITE_ONCE" and not _events(w, 0, "tlbi")[0].index < 6
    hw = next(o for o in w.stateful if isinstance(o, VcpuTlb) and o.vcpu == 1)
    assert hw.hits == 1
    # Stepping the same prefix by hand: after the hit, the TLBI is enabled.
    w2 = s2pt.world("donate-vs-host-access", "hyp-lock")
    for c in [1] * 2 + [0] * 4 + [1]:
        w2.step(c)
    assert 1 not in w2.machine.hw_inflight
    assert w2.pending[0][0] == "tlbi" and w2.blocked(0) is None
    # Without the TLBI the window never closes: the same hit is a stale use.
    bad = replay("donate-vs-host-access-no-tlbi", "hyp-lock", IN_BBM_WINDOW)
    assert [v.kind for v in bad.violations] == ["stale-tlb"]


def test_after_the_donation_the_host_is_aborted_not_translated():
    w = replay("donate-vs-host-access", "hyp-lock", "")      # CPU0 first, then CPU1
    assert w.outcome == "done" and not w.violations
    chk = next(o for o in w.stateful if isinstance(o, IsolationChecker))
    assert chk.owner == {VICTIM >> 12: s2pt.descriptor.PKVM_ID_GUEST}
    # CPU1 faulted NEIGHBOUR back in as a 4K page, and its load from VICTIM
    # met the annotation: host_stage2_adjust_range() said -EPERM.
    reads = [e for e in w.events if e.cpu == 1 and e.op[0] == "READ_ONCE"
             and e.function == "__kvm_pgtable_visit" and e.result == 0x8]
    assert reads, "CPU1's fault handler never read the owner annotation"
    hw = chk.tlbs[0]
    assert all(not (b <= VICTIM < b + w.pgt.granule_size[lvl]) for lvl, b in hw.entries)
    assert any(lvl == 3 and b == NEIGHBOUR for lvl, b in hw.entries)


# ---------------------------------------------------------------------------
# coalesce-vs-host-fault
# ---------------------------------------------------------------------------

def test_coalescing_without_tlbi_frees_a_table_the_walk_cache_points_to():
    r = explore("coalesce-vs-host-fault-no-tlbi", "hyp-lock")
    f = r.found["use-after-free"]
    v = f.violation
    assert v.actor == "CPU0" and v.function == "stage2_coalesce_walk_table_post"
    assert "walk cache" in v.explanation and "host CPU1's walk cache" in v.message
    w = replay("coalesce-vs-host-fault-no-tlbi", "hyp-lock", f.schedule_text)
    assert [x.kind for x in w.violations] == ["use-after-free"]
    assert "^^^ USE-AFTER-FREE ^^^" in w.diagram()


# CPU0 reclaims VICTIM (maps it back) and, in stage2_coalesce_walk_table_post,
# finds the L3 table holding only default entries; CPU1's MMU walks to the L3
# table; CPU0 breaks the L2 entry (LOCKED); CPU1's MMU reads NEIGHBOUR's entry
# through its walk cache, in the table just unlinked (not yet freed); then the
# default order.
THROUGH_ZAPPED = "0*13 1*3 0 1"


def test_the_mmu_may_walk_a_coalesced_table_until_the_tlbi():
    w = replay("coalesce-vs-host-fault", "hyp-lock", THROUGH_ZAPPED)
    assert w.outcome == "done" and not w.violations, w.status()
    zap = next(e for e in _events(w, 0, "WRITE_ONCE")
               if e.op[2] == s2pt.descriptor.KVM_INVALID_PTE_LOCKED
               and "stage2_coalesce_walk_table_post" in e.stack)
    late = next(e for e in _events(w, 1, "hw_read") if e.index > zap.index)
    tlbi = next(e for e in _events(w, 0, "tlbi") if e.index > zap.index)
    assert late.index < tlbi.index and late.result & 3 == 3         # NEIGHBOUR's page
    assert late.op[1] >> 12 != zap.op[1] >> 12                       # in the unlinked L3
    freed = [pfn for pfn, (step, cpu, fn) in w.frees.items() if cpu == 0]
    assert late.op[1] >> 12 in freed                                 # freed after the TLBI
    assert w.frees[late.op[1] >> 12][0] > tlbi.index
    # The tables became blocks (android15-6.6): the L3 table a 2M block, then
    # the L2 table the 1G block the host had before the donation.
    assert w.pgt.get_leaf(OTHER)[1] == 1


# ---------------------------------------------------------------------------
# The checker, the memo, the CLI
# ---------------------------------------------------------------------------

def test_isolation_checker_reports_a_translation_that_reaches_a_donated_page():
    host = pkvm.Host(memory=[(1 << 30, 2 << 20)], cpus=2, check=False)
    host.access(VICTIM)
    host.donate(VICTIM, 1)
    chk = IsolationChecker(host, host.cpus)
    assert chk.owner == {VICTIM >> 12: 2}
    chk.check()                                   # the correct donation: nothing
    t = s2pt.Translation(VICTIM, VICTIM, 2, "RWX", "normal", 0, 2 << 20, "tlb")
    with pytest.raises(s2pt.KernelBug, match="host CPU1 reached PA .* owned by guest, "
                                             "through its TLB"):
        chk.access(1, t)


def test_cli_lists_hyp_lock_and_refuses_undeclared_schemes(capsys):
    assert main(["scenarios"]) == 0
    out = " ".join(capsys.readouterr().out.split())       # the columns are padded
    assert "hyp-lock pKVM at EL2" in out and "donate-vs-host-access" in out
    assert "hyp-lock Sometimes: stale-tlb, isolation" in out
    assert main(["explore", "coalesce-vs-host-fault", "--scheme", "rcu"]) == 2
    err = capsys.readouterr().err
    assert "does not declare scheme 'rcu'" in err and "no RCU" in err
    assert main(["explore", "split-double-put", "--scheme", "hyp-lock"]) == 2
    assert "under one spinlock the split cannot run beside a fault" in capsys.readouterr().err
    # Without --scheme a pKVM scenario runs under the scheme it declares.
    assert main(["explore", "donate-vs-host-access-no-tlbi"]) == 1
    out = capsys.readouterr().out
    assert "scheme hyp-lock" in out and "ISOLATION" in out
    assert main(["replay", "coalesce-vs-host-fault", "--schedule", THROUGH_ZAPPED,
                 "--no-log"]) == 0
    assert "__pkvm_host_reclaim_page" in capsys.readouterr().out


def test_bad_page_owner_is_refused_before_it_runs():
    from s2pt.checkers import page_owner
    with pytest.raises(s2pt.S2ptError, match="owner='nobody' is not one of host, hyp, guest"):
        page_owner(VICTIM, "nobody", "__host_update_page_state")


def test_the_pkvm_bugs_switch_on_from_the_command_line(capsys):
    assert main(["explore", "donate-vs-host-access", "--bug", "donate-no-tlbi"]) == 1
    assert "ISOLATION" in capsys.readouterr().out
    assert main(["explore", "coalesce-vs-host-fault", "--bug", "coalesce-no-tlbi",
                 "--json"]) == 1
    assert '"kind": "use-after-free"' in capsys.readouterr().out


# ---------------------------------------------------------------------------
# The thread's rwlock question for pKVM (issue 18, item 6)
# ---------------------------------------------------------------------------

def test_host_faults_and_donations_cannot_share_the_read_side():
    """host-fault-vs-donate-shared: CPU1's fault handler reads VICTIM's
    empty entry (host_stage2_adjust_range's get-leaf walk), CPU0's donation
    on the same read side writes the guest's annotation there, and CPU1's
    map -- acting on its check -- breaks the annotation to install the
    host's page: the isolation checker fires on that store."""
    r = explore("host-fault-vs-donate-shared", "rwlock")
    assert r.complete and r.kinds == {"isolation"}
    f = r.found["isolation"]
    w = replay("host-fault-vs-donate-shared", "rwlock", f.schedule_text)
    hit = next(e for e in w.events if e.violations)
    assert hit.cpu == 1 and hit.op[0] == "cmpxchg" and hit.op[2] == 0x8   # the annotation
    assert hit.op[3] == s2pt.descriptor.KVM_INVALID_PTE_LOCKED
    check = [e for e in w.events if e.cpu == 1 and e.op[0] == "READ_ONCE"
             and "host_stage2_adjust_range" in e.stack and e.op[1] == hit.op[1]]
    annotate = next(e for e in w.events if e.cpu == 0 and e.op[0] == "smp_store_release"
                    and e.op[1] == hit.op[1])
    assert check[0].result == 0 and check[0].index < annotate.index < hit.index
    assert "ISOLATION" in w.diagram()


def test_the_same_paths_on_the_write_side_are_safe():
    """The control: the same two paths under the rwlock's write side (one
    at a time, as under pKVM's spinlock) find nothing."""
    from s2pt.scenarios import Scenario, build_host_fault_vs_donate_shared
    sc = Scenario("host-fault-vs-donate-exclusive", "control", build_host_fault_vs_donate_shared,
                  {"rwlock": {}}, params={"side": "write"})
    r = explore(sc, "rwlock", details=False)
    assert r.complete and r.check_declared() == [] and not r.kinds


def test_the_rwlock_pkvm_text_says_what_the_explorer_finds():
    from s2pt.scenarios import SCENARIOS
    from s2pt.schemes import SCHEMES
    doc = SCHEMES["rwlock"].__doc__
    assert "host-fault-vs-donate-shared" in doc and "could share the read side" not in doc
    for name in PKVM:
        assert "cannot share the read side" in SCENARIOS[name].why_not["rwlock"]
