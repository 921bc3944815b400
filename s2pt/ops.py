"""The operations a page-table walk performs on shared state, one ``yield`` each.

The walker and its visitors (:mod:`s2pt.pgtable`) are generator functions.
Every access to shared state is written as a ``yield`` of a small operation,
and the value sent back is the result, so the code reads like the kernel::

    old = yield READ_ONCE(ptep)
    ok = (yield cmpxchg(ptep, old, KVM_INVALID_PTE_LOCKED)) == old
    yield put_page(ptep)

Who performs the operation is up to the *driver*:

* :func:`run` (the sequential driver) performs each one immediately on a
  :class:`Machine`: that is what ``Stage2.map(...)`` does;
* the interleaving explorer runs several such generators and chooses which
  CPU performs its next operation, so every ``yield`` is a preemption point.

Because the machine performs every operation, it is the one place that sees
them all: memory reports use-after-free, the TLB log records invalidations,
and observers (checkers, traces) receive each operation as an event.

An operation is a plain tuple ``(name, *args)``; the constructors below only
give them kernel names.
"""

from __future__ import annotations

from collections import Counter

from .memory import PhysMem

__all__ = [
    "READ_ONCE", "WRITE_ONCE", "smp_store_release", "cmpxchg", "hw_read",
    "get_page", "put_page", "page_count", "get_page_unless_zero",
    "zalloc_page", "free_page", "tlbi", "dsb", "cmo", "rcu_read_lock",
    "rcu_read_unlock", "call_rcu", "Machine", "run",
]


# ---- constructors (each returns the tuple a generator yields) -------------

def READ_ONCE(ptep):
    return ("READ_ONCE", ptep)


def WRITE_ONCE(ptep, value):
    return ("WRITE_ONCE", ptep, value)


def smp_store_release(ptep, value):
    return ("smp_store_release", ptep, value)


def cmpxchg(ptep, old, new):
    """Result: the value that was in memory (== old means it succeeded)."""
    return ("cmpxchg", ptep, old, new)


def hw_read(pa, level=None):
    """A descriptor read by a vCPU's hardware page-table walker (not
    software), from a table of ``level`` when the walker knows it."""
    return ("hw_read", pa) if level is None else ("hw_read", pa, level)


def get_page(pa):
    return ("get_page", pa)


def put_page(pa):
    return ("put_page", pa)


def page_count(pa):
    return ("page_count", pa)


def get_page_unless_zero(pa):
    return ("get_page_unless_zero", pa)


def zalloc_page(mc):
    """mm_ops->zalloc_page(memcache): result is the new page's PA, or None."""
    return ("zalloc_page", mc)


def free_page(pa):
    return ("free_page", pa)


def tlbi(kind, addr=0, arg=0):
    """A TLB invalidation the kernel would issue.

    ``kind`` is "ipa" (__kvm_tlb_flush_vmid_ipa, ``arg`` = level or None for
    TLBI_TTL_UNKNOWN), "ipa_nsh" (the local variant used by relax_perms),
    "range" (kvm_tlb_flush_vmid_range, ``arg`` = size) or "vmid"
    (__kvm_tlb_flush_vmid).
    """
    return ("tlbi", kind, addr, arg)


def dsb(kind="ish"):
    return ("dsb", kind)


def cmo(kind, pa, size):
    """Cache maintenance: "dcache_clean_inval_poc" or "icache_inval_pou"."""
    return ("cmo", kind, pa, size)


def rcu_read_lock():
    return ("rcu_read_lock",)


def rcu_read_unlock():
    return ("rcu_read_unlock",)


def call_rcu(fn, *args):
    """Queue ``fn(*args)`` (a generator function) to run after a grace period."""
    return ("call_rcu", fn, args)


