"""Feedback for graded exercises: every failure says what, why, and where it is taught.

An exercise's test cell checks the student's answer with :func:`expect` or
:func:`check`.  When the answer is wrong they raise :class:`Wrong` (an
``AssertionError``, so nbgrader counts the cell as failed) with a message in
four parts, which a notebook shows alone, without a traceback (IPython's
``_render_traceback_``; the frames of this module would only hide it)::

    Wrong: the PA of a read at IPA 0x40001234.
      expected: 0x800001234
      got:      0x800000234
      rule:     a level-2 block maps IPA[20:0] straight through; your PA used IPA[11:0]
      taught:   notebook 01, section 5 "The walk, step by step"

When the expected value *is* the answer a student is asked to work out (a
prediction, a descriptor decoded on paper), a visible test passes
``reveal=False``: the message then says what was got, the rule and where it
is taught, but keeps the expected value back (the hidden tests, whose
feedback comes after grading, show it).

Checks that pass say so.  In a notebook, after each cell in which checks
ran and none failed, one summary is printed: ``Right: N checks passed``,
then what the first few of them confirmed.

* what was checked, and the expected and received values, integers in hex
  (0..9 are the same in both bases and print as themselves; pass
  ``decimal=True`` for counts);
* the rule that was broken, specific to the answer when a diagnosis helper
  can say more (:func:`explain_pa`, :func:`explain_trail`);
* the notebook section that teaches it, from :data:`TAUGHT` (the tests
  check that every entry names a heading that exists in ``notebooks/``).

The walk checker, :func:`check_walk`, compares a student's MMU walk with
the model's own (``Stage2.translate`` and the software walker's path,
``draw.translation_path``), one descriptor read at a time, and explains the
first difference.  :func:`check_bbm` reads a :class:`s2pt.trace.Trace` of a
student's visitor and checks break-before-make on one entry: an invalid
value first, then a TLBI that covers the entry's range, then the new value,
published with ``smp_store_release``.
"""

from __future__ import annotations

from .errors import Fault, S2ptError

__all__ = ["Wrong", "TAUGHT", "taught", "show", "expect", "check", "explain_pa",
           "explain_trail", "check_walk", "check_bbm", "FAULT_RULES", "ACCESS"]


class Wrong(AssertionError):
    """A graded check failed; the message says what, why and where it is taught."""

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a traceback: the message, once, and
        # none of this module's frames, in lines that fit a notebook's output
        # column (a longer line would wrap in the middle of a word).
        return wrap(f"Wrong: {self}").splitlines()


#: widest line of a message as a notebook shows it
WIDTH = 90


def wrap(message: str, indent: str | None = None) -> str:
    """``message`` with each line of more than WIDTH characters broken between
    words, continuation lines indented under the text after "rule:  " etc.
    (or by ``indent``)."""
    import textwrap

    out = []
    for line in message.splitlines():
        if len(line) <= WIDTH:
            out.append(line)
            continue
        more = indent if indent is not None else " " * 12 if line.startswith("  ") else "  "
        out.append(textwrap.fill(line, WIDTH, subsequent_indent=more,
                                 break_long_words=False, break_on_hyphens=False))
    return "\n".join(out)


#: what the checks of the current notebook cell confirmed (see _summarise)
_confirmed: list[str] = []
#: how many confirmations a cell's summary lists before "... and N more"
SUMMARY_LINES = 6


def _confirm(what: str, want=None, decimal: bool = False) -> None:
    """Note a passed check: ``what``, and the value it had (``want``), if any."""
    _confirmed.append(what if want is None or want is _MISSING else f"{what}: {show(want, decimal)}")
    _hook()


def _summarise(result=None) -> None:
    """IPython's post_run_cell: print what the cell's checks confirmed, if
    they all passed, and forget them either way."""
    done = list(_confirmed)
    _confirmed.clear()
    if not done or (result is not None and not getattr(result, "success", True)):
        return
    lines = [f"Right: {len(done)} check{'s' if len(done) != 1 else ''} passed."]
    lines += [f"  ✓ {what}" for what in done[:SUMMARY_LINES]]
    if len(done) > SUMMARY_LINES:
        lines.append(f"  ... and {len(done) - SUMMARY_LINES} more")
    print(wrap("\n".join(lines), indent="    "))


