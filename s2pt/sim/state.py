"""The one machine state: every object a CPU step can read or write.

The explorer prunes a state it has seen before, so "the state" must hold
everything that can change what happens next.  :class:`MachineState` is the
one registry of it, built once per World from what the scenario set up:

* the table's memory: every table page (each field of ``struct page`` the
  model keeps, :data:`PAGE_STATE`, and the descriptors), the allocator's
  free list, the memcaches;
* the machine: locks, RCU (readers, grace periods, queued callbacks), the
  MMU walks in flight (:class:`~s2pt.sim.sync.SimMachine`);
* every observer hooked into the machine (a vCPU's TLB, casemate's
  break-before-make automaton, pKVM's isolation checker);
* every object the scenario shares with its CPUs (``Setup.share``): the VM
  and its memslots with their dirty bitmaps, the pKVM host, a scenario's
  context object.

Each is :class:`~s2pt.snapshot.Stateful` (its ``sim_state()`` is part of
the fingerprint), :class:`~s2pt.snapshot.Frozen` (it never changes during
a run) or :class:`~s2pt.snapshot.Stateless`; fields that are neither state
nor fixed (counters, logs) are listed in the class's ``sim_ignore``.  An
object of any other kind that a scenario shares, or that a CPU can reach
from its local variables when the World is built, is refused with an
:class:`~s2pt.S2ptError` naming the object, its type and the rule.  Nothing
is fingerprinted by ``id()``: a registered object is fingerprinted by its
name (its state lives in the registry), a CPU's own values by value.

In checking mode the search asks the registry, after every step, whether
every promise held (:meth:`MachineState.audit`): the incremental state equals
a full rebuild, every part's fields are a function of the state, frozen
parts did not change; and it recomputes each step with the ignored fields
perturbed (:meth:`MachineState.perturb_ignored`).
"""

from __future__ import annotations

import enum
import functools
import types
from collections import deque

import numpy as np

from ..errors import S2ptError
from ..memory import MemCache, Page
from ..snapshot import Frozen, Stateful, Stateless, audit_fields, owner_of, perturb

__all__ = ["MachineState", "PAGE_STATE", "observer_parts", "check_part", "RULE", "NODE_BITS",
           "NODE_MASK"]

#: Bits of a CPU position's id (a node of s2pt.sim.search) in the integer
#: keys of the search's memos and packed states (``machine id << NODE_BITS
#: | node id``): 16 M positions per CPU, far beyond what fits in memory.
NODE_BITS = 24
NODE_MASK = (1 << NODE_BITS) - 1

#: The fields of a table page (``s2pt.memory.Page``) that are state: its
#: two counts, whether it is free, set_page_private()'s value, whether it
#: is a page table now (its page-table descriptor is live) and its
#: descriptors.  Every other field of Page must be in ``Page.sim_ignore``
#: (views' bookkeeping) or fixed (its address): checked when a registry is
#: built, so a field added to Page without a decision is refused.
PAGE_STATE = ("refcount", "freed", "table", "walkers", "private", "ptdesc")
PAGE_FIXED = ("pfn", "pa")

#: The rule every refusal quotes.
RULE = ("every object a CPU can reach must be part of the explorer's machine state: pass it "
        "to Setup.share() as an s2pt.snapshot.Stateful (sim_state/sim_restore capture every "
        "field that can change), an s2pt.snapshot.Frozen (it never changes during a run) or "
        "an s2pt.snapshot.Stateless (nothing it keeps changes what happens next)")

_ATOMS = (int, str, bool, float, type(None), bytes, complex, range, enum.Enum)
_CALLABLES = (types.FunctionType, types.BuiltinFunctionType, type, types.CodeType,
              types.MethodDescriptorType, types.WrapperDescriptorType,
              types.MethodWrapperType, types.BuiltinMethodType, staticmethod, classmethod)


