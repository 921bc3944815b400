"""Simulated CPUs running kernel paths one shared-memory step at a time.

A CPU is a generator function whose body reads like the kernel path it
models, and every ``yield`` is one operation on shared state (a descriptor
load or store, a refcount change, a lock, an RCU call, a TLBI).  A
:class:`World` holds one scenario's table, its CPUs and the machine that
performs their operations; :meth:`World.step` lets one CPU perform its next
operation and returns the :class:`Event`.  Schedulers (manual, random, PCT,
exhaustive) only choose which CPU steps next.

Besides the scenario's CPUs there is always an **RCU callback thread**
(``rcu_do_batch`` on the callback kthread), a daemon that invokes each
``call_rcu`` callback once its grace period has ended.  When every other CPU
has finished, the world performs ``rcu_barrier()`` (the callback thread
drains its queue) and then the end-of-run checks.
"""

from __future__ import annotations

import inspect
import types
from collections import deque
from itertools import compress
from dataclasses import dataclass, field

from ..errors import KernelBug, S2ptError
from ..invariants import reachable_tables
from ..memory import MemCache
from ..ops import ADDR, DISPLAY, SYNC, View, desc_text, kernel_path, loc_text, op_text
from .. import validate
from ..snapshot import Stateless, all_slots
from .liveness import live_after, overwritten
from .state import MachineState, check_part, observer_parts
from .sync import SimMachine, rcu_next_callback
from .violation import Violation

__all__ = ["Actor", "Setup", "Event", "World", "frames", "stack_names", "freeze", "stuck_kind"]


@dataclass
class Actor:
    """One schedulable CPU (or kernel thread, or MMU).

    ``pure``: the code between its yields reads and writes nothing shared
    (true of every walker in :mod:`s2pt.pgtable`); the explorer may then
    rebuild it by replaying its own results.  A hardware walker that fills a
    TLB between reads is not pure.

    ``sym``: actors with the same ``sym`` label run the same program on
    the same arguments but for their own vCPU (``vcpu``: a program argument
    and its locals named ``vcpu`` hold it) and their own ``owns`` (the
    parts of the machine that are theirs: a memcache, a TLB).  The explorer
    treats them as interchangeable (symmetry reduction, TLC's symmetry
    sets), and checks that they are.
    """
    name: str
    role: str
    program: object            # callable(*args) -> generator
    args: tuple = ()
    daemon: bool = False
    pure: bool = True
    vcpu: int | None = None
    sym: str | None = None
    owns: tuple = ()

    def start(self):
        return self.program(*self.args)


class Setup:
    """What a scenario builds: the table, the CPUs, and extra state.

    The table must have been built with the explorer's machine
    (``Stage2(..., machine=SimMachine)``), so that checkers attach to it as
    they are built.  ``shared`` lists the objects the CPU programs share
    (the VM, memslots, TLBs, a context object): each is part of the
    explorer's machine state (s2pt.sim.state), and freezes to its name, not
    a copy, when the explorer fingerprints a CPU's local variables.
    """

    def __init__(self, pgt, scheme, bugs=frozenset()):
        if not isinstance(pgt.machine, SimMachine):
            raise S2ptError("Setup: the scenario's table must be built with the explorer's "
                            "machine (Stage2(..., machine=SimMachine)), not "
                            f"{type(pgt.machine).__name__}")
        self.pgt = pgt
        self.scheme = scheme
        self.bugs = frozenset(bugs)
        self.actors: list[Actor] = []
        self.shared: list = []
        self.memcaches: list = []
        self.region: tuple | None = None       # (ipa, size) the lost-update oracle compares
        #: The object the scenario races on, for readers and widgets: a
        #: s2pt.kvm.VM or a s2pt.pkvm.Host.
        self.subject = None

    def cpu(self, name, role, program, *args, vcpu=None, pure=True, daemon=False, sym=None,
            owns=()):
        """Add a CPU running ``program(*args)``; see :class:`Actor` for the
        keywords (``sym``/``owns``: a symmetric CPU and its own parts)."""
        if sym is not None and (vcpu is None or not pure or daemon):
            raise S2ptError(f"cpu {name!r}: a symmetric CPU (sym={sym!r}) needs vcpu= (its "
                            f"vCPU index) and a pure program, and is not a daemon")
        self.actors.append(Actor(name, role, program, args, daemon, pure, vcpu, sym,
                                 tuple(owns)))
        return len(self.actors) - 1

    def memcache(self, pages: int, mc: MemCache | None = None):
        """A struct kvm_mmu_memory_cache topped up to ``pages`` before the
        run: ``mc`` (a cache the scenario's objects already hold, such as a
        vCPU's) or a new one.  The explorer tracks its contents."""
        if mc is None:
            mc = MemCache(self.pgt.mm)
        if mc.topup(pages):
            raise KernelBug("setup", "memcache top-up failed")
        if mc not in self.memcaches:
            self.memcaches.append(mc)
        return mc

    def share(self, *objs):
        """Objects the CPU programs share, each a part of the explorer's
        machine state: an :class:`~s2pt.snapshot.Stateful` (its state is
        fingerprinted and restored), a :class:`~s2pt.snapshot.Frozen` (it
        never changes during a run) or a :class:`~s2pt.snapshot.Stateless`.
        Anything else is refused with an S2ptError."""
        for o in objs:
            check_part(o)
        self.shared += [o for o in objs if all(o is not x for x in self.shared)]


