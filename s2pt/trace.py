"""``s2pt.trace``: the kernel operations that one library call performs.

Every access the walker makes to shared state is an operation of
:mod:`s2pt.ops`, performed by the table's :class:`~s2pt.ops.Machine`.  A
trace hangs an observer on that machine for the length of one call (or one
``with`` block) and records each operation, its result and the kernel
function that performed it: the innermost generator on the walk's
``yield from`` chain, such as ``stage2_try_break_pte`` or
``stage2_make_pte``.  It prints the way a race diagram does, one column::

    >>> import s2pt
    >>> pgt = s2pt.Stage2(ipa_bits=40, granule=4096)
    >>> pgt.map(0x4000_0000, 4096, 0x8_0000_0000)     # builds the level-2 table
    >>> print(s2pt.trace(pgt.map, 0x4020_0000, 2 << 20, 0x8_0020_0000))
    Stage2.map(0x40200000, 0x200000, 0x800200000)
    stage2_try_break_pte()
      WRITE_ONCE(L2[1], LOCKED)
    stage2_map_walker_try_leaf()
      dcache_clean_inval_poc
      icache_inval_pou
    stage2_make_pte()
      get_page(0x80003000)
      smp_store_release(L2[1], block 0x800200000 RWX)
    kvm_pgtable_stage2_map()
      dsb(ishst)
    (5 reads not shown: .text(reads=True) lists them)
    11 operations: 2 stores, 0 cmpxchg, 0 TLBIs, 2 CMOs, 1 get_page, 0 put_page; 0 tables allocated, 0 freed

Two ways to take one:

* ``s2pt.trace(obj.method, *args, **kwargs)`` calls a method of a
  :class:`~s2pt.Stage2`, :class:`~s2pt.VM` or :class:`s2pt.pkvm.Host` (or of
  their ``.pgt``) and returns the :class:`Trace`; ``.result`` is what the
  method returned;
* ``with s2pt.trace(vm) as t: ...`` records everything done to that
  table inside the block, whatever performs it.

Reading the output: a line ending in ``()`` names the kernel function, the
indented lines under it are its operations (``op = result`` when the result
says something), consecutive identical steps fold into one line with a
count (``put_page(0x5000) x512``), and a group of steps that repeats once per
entry folds into a ``┌ 512 times`` box whose changing numbers read
``first..last``.  Reads (``READ_ONCE``, the MMU's ``hw_read``,
``page_count``) are hidden unless you ask for them; :meth:`Trace.summary`
counts every kind.

While a trace watches, the walker takes no numpy bulk path
(:attr:`s2pt.ops.Machine.bulk_ok` is false whenever observers exist): every
entry is visited one operation at a time, as in the kernel.  The final state
is the same, only slower, so trace small ranges.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import dataclass

from . import ops as _ops
from .errors import S2ptError
from .ops import DISPLAY, OPS, View, op_text, result_text

__all__ = ["trace", "Trace", "Step"]


@dataclass(slots=True)
class Step:
    """One operation: what was performed, its result, and by which function.

    ``stack`` names the generators on the walk's ``yield from`` chain,
    outermost first; ``function`` is the innermost one a reader would name
    (a one-line helper such as ``stage2_try_set_pte`` is shown as its caller,
    ``stage2_try_break_pte``).
    """
    op: tuple
    result: object
    function: str
    stack: tuple = ()
    level: int | None = None      # level of the table op[1] is in, when known

    @property
    def name(self) -> str:
        return self.op[0]


#: generator names that are the model's, shown with a reader's label instead
_LABELS = {
    "hw_translate": "the MMU (hardware walk)",
    "hw_translate_now": "the MMU (hardware walk)",
}

#: one-line kernel helpers: a step in one is shown under its caller
_HELPERS = frozenset({"stage2_try_set_pte"})

_RUN_CODE = _ops.run.__code__
_READS = frozenset(n for n, k in OPS.items() if k.memory == "read")
_NUM = re.compile(r"(?<![A-Za-z_])(0x[0-9a-f]+|\d+)")


def _visit_code():
    from . import pgtable
    return getattr(pgtable, "__kvm_pgtable_visit").__code__


def _owner_pgt(obj):
    """The KvmPgtable of a Stage2, VM or pkvm.Host; None for anything else."""
    from .kvm import VM
    from .pkvm import Host
    from .stage2 import KvmPgtable
    if isinstance(obj, KvmPgtable):
        return obj
    if isinstance(obj, (VM, Host)):
        return obj.pgt
    return None


class Trace:
    """The operations recorded on one table's machine (see the module doc).

    ``steps`` is the list of :class:`Step`; ``result`` is the traced call's
    return value (one-call form).  ``print(t)`` or ``t.text(reads=True,
    fold=False)`` render it; ``t.summary()`` counts it.
    """

    def __init__(self, pgt, title: str = ""):
        self.pgt = pgt
        self.title = title
        self.steps: list[Step] = []
        self.result = None
        self._view = View(pgt)
        self._frees0 = None
        self._frees = 0
        self._observer = None
        self._visit = _visit_code()

    # -- recording ---------------------------------------------------------------
    def __enter__(self):
        if self._observer is not None:
            raise S2ptError("this trace is already recording; a Trace records one block")
        self._frees0 = self.pgt.mm.table_frees
        self._observer = self._record
        self.pgt.machine.observers.append(self._observer)
        return self

    def __exit__(self, *exc):
        obs, self._observer = self._observer, None
        try:
            self.pgt.machine.observers.remove(obs)
        except ValueError:
            pass
        self._frees += self.pgt.mm.table_frees - self._frees0
        return False

    def _record(self, op, result):
        stack, visit = self._who()
        fn = "?"
        for name in reversed(stack):
            if name not in _HELPERS:
                fn = _LABELS.get(name, name)
                break
        name = op[0]
        kind = OPS.get(name)
        level = None
        view = self._view
        if kind is not None and (kind.addr or name == "hw_read"):
            pfn = op[1] >> self.pgt.page_shift
            if name == "hw_read" and len(op) > 2:
                view.levels[pfn] = op[2]
            elif visit is not None and visit[0] >> self.pgt.page_shift == pfn:
                view.levels[pfn] = visit[1]          # the walker says which level
            level = view.levels.get(pfn)
            if kind.stores:
                value = op[3] if name == "cmpxchg" else op[2]
                if name != "cmpxchg" or result == op[2]:
                    view.learn(op[1], value)
        self.steps.append(Step(op, result, fn, stack, level))

    def _who(self):
        """(the function names on the running walk's ``yield from`` chain,
        outermost first; (ptep, level) of its innermost
        __kvm_pgtable_visit, or None)."""
        f = sys._getframe(2)
        while f is not None and f.f_code is not _RUN_CODE:
            f = f.f_back
        if f is None:
            return (), None
        gen = f.f_locals.get("gen")
        names, visit = [], None
        while gen is not None:
            frame = getattr(gen, "gi_frame", None)
            if frame is None:
                break
            code = frame.f_code
            name = DISPLAY.get(code, code.co_name)
            if name is not None:
                names.append(name)
            if code is self._visit:
                loc = frame.f_locals
                visit = (loc.get("ptep"), loc.get("level"))
            gen = getattr(gen, "gi_yieldfrom", None)
        return tuple(names), visit

    # -- reading -------------------------------------------------------------------
    @property
    def ops(self) -> list:
        """The operations, in order (tuples as :mod:`s2pt.ops` builds them)."""
        return [s.op for s in self.steps]

    def summary(self) -> dict:
        """Counts: every operation, then by kind (reads, stores, cmpxchg,
        xchg, TLBIs, CMOs, barriers, refcounts) and the table pages allocated
        (``zalloc_page`` that succeeded) and freed during the trace."""
        c = Counter(s.op[0] for s in self.steps)
        frees = self._frees + (self.pgt.mm.table_frees - self._frees0
                               if self._observer is not None else 0)
        return {
            "operations": len(self.steps),
            "reads": sum(c[n] for n in _READS),
            "stores": c["WRITE_ONCE"] + c["smp_store_release"],
            "cmpxchg": c["cmpxchg"],
            "xchg": c["xchg"],
            "TLBIs": c["tlbi"],
            "CMOs": c["cmo"],
            "dsb": c["dsb"],
            "get_page": c["get_page"],
            "put_page": c["put_page"],
            "tables allocated": sum(1 for s in self.steps
                                    if s.op[0] == "zalloc_page" and s.result is not None),
            "tables freed": frees,
        }

    def _lines(self, reads: bool):
        """(function, text) per shown step, rendered with the view as it
        stands now and each step's recorded table level."""
        view = self._view
        out = []
        for s in self.steps:
            if not reads and s.op[0] in _READS:
                continue
            if s.level is not None:
                view.levels[s.op[1] >> self.pgt.page_shift] = s.level
            text = op_text(s.op, view)
            if s.op[0] == "tlbi" and s.op[1] in ("ipa", "ipa_nsh"):
                # the TTL hint: the level of the entry, or TLBI_TTL_UNKNOWN
                lvl = s.op[3]
                text += f", level {lvl}" if lvl is not None else ", level unknown"
            r = result_text(s.op, s.result, view)
            out.append((s.function, f"{text} = {r}" if r else text))
        return out

    def text(self, reads: bool = False, fold: bool = True, summary: bool = True) -> str:
        """The trace as text: kernel function headers, their operations
        indented beneath; ``reads`` shows the loads too; ``fold`` folds
        repeats; ``summary`` ends with the counts."""
        lines = self._lines(reads)
        out = [self.title] if self.title else []
        out += _render(lines, fold)
        hidden = len(self.steps) - len(lines)
        if hidden:
            out.append(f"({hidden} read{'s' if hidden != 1 else ''} not shown: "
                       f".text(reads=True) lists them)")
        if self.title and self.result is not None:
            out.append(f"returned: {self.result}")
        if summary:
            out.append(_summary_text(self.summary()))
        return "\n".join(out)

    def __str__(self):
        return self.text()

    __repr__ = __str__

    def _repr_pretty_(self, p, cycle):
        p.text(self.text())

    def __len__(self):
        return len(self.steps)


