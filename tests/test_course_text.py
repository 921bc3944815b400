"""The course's text keeps its own promises (no kernel needed).

* **Cross-references.**  Every "notebook 06, section 4" (and "section 4"
  inside a notebook, and every link to a notebook or one of its headings)
  in notebooks/, solutions/ and exercises/ names a section that exists.
  Each one is also listed, with the title of the section it pointed to when
  someone last read it, in ``tests/data/crossrefs.tsv``: renumber a
  notebook's sections and the references that now point elsewhere fail
  until a person has read them again.  After reading, rewrite the list with
  ``python tests/test_course_text.py --write-crossrefs``.
* **One glossary.**  Notebook 00's glossary has every term the course
  defines.  A notebook that defines a term in a table (``| Term | Meaning
  ...``) uses the glossary's meaning word for word; the notebook the
  glossary names as "first in" defines it in bold (``**term**``), and no
  earlier notebook (00, which holds the glossary, aside) uses it.
* **Stated times.**  The reading time each notebook states ("Time: ...")
  is the one notebook 00's route and the syllabus in docs/instructors.md
  give.  A run-time claim in prose has the one form the benchmark
  ``benchmarks/notebook_times.py`` checks against a measured run ("(about
  12 s)", "(about 10-15 s)"), in the markdown cell just before the code cell
  it is about; vaguer phrases ("a few seconds", "well under a second") are
  refused.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXERCISES = sorted((ROOT / "solutions").glob("*.ipynb")) + sorted((ROOT / "exercises").glob("*.ipynb"))
CROSSREFS = Path(__file__).resolve().parent / "data" / "crossrefs.tsv"


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _markdown(path: Path) -> list[tuple[int, str]]:
    return [(i, "".join(c["source"])) for i, c in enumerate(_cells(path))
            if c["cell_type"] == "markdown"]


def _sections(path: Path) -> dict[int, str]:
    """{section number: title} from the notebook's "## N. Title" headings."""
    out = {}
    for _, text in _markdown(path):
        for m in re.finditer(r"^#{2,3} (\d+)\. (.+?)\s*$", text, re.M):
            out[int(m.group(1))] = m.group(2)
    return out


def _headings(path: Path) -> set[str]:
    """Jupyter's anchors for the notebook's headings ("## 5. The walk" -> "5.-The-walk")."""
    out = set()
    for _, text in _markdown(path):
        for m in re.finditer(r"^#+ (.+?)\s*$", text, re.M):
            out.add(m.group(1).replace(" ", "-"))
    return out


def _notebook(nn: str) -> Path | None:
    hits = [p for p in NOTEBOOKS if p.name.startswith(f"{nn}-")]
    return hits[0] if hits else None


def _numbers(text: str) -> list[int]:
    """"4", "4 and 6", "2, 6 and 7", "2 to 5", "3–6" -> the section numbers."""
    text = text.strip()
    m = re.fullmatch(r"(\d+)\s*(?:to|–|-)\s*(\d+)", text)
    if m:
        return list(range(int(m.group(1)), int(m.group(2)) + 1))
    return [int(n) for n in re.findall(r"\d+", text)]


# A reference to another notebook's sections, and a bare one inside a notebook.
OTHER = re.compile(r"[Nn]otebook (\d\d)(?:'s)?,? sections? (\d+(?:(?:,| and| to|–|-) ?\d+)*)")
SAME = re.compile(r"(?<![Nn]otebook \d\d, )(?<![Nn]otebook \d\d,)(?<!\d\d, )\b[Ss]ections? "
                  r"(\d+(?:(?:,| and| to|–|-) ?\d+)*)")
LINK = re.compile(r"\]\((\d\d-[\w-]+\.ipynb)(?:#([^)\s]+))?\)")


def crossrefs() -> list[tuple[str, str, str]]:
    """(source, reference as written, the title it points to, or a problem) for every
    cross-reference in the course's markdown."""
    out = []
    for path in NOTEBOOKS + EXERCISES:
        rel = path.relative_to(ROOT).as_posix()
        own = path if path in NOTEBOOKS else None
        for i, text in _markdown(path):
            text = re.sub(r"`[^`]*`", "", text)                 # code is not prose
            spans = []

            def where(title, i=i):
                # the cell only for a problem: inserting a cell elsewhere changes nothing
                return f"{rel} cell {i}" if title.startswith("MISSING") else rel

            for m in OTHER.finditer(text):
                spans.append(m.span())
                target = _notebook(m.group(1))
                for n in _numbers(m.group(2)):
                    title = (_sections(target).get(n) if target else None) or \
                        f"MISSING: notebook {m.group(1)} has no section {n}"
                    out.append((where(title), f"notebook {m.group(1)}, section {n}", title))
            for m in SAME.finditer(text):
                if any(a <= m.start() < b for a, b in spans):
                    continue
                for n in _numbers(m.group(1)):
                    title = (_sections(own).get(n) if own else None) or \
                        f"MISSING: {rel} has no section {n}" + ("" if own else
                                                                 " (say which notebook)")
                    out.append((where(title), f"section {n}", title))
            for m in LINK.finditer(text):
                target = ROOT / "notebooks" / m.group(1)
                if not target.exists():
                    title = f"MISSING: no notebook {m.group(1)}"
                elif m.group(2) and m.group(2) not in _headings(target):
                    title = f"MISSING: {m.group(1)} has no heading #{m.group(2)}"
                else:
                    title = m.group(2) or target.stem
                out.append((where(title), f"link {m.group(1)}" + (f"#{m.group(2)}" if m.group(2) else ""),
                            title))
    return out


