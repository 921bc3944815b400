"""``python -m s2pt drill``: seeded translation drills, OSTEP style."""

from __future__ import annotations

import sys

from .registry import arg, command, integer as _int, seed64


@command("drill", help="seeded IPA -> PA translation drills (OSTEP style)", args=[
    arg("-s", "--seed", type=seed64, default=0, help="the random seed, 0 .. 2**64-1 (default 0)"),
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
    from ..drill import Drill
    d = Drill(seed=args.seed, n=args.n, ipa_bits=args.ipa_bits, granule=args.granule)
    sys.stdout.write(d.problem())
    if args.solve:
        sys.stdout.write("\nAnswers (-c):\n\n" + d.solution())
    else:
        sys.stdout.write("\n(Work out each walk, then run again with -c to see the answers.)\n")
    return 0
