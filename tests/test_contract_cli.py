"""The bad-input contract on the command line (issue 21).

Every ``python -m s2pt`` subcommand, run as a real subprocess (with this
tree on PYTHONPATH), on generated command lines: options with good values,
with values that must be refused, and in combinations.  The contract:

* exit 0 or 1 is a result (1 means "found" / "wrong answer" / "mismatch"),
  exit 2 is an error, and nothing else;
* an error is exactly one line on stderr, ``s2pt <command>: ...``, never a
  traceback, never an internal error;
* a command line with a refused value exits 2; one with good values does
  not.

The named regressions of issue 21 follow (a schedule that would expand to
gigabytes, a full stdout, ``/dev/zero`` as answers, ``--html ''``, an
endless ``--random``, ``--jobs 1000``, ``--depth``/``--seed`` without a
random mode, an unbounded ``compare --seed``).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

ROOT = Path(__file__).resolve().parent.parent
#: Every command line runs in a fresh interpreter with this tree first on
#: the path (the venv's editable install points elsewhere).
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
ENV.pop("S2PT_TRACEBACK", None)

#: Bounded and deterministic; S2PT_CONTRACT_CLI_EXAMPLES and S2PT_CONTRACT_RANDOM=1
#: make a longer, fresh hunt.
CLI = settings(max_examples=int(os.environ.get("S2PT_CONTRACT_CLI_EXAMPLES", "12")),
               deadline=None, database=None,
               derandomize=not os.environ.get("S2PT_CONTRACT_RANDOM"),
               suppress_health_check=list(HealthCheck))


def s2pt(*argv, stdin=None, stdout=subprocess.PIPE, timeout=120):
    """Run ``python -m s2pt argv``: (exit status, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "s2pt", *map(str, argv)], cwd=ROOT, env=ENV,
                       stdin=stdin if stdin is not None else subprocess.DEVNULL,
                       stdout=stdout, stderr=subprocess.PIPE, timeout=timeout)
    out = p.stdout.decode(errors="replace") if isinstance(p.stdout, bytes) else ""
    return p.returncode, out, p.stderr.decode(errors="replace")


def kept(code, err, argv, expect):
    """The contract for one run; ``expect``: 'error', 'result' or 'any'."""
    where = f"python -m s2pt {' '.join(map(str, argv))}"
    assert code in (0, 1, 2), f"{where}: exit {code}\n{err}"
    assert "Traceback" not in err and "internal error" not in err, f"{where}:\n{err}"
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("s2pt"), f"{where}: stderr {err!r}"
    if expect == "error":
        assert code == 2, f"{where}: a refused value, but exit {code}\n{err}"
    elif expect == "result":
        assert code in (0, 1), f"{where}: good values, but exit {code}: {err}"


# ---------------------------------------------------------------------------
# Generated command lines
# ---------------------------------------------------------------------------

JUNK_NUM = ["x", "", "1.5", "-1", "0x", "1e3", "99999999999999999999999999999"]


def _options(data, options, mode):
    """Pick options: a list of (flag, good values, junk values).  In 'junk'
    mode one picked option gets a junk value."""
    chosen = [o for o in options if data.draw(st.booleans(), label=o[0])]
    can = [o for o in chosen if o[2]]
    bad = data.draw(st.sampled_from(can), label="junk option") if mode == "junk" and can \
        else None
    argv = []
    for flag_, good, junk in chosen:
        if flag_.startswith("<"):                         # a positional argument
            argv.append(data.draw(st.sampled_from(junk if (flag_, good, junk) == bad
                                                  else good), label=flag_))
            continue
        values = junk if (flag_, good, junk) == bad else good
        if values is None:                                # a switch
            argv.append(flag_)
        else:
            argv += [flag_, data.draw(st.sampled_from(values), label=flag_)]
    return argv, bad is not None


QUICK = [("donate-vs-host-access", "hyp-lock"), ("map-vs-map", "rcu"),
         ("unmap-vs-fault", "rcu")]


