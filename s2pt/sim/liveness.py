"""Which locals of a suspended generator frame can still be read.

A CPU's position is its frames and their locals (``s2pt.sim.world.frames``).
A local that the code will overwrite, or never read again, before it is
next read is *dead*: two positions that differ only in dead locals behave
identically from here on, whatever the results.  Fingerprinting only the
live locals merges them (SPIN's and Bogor's dead-variable reduction), and
a pointer left in a dead local -- a walker that retried keeps the stale
table pointer of its first attempt in the frame it retries from -- no
longer counts as a way into an unlinked table (``s2pt.sim.por``).

The analysis is the textbook backward data flow over the function's
bytecode (``dis``): an instruction's successors are the next one, its jump
target and, for every instruction an exception-table entry covers (Python
3.11+) or a block-setup instruction (3.10), the handler.  It over-
approximates: a successor too many or an unknown opcode that names a local
only makes more locals live, which merges fewer positions and is never
unsound.  Cell and free variables (closures) are always live.  A frame's
live set is the live-out of the instruction it is suspended at
(``f_lasti``): what runs next is the instruction after it.
"""

from __future__ import annotations

import dis

__all__ = ["live_after", "overwritten"]

#: code object -> {offset: frozenset of live local names}.
_TABLES: dict = {}
#: (code object, offset) -> (local, attribute) or None (see overwritten).
_STORES: dict = {}
#: Instructions that run between a yield and the code after it.
_NOISE = frozenset({"RESUME", "NOP", "CACHE", "EXTENDED_ARG"})

_KILL = frozenset({"STORE_FAST"})
_STOP = frozenset({"RETURN_VALUE", "RETURN_CONST", "RAISE_VARARGS", "RERAISE",
                   "JUMP_FORWARD", "JUMP_BACKWARD", "JUMP_ABSOLUTE", "JUMP",
                   "JUMP_BACKWARD_NO_INTERRUPT", "JUMP_NO_INTERRUPT"})
_JUMPS = (frozenset(dis.hasjrel) | frozenset(dis.hasjabs)
          | frozenset(getattr(dis, "hasjump", ())))       # (3.13 names them all here)
_LOCAL = frozenset(dis.haslocal)
_SETUP = frozenset({"SETUP_FINALLY", "SETUP_WITH", "SETUP_ASYNC_WITH", "SETUP_CLEANUP"})


def live_after(code, lasti: int):
    """The names of ``code``'s locals that may be read after the
    instruction at byte offset ``lasti``, or None when the offset is not an
    instruction of ``code`` (then every local counts)."""
    table = _TABLES.get(code)
    if table is None:
        table = _TABLES[code] = _analyse(code)
    return table.get(lasti)


def overwritten(code, lasti: int):
    """(local, attribute) when the frame suspended at ``lasti`` stores the
    value its yield receives into that attribute of that local before it
    runs anything else (``ctx.old = yield READ_ONCE(ptep)``), else None.
    In the innermost frame of a CPU (the one whose yield is the operation)
    the attribute's current value is dead: nothing reads it before the
    store.  Not in an outer frame: the callee it waits on may read it."""
    key = (code, lasti)
    try:
        return _STORES[key]
    except KeyError:
        pass
    out = None
    ins = list(dis.get_instructions(code))
    k = next((k for k, i in enumerate(ins) if i.offset == lasti), None)
    # (A suspended frame's f_lasti is its YIELD_VALUE up to Python 3.12;
    # later versions may name the RESUME after it.)
    if k is not None and (ins[k].opname == "YIELD_VALUE" or
                          ins[k].opname == "RESUME" and k and ins[k - 1].opname == "YIELD_VALUE"):
        rest = [i for i in ins[k + 1:k + 8] if i.opname not in _NOISE]
        if len(rest) >= 2 and rest[0].opname == "LOAD_FAST" and rest[1].opname == "STORE_ATTR":
            out = (rest[0].argval, rest[1].argval)
    _STORES[key] = out
    return out


def _target(ins):
    """The offset a jump instruction may go to."""
    t = getattr(ins, "jump_target", None)
    return t if t is not None else ins.argval


def _names(ins) -> tuple:
    v = ins.argval
    return v if isinstance(v, tuple) else (v,)