#: Every object hooked into a machine, less the Stateless ones (see
#: s2pt.sim.state.observer_parts).
stateful_parts = observer_parts


@kernel_path("rcu_do_batch")
def rcu_callback_thread():
    """rcu_do_batch() on the RCU callback kthread: invoke each queued
    callback once its grace period has ended, oldest first."""
    while True:
        fn, args = yield rcu_next_callback()
        yield from fn(*args)


@dataclass(slots=True)
class Event:
    """One step: CPU ``cpu`` performed ``op`` and got ``result``.

    ``stack`` names the kernel functions on that CPU's stack, outermost
    first; ``violations`` are what the step broke, as ``(kind, message)``.
    A recorded step also keeps, for the race diagram
    (:mod:`s2pt.sim.report`): ``walkers``, the visitor callback of each
    page-table walk on the stack, outermost first (``stage2_map_walker``,
    ``stage2_free_walker``); ``calls``, a number per name in ``stack``
    that tells two calls of one function apart (each call gets its own);
    and ``before``, for an operation on a table entry or page,
    ``(page_count, freed, the entry's value, walker count)`` just before
    the step.
    """
    index: int
    cpu: int
    op: tuple
    result: object
    stack: tuple
    violations: list = field(default_factory=list)
    enabled: tuple = ()
    note: str = ""
    walkers: tuple = ()
    before: object = None
    calls: tuple = ()

    @property
    def function(self) -> str:
        return self.stack[-1] if self.stack else "?"


# ---------------------------------------------------------------------------
# Looking inside suspended generators
# ---------------------------------------------------------------------------

def _chain(gen):
    while gen is not None:
        f = gen.gi_frame
        if f is None:
            return
        yield gen, f
        gen = gen.gi_yieldfrom if isinstance(gen, types.GeneratorType) else None


def stack_names(gen) -> tuple:
    """The kernel function names on a suspended generator's ``yield from``
    chain, outermost first."""
    out = []
    names = _NAMES
    for _, f in _chain(gen):
        code = f.f_code
        e = names.get(id(code))
        if e is None or e[0] is not code:
            e = names[id(code)] = (code, DISPLAY.get(code, code.co_name))
        if e[1] is not None:
            out.append(e[1])
    return tuple(out)


#: id(code) -> (code, its name in a stack: DISPLAY's, else its own, None to
#: hide it).  Keyed by id, checked by identity: hashing a code object hashes
#: its bytecode and constants, and this runs at every step of a search.
_NAMES: dict = {}


def _walk_frames() -> dict:
    """code -> how to find the walker of a frame of the one walker's own
    functions (s2pt.pgtable): the local that holds the Walker, or its
    WalkData."""
    from .. import pgtable as pt
    return {pt.kvm_pgtable_walk.__code__: "walker",
            pt._kvm_pgtable_walk.__code__: "data",
            pt.__kvm_pgtable_walk.__code__: "data",
            pt.__kvm_pgtable_visit.__code__: "data"}


#: The walker's own frames (kvm_pgtable_walk ... __kvm_pgtable_visit).
WALK_FRAMES: dict = _walk_frames()


