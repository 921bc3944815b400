"""s2pt.drill and ``python -m s2pt drill``: OSTEP-style translation drills.

What must hold: a seed fixes the drill; every answer is what the MMU model
(Stage2.translate) says; the worked walk shows the descriptors that really
are in memory at the addresses it prints; a drill mixes hits and faults; the
command line never shows a traceback for bad input.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import s2pt
from s2pt.drill import Drill

ROOT = Path(__file__).resolve().parent.parent

GEOMETRIES = [
    dict(),                                   # 36-bit, 4K: 3 levels from level 1
    dict(ipa_bits=32),                        # 2 levels, 4 concatenated PGD pages
    dict(ipa_bits=40),                        # KVM's default: 2 concatenated pages
    dict(ipa_bits=48),                        # 4 levels from level 0
    dict(granule=16384),
    dict(granule=65536, ipa_bits=42),
]

STEP = re.compile(r"level (\d): .* @ (0x[0-9a-f]+) = (0x[0-9a-f]{16})")
QUESTION = re.compile(r"IPA (0x[0-9a-f]+) \((read|write|exec)\)")


def translate(pgt, ipa, access):
    """Stage2.translate's verdict as (pa, fault, level)."""
    try:
        t = pgt.translate(ipa, write=access == "write", exec=access == "exec")
    except s2pt.Fault as f:
        return None, f.kind, f.level, f.fsc
    return t.pa, None, t.level, None


# -- determinism ----------------------------------------------------------------

def test_same_seed_same_drill():
    for kw in GEOMETRIES:
        a, b = Drill(seed=7, **kw), Drill(seed=7, **kw)
        assert a.problem() == b.problem()
        assert a.solution() == b.solution()
        assert a.answers() == b.answers()


def test_different_seeds_differ():
    problems = {Drill(seed=s).problem() for s in range(20)}
    assert len(problems) == 20
    questions = {tuple(Drill(seed=s).questions) for s in range(20)}
    assert len(questions) == 20


def test_drill_is_deterministic_across_processes():
    """Nothing depends on hash randomisation or object ids."""
    code = "import s2pt, sys; d = s2pt.Drill(11); sys.stdout.write(d.problem() + d.solution())"
    outs = set()
    for hashseed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=hashseed, PYTHONPATH=str(ROOT))
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout)
    assert len(outs) == 1
    assert outs.pop() == Drill(seed=11).problem() + Drill(seed=11).solution()


def test_golden_seed_1():
    """Pinned, like ostep-homework-web pins seeds to the Python reference: if
    this changes, every printed worksheet for seed 1 changes too."""
    got = [(a["ipa"], a["access"], a["pa"], a["fault"], a["level"])
           for a in Drill(seed=1).answers()]
    assert got == [
        (0x8184cfefa, "write", None, "translation", 1),
        (0x91b9ccb0f, "exec", None, "access", 3),
        (0xdd9337164, "read", 0x10450164, None, 3),
        (0x885c686ee, "write", 0xb286236ee, None, 3),
        (0x91b9fbd51, "exec", 0xd25cedd51, None, 3),
    ]


def test_args_echoed():
    text = Drill(seed=4, n=3, ipa_bits=40, granule=16384).problem()
    first = text.splitlines()[0]
    assert first == "Drill: python -m s2pt drill --seed 4 -n 3 --ipa-bits 40 --granule 16K"
    assert "ARG" not in text


# -- the answers are the model's answers ----------------------------------------------

@pytest.mark.parametrize("kw", GEOMETRIES, ids=str)
def test_answers_agree_with_translate(kw):
    for seed in range(15):
        d = Drill(seed=seed, n=8, **kw)
        answers = d.answers()
        assert [(a["ipa"], a["access"]) for a in answers] == d.questions
        assert len({a["ipa"] for a in answers}) == len(answers)
        for a in answers:
            pa, fault, level, fsc = translate(d.pgt, a["ipa"], a["access"])
            assert (a["pa"], a["fault"], a["level"], a["fsc"]) == (pa, fault, level, fsc), (seed, a)


