"""Dirty logging on a 64 GiB slot of 2M blocks: eager split, dirty log, collapse.

    python benchmarks/dirty_log.py [--gib 64]

1. eager-split the slot to 4K pages when logging is enabled (16.7 M PTEs);
2. read and clear the dirty log (after the guest writes one page per 2M);
3. disable logging and collapse every block back: one guest write fault
   per 2M range, handled by user_mem_abort (the kernel's lazy collapse:
   stage2_map_walk_table_pre, then free_unlinked after the grace period).

The baseline is numpy writing the same number of descriptors into one
array, timed in the same run.  The last line printed is one JSON object.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from common import numpy_baseline, peak_rss_mib, rss_mib  # noqa: E402
from s2pt.kvm import VM  # noqa: E402




def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=int, default=64)
    args = ap.parse_args()
    size = args.gib << 30
    block = 2 << 20

    vm = VM(ipa_bits=40, eager_split_chunk=block, vcpus=1)
    slot = vm.add_memslot(1 << 36, size, backing="2M")
    vm.touch(slot.gpa, size, write=True, stride=block)   # the guest runs on 2M THP blocks
    assert vm.translate(slot.gpa + size - 1).level == 2
    rss0 = rss_mib()

    t0 = time.perf_counter()
    vm.enable_dirty_logging(slot)                  # write-protect + eager split
    split_seconds = time.perf_counter() - t0
    ptes = size // 4096
    assert vm.translate(slot.gpa + size - 4096).level == 3

    pages = vm.touch(slot.gpa + 4096, size - 4096, write=True, stride=block)
    t0 = time.perf_counter()
    dirty = vm.get_dirty_log(slot)
    cleared = vm.clear_dirty_log(slot)
    log_seconds = time.perf_counter() - t0
    assert np.count_nonzero(dirty) == cleared == pages == size // block

    vm.disable_dirty_logging(slot)
    freed0 = vm.stats["tables_freed"]
    t0 = time.perf_counter()
    fault = vm.fault
    for gpa in range(slot.gpa, slot.gpa + size, block):
        fault(gpa, write=True)          # one guest write fault per 2M: user_mem_abort
    faults = size // block
    collapse_seconds = time.perf_counter() - t0
    freed = vm.stats["tables_freed"] - freed0
    peak_mib = peak_rss_mib() - rss0
    table_mib = (vm.stats["tables_peak"] + vm.pgt.geom.pgd_pages) * 4096 / 2**20
    assert freed == size // block and vm.stats["maps"] >= faults
    assert vm.translate(slot.gpa).level == 2
    del vm

    best = numpy_baseline(ptes)

    print(f"{args.gib} GiB: eager split {split_seconds:.2f} s ({split_seconds / best:.1f}x), "
          f"dirty log read+clear {log_seconds:.2f} s, collapse by {faults} faults "
          f"{collapse_seconds:.2f} s ({collapse_seconds / best:.1f}x), {freed} tables freed; "
          f"numpy baseline {best:.3f} s; peak +{peak_mib:.0f} MiB for {table_mib:.0f} MiB of tables",
          file=sys.stderr)
    print(json.dumps({
        "split_seconds": round(split_seconds, 3), "collapse_seconds": round(collapse_seconds, 3),
        "baseline_seconds": round(best, 4), "split_ratio": round(split_seconds / best, 2),
        "collapse_ratio": round(collapse_seconds / best, 2), "peak_mib": round(peak_mib, 1),
        "table_mib": round(table_mib, 1), "log_seconds": round(log_seconds, 3),
    }))


if __name__ == "__main__":
    main()
