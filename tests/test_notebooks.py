"""Every course notebook and every solution runs top to bottom without error.

Each notebook is executed with nbclient in a fresh ``python3`` kernel started
from *this* interpreter (so it sees the same installed s2pt), with the
notebook's own folder as working directory.  A failure names the notebook,
the cell number, the cell's source and the error.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted(
    (ROOT / "solutions").glob("*.ipynb")
)
CELL_TIMEOUT = 600  # seconds per cell
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _kernel_manager():
    """A KernelManager for ``python3`` that runs ``sys.executable``.

    Looking in no kernelspec folders leaves only ipykernel's built-in spec,
    which points at the current interpreter; a ``python3`` kernelspec that
    someone installed for another Python cannot be picked up by mistake.
    """
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    ksm = KernelSpecManager(kernel_dirs=[], ensure_native_kernel=True)
    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=ksm)


def _failing_cell(nb) -> tuple[int, str] | None:
    """(index, source) of the first code cell with an error output."""
    for index, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "code":
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return index, cell.source
    return None


@pytest.mark.slow
@pytest.mark.parametrize(
    "path", NOTEBOOKS, ids=[str(p.relative_to(ROOT)) for p in NOTEBOOKS]
)
def test_notebook_runs(path: Path):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        km=_kernel_manager(),
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(path.parent)}},
    )
    failure = None
    try:
        # cleanup_kc: shut the kernel down afterwards even though we made it.
        client.execute(cleanup_kc=True)
    except CellExecutionError as exc:
        # str(exc) holds the cell's source and the kernel's traceback.
        where = _failing_cell(nb)
        cell = f"cell {where[0]}" if where else "a cell"
        failure = (
            f"{path.relative_to(ROOT)} failed in {cell}: {exc.ename}: {exc.evalue}\n\n"
            + ANSI.sub("", str(exc))
        )
    if failure:  # outside the except block, so pytest shows no chained traceback
        pytest.fail(failure, pytrace=False)
