"""``python -m s2pt <command>``: the course's command-line tools.

Each subcommand is one function, registered with :func:`command`::

    @command("drill", help="...", args=[
        arg("-s", "--seed", type=int, default=0, help="the random seed"),
    ])
    def drill(args) -> int:
        ...
        return 0

``args`` is the argparse namespace.  The function returns the exit status.
To add a command (``explore``, ``replay``, ``scenarios``), write one such
function in this module, or in your own module that this one imports at the
bottom; nothing else changes.

Exit status: 0 on success, 2 on bad input.  Bad input is an argparse usage
error or an :class:`~s2pt.S2ptError` raised by the library; either way it
prints one line, ``s2pt <command>: <message>``, to stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from dataclasses import dataclass, field
from typing import Callable

from .errors import S2ptError

__all__ = ["main", "command", "arg", "COMMANDS"]


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


class UsageError(Exception):
    """argparse found bad input; raised instead of printing usage and exiting."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="s2pt", description="Stage-2 page tables, by hand and by machine.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for c in COMMANDS.values():
        p = sub.add_parser(c.name, help=c.help, description=c.description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        for flags, kw in c.args:
            p.add_argument(*flags, **kw)
        p.set_defaults(_command=c)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit status (0 ok, 2 bad input)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        # Name the subcommand when argparse got that far.
        where = " ".join(["s2pt"] + [a for a in argv[:1] if a in COMMANDS])
        print(f"{where}: {e} (see: python -m {where} --help)", file=sys.stderr)
        return 2
    if getattr(args, "_command", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args._command.run(args)
    except S2ptError as e:
        print(f"s2pt {args.command}: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `python -m s2pt drill | head`: the reader left.  Point stdout at
        # /dev/null so the interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# ---------------------------------------------------------------------------
# The commands
# ---------------------------------------------------------------------------

def _int(text: str) -> int:
    """An integer in decimal or 0x hex; a granule may also be 4K, 16K, 64K."""
    t = text.strip().upper()
    try:
        if t.endswith("K"):
            return int(t[:-1], 0) * 1024
        return int(t, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None


@command("drill", help="seeded IPA -> PA translation drills (OSTEP style)", args=[
    arg("-s", "--seed", type=_int, default=0, help="the random seed (default 0)"),
    arg("-n", "--n", type=_int, default=5, metavar="K",
        help="how many accesses to ask about (default 5)"),
    arg("--ipa-bits", type=_int, default=36, metavar="B",
        help="guest IPA size, 32..48 (default 36)"),
    arg("--granule", type=_int, default=4096, metavar="G",
        help="4096, 16384 or 65536; 4K, 16K, 64K also work (default 4096)"),
    arg("-c", "--solve", action="store_true", help="show the worked walks"),
])
def drill(args) -> int:
    """Print a stage-2 table and some guest accesses; with -c, the answers.

    For each access: split the IPA into one index per level, read the
    descriptor at each level from the dump, and say where the walk ends: an
    output PA, or a translation, access flag or permission fault at a level.
    """
    from .drill import Drill
    d = Drill(seed=args.seed, n=args.n, ipa_bits=args.ipa_bits, granule=args.granule)
    sys.stdout.write(d.problem())
    if args.solve:
        sys.stdout.write("\nAnswers (-c):\n\n" + d.solution())
    else:
        sys.stdout.write("\n(Work out each walk, then run again with -c to see the answers.)\n")
    return 0


# The interleaving explorer's commands (explore, replay, scenarios).
from .sim import commands as _sim_commands  # noqa: E402,F401
