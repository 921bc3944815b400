"""The pKVM scenarios: the host stage 2 at EL2 (:mod:`s2pt.pkvm`), under hyp-lock.

They race on the host's identity-mapped stage 2 (as android15-6.6 builds
and coalesces it): a donation or a reclaim at EL2 against a host CPU whose
MMU walks the same table and whose faults trap to EL2.  They run pkvm's EL2
paths step by step (:func:`s2pt.pkvm.pkvm_host_donate_guest`,
:func:`s2pt.pkvm.pkvm_host_reclaim_page`, :func:`s2pt.pkvm.host_accesses`)
and add the isolation checker (:class:`s2pt.checkers.IsolationChecker`);
the schemes of ``kvm->mmu_lock`` do not declare them.
``host-fault-vs-donate-shared`` asks the thread's rwlock question of the
host stage 2 instead, and declares ``rwlock``.

The host owns one 1G region of DRAM at PKVM_BASE (40-bit PA, start level 1),
mapped at init (android15-6.6's prepopulate_host_stage2)::

    PGD[1] = 1G block 0x4000_0000 RWX

(A whole 1G: android15-6.6 coalesces a table of default mappings into a
block over the table's whole range, holes included; see s2pt.pkvm.)  CPU0
is a host CPU that made a hypercall and runs EL2 code; CPU1 is a host CPU at
EL1 whose MMU translates through its own TLB and walk cache, takes no lock,
and traps to EL2 (handle_host_mem_abort) on a stage-2 fault.

What each scheme is expected to show on each scenario is declared in one
table (:mod:`s2pt.scenarios.declarations`), not here.
"""

from __future__ import annotations

from .. import bugs as _bugs
from .. import pkvm as _pkvm
from ..bbm import BbmChecker
from ..checkers import IsolationChecker
from ..errors import S2ptError
from ..pkvm import (HOST_MMU_RWLOCK_SIDES, host_accesses, pkvm_host_donate_guest,
                    pkvm_host_donate_guest_rw, pkvm_host_reclaim_page)
from ..sim import window as W
from ..sim.sync import SimMachine
from ..sim.world import Setup
from ..snapshot import Frozen
from ..tlb import VcpuTlb
from .scenario import UNLINK_HELD, Scenario

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PAGE, BLOCK = 4 * KiB, 2 * MiB
PKVM_BASE = 0x4000_0000         # DRAM on QEMU's virt board (below the model's table pages)
VICTIM = PKVM_BASE + 3 * PAGE      # the page given to the protected guest
NEIGHBOUR = PKVM_BASE + 4 * PAGE   # the host's page next to it
OTHER = PKVM_BASE + 5 * PAGE       # a host page not faulted in yet
OUTSIDE = PKVM_BASE + 7 * PAGE     # a page donated earlier, in VICTIM's 2M region

#: pKVM's host_mmu.lock (s2pt.schemes.HOST_MMU_LOCK, by name: scenarios do not
#: import the schemes).
HOST_LOCK = "host_mmu.lock"


class PkvmHost(Frozen):
    """What the pKVM CPU programs share: the host (its stage 2 and memory
    layout), the scheme (host_mmu.lock), host_s2_pool (pre-filled: a fixed
    pool of pages) and the isolation checker (which records page owners).
    Each is a part of the explorer's machine state of its own; this
    context object never changes."""

    def __init__(self, setup: Setup, host, tlbs, pool_pages: int = 2):
        self.host = host
        self.scheme = setup.scheme
        self.pool = setup.memcache(pool_pages)
        self.checker = IsolationChecker(host, tlbs)
        setup.share(self, host, self.checker)
        setup.subject = host


def _pkvm_setup(scheme, bugs):
    """The host stage 2 with its memory mapped at init (a 1G block), built
    for the explorer, and CPU1's TLB and walk cache (empty).

    With the correct kernel paths, casemate's BBM automaton watches too, and
    tells CPU1's TLB model about the break-before-make window: between the
    break and its TLBI (+ DSB) the architecture lets a host CPU keep using
    its cached block -- the page is still the host's then -- so a TLB hit
    there is not a stale translation.  (The broken variants run without it:
    the automaton would stop every run at its first make, "BBM invalid
    unclean->valid", before the donation completes.)"""
    host = _pkvm.Host(memory=[(PKVM_BASE, GiB)], cpus=1, machine=SimMachine,
                      bugs=_bugs.of(bugs, _bugs.HOST, _bugs.WALKER))
    if host.pgt.get_leaf(PKVM_BASE)[1] != 1:
        raise S2ptError("pKVM scenario setup: the host's memory is not one 1G block")
    return host


def _pkvm_cpu1(s, host, bugs):
    bbm = None if _bugs.of(bugs, _bugs.HOST) else BbmChecker(host.pgt)
    tlb = VcpuTlb(host.pgt, 1, window=bbm.tlbi_pending if bbm is not None else None)
    s.share(tlb, *([bbm] if bbm is not None else []))
    return tlb


def build_donate_vs_host_access(scheme, bugs):
    host = _pkvm_setup(scheme, bugs)
    s = Setup(host.pgt, scheme, bugs)
    tlb = _pkvm_cpu1(s, host, bugs)
    ctx = PkvmHost(s, host, [tlb])
    s.cpu("CPU0", "EL2: __pkvm_host_donate_guest", pkvm_host_donate_guest, ctx, VICTIM)
    s.cpu("CPU1", "host: MMU loads, faults to EL2", host_accesses, ctx, tlb,
          (NEIGHBOUR, VICTIM), vcpu=1, pure=False)
    s.region = (PKVM_BASE, BLOCK)
    return s


