"""What counts as a bug in an interleaving, and how it is explained.

Most checks are not here, because the one who performs an operation is the
one who notices: memory reports a use-after-free (any access to a freed table
page, by software or by a vCPU's hardware walker, or a walk cache still
pointing into a page being freed) and a double free; the TLB model reports a
stale translation; the BBM checker (:mod:`s2pt.bbm`) reports casemate's
break-before-make errors; the explorer's machine reports lock misuse; the
walker's ``WARN_ON``\\ s are recorded.  The scheduler sees a **deadlock** (no
CPU can step, some have not finished) and a **livelock** (the step bound was
exceeded).

At the end of a run, after ``rcu_barrier()``, :func:`end_of_run` checks the
quiescent table (reusing :mod:`s2pt.invariants`):

* **leak**: every table page is reachable from the root or free, exactly once
  (the bug f6a27d6dc51b fixed);
* **refcount**: each table's ``page_count`` is 1 + its counted entries, and
  no entry is still ``KVM_INVALID_PTE_LOCKED``;
* **lost-update**: the final IPA -> PA map (with permissions and memory type,
  but not the access flag, whose loss the kernel accepts) is one that some
  serial order of the same CPUs produces.

**isolation** (pKVM's security property) is checked by an observer,
:class:`IsolationChecker`, that a pKVM scenario attaches: once the hypervisor
has recorded that a page left the host, no host translation may reach it --
not through the tables, not from a host CPU's TLB, not through a walk cache
still pointing at an unlinked table.

Each :class:`Violation` carries the step, the CPU, the kernel function on
that CPU's stack and a one-sentence explanation.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from . import descriptor as d
from .errors import KernelBug
from .invariants import check_stage2, leaves

__all__ = ["Violation", "KINDS", "end_of_run", "ipa_map", "serial_outcomes",
           "IsolationChecker", "page_owner"]

#: Every kind of violation the explorer can report, with what it means.
KINDS = {
    "use-after-free": "an access to a freed table page (software, hardware walker or walk cache)",
    "double-free": "a table page freed twice",
    "leak": "after rcu_barrier(), a table page neither reachable nor free",
    "refcount": "at quiescence, a table's page_count is not 1 + its counted entries, "
                "or an entry is still LOCKED",
    "lost-update": "the final IPA -> PA map is not one any serial order gives",
    "bbm": "a break-before-make violation (casemate's automaton)",
    "stale-tlb": "a translation served from a TLB entry the tables no longer grant",
    "isolation": "a host translation (tables, TLB or walk cache) reaches a page the pKVM "
                 "host gave away, after the hypervisor recorded the new owner",
    "deadlock": "no CPU can make progress, but not all have finished",
    "livelock": "the step bound was exceeded",
    "warn": "a WARN_ON in the walker fired",
    "lock": "a lock released by a CPU that does not hold it",
    "rcu": "unbalanced rcu_read_unlock()",
}

_PAGE = re.compile(r"(?:table page|page) (0x[0-9a-f]+)")


@dataclass
class Violation:
    """One bug found in one run."""
    kind: str
    message: str
    step: int | None = None          # event index (None: end-of-run check)
    cpu: int | None = None
    actor: str = ""
    function: str = ""               # innermost kernel function on the CPU's stack
    stack: tuple = ()
    explanation: str = ""

    def __str__(self):
        where = f" at step {self.step} on {self.actor} in {self.function}()" if self.step is not None else ""
        return f"{self.kind}{where}: {self.explanation}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "message": self.message, "step": self.step, "cpu": self.cpu,
                "actor": self.actor, "function": self.function, "explanation": self.explanation}

    # -- constructors -----------------------------------------------------------
    @classmethod
    def at_step(cls, world, ev, kind: str, message: str) -> "Violation":
        actor = world.actors[ev.cpu].name
        fn = ev.stack[-1] if ev.stack else "?"
        return cls(kind, message, ev.index, ev.cpu, actor, fn, ev.stack,
                   _explain(world, ev, kind, message, actor, fn))

    @classmethod
    def deadlock(cls, world) -> "Violation":
        waits = [f"{world.actors[i].name} {world.blocked(i)}" for i in world.live()]
        return cls("deadlock", "; ".join(waits), world.nsteps - 1, None, "", "", (),
                   "no CPU can make progress: " + "; ".join(waits) + ".")

    @classmethod
    def livelock(cls, world, ev) -> "Violation":
        return cls("livelock", f"{world.nsteps} steps", ev.index, ev.cpu,
                   world.actors[ev.cpu].name, ev.stack[-1] if ev.stack else "?", ev.stack,
                   f"the run exceeded the bound of {world.max_steps} steps without finishing: "
                   f"likely a CPU spinning or retrying forever.")


def _explain(world, ev, kind, message, actor, fn) -> str:
    if kind in ("use-after-free", "double-free"):
        m = _PAGE.search(message)
        page = int(m.group(1), 16) if m else None
        who = ""
        if page is not None:
            freed = world.frees.get(page >> world.pgt.page_shift)
            if freed is not None and freed[0] != ev.index:
                who = (f", which {world.actors[freed[1]].name} freed at step {freed[0]} "
                       f"(in {freed[2]}())")
        what = ev.op[0]
        if kind == "double-free":
            return f"{actor} ({fn}) freed table page {page:#x} again{who}." if page else \
                f"{actor} ({fn}): {message}."
        if "walk cache" in message:
            return f"{actor} ({fn}) freed a table page that a vCPU's walk cache still points to: {message}."
        if page is None:
            return f"{actor} ({fn}) followed a pointer read from freed memory: {message}."
        verb = {"hw_read": "its MMU read an entry of", "READ_ONCE": "read an entry of",
                "cmpxchg": "did a cmpxchg on an entry of", "WRITE_ONCE": "wrote an entry of",
                "get_page": "took a reference on", "put_page": "dropped a reference on",
                "smp_store_release": "wrote an entry of"}.get(what, f"did {what} on")
        return (f"{actor} ({fn}) {verb} table page {page:#x}{who}: it still held a pointer "
                f"into a subtree that had been unlinked and freed.")
    if kind == "warn":
        return f"WARN_ON in {fn}() on {actor}: {message}."
    return f"{actor} ({fn}): {message}."


# ---------------------------------------------------------------------------
# End of run
# ---------------------------------------------------------------------------

def end_of_run(world) -> list:
    """The quiescent checks, after every CPU finished and rcu_barrier()."""
    pgt = world.pgt
    out = []
    if world.machine.callbacks:
        out.append(Violation("leak", "RCU callbacks still queued after rcu_barrier()",
                             explanation="rcu_barrier() returned with callbacks still queued."))
    pgt.memcaches = list(world.setup.memcaches)
    try:
        check_stage2(pgt)
    except KernelBug as e:
        text = str(e).split(": ", 1)[-1]
        for problem in text.split("; "):
            if "a leak" in problem:
                kind = "leak"
                expl = (problem.replace(": a leak", "") +
                        " after rcu_barrier(): nothing will ever free it (a leak).")
            elif "use-after-free" in problem or "freed page" in problem:
                kind, expl = "use-after-free", problem + "."
            else:
                kind, expl = "refcount", problem + " at quiescence."
            out.append(Violation(kind, problem, explanation=expl))
    if not getattr(world, "serial", False) and world.setup.region is not None:
        outcomes = serial_outcomes(world.scenario, world.scheme.name, world.setup.bugs)
        got = ipa_map(pgt, world.setup.region)
        if outcomes and got not in outcomes:
            out.append(Violation(
                "lost-update", _map_text(got),
                explanation=("the final IPA -> PA map (" + _map_text(got) + ") is not what any "
                             "serial order of the same CPUs gives (" +
                             " or ".join(_map_text(o) for o in sorted(outcomes)) + ").")))
    return out


_ATTR_MASK = ((d.KVM_PTE_LEAF_ATTR_LO | d.KVM_PTE_LEAF_ATTR_HI)
              & ~d.KVM_PTE_LEAF_ATTR_LO_S2_AF & ~d.KVM_PTE_LEAF_ATTR_HI_SW)


def ipa_map(pgt, region) -> tuple:
    """The valid mappings in ``region = (ipa, size)`` as merged runs
    ``(ipa, end, pa, attributes)``: a 2M block and 512 pages that map the
    same memory with the same attributes compare equal.  AF is ignored."""
    lo, hi = region
    hi += lo
    runs = []
    for ipa, size, level, pte in leaves(pgt):
        if not pte & 1 or ipa + size <= lo or ipa >= hi:
            continue
        pa = (pte & pgt.addr_mask) & ~(size - 1)
        attr = pte & _ATTR_MASK
        s, e = max(ipa, lo), min(ipa + size, hi)
        pa += s - ipa
        if runs and runs[-1][1] == s and runs[-1][3] == attr and runs[-1][2] + (s - runs[-1][0]) == pa:
            runs[-1] = (runs[-1][0], e, runs[-1][2], attr)
        else:
            runs.append((s, e, pa, attr))
    return tuple(runs)


def _map_text(m) -> str:
    if not m:
        return "nothing mapped"
    return ", ".join(f"[{s:#x}, {e:#x}) -> {pa:#x} {d.prot_of(a | 1)}" for s, e, pa, a in m)


_SERIAL: dict = {}


def serial_outcomes(scenario, scheme: str, bugs=frozenset()) -> frozenset:
    """The final maps of every serial order of the scenario's CPUs (each
    runs to completion before the next starts; RCU callbacks run at the
    end).  Orders that hit a violation contribute nothing."""
    key = (scenario.name, scheme, frozenset(bugs))
    if key in _SERIAL:
        return _SERIAL[key]
    from .sim.world import World
    probe = World(scenario, scheme, bugs, record=False)
    cpus = [i for i, a in enumerate(probe.actors) if not a.daemon]
    out = set()
    for order in itertools.permutations(cpus):
        w = World(scenario, scheme, bugs, record=False)
        w.serial = True
        rank = {c: k for k, c in enumerate(order)}

        def policy(world, enabled, rank=rank):
            return min(enabled, key=lambda c: rank.get(c, len(rank)))

        w.run((), policy)
        if w.outcome == "done" and not w.violations:
            out.add(ipa_map(w.pgt, w.setup.region))
    _SERIAL[key] = frozenset(out)
    return _SERIAL[key]


# ---------------------------------------------------------------------------
# pKVM isolation, for the explorer
# ---------------------------------------------------------------------------

def page_owner(pa: int, owner: str, kernel: str):
    """The hypervisor records that the page at ``pa`` now belongs to
    ``owner`` ("host", "guest" or "hyp"): hyp_vmemmap's host_state (pKVM's
    ``__host_update_page_state``), or, for a reclaim, the guest's loss of the
    page.  ``kernel`` names the step in diagrams.  Performed by the
    :class:`IsolationChecker` attached to the machine."""
    from .pkvm import OWNER_IDS
    if owner not in OWNER_IDS:
        from .errors import S2ptError
        raise S2ptError(f"page_owner: owner={owner!r} is not one of {', '.join(OWNER_IDS)}")
    return ("page_owner", pa, owner, kernel)


class IsolationChecker:
    """pKVM's isolation property as an observer of the explorer's machine.

    ``owner`` (pfn -> owner id, host pages absent) is what the hypervisor
    has *recorded*, changed only by :func:`page_owner` steps.  The kernel
    records a donation after the stage-2 maintenance (the owner annotation
    written, the break-before-make TLBI and its DSB done, all inside
    ``host_stage2_set_owner_locked``), so from that step on -- and certainly
    once ``__pkvm_host_donate_guest`` has returned -- the property must hold:

    * at the ``page_owner`` step and after every descriptor store, the
      tables, every host CPU's TLB and walk cache (``tlbs``) are checked
      with :func:`s2pt.pkvm.isolation_problems`, the rule the sequential
      ``Host`` uses;
    * a host CPU program calls :meth:`access` after each translation, which
      checks the PA it reached and the TLB it may have just filled.

    Before the record, the host may still use the old block (the BBM window):
    the page is still its own.  Violations are reported as kind
    ``"isolation"`` through ``pgt.mm.violation``.
    """
    #: Only ``owner`` is state (see s2pt.sim.search._fields).
    _sim_ignore = ("host", "pgt", "tlbs", "_ids")

    def __init__(self, host, tlbs, owner=None):
        from .pkvm import OWNER_IDS
        self.host = host
        self.pgt = host.pgt
        self.tlbs = list(tlbs)
        self._ids = OWNER_IDS
        src = dict(host._owner) if owner is None else dict(owner)
        self.owner = dict(sorted(src.items()))

    def attach(self, machine):
        """Register the page_owner operation and watch descriptor stores."""
        machine.dispatch["page_owner"] = self._page_owner
        machine.observers.append(self._after)

    # -- the operation and the observer -------------------------------------------
    def _page_owner(self, op):
        pa, who = op[1], op[2]
        pfn = pa >> self.pgt.page_shift
        owner = dict(self.owner)
        if self._ids[who] == self._ids["host"]:
            owner.pop(pfn, None)
        else:
            owner[pfn] = self._ids[who]
        self.owner = dict(sorted(owner.items()))
        self.check()

    def _after(self, op, result):
        if self.owner and op[0] in _STORES:
            self.check()

    # -- checks ---------------------------------------------------------------------
    def first_nonhost_in(self, pa: int, size: int):
        shift = self.pgt.page_shift
        lo, hi = pa >> shift, (pa + size) >> shift
        for pfn in self.owner:
            if lo <= pfn < hi:
                return pfn << shift
        return None

    def check(self):
        from .pkvm import isolation_problems
        for msg in isolation_problems(self.pgt, self.owner, self.tlbs, self.first_nonhost_in,
                                      tuple(self.owner)):
            self.pgt.mm.violation("isolation", msg)
            return

    def access(self, cpu, translation):
        """After a host CPU's MMU translated: did it reach a page that is not
        the host's?  And may its TLB now hold one?"""
        from .pkvm import reach_message
        owner = self.owner.get(translation.pa >> self.pgt.page_shift)
        if owner is not None:
            self.pgt.mm.violation("isolation", reach_message(cpu, translation.pa, owner,
                                                             translation.source))
            return
        if self.owner:
            self.check()


_STORES = frozenset({"WRITE_ONCE", "smp_store_release", "cmpxchg"})
