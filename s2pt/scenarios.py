"""Litmus-style scenarios: a few CPUs, a tiny table, declared outcomes.

Each guest scenario builds a small VM (:mod:`s2pt.kvm`) and brings its
stage-2 table into a known state with the VM's own operations (memslots,
dirty logging, guest accesses), then gives each CPU one kernel path to run.
The vCPUs run the VM's own fault paths, :func:`s2pt.kvm.user_mem_abort` and
:func:`s2pt.kvm.handle_access_fault`: the generators ``VM.fault`` runs to
completion, stepped here one shared access at a time, down through the one
walker (:mod:`s2pt.pgtable`).  The scheme (:mod:`s2pt.schemes`) is the VM's
locking and its table's mm_ops.

For every scheme it knows, a scenario declares which kinds of violation are
expected **Sometimes** (some interleaving shows it) -- every other kind is
expected **Never**.  ``python -m s2pt scenarios`` lists them and
``tests/test_explorer.py`` checks every declaration exhaustively.

The table for the collapse scenarios, as dirty logging leaves it (40-bit
IPA, 4K granule, start level 1; a 2M-backed memslot at IPA 1 GiB)::

    PGD[1] -> L2 table: [0] -> L3 table: [0] page 0x40_0000_0000 R-X
                                          [1] page 0x40_0000_1000 R-X
                                          [2] page 0x40_0000_2000 R-X (AF clear)

Logging write-protected the slot and each read fault mapped one page; it is
now off, so the next write fault may map a 2M block over the whole L3 table.

The pKVM scenarios race on the host's identity-mapped stage 2
(:mod:`s2pt.pkvm`, as android15-6.6 builds and coalesces it) under
``hyp-lock``: a donation or a reclaim at EL2 against a host CPU whose MMU
walks the same table and whose faults trap to EL2.  They reuse pkvm's EL2
paths step by step and add the isolation checker
(:class:`s2pt.checkers.IsolationChecker`); the schemes of ``kvm->mmu_lock``
do not declare them.  ``host-fault-vs-donate-shared`` asks the thread's
rwlock question of the host stage 2 instead, and declares ``rwlock``.
The guest scenarios declare ``hyp-lock`` too, as a question: what if KVM
guarded a guest's stage 2 with pKVM's lock?

The schemes added after the first three (``write-lock``, ``rwlock``)
declare their outcomes on the scenarios above them in one block at the
end (:func:`declare`), with the reason wherever a scenario refuses one.

``aba-table-reuse`` adds a read-only slot next to the collapse table, so that
the page of the freed level-3 table comes back from the (LIFO) allocator as
the new table of another region while a walker still holds its old pointer:
ABA, for the refcount schemes.  :data:`ABA_SAME` is its same-place twin
(the page comes back as the table at the same entry), replayed rather than
searched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from dataclasses import replace as _dc_replace

from . import bugs as _bugs
from . import descriptor as d
from . import kvm as _kvm
from . import pgtable as pt
from . import pkvm as _pkvm
from .bbm import BbmChecker
from .checkers import IsolationChecker, page_owner
from .errors import Fault as _Fault
from .errors import S2ptError
from .kvm import handle_access_fault, user_mem_abort
from .ops import cpu_relax, hw_walk_start
from .ops import read_lock as _read_lock
from .ops import read_unlock as _read_unlock
from .ops import write_lock as _write_lock
from .ops import write_unlock as _write_unlock
from .sim.search import NEVER, SOMETIMES
from .sim.sync import SimMachine
from .sim import window as W
from .sim.world import Setup, kernel_path
from .snapshot import Frozen
from .tlb import VcpuTlb, hw_translate

__all__ = ["Scenario", "SCENARIOS", "get_scenario", "BUGS", "SOMETIMES", "NEVER", "Mutation",
           "MUTATIONS", "declare"]

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PAGE, BLOCK = 4 * KiB, 2 * MiB
IPA = 1 * GiB                      # the 2M region every scenario races on


#: Every bug a scenario can switch back on (s2pt.bugs: name -> Bug).
BUGS = _bugs.BUGS


#: Why a scenario does not declare a scheme, unless it says otherwise.
NOT_DECLARED = {
    "hyp-lock": "hyp-lock is pKVM's lock for the host stage 2 at EL2 (host_mmu.lock); the "
                "guest scenarios declare it only where 'what if KVM used pKVM's lock' has a "
                "meaning, and this one does not",
}


# ---------------------------------------------------------------------------
# The guest scenarios: a VM (s2pt.kvm) built for the explorer.  Its vCPUs run
# the VM's own fault paths -- s2pt.kvm.user_mem_abort and
# handle_access_fault, the generators VM.fault runs to completion -- one
# shared access per step; the scheme is the VM's locking.
# ---------------------------------------------------------------------------

def _vm(scheme, bugs, vcpus=2, backing="2M", size=BLOCK):
    """A VM for the explorer: its table on the explorer's machine, with the
    scheme's mm_ops and locking and any bug switched on, and one memslot
    [IPA, IPA + size).  Its vCPU memcaches fill to exactly the minimum (see
    s2pt.memory.MemCache), so the state space does not carry 40 idle pages."""
    vm = _kvm.VM(40, 4096, vcpus=vcpus, locking=scheme, memcache_capacity=None,
                 bugs=_bugs.of(bugs, _bugs.VM, _bugs.WALKER), machine=SimMachine,
                 mm_ops=scheme.mm_ops(_bugs.of(bugs, _bugs.MM_OPS)))
    return vm, vm.add_memslot(IPA, size, backing=backing)


def _setup(vm, scheme, bugs, topup=None) -> Setup:
    """The explorer's view of a VM set up by the scenario: the vCPUs' TLBs
    start empty (kvm_flush_remote_tlbs), their memcaches are topped up, as
    user_mem_abort did before the earlier faults.

    The dirty bitmap is outside what the explorer compares: no path in
    these scenarios reads it, so a bit one interleaving set and another did
    not cannot change what happens next."""
    vm.pgt.flush_tlb()
    s = Setup(vm.pgt, scheme, bugs)
    for v in vm.vcpus:
        # ``topup``: the vCPUs whose faults may allocate (default: all); the
        # others' caches stay empty, as they are never used.
        s.memcache(vm._min_pages if topup is None or v.idx in topup else 0, v.memcache)
    s.share(vm, *vm.memslots)
    s.subject = vm
    return s


def _logged_table(vm, slot, pages=3, aged=(2,)):
    """Dirty logging's leftovers, made by dirty logging: logging on, the
    guest reads a few pages (each read fault maps one read-only page:
    force_pte, not writable), aging clears some access flags
    (kvm_age_gfn), and logging is turned off again.

    Returns the memslot as it was while logging was on: memslots are
    replaced, not changed in place (kvm_set_memslot), so a vCPU that looked
    the slot up before the change still sees logging on.  The scenarios
    start while that vCPU may still be in its fault handler: the new
    memslot is published, kvm_arch_commit_memory_region() has not run yet
    (it waits for the old memslot's users), so a scheme's commit
    (``rwlock``: unmap the slot) has not happened."""
    vm.enable_dirty_logging(slot)
    for k in range(pages):
        vm.access(slot.gpa + k * PAGE)
    for k in aged:
        vm.pgt.test_clear_young(slot.gpa + k * PAGE, PAGE)
    logging = _dc_replace(slot)
    vm.disable_dirty_logging(slot, commit=False)
    return logging


def _fault(vm, ipa, write=True, vcpu=0):
    """The abort vCPU ``vcpu`` takes on this access, as its MMU reports it
    walking the table (its TLB flushed first: aging clears access flags
    without a TLBI, so a cached entry would hide the access-flag fault)."""
    vm.pgt.flush_tlb()
    f = vm.translate(ipa, write=write, vcpu=vcpu)
    if not isinstance(f, _Fault):
        raise S2ptError(f"scenario setup: IPA {ipa:#x} does not fault")
    return f


@kernel_path("kvm_handle_guest_abort")
def guest_fault(vm, vcpu: int, ipa: int, slot, fault, write: bool = True):
    """The vCPU takes ``fault`` and KVM handles it: user_mem_abort().  A
    lost cmpxchg returns -EAGAIN, user_mem_abort() returns 0 and the vCPU
    re-enters the guest, which takes the same fault again: the loop.  Each
    round tops up the vCPU's memcache again (the loser's table page went
    back to the page allocator).

    The explorer assumes fair scheduling: a vCPU spinning on -EAGAIN while
    the winner is descheduled between break and make is a cycle in the
    state graph, not a livelock."""
    while True:
        res = yield from user_mem_abort(vm, vcpu, ipa, slot, fault, write)
        if not res.eagain:
            return res.ret
        yield cpu_relax()              # back to the guest; let the winner go on first


@kernel_path("kvm_unmap_gfn_range")
def kvm_unmap_gfn_range(vm, ipa: int, size: int):
    """The MMU notifier's invalidate_range_start -> kvm_unmap_gfn_range() ->
    __unmap_stage2_range(): kvm_pgtable_stage2_unmap() with mmu_lock held
    for write by the generic code.  The unmap walk frees tables it empties."""
    pgt, s = vm.pgt, vm.locking
    yield from s.update_lock()                       # KVM_MMU_LOCK(kvm): write_lock
    ret = yield from pt.kvm_pgtable_stage2_unmap(pgt, ipa, size)
    yield from s.update_unlock()                     # KVM_MMU_UNLOCK(kvm)
    return ret


@kernel_path("kvm_mmu_split_huge_pages")
def kvm_mmu_split_huge_pages(vm, ipa: int, size: int):
    """kvm_mmu_split_memory_region() -> kvm_mmu_split_huge_pages(): eager
    splitting when dirty logging starts, under write_lock(&kvm->mmu_lock).
    Each block becomes a new level-3 table built unlinked
    (kvm_pgtable_stage2_create_unlinked) and then swapped in."""
    pgt, s = vm.pgt, vm.locking
    yield from s.update_lock()                       # write_lock(&kvm->mmu_lock)
    ret = yield from pt.kvm_pgtable_stage2_split(pgt, ipa, size, vm.split_page_cache)
    yield from s.update_unlock()                     # write_unlock(&kvm->mmu_lock)
    return ret


@kernel_path("guest (MMU)")
def guest_accesses(tlb, ipas):
    """The guest on vCPU1 touches memory: each access is translated by the
    vCPU's MMU (s2pt.tlb.hw_translate), which takes no lock, reads
    descriptors one by one, and caches table pointers in its walk cache and
    leaves in its TLB until a TLBI drops them."""
    for ipa in ipas:
        yield hw_walk_start(ipa)                     # TLB and walk-cache lookup
        yield from hw_translate(tlb, ipa)


# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------

@dataclass
class Scenario:
    name: str
    summary: str
    builder: object
    expect: dict                      # scheme name -> {kind: SOMETIMES}
    cpus: int = 2
    params: dict = field(default_factory=dict)
    bugs: frozenset = frozenset()     # historical bugs this scenario always switches on
    #: scheme name -> why this scenario does not declare it (default: NOT_DECLARED)
    why_not: dict = field(default_factory=dict)
    #: The race this scenario is about, as a race window (s2pt.sim.window):
    #: the exhaustive search reports whether any run reached it, and a
    #: complete search that found nothing where none did is "safe: the race
    #: never arises".  Set for every shipped scenario (WINDOWS, below).
    window: object = None

    def build(self, scheme, bugs=frozenset()) -> Setup:
        self.check_scheme(getattr(scheme, "name", scheme))
        self.check_bugs(bugs)
        return self.builder(scheme, frozenset(bugs) | self.bugs, **self.params)

    def check_bugs(self, bugs) -> None:
        _bugs.check_bugs(bugs)

    def check_scheme(self, scheme: str) -> None:
        """Raise S2ptError unless this scenario declares outcomes for ``scheme``:
        a scheme that does not apply to the table a scenario races on has no
        meaningful verdict, so the explorer refuses it rather than guess."""
        if scheme in self.expect:
            return
        why = self.why_not.get(scheme) or NOT_DECLARED.get(scheme, "")
        raise S2ptError(f"scenario {self.name!r} does not declare scheme {scheme!r} "
                        f"(it declares: {', '.join(self.expect)})" + (f": {why}" if why else ""))

    def expected(self, scheme: str, kind: str) -> str | None:
        """SOMETIMES, NEVER, or None when this scheme is not declared."""
        if scheme not in self.expect:
            return None
        return self.expect[scheme].get(kind, NEVER)

    def __repr__(self):
        return f"<scenario {self.name}: {self.summary}>"


def build_collapse_vs_fault(scheme, bugs, vcpus=2):
    # One vCPU per page of the logged table: vCPU0 collapses, vCPU1 relaxes
    # page 1, and vCPU2, vCPU3, ... each take an access-flag fault on their
    # own aged page (pages 2, 3, ...).  With vcpus=1, vCPU0 collapses alone.
    # (s2pt.comparison scales the cost scenario from 1 to 4 vCPUs with it.)
    vm, slot = _vm(scheme, bugs, vcpus)
    pages = max(3, vcpus)
    logging = _logged_table(vm, slot, pages=pages, aged=tuple(range(2, pages)))
    faults = [_fault(vm, IPA + k * PAGE, write=k < 2) for k in range(vcpus)]
    s = _setup(vm, scheme, bugs)
    s.share(logging)
    # vCPU0 looked the slot up after logging was turned off: it may map 2M
    # again, over the level-3 table.  vCPU1 looked it up while logging was
    # still on: it relaxes the permissions of one page.
    # The guest re-executes its access as long as the fault returns -EAGAIN
    # (guest_fault): under a scheme that never collapses on the read side,
    # for ever (the memslot's commit, which would unmap the slot, is not
    # part of this scenario).
    s.cpu("vCPU0", "user_mem_abort: 2M block (collapse)", guest_fault, vm, 0, IPA, slot,
          faults[0], True)
    if vcpus > 1:
        s.cpu("vCPU1", "user_mem_abort: relax_perms", user_mem_abort, vm, 1, IPA + PAGE,
              logging, faults[1], True)
    for k in range(2, vcpus):
        s.cpu(f"vCPU{k}", "handle_access_fault: mkyoung", handle_access_fault, vm, k,
              IPA + k * PAGE, faults[k])
    s.region = (IPA, BLOCK)
    return s


def build_unmap_vs_fault(scheme, bugs):
    vm, slot = _vm(scheme, bugs)
    _logged_table(vm, slot, pages=1, aged=(0,))
    fault = _fault(vm, IPA, write=False, vcpu=1)
    s = _setup(vm, scheme, bugs)
    s.cpu("notifier", "kvm_unmap_gfn_range: unmap 4K", kvm_unmap_gfn_range, vm, IPA, PAGE)
    s.cpu("vCPU1", "handle_access_fault: mkyoung", handle_access_fault, vm, 1, IPA, fault)
    s.region = (IPA, BLOCK)
    return s


def build_split_vs_fault(scheme, bugs):
    vm, slot = _vm(scheme, bugs)
    vm.access(IPA)                      # the guest ran on a 2M block ...
    vm.enable_dirty_logging(slot)       # ... that logging write-protected (lazy splitting)
    fault = _fault(vm, IPA + 5 * PAGE, vcpu=1)
    s = _setup(vm, scheme, bugs)
    s.memcache(1, vm.split_page_cache)                # mmu->split_page_cache
    s.cpu("split", "kvm_mmu_split_huge_pages: eager split", kvm_mmu_split_huge_pages, vm,
          IPA, BLOCK)
    s.cpu("vCPU1", "user_mem_abort: write while logging", user_mem_abort, vm, 1,
          IPA + 5 * PAGE, slot, fault, True)
    s.region = (IPA, BLOCK)
    return s


def build_stash_old_pte(scheme, bugs):
    # One vCPU collapses the table, with a9f0e3d5a089 reverted: after its
    # TABLE_PRE callback the walker does not reload the entry, so it still
    # believes it points to the old level-3 table, and descends into it.
    bugs = bugs | {"a9f0e3d5a089"}
    vm, slot = _vm(scheme, bugs, vcpus=1)
    _logged_table(vm, slot, pages=2, aged=())
    fault = _fault(vm, IPA)
    s = _setup(vm, scheme, bugs)
    s.cpu("vCPU0", "user_mem_abort: 2M block (collapse)", user_mem_abort, vm, 0, IPA, slot,
          fault, True)
    s.region = (IPA, BLOCK)
    return s


def build_collapse_vs_hw_walk(scheme, bugs):
    vm, slot = _vm(scheme, bugs)
    _logged_table(vm, slot)
    fault = _fault(vm, IPA)
    s = _setup(vm, scheme, bugs)
    tlb = vm.vcpus[1].tlb
    if "no-bbm-tlbi" not in bugs:
        # Without the TLBI, casemate's automaton would stop every run at the
        # first make ("BBM invalid unclean->valid"), before the walk cache
        # meets the freed table: that variant runs without it.
        s.share(BbmChecker(vm.pgt))
    s.cpu("vCPU0", "user_mem_abort: 2M block (collapse)", user_mem_abort, vm, 0, IPA, slot,
          fault, True)
    s.cpu("MMU1", "vCPU1's MMU: two guest loads", guest_accesses, tlb,
          (IPA + PAGE, IPA + 3 * PAGE), vcpu=1, pure=False)
    s.region = (IPA, BLOCK)
    return s


SCENARIOS: dict[str, Scenario] = {}


def _add(sc: Scenario):
    SCENARIOS[sc.name] = sc


_add(Scenario(
    "collapse-vs-fault",
    "vCPU0 maps a 2M block over a level-3 table and tears the table down while "
    "vCPU1's relax_perms walks through it",
    build_collapse_vs_fault,
    {"none": {"use-after-free": SOMETIMES}, "rcu": {}}))
_add(Scenario(
    "collapse-vs-fault-3",
    "collapse-vs-fault with a third vCPU taking an access-flag fault (mkyoung) in the same table",
    build_collapse_vs_fault,
    {"none": {"use-after-free": SOMETIMES}, "rcu": {}}, cpus=3, params={"vcpus": 3}))
def build_collapse_vs_readers(scheme, bugs, readers=3):
    # vCPU0 collapses as in collapse-vs-fault; vCPU1..vCPUn each take the
    # same access-flag fault on the aged page 2 (handle_access_fault:
    # mkyoung, no allocation).  The readers are interchangeable: the same
    # program and arguments but for their vCPU, its memcache and its TLB,
    # which the explorer searches once (symmetry reduction).
    vm, slot = _vm(scheme, bugs, readers + 1)
    logging = _logged_table(vm, slot, pages=3, aged=(2,))
    f0 = _fault(vm, IPA)
    fr = _fault(vm, IPA + 2 * PAGE, write=False, vcpu=1)
    s = _setup(vm, scheme, bugs, topup=(0,))
    s.share(logging)
    s.cpu("vCPU0", "user_mem_abort: 2M block (collapse)", guest_fault, vm, 0, IPA, slot, f0,
          True)
    for k in range(1, readers + 1):
        v = vm.vcpus[k]
        s.cpu(f"vCPU{k}", "handle_access_fault: mkyoung page 2", handle_access_fault, vm, k,
              IPA + 2 * PAGE, fr, vcpu=k, sym="readers", owns=(v.memcache, v.tlb))
    s.region = (IPA, BLOCK)
    return s


_add(Scenario(
    "collapse-vs-fault-4",
    "collapse-vs-fault with four vCPUs: vCPU0 maps the 2M block over the level-3 table while "
    "vCPU1, vCPU2 and vCPU3 each take an access-flag fault on the same aged page of it "
    "(handle_access_fault); the three readers are interchangeable, searched once",
    build_collapse_vs_readers,
    {"none": {"use-after-free": SOMETIMES}, "rcu": {}, "rcu-rfc": {}, "write-lock": {},
     # vCPU0's fault wants the block and may not collapse on the read side:
     # -EAGAIN and the same fault again, as in collapse-vs-fault
     "rwlock": {"livelock": SOMETIMES}, "hyp-lock": {},
     "refcount": {"use-after-free": SOMETIMES}, "refcount-revalidate": {},
     "rwlock-collapse-write": {}, "rwlock-relax-page": {}},
    cpus=4, params={"readers": 3}))
_add(Scenario(
    "unmap-vs-fault",
    "an MMU-notifier unmap empties and frees a level-3 table while vCPU1's mkyoung "
    "fault wants to walk it; the write lock keeps them apart",
    build_unmap_vs_fault,
    {"none": {}, "rcu": {}}))
_add(Scenario(
    "split-vs-fault",
    "an eager split replaces a write-protected 2M block with a table while vCPU1's "
    "write fault on the same block maps a page",
    build_split_vs_fault,
    {"none": {}, "rcu": {}}))
_add(Scenario(
    "stash-old-pte",
    "a9f0e3d5a089 reverted: after collapsing, the map walker keeps the old table "
    "PTE and descends into the table it just unlinked; freed at once (the "
    "counterfactual 'none', or an exclusive lock) that is a use-after-free, "
    "deferred by RCU it is harmless",
    build_stash_old_pte,
    {"none": {"use-after-free": SOMETIMES}, "rcu": {}}, cpus=1,
    # The builder switches the bug on itself; declared here too, so that the
    # scenario says so (s2pt.compare does not count a bug's violations
    # against a scheme, and replay commands leave the switch out).
    bugs=frozenset({"a9f0e3d5a089"})))


_add(Scenario(
    "collapse-vs-hw-walk",
    "vCPU0 collapses the level-3 table while vCPU1's MMU walks it and caches the table "
    "pointer in its walk cache; the break's TLBI comes before the free",
    build_collapse_vs_hw_walk,
    {"none": {}, "rcu": {}}))
_add(Scenario(
    "collapse-vs-hw-walk-no-tlbi",
    "collapse-vs-hw-walk with the break-before-make TLBI left out: the walk cache still "
    "points at the table when it is freed, with or without a grace period",
    build_collapse_vs_hw_walk,
    {"none": {"use-after-free": SOMETIMES}, "rcu": {"use-after-free": SOMETIMES}},
    bugs=frozenset({"no-bbm-tlbi"})))


def build_map_vs_map(scheme, bugs):
    # A 4K-backed slot over two 2M regions; the guest has touched the second
    # (so the level-2 table exists), the first is empty: both faults need
    # the same new level-3 table.
    vm, slot = _vm(scheme, bugs, backing="4K", size=2 * BLOCK)
    vm.access(IPA + BLOCK, write=True)
    faults = [_fault(vm, IPA + k * PAGE, vcpu=k) for k in range(2)]
    s = _setup(vm, scheme, bugs)
    s.cpu("vCPU0", "user_mem_abort: map page 0", guest_fault, vm, 0, IPA, slot, faults[0])
    s.cpu("vCPU1", "user_mem_abort: map page 1", guest_fault, vm, 1, IPA + PAGE, slot,
          faults[1])
    s.region = (IPA, 2 * BLOCK)
    return s


_add(Scenario(
    "map-vs-map",
    "two vCPUs fault on neighbouring pages of an empty 2M region at once; both want to "
    "install the level-3 table, and stage2_map_walk_leaf()'s cmpxchg lets one win while "
    "the other frees its table and faults again",
    build_map_vs_map,
    {"none": {}, "rcu": {}}))
_add(Scenario(
    "map-vs-map-no-shared",
    "map-vs-map with the faults' walks not marked KVM_PGTABLE_WALK_SHARED: both store a "
    "table into the same entry, one table and its page mapping are lost",
    build_map_vs_map,
    {"none": {"lost-update": SOMETIMES, "leak": SOMETIMES, "refcount": SOMETIMES,
              "warn": SOMETIMES},
     "rcu": {"lost-update": SOMETIMES, "leak": SOMETIMES, "refcount": SOMETIMES,
             "warn": SOMETIMES}},
    bugs=frozenset({"no-shared-walk"})))


def get_scenario(name) -> Scenario:
    if isinstance(name, Scenario):
        return name
    try:
        return SCENARIOS[name]
    except (KeyError, TypeError):
        raise S2ptError(f"scenario {name!r}: unknown; choose one of {', '.join(SCENARIOS)}") from None


def declare(scheme: str, outcomes: dict, why_not: dict | None = None) -> None:
    """Declare ``scheme``'s expected outcomes on scenarios defined elsewhere
    in this module: ``outcomes`` maps a scenario name to ``{kind: SOMETIMES}``
    (every kind left out is Never); ``why_not`` maps a scenario name to why
    it does not declare ``scheme``.  A scheme added to :mod:`s2pt.schemes`
    declares itself in one such block instead of editing every scenario."""
    for name, kinds in outcomes.items():
        sc = SCENARIOS[name]
        if scheme in sc.expect:
            raise S2ptError(f"scenario {name!r} already declares scheme {scheme!r}")
        sc.expect[scheme] = dict(kinds)
    for name, why in (why_not or {}).items():
        SCENARIOS[name].why_not[scheme] = why


@dataclass(frozen=True)
class Mutation:
    """A deliberately broken variant (in the style of TLC's
    ``EpochModel_buggy.cfg``): ``scheme`` with ``bugs`` switched on, run on
    ``scenario``, must show a violation of ``kind``.  ``python -m s2pt
    compare --mutations`` searches each one and scores caught / total."""
    name: str
    scheme: str
    bugs: frozenset
    scenario: str
    kind: str
    what: str


#: name -> Mutation: every deliberately broken variant the explorer must catch.
MUTATIONS: dict[str, Mutation] = {}


def mutation(name: str, scheme: str, scenario: str, kind: str, what: str, bugs=()) -> None:
    """Register a mutation (see :class:`Mutation`); ``bugs`` adds to the
    scenario's own bug switches."""
    if name in MUTATIONS:
        raise S2ptError(f"mutation {name!r} is registered twice")
    sc = SCENARIOS[scenario]
    sc.check_bugs(bugs)
    MUTATIONS[name] = Mutation(name, scheme, frozenset(bugs) | sc.bugs, scenario, kind, what)


