"""s2pt.widgets.Interleave in process, for every scenario and declared scheme:
clicks with Button.click(), values set on the widgets, assertions on the
World behind it and on the HTML it shows."""

from __future__ import annotations

import base64
import gzip
import json
import statistics

import pytest

pytest.importorskip("ipywidgets")

import s2pt                                            # noqa: E402
from s2pt.htmltrace import Recorder, cpus_html, page_data, shared_state, verdict   # noqa: E402
from s2pt.sim.search import format_schedule, parse_schedule   # noqa: E402
from s2pt.widgets import Interleave                    # noqa: E402

from scenario_cases import shortest, sometimes, trace_cases  # noqa: E402


def _buttons_match_the_world(iw):
    w = iw.world
    for i in range(w.n):
        why = w.blocked(i)
        off = why is not None or w.outcome is not None
        assert iw.step_buttons[i].disabled == off, (i, why)
        if why not in (None, "finished"):
            assert f"cannot run: {why}" in _text(cpus_html(w)[i])
            if w.outcome is None:
                assert why in iw.step_buttons[i].tooltip


@pytest.mark.parametrize("name, scheme", trace_cases())
def test_every_scenario_steps_and_shows_its_verdict(name, scheme):
    found = shortest(name, scheme)
    # A declared livelock's run ends at its step bound: 2,000 steps show it
    # as well as the default 20,000 (as in tests/test_htmltrace.py).
    looping = not found and "livelock" in sometimes(name, scheme)
    iw = Interleave(s2pt.world(name, scheme, max_steps=2000)) if looping else \
        Interleave(name, scheme)
    assert len(iw.step_buttons) == iw.world.n
    assert "No violation so far." in iw.shown["banner"]
    _buttons_match_the_world(iw)
    if found:
        kind, sched = found
        assert iw.load(sched)
        ref = s2pt.replay(name, scheme, sched)
        assert iw.loaded == [e.cpu for e in ref.events]
        assert len(iw.frames.steps) == len(ref.events) + 1
        for k in (1, 2, 3):                               # the browser moves the panels
            iw.view.step = k
            assert iw.schedule == iw.loaded[:k]
            assert iw.shown["event"].startswith(ref.actors[ref.events[k - 1].cpu].name)
            _buttons_match_the_world(iw)
        iw.play_to(len(iw.loaded))
        assert iw.world.outcome == "violation"
        assert any(v.kind == kind for v in iw.world.violations)
        assert iw.shown["banner"].startswith("bad|")
        assert _text(verdict(ref)) in _text(iw.shown["banner"])
        # The last few steps, by hand: undo them and click their Step buttons.
        tail = iw.schedule[-3:]
        for _ in tail:
            assert iw.undo_button.click() is None and iw.world.outcome is None
        for c in tail:
            iw.step_buttons[c].click()
        assert _text(verdict(ref)) in _text(iw.shown["banner"])
        _buttons_match_the_world(iw)
    else:
        for _ in range(6):                                # a few steps, whoever can run
            iw.step_buttons[iw.world.enabled()[0]].click()
        assert len(iw.schedule) == 6 and iw.world.violations == []
        assert "No violation so far." in iw.shown["banner"]
        _buttons_match_the_world(iw)
        for _ in range(20):                               # then everyone to the end
            if iw.world.outcome is not None:
                break
            # the last CPU that can run first (collapse-vs-commit: the
            # commit before the vCPU that waits for it, a fair order)
            iw.run_buttons[iw.world.enabled()[-1]].click()
        if "livelock" in sometimes(name, scheme):
            # rwlock's declined collapse: vCPU0 faults again for ever; a live
            # run ends at its step bound, a livelock
            assert iw.world.outcome == "livelock" and iw.shown["banner"].startswith("bad|")
        else:
            assert iw.world.outcome == "done" and iw.shown["banner"].startswith("ok|")
            assert "every CPU finished" in iw.shown["banner"]


def _text(html):
    import html as h
    import re
    return h.unescape(re.sub(r"<[^>]+>", "", html))


def test_undo_is_the_schedule_prefix_replayed():
    iw = Interleave("collapse-vs-fault", "none")
    for c in parse_schedule("1*5 0*12"):
        iw.step(c)
    iw.undo_button.click()
    rec = Recorder(s2pt.world("collapse-vs-fault", "none"))
    for c in parse_schedule("1*5 0*11"):
        rec.step(c)
    ref = rec.world
    assert iw.schedule == parse_schedule("1*5 0*11")
    assert cpus_html(iw.world) == cpus_html(ref)
    assert shared_state(iw.rec) == shared_state(rec)
    assert iw.world.machine.describe_sync() == ref.machine.describe_sync()
    iw.reset_button.click()
    assert iw.schedule == [] and iw.undo_button.disabled
    assert not iw.undo() and "nothing to undo" in iw.message.value