def _analyse(code) -> dict:
    ins = list(dis.get_instructions(code))
    offsets = [i.offset for i in ins]
    at = {o: k for k, o in enumerate(offsets)}
    n = len(ins)
    always = frozenset(code.co_cellvars) | frozenset(code.co_freevars)
    if "__class__" in code.co_freevars and code.co_argcount:
        always |= {code.co_varnames[0]}      # zero-argument super() reads it unseen
    succ = [[] for _ in range(n)]
    handlers = set()
    for k, i in enumerate(ins):
        if i.opname not in _STOP and k + 1 < n:
            succ[k].append(k + 1)
        if i.opcode in _JUMPS:
            t = _target(i)
            if t not in at:
                return {}            # a jump we cannot follow: every local counts
            succ[k].append(at[t])
        if i.opname in _SETUP and isinstance(i.argval, int) and i.argval in at:
            handlers.add(at[i.argval])
    for e in getattr(dis.Bytecode(code), "exception_entries", ()):
        h = at.get(e.target)
        if h is None:
            continue
        for k in range(n):
            if e.start <= offsets[k] < e.end:
                succ[k].append(h)
    if handlers:
        # 3.10's block stack: which instructions a handler covers is a
        # property of the path, not of the offset; let every instruction
        # reach every handler (more live locals, never fewer).
        for k in range(n):
            succ[k].extend(handlers)
    use, kill = [], []
    for i in ins:
        u, d = set(), set()
        if i.opcode in _LOCAL:
            names = _names(i)
            op = i.opname
            if op in _KILL:
                d.update(names)
            elif op == "STORE_FAST_STORE_FAST":
                d.update(names)
            elif op == "STORE_FAST_LOAD_FAST" and len(names) == 2:
                d.add(names[0])
                u.add(names[1])
            else:
                u.update(names)      # LOAD_FAST*, DELETE_FAST, anything else: a read
        use.append(frozenset(u))
        kill.append(frozenset(d - u))
    live_in = [frozenset()] * n
    live_out = [frozenset()] * n
    changed = True
    while changed:
        changed = False
        for k in range(n - 1, -1, -1):
            out = frozenset().union(*(live_in[s] for s in succ[k])) if succ[k] else frozenset()
            new_in = use[k] | (out - kill[k])
            if out != live_out[k] or new_in != live_in[k]:
                live_out[k], live_in[k] = out, new_in
                changed = True
    depth = _depths(code, ins, at)
    if depth is None:
        return {}                    # not understood: every local counts everywhere
    preds = [[] for _ in range(n)]
    for k in range(n):
        for t in succ[k]:
            preds[t].append(k)
    base = min(d for d in depth if d is not None)
    return {offsets[k]: live_out[k] | always | _on_stack(k, ins, preds, depth, base)
            for k in range(n)}


def _depths(code, ins, at):
    """The value-stack depth before each instruction (relative to the
    first), by a forward pass over the same edges; None if two paths
    disagree or an opcode's effect is unknown."""
    n = len(ins)
    depth = [None] * n
    depth[0] = 0
    todo = [0]
    handlers = {}
    for e in getattr(dis.Bytecode(code), "exception_entries", ()):
        h = at.get(e.target)
        if h is not None:
            handlers.setdefault(h, e.depth + 1 + int(e.lasti))
    while todo:
        k = todo.pop()
        i = ins[k]
        arg = i.arg if i.opcode >= dis.HAVE_ARGUMENT else None
        moves = []
        try:
            if i.opcode in _JUMPS:
                moves.append((at[_target(i)], dis.stack_effect(i.opcode, arg, jump=True)))
            if i.opname not in _STOP and k + 1 < n:
                moves.append((k + 1, dis.stack_effect(i.opcode, arg, jump=False)
                              if i.opcode in _JUMPS else dis.stack_effect(i.opcode, arg)))
        except ValueError:
            return None
        for t, eff in moves:
            d = depth[k] + eff
            if depth[t] is None:
                depth[t] = d
                todo.append(t)
            elif depth[t] != d:
                return None
        if not todo:
            for h, d in list(handlers.items()):
                if depth[h] is None:
                    depth[h] = d - 1        # (relative: the code's base is depth -1 after
                    todo.append(h)          # RETURN_GENERATOR; POP_TOP)
                del handlers[h]
    return depth


def _on_stack(k, ins, preds, depth, base) -> frozenset:
    """Locals whose value, or something computed from it (a ``for`` loop's
    iterator, a half-built call), may still be on the value stack while
    the frame is suspended after instruction ``k``: every local loaded on
    a way back from ``k`` to the last point where the stack was empty.
    The frozen frame has locals, not the stack, so they stay live.  (Which
    of those values the yield itself consumed is not worked out: more
    live locals, never fewer.)"""
    out = set()
    seen = set()
    todo = list(preds[k])
    while todo:
        p = todo.pop()
        if p in seen or depth[p] is None:
            continue
        seen.add(p)
        i = ins[p]
        if i.opcode in _LOCAL and i.opname not in _KILL:
            out.update(_names(i))
        if depth[p] > base:          # the stack was not empty before p: look further back
            todo.extend(preds[p])
    return frozenset(out)
