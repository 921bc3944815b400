"""Litmus-style scenarios: a few CPUs, a tiny table, declared outcomes.

Each scenario builds one small stage-2 table in a known state, then gives
each CPU one kernel path to run.  The CPU programs are written like the
kernel functions they model and call the one walker (:mod:`s2pt.pgtable`)
step by step; locking comes from the scheme (:mod:`s2pt.schemes`).

For every scheme it knows, a scenario declares which kinds of violation are
expected **Sometimes** (some interleaving shows it) -- every other kind is
expected **Never**.  ``python -m s2pt scenarios`` lists them and
``tests/test_explorer.py`` checks every declaration exhaustively.

The table for the collapse scenarios, as dirty logging leaves it (40-bit
IPA, 4K granule, start level 1)::

    PGD[1] -> L2 table: [0] -> L3 table: [0] page 0x10_4000_0000 R-X
                                          [1] page 0x10_4000_1000 R-X
                                          [2] page 0x10_4000_2000 R-X (AF clear)

Logging write-protected the pages and mapped them one by one; it is now
off, so the next write fault may map a 2M block over the whole L3 table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import descriptor as d
from . import pgtable as pt
from .errors import S2ptError
from .sim.sync import hw_walk_start
from .sim.world import Setup, kernel_path
from .tlb import VcpuTlb, hw_translate

__all__ = ["Scenario", "SCENARIOS", "get_scenario", "BUGS", "SOMETIMES", "NEVER"]

SOMETIMES, NEVER = "Sometimes", "Never"

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PAGE, BLOCK = 4 * KiB, 2 * MiB
IPA = 1 * GiB                      # the 2M region every scenario races on
HOST_PA = 0x10_0000_0000           # guest RAM in host PA space (congruent mod 1G)
RWX = d.KVM_PGTABLE_PROT_R | d.KVM_PGTABLE_PROT_W | d.KVM_PGTABLE_PROT_X


def pa_of(ipa: int) -> int:
    return HOST_PA + ipa


#: Historical bugs a scenario can switch back on: name -> (what, how).
BUGS = {
    "a9f0e3d5a089": ("no reload of the PTE after a TABLE_PRE callback",
                     lambda pgt: setattr(pgt, "reload_after_cb", False)),
    "f6a27d6dc51b": ("free_unlinked does not drop the subtree root's last reference",
                     lambda pgt: setattr(pgt, "free_unlinked_drops_root", False)),
    "no-bbm-tlbi": ("faults break entries without the TLBI (KVM_PGTABLE_WALK_SKIP_BBM_TLBI): "
                    "not a real commit, the hardware walker's hazard",
                    lambda pgt: None),
}


#: Why a scenario does not declare a scheme, unless it says otherwise.
NOT_DECLARED = {
    "hyp-lock": "hyp-lock is pKVM's lock for the host stage 2 at EL2 (host_mmu.lock); this "
                "scenario races on a guest's stage 2 in the host kernel",
}


class Kvm:
    """The bits of struct kvm the CPU programs need: the table, the scheme,
    the vCPU memcaches (vcpu->arch.mmu_page_cache) and the split cache."""

    def __init__(self, setup: Setup, vcpus: int, cache_pages: int = 1):
        self.pgt = setup.pgt
        self.scheme = setup.scheme
        self.memcache = [setup.memcache(cache_pages) for _ in range(vcpus)]
        self.split_page_cache = None
        # the no-bbm-tlbi bug: faults skip the break-before-make TLBI
        self.extra_flags = pt.SKIP_BBM_TLBI if "no-bbm-tlbi" in setup.bugs else 0
        setup.opaque.append(self)


# ---------------------------------------------------------------------------
# CPU programs: kernel paths, one yield per shared access
# ---------------------------------------------------------------------------

@kernel_path("user_mem_abort")
def user_mem_abort_map_block(kvm: Kvm, vcpu: int, ipa: int):
    """user_mem_abort(): a write fault after dirty logging was turned off.

    The memslot allows 2M again (vma_pagesize > fault_granule), so the
    fault maps a block with kvm_pgtable_stage2_map(); where the level-3
    table is, stage2_map_walk_table_pre() replaces the table entry with the
    block and hands the old table to mm_ops->free_unlinked_table().
    (kernel: the memcache is topped up before the lock; here it is full.)"""
    pgt, s = kvm.pgt, kvm.scheme
    fault_ipa = ipa & ~(BLOCK - 1)
    attr = d.stage2_set_prot_attr(RWX, "normal", pgt.fwb)
    flags = s.fault_flags | kvm.extra_flags
    yield from s.fault_lock(unlinks=True)            # read_lock(&kvm->mmu_lock)
    ret = yield from pt.kvm_pgtable_stage2_map(pgt, fault_ipa, BLOCK, pa_of(fault_ipa), attr,
                                               kvm.memcache[vcpu], flags)
    yield from s.fault_unlock(unlinks=True)          # read_unlock(&kvm->mmu_lock)
    return ret


@kernel_path("user_mem_abort")
def user_mem_abort_relax_perms(kvm: Kvm, vcpu: int, ipa: int):
    """user_mem_abort(): a write fault on a write-protected page whose
    mapping size equals the fault granule (the vCPU sampled the memslot
    while logging was still on): kvm_pgtable_stage2_relax_perms()."""
    pgt, s = kvm.pgt, kvm.scheme
    yield from s.fault_lock()                        # read_lock(&kvm->mmu_lock)
    ret = yield from pt.kvm_pgtable_stage2_relax_perms(pgt, ipa, RWX, s.fault_flags)
    yield from s.fault_unlock()                      # read_unlock(&kvm->mmu_lock)
    return ret


@kernel_path("handle_access_fault")
def handle_access_fault(kvm: Kvm, vcpu: int, ipa: int):
    """handle_access_fault(): the guest touched a page whose AF was cleared
    by aging; set it again with kvm_pgtable_stage2_mkyoung()."""
    pgt, s = kvm.pgt, kvm.scheme
    yield from s.fault_lock()                        # read_lock(&kvm->mmu_lock)
    ret = yield from pt.kvm_pgtable_stage2_mkyoung(pgt, ipa, s.fault_flags)
    yield from s.fault_unlock()                      # read_unlock(&kvm->mmu_lock)
    return ret


@kernel_path("user_mem_abort")
def user_mem_abort_logging(kvm: Kvm, vcpu: int, ipa: int):
    """user_mem_abort(): a write fault on a write-protected block while
    dirty logging is on: force_pte, so kvm_pgtable_stage2_map() maps one 4K
    page, replacing the block with a table first (stage2_map_walk_leaf)."""
    pgt, s = kvm.pgt, kvm.scheme
    attr = d.stage2_set_prot_attr(RWX, "normal", pgt.fwb)
    yield from s.fault_lock()                        # read_lock(&kvm->mmu_lock)
    ret = yield from pt.kvm_pgtable_stage2_map(pgt, ipa, PAGE, pa_of(ipa), attr,
                                               kvm.memcache[vcpu], s.fault_flags, force_pte=True)
    yield from s.fault_unlock()                      # read_unlock(&kvm->mmu_lock)
    return ret


@kernel_path("kvm_unmap_gfn_range")
def kvm_unmap_gfn_range(kvm: Kvm, ipa: int, size: int):
    """The MMU notifier's invalidate_range_start -> kvm_unmap_gfn_range() ->
    __unmap_stage2_range(): kvm_pgtable_stage2_unmap() with mmu_lock held
    for write by the generic code.  The unmap walk frees tables it empties."""
    pgt, s = kvm.pgt, kvm.scheme
    yield from s.update_lock()                       # KVM_MMU_LOCK(kvm): write_lock
    ret = yield from pt.kvm_pgtable_stage2_unmap(pgt, ipa, size)
    yield from s.update_unlock()                     # KVM_MMU_UNLOCK(kvm)
    return ret


@kernel_path("kvm_mmu_split_huge_pages")
def kvm_mmu_split_huge_pages(kvm: Kvm, ipa: int, size: int):
    """kvm_mmu_split_memory_region() -> kvm_mmu_split_huge_pages(): eager
    splitting when dirty logging starts, under write_lock(&kvm->mmu_lock).
    Each block becomes a new level-3 table built unlinked
    (kvm_pgtable_stage2_create_unlinked) and then swapped in."""
    pgt, s = kvm.pgt, kvm.scheme
    yield from s.update_lock()                       # write_lock(&kvm->mmu_lock)
    ret = yield from pt.kvm_pgtable_stage2_split(pgt, ipa, size, kvm.split_page_cache)
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

    def build(self, scheme, bugs=frozenset()) -> Setup:
        self.check_scheme(getattr(scheme, "name", scheme))
        unknown = set(bugs) - set(BUGS)
        if unknown:
            raise S2ptError(f"bugs={sorted(unknown)!r}: unknown; known: {', '.join(BUGS)}")
        return self.builder(scheme, frozenset(bugs) | self.bugs, **self.params)

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


def _stage2(scheme, bugs, **kw):
    from .stage2 import Stage2
    pgt = Stage2(ipa_bits=40, granule=4096, **kw)
    scheme.setup(pgt)
    for b in sorted(bugs):
        BUGS[b][1](pgt)
    return pgt


def _logged_table(pgt, pages=3, aged=(2,)):
    """Dirty logging's leftovers: a level-3 table with a few write-protected
    pages, some of them aged (AF clear)."""
    for k in range(pages):
        pgt.map(IPA + k * PAGE, PAGE, pa_of(IPA + k * PAGE), prot="RX", force_pte=True)
    for k in aged:
        pgt.test_clear_young(IPA + k * PAGE, PAGE)


def build_collapse_vs_fault(scheme, bugs, vcpus=2):
    pgt = _stage2(scheme, bugs)
    _logged_table(pgt)
    s = Setup(pgt, scheme, bugs)
    kvm = Kvm(s, vcpus)
    s.cpu("vCPU0", "user_mem_abort: 2M block (collapse)", user_mem_abort_map_block, kvm, 0, IPA)
    s.cpu("vCPU1", "user_mem_abort: relax_perms", user_mem_abort_relax_perms, kvm, 1, IPA + PAGE)
    if vcpus > 2:
        s.cpu("vCPU2", "handle_access_fault: mkyoung", handle_access_fault, kvm, 2, IPA + 2 * PAGE)
    s.region = (IPA, BLOCK)
    return s


def build_unmap_vs_fault(scheme, bugs):
    pgt = _stage2(scheme, bugs)
    _logged_table(pgt, pages=1, aged=(0,))
    s = Setup(pgt, scheme, bugs)
    kvm = Kvm(s, 2)
    s.cpu("notifier", "kvm_unmap_gfn_range: unmap 4K", kvm_unmap_gfn_range, kvm, IPA, PAGE)
    s.cpu("vCPU1", "handle_access_fault: mkyoung", handle_access_fault, kvm, 1, IPA)
    s.region = (IPA, BLOCK)
    return s


def build_split_vs_fault(scheme, bugs):
    pgt = _stage2(scheme, bugs)
    pgt.map(IPA, BLOCK, pa_of(IPA), prot="RX")       # a 2M block, write-protected by logging
    s = Setup(pgt, scheme, bugs)
    kvm = Kvm(s, 2)
    kvm.split_page_cache = s.memcache(1)              # mmu->split_page_cache
    s.cpu("split", "kvm_mmu_split_huge_pages: eager split", kvm_mmu_split_huge_pages, kvm,
          IPA, BLOCK)
    s.cpu("vCPU1", "user_mem_abort: write while logging", user_mem_abort_logging, kvm, 1,
          IPA + 5 * PAGE)
    s.region = (IPA, BLOCK)
    return s


def build_stash_old_pte(scheme, bugs):
    # One vCPU collapses the table, with a9f0e3d5a089 reverted: after its
    # TABLE_PRE callback the walker does not reload the entry, so it still
    # believes it points to the old level-3 table, and descends into it.
    pgt = _stage2(scheme, bugs | {"a9f0e3d5a089"})
    _logged_table(pgt, pages=2, aged=())
    s = Setup(pgt, scheme, bugs | {"a9f0e3d5a089"})
    kvm = Kvm(s, 1)
    s.cpu("vCPU0", "user_mem_abort: 2M block (collapse)", user_mem_abort_map_block, kvm, 0, IPA)
    s.region = (IPA, BLOCK)
    return s


def build_collapse_vs_hw_walk(scheme, bugs):
    pgt = _stage2(scheme, bugs)
    _logged_table(pgt)
    s = Setup(pgt, scheme, bugs)
    kvm = Kvm(s, 2)
    tlb = VcpuTlb(pgt, 1)
    s.stateful.append(tlb)
    s.opaque.append(tlb)

    def attach(machine):
        from .bbm import BbmChecker
        bbm = BbmChecker(pgt, on_violation=lambda msg: machine.violations.append(("bbm", msg)))
        s.stateful.append(bbm)
        s.opaque.append(bbm)
    if "no-bbm-tlbi" not in bugs:
        # Without the TLBI, casemate's automaton would stop every run at the
        # first make ("BBM invalid unclean->valid"), before the walk cache
        # meets the freed table: that variant runs without it.
        s.attach.append(attach)
    s.cpu("vCPU0", "user_mem_abort: 2M block (collapse)", user_mem_abort_map_block, kvm, 0, IPA)
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
    "PTE and descends into the table it just unlinked; freed at once (as pKVM "
    "does) that is a use-after-free, deferred by RCU it is harmless",
    build_stash_old_pte,
    {"none": {"use-after-free": SOMETIMES}, "rcu": {}}, cpus=1))


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


def get_scenario(name) -> Scenario:
    if isinstance(name, Scenario):
        return name
    try:
        return SCENARIOS[name]
    except (KeyError, TypeError):
        raise S2ptError(f"scenario {name!r}: unknown; choose one of {', '.join(SCENARIOS)}") from None

