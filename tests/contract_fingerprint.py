"""One fingerprint of a model, for "a refused call changed nothing".

``fingerprint(obj)`` walks everything reachable from ``obj`` (a Stage2, VM,
pkvm.Host, World, ...) and returns it as nested tuples of plain values:
every field of every object (``__dict__`` and ``__slots__``), dicts in
insertion order (a TLB's fill order is state), numpy arrays as their
bytes, suspended generators as their position and locals (a World's CPUs),
and shared objects as back-references, so that aliasing is part of the
fingerprint too.  What a later call could observe is in it: table pages,
refcounts, walker counts, freed flags and contents (``PhysMem``), the
allocator, memcaches, TLBs and walk caches, the TLBI log, counters, dirty
bitmaps, logging flags, the split cache, pKVM's owner records and pool,
a World's events and CPUs.

The contract suite compares two fingerprints with ``==``; ``diff(a, b)``
names the first place they differ.  The coordinator's machine-state
registry can replace the walk below without changing the callers.
"""

from __future__ import annotations

import functools
import math
import types
from collections import deque

import numpy as np

__all__ = ["fingerprint", "diff"]

_FUNCS = (types.FunctionType, types.BuiltinFunctionType, types.MethodWrapperType,
          types.WrapperDescriptorType, types.MethodDescriptorType, functools.partial)


def fingerprint(obj) -> tuple:
    """Everything reachable from ``obj``, as a comparable value."""
    return _fp(obj, {}, 0)


def _fp(x, memo: dict, depth: int):
    if x is None or isinstance(x, (bool, int, str, bytes)):
        return x if type(x) in (bool, int, str, bytes) or x is None else (type(x).__name__, x)
    if isinstance(x, float):
        return ("float", "nan" if math.isnan(x) else x)
    if isinstance(x, np.generic):
        return ("np", x.dtype.str, x.item() if not isinstance(x, np.floating)
                or not math.isnan(float(x)) else "nan")
    if isinstance(x, (type, types.ModuleType, types.CodeType)):
        return ("static", getattr(x, "__qualname__", getattr(x, "__name__", repr(x))))
    key = id(x)
    if key in memo:
        return ("ref", memo[key][0])
    # Keep x alive while the walk lasts: a temporary (a generator frame's
    # locals, copied into a dict) freed early would let another object
    # reuse its id and be taken for a back-reference.
    memo[key] = (len(memo), x)
    if depth > 400:
        raise RecursionError("fingerprint: structure too deep")
    d1 = depth + 1
    if isinstance(x, np.ndarray):
        return ("ndarray", x.dtype.str, x.shape, x.tobytes())
    if isinstance(x, (list, tuple, deque)):
        return (type(x).__name__,) + tuple(_fp(v, memo, d1) for v in x)
    if isinstance(x, dict):
        return (type(x).__name__,) + tuple((_fp(k, memo, d1), _fp(v, memo, d1))
                                          for k, v in list(x.items()))
    if isinstance(x, (set, frozenset)):
        items = [_fp(v, memo, d1) for v in x]
        return (type(x).__name__,) + tuple(sorted(items, key=repr))
    if isinstance(x, types.MethodType):
        return ("method", x.__func__.__qualname__, _fp(x.__self__, memo, d1))
    if isinstance(x, _FUNCS) or (callable(x) and hasattr(x, "__wrapped__")):
        # The code, not the closure: a closure's cells are reached through
        # the objects that own them (a Machine's inlined handlers close over
        # its own PhysMem).
        return ("function", getattr(x, "__qualname__", repr(type(x))))
    if isinstance(x, types.GeneratorType):
        frame = x.gi_frame
        if frame is None:
            return ("generator", x.__qualname__, "finished")
        return ("generator", x.__qualname__, frame.f_lasti,
                _fp(dict(frame.f_locals), memo, d1), _fp(x.gi_yieldfrom, memo, d1))
    fields = []
    for cls in type(x).__mro__:
        for s in getattr(cls, "__slots__", ()):
            if s in ("__dict__", "__weakref__"):
                continue
            fields.append((s, _fp(getattr(x, s, "<unset>"), memo, d1)))
    dct = getattr(x, "__dict__", None)
    if dct is not None:
        fields += [(k, _fp(v, memo, d1)) for k, v in list(dct.items())]
    if not fields and dct is None and not hasattr(type(x), "__slots__"):
        return ("opaque", type(x).__qualname__)
    return (type(x).__qualname__,) + tuple(fields)


def diff(a, b, path: str = "") -> str:
    """Where two fingerprints first differ ('' when equal)."""
    if a == b:
        return ""
    if isinstance(a, tuple) and isinstance(b, tuple):
        for k, (x, y) in enumerate(zip(a, b)):
            if x != y:
                label = x[0] if isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) \
                    else k
                return diff(x, y, f"{path}/{label}")
        return f"{path}: lengths {len(a)} != {len(b)}"
    ra, rb = repr(a), repr(b)
    return f"{path}: {ra[:120]} != {rb[:120]}"
