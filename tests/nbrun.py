"""Run a course notebook as a student would, then its checks, in the same kernel.

A notebook keeps only teaching.  What it is checked against lives in
``tests/notebook_checks/<notebook stem>.py``: plain ``assert`` statements
about the notebook's own variables, run in the notebook's kernel after its
last cell, so they test the very run the student sees.  Two helpers are
defined for them:

* ``says(text)``: the notebook's prose (its markdown cells) contains
  ``text``.  A number, address or step range that the prose quotes from a
  run is checked this way against the value the run computed, so the prose
  cannot drift from the output: ``says(f"{len(r.states):,} states")``.
* ``num(n)``: ``n`` written the way the prose writes numbers: plain up to
  9999, then with a space every three digits (``26 220``, ``838 656``).

:func:`run` returns the executed notebook and each code cell's wall time
(from nbclient's timing metadata), which ``benchmarks/notebook_times.py``
reads.  Used by ``tests/test_notebooks.py``.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKS = Path(__file__).resolve().parent / "notebook_checks"
CELL_TIMEOUT = 900  # seconds per cell

PREAMBLE = '''\
# tests/nbrun.py: the notebook's checks, run after its last cell
import json as _json

_PROSE = _json.loads({prose!r})


def says(text):
    "The notebook's prose contains `text`."
    assert any(text in p for p in _PROSE), f"the prose does not say {{text!r}}"


def num(n):
    "n as the prose writes it: 6554, 26 220, 838 656."
    return str(n) if abs(n) < 10_000 else f"{{n:,}}".replace(",", " ")

'''


def kernel_manager():
    """A ``python3`` kernel running this interpreter (never another Python's kernelspec)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    ksm = KernelSpecManager(kernel_dirs=[], ensure_native_kernel=True)
    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=ksm)


def check_source(nb, path: Path) -> str | None:
    """The check cell for the notebook at ``path``: the preamble and its checks."""
    checks = CHECKS / f"{path.stem}.py"
    if not checks.is_file():
        return None
    prose = [c.source for c in nb.cells if c.cell_type == "markdown"]
    return PREAMBLE.format(prose=json.dumps(prose)) + checks.read_text()


def _seconds(cell) -> float | None:
    t = cell.get("metadata", {}).get("execution", {})
    try:
        start = datetime.fromisoformat(t["iopub.execute_input"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(t["shell.execute_reply"].replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return None
    return (end - start).total_seconds()


def run(path: Path, checks: bool = True):
    """Execute the notebook (and its checks); returns (notebook, [(cell index, seconds)])
    for the notebook's own code cells.  Raises nbclient's CellExecutionError."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    n_cells = len(nb.cells)
    if checks:
        source = check_source(nb, path)
        if source is not None:
            nb.cells.append(nbformat.v4.new_code_cell(source))
    client = NotebookClient(nb, km=kernel_manager(), kernel_name="python3", timeout=CELL_TIMEOUT,
                            record_timing=True,
                            resources={"metadata": {"path": str(path.parent)}})
    import subprocess

    client.execute(cleanup_kc=True, stderr=subprocess.DEVNULL)   # not the kernel's log
    times = [(i, _seconds(c)) for i, c in enumerate(nb.cells[:n_cells]) if c.cell_type == "code"]
    return nb, times