@pytest.mark.parametrize("kw", GEOMETRIES, ids=str)
def test_trail_reads_memory_and_ends_at_the_leaf(kw):
    """Each step's descriptor is what read64 returns at its address, each
    step follows the previous table descriptor, and the last one is the
    entry kvm_pgtable_get_leaf finds."""
    for seed in range(10):
        d = Drill(seed=seed, **kw)
        g, pgt = d.geom, d.pgt
        for a in d.answers():
            trail = a["trail"]
            assert [s["level"] for s in trail] == list(range(g.start_level, a["level"] + 1))
            assert trail[0]["table"] == pgt.pgd + g.pgd_page_idx(a["ipa"]) * g.granule
            for i, s in enumerate(trail):
                assert s["ptep"] == s["table"] + 8 * s["index"]
                assert s["index"] == g.idx(a["ipa"], s["level"])
                assert s["pte"] == pgt.mem.read64(s["ptep"])
                if i + 1 < len(trail):
                    assert s["kind"] == "table"
                    assert trail[i + 1]["table"] == s["pte"] & pgt.addr_mask
            assert (trail[-1]["pte"], trail[-1]["level"]) == pgt.get_leaf(a["ipa"])


@pytest.mark.parametrize("kw", GEOMETRIES, ids=str)
def test_printed_walk_matches_memory(kw):
    """The text a student reads: every 'level L: ... @ addr = value' line is
    true of memory, and the walks appear in question order."""
    for seed in range(5):
        d = Drill(seed=seed, **kw)
        sol = d.solution()
        steps = STEP.findall(sol)
        assert len(steps) == sum(len(a["trail"]) for a in d.answers())
        for _level, addr, value in steps:
            assert d.pgt.mem.read64(int(addr, 16)) == int(value, 16)
        asked = [(int(ipa, 16), acc) for ipa, acc in QUESTION.findall(d.problem())]
        walked = [(int(ipa, 16), acc) for ipa, acc in QUESTION.findall(sol)]
        assert asked == walked == d.questions
        for a in d.answers():
            if a["fault"] is None:
                assert f"--> PA {a['pa']:#x}" in sol
            else:
                assert f"--> Fault: {a['fault']} at level {a['level']} (FSC {a['fsc']:#04x})" in sol


@pytest.mark.parametrize("kw", GEOMETRIES, ids=str)
def test_dump_shows_every_table_page_and_nothing_else(kw):
    d = Drill(seed=2, **kw)
    text = d.problem()
    pages = [int(p, 16) for p in re.findall(r"^page (0x[0-9a-f]+):$", text, re.M)]
    assert pages == sorted(pa for pa, _ in d.tables())
    assert pages[:d.geom.pgd_pages] == [d.pgt.pgd + k * d.geom.granule
                                        for k in range(d.geom.pgd_pages)]
    # every table page the walker can reach is dumped: the model's own count
    assert len(pages) == d.geom.pgd_pages + d.pgt.stats["tables_live"]
    entries = re.findall(r"^\s+(\d+): (0x[0-9a-f]{16})$", text, re.M)
    assert entries and all(int(v, 16) != 0 for _, v in entries)


# -- the mix ---------------------------------------------------------------------

def test_mix_of_hits_and_faults():
    outcomes = Counter()
    for seed in range(40):
        answers = Drill(seed=seed).answers()
        hits = sum(a["fault"] is None for a in answers)
        assert 2 <= hits <= 3, seed                       # about half of 5
        for a in answers:
            outcomes[(a["fault"], a["level"])] += 1
    kinds = {k for k, _ in outcomes}
    assert kinds == {None, "translation", "access", "permission"}
    # translation faults at every level of the 36-bit/4K walk, hits at block and page level
    assert {lvl for k, lvl in outcomes if k == "translation"} == {1, 2, 3}
    assert {lvl for k, lvl in outcomes if k is None} == {2, 3}