mutation("no-bbm-tlbi/rcu", "rcu", "collapse-vs-hw-walk-no-tlbi", "use-after-free",
         "RCU with the break-before-make TLBI left out: RCU does not cover the hardware "
         "walker, whose walk cache still points at the table when the callback frees it")
mutation("no-bbm-tlbi/none", "none", "collapse-vs-hw-walk-no-tlbi", "use-after-free",
         "free-at-once with the break-before-make TLBI left out")
mutation("no-shared-walk/rcu", "rcu", "map-vs-map-no-shared", "lost-update",
         "faults in parallel whose walks are not KVM_PGTABLE_WALK_SHARED: plain stores "
         "instead of cmpxchg, so one vCPU's new table overwrites the other's")
mutation("no-shared-walk/none", "none", "map-vs-map-no-shared", "lost-update",
         "the same plain stores under the counterfactual 'none'")
mutation("no-reload/none", "none", "stash-old-pte", "use-after-free",
         "a9f0e3d5a089 reverted: no reload after a TABLE_PRE callback, so the collapsing "
         "walker descends into the table it has just freed")


# ---------------------------------------------------------------------------
# pKVM: the host stage 2 at EL2 (s2pt.pkvm), under hyp-lock
# ---------------------------------------------------------------------------
#
# The host owns one 1G region of DRAM at PKVM_BASE (40-bit PA, start level 1),
# mapped at init (android15-6.6's prepopulate_host_stage2):
#
#     PGD[1] = 1G block 0x4000_0000 RWX
#
# (A whole 1G: android15-6.6 coalesces a table of default mappings into a
# block over the table's whole range, holes included; see s2pt.pkvm.)
# CPU0 is a host CPU that made a hypercall and runs EL2 code; CPU1 is a host
# CPU at EL1 whose MMU translates through its own TLB and walk cache, takes no
# lock, and traps to EL2 (handle_host_mem_abort) on a stage-2 fault.