def _summary_text(s: dict) -> str:
    def n(key, word, plural=True):
        v = s[key]
        return f"{v} {word}{'s' if plural and v != 1 else ''}"
    return (f"{n('operations', 'operation')}: {n('stores', 'store')}, "
            f"{n('cmpxchg', 'cmpxchg', False)}, "
            + (f"{n('xchg', 'xchg', False)}, " if s.get("xchg") else "")
            + f"{n('TLBIs', 'TLBI')}, {n('CMOs', 'CMO')}, "
            f"{n('get_page', 'get_page', False)}, {n('put_page', 'put_page', False)}; "
            f"{n('tables allocated', 'table')} allocated, {s['tables freed']} freed")


# ---------------------------------------------------------------------------
# Folding
# ---------------------------------------------------------------------------

def _shape(line):
    """A line with its numbers blanked: two steps of one loop over entries
    have the same shape."""
    fn, text = line
    return fn, _NUM.sub("#", text)


def _merge(texts: list[str]) -> str:
    """One text for several of the same shape: a number that changes reads
    first..last (L3[0..511], page 0x40000000..0x401ff000)."""
    first = texts[0]
    if all(t == first for t in texts):
        return first
    parts = [_NUM.split(t) for t in texts]
    out = []
    for i, piece in enumerate(parts[0]):
        if i % 2 == 0:
            out.append(piece)                       # the text between numbers
        else:
            a, b = piece, parts[-1][i]
            same = all(p[i] == a for p in parts)
            out.append(a if same else f"{a}..{b}")
    return "".join(out)