def _tsv(rows) -> str:
    return "".join("\t".join(r) + "\n" for r in rows)


def test_every_cross_reference_names_a_section_that_exists():
    missing = [r for r in crossrefs() if r[2].startswith("MISSING")]
    assert not missing, "\n".join("  ".join(r) for r in missing)


def test_cross_references_were_read_and_still_point_where_they_did():
    now = _tsv(sorted(set(crossrefs())))
    was = CROSSREFS.read_text() if CROSSREFS.exists() else ""
    if now != was:
        old, new = set(was.splitlines()), set(now.splitlines())
        report = ["cross-references changed; read each one below, then run "
                  "`python tests/test_course_text.py --write-crossrefs`:"]
        report += [f"  now:  {line}" for line in sorted(new - old)]
        report += [f"  was:  {line}" for line in sorted(old - new)]
        raise AssertionError("\n".join(report[:60]))


# -- the glossary ------------------------------------------------------------------------

def _table_rows(text: str) -> list[list[str]]:
    """The rows of every markdown table in ``text`` whose first header cell is Term."""
    rows, in_terms = [], False
    for line in text.splitlines():
        if not line.startswith("|"):
            in_terms = False
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "Term":
            in_terms = True
        elif in_terms and not set(cells[0]) <= set("-: "):
            rows.append(cells)
    return rows


def _term(cell: str) -> str:
    m = re.fullmatch(r"\*\*(.+?)\*\*", cell)
    assert m, f"a term must be in bold: {cell!r}"
    return m.group(1)


def glossary() -> dict[str, tuple[str, str]]:
    """{term: (meaning, first-in notebook number)} from notebook 00's Glossary section."""
    (start,) = [i for i, t in _markdown(NOTEBOOKS[0]) if t.startswith("## Glossary")]
    out = {}
    text = dict(_markdown(NOTEBOOKS[0]))[start]
    for cells in _table_rows(text):
        term, meaning, first = cells[0], cells[1], cells[-1]
        m = re.search(r"\b(\d\d)\b", first)
        assert m, f"glossary row {term}: 'first in' names no notebook: {first!r}"
        out[_term(term)] = (meaning, m.group(1))
    return out


#: terms that are also plain words, and the phrases in which they are used as such
PLAIN = {
    "split": ("split an ipa", "splits into", "ipa split", "splits every ipa", "splits off"),
    "backing": ("backing the ram",),
}
#: terms that are everyday English words: where the course first uses them is not checked
ORDINARY = {"step", "schedule", "page", "table", "block", "level", "publish", "subscribe"}