PKVM_BASE = 0x4000_0000         # DRAM on QEMU's virt board (below the model's table pages)
VICTIM = PKVM_BASE + 3 * PAGE      # the page given to the protected guest
NEIGHBOUR = PKVM_BASE + 4 * PAGE   # the host's page next to it
OTHER = PKVM_BASE + 5 * PAGE       # a host page not faulted in yet

NOT_PKVM = {
    "rcu": "pKVM's hypervisor has no RCU: at EL2 kvm_pgtable_walk_begin() returns -EPERM for "
           "a KVM_PGTABLE_WALK_SHARED walk (\"only non-shared table walkers are allowed in "
           "the hypervisor\"), so no fault can be an RCU reader there",
    "none": "'none' runs faults as shared walks under read_lock(&kvm->mmu_lock); the host "
            "stage 2 has no kvm->mmu_lock and refuses shared walks at EL2 (-EPERM); its "
            "free-at-once with exclusive walks under one lock is hyp-lock",
}


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


@kernel_path("__pkvm_host_donate_guest")
def pkvm_host_donate_guest(ctx: PkvmHost, pa: int):
    """__pkvm_host_donate_guest(): under host_mmu.lock (and the guest's
    vm->lock: the guest's own stage 2 is not modelled), check that the host
    owns the page (hyp_vmemmap, no table access), then
    host_stage2_set_owner_locked(pa, PAGE_SIZE, PKVM_ID_GUEST): the walk
    meets the 2M block, cannot place a page there (-E2BIG), breaks the
    block (break-before-make: LOCKED, TLBI + DSB), installs an empty table,
    descends and writes the owner annotation.  Only after that maintenance
    does the hypervisor record the page as gone from the host
    (__host_update_page_state(PKVM_NOPAGE)), before the guest's stage 2 maps
    it: from that step on, isolation must hold."""
    s = ctx.scheme
    yield from s.update_lock()                       # host_lock_component()
    ret = yield from _pkvm.host_stage2_set_owner_locked(ctx.host, pa, PAGE, d.PKVM_ID_GUEST,
                                                        mc=ctx.pool)
    if not ret:
        yield page_owner(pa, "guest", "__host_update_page_state(PKVM_NOPAGE)")
    yield from s.update_unlock()                     # host_unlock_component()
    return ret