_MAX_PERIOD = 8


def _render(lines, fold: bool) -> list[str]:
    shapes = [_shape(l) for l in lines]
    out = []
    last_fn = None
    i, n = 0, len(lines)

    def header(fn, prefix=""):
        return f"{prefix}{fn}" if " " in fn else f"{prefix}{fn}()"

    while i < n:
        repeats, period = 1, 1
        if fold:
            for p in range(1, _MAX_PERIOD + 1):
                if i + 2 * p > n:
                    break
                r = 1
                while shapes[i + r * p:i + (r + 1) * p] == shapes[i:i + p]:
                    r += 1
                if r > 1 and r * p > repeats * period:
                    repeats, period = r, p
        if period == 1:
            fn = lines[i][0]
            if fn != last_fn:
                out.append(header(fn))
                last_fn = fn
            text = _merge([lines[i + k][1] for k in range(repeats)])
            out.append(f"  {text}" + (f" x{repeats}" if repeats > 1 else ""))
        else:
            out.append(f"┌ {repeats} times:")
            group_fn = None
            for k in range(period):
                fn = lines[i + k][0]
                if fn != group_fn:
                    out.append(header(fn, "│ "))
                    group_fn = fn
                text = _merge([lines[i + k + r * period][1] for r in range(repeats)])
                out.append(f"│   {text}")
            out[-1] = "└" + out[-1][1:]
            last_fn = None
        i += repeats * period
    return out


# ---------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------

def _args_text(args, kwargs) -> str:
    def one(v):
        return f"{v:#x}" if isinstance(v, int) and not isinstance(v, bool) else repr(v)
    return ", ".join([one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()])


def trace(target, *args, **kwargs) -> Trace:
    """Record the kernel operations of one call, or of a ``with`` block.

    ``trace(pgt.map, ipa, size, pa)``: call the method (of a Stage2, a VM,
    a pkvm.Host or their ``.pgt``) with those arguments and return the
    :class:`Trace`, whose ``.result`` is what the method returned.  If the
    method raises, the exception propagates and the observer is gone.

    ``with trace(vm) as t:`` (a Stage2, VM or pkvm.Host, no arguments):
    record everything performed on that table inside the block.

    Tracing turns off the walker's numpy bulk path (see the module doc).
    """
    pgt = _owner_pgt(target)
    if pgt is not None:
        if args or kwargs:
            raise S2ptError(
                f"trace({type(target).__name__}, ...): arguments go with a method, as in "
                f"trace(pgt.map, ipa, size, pa); with a table alone, use 'with trace(pgt):'")
        return Trace(pgt)
    owner = getattr(target, "__self__", None)
    pgt = _owner_pgt(owner) if callable(target) else None
    if pgt is None:
        raise S2ptError(
            f"trace({target!r}): the first argument must be a Stage2, a VM or a pkvm.Host "
            f"(for 'with trace(...)'), or one of their methods such as pgt.map or vm.fault")
    t = Trace(pgt, f"{type(owner).__name__}.{target.__name__}({_args_text(args, kwargs)})")
    with t:
        t.result = target(*args, **kwargs)
    return t
