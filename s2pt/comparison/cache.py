"""compare's results cached on disk, keyed by what was computed.

An exhaustive search's outcome (or a cost cell's recorded runs) depends on
the scenario, the scheme, the bugs switched on, the search's bound -- and on
the code that builds and steps them.  The key of a result is a SHA-256 of
all of that: the job's own fields, and :func:`code_digest`, a digest of the
source of every module of the package that a search or a cost run executes.
Change the walker, a scheme or a scenario's builder and every key changes;
add a scenario, a scheme or a mutation and only the new jobs are computed;
change a declaration, the tables, the rules or the command line and nothing
is recomputed (the declarations are applied to each outcome when it is
loaded, never stored with it: :data:`NOT_BEHAVIOUR`).

The cache lives outside the repository, in the user's cache folder
(``$XDG_CACHE_HOME/s2pt/compare/``, else ``~/.cache/s2pt/compare/``), one
JSON file per result, written atomically.  ``python -m s2pt compare
--no-cache`` bypasses it; a folder that cannot be written only costs the
recomputation.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

__all__ = ["ResultCache", "cache_dir", "code_digest", "NOT_BEHAVIOUR"]

PKG = Path(__file__).resolve().parent.parent

#: Modules of the package (paths relative to it) that no search and no cost
#: run executes, or whose effect is applied afresh to every cached outcome:
#: editing them recomputes nothing.  tests/test_compare_cache.py checks
#: that none of them is loaded by the search and the cost runs (but the
#: declaration table, which is loaded, and applied after the cache).
NOT_BEHAVIOUR = frozenset({
    "scenarios/declarations.py",          # applied when an outcome is loaded
    "comparison/__init__.py", "comparison/results.py", "comparison/report.py",
    "comparison/rules.py", "comparison/check.py",
    "cli/__init__.py", "cli/compare.py", "cli/drill.py", "cli/explore.py", "cli/registry.py",
    "__main__.py", "widgets.py", "htmltrace.py", "exercises.py", "feedback.py", "drill.py",
})


def code_digest(root: Path = PKG) -> str:
    """SHA-256 of the source of every module under ``root`` but
    :data:`NOT_BEHAVIOUR`, and of the Python version (which orders dicts and
    formats floats the same way within a minor version)."""
    h = hashlib.sha256(f"python {sys.version_info[0]}.{sys.version_info[1]}\n".encode())
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        if rel in NOT_BEHAVIOUR:
            continue
        h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/s2pt/compare``, else ``~/.cache/s2pt/compare``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "s2pt" / "compare"


class ResultCache:
    """JSON results by key, in ``folder`` (default :func:`cache_dir`).

    :meth:`key` hashes a job's fields with the code digest; :meth:`get`
    returns the stored result or None; :meth:`put` stores one.  ``hits``
    and ``misses`` count the lookups."""

    def __init__(self, folder: Path | str | None = None, digest: str | None = None):
        self.folder = Path(folder) if folder is not None else cache_dir()
        self.digest = digest if digest is not None else code_digest()
        self.hits = self.misses = 0

    def key(self, kind: str, **fields) -> str:
        doc = json.dumps({"kind": kind, "code": self.digest, **fields}, sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest()

    def get(self, key: str):
        try:
            out = json.loads((self.folder / f"{key}.json").read_text())
        except (OSError, ValueError):
            self.misses += 1
            return None
        self.hits += 1
        return out

    def put(self, key: str, value) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(value, f)
            os.replace(tmp, self.folder / f"{key}.json")
        except OSError:
            pass                                  # a read-only cache: recompute next time
