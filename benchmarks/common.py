"""What every benchmark here shares: the numpy baseline and memory readings.

Targets are ratios against a baseline measured in the same run, because the
machines these run on are shared and noisy.
"""

import os
import resource
import time

import numpy as np


def numpy_baseline(ptes: int, repeats: int = 3) -> float:
    """Best time for numpy to write ``ptes`` page descriptors into one array
    (the same arithmetic progression the model writes: PA + i * 4K | attrs)."""
    base = np.uint64(0x10_0000_0000 | 0x7FF)
    best = float("inf")
    for _ in range(repeats):
        arr = np.empty(ptes, dtype=np.uint64)
        t0 = time.perf_counter()
        np.multiply(np.arange(ptes, dtype=np.uint64), np.uint64(4096), out=arr)
        np.add(arr, base, out=arr)
        best = min(best, time.perf_counter() - t0)
        del arr
    return best


def rss_mib() -> float:
    """The process's resident memory now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """The process's peak resident memory so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
