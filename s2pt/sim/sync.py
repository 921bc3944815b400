"""Locks and RCU for simulated CPUs: the blocking operations.

The walker's operations (:mod:`s2pt.ops`) always complete.  The ones here may
have to wait, so the explorer asks :meth:`SimMachine.blocked` before it lets
a CPU perform one; a CPU whose next operation cannot proceed is *blocked*,
with a reason ("waits for kvm->mmu_lock held for write by vCPU0").

Each is one ``yield`` in a CPU program, written like the kernel::

    yield read_lock("kvm->mmu_lock")        # read_lock(&kvm->mmu_lock)
    yield rcu_read_lock()                   # from s2pt.ops
    yield from synchronize_rcu()            # two steps: start, then wait

**RCU, as the kernel guarantees it** (not as Tree RCU implements it):

* ``rcu_read_lock``/``rcu_read_unlock`` nest per CPU; a read-side critical
  section is the span from nesting 0 -> 1 back to 0.
* ``synchronize_rcu`` starts a grace period: it notes the CPUs that are
  inside a read-side section *at that moment* and then waits until each of
  those sections has ended.  A section that begins later does not delay it
  (LKMM's Grace-Period Guarantee: "a critical section can never span a full
  grace period").
* ``call_rcu(fn, ...)`` queues ``fn`` with the same snapshot; callbacks are
  invoked in the order they were queued (grace periods end in order), by a
  separate, schedulable RCU callback thread, once their readers are gone.
* ``rcu_barrier`` waits until every queued callback has been invoked: the
  explorer performs it before the end-of-run leak check.

Simplified: there is one global callback list (the kernel has one per CPU,
drained in grace-period order, which gives the same orderings here), and no
expedited grace periods or quiescent-state machinery.
"""

from __future__ import annotations

from ..errors import KernelBug, S2ptError
from ..snapshot import Stateful
from ..ops import (BLOCKING, OPS, Machine, check_effects, cpu_relax, hw_walk_start,
                   kvm_mmu_topup_memory_cache, read_lock, read_unlock, spin_lock, spin_unlock,
                   write_lock, write_unlock)

__all__ = [
    "spin_lock", "spin_unlock", "read_lock", "read_unlock", "write_lock", "write_unlock",
    "synchronize_rcu", "rcu_barrier", "kvm_mmu_topup_memory_cache", "cpu_relax", "hw_walk_start",
    "SimMachine",
    "BLOCKING",
]


# The lock, RCU and MMU operations are constructed in s2pt.ops (one op table
# for every operation); the machine below gives them their concurrent meaning.

def synchronize_rcu():
    """synchronize_rcu(): two steps, because other CPUs run in between.

    The first notes which CPUs are inside a read-side critical section now;
    the second blocks until each of those sections has ended."""
    yield ("synchronize_rcu",)
    yield ("rcu_gp_wait",)


def rcu_barrier():
    """rcu_barrier(): wait until every callback queued so far has run."""
    return ("rcu_barrier",)


def rcu_next_callback():
    """What the RCU callback thread waits on: the oldest queued callback,
    once its grace period has ended.  The result is ``(fn, args)``."""
    return ("rcu_next_callback",)


