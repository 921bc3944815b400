"""pKVM host stage 2 (issue 5): expectations computed by hand from the
kernel's rules, not from the model.

Encodings used below (4K granule):
* default memory leaf = PA | 0x7FC | valid (| TYPE at level 3):
  MEMATTR Normal (0xF << 2) | S2AP_R | S2AP_W | SH inner (3 << 8) | AF;
* default MMIO leaf = the same | XN (0b10 << 53) = 0x0040_0000_0000_07FC;
* owner annotations: FIELD_PREP(GENMASK(9, 2), id): hyp 1 -> 0x4, guest 2 -> 0x8.
"""

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import s2pt
from s2pt import pkvm

K, M, G = 1 << 10, 1 << 20, 1 << 30
PAGE = 4 * K
MEM = 0x7FC
MMIO = 0x0040_0000_0000_07FC


def snapshot(host):
    return (host.pgt.mm.snapshot(), dict(host._owner), set(host._shared),
            len(host.pgt.tlbis), {k: v for k, v in host.stats.items() if k != "isolation_checks"},
            [dict(t.entries) for t in host.cpus])


# ---------------------------------------------------------------------------
# Encodings and the identity map
# ---------------------------------------------------------------------------

def test_owner_annotation_encodings():
    host = pkvm.Host(memory=[(2 * G, 1 * G)])
    host.donate(2 * G + 5 * PAGE, 1, to="hyp")
    host.donate(2 * G + 7 * PAGE, 2, to="guest")
    assert host.pgt.get_leaf(2 * G + 5 * PAGE) == (0x4, 3)
    assert host.pgt.get_leaf(2 * G + 7 * PAGE) == (0x8, 3)
    assert host.pgt.get_leaf(2 * G + 8 * PAGE) == (0x8, 3)
    assert host.pgt.get_leaf(2 * G + 6 * PAGE) == (0, 3)       # lazily faulted back
    assert "guest" in str(s2pt.decode(0x8, 3))
    assert [host.owner(2 * G + i * PAGE) for i in (4, 5, 6, 7, 8, 9)] == \
        ["host", "hyp", "host", "guest", "guest", "host"]
    assert host.pgt.max_owner_id == 255 and s2pt.descriptor.KVM_MAX_OWNER_ID == 1


def test_default_leaf_encodings_and_identity():
    host = pkvm.Host(memory=[(2 * G, 1 * G)], mmio=[(0x0900_0000, 0x1000)])
    t = host.access(2 * G + 0x1234, write=True)
    assert (t.pa, t.level, t.prot) == (2 * G + 0x1234, 1, "RWX")
    assert host.pgt.get_leaf(2 * G) == (2 * G | MEM | 1, 1)
    t = host.access(0x0900_0010, write=True)
    # the gap [0, 2G) is "MMIO" to the kernel: a 1G block at 0, RW, XN, Normal
    assert (t.pa, t.level, t.prot) == (0x0900_0010, 1, "RW")
    assert host.pgt.get_leaf(0) == (MMIO | 1, 1)
    with pytest.raises(s2pt.Fault) as e:
        host.access(0x0900_0000, exec=True)
    assert e.value.kind == "permission"


@pytest.mark.parametrize("memory, mmio, pa, level, base", [
    # 1G-aligned memory: a 1G block
    ([(2 * G, 2 * G)], [], 3 * G + 0x5000, 1, 3 * G),
    # 2M-aligned but no whole 1G inside: a 2M block
    ([(2 * G + 2 * M, 4 * M)], [], 2 * G + 3 * M, 2, 2 * G + 2 * M),
    # an 8K region: pages only
    ([(2 * G + PAGE, 2 * PAGE)], [], 2 * G + PAGE, 3, 2 * G + PAGE),
    # a region one 2M block past a whole 1G: 1G at the start, 2M past it
    ([(1 * G, 1 * G + 2 * M)], [], 1 * G, 1, 1 * G),
    ([(1 * G, 1 * G + 2 * M)], [], 2 * G + M, 2, 2 * G),
    # MMIO in the 2M hole between two memory regions: the hole is the range
    ([(1 * G, 1 * G), (2 * G + 2 * M, 2 * M)], [(2 * G, PAGE)], 2 * G, 2, 2 * G),
    # MMIO in a 4K hole: a page
    ([(1 * G, 1 * G - PAGE), (2 * G, 2 * M)], [(2 * G - PAGE, PAGE)], 2 * G - PAGE, 3,
     2 * G - PAGE),
])
def test_adjust_range_block_sizes(memory, mmio, pa, level, base):
    """host_stage2_adjust_range() on mainline's lazy host faults (android15-6.6
    maps memory at init and coalesces after a fault: see below)."""
    host = pkvm.Host(memory=memory, mmio=mmio, coalesce=False)
    t = host.access(pa)
    assert t.level == level and t.pa == pa
    pte, lvl = host.pgt.get_leaf(pa)
    assert lvl == level and pte & host.pgt.addr_mask == base
    host.check_invariants()


