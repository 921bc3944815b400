"""s2pt.bugs: one registry of the bugs the model can switch back on.

Each bug names its target (the walker, a VM's paths, pKVM's host, a
scheme's mm_ops); each constructor takes the bugs of its targets and refuses
the others by name; and each bug, switched on, changes what its target does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import s2pt
from s2pt import bugs as B
from s2pt import pgtable as pt
from s2pt import pkvm, scenarios
from s2pt.kvm import VM
from s2pt.schemes import SCHEMES

PKG = Path(s2pt.__file__).resolve().parent

#: walker bug -> the KvmPgtable attribute the walker reads (True: today's kernel)
WALKER_SWITCHES = {
    "a9f0e3d5a089": "reload_after_cb",
    "f6a27d6dc51b": "free_unlinked_drops_root",
    "1f0f4a2ef7a5": "map_phys_from_ipa",
    "c60d847be7b8": "free_unlinked_once",
    "rfc-plain-prune": "prune_xchg",
    "no-rcu-read-lock": "shared_walk_rcu",
}


def test_every_bug_has_a_target_and_the_scenarios_use_the_one_registry():
    assert scenarios.BUGS is B.BUGS
    for name, bug in B.BUGS.items():
        assert bug.name == name and bug.target in B.TARGETS and bug.what
    with pytest.raises(s2pt.S2ptError, match="target"):
        B.Bug("x", "y", "elsewhere")


def test_walker_bugs_each_flip_the_one_switch_the_walker_reads():
    assert set(WALKER_SWITCHES) == {n for n, b in B.BUGS.items() if b.target == B.WALKER}
    clean = s2pt.Stage2()
    assert all(getattr(clean, a) is True for a in WALKER_SWITCHES.values())
    for name, attr in WALKER_SWITCHES.items():
        pgt = s2pt.Stage2(bugs={name})
        assert pgt.bugs == {name}
        assert {a for a in WALKER_SWITCHES.values() if not getattr(pgt, a)} == {attr}, name


@pytest.mark.parametrize("build,accepts", [
    (lambda bugs: s2pt.Stage2(bugs=bugs), {B.WALKER}),
    (lambda bugs: VM(bugs=bugs), {B.VM, B.WALKER}),
    (lambda bugs: pkvm.Host(memory=[(1 << 30, 1 << 30)], bugs=bugs), {B.HOST, B.WALKER}),
], ids=["Stage2", "VM", "Host"])
def test_each_builder_takes_the_bugs_of_its_targets_and_names_the_others(build, accepts):
    for name, bug in B.BUGS.items():
        if bug.target in accepts:
            built = build({name})
            assert name in built.bugs
            table = getattr(built, "pgt", built)
            assert table.bugs == ({name} if bug.target == B.WALKER else set())
        else:
            with pytest.raises(s2pt.S2ptError) as e:
                build({name})
            assert name in str(e.value) and B.TARGETS[bug.target] in str(e.value)
    with pytest.raises(s2pt.S2ptError, match="unknown"):
        build({"no-such-bug"})
    with pytest.raises(s2pt.S2ptError, match="set of bug names"):
        build("no-bbm-tlbi")


def test_mm_ops_bugs_change_the_refcount_schemes_mm_ops():
    for name in (n for n, b in B.BUGS.items() if b.target == B.MM_OPS):
        for s in ("refcount", "refcount-revalidate"):
            good, bad = SCHEMES[s].mm_ops(), SCHEMES[s].mm_ops(frozenset({name}))
            assert isinstance(bad, pt.MmOps)
            assert repr(good) != repr(bad), (s, name)


def test_every_bug_is_read_by_the_code_of_its_target():
    """A bug that is registered but that no code tests for would switch
    nothing: the module of each bug's target reads its name (a walker bug:
    the walker reads its switch)."""
    module = {B.WALKER: "pgtable.py", B.VM: "kvm.py", B.HOST: "pkvm.py", B.MM_OPS: "schemes.py"}
    for name, bug in B.BUGS.items():
        text = (PKG / module[bug.target]).read_text()
        needle = f"pgt.{WALKER_SWITCHES[name]}" if bug.target == B.WALKER else f'"{name}"'
        assert needle in text, (name, module[bug.target])
