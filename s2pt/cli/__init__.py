"""``python -m s2pt <command>``: the course's command-line tools.

The commands: ``drill`` (seeded translation drills, :mod:`s2pt.cli.drill`),
``explore``, ``replay`` and ``scenarios`` (the interleaving explorer,
:mod:`s2pt.cli.explore`), ``compare`` (every scheme side by side,
:mod:`s2pt.cli.compare`).  Each is one function registered with
:func:`s2pt.cli.registry.command`; to add one, write it in a module of this
package and import that module below.

Exit status: 0 on success; for ``explore`` and ``replay``, 1 when a
violation was found; for ``compare``, 1 on a declaration mismatch; for
``drill --check/--answers``, 1 when an answer is wrong; 2 on bad input or
any other error (as grep does: 1 is a result, never an error).  Bad input
is an argparse usage error or an :class:`~s2pt.S2ptError` raised by the
library; an output that cannot be written (a full disk, ``/dev/full``) is an
error too.  Every error prints one line, ``s2pt <command>: <message>``, to
stderr, never a traceback (``S2PT_TRACEBACK=1`` shows one for an internal
error, which would be a bug in s2pt).
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

    def _print_message(self, message, file=None):
        # argparse swallows write errors (--help > /dev/full would exit 0
        # having printed nothing); let main() report them.
        if message:
            (file or sys.stderr).write(message)


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


def _quiet_stdout():
    """Point file descriptor 1 at /dev/null, so that the interpreter's final
    flush of what is still buffered does not fail (and complain) again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit status (0 ok, 1 found, 2 error)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    where = " ".join(["s2pt"] + [a for a in argv[:1] if a in COMMANDS])
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        # Name the subcommand when argparse got that far.
        print(f"{where}: {e} (see: python -m {where} --help)", file=sys.stderr)
        return 2
    except SystemExit:                    # --help: printed, then argparse exits
        try:
            sys.stdout.flush()
        except OSError as e:
            _quiet_stdout()
            print(f"{where}: writing the output: {e.strerror or e}", file=sys.stderr)
            return 2
        raise
    except OSError as e:                  # --help on an output that cannot be written
        _quiet_stdout()
        print(f"{where}: writing the output: {e.strerror or e}", file=sys.stderr)
        return 2
    if getattr(args, "_command", None) is None:
        parser.print_help(sys.stderr)
        return 2
    where = f"s2pt {args.command}"
    try:
        status = args._command.run(args)
        sys.stdout.flush()                # a write error shows here, not at exit
        return status
    except S2ptError as e:
        print(f"{where}: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `python -m s2pt drill | head`: the reader left.  Point stdout at
        # /dev/null so the interpreter's final flush does not complain.
        _quiet_stdout()
        return 0
    except OSError as e:
        # Standard output on a full disk (/dev/full), a vanished terminal:
        # the output is lost, which is an error, not a verdict.
        _quiet_stdout()
        what = f"{e.filename}: " if e.filename else "writing the output: "
        print(f"{where}: {what}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:            # a bug in s2pt: say so in one line
        if os.environ.get("S2PT_TRACEBACK"):
            raise
        print(f"{where}: internal error, a bug in s2pt ({type(e).__name__}: {e}); "
              f"S2PT_TRACEBACK=1 shows where", file=sys.stderr)
        return 2
