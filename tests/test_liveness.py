"""Dead-variable reduction (s2pt.sim.liveness): a CPU's position is its live
locals only.  The analysis is checked against hand-worked answers on small
generators, and the reduction against the search without it: every verdict
agrees, and it never keeps more states."""

from __future__ import annotations

import pytest

from s2pt.explorer import explore

from reduction_checks import assert_same_verdicts
from s2pt.sim.liveness import live_after, overwritten


def _suspensions(gen, sends):
    """live_after at each suspension of ``gen``, driven with ``sends``."""
    out = []
    gen.send(None)
    code = gen.gi_code
    for v in sends:
        out.append(sorted(live_after(code, gen.gi_frame.f_lasti)))
        try:
            gen.send(v)
        except StopIteration:
            break
    return out


def straight(a, b):
    x = yield a
    y = yield x
    yield 0
    return y + b


def test_a_local_is_dead_after_its_last_read():
    # At "yield 0" x and a are never read again; y and b are.  (At the first
    # two yields a and x are on the value stack as the yielded value: the
    # analysis counts locals of the statement as live, never fewer.)
    assert _suspensions(straight(1, 2), [5, 6, 7]) == [["a", "b"], ["b", "x"], ["b", "y"]]


def summing(pages):
    total = 0
    for p in pages:
        total += yield p
    return total


def test_values_on_the_stack_keep_their_locals_live():
    # After "GET_ITER" pages is never loaded again, and "total += yield p"
    # loads total before the yield: both live on the value stack, which the
    # frozen frame does not hold, so both must stay live.
    assert _suspensions(summing([1, 2, 3]), [1, 1, 1]) == [["p", "pages", "total"]] * 3


def retry(ptr):
    old = yield ("read", ptr)
    if old:
        return (yield from retry(ptr + 1))
    return old


def test_a_frame_that_only_waits_for_a_tail_call_keeps_no_local():
    gen = retry(8)
    gen.send(None)
    gen.send(1)                              # the outer frame now waits in yield from
    outer = gen.gi_frame
    # old is dead; ptr went into the call (its frame holds it).
    assert not {"old"} & live_after(outer.f_code, outer.f_lasti)


class Ctx:
    __slots__ = ("old", "ptep")

    def __init__(self, old, ptep):
        self.old, self.ptep = old, ptep


def reload(ctx):
    ctx.old = yield ("read", ctx.ptep)
    return ctx.old


def test_the_field_a_yield_overwrites_is_dead_in_the_innermost_frame():
    gen = reload(Ctx(0x1003, 0x2000))
    gen.send(None)
    f = gen.gi_frame
    assert overwritten(f.f_code, f.f_lasti) == ("ctx", "old")
    gen2 = straight(1, 2)
    gen2.send(None)
    assert overwritten(gen2.gi_code, gen2.gi_frame.f_lasti) is None   # a STORE_FAST


def test_an_offset_that_is_no_instruction_keeps_every_local():
    assert live_after(straight.__code__, 10_001) is None


def test_two_positions_that_differ_in_a_dead_local_are_one():
    from s2pt.sim.world import frames
    a, b = retry(8), retry(8)
    for g, old in ((a, 1), (b, 2)):
        g.send(None)
        g.send(old)                # retries at 9: the outer frame keeps a dead old
    assert frames(a, {}) == frames(b, {})
    assert frames(a, {}, live=False) != frames(b, {}, live=False)


# ---------------------------------------------------------------------------
# The reduction never changes a verdict
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,scheme", [
    ("collapse-vs-fault", "none"),
    pytest.param("collapse-vs-fault", "refcount", marks=pytest.mark.slow),
    ("collapse-vs-fault", "refcount-revalidate"),
    pytest.param("aba-table-reuse", "refcount", marks=pytest.mark.slow),
    ("stash-old-pte", "none"),
    ("unmap-vs-fault", "rcu"),
    ("collapse-vs-fault", "rwlock"),
])
def test_verdicts_agree_with_and_without_liveness(name, scheme):
    assert_same_verdicts(name, scheme, liveness=False)


def test_liveness_saves_states_where_a_walker_retries():
    red = explore("collapse-vs-fault", "refcount-revalidate", details=False)
    ref = explore("collapse-vs-fault", "refcount-revalidate", details=False, liveness=False)
    assert red.states < ref.states


@pytest.mark.slow
def test_liveness_and_nothing_else_agrees_with_the_unreduced_search():
    # Symmetry and POR off: dead-variable reduction alone against the
    # reference with every local kept.
    for name, scheme in (("collapse-vs-fault", "refcount-revalidate"),
                         ("collapse-vs-fault", "none")):
        red = explore(name, scheme, details=False, symmetry=False, por=False)
        ref = explore(name, scheme, details=False, symmetry=False, por=False, liveness=False)
        assert red.complete and ref.complete
        assert red.kinds == ref.kinds and red.window["reached"] == ref.window["reached"]
        assert red.states <= ref.states


def test_every_kernel_generator_is_analysed():
    """Every generator function of the model is understood on this Python
    (an opcode the analysis did not know would make every local live: a
    silent loss of the reduction, not of soundness)."""
    import importlib
    import inspect

    from s2pt.sim import liveness
    mods = ("s2pt.pgtable", "s2pt.kvm", "s2pt.pkvm", "s2pt.schemes", "s2pt.sim.sync",
            "s2pt.scenarios.guest", "s2pt.scenarios.pkvm", "s2pt.sim.world")
    gens = []
    for name in mods:
        for _, obj in inspect.getmembers(importlib.import_module(name)):
            fns = [obj] if inspect.isfunction(obj) else \
                [v for v in vars(obj).values() if inspect.isfunction(v)] if inspect.isclass(obj) \
                else []
            gens += [f for f in fns if f.__code__.co_flags & inspect.CO_GENERATOR]
    assert len(gens) > 100
    assert [f.__qualname__ for f in gens if not liveness._analyse(f.__code__)] == []
