"""Running s2pt.compare: worker processes with and without fork, the cache
by content, and ``compare --check`` against the registries.

The results never depend on how they were computed: in this process, in
forked or spawned workers, or read back from the cache.
"""

from __future__ import annotations

import copy
import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import s2pt
from s2pt import comparison as C
from s2pt.cli import main
from s2pt.comparison import cache as K
from s2pt.comparison import check, run
from s2pt.scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parent.parent
#: What the worker and cache tests compute, each several times: a slice with
#: every kind of job (verdict cells, cost cells, mutations of a guest scheme
#: and of pKVM's), small enough to take seconds.  (Under rcu the mutations
#: alone took 15 s a run; tests/test_compare.py covers rcu.)
SLICE = dict(schemes=["none", "hyp-lock"], scenarios=["unmap-vs-fault", "stash-old-pte"],
             vcpus=2, runs=2)


def _doc(c) -> dict:
    """A comparison's JSON without its timings (and each search's time)."""
    d = c.to_json()
    d.pop("timings")
    for cell in d["cells"]:
        cell.pop("seconds")
    for cell in d["costs"]:
        cell.pop("seconds")
    return d


@functools.cache
def _serial_doc():
    """Computed once per process (see tests/test_compare.py's cmp)."""
    return _doc(C.compare(**SLICE, mutations=True))


@pytest.fixture(scope="module")
def serial():
    return copy.deepcopy(_serial_doc())


# ---------------------------------------------------------------------------
# Worker processes
# ---------------------------------------------------------------------------

def test_spawned_workers_give_what_one_process_gives(serial, monkeypatch):
    """Where fork is unavailable (macOS's default, Windows) the workers are
    spawned: each imports the package afresh, and the answers are the same."""
    import multiprocessing
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    assert run._job_context().get_start_method() == "spawn"
    assert _doc(C.compare(**SLICE, mutations=True, jobs=2)) == serial


@pytest.mark.slow
def test_without_workers_compare_runs_in_this_process(serial, monkeypatch):
    """A platform where no worker process can be started (no semaphores,
    a sandbox): compare says so and runs every job itself."""
    import concurrent.futures

    class NoWorkers:
        def __init__(self, *a, **kw):
            raise OSError(38, "Function not implemented")
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", NoWorkers)
    said = []
    assert _doc(C.compare(**SLICE, mutations=True, jobs=2, progress=said.append)) == serial
    assert any("running in this process" in line for line in said)
    monkeypatch.setattr(run, "_job_context", lambda: None)         # no start method at all
    assert _doc(C.compare(**SLICE, mutations=True, jobs=2)) == serial


# ---------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------

def test_a_warm_cache_gives_what_a_cold_one_computed(serial, tmp_path):
    cache = K.ResultCache(tmp_path)
    cold = C.compare(**SLICE, mutations=True, cache=cache)
    assert cache.hits == 0 and cache.misses > 0 and list(tmp_path.glob("*.json"))
    warm_cache = K.ResultCache(tmp_path)
    said = []
    warm = C.compare(**SLICE, mutations=True, cache=warm_cache, progress=said.append)
    assert warm_cache.misses == 0 and warm_cache.hits == cache.misses
    assert _doc(cold) == _doc(warm) == serial
    assert all(line.endswith("(cached)") for line in said)


def test_the_cache_only_computes_what_is_new(tmp_path):
    """A scheme added to the comparison costs only its own jobs."""
    cache = K.ResultCache(tmp_path)
    C.compare(["rcu"], ["unmap-vs-fault"], vcpus=2, runs=2, cache=cache)
    first = cache.misses
    cache = K.ResultCache(tmp_path)
    C.compare(["rcu", "none"], ["unmap-vs-fault"], vcpus=2, runs=2, cache=cache)
    assert cache.hits == first and cache.misses == first


def test_a_declaration_changed_since_is_checked_against_the_cached_search(tmp_path,
                                                                          monkeypatch):
    """The declarations are not part of a cached result: a declaration
    edited after the search was cached is checked against it afresh (and
    reported as a mismatch), without searching again."""
    C.compare(["none"], ["stash-old-pte"], costs=False, cache=K.ResultCache(tmp_path))
    sc = SCENARIOS["stash-old-pte"]
    monkeypatch.setitem(sc.expect, "none", {})               # declared Never now
    cache = K.ResultCache(tmp_path)
    c = C.compare(["none"], ["stash-old-pte"], costs=False, cache=cache)
    assert cache.misses == 0 and cache.hits == 1
    assert c.mismatches and "use-after-free: declared Never" in c.mismatches[0][2]


