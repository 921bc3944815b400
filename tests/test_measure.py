"""VM.measure(): what a stretch of work cost, as counter deltas, without resetting anything."""

from __future__ import annotations

import s2pt
from s2pt.stage2 import MAX_TLBI_RANGE_PAGES

MiB, GiB = 1 << 20, 1 << 30
BASE = 1 << 30


def test_measure_counts_only_the_block():
    vm = s2pt.VM()
    slot = vm.add_memslot(BASE, 4 * MiB, backing="2M")
    vm.fault(BASE, write=True)                         # before the block: not counted
    before = dict(vm.stats)
    with vm.measure() as m:
        vm.fault(BASE + 2 * MiB, write=True)
    after = vm.stats
    assert m["faults"] == after["faults"] - before["faults"] == 1
    assert m["nothing-like-this"] == 0                 # unchanged and unknown keys read 0
    assert all(m[k] == after[k] - before.get(k, 0) for k in after if isinstance(after[k], int))
    assert vm.stats == after                           # measuring reset nothing
    assert slot.size == 4 * MiB


def test_measure_splits_tlbis_by_kind():
    # A 16 GiB slot: write-protect is flushed by range TLBIs, each at most
    # MAX_TLBI_RANGE_PAGES pages (8 GiB with 4K pages): two of them.
    # With eager splitting, each of the 8 blocks mapped is broken with a TLBI by IPA.
    vm = s2pt.VM(eager_split_chunk=2 * MiB)
    slot = vm.add_memslot(BASE, 16 * GiB, backing="2M")
    vm.touch(BASE, 16 * MiB, write=True, stride=2 * MiB)
    log_before = vm.pgt.tlbis.count
    with vm.measure() as wp:
        vm.enable_dirty_logging(slot)
    assert wp["tlbi:range"] == 16 * GiB // (MAX_TLBI_RANGE_PAGES * 4096) == 2
    assert wp["tlbi:ipa"] == 8 and wp["tables_allocated"] == 8
    assert wp.broadcast_tlbis == wp.tlbis == wp["tlbi"] == 10 and wp["tlbi:ipa_nsh"] == 0
    with vm.measure() as guest:
        vm.access(BASE + 4096, write=True)             # relax_perms: a local TLBI
    assert guest["tlbi:ipa_nsh"] == guest.tlbis == 1 and guest.broadcast_tlbis == 0
    assert guest["relax_perms"] == 1
    assert vm.pgt.tlbis.count == log_before + 11        # the log was not cleared


def test_measure_can_be_reused():
    vm = s2pt.VM()
    vm.add_memslot(BASE, 2 * MiB, backing="2M")
    m = vm.measure()
    with m:
        vm.fault(BASE)
    with m:
        pass
    assert dict(m) == {}