def test_table_has_the_promised_ingredients():
    """Blocks, pages, device, non-exec, read-only and AF-clear leaves."""
    for seed in range(20):
        d = Drill(seed=seed)
        leaves = [(pte, lvl) for _, lvl in d.tables()
                  for pte in _entries(d, _, lvl) if s2pt.decode(pte, lvl).kind in ("block", "page")]
        decs = [s2pt.decode(pte, lvl) for pte, lvl in leaves]
        assert any(x.kind == "block" for x in decs) and any(x.kind == "page" for x in decs)
        assert any(x.memattr == "device" for x in decs)
        assert any("X" not in x.prot and x.memattr == "normal" for x in decs)
        assert any("W" not in x.prot for x in decs)
        assert any(not pte & (1 << 10) for pte, _ in leaves)


def _entries(d, pa, level):
    return [d.pgt.mem.read64(pa + 8 * i) for i in range(d.geom.ptrs_per_pte)]


def test_exec_and_write_permission_faults_appear():
    reasons = set()
    for seed in range(40):
        d = Drill(seed=seed, n=8)
        for w in d._walks:
            if w.fault == "permission":
                reasons.add(w.access)
    assert {"write", "exec"} <= reasons


def test_walk_is_public_and_checks_input():
    d = Drill(seed=0)
    ipa, acc = d.questions[0]
    assert d.walk(ipa, acc).as_dict() == d.answers()[0]
    with pytest.raises(s2pt.S2ptError):
        d.walk(ipa, "jump")
    with pytest.raises(s2pt.S2ptError):
        d.walk(1 << d.ipa_bits)


@pytest.mark.parametrize("kw", [dict(seed=-1), dict(seed="1"), dict(n=0), dict(n=51),
                                dict(granule=1234), dict(ipa_bits=31), dict(ipa_bits=52)])
def test_bad_parameters(kw):
    with pytest.raises(s2pt.S2ptError):
        Drill(**kw)


# -- notebook face ---------------------------------------------------------------

def test_package_entry_point_and_reprs():
    d = s2pt.Drill(5, n=3)
    assert isinstance(d, Drill)
    assert s2pt.Drill(5, n=3).problem() == d.problem()
    assert str(d) == d.problem()
    html = d._repr_html_()
    assert "<details>" in html and "</details>" in html
    # the answers are inside the <details>, the questions before it
    head, hidden = html.split("<details>", 1)
    assert "translates to what PA?" in head and "--&gt;" not in head
    assert "--&gt;" in hidden


# -- the command line --------------------------------------------------------------

def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "s2pt", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_drill_solve():
    r = run_cli("drill", "--seed", "3", "--solve")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    d = Drill(seed=3)
    assert r.stdout.startswith("Drill: python -m s2pt drill --seed 3 -n 5 ")
    assert "ARG " not in r.stdout
    assert d.problem() in r.stdout and d.solution() in r.stdout
    for piece in ("VTTBR_EL2", "VTCR_EL2", "page 0x80000000:", "translates to what PA? Or fault?",
                  "IPA split:", "-->", "level 1: PGD 0x80000000"):
        assert piece in r.stdout, piece


def test_cli_drill_without_solve_hides_answers():
    r = run_cli("drill", "-s", "3", "-n", "4", "--ipa-bits", "32", "--granule", "16K")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(Drill(seed=3, n=4, ipa_bits=32, granule=16384).problem())
    assert "-->" not in r.stdout and "-c" in r.stdout


