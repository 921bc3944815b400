"""Litmus-style scenarios: a few CPUs, a tiny table, declared outcomes.

A scenario (:class:`Scenario`) builds a small VM (:mod:`s2pt.kvm`) or pKVM
host (:mod:`s2pt.pkvm`), brings its stage-2 table into a known state with
its own operations, then gives each CPU one kernel path to run, stepped one
shared access at a time by the explorer:

* :mod:`s2pt.scenarios.guest`: a guest's stage 2 under ``kvm->mmu_lock``
  (the collapse, unmap, split, map and ABA races), whose vCPUs run the VM's
  own fault paths;
* :mod:`s2pt.scenarios.pkvm`: pKVM's host stage 2 at EL2 under hyp-lock
  (donation, reclaim and coalescing against a host CPU's MMU), and the
  thread's rwlock question asked of it (``host-fault-vs-donate-shared``).

For every scheme a scenario declares which kinds of violation are expected
**Sometimes** (some interleaving shows it) -- every other kind is expected
**Never** -- or why it does not declare the scheme.  Those declarations are
one table, :data:`s2pt.scenarios.declarations.DECLARATIONS`, whose
completeness (every scenario x every scheme of :data:`s2pt.schemes.SCHEMES`)
is checked when this module is imported; each scenario's ``expect``,
``why_not``, ``expected()`` and ``check_scheme()`` come from it.
``python -m s2pt scenarios`` lists them and ``tests/test_explorer.py``
checks every declaration exhaustively.  The guest scenarios declare
``hyp-lock`` too, as a question: what if KVM guarded a guest's stage 2 with
pKVM's lock?  (pKVM's own guest stage 2 forbids the collapses they make:
android15-6.6's guest_s2_free_unlinked_table is WARN_ON(1); see
s2pt.schemes.HypLockScheme.)

:data:`MUTATIONS` are deliberately broken variants the explorer must catch;
:data:`BUGS` (:mod:`s2pt.bugs`) the bugs a scenario can switch back on.
"""

from __future__ import annotations

from .. import bugs as _bugs
from ..errors import S2ptError
from ..schemes import SCHEMES
from ..sim.violation import KINDS
from . import declarations, guest, pkvm
from .declarations import DECLARATIONS
# The builders and their helpers, for the course and the tests (re-exported).
from .guest import (ABA_SAME, BLOCK, IPA, PAGE, ROM, _fault, _logged_table,  # noqa: F401
                    _one_page_short, _setup, _vm, build_aba_table_reuse,
                    build_aba_table_reuse_same, build_collapse_vs_commit,
                    build_collapse_vs_fault, build_collapse_vs_hw_walk, build_collapse_vs_map,
                    build_collapse_vs_readers, build_logging_mismatch, build_map_vs_map,
                    build_split_double_put, build_split_vs_fault, build_stash_old_pte,
                    build_unmap_vs_collapse, build_unmap_vs_fault)
from ..kvm import (clear_dirty_log_split, guest_accesses, guest_fault, guest_faults,  # noqa: F401
                   kvm_arch_commit_memory_region, kvm_mmu_split_huge_pages, kvm_unmap_gfn_range)
from .pkvm import (NEIGHBOUR, OTHER, OUTSIDE, PKVM_BASE, VICTIM, PkvmHost,  # noqa: F401
                   build_coalesce_vs_host_fault, build_donate_vs_host_access,
                   build_host_fault_vs_donate_shared)
from .scenario import NEVER, SOMETIMES, Mutation, Scenario

__all__ = ["Scenario", "SCENARIOS", "get_scenario", "BUGS", "SOMETIMES", "NEVER", "Mutation",
           "MUTATIONS", "ABA_SAME", "WINDOWS", "DECLARATIONS", "table_problems"]

#: Every bug a scenario can switch back on (s2pt.bugs: name -> Bug).
BUGS = _bugs.BUGS


