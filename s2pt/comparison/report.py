"""The comparison in words and pictures: the verdict grid, the cost table,
the "which to choose" table, the mutation score, and the cost plots.

Each function takes a :class:`~s2pt.comparison.Comparison`; its methods of
the same names call them.  Every plot draws each scheme in its own colour
and marker (:data:`STYLES`, keyed by scheme name), whichever schemes have
data, so that a scheme looks the same in every plot and every notebook.
"""

from __future__ import annotations

import zlib

from ..errors import S2ptError
from .costs import METRICS, SHOWN

__all__ = ["kind_abbrev", "STYLES", "style", "verdict_table", "verdict_markdown", "costs_table",
           "choose_table", "mutation_table", "text", "plot"]

#: scheme -> (colour, marker) in every plot: one fixed look per scheme, by
#: name, so that a scheme without data in one plot shifts nobody else's.
STYLES = {
    "none": ("#d62728", "x"),                    # red: the counterfactual
    "rcu": ("#1f77b4", "o"),
    "hyp-lock": ("#7f7f7f", "s"),
    "write-lock": ("#8c564b", "D"),
    "rwlock": ("#2ca02c", "^"),
    "rwlock-collapse-write": ("#bcbd22", "v"),
    "rwlock-relax-page": ("#17becf", "<"),
    "rcu-rfc": ("#9467bd", "P"),
    "refcount": ("#ff7f0e", "X"),
    "refcount-revalidate": ("#e377c2", "*"),
}
#: For a scheme not in STYLES (one added since): picked by a hash of its
#: name, so it too keeps one look everywhere.
_SPARE_COLOURS = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd")
_SPARE_MARKERS = ("h", "p", "8", "d", ">", "H")


