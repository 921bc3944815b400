"""Widgets for the notebooks: poke at descriptors and tables with the mouse.

Two widgets, both ipywidgets 8 boxes (JupyterLab 4, VS Code), both thin:
every answer comes from the library, never from logic of their own.

**Decoder** -- one descriptor, bit by bit::

    import s2pt.widgets
    s2pt.widgets.Decoder(0x9_0000_07ff, level=3)

Type a 64-bit value in hex, or click any of the 64 bit buttons; pick the
level and the granule.  The buttons are grouped by the fields that
:func:`s2pt.decode` finds for *this* value at *this* level (a table entry
has an address and little else; an invalid one only bit 0), and the table
below names and explains each field.  Encodings the MMU or KVM would reject
are pointed out: a block at a level that cannot hold one, bit 1 clear at
level 3, a KVM_INVALID_PTE_LOCKED entry left behind.  Bits that ``decode``
does not interpret (nG, Contiguous, DBM, 63:59) are shown as "not decoded".

**Builder** -- a stage-2 table you change with buttons::

    pgt = s2pt.Stage2()
    s2pt.widgets.Builder(pgt)          # map, unmap, write-protect, split, collapse
    s2pt.widgets.Builder(s2pt.VM())    # guest faults, dirty logging on/off, unmap a memslot

Each button runs one library call on the IPA / size / PA / prot in the
boxes (the call is echoed, so you can paste it into a cell), then redraws
the tree (``pgt.draw``), the ``ptdump`` and the counters (table pages, TLBIs)
with what the action changed, and lists the kernel operations the action
performed (``s2pt.trace``) under its kernel functions.  Bad input or a refused operation
(:class:`s2pt.S2ptError`) is shown as a message; the table is unchanged.

Both keep their logic in plain methods (``set_value``, ``toggle``, ``html``;
``map``, ``unmap``, ...), so tests drive them without a browser:
``Button.click()`` and ``Text.value = ...`` work without a kernel.

This module sits on top of the others: it imports from s2pt, nothing in
s2pt imports it, and ``import s2pt`` does not load ipywidgets.
"""

from __future__ import annotations

import html as _html
import re
import time
from contextlib import ExitStack

import anywidget
import ipywidgets as W
import traitlets

from .descriptor import decode
from .errors import Fault, S2ptError
from .htmltrace import CSS, Frames, Recorder, asset, page_data_pack, record
from .geometry import GRANULES, size_str
from .kvm import VM
from .ops import run
from .trace import trace
from . import pgtable as pt

__all__ = ["Decoder", "Builder", "Interleave", "TraceView", "Drill", "parse_number"]

_UNITS = {"K": 10, "M": 20, "G": 30, "T": 40}


def parse_number(text, what: str = "value", bits: int = 64) -> int:
    """ "0x4000_0000", "2M", "4K", "1G", "4096" -> int; S2ptError otherwise.

    Hex needs its ``0x``; a bare number is decimal unless ``what`` is the
    descriptor, which is always hex (see :meth:`Decoder.set_value`)."""
    if isinstance(text, int) and not isinstance(text, bool):
        n = text
    else:
        s = str(text).strip().replace("_", "").replace(" ", "")
        if not s:
            raise S2ptError(f"{what}: empty; type a number such as 0x4000_0000 or 2M")
        try:
            m = re.fullmatch(r"(\d+)([KMGT])i?B?", s, re.I)
            if m:
                n = int(m.group(1)) << _UNITS[m.group(2).upper()]
            else:
                n = int(s, 0)
        except ValueError:
            raise S2ptError(f"{what}={text!r}: not a number (try 0x4000_0000, 4096 or 2M)") from None
    if n < 0 or n >= 1 << bits:
        raise S2ptError(f"{what}={text!r}: must be in [0, 2^{bits})")
    return n


def _esc(s) -> str:
    return _html.escape(str(s))


def _bytes(hi: int, lo: int) -> list:
    """Bits hi..lo cut at byte boundaries: [(hi, lo), ...], highest first."""
    out = []
    while hi >= lo:
        bottom = max(lo, hi & ~7)
        out.append((hi, bottom))
        hi = bottom - 1
    return out


def _msg(text: str, ok: bool) -> str:
    colour = "#1e7b34" if ok else "#b02a37"
    return f'<div style="color:{colour}; white-space: pre-wrap">{_esc(text)}</div>'


# ---------------------------------------------------------------------------
# Decoder
# ---------------------------------------------------------------------------

_FIELD_COLOURS = ["#dbe9ff", "#ffe8cc", "#d9f2d9", "#f2d9f2", "#fff5b3", "#d9f2f2",
                  "#f9d6d5", "#e6e6fa"]