def visitor_name(cb) -> str:
    """The kernel name of a walker callback (a function or a bound method)."""
    fn = getattr(cb, "__func__", cb)
    code = getattr(fn, "__code__", None)
    name = DISPLAY.get(code) if code is not None else None
    return name or getattr(fn, "__name__", str(fn))


def _visitor_of(gen, how: str) -> str:
    loc = gen.gi_frame.f_locals
    walker = loc.get("walker") if how == "walker" else getattr(loc.get("data"), "walker", None)
    return visitor_name(walker.cb) if walker is not None else "?"


class StackCache:
    """:func:`stack_names` for one CPU, kept up to date incrementally.

    Between two steps only the tail of a CPU's ``yield from`` chain changes:
    generators that returned drop off the end, and ones newly delegated to
    join it.  A suspended generator's callers cannot change while it is
    alive (they are suspended in ``yield from`` it), so the cache pops the
    finished tail and extends from the last live generator, instead of
    walking the whole chain on every step (a widget steps on every click).
    """

    __slots__ = ("gens", "names", "out", "walks", "visitors", "serials", "calls", "count")

    def __init__(self):
        self.gens: list = []
        self.names: list = []
        self.out: tuple = ()
        self.walks: list = []         # per generator: the visitor of its walk, or None
        self.visitors: tuple = ()     # the visitor of each walk on the stack, outermost first
        self.serials: list = []       # per generator: the number of its call
        self.calls: tuple = ()        # the serials of the names in ``out``
        self.count = 0

    def names_of(self, root) -> tuple:
        gens, names, walks, serials = self.gens, self.names, self.walks, self.serials
        changed = False
        while gens and gens[-1].gi_frame is None:
            gens.pop()
            names.pop()
            walks.pop()
            serials.pop()
            changed = True
        if not gens:
            if root is None or root.gi_frame is None:
                self.out = ()
                self.visitors = ()
                self.calls = ()
                return ()
            gens.append(root)
            code = root.gi_frame.f_code
            names.append(DISPLAY.get(code, code.co_name))
            walks.append(None)
            self.count += 1
            serials.append(self.count)
            changed = True
        g = gens[-1]
        while True:
            nxt = g.gi_yieldfrom
            if type(nxt) is not types.GeneratorType or nxt.gi_frame is None:
                break
            gens.append(nxt)
            code = nxt.gi_frame.f_code
            names.append(DISPLAY.get(code, code.co_name))
            how = WALK_FRAMES.get(code)
            # A walk's first frame names its visitor; the frames below it
            # in the same walk are marked "" (same walk).
            walks.append(None if how is None else
                         "" if walks[-1] is not None else _visitor_of(nxt, how))
            self.count += 1
            serials.append(self.count)
            g = nxt
            changed = True
        if changed:
            # (names are None or non-empty; walks None, "" or a visitor)
            self.out = tuple(filter(None, names))
            self.visitors = tuple(filter(None, walks))
            self.calls = tuple(compress(serials, names))
        return self.out


def frames(gen, opaque: dict, vcpu=None, live: bool = True) -> tuple:
    """A suspended generator's position and locals, down its ``yield from``
    chain, as a hashable value: two generators with equal ``frames`` behave
    identically from here on, given the same results.  With ``vcpu`` (a
    symmetric CPU's own index, see :class:`Actor`), locals named ``vcpu``
    that hold it freeze to ``"<self>"``.  ``live``: only the locals the code
    may still read (s2pt.sim.liveness); False keeps every local."""
    out = []
    memo = {}             # id -> frozen value: the frames share their walker, data, ctx
    chain = [f for _, f in _chain(gen)]
    innermost = len(chain) - 1
    for n, f in enumerate(chain):
        loc = f.f_locals
        code, lasti = f.f_code, f.f_lasti
        # Only the live locals (s2pt.sim.liveness): a value the code never
        # reads again does not make a position different; nor does the
        # field the innermost frame's yield is about to overwrite.  Sorted
        # by name: f_locals lists names in the order they were first seen
        # bound, which depends on when the frame was first inspected.
        names = _live_names(code, lasti) if live else None
        dead = overwritten(code, lasti) if live and n == innermost else None
        items = []
        for k in (sorted(loc) if names is None else names):
            v = loc.get(k, _UNBOUND)
            t = type(v)
            if t is types.GeneratorType or v is _UNBOUND:
                continue
            if vcpu is not None and k == "vcpu" and v == vcpu:
                v = "<self>"
            elif dead is not None and k == dead[0]:
                v = _without(v, dead[1], opaque, memo)
            elif t not in _PLAIN:                # (what freeze() gives, without the call)
                v = freeze(v, opaque, 0, memo)
            items.append((k, v))
        out.append((code, lasti, tuple(items)))
    return tuple(out)