_hooked = [False]


def _hook() -> None:
    """Register :func:`_summarise` after every cell, once, when in IPython."""
    if _hooked[0]:
        return
    _hooked[0] = True
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is not None:
        ip.events.register("post_run_cell", _summarise)


#: (notebook, section) -> the section's title, as its heading reads
#: ("## 5. The walk, step by step").  Section 0 is the notebook as a whole.
TAUGHT = {
    ("01", 3): "The IPA split",
    ("01", 4): "Descriptors, bit by bit",
    ("01", 5): "The walk, step by step",
    ("01", 6): "The three faults",
    ("01", 7): "The walker and its visitors",
    ("02", 3): "Refcounted table pages",
    ("02", 5): "Replacing a mapping: break-before-make",
    ("02", 6): "Collapse: a block replaces a table",
    ("03", 5): "Lazy split: the first write to a block",
    ("03", 6): "Eager split",
    ("04", 2): "Lazy collapse, step by step",
    ("04", 6): "Why freeing the unlinked subtree is where the trouble starts",
    ("04", 7): "So when is it safe to free?",
    ("05", 2): "Step it by hand",
    ("05", 3): "Let the explorer find it",
    ("05", 5): "How much the search saves",
    ("05", 7): "The MMU is a reader too",
    ("06", 1): "Publish: one store, two versions",
    ("06", 2): "Wait for pre-existing readers: the grace period",
    ("06", 4): "What RCU does not cover: the MMU",
    ("06", 5): "Try to break it (and fail)",
    ("07", 2): 'Two counts called "refcount"',
    ("07", 3): "The naive refcount race, found by the explorer",
    ("07", 4): "The fix, step by step",
    ("08", 2): "The verdict table",
    ("08", 3): "Costs against the number of vCPUs",
    ("08", 4): "Which to choose",
    ("08", 5): "The pKVM question",
    ("09", 2): "A protected guest takes 10 000 pages",
    ("09", 3): "Teardown: the host takes the pages back",
    ("09", 4): "Android's fix: count only what is not default",
    ("09", 5): "The isolation checker",
}


def taught(where) -> str:
    """``("01", 5)`` -> 'notebook 01, section 5 "The walk, step by step"'.

    A plain string is returned as it is; an unknown (notebook, section) is
    an S2ptError (a mistake in the exercise, not in the student's answer).
    """
    if isinstance(where, str):
        return where
    if isinstance(where, list):
        return "; ".join(taught(w) for w in where)
    try:
        nb, sec = where
        title = TAUGHT[(nb, sec)]
    except (TypeError, ValueError, KeyError):
        raise S2ptError(f"where={where!r}: not a (notebook, section) listed in "
                        f"s2pt.feedback.TAUGHT") from None
    return f'notebook {nb}, section {sec} "{title}"'


