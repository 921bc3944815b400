"""A drill's text fits a notebook's output column (about 95 characters): a longer line
wraps in the middle of a word there.  Lines are broken where a reader would break them."""

import s2pt
from s2pt.drill import WIDTH


def test_no_drill_line_is_wider_than_a_notebook_column():
    assert WIDTH <= 95
    for seed in range(40):
        for kw in ({}, {"ipa_bits": 32}, {"granule": 16384}, {"granule": 65536}, {"ipa_bits": 48}):
            d = s2pt.Drill(seed=seed, **kw)
            for text in (d.problem(), d.solution(), str(d)):
                wide = [line for line in text.splitlines() if len(line) > WIDTH]
                assert not wide, (seed, kw, wide)


def test_a_long_walk_line_continues_with_the_decoded_descriptor():
    text = s2pt.Drill(seed=0).solution()
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("  level 3:") and "page of" not in line
             and "block of" not in line and "table at" not in line)
    assert lines[i + 1].lstrip().startswith(("page of", "block of", "invalid", "reserved", "locked"))
