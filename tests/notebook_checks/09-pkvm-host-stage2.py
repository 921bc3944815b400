# Notebook 09: the host's identity map, donation, reclaim and coalescing, isolation, and
# the two races, with the counts the prose reads off the runs.
# The idmap: 64 1G blocks, no table pages, identity
assert tally[0]["table pages"] == 0 and tally[0]["host faults"] == 65
says("so there are 64 of them, plus the UART's")
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
# Reclaim + coalesce: back to where the idmap started
assert tally[2]["table pages"] == tally[0]["table pages"] == 0
assert tally[2]["TLBIs so far"] - tally[1]["TLBIs so far"] >= 1000         # "thousands"
says("but reclaiming them cost thousands")
assert tally[3]["table pages"] == 0 and host.leaf_sizes() == {"1G": 65}
says("Back to 64 1G blocks (plus the UART's) and zero table pages")
assert mainline.stats["tables_live"] == peak > 0
assert pf.stats["tables_live"] == 0
# Isolation: the broken variant was caught, with a message naming the TLB
assert caught.kind == "isolation" and "TLB still holds" in str(caught)
assert host.stats["isolation_checks"] > 20_000
says("It did so more than 20 000 times above")
host.check_invariants()
# Section 4: a small region drops its level-2 table too, and the next fault builds it again
_small = pkvm.Host(memory=[(BASE, 64 * MiB)])
_small.access(BASE + 0x10)
_small.donate(BASE + 6 * MiB, 1, to="guest")
_small.reclaim(BASE + 6 * MiB, 1)
assert _small.stats["tables_live"] == 0
assert _small.access(BASE + 0x10).level == 2 and _small.stats["tables_live"] == 1
says("exercise 06's 64 MiB host drops it on reclaim")
# Concurrency: hyp-lock keeps both scenarios clean, exhaustively; the
# broken variants are caught, and the BBM window is not a violation
assert don.complete and not don.kinds and coal.complete and not coal.kinds
assert don_bad.kinds == {"isolation", "stale-tlb"}
assert don_bad.found["isolation"].violation.function == "__pkvm_host_donate_guest"
assert coal_bad.kinds == {"use-after-free"}
assert "host CPU1's walk cache" in str(coal_bad.found["use-after-free"].violation)
assert ok.outcome == "done" and [v.kind for v in bad.violations] == ["stale-tlb"]