def test_the_key_follows_the_code_that_runs_and_not_the_rest(tmp_path):
    """The code digest changes when the walker changes, and not when the
    declaration table, the tables or the command line do."""
    copy = tmp_path / "s2pt"
    shutil.copytree(ROOT / "s2pt", copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = K.code_digest(copy)
    for rel in ("scenarios/declarations.py", "comparison/report.py", "cli/compare.py"):
        (copy / rel).write_text((copy / rel).read_text() + "\n# an edit\n")
        assert K.code_digest(copy) == before, rel
    (copy / "pgtable.py").write_text((copy / "pgtable.py").read_text() + "\n# an edit\n")
    assert K.code_digest(copy) != before


def test_what_the_key_leaves_out_is_not_run_by_a_search():
    """NOT_BEHAVIOUR is honest: no function of those modules runs during a
    search, a cost cell's recorded runs or the assembly of their outcomes.
    (The declaration table is data; each scenario's expect and why_not come
    from it at import, and are applied to an outcome after it is loaded.)"""
    pkg = ROOT / "s2pt"
    ran = set()

    def profile(frame, event, arg):
        if event == "call":
            ran.add(frame.f_code.co_filename)
    sys.setprofile(profile)
    try:
        out = run.search_job(run.Search("stash-old-pte", "none"))
        runs = run.cost_runs_job("rcu", 2, 2, 0)
    finally:
        sys.setprofile(None)
    assert out["found"] and runs["runs"]
    ran = {Path(f).resolve().relative_to(pkg).as_posix() for f in ran
           if Path(f).resolve().is_relative_to(pkg)}
    assert {"pgtable.py", "scenarios/guest.py", "comparison/costs.py", "comparison/run.py"} <= ran
    assert ran & K.NOT_BEHAVIOUR == set()


def test_the_command_line_caches_unless_told_not_to(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    argv = ["compare", "--scheme", "rcu", "--scenario", "unmap-vs-fault", "--no-costs",
            "--json", "--jobs", "1"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert list((tmp_path / "s2pt" / "compare").glob("*.json"))
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "cache: 1 of 1 results read" in out.err
    assert json.loads(out.out)["cells"] == first["cells"]
    assert main(argv + ["--no-cache"]) == 0
    assert "cache:" not in capsys.readouterr().err


# ---------------------------------------------------------------------------
# compare --check
# ---------------------------------------------------------------------------

def test_check_accepts_the_shipped_comparison(capsys):
    """notebooks/data/compare.json covers every scheme, scenario,
    declaration, mutation and bug of the registries (regenerate it with
    python -m s2pt compare --json --mutations when this fails)."""
    assert check.DATA == ROOT / "notebooks" / "data" / "compare.json"
    assert main(["compare", "--check"]) == 0, capsys.readouterr().out
    assert "agrees with the registries" in capsys.readouterr().out


@pytest.mark.parametrize("break_it,needle", [
    (lambda d: d["cells"].pop(0), "missing"),
    (lambda d: d["scenarios"].pop(), "are not the registry's"),
    (lambda d: d["mutations"][0].update(status="missed"), ": missed"),
    (lambda d: d["mutations"].pop(), "missing"),
    (lambda d: next(c for c in d["cells"] if c["status"] == "violation")["found"].clear(),
     "declared Sometimes, never found"),
    (lambda d: next(c for c in d["cells"] if c["status"] == "not-declared").update(why="?"),
     "not declared"),
    (lambda d: next(c for c in d["cells"] if c["status"] == "safe").update(complete=False),
     "not complete"),
    (lambda d: d["cells"][0]["bugs"].append("deadbeef"), "bug 'deadbeef': not in s2pt.bugs"),
    (lambda d: d["costs"].pop(), "missing"),
    (lambda d: d.update(cells="nope"), "not a comparison"),
])
def test_check_names_what_disagrees(break_it, needle, tmp_path, capsys):
    doc = json.loads(check.DATA.read_text())
    break_it(doc)
    bad = tmp_path / "compare.json"
    bad.write_text(json.dumps(doc))
    assert main(["compare", "--check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert needle in out and "disagreement(s) with the registries" in out


def test_check_of_a_file_that_is_not_there_is_bad_input(tmp_path, capsys):
    assert main(["compare", "--check", str(tmp_path / "nowhere.json")]) == 2
    assert "cannot be read" in capsys.readouterr().err
