"""The widgets in a real JupyterLab: they display, a click redraws, nothing
is wider than its column.  Click-to-redraw times are printed (run with -s to
see them), not asserted (a redraw that never comes times out after 10 s)."""

from __future__ import annotations

import time

import nbformat

ACTIVE = ".jp-NotebookPanel:not(.lm-mod-hidden)"
CELLS = [
    "import s2pt, s2pt.widgets\n"
    "decoder = s2pt.widgets.Decoder(0x9_0000_07ff, level=3)\n"
    "decoder",
    "pgt = s2pt.Stage2()\n"
    "builder = s2pt.widgets.Builder(pgt)\n"
    "builder",
    "big = s2pt.Stage2()                          # a wide tree: scrolls in its column\n"
    "for i in range(8):\n"
    "    big.map(0x4000_0000 + i * (1 << 30) + 0x5000, 4096, 0x8_0000_0000)\n"
    "big.draw()",
    # The other kinds of drawing the course shows: a walk highlighted
    # (notebooks 01-04), pKVM's host after scattered donations (09), a
    # grace-period timeline (06).
    "big.draw(highlight=0x4000_5000)",
    "host = s2pt.pkvm.Host(memory=[(0x8000_0000, 4 << 30)])\n"
    "for k in range(0, 64, 2):\n"
    "    host.donate(0x9000_0000 + k * 4096, 1, to='guest')\n"
    "host.pgt.draw()",
    "from s2pt.htmltrace import timeline\n"
    "timeline(s2pt.replay('collapse-vs-fault-3', 'rcu', '1*5 0*15 2*3 0*4 1*6 3*5'))",
]
# Outputs wider than their output area (as look-at-notebooks checks); a
# picture in a box that scrolls (a wide tree keeps its size) counts as the box.
WIDE = """(sel) => {
  const out = [];
  const scroller = (e, o) => {
    for (let p = e.parentElement; p && p !== o; p = p.parentElement) {
      const s = getComputedStyle(p).overflowX;
      if (s === 'auto' || s === 'scroll') return p;
    }
    return null;
  };
  document.querySelectorAll(sel + ' .jp-OutputArea-output').forEach((o, i) => {
    for (const e of o.querySelectorAll('img, svg, .jupyter-widgets, table, pre')) {
      if (e.closest('svg svg')) continue;
      const box = scroller(e, o) || e;
      const w = Math.round(box.getBoundingClientRect().width);
      const sw = box === e ? (e.scrollWidth || 0) : 0;
      if (w > o.clientWidth + 2 || sw > o.clientWidth + 2)
        out.push({output: i, tag: e.tagName.toLowerCase(), width: Math.max(w, sw),
                  column: o.clientWidth});
    }
  });
  return out;
}"""
# The smallest text drawn under `sel`, in CSS pixels as it lands on the
# screen: an SVG label's font size times the picture's scale, an HTML
# element's computed font size.  [px, the text, where].
MIN_TEXT = """(sel) => {
  let best = [1e9, '', ''];
  for (const root of document.querySelectorAll(sel)) {
    for (const t of root.querySelectorAll('svg text')) {
      if (!t.textContent.trim() || !t.getClientRects().length) continue;
      const m = t.getScreenCTM(), px = parseFloat(getComputedStyle(t).fontSize) *
        (m ? Math.hypot(m.a, m.b) : 1);
      if (px < best[0]) best = [px, t.textContent.trim().slice(0, 40), 'svg'];
    }
    const walk = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    for (let n = walk.nextNode(); n; n = walk.nextNode()) {
      const e = n.parentElement;
      if (!n.textContent.trim() || !e || e.closest('svg') || !e.getClientRects().length) continue;
      const px = parseFloat(getComputedStyle(e).fontSize);
      if (px < best[0]) best = [px, n.textContent.trim().slice(0, 40), e.tagName];
    }
  }
  return best;
}"""


def _status(page):
    return page.evaluate(f"() => (document.querySelector('{ACTIVE} .jp-Notebook-ExecutionIndicator')"
                         " || {}).getAttribute?.('data-status')")


def _wait_idle(page, timeout=30):
    t = time.time()
    while _status(page) != "idle" and time.time() - t < timeout:
        time.sleep(0.1)


def _run_all(page):
    """Run > Run All Cells, retried: a click right after "idle" is sometimes lost."""
    prompts = (f"() => [...document.querySelectorAll('{ACTIVE} .jp-CodeCell .jp-InputPrompt')]"
               ".map(p => p.textContent.trim())")
    for _ in range(3):
        page.click(f"{ACTIVE} .jp-Cell .jp-InputPrompt >> nth=0")
        page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
        t = time.time()
        while time.time() - t < 5 and all(p == "[ ]:" for p in page.evaluate(prompts)):
            time.sleep(0.05)
        if any(p != "[ ]:" for p in page.evaluate(prompts)):
            break
    t = time.time()
    while time.time() - t < 40:
        ps = page.evaluate(prompts)
        if all(p not in ("[ ]:", "[*]:") for p in ps) and _status(page) == "idle":
            return
        time.sleep(0.1)
    raise AssertionError(f"cells did not finish: {page.evaluate(prompts)}")


def _timed(page, click, done, what):
    """Click, then poll until done() holds: the click-to-redraw time, printed."""
    t = time.perf_counter()
    click()
    page.wait_for_function(done, timeout=10_000)
    dt = time.perf_counter() - t
    print(f"\nclick-to-redraw, {what}: {dt * 1000:.0f} ms")
    return dt