def table_problems(table: dict, scenarios, schemes) -> list:
    """What is wrong with a declaration table (:data:`DECLARATIONS`'s
    form) for these scenarios and schemes: a scenario without a row or a
    row without a scenario, a scheme without a cell or a cell without a
    scheme, a kind that is not a violation kind, an empty why-not."""
    out = []
    names = [sc.name for sc in scenarios]
    out += [f"scenario {n!r} has no row in the declaration table" for n in names
            if n not in table]
    out += [f"row {n!r}: no such scenario" for n in table if n not in names]
    for n, row in table.items():
        if not isinstance(row, dict):
            out.append(f"row {n!r}: {row!r} is not {{scheme: kinds or why-not}}")
            continue
        out += [f"{n} x {s}: not declared, and no reason why not" for s in schemes
                if s not in row]
        out += [f"{n} x {s}: no such scheme" for s in row if s not in schemes]
        for s, cell in row.items():
            if isinstance(cell, str):
                if not cell.strip():
                    out.append(f"{n} x {s}: an empty why-not")
            elif not isinstance(cell, tuple) or any(k not in KINDS for k in cell):
                out.append(f"{n} x {s}: {cell!r} is neither a tuple of violation kinds "
                           f"({', '.join(KINDS)}) nor a why-not")
            elif len(set(cell)) != len(cell):
                out.append(f"{n} x {s}: {cell!r} names a kind twice")
    return out


def _declare(sc: Scenario, row: dict) -> Scenario:
    """``sc`` with its ``expect`` and ``why_not`` from its table row."""
    sc.expect = {s: {k: SOMETIMES for k in cell} for s, cell in row.items()
                 if not isinstance(cell, str)}
    sc.why_not = {s: cell for s, cell in row.items() if isinstance(cell, str)}
    return sc


_ALL = {sc.name: sc for sc in guest.SCENARIOS + pkvm.SCENARIOS}
_problems = table_problems(DECLARATIONS, list(_ALL.values()) + [ABA_SAME], list(SCHEMES))
if _problems:
    raise AssertionError("the declaration table (s2pt/scenarios/declarations.py):\n  "
                         + "\n  ".join(_problems))

#: name -> Scenario, in the declaration table's order: every shipped
#: scenario (ABA_SAME is replayed, not searched, and is not in it).
SCENARIOS: dict[str, Scenario] = {
    name: _declare(_ALL[name], row) for name, row in DECLARATIONS.items() if name in _ALL}
_declare(ABA_SAME, DECLARATIONS[ABA_SAME.name])

#: scenario -> its race window (s2pt.sim.window), one per scenario.
WINDOWS = {name: sc.window for name, sc in SCENARIOS.items()}
_missing = [n for n, w in WINDOWS.items() if w is None]
if _missing:
    raise AssertionError(f"scenarios without a race window (s2pt.scenarios): {_missing}")


def get_scenario(name) -> Scenario:
    if isinstance(name, Scenario):
        return name
    try:
        return SCENARIOS[name]
    except (KeyError, TypeError):
        raise S2ptError(f"scenario {name!r}: unknown; choose one of {', '.join(SCENARIOS)}") from None


def _mutation(name: str, scheme: str, scenario: str, kind: str, what: str, bugs) -> Mutation:
    sc = SCENARIOS[scenario]
    sc.check_bugs(bugs)
    if scheme not in sc.expect:
        raise AssertionError(f"mutation {name!r}: {scenario} does not declare {scheme}")
    if kind not in KINDS:
        raise AssertionError(f"mutation {name!r}: {kind!r} is not a violation kind")
    return Mutation(name, scheme, frozenset(bugs) | sc.bugs, scenario, kind, what)


#: name -> Mutation: every deliberately broken variant the explorer must
#: catch (s2pt.scenarios.declarations.MUTATIONS; the scenario's own bugs
#: added to each).
MUTATIONS: dict[str, Mutation] = {name: _mutation(name, *m)
                                  for name, m in declarations.MUTATIONS.items()}