class Decoder(W.VBox):
    """A 64-bit stage-2 descriptor you edit bit by bit; see the module docstring.

    ``value``, ``level`` and ``granule`` are the current state; change them
    with :meth:`set_value` (an int, or hex text), :meth:`toggle`,
    :meth:`set_level` and :meth:`set_granule`, or with the controls.
    ``decoded`` is ``s2pt.decode(value, level, granule)``; ``problems`` the
    encoding errors; ``html`` what the widget shows under the buttons.
    """

    def __init__(self, value=0, level: int = 3, granule: int = 4096):
        self.value, self.level, self.granule = 0, 3, 4096
        self.message = ""                 # the last input error, or ""
        self._syncing = False
        self.text = W.Text(description="value (hex)", continuous_update=False,
                           layout=W.Layout(width="22em"))
        self.level_box = W.Dropdown(options=[(f"level {i}", i) for i in range(4)], value=3,
                                    description="", layout=W.Layout(width="7em"))
        self.granule_box = W.Dropdown(options=[(f"{g // 1024}K granule", g) for g in GRANULES],
                                      value=4096, layout=W.Layout(width="9em"))
        self.bits = [W.Button(description="0", tooltip=f"bit {i}",
                              layout=W.Layout(width="1.9em", height="1.9em", padding="0",
                                              margin="0"))
                     for i in range(64)]
        for i, b in enumerate(self.bits):
            b.on_click(lambda _b, i=i: self.toggle(i))
        self.groups = W.Box(layout=W.Layout(flex_flow="row wrap", align_items="flex-end"))
        self._spans: tuple = ()
        self.out = W.HTML()
        self.text.observe(lambda ch: self._syncing or self.set_value(ch["new"]), "value")
        self.level_box.observe(lambda ch: self._syncing or self.set_level(ch["new"]), "value")
        self.granule_box.observe(lambda ch: self._syncing or self.set_granule(ch["new"]), "value")
        super().__init__([W.HBox([self.text, self.level_box, self.granule_box]),
                          self.groups, self.out])
        self.add_class("s2pt-decoder")
        for setter, v in ((self.set_granule, granule), (self.set_level, level)):
            if not setter(v):
                raise S2ptError(self.message)
        if not self.set_value(value):
            raise S2ptError(self.message)

    # -- state changes; each returns True if accepted ---------------------------
    def set_value(self, value) -> bool:
        """Set the descriptor: an int, or text in hex ("0x9000007ff",
        "9_0000_07ff").  Bad text leaves the value and sets ``message``."""
        try:
            if isinstance(value, str):
                s = value.strip().replace("_", "").replace(" ", "")
                if s.lower().startswith("0x"):
                    s = s[2:]
                if not s or not re.fullmatch(r"[0-9a-fA-F]+", s):
                    raise S2ptError(f"{value!r} is not a hexadecimal number "
                                    f"(type e.g. 0x9_0000_07ff)")
                value = int(s, 16)
            if not isinstance(value, int) or isinstance(value, bool) \
                    or not 0 <= value < 1 << 64:
                raise S2ptError(f"{value!r}: a descriptor is an unsigned 64-bit integer")
        except S2ptError as e:
            self.message = str(e)
            self._refresh()
            return False
        self.value, self.message = value, ""
        self._refresh()
        return True

    def toggle(self, bit: int) -> bool:
        """Flip one bit (0 = valid ... 63)."""
        if not isinstance(bit, int) or not 0 <= bit < 64:
            self.message = f"bit={bit!r}: bits run from 0 to 63"
            self._refresh()
            return False
        return self.set_value(self.value ^ (1 << bit))

    def set_level(self, level) -> bool:
        return self._set("level", level)

    def set_granule(self, granule) -> bool:
        return self._set("granule", granule)

    def _set(self, name, v) -> bool:
        old = getattr(self, name)
        setattr(self, name, v)
        try:
            self.decoded
        except S2ptError as e:
            setattr(self, name, old)
            self.message = str(e)
            self._refresh()
            return False
        self.message = ""
        self._refresh()
        return True

    # -- what it shows ----------------------------------------------------------
    @property
    def decoded(self):
        return decode(self.value, self.level, self.granule)

    def field_of(self) -> list[tuple[int, int, str]]:
        """[(hi, lo, field name)] covering bits 63..0, from ``decoded``'s fields;
        stretches that ``decode`` does not interpret are named "not decoded"."""
        spans = sorted(((f.hi, f.lo, f.name) for f in self.decoded.fields), reverse=True)
        out, top = [], 63
        for hi, lo, name in spans:
            if hi < top:
                out.append((top, hi + 1, "not decoded"))
            out.append((hi, lo, name))
            top = lo - 1
        if top >= 0:
            out.append((top, 0, "not decoded"))
        return out

    @property
    def problems(self) -> list[str]:
        """Encoding errors and warnings for this value, from ``decode``."""
        d = self.decoded
        out = []
        if d.kind == "reserved":
            why = next(f.meaning for f in d.fields if f.name == "type")
            out.append(f"Encoding error: {why}. The MMU treats it as a translation fault "
                       f"at level {self.level}.")
        if d.kind == "locked":
            out.append("KVM_INVALID_PTE_LOCKED: only ever transient, while one walker "
                       "breaks the entry (stage2_try_break_pte) before making it again; "
                       "others that read it back off with -EAGAIN. One left in a table "
                       "is a bug.")
        for hi, lo, name in self.field_of():
            if d.kind not in ("table", "block", "page"):
                break               # decode already says what the rest means
            on = [i for i in range(hi, lo - 1, -1) if self.value >> i & 1]
            if name == "not decoded" and on:
                where = ("bit " if len(on) == 1 else "bits ") + ", ".join(map(str, on))
                out.append(f"{where} set: s2pt.decode does not interpret "
                           f"{'it' if len(on) == 1 else 'them'} (see the field table in "
                           f"s2pt.descriptor; KVM never sets them)")
        return out

    @property
    def html(self) -> str:
        """The message, the problems and decode's field table, as HTML."""
        parts = []
        if self.message:
            parts.append(_msg(self.message, False))
        for p in self.problems:
            parts.append(f'<div style="color:#b02a37">⚠ {_esc(p)}</div>')
        parts.append(self.decoded._repr_html_())
        return "\n".join(parts)

    def _refresh(self):
        self._syncing = True
        try:
            self.text.value = f"{self.value:#018x}"
            self.level_box.value = self.level
            self.granule_box.value = self.granule
            spans = tuple(self.field_of())
            for i, b in enumerate(self.bits):
                on = (self.value >> i) & 1
                if b.description != str(on):
                    b.description = str(on)
                    b.button_style = "info" if on else ""
            if spans != self._spans:
                self._spans = spans
                boxes = []
                for k, (hi, lo, name) in enumerate(spans):
                    bits = f"{hi}" if hi == lo else f"{hi}:{lo}"
                    colour = "#eeeeee" if name == "not decoded" else \
                        _FIELD_COLOURS[k % len(_FIELD_COLOURS)]
                    for i in range(lo, hi + 1):
                        self.bits[i].tooltip = f"bit {i}: {name} [{bits}]"
                    label = W.HTML(f'<div style="font-size:11px; line-height:1.2; '
                                   f'background:{colour}; padding:0 2px; white-space:nowrap">'
                                   f'{_esc(name)}<br>{bits}</div>')
                    row = W.Box([self._chunk(top, bottom) for top, bottom in _bytes(hi, lo)],
                                layout=W.Layout(flex_flow="row wrap"))
                    boxes.append(W.VBox([label, row], layout=W.Layout(margin="0 4px 2px 0")))
                self.groups.children = boxes
            self.out.value = self.html
        finally:
            self._syncing = False

    def _chunk(self, hi: int, lo: int):
        """Bits hi..lo (within one byte) as buttons under their numbers: a
        long field (the 36-bit address) wraps a byte at a time, and every
        bit says which it is."""
        nums = "".join(f'<span style="display:inline-block; width:1.9em; text-align:center">'
                       f'{i}</span>' for i in range(hi, lo - 1, -1))
        return W.VBox([W.HTML(f'<div class="s2pt-bitnums" style="font-size:10px; '
                              f'line-height:1.2; white-space:nowrap; color:#555">{nums}</div>'),
                       W.HBox([self.bits[i] for i in range(hi, lo - 1, -1)])],
                      layout=W.Layout(margin="0 3px 0 0"))

    def _repr_mimebundle_(self, **kw):
        # Where widgets cannot run (GitHub, nbconvert), the text is decode's.
        bundle = super()._repr_mimebundle_(**kw)
        if isinstance(bundle, tuple):
            data, md = bundle
            data["text/plain"] = str(self.decoded)
            return data, md
        if isinstance(bundle, dict):
            bundle["text/plain"] = str(self.decoded)
        return bundle

    def __repr__(self):
        return f"Decoder({self.value:#x}, level={self.level}, granule={self.granule})"


