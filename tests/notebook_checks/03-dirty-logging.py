# Notebook 03: write-protect, the missing flush, lazy and eager splits, the three modes,
# the short split cache, and the 16 GiB costs the prose reads off the table.
from s2pt.ptdump import parse_ptdump as _parse

def _leaves_of(g, s):
    return [r for r in _parse(g.pgt.ptdump(final=True))
            if r.start >= s.gpa and r.end <= s.gpa + s.size and not r.empty]

says(f"the bitmap has {len(bitmap)} bits")
# The range TLBI limit the prose states
from s2pt.stage2 import MAX_TLBI_RANGE_PAGES as _MAX
assert _MAX == 1 << 21 and _MAX * PAGE == 8 * GiB
says("(2<sup>21</sup>, so 8 GiB with 4K pages)")
# Write-protect kept the blocks; the missing flush was caught as a stale TLB entry
assert stale.kind == "stale-tlb" and not bad.get_dirty_log(bad_slot).any()
# Lazy split: an empty table, then one page at a time
assert vm.stats["lazy_splits"] == 1 and vm.stats["refaults_after_split"] == 511
says(f"{faults} more faults: 512 pages minus the three already mapped")
assert faults == 512 - 3
assert vm.translate(BASE + 6 * PAGE).prot == "RX" and vm.translate(BASE + 7 * PAGE).prot == "RWX"
assert vm.translate(BASE + 2 * MiB).level == 2                      # the unwritten block
assert vm.get_dirty_log(slot).nonzero()[0].tolist() == [5, 7]
# Eager split: every leaf of the slot is a read-only page, except those written since
recs = _leaves_of(eager, eager_slot)
assert all(r.level == 3 for r in recs) and sum(r.end - r.start for r in recs) == 4 * MiB
assert eager.stats["relax_perms"] == 4 and "lazy_splits" not in eager.stats
assert eager.get_dirty_log(eager_slot).nonzero()[0].tolist() == [9]
# Plain mode: GET clears
assert not plain.get_dirty_log(plain_slot).any()
# The one-level fallback vs the full 513-table split
assert small_chunk.stats["tables_allocated"] == 2 and big_chunk.stats["tables_allocated"] == 513
assert small_chunk.translate(4 * GiB + 2 * MiB).level == 2
assert big_chunk.translate(4 * GiB + 2 * MiB).level == 3
_pages = sum((r.end - r.start) // PAGE for r in _leaves_of(big_chunk, big_chunk.memslots[0]) if r.level == 3)
says(f"{big_chunk.stats['tables_allocated']} tables and {num(_pages)} read-only pages")
# 16 GiB: what the prose reads off the table
wl, we = runs["write-only", "lazy"], runs["write-only", "eager"]
ml, me = runs["mixed", "lazy"], runs["mixed", "eager"]
for w in ("write-only", "mixed"):
    assert runs[w, "lazy"]["dirty pages recorded"] == runs[w, "eager"]["dirty pages recorded"]
    assert runs[w, "eager"]["enable: blocks split"] == 8192
    assert runs[w, "eager"]["guest: TLBIs, broadcast"] == 0
    assert runs[w, "lazy"]["enable: TLBIs, broadcast"] == 2          # two 8 GiB range TLBIs
assert wl["guest: faults"] == we["guest: faults"] == wl["dirty pages recorded"] == 8192
says(f"one fault per block, {wl['guest: faults']} of them, and record the same {wl['dirty pages recorded']} dirty pages")
says(f"the ioctl does the {we['enable: blocks split']} splits")
says(f"each of the {ml['· lazy splits (perm. fault, L2)']} written blocks")
says(f"**refault**: {num(ml['· refaults (transl. fault, L3)'])} of them")
assert ml["guest: faults"] == 5 * me["guest: faults"] + 4
says(f"five times as many faults as eager's {me['· relax_perms (perm. fault, L3)']} `relax_perms`")
_read_only = 8192 - ml["· lazy splits (perm. fault, L2)"]
says(f"the {_read_only} blocks that were only read keep no table")
_lower = 1 - ml["peak table memory (MiB)"] / me["peak table memory (MiB)"]
says(f"peak table memory is about {round(_lower * 20) * 5}% lower")
says(f"its level-3 table, {8192 * PAGE // MiB} MiB for 16 GiB")
for g in (vm, eager, plain, small_chunk, big_chunk):
    assert g.check() == []
