"""TLB invalidation, as the kernel issues it for one VM (``struct kvm_s2_mmu``).

Every stage-2 change that could leave a stale translation cached must be
followed by a TLBI for the VM's VMID:

* ``__kvm_tlb_flush_vmid_ipa(mmu, ipa, level)`` -- one IPA, with a level
  hint (TTL); ``TLBI_TTL_UNKNOWN`` when the level is not known (unmapping a
  table entry);
* ``__kvm_tlb_flush_vmid_ipa_nsh`` -- the same, local to this CPU, used
  after relaxing permissions (a stale *stricter* entry only causes one
  more fault);
* ``kvm_tlb_flush_vmid_range(mmu, addr, size)`` -- a range; without
  FEAT_TLBIRANGE it becomes a whole-VMID flush;
* ``__kvm_tlb_flush_vmid`` -- everything for the VMID.

:class:`TlbiLog` records them in order.  Consecutive per-IPA invalidations
of neighbouring entries are stored as one run, so unmapping 16 million pages
keeps a small log while ``len(log)`` still counts every instruction.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Tlbi", "TlbiLog", "S2Mmu", "TLBI_TTL_UNKNOWN"]

TLBI_TTL_UNKNOWN = None


@dataclass(frozen=True)
class Tlbi:
    """One TLB invalidation: ``kind`` in {"ipa", "ipa_nsh", "range", "vmid"}.

    For "ipa"/"ipa_nsh", ``arg`` is the level hint (None = TTL unknown); for
    "range" it is the size in bytes.
    """

    kind: str
    addr: int
    arg: int | None
    vmid: int

    def __str__(self):
        if self.kind == "vmid":
            return f"TLBI VMALLS12E1IS vmid={self.vmid}"
        if self.kind == "range":
            return f"TLBI range vmid={self.vmid} [{self.addr:#x}, {self.addr + self.arg:#x})"
        ttl = "?" if self.arg is None else self.arg
        op = "IPAS2E1" if self.kind == "ipa_nsh" else "IPAS2E1IS"
        return f"TLBI {op} vmid={self.vmid} ipa={self.addr:#x} level={ttl}"


class TlbiLog:
    """An ordered log of TLBIs, run-length encoded.

    A run is ``[kind, first_addr, arg, count, stride]``: ``count``
    invalidations of the same kind and level at ``first_addr + i*stride``.
    """

    def __init__(self, vmid: int):
        self.vmid = vmid
        self.runs: list[list] = []
        self.count = 0

    def add(self, kind: str, addr: int, arg, count: int = 1, stride: int = 0):
        self.count += count
        if count == 1:
            stride = 0
        if self.runs:
            r = self.runs[-1]
            if r[0] == kind and r[2] == arg and kind in ("ipa", "ipa_nsh"):
                # Extend the last run when this continues its progression.
                step = addr - r[1] if r[3] == 1 else r[4]
                if step > 0 and addr == r[1] + r[3] * step and (count == 1 or stride == step):
                    r[4] = step
                    r[3] += count
                    return
        self.runs.append([kind, addr, arg, count, stride])

    def __len__(self):
        return self.count

    def __iter__(self):
        for kind, addr, arg, count, stride in self.runs:
            for i in range(count):
                yield Tlbi(kind, addr + i * stride, arg, self.vmid)

    def clear(self):
        self.runs.clear()
        self.count = 0

    def summary(self) -> dict:
        """How many TLBIs of each kind."""
        out: dict = {}
        for kind, _addr, _arg, count, _stride in self.runs:
            out[kind] = out.get(kind, 0) + count
        return out


class S2Mmu:
    """struct kvm_s2_mmu: one stage-2 context (a VMID and its tables).

    The TLBIs the walker issues land here.  The per-vCPU TLB and walk-cache
    model (dirty logging and the interleaving engine) subscribes to them.
    """

    def __init__(self, vmid: int = 1):
        self.vmid = vmid
        self.tlbi_log = TlbiLog(vmid)
        self.listeners: list = []

    def tlbi(self, kind: str, addr: int, arg):
        self.tlbi_log.add(kind, addr, arg)
        for fn in self.listeners:
            fn(kind, addr, arg)

    def tlbi_run(self, kind: str, addr: int, arg, count: int, stride: int):
        """``count`` per-IPA TLBIs at addr, addr+stride, ... (bulk paths)."""
        if count <= 0:
            return
        if self.listeners:
            for i in range(count):
                self.tlbi(kind, addr + i * stride, arg)
            return
        self.tlbi_log.add(kind, addr, arg, count, stride)