def gen_explore(data, mode, tmp):
    scenario, scheme = data.draw(st.sampled_from(QUICK), label="scenario")
    search = data.draw(st.sampled_from(["exhaustive", "random", "pct"]), label="search")
    opts = [("--max-states", ["50", "300", "0x100"], JUNK_NUM + ["0"]),
            ("--bug", ["donate-no-tlbi"] if scheme == "hyp-lock" else ["no-bbm-tlbi"],
             ["bogus", "", "no-bbm-tlbi,x"]),
            ("--json", None, None)]
    if search == "exhaustive":
        opts += [("--preemptions", ["0", "1", "2"], JUNK_NUM), ("--exhaustive", None, None)]
    else:
        opts += [("--seed", ["0", "7", str(2 ** 64 - 1)], JUNK_NUM + [str(2 ** 64)])]
        if search == "pct":
            opts += [("--depth", ["1", "2", "3"], JUNK_NUM + ["0", "20001"])]
    argv, junk = _options(data, opts, mode)
    head = ["explore", scenario, "--scheme", scheme]
    if search != "exhaustive":
        head += [f"--{search}", data.draw(st.sampled_from(["1", "3"]), label="runs")]
    return head + argv, junk


@functools.lru_cache(maxsize=None)
def feasible(scenario, scheme) -> list:
    """Schedules every CPU of which can step when its turn comes (checked
    in process): good values for --schedule."""
    import s2pt as lib
    out = []
    for text in ("1*3 0", "0 0 1", "1", "0,1", "0*4 1*4", "1 0 1 0"):
        try:
            lib.replay(scenario, scheme, text)
        except lib.S2ptError:
            continue
        out.append(text)
    return out or ["0"]


def gen_replay(data, mode, tmp):
    scenario, scheme = data.draw(st.sampled_from(QUICK), label="scenario")
    opts = [("--schedule", feasible(scenario, scheme),
             ["x y", "0*9999999999999", "0*99999999", "", "7", "-1", "0*"]),
            ("--log", None, None),
            ("--html", [str(tmp / "t.html")],
             ["", " ", str(tmp / "no-such-dir" / "t.html"), str(tmp)])]
    argv, junk = _options(data, opts, mode)
    return ["replay", scenario, "--scheme", scheme] + argv, junk


def gen_compare(data, mode, tmp):
    opts = [("--vcpus", ["1", "2"], JUNK_NUM + ["0", "5"]),
            ("--runs", ["1", "2"], JUNK_NUM + ["0"]),
            ("--seed", ["0", str(2 ** 64 - 1)], JUNK_NUM + [str(2 ** 64)]),
            ("--max-states", ["100", "300"], JUNK_NUM + ["0"]),
            ("--jobs", ["1", "2"], JUNK_NUM + ["0", "65", "1000"]),
            ("--json", None, None)]
    argv, junk = _options(data, opts, mode)
    return ["compare", "--no-costs", "--no-cache", "--scheme", "hyp-lock", "--scenario",
            "donate-vs-host-access"] + argv, junk


def gen_drill(data, mode, tmp):
    answers = tmp / "answers.txt"
    answers.write_text("0x1000\n" * 3)
    binary = tmp / "binary.bin"
    binary.write_bytes(b"\xff\xfe\x00" * 10)
    opts = [("--seed", ["0", "3", str(2 ** 64 - 1), "0x10"], JUNK_NUM + [str(2 ** 64)]),
            ("-n", ["3"], JUNK_NUM + ["0", "51"]),
            ("--ipa-bits", ["36", "40"], JUNK_NUM + ["31", "49", "52"]),
            ("--granule", ["4096", "16K", "65536"], JUNK_NUM + ["4095", "8K", "4096.0"]),
            ("--answers", [str(answers)],
             ["/dev/zero", str(tmp / "missing.txt"), str(tmp), str(binary)])]
    argv, junk = _options(data, opts, mode)
    if "--answers" in argv and "-n" not in argv:
        argv += ["-n", "3"]                       # the file holds three answers
    return ["drill"] + argv, junk


def gen_scenarios(data, mode, tmp):
    extra = data.draw(st.sampled_from([[], ["--bogus"], ["x"]]), label="extra") \
        if mode == "junk" else []
    return ["scenarios"] + extra, bool(extra)


GENERATORS = {"explore": gen_explore, "replay": gen_replay, "compare": gen_compare,
              "drill": gen_drill, "scenarios": gen_scenarios}


def test_every_subcommand_is_generated():
    from s2pt.cli import COMMANDS
    assert set(COMMANDS) == set(GENERATORS)