def test_48_bit_host_starts_at_level_0():
    host = pkvm.Host(memory=[(0, 64 * G)], pa_bits=48)
    assert host.pgt.start_level == 0
    for g in range(64):
        assert host.access(g * G + 0x10).level == 1
    # the PGD and one level-1 table; the 512G candidate did not fit
    assert host.stats["tables_live"] == 1
    assert host.leaf_sizes() == {"1G": 64}


@pytest.mark.parametrize("coalesce, faults", [(False, 1), (True, 0)])
def test_access_repeats_hit_the_tlb(coalesce, faults):
    """Mainline faults the host's memory in lazily; android15-6.6 mapped it
    at init (prepopulate_host_stage2), so its first access only walks."""
    host = pkvm.Host(memory=[(2 * G, 1 * G)], coalesce=coalesce)
    host.access(2 * G)
    assert host.access(2 * G + 0x5000).source == "tlb"
    assert host.stats["faults"] == faults


# ---------------------------------------------------------------------------
# Donation, reclaim, coalescing
# ---------------------------------------------------------------------------

def test_donation_breaks_block_with_bbm_and_tlbi():
    host = pkvm.Host(memory=[(2 * G, 1 * G)])
    host.access(2 * G)
    n = len(host.pgt.tlbis)
    host.donate(2 * G + 3 * M + 5 * PAGE, 1, to="guest")
    new = list(host.pgt.tlbis)[n:]
    assert [(x.kind, x.addr, x.arg) for x in new] == [("ipa", 2 * G + 3 * M + 5 * PAGE, 1)]
    # the 1G block became an empty L2 table holding one L3 table
    assert host.stats["tables_live"] == 2
    assert host.leaf_sizes() == {"owned": 1}
    # the neighbours fault back lazily: pages in the broken 2M, 2M elsewhere
    assert host.access(2 * G + 3 * M + 6 * PAGE).level == 3
    assert host.access(2 * G + 100 * M).level == 2
    with pytest.raises(s2pt.Fault):
        host.access(2 * G + 3 * M + 5 * PAGE)
    assert host.stats["host_aborts"] == 1
    host.check_invariants()


def test_prefault_refills_the_broken_blocks():
    host = pkvm.Host(memory=[(2 * G, 1 * G)], prefault=True)
    host.access(2 * G)
    host.donate(2 * G + 3 * M + 5 * PAGE, 1, to="guest")
    assert host.leaf_sizes() == {"2M": 511, "4K": 511, "owned": 1}
    # default leaves are not counted: the L3 table's count is 1 + the annotation
    assert host.pgt.get_leaf(2 * G + 4 * M) == ((2 * G + 4 * M) | MEM | 1, 2)   # prefaulted 2M
    assert host.pgt.get_leaf(2 * G + 3 * M) == ((2 * G + 3 * M) | MEM | 3, 3)   # prefaulted 4K
    faults = host.stats["faults"]
    host.access(2 * G + 3 * M)
    assert host.stats["faults"] == faults        # already mapped
    host.check_invariants()
    host.reclaim(2 * G + 3 * M + 5 * PAGE, 1)
    assert host.stats["tables_live"] == 0 and host.stats["coalesced_tables"] == 2


