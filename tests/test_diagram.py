"""The kernel-style race diagram (s2pt.sim.report.race_diagram), on every
shipped counterexample: the shortest schedule of every violation the course
ships in notebooks/data/compare.json (each scheme x scenario, and each
mutation), replayed.  Each diagram must fit an email (80 columns, about 25
lines), name the kernel functions on both sides, and name no function that
the model does not attribute to the kernel.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

import s2pt
from s2pt.cli import main
from s2pt.explorer import replay_command
from s2pt.ops import DISPLAY, OPS
from s2pt.pgtable import MmOps
from s2pt.scenarios import MUTATIONS, SCENARIOS
from s2pt.sim.report import LINES, MODEL_ONLY, WIDTH, race_diagram
from s2pt.sim.search import SOMETIMES, parse_schedule

DATA = Path(__file__).resolve().parents[1] / "notebooks" / "data" / "compare.json"

#: "About 25 lines": the layout aims for LINES; a three-CPU race with deep
#: stacks on every side may take a line or two more.
MAX_LINES = LINES + 2

#: Kernel functions the diagrams name, each checked against the kernel's
#: sources: arch/arm64/kvm/hyp/pgtable.c and arch/arm64/kvm/mmu.c (v6.10),
#: arch/arm64/kvm/hyp/nvhe/mem_protect.c (pKVM; __host_update_page_state
#: since v6.10), and Android's common kernel for its host stage 2
#: (stage2_coalesce_walk_table_post, host_set_owner_walker).  An
#: independent list: a name the model makes up fails here even if the
#: model calls it a kernel function.
KERNEL_FUNCTIONS = {
    "user_mem_abort", "handle_access_fault", "kvm_pgtable_stage2_map",
    "kvm_pgtable_stage2_relax_perms", "kvm_pgtable_stage2_mkyoung",
    "kvm_pgtable_stage2_unmap", "kvm_pgtable_stage2_split", "kvm_pgtable_stage2_set_owner",
    "kvm_pgtable_stage2_free_unlinked", "kvm_pgtable_walk", "kvm_pgtable_walk_begin",
    "kvm_pgtable_walk_end", "stage2_map_walker", "stage2_map_walk_table_pre",
    "stage2_map_walk_leaf", "stage2_map_walker_try_leaf", "stage2_try_break_pte",
    "stage2_try_set_pte", "stage2_make_pte", "stage2_attr_walker", "stage2_update_leaf_attrs",
    "stage2_free_walker", "stage2_unmap_walker", "stage2_split_walker",
    "stage2_free_unlinked_table", "stage2_free_unlinked_table_rcu_cb",
    "kvm_tlb_flush_vmid_range", "kvm_pgtable_stage2_create_unlinked", "rcu_do_batch",
    "host_stage2_set_owner_locked", "host_stage2_idmap", "host_stage2_idmap_locked",
    "handle_host_mem_abort", "__pkvm_host_donate_guest", "__pkvm_host_reclaim_page",
    "__host_update_page_state", "stage2_coalesce_walk_table_post", "host_set_owner_walker",
    "kvm_unmap_gfn_range", "kvm_mmu_split_huge_pages", "kvm_handle_guest_abort",
    # kvm_pgtable_get_leaf() and its visitor (a re-executed access after
    # -EAGAIN reads the table so); v6.1's map walker tore the old subtree
    # down in its TABLE_POST visitor.
    "kvm_pgtable_get_leaf", "leaf_walker", "stage2_map_walk_table_post",
}


def _cases() -> list:
    """(scenario, scheme, bugs, schedule, kinds) of every shipped counterexample."""
    d = json.loads(DATA.read_text())
    out: dict = {}
    for c in d["cells"]:
        for kind, f in (c.get("found") or {}).items():
            out.setdefault((c["scenario"], c["scheme"], tuple(c["bugs"]), f["schedule"]),
                           set()).add(kind)
    for m in d["mutations"]:
        # A mutation's schedule is that of the kind it must show (or, if
        # another was caught, the first found).
        kind = m["expected"] if m["expected"] in m["found"] else m["found"][0]
        out.setdefault((m["scenario"], m["scheme"], tuple(m["bugs"]), m["schedule"]),
                       set()).add(kind)
    return [k + (tuple(sorted(v)),) for k, v in out.items()]


CASES = _cases()


def test_the_cases_are_every_declared_counterexample_and_every_mutation():
    """compare.json holds every Sometimes of every scenario and every
    mutation, so the cases below are all of them."""
    d = json.loads(DATA.read_text())
    assert {m["name"] for m in d["mutations"]} == set(MUTATIONS)
    found = {(c["scenario"], c["scheme"], k) for c in d["cells"] for k in c.get("found") or {}}
    for name, sc in SCENARIOS.items():
        for scheme, kinds in sc.expect.items():
            for kind, exp in kinds.items():
                if exp == SOMETIMES:
                    assert (name, scheme, kind) in found, (name, scheme, kind)
    assert len(CASES) >= 40


def _allowed() -> set:
    """Function names the model attributes to the kernel: every operation
    of the op table, mm_ops's slots, and the functions of the kernel paths
    (their kernel_path names, and the generator functions of the modules
    that keep kernel names), less the model's own helpers."""
    import inspect
    from s2pt import kvm, pgtable, pkvm, schemes, tlb
    names = set(OPS) | {f"mm_ops->{s}" for s in MmOps.__slots__}
    names |= {v for v in DISPLAY.values() if v and " " not in v}
    for mod in (pgtable, kvm, pkvm, schemes, tlb):
        for _n, fn in inspect.getmembers(mod, inspect.isfunction):
            if inspect.isgeneratorfunction(fn):
                names.add(fn.__name__)
    return names - set(MODEL_ONLY)