def _prose(text: str) -> str:
    """Markdown without its code (fenced blocks and `spans`)."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", text, flags=re.S))


def _mentions(term: str, text: str) -> bool:
    t = term.strip("`")
    if t.lower() in ORDINARY:
        return False
    if t != term:                                 # a name in code: look for it in code too
        prose = text
    else:
        prose = _prose(text)
    pat = re.compile(r"(?<![\w-])" + re.escape(t) + r"(?![\w-])", re.I)
    for m in pat.finditer(prose):
        around = prose[max(0, m.start() - 20):m.end() + 20].lower()
        if any(p in around for p in PLAIN.get(t.lower(), ())):
            continue
        return True
    return False


def test_the_glossary_is_the_one_definition_of_every_term():
    g = glossary()
    assert g, "notebook 00 has no glossary table"
    problems = []
    for path in NOTEBOOKS[1:]:
        for i, text in _markdown(path):
            for cells in _table_rows(text):
                term = _term(cells[0])
                if term not in g:
                    problems.append(f"{path.name} cell {i}: {term!r} is not in notebook 00's glossary")
                elif " ".join(cells[1].split()) != " ".join(g[term][0].split()):
                    problems.append(f"{path.name} cell {i}: {term!r} is defined differently from "
                                    f"the glossary:\n    here:     {cells[1]}\n    glossary: {g[term][0]}")
    assert not problems, "\n".join(problems)


def test_each_term_is_defined_at_its_first_use():
    g = glossary()
    problems = []
    for term, (_, first) in g.items():
        if first == "00":
            continue
        path = _notebook(first)
        if path is None:
            problems.append(f"{term!r}: no notebook {first}")
            continue
        bold = re.compile(r"\*\*`?" + re.escape(term.strip("`")) + r"`?s?\*\*", re.I)
        if not any(bold.search(t) for _, t in _markdown(path)):
            problems.append(f"{term!r}: notebook {first} does not define it (in bold)")
        for earlier in NOTEBOOKS[1:]:
            if earlier.name[:2] >= first:
                break
            hits = [i for i, t in _markdown(earlier) if _mentions(term, t)]
            if hits:
                problems.append(f"{term!r} is used in {earlier.name} (cells {hits}) before "
                                f"notebook {first} defines it")
    assert not problems, "\n".join(problems)


# -- stated times -------------------------------------------------------------------------

READING = re.compile(r"^Time: (?:about )?(.+?)\.?$", re.M)


def _reading_time(path: Path) -> str:
    for _, text in _markdown(path):
        m = READING.search(text)
        if m:
            return m.group(1).replace("minutes", "min").strip()
    raise AssertionError(f"{path.name} states no reading time ('Time: ...')")


def test_reading_times_agree_everywhere():
    route = {}
    for _, text in _markdown(NOTEBOOKS[0]):
        for m in re.finditer(r"^\| (\d\d) \| [^|]+\| [^|]+\| (?:about )?([^|]+?) \| \[", text, re.M):
            route[m.group(1)] = m.group(2).strip()
    for path in NOTEBOOKS:
        nn = path.name[:2]
        assert route.get(nn) == _reading_time(path), (path.name, route.get(nn), _reading_time(path))
    syllabus = (ROOT / "docs" / "instructors.md").read_text()
    for nn, t in route.items():
        m = re.search(rf"^\| \d \| {nn} `[\w-]+` \|.*\| (?:about )?([^|]+?) \|$", syllabus, re.M)
        assert m, f"docs/instructors.md: no syllabus row for notebook {nn}"
        assert m.group(1).split(" + ")[0].strip() == t, (nn, m.group(1), t)


def test_exercise_times_agree_with_the_syllabus():
    syllabus = (ROOT / "docs" / "instructors.md").read_text()
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        nn = path.name[:2]
        first = "".join(_cells(path)[0]["source"])
        m = re.search(r"About (\d+) minutes", first)
        assert m, f"{path.name} states no time"
        row = re.search(rf"^\|.*exercise {nn} `[\w-]+`.*\| (?:[^|]* \+ )?(\d+) min \|$", syllabus, re.M)
        assert row, f"docs/instructors.md: no syllabus row for exercise {nn}"
        assert row.group(1) == m.group(1), (path.name, row.group(1), m.group(1))


#: a run-time claim as the benchmark reads it: "(about 12 s)", "(about 10-15 s)"
CLAIM = re.compile(r"\(about (\d+(?:\.\d+)?)(?:[–-](\d+(?:\.\d+)?))? (s|min)\b")
VAGUE = re.compile(r"\b(?:a few|a couple of|several|well under a|under a|about a|in) "
                   r"(?:seconds?|minutes?|second)\b|\btakes? (?:seconds|minutes)\b", re.I)


def run_time_claims(path: Path) -> list[tuple[int, float, float]]:
    """(code cell index, low, high seconds) for every run-time claim in the notebook."""
    cells = _cells(path)
    out = []
    for i, c in enumerate(cells):
        if c["cell_type"] != "markdown":
            continue
        for m in CLAIM.finditer("".join(c["source"])):
            lo = float(m.group(1))
            hi = float(m.group(2) or lo)
            scale = 60 if m.group(3) == "min" else 1
            out.append((i + 1, lo * scale, hi * scale))
    return out


def test_run_time_claims_have_the_one_checked_form():
    problems = []
    for path in NOTEBOOKS:
        cells = _cells(path)
        for i, text in _markdown(path):
            for m in VAGUE.finditer(text):
                problems.append(f"{path.name} cell {i}: {m.group(0)!r}: say '(about N s)' before "
                                "the cell, or let the cell print its own time")
        for code, lo, hi in run_time_claims(path):
            if code >= len(cells) or cells[code]["cell_type"] != "code":
                problems.append(f"{path.name} cell {code - 1}: a run-time claim not followed by "
                                "the code cell it is about")
    assert not problems, "\n".join(problems)


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-crossrefs"]:
        CROSSREFS.parent.mkdir(exist_ok=True)
        CROSSREFS.write_text(_tsv(sorted(set(crossrefs()))))
        print(f"wrote {CROSSREFS}")
    else:
        for row in sorted(set(crossrefs())):
            print("\t".join(row))
