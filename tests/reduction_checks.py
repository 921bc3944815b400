"""What every reduction's soundness test asks: the reduced search and the
reference without the reduction find the same things."""

from __future__ import annotations

from s2pt.explorer import explore, replay


def assert_same_verdicts(name, scheme, **off):
    """Search ``name`` under ``scheme`` with the explorer's defaults and with
    the reductions ``off`` (e.g. ``por=False``): both complete, the same
    kinds of violation, the same verdict, the race reached in both or
    neither, no more states reduced than not, and every schedule the reduced
    search found replays to its violation.  Returns (reduced, reference)."""
    red = explore(name, scheme, details=False)
    ref = explore(name, scheme, details=False, **off)
    assert red.complete and ref.complete
    assert red.kinds == ref.kinds and red.verdict == ref.verdict, (red.kinds, ref.kinds)
    assert red.window["reached"] == ref.window["reached"]
    assert red.states <= ref.states
    for kind, found in red.found.items():
        if kind != "livelock":
            assert kind in {v.kind for v in replay(name, scheme, found.schedule_text).violations}
    return red, ref
