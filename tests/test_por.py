"""Partial-order reduction (s2pt.sim.por) changes how many states the search
keeps, never what it finds: every verdict with and without it agrees."""

from __future__ import annotations

import pytest

from s2pt.explorer import explore, replay


@pytest.mark.parametrize("name,scheme", [
    ("collapse-vs-fault", "none"),
    ("collapse-vs-fault", "refcount"),
    ("stash-old-pte", "none"),
    ("collapse-vs-hw-walk-no-tlbi", "none"),
    ("unmap-vs-fault", "rcu"),
    ("collapse-vs-fault", "rwlock"),
])
def test_verdicts_agree_with_and_without_por(name, scheme):
    red = explore(name, scheme, details=False)
    ref = explore(name, scheme, details=False, por=False)
    assert red.complete and ref.complete
    assert red.kinds == ref.kinds and red.verdict == ref.verdict, (red.kinds, ref.kinds)
    assert red.window["reached"] == ref.window["reached"]
    assert red.states <= ref.states
    for kind, found in red.found.items():          # a schedule found in the reduced graph replays
        if kind != "livelock":
            assert kind in {v.kind for v in replay(name, scheme, found.schedule_text).violations}


def test_por_saves_states_where_a_subtree_is_freed():
    red = explore("collapse-vs-fault", "none", details=False)
    ref = explore("collapse-vs-fault", "none", details=False, por=False)
    assert red.states < ref.states
