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
  serial order of the same CPUs produces (the serial orders are run by the
  search layer, :func:`s2pt.sim.search.serial_outcomes`).

:func:`end_checks` gives a World these checks for one scenario and scheme;
the World itself knows none of them.

**isolation** (pKVM's security property) is checked by an observer,
:class:`IsolationChecker`, that a pKVM scenario attaches: once the hypervisor
has recorded that a page left the host, no host translation may reach it --
not through the tables, not from a host CPU's TLB, not through a walk cache
still pointing at an unlinked table.

Each :class:`~s2pt.sim.violation.Violation` carries the step, the CPU, the
kernel function on that CPU's stack and a one-sentence explanation.
"""

from __future__ import annotations

from . import descriptor as d
from .errors import KernelBug
from .invariants import check_stage2, leaves
from .ops import STORES
from .pkvm import OWNER_IDS, isolation_problems, page_owner, reach_message  # noqa: F401
from .sim.search import serial_outcomes
from .sim.violation import KINDS, Violation
from .snapshot import Stateful

__all__ = ["Violation", "KINDS", "end_checks", "quiescent_table", "LostUpdate", "ipa_map",
           "IsolationChecker", "page_owner"]


# ---------------------------------------------------------------------------
# End of run
# ---------------------------------------------------------------------------

def end_checks(scenario, scheme, bugs=frozenset()) -> tuple:
    """The end-of-run checks of ``scenario`` under ``scheme``: the quiescent
    table, and the lost-update oracle when the scenario names a region."""
    checks = [quiescent_table]
    probe = scenario.build(scheme, frozenset(bugs))
    if probe.region is not None:
        checks.append(LostUpdate(serial_outcomes(scenario, scheme, bugs, ipa_map_of,
                                                 (quiescent_table,))))
    return tuple(checks)


def quiescent_table(world) -> list:
    """Leak and refcount checks of the table after rcu_barrier()
    (:func:`s2pt.invariants.check_stage2`)."""
    pgt = world.pgt
    out = []
    try:
        check_stage2(pgt, memcaches=world.setup.memcaches)
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
            out.append(Violation.at_end(kind, problem, expl))
    return out


class LostUpdate:
    """The lost-update oracle: the final map must be one of ``outcomes``
    (what the serial orders of the same CPUs give)."""

    def __init__(self, outcomes: frozenset):
        self.outcomes = outcomes

    def __call__(self, world) -> list:
        got = ipa_map_of(world)
        if not self.outcomes or got in self.outcomes:
            return []
        return [Violation.at_end(
            "lost-update", _map_text(got),
            "the final IPA -> PA map (" + _map_text(got) + ") is not what any serial order "
            "of the same CPUs gives (" + " or ".join(_map_text(o) for o in sorted(self.outcomes))
            + ").")]


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


def ipa_map_of(world) -> tuple:
    """:func:`ipa_map` of a World's table over its scenario's region."""
    return ipa_map(world.pgt, world.setup.region)


def _map_text(m) -> str:
    if not m:
        return "nothing mapped"
    return ", ".join(f"[{s:#x}, {e:#x}) -> {pa:#x} {d.prot_of(a | 1)}" for s, e, pa, a in m)


# ---------------------------------------------------------------------------
# pKVM isolation, for the explorer
# ---------------------------------------------------------------------------

class IsolationChecker(Stateful):
    """pKVM's isolation property as an observer of the explorer's machine.

    ``owner`` (pfn -> owner id, host pages absent) is what the hypervisor
    has *recorded*, changed only by :func:`s2pt.pkvm.page_owner` steps.  The kernel
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
    ``"isolation"`` through the machine.  It attaches itself to the table's
    machine when built.
    """
    #: Only ``owner`` is state (the rest is fixed: the host, its table, the
    #: TLBs it checks and the owner ids).
    sim_ignore = ()

    def __init__(self, host, tlbs, owner=None):
        self.host = host
        self.pgt = host.pgt
        self.tlbs = list(tlbs)
        self._ids = OWNER_IDS
        src = dict(host._owner) if owner is None else dict(owner)
        self.owner = dict(sorted(src.items()))
        machine = self.pgt.machine
        machine.register("page_owner", self._page_owner)
        machine.observers.append(self._after)

    def sim_state(self):
        return tuple(self.owner.items())

    def sim_restore(self, state):
        self.owner = dict(state)

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
        if self.owner and op[0] in STORES:
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
        for msg in isolation_problems(self.pgt, self.owner, self.tlbs, self.first_nonhost_in,
                                      tuple(self.owner)):
            self.pgt.mm.violation("isolation", msg)
            return

    def access(self, cpu, translation):
        """After a host CPU's MMU translated: did it reach a page that is not
        the host's?  And may its TLB now hold one?"""
        owner = self.owner.get(translation.pa >> self.pgt.page_shift)
        if owner is not None:
            self.pgt.mm.violation("isolation", reach_message(cpu, translation.pa, owner,
                                                             translation.source))
            return
        if self.owner:
            self.check()