ALLOWED = _allowed()


def function_names(text: str) -> set:
    """Every name a diagram writes as a call: ``name(``."""
    return set(re.findall(r"([A-Za-z_][\w]*(?:->[A-Za-z_]\w*)?)\(", text))


def columns(w, text: str) -> dict:
    """Each CPU's lines of the diagram: cpu -> [line]."""
    lines = text.splitlines()
    offs, head = {}, set()
    for i, a in enumerate(w.actors):
        for n, line in enumerate(lines[1:8], 1):
            j = line.find(f"{a.name}: ")
            if j >= 0 and (j == 0 or line[j - 1] == " ") and i not in offs:
                offs[i] = j
                head.add(n)
    out = {i: [] for i in offs}
    starts = sorted(offs.items(), key=lambda kv: kv[1])
    body = max(head) + 1
    while body < len(lines) and lines[body].startswith("  ") and not lines[body].strip().endswith(
            ")") and "(" not in lines[body]:
        body += 1                        # a header wrapped onto more lines
    for line in lines[body:]:
        if not line.strip() or line.startswith("***") or line.startswith("---"):
            continue
        k = len(line) - len(line.lstrip())
        owner = [c for c, o in starts if o <= k]
        if owner:
            out[owner[-1]].append(line)
    return out


@pytest.mark.parametrize("scenario,scheme,bugs,schedule,kinds", CASES,
                         ids=[f"{c[0]}/{c[1]}/{c[3] or 'default'}" for c in CASES])