def check_part(obj, what: str = "Setup.share()") -> None:
    """Refuse ``obj`` as a shared part unless it declares its kind."""
    if isinstance(obj, (Stateful, Frozen, Stateless, MemCache)):
        return
    raise S2ptError(f"{what}: {_name(obj)} of type {type(obj).__qualname__} is not part of the "
                    f"explorer's machine state; {RULE}")


def observer_parts(machine) -> list:
    """Every object hooked into ``machine`` (observers, TLBI listeners, free
    hooks, registered operations), each once, in registration order, less
    the Stateless ones.  Each must be :class:`~s2pt.snapshot.Stateful`:
    the explorer refuses anything else, because an observer whose state it
    cannot see makes pruning unsound."""
    hooks = (list(machine.pre_observers) + list(machine.observers)
             + list(machine.mmu.listeners if machine.mmu is not None else ())
             + list(machine.mem.free_hooks) + list(machine.extensions.values()))
    out, seen = [], set()
    for h in hooks:
        o = owner_of(h)
        if id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, Stateless):
            continue
        if not isinstance(o, Stateful):
            raise S2ptError(
                f"{o!r} observes the machine but does not follow the snapshot protocol: "
                f"make it an s2pt.snapshot.Stateful (sim_state/sim_restore) or, if nothing "
                f"it keeps can change what happens next, an s2pt.snapshot.Stateless")
        out.append(o)
    return out