# ---------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------

_PROTS = ["RWX", "RW", "R", "X", "WX", "RX", ""]
_COUNTERS = (("tables_live", "table pages"), ("tables_allocated", "allocated"),
             ("tables_freed", "freed"), ("tlbi", "TLBIs"), ("faults", "faults"),
             ("maps", "maps"), ("lazy_splits", "lazy splits"))


class Builder(W.VBox):
    """Change a stage-2 table with buttons and watch it redraw; see the module
    docstring.  ``Builder(pgt)`` for a :class:`s2pt.Stage2`, ``Builder(vm)``
    for a :class:`s2pt.VM` (guest faults and dirty logging on its table).

    The actions are methods too: :meth:`map`, :meth:`unmap`,
    :meth:`wrprotect`, :meth:`split`, :meth:`collapse` (a Stage2);
    :meth:`fault`, :meth:`enable_logging`, :meth:`disable_logging`,
    :meth:`unmap_memslot` (a VM).
    Each reads the boxes (``ipa``, ``size``, ``pa``, ``prot``), returns True
    if the library accepted it, and records the equivalent call in
    ``history``.  ``panels`` is a Tab: the tree, the ptdump, and the kernel
    operations of the last action (``s2pt.trace``, for actions over at most
    ``TRACE_LIMIT`` bytes); :meth:`add_panel` adds one, and ``action_hooks``
    holds context-manager factories ``hook(builder, name)`` entered around
    every action, so such a panel can record it.
    """

    def __init__(self, target, ipa=0x4000_0000, size=2 << 20, pa=0x8_0000_0000,
                 prot="RWX"):
        if isinstance(target, VM):
            self.vm, self.pgt = target, target.pgt
            if target.memslots:
                ipa = target.memslots[0].gpa
        elif hasattr(target, "map") and hasattr(target, "draw") and hasattr(target, "ptdump"):
            self.vm, self.pgt = None, target
        else:
            raise S2ptError(f"Builder({target!r}): give it a s2pt.Stage2 or a s2pt.VM")
        self.history: list[str] = []
        self.action_hooks: list = []
        self.last_redraw_s = 0.0
        name = "vm" if self.vm else "pgt"
        self._name = name
        tight = {"description_width": "initial"}
        lay = W.Layout(width="13em", margin="2px 8px 2px 0")
        self.ipa = W.Text(f"{ipa:#x}", description="IPA", layout=lay, style=tight)
        self.size = W.Text(size_str(size), description="size", style=tight,
                           layout=W.Layout(width="8em", margin="2px 8px 2px 0"))
        self.pa = W.Text(f"{pa:#x}", description="PA", layout=lay, style=tight)
        self.prot = W.Dropdown(options=_PROTS, value=prot, description="prot", style=tight,
                               layout=W.Layout(width="8em", margin="2px 8px 2px 0"))
        self.pages_only = W.Checkbox(False, description="pages only (force_pte)",
                                     indent=False, layout=W.Layout(width="13em"))
        if self.vm:
            actions = [("fault", "guest read", self.fault),
                       ("write_fault", "guest write", lambda: self.fault(write=True)),
                       ("log_on", "dirty logging on", self.enable_logging),
                       ("log_off", "dirty logging off", self.disable_logging),
                       ("unmap_slot", "unmap memslot", self.unmap_memslot)]
            fields = [self.ipa]
        else:
            actions = [("map", "map", self.map), ("unmap", "unmap", self.unmap),
                       ("wrprotect", "write-protect", self.wrprotect),
                       ("split", "split", self.split), ("collapse", "collapse", self.collapse)]
            fields = [self.ipa, self.size, self.pa, self.prot, self.pages_only]
        self.buttons = {}
        for key, label, fn in actions:
            b = W.Button(description=label, layout=W.Layout(width="auto"))
            b.on_click(lambda _b, fn=fn: fn())
            b.add_class(f"s2pt-{key}")
            self.buttons[key] = b
        self.message = W.HTML()
        self.counters = W.HTML()
        self.tree = W.HTML()
        self.dump = W.HTML()
        self.ops = W.HTML('<pre style="font-size: 11px">(no action yet)</pre>')
        self.panels = W.Tab([self.tree, self.dump, self.ops],
                            titles=("tree", "ptdump", "kernel operations"))
        super().__init__([W.Box(fields, layout=W.Layout(flex_flow="row wrap")),
                          W.Box(list(self.buttons.values()),
                                layout=W.Layout(flex_flow="row wrap")),
                          self.message, self.counters, self.panels])
        self.add_class("s2pt-builder")
        self._before = self._stats()
        self.redraw()

    def add_panel(self, title: str, widget) -> None:
        """Add a tab next to "tree" and "ptdump"."""
        titles = (*self.panels.titles, title)
        self.panels.children = (*self.panels.children, widget)
        self.panels.titles = titles

    # -- reading the boxes -------------------------------------------------------
    def _ipa(self):
        return parse_number(self.ipa.value, "IPA")

    def _range(self):
        return self._ipa(), parse_number(self.size.value, "size")

    # -- running one action ---------------------------------------------------------
    def _act(self, call: str, fn, span: int | None = None) -> bool:
        """Run fn() (one library call, shown as ``call``); show its result or
        its S2ptError / Fault, and its kernel operations (s2pt.trace) when it
        covers at most TRACE_LIMIT bytes (``span``; None: one fault); redraw."""
        self._before = self._stats()
        traced = span is None or span <= self.TRACE_LIMIT
        t = None
        try:
            with ExitStack() as stack:
                for hook in self.action_hooks:
                    stack.enter_context(hook(self, call))
                if traced:
                    t = stack.enter_context(trace(self.vm if self.vm else self.pgt))
                result = fn()
        except (S2ptError, Fault) as e:
            self.message.value = _msg(f"{call}\n✗ {e}", False)
            self._show_ops(call, t, span)
            self.redraw()
            return False
        self.history.append(call)
        self.message.value = _msg(f"{call}" + (f"\n→ {result}" if result else ""), True)
        self._show_ops(call, t, span)
        self.redraw()
        return True

    #: Actions over larger ranges are not traced: while s2pt.trace watches, the
    #: walker visits every entry one operation at a time (about 25 ms per MiB
    #: of pages), and the list would be long.
    TRACE_LIMIT = 16 << 20

    def _show_ops(self, call, t, span):
        if t is None:
            text = (f"{call}\n(not traced: it covers {size_str(span)}; s2pt.trace walks "
                    f"entry by entry, so the builder traces actions up to "
                    f"{size_str(self.TRACE_LIMIT)})")
        else:
            text = f"{call}\n{t}"
        self.ops.value = (f'<pre style="max-height: 24em; overflow: auto; font-size: 11px">'
                          f'{_esc(text)}</pre>')

    def _guarded(self, build):
        """build() reads the boxes and returns (call text, fn[, span]); a
        parse error is shown like a refused operation."""
        try:
            call, fn, *span = build()
        except S2ptError as e:
            self.message.value = _msg(f"✗ {e}", False)
            return False
        return self._act(call, fn, *span)

    def map(self) -> bool:
        """kvm_pgtable_stage2_map over [IPA, IPA+size) -> PA, with prot."""
        def build():
            ipa, size = self._range()
            pa = parse_number(self.pa.value, "PA")
            prot, fp = self.prot.value, self.pages_only.value
            extra = ", force_pte=True" if fp else ""
            return (f"pgt.map({ipa:#x}, {size:#x}, {pa:#x}, prot={prot!r}{extra})",
                    lambda: self.pgt.map(ipa, size, pa, prot=prot, force_pte=fp), size)
        return self._guarded(build)

    def unmap(self) -> bool:
        """kvm_pgtable_stage2_unmap over [IPA, IPA+size)."""
        def build():
            ipa, size = self._range()
            return f"pgt.unmap({ipa:#x}, {size:#x})", lambda: self.pgt.unmap(ipa, size), size
        return self._guarded(build)

    def wrprotect(self) -> bool:
        """kvm_pgtable_stage2_wrprotect, then the TLB flush the caller owes
        (kvm_mmu_wp_memory_region does both)."""
        def build():
            ipa, size = self._range()

            def go():
                self.pgt.wrprotect(ipa, size)
                self.pgt.flush_tlb(ipa, size)
            return (f"pgt.wrprotect({ipa:#x}, {size:#x}); pgt.flush_tlb({ipa:#x}, {size:#x})",
                    go, size)
        return self._guarded(build)

    def split(self) -> bool:
        """kvm_pgtable_stage2_split: every block in the range becomes a table
        of pages, from a memcache topped up first (as the eager split does).
        Stage2 has no public split(), so this runs the kernel function."""
        def build():
            ipa, size = self._range()
            pgt = self.pgt

            def go():
                ipa_, size_ = pgt._check_range(ipa, size)
                mc = pgt._topup(pgt._map_table_bound(ipa_, size_, ipa_, True),
                                f"split of [{ipa_:#x}, {ipa_ + size_:#x})")
                try:
                    ret = run(pt.kvm_pgtable_stage2_split(pgt, ipa_, size_, mc, bulk=pgt._bulk),
                              pgt.machine)
                finally:
                    mc.free_all()
                pgt._expect_ok(ret, "kvm_pgtable_stage2_split")
            return f"kvm_pgtable_stage2_split(pgt, {ipa:#x}, {size:#x}, mc)", go, size
        return self._guarded(build)

    def collapse(self) -> bool:
        """Map the range again as blocks, keeping what IPA maps to (its PA,
        prot and memory type): kvm_pgtable_stage2_map replaces the table
        entry with a block and frees the subtree, as a guest fault does after
        dirty logging ends (notebook 04)."""
        def build():
            ipa, size = self._range()
            try:
                t = self.pgt.translate(ipa)
            except Fault as f:
                raise S2ptError(f"collapse: nothing mapped at IPA {ipa:#x} to keep "
                                f"({f.kind} fault, level {f.level})") from None
            return (f"pgt.map({ipa:#x}, {size:#x}, {t.pa:#x}, prot={t.prot!r}, "
                    f"memattr={t.memattr!r})",
                    lambda: self.pgt.map(ipa, size, t.pa, prot=t.prot, memattr=t.memattr), size)
        return self._guarded(build)

    def fault(self, write: bool = False) -> bool:
        """A guest access at IPA that faults: vm.fault -> user_mem_abort."""
        def build():
            ipa = self._ipa()
            return (f"vm.fault({ipa:#x}, write={bool(write)})",
                    lambda: self.vm.fault(ipa, write=bool(write)))
        return self._guarded(build)

    def _slot_call(self, method: str):
        def build():
            ipa = self._ipa()
            slot = self.vm.memslot_for(ipa)
            if slot is None:
                raise S2ptError(f"IPA {ipa:#x} is in no memslot: dirty logging is per memslot")
            return (f"vm.{method}({slot.id})", lambda: getattr(self.vm, method)(slot), slot.size)
        return self._guarded(build)

    def enable_logging(self) -> bool:
        """KVM_MEM_LOG_DIRTY_PAGES on for the memslot holding IPA."""
        return self._slot_call("enable_dirty_logging")

    def disable_logging(self) -> bool:
        """KVM_MEM_LOG_DIRTY_PAGES off for the memslot holding IPA."""
        return self._slot_call("disable_dirty_logging")

    def unmap_memslot(self) -> bool:
        """Unmap the whole memslot holding IPA (kvm_stage2_unmap_range): the
        alternative to lazy collapse in notebook 04."""
        return self._slot_call("unmap_memslot")

    # -- the views ----------------------------------------------------------------------
    def _stats(self) -> dict:
        return dict(self.vm.stats if self.vm else self.pgt.stats)

    def counters_html(self) -> str:
        now = self._stats()
        cells = []
        for key, label in _COUNTERS:
            if key not in now and key not in self._before:
                continue
            v, d = now.get(key, 0), now.get(key, 0) - self._before.get(key, 0)
            delta = f' <b style="color:#1e7b34">({d:+d})</b>' if d else ""
            cells.append(f"{label} {v}{delta}")
        return f'<div class="s2pt-counters">{" · ".join(cells)}</div>'

    def redraw(self) -> None:
        """Redraw the tree, the ptdump and the counters from the table."""
        t = time.perf_counter()
        try:
            hl = self._ipa()
            if hl >= 1 << self.pgt.ia_bits:
                hl = None
        except S2ptError:
            hl = None
        self.tree.value = self.pgt.draw(highlight=hl).html()
        self.dump.value = (f'<pre style="max-height: 24em; overflow: auto; font-size: 11px">'
                           f'{_esc(self.pgt.ptdump())}</pre>')
        self.counters.value = self.counters_html()
        self.last_redraw_s = time.perf_counter() - t

    def __repr__(self):
        return f"Builder({self._name}, {len(self.history)} actions)"