def style(scheme: str) -> tuple:
    """(colour, marker) of ``scheme`` in every plot (:data:`STYLES`)."""
    if scheme in STYLES:
        return STYLES[scheme]
    h = zlib.crc32(scheme.encode())
    return (_SPARE_COLOURS[h % len(_SPARE_COLOURS)],
            _SPARE_MARKERS[(h // len(_SPARE_COLOURS)) % len(_SPARE_MARKERS)])


def kind_abbrev(kind: str) -> str:
    """"use-after-free" -> "UAF", "lost-update" -> "LU", "leak" -> "leak"."""
    parts = kind.split("-")
    return "".join(p[0] for p in parts).upper() if len(parts) > 1 else kind[:5]


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{int(v)}" if v == int(v) else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def verdict_table(cmp, width: int = 100) -> str:
    """The grid (rows: schemes; columns: scenarios, numbered), the legend,
    then each cell in words."""
    out = ["VERDICTS: every scheme against every scenario (exhaustive stateful search)", ""]
    idx = {sc: k + 1 for k, sc in enumerate(cmp.scenarios)}
    sw = max([len(s) for s in cmp.schemes] + [6])
    cw = max([len(c.short()) for c in cmp.cells.values()] + [5]) + 1
    per = max(1, (width - sw - 2) // cw)
    for start in range(0, len(cmp.scenarios), per):
        cols = cmp.scenarios[start:start + per]
        out.append(f"{'scheme':<{sw}}  " + "".join(f"{'[' + str(idx[c]) + ']':<{cw}}"
                                                   for c in cols).rstrip())
        for s in cmp.schemes:
            out.append(f"{s:<{sw}}  " + "".join(f"{cmp.cells[(s, c)].short():<{cw}}"
                                                 for c in cols).rstrip())
        out.append("")
    out.append("Scenarios:")
    for sc in cmp.scenarios:
        out.append(f"  [{idx[sc]}] {sc}")
    kinds = sorted({k for c in cmp.cells.values() for k in c.found})
    out.append("Legend: safe = nothing found, search complete, and the race arose; "
               "no race = nothing found")
    out.append("        because the race never arises (no run reached the race window); "
               "safe? = nothing")
    out.append("        found, search NOT complete;")
    out.append("        - = not declared; n/a = could not be built; ! = declaration mismatch")
    if kinds:
        out.append("        " + ", ".join(f"{kind_abbrev(k)} = {k}" for k in kinds))
    out.append("")
    out.append("Cells:")
    undeclared: dict = {}
    for s in cmp.schemes:
        for sc in cmp.scenarios:
            c = cmp.cells[(s, sc)]
            if c.status == "not-declared":
                undeclared.setdefault((s, c.why), []).append(sc)
                continue
            mark = "  !!" if c.mismatches else ""
            out.append(f"  {s} x {sc}: {c.text()}{mark}")
            for cmd in dict.fromkeys(c.replay_command(k) for k in c.found):
                out.append(f"      replay: {cmd}")
    if undeclared:
        out.append("")
        out.append("Not declared (the explorer refuses these, and says why):")
        for (s, why), scs in undeclared.items():
            out.append(f"  {s} x {', '.join(scs)}: {why or '(the scenario gives no reason)'}")
    out.append("")
    mm = cmp.mismatches
    if mm:
        out.append("!" * 72)
        out.append(f"!!! DECLARATION MISMATCH in {len(mm)} place(s): a scenario's declared "
                   f"outcome did not hold")
        for s, sc, m in mm:
            out.append(f"!!!   {s} x {sc}: {m}")
        out.append("!" * 72)
    else:
        out.append(f"Declarations: all {len(cmp.declared_cells)} declared cells agree "
                   f"with their scenarios' Sometimes/Never declarations.")
    return "\n".join(out)


def verdict_markdown(cmp) -> str:
    """The verdict grid as a Markdown table for a notebook, transposed
    so that it fits a column: rows are scenarios, columns schemes, each
    cell :meth:`Cell.short` ("safe", "UAF", "-" for not declared, ...),
    then the legend of the abbreviations used."""
    out = ["| scenario | " + " | ".join(f"`{s}`" for s in cmp.schemes) + " |",
           "|---|" + "|".join(":-:" for _ in cmp.schemes) + "|"]
    for sc in cmp.scenarios:
        out.append(f"| `{sc}` | " + " | ".join(cmp.cells[(s, sc)].short()
                                               for s in cmp.schemes) + " |")
    kinds = sorted({k for c in cmp.cells.values() for k in c.found})
    out.append("")
    out.append("safe: nothing found, exhaustive search complete; -: the scenario does not "
               "declare the scheme; " + "; ".join(f"{kind_abbrev(k)}: {k}" for k in kinds)
               + "; +N: N more kinds; !: the declaration did not hold.")
    return "\n".join(out)


def costs_table(cmp) -> str:
    """Rows: scheme x vCPU count; columns: the verdict, then each cost
    (mean over the clean runs; the JSON has min, max and every run)."""
    if not cmp.costs:
        return "COSTS: not measured"
    st = cmp.settings
    scene = st.get("cost_scene") or st.get("cost_scenario", "")
    out = [f"COSTS measured in the model, with 1..{max(cmp.vcpus)} vCPUs: {scene}.",
           f"Each number: the mean over the clean runs of {st.get('runs')} recorded runs (the "
           f"default schedule, then seeded random and PCT schedules, seed {st.get('seed')}); "
           f"min, max and every run are in --json.",
           "Verdict: an exhaustive search at every vCPU count (interchangeable readers are "
           "searched once); ? = nothing found, but the search hit its state bound.", ""]
    sw = max(len(s) for s in cmp.schemes + ["scheme"])
    w = 9
    out.append(f"{'scheme':<{sw}}  n  {'verdict':<10}"
               + "".join(f"{'(' + str(k + 1) + ')':>{w}}" for k in range(len(SHOWN))))
    notes = []
    for s in cmp.schemes:
        rows = 0
        for n in cmp.vcpus:
            c = cmp.costs.get((s, n))
            if c is None:
                continue
            if not c.supported:
                notes.append(f"  {s} at {n} vCPU{'s' if n > 1 else ''}: {c.verdict}")
                continue
            v = ("+".join(kind_abbrev(k) for k in c.found) if c.found
                 else "safe" if c.complete else "safe?")
            out.append(f"{s:<{sw}}  {n}  {v:<10}"
                       + "".join(f"{_fmt(c.mean(m)):>{w}}" for m in SHOWN))
            rows += 1
        if rows:
            out.append("")
    out.append("Columns:")
    for k, m in enumerate(SHOWN):
        out.append(f"  ({k + 1}) {METRICS[m][0]}: {METRICS[m][1]}")
    bounded = [(s, n, c) for (s, n), c in cmp.costs.items() if c.supported and not c.complete]
    if bounded:
        out.append("Searches that hit their state bound (a violation found is still one):")
        out += [f"  {s} at {n} vCPUs: {c.verdict} ({c.mode}, {c.seconds:.0f} s)"
                for s, n, c in bounded]
    if notes:
        out.append("Not measured:")
        out += notes
    if cmp.logging_refaults:
        out.append("")
        out.append("Guest refaults caused by turning dirty logging off (logging_off_refaults: "
                   "a sequential VM, 2 blocks; the guest re-reads the 16 pages it read while "
                   "logging):")
        out.append("  " + ", ".join(f"{s}: {v}" for s, v in cmp.logging_refaults.items()))
    return "\n".join(out)


def choose_table(cmp) -> str:
    if not cmp.costs:
        return "WHICH TO CHOOSE: needs the costs (compare(costs=True))"
    rows = cmp.choose()
    nw = max(len(r[0]) for r in rows)
    sw = max([len(", ".join(r[1]) or "(none)") for r in rows] + [7])
    out = [f"WHICH TO CHOOSE, generated from the verdicts and the costs at "
           f"{cmp.top_vcpus} vCPUs (safe schemes: {', '.join(cmp.safe_schemes()) or 'none'})",
           "", f"{'need':<{nw}}  {'schemes':<{sw}}  rule"]
    for need, schemes, rule in rows:
        out.append(f"{need:<{nw}}  {', '.join(schemes) or '(none)':<{sw}}  {rule}")
    return "\n".join(out)


def mutation_table(cmp) -> str:
    if cmp.mutations is None:
        return ""
    caught, total = cmp.mutation_score
    out = [f"MUTATIONS: {caught}/{total} caught", ""]
    for m in cmp.mutations:
        found = ", ".join(m.found) or "nothing"
        out.append(f"  {m.status:<12} {m.name}: {m.scheme} + {', '.join(m.bugs) or '-'} on "
                   f"{m.scenario}; expected {m.expected}, found {found}"
                   + (f" ('{m.schedule}')" if m.schedule else "")
                   + (f" [{m.message}]" if m.message else ""))
    return "\n".join(out)


def text(cmp) -> str:
    """Everything in words: the verdicts, the costs and the "which to
    choose" table (with costs), the mutations (when searched), the timings."""
    parts = [verdict_table(cmp)]
    if cmp.costs:
        parts += [costs_table(cmp), choose_table(cmp)]
    if cmp.mutations is not None:
        parts.append(mutation_table(cmp))
    t = cmp.timings
    parts.append("Timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()))
    return "\n\n".join(parts)


def plot(cmp, metrics=SHOWN, ncols: int | None = None):
    """A matplotlib Figure: each metric against the vCPU count, one line
    per scheme in its own colour and marker (:func:`style`; mean over the
    clean runs; a hollow marker where the verdict's search hit its state
    bound).  ``ncols``: panels per row (default 4, or fewer metrics); 2
    gives a figure that fits a notebook's column."""
    if not cmp.costs:
        raise S2ptError("plot: this comparison has no costs (compare(costs=True))")
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise S2ptError(f"metrics={bad!r}: unknown; choose from {', '.join(METRICS)}")
    if ncols is not None and (not isinstance(ncols, int) or isinstance(ncols, bool)
                              or ncols < 1):
        raise S2ptError(f"ncols={ncols!r}: a positive number of panels per row")
    from matplotlib.figure import Figure        # no pyplot: no backend, no global state
    from matplotlib.lines import Line2D
    ncol = min(ncols or 4, len(metrics))
    nrow = (len(metrics) + ncol - 1) // ncol
    fig = Figure(figsize=(3.6 * ncol, 3.0 * nrow + 0.6), layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    drawn = []
    for ax, m in zip(axes, metrics):
        for s in cmp.schemes:
            pts = [(n, c.mean(m), c.complete) for (sch, n), c in sorted(cmp.costs.items())
                   if sch == s and c.mean(m) is not None]
            if not pts:
                continue
            colour, marker = style(s)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color=colour)
            for x, y, complete in pts:
                ax.plot([x], [y], marker, color=colour,
                        markerfacecolor=colour if complete else "none")
            if s not in drawn:
                drawn.append(s)
        ax.set_title(METRICS[m][0], fontsize=10)
        ax.set_xlabel("vCPUs")
        ax.set_xticks(cmp.vcpus)
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    # One legend entry per scheme drawn anywhere, in the comparison's order.
    handles = [Line2D([], [], color=style(s)[0], marker=style(s)[1], label=s)
               for s in cmp.schemes if s in drawn]
    fig.legend(handles=handles, loc="outside lower center",
               ncol=max(1, min(len(handles), 2 * ncol)))
    fig.suptitle(f"Costs per scheme, {cmp.settings.get('cost_scenario', '')} "
                 f"(hollow: search hit its state bound)", fontsize=11)
    return fig
