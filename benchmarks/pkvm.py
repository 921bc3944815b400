"""pKVM host stage 2: break 1G blocks by donating scattered pages, take
them back, coalesce.

A 64 GiB host identity-mapped by 1G blocks (the host touches each GiB once,
so handle_host_mem_abort maps 64 blocks); a protected guest takes 100 000
scattered 4K pages (__pkvm_host_donate_guest, one page per call, as the
kernel does); the guest is torn down and the host reclaims them all
(__pkvm_host_reclaim_page, whose set-owner walk coalesces on the way up, as
Android does); finally an eager kvm_pgtable_stage2_reclaim_leaves pass over
all memory.  Target: afterwards the table pages are within 2 of what the
idmap had before any donation; the whole run in 30 s.

The per-step isolation checker is off here (it is exercised by the tests
and the notebook); the full isolation check runs once at the end.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

import s2pt  # noqa: E402
from common import peak_rss_mib, rss_mib  # noqa: E402

GiB = 1 << 30


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=int, default=64)
    ap.add_argument("--pages", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    t_start = time.perf_counter()
    rss0 = rss_mib()

    base = 0x40_0000_0000                      # 1G-aligned, as DRAM usually is
    size = args.gib * GiB
    host = s2pt.pkvm.Host(memory=[(base, size)], mmio=[(0x0900_0000, 0x1000)], check=False)
    for g in range(args.gib):
        host.access(base + g * GiB)
    before = host.stats
    assert host.leaf_sizes() == {"1G": args.gib}, host.leaf_sizes()

    rng = np.random.default_rng(args.seed)
    pfns = rng.choice(size >> 12, size=args.pages, replace=False)
    pas = (base + pfns.astype(np.int64) * 4096).tolist()

    t0 = time.perf_counter()
    for pa in pas:
        host.donate(pa, 1, to="guest")
    donate_s = time.perf_counter() - t0
    peak = host.stats["tables_live"]
    assert host.stats["owned_by_guest"] == args.pages

    donated = set(pfns.tolist())
    spare = next(p for p in range(size >> 12) if p not in donated)
    host.access(base + spare * 4096)           # the host keeps running meanwhile

    t0 = time.perf_counter()
    for pa in pas:
        host.reclaim(pa, 1)
    reclaim_s = time.perf_counter() - t0
    after_reclaim = host.stats["tables_live"]
    t0 = time.perf_counter()
    host.coalesce()
    coalesce_s = time.perf_counter() - t0
    after = host.stats
    host.check_invariants()
    for g in range(args.gib):
        host.access(base + g * GiB + 0x1234)
    refaulted = host.leaf_sizes()

    print(f"{args.gib} GiB idmap: {before['tables_live']} table pages; after donating "
          f"{args.pages} pages: {peak} ({donate_s:.2f} s); after reclaim: {after_reclaim} "
          f"({reclaim_s:.2f} s); after coalesce: {after['tables_live']} ({coalesce_s:.2f} s); "
          f"{after['coalesced_tables']} tables coalesced, {after['tlbi'] - before['tlbi']} TLBIs; "
          f"re-faulted leaves {refaulted}; total {time.perf_counter() - t_start:.1f} s",
          file=sys.stderr)
    print(json.dumps({
        "donate_seconds": round(donate_s, 3), "reclaim_seconds": round(reclaim_s, 3),
        "tables_peak": after["tables_peak"], "tables_before": before["tables_live"],
        "tables_after": after["tables_live"], "tlbi": after["tlbi"] - before["tlbi"],
        "peak_mib": round(max(peak_rss_mib() - rss0, 0), 1),
    }))


if __name__ == "__main__":
    main()