# ---------------------------------------------------------------------------
# Interleave
# ---------------------------------------------------------------------------

class TraceView(anywidget.AnyWidget):
    """The panels of a recorded run, drawn in the browser by
    ``s2pt/trace_page/trace.js``, the script the HTML trace runs: the same
    step data (:class:`s2pt.htmltrace.Frames`), the same panels, the same
    Prev / Next / Play (skipping steps that change no shared state) and jump
    to the violation, without the kernel.

    ``blob``: all the steps, gzipped (as the page stores them); new steps
    come as ``splice`` messages (:meth:`splice`).  ``step``: the step shown,
    set by either side (the browser sets it when a move ends).

    A message reaches only the views drawn when it is sent: one sent before
    the widget is displayed, or while a view is still unpacking the blob,
    is lost to it.  So each view, once drawn, says ``hello``, and the
    widget's owner (``on_hello``) sends the whole run again as the blob if
    any message went out since the blob was set (``behind``)."""

    _esm = asset("trace.js") + "\n" + asset("widget.js")
    _css = CSS
    blob = traitlets.Unicode("").tag(sync=True)
    step = traitlets.Int(0).tag(sync=True)

    def __init__(self, on_hello=None, **kw):
        super().__init__(**kw)
        self.behind = False
        self.on_hello = on_hello
        self.on_msg(self._msg)

    def _msg(self, _widget, content, _buffers) -> None:
        if content.get("kind") == "hello" and self.behind and self.on_hello is not None:
            self.on_hello()

    def load(self, blob: str) -> None:
        """Set the whole run (every view redraws from it)."""
        self.blob = blob
        self.behind = False

    def splice(self, part: dict) -> None:
        """Send steps added to the run (:meth:`Frames.since`)."""
        self.send({"kind": "splice", **part})
        self.behind = True

    def fill(self, k: int, tree: int, pool: list) -> None:
        """Send step ``k``'s tree, drawn now (pool index ``tree``; ``pool``:
        the strings added to the pool)."""
        self.send({"kind": "tree", "k": k, "tree": tree, "pool": pool})
        self.behind = True


