"""Symmetry reduction (s2pt.sim.symmetry): interchangeable CPUs searched once.

Sound the way the reduction is proved elsewhere: every verdict with and
without symmetry agrees, on scenarios where both searches finish, each in a
World and state space of its own (no shared memo); every counterexample the
reduced search reports replays on a live World; a wrong declaration of
symmetry is refused, not believed.
"""

from __future__ import annotations

import pytest

import s2pt
from s2pt.errors import S2ptError
from s2pt.explorer import explore, replay
from s2pt.kvm import handle_access_fault
from s2pt.scenarios import (BLOCK, IPA, PAGE, SCENARIOS, SOMETIMES, Scenario, _fault,
                            _logged_table, _setup, _vm, build_collapse_vs_readers, guest_fault)

CVF4 = SCENARIOS["collapse-vs-fault-4"]


def readers(n, expect=None):
    """collapse-vs-fault-4 with ``n`` interchangeable readers."""
    return Scenario(f"collapse-vs-{n}-readers", "", build_collapse_vs_readers,
                    expect or {s: dict(k) for s, k in CVF4.expect.items()}, cpus=n + 1,
                    params={"readers": n}, window=CVF4.window)


@pytest.mark.parametrize("scheme", [
    "hyp-lock", "write-lock", "rwlock",
    pytest.param("none", marks=pytest.mark.slow), pytest.param("rcu", marks=pytest.mark.slow),
    pytest.param("refcount", marks=pytest.mark.slow),
    pytest.param("refcount-revalidate", marks=pytest.mark.slow)])
def test_verdicts_agree_with_and_without_symmetry(scheme):
    sc = readers(2)
    sc.expect.setdefault(scheme, {})
    red = explore(sc, scheme, details=False)
    ref = explore(sc, scheme, details=False, symmetry=False)
    assert red.complete and ref.complete
    assert red.kinds == ref.kinds
    assert red.verdict == ref.verdict
    assert red.window["reached"] == ref.window["reached"]
    assert red.states < ref.states
    assert red.settings["symmetry"] == [["vCPU1", "vCPU2"]]
    assert "symmetry" not in ref.settings


@pytest.mark.slow
def test_a_reduced_counterexample_replays_on_the_concrete_cpus():
    sc = readers(2)
    r = explore(sc, "none")
    f = r.found["use-after-free"]
    w = replay(sc, "none", f.schedule)
    assert [v.kind for v in w.violations] == ["use-after-free"]
    # The window's first schedules are concrete too.
    first = r.window["stages"][-1]["schedule"]
    assert first is not None


def test_a_livelock_found_with_symmetry_is_a_concrete_lasso():
    sc = readers(2)
    sc.expect.setdefault("rwlock", {"livelock": SOMETIMES})
    r = explore(sc, "rwlock")
    f = r.found["livelock"]
    space = s2pt.sim.search.StateSpace(s2pt.world(sc, "rwlock", record=False), symmetry=False)
    s = space.initial
    for c in f.schedule[:f.cycle_start]:
        s, v = space.step(s, c)
        assert v is None
    entry = s
    for c in f.cycle:
        s, v = space.step(s, c)
    assert s == entry


def _asymmetric(scheme, bugs):
    # Two readers declared symmetric, but on different pages.
    vm, slot = _vm(scheme, bugs, 3)
    logging = _logged_table(vm, slot, pages=4, aged=(2, 3))
    f0 = _fault(vm, IPA)
    s = _setup(vm, scheme, bugs, topup=(0,))
    s.share(logging)
    s.cpu("vCPU0", "collapse", guest_fault, vm, 0, IPA, slot, f0, True)
    for k in (1, 2):
        v = vm.vcpus[k]
        s.cpu(f"vCPU{k}", "mkyoung", handle_access_fault, vm, k, IPA + (k + 1) * PAGE,
              _fault(vm, IPA + (k + 1) * PAGE, write=False, vcpu=k), vcpu=k, sym="readers",
              owns=(v.memcache, v.tlb))
    s.region = (IPA, BLOCK)
    return s


def test_a_wrong_declaration_of_symmetry_is_refused():
    sc = Scenario("asym", "", _asymmetric, {"none": {"use-after-free": SOMETIMES}})
    with pytest.raises(S2ptError, match="declared symmetric .*arguments differ"):
        explore(sc, "none", details=False)


def test_symmetric_cpus_must_say_which_vcpu_they_are():
    def build(scheme, bugs):
        vm, slot = _vm(scheme, bugs, 2)
        s = _setup(vm, scheme, bugs)
        s.cpu("vCPU1", "", handle_access_fault, vm, 1, IPA, None, sym="readers")
        return s
    with pytest.raises(S2ptError, match="needs vcpu="):
        s2pt.world(Scenario("nosym", "", build, {"none": {}}), "none")
