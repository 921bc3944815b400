"""The command-line replay, the verdict sentence and the self-contained HTML
trace (s2pt.htmltrace), for every scenario and declared scheme."""

from __future__ import annotations

import re

import pytest

import s2pt
from s2pt.cli import main
from s2pt.htmltrace import (Recorder, shared_state, page_data, trace_html, tree_drawing,
                            tree_html, verdict, write_html)
from s2pt.sim.search import parse_schedule

from scenario_cases import shortest, sometimes, trace_cases  # noqa: E402

MB = 1 << 20
UAF = "1*5 0"                       # collapse-vs-fault under none: vCPU1 stops in L3


# -- the command line --------------------------------------------------------------

def test_replay_prints_diagram_and_verdict_and_the_log_only_on_request(capsys):
    assert main(["replay", "collapse-vs-fault", "--scheme", "none", "--schedule", UAF]) == 1
    out = capsys.readouterr().out
    assert out.startswith("collapse-vs-fault under none")  # the race diagram comes first
    assert "USE-AFTER-FREE" in out and "[enabled:" not in out and "outcome:" not in out
    assert out.count("\n") < 40                            # not the 1,000-line log
    # The verdict, wrapped to 80 columns.
    assert max(map(len, out.splitlines())) <= 80
    assert ("use-after-free: vCPU1 read an entry of table page 0x80002000 at step 1052 (in "
            "__kvm_pgtable_visit()), after vCPU0 freed it at step 1046 (in "
            "kvm_pgtable_stage2_free_unlinked()).") in " ".join(out.split())
    assert main(["replay", "collapse-vs-fault", "--scheme", "none", "--schedule", UAF,
                 "--log"]) == 1
    out = capsys.readouterr().out
    assert out.index("USE-AFTER-FREE") < out.index("[enabled:") and "outcome: violation" in out
    assert out.count("\n") > 1000


@pytest.mark.parametrize("sched", ["", "  ", ","])
def test_empty_schedule_is_refused(sched, capsys):
    assert main(["replay", "collapse-vs-fault", "--schedule", sched]) == 2
    err = capsys.readouterr().err
    assert err.startswith("s2pt replay: argument --schedule:") and "empty" in err
    assert "leave --schedule out" in err and "Traceback" not in err