@pytest.mark.parametrize("prefault", [False, True])
@pytest.mark.parametrize("pa_bits", [40, 48])
def test_coalescing_restores_the_pre_donation_tables(prefault, pa_bits):
    host = pkvm.Host(memory=[(1 * G, 4 * G)], pa_bits=pa_bits, prefault=prefault)
    for g in range(1, 5):
        host.access(g * G)
    before = host.stats["tables_live"]
    assert before == (1 if pa_bits == 48 else 0)
    pages = [1 * G + i * 37 * M + (i % 7) * PAGE for i in range(80)]
    for pa in pages:
        host.donate(pa, 1, to="guest")
    for pa in pages[::3]:
        host.access(pa + PAGE)          # the host faults around the holes
    assert host.stats["tables_live"] > before
    for pa in pages:
        host.reclaim(pa, 1)
    assert host.stats["tables_live"] == before
    assert host.stats["tables_allocated"] - host.stats["tables_freed"] == before
    host.check_invariants()
    for g in range(1, 5):
        assert host.access(g * G + 0x1234).level == 1
    assert host.leaf_sizes() == {"1G": 4}


def test_mainline_does_not_coalesce_until_asked():
    host = pkvm.Host(memory=[(2 * G, 1 * G)], coalesce=False)
    host.access(2 * G)
    host.donate(2 * G + 5 * PAGE, 1)
    host.reclaim(2 * G + 5 * PAGE, 1)
    assert host.stats["tables_live"] == 2
    assert host.pgt.get_leaf(2 * G + 5 * PAGE) == (0, 3)
    n = len(host.pgt.tlbis)
    assert host.coalesce() == 2
    # android15-6.6's kvm_pgtable_stage2_reclaim_leaves: kvm_tlb_flush_vmid_range
    # over each discarded table's block (FEAT_TLBIRANGE: a range TLBI)
    assert [(x.kind, x.addr, x.arg) for x in list(host.pgt.tlbis)[n:]] == \
        [("range", 2 * G, 2 * M), ("range", 2 * G, 1 * G)]
    assert host.stats["tables_live"] == 0
    host.check_invariants()


def test_hyp_donation_and_return():
    host = pkvm.Host(memory=[(2 * G, 1 * G)])
    host.donate(2 * G + 2 * M, 512, to="hyp")
    assert host.page_state(2 * G + 2 * M) == "nopage"
    assert host.page_state(2 * G + 2 * M, "hyp") == "owned"
    assert host.leaf_sizes() == {"owned": 512}
    host.reclaim(2 * G + 2 * M, 512)
    assert host.page_state(2 * G + 2 * M) == "owned"
    assert host.stats["tables_live"] == 0


def test_share_hyp_page_states():
    host = pkvm.Host(memory=[(2 * G, 1 * G)])
    host.share_hyp(2 * G)
    assert (host.page_state(2 * G), host.page_state(2 * G, "hyp")) == \
        ("shared-owned", "shared-borrowed")
    before = snapshot(host)
    with pytest.raises(s2pt.S2ptError, match="shared"):
        host.donate(2 * G, 1)
    assert snapshot(host) == before
    host.unshare_hyp(2 * G)
    host.donate(2 * G, 1)


def test_enomem_recycles_mmio_tables():
    # Mainline: a 4K MMIO hole needs an L2 and an L3 table: the whole pool.
    host = pkvm.Host(memory=[(2 * G - PAGE, PAGE), (2 * G, 2 * M)],
                     mmio=[(2 * G - 2 * PAGE, PAGE)], pool_pages=2, coalesce=False)
    assert host.access(2 * G - 2 * PAGE, write=True).level == 3
    assert host.stats["pool_free"] == 0
    # Memory in the next 1G needs an L2 table: -ENOMEM, unmap_dev_all, retry.
    assert host.access(2 * G + PAGE).level == 2
    assert host.stats["enomem_retries"] == 1 and host.stats["unmap_dev_all"] == 1
    assert host.pgt.get_leaf(2 * G - 2 * PAGE)[0] == 0
    host.check_invariants()


# ---------------------------------------------------------------------------
# Isolation
# ---------------------------------------------------------------------------

def test_isolation_catches_donation_without_tlbi():
    host = pkvm.Host(memory=[(2 * G, 1 * G)], bugs={"donate-no-tlbi"})
    host.access(2 * G, cpu=1)
    with pytest.raises(s2pt.KernelBug, match=r"CPU1's TLB still holds the level-1 block") as e:
        host.donate(2 * G + 7 * PAGE, 1, to="guest")
    assert e.value.kind == "isolation"