@kernel_path("__pkvm_host_reclaim_page")
def pkvm_host_reclaim_page(ctx: PkvmHost, pa: int):
    """Guest teardown: __pkvm_host_reclaim_page() (mainline:
    __pkvm_host_reclaim_page_guest) under host_mmu.lock.  The guest's stage 2
    no longer maps the page and hyp_poison_page() has cleared it (neither is
    modelled), so the page has left the guest; then
    host_stage2_set_owner_locked(pa, PAGE_SIZE, PKVM_ID_HOST), which in
    android15-6.6 maps the page back with the default prot
    (host_stage2_idmap_locked), and on the way back up that map walk's
    stage2_coalesce_walk_table_post() turns each table left holding only
    default identity mappings into a block: stage2_try_break_pte (LOCKED,
    kvm_tlb_flush_vmid_range over the block), stage2_make_pte, then
    put_page of the table -- the host frees at once, under the lock."""
    s = ctx.scheme
    yield from s.update_lock()                       # host_lock_component()
    yield page_owner(pa, "host", "guest stage 2 unmapped, hyp_poison_page()")
    ret = yield from _pkvm.host_stage2_set_owner_locked(ctx.host, pa, PAGE, d.PKVM_ID_HOST,
                                                        mc=ctx.pool)
    yield from s.update_unlock()                     # host_unlock_component()
    return ret


@kernel_path("host CPU (MMU)")
def host_accesses(ctx: PkvmHost, tlb, pas):
    """A host CPU at EL1 touches memory: its MMU translates each access
    (s2pt.tlb.hw_translate: TLB, walk cache, then one descriptor per step,
    no lock) and may fill its TLB and walk cache.  A stage-2 translation
    fault traps to EL2: handle_host_mem_abort() -> host_stage2_idmap() maps
    the largest block that fits, under host_mmu.lock, and the access is
    retried; a page the host gave away gets an abort injected instead
    (Android's host_inject_abort; mainline BUG()s).  Each access is retried
    at most twice here."""
    s = ctx.scheme
    for pa in pas:
        for _ in range(3):
            yield hw_walk_start(pa, tlb, "host")     # TLB and walk-cache lookup
            r = yield from hw_translate(tlb, pa)
            if not isinstance(r, _Fault):
                ctx.checker.access(tlb.vcpu, r)
                break
            ret = yield from _pkvm.handle_host_mem_abort(ctx.host, pa, ctx.pool,
                                                         s.fault_lock, s.fault_unlock)
            if ret == -_pkvm.EPERM:
                break                                # host_inject_abort(): the host's problem


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
    host = _pkvm.Host(memory=[(PKVM_BASE, GiB)], cpus=1, bugs=_bugs.of(bugs, _bugs.HOST, _bugs.WALKER),
                      machine=SimMachine)
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


_add(Scenario(
    "donate-vs-host-access",
    "CPU0 at EL2 donates a page inside the host's 1G idmap block to a protected guest "
    "(set_owner: break the block, TLBI, table, annotation) while CPU1's MMU loads from "
    "the page and its neighbour",
    build_donate_vs_host_access,
    {"hyp-lock": {}}, why_not=NOT_PKVM))
_add(Scenario(
    "donate-vs-host-access-no-tlbi",
    "donate-vs-host-access with donate-no-tlbi: the block is broken without the TLBI, so "
    "CPU1's TLB can keep the 2M block over the donated page",
    build_donate_vs_host_access,
    {"hyp-lock": {"isolation": SOMETIMES, "stale-tlb": SOMETIMES}}, why_not=NOT_PKVM,
    bugs=frozenset({"donate-no-tlbi"})))
_add(Scenario(
    "coalesce-vs-host-fault",
    "CPU0 at EL2 reclaims the guest's page, mapping it back and coalescing the level-3 and "
    "level-2 tables into blocks (android15-6.6's stage2_coalesce_walk_table_post) while "
    "CPU1's MMU walks into them and its fault handler maps a page there (host_stage2_idmap)",
    build_coalesce_vs_host_fault,
    {"hyp-lock": {}}, why_not=NOT_PKVM))
_add(Scenario(
    "coalesce-vs-host-fault-no-tlbi",
    "coalesce-vs-host-fault with coalesce-no-tlbi: the coalesced tables are freed without "
    "the TLBI of their break while CPU1's walk cache still points into them",
    build_coalesce_vs_host_fault,
    {"hyp-lock": {"use-after-free": SOMETIMES, "stale-tlb": SOMETIMES}}, why_not=NOT_PKVM,
    bugs=frozenset({"coalesce-no-tlbi"})))


mutation("donate-no-tlbi/hyp-lock", "hyp-lock", "donate-vs-host-access-no-tlbi", "isolation",
         "pKVM donates a page without the TLBI after breaking the host's block: a host "
         "CPU's TLB keeps the 2M block over the guest's page")
mutation("coalesce-no-tlbi/hyp-lock", "hyp-lock", "coalesce-vs-host-fault-no-tlbi",
         "use-after-free", "pKVM coalesces and frees the host's tables without the TLBI "
         "of their break: a host CPU's walk cache still points into them")


# The thread's rwlock question, asked of pKVM's host stage 2: could host
# faults and donations share the read side of an rwlock (Oliver Upton's
# sketch: "unmap on the write side and everything else on the read side")?
# A hypothetical EL2 that allows shared walks (pkvm.Host(el2_shared_walks=True))
# and host_mmu.lock as an rwlock whose read side both paths take.

#: The rwlock the question puts in place of host_mmu.lock's spinlock.
HOST_MMU_RWLOCK = "host_mmu.lock (rwlock)"
OUTSIDE = PKVM_BASE + 7 * PAGE     # a page donated earlier, in VICTIM's 2M region


@kernel_path(None)
def _host_read_lock():
    yield _read_lock(HOST_MMU_RWLOCK)


@kernel_path(None)
def _host_read_unlock():
    yield _read_unlock(HOST_MMU_RWLOCK)


@kernel_path(None)
def _host_write_lock():
    yield _write_lock(HOST_MMU_RWLOCK)


@kernel_path(None)
def _host_write_unlock():
    yield _write_unlock(HOST_MMU_RWLOCK)


#: The rwlock's two sides: (lock, unlock) for each path.
_RW_SIDES = {"read": (_host_read_lock, _host_read_unlock),
             "write": (_host_write_lock, _host_write_unlock)}


@kernel_path("__pkvm_host_donate_guest")
def pkvm_host_donate_guest_rw(ctx: PkvmHost, pa: int, lock, unlock):
    """__pkvm_host_donate_guest() under one side of the rwlock (``lock``,
    ``unlock``): the set-owner walk is shared (cmpxchg; a lost race is
    -EAGAIN and the donation is retried from the start), the page state is
    recorded once the annotation is in."""
    while True:
        yield from lock()
        ret = yield from _pkvm.host_stage2_set_owner_locked(
            ctx.host, pa, PAGE, d.PKVM_ID_GUEST, mc=ctx.pool, flags=pt.SHARED | pt.HANDLE_FAULT)
        if ret != -_pkvm.EAGAIN:
            break
        yield from unlock()
        yield cpu_relax()
    if not ret:
        yield page_owner(pa, "guest", "__host_update_page_state(PKVM_NOPAGE)")
    yield from unlock()
    return ret