#: A local that is not bound at this point of the frame.
_UNBOUND = object()
#: (id(code), offset) -> (code, the names live_after() gives, sorted; None:
#: every local).
_LIVE_SORTED: dict = {}


def _live_names(code, lasti):
    key = (id(code), lasti)                  # (see _NAMES)
    e = _LIVE_SORTED.get(key)
    if e is None or e[0] is not code:
        names = live_after(code, lasti)
        e = _LIVE_SORTED[key] = (code, None if names is None else tuple(sorted(names)))
    return e[1]


def _without(v, attr: str, opaque: dict, memo: dict):
    """:func:`freeze` of ``v`` with its attribute ``attr`` frozen as dead
    (see :func:`s2pt.sim.liveness.overwritten`); not memoised, so no other
    reference to ``v`` loses the attribute."""
    how = _how(type(v), v)
    if how[0] != _SLOTS or attr not in how[1] or id(v) in opaque:
        return freeze(v, opaque, 0, memo)
    return (type(v),) + tuple("<dead>" if s == attr else freeze(getattr(v, s, None), opaque, 1, memo)
                              for s in how[1])


_ATOMS = (int, str, bool, float, type(None), bytes)
_PLAIN = frozenset(_ATOMS)

#: How freeze() takes a value apart, by its type (_how).
_ATOM, _SEQ, _DICT, _SET, _FN, _ITSELF, _METHOD, _NUMPY, _SLOTS, _OBJ = range(10)
_HOW: dict = {}


def _how(t, v) -> tuple:
    """(kind, the slots) of how :func:`freeze` takes a value ``v`` of type
    ``t`` apart, memoised on the type.  An object with ``__slots__`` and no
    ``__dict__`` is every slot of its class and of its bases
    (:func:`s2pt.snapshot.all_slots`: a subclass's ``__slots__`` names only
    its own, and HostMapData's would leave out Stage2MapData's)."""
    how = _HOW.get(t)
    if how is not None:
        return how
    slots = ()
    if issubclass(t, _ATOMS):
        kind = _ATOM
    elif issubclass(t, (tuple, list, deque)):
        kind = _SEQ
    elif issubclass(t, dict):
        kind = _DICT
    elif issubclass(t, (set, frozenset)):
        kind = _SET
    elif issubclass(t, types.FunctionType):
        kind = _FN
    elif issubclass(t, (types.BuiltinFunctionType, type, types.CodeType)):
        kind = _ITSELF
    elif issubclass(t, types.MethodType):
        kind = _METHOD
    elif hasattr(t, "dtype") and hasattr(t, "item"):
        kind = _NUMPY                    # a numpy scalar (a 0-d value) or array
    elif "__slots__" in vars(t) and not hasattr(v, "__dict__"):
        kind = _SLOTS
        slots = tuple(s for s in all_slots(t) if s != "__weakref__")
    else:
        kind = _OBJ
    how = _HOW[t] = (kind, slots)
    return how


def freeze(v, opaque: dict, depth: int = 0, memo: dict | None = None):
    """A hashable value-copy of ``v`` (objects with __slots__ become tuples;
    shared objects such as the page table become their name).  ``memo``
    (id -> frozen value) shares the work between references to one object
    while nothing changes it."""
    t = type(v)
    if t in _PLAIN:
        return v
    how = _HOW.get(t) or _how(t, v)
    if how[0] == _ATOM:
        return v                         # an int subclass, such as an IntFlag
    tag = opaque.get(id(v))
    if tag is not None:
        return tag
    if memo is not None:
        out = memo.get(id(v))
        if out is not None:
            return out
    out = _freeze(v, how, opaque, depth, memo)
    if memo is not None:
        memo[id(v)] = out
    return out