def test_from_a_world_replays_its_steps():
    w = s2pt.replay("map-vs-map", "rcu", "0*8 1")
    iw = Interleave(w)
    assert iw.schedule == [e.cpu for e in w.events] and iw.world.outcome == "done"
    w2 = s2pt.world("collapse-vs-fault", "none")
    w2.step(1)
    assert Interleave(w2).schedule == [1]


def _blob_steps(iw) -> int:
    """How many steps the widget's blob holds."""
    return len(json.loads(gzip.decompress(base64.b64decode(iw.view.blob)))["steps"])


def test_a_world_with_steps_goes_to_the_panels_whole():
    """Built from a World that has taken steps, the widget is not displayed
    yet: a splice message would reach no view.  Its blob holds every step,
    and the panels show the last."""
    w = s2pt.world("collapse-vs-fault-3", "rcu")
    for c in parse_schedule("1*5 0*15 2*3"):
        w.step(c)
    iw = Interleave(w)
    assert _blob_steps(iw) == 24 and iw.view.step == 23 and not iw.view.behind
    assert not iw.undo_button.disabled


def test_a_view_drawn_late_asks_for_the_whole_run():
    """Steps taken after the blob went out come as messages, which a view
    drawn later never saw: its hello makes the widget send the whole run
    again as the blob; a hello with nothing missed sends nothing."""
    iw = Interleave("collapse-vs-fault", "none")
    blob = iw.view.blob
    iw.view._msg(iw.view, {"kind": "hello"}, [])
    assert iw.view.blob == blob                   # nothing sent since: unchanged
    for c in parse_schedule("1*5"):
        iw.step(c)
    assert iw.view.behind and iw.view.blob == blob
    iw.view._msg(iw.view, {"kind": "hello"}, [])
    assert _blob_steps(iw) == 6 and iw.view.step == 5 and not iw.view.behind


def test_step_to_shared_and_until_blocked():
    iw = Interleave("collapse-vs-fault", "rcu")
    iw.shared_buttons[1].click()
    evs = iw.world.events
    assert all(e.cpu == 1 for e in evs) and evs[-1].op[0] == "read_lock"
    assert all(e.op[0] == "kvm_mmu_topup_memory_cache" for e in evs[:-1])
    iw.run_buttons[1].click()                             # vCPU1 runs to the end: no blocking
    assert iw.world.cpus[1] is None
    iw.run_buttons[0].click()                             # vCPU0 too; RCU: its callback waits
    assert iw.world.blocked(0) in (None, "finished") or iw.world.outcome is not None


def test_blocked_cpu_shows_why():
    iw = Interleave("unmap-vs-fault", "rcu")
    iw.run_buttons[0].click()                             # notifier takes the write lock ...
    w = iw.world
    holder = [i for i in range(w.n) if w.blocked(i) and "mmu_lock" in w.blocked(i)]
    if not holder:                                        # ... or ran to the end: step vCPU1
        iw.reset()
        for _ in range(40):
            iw.step(0)
            if any("mmu_lock" in (w.blocked(i) or "") for w in [iw.world] for i in range(w.n)):
                break
    w = iw.world
    blocked = [i for i in range(w.n) if "mmu_lock" in (w.blocked(i) or "")]
    assert blocked, w.status()
    i = blocked[0]
    assert iw.step_buttons[i].disabled
    assert "waits for kvm-&gt;mmu_lock" in cpus_html(iw.world)[i]
    assert not iw.step(i) and "cannot run" in iw.message.value


def test_bad_input_is_a_message():
    iw = Interleave("map-vs-map", "rcu")
    assert not iw.step(7) and "cpu=7" in iw.message.value
    assert not iw.load("x y") and "schedule token 'x'" in _text(iw.message.value)
    iw.schedule_box.value = "9"
    iw.load_button.click()
    assert "9 is not a CPU of this scenario (0..2)" in iw.message.value and iw.schedule == []
    assert not iw.play_to(3) and "load a schedule first" in iw.message.value
    with pytest.raises(s2pt.S2ptError, match="does not declare"):
        Interleave("donate-vs-host-access", "rcu")      # pKVM declares only hyp-lock