def test_every_counterexample_diagram_fits_an_email(scenario, scheme, bugs, schedule, kinds):
    # A livelock's lasso (stem and one loop) then loops on: a live run
    # reports it at its bound, here a few hundred steps on, not 20,000.
    bound = len(parse_schedule(schedule)) + 200 if "livelock" in kinds else None
    w = s2pt.replay(scenario, scheme, schedule, bugs=bugs,
                    **({"max_steps": bound} if bound else {}))
    assert set(kinds) <= {v.kind for v in w.violations}
    for v in [None] + [x for x in w.violations if x.kind in kinds]:
        text = race_diagram(w, None if v is None else [v])
        lines = text.splitlines()
        assert max(map(len, lines)) <= WIDTH, text
        assert len(lines) <= MAX_LINES, text
        names = function_names(text)
        # pKVM's page_owner step carries the kernel function that records
        # the new owner (s2pt.checkers.page_owner): the op table renders it.
        owners = {re.match(r"\w+", e.op[3]).group(0) for e in w.events if e.op[0] == "page_owner"}
        assert names <= ALLOWED | owners, names - ALLOWED
        assert names <= KERNEL_FUNCTIONS | set(OPS) | {f"mm_ops->{s}" for s in MmOps.__slots__}, \
            names - KERNEL_FUNCTIONS
        # The scheme is labelled; a violation at a step is marked.
        assert lines[0].startswith(f"{scenario} under {scheme}")
        if v is not None and v.step is not None:
            assert f"^^^ {v.kind.upper()}" in text
        # Every CPU in the diagram has a kernel function or an operation
        # named under it: both sides of the race.
        for cpu, col in columns(w, text).items():
            assert any(re.search(r"\w\(", line) or "MMU reads" in line for line in col), \
                (w.actors[cpu].name, text)
        # No step numbers, no model page addresses, no folds, no poison.
        assert not re.search(r"\b0x8000[0-9a-f]{4}\b", text), text
        assert " x2" not in text and "poison" not in text and "0xaaaa" not in text


def test_collapse_vs_fault_names_what_a_reviewer_looks_for():
    w = s2pt.replay("collapse-vs-fault", "none", "0*5 1*5 0*1037 1")
    text = w.diagram()
    lines = text.splitlines()
    for fn in ("kvm_pgtable_stage2_map()", "stage2_map_walk_table_pre()",
               "mm_ops->free_unlinked_table()", "kvm_pgtable_stage2_relax_perms()",
               "stage2_attr_walker()", "stage2_try_break_pte()"):
        assert fn in text, fn
    assert "counterfactual" in lines[0]
    assert not re.search(r"\b1\d{3}\b", text)               # no step numbers like 1047

    def at(s):
        return next(i for i, line in enumerate(lines) if s in line)

    def indent(s):
        line = lines[at(s)]
        return len(line) - len(line.lstrip())
    # Each function's line comes before the operations it performs, indented
    # above them: the break's cmpxchg under stage2_try_break_pte().
    assert at("stage2_try_break_pte()") < at("cmpxchg(L2[0], L3 table -> LOCKED)")
    assert indent("stage2_try_break_pte()") < indent("cmpxchg(L2[0]")
    # The free is under mm_ops->free_unlinked_table(), not a stale descent.
    assert at("mm_ops->free_unlinked_table()") < at("put_page(L3 table) /* freed */")
    assert indent("mm_ops->free_unlinked_table()") < indent("put_page(L3 table)")
    # vCPU1 read the pointer before the break, and used it after the free.
    assert at("READ_ONCE(L2[0]) = L3 table") < at("cmpxchg(L2[0]") \
        < at("/* freed */") < at("READ_ONCE(L3[1])") < at("^^^ USE-AFTER-FREE ^^^")


def test_the_slice_holds_what_the_use_after_free_depends_on():
    """Independently of the slicer's rules: from the raw events, the page
    freed under the reader, its free, the unlink and the reader's pointer
    read are all in the slice."""
    from s2pt.sim.causal import causal_slice
    for sc, sch, bugs, sched, kinds in CASES:
        if "use-after-free" not in kinds:
            continue
        w = s2pt.replay(sc, sch, sched, bugs=bugs)
        v = next(x for x in w.violations if x.kind == "use-after-free")
        sl = causal_slice(w, [v])
        assert v.step in sl.steps
        frees = [step for step, _c, _p in w.free_log if step <= v.step]
        if frees:
            assert any(step in sl.steps for step in frees), (sc, sch)