class SimMachine(Machine, Stateful):
    """A :class:`~s2pt.ops.Machine` that knows which CPU performs each
    operation, and adds locks and a faithful RCU.

    A table is built with it (``Stage2(..., machine=SimMachine)``) when the
    explorer will run it.  ``cpu`` is set by the explorer before each
    operation (a register, like the CPU number of the kernel's
    ``smp_processor_id()``), and ``vcpu_of`` maps explorer actors to the
    vCPU whose TLB a local TLBI reaches.  Violations are *recorded* in
    ``violations`` as ``(kind, message)`` instead of raised, so the explorer
    can report where they happened.

    All synchronisation state is small and immutable-valued, so that
    :meth:`sim_state` can be a hashable tuple (part of a state fingerprint)
    and :meth:`sim_restore` can restore it.
    """

    #: Per-step registers and transient records, not state (s2pt.snapshot).
    sim_ignore = ("stats", "cpu", "violations")
    #: Built with the World, from the op table and the checkers (audited
    #: against the World as built).
    sim_fixed = ("dispatch", "waits", "extensions", "observers", "pre_observers", "mem", "mmu")

    def __init__(self, mem, mmu=None, stats=None):
        self.cpu = 0
        #: explorer actor -> the vCPU index whose TLB a local TLBI reaches
        self.vcpu_of: dict = {}
        self.violations: list = []
        # lock name -> (writer cpu or None, frozenset of reader cpus)
        self.locks: dict = {}
        self.nesting: dict = {}               # cpu -> rcu_read_lock nesting (> 0 only)
        self.gp_waiters: dict = {}            # cpu in synchronize_rcu -> readers awaited
        self.callbacks: list = []             # [(readers awaited, fn, args)], queue order
        self.hw_inflight = frozenset()        # CPUs whose MMU is in the middle of a walk
        super().__init__(mem, mmu, stats)
        missing = sorted(n for n, k in OPS.items()
                         if k.wait and not callable(getattr(self, "_wait_" + k.wait, None)))
        assert not missing, (f"op table rows whose blocking rule {type(self).__name__} "
                             f"lacks: {missing}")
        #: op name -> its blocking rule (the op table's ``wait``)
        self.waits = {name: getattr(self, "_wait_" + k.wait) for name, k in OPS.items() if k.wait}

    @staticmethod
    def _effect_of(kind):
        return kind.sim

    def effects(self) -> dict:
        """The sequential machine's effects, plus what locks, RCU and the
        MMU mean when several CPUs run (the op table's ``sim_effect``)."""
        e = super().effects()
        e.update({
            "hw_read": self._hw_read(e["hw_read"]),
            "hw_walk_start": self._hw_walk_start,
            "topup": self._topup,
            "rcu_read_lock": self._rcu_read_lock,
            "rcu_read_unlock": self._rcu_read_unlock,
            "call_rcu": self._call_rcu,
            "synchronize_rcu": self._synchronize_rcu,
            "rcu_gp_wait": self._rcu_gp_wait,
            "rcu_barrier": self._nop,
            "rcu_next_callback": self._rcu_next_callback,
            "read_lock": self._read_lock, "read_unlock": self._read_unlock,
            "write_lock": self._write_lock, "write_unlock": self._write_unlock,
        })
        return e

    # -- violations ------------------------------------------------------------
    def violation(self, kind: str, message: str):
        self.violations.append((kind, message))

    def perform(self, op):
        if self.mmu is not None and op[0] == "tlbi":
            # Local TLBIs (ipa_nsh) reach only the issuing vCPU's TLB.
            self.mmu.current_vcpu = self.vcpu_of.get(self.cpu, self.cpu)
        try:
            if not self.pre_observers and not self.observers:
                return self.dispatch[op[0]](op)
            return super().perform(op)
        except KernelBug as e:
            self.violations.append((e.kind, str(e).split(": ", 1)[-1]))
        except S2ptError as e:
            # A pointer that leads outside the table pages: only reachable by
            # following garbage read from a freed page.
            self.violations.append(("use-after-free", f"{op[0]}: {e}"))
        return None

    # -- blocking ----------------------------------------------------------------
    def blocked(self, cpu: int, op) -> str | None:
        """Why ``cpu`` cannot perform ``op`` now (None: it can): the op
        table row's blocking rule."""
        rule = self.waits.get(op[0])
        return None if rule is None else rule(cpu, op)

    def _wait_write_lock(self, cpu, op):
        writer, readers = self.locks.get(op[1], (None, frozenset()))
        if writer is not None:
            return f"waits for {op[1]}, held by CPU {writer}"
        if readers:
            return f"waits for {op[1]}, held for read by CPU {_cpus(readers)}"
        return None

    def _wait_read_lock(self, cpu, op):
        writer, _ = self.locks.get(op[1], (None, frozenset()))
        if writer is not None:
            return f"waits for {op[1]}, held for write by CPU {writer}"
        return None

    def _wait_rcu_gp_wait(self, cpu, op):
        left = self.gp_waiters.get(cpu, frozenset())
        if left:
            return f"synchronize_rcu() waits for the read-side sections of CPU {_cpus(left)}"
        return None

    def _wait_rcu_next_callback(self, cpu, op):
        if not self.callbacks:
            return "no RCU callback queued"
        if self.callbacks[0][0]:
            return (f"the oldest callback waits for a grace period: CPU "
                    f"{_cpus(self.callbacks[0][0])} still in rcu_read_lock()")
        return None

    def _wait_tlbi(self, cpu, op):
        # A TLBI here is TLBI + DSB ISH (as __kvm_tlb_flush_vmid_ipa
        # does), which completes only once the translation table walks
        # in flight on other CPUs have finished.
        busy = self.hw_inflight - {cpu}
        if busy:
            return f"TLBI + DSB waits for the hardware walk in flight on CPU {_cpus(busy)}"
        return None

    def _wait_rcu_barrier(self, cpu, op):
        if self.callbacks:
            return f"rcu_barrier() waits for {len(self.callbacks)} callback(s)"
        return None

    # -- locks -------------------------------------------------------------------
    def _lock(self, name):
        return self.locks.get(name, (None, frozenset()))

    def _write_lock(self, op):
        self.locks[op[1]] = (self.cpu, frozenset())

    def _write_unlock(self, op):
        writer, readers = self._lock(op[1])
        if writer != self.cpu:
            self.violation("lock", f"{op[0]}({op[1]}) by CPU {self.cpu}, which does not hold it")
        self.locks.pop(op[1], None)

    def _read_lock(self, op):
        writer, readers = self._lock(op[1])
        self.locks[op[1]] = (None, readers | {self.cpu})

    def _read_unlock(self, op):
        writer, readers = self._lock(op[1])
        if self.cpu not in readers:
            self.violation("lock", f"read_unlock({op[1]}) by CPU {self.cpu}, which does not hold it")
        readers = readers - {self.cpu}
        if readers:
            self.locks[op[1]] = (None, readers)
        else:
            self.locks.pop(op[1], None)

    # -- memory caches -------------------------------------------------------------
    def _topup(self, op):
        return op[1].topup(op[2])

    # -- hardware walkers ----------------------------------------------------------
    def _hw_read(self, read):
        mem = self.mem
        pa_mask = ((1 << 48) - 1) & ~(mem.page_size - 1)

        def hw_read(op):
            value = read(op)
            # A table descriptor (above level 3, pointing at a table page)
            # means the walk goes on: it is in flight until it reads a leaf
            # or faults.  (At level 3, 0b11 is a page, whatever its address.)
            going_on = (value is not None and value & 3 == 3
                        and (len(op) < 3 or op[2] < 3)
                        and ((value & pa_mask) >> mem.page_shift) in mem.pages)
            if not going_on:
                self.hw_inflight = self.hw_inflight - {self.cpu}
            return value
        return hw_read

    def _hw_walk_start(self, op):
        # The MMU looks up its TLB and walk cache now (in the code that
        # follows this step): from here the walk is in flight -- unless the
        # TLB hits, when there is no walk (else the CPU would stay "in
        # flight" for good and every later TLBI would wait for it).
        if len(op) > 2 and op[2].lookup(op[1]) is not None:
            return
        self.hw_inflight = self.hw_inflight | {self.cpu}

    # -- RCU ---------------------------------------------------------------------
    def _readers(self) -> frozenset:
        return frozenset(self.nesting)

    def _rcu_read_lock(self, op):
        self.nesting[self.cpu] = self.nesting.get(self.cpu, 0) + 1

    def _rcu_read_unlock(self, op):
        cpu = self.cpu
        n = self.nesting.get(cpu, 0)
        if n == 0:
            self.violation("rcu", f"rcu_read_unlock() on CPU {cpu} without rcu_read_lock()")
            return
        if n > 1:
            self.nesting[cpu] = n - 1
            return
        del self.nesting[cpu]
        # The read-side section ended: no grace period waits for it any more.
        for w, left in list(self.gp_waiters.items()):
            if cpu in left:
                self.gp_waiters[w] = left - {cpu}
        if self.callbacks:
            self.callbacks = [(left - {cpu}, fn, args) for left, fn, args in self.callbacks]

    def _call_rcu(self, op):
        # Grace periods end in order, so a later callback also waits for
        # whatever the one before it still waits for.
        waits = self._readers()
        if self.callbacks:
            waits |= self.callbacks[-1][0]
        self.callbacks.append((waits, op[1], op[2]))

    def _synchronize_rcu(self, op):
        self.gp_waiters[self.cpu] = self._readers()

    def _rcu_gp_wait(self, op):
        self.gp_waiters.pop(self.cpu, None)

    def _rcu_next_callback(self, op):
        _, fn, args = self.callbacks.pop(0)
        return fn, args

    def _nop(self, op):
        return None

    # -- state -------------------------------------------------------------------
    def sim_state(self) -> tuple:
        """Locks, RCU nesting, grace-period waits, callback queue, walks in
        flight: hashable (the explorer's snapshot protocol)."""
        return (tuple(sorted(self.locks.items())), tuple(sorted(self.nesting.items())),
                tuple(sorted(self.gp_waiters.items())),
                tuple((w, fn, args) for w, fn, args in self.callbacks), self.hw_inflight)

    @staticmethod
    def sim_rename(s: tuple, to) -> tuple:
        """State ``s`` with every CPU ``c`` renamed ``to[c]`` (symmetry
        reduction: the same machine seen with two interchangeable CPUs
        swapped)."""
        locks, nesting, waiters, callbacks, inflight = s
        return (tuple(sorted((name, (None if w is None else to[w], frozenset(to[r] for r in rs)))
                             for name, (w, rs) in locks)),
                tuple(sorted((to[c], k) for c, k in nesting)),
                tuple(sorted((to[c], frozenset(to[x] for x in left)) for c, left in waiters)),
                tuple((frozenset(to[x] for x in w), fn, args) for w, fn, args in callbacks),
                frozenset(to[c] for c in inflight))

    def sim_signature(self, s: tuple, cpu: int) -> tuple:
        """What state ``s`` says about CPU ``cpu``, with no CPU named: the
        locks it holds and how, its RCU nesting, whether it waits for a
        grace period (and for how many CPUs), how many queued callbacks wait
        for it, and whether its MMU is mid-walk."""
        locks, nesting, waiters, callbacks, inflight = s
        return (tuple((name, "W" if w == cpu else "R") for name, (w, rs) in locks
                      if w == cpu or cpu in rs),
                dict(nesting).get(cpu, 0),
                len(dict(waiters).get(cpu, ())) if cpu in dict(waiters) else -1,
                sum(cpu in w for w, _, _ in callbacks),
                cpu in inflight)

    def sim_restore(self, s: tuple):
        self.hw_inflight = s[4]
        self.locks = dict(s[0])
        self.nesting = dict(s[1])
        self.gp_waiters = dict(s[2])
        self.callbacks = list(s[3])

    def describe_sync(self) -> str:
        """One line: who holds which lock, who is inside RCU, what waits."""
        parts = []
        for name, (writer, readers) in sorted(self.locks.items()):
            if writer is not None:
                parts.append(f"{name}: W by {writer}")
            elif readers:
                parts.append(f"{name}: R by {_cpus(readers)}")
        r = self._readers()
        if r:
            parts.append(f"rcu readers {_cpus(r)}")
        if self.callbacks:
            parts.append(f"{len(self.callbacks)} RCU callback(s) queued")
        return "; ".join(parts) or "no locks, no RCU readers"


def _cpus(s) -> str:
    return ",".join(str(c) for c in sorted(s))


check_effects(SimMachine)
