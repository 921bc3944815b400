"""The sequential fast paths against the plain code they short-cut.

* ``Machine.dispatch`` performs the common memory operations inline (a live
  page, an aligned address); anything else falls back to PhysMem's methods.
  Random operation sequences, including freed pages, missing pages,
  misaligned addresses and refcounts reaching zero, must give the same
  results, the same violations and the same memory as PhysMem's methods.
* ``VcpuTlb`` finds the victims of a TLBI from the range, with a shortcut
  when the TLBI fits in one entry's span: random fills and TLBIs must leave
  exactly the entries a brute-force overlap test leaves, and lookups must
  find the deepest entry covering the address.
"""

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import s2pt
from s2pt.errors import KernelBug, S2ptError
from s2pt.memory import PhysMem
from s2pt.ops import Machine
from s2pt.tlb import VcpuTlb

# ---------------------------------------------------------------------------
# Machine.dispatch == PhysMem's methods
# ---------------------------------------------------------------------------


def _reference_dispatch(m: PhysMem) -> dict:
    """Every memory operation through PhysMem's checked methods."""
    return {
        "READ_ONCE": lambda op: m.read64(op[1]),
        "hw_read": lambda op: m.read64(op[1], "hardware walker read"),
        "WRITE_ONCE": lambda op: m.write64(op[1], op[2]),
        "smp_store_release": lambda op: m.write64(op[1], op[2]),
        "cmpxchg": lambda op: m.cmpxchg64(op[1], op[2], op[3]),
        "get_page": lambda op: m.get_page(op[1]),
        "put_page": lambda op: m.put_page(op[1]),
        "page_count": lambda op: m.page_count(op[1]),
    }


def _world(record: bool):
    mem = PhysMem()
    pages = [mem.alloc_page() for _ in range(3)]
    for k, p in enumerate(pages):
        p.table[:4] = [k + 1, 0, 0x1234, 0]
        p.refcount = 3
    pages[2].refcount = 1
    mem.put_page(pages[2].pa)                 # freed (and poisoned)
    log = []
    if record:
        mem.violation = lambda kind, msg: log.append((kind, msg))
    return mem, [p.pa for p in pages], log


_NAMES = ["READ_ONCE", "hw_read", "WRITE_ONCE", "smp_store_release", "cmpxchg",
          "get_page", "put_page", "page_count"]


@st.composite
def _ops(draw):
    out = []
    for _ in range(draw(st.integers(1, 40))):
        name = draw(st.sampled_from(_NAMES))
        page = draw(st.integers(0, 3))           # 3: no page simulated there
        off = draw(st.sampled_from([0, 8, 16, 24, 4, 4088]))
        old = draw(st.sampled_from([0, 1, 2, 0x1234, 0xAAAA_AAAA_AAAA_AAAA]))
        new = draw(st.sampled_from([0, 7, 0x1234]))
        out.append((name, page, off, old, new))
    return out


def _run(dispatch, pas, seq):
    results = []
    for name, page, off, old, new in seq:
        pa = (pas[page] if page < 3 else pas[0] + 0x100000) + off
        op = {"WRITE_ONCE": (name, pa, new), "smp_store_release": (name, pa, new),
              "cmpxchg": (name, pa, old, new)}.get(name, (name, pa))
        try:
            results.append(("ok", dispatch[name](op)))
        except (KernelBug, S2ptError) as e:
            results.append((type(e).__name__, str(e)))
    return results


@pytest.mark.parametrize("record", [True, False])
@settings(max_examples=300, deadline=None)
@given(seq=_ops())
def test_machine_dispatch_equals_physmem_methods(record, seq):
    mem_a, pas, log_a = _world(record)
    mem_b, _, log_b = _world(record)
    fast = Machine(mem_a).dispatch
    ref = _reference_dispatch(mem_b)
    assert _run(fast, pas, seq) == _run(ref, pas, seq)
    assert log_a == log_b
    assert mem_a.snapshot() == mem_b.snapshot()
    assert [(p.refcount, p.freed, p.free_count) for p in mem_a.pages.values()] == \
        [(p.refcount, p.freed, p.free_count) for p in mem_b.pages.values()]


# ---------------------------------------------------------------------------
# VcpuTlb: invalidation and lookup against brute force
# ---------------------------------------------------------------------------