def _freeze(v, how, opaque, depth, memo):
    if depth > 8:
        raise RecursionError("freeze: structure too deep")
    d1 = depth + 1
    kind = how[0]
    if kind == _SLOTS:
        out = [type(v)]
        for s in how[1]:
            x = getattr(v, s, None)
            out.append(x if type(x) in _PLAIN else freeze(x, opaque, d1, memo))
        return tuple(out)
    if kind == _SEQ:
        return (type(v).__name__,) + tuple([x if type(x) in _PLAIN else freeze(x, opaque, d1, memo)
                                            for x in v])
    if kind == _DICT:
        return ("dict",) + tuple([(freeze(k, opaque, d1, memo), freeze(x, opaque, d1, memo))
                                  for k, x in v.items()])
    if kind == _SET:
        return ("set", frozenset([freeze(x, opaque, d1, memo) for x in v]))
    if kind == _FN:
        # By what it is, not which object it is: a function defined inside
        # another is a new object on every call (and every replay).
        if v.__closure__ is None and not v.__defaults__:
            return v.__code__
        return ("fn", v.__code__, freeze(v.__defaults__, opaque, d1, memo),
                tuple(freeze(c.cell_contents, opaque, d1, memo) for c in v.__closure__ or ()))
    if kind == _ITSELF:
        return v
    if kind == _METHOD:
        return ("method", freeze(v.__self__, opaque, d1, memo),
                freeze(v.__func__, opaque, d1, memo))
    if kind == _NUMPY and getattr(v, "ndim", 1) == 0:
        return v.item()              # a numpy scalar
    d = getattr(v, "__dict__", None)
    if d is not None:
        return (type(v),) + tuple((k, freeze(x, opaque, d1, memo)) for k, x in d.items())
    # Never by id(): two states would differ by where an object happens to
    # live, or merge when an id is reused.
    raise S2ptError(f"a CPU holds {type(v).__qualname__} {_short_repr(v)}, which the explorer "
                    f"cannot fingerprint: it is not a value and not a registered part of the "
                    f"machine state (s2pt.sim.state; share the object that owns it with "
                    f"Setup.share())")


def _short_repr(v) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


# ---------------------------------------------------------------------------
# The world
# ---------------------------------------------------------------------------

