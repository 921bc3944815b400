"""``python -m s2pt <command>``: the course's command-line tools.

The commands: ``drill`` (seeded translation drills, :mod:`s2pt.cli.drill`),
``explore``, ``replay`` and ``scenarios`` (the interleaving explorer,
:mod:`s2pt.cli.explore`), ``compare`` (every scheme side by side,
:mod:`s2pt.cli.compare`).  Each is one function registered with
:func:`s2pt.cli.registry.command`; to add one, write it in a module of this
package and import that module below.

Exit status: 0 on success; for ``explore`` and ``replay``, 1 when a
violation was found; for ``compare``, 1 on a declaration mismatch; 2 on bad
input.  Bad input is an argparse usage error
or an :class:`~s2pt.S2ptError` raised by the library; either way it prints
one line, ``s2pt <command>: <message>``, to stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import S2ptError
from . import compare as _compare, drill as _drill, explore as _explore  # noqa: F401  (they register commands)
from .registry import COMMANDS, arg, command

__all__ = ["main", "command", "arg", "COMMANDS"]


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