def _notebook(lab, name, cells):
    """Write a notebook of these code cells into the server's root."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, lab.root / name)


def _page(browser, width):
    """A fresh browser context and page, with the page's JS errors collected."""
    ctx = browser.new_context(viewport={"width": width, "height": 1000})
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)[:300]))
    return ctx, page, errors


def test_widgets_in_jupyterlab(browser, lab, shots):     # browser first: skip before starting a server
    _notebook(lab, "widgets.ipynb", CELLS)
    ctx, page, errors = _page(browser, 1280)
    t0 = time.time()
    try:
        page.goto(lab.url("lab/tree/widgets.ipynb") + "&reset")
        page.wait_for_selector(f"{ACTIVE} .jp-Cell", timeout=30_000)
        _wait_idle(page)
        page.wait_for_timeout(1000)
        _run_all(page)
        dec = page.locator(f"{ACTIVE} .s2pt-decoder")
        bld = page.locator(f"{ACTIVE} .s2pt-builder")
        dec.wait_for(timeout=15_000)
        bld.wait_for(timeout=15_000)
        print(f"\nJupyterLab open and cells run: {time.time() - t0:.1f} s")
        dec.scroll_into_view_if_needed()
        page.wait_for_function(f"() => document.querySelector('{ACTIVE} .s2pt-decoder')"
                               ".innerText.includes('page of 4K')", timeout=10_000)
        assert "page of 4K at PA 0x900000000" in dec.inner_text()
        assert not page.locator(f"{ACTIVE} .jp-OutputArea-output[data-mime-type="
                                f"'application/vnd.jupyter.stderr']").count()

        # Decoder: clear S2AP[1] (bit 7) by clicking its button.
        bit7 = dec.locator("button[title^='bit 7:']")
        assert bit7.inner_text().strip() == "1"
        _timed(page, bit7.click,
               f"() => document.querySelector('{ACTIVE} .s2pt-decoder').innerText"
               ".includes('no write')", "Decoder bit 7")
        assert bit7.inner_text().strip() == "0"
        assert dec.locator("input").first.input_value() == "0x000000090000077f"
        # Bad text: a message in the widget, no traceback.
        box = dec.locator("input").first
        box.fill("banana")
        _timed(page, lambda: box.press("Enter"),
               f"() => document.querySelector('{ACTIVE} .s2pt-decoder').innerText"
               ".includes('not a hexadecimal number')", "Decoder bad text")

        # Builder: Map, then the tree, the ptdump tab and the counters change.
        # (The lab renders only the cells in view, windowingMode
        # contentVisibility: an off-screen widget's innerText is empty.)
        bld.scroll_into_view_if_needed()
        page.wait_for_function(f"() => document.querySelector('{ACTIVE} .s2pt-builder')"
                               ".innerText.includes('table pages')", timeout=10_000)
        assert "2M block" not in bld.inner_text()
        _timed(page, bld.locator("button.s2pt-map").click,
               f"() => document.querySelector('{ACTIVE} .s2pt-builder svg').textContent"
               ".includes('2M block RWX')", "Builder map")
        # The counters are another output of the same click: the tree may be
        # drawn before they are (a run under load once caught them old).
        page.wait_for_function(f"() => document.querySelector('{ACTIVE} .s2pt-builder "
                               f".s2pt-counters').innerText.includes('table pages 1 (+1)')",
                               timeout=10_000)
        _timed(page, bld.locator("button.s2pt-split").click,
               f"() => document.querySelector('{ACTIVE} .s2pt-builder svg').textContent"
               ".includes('511x4K pages')", "Builder split")
        bld.locator(".lm-TabBar-tab:has-text('ptdump')").click()
        assert "2M 3   R W x  AF" in bld.locator("pre").first.inner_text()   # ptdump: 512 pages, level 3
        # An error is a message; the table stays.
        bld.locator("input").first.fill("0x123")
        bld.locator("input").first.press("Enter")
        bld.locator("button.s2pt-unmap").click()
        page.wait_for_function(f"() => document.querySelector('{ACTIVE} .s2pt-builder')"
                               ".innerText.includes('must be aligned')", timeout=10_000)

        page.wait_for_timeout(300)
        wide = page.evaluate(WIDE, ACTIVE)
        assert wide == [], f"outputs wider than their column: {wide}"
        assert page.locator(f"{ACTIVE} .jp-OutputArea-output svg").count() >= 5
        # No text is drawn under 10 px: the widgets, the trees, the timeline.
        px, text, where = page.evaluate(MIN_TEXT, f"{ACTIVE} .jp-OutputArea-output")
        print(f"smallest text in the drawings and widgets: {px:.1f} px ({where}: {text!r})")
        assert px >= 10, (px, text, where)
        assert not [e for e in errors if "widget" in e.lower()], errors
        print(f"browser test body: {time.time() - t0:.1f} s")
        page.screenshot(path=str(shots / "widgets.png"), full_page=True)
        print(f"screenshot: {shots / 'widgets.png'}")
    except BaseException:
        path = shots / "test_widgets_in_jupyterlab.png"
        try:
            page.screenshot(path=str(path), full_page=True)
            print(f"\nscreenshot of the failure: {path}")
        except Exception:
            pass
        raise
    finally:
        ctx.close()