#: Where Export writes when not told: a folder that tells git to ignore it.
EXPORT_DIR = "s2pt-traces"


class Interleave(W.VBox):
    """Step a scenario's CPUs yourself and watch the race; the panels are a
    :class:`TraceView`, drawn by the script that draws the HTML trace
    (:mod:`s2pt.htmltrace`).

    ``Interleave("collapse-vs-fault", "none")`` or ``Interleave(world)`` (a
    World from :func:`s2pt.world` or :func:`s2pt.replay`; its steps so far
    are replayed on a fresh copy, the engine being deterministic).

    Per actor: **Step** (greyed out, with the reason, when it cannot run),
    **to shared** (run it until it performs a step another CPU can see or
    race with: a store, a refcount or lock or RCU operation, a free, or an
    access to an entry or page another actor has touched) and **until
    blocked**.  Then **Undo** (back one step), **Reset**, a schedule box
    with **Load**, **Shortest counterexample** (the exhaustive search in a
    background thread, with a progress bar and **Cancel**), and **Export**
    (schedule string, the race diagram, the HTML trace file, written where
    the path box says or in ``s2pt-traces/``, a folder git ignores).  In the
    panels: Prev / Next / Play (skipping steps that change no shared state,
    as the trace page does), the violation, a slider.

    The same operations are methods, for tests and cells: :meth:`step`,
    :meth:`step_to_shared`, :meth:`run_until_blocked`, :meth:`undo`,
    :meth:`reset`, :meth:`load`, :meth:`load_shortest`, :meth:`play_to`,
    :meth:`export`.  Each returns False (and shows a message) when refused.
    """

    def __init__(self, scenario, scheme="rcu", bugs=(), *, max_states: int = 2_000_000):
        from .sim.world import World
        if isinstance(scenario, World):
            w = scenario
            if w.nsteps and not w.record:
                raise S2ptError("Interleave(world): the World did not record its steps "
                                "(record=False); pass a fresh one or s2pt.world(...)")
            self.template = w.again(record=True)
            start = [ev.cpu for ev in w.events]
        else:
            from .explorer import world as _world
            self.template = _world(scenario, scheme, bugs)
            start = []
        self.max_states = max_states
        self.loaded: list = []               # the full run of the loaded schedule
        self.found = None                    # the last search Result
        self.last_redraw_s = 0.0
        self._cancel = False
        self._thread = None
        w = self.template
        name = getattr(w.scenario, "name", "?")
        sch = getattr(w.scheme, "name", "?")
        self.title = W.HTML(f'<div class="s2pt-trace"><b>{_esc(name)}</b> under '
                            f'<b>{_esc(sch)}</b>{"".join(" + " + _esc(b) for b in sorted(w.bugs))}'
                            f'<div class="role">{_esc(getattr(w.scenario, "summary", ""))}</div></div>')
        self.message = W.HTML()
        b = lambda text, tip="", cls="": self._button(text, tip, cls)   # noqa: E731
        self.step_buttons, self.shared_buttons, self.run_buttons = [], [], []
        boxes = []
        for i, a in enumerate(w.actors):
            st = b("Step", f"{a.name} performs its next operation", f"s2pt-step-{i}")
            sh = b("to shared", f"run {a.name} to its next step another CPU can see or race with",
                   f"s2pt-shared-{i}")
            ru = b("until blocked", f"run {a.name} until it blocks, finishes or yields to "
                                    f"another CPU (cpu_relax)", f"s2pt-run-{i}")
            st.on_click(lambda _b, i=i: self.step(i))
            sh.on_click(lambda _b, i=i: self.step_to_shared(i))
            ru.on_click(lambda _b, i=i: self.run_until_blocked(i))
            st.button_style = "primary"
            self.step_buttons.append(st)
            self.shared_buttons.append(sh)
            self.run_buttons.append(ru)
            boxes.append(W.HBox([W.HTML(f"<b>{_esc(a.name)}</b>&nbsp;"), st, sh, ru],
                                layout=W.Layout(flex_flow="row wrap", align_items="center",
                                                margin="0 12px 0 0")))
        self.cpu_box = W.Box(boxes, layout=W.Layout(flex_flow="row wrap", width="100%"))
        self.undo_button = b("Undo", "back one step", "s2pt-undo")
        self.reset_button = b("Reset", "back to the start", "s2pt-reset")
        self.undo_button.on_click(lambda _b: self.undo())
        self.reset_button.on_click(lambda _b: self.reset())
        self.schedule_box = W.Text(placeholder="schedule, e.g. 1*5 0", continuous_update=False,
                                   layout=W.Layout(width="16em"))
        self.load_button = b("Load", "load the schedule and go back to its start", "s2pt-load")
        self.load_button.on_click(lambda _b: self.load(self.schedule_box.value))
        self.search_button = b("Shortest counterexample",
                               "search every interleaving (breadth first) and load the shortest "
                               "schedule that breaks a rule", "s2pt-search")
        self.search_button.on_click(lambda _b: self.load_shortest(wait=False))
        self.cancel_button = b("Cancel", "stop the search", "s2pt-cancel")
        self.cancel_button.on_click(lambda _b: self.cancel())
        self.cancel_button.layout.display = "none"
        self.progress = W.IntProgress(0, 0, max_states, layout=W.Layout(width="12em",
                                                                         display="none"))
        self.progress_text = W.HTML()
        self.export_path = W.Text(placeholder=f"{EXPORT_DIR}/{name}-{sch}.html",
                                  description="to", continuous_update=False,
                                  layout=W.Layout(width="22em"),
                                  style={"description_width": "initial"})
        self.export_button = b("Export", "the schedule, the race diagram, and the run as an "
                                         "HTML trace file (written where the box says)",
                               "s2pt-export")
        self.export_button.on_click(lambda _b: self.export(self.export_path.value or None))
        self.export_out = W.Textarea(layout=W.Layout(width="100%", height="14em",
                                                     display="none"))
        row = lambda kids: W.Box(kids, layout=W.Layout(flex_flow="row wrap",   # noqa: E731
                                                       align_items="center"))
        self.view = TraceView(on_hello=self._repack)
        self._start([])
        super().__init__([self.title,
                          row([self.undo_button, self.reset_button, self.schedule_box,
                               self.load_button, self.search_button, self.cancel_button,
                               self.progress, self.progress_text]),
                          row([self.export_path, self.export_button]),
                          self.message, self.cpu_box, self.view, self.export_out],
                         layout=W.Layout(width="100%"))
        self.add_class("s2pt-interleave")
        self.view.observe(lambda ch: self._moved(), "step")
        if start:
            for c in start:
                self.rec.step(c)
            self._show_new(0)
            self._repack()        # not displayed yet: a splice would reach no view
        self.redraw()

    @staticmethod
    def _button(text, tip, cls):
        bt = W.Button(description=text, tooltip=tip, layout=W.Layout(width="auto"))
        if cls:
            bt.add_class(cls)
        return bt

    # -- state ------------------------------------------------------------------------
    # ``frames`` holds the steps of ``run`` (a CPU per step); ``rec`` is a
    # World stepped along ``run`` as far as the step the panels show.

    @property
    def world(self):
        return self.rec.world

    @property
    def schedule(self) -> list:
        """The CPU of every step taken so far."""
        return list(self.rec.schedule)

    def schedule_text(self) -> str:
        from .sim.search import format_schedule
        return format_schedule(self.rec.schedule)

    def _say(self, text: str, ok: bool = False) -> bool:
        self.message.value = _msg(text, ok) if text else ""
        return ok

    def _start(self, run: list, frames=None):
        """Show ``frames``, the steps of ``run`` (default: a fresh run's
        start), from step 0."""
        if frames is None:
            rec = Recorder(self.template.again(record=True))
            frames = Frames(rec.world)
            frames.snap(rec)
            frames.set_timeline(rec)
        self.frames, self.run = frames, list(run)
        self.rec = Recorder(self.template.again(record=True))
        self.view.step = 0
        self._repack()

    def _repack(self):
        """Send the whole run the panels hold as the blob."""
        self._sent = len(self.frames.pool)
        self.view.load(page_data_pack(self.frames.data()))

    def _sync(self):
        """Bring ``rec`` to the step the panels show (the browser may have
        moved them: Prev, Next, Play)."""
        k = self.view.step
        if k != len(self.rec.schedule) or self.rec.schedule != self.run[:k]:
            self.rec = Recorder.replay(self.template, self.run[:k])

    def _moved(self):
        self._sync()
        k = self.view.step
        if k < len(self.frames.steps) and self.frames.fill_tree(k, self.rec):
            self.view.fill(k, self.frames.steps[k][2], self.frames.pool[self._sent:])
            self._sent = len(self.frames.pool)
        self.redraw()

    def _show_new(self, k: int):
        """``rec`` has taken the steps from k on: show the last.  Along the
        run the panels hold, that is a move; where the run goes another
        way, its steps replace the rest of the panels' run."""
        have = len(self.rec.schedule)
        if self.run[k:have] != self.rec.schedule[k:]:
            self.frames.truncate(k + 1)
            self.run[k:] = self.rec.schedule[k:]
            self._snap_from(k)
            self.frames.set_timeline(self.rec)
            self.view.splice(self.frames.since(k + 1, self._sent))
            self._sent = len(self.frames.pool)
        self.view.step = have

    def _snap_from(self, k: int):
        """Snap steps k+1.. of ``rec``'s run by replaying them (each step's
        panels are those of the World after it)."""
        have = len(self.rec.schedule)
        if have == k + 1:
            self.frames.snap(self.rec, self.world.events[-1])
            return
        rec = Recorder.replay(self.template, self.rec.schedule[:k])
        for c in self.rec.schedule[k:have - 1]:
            ev = rec.step(c)
            self.frames.snap(rec, ev, lazy=True)
        self.frames.snap(self.rec, self.world.events[-1])    # the one shown: drawn now

    # -- stepping -----------------------------------------------------------------------
    def _can(self, i) -> str | None:
        w = self.world
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < w.n:
            return f"cpu={i!r}: this scenario's actors are 0..{w.n - 1}"
        if w.outcome is not None:
            return f"the run is over ({w.outcome}): Undo or Reset to go on"
        why = w.blocked(i)
        if why is not None:
            return f"{w.actors[i].name} cannot run: {why}"
        return None

    def step(self, i: int) -> bool:
        """Actor ``i`` performs its next operation."""
        return self._run(i, 1, lambda ev: True)

    def _shared_step(self, ev) -> bool:
        from .ops import OPS
        k = OPS.get(ev.op[0])
        if k is None or ev.violations:
            return True
        if k.stores or k.sync or k.blocks or k.memory in ("ref", "alloc"):
            return True
        if k.addr or ev.op[0] == "hw_read":
            others = self.rec.touched.get(ev.op[1], set()) - {ev.cpu}
            page = ev.op[1] & ~(self.world.pgt.page_size - 1)
            if others or any(c != ev.cpu for p, who in self.rec.touched.items()
                             if p & ~(self.world.pgt.page_size - 1) == page for c in who):
                return True
        return False

    def step_to_shared(self, i: int, limit: int = 20000) -> bool:
        """Run actor ``i`` up to and including its next step that another
        CPU can see or race with (see the class docstring)."""
        return self._run(i, limit, self._shared_step)

    def run_until_blocked(self, i: int, limit: int = 20000) -> bool:
        """Run actor ``i`` until it blocks, finishes or the run ends, or
        until it yields with ``cpu_relax()`` while another CPU could run (a
        vCPU whose fault returned -EAGAIN waits for someone else to make
        progress: running it on alone would spin)."""
        return self._run(i, limit, lambda ev: ev.op[0] == "cpu_relax"
                         and len(self.world.enabled()) > 1)

    def _run(self, i: int, limit: int, stop_after) -> bool:
        """Step actor ``i`` while it can, at most ``limit`` times, stopping
        after a step for which ``stop_after(event)`` is true; then show it."""
        t = time.perf_counter()
        self._sync()
        why = self._can(i)
        if why:
            self.redraw()
            return self._say(why)
        self._say("")
        k = len(self.rec.schedule)
        n = 0
        while n < limit and self._can(i) is None:
            ev = self.rec.step(i)
            n += 1
            if stop_after(ev):
                break
        self._show_new(k)
        self.redraw()
        self.last_redraw_s = time.perf_counter() - t
        return True

    def undo(self) -> bool:
        """Back one step (the step stays in the panels: Next shows it again)."""
        self._sync()
        if not self.rec.schedule:
            return self._say("nothing to undo")
        self._say("")
        self.view.step = len(self.rec.schedule) - 1
        return True

    def reset(self) -> bool:
        self._say("")
        self.view.step = 0
        return True

    # -- schedules ------------------------------------------------------------------------
    def load(self, schedule) -> bool:
        """Load a schedule (text such as ``"1*5 0"`` or a list of CPU ids):
        its whole run -- the schedule, then the default order (no
        preemption, lowest CPU first) to the end -- goes to the panels,
        which go back to its start; Play (or :meth:`play_to`) walks along it."""
        from .sim.search import format_schedule, parse_schedule
        try:
            sched = parse_schedule(schedule)
            w = self.template.again(record=False)
            w.run(sched)
        except S2ptError as e:
            return self._say(f"schedule {schedule!r}: {e}")
        self._say(f"loading {format_schedule(sched) or '(the default order)'}: "
                  f"{w.nsteps} steps ...", True)
        rec, frames = record(self.template, sched, lazy=True)
        self.loaded = list(rec.schedule)
        self._start(self.loaded, frames)
        self.schedule_box.value = format_schedule(sched)
        self._say(f"loaded {format_schedule(sched) or '(the default order)'}: "
                  f"{len(self.loaded)} steps to the end of the run; press Play", True)
        self.redraw()
        return True

    def play_to(self, k: int) -> bool:
        """Go to step ``k`` of the loaded schedule (what Play and the slider do)."""
        if not self.loaded:
            return self._say("load a schedule first (or the shortest counterexample)")
        if self.run != self.loaded:
            self._start(self.loaded, record(self.template, self.loaded, lazy=True)[1])
        self.view.step = max(0, min(int(k), len(self.loaded)))
        return True

    def load_shortest(self, kind: str | None = None, wait: bool = True) -> bool:
        """Run the exhaustive search (s2pt.explore) and load the shortest
        counterexample (of ``kind``, or the shortest of all kinds found).
        ``wait=False`` (the button) searches in a background thread with a
        progress bar and a Cancel button."""
        if self._thread is not None and self._thread.is_alive():
            return self._say("a search is already running")
        self._cancel = False
        if wait:
            return self._search(kind)
        import threading
        self._thread = threading.Thread(target=self._search, args=(kind,), daemon=True)
        self._thread.start()
        return True

    def cancel(self) -> bool:
        self._cancel = True
        return True

    def _search(self, kind=None) -> bool:
        from .sim.search import search
        self.progress.layout.display = ""
        self.cancel_button.layout.display = ""
        self.search_button.disabled = True
        self.progress.value = 0
        t0 = time.perf_counter()

        def progress(states, depth, frontier):
            self.progress.value = min(states, self.max_states)
            self.progress_text.value = (f"{states:,} states, depth {depth}, "
                                        f"{time.perf_counter() - t0:.1f} s")
        try:
            r = search(self.template.again(record=False), max_states=self.max_states,
                       progress=progress, cancel=lambda: self._cancel)
        finally:
            self.progress.layout.display = "none"
            self.cancel_button.layout.display = "none"
            self.search_button.disabled = False
        self.found = r
        what = f"{r.states:,} states, {r.seconds:.1f} s"
        self.progress_text.value = what + ("" if r.complete else " (not complete)")
        if self._cancel and not r.found:
            return self._say(f"search cancelled after {what}")
        if not r.found:
            if not r.complete:
                return self._say(f"no violation found so far ({what}, NOT complete)", True)
            if r.race_arose is False:
                return self._say(f"no violation in any interleaving, and {r.verdict}: "
                                 f"{r.window['reason']} ({what})", True)
            race = "; the race arose" if r.race_arose else ""
            return self._say(f"safe: no violation in any interleaving{race} ({what})", True)
        if kind is not None and kind not in r.found:
            return self._say(f"kind={kind!r} not found; found: {', '.join(sorted(r.found))}")
        f = r.found[kind] if kind else min(r.found.values(), key=lambda f: len(f.schedule))
        ok = self.load(f.schedule)
        self._say(f"shortest {f.kind}: {f.schedule_text or '(the default order)'} "
                  f"({what}); press Play or step it yourself", ok)
        return ok

    # -- export -------------------------------------------------------------------------
    def export(self, path=None) -> dict:
        """The schedule string and the race diagram (shown in a text box,
        ready to paste into an email), and the HTML trace written to
        ``path`` (default ``s2pt-traces/<scenario>-<scheme>.html``, a folder
        with a .gitignore of its own: git leaves it out)."""
        from pathlib import Path
        from .explorer import replay_command
        from .htmltrace import verdict, write_html
        from .sim.report import WIDTH
        self._sync()
        w = self.world
        name = getattr(w.scenario, "name", "run")
        sch = getattr(w.scheme, "name", "scheme")
        if path is None:
            folder = Path(EXPORT_DIR)
            folder.mkdir(exist_ok=True)
            ignore = folder / ".gitignore"
            if not ignore.exists():
                ignore.write_text("# s2pt's exported traces: git leaves this folder out\n*\n")
            path = folder / f"{name}-{sch}.html"
        path = Path(path)
        self._say(f"writing {path} ...", True)
        size = write_html(w, path)
        sched = self.schedule_text()
        cmd = replay_command(w.scenario, w.scheme, sched, w.bugs, width=WIDTH)
        import textwrap
        text = (f"{cmd}\n\n{textwrap.fill(verdict(w), WIDTH, break_on_hyphens=False)}\n\n"
                f"{w.diagram()}\n")
        self.export_out.value = text
        self.export_out.layout.display = ""
        self._say(f"wrote {path.resolve()} ({size:,} bytes); the schedule and the race "
                  f"diagram are below", True)
        return {"schedule": sched, "diagram": w.diagram(), "text": text, "path": str(path),
                "bytes": size}

    # -- drawing -------------------------------------------------------------------------
    def redraw(self) -> None:
        """Bring the controls up to date with the World (the panels draw
        themselves from the step data)."""
        w = self.world
        for i in range(w.n):
            why = self._can(i)
            off = why is not None
            for bt in (self.step_buttons[i], self.shared_buttons[i], self.run_buttons[i]):
                bt.disabled = off               # traitlets send nothing when unchanged
            self.step_buttons[i].tooltip = why or f"{w.actors[i].name} performs its next operation"
        self.undo_button.disabled = not self.rec.schedule

    @property
    def shown(self) -> dict:
        """The pieces of the step the panels show, from the step data:
        ``banner`` ("class|sentence"), ``tree``, and ``event`` (the line
        saying what the step did; its pieces, joined)."""
        f = self.frames
        s = f.steps[min(self.view.step, len(f.steps) - 1)]
        e = s[3]
        event = f.pool[e] if isinstance(e, int) else \
            " ".join([f.names[e[0]]] + [f.pool[j] for j in e[1:]])
        return {"banner": f.pool[s[4]], "tree": f.pool[s[2]], "event": event}

    def _repr_mimebundle_(self, **kw):
        bundle = super()._repr_mimebundle_(**kw)
        text = self.world.diagram() + "\n\n" + self.world.status()
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        if isinstance(data, dict):
            data["text/plain"] = text
        return bundle

    def __repr__(self):
        w = self.world
        return (f"Interleave({getattr(w.scenario, 'name', '?')}, "
                f"{getattr(w.scheme, 'name', '?')}, {len(self.rec.schedule)} steps)")


