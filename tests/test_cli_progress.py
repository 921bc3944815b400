"""`python -m s2pt compare` is never silent: progress goes to stderr even when it is not a
terminal (a pipe, a notebook's `!python -m s2pt compare`), and stdout keeps the result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_compare_prints_progress_to_a_pipe_and_keeps_stdout_clean():
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    r = subprocess.run([sys.executable, "-m", "s2pt", "compare", "--json", "--no-costs",
                        "--scheme", "none,rcu", "--scenario", "stash-old-pte", "--jobs", "1"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0].startswith("comparing 2 schemes on 1 scenarios")
    assert any("verdict: stash-old-pte under" in line for line in lines[1:])
    assert lines[-1].endswith("] done") and "\r" not in r.stderr
    assert json.loads(r.stdout)["schemes"] == ["none", "rcu"]