class Machine:
    """Performs operations: physical memory plus the per-VM TLB bookkeeping.

    ``mmu`` is the :class:`s2pt.tlb.S2Mmu` whose VMID the TLBIs target.
    ``observers`` are called as ``observer(op, result)`` after each operation
    and ``pre_observers`` as ``observer(op)`` before it (checkers that need
    the old value of a descriptor hang there).  The sequential fast path,
    with its bulk numpy runs, is used only when both lists are empty.
    """

    def __init__(self, mem: PhysMem, mmu=None):
        self.mem = mem
        self.mmu = mmu
        self.observers: list = []
        self.pre_observers: list = []
        self.stats: Counter = Counter()
        self.rcu_nesting = 0
        self.rcu_callbacks: list = []
        self.sequential_depth = 0      # > 0 while run() drives this machine
        self.draining_rcu = False      # run() is invoking queued callbacks
        m = mem
        pages, shift, mask = mem.pages, mem.page_shift, mem.page_size - 1

        # The common cases of the memory operations, inlined: a live table
        # page and an aligned address.  Anything unusual (a freed or missing
        # page, a refcount about to reach zero) takes PhysMem's own method,
        # which checks and reports it.
        def read(op):
            page = pages.get(op[1] >> shift)
            if page is None or page.freed or op[1] & 7:
                return m.read64(op[1])
            return page.table.item((op[1] & mask) >> 3)

        def hw_read(op):
            page = pages.get(op[1] >> shift)
            if page is None or page.freed or op[1] & 7:
                return m.read64(op[1], "hardware walker read")
            return page.table.item((op[1] & mask) >> 3)

        def write(op):
            page = pages.get(op[1] >> shift)
            if page is None or page.freed or op[1] & 7:
                return m.write64(op[1], op[2])
            page.table[(op[1] & mask) >> 3] = op[2]

        def cmpxchg(op):
            page = pages.get(op[1] >> shift)
            if page is None or page.freed or op[1] & 7:
                return m.cmpxchg64(op[1], op[2], op[3])
            table, i = page.table, (op[1] & mask) >> 3
            cur = table.item(i)
            if cur == op[2]:
                table[i] = op[3]
            return cur

        def get_page(op):
            page = pages.get(op[1] >> shift)
            if page is None or page.freed:
                return m.get_page(op[1])
            page.refcount += 1

        def put_page(op):
            page = pages.get(op[1] >> shift)
            if page is None or page.freed or page.refcount < 1:
                return m.put_page(op[1])
            page.refcount -= 1
            if not page.refcount:
                m.free_page(page)            # the last reference: PhysMem.put_page frees it

        def page_count(op):
            page = pages.get(op[1] >> shift)
            if page is None:
                return m.page_count(op[1])
            return page.refcount

        self.dispatch = {
            "READ_ONCE": read,
            "hw_read": hw_read,
            "WRITE_ONCE": write,
            "smp_store_release": write,
            "cmpxchg": cmpxchg,
            "get_page": get_page,
            "put_page": put_page,
            "page_count": page_count,
            "get_page_unless_zero": lambda op: m.get_page_unless_zero(op[1]),
            "zalloc_page": self._zalloc,
            "free_page": lambda op: m.free_page(m.page_of(op[1])),
            "tlbi": self._tlbi,
            "dsb": self._count_dsb,
            "cmo": self._count_cmo,
            "rcu_read_lock": self._rcu_lock,
            "rcu_read_unlock": self._rcu_unlock,
            "call_rcu": self._call_rcu,
        }

    def _count(self, op):
        self.stats[op[0] if op[0] != "cmo" else op[1]] += 1

    def _count_dsb(self, op):
        self.stats["dsb"] += 1

    def _count_cmo(self, op):
        self.stats[op[1]] += 1

    def _zalloc(self, op):
        mc = op[1]
        page = mc.alloc() if mc is not None else None
        if page is None:
            return None
        self.stats["tables_allocated"] += 1
        return page.pa

    def _tlbi(self, op):
        self.stats["tlbi"] += 1
        if self.mmu is not None:
            self.mmu.tlbi(op[1], op[2], op[3])

    def _rcu_lock(self, op):
        self.rcu_nesting += 1

    def _rcu_unlock(self, op):
        self.rcu_nesting -= 1

    def _call_rcu(self, op):
        # One CPU, no concurrent readers: the sequential driver runs the
        # callback at the next quiescent point (the end of run()).
        self.rcu_callbacks.append((op[1], op[2]))

    @property
    def watched(self) -> bool:
        return bool(self.observers or self.pre_observers)

    @property
    def bulk_ok(self) -> bool:
        """May a walk started now take the numpy bulk path?  Only inside the
        sequential driver (``run``) and only when nobody watches the steps."""
        return self.sequential_depth > 0 and not (self.observers or self.pre_observers)

    def perform(self, op):
        for obs in self.pre_observers:
            obs(op)
        result = self.dispatch[op[0]](op)
        for obs in self.observers:
            obs(op, result)
        return result


def run(gen, machine: Machine):
    """The sequential driver: perform each operation at once, to completion.

    Returns the generator's return value (a kernel-style int: 0 or -errno).
    Deferred ``call_rcu`` callbacks run afterwards: with one CPU there is no
    reader left, so the grace period has already elapsed.
    """
    send = gen.send
    result = None
    machine.sequential_depth += 1
    try:
        if machine.observers or machine.pre_observers:
            perform = machine.perform
            while True:
                result = perform(send(result))
        else:
            dispatch = machine.dispatch
            while True:
                op = send(result)
                result = dispatch[op[0]](op)
    except StopIteration as stop:
        ret = stop.value
    finally:
        machine.sequential_depth -= 1
    if not machine.draining_rcu:
        # One loop invokes the callbacks, in queue order, including those
        # that callbacks queue: a run() per callback, never nested.
        machine.draining_rcu = True
        try:
            while machine.rcu_callbacks and machine.rcu_nesting == 0:
                fn, args = machine.rcu_callbacks.pop(0)
                run(fn(*args), machine)
        finally:
            machine.draining_rcu = False
    return ret
