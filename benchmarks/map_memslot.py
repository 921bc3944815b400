"""Map a 64 GiB memslot with 4K pages (16.7 M PTEs), then translate 1 M IPAs.

    python benchmarks/map_memslot.py [--gib 64] [--translations 1000000]

The baseline is numpy writing the same number of descriptors into one
array, timed in the same run, so the ratio survives a noisy machine.
Peak memory is the growth of the process's peak RSS during the map and the
translations, compared with the bytes of the table pages themselves.
The last line printed is one JSON object.
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
import s2pt  # noqa: E402






def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=int, default=64)
    ap.add_argument("--translations", type=int, default=1_000_000)
    args = ap.parse_args()

    size = args.gib << 30
    gpa, pa = 0x80_0000_0000 >> 1, 0x10_0000_0000     # 256 GiB IPA, 64 GiB PA
    pgt = s2pt.Stage2(ipa_bits=40, granule=4096)
    rng = np.random.default_rng(0)
    ipas = (gpa + rng.integers(0, size, args.translations)).tolist()
    rss0 = rss_mib()          # after the harness's own IPA list

    t0 = time.perf_counter()
    pgt.map(gpa, size, pa, prot="RWX", force_pte=True)
    seconds = time.perf_counter() - t0
    ptes = size // 4096

    translate = pgt.translate
    t0 = time.perf_counter()
    for ipa in ipas:
        translate(ipa)
    translate_us = (time.perf_counter() - t0) / len(ipas) * 1e6
    peak_mib = peak_rss_mib() - rss0
    tables = pgt.stats["tables_live"] + pgt.geom.pgd_pages
    table_mib = tables * 4096 / 2**20

    # Spot-check the result before trusting the timing.
    t = pgt.translate(gpa + size - 1)
    assert t.pa == pa + size - 1 and t.level == 3

    del pgt
    best = numpy_baseline(ptes)

    print(f"mapped {args.gib} GiB as {ptes} PTEs in {seconds:.2f} s "
          f"({seconds / best:.1f}x numpy's {best:.3f} s); {tables} table pages "
          f"({table_mib:.0f} MiB), peak +{peak_mib:.0f} MiB; translate {translate_us:.1f} us",
          file=sys.stderr)
    print(json.dumps({
        "ptes": ptes, "seconds": round(seconds, 4), "baseline_seconds": round(best, 4),
        "ratio": round(seconds / best, 2), "peak_mib": round(peak_mib, 1),
        "table_mib": round(table_mib, 1), "translate_us": round(translate_us, 2),
    }))


if __name__ == "__main__":
    main()