@kernel_path("host CPU (MMU)")
def host_accesses_rw(ctx: PkvmHost, tlb, pas, lock, unlock):
    """host_accesses(), whose fault handler (handle_host_mem_abort ->
    host_stage2_idmap) runs under one side of the rwlock with the scheme's
    fault walk flags (rwlock: shared, HANDLE_FAULT, NO_COLLAPSE)."""
    flags = ctx.scheme.fault_flags
    for pa in pas:
        for _ in range(3):
            yield hw_walk_start(pa, tlb, "host")
            r = yield from hw_translate(tlb, pa)
            if not isinstance(r, _Fault):
                ctx.checker.access(tlb.vcpu, r)
                break
            ret = yield from _pkvm.handle_host_mem_abort(ctx.host, pa, ctx.pool, lock, unlock,
                                                         flags)
            if ret == -_pkvm.EPERM:
                break


def build_host_fault_vs_donate_shared(scheme, bugs, side="read"):
    """``side``: which side of the rwlock the two paths take ("write": the
    exclusive control, for tests)."""
    lock, unlock = _RW_SIDES[side]
    host = _pkvm.Host(memory=[(PKVM_BASE, GiB)], cpus=1, bugs=_bugs.of(bugs, _bugs.HOST, _bugs.WALKER),
                      machine=SimMachine, el2_shared_walks=True)
    # Earlier, another page of VICTIM's 2M region was given away: the 1G
    # block is now a level-2 table and a level-3 table, empty but for that
    # page's annotation (the host faults the rest back lazily).
    host.donate(OUTSIDE, 1, to="guest")
    s = Setup(host.pgt, scheme, bugs)
    tlb = _pkvm_cpu1(s, host, bugs)
    ctx = PkvmHost(s, host, [tlb])
    s.cpu("CPU0", f"EL2: __pkvm_host_donate_guest, {side} side", pkvm_host_donate_guest_rw,
          ctx, VICTIM, lock, unlock)
    s.cpu("CPU1", f"host: MMU load, faults to EL2 ({side} side)", host_accesses_rw, ctx, tlb,
          (VICTIM,), lock, unlock, vcpu=1, pure=False)
    s.region = (PKVM_BASE, BLOCK)
    return s


_SHARED_READ_SIDE_WHY = (
    "this scenario asks the rwlock question of pKVM's host stage 2 (host faults and donations "
    "sharing the read side of host_mmu.lock made an rwlock, with shared walks at EL2); {}")
_add(Scenario(
    "host-fault-vs-donate-shared",
    "the thread's rwlock at EL2: CPU1's host fault and CPU0's donation of the same page share "
    "the read side; the fault decides from an empty entry that the page is the host's "
    "(host_stage2_adjust_range), the donation writes the guest's annotation there, and the "
    "fault's map, trusting its check, overwrites it: check-then-act",
    build_host_fault_vs_donate_shared,
    {"rwlock": {"isolation": SOMETIMES}},
    why_not={
        "hyp-lock": _SHARED_READ_SIDE_WHY.format(
            "pKVM's answer is one spinlock, under which donate-vs-host-access and "
            "coalesce-vs-host-fault find nothing"),
        "rcu": _SHARED_READ_SIDE_WHY.format(NOT_PKVM["rcu"]),
        "rcu-rfc": _SHARED_READ_SIDE_WHY.format(
            "rcu-rfc runs guest faults as shared walks under kvm->mmu_lock, like rcu; "
            + NOT_PKVM["rcu"]),
        "none": _SHARED_READ_SIDE_WHY.format(NOT_PKVM["none"]),
        **{name: _SHARED_READ_SIDE_WHY.format(
            f"{name} is a scheme of kvm->mmu_lock for a guest's stage 2, not the question")
           for name in ("write-lock", "refcount", "refcount-revalidate",
                        "rwlock-collapse-write", "rwlock-relax-page")},
    }))


# ---------------------------------------------------------------------------
# rcu-rfc: RFC v1's pruning walker (s2pt.schemes.RcuRfcScheme)
# ---------------------------------------------------------------------------

def build_collapse_vs_map(scheme, bugs):
    # vCPU0 collapses as in collapse-vs-fault.  vCPU1 looked its memslot up
    # while logging was still on: it maps one page (force_pte) at an entry
    # of the level-3 table that is still empty -- an install into the
    # subtree that vCPU0 is unlinking.
    vm, slot = _vm(scheme, bugs)
    logging = _logged_table(vm, slot)
    faults = [_fault(vm, IPA), _fault(vm, IPA + 3 * PAGE, vcpu=1)]
    s = _setup(vm, scheme, bugs)
    s.share(logging)
    s.cpu("vCPU0", "user_mem_abort: 2M block (collapse)", user_mem_abort, vm, 0, IPA, slot,
          faults[0], True)
    s.cpu("vCPU1", "user_mem_abort: map page 3 (logging)", user_mem_abort, vm, 1,
          IPA + 3 * PAGE, logging, faults[1], True)
    # The lost-update oracle watches vCPU1's page: every serial order leaves
    # it mapped (by the block or by vCPU1's page).  The rest of the 2M is
    # the logging-mismatch race's business: when vCPU1 splits the new block
    # and vCPU0's walk goes on into vCPU1's table, a few pages end up mapped
    # and the rest fault back later -- correct (the walker infers the PA
    # from the IPA), but no serial order gives it.
    s.region = (IPA + 3 * PAGE, PAGE)
    return s


_add(Scenario(
    "collapse-vs-map",
    "vCPU0 maps a 2M block over a level-3 table while vCPU1, which still sees dirty logging "
    "on, maps a page into an empty entry of that table: an install into the subtree being "
    "unlinked",
    build_collapse_vs_map,
    {"none": {"use-after-free": SOMETIMES, "leak": SOMETIMES, "warn": SOMETIMES},
     "rcu": {}}))

declare("rcu-rfc", {
    "collapse-vs-fault": {},
    "collapse-vs-fault-3": {},
    "unmap-vs-fault": {},
    "split-vs-fault": {},
    "stash-old-pte": {},
    "collapse-vs-hw-walk": {},
    "collapse-vs-hw-walk-no-tlbi": {"use-after-free": SOMETIMES},
    "map-vs-map": {},
    "map-vs-map-no-shared": {"lost-update": SOMETIMES, "leak": SOMETIMES,
                             "refcount": SOMETIMES, "warn": SOMETIMES},
    "collapse-vs-map": {},
}, why_not={name: "rcu-rfc runs guest faults as shared walks under kvm->mmu_lock, like rcu; "
                  + NOT_PKVM["rcu"]
            for name in ("donate-vs-host-access", "donate-vs-host-access-no-tlbi",
                         "coalesce-vs-host-fault", "coalesce-vs-host-fault-no-tlbi")})

mutation("rfc-plain-prune/rcu-rfc", "rcu-rfc", "collapse-vs-map", "leak",
         "RFC v1's pruning walker with plain READ_ONCE / WRITE_ONCE instead of xchg: vCPU1 "
         "installs its page between the pruner's read and its store, the store throws the "
         "install away (the block still maps the page, so the guest loses nothing) and the "
         "reference vCPU1 took on the level-3 table is never dropped: the table leaks",
         bugs=("rfc-plain-prune",))


# ---------------------------------------------------------------------------
# The baseline and Oliver Upton's rwlock (write-lock, rwlock); the races they
# need; and the historical bugs of the parallel walker they are checked on
# ---------------------------------------------------------------------------

@kernel_path("kvm_arch_mmu_enable_log_dirty_pt_masked")
def clear_dirty_log_split(vm, ipa: int, size: int):
    """KVM_CLEAR_DIRTY_LOG -> kvm_arch_mmu_enable_log_dirty_pt_masked() ->
    kvm_mmu_split_huge_pages(), as Vipin Sharma's 2023 series proposed it
    ("Split huge pages during clear-dirty-log under MMU read lock", not
    merged): under ``read_lock(&kvm->mmu_lock)``, with a
    KVM_PGTABLE_WALK_SHARED split walk, so that vCPUs keep faulting.  Only a
    shared split can lose its break to a vCPU and take the walker's -EAGAIN
    path; mainline splits under the write lock."""
    pgt, s = vm.pgt, vm.locking
    yield from s.fault_lock()                        # read_lock(&kvm->mmu_lock)
    ret = yield from pt.kvm_pgtable_stage2_split(pgt, ipa, size, vm.split_page_cache,
                                                 flags=pt.SHARED)
    yield from s.fault_unlock()                      # read_unlock(&kvm->mmu_lock)
    return ret


def build_unmap_vs_collapse(scheme, bugs):
    vm, slot = _vm(scheme, bugs)
    _logged_table(vm, slot)
    fault = _fault(vm, IPA)
    s = _setup(vm, scheme, bugs)
    # vCPU0 maps 2M again after logging (over the level-3 table where one is
    # left); the MMU notifier invalidates the whole 2M (a THP split or
    # migration: kvm_unmap_gfn_range over the block).
    s.cpu("vCPU0", "user_mem_abort: 2M block (collapse)", user_mem_abort, vm, 0, IPA, slot,
          fault, True)
    s.cpu("notifier", "kvm_unmap_gfn_range: unmap 2M", kvm_unmap_gfn_range, vm, IPA, BLOCK)
    s.region = (IPA, BLOCK)
    return s


