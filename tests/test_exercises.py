"""The exercise pipeline: solutions/ -> exercises/ with nbgrader, and grading.

* exercises/ is exactly what ``s2pt.exercises.build`` makes from solutions/;
* a student version has no solution code, no model answer and no hidden tests;
* a blank submission fails only its graded cells, cleanly (NotImplementedError,
  NameError or a feedback message), and scores 0; the solution's code, pasted
  into the student version and graded with the hidden tests put back, scores
  full marks;
* known wrong answers fail the cell that tests their rule, with a message
  that names the expected value, the rule and the notebook section;
* the real nbgrader (generate_assignment, then autograde) gives a solution
  copy full marks and an untouched copy zero.

That the solution notebooks themselves run is checked in test_notebooks.py,
which executes solutions/*.ipynb along with the course notebooks.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbgrader")

from s2pt.exercises import build  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
IDS = [p.name for p in SOLUTIONS]
MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION",
           "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")


def _nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def _by_grade_id(nb) -> dict:
    return {_nbgrader(c)["grade_id"]: c for c in nb.cells if "grade_id" in _nbgrader(c)}


def _kernel_manager():
    """``python3`` from *this* interpreter, never a kernelspec installed for another one."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    ksm = KernelSpecManager(kernel_dirs=[], ensure_native_kernel=True)
    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=ksm)


