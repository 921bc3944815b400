"""The front page stays a front page, and its ten lines of library run as written."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_the_front_page_keeps_to_what_a_newcomer_needs():
    assert len(README) < 8000, f"README.md is {len(README)} characters: move detail to docs/"
    for doc in ("architecture", "performance", "instructors"):
        assert f"(docs/{doc}.md)" in README and (ROOT / "docs" / f"{doc}.md").is_file()


def test_the_library_snippet_runs(capsys):
    (snippet,) = re.findall(r"## The library, in ten lines\n\n```python\n(.*?)```", README, re.S)
    assert len(snippet.strip().splitlines()) <= 10
    exec(compile(snippet, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "use-after-free" in out and "PA 0x800001234" in out.replace("_", "")


def test_the_course_table_lists_every_notebook():
    names = {p.stem.split("-", 1)[1] for p in (ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb")}
    listed = set(re.findall(r"^\| \d\d \| `([\w-]+)` \|", README, re.M))
    assert listed == names


def test_the_race_diagram_is_what_replay_prints(capsys):
    """The README's kernel-style race diagram is the CLI's output for its command, as is."""
    import shlex

    from s2pt.cli import main

    (cmd, shown) = re.findall(r"```text\n\$ (python -m s2pt replay .*?)\n(.*?)```", README, re.S)[0]
    args = shlex.split(cmd)[3:]                      # after "python -m s2pt"
    import s2pt
    shortest = s2pt.explore("collapse-vs-fault", "none", details=False).found["use-after-free"]
    assert args[-1] == shortest.schedule_text        # "the shortest schedule s2pt.explore found"
    assert main(args) == 1                           # a violation: exit 1
    assert capsys.readouterr().out.rstrip("\n") == shown.rstrip("\n")
    assert "^^^ USE-AFTER-FREE ^^^" in shown and max(len(line) for line in shown.splitlines()) <= 80


def test_architecture_counts_and_names_what_the_registry_has():
    """docs/architecture.md's mutation count and the scenarios and schemes it names exist."""
    from s2pt.scenarios import MUTATIONS, SCENARIOS
    from s2pt.schemes import SCHEMES

    doc = (ROOT / "docs" / "architecture.md").read_text()
    words = {16: "Sixteen", 17: "Seventeen", 18: "Eighteen", 19: "Nineteen", 20: "Twenty"}
    assert f"{words[len(MUTATIONS)]} mutations (`s2pt.scenarios.MUTATIONS`)" in doc
    rows = re.findall(r"^\| `([\w-]+)` \|", doc, re.M)
    assert set(rows) == set(SCHEMES), set(rows) ^ set(SCHEMES)
    for name in ("host-fault-vs-donate-shared", "collapse-vs-fault-4", "collapse-vs-commit"):
        assert f"`{name}`" in doc and name in SCENARIOS