def build_logging_mismatch(scheme, bugs):
    # A 2M-backed slot over one empty 2M region, and a 4K slot next to it
    # that the guest has touched, so that the level-2 table exists (the
    # race is at its entry 0, and turning logging off does not free it).
    vm, slot = _vm(scheme, bugs)
    other = vm.add_memslot(IPA + BLOCK, PAGE, backing="4K")
    vm.access(other.gpa, write=True)
    vm.enable_dirty_logging(slot)
    logging = _dc_replace(slot)       # the memslot as vCPU1 looked it up
    vm.disable_dirty_logging(slot, commit=False)      # as _logged_table
    last = IPA + BLOCK - PAGE
    faults = [_fault(vm, IPA, vcpu=0), _fault(vm, last, vcpu=1)]
    s = _setup(vm, scheme, bugs)
    s.share(logging)
    # The commit's picture: both vCPUs abort in the same 2M region; vCPU0
    # sees logging off and maps a PMD (2M block), vCPU1 sees it on and maps
    # a PTE (force_pte), replacing the block with a table if it finds one.
    # vCPU1's page is the region's last, so that a map walk that meets it
    # has mapped every other page first (its -EAGAIN stops the walk there):
    # whichever vCPU goes first, the region ends fully mapped or holding
    # vCPU1's page alone, as in the serial orders.
    s.cpu("vCPU0", "user_mem_abort: 2M block (logging off)", user_mem_abort, vm, 0, IPA, slot,
          faults[0], True)
    s.cpu("vCPU1", "user_mem_abort: 4K page (logging on)", user_mem_abort, vm, 1, last, logging,
          faults[1], True)
    s.region = (IPA, BLOCK)
    return s


def build_split_double_put(scheme, bugs):
    vm, slot = _vm(scheme, bugs)
    vm.access(IPA)                      # the guest ran on a 2M block ...
    vm.enable_dirty_logging(slot)       # ... that logging write-protected,
    vm.pgt.test_clear_young(IPA, BLOCK)  # and aging cleared its access flag
    fault = _fault(vm, IPA + 5 * PAGE, write=False, vcpu=1)
    s = _setup(vm, scheme, bugs)
    s.memcache(1, vm.split_page_cache)                # mmu->split_page_cache
    # The split's break loses when the block changes under it.  Oliver
    # Upton's guess in the fix's thread was a hardware access-flag update
    # (FEAT_HAFDBS, which the model's CPU lacks); vCPU1's access-flag fault
    # makes the same change in software (kvm_pgtable_stage2_mkyoung's
    # cmpxchg), and can, once the split runs on the read side.
    s.cpu("split", "clear-dirty-log split under the read lock", clear_dirty_log_split, vm,
          IPA, BLOCK)
    s.cpu("vCPU1", "handle_access_fault: mkyoung", handle_access_fault, vm, 1,
          IPA + 5 * PAGE, fault)
    s.region = (IPA, BLOCK)
    return s


_NO_MMU_LOCK = ("{} is a scheme of kvm->mmu_lock for a guest's stage 2; the host stage 2 at "
                "EL2 has only host_mmu.lock (a hyp_spinlock_t) and refuses shared walks "
                "(-EPERM)")

_add(Scenario(
    "unmap-vs-collapse",
    "vCPU0 maps a 2M block over a level-3 table (the collapse) while the MMU notifier "
    "unmaps the same 2M under the write lock, which frees the tables it empties",
    build_unmap_vs_collapse,
    {"none": {}, "rcu": {}, "hyp-lock": {}, "write-lock": {}, "rwlock": {}}))
_add(Scenario(
    "logging-mismatch",
    "two vCPUs abort in one empty 2M region, one seeing dirty logging off (a 2M block), the "
    "other on (a page, replacing the block with a table if it finds one): the race of "
    "1f0f4a2ef7a5 ('Infer the PA offset from IPA in stage-2 map walker'); under 'none' the "
    "block also replaces a fresh table while its installer is inside",
    build_logging_mismatch,
    {"none": {"use-after-free": SOMETIMES, "leak": SOMETIMES, "warn": SOMETIMES}, "rcu": {}, "hyp-lock": {}, "write-lock": {},
     "rwlock": {}}))
_add(Scenario(
    "split-double-put",
    "a split under the read lock (the 2023 proposal to split during KVM_CLEAR_DIRTY_LOG with "
    "a shared walk) loses its break to vCPU1 setting the block's access flag, and frees its "
    "unused subtree: the -EAGAIN path whose double put c60d847be7b8 removed",
    build_split_double_put,
    {"none": {}, "rcu": {}, "rwlock": {}},
    why_not={
        "write-lock": "before 6.2 no walk was shared: a split under the read lock, racing "
                      "vCPU faults, is a later proposal",
        "hyp-lock": "under one spinlock the split cannot run beside a fault, so its break "
                    "never loses (the scenario is a split on the read side)",
    }))


# Outcomes of write-lock, rwlock and (as "what if KVM used pKVM's lock")
# hyp-lock on the scenarios above, in one block.
declare("write-lock", {
    "collapse-vs-fault": {}, "collapse-vs-fault-3": {}, "unmap-vs-fault": {},
    "collapse-vs-hw-walk": {}, "collapse-vs-hw-walk-no-tlbi": {"use-after-free": SOMETIMES},
    "map-vs-map": {}, "map-vs-map-no-shared": {},
}, why_not=dict({name: _NO_MMU_LOCK.format("write-lock") for name in (
    "donate-vs-host-access", "donate-vs-host-access-no-tlbi", "coalesce-vs-host-fault",
    "coalesce-vs-host-fault-no-tlbi")}, **{
    # write-lock models v6.1 (s2pt.schemes.WriteLockScheme).
    "stash-old-pte": "write-lock models v6.1, and the stale table PTE of a9f0e3d5a089 never "
                     "existed there: v6.1's TABLE_PRE visitor only cleared the table entry and "
                     "set its anchor, then descended on purpose into the table it had unlinked, "
                     "which it freed on the way back up (stage2_map_walk_table_post).  The bug "
                     "came with 5c359cca1faf (v6.2), which freed the subtree inside TABLE_PRE, "
                     "and a9f0e3d5a089 fixed it in v6.4",
    "split-vs-fault": "write-lock models v6.1, and eager page splitting "
                      "(kvm_mmu_split_huge_pages, KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE) arrived "
                      "in v6.5",
}))

declare("rwlock", {
    # vCPU0's fault wants the block, finds the table and may not collapse it
    # on the read side: the walk maps nothing and returns -EAGAIN, and the
    # guest takes the same fault again, for as long as the table is there
    # (until the memslot's commit unmaps it, which this scenario does not run).
    "collapse-vs-fault": {"livelock": SOMETIMES}, "collapse-vs-fault-3": {"livelock": SOMETIMES},
    "unmap-vs-fault": {},
    "split-vs-fault": {}, "stash-old-pte": {},
    "collapse-vs-hw-walk": {}, "collapse-vs-hw-walk-no-tlbi": {},
    "map-vs-map": {},
    "map-vs-map-no-shared": {"lost-update": SOMETIMES, "leak": SOMETIMES,
                             "refcount": SOMETIMES, "warn": SOMETIMES},
}, why_not={name: _NO_MMU_LOCK.format("rwlock") + ". The thread's pKVM question is asked in "
            "host-fault-vs-donate-shared: coalescing (the host stage 2's unlink) would go on the "
            "write side, but host faults and donations cannot share the read side either (the "
            "fault path checks, then acts); see s2pt.schemes.RwlockScheme"
            for name in ("donate-vs-host-access", "donate-vs-host-access-no-tlbi",
                         "coalesce-vs-host-fault", "coalesce-vs-host-fault-no-tlbi")})

# hyp-lock on a guest is a question: pKVM's own guest stage 2 forbids the
# collapses these scenarios make (android15-6.6: guest_s2_free_unlinked_table
# is WARN_ON(1); see s2pt.schemes.HypLockScheme).
declare("hyp-lock", {
    "collapse-vs-fault": {}, "collapse-vs-fault-3": {}, "unmap-vs-fault": {},
    "split-vs-fault": {}, "stash-old-pte": {"use-after-free": SOMETIMES},
    "collapse-vs-hw-walk": {}, "collapse-vs-hw-walk-no-tlbi": {"use-after-free": SOMETIMES},
    "map-vs-map": {}, "map-vs-map-no-shared": {},
})


mutation("no-rcu-read-lock/rcu", "rcu", "collapse-vs-fault", "use-after-free",
         "RCU whose shared walkers forget rcu_read_lock() (kvm_pgtable_walk_begin): the "
         "grace period does not wait for vCPU1, and the callback frees the table it walks",
         bugs=("no-rcu-read-lock",))
mutation("collapse-under-read-lock/rwlock", "rwlock", "collapse-vs-fault", "use-after-free",
         "rwlock whose faults may replace a table by a block under the read lock: vCPU0 "
         "collapses the table dirty logging left and frees it at once while vCPU1 walks it",
         bugs=("collapse-under-read-lock",))
mutation("f6a27d6dc51b/rcu", "rcu", "collapse-vs-fault", "leak",
         "f6a27d6dc51b reverted: kvm_pgtable_stage2_free_unlinked() does not drop the "
         "subtree root's last reference, so every collapsed table leaks",
         bugs=("f6a27d6dc51b",))
mutation("c60d847be7b8/rcu", "rcu", "split-double-put", "double-free",
         "c60d847be7b8 reverted: the split walker that lost its break frees its unused "
         "subtree and then puts the root once more",
         bugs=("c60d847be7b8",))
mutation("1f0f4a2ef7a5/rcu", "rcu", "logging-mismatch", "lost-update",
         "1f0f4a2ef7a5 reverted: vCPU0 installs its block, advances its PA by 2M, finds "
         "vCPU1's table on reloading and maps the whole table 2M off",
         bugs=("1f0f4a2ef7a5",))