def _execute(nb, cwd: Path, allow_errors: bool):
    from nbclient import NotebookClient

    client = NotebookClient(nb, km=_kernel_manager(), kernel_name="python3", timeout=300,
                            allow_errors=allow_errors,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute(cleanup_kc=True)
    return nb


def _errors(cell) -> list[str]:
    return [o.get("ename", "") for o in cell.get("outputs", []) if o.get("output_type") == "error"]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """build() run now, from solutions/ into a scratch folder."""
    out = tmp_path_factory.mktemp("exercises")
    return {p.name: p for p in build(ROOT / "solutions", out)}


def test_there_is_an_exercise():
    assert SOLUTIONS, "solutions/ holds no notebooks"


def test_exercises_are_up_to_date(fresh):
    committed = sorted(p.name for p in (ROOT / "exercises").glob("*.ipynb"))
    assert committed == sorted(fresh), "exercises/ and solutions/ hold different notebooks"
    for name, path in fresh.items():
        want = nbformat.read(path, as_version=4)
        have = nbformat.read(ROOT / "exercises" / name, as_version=4)
        assert [(c.cell_type, c.source) for c in have.cells] == \
               [(c.cell_type, c.source) for c in want.cells], \
            f"exercises/{name} is stale: run `python -m s2pt.exercises`"
        assert [_nbgrader(c) for c in have.cells] == [_nbgrader(c) for c in want.cells]


@pytest.mark.parametrize("name", IDS)
def test_student_version_hides_the_answers(name, fresh):
    solution = nbformat.read(ROOT / "solutions" / name, as_version=4)
    student = nbformat.read(fresh[name], as_version=4)
    text = "\n".join(c.source for c in student.cells)
    for marker in MARKERS:
        assert marker not in text, f"{marker} left in the student version"
    # Every line between the markers in the solution is gone from the student version.
    hidden, inside = [], False
    for cell in solution.cells:
        for line in cell.source.splitlines():
            if line.strip().startswith(("### BEGIN SOLUTION", "### BEGIN HIDDEN TESTS")):
                inside = True
            elif line.strip().startswith(("### END SOLUTION", "### END HIDDEN TESTS")):
                inside = False
            elif inside and len(line.strip()) > 12:
                hidden.append(line.strip())
    assert hidden, "the solution has no solution code or hidden tests"
    student_lines = {line.strip() for line in text.splitlines()}
    leaked = [line for line in hidden if line in student_lines]
    assert not leaked, f"solution or hidden-test lines in the student version: {leaked[:3]}"
    solution_cells = [c for c in student.cells if _nbgrader(c).get("solution")]
    assert solution_cells and all("raise NotImplementedError" in c.source
                                  for c in solution_cells if c.cell_type == "code")
    answers = {_nbgrader(c)["grade_id"]: c.source for c in solution.cells
               if _nbgrader(c).get("solution") and c.cell_type == "markdown"}
    for c in solution_cells:
        if c.cell_type == "markdown":
            # A written answer: the model answer is the solution's, the student sees a stub.
            assert c.source.strip() == "YOUR ANSWER HERE", c.source[:80]
            assert len(answers[_nbgrader(c)["grade_id"]]) > 200, "a written answer needs a model answer"
    graded = [c for c in student.cells if _nbgrader(c).get("grade")]
    assert graded and all(_nbgrader(c).get("points", 0) > 0 for c in graded)
    assert all(c.source.strip() for c in graded), "every grade cell keeps a visible test"
    assert all(c.get("execution_count") is None and not c.get("outputs")
               for c in student.cells if c.cell_type == "code")


def _grade(submission, solution):
    """nbgrader autograde, in miniature: put the instructor's grade cells (with
    their hidden tests) back by grade_id; the student's solution cells stay."""
    graded = copy.deepcopy(submission)
    originals = _by_grade_id(solution)
    for cell in graded.cells:
        meta = _nbgrader(cell)
        if meta.get("grade") and not meta.get("solution"):
            cell.source = originals[meta["grade_id"]].source
    return graded


def _autograded(cell) -> bool:
    """A grade cell that code grades (a written answer is graded by hand)."""
    return bool(_nbgrader(cell).get("grade")) and cell.cell_type == "code"


def _score(nb) -> tuple[float, float]:
    got = total = 0.0
    for cell in nb.cells:
        meta = _nbgrader(cell)
        if _autograded(cell):
            total += meta["points"]
            if not _errors(cell):
                got += meta["points"]
    return got, total


#: the errors a blank submission may raise: its own stubs, the names they never
#: defined, and the feedback of a failed check
CLEAN = {"NotImplementedError", "NameError", "Wrong"}


def _error_text(cell) -> str:
    return "\n".join(f"{o.get('ename')}: {o.get('evalue')}" for o in cell.get("outputs", [])
                     if o.get("output_type") == "error")


def _assert_blank_fails_only_graded_cells_cleanly(nb, name):
    """A graded, executed untouched submission: its stubs raise
    NotImplementedError only where called, every grade cell fails, and
    cleanly (its own stubs, the names they never defined, or a check's
    Wrong with the rule and where it is taught), nothing else fails, and
    it scores nothing."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        meta = _nbgrader(cell)
        if meta.get("solution"):
            # Defining the function is fine; calling it must fail.
            assert not _errors(cell) or _errors(cell) == ["NotImplementedError"], name
        elif meta.get("grade"):
            assert _errors(cell), f"{name}: grade cell {meta['grade_id']} passed a blank submission"
            assert set(_errors(cell)) <= CLEAN, \
                f"{name}: grade cell {meta['grade_id']} failed uncleanly: {_error_text(cell)}"
            if "Wrong" in _errors(cell):
                assert "taught:" in _error_text(cell) and "rule:" in _error_text(cell)
        else:
            assert not _errors(cell), \
                f"{name}: ungraded cell {meta.get('grade_id')} failed: {_error_text(cell)}"
    got, total = _score(nb)
    assert got == 0 and total > 0, name


def _assert_full_marks(nb, name):
    """A graded, executed submission of the solution code: it ran the
    hidden tests, no cell failed, and it scores every auto-graded point."""
    assert any("### BEGIN HIDDEN TESTS" in c.source for c in nb.cells), \
        f"{name}: grading must run the hidden tests"
    failures = {_nbgrader(c).get("grade_id"): _errors(c) for c in nb.cells if _errors(c)}
    assert not failures, f"{name}: cells failed: {failures}"
    got, total = _score(nb)
    assert got == total > 0, name


# -- wrong answers get feedback that names the rule ------------------------------------

#: (exercise, solution cell, (old, new) edits to its code, the grade cell that must
#: fail, words its message must hold).  Each is a classic mistake.
MISTAKES = [
    ("01-walk-by-hand.ipynb", "walk", [("~(g.granule - 1)", "~0xfff")],
     "test_translate", "bits 47:PAGE_SHIFT"),                       # a 4K address mask
    ("01-walk-by-hand.ipynb", "walk", [("if level == 3 and not desc & 2:", "if False:")],
     "test_faults", "reserved encoding"),                           # no reserved rule
    ("01-walk-by-hand.ipynb", "walk", [("| (ipa & (size - 1))", "| (ipa & 0xfff)")],
     "test_translate", "your PA used IPA[11:0]"),                   # a 4K page offset
    ("02-find-the-race.ipynb", "answer_c",
     [("min_preemptions, states_needed = k, r.states", "min_preemptions, states_needed = k + 1, r.states")],
     "test_c", "is not the smallest bound"),                        # not minimal
    ("03-decode-by-hand.ipynb", "answer_a",
     [('9: ("locked", None, None, None)', '9: ("invalid", None, None, None)')],
     "test_a", "KVM_INVALID_PTE_LOCKED"),
    ("04-split-a-block.ipynb", "split_block",
     [('    yield ops.tlbi("ipa", ctx.addr, ctx.level)\n', ""),
      ("    yield ops.smp_store_release(ctx.ptep, d.kvm_init_table_pte(childp, pgt.page_shift))",
       "    yield ops.smp_store_release(ctx.ptep, d.kvm_init_table_pte(childp, pgt.page_shift))\n"
       "    yield ops.tlbi(\"ipa\", ctx.addr, ctx.level)")],
     "test_split", "yours came after the make"),                    # make before TLBI
    ("04-split-a-block.ipynb", "split_block",
     [("    yield ops.put_page(ctx.ptep)                 # the block's reference on its table...\n", ""),
      ("    yield ops.get_page(ctx.ptep)\n", "")],
     "test_split", "the break drops the block's (put_page)"),      # no reference moved
    ("04-split-a-block.ipynb", "predict",
     [('"TLBIs": 32,', '"TLBIs": 0,')],
     "test_predict", "what each one owes"),                         # no TLBI for a split
    ("05-collapse-and-hand-off.ipynb", "collapse_table",
     [("yield from pgt.mm_ops.free_unlinked_table(pgt, table, ctx.level)",
       "yield from pt.kvm_pgtable_stage2_free_unlinked(pgt, table, ctx.level)")],
     "test_collapse", "call_rcu"),                                  # frees under a reader
    ("06-pkvm-donate-reclaim.ipynb", "choose_pages",
     [("order = [pa for pages in split for pa in pages] + [pa for pages in whole for pa in pages]",
       "order = [pa for pages in whole for pa in pages] + [pa for pages in split for pa in pages]")],
     "test_choose", "costs no new table"),
    ("07-fix-the-refcount-walker.ipynb", "table_enter",
     [("        cur = yield READ_ONCE(ctx.ptep)\n", ""),
      ("        if kvm_pte_table(cur, ctx.level) and cur & ctx.pgt.addr_mask == childp:\n"
       "            return childp\n", "        return childp\n")],
     "test_aba", "no longer the table it read the pointer of"),    # get-unless-zero alone
    ("08-grace-periods.ipynb", "predict",
     [('waits_for = {"vCPU0", "vCPU1"}', 'waits_for = {"vCPU1"}')],
     "test_predict", "the caller included if it is inside one"),
    ("09-choose-a-scheme.ipynb", "el2",
     [("            and not any(cmp.cost(s, n).grace_periods for n in cmp.vcpus)]", "            ]")],
     "test_el2", "the cost runs count too"),                        # usage alone
]


@pytest.mark.slow
@pytest.mark.parametrize("name,cell,edits,failing,words", MISTAKES,
                         ids=[f"{m[0][:2]}-{m[3]}-{i}" for i, m in enumerate(MISTAKES)])
def test_a_classic_mistake_fails_with_feedback(name, cell, edits, failing, words, fresh):
    solution = nbformat.read(ROOT / "solutions" / name, as_version=4)
    submission = nbformat.read(fresh[name], as_version=4)
    answers = _by_grade_id(solution)
    for c in submission.cells:
        meta = _nbgrader(c)
        if meta.get("solution"):
            src = "\n".join(line for line in answers[meta["grade_id"]].source.splitlines()
                            if "### BEGIN SOLUTION" not in line and "### END SOLUTION" not in line)
            if meta["grade_id"] == cell:
                for old, new in edits:
                    assert old in src, f"the mistake no longer applies: {old!r}"
                    src = src.replace(old, new)
            c.source = src
    nb = _execute(_grade(submission, solution), ROOT / "exercises", allow_errors=True)
    failed = {_nbgrader(c)["grade_id"]: _error_text(c) for c in nb.cells if _errors(c)}
    assert failing in failed, f"{failing} passed the mistake; failures: {list(failed)}"
    text = failed[failing]
    assert text.startswith("Wrong: ") and not text.startswith("Wrong: Wrong:"), text
    assert words in text, text
    for part in ("expected:", "got:", "rule:", "taught:   notebook "):
        assert part in text, f"{part!r} missing from: {text}"


# -- the real nbgrader --------------------------------------------------------------------

def _nbgrader_cli(course: Path, *args):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    r = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
def test_real_nbgrader_full_marks_for_the_solution_code_zero_for_untouched(tmp_path, fresh):
    """nbgrader generate_assignment from solutions/, then autograde two
    submissions of the student version (exercises/, as s2pt.exercises
    builds it): with the solution code pasted in, every auto-graded point
    and no failing cell (written answers wait for a human); untouched,
    nothing, and only its graded cells fail, cleanly.  The same runs are
    the course's check that every solution runs top to bottom (the hidden
    tests included)."""
    import shutil

    from nbgrader.api import Gradebook

    course = tmp_path / "course"
    (course / "source" / "ps").mkdir(parents=True)
    for path in SOLUTIONS:
        shutil.copy(path, course / "source" / "ps" / path.name)
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        f"c.CourseDirectory.root = {str(course)!r}\n"
        "c.CourseDirectory.course_id = 's2pt'\n"
        "c.ExecutePreprocessor.timeout = 600\n")
    _nbgrader_cli(course, "generate_assignment", "ps", "--force")
    released = sorted(p.name for p in (course / "release" / "ps").glob("*.ipynb"))
    assert released == IDS
    for student, make in (("pasted", lambda name: _pasted(name, fresh)),
                          ("untouched", lambda name: nbformat.read(fresh[name], as_version=4))):
        dest = course / "submitted" / student / "ps"
        dest.mkdir(parents=True)
        for name in IDS:
            nbformat.write(make(name), dest / name)
    _nbgrader_cli(course, "autograde", "ps")
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for student in ("pasted", "untouched"):
            sub = gb.find_submission("ps", student)
            scores = {nb.name: (nb.code_score, nb.max_code_score) for nb in sub.notebooks}
            assert sorted(scores) == sorted(p[:-len(".ipynb")] for p in IDS)
            for nb_name, (score, most) in scores.items():
                assert most > 0, nb_name
                want = most if student == "pasted" else 0
                assert score == want, f"{student} {nb_name}: {score} of {most}"
    for name in IDS:
        graded = course / "autograded"
        _assert_full_marks(nbformat.read(graded / "pasted" / "ps" / name, as_version=4), name)
        _assert_blank_fails_only_graded_cells_cleanly(
            nbformat.read(graded / "untouched" / "ps" / name, as_version=4), name)


# -- a self-learner's grader: python -m s2pt.exercises grade -------------------------------

def _pasted(name, fresh, edits=()):
    """The student version with the solution's code pasted in (and ``edits`` applied)."""
    solution = nbformat.read(ROOT / "solutions" / name, as_version=4)
    submission = nbformat.read(fresh[name], as_version=4)
    answers = _by_grade_id(solution)
    for c in submission.cells:
        meta = _nbgrader(c)
        if meta.get("solution"):
            src = "\n".join(line for line in answers[meta["grade_id"]].source.splitlines()
                            if "### BEGIN SOLUTION" not in line and "### END SOLUTION" not in line)
            for old, new in edits:
                src = src.replace(old, new)
            c.source = src
    return submission