class MachineState:
    """The registry of one World's machine (see the module docstring).

    ``parts``: the Stateful parts besides memory and the machine, in a
    fixed order (observers, then shared objects); ``frozen``: the Frozen
    ones; ``tags``: id -> name of every registered object, for
    fingerprinting a CPU's locals (:func:`s2pt.sim.world.freeze`).
    """

    def __init__(self, world):
        setup = world.setup
        pgt = self.pgt = world.pgt
        self.mm = mm = pgt.mm
        self.machine = m = pgt.machine
        self.mmu = pgt.mmu
        self.memcaches = list(setup.memcaches)
        self._check_page_fields()
        observers = observer_parts(m)
        self.parts: list = list(observers)
        self.frozen: list = [pgt, pgt.mmu, pgt.mm_ops]
        # The scheme (a Frozen MmuLock: the VM's locking) is in every
        # scenario's world, shared or not: fingerprinted by name, not
        # frozen by value at each position that holds it.
        if isinstance(setup.scheme, Frozen) and setup.scheme not in self.frozen:
            self.frozen.append(setup.scheme)
        seen = {id(o) for o in self.parts + self.frozen}
        seen |= {id(mm), id(m)} | {id(mc) for mc in self.memcaches}
        for o in setup.shared:
            if id(o) in seen:
                continue
            seen.add(id(o))
            if isinstance(o, Stateful):
                self.parts.append(o)
            elif isinstance(o, Frozen):
                self.frozen.append(o)
            elif isinstance(o, MemCache):
                raise S2ptError(f"Setup.share(): {_name(o)} is a memcache; register it with "
                                f"Setup.memcache() so that its pages are tracked")
        tags = {}
        tags[id(world)] = "<world>"
        tags[id(m)] = "<machine>"
        tags[id(mm)] = "<memory>"
        tags[id(pgt)] = f"<{type(pgt).__name__}>"
        for k, mc in enumerate(self.memcaches):
            tags[id(mc)] = f"<MemCache#{k}>"
        for k, o in enumerate(self.parts + self.frozen):
            tags.setdefault(id(o), f"<{type(o).__name__}#{k}>")
        for o in setup.shared:
            if isinstance(o, Stateless):
                tags.setdefault(id(o), f"<{type(o).__name__}>")
        for pfn, page in mm.pages.items():
            tags[id(page)] = f"<page {pfn << mm.page_shift:#x}>"
        self.tags = tags
        self.npages = len(mm.pages)
        self.next_pfn = mm._next_pfn
        #: Every registered object whose fields the audit checks: the table
        #: pages one by one (a page field missing from PAGE_STATE is caught
        #: there), then everything else.
        audited, ids = [], set()
        for o in (list(mm.pages.values()) + [mm, m] + self.memcaches + self.parts
                  + self.frozen):
            if id(o) not in ids:
                ids.add(id(o))
                audited.append(o)
        self.audited = audited
        frozen_ids = {id(o) for o in self.frozen}
        #: The audited objects that may change, each checked against the
        #: last visit of the same machine state, step by step.  Not the
        #: table pages: every field of a page is state (PAGE_STATE, which
        #: the machine state holds whole, and which the audit's full
        #: rebuild compares at every step), fixed (PAGE_FIXED) or ignored.
        self.stateful = [o for o in audited
                         if id(o) not in frozen_ids and not isinstance(o, Page)]
        #: The Frozen ones, each checked against the World as built, as are
        #: the fixed fields of the rest (``sim_fixed``, a page's PAGE_FIXED).
        self.frozen_audited = [o for o in audited if id(o) in frozen_ids]
        self.fixed_pages = list(mm.pages.values())
        self._initial = None
        self._by_state: dict = {}

    # -- what a registry refuses ----------------------------------------------
    def _check_page_fields(self):
        declared = set(PAGE_STATE) | set(PAGE_FIXED) | set(Page.sim_ignore)
        slots = set(Page.__slots__)
        if slots != declared:
            raise S2ptError(
                f"s2pt.memory.Page has fields {sorted(slots - declared)} that are neither "
                f"state (s2pt.sim.state.PAGE_STATE), fixed nor in Page.sim_ignore, or "
                f"declares {sorted(declared - slots)} that it does not have: decide what each "
                f"field is before the explorer can fingerprint a page")

    def check_reachable(self, actors, gens) -> None:
        """Refuse, before any search, an object that a CPU can reach from
        its arguments, its program's closure or its locals at its first
        step, and that is neither registered, nor declared Frozen or
        Stateless, nor a value (numbers, strings, tuples of values,
        functions)."""
        for i, a in enumerate(actors):
            roots = [(f"argument {k} of {getattr(a.program, '__name__', a.program)}()", v)
                     for k, v in enumerate(a.args)]
            prog = a.program
            while isinstance(prog, functools.partial):
                roots += [(f"a partial argument of {a.name}'s program", v)
                          for v in list(prog.args) + list(prog.keywords.values())]
                prog = prog.func
            if isinstance(prog, types.MethodType):
                roots.append((f"the object of {a.name}'s program", prog.__self__))
                prog = prog.__func__
            for cell in getattr(prog, "__closure__", None) or ():
                try:
                    roots.append((f"a variable captured by {prog.__name__}()", cell.cell_contents))
                except ValueError:
                    pass
            g = gens[i]
            while g is not None and getattr(g, "gi_frame", None) is not None:
                f = g.gi_frame
                roots += [(f"local {n!r} of {f.f_code.co_name}()", v) for n, v in f.f_locals.items()
                          if not isinstance(v, types.GeneratorType)]
                g = g.gi_yieldfrom if isinstance(g, types.GeneratorType) else None
            seen: set = set()
            for where, v in roots:
                self._scan(v, f"CPU {i} ({a.name}), {where}", seen, 0)

    def _scan(self, v, where, seen, depth):
        if isinstance(v, _ATOMS) or isinstance(v, _CALLABLES) or id(v) in self.tags:
            return
        if id(v) in seen or depth > 12:
            return
        seen.add(id(v))
        if isinstance(v, np.generic):
            return
        if isinstance(v, (tuple, frozenset)):
            for x in v:
                self._scan(x, where, seen, depth + 1)
            return
        if isinstance(v, (list, dict, set, deque, bytearray, np.ndarray)):
            raise S2ptError(
                f"{where}: a mutable {type(v).__name__} ({_short(v)}) is reachable by the CPU "
                f"but is not part of the explorer's machine state; pass immutable values "
                f"(tuples, frozensets) or share an object that owns it; {RULE}")
        if isinstance(v, types.MethodType):
            self._scan(v.__self__, where, seen, depth + 1)
            return
        if isinstance(v, functools.partial):
            for x in (v.func, *v.args, *v.keywords.values()):
                self._scan(x, where, seen, depth + 1)
            return
        if isinstance(v, Stateless):
            return
        if isinstance(v, Frozen):
            for x in audit_fields(v).values():
                self._scan(x, where, seen, depth + 1)
            return
        raise S2ptError(f"{where}: {_name(v)} of type {type(v).__qualname__} is not part of the "
                        f"explorer's machine state; {RULE}")

    # -- audits (checking mode) -------------------------------------------------
    def fields(self, obj, fixed: bool = True):
        """The audited fields of one registered object, as a hashable value
        (without its ``sim_fixed`` ones if ``fixed`` is false)."""
        return audit_value(audit_fields(obj, fixed), self.tags, top=obj)

    def _as_built(self) -> dict:
        """id -> the audited fields of every Frozen object, the ``sim_fixed``
        fields of every other, and each table page's PAGE_FIXED: as they are
        now (the first call: as the World was built)."""
        out = {id(o): self.fields(o) for o in self.frozen_audited}
        for p in self.fixed_pages:
            out[id(p)] = tuple(getattr(p, f) for f in PAGE_FIXED)
        for o in self.stateful:
            names = getattr(o, "sim_fixed", ())
            if names:
                out[id(o)] = audit_value({n: getattr(o, n) for n in names}, self.tags, top=o)
        return out

    def audit(self, key, where: str, frozen: bool = True) -> None:
        """After a step that reached state ``key`` (the search's interned
        machine id): every registered object's fields must be what they
        were the last time any step reached ``key`` (but a table page's,
        which the full rebuild compares), and (unless ``frozen`` is false)
        a Frozen one's what they were when the World was built."""
        if self._initial is None:
            self._initial = self._as_built()
        if frozen:
            self.audit_frozen(where)
        by_state = self._by_state
        for k, o in enumerate(self.stateful):
            got = self.fields(o, False)
            want = by_state.setdefault((k, key), got)
            if want != got:
                raise S2ptError(
                    f"{where}: two steps reached the same machine state with different "
                    f"{type(o).__name__} fields ({_diff(want, got)}): a field the state does "
                    f"not capture changed, and pruning on it would be unsound; add it to the "
                    f"object's sim_state (or, if no step ever depends on it, its sim_ignore)")

    def audit_frozen(self, where: str) -> None:
        """Every Frozen object's fields, and every other's ``sim_fixed``
        ones, are what they were when the World was built."""
        if self._initial is None:
            self._initial = self._as_built()
        now = self._as_built()
        if now == self._initial:
            return
        frozen = {id(o) for o in self.frozen_audited}
        for o in self.frozen_audited + self.fixed_pages + self.stateful:
            init, got = self._initial.get(id(o)), now.get(id(o))
            if init == got:
                continue
            if isinstance(o, Page):
                raise S2ptError(f"{where}: table page {init[1]:#x} changed its fixed fields "
                                f"{PAGE_FIXED}")
            if id(o) in frozen:
                raise S2ptError(
                    f"{where}: {_name(o)} is declared Frozen (it never changes during a "
                    f"run) but {_diff(init, got)} changed; make it Stateful or list the "
                    f"field in its sim_ignore")
            raise S2ptError(
                f"{where}: {_name(o)} declares {_diff(init, got)} fixed "
                f"(sim_fixed: set when the World is built, never changed by a step) "
                f"but a step changed it; make it state (its sim_state) instead")

    def ignored(self) -> list:
        """(object, field) for every ignored field of every registered object
        and of every table page."""
        out = []
        for o in self.audited:
            for f in getattr(o, "sim_ignore", ()):
                if hasattr(o, f):
                    out.append((o, f))
        return out

    def perturb_ignored(self) -> list:
        """Shift every ignored number and count (s2pt.snapshot.perturb);
        return what they were, for :meth:`restore_ignored`."""
        saved = []
        for o, f in self.ignored():
            v = getattr(o, f)
            w = perturb(v)
            if w is not v:
                saved.append((o, f, v))
                setattr(o, f, w)
        return saved

    @staticmethod
    def restore_ignored(saved) -> None:
        for o, f, v in saved:
            setattr(o, f, v)