class World:
    """One run of a scenario under a scheme: build, then step CPUs.

    ``cpus[i]`` is the generator of actor ``i`` (None once finished) and
    ``pending[i]`` the operation it will perform next.  The last actor is
    always the RCU callback thread.
    """

    def __init__(self, scenario, scheme, bugs=(), checks=(), max_steps: int = 20000,
                 record: bool = True):
        """``scenario`` builds the Setup (``scenario.build(scheme, bugs)``);
        ``scheme`` is a scheme object (s2pt.schemes), not a name; ``checks``
        are the end-of-run checks, each ``check(world) -> [Violation]``, run
        after every CPU has finished and ``rcu_barrier()`` (s2pt.checkers)."""
        self.scenario = scenario
        self.scheme = scheme
        self.bugs = frozenset(bugs)
        self.checks = tuple(checks)
        setup = scenario.build(scheme, self.bugs)
        setup.cpu("rcu", "RCU callbacks (rcu_do_batch)", rcu_callback_thread, daemon=True)
        self.setup = setup
        pgt = self.pgt = setup.pgt
        self.actors = setup.actors
        n = len(self.actors)
        m = self.machine = pgt.machine
        if m.violations:
            raise KernelBug("setup", f"the scenario's setup broke a rule: {m.violations}")
        m.vcpu_of = {i: a.vcpu for i, a in enumerate(self.actors) if a.vcpu is not None}
        #: The one registry of the machine state (s2pt.sim.state): every
        #: part the explorer fingerprints; ``stateful`` its Stateful parts
        #: besides memory and the machine, ``opaque`` the name of each
        #: registered object for fingerprinting a CPU's locals.
        self.state = MachineState(self)
        self.stateful = self.state.parts
        self.opaque = self.state.tags
        self.max_steps = max_steps
        self.record = record
        # For the views: the level of each table page, who freed what.
        self.view = View(pgt, {p.pfn: lvl for p, lvl in reachable_tables(pgt)})
        self.frees: dict = {}                 # pfn -> (step, cpu, function) of its last free
        self.free_log: list = []              # (step, cpu, pfn) of every free, in order
        self._freed = _FreeLog(self)
        pgt.mm.free_hooks.append(self._freed.on_free)
        self.events: list[Event] = []
        self.nsteps = 0
        self.cpus: list = [None] * n
        self.pending: list = [None] * n
        self.results: list = [None] * n       # each actor's return value
        self.outcome = None                   # None while running; "done", "deadlock", "violation", "livelock"
        self.violations: list = []            # Violation objects
        self._stacks = [StackCache() for _ in self.actors]
        for i, a in enumerate(self.actors):
            self._prime(i, a.start())
        self.state.check_reachable(self.actors, self.cpus)

    def again(self, record: bool | None = None, max_steps: int | None = None) -> "World":
        """A fresh World of the same scenario, scheme, bugs and checks."""
        if record is not None:
            record = validate.flag("record", record)
        max_steps = validate.optional_integer("max_steps", max_steps, 1)
        return World(self.scenario, self.scheme, self.bugs, self.checks,
                     self.max_steps if max_steps is None else max_steps,
                     self.record if record is None else record)

    @property
    def levels(self) -> dict:
        return self.view.levels

    @property
    def pgd_pfns(self) -> list:
        return self.view.pgd_pfns

    # -- helpers ------------------------------------------------------------------
    def _prime(self, i, gen):
        try:
            self.cpus[i] = gen
            self.pending[i] = gen.send(None)
        except StopIteration as stop:
            self.cpus[i] = None
            self.results[i] = stop.value

    @property
    def n(self) -> int:
        return len(self.actors)

    def name(self, i: int) -> str:
        if type(i) is not int or not 0 <= i < len(self.actors):
            i = self._check_cpu(i)
        return self.actors[i].name

    def blocked(self, i: int) -> str | None:
        """Why actor ``i`` cannot step now ("finished" once it has)."""
        if type(i) is not int or not 0 <= i < len(self.cpus):
            i = self._check_cpu(i)
        if self.cpus[i] is None:
            return "finished"
        return self.machine.blocked(i, self.pending[i])

    def enabled(self) -> list:
        waits, cpus, pending = self.machine.waits, self.cpus, self.pending
        out = []
        for i in range(len(cpus)):                # m.blocked, inlined: it runs every step
            if cpus[i] is not None:
                op = pending[i]
                rule = waits.get(op[0])
                if rule is None or rule(i, op) is None:
                    out.append(i)
        return out

    def live(self) -> list:
        """Actors that must still finish (daemons never must)."""
        return [i for i, a in enumerate(self.actors) if not a.daemon and self.cpus[i] is not None]

    # -- stepping -----------------------------------------------------------------
    def step(self, i: int) -> Event:
        """Actor ``i`` performs its pending operation and runs to its next one."""
        if type(i) is not int or not 0 <= i < len(self.cpus):
            i = self._check_cpu(i)
        if self.outcome is not None:
            raise S2ptError(f"cpu={i}: the run is over ({self.outcome}): no CPU can step; "
                            f"w.again() gives a fresh World")
        gen = self.cpus[i]
        if gen is None or self.machine.blocked(i, self.pending[i]) is not None:
            raise S2ptError(f"CPU {i} ({self.name(i)}) cannot step: {self.blocked(i)}")
        op = self.pending[i]
        m = self.machine
        stack = self._stacks[i].names_of(gen) if self.record else ()
        visitors = self._stacks[i].visitors if self.record else ()
        calls = self._stacks[i].calls if self.record else ()
        enabled = tuple(self.enabled()) if self.record else ()
        m.cpu = i
        self._stack = stack
        pre = self._peek(op) if self.record else None
        result = m.perform(op)
        viol = []
        if m.violations:
            viol, m.violations = m.violations, []
        if not viol:
            try:
                self.pending[i] = gen.send(result)
            except StopIteration as stop:
                self.cpus[i] = None
                self.pending[i] = None
                self.results[i] = stop.value
            except KernelBug as e:
                viol.append((e.kind, str(e).split(": ", 1)[-1]))
            if m.violations:                  # raised from code between yields
                viol += m.violations
                m.violations = []
        ev = Event(self.nsteps, i, op, result, stack, viol, enabled)
        if self.record:
            ev.note = self._changes(op, pre)
            ev.walkers = visitors
            ev.calls = calls
            if op[0] in ADDR:
                ev.before = pre
        self.nsteps += 1
        if self.record:
            self.events.append(ev)
        if viol:
            for kind, msg in viol:
                self.violations.append(Violation.at_step(self, ev, kind, msg))
            self.outcome = "violation"
        elif self.nsteps >= self.max_steps:
            self.violations.append(Violation.livelock(self, ev))
            self.outcome = "livelock"
        else:
            self._maybe_finish()
        return ev

    def _check_cpu(self, i, name="cpu") -> int:
        """An actor id of this World (0 .. n-1), as an int; else S2ptError."""
        names = ", ".join(f"{k}: {a.name}" for k, a in enumerate(self.actors))
        return validate.integer(name, i, 0, self.n - 1,
                                rule=f"a CPU of this scenario, 0 to {self.n - 1} ({names})")

    def _maybe_finish(self):
        live = self.live()
        if live:
            if not self.enabled():
                kind = stuck_kind(len(live), sum(not a.daemon for a in self.actors))
                self.violations.append(Violation.deadlock(self, kind))
                self.outcome = kind
            return
        # Every CPU has finished: rcu_barrier() -- the callback thread runs
        # what is still queued -- happens as the remaining (forced) steps.
        if self.enabled():
            return
        self.outcome = "done"
        self.violations += self.end_checks()
        if self.violations:
            self.outcome = "violation"

    def end_checks(self) -> list:
        """The end-of-run violations of the machine as it is now: queued RCU
        callbacks after rcu_barrier(), then each check this World was given."""
        out = []
        if self.machine.callbacks:
            out.append(Violation.at_end("leak", "RCU callbacks still queued after rcu_barrier()",
                                        "rcu_barrier() returned with callbacks still queued."))
        for check in self.checks:
            out += check(self)
        return out

    def stop(self, violation) -> None:
        """End the run here with ``violation`` (a livelock found as a cycle
        in the state graph: the run has reached the state where its cycle
        starts again)."""
        self.violations.append(violation)
        self.outcome = violation.kind

    def run(self, schedule=(), policy=None, complete: bool = True) -> "World":
        """Follow ``schedule`` (actor ids, or text such as ``"1*4 0"``), then
        ``policy(world, enabled)`` (default: keep running the last CPU while
        it can, else the lowest enabled) to the end of the run (with
        ``complete`` False: stop after the schedule).

        All or nothing: a recorded World (what s2pt.world and s2pt.replay
        give) first runs the schedule and the policy on a fresh copy, so a
        schedule step naming a CPU that cannot step then, or a policy that
        picks one, is refused with :class:`~s2pt.S2ptError` and this World
        is left as it was (a policy is therefore called twice per step; it
        must not keep state of its own).  An unrecorded World, the
        explorer's scratch copy, skips that check."""
        if policy is not None:
            validate.function("policy", policy, 2)
        complete = validate.flag("complete", complete)
        schedule = validate.schedule(schedule, self.n, self.max_steps)
        if self.record and self.outcome is None and (schedule or policy is not None):
            probe = self.again(record=False)
            probe._follow([ev.cpu for ev in self.events], None, finish=False)
            probe._follow(schedule, policy, complete)
        return self._follow(schedule, policy, complete)

    def _follow(self, schedule, policy, finish: bool = True) -> "World":
        last = None
        relaxed = False
        for k, tok in enumerate(schedule):
            if self.outcome is not None:
                return self
            if tok not in self.enabled():
                raise S2ptError(f"schedule step {k}: CPU {tok} ({self.name(tok)}) cannot step: "
                                f"{self.blocked(tok)}")
            relaxed = self.step(tok).op[0] == "cpu_relax"
            last = tok
        while finish and self.outcome is None:
            en = self.enabled()
            choice = policy(self, en) if policy else default_choice(en, last, relaxed)
            relaxed = self.step(choice).op[0] == "cpu_relax"
            last = choice
        return self

    # -- bookkeeping for the views ---------------------------------------------------
    def _peek(self, op):
        name = op[0]
        if name in ADDR:
            mm = self.pgt.mm
            page = mm.pages.get(op[1] >> mm.page_shift)
            if page is None:
                return None
            idx = (op[1] & (mm.page_size - 1)) >> 3
            return (page.refcount, page.freed, page.table.item(idx), page.walkers)
        if name in SYNC:
            return self.machine.describe_sync()
        return None

    def _changes(self, op, pre) -> str:
        name = op[0]
        view = self.view
        if name in ADDR and pre is not None:
            post = self._peek(op)
            mm = self.pgt.mm
            pa = op[1] & ~(mm.page_size - 1)
            lvl = view.levels.get(op[1] >> mm.page_shift)
            out = []
            if post[2] != pre[2] and not post[1]:
                out.append(f"{loc_text(view, op[1])}: {desc_text(view, pre[2], lvl)} -> "
                           f"{desc_text(view, post[2], lvl)}")
                view.learn(op[1], post[2])
            if post[1] and not pre[1]:
                out.append(f"table page {pa:#x} freed (poisoned, back to the allocator)")
            elif post[0] != pre[0]:
                out.append(f"page_count({pa:#x}): {pre[0]} -> {post[0]}")
            if post[3] != pre[3] and not (post[1] and not pre[1]):
                out.append(f"walkers({pa:#x}): {pre[3]} -> {post[3]}")
            return "; ".join(out)
        if name in SYNC:
            post = self.machine.describe_sync()
            return post if post != pre else ""
        return ""

    # -- views ----------------------------------------------------------------------
    def diagram(self, **kw) -> str:
        """The run so far as a kernel-style race diagram: the steps its
        violations depend on, under the kernel functions that perform them,
        80 columns wide (s2pt.sim.report.race_diagram)."""
        from .report import race_diagram
        if "width" in kw and kw["width"] is None:
            del kw["width"]                      # the default: an email's 80 columns
        if kw.get("width") is not None:
            kw["width"] = validate.integer("width", kw["width"], 16,
                                           rule="a column width of at least 16 characters")
        try:
            inspect.signature(race_diagram).bind(self, **kw)
        except TypeError as e:
            raise S2ptError(f"diagram: {e}") from None
        return race_diagram(self, **kw)

    def step_diagram(self, **kw) -> str:
        """Every step of the run so far, numbered, one column per CPU
        (s2pt.sim.report.step_diagram): the long form of :meth:`diagram`."""
        from .report import step_diagram
        return step_diagram(self, **kw)

    def log(self) -> str:
        """Every step with its result and what it changed."""
        from .report import state_log
        return state_log(self)

    def status(self) -> str:
        """One line per CPU: what it does next, or why it cannot."""
        out = []
        for i, a in enumerate(self.actors):
            why = self.blocked(i)
            state = "finished" if why == "finished" else (
                f"blocked: {why}" if why else f"next: {self.pending_text(i)}")
            out.append(f"{i}: {a.name:<9} {state}")
        if self.outcome:
            out.append(f"outcome: {self.outcome}")
            out += [f"  {v}" for v in self.violations]
        return "\n".join(out)

    def _repr_pretty_(self, p, cycle):
        p.text(self.diagram() + "\n\n" + self.status())

    def pending_text(self, i: int) -> str:
        if type(i) is not int or not 0 <= i < len(self.cpus):
            i = self._check_cpu(i)
        if self.cpus[i] is None:
            return "finished"
        return op_text(self.pending[i], self.view)