def _grade_cli(path: Path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.run([sys.executable, "-m", "s2pt.exercises", "grade", str(path),
                           "--solutions", str(ROOT / "solutions")],
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_grade_runs_the_hidden_tests_on_the_students_own_notebook(tmp_path, fresh):
    name = "03-decode-by-hand.ipynb"
    folder = tmp_path / "exercises"
    folder.mkdir()
    right, wrong, blank = folder / "right.ipynb", folder / "wrong.ipynb", folder / "blank.ipynb"
    nbformat.write(_pasted(name, fresh), right)
    # Descriptor 12 is one the visible tests never name: only the hidden tests see it
    nbformat.write(_pasted(name, fresh, [('12: ("reserved", None, None, None)',
                                          '12: ("block", 0x4000_0000, 1 * GiB, "RWX")')]), wrong)
    blank.write_bytes(fresh[name].read_bytes())
    for path in (right, wrong, blank):
        path.with_suffix(".bak").write_bytes(path.read_bytes())
    r = _grade_cli(right)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "10 of 10 points" in r.stdout and "FAILED" not in r.stdout
    r = _grade_cli(wrong)
    assert r.returncode == 1 and "test_a                   0/5  FAILED" in r.stdout, r.stdout
    assert "Wrong: descriptor 12" in r.stdout and "taught:   notebook 01" in r.stdout
    assert "5 of 10 points" in r.stdout
    r = _grade_cli(blank)
    assert r.returncode == 1 and "0 of 10 points" in r.stdout
    assert "still raises NotImplementedError" in r.stdout
    for path in (right, wrong, blank):          # the student's files are not touched
        assert path.read_bytes() == path.with_suffix(".bak").read_bytes()
    r = _grade_cli(folder / "missing.ipynb")
    assert r.returncode == 2 and "no notebook" in r.stderr


def test_choose_agrees_with_exercise_09s_stated_rules_on_the_shipped_data():
    """Exercise 09's visible tests compare the student's rules with cmp.choose()'s rows:
    that is only fair while, on notebooks/data/compare.json, the rules the exercise
    states (its solution) give the same schemes as choose()."""
    from s2pt.comparison import Comparison

    solution = nbformat.read(ROOT / "solutions" / "09-choose-a-scheme.ipynb", as_version=4)
    cells = _by_grade_id(solution)
    cmp = Comparison.from_json((ROOT / "notebooks" / "data" / "compare.json").read_text())
    ns = {}
    for gid in ("el2", "many_vcpus", "fewest_retained"):
        exec(cells[gid].source, ns)
    rows = {need: sorted(schemes) for need, schemes, _ in cmp.choose()}
    assert sorted(ns["el2"](cmp)) == rows["pKVM at EL2 / no RCU"]
    assert sorted(ns["many_vcpus"](cmp)) == rows["many vCPUs"]
    assert sorted(ns["fewest_retained"](cmp)) == rows["memory-tight"]
