"""s2pt.widgets driven in process: clicks with Button.click(), values set on
the boxes, and assertions on the model and on the HTML/SVG the widget shows."""

from __future__ import annotations

import html
import re
import subprocess
import sys

import pytest

pytest.importorskip("ipywidgets")

import s2pt                                   # noqa: E402
from s2pt.widgets import Builder, Decoder, parse_number   # noqa: E402

MiB = 1 << 20
PAGE = 0x9_0000_0000 | 0x7ff                  # RWX normal page (notebook 01)


# ---------------------------------------------------------------------------
# Decoder
# ---------------------------------------------------------------------------

def test_decoder_shows_decode_field_by_field():
    d = Decoder(PAGE, level=3)
    assert d.decoded.summary() == "page of 4K at PA 0x900000000, RWX, normal"
    assert d.text.value == "0x00000009000007ff"
    assert d.problems == []
    assert "page of 4K at PA 0x900000000" in d.out.value
    for name in ("MemAttr", "S2AP[1]", "AF", "XN", "address"):
        assert f"<td>{name}</td>" in d.out.value
    # the buttons show the bits, bit 0 last in each group
    assert [b.description for b in d.bits[:12]] == list("111111111110")
    assert d.bits[33].description == "0" and d.bits[35].description == d.bits[32].description == "1"
    # grouped by decode's fields, the gaps named "not decoded"
    names = [re.search(r">([^<]+)<br>([\d:]+)<", g.children[0].value).groups()
             for g in d.groups.children]
    assert ("address", "47:12") in names and ("XN", "54:53") in names
    assert ("not decoded", "11") in names          # nG: decode does not name it
    # every bit once, under its number; fields wrap a byte at a time
    chunks = [c for g in d.groups.children for c in g.children[1].children]
    assert sum(len(c.children[1].children) for c in chunks) == 64
    numbers = [int(n) for c in chunks for n in re.findall(r">(\d+)</span>", c.children[0].value)]
    assert numbers == list(range(63, -1, -1))
    address = next(g for g in d.groups.children if ">address<" in g.children[0].value)
    assert [len(c.children[1].children) for c in address.children[1].children] == [8] * 4 + [4]


def test_clicking_a_bit_redecodes():
    d = Decoder(PAGE, level=3)
    d.bits[7].click()                               # S2AP[1]: no more write
    assert d.value == PAGE & ~(1 << 7)
    assert d.decoded.prot == "RX"
    assert d.bits[7].description == "0" and d.text.value == f"{PAGE & ~0x80:#018x}"
    assert "no write" in d.out.value
    d.bits[54].click()                              # XN=0b10: execute-never
    assert d.decoded.prot == "R" and "execute-never" in d.out.value
    d.bits[0].click()                               # invalid, and AF (bit 10) is set:
    assert d.decoded.kind == "locked"               # it reads as KVM_INVALID_PTE_LOCKED
    d.set_value(0x0fc)
    assert d.decoded.kind == "owner" and "owner id 63" in d.out.value
    d.set_value(0x2)                                # invalid: valid + "ignored" 63:1
    assert d.decoded.kind == "invalid" and len(d.groups.children) == 2


def test_encoding_errors_are_pointed_out():
    d = Decoder(PAGE, level=3)
    d.bits[1].click()                               # bit 1 clear at level 3
    assert d.decoded.kind == "reserved"
    assert "Encoding error: reserved at level 3" in d.out.value
    d.set_value(0x8_0000_07fd)                      # a 2M block ...
    d.set_level(2)
    assert d.problems == [] and "block of 2M" in d.out.value
    d.level_box.value = 0                           # ... cannot sit at level 0 with 4K
    assert d.level == 0
    assert "block not allowed at level 0" in d.out.value
    # The heading says so too (not "valid with type 0 at level 3"): decode's summary.
    assert s2pt.decode(0x8_0000_07fd, 0).summary() == (
        "reserved encoding (a block at level 0, which the 4K granule does not allow): "
        "translation fault")
    assert "type 0 at level 3" not in d.out.value
    d.granule_box.value = 65536
    d.level_box.value = 1                           # nor at level 1 with 64K
    assert "block not allowed at level 1" in d.out.value
    d.set_value(s2pt.descriptor.KVM_INVALID_PTE_LOCKED)
    assert d.decoded.kind == "locked" and "One left in a table is a bug" in d.out.value
    d.set_value(PAGE | 1 << 52)                     # Contiguous: KVM never sets it
    d.set_level(3)
    assert any("bit 52 set" in p for p in d.problems)