# ---------------------------------------------------------------------------
# ABA: a table page freed and reused while a walker holds its pointer
# ---------------------------------------------------------------------------
#
# The collapse-vs-fault table, and a second memslot next to it: a read-only
# 4K-backed slot (a ROM) at IPA + 2M, so that a fault there needs a new
# level-3 table under L2[1].  The faulting vCPU's memcache is one page short
# of kvm_mmu_cache_min_pages, so its top-up takes a page from the page
# allocator -- which hands out the most recently freed page first (LIFO):
# the collapsed table, if it has been freed by then.  One spare page waits
# in the allocator for the runs where it has not.

ROM = IPA + BLOCK                    # the read-only slot's first IPA


@kernel_path("vcpu_run")
def guest_faults(vm, vcpu: int, faults):
    """The vCPU runs the guest, which takes each fault in turn:
    kvm_handle_guest_abort() -> user_mem_abort() once per ``(ipa, slot,
    fault, write)``, each with its own top-up, lock and walk."""
    for ipa, slot, fault, write in faults:
        yield from user_mem_abort(vm, vcpu, ipa, slot, fault, write)


def _one_page_short(vm, vcpu):
    """Give back all but one page of vCPU ``vcpu``'s memcache (it now holds
    one less than kvm_mmu_cache_min_pages), so that its next top-up takes a
    page from the allocator; the page given back is the allocator's spare."""
    mc = vm.vcpus[vcpu].memcache
    while mc.nobjs > vm._min_pages - 1:
        vm.pgt.mm.free_page(mc.objects.pop(), was_table=False)


def build_aba_table_reuse(scheme, bugs):
    vm, slot = _vm(scheme, bugs)
    rom = vm.add_memslot(ROM, BLOCK, backing="4K", readonly=True)
    logging = _logged_table(vm, slot)
    faults = [_fault(vm, IPA, write=True), _fault(vm, IPA + PAGE, write=True, vcpu=1),
              _fault(vm, ROM + PAGE, write=False)]
    s = _setup(vm, scheme, bugs)
    s.share(logging)
    _one_page_short(vm, 0)
    # vCPU0: collapse (the L3 table is unlinked and, once no walker holds it,
    # freed), then a read of the ROM: a new L3 table under L2[1] -- the
    # collapsed table's page, if the allocator has it back by then -- with
    # ROM + 4K mapped read-only at index 1.
    s.cpu("vCPU0", "collapse, then a read fault on the ROM slot", guest_faults, vm, 0,
          ((IPA, slot, faults[0], True), (ROM + PAGE, rom, faults[2], False)))
    # vCPU1: relax_perms at IPA + 4K, index 1 of the collapsed table.
    s.cpu("vCPU1", "user_mem_abort: relax_perms", user_mem_abort, vm, 1, IPA + PAGE, logging,
          faults[1], True)
    s.region = (IPA, 2 * BLOCK)
    return s


def build_aba_table_reuse_same(scheme, bugs):
    vm, slot = _vm(scheme, bugs, vcpus=3)
    logging = _logged_table(vm, slot)
    faults = [_fault(vm, IPA + k * PAGE, write=True, vcpu=v) for v, k in enumerate((0, 1, 3))]
    s = _setup(vm, scheme, bugs)
    s.share(logging)
    _one_page_short(vm, 2)
    s.cpu("vCPU0", "user_mem_abort: 2M block (collapse)", user_mem_abort, vm, 0, IPA, slot,
          faults[0], True)
    s.cpu("vCPU1", "user_mem_abort: relax_perms", user_mem_abort, vm, 1, IPA + PAGE, logging,
          faults[1], True)
    # vCPU2 took its translation fault on page 3 before the collapse, and
    # looked the slot up while logging was on: it maps 4K, and where it
    # meets the new 2M block it replaces the block with a table
    # (stage2_map_walk_leaf) -- at the same entry, L2[0], and, if the
    # collapsed table is back in the allocator by then, on the same page.
    s.cpu("vCPU2", "user_mem_abort: 4K write while logging", user_mem_abort, vm, 2,
          IPA + 3 * PAGE, logging, faults[2], True)
    s.region = (IPA, BLOCK)
    return s


_add(Scenario(
    "aba-table-reuse",
    "ABA elsewhere: vCPU0 collapses the level-3 table that vCPU1's relax_perms is walking "
    "into, then faults on a read-only slot, and the allocator hands it the freed table's "
    "page as that slot's new level-3 table; a walker that took its reference only after "
    "reading the old pointer walks the ROM's table and makes a ROM page writable",
    build_aba_table_reuse,
    {"none": {"use-after-free": SOMETIMES, "lost-update": SOMETIMES}, "rcu": {}}))
#: ABA at the same place.  Not in SCENARIOS: with three CPUs and the
#: 512-entry walk that frees the collapsed table, its exhaustive search
#: exceeds two million states (beyond the engine's 60 s target), so it is
#: replayed with chosen schedules instead (tests/test_refcount.py, notebook 07).
ABA_SAME = Scenario(
    "aba-table-reuse-same",
    "ABA at the same place: while vCPU1 holds a pointer to the level-3 table, vCPU0 "
    "collapses and frees it and vCPU2's logging fault splits the block again, getting the "
    "same page back as the new table at the same entry; a walker that checks the entry "
    "after taking its reference walks the new table, which is correct",
    build_aba_table_reuse_same,
    {"none": {"use-after-free": SOMETIMES}, "rcu": {}, "refcount": {"use-after-free": SOMETIMES},
     "refcount-revalidate": {}}, cpus=3)


# ---------------------------------------------------------------------------
# The refcount schemes (s2pt.schemes: refcount, refcount-revalidate)
# ---------------------------------------------------------------------------

#
# Both run faults under read_lock(&kvm->mmu_lock) as the kernel does, and
# unmap and eager splitting under the write lock, without RCU; refcount takes
# its walker reference after reading the table pointer, refcount-revalidate
# takes it with get_page_unless_zero and checks the entry again.  The
# hardware walker takes no reference: against it only the TLBI before the
# free protects, as for every scheme.

_REFCOUNT_COMMON = {
    # The unmap takes the write lock: no walker is inside when it frees; the
    # collapse that loses to it, or wins, drops the parent's reference.
    "unmap-vs-collapse": {},
    # A split on the read side walks shared, so it takes walker references;
    # its unused subtree was never linked, and it frees that at once.
    "split-double-put": {},
    "unmap-vs-fault": {},
    "split-vs-fault": {},
    "collapse-vs-hw-walk": {},
    "collapse-vs-hw-walk-no-tlbi": {"use-after-free": SOMETIMES},
    "map-vs-map": {},
    "map-vs-map-no-shared": {"lost-update": SOMETIMES, "leak": SOMETIMES,
                             "refcount": SOMETIMES, "warn": SOMETIMES},
}
_REFCOUNT_WHY = ("this scenario races on pKVM's host stage 2 at EL2 under hyp-lock "
                 "(host_mmu.lock, exclusive walks only): walker references would change "
                 "nothing there; the refcount schemes run shared guest faults under "
                 "read_lock(&kvm->mmu_lock)")
_REFCOUNT_WHY_NOT = {name: _REFCOUNT_WHY for name in (
    "donate-vs-host-access", "donate-vs-host-access-no-tlbi", "coalesce-vs-host-fault",
    "coalesce-vs-host-fault-no-tlbi")}
declare("refcount", dict(_REFCOUNT_COMMON, **{
    # the walker takes its reference after the unlinker dropped the last one
    "collapse-vs-fault": {"use-after-free": SOMETIMES},
    "collapse-vs-fault-3": {"use-after-free": SOMETIMES},
    # a9f0e3d5a089 reverted: the collapser descends into the table it freed
    "stash-old-pte": {"use-after-free": SOMETIMES},
    # ... or, the page reused elsewhere, walks the ROM's new table
    "aba-table-reuse": {"use-after-free": SOMETIMES, "lost-update": SOMETIMES},
    # vCPU0's block replaces the table vCPU1 has just installed, before
    # vCPU1's reference on it
    "logging-mismatch": {"use-after-free": SOMETIMES},
}), why_not=_REFCOUNT_WHY_NOT)
declare("refcount-revalidate", dict(_REFCOUNT_COMMON, **{
    "collapse-vs-fault": {},
    "collapse-vs-fault-3": {},
    # get_page_unless_zero fails on the freed table: the walker visits the
    # entry again and finds its own block (a9f0e3d5a089 is not needed here)
    "stash-old-pte": {},
    "aba-table-reuse": {},
    "logging-mismatch": {},
}), why_not=_REFCOUNT_WHY_NOT)

# The other schemes on aba-table-reuse: under write-lock and hyp-lock the
# collapse excludes the relax_perms walk, so the page is reused only once no
# walker holds its pointer.
declare("write-lock", {"aba-table-reuse": {}})
declare("hyp-lock", {"aba-table-reuse": {}})
# Under rwlock vCPU0's fault maps inside the table instead of collapsing it
# (no fault unlinks a table on the read side), so nothing is freed or reused.
declare("rwlock", {"aba-table-reuse": {}})

mutation("no-revalidate/refcount", "refcount", "aba-table-reuse", "lost-update",
         "refcount without revalidation: the walker takes its reference after reading the "
         "table pointer, on a page that was freed and reused as the ROM's table; it makes a "
         "read-only page writable")
mutation("no-revalidate/refcount-uaf", "refcount", "collapse-vs-fault", "use-after-free",
         "refcount without revalidation: the walker takes its reference on a table whose "
         "last reference the collapse has just dropped")
