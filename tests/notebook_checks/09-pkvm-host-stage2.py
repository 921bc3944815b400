# Notebook 09: the host's identity map, donation, reclaim and coalescing, isolation, and
# the two races, with the counts the prose reads off the runs.
# The idmap: 64 1G blocks, no table pages, identity
# Memory mapped at init (android15-6.6): only the UART faulted, and touching every GiB faults nowhere
assert tally[0]["table pages"] == 0 and tally[0]["host faults"] == 1
says("and the UART's fault added one more")
says("Let the host touch each of its 64 GiB once: not one of those accesses faults.")
_h0 = pkvm.Host(memory=[(BASE, 64 * GiB)])
assert _h0.leaf_sizes() == {"1G": 64} and _h0.stats["faults"] == 0
assert t.pa == BASE + 0x1234 and t.level == 1
assert [r["mapped"] for r in rows] == ["1G block", "2M block", "4K page", "2M block"]
# Donation: one TLBI per broken 1G block, annotations 0x8
assert tally[1]["TLBIs so far"] == 64 and tally[1]["pages given away"] == 10_000
says(f"Only {tally[1]['TLBIs so far']} TLBIs for 10 000 donations")
says(f"10 000 donations cost only {tally[1]['TLBIs so far']} TLBIs")
_per_gib = 10_000 / 64
assert 140 <= _per_gib < 170
says("A gigabyte with 150-odd donated pages")
assert all(host.owner(pa) == "host" for pa in guest_pages)        # all reclaimed now
assert tally[1]["table pages"] > 64
# The lazy refaults around a donated page are the first host faults since the UART's
assert tally[1]["host faults"] == 1
says("(these are the first host faults since the UART's)")
# Reclaim + coalesce: back to where the idmap started
assert tally[2]["table pages"] == tally[0]["table pages"] == 0
assert tally[2]["TLBIs so far"] - tally[1]["TLBIs so far"] >= 1000         # "thousands"
says("but reclaiming them cost thousands")
assert tally[3]["table pages"] == 0 and host.leaf_sizes() == {"1G": 65}
# One range TLBI per coalesced table, and no refault afterwards
assert host.stats["coalesced_tables"] == tally[2]["TLBIs so far"] - tally[1]["TLBIs so far"] == tally[1]["table pages"]
assert tally[3]["host faults"] == tally[2]["host faults"]
says("The price is one range TLBI per table")
says("and no refault")
assert pf.leaf_sizes() == {"1G": 1}
says("Back to 64 1G blocks (plus the UART's) and zero table pages")
assert mainline.stats["tables_live"] == peak > 0
assert pf.stats["tables_live"] == 0
# Isolation: the broken variant was caught, with a message naming the TLB
assert caught.kind == "isolation" and "TLB still holds" in str(caught)
assert host.stats["isolation_checks"] > 20_000
says("It did so more than 20 000 times above")
host.check_invariants()
# Section 4: the 64 MiB host's reclaim ends with one 1G block over its memory and the 960 MiB above
_small = pkvm.Host(memory=[(BASE, 64 * MiB)])
assert _small.leaf_sizes() == {"2M": 32} and _small.stats["tables_live"] == 1
_small.donate(BASE + 6 * MiB, 1, to="guest")
_small.reclaim(BASE + 6 * MiB, 1)
assert _small.stats["tables_live"] == 0 and _small.leaf_sizes() == {"1G": 1}
_leaf, _lvl = _small.pgt.get_leaf(BASE + 64 * MiB)
assert _lvl == 1 and _leaf & 1 and (1 << 30) - 64 * MiB == 960 * MiB
says("ends its reclaim with one 1 GiB block, which also covers the 960 MiB above its memory")
# Concurrency: hyp-lock keeps both scenarios clean, exhaustively; the
# broken variants are caught, and the BBM window is not a violation
assert don.complete and not don.kinds and coal.complete and not coal.kinds
assert don_bad.kinds == {"isolation", "stale-tlb"}
assert don_bad.found["isolation"].violation.function == "__pkvm_host_donate_guest"
assert coal_bad.kinds == {"use-after-free", "stale-tlb"}
assert "host CPU1's walk cache" in str(coal_bad.found["use-after-free"].violation)
assert ok.outcome == "done" and [v.kind for v in bad.violations] == ["stale-tlb"]
# The rwlock at EL2, as sketched: a host fault and a donation on a shared read side lose isolation
assert shared.complete and shared.kinds == {"isolation"}
assert "check-then-act" in SCENARIOS["host-fault-vs-donate-shared"].summary
says("the donation's owner annotation lands between the fault's check and its map")
# The BBM window schedule the prose steps
assert window == "1*2 0*4 1"
