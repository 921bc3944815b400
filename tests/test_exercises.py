"""The exercise pipeline: solutions/ -> exercises/ with nbgrader, and grading.

* exercises/ is exactly what ``s2pt.exercises.build`` makes from solutions/;
* a student version has no solution code and no hidden tests;
* a blank submission scores 0, and the solution's code, pasted into the
  student version and graded with the hidden tests put back, scores full marks.

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
    assert solution_cells and all("raise NotImplementedError" in c.source for c in solution_cells)
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


def _score(nb) -> tuple[float, float]:
    got = total = 0.0
    for cell in nb.cells:
        meta = _nbgrader(cell)
        if meta.get("grade"):
            total += meta["points"]
            if not _errors(cell):
                got += meta["points"]
    return got, total


@pytest.mark.slow
@pytest.mark.parametrize("name", IDS)
def test_blank_submission_scores_zero(name, fresh):
    solution = nbformat.read(ROOT / "solutions" / name, as_version=4)
    blank = nbformat.read(fresh[name], as_version=4)
    nb = _execute(_grade(blank, solution), ROOT / "exercises", allow_errors=True)
    for cell in nb.cells:
        if _nbgrader(cell).get("solution") and cell.cell_type == "code":
            # Defining the function is fine; calling it must fail.
            assert not _errors(cell) or _errors(cell) == ["NotImplementedError"]
    for cell in nb.cells:
        if _nbgrader(cell).get("grade"):
            assert _errors(cell), f"grade cell {_nbgrader(cell)['grade_id']} passed a blank submission"
    got, total = _score(nb)
    assert got == 0 and total > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", IDS)
def test_solution_code_scores_full_marks(name, fresh):
    solution = nbformat.read(ROOT / "solutions" / name, as_version=4)
    submission = nbformat.read(fresh[name], as_version=4)
    answers = _by_grade_id(solution)
    for cell in submission.cells:
        meta = _nbgrader(cell)
        if meta.get("solution"):
            # The student pastes the code between the markers.
            lines = [line for line in answers[meta["grade_id"]].source.splitlines()
                     if "### BEGIN SOLUTION" not in line and "### END SOLUTION" not in line]
            cell.source = "\n".join(lines)
    graded = _grade(submission, solution)
    assert any("### BEGIN HIDDEN TESTS" in c.source for c in graded.cells), \
        "grading must run the hidden tests"
    nb = _execute(graded, ROOT / "exercises", allow_errors=True)
    failures = {_nbgrader(c).get("grade_id"): _errors(c) for c in nb.cells if _errors(c)}
    assert not failures, f"cells failed: {failures}"
    got, total = _score(nb)
    assert got == total > 0
