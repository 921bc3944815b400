"""The package's import graph: layers that import downward only, and no cycles.

Every ``import`` in every module counts, including those inside functions:
an import deferred into a function to dodge a cycle hides a layering
mistake.  The layers, from the bottom up, are the architecture the README
describes.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "s2pt"

#: module -> layer (lower numbers are lower layers).  A module may import
#: modules of its own layer or below, never above.
LAYERS = [
    ["errors", "validate", "geometry", "snapshot", "bugs"],
    ["descriptor", "memory"],
    ["ops"],
    ["pgtable", "invariants"],
    ["render", "ptdump", "vmprint", "draw"],
    ["tlb", "stage2", "bbm"],
    ["kvm", "pkvm", "drill", "trace", "feedback"],
    ["sim", "sim.state", "sim.window", "sim.sync", "sim.violation", "sim.world", "sim.causal",
     "sim.liveness", "sim.symmetry", "sim.por", "sim.report", "sim.search"],
    ["checkers", "schemes", "scenarios", "scenarios.scenario", "scenarios.declarations",
     "scenarios.guest", "scenarios.pkvm", "explorer", "comparison", "comparison.costs",
     "comparison.results", "comparison.rules", "comparison.report", "comparison.run",
     "comparison.cache", "comparison.check"],
    ["__init__", "__main__", "cli", "cli.registry", "cli.drill", "cli.explore", "cli.compare",
     "htmltrace", "widgets",
     "exercises"],
]
LAYER = {m: k for k, ms in enumerate(LAYERS) for m in ms}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set:
    """The s2pt modules that ``path`` imports (relative or absolute)."""
    name = _module_name(path)
    pkg = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    if name == "__init__":
        pkg = []
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[:len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("s2pt"):
                mod = node.module[5:]
            else:
                continue
            for alias in node.names:
                full = f"{mod}.{alias.name}" if mod else alias.name
                out.add(full if _exists(full) else mod)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("s2pt."):
                    out.add(alias.name[5:])
    return {m for m in out if m}


def _exists(mod: str) -> bool:
    p = PKG.joinpath(*mod.split("."))
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def _graph() -> dict:
    return {_module_name(p): _imports(p) for p in sorted(PKG.rglob("*.py"))}


def test_every_module_has_a_layer():
    assert set(_graph()) - set(LAYER) == set()


def test_imports_go_downward_only():
    up = [f"{m} (layer {LAYER[m]}) imports {d} (layer {LAYER[d]})"
          for m, deps in _graph().items() for d in sorted(deps)
          if d in LAYER and LAYER[d] > LAYER[m]]
    assert not up, "upward imports:\n" + "\n".join(up)


def test_no_import_cycles():
    graph = _graph()
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            visit(d)
        stack.pop()

    for m in sorted(graph):
        visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_engine_loads_without_what_sits_above_it():
    """Importing the engine (s2pt.sim, its search and reports) loads nothing above it: no
    scenarios, schemes, checkers, explorer or cli.  s2pt/__init__.py (which
    loads everything for the public API) is replaced by an empty package, so
    only what s2pt.sim itself needs is imported."""
    probe = subprocess.run(
        [sys.executable, "-c",
         "import sys, types; "
         "pkg = types.ModuleType('s2pt'); pkg.__path__ = [%r]; sys.modules['s2pt'] = pkg; "
         "import s2pt.sim, s2pt.sim.search, s2pt.sim.report; "
         "print(' '.join(sorted(m for m in sys.modules if m.startswith('s2pt'))))"
         % str(PKG)],
        capture_output=True, text=True, check=True)
    loaded = set(probe.stdout.split())
    assert "s2pt.sim.search" in loaded           # the probe really loaded the engine
    above = {f"s2pt.{m}" for m, k in LAYER.items() if k > LAYER["sim"]} - {"s2pt.__init__"}
    assert loaded & above == set(), loaded & above