def test_isolation_checker_off_then_access_reaches_guest_page():
    host = pkvm.Host(memory=[(2 * G, 1 * G)], check=False, bugs={"donate-no-tlbi"})
    host.access(2 * G)
    host.donate(2 * G + 7 * PAGE, 1, to="guest")
    with pytest.raises(s2pt.KernelBug):
        host.access(2 * G + 7 * PAGE)        # served from the stale 1G TLB entry


def test_correct_donation_leaves_no_stale_translation():
    host = pkvm.Host(memory=[(2 * G, 1 * G)], cpus=4)
    for c in range(4):
        host.access(2 * G + c * M, cpu=c)
    host.donate(2 * G + 7 * PAGE, 1, to="guest")
    for c in range(4):
        with pytest.raises(s2pt.Fault):
            host.access(2 * G + 7 * PAGE, cpu=c)
    host.check_invariants()


def test_coalesce_without_tlbi_is_a_walk_cache_use_after_free():
    host = pkvm.Host(memory=[(2 * G, 1 * G)], bugs={"coalesce-no-tlbi"})
    host.access(2 * G)
    host.donate(2 * G + 7 * PAGE, 1)
    host.access(2 * G + 8 * PAGE)          # walk cache now points at the L2/L3 tables
    with pytest.raises(s2pt.KernelBug, match="walk cache"):
        host.reclaim(2 * G + 7 * PAGE, 1)


# ---------------------------------------------------------------------------
# Bad input: S2ptError, nothing changes
# ---------------------------------------------------------------------------

def _bad_host():
    host = pkvm.Host(memory=[(2 * G, 1 * G), (4 * G, 2 * M)], mmio=[(0x0900_0000, 0x1000)])
    host.access(2 * G)
    host.access(0x0900_0000)
    host.donate(2 * G + PAGE, 1, to="guest")
    host.donate(2 * G + 2 * PAGE, 1, to="hyp")
    return host


@pytest.mark.parametrize("call", [
    lambda h: h.donate(2 * G + PAGE, 1, to="guest"),          # guest owns it
    lambda h: h.donate(2 * G + 2 * PAGE, 1, to="guest"),      # hyp owns it
    lambda h: h.donate(2 * G, 3, to="hyp"),                    # part of the range is owned
    lambda h: h.reclaim(2 * G + 3 * PAGE, 1),                  # never donated
    lambda h: h.reclaim(2 * G + PAGE, 3),                      # partly never donated
    lambda h: h.donate(0x0900_0000, 1),                        # MMIO: -EPERM
    lambda h: h.donate(3 * G, 1),                              # a hole
    lambda h: h.donate(4 * G + 2 * M - PAGE, 2),               # past the end of a region
    lambda h: h.donate(2 * G + 1, 1),                          # misaligned
    lambda h: h.donate(2 * G, 0),
    lambda h: h.donate(2 * G, 1, to="host"),
    lambda h: h.donate(1 << 40, 1),
    lambda h: h.access(3 * G),                                 # nothing there
    lambda h: h.access(2 * G, cpu=9),
    lambda h: h.owner(-1),
    lambda h: h.unshare_hyp(2 * G),
])
def test_bad_input_changes_nothing(call):
    host = _bad_host()
    before = snapshot(host)
    with pytest.raises(s2pt.S2ptError):
        call(host)
    assert snapshot(host) == before