@pytest.mark.parametrize("command", sorted(GENERATORS))
@CLI
@given(data=st.data())
def test_generated_command_lines_keep_the_contract(command, data, tmp_path_factory,
                                                   contract_counts):
    tmp = tmp_path_factory.mktemp("cli")
    mode = data.draw(st.sampled_from(["good", "junk", "junk"]), label="mode")
    argv, junk = GENERATORS[command](data, mode, tmp)
    contract_counts["tried"] += 1
    code, _out, err = s2pt(*argv)
    kept(code, err, argv, "error" if junk else "result")
    contract_counts[f"cli exit {code}"] += 1
    contract_counts["passed"] += 1


# ---------------------------------------------------------------------------
# Named regressions
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv,needle", [
    (["replay", "collapse-vs-fault", "--scheme", "none", "--schedule", "0*9999999999999"],
     "more than 20,000 steps"),
    (["replay", "collapse-vs-fault", "--scheme", "none", "--schedule", "0*99999999"],
     "more than 20,000 steps"),
    (["replay", "collapse-vs-fault", "--scheme", "none", "--html", ""], "--html ''"),
    (["explore", "collapse-vs-fault", "--random", str(10 ** 30)], "at most 1,000,000 runs"),
    (["compare", "--jobs", "1000"], "--jobs 1000: at most 64"),
    (["explore", "collapse-vs-fault", "--depth", "3"], "--pct N only"),
    (["explore", "collapse-vs-fault", "--seed", "3"], "--random N or --pct N only"),
    (["explore", "collapse-vs-fault", "--random", "2", "--depth", "3"], "--pct N only"),
    (["explore", "collapse-vs-fault", "--pct", "2", "--depth", "30000"], "--depth 30000"),
    (["compare", "--seed", str(2 ** 64)], "2**64 - 1"),
    (["drill", "--answers", "/dev/zero"], "more than 1,048,576 characters"),
])
def test_issue_21_command_lines(argv, needle):
    code, _out, err = s2pt(*argv, timeout=60)
    kept(code, err, argv, "error")
    assert needle in err, err


@pytest.mark.parametrize("argv", [
    ["drill", "--seed", "2"],
    ["drill", "--seed", "2", "-c"],
    ["scenarios"],
    ["--help"],
    ["replay", "--help"],
    ["replay", "collapse-vs-fault", "--scheme", "none", "--schedule", "1*5 0"],
    ["explore", "donate-vs-host-access", "--scheme", "hyp-lock"],
])
def test_a_full_stdout_is_an_error_not_a_verdict(argv):
    # /dev/full: every write fails with ENOSPC.  Exit 1 would read "found".
    with open("/dev/full", "wb") as full:
        code, _out, err = s2pt(*argv, stdout=full)
    kept(code, err, argv, "error")
    assert "No space left on device" in err


def test_check_answers_from_an_endless_stdin_is_refused():
    with open("/dev/zero", "rb") as zero:
        code, _out, err = s2pt("drill", "--check", "-n", "2", stdin=zero)
    kept(code, err, ["drill", "--check", "< /dev/zero"], "error")
    assert "longer than 4,096 characters" in err
    with open("/dev/zero", "rb") as zero:
        code, _out, err = s2pt("drill", "--answers", "-", stdin=zero)
    kept(code, err, ["drill", "--answers", "- < /dev/zero"], "error")


def test_results_keep_exit_1():
    code, out, err = s2pt("replay", "collapse-vs-fault", "--scheme", "none", "--schedule",
                          "1*5 0")
    kept(code, err, ["replay"], "result")
    assert code == 1 and "USE-AFTER-FREE" in out
    code, out, err = s2pt("explore", "donate-vs-host-access", "--scheme", "hyp-lock")
    assert code == 0 and "Traceback" not in err


def test_an_interrupted_command_prints_one_line(tmp_path):
    # Ctrl-C during a long search: no traceback, exit 130. The search must
    # outlast the timer by far: collapse-vs-fault-3 once took minutes and
    # now takes under a second, so a CI run interrupted Python's shutdown
    # instead. collapse-vs-fault-4 under rcu-rfc is the longest search the
    # course declares (about a million states, over 20 s alone).
    p = subprocess.Popen([sys.executable, "-c",
                          "import signal, threading, os, sys;"
                          "from s2pt.cli import main;"
                          "t = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT));"
                          "t.daemon = True; t.start();"
                          "sys.exit(main(['explore', 'collapse-vs-fault-4', '--scheme', "
                          "'rcu-rfc']))"],
                         cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, (p.returncode, err)
    assert err.decode().strip().splitlines()[-1] == "s2pt explore: interrupted"
    assert b"Traceback" not in err