def test_no_schedule_runs_the_default_order(capsys):
    assert main(["replay", "map-vs-map", "--scheme", "rcu"]) == 0
    # 43 steps: each vCPU's successful fault ends with mark_page_dirty_in_slot()
    assert "No violation: every CPU finished after 43 steps" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["explore", "collapse-vs-fault", "--random", "2", "--seed", "-1"],
    ["explore", "collapse-vs-fault", "--random", "2", "--seed", str(1 << 64)],
    ["drill", "--seed", str(1 << 64)],
    ["drill", "-s", "-3"],
])
def test_seed_is_bounded_to_64_bits(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "a seed is an integer from 0 to 2**64 - 1" in err and "Traceback" not in err


def test_largest_seed_is_accepted(capsys):
    top = str((1 << 64) - 1)
    assert main(["explore", "map-vs-map", "--scheme", "rcu", "--random", "2", "--seed", top]) == 0
    assert main(["drill", "--seed", hex((1 << 64) - 1), "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert f"--seed {top} " in out


def test_pct_default_depth_finds_the_use_after_free(capsys):
    # Two ordering constraints (the free between vCPU1's load and its access):
    # PCT's default depth must be 2 to find it; depth 3 at 1,000 runs does not.
    assert main(["explore", "collapse-vs-fault", "--scheme", "none", "--pct", "1000"]) == 1
    assert "USE-AFTER-FREE" in capsys.readouterr().out


# -- the verdict ---------------------------------------------------------------------

def test_verdict_names_cpu_step_page_and_who_freed_it():
    w = s2pt.replay("collapse-vs-fault", "none", UAF)
    v = w.violations[0]
    text = verdict(w)
    assert text.count(". ") == 0 and text.endswith(".")
    for piece in (v.actor, f"step {v.step}", "0x80002000", f"step {w.frees[0x80002]}"[:0],
                  "vCPU0 freed it at step 1046"):
        assert piece in text
    clean = s2pt.replay("collapse-vs-fault", "rcu", UAF)
    assert verdict(clean).startswith("No violation: every CPU finished after")
    fresh = s2pt.world("collapse-vs-fault", "none")
    assert verdict(fresh) == "No violation so far."


def test_end_of_run_verdict():
    r = s2pt.explore("map-vs-map-no-shared", "rcu")
    w = s2pt.replay("map-vs-map-no-shared", "rcu", r.found["lost-update"].schedule_text)
    assert w.outcome == "violation" and all(v.step is None for v in w.violations)
    text = verdict(w)
    assert text.startswith(f"{w.violations[0].kind} at the end of the run: ")
    if len(w.violations) > 1:
        assert f"(and {len(w.violations) - 1} more: " in text


# -- panels -----------------------------------------------------------------------------

def test_shared_state_and_tree_follow_the_run():
    w = s2pt.world("collapse-vs-fault", "none")
    rec = Recorder(w)
    rows0 = {k: v for k, _, _, v in shared_state(rec)}
    assert rows0[("rcu",)] == "none" and not any(k[0] == "lock" for k in rows0)
    for c in parse_schedule(UAF):
        rec.step(c)
    rows = {k: (label, v) for k, _, label, v in shared_state(rec)}
    assert rows[("lock", "kvm->mmu_lock")][1] == "held for read by vCPU0, vCPU1"
    assert rows[("rcu",)][1] == "vCPU1 (depth 1)"          # vCPU0 took one step: read_lock
    src = tree_drawing(rec).source
    # vCPU1 is marked on the entry it reads next, L3[1] (the L3 table is at
    # 0x80002000); vCPU0's next step is rcu_read_lock, no entry.
    l3 = re.search(r'\tt80002000 \[label="L3 table.*', src).group(0)
    assert re.search(r"<e1> entry 1: [^|]*◀ vCPU1 next: READ_ONCE\\l", l3), l3
    assert src.count(" next: ") == 1 and "fillcolor=\"#f8c8c8\"" not in src
    while w.outcome is None:                              # vCPU0 runs on: LOCKED, then freed
        ev = rec.step(0 if 0 in w.enabled() else w.enabled()[0])
        if "LOCKED" in (ev.note or "") and "-> LOCKED" in ev.note:
            ptep = ev.op[1]
            node = re.search(rf"\tt{ptep & ~0xfff:x} \[label=.*", tree_drawing(rec).source)
            row = re.search(rf"<e{(ptep & 0xfff) >> 3}> entry [^|]*", node.group(0))
            assert "LOCKED by vCPU0" in row.group(0), row.group(0)
        if w.frees:
            break
    src = tree_drawing(rec).source
    assert "freed (poisoned)" in src and "freed at step" in src
    assert w.violations == [] and w.machine.violations == []   # drawing is not a step
    # vCPU1 still holds its pointer into the freed page: the stub says where.
    stub = re.search(r'\tt80002000 \[label="table page.*', src).group(0)
    assert "entry 1: ◀ vCPU1 next: READ_ONCE" in stub and "#dddddd" in stub
    rec.step(1)                                          # the use-after-free
    assert w.violations and w.violations[0].kind == "use-after-free"
    stub = re.search(r'\tt80002000 \[label="table page.*', tree_drawing(rec).source).group(0)
    # The checker's step: the entry with a ✖ and the page in red; nobody is
    # "next" in a finished run.
    assert f"✖ entry 1: ◀ use-after-free at step {w.violations[0].step} (vCPU1)" in stub
    assert 'fillcolor="#f8c8c8"' in stub and "next:" not in stub


def test_tree_draws_what_the_cpus_touched_and_folds_the_rest():
    """map-vs-map: the vCPUs race on L2[0]; the level-3 table under L2[1]
    (the region the guest touched before) is no part of it: one line under
    the picture that opens on a click, not a node in it.  The picture keeps
    its own size (a wide one scrolls)."""
    w = s2pt.world("map-vs-map", "rcu")
    rec = Recorder(w)
    for c in parse_schedule("0*6 1*5"):
        rec.step(c)
    html = tree_html(rec)
    l2 = next(p for p, lvl in w.view.levels.items() if lvl == 2)
    l2_page = w.pgt.mm.pages[l2]
    child = (l2_page.table.item(1) & w.pgt.addr_mask)
    assert f"<title>t{l2 << 12:x}</title>" in html          # touched: drawn
    assert f"<title>t{child:x}</title>" not in html          # untouched: folded
    fold = re.search(rf"<details><summary>L3 table PA {child:#x}, IPA 0x40200000\+, "
                     rf"page_count \d+: no CPU touched it</summary><pre>(.*?)</pre></details>",
                     html, re.S)
    assert fold and "IPA 0x0000000040200000 4K page" in fold.group(1)
    assert "untouched: listed under the picture" in html
    assert 'width="100%"' not in html and "max-width: none" in html


def test_recorder_refuses_a_stepped_world():
    w = s2pt.world("map-vs-map", "rcu")
    w.step(0)
    with pytest.raises(s2pt.S2ptError, match="already taken 1 steps"):
        Recorder(w)


# -- the page ------------------------------------------------------------------------------

EXTERNAL = re.compile(r"""(?:src|href|action)\s*=\s*["']?\s*(?!data:|#)[a-z]+:|url\(|@import|//[a-z0-9.-]+\.[a-z]{2,}/""", re.I)


def _data(text):
    return page_data(text)


@pytest.mark.parametrize("name, scheme", trace_cases())
def test_html_trace_for_every_scenario(name, scheme, tmp_path, capsys):
    found = shortest(name, scheme)
    sched = found[1] if found else ""
    # A declared livelock's default order loops until the run's bound: a
    # bound of 2,000 steps shows it as well as the default 20,000.
    looping = not found and "livelock" in sometimes(name, scheme)
    w = s2pt.replay(name, scheme, sched, **({"max_steps": 2000} if looping else {}))
    path = tmp_path / "t.html"
    size = write_html(w, path)
    text = path.read_text()
    with capsys.disabled():
        print(f"\nHTML trace {name}/{scheme}: {size:,} bytes, {len(w.events)} steps")
    # An email attachment: <= 2 MB for every shortest counterexample, and for
    # a clean run's default order too (split-vs-fault: 4,121 steps).
    assert size == len(text.encode()) and size <= 2 * MB
    d = _data(text)
    for piece in [text[:text.index('id="s2pt-data"')]] + d["pool"]:
        bare = re.sub(r'xmlns(?::\w+)?="[^"]*"', "", piece)   # namespaces name, never load
        assert not EXTERNAL.search(bare), EXTERNAL.search(bare).group(0)
    assert len(d["steps"]) == len(w.events) + 1 == len(d["xs"])
    last = d["pool"][d["steps"][-1][4]]
    assert last.split("|", 1)[1] == verdict(w)
    if found:
        assert last.startswith("bad|") and w.violations[0].actor in last
    elif looping:
        # The default order of a declared livelock (rwlock's declined
        # collapse) refaults until the run's bound, and says so.
        assert last.startswith("bad|livelock") and len(w.events) == w.max_steps
    else:
        assert last.startswith("ok|")
    # A tree picture per step (stored once each: they repeat).
    svgs = {s[2] for s in d["steps"]}
    assert len(svgs) <= len(d["steps"])
    assert all(d["pool"][j].startswith("<svg") for j in svgs)


def test_page_stores_shared_rows_as_deltas():
    """A step stores only the shared-state rows whose cells changed (trace.js
    puts the table together: the browser test checks it against the rows)."""
    from s2pt.htmltrace import record
    for name, scheme, sched in [("collapse-vs-fault", "none", UAF), ("map-vs-map", "rcu", "0*8 1"),
                                ("donate-vs-host-access", "hyp-lock", "")]:
        w = s2pt.replay(name, scheme, sched)
        d = _data(trace_html(w))
        rec = Recorder(s2pt.world(name, scheme))
        before = None
        for k, s in enumerate(d["steps"]):
            if k:
                rec.step(w.events[k - 1].cpu)
            rows = shared_state(rec)
            old = {key: (lab, v) for key, _, lab, v in before or ()}
            changed = sum(old.get(key) != (lab, v) for key, _, lab, v in rows)
            assert len(s[1][1]) == changed, (name, k)
            # A step that changes no row is "quiet": Next skips it with skip on.
            assert s[5] == (1 if k and rows == before else 0), (name, k)
            before = rows
        assert len(d["steps"]) == len(w.events) + 1


def test_html_trace_from_a_stepped_world_and_a_schedule_agree():
    w = s2pt.replay("collapse-vs-fault", "none", UAF)
    assert trace_html(w) == trace_html(s2pt.world("collapse-vs-fault", "none"), UAF)
    with pytest.raises(s2pt.S2ptError, match="schedule step 0: CPU 5"):
        trace_html(s2pt.world("collapse-vs-fault", "none"), "5")


def test_cli_html(tmp_path, capsys):
    out = tmp_path / "uaf.html"
    assert main(["replay", "collapse-vs-fault", "--scheme", "none", "--schedule", UAF,
                 "--html", str(out)]) == 1
    assert f"wrote {out}" in capsys.readouterr().out
    text = out.read_text()
    assert "--schedule &#x27;1*5 0&#x27;" in text and "kvm_pgtable_stage2_free_unlinked" in text


def test_trace_draws_without_dot(monkeypatch):
    import s2pt.htmltrace as ht
    import s2pt.render as render
    monkeypatch.setattr(render, "_dot_binary", lambda: None)
    monkeypatch.setattr(ht, "_SVG_CACHE", {})
    w = s2pt.replay("map-vs-map", "rcu", "0*8 1")
    assert any(p.startswith("<svg") for p in page_data(trace_html(w))["pool"])


def test_html_path_that_cannot_be_written_is_a_message(tmp_path):
    w = s2pt.replay("map-vs-map", "rcu")
    with pytest.raises(s2pt.S2ptError, match="does not exist"):
        write_html(w, tmp_path / "missing" / "trace.html")
    assert not (tmp_path / "missing").exists()
    (tmp_path / "dir.html").mkdir()
    with pytest.raises(s2pt.S2ptError, match="cannot write it"):
        write_html(w, tmp_path / "dir.html")
    assert main(["replay", "map-vs-map", "--scheme", "rcu",
                 "--html", str(tmp_path / "missing" / "t.html")]) == 2


# -- the grace-period timeline (notebook 06) ------------------------------------------

LATE_READER = "1*5 0*15 2*3 0*5 1*7 3*5"    # collapse-vs-fault-3: vCPU2 enters after call_rcu


def _first(w, op, cpu=None, after=-1):
    return next(e.index for e in w.events
                if e.op[0] == op and e.index > after and (cpu is None or e.cpu == cpu))


def test_grace_period_spans_call_rcu_to_the_last_pre_existing_reader():
    from s2pt.htmltrace import timeline
    w = s2pt.replay("collapse-vs-fault-3", "rcu", LATE_READER)
    t = timeline(w)
    [g] = t.periods
    call = _first(w, "call_rcu")
    # Who was inside a read-side section when call_rcu ran, counted from the
    # events: rcu_read_lock before the call, no rcu_read_unlock yet.
    inside = {c for c in range(3)
              if sum(1 for e in w.events[:call] if e.cpu == c and e.op[0] == "rcu_read_lock")
              > sum(1 for e in w.events[:call] if e.cpu == c and e.op[0] == "rcu_read_unlock")}
    assert inside == {0, 1} and g["waited_for"] == (0, 1) and g["cpu"] == w.events[call].cpu
    last_unlock = max(_first(w, "rcu_read_unlock", c, call) for c in inside)
    assert (g["start"], g["end"]) == (call + 1, last_unlock + 1)
    # vCPU2's section began after call_rcu and was still open when the
    # callback was taken: the grace period did not wait for it.
    enter2, leave2 = _first(w, "rcu_read_lock", 2), _first(w, "rcu_read_unlock", 2)
    taken = _first(w, "rcu_next_callback")
    assert call < enter2 < taken < leave2 and g["invoked"] == taken + 1
    # The table page is freed after the grace period, by the callback thread.
    [(step, cpu, _)] = w.frees.values()
    assert cpu == 3 and step > g["end"]
    svg = t.svg
    assert svg.count("grace period (waits for vCPU0, vCPU1)") == 1 and ">free<" in svg
    assert 'width="840"' in svg and "RCU read-side section" in svg and "violation" not in svg


def test_timeline_of_free_at_once_has_no_grace_period_and_shows_the_violation():
    from s2pt.htmltrace import timeline
    t = timeline(s2pt.replay("collapse-vs-fault", "none", UAF))
    assert t.periods == [] and "grace period" not in t.svg and ">violation<" in t.svg
    with pytest.raises(s2pt.S2ptError, match="record"):
        timeline(s2pt.world("collapse-vs-fault", "none", record=False))