class _FreeLog(Stateless):
    """Who freed each table page, for the explanations (bookkeeping only)."""

    def __init__(self, world):
        self.world = world

    def on_free(self, page):
        w = self.world
        if w.record:
            st = getattr(w, "_stack", ())
            w.frees[page.pfn] = (w.nsteps, w.machine.cpu, st[-1] if st else "?")
            w.free_log.append((w.nsteps, w.machine.cpu, page.pfn))


def stuck_kind(waiting: int, cpus: int) -> str:
    """A run where no CPU can step but ``waiting`` of the scenario's
    ``cpus`` CPUs (daemons aside) have not finished: "starvation" when one
    CPU waits while every other has finished (nothing it waits for will
    ever happen: a lock nobody releases, a grace period that never ends),
    "deadlock" when several wait (for each other) or the only CPU waits for
    itself."""
    return "starvation" if waiting == 1 and cpus > 1 else "deadlock"


def default_choice(enabled, last, relaxed=False):
    """Without a schedule: no preemption (the last CPU keeps running while
    it can), otherwise the lowest-numbered enabled CPU.  After a
    ``cpu_relax()`` hint (``relaxed``) the last CPU runs only if no other can."""
    if last is not None and last in enabled:
        if not relaxed or len(enabled) == 1:
            return last
        return next(c for c in enabled if c != last)
    return enabled[0]