def test_a_lasso_marks_where_the_cycle_starts():
    """A livelock found as a cycle (the explorer's lasso): the cycle's first
    step gets a marker line, and the stem shows what the cycle reads."""
    w = s2pt.world("collapse-vs-map", "rcu-rfc")
    for c in parse_schedule("1*9 0*40"):
        w.step(c)
    assert [e.op[0] for e in w.events[-2:]] == ["xchg", "cpu_relax"]
    k = len(w.events) - 2
    text = race_diagram(w, cycle_start=k)
    lines = text.splitlines()
    assert max(map(len, lines)) <= WIDTH
    i = lines.index("--- from here the last 2 steps repeat forever ---")
    after = "\n".join(lines[i + 1:])
    assert "xchg(L3[3], LOCKED) = LOCKED" in after and "cpu_relax()" in after
    # The entry stays LOCKED because vCPU1 broke it: that store is shown.
    assert "cmpxchg(L3[3], 0 -> LOCKED)" in "\n".join(lines[:i])


def test_replay_prints_the_diagram_a_wrapped_verdict_and_steps_on_request(capsys):
    args = ["replay", "collapse-vs-fault", "--scheme", "none", "--schedule", "0*5 1*5 0*1037 1"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert out.startswith("collapse-vs-fault under none")
    assert max(map(len, out.splitlines())) <= WIDTH
    assert "use-after-free" in out
    assert main(args + ["--steps"]) == 1
    steps = capsys.readouterr().out
    assert "1047" in steps and "READ_ONCE(L3[2..511]) x1019" in steps


def test_email_is_plain_text_with_sentences_diagram_and_a_command_that_replays(capsys):
    args = ["replay", "collapse-vs-fault", "--scheme", "none", "--schedule", "0*5 1*5 0*1037 1"]
    assert main(args + ["--email"]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(map(len, lines)) <= WIDTH
    assert out.isascii()
    assert lines[0] == "collapse-vs-fault: use-after-free under none"
    para = " ".join(lines[2:lines.index("", 2)])
    assert "kvm_pgtable_stage2_relax_perms()" in para and "use-after-free" in para
    assert s2pt.replay("collapse-vs-fault", "none", "0*5 1*5 0*1037 1").diagram() in out
    i = lines.index("Replay it with:")
    cmd = " ".join(line.strip().rstrip("\\").strip() for line in lines[i + 2:] if line.strip())
    argv = shlex.split(cmd)
    assert argv[:3] == ["python", "-m", "s2pt"]
    assert main(argv[3:]) == 1
    again = capsys.readouterr().out
    assert "^^^ USE-AFTER-FREE ^^^" in again


def test_replay_command_is_built_once():
    """The CLI, the comparison table, the HTML trace and the widget give the
    same command (s2pt.explorer.replay_command)."""
    from s2pt.comparison import Cell
    cmd = replay_command("collapse-vs-hw-walk-no-tlbi", "rcu", "0*5 1*3 0*10 2",
                         ["no-bbm-tlbi", "f6a27d6dc51b"])
    # The scenario's own bug is left out; the others are sorted.
    assert cmd == ("python -m s2pt replay collapse-vs-hw-walk-no-tlbi --scheme rcu "
                   "--schedule '0*5 1*3 0*10 2' --bug f6a27d6dc51b")
    cell = Cell("rcu", "collapse-vs-hw-walk-no-tlbi", "violation",
                found={"use-after-free": {"schedule": "0*5 1*3 0*10 2"}},
                bugs=["f6a27d6dc51b", "no-bbm-tlbi"])
    assert cell.replay_command() == cmd
    wrapped = replay_command("collapse-vs-fault", "none", "0*5 1*5 0*1037 1", width=60)
    assert all(len(line) <= 60 for line in wrapped.splitlines())
    assert wrapped.replace(" \\\n   ", "") == replay_command("collapse-vs-fault", "none",
                                                             "0*5 1*5 0*1037 1")


def test_explore_prints_within_80_columns(capsys):
    assert main(["explore", "collapse-vs-fault", "--scheme", "none"]) == 1
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= WIDTH
    assert "^^^ USE-AFTER-FREE ^^^" in out and "replay it:" in out
    cmd = out[out.index("replay it:"):].splitlines()[1:]
    assert cmd[0].startswith("python -m s2pt replay collapse-vs-fault --scheme none")