mutation("shared-walker-count/refcount-revalidate", "refcount-revalidate", "collapse-vs-fault",
         "leak", "walker references kept in page_count, where 1 means 'no valid entries': the "
         "unlinked table's entries keep the count above zero, so the last walker reference "
         "is never the last reference and the table is never freed",
         bugs=("shared-walker-count",))


# ---------------------------------------------------------------------------
# Declarations across the three scheme blocks above: each block declared its
# own schemes on the scenarios that existed beside it; these are the pairs
# where one block's scheme meets another block's scenario.
# ---------------------------------------------------------------------------

declare("rcu-rfc", {"unmap-vs-collapse": {}, "logging-mismatch": {}, "split-double-put": {},
                    "aba-table-reuse": {}})
declare("hyp-lock", {"collapse-vs-map": {}})
declare("write-lock", {"collapse-vs-map": {}})
declare("rwlock", {"collapse-vs-map": {}})
declare("refcount", {"collapse-vs-map": {"use-after-free": SOMETIMES}})
declare("refcount-revalidate", {"collapse-vs-map": {}})


# ---------------------------------------------------------------------------
# rwlock's two open variants (s2pt.schemes: rwlock-collapse-write, the fault
# that would unlink takes the write lock; rwlock-relax-page, the fault asks
# for the page, not the block), on every guest scenario
# ---------------------------------------------------------------------------

_PKVM_SCENARIOS = ("donate-vs-host-access", "donate-vs-host-access-no-tlbi",
                   "coalesce-vs-host-fault", "coalesce-vs-host-fault-no-tlbi")
_NO_SHARED_KINDS = {"lost-update": SOMETIMES, "leak": SOMETIMES, "refcount": SOMETIMES,
                    "warn": SOMETIMES}
declare("rwlock-collapse-write", {
    # The collapse runs under the write lock: no software walker is inside
    # the table it frees at once.
    "collapse-vs-fault": {}, "collapse-vs-fault-3": {}, "collapse-vs-map": {},
    "unmap-vs-fault": {}, "unmap-vs-collapse": {}, "split-vs-fault": {},
    "split-double-put": {}, "logging-mismatch": {}, "aba-table-reuse": {},
    "map-vs-map": {}, "collapse-vs-hw-walk": {},
    # a9f0e3d5a089 reverted: the collapse frees the table at once and the
    # walker then descends into it (the pKVM bug, as under hyp-lock)
    "stash-old-pte": {"use-after-free": SOMETIMES},
    "collapse-vs-hw-walk-no-tlbi": {"use-after-free": SOMETIMES},
    "map-vs-map-no-shared": dict(_NO_SHARED_KINDS),
}, why_not={name: _NO_MMU_LOCK.format("rwlock-collapse-write") for name in _PKVM_SCENARIOS})
declare("rwlock-relax-page", {
    # No fault asks for a block over a table: nothing is unlinked on the
    # read side (vCPU0's write fault relaxes its page).
    "collapse-vs-fault": {}, "collapse-vs-fault-3": {}, "collapse-vs-map": {},
    "unmap-vs-fault": {}, "unmap-vs-collapse": {}, "split-vs-fault": {},
    "split-double-put": {}, "logging-mismatch": {}, "aba-table-reuse": {},
    "map-vs-map": {}, "collapse-vs-hw-walk": {}, "stash-old-pte": {},
    "collapse-vs-hw-walk-no-tlbi": {},
    "map-vs-map-no-shared": dict(_NO_SHARED_KINDS),
}, why_not={name: _NO_MMU_LOCK.format("rwlock-relax-page") for name in _PKVM_SCENARIOS})


# ---------------------------------------------------------------------------
# Where refcount-revalidate's walker count lives (s2pt.memory): only a count
# whose meaning survives reallocation makes get_page_unless_zero legal on a
# page freed since the walker read its pointer
# ---------------------------------------------------------------------------

mutation("walker-count-in-ptdesc/refcount-revalidate", "refcount-revalidate", "collapse-vs-fault",
         "use-after-free",
         "refcount-revalidate with its walker count in a field of the page-table descriptor: "
         "vCPU1 read the level-3 table's pointer, the collapse freed the table, and "
         "get_page_unless_zero then touches a field that now belongs to the page's next owner",
         bugs=("walker-count-in-ptdesc",))


# ---------------------------------------------------------------------------
# The commit that ends rwlock's refaults
# ---------------------------------------------------------------------------

@kernel_path("kvm_arch_commit_memory_region")
def kvm_arch_commit_memory_region(vm, slot):
    """The memslot change that turned dirty logging off, committing (after
    kvm_swap_active_memslots): mainline only frees the split cache, which
    does nothing to the table; the VM's locking may do more
    (``MmuLock.logging_off``: ``rwlock`` unmaps the slot under the write
    lock)."""
    yield from vm.locking.logging_off(vm, slot)
    return 0


def build_collapse_vs_commit(scheme, bugs):
    # collapse-vs-fault's vCPU0, without vCPU1, and the commit of the
    # memslot change running on another CPU.  Under rwlock vCPU0's fault
    # gets -EAGAIN until the commit has unmapped the slot; then its refault
    # maps the block into empty space.  (The guest re-executes the same
    # access: the model hands user_mem_abort the fault it took first.)
    vm, slot = _vm(scheme, bugs)
    logging = _logged_table(vm, slot)
    fault = _fault(vm, IPA)
    s = _setup(vm, scheme, bugs)
    s.share(logging)
    s.cpu("vCPU0", "user_mem_abort: 2M block (collapse)", guest_fault, vm, 0, IPA, slot,
          fault, True)
    s.cpu("commit", "kvm_arch_commit_memory_region: logging off", kvm_arch_commit_memory_region,
          vm, slot)
    s.region = (IPA, BLOCK)
    return s


_add(Scenario(
    "collapse-vs-commit",
    "vCPU0 faults for a 2M block over the level-3 table dirty logging left while the memslot "
    "change that turned logging off commits (kvm_arch_commit_memory_region): under rwlock the "
    "commit unmaps the slot, which ends the -EAGAIN refaults that collapse-vs-fault shows as "
    "a livelock",
    build_collapse_vs_commit,
    {s: {} for s in ("none", "rcu", "rcu-rfc", "write-lock", "rwlock", "hyp-lock", "refcount",
                     "refcount-revalidate", "rwlock-collapse-write", "rwlock-relax-page")}))


# ---------------------------------------------------------------------------
# Race windows: the race each scenario is about (s2pt.sim.window)
# ---------------------------------------------------------------------------

#: pKVM's host_mmu.lock (s2pt.schemes.HOST_MMU_LOCK, by name: scenarios do not
#: import the schemes).
_HOST_LOCK = "host_mmu.lock"
_UNLINK_HELD = W.window("a table is unlinked while another CPU holds a pointer into it",
                        W.unlinks(), W.unlinks_while_held())
_INSTALL_RACE = W.window(
    "two CPUs race to change the same entry",
    W.any_of("a CPU's update meets another CPU's at the same entry",
             "no two CPUs ever update the same entry at once: the lock keeps them apart",
             W.loses_race(), W.unlinks_while_held()))

#: scenario -> its race window.  Every scenario has one (checked below).
WINDOWS = {
    "collapse-vs-fault": _UNLINK_HELD,
    "collapse-vs-fault-3": _UNLINK_HELD,
    "collapse-vs-fault-4": _UNLINK_HELD,
    "unmap-vs-fault": _UNLINK_HELD,
    "split-vs-fault": W.window("the split changes the table while the fault walks it",
                               W.stores_while_held()),
    "stash-old-pte": W.window("the collapsing walker reaches the table it unlinked",
                              W.unlinks(), W.reaches_unlinked()),
    "collapse-vs-hw-walk": _UNLINK_HELD,
    "collapse-vs-hw-walk-no-tlbi": _UNLINK_HELD,
    "map-vs-map": _INSTALL_RACE,
    "map-vs-map-no-shared": _INSTALL_RACE,
    "donate-vs-host-access": W.window(
        "a host CPU's MMU walks the table while EL2 changes it for the donation",
        W.mmu_walks_while_locked(_HOST_LOCK)),
    "donate-vs-host-access-no-tlbi": W.window(
        "a host CPU's MMU walks the table while EL2 changes it for the donation",
        W.mmu_walks_while_locked(_HOST_LOCK)),
    "coalesce-vs-host-fault": _UNLINK_HELD,
    "coalesce-vs-host-fault-no-tlbi": _UNLINK_HELD,
    "collapse-vs-map": _UNLINK_HELD,
    "unmap-vs-collapse": _UNLINK_HELD,
    "logging-mismatch": _INSTALL_RACE,
    "split-double-put": W.window("the split's break loses to another CPU's update",
                                 W.loses_race()),
    "aba-table-reuse": _UNLINK_HELD,
    "collapse-vs-commit": _UNLINK_HELD,
    "host-fault-vs-donate-shared": W.window(
        "the donation changes the table while the host fault is deciding on it",
        W.any_of("the donation and the host fault update the table at once",
                 "the host fault and the donation never overlap: the lock keeps them apart",
                 W.loses_race(), W.stores_while_held())),
}
ABA_SAME.window = _UNLINK_HELD
for _name, _w in WINDOWS.items():
    SCENARIOS[_name].window = _w
_missing = [n for n, sc in SCENARIOS.items() if sc.window is None]
if _missing:
    raise AssertionError(f"scenarios without a race window (s2pt.scenarios.WINDOWS): {_missing}")