@pytest.mark.parametrize("text", ["zz", "", "0x", "-1", "0x1" + "0" * 16, "1.5"])
def test_bad_text_is_a_message_not_a_traceback(text):
    d = Decoder(PAGE, level=3)
    d.text.value = text                             # what typing in the box does
    assert d.value == PAGE
    assert d.message and d.message in d.out.value.replace("&#x27;", "'")
    assert d.text.value == f"{PAGE:#018x}"          # the box shows the kept value
    d.text.value = "0x8_0000_07fd"                  # underscores and 0x are fine
    assert d.value == 0x8_0000_07fd and d.message == ""


def test_bad_level_granule_and_bit_are_refused():
    d = Decoder(PAGE, level=3)
    assert not d.set_level(4) and d.level == 3 and "0 to 3" in d.message
    assert not d.set_granule(8192) and d.granule == 4096
    assert not d.toggle(64) and d.value == PAGE
    with pytest.raises(s2pt.S2ptError):
        Decoder("nonsense")
    with pytest.raises(s2pt.S2ptError):
        Decoder(0, level=9)


def test_decoder_text_fallback_is_decode():
    d = Decoder(PAGE, level=3)
    bundle = d._repr_mimebundle_()
    assert bundle["text/plain"] == str(s2pt.decode(PAGE, 3))
    assert "application/vnd.jupyter.widget-view+json" in bundle


# ---------------------------------------------------------------------------
# Builder on a Stage2
# ---------------------------------------------------------------------------

def svg_of(b: Builder) -> str:
    """The drawing's text, one line per SVG <text> (what the reader sees)."""
    import html
    assert b.tree.value.count("<svg") == 1
    return "\n".join(html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>",
                                                          b.tree.value))


def test_builder_map_split_collapse_unmap_redraw_live():
    pgt = s2pt.Stage2()
    b = Builder(pgt)
    assert "translation fault, level 1" in svg_of(b)          # the IPA box is highlighted
    assert b.counters.value.count("table pages 0") == 1

    b.buttons["map"].click()                        # 2M at 0x4000_0000 -> 0x8_0000_0000
    assert pgt.translate(0x4000_1234).pa == 0x8_0000_1234
    assert "2M block RWX normal" in svg_of(b)
    assert "2M 2   R W x  AF BLK" in b.dump.value
    assert "table pages 1" in b.counters.value and "(+1)" in b.counters.value
    assert b.history == ["pgt.map(0x40000000, 0x200000, 0x800000000, prot='RWX')"]

    b.buttons["split"].click()
    assert pgt.get_leaf(0x4000_0000)[1] == 3
    assert "511x4K pages RWX normal" in svg_of(b)
    assert "table pages 2" in b.counters.value

    b.size.value = "4K"
    b.buttons["wrprotect"].click()
    assert pgt.translate(0x4000_0000).prot == "RX"
    assert "▶ entry 0: 4K page R-X normal" in svg_of(b)
    tlbi = pgt.stats["tlbi"]

    b.size.value = "2M"
    b.buttons["collapse"].click()                   # back to one block; keeps PA, prot
    assert pgt.get_leaf(0x4000_0000)[1] == 2
    assert pgt.translate(0x4000_0000).prot == "RX"
    assert pgt.stats["tables_freed"] == 1 and pgt.stats["tlbi"] > tlbi
    assert "freed 1" in b.counters.value

    b.buttons["unmap"].click()
    with pytest.raises(s2pt.Fault):
        pgt.translate(0x4000_0000)
    assert "2M block" not in svg_of(b)
    assert len(b.history) == 5
    pgt.check_invariants()