# ---------------------------------------------------------------------------
# Drill
# ---------------------------------------------------------------------------

class Drill(W.VBox):
    """A seeded translation drill that checks your answers, in a cell.

    The widget form of ``python -m s2pt drill --seed N --check``: the
    problem (registers, table dump, accesses) from :class:`s2pt.drill.Drill`,
    one box per access for your answer (a PA such as ``0x800001234``, or a
    fault as ``translation 3``), **Check** marks each filled-in answer right
    or wrong (a wrong one with the right answer, the rule and the worked
    walk), **Show the walks** reveals them all, **New drill** loads the seed
    in the seed box.  Every verdict comes from ``Drill.check_one``.

    Drive it without a browser: ``answer(i, text)``, ``check()``,
    ``solve()``, ``load(seed)``; ``html`` is what it shows under the boxes.
    """

    def __init__(self, seed: int = 0, n: int = 5, ipa_bits: int = 36, granule: int = 4096):
        from .drill import Drill as _Drill
        self._make = lambda s: _Drill(seed=s, n=n, ipa_bits=ipa_bits, granule=granule)
        self.drill = self._make(seed)             # checks every parameter first
        self.seed_box = W.Text(value=str(seed), description="seed", continuous_update=False,
                               layout=W.Layout(width="16em"))
        self.new_button = W.Button(description="New drill")
        self.check_button = W.Button(description="Check", button_style="primary")
        self.solve_button = W.Button(description="Show the walks")
        self.problem = W.HTML()
        self.boxes: list = []
        self.box_area = W.VBox()
        self.out = W.HTML()
        self.verdicts: list = []
        self.new_button.on_click(lambda _b: self.load(self.seed_box.value))
        self.check_button.on_click(lambda _b: self.check())
        self.solve_button.on_click(lambda _b: self.solve())
        super().__init__([W.HBox([self.seed_box, self.new_button]), self.problem, self.box_area,
                          W.HBox([self.check_button, self.solve_button]), self.out])
        self.add_class("s2pt-drill")
        self._show()

    def _show(self) -> None:
        d = self.drill
        self.problem.value = f"<pre style='font-size: 12px'>{_esc(d.problem())}</pre>"
        self.boxes = [W.Text(placeholder="0x... or 'translation 3'",
                             description=f"Q{k}", layout=W.Layout(width="30em"))
                      for k in range(1, d.n + 1)]
        self.box_area.children = self.boxes
        self.verdicts = []
        self.out.value = ""

    def load(self, seed) -> bool:
        """A new drill from ``seed`` (an int, or text); False with a message if it is bad."""
        try:
            value = seed
            if isinstance(seed, str):
                text = seed.strip().replace("_", "")
                if not re.fullmatch(r"\d+", text):
                    raise S2ptError(f"seed {seed!r}: type a whole number from 0 to 2**64 - 1, "
                                    f"such as 3 (the same seed gives the same drill)")
                value = int(text)
            self.drill = self._make(value)
        except S2ptError as e:
            self.out.value = _msg(str(e), False)
            return False
        self.seed_box.value = str(value)        # an equal value sends nothing
        self._show()
        return True

    def answer(self, number: int, text: str) -> None:
        """Type ``text`` into the box of question ``number`` (1-based)."""
        self.boxes[number - 1].value = text

    def check(self) -> list:
        """Mark every filled-in answer; returns the verdicts (None for a blank box)."""
        lines, verdicts = [], []
        for k, box in enumerate(self.boxes, 1):
            text = box.value.strip()
            if not text:
                verdicts.append(None)
                lines.append((f"Q{k}: no answer yet", None))
                continue
            try:
                v = self.drill.check_one(k, text)
            except S2ptError as e:
                verdicts.append(None)
                lines.append((f"Q{k}: {e}", False))
                continue
            verdicts.append(v)
            lines.append(("\n".join(self.drill.verdict_lines(v)), v.right))
        self.verdicts = verdicts
        good = sum(1 for v in verdicts if v is not None and v.right)
        body = "".join(_msg(t, ok) if ok is not None else f"<div>{_esc(t)}</div>"
                       for t, ok in lines)
        self.out.value = body + f"<p><b>Score: {good}/{len(verdicts)} right.</b></p>"
        return verdicts

    def solve(self) -> None:
        """Show every worked walk (OSTEP's -c)."""
        self.out.value = f"<pre style='font-size: 12px'>{_esc(self.drill.solution())}</pre>"

    @property
    def html(self) -> str:
        return self.out.value

    def __repr__(self):
        return f"Drill widget: {self.drill!r}"