def show(value, decimal: bool = False) -> str:
    """Render a value for a message: integers >= 10 in hex (unless ``decimal``),
    recursively inside tuples, lists, sets and dicts; a string as it is at
    the top level (a description such as 'a TLBI'), quoted inside a
    container; everything else by repr."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value) if decimal or 0 <= value < 10 else hex(value)
    if isinstance(value, tuple):
        inner = ", ".join(_inner(v, decimal) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return "[" + ", ".join(_inner(v, decimal) for v in value) + "]"
    if isinstance(value, (set, frozenset)):
        return "{" + ", ".join(sorted(_inner(v, decimal) for v in value)) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_inner(k, decimal)}: {_inner(v, decimal)}"
                               for k, v in value.items()) + "}"
    return repr(value)


def _inner(value, decimal: bool) -> str:
    return repr(value) if isinstance(value, str) else show(value, decimal)


_MISSING = object()

#: what a message says in place of an expected value kept back (``reveal=False``)
KEPT_BACK = "(kept back: this is what you are asked to work out; the rule says how)"


def _message(what, rule, where, got=_MISSING, want=_MISSING, decimal=False,
             reveal=True) -> str:
    if not what or not rule:
        raise S2ptError("a check needs a non-empty `what` and `rule`")
    lines = [f"{what}."]
    if want is not _MISSING:
        lines.append(f"  expected: {show(want, decimal) if reveal else KEPT_BACK}")
    if got is not _MISSING:
        lines.append(f"  got:      {show(got, decimal)}")
    lines.append(f"  rule:     {rule}")
    lines.append(f"  taught:   {taught(where)}")
    return "\n".join(lines)


def expect(got, want, what: str, rule: str, where, decimal: bool = False,
           reveal: bool = True) -> None:
    """Raise :class:`Wrong` with both values, the rule and where it is taught,
    unless ``got`` equals ``want`` (a bool never equals an int).
    ``reveal=False`` keeps ``want`` out of the message (see the module
    docstring).

    Returns None, so that a grade cell ending in ``expect(...)`` displays
    nothing: nbgrader would read a displayed number as partial credit."""
    if got == want and isinstance(got, bool) == isinstance(want, bool):
        _confirm(what, want, decimal)
        return
    raise Wrong(_message(what, rule, where, got, want, decimal, reveal))


def check(ok, what: str, rule: str, where, got=_MISSING, want=_MISSING,
          decimal: bool = False, reveal: bool = True) -> None:
    """Raise :class:`Wrong` unless ``ok``.  ``got``/``want``, if given, go
    into the message (``want`` may be a description such as 'a TLBI')."""
    _require(ok, what, rule, where, got, want, decimal, reveal)
    _confirm(what, want, decimal)


def _require(ok, what, rule, where, got=_MISSING, want=_MISSING, decimal=False,
             reveal=True) -> None:
    """:func:`check` without the note that it passed (for a check made of several)."""
    if not ok:
        raise Wrong(_message(what, rule, where, got, want, decimal, reveal))


# -- diagnoses for the walk ---------------------------------------------------

def _bits(hi: int, lo: int = 0) -> str:
    return f"[{hi}:{lo}]" if hi != lo else f"[{hi}]"


def explain_pa(got: int, want: int, ipa: int, level: int, size: int) -> str:
    """Why ``got`` is not the PA a leaf of ``size`` bytes at ``level`` gives ``ipa``.

    The leaf passes IPA[k-1:0] through (k = log2(size)) and supplies the
    bits above from its output address.  Says which IPA bits the wrong PA
    carried, or that its output-address part is wrong.
    """
    k = size.bit_length() - 1
    kind = "page" if level == 3 else "block"
    through = f"a level-{level} {kind} maps IPA{_bits(k - 1)} straight through"
    if not isinstance(got, int) or isinstance(got, bool):
        return f"{through} and adds its output address; a translated access returns an int PA"
    if got >> k == want >> k:
        # Same output address: the offset is wrong.  How many low bits match?
        low = got & (size - 1)
        if low == 0 and ipa & (size - 1):
            return (f"{through}; your PA is the {kind}'s output address alone: add the offset "
                    f"IPA{_bits(k - 1)} = {ipa & (size - 1):#x}")
        # The offset a common mistake takes: a granule's or a level's, else the fewest bits.
        usual = [12, 14, 16, 21, 25, 29, 30, 36, 39, 42]
        for m in [m for m in usual if m < k] + list(range(1, k)):
            if low == ipa & ((1 << m) - 1):
                return f"{through}; your PA used IPA{_bits(m - 1)}"
        return f"{through}; your PA's low {k} bits are {low:#x}, not IPA{_bits(k - 1)} = {ipa & (size - 1):#x}"
    base_got, base_want = got & ~(size - 1), want & ~(size - 1)
    return (f"the {kind}'s output address is the descriptor's bits 47:PAGE_SHIFT aligned down "
            f"to the {kind} size ({size:#x}): {base_want:#x}; your PA has {base_got:#x} "
            f"above bit {k - 1}")


def explain_trail(got, want, pgd_pages: int = 1) -> str | None:
    """The first difference between two walk trails of (level, table, index,
    descriptor) tuples, as a sentence; None if they are equal."""
    for n, (g, w) in enumerate(zip(got, want)):
        if tuple(g) == tuple(w):
            continue
        lvl, table, index, _ = w
        try:
            glvl, gtable, gindex, gdesc = g
        except (TypeError, ValueError):
            return f"trail entry {n} is {show(g)}: each entry is (level, table_pa, index, descriptor)"
        if glvl != lvl:
            return f"your walk trail is wrong at step {n}: the MMU is at level {lvl}, you said level {glvl}"
        first = n == 0
        if gtable != table:
            why = ("the start level's table is the PGD page the IPA falls in: VTTBR_EL2's BADDR "
                   "plus pgd_page_idx(ipa) granules" + (f" ({pgd_pages} concatenated pages)"
                                                      if pgd_pages > 1 else "")
                   if first else
                   "the next table's PA is the table descriptor's bits 47:PAGE_SHIFT "
                   "(the granule, not always 4K, sets PAGE_SHIFT)")
            return (f"your walk trail is wrong at level {lvl}: you read table {gtable:#x}, "
                    f"the MMU reads table {table:#x}; {why}")
        if gindex != index:
            return (f"your walk trail is wrong at level {lvl}: index {show(gindex)}, the MMU "
                    f"uses {show(index)} (the IPA bits this level resolves: geom.idx(ipa, level))")
        return (f"your walk trail is wrong at level {lvl}: descriptor {show(gdesc)}, but memory "
                f"holds {show(w[3])} there; read it with mem.read64(table + 8 * index)")
    if len(got) < len(want):
        lvl = want[len(got)][0]
        return (f"your walk stopped after {len(got)} read(s); the MMU goes on to level {lvl}: "
                f"a valid descriptor with bit 1 set below level 3 is a table")
    if len(got) > len(want):
        lvl = want[-1][0] if want else "?"
        return (f"your walk read {len(got)} descriptors; the MMU stops at level {lvl}: a block, "
                f"a page, an invalid or a reserved descriptor ends the walk")
    return None


#: how a message names an access
ACCESS = {"read": "a read", "write": "a write", "exec": "an instruction fetch"}

FAULT_RULES = {
    "translation": ("bit 0 clear is a translation fault; so is a level-3 descriptor with "
                    "bit 1 clear (the reserved encoding)", ("01", 6)),
    "access": ("a leaf with AF (bit 10) clear gives an access flag fault (no FEAT_HAFDBS), "
               "before any permission check", ("01", 6)),
    "permission": ("a write needs S2AP[1] (bit 7), a read S2AP[0] (bit 6), an instruction "
                   "fetch XN (bits 54:53) = 0b00 (without FEAT_XNX KVM writes 0b00 or 0b10)",
                   ("01", 6)),
}


def check_walk(walk, pgt, ipa: int, access: str = "read", view=None):
    """Run a student's ``walk(view, ipa, access)`` and compare it with the
    model's MMU on ``pgt``; raise :class:`Wrong` at the first difference.

    ``view`` is what the student's function is given (default: ``pgt``);
    the oracle is ``pgt.translate`` for the outcome and the software
    walker's path (:func:`s2pt.draw.translation_path`) for the trail.
    """
    from .draw import translation_path

    g = pgt.geom
    trail, outcome = walk(pgt if view is None else view, ipa, access)
    path = translation_path(pgt, ipa)                 # [(ptep, level, pte, addr)]
    want_trail = []
    for ptep, level, pte, _ in path:
        if level == g.start_level:
            table = pgt.pgd + g.pgd_page_idx(ipa) * g.granule
        else:
            table = ptep & ~(g.granule - 1)
        want_trail.append((level, table, (ptep - table) // 8, pte))
    try:
        t = pgt.translate(ipa, write=access == "write", exec=access == "exec")
        want = t.pa
        leaf_level = t.level
    except Fault as f:
        want = (f.kind, f.level)
        leaf_level = f.level
    what = f"the walk of {ACCESS.get(access, repr(access))} at IPA {ipa:#x} ({g.granule // 1024}K granule, {g.ipa_bits}-bit IPA)"
    why = explain_trail(list(trail), want_trail, g.pgd_pages)
    if why:
        raise Wrong(_message(f"{what}: the trail", why, [("01", 3), ("01", 5)],
                             list(trail), want_trail))
    if outcome == want:
        _confirm(what, want)
        return
    if isinstance(want, int):
        size = g.granule_size(leaf_level)
        rule = (explain_pa(outcome, want, ipa, leaf_level, size) if isinstance(outcome, int)
                else f"this access translates; you reported a fault {show(outcome)}")
        raise Wrong(_message(f"{what}: the PA", rule, ("01", 5), outcome, want))
    kind = want[0]
    rule, where = FAULT_RULES[kind]
    last = want_trail[-1][3]
    if kind == "translation":
        rule = ("a level-3 descriptor with bit 1 clear is the reserved encoding: a translation "
                f"fault, though bit 0 is set ({last:#x})" if last & 1 else
                f"a descriptor with bit 0 clear ({last:#x}) is invalid: a translation fault")
    if isinstance(outcome, tuple) and len(outcome) == 2 and outcome[0] == kind:
        rule = "the fault's level is the level of the last descriptor read"
    raise Wrong(_message(f"{what}: the outcome", rule, where, outcome, want))


# -- break-before-make ----------------------------------------------------------------

def _covers(op, ipa: int, size: int, leaf: bool) -> bool:
    """Does TLBI ``op`` drop every cached translation of [ipa, ipa + size)?

    For a leaf (a block or a page) one TLB entry covers the whole range, so
    a TLBI by any IPA inside it does (``__kvm_tlb_flush_vmid_ipa``, what
    ``stage2_try_break_pte`` issues for a valid leaf).  Behind a table entry
    the TLB may hold one entry per page, and the walk caches the table
    pointer: only a range or whole-VMID flush covers them
    (``kvm_tlb_flush_vmid_range``)."""
    kind = op[1]
    if kind in ("vmid", "all"):
        return True
    if kind == "range":
        return op[2] <= ipa and ipa + size <= op[2] + op[3]
    if kind == "ipa":
        return leaf and ipa <= op[2] < ipa + size
    return False


def check_bbm(steps, ptep: int, new: int, ipa: int, size: int, leaf: bool,
              where, what: str = "the entry") -> None:
    """Break-before-make on the entry at ``ptep`` mapping [ipa, ipa + size):
    the first store is an invalid value (the break), a TLBI covering the
    range comes next, and the store of ``new`` (the make, published with
    ``smp_store_release``) comes last.  ``leaf``: the entry held a block or
    page before (else a table).  ``steps`` are a Trace's steps."""
    from . import descriptor as d

    stores = [(n, s) for n, s in enumerate(steps)
              if s.op[0] in ("WRITE_ONCE", "smp_store_release", "cmpxchg") and s.op[1] == ptep]
    order = "break (an invalid entry), then a TLBI of its range, then make (the new entry)"
    _require(stores, f"{what}: nothing was stored to it", order, where,
             got="no store", want=f"a store of {new:#x} at {ptep:#x}")
    vals = [s.op[-1] for _, s in stores]
    _require(vals[-1] == new, f"{what}: its final value", order, where, got=vals[-1], want=new)
    n_break, first = stores[0]
    _require(not d.kvm_pte_valid(vals[0]),
             f"{what}: the first store writes a valid descriptor over a valid one", order + ": "
             "two valid descriptors for the same IPA must never be visible one after the other, "
             "or a TLB may hold both", where, got=vals[0], want="an invalid value (LOCKED, 0x400)")
    n_make = stores[-1][0]
    _require(steps[n_make].op[0] == "smp_store_release",
             f"{what}: the make is a {steps[n_make].op[0]}",
             "publish the new entry with smp_store_release(), so everything written before "
             "(the new table's entries) is visible before the entry that points to it",
             ("02", 5), got=steps[n_make].op[0], want="smp_store_release")
    tlbis = [n for n, s in enumerate(steps) if s.op[0] == "tlbi" and n_break < n < n_make]
    covering = [n for n in tlbis if _covers(steps[n].op, ipa, size, leaf)]
    late = [n for n, s in enumerate(steps) if s.op[0] == "tlbi" and n > n_make]
    _require(covering, f"{what}: no TLBI covering [{ipa:#x}, {ipa + size:#x}) between the break "
                       f"and the make", order + ("; yours came after the make" if late else
                                                 "; behind a table entry the TLB may hold every "
                                                 "page's translation: one IPA is not enough"
                                                 if tlbis else ""),
             where, got=[steps[n].op for n in tlbis + late] or "no TLBI",
             want=(f"tlbi('ipa', <an IPA in the leaf>, level)" if leaf else
                f"tlbi('range', {ipa:#x}, {size:#x})"))
    _confirm(f"{what}: break, a TLBI covering its range, then make")
