# Notebook 02: alignment, costs, refcounts, unmap, break-before-make, collapse, ptdump.
from collections import Counter as _Counter
from s2pt.invariants import leaves as _leaves
assert aligned.get_leaf(1 * GiB)[1] == 2 and skewed.get_leaf(1 * GiB)[1] == 3
assert forced.get_leaf(1 * GiB)[1] == 3
assert not leaf_allowed(skewed, 2, 1 * GiB, 1 * GiB + 4 * MiB, 0x8_0010_0000)
assert leaf_allowed(aligned, 2, 1 * GiB, 1 * GiB + 4 * MiB, 0x8_0000_0000)
# "256 pages, one block, 256 pages" (congruent as it was mapped, before the unmaps)
_c = s2pt.Stage2(ipa_bits=40, granule=4096)
_c.map(1 * GiB + 1 * MiB, 4 * MiB, 0x8_0010_0000)
_sizes = [leaf[2] for leaf in _leaves(_c)]
assert _sizes.count(3) == 512 and _sizes.count(2) == 1
says("256 pages, one block, 256 pages")
# Costs for a 4 GiB guest, as the prose quotes them
by_label = {c[0]: c for c in costs}
assert by_label["4K, 1G blocks"][1] == 0 and by_label["4K, 2M blocks"][1] == 4
assert by_label["4K, 4K pages"][1] == 4 * 512 + 4
says(f"takes 2048 level-3 tables plus 4 level-2 tables: {by_label['4K, 4K pages'][3] // 1024} MiB of page tables")
says(f"needs just {by_label['4K, 2M blocks'][1]} level-2 tables")
says(f"with 16K the PGD itself is {by_label['16K, 32M blocks'][2]} pages")
assert by_label["16K, 16K pages"][1] == 4 * GiB // (32 * MiB)
assert by_label["64K, 64K pages"][1] == 4 * GiB // (512 * MiB)
# Refcounts: every table, every VM built here
for vm_ in (aligned, skewed, congruent, forced, vm, logged, demo):
    assert all(refcount_ok(vm_, pa) for pa in tables(vm_))
    vm_.check_invariants()
_counts = sorted(_c.mem.page_count(pa) for pa in tables(_c))
assert _counts == [4, 257, 257], _counts
says("so its count is 4. Each level-3 table holds 256 pages: 257")
# Unmap freed the emptied table; a partial unmap took the whole block
assert congruent.mem.page_of(head_table).freed
for ipa in (1 * GiB + 2 * MiB, 1 * GiB + 3 * MiB):
    try:
        congruent.translate(ipa)
        assert False, "the block should be gone"
    except s2pt.Fault as f:
        assert f.kind == "translation"
# Break-before-make replaced the page; a permission-only map changed nothing
assert vm.translate(1 * GiB).pa == 0x9_0000_0000 and vm.translate(1 * GiB).prot == "RWX"
assert [t.kind for t in vm.tlbis] == ["ipa"]
# Collapse: the old table, full, then freed by the callback with 513 put_pages
_full = s2pt.Stage2(ipa_bits=40, granule=4096)             # logged before its collapse
_full.map(1 * GiB, 2 * MiB, 0x8_0000_0000, force_pte=True)
(_l3,) = [pa for pa, lvl in tables(_full).items() if lvl == 3]
says(f"(refcount {_full.mem.page_count(_l3)})")
_puts = _Counter(s.op[0] for s in t.steps if s.op[0] == "put_page" and s.op[1] & ~0xfff == l3)
says(f"{_puts['put_page']} `put_page`s on the old table")
assert _puts["put_page"] == 513
assert logged.get_leaf(1 * GiB)[1] == 2 and logged.mem.page_of(l3).freed
assert logged.stats["tables_live"] == 1 and not logged.machine.rcu_callbacks
says(f"`tables_freed` is {logged.stats['tables_freed']}")
# ptdump merges the two blocks and leaves out the last run
dump = demo.ptdump().splitlines()
assert dump[0] == "---[ Guest IPA ]---" and any(" 4M 2 " in l and "BLK" in l for l in dump)
assert len(s2pt.ptdump.ptdump(demo, final=True).splitlines()) == len(dump) + 1
# Quiz 1: 1 GiB at IPA 0x4000_0000 backed at PA 0x8_0030_0000
_q = s2pt.Stage2(ipa_bits=40, granule=4096)
_q.map(0x4000_0000, 1 * GiB, 0x8_0030_0000)
_levels = _Counter(lvl for _, lvl in tables(_q).items())
assert _levels == {3: 512, 2: 1}, _levels
says(f"The map uses {num(len(_leaves(_q)))} pages in 512 level-3 tables, plus 1 level-2 table")