_PLAIN = frozenset({int, str, bool, float, type(None), bytes, complex, range,
                    types.FunctionType, types.BuiltinFunctionType, types.CodeType, type})


#: The audit value of an empty dict, list or tuple (as the branches below
#: would give it: a dict as an unordered collection).
_EMPTY = {dict: "dict", list: "list", tuple: "tuple"}


def audit_value(v, tags, depth: int = 0, top=None):
    """A hashable value of ``v`` for the audit: registered objects by name
    (except ``top``, the object being audited), arrays by their bytes,
    dicts and sets as unordered collections, other objects by their audited
    fields."""
    t = type(v)
    if t in _PLAIN:
        return v
    if (t is dict or t is list or t is tuple) and not v:
        return (_EMPTY[t],)                # an empty TLB level, an empty queue
    if v is not top:
        tag = tags.get(id(v))
        if tag is not None:
            return tag
    if depth > 10:
        return ("...",)
    d1 = depth + 1
    if t is dict or isinstance(v, dict):
        # Unordered: two equal dicts filled in another order are equal here
        # (an order that matters, such as a TLB's fill order, is part of
        # its owner's sim_state).
        # (A plain key or value is its own audit value: not calling for it
        # is what keeps the checking mode's audit of every step affordable.)
        plain = _PLAIN
        return ("dict", frozenset([(k if type(k) in plain else audit_value(k, tags, d1),
                                    x if type(x) in plain else audit_value(x, tags, d1))
                                   for k, x in v.items()]))
    if t is tuple or t is list or isinstance(v, (tuple, list, deque)):
        plain = _PLAIN
        return (t.__name__, *[x if type(x) in plain else audit_value(x, tags, d1) for x in v])
    if isinstance(v, (set, frozenset)):
        return ("set", frozenset(audit_value(x, tags, d1) for x in v))
    if t is np.ndarray:
        return ("ndarray", v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, _ATOMS) or isinstance(v, _CALLABLES):
        return v
    if isinstance(v, np.generic):
        return v.item()
    if t is types.MethodType:
        return ("method", audit_value(v.__self__, tags, d1), v.__func__)
    if isinstance(v, functools.partial):
        return ("partial", v.func, audit_value(v.args, tags, d1))
    if hasattr(v, "__dict__") or getattr(t, "__slots__", None) is not None:
        plain = _PLAIN
        return (t, *sorted([(k, x if type(x) in plain else audit_value(x, tags, d1))
                            for k, x in audit_fields(v).items()]))
    return ("?", t.__qualname__)


def _diff(a, b) -> str:
    """Which fields of two audited values differ (for a message)."""
    if (isinstance(a, tuple) and isinstance(b, tuple) and a[:1] == b[:1]
            and a and isinstance(a[0], type)):
        da, db = dict(a[1:]), dict(b[1:])
        keys = [k for k in sorted(set(da) | set(db), key=str) if da.get(k) != db.get(k)]
        return "field(s) " + ", ".join(map(str, keys))
    if (isinstance(a, tuple) and isinstance(b, tuple) and a[:1] == b[:1] == ("dict",)):
        da, db = dict(a[1]), dict(b[1])
        keys = [k for k in sorted(set(da) | set(db), key=str) if da.get(k) != db.get(k)]
        return "field(s) " + ", ".join(map(str, keys))
    return "its fields"


def _name(obj) -> str:
    r = repr(obj)
    return r if len(r) <= 80 else r[:77] + "..."


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."