@pytest.mark.parametrize("args, words", [
    (["drill", "--granule", "1234"], "granule=1234"),
    (["drill", "--seed", "abc"], "--seed"),
    (["drill", "--n", "0"], "n=0"),
    (["drill", "--ipa-bits", "60"], "ipa_bits=60"),
    (["drill", "--bogus"], "--bogus"),
    (["nope"], "nope"),
])
def test_cli_bad_input_exits_2_with_one_line(args, words):
    r = run_cli(*args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("s2pt"), r.stderr
    assert re.match(r"s2pt( drill)?: ", lines[0]) and words in lines[0]


def test_cli_no_command_prints_help():
    r = run_cli()
    assert r.returncode == 2 and "drill" in r.stderr and "Traceback" not in r.stderr


def test_cli_registry_adds_commands_with_one_function():
    from s2pt import cli
    seen = []

    @cli.command("echo-test", help="test only", args=[cli.arg("--x", type=int, default=1)])
    def _echo(args):
        seen.append(args.x)
        return 0

    try:
        assert cli.main(["echo-test", "--x", "5"]) == 0 and seen == [5]
    finally:
        del cli.COMMANDS["echo-test"]


# -- checking a student's answers -------------------------------------------------------

from s2pt.drill import parse_answer, read_answers  # noqa: E402


def _right_answers(d):
    return [a["pa"] if a["fault"] is None else (a["fault"], a["level"]) for a in d.answers()]


def _as_text(answer):
    return f"{answer:#x}" if isinstance(answer, int) else f"{answer[0]} fault at level {answer[1]}"


@pytest.mark.parametrize("text,want", [
    ("0x8_0000_1234", 0x8_0000_1234), ("PA 0x800001234", 0x8_0000_1234),
    ("-> 0x10", 0x10), ("3: 0x10", 0x10), ("translation 3", ("translation", 3)),
    ("Permission fault, level 2", ("permission", 2)), ("access flag fault at level 3", ("access", 3)),
    ("fault: translation at level 0", ("translation", 0)), ("Q2) access 3", ("access", 3)),
])
def test_parse_answer_reads_the_usual_forms(text, want):
    assert parse_answer(text) == want


@pytest.mark.parametrize("text,words", [
    ("banana", "not an answer"), ("translation", "needs its level"),
    ("1234", "in hex"), ("access 7", "levels run from 0 to 3"), ("0x1_0000_0000_0000", "below 2"),
])
def test_parse_answer_refuses_with_the_rule(text, words):
    with pytest.raises(s2pt.S2ptError, match=words):
        parse_answer(text)


@pytest.mark.parametrize("kw", GEOMETRIES)
def test_check_marks_right_answers_right_and_each_wrong_one_wrong(kw):
    for seed in range(4):
        d = Drill(seed=seed, n=6, **kw)
        right = _right_answers(d)
        assert all(v.right and not v.rule for v in d.check(right))
        assert all(v.right for v in d.check([_as_text(a) for a in right]))
        for k, answer in enumerate(right):
            wrong = list(right)
            wrong[k] = (answer ^ 0x8) if isinstance(answer, int) else (
                (answer[0], (answer[1] + 1) % 4) if answer[0] != "translation" else ("access", answer[1]))
            verdicts = d.check(wrong)
            assert [v.right for v in verdicts] == [i != k for i in range(len(right))]
            bad = verdicts[k]
            assert bad.expected == answer and bad.rule, bad
            report = d.report(verdicts)
            assert f"Q{k + 1} " in report and ": wrong" in report
            assert f"Score: {len(right) - 1}/{len(right)} right." in report


def test_wrong_answers_get_the_rule():
    d = Drill(seed=3)
    right = _right_answers(d)
    ok = next(i for i, a in enumerate(right) if isinstance(a, int))
    v = d.check_one(ok + 1, right[ok] & ~0xfff)            # the page base, no offset
    assert not v.right and "add the offset IPA[11:0]" in v.rule
    fault = next(i for i, a in enumerate(right) if isinstance(a, tuple))
    v = d.check_one(fault + 1, (right[fault][0], (right[fault][1] + 1) % 4))
    assert "level of the last descriptor read" in v.rule
    v = d.check_one(ok + 1, ("translation", 1))
    assert "no fault" in v.rule


def test_check_refuses_bad_answer_lists():
    d = Drill(seed=1)
    with pytest.raises(s2pt.S2ptError, match="4 answers for 5 questions"):
        d.check([0x1000] * 4)
    with pytest.raises(s2pt.S2ptError, match="a fault is"):
        d.check([("bogus", 1)] * 5)
    with pytest.raises(s2pt.S2ptError, match="number"):
        d.check_one(6, 0x1000)


def test_read_answers_skips_comments_and_names_bad_lines():
    assert read_answers("# mine\n0x10\n\ntranslation 2  # the empty one\n", 2) == \
        [0x10, ("translation", 2)]
    with pytest.raises(s2pt.S2ptError, match=r"f\.txt, line 3: answer 'x'"):
        read_answers("0x10\n\nx\n", 2, "f.txt")
    with pytest.raises(s2pt.S2ptError, match="1 answers for 2 questions"):
        read_answers("0x10\n", 2)


def _cli(*args, stdin=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "s2pt", *args], cwd=ROOT, env=env, input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_cli_drill_answers_file(tmp_path):
    d = Drill(seed=3)
    right = _right_answers(d)
    path = tmp_path / "answers.txt"
    path.write_text("\n".join(_as_text(a) for a in right) + "\n")
    r = _cli("drill", "--seed", "3", "--answers", str(path))
    assert r.returncode == 0 and "Score: 5/5 right." in r.stdout and "wrong" not in r.stdout
    wrong = list(right)
    wrong[0] = ("translation", 0) if isinstance(right[0], int) else 0x1000
    path.write_text("\n".join(_as_text(a) for a in wrong) + "\n")
    r = _cli("drill", "--seed", "3", "--answers", str(path))
    assert r.returncode == 1 and "Q1 " in r.stdout and ": wrong" in r.stdout
    assert "the answer: " in r.stdout and "rule: " in r.stdout and "Score: 4/5 right." in r.stdout


@pytest.mark.parametrize("content,args,words", [
    (None, ["--answers", "/nonexistent/answers.txt"], "cannot read it"),
    ("0x10\n", [], "1 answers for 5 questions"),
    ("0x10\nbanana\n", [], "line 2: answer 'banana'"),
    ("0x10\n", ["-c"], "cannot be combined"),
    ("0x10\n", ["--check"], "use one of them"),
])
def test_cli_drill_bad_answers_exit_2_with_one_line(tmp_path, content, args, words):
    if content is not None:
        path = tmp_path / "a.txt"
        path.write_text(content)
        args = ["--answers", str(path), *args]
    r = _cli("drill", "--seed", "3", *args)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("s2pt drill: ") and words in r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_cli_drill_check_asks_on_stdin():
    d = Drill(seed=3)
    right = _right_answers(d)
    lines = ["banana"] + [_as_text(a) for a in right]          # a bad line is asked again
    lines[1] = ("access 3" if isinstance(right[0], int) else "0x1000")
    r = _cli("drill", "--seed", "3", "--check", stdin="\n".join(lines) + "\n")
    assert r.returncode == 1, r.stderr
    assert "try again" in r.stdout and r.stdout.count("    right") == 4
    assert "    wrong" in r.stdout and "Score: 4/5 right." in r.stdout
    r = _cli("drill", "--seed", "3", "--check", stdin="0x10\n")
    assert r.returncode == 2 and "stdin ended after 1 of 5 answers" in r.stderr


# -- the drill widget -----------------------------------------------------------------------

def test_drill_widget_checks_answers_like_the_command_line():
    pytest.importorskip("ipywidgets")
    from s2pt.widgets import Drill as DrillWidget
    w = DrillWidget(seed=3)
    d = Drill(seed=3)
    assert d.problem().splitlines()[3] in w.problem.value and len(w.boxes) == 5
    right = _right_answers(d)
    for k, a in enumerate(right, 1):
        w.answer(k, _as_text(a))
    w.answer(2, "0x1000" if isinstance(right[1], tuple) else "translation 0")
    w.answer(3, "banana")
    w.check_button.click()
    assert [v is not None and v.right for v in w.verdicts] == [True, False, False, True, True]
    assert w.verdicts[2] is None and "not an answer" in w.html
    assert "Q2 " in w.html and ": wrong" in w.html and "rule: " in w.html
    assert "Score: 3/5 right." in w.html
    w.solve_button.click()
    assert d.solution().splitlines()[-1] in w.html.replace("&gt;", ">")
    w.seed_box.value = "4"
    w.new_button.click()
    assert w.drill.seed == 4 and all(b.value == "" for b in w.boxes) and w.html == ""
    assert not w.load("-1") and "seed" in w.html and w.drill.seed == 4   # refused, unchanged
    # The hint for a bad seed suggests a seed, not an address or a size.
    assert not w.load("banana") and "such as 3" in w.html and "0x4000_0000" not in w.html
