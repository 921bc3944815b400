# Notebook 04: logging off, the lazy collapse and its RCU-deferred free, unmapping the
# memslot, the 16 GiB costs the prose reads off the table, free-before-TLBI.
from collections import Counter as _Counter
# Section 1, rebuilt as cell 5 built it (the split cache is gone by now)
_v = s2pt.VM(eager_split_chunk=1 * GiB)
_s = _v.add_memslot(BASE, 4 * MiB, backing="2M")
_v.touch(BASE, 4 * MiB, write=True, stride=2 * MiB)
_v.enable_dirty_logging(_s)
_used = _v.kvm_mmu_split_nr_page_tables(1 * GiB) - _v.split_page_cache.nobjs
says(f"The eager split used {_used} of the {_v.kvm_mmu_split_nr_page_tables(1 * GiB)} pages it set aside; "
     f"{_v.split_page_cache.nobjs} are still in `split_page_cache`")
# Logging off freed only the split cache; the tree was unchanged
assert vm.split_page_cache.nobjs == 0
# The lazy collapse: a block over the old table, freed after the grace period
assert vm.translate(BASE + PAGE).level == 2 and vm.translate(BASE + PAGE).prot == "RWX"
page = vm.pgt.mem.page_of(old_l3)
assert page.freed and page.free_count == 1 and not vm.pgt.machine.rcu_callbacks
_puts = sum(1 for s in t.steps if s.op[0] == "put_page" and s.op[1] & ~0xfff == old_l3)
assert _puts == 513
says(f"{_puts - 1} `put_page`s, one per page descriptor")
assert vm.translate(BASE + 2 * MiB).level == 3                     # read-only region: still pages
assert vm.pgt.mem.page_of(l3[1]).refcount == 513
says(f"still has refcount {vm.pgt.mem.page_of(l3[1]).refcount}")
# Unmapping the memslot freed everything; the guest faulted blocks back
assert all(leaf[2] == 2 for leaf in s2pt.invariants.leaves(um.pgt))
assert um.stats["tables_freed"] == 3
assert sum(1 for leaf in s2pt.invariants.leaves(um.pgt) if leaf[2] == 2) == 2
says("Two translation faults, and two 2M blocks again")
# 16 GiB: who pays, as the prose reads it off the table
lazy, unmap, fwb = costs["lazy"], costs["unmap"], costs["unmap, FWB"]
assert lazy["host: TLBIs"] == 0 and lazy["guest: faults"] == lazy["guest: TLBIs (2M range)"]
assert lazy["guest: tables freed (via call_rcu)"] + lazy["level-3 tables retained"] == 8192
says(f"Each of the {lazy['guest: faults']} regions the guest writes costs one fault")
_kept = lazy["level-3 tables retained"]
says(f"The {_kept} regions the guest only reads are never collapsed: {_kept} level-3 tables "
     f"({_kept * PAGE / MiB:.1f} MiB) and {num(lazy['4K pages at the end'])} page mappings stay")
assert unmap["host: TLBIs"] > 16 * GiB // PAGE and unmap["host: data-cache cleans"] == 16 * GiB // PAGE
says(f"the host clears {unmap['host: data-cache cleans'] / 1e6:.1f} million descriptors")
assert fwb["host: TLBIs"] < 10_000 and fwb["host: data-cache cleans"] == 0
assert fwb["host: TLBIs"] == 16 + fwb["host: tables freed"]          # a range TLBI per GiB, one per table
assert unmap["guest: faults"] == fwb["guest: faults"] == 8192 > lazy["guest: faults"]
says(f"{unmap['guest: faults']} faults against lazy's {lazy['guest: faults']}")
assert unmap["level-3 tables retained"] == fwb["level-3 tables retained"] == 0
# Free before TLBI: caught by the walk-cache model, not by the BBM checker
assert uaf.kind == "use-after-free" and "walk cache" in str(uaf) and bbm.violations == []
# The kernel's order passes both checkers
assert good_bbm.violations == [] and good_bbm.check_clean() == [] and good.check() == []
for g in (vm, um, good):
    g.pgt.check_invariants()