def test_shortest_counterexample_button_and_cancel():
    iw = Interleave("collapse-vs-fault", "none")
    iw.search_button.click()                              # a background thread
    iw._thread.join(60)
    assert iw.found is not None and iw.found.complete
    assert iw.loaded and "shortest use-after-free" in iw.message.value
    iw.play_to(len(iw.loaded))
    assert "vCPU0 freed it at step 1046" in iw.shown["banner"]
    iw2 = Interleave("collapse-vs-fault-3", "rcu")
    iw2._cancel = True                                    # Cancel pressed at once
    iw2.cancel_button.click()
    assert not iw2._search() and "search cancelled" in iw2.message.value
    assert not iw2.found.complete and iw2.found.states < 10_000


def test_search_hooks_do_not_change_results():
    calls = []
    a = s2pt.explore("collapse-vs-fault", "none")
    b = s2pt.explore("collapse-vs-fault", "none", progress=lambda *s: calls.append(s),
                     cancel=lambda: False)
    assert (a.states, a.transitions, a.complete) == (b.states, b.transitions, b.complete)
    assert {k: f.schedule for k, f in a.found.items()} == {k: f.schedule for k, f in b.found.items()}
    assert len(calls) >= a.states // 1024 - 1 and all(len(c) == 3 for c in calls)
    c = s2pt.explore("collapse-vs-fault", "none", cancel=lambda: True)
    assert not c.complete and c.states <= 1024 * 2
    with pytest.raises(s2pt.S2ptError, match="cancel=3"):
        s2pt.explore("collapse-vs-fault", "none", cancel=3)


def test_export(tmp_path, monkeypatch):
    iw = Interleave("collapse-vs-fault", "none")
    iw.load("1*5 0")
    iw.play_to(len(iw.loaded))
    out = iw.export(tmp_path / "t.html")
    ref = s2pt.replay("collapse-vs-fault", "none", "1*5 0")
    assert out["schedule"] == format_schedule([e.cpu for e in ref.events])
    assert f"replay collapse-vs-fault --scheme none \\\n    --schedule '{out['schedule']}'" \
        in out["text"]
    assert "USE-AFTER-FREE" in iw.export_out.value and out["bytes"] < 2 << 20
    assert str((tmp_path / "t.html").resolve()) in iw.message.value     # the file's name
    assert (tmp_path / "t.html").read_text().count("vCPU0 freed it at step 1046") >= 1
    w = s2pt.replay("collapse-vs-fault", "none", out["schedule"])
    assert w.outcome == "violation"
    # Without a path: a folder that git ignores, here, never the notebooks.
    monkeypatch.chdir(tmp_path)
    out = iw.export()
    assert out["path"] == "s2pt-traces/collapse-vs-fault-none.html"
    assert (tmp_path / "s2pt-traces" / ".gitignore").read_text().splitlines()[-1] == "*"
    assert page_data((tmp_path / out["path"]).read_text())["steps"]


def test_loaded_steps_play_in_the_browser_and_draw_their_trees_when_shown():
    """A loaded schedule goes to the panels whole; the browser plays it.
    Steps that change no shared state get their tree when shown at rest."""
    iw = Interleave("collapse-vs-fault", "none")
    iw.load("0*5 1*5 0*1037 1")
    quiet = [k for k, s in enumerate(iw.frames.steps) if s[5]]
    assert len(quiet) > 1000 and all(iw.frames.steps[k][2] < 0 for k in quiet[:-1])
    sent = []
    iw.view.send = sent.append
    iw.view.step = quiet[100]                     # the browser stops there
    assert iw.schedule == iw.loaded[:quiet[100]]
    assert iw.frames.steps[quiet[100]][2] >= 0 and sent[-1]["kind"] == "tree"
    from s2pt.htmltrace import tree_html
    assert iw.frames.pool[iw.frames.steps[quiet[100]][2]] == tree_html(iw.rec)


def test_step_clicks_redraw_and_report_their_time():
    # The time is printed (the browser test measures click-to-redraw), not asserted.
    iw = Interleave("collapse-vs-fault-3", "none")
    times = []
    sched = parse_schedule("0*5 2*4 0*30")
    for k, c in enumerate(sched):
        iw.step_buttons[c].click()
        times.append(iw.last_redraw_s)
        assert iw.view.step == k + 1 == len(iw.frames.steps) - 1
    assert iw.schedule == sched and all(t > 0 for t in times)
    med = statistics.median(times)
    print(f"\nin-process redraw, collapse-vs-fault-3: median {med * 1000:.1f} ms, "
          f"max {max(times) * 1000:.1f} ms")
