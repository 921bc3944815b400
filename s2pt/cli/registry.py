"""The command registry: each ``python -m s2pt <command>`` is one function.

::

    @command("drill", help="...", args=[
        arg("-s", "--seed", type=integer, default=0, help="the random seed"),
    ])
    def drill(args) -> int:
        ...
        return 0

``args`` is the argparse namespace; the function returns the exit status.
A command module imports this one, never :mod:`s2pt.cli` (which imports
every command module), so there is no cycle.
"""

from __future__ import annotations

import argparse
import inspect
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["Command", "COMMANDS", "command", "arg", "integer", "nonneg", "positive", "seed64"]


@dataclass
class Command:
    name: str
    run: Callable[[argparse.Namespace], int]
    help: str
    args: list = field(default_factory=list)
    description: str | None = None


#: name -> Command, in registration order (the order ``--help`` lists them).
COMMANDS: dict[str, Command] = {}


def arg(*flags, **kw) -> tuple:
    """One ``add_argument`` call, written down for :func:`command`."""
    return flags, kw


def command(name: str, help: str, args: list = (), description: str | None = None):
    """Register the decorated function as ``python -m s2pt <name>``."""
    def register(fn):
        COMMANDS[name] = Command(name, fn, help, list(args), description or inspect.cleandoc(fn.__doc__ or ""))
        return fn
    return register


def integer(text: str) -> int:
    """An integer in decimal or 0x hex; a granule may also be 4K, 16K, 64K."""
    t = text.strip().upper()
    try:
        if t.endswith("K"):
            return int(t[:-1], 0) * 1024
        return int(t, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None


def nonneg(text):
    v = integer(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be non-negative: {text!r}")
    return v


def positive(text):
    v = integer(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return v


def seed64(text):
    """A random seed: an integer from 0 to 2**64 - 1 (what random.Random
    is seeded with here; the same seed always gives the same run)."""
    v = integer(text)
    if not 0 <= v < 1 << 64:
        raise argparse.ArgumentTypeError(f"{text!r}: a seed is an integer from 0 to 2**64 - 1")
    return v