def test_builder_pages_only_and_prot():
    pgt = s2pt.Stage2()
    b = Builder(pgt, ipa=0x4000_0000, size=16 << 10, pa=0x9_0000_0000, prot="RW")
    b.pages_only.value = True
    assert b.map()
    assert pgt.get_leaf(0x4000_3000) == (0x9_0000_3000 | 0x7ff | 1 << 54, 3)
    assert "force_pte=True" in b.history[-1] and "3x4K pages RW- normal" in svg_of(b)


@pytest.mark.parametrize("field,text,match", [
    ("ipa", "0x123", "aligned to the 4K granule"),
    ("ipa", "banana", "not a number"),
    ("size", "0", "positive"),
    ("size", "", "empty"),
    ("pa", "0x1" + "0" * 13, "physical address space"),
    ("ipa", str(1 << 40), "IPA space"),
])
def test_builder_errors_are_messages_and_leave_the_table(field, text, match):
    pgt = s2pt.Stage2()
    b = Builder(pgt)
    b.buttons["map"].click()
    before, dump, tree = pgt.ptdump(), b.dump.value, svg_of(b)
    getattr(b, field).value = text
    b.buttons["map"].click()
    assert match in b.message.value.replace("&#x27;", "'")
    assert "✗" in b.message.value and "#b02a37" in b.message.value
    assert pgt.ptdump() == before and b.dump.value == dump
    assert len(b.history) == 1


def test_builder_collapse_and_split_errors():
    pgt = s2pt.Stage2(ram_pages=3)             # 2 PGD pages + 1
    b = Builder(pgt)
    assert not b.collapse()                         # nothing mapped
    assert "nothing mapped" in b.message.value
    b.size.value = "8M"
    assert b.map()
    assert not b.split()                            # 4 L3 tables, 1 page left: -ENOMEM
    assert "ENOMEM" in b.message.value and pgt.get_leaf(0x4000_0000)[1] == 2


def test_builder_panel_slot_and_action_hooks():
    from contextlib import contextmanager
    import ipywidgets as W

    seen = []

    @contextmanager
    def hook(builder, call):
        seen.append(("enter", call))
        yield
        seen.append(("exit", call))

    b = Builder(s2pt.Stage2())
    b.action_hooks.append(hook)
    b.add_panel("operations", W.HTML("ops"))
    assert b.panels.titles == ("tree", "ptdump", "kernel operations", "operations")
    b.buttons["map"].click()
    assert [k for k, _ in seen] == ["enter", "exit"] and seen[0][1].startswith("pgt.map(")


def test_builder_lists_the_kernel_operations_of_the_last_action():
    pgt = s2pt.Stage2()
    b = Builder(pgt, size=4096)
    b.buttons["map"].click()
    ops = b.ops.value
    # What s2pt.trace records for the same call on a twin table.
    twin = s2pt.Stage2()
    want = str(s2pt.trace(twin.map, 0x4000_0000, 4096, 0x8_0000_0000, prot="RWX"))
    body = want.split("\n", 1)[1]                   # the trace without its call line
    shown = html.unescape(re.sub(r"</?pre[^>]*>", "", ops))
    assert shown == "pgt.map(0x40000000, 0x1000, 0x800000000, prot='RWX')\n" + body
    assert "stage2_make_pte()" in shown and "2 tables allocated" in shown
    b.size.value = "1G"
    b.ipa.value = "0x80000000"
    b.pages_only.value = True
    assert b.map()                                  # 262 144 pages: not traced
    assert "not traced: it covers 1G" in b.ops.value
    assert pgt.get_leaf(0x8000_0000)[1] == 3


# ---------------------------------------------------------------------------
# Builder on a VM
# ---------------------------------------------------------------------------