def build_coalesce_vs_host_fault(scheme, bugs):
    host = _pkvm_setup(scheme, bugs)
    # Earlier: the guest took VICTIM (the block was broken into an L3 table
    # holding its annotation) and the host faulted NEIGHBOUR back in as a
    # default 4K page, which Android's counting rule does not count.
    host.donate(VICTIM, 1, to="guest")
    host.host_stage2_idmap(NEIGHBOUR)
    s = Setup(host.pgt, scheme, bugs)
    tlb = _pkvm_cpu1(s, host, bugs)
    ctx = PkvmHost(s, host, [tlb])
    s.cpu("CPU0", "EL2: __pkvm_host_reclaim_page", pkvm_host_reclaim_page, ctx, VICTIM)
    s.cpu("CPU1", "host: MMU loads, faults to EL2", host_accesses, ctx, tlb,
          (NEIGHBOUR, OTHER), vcpu=1, pure=False)
    s.region = (PKVM_BASE, BLOCK)
    return s


def build_host_fault_vs_donate_shared(scheme, bugs, side="read"):
    """``side``: which side of the rwlock the two paths take ("write": the
    exclusive control, for tests)."""
    lock, unlock = HOST_MMU_RWLOCK_SIDES[side]
    host = _pkvm.Host(memory=[(PKVM_BASE, GiB)], cpus=1, machine=SimMachine,
                      bugs=_bugs.of(bugs, _bugs.HOST, _bugs.WALKER), el2_shared_walks=True)
    # Earlier, another page of VICTIM's 2M region was given away: the 1G
    # block is now a level-2 table and a level-3 table, empty but for that
    # page's annotation (the host faults the rest back lazily).
    host.donate(OUTSIDE, 1, to="guest")
    s = Setup(host.pgt, scheme, bugs)
    tlb = _pkvm_cpu1(s, host, bugs)
    ctx = PkvmHost(s, host, [tlb])
    s.cpu("CPU0", f"EL2: __pkvm_host_donate_guest, {side} side", pkvm_host_donate_guest_rw,
          ctx, VICTIM, lock, unlock)
    # CPU1's fault handler runs under the same side, with the scheme's fault
    # walk flags (rwlock: shared, HANDLE_FAULT, NO_COLLAPSE).
    s.cpu("CPU1", f"host: MMU load, faults to EL2 ({side} side)", host_accesses, ctx, tlb,
          (VICTIM,), lock, unlock, scheme.fault_flags, vcpu=1, pure=False)
    s.region = (PKVM_BASE, BLOCK)
    return s


_DONATE_WINDOW = W.window("a host CPU's MMU walks the table while EL2 changes it for the donation",
                          W.mmu_walks_while_locked(HOST_LOCK))

#: The pKVM scenarios (s2pt.scenarios.SCENARIOS orders them as the
#: declaration table does).
SCENARIOS = (
    Scenario(
        "donate-vs-host-access",
        "CPU0 at EL2 donates a page inside the host's 1G idmap block to a protected guest "
        "(set_owner: break the block, TLBI, table, annotation) while CPU1's MMU loads from "
        "the page and its neighbour",
        build_donate_vs_host_access,
        window=_DONATE_WINDOW),
    Scenario(
        "donate-vs-host-access-no-tlbi",
        "donate-vs-host-access with donate-no-tlbi: the block is broken without the TLBI, so "
        "CPU1's TLB can keep the 2M block over the donated page",
        build_donate_vs_host_access,
        bugs=frozenset({"donate-no-tlbi"}),
        window=_DONATE_WINDOW),
    Scenario(
        "coalesce-vs-host-fault",
        "CPU0 at EL2 reclaims the guest's page, mapping it back and coalescing the level-3 and "
        "level-2 tables into blocks (android15-6.6's stage2_coalesce_walk_table_post) while "
        "CPU1's MMU walks into them and its fault handler maps a page there (host_stage2_idmap)",
        build_coalesce_vs_host_fault,
        window=UNLINK_HELD),
    Scenario(
        "coalesce-vs-host-fault-no-tlbi",
        "coalesce-vs-host-fault with coalesce-no-tlbi: the coalesced tables are freed without "
        "the TLBI of their break while CPU1's walk cache still points into them",
        build_coalesce_vs_host_fault,
        bugs=frozenset({"coalesce-no-tlbi"}),
        window=UNLINK_HELD),
    Scenario(
        "host-fault-vs-donate-shared",
        "the thread's rwlock at EL2: CPU1's host fault and CPU0's donation of the same page "
        "share the read side; the fault decides from an empty entry that the page is the "
        "host's (host_stage2_adjust_range), the donation writes the guest's annotation there, "
        "and the fault's map, trusting its check, overwrites it: check-then-act",
        build_host_fault_vs_donate_shared,
        window=W.window(
            "the donation changes the table while the host fault is deciding on it",
            W.any_of("the donation and the host fault update the table at once",
                     "the host fault and the donation never overlap: the lock keeps them apart",
                     W.loses_race(), W.stores_while_held()))),
)
