"""Argument checks for every public entry point, in one place.

The README promises that bad input gets an :class:`~s2pt.S2ptError` naming
the value and the rule, and that the model is left exactly as it was.  The
second half is each operation's business (check everything before changing
anything); the first half is this module's.  Every checker takes the
parameter's name *as the caller spelled it* (``"gpa"``, ``"--seed"``,
``"schedule step 3"``), the value, and what the rule allows, and returns the
value normalised (numpy integers become ``int``) or raises::

    >>> integer("vcpus", 3, 1, 64)
    3
    >>> integer("vcpus", 4.0, 1, 64)
    Traceback (most recent call last):
    ...
    s2pt.errors.S2ptError: vcpus=4.0: an integer from 1 to 64 (not a float)

What counts as an integer: ``int`` and numpy's integer scalars (addresses
and table entries are numpy integers everywhere in the model), never
``bool`` (``True`` is not CPU 1) and never a float, even a whole one
(``4096.0`` is a measurement, not a granule).
"""

from __future__ import annotations

import inspect
import numbers

import numpy as np

from .errors import S2ptError

__all__ = ["is_int", "integer", "optional_integer", "address", "size", "aligned", "choice",
           "flag", "cpu", "names", "schedule", "function", "stream_or_flag"]


def is_int(x) -> bool:
    """An integer: ``int`` or a numpy integer scalar, not ``bool``."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _kind(value) -> str:
    """Why a value is not an integer, for the message ('' if it is one)."""
    if isinstance(value, (bool, np.bool_)):
        return " (not a bool)"
    if isinstance(value, (float, np.floating)):
        return " (not a float)"
    if isinstance(value, str):
        return " (not a string)"
    if value is None:
        return " (not None)"
    if not isinstance(value, numbers.Number):
        return f" (not a {type(value).__name__})"
    return ""


def _range_text(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f"an integer from {lo} to {hi}"
    if lo == 0:
        return "a non-negative integer"
    if lo == 1:
        return "a positive integer"
    if lo is not None:
        return f"an integer >= {lo}"
    if hi is not None:
        return f"an integer <= {hi}"
    return "an integer"


def integer(name: str, value, lo: int | None = None, hi: int | None = None, *,
            rule: str | None = None) -> int:
    """``value`` as an ``int`` in ``[lo, hi]`` (either bound may be None).
    ``rule`` replaces the default description of what is allowed."""
    text = rule or _range_text(lo, hi)
    if not is_int(value):
        raise S2ptError(f"{name}={value!r}: {text}{_kind(value)}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise S2ptError(f"{name}={value!r}: {text}")
    return v


def optional_integer(name: str, value, lo: int | None = None, hi: int | None = None, *,
                     rule: str | None = None):
    """None, or :func:`integer`."""
    if value is None:
        return None
    return integer(name, value, lo, hi, rule=(rule or _range_text(lo, hi)) + ", or None")


def address(name: str, value, bits: int | None = None, what: str = "an address") -> int:
    """A non-negative integer below ``2**bits`` (when ``bits`` is given)."""
    if not is_int(value) or value < 0:
        raise S2ptError(f"{name}={value!r}: {what} is a non-negative integer{_kind(value)}")
    v = int(value)
    if bits is not None and v >= 1 << bits:
        raise S2ptError(f"{name}={v:#x}: beyond the {bits}-bit address space "
                        f"(limit {1 << bits:#x})")
    return v


def size(name: str, value, granule: int | None = None) -> int:
    """A positive number of bytes, a multiple of ``granule`` when given."""
    if not is_int(value) or value <= 0:
        raise S2ptError(f"{name}={value!r}: a size is a positive integer number of "
                        f"bytes{_kind(value)}")
    v = int(value)
    if granule and v % granule:
        raise S2ptError(f"{name}={v:#x}: must be a multiple of the "
                        f"{_unit(granule)} granule")
    return v


def _unit(n: int) -> str:
    for suffix, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{suffix}"
    return f"{n:#x}-byte"


def aligned(name: str, value: int, align: int, what: str = "granule") -> int:
    """``value`` (already an int) must be a multiple of ``align``."""
    if value % align:
        raise S2ptError(f"{name}={value:#x}: must be aligned to the {_unit(align)} {what}")
    return value


def choice(name: str, value, options, what: str | None = None):
    """One of ``options`` (compared by equality, so types must match:
    ``4096.0`` is not ``4096`` and ``True`` is not ``1``)."""
    opts = list(options)
    for o in opts:
        if type(o) is type(value) or (is_int(o) and is_int(value)):
            if o == value:
                return o
    shown = ", ".join(repr(o) for o in opts)
    raise S2ptError(f"{name}={value!r}: {what or 'one of'} {shown}")


def flag(name: str, value) -> bool:
    """A yes/no switch: ``True``/``False`` (numpy's too), or the integers 0 and 1."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if is_int(value) and value in (0, 1):
        return bool(value)
    raise S2ptError(f"{name}={value!r}: a switch is True or False")


def cpu(name: str, value, n: int, what: str = "CPU") -> int:
    """An index into ``n`` CPUs (or vCPUs, actors): 0 .. n-1."""
    return integer(name, value, 0, n - 1,
                   rule=f"a {what} number from 0 to {n - 1}" if n > 0 else f"no {what}s exist")


def names(name: str, value, known, what: str = "name") -> frozenset:
    """A collection of names, each one of ``known`` (a single string is
    refused: ``bugs='no-bbm-tlbi'`` would otherwise be split into letters)."""
    if isinstance(value, (str, bytes)):
        raise S2ptError(f"{name}={value!r}: a set of {what}s (e.g. {{{value!r}}}), "
                        f"not a single string")
    try:
        items = list(value)
    except TypeError:
        raise S2ptError(f"{name}={value!r}: a set of {what}s, e.g. () for none") from None
    bad = [v for v in items if not isinstance(v, str)]
    if bad:
        raise S2ptError(f"{name}={value!r}: {what}s are strings, not {bad[0]!r}")
    known = list(known)
    unknown = sorted(set(items) - set(known))
    if unknown:
        raise S2ptError(f"{name}={unknown!r}: unknown {what}(s); known: {', '.join(known)}")
    return frozenset(items)


def schedule(value, n: int | None = None, limit: int | None = None,
             name: str = "schedule") -> list:
    """CPU ids, one per step: a list of integers, or text such as
    ``"1*4 0"`` (``1 1 1 1 0``; commas work as spaces).  ``n``: how many
    CPUs there are (each id must be below it); ``limit``: the most steps a
    schedule may have -- counted *before* a ``*COUNT`` is expanded, so
    ``"0*9999999999999"`` is refused without building it."""
    if isinstance(value, str):
        out: list = []
        for tok in value.replace(",", " ").split():
            c, star, times = tok.partition("*")
            try:
                cid = int(c)
                count = int(times) if star else 1
            except ValueError:
                raise S2ptError(f"{name} token {tok!r}: expected a CPU number, optionally "
                                f"followed by *COUNT (e.g. '0 0 1*3')") from None
            if cid < 0 or count < 1:
                raise S2ptError(f"{name} token {tok!r}: CPU numbers are non-negative and "
                                f"counts positive")
            if n is not None and cid >= n:
                raise S2ptError(f"{name} token {tok!r}: {cid} is not a CPU of this scenario "
                                f"(0..{n - 1})")
            if limit is not None and len(out) + count > limit:
                raise S2ptError(f"{name} token {tok!r}: the schedule would have more than "
                                f"{limit:,} steps (the run's max_steps)")
            out += [cid] * count
        return out
    if isinstance(value, (bytes, dict, set, frozenset)) or not hasattr(value, "__iter__"):
        raise S2ptError(f"{name}={value!r}: a list of CPU ids or a string such as '1*4 0'")
    out = []
    for k, tok in enumerate(value):
        if limit is not None and k >= limit:
            raise S2ptError(f"{name}: more than {limit:,} steps (the run's max_steps)")
        if not is_int(tok):
            raise S2ptError(f"{name} step {k}: {tok!r} is not a CPU id: an integer{_kind(tok)}")
        if tok < 0 or (n is not None and tok >= n):
            raise S2ptError(f"{name} step {k}: {tok!r} is not a CPU of this scenario"
                            + ("" if n is None else f" (0..{n - 1})"))
        out.append(int(tok))
    return out


def function(name: str, value, nargs: int | None = None):
    """A callable; with ``nargs``, one that can be called with that many
    positional arguments."""
    if not callable(value):
        raise S2ptError(f"{name}={value!r}: a function is needed")
    if nargs is not None:
        try:
            sig = inspect.signature(value)
        except (TypeError, ValueError):
            return value          # a builtin without a signature: trust it
        try:
            sig.bind(*range(nargs))
        except TypeError:
            raise S2ptError(f"{name}={value!r}: must accept {nargs} positional argument(s) "
                            f"{sig}") from None
    return value


def stream_or_flag(name: str, value):
    """A progress switch: True/False, a stream (anything with ``.write``),
    or a callable."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if hasattr(value, "write") or callable(value):
        return value
    raise S2ptError(f"{name}={value!r}: True (progress on stderr), False, a stream with "
                    f".write (e.g. sys.stdout) or a function")