def test_builder_vm_faults_and_dirty_logging():
    vm = s2pt.VM()
    slot = vm.add_memslot(0x4000_0000, 1 << 30, backing="2M")
    b = Builder(vm)
    assert set(b.buttons) == {"fault", "write_fault", "log_on", "log_off", "unmap_slot"}
    assert b.ipa.value == "0x40000000"
    b.buttons["write_fault"].click()
    assert "map (2M)" in b.message.value and "2M block RWX" in svg_of(b)
    assert "faults 1" in b.counters.value
    b.buttons["log_on"].click()
    assert slot.logging and "vm.enable_dirty_logging(0)" in b.history
    assert vm.translate(0x4000_0000).prot == "RX"   # write-protected
    b.buttons["write_fault"].click()                # lazy split: one 4K page writable
    assert vm.pgt.get_leaf(0x4000_0000)[1] == 3
    assert "lazy splits 1" in b.counters.value
    b.buttons["log_off"].click()
    assert not slot.logging
    b.buttons["unmap_slot"].click()                 # the whole slot: nothing left to translate
    assert "vm.unmap_memslot(0)" in b.history and "not traced: it covers 1G" in b.ops.value
    with pytest.raises(s2pt.Fault):
        vm.pgt.translate(0x4000_0000)
    assert vm.pgt.stats["tables_live"] == 0
    b.ipa.value = "0x1000"                          # outside every memslot
    assert not b.enable_logging() and "no memslot" in b.message.value
    b.buttons["fault"].click()                      # MMIO exit: a result, not an error
    assert "KVM_EXIT_MMIO" in b.message.value


def test_builder_refuses_other_things():
    with pytest.raises(s2pt.S2ptError, match="Stage2 or a s2pt.VM"):
        Builder(42)


def test_parse_number():
    assert parse_number("0x4000_0000") == 0x4000_0000
    assert parse_number("2M") == 2 * MiB and parse_number("4KiB") == 4096
    assert parse_number(" 1G ") == 1 << 30 and parse_number("4096") == 4096
    for bad in ("", "x", "-4", "2Q"):
        with pytest.raises(s2pt.S2ptError):
            parse_number(bad)


# ---------------------------------------------------------------------------
# Layering
# ---------------------------------------------------------------------------

def test_import_s2pt_does_not_load_widgets():
    code = ("import sys, s2pt; s2pt.Stage2().map(0, 4096, 0);"
            "print('ipywidgets' in sys.modules, 's2pt.widgets' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


def test_nothing_in_s2pt_imports_widgets():
    from pathlib import Path
    root = Path(s2pt.__file__).parent
    users = [p.name for p in root.rglob("*.py")
             if p.name != "widgets.py"
             and re.search(r"^\s*(from|import)\s.*\bwidgets\b", p.read_text(), re.M)]
    assert users == []


# ---------------------------------------------------------------------------
# The course: every widget cell has a static fallback
# ---------------------------------------------------------------------------

def test_every_widget_cell_in_the_course_is_followed_by_a_static_fallback():
    """Where widgets do not run (GitHub, nbconvert), the cell after a widget
    must show the same thing as text or a drawing, without a widget."""
    import ast
    import json
    from pathlib import Path

    found = 0
    for path in sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb")):
        # IPython magics (%matplotlib ...) are not Python: blank them out.
        code = ["\n".join("" if line.lstrip().startswith(("%", "!")) else line
                          for line in "".join(c["source"]).splitlines())
                for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        for k, src in enumerate(code):
            body = ast.parse(src).body
            last = body[-1] if body else None
            if not (isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)
                    and ast.unparse(last.value.func).startswith("s2pt.widgets.")):
                continue
            found += 1
            assert k + 1 < len(code), f"{path.name}: the last cell is a widget"
            after = code[k + 1]
            assert "s2pt.widgets" not in after, f"{path.name}: widget cell {k} has no fallback"
            tail = ast.parse(after).body[-1]
            assert "print(" in after or isinstance(tail, ast.Expr), \
                f"{path.name}: the cell after widget cell {k} shows nothing"
    assert found >= 5            # notebooks 02 (two), 03, 04 and 05
