"""``python -m s2pt drill``: seeded translation drills, OSTEP style."""

from __future__ import annotations

import sys

from ..errors import S2ptError
from .registry import arg, command, integer as _int, seed64

#: The most an answers file (or stdin) may hold: 100 answers are a few
#: kilobytes, so a megabyte is a wrong file (or /dev/zero), not answers.
MAX_ANSWERS_BYTES = 1 << 20
#: The longest answer line --check reads.
MAX_LINE = 4096


def _read_bounded(f, source: str) -> str:
    """At most MAX_ANSWERS_BYTES of text from ``f``; more is refused."""
    text = f.read(MAX_ANSWERS_BYTES + 1)
    if len(text) > MAX_ANSWERS_BYTES:
        raise S2ptError(f"--answers {source}: more than {MAX_ANSWERS_BYTES:,} characters; "
                        f"an answers file holds one short line per question")
    return text


@command("drill", help="seeded IPA -> PA translation drills (OSTEP style)", args=[
    arg("-s", "--seed", type=seed64, default=0, help="the random seed, 0 .. 2**64-1 (default 0)"),
    arg("-n", "--n", type=_int, default=5, metavar="K",
        help="how many accesses to ask about (default 5)"),
    arg("--ipa-bits", type=_int, default=36, metavar="B",
        help="guest IPA size, 32..48 (default 36)"),
    arg("--granule", type=_int, default=4096, metavar="G",
        help="4096, 16384 or 65536; 4K, 16K, 64K also work (default 4096)"),
    arg("-c", "--solve", action="store_true", help="show the worked walks"),
    arg("--answers", metavar="FILE",
        help="check your answers, one per line in question order ('-' reads stdin): "
             "a PA (0x800001234) or a fault, kind and level ('translation 3')"),
    arg("--check", action="store_true",
        help="ask each question on stdin and check your answer as you give it"),
])
def drill(args) -> int:
    """Print a stage-2 table and some guest accesses; with -c, the answers.

    For each access: split the IPA into one index per level, read the
    descriptor at each level from the dump, and say where the walk ends: an
    output PA, or a translation, access flag or permission fault at a level.

    With --answers FILE or --check, your answers are checked instead: each
    is right or wrong, and a wrong one gets the right answer, the rule and
    the worked walk.  Exit status 0 when every answer is right, 1 when one
    is wrong, 2 on bad input (a file that cannot be read, an answer that
    cannot be parsed, too few or too many answers).
    """
    from ..drill import Drill, parse_answer, read_answers
    if args.solve and (args.answers or args.check):
        raise S2ptError("-c shows the answers; it cannot be combined with --answers or --check")
    if args.answers and args.check:
        raise S2ptError("--answers reads a file and --check asks on stdin: use one of them")
    d = Drill(seed=args.seed, n=args.n, ipa_bits=args.ipa_bits, granule=args.granule)
    if args.answers:
        if args.answers == "-":
            try:
                text, source = _read_bounded(sys.stdin, "-"), "stdin"
            except UnicodeDecodeError as e:
                raise S2ptError(f"--answers -: stdin is not text ({e.reason})") from None
        else:
            try:
                with open(args.answers, encoding="utf-8") as f:
                    text = _read_bounded(f, args.answers)
            except (OSError, UnicodeDecodeError) as e:
                raise S2ptError(f"--answers {args.answers}: cannot read it "
                                f"({getattr(e, 'strerror', None) or e})") from None
            source = args.answers
        verdicts = d.check(read_answers(text, d.n, source))
        sys.stdout.write(d.args()[0] + "\n\n" + d.report(verdicts))
        return 0 if all(v.right for v in verdicts) else 1
    sys.stdout.write(d.problem())
    if args.solve:
        sys.stdout.write("\nAnswers (-c):\n\n" + d.solution())
        return 0
    if not args.check:
        sys.stdout.write("\n(Work out each walk, then run again with -c to see the answers,\n"
                         " or with --check to answer one by one and be told which are right.)\n")
        return 0
    sys.stdout.write("\nAnswer each access: a PA (0x...) or a fault, kind and level "
                     "('translation 3').\n")
    verdicts = []
    for number, (ipa, access) in enumerate(d.questions, 1):
        while True:
            sys.stdout.write(f"Q{number}  IPA {d._ipa_str(ipa)} ({access})? ")
            sys.stdout.flush()
            try:
                line = sys.stdin.readline(MAX_LINE + 1)
            except UnicodeDecodeError as e:
                raise S2ptError(f"stdin is not text ({e.reason})") from None
            if not line:
                raise S2ptError(f"stdin ended after {number - 1} of {d.n} answers")
            if len(line) > MAX_LINE:
                raise S2ptError(f"answer {number}: a line longer than {MAX_LINE:,} "
                                f"characters is not an answer")
            if not sys.stdin.isatty():
                sys.stdout.write(line.strip() + "\n")         # echo what was read
            try:
                given = parse_answer(line)
                break
            except S2ptError as e:
                sys.stdout.write(f"  ({e}; try again)\n")
        v = d.check_one(number, given)
        verdicts.append(v)
        sys.stdout.write("    right\n" if v.right else
                         "    wrong\n" + "\n".join(d.verdict_lines(v)[1:]) + "\n")
    good = sum(v.right for v in verdicts)
    sys.stdout.write(f"\nScore: {good}/{len(verdicts)} right.\n")
    return 0 if good == len(verdicts) else 1
