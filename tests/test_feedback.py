"""s2pt.feedback: graded checks that say what, why, and where it is taught.

Every message names the expected and received values (hex for addresses),
the rule and a notebook section that exists; the walk checker accepts a
correct MMU walk on every granule and rejects each classic mistake with a
message that names it; check_bbm accepts the kernel's own break-before-make
and rejects each wrong order.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import s2pt
from s2pt import descriptor as d
from s2pt import ops
from s2pt.draw import translation_path
from s2pt.feedback import (TAUGHT, Wrong, check, check_bbm, check_walk, expect, explain_pa,
                           show, taught)

ROOT = Path(__file__).resolve().parent.parent
KiB, MiB = 1 << 10, 1 << 20


def test_every_taught_section_is_a_heading_in_its_notebook():
    for (nb, sec), title in TAUGHT.items():
        (path,) = sorted((ROOT / "notebooks").glob(f"{nb}-*.ipynb"))
        text = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"]
                         if c["cell_type"] == "markdown")
        assert re.search(rf"^#+ {sec}\. {re.escape(title)}\s*$", text, re.M), (nb, sec, title)


def test_taught_refuses_an_unknown_section():
    with pytest.raises(s2pt.S2ptError, match="TAUGHT"):
        taught(("01", 99))
    assert taught(("01", 5)) == 'notebook 01, section 5 "The walk, step by step"'


def test_show_hex_for_addresses_decimal_for_small_and_counts():
    assert show(0x8_0000_0234) == "0x800000234"
    assert show(("translation", 3)) == "('translation', 3)"
    assert show([1, 2, 300]) == "[1, 2, 0x12c]"
    assert show(300, decimal=True) == "300"
    assert show(True) == "True"


def test_expect_passes_equal_and_explains_different():
    assert expect(0x10, 0x10, "x", "r", ("01", 5)) is None
    with pytest.raises(Wrong) as e:
        expect(0x8_0000_0234, 0x8_0000_1234, "the PA", "a rule", ("01", 5))
    msg = str(e.value)
    assert "expected: 0x800001234" in msg and "got:      0x800000234" in msg
    assert "rule:     a rule" in msg and 'section 5 "The walk, step by step"' in msg
    with pytest.raises(Wrong):
        expect(True, 1, "a flag", "bool is not int", ("01", 5))
    with pytest.raises(s2pt.S2ptError):
        check(False, "", "", ("01", 5))          # an empty message is refused


def test_explain_pa_names_the_bits_used():
    ipa = 0x4000_1234
    why = explain_pa(0x8_0000_0234, 0x8_0000_1234, ipa, 2, 2 * MiB)
    assert why == ("a level-2 block maps IPA[20:0] straight through; your PA used IPA[11:0]")
    why = explain_pa(0x9_0000_1234, 0x8_0000_1234, ipa, 2, 2 * MiB)
    assert "output address" in why and "0x800000000" in why


# -- the walk checker, against correct and broken walks -----------------------------

def good_walk(pgt, ipa, access="read", mask4k=False, offset4k=False, reserved=True, pgd=True):
    g = pgt.geom
    shift = 12 if mask4k else g.granule.bit_length() - 1
    addr_mask = ((1 << 48) - 1) & ~((1 << shift) - 1)
    table = (pgt.vttbr & ((1 << 48) - 1) & ~1) + (g.pgd_page_idx(ipa) * g.granule if pgd else 0)
    trail = []
    for level in range(g.start_level, 4):
        index = g.idx(ipa, level)
        desc = pgt.mem.read64(table + 8 * index)
        trail.append((level, table, index, desc))
        if not desc & 1:
            return trail, ("translation", level)
        if level < 3 and desc & 2:
            table = desc & addr_mask
            continue
        if reserved and level == 3 and not desc & 2:
            return trail, ("translation", level)
        break
    if not desc & (1 << 10):
        return trail, ("access", level)
    ok = {"read": desc & 64, "write": desc & 128, "exec": (desc >> 53) & 3 in (0, 3)}[access]
    if not ok:
        return trail, ("permission", level)
    size = 4096 if offset4k else g.granule_size(level)
    return trail, (desc & addr_mask & ~(size - 1)) | (ipa & (size - 1))


def vm_with(granule, ipa_bits=40):
    pgt = s2pt.Stage2(ipa_bits=ipa_bits, granule=granule)
    blk = pgt.geom.granule_size(2)
    pgt.map(blk, blk, 1 << 36)
    pgt.map(2 * blk, granule, (1 << 36) + blk)
    pgt.map(2 * blk + granule, granule, (1 << 36) + blk + granule, prot="R")
    return pgt, blk


@pytest.mark.parametrize("granule", [4096, 16384, 65536])
def test_check_walk_accepts_a_correct_walk(granule):
    pgt, blk = vm_with(granule)
    for ipa in (blk + 0x1234, 2 * blk + 0x1ff8, 2 * blk + granule + 8, 5 * blk, 0):
        for access in ("read", "write", "exec"):
            check_walk(good_walk, pgt, ipa, access)


def test_check_walk_explains_a_wrong_offset():
    pgt, blk = vm_with(65536)
    with pytest.raises(Wrong, match=r"level-3 page maps IPA\[15:0\] straight through; "
                                    r"your PA used IPA\[11:0\]"):
        check_walk(lambda p, i, a: good_walk(p, i, a, offset4k=True), pgt, 2 * blk + 0xabcd)


def test_check_walk_explains_a_forgotten_pgd_page():
    pgt = s2pt.Stage2(ipa_bits=33, granule=4096)       # 8 concatenated PGD pages
    pgt.map(0x1_2340_0000, 2 * MiB, 0x8_0000_0000)
    with pytest.raises(Wrong, match="wrong at level 2.*PGD page the IPA falls in"):
        check_walk(lambda p, i, a: good_walk(p, i, a, pgd=False), pgt, 0x1_2345_6789)


def test_check_walk_catches_a_4k_mask_on_16k_tables():
    pgt, blk = vm_with(16384)
    ipa = 2 * blk + 0x10
    # Set RES0 bits 13:12 of the level-2 table descriptor: not part of the address.
    path = translation_path(pgt, ipa)
    ptep, level, pte, _ = path[-2]
    assert level == 2 and d.kvm_pte_table(pte, 2)
    pgt.mem.write64(ptep, pte | 0x3000)
    check_walk(good_walk, pgt, ipa)                     # the right mask ignores them
    with pytest.raises(Wrong, match="bits 47:PAGE_SHIFT"):
        check_walk(lambda p, i, a: good_walk(p, i, a, mask4k=True), pgt, ipa)


def test_check_walk_catches_the_reserved_level3_encoding():
    pgt, blk = vm_with(4096)
    ipa = 2 * blk
    ptep = translation_path(pgt, ipa)[-1][0]
    pgt.mem.write64(ptep, pgt.mem.read64(ptep) & ~2)    # valid, type 0, at level 3
    check_walk(good_walk, pgt, ipa)
    with pytest.raises(Wrong, match="reserved encoding") as e:
        check_walk(lambda p, i, a: good_walk(p, i, a, reserved=False), pgt, ipa)
    assert "expected: ('translation', 3)" in str(e.value)


def test_check_walk_fault_kind_and_level():
    pgt, blk = vm_with(4096)
    with pytest.raises(Wrong, match="S2AP") as e:
        check_walk(lambda p, i, a: (good_walk(p, i, a)[0], 0x1234), pgt, 2 * blk + 4096, "write")
    assert 'section 6 "The three faults"' in str(e.value)


# -- break-before-make ---------------------------------------------------------------

def _trace_walk(pgt, ipa, size, cb, flags="LEAF"):
    with s2pt.trace(pgt) as t:
        pgt.walk(ipa, size, cb, flags)
    return t.steps


def _remap_visitor(order):
    """Replace the leaf with one to another PA, doing the steps in ``order``."""
    def cb(ctx, visit):
        new = (ctx.old & ~ctx.pgt.addr_mask) | (1 << 37)
        for step in order:
            if step == "break":
                yield ops.WRITE_ONCE(ctx.ptep, d.KVM_INVALID_PTE_LOCKED)
            elif step == "tlbi":
                yield ops.tlbi("ipa", ctx.addr, ctx.level)
            elif step == "make":
                yield ops.smp_store_release(ctx.ptep, new)
            elif step == "write":
                yield ops.WRITE_ONCE(ctx.ptep, new)
        return 0
    return cb


@pytest.mark.parametrize("order,ok", [
    (("break", "tlbi", "make"), True),
    (("break", "make", "tlbi"), False),
    (("tlbi", "make"), False),
    (("break", "tlbi", "write"), False),
    (("make",), False),
])
def test_check_bbm_orders(order, ok):
    pgt = s2pt.Stage2(ipa_bits=40, granule=4096)
    pgt.map(0x4000_0000, 2 * MiB, 1 << 36)
    (ptep, level, old, _), = [p for p in translation_path(pgt, 0x4000_0000)
                              if p[1] == 2]
    new = (old & ~pgt.addr_mask) | (1 << 37)
    steps = _trace_walk(pgt, 0x4000_0000, 2 * MiB, _remap_visitor(order))
    if ok:
        check_bbm(steps, ptep, new, 0x4000_0000, 2 * MiB, True, ("02", 5))
    else:
        with pytest.raises(Wrong) as e:
            check_bbm(steps, ptep, new, 0x4000_0000, 2 * MiB, True, ("02", 5))
        assert "break (an invalid entry), then a TLBI" in str(e.value) or \
               "smp_store_release" in str(e.value)


def test_check_bbm_accepts_the_kernels_collapse_and_wants_a_range_tlbi():
    pgt = s2pt.Stage2(ipa_bits=40, granule=4096)
    pgt.map(0x4000_0000, 2 * MiB, 1 << 36, force_pte=True)
    (ptep, _, _, _), = [p for p in translation_path(pgt, 0x4000_0000) if p[1] == 2]
    with s2pt.trace(pgt) as t:
        pgt.map(0x4000_0000, 2 * MiB, 1 << 36)
    new = pgt.mem.read64(ptep)
    check_bbm(t.steps, ptep, new, 0x4000_0000, 2 * MiB, False, ("04", 2))
    # One IPA's TLBI does not cover a table's range
    ipa_only = [s if s.op[0] != "tlbi" else
                type(s)(("tlbi", "ipa", 0x4000_0000, 2), s.result, s.function) for s in t.steps]
    with pytest.raises(Wrong, match="one IPA is not enough"):
        check_bbm(ipa_only, ptep, new, 0x4000_0000, 2 * MiB, False, ("04", 2))


# -- how a notebook shows a check: one clean message, and what passed ----------------

def test_a_failure_is_one_clean_message():
    with pytest.raises(Wrong) as e:
        expect(0x8_0000_0234, 0x8_0000_1234, "the PA", "a rule", ("01", 5))
    assert str(e.value).startswith("the PA.\n")                 # Python adds "Wrong: " once
    shown = e.value._render_traceback_()                         # what IPython shows instead
    assert shown == ["Wrong: the PA.", "  expected: 0x800001234", "  got:      0x800000234",
                     "  rule:     a rule",
                     '  taught:   notebook 01, section 5 "The walk, step by step"']


def test_reveal_false_keeps_the_answer_back():
    with pytest.raises(Wrong) as e:
        expect(32, 33, "your prediction of 'TLBIs'", "a rule", ("02", 5), decimal=True,
               reveal=False)
    msg = str(e.value)
    assert "33" not in msg and "got:      32" in msg and "kept back" in msg
    with pytest.raises(Wrong) as e:
        check(False, "descriptor 9: its kind", "a rule", ("01", 4), got="invalid", want="locked",
              reveal=False)
    assert "locked" not in str(e.value) and "got:      invalid" in str(e.value)


def test_checks_that_pass_are_summarised(capsys):
    from s2pt import feedback

    feedback._confirmed.clear()
    expect(0x10, 0x10, "the PA", "r", ("01", 5))
    check(True, "the old table", "r", ("04", 7), got="freed", want="still allocated")
    for n in range(8):
        expect(n, n, f"count {n}", "r", ("01", 5), decimal=True)
    feedback._summarise()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Right: 10 checks passed."
    assert out[1:3] == ["  ✓ the PA: 0x10", "  ✓ the old table: still allocated"]
    assert out[-1] == "  ... and 4 more" and len(out) == 1 + feedback.SUMMARY_LINES + 1
    # A cell that failed prints no summary, and forgets what passed before the failure
    check(True, "x", "r", ("01", 5))
    feedback._summarise(type("Result", (), {"success": False})())
    feedback._summarise()
    assert capsys.readouterr().out == ""


def test_check_bbm_confirms_once_in_positive_words(capsys):
    from s2pt import feedback

    pgt = s2pt.Stage2(ipa_bits=40, granule=4096)
    pgt.map(0x4000_0000, 2 * MiB, 1 << 36)
    (ptep, level, old, _), = [p for p in translation_path(pgt, 0x4000_0000) if p[1] == 2]
    new = (old & ~pgt.addr_mask) | (1 << 37)
    steps = _trace_walk(pgt, 0x4000_0000, 2 * MiB, _remap_visitor(("break", "tlbi", "make")))
    feedback._confirmed.clear()
    check_bbm(steps, ptep, new, 0x4000_0000, 2 * MiB, True, ("02", 5), what="the entry")
    assert feedback._confirmed == ["the entry: break, a TLBI covering its range, then make"]
    feedback._confirmed.clear()


@pytest.mark.slow
def test_in_a_notebook_a_failure_shows_no_traceback_and_a_pass_says_so(tmp_path):
    """A real kernel: the failed cell's error output is the message alone (no frame of
    s2pt/feedback.py, "Wrong:" once); the passing cell prints its summary."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("from s2pt.feedback import expect\n"
                                  "expect(3, 4, 'the count', 'a rule', ('01', 5), decimal=True)"),
        nbformat.v4.new_code_cell("expect(4, 4, 'the count', 'a rule', ('01', 5), decimal=True)\n"
                                  "expect('a', 'a', 'the letter', 'a rule', ('01', 5))"),
    ])
    km = AsyncKernelManager(kernel_name="python3",
                            kernel_spec_manager=KernelSpecManager(kernel_dirs=[],
                                                                  ensure_native_kernel=True))
    nbclient.NotebookClient(nb, km=km, allow_errors=True, timeout=120,
                            resources={"metadata": {"path": str(ROOT)}}).execute()
    (err,) = nb.cells[0].outputs
    assert err.output_type == "error" and err.ename == "Wrong"
    assert err.traceback == ["Wrong: the count.", "  expected: 4", "  got:      3",
                             "  rule:     a rule",
                             '  taught:   notebook 01, section 5 "The walk, step by step"']
    text = "".join(o.get("text", "") for o in nb.cells[1].outputs)
    assert text == "Right: 2 checks passed.\n  ✓ the count: 4\n  ✓ the letter: a\n"


def test_a_long_rule_is_wrapped_between_words_for_the_notebook():
    from s2pt.feedback import WIDTH

    rule = " ".join(["a rule that goes on"] * 12)
    with pytest.raises(Wrong) as e:
        expect(1, 2, "the count", rule, ("01", 5), decimal=True)
    shown = e.value._render_traceback_()
    assert all(len(line) <= WIDTH for line in shown)
    assert " ".join(x.strip() for x in shown).count("a rule that goes on") == 12
    assert str(e.value).count("\n") == 4                  # the exception itself is not wrapped
