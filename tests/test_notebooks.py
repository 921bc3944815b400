"""Every course notebook runs top to bottom without error and passes its
checks.  (Every solution runs top to bottom, its hidden tests included, in
tests/test_exercises.py: nbgrader grades the student version with the
solution code pasted in, and no cell may fail.)

Each notebook is executed with nbclient in a fresh ``python3`` kernel started
from *this* interpreter (so it sees the same installed s2pt), with the
notebook's own folder as working directory.  A course notebook's checks
(``tests/notebook_checks/<stem>.py``, see ``tests/nbrun.py``) run in the same
kernel after its last cell: they assert what the notebook's run computed,
and that the numbers its prose quotes from that run are the ones it
computed.  The notebooks themselves hold teaching only: no test cells.
A failure names the notebook, the cell number, the cell's source and the
error.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nbrun import CHECKS, run

ROOT = Path(__file__).resolve().parent.parent
COURSE = sorted((ROOT / "notebooks").glob("*.ipynb"))
NOTEBOOKS = COURSE
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _failing_cell(nb) -> tuple[int, str] | None:
    """(index, source) of the first code cell with an error output."""
    for index, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "code":
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return index, cell.source
    return None


def test_every_course_notebook_has_checks_and_no_test_cells():
    import nbformat

    for path in COURSE:
        assert (CHECKS / f"{path.stem}.py").is_file(), f"no tests/notebook_checks/{path.stem}.py"
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            assert "def tests(" not in cell.source, f"{path.name}: a tests() cell (move it to {CHECKS.name}/)"
            assert not re.match(r"#+ Tests\s*$", cell.source.strip()), f"{path.name}: a Tests section"
    stray = {p.stem for p in CHECKS.glob("*.py")} - {p.stem for p in COURSE}
    assert not stray, f"checks for notebooks that do not exist: {stray}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "path", NOTEBOOKS, ids=[str(p.relative_to(ROOT)) for p in NOTEBOOKS]
)
def test_notebook_runs(path: Path):
    import nbformat
    from nbclient.exceptions import CellExecutionError

    failure = None
    try:
        run(path)
    except CellExecutionError as exc:
        # str(exc) holds the cell's source and the kernel's traceback.
        nb = nbformat.read(path, as_version=4)
        where = _failing_cell(nb)
        cell = f"cell {where[0]}" if where else "a cell (or its checks, tests/notebook_checks/)"
        failure = (
            f"{path.relative_to(ROOT)} failed in {cell}: {exc.ename}: {exc.evalue}\n\n"
            + ANSI.sub("", str(exc))
        )
    if failure:  # outside the except block, so pytest shows no chained traceback
        pytest.fail(failure, pytrace=False)