@pytest.mark.parametrize("kw", [
    dict(memory=[]), dict(memory=[(2 * G + 1, G)]), dict(memory=[(0, G), (G // 2, G)]),
    dict(memory=[(0, G)], mmio=[(G // 2, PAGE)]), dict(memory=[(0, 1 << 41)]),
    dict(memory=[(0, G)], cpus=0), dict(memory=[(0, G)], pool_pages=0),
])
def test_bad_layouts(kw):
    with pytest.raises(s2pt.S2ptError):
        pkvm.Host(**kw)


# ---------------------------------------------------------------------------
# Stateful: access / donate / reclaim against a flat ownership model
# ---------------------------------------------------------------------------

# Region A: 4M, 2M-aligned; region B: 5 pages at an odd address; MMIO between.
A, A_N = 1 * G, 1024
B, B_N = 1 * G + 6 * M + PAGE, 5
IO = 1 * G + 5 * M
PFNS = [A + i * PAGE for i in range(A_N)] + [B + i * PAGE for i in range(B_N)]
# android15-6.6 coalesces any table of default mappings into a block with the
# attributes of the walk at hand (test_66_coalescing_ignores_whose_mappings_it_merges),
# and a block that covers a hole then holds copies the host's counting rule
# counts and its refcount does not: under it each region is a whole 1G (the
# test's pages are the first 1024 of one and 5 at an odd address of the
# other), and MMIO has a 1G of its own.
A_66, B_66, IO_66 = (1 * G, 1 * G), (2 * G, 1 * G), 3 * G


class HostMachine(RuleBasedStateMachine):
    """Ownership, isolation, access attributes and sound tables, mainline
    and android15-6.6 (each on a layout it handles)."""

    @initialize(prefault=st.booleans(), coalesce=st.booleans(), cpus=st.integers(1, 3))
    def setup(self, prefault, coalesce, cpus):
        if coalesce:
            memory, self.io, self.b = [A_66, B_66], IO_66, B_66[0] + PAGE
        else:
            memory, self.io, self.b = [(A, A_N * PAGE), (B, B_N * PAGE)], IO, B
        self.pfns = [A + i * PAGE for i in range(A_N)] + [self.b + i * PAGE for i in range(B_N)]
        self.host = pkvm.Host(memory=memory, mmio=[(self.io, PAGE)],
                              prefault=prefault, coalesce=coalesce, cpus=cpus)
        self.owner = {}                                  # pa -> "guest" | "hyp"

    def _range_ok(self, pa, n):
        """Inside one memory region (what the host accepts)."""
        return any(b <= pa and pa + n * PAGE <= b + size for b, size in self.host.memory)

    @rule(i=st.integers(0, len(PFNS) - 1), write=st.booleans(), cpu=st.integers(0, 2))
    def access(self, i, write, cpu):
        pa = self.pfns[i] + 0x18
        cpu %= len(self.host.cpus)
        if self.pfns[i] in self.owner:
            with pytest.raises(s2pt.Fault):
                self.host.access(pa, write=write, cpu=cpu)
        else:
            t = self.host.access(pa, write=write, cpu=cpu)
            assert t.pa == pa and t.prot == "RWX"

    @rule(cpu=st.integers(0, 2))
    def access_mmio(self, cpu):
        t = self.host.access(self.io + 8, write=True, cpu=cpu % len(self.host.cpus))
        assert t.pa == self.io + 8 and t.prot == "RW"

    @rule(i=st.integers(0, len(PFNS) - 1), n=st.integers(1, 4),
          to=st.sampled_from(["guest", "hyp"]))
    def donate(self, i, n, to):
        pa = self.pfns[i]
        if not self._range_ok(pa, n) or any(pa + k * PAGE in self.owner for k in range(n)):
            before = snapshot(self.host)
            with pytest.raises(s2pt.S2ptError):
                self.host.donate(pa, n, to=to)
            assert snapshot(self.host) == before
            return
        self.host.donate(pa, n, to=to)
        for k in range(n):
            self.owner[pa + k * PAGE] = to

    @rule(i=st.integers(0, len(PFNS) - 1), n=st.integers(1, 3))
    def reclaim(self, i, n):
        pa = self.pfns[i]
        if not self._range_ok(pa, n) or any(pa + k * PAGE not in self.owner for k in range(n)):
            before = snapshot(self.host)
            with pytest.raises(s2pt.S2ptError):
                self.host.reclaim(pa, n)
            assert snapshot(self.host) == before
            return
        self.host.reclaim(pa, n)
        for k in range(n):
            del self.owner[pa + k * PAGE]

    @rule()
    def reclaim_everything(self):
        for pa in sorted(self.owner):
            self.host.reclaim(pa, 1)
        self.owner.clear()
        self.host.coalesce()
        # everything coalesced: no table page is left (40-bit PA: start level 1)
        assert self.host.stats["tables_live"] == 0

    @invariant()
    def matches_flat_model(self):
        if not hasattr(self, "host"):
            return
        self.host.check_invariants()
        for pa in self.pfns[::97] + sorted(self.owner):
            assert self.host.owner(pa) == self.owner.get(pa, "host")
        assert self.host.owned_pages() == sorted(self.owner)


TestHostStateful = HostMachine.TestCase
TestHostStateful.settings = settings(max_examples=100, stateful_step_count=40, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------
# android15-6.6's coalescing (issue 18, item 9), from its pgtable.c and
# mem_protect.c: the TABLE_POST of the host map walk, reclaim mapping pages
# back, reclaim_leaves and the -ENOMEM path
# ---------------------------------------------------------------------------

def test_66_prepopulates_memory_and_does_not_coalesce_at_init():
    """kvm_host_prepare_stage2 -> prepopulate_host_stage2(): every memory
    region is mapped at init, before kvm_protected_mode_initialized, so the
    level-2 table of a region that is not a whole 1G stays."""
    host = pkvm.Host(memory=[(2 * G, 4 * M)])
    assert host.protected_mode_initialized
    assert host.stats["faults"] == 0 and host.stats["tables_live"] == 1
    assert host.leaf_sizes() == {"2M": 2} and host.stats["coalesced_tables"] == 0
    lazy = pkvm.Host(memory=[(2 * G, 4 * M)], coalesce=False)      # mainline: nothing yet
    assert lazy.stats["tables_live"] == 0 and lazy.leaf_sizes() == {}


def test_66_reclaim_maps_back_and_coalesces_with_break_make_and_a_range_tlbi():
    """Reclaim (host_stage2_set_owner_locked(..., PKVM_ID_HOST)) is
    host_stage2_idmap_locked with the default prot: the map walk replaces
    the annotation, and stage2_coalesce_walk_table_post turns each table
    left with only default mappings into a block -- stage2_try_break_pte
    (LOCKED, kvm_tlb_flush_vmid_range over the block), stage2_make_pte, then
    put_page(childp), not mm_ops->free_unlinked_table."""
    host = pkvm.Host(memory=[(2 * G, 1 * G)])
    host.donate(2 * G + 3 * M + 5 * PAGE, 1, to="guest")
    assert host.stats["tables_live"] == 2
    trace = []
    host.pgt.machine.observers.append(lambda op, r: trace.append(op))
    host.reclaim(2 * G + 3 * M + 5 * PAGE, 1)
    assert host.stats["tables_live"] == 0 and host.stats["coalesced_tables"] == 2
    assert host.pgt.get_leaf(2 * G + 0x1234) == (2 * G | MEM | 1, 1)   # the 1G block, made
    names = [op[0] for op in trace]
    assert "call_rcu" not in names
    breaks = [k for k, op in enumerate(trace) if op[0] == "WRITE_ONCE"
              and op[2] == s2pt.descriptor.KVM_INVALID_PTE_LOCKED]
    assert len(breaks) == 3               # the annotation's, then the two tables'
    l2_break, l1_break = breaks[1], breaks[2]
    assert trace[l2_break + 1] == ("tlbi", "range", 2 * G + 2 * M, 2 * M)
    assert trace[l1_break + 1] == ("tlbi", "range", 2 * G, 1 * G)
    for k in (l2_break, l1_break):
        make = next(j for j in range(k, len(trace)) if trace[j][0] == "smp_store_release")
        assert trace[make][1] == trace[k][1] and trace[make + 1][0] == "put_page"
    host.check_invariants()


def test_66_reclaim_leaves_discards_with_a_range_tlbi():
    """kvm_pgtable_stage2_reclaim_leaves: kvm_clear_pte, kvm_tlb_flush_vmid_range
    over the block, put both pages; the host faults the block back."""
    host = pkvm.Host(memory=[(2 * G, 4 * M)])
    n = len(host.pgt.tlbis)
    assert host.coalesce() == 1
    assert [(x.kind, x.addr, x.arg) for x in list(host.pgt.tlbis)[n:]] == \
        [("range", 2 * G, 1 * G)]
    assert host.stats["tables_live"] == 0
    assert host.access(2 * G + M).level == 1            # refaulted, and coalesced at 1G
    host.check_invariants()


def test_66_enomem_recycles_tables_with_reclaim_leaves():
    """host_stage2_try's -ENOMEM path in android15-6.6 is
    host_stage2_unmap_unmoveable_regs: kvm_pgtable_stage2_reclaim_leaves over
    everything outside memory, which frees the tables whose count is 1 --
    here those that map the 4K memory region at 1G (their range reaches into
    the gap), from the donation's own path."""
    host = pkvm.Host(memory=[(1 * G, PAGE), (2 * G, 2 * M)], pool_pages=3)
    assert host.stats["tables_live"] == 3 and host.stats["pool_free"] == 0
    host.donate(2 * G + 5 * PAGE, 1, to="guest")        # needs a level-3 table
    assert host.stats["enomem_retries"] == 1 and host.stats["unmap_unmoveable_regs"] == 1
    assert host.stats["unmap_dev_all"] == 0
    assert host.pgt.get_leaf(1 * G) == (0, 1)           # the 1G region's tables are gone
    assert host.stats["tables_live"] == 2
    host.check_invariants()


def test_66_prefault_fills_a_split_1g_block_entirely():
    """stage2_map_prefault_block: a block above level 2 is refilled in full
    (the entry in the range too, "to make sure the prefaulting logic is
    triggered on the next stage2_map_walk_leaf()"), a 2M block all but the
    entries in the range."""
    host = pkvm.Host(memory=[(2 * G, 1 * G)], prefault=True)
    host.donate(2 * G + 3 * M + 5 * PAGE, 1, to="guest")
    assert host.leaf_sizes() == {"2M": 511, "4K": 511, "owned": 1}
    host.check_invariants()


def test_66_coalescing_ignores_whose_mappings_it_merges():
    """What android15-6.6's code does, followed by the model (not checked
    on hardware): stage2_coalesce_walk_table_post coalesces any table whose
    count is 1 -- default memory *and* default MMIO leaves are both
    uncounted -- into a block with the attributes of the walk that visits
    it.  An MMIO fault in a 4K hole at the end of a memory region turns the
    level-3 table holding the region's last 511 pages into a 2M block with
    the MMIO attributes (XN): the host can no longer execute those pages.
    (The level-2 table above stays: host_stage2_pte_is_counted counts that
    block, a memory PA with non-default attributes.)  A
    CONFIG_PKVM_STRICT_CHECKS build WARNs (debug_check_table_before_coalescing);
    mainline, which does not coalesce, keeps the memory executable."""
    layout = dict(memory=[(1 * G, 1 * G - PAGE), (2 * G, 2 * M)], mmio=[(2 * G - PAGE, PAGE)])
    host = pkvm.Host(**layout)
    mem = 2 * G - 2 * M + 0x1000                         # memory in the hole's 2M region
    assert host.access(mem, exec=True).prot == "RWX"
    assert host.pgt.get_leaf(mem)[1] == 3                # prepopulated pages
    assert host.access(2 * G - PAGE + 8, write=True).prot == "RW"     # the MMIO fault
    assert host.pgt.get_leaf(mem) == ((2 * G - 2 * M) | MMIO | 1, 2)  # coalesced: MMIO attrs
    host.pgt.flush_tlb()
    with pytest.raises(s2pt.Fault) as e:
        host.access(mem, exec=True)
    assert e.value.kind == "permission"
    assert host.access(1 * G + 0x1000, exec=True).prot == "RWX"       # elsewhere: untouched
    lazy = pkvm.Host(**layout, coalesce=False)
    lazy.access(mem)
    lazy.access(2 * G - PAGE + 8, write=True)
    lazy.pgt.flush_tlb()
    assert lazy.access(mem, exec=True).prot == "RWX"


def test_pkvm_guest_stage2_forbids_collapse():
    """android15-6.6's guest_s2_free_unlinked_table is WARN_ON(1): "We are
    trying to collapse a table into a block mapping. This is forbidden."
    The hyp-lock guest declarations say so (the direct answer to Oliver
    Upton's question whether pKVM ever collapses)."""
    from s2pt.schemes import SCHEMES
    assert "guest_s2_free_unlinked_table" in SCHEMES["hyp-lock"].__doc__
    assert "WARN_ON(1)" in SCHEMES["hyp-lock"].__doc__