def _covers(pgt, level, base, walk):
    return pgt.granule_size[level - 1 if walk else level]


@st.composite
def _tlb_program(draw, pgt):
    steps = []
    top = 1 << 32                       # a 4 GiB window keeps collisions likely
    for _ in range(draw(st.integers(1, 60))):
        what = draw(st.sampled_from(["fill", "fill", "walk", "walk", "tlbi", "tlbi"]))
        if what == "fill":
            level = draw(st.integers(pgt.start_level, 3))
            g = pgt.granule_size[level]
            steps.append(("fill", level, draw(st.integers(0, top // g - 1)) * g,
                          draw(st.integers(1, 1 << 40))))
        elif what == "walk":
            level = draw(st.integers(pgt.start_level + 1, 3))
            g = pgt.granule_size[level - 1]
            steps.append(("walk", level, draw(st.integers(0, top // g - 1)) * g,
                          draw(st.integers(0, 7)) << pgt.page_shift))
        else:
            kind = draw(st.sampled_from(["ipa", "ipa", "range", "range", "ipa_nsh", "vmid"]))
            addr = draw(st.integers(0, top - 1))
            if kind == "range":
                size = draw(st.sampled_from([1, pgt.page_size, pgt.granule_size[2],
                                             pgt.granule_size[2] + pgt.page_size,
                                             pgt.granule_size[1], 3 * pgt.granule_size[1]]))
                addr &= ~(pgt.page_size - 1)
                steps.append(("tlbi", kind, addr, size, 0))
            else:
                steps.append(("tlbi", kind, addr, draw(st.sampled_from([None, 2, 3])),
                              draw(st.integers(0, 1))))
    return steps


def _check_tlb(tlb, pgt, leaf, walk):
    assert tlb.entries == leaf
    assert tlb.walk == walk
    assert set(tlb._fifo_leaf) == set(leaf) and set(tlb._fifo_walk) == set(walk)
    index = {}
    for (level, base), table in walk.items():
        index.setdefault(table >> pgt.page_shift, set()).add((level, base))
    assert tlb._walk_by_pfn == index


def _ci(granule):
    """A larger granule: the same property, checked in CI (``slow``); the
    developer's loop checks 4K."""
    return pytest.param(granule, marks=pytest.mark.slow)


@pytest.mark.parametrize("granule", [4096, _ci(16384), _ci(65536)])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_tlb_invalidate_and_lookup_equal_brute_force(granule, data):
    pgt = s2pt.Stage2(ipa_bits=40, granule=granule)
    tlb = VcpuTlb(pgt, 0, capacity=10**6, walk_capacity=10**6)
    leaf, walk = {}, {}                 # the reference: {(level, base): value}
    for step in data.draw(_tlb_program(pgt)):
        if step[0] == "fill":
            _, level, base, pte = step
            tlb.fill((level, base), pte)
            leaf[level, base] = pte
        elif step[0] == "walk":
            _, level, base, table = step
            tlb.fill_walk((level, base), table)
            walk[level, base] = table
        else:
            _, kind, addr, arg, other_vcpu = step
            pgt.mmu.current_vcpu = 1 if other_vcpu else 0
            tlb.invalidate(kind, addr, arg)
            if kind == "ipa_nsh" and other_vcpu:
                pass
            elif kind == "vmid":
                leaf.clear()
                walk.clear()
            else:
                lo, hi = (addr, addr + arg) if kind == "range" else (addr, addr + 1)
                # A per-IPA TLBI's level hint (TTL) limits it to leaves of
                # that level; walk-cache entries go at every level.
                hint = arg if kind != "range" else None
                for store, is_walk in ((leaf, False), (walk, True)):
                    for level, base in list(store):
                        if not is_walk and hint is not None and level != hint:
                            continue
                        span = _covers(pgt, level, base, is_walk)
                        if base < hi and base + span > lo:
                            del store[level, base]
        _check_tlb(tlb, pgt, leaf, walk)
        probe = data.draw(st.integers(0, (1 << 32) - 1), label="probe")
        hits = [(lvl, v) for (lvl, b), v in leaf.items()
                if b <= probe < b + pgt.granule_size[lvl]]
        want = max(hits, key=lambda h: h[0]) if hits else None
        got = tlb.lookup(probe)
        assert (got is None) == (want is None)
        if want is not None:
            assert got[0] == want[0] and (got[0], got[1]) in hits
        whits = [(lvl, t) for (lvl, b), t in walk.items()
                 if b <= probe < b + pgt.granule_size[lvl - 1]]
        wwant = max(whits, key=lambda h: h[0]) if whits else None
        assert tlb.lookup_walk(probe) == wwant


@pytest.mark.parametrize("granule", [4096, _ci(16384)])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_tlb_invalidate_run_equals_one_tlbi_at_a_time(granule, data):
    """S2Mmu.tlbi_run's page-stride shortcut (one pass over the range) drops
    exactly what ``count`` separate per-IPA TLBIs with the same level hint
    drop, for every hint."""
    pgt = s2pt.Stage2(ipa_bits=40, granule=granule)
    fast = VcpuTlb(pgt, 0, capacity=10**6, walk_capacity=10**6)
    slow = VcpuTlb(pgt, 1, capacity=10**6, walk_capacity=10**6)
    pgt.mmu.listeners.remove(slow.invalidate)
    top = 1 << 30
    for _ in range(data.draw(st.integers(1, 40))):
        level = data.draw(st.integers(pgt.start_level, 3))
        g = pgt.granule_size[level]
        base = data.draw(st.integers(0, top // g - 1)) * g
        for t in (fast, slow):
            t.fill((level, base), 1)
        wlevel = data.draw(st.integers(pgt.start_level + 1, 3))
        wg = pgt.granule_size[wlevel - 1]
        wbase = data.draw(st.integers(0, top // wg - 1)) * wg
        for t in (fast, slow):
            t.fill_walk((wlevel, wbase), 0x1000)
    ps = pgt.page_size
    addr = data.draw(st.integers(0, top // ps - 1)) * ps
    count = data.draw(st.integers(0, 3 * pgt.ptrs_per_pte))
    hint = data.draw(st.sampled_from([None, 1, 2, 3]))
    pgt.mmu.tlbi_run("ipa", addr, hint, count, ps)
    for i in range(count):
        slow.invalidate("ipa", addr + i * ps, hint)
    assert fast.entries == slow.entries and fast.walk == slow.walk


def test_tlb_eviction_keeps_capacity_and_index():
    pgt = s2pt.Stage2(ipa_bits=40)
    tlb = VcpuTlb(pgt, 0, capacity=4, walk_capacity=3)
    g2, g3 = pgt.granule_size[2], pgt.granule_size[3]
    for i in range(50):
        tlb.fill((3, i * g3), i + 1)
        tlb.fill_walk((3, (i % 7) * g2), (i % 5) << pgt.page_shift)
        assert tlb._n_leaf <= 4 and tlb._n_walk <= 3
        _check_tlb(tlb, pgt, tlb.entries, tlb.walk)
    # First in, first out, exactly: the four newest leaves, the three newest
    # walk-cache entries.
    assert set(tlb.entries) == {(3, i * g3) for i in range(46, 50)}
    assert set(tlb.walk) == {(3, k * g2) for k in (5, 6, 0)}


def test_tlb_eviction_of_one_kind_never_strands_the_other():
    """Leaves and walk-cache entries have separate capacities and separate
    fill orders: evicting walk-cache entries must not lose track of leaves
    (each entry stays evictable), and a snapshot restores exactly."""
    pgt = s2pt.Stage2(ipa_bits=40)
    tlb = VcpuTlb(pgt, 0, capacity=3, walk_capacity=2)
    g2, g3 = pgt.granule_size[2], pgt.granule_size[3]
    tlb.fill((3, 0), 1)
    for i in range(10):                        # only walk-cache pressure
        tlb.fill_walk((3, i * g2), 1 << pgt.page_shift)
    for i in range(1, 6):                      # now leaf pressure: (3, 0) goes first
        tlb.fill((3, i * g3), i + 1)
        assert len(tlb.entries) == min(i + 1, 3) == tlb._n_leaf
    assert set(tlb.entries) == {(3, i * g3) for i in (3, 4, 5)}
    snap = tlb.sim_state()
    other = VcpuTlb(pgt, 1, capacity=3, walk_capacity=2)
    other.sim_restore(snap)
    assert (other.entries, other.walk, other.sim_state()) == (tlb.entries, tlb.walk, snap)
    _check_tlb(other, pgt, tlb.entries, tlb.walk)
    other.fill((3, 9 * g3), 10)                # the restored order evicts the same entry
    tlb.fill((3, 9 * g3), 10)
    assert other.entries == tlb.entries and (3, 3 * g3) not in tlb.entries


# ---------------------------------------------------------------------------
# hw_translate_now == run(hw_translate)
# ---------------------------------------------------------------------------

def _mmu_world(prog, granule):
    """A table built from ``prog``, a vCPU TLB, and a violation log."""
    from s2pt.ops import run
    from s2pt.tlb import hw_translate
    pgt = s2pt.Stage2(ipa_bits=40, granule=granule)
    log = []
    pgt.mm.violation = lambda kind, msg: log.append((kind, msg))
    tlb = VcpuTlb(pgt, 0, capacity=6, walk_capacity=4)      # small: evictions happen
    blk = pgt.granule_size[2]
    for what, k, n in prog:
        ipa, size = 0x4000_0000 + k * blk, n * blk
        if what == "map":
            pgt.map(ipa, size, 0x8_0000_0000 + k * blk)
        elif what == "pages":
            pgt.map(ipa, size, 0x8_0000_0000 + k * blk, force_pte=True)
        elif what == "ro":
            pgt.map(ipa, size, 0x8_0000_0000 + k * blk, prot="R")
        elif what == "unmap":
            pgt.unmap(ipa, size)
        elif what == "old":
            pgt.test_clear_young(ipa, size)
        elif what == "fill":                     # the MMU walks and caches
            run(hw_translate(tlb, ipa + 5 * pgt.page_size), pgt.machine)
        elif what == "tlbi":
            pgt.flush_tlb(ipa, size)
    return pgt, tlb, log


def _outcome(r):
    if isinstance(r, s2pt.Fault):
        return ("fault", r.kind, r.level, r.ipa, r.write, r.exec, r.reason)
    return ("ok", r)


_MMU_PROG = st.lists(st.tuples(st.sampled_from(["map", "pages", "ro", "unmap", "old", "fill",
                                                "fill", "tlbi"]),
                               st.integers(0, 7), st.integers(1, 3)), max_size=12)


@pytest.mark.parametrize("granule", [4096, _ci(65536)])
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prog=_MMU_PROG, accesses=st.lists(st.tuples(st.integers(0, 10 * 512 - 1),
                                                   st.sampled_from(["r", "w", "x"])),
                                         min_size=1, max_size=12))
def test_hw_translate_now_equals_the_generator(granule, prog, accesses):
    from s2pt.ops import run
    from s2pt.tlb import hw_translate, hw_translate_now
    a, tlb_a, log_a = _mmu_world(prog, granule)
    b, tlb_b, log_b = _mmu_world(prog, granule)
    for page, kind in accesses:
        ipa = 0x4000_0000 + page * a.page_size + 0x18
        w, x = kind == "w", kind == "x"
        ra = run(hw_translate(tlb_a, ipa, w, x), a.machine)
        rb = hw_translate_now(tlb_b, ipa, w, x)
        assert _outcome(ra) == _outcome(rb)
        assert (tlb_a.entries, tlb_a.walk, tlb_a.hits, tlb_a.misses, tlb_a.sim_state()) == \
            (tlb_b.entries, tlb_b.walk, tlb_b.hits, tlb_b.misses, tlb_b.sim_state())
        assert log_a == log_b
    assert a.mm.snapshot() == b.mm.snapshot()


def test_hw_translate_now_reports_a_walk_into_a_freed_table():
    """A walk-cache entry left pointing at a freed table (the missing-TLBI
    bug): both walkers read the freed page and report it the same way."""
    from s2pt.ops import run
    from s2pt.tlb import hw_translate, hw_translate_now
    logs = []
    for now in (False, True):
        pgt, tlb, log = _mmu_world([("pages", 0, 1), ("fill", 0, 1)], 4096)
        pgt.mmu.listeners.remove(tlb.invalidate)          # the TLBIs never reach this TLB
        pgt.unmap(0x4000_0000, pgt.granule_size[2])       # frees the level-3 table
        ipa = 0x4000_0000 + 9 * pgt.page_size
        r = hw_translate_now(tlb, ipa) if now else run(hw_translate(tlb, ipa), pgt.machine)
        logs.append((_outcome(r), [k for k, _ in log]))
    assert logs[0] == logs[1]
    assert "use-after-free" in logs[0][1]
