"""``draw``: the stage-2 table tree as a Graphviz picture.

Each *table page* is one node, drawn as a small table: a header (which
level, its physical address, the IPA it starts at, its ``page_count``) and
one row per entry -- or per run of entries, because a table has 512 (4K),
2048 (16K) or 8192 (64K) of them::

    +-----------------------------------------------+
    | L3 table  PA 0x80004000                       |
    | IPA 0x40400000+ · refcount 4                  |
    +-----------------------------------------------+
    | entry 0: 4K page RW- normal → PA 0x900000000  |
    | entries 1–2: 2x4K pages RWX normal → PA 0x... |
    | entries 3–511: invalid                        |
    +-----------------------------------------------+

* A **table entry** is its own row, with an arrow to the child table's node.
  Blocks and pages are rows, not nodes: they point outside the tables.
* **Runs fold**: empty entries ("entries 3–511: invalid"), leaves with equal
  attributes and consecutive output addresses ("entries 0–511: 512x4K pages
  RWX normal → PA 0x...+"), identical invalid entries.  ``fold=False`` keeps
  one row per non-empty entry (empty runs still fold).
* The VTTBR_EL2 node points at the PGD pages.  A concatenated PGD is one
  node per page; empty PGD pages off the highlighted path fold into one.
* **Big tables stay readable.**  At most ``max_tables`` tables below the PGD
  are drawn, at most ``max_children`` per parent, taken in IPA order; the
  rest fold into rows such as "entries 4–511: 508 tables (not drawn)" and a
  summary node per level, "… 32 753 more level-3 tables".
* **Tall tables fold too.**  A table whose entries do not fold into runs
  (pKVM's host after donating every other page: page, owner, page, ...)
  would be hundreds of rows tall.  At most ``max_rows`` rows are drawn per
  table; the rest of the table becomes one row, "entries 40–511: 472 more
  rows (max_rows=24)".  Rows on the highlighted path, marked rows and rows
  pointing at drawn tables are always kept.
* ``highlight=ipa`` colours the translation path: every entry the MMU reads
  for that IPA (the tables on it are always drawn), and a final node with
  the result -- the PA, or the fault and its level, as
  :meth:`Stage2.translate` reports it for a read.
* ``marks={ptep: label}`` tags entries by their physical address (a walker's
  position, a LOCKED entry): the entry gets its own row, tinted, with the
  label.  ``tables={pa: label}`` tags table pages: reachable ones get the
  label in their header; an *unlinked* subtree (e.g. waiting for its RCU
  grace period) is drawn as a detached node, and a *freed* page as a grey
  stub.  For an unlinked page the level comes from ``page->private`` (set
  by stage2_free_unlinked_table) or from a ``(label, level)`` value.  A
  freed page's stub lists the marks on its entries ("entry 1: vCPU1 next:
  READ_ONCE"): a stale walker's position stays visible.
* ``alert=pa`` is where a checker fired: an entry (its row gets a ✖) or a
  table page; that table is always drawn, in red.

The picture is built by one ``TABLE_PRE | LEAF`` visitor on the one walker
(with a numpy bulk function for runs of leaves), written as a
``graphviz.Digraph`` (the graphviz package quotes every label), and laid
out by :mod:`s2pt.render`, which works without a system ``dot``.
"""

from __future__ import annotations

from collections import Counter

import graphviz

from . import pgtable as pt
from .errors import Fault, S2ptError
from .geometry import kvm_get_vttbr
from .ops import page_count, run
from .pgtable import LEAF, TABLE_PRE, Walker, WalkData, kvm_pgtable_walk
from .render import Drawing
from .vmprint import (EMPTY, INVALID, LEAF_KIND, TABLE, check_pgt, entry_kind, leaf_pa,
                      leaf_segment, leaf_text, similar, split_runs)

__all__ = ["draw", "translation_path"]

HIDDEN = 4          # a table entry whose child is not drawn
FOLDED = 5          # rows beyond max_rows, folded into one

PATH_FILL = "#fff2cc"
PATH_EDGE = "#c0392b"
MARK_FILL = "#cfe2ff"
OK_FILL = "#c8f7c5"
FAULT_FILL = "#f8c8c8"


def _n(k: int) -> str:
    """32753 -> "32 753"."""
    return f"{k:,}".replace(",", " ")


class Row:
    __slots__ = ("first", "last", "kind", "first_pte", "last_pte", "count", "ipa",
                 "ptep", "child", "special", "note")

    def __init__(self, first, kind, first_pte, last_pte, count, ipa, ptep,
                 child=None, special=False, note=None):
        self.first, self.last, self.kind = first, first + count - 1, kind
        self.first_pte, self.last_pte, self.count = first_pte, last_pte, count
        self.ipa, self.ptep, self.child = ipa, ptep, child
        self.special, self.note = special, note

    @property
    def port(self) -> str:
        return f"e{self.first}"


class TableNode:
    """One drawn table page and its (folded) rows."""

    def __init__(self, pa, level, ipa, refcount, root_page=None, detached=None):
        self.pa, self.level, self.ipa, self.refcount = pa, level, ipa, refcount
        self.root_page = root_page      # index in the concatenated PGD, or None
        self.detached = detached        # why a non-root node has no parent edge
        self.rows: list[Row] = []
        self.pend: Row | None = None
        self.children = 0
        self.label: str | None = None

    @property
    def id(self) -> str:
        return f"t{self.pa:x}"

    def flush(self):
        if self.pend is not None:
            self.rows.append(self.pend)
            self.pend = None


class DrawState:
    def __init__(self, pgt, fold, max_tables, max_children, path, marks, tables, alert=None):
        self.pgt = pgt
        self.fold = fold
        self.max_tables = max_tables
        self.max_children = max_children
        self.path = path                      # [(ptep, level, old, addr)]
        self.path_pteps = {p[0] for p in path}
        self.marks = marks                    # ptep -> label
        self.specials = sorted(self.path_pteps | set(marks))
        self.table_labels = tables            # pa -> label
        self.alert = alert                    # entry or table page where a checker fired
        self.alert_page = None if alert is None else alert & ~(pgt.page_size - 1)
        # Tables drawn whenever their parent is: the path, labelled tables,
        # and the tables holding marked entries.
        self.forced = ({p[2] & pgt.addr_mask for p in path[:-1]} | set(tables)
                       | {m & ~(pgt.page_size - 1) for m in marks}
                       | ({self.alert_page} if alert is not None else set()))
        self.forced -= {page.pa for page in pgt.pgd_pages}
        self.nodes: dict[int, TableNode] = {}
        self.drawn = 0                        # non-root, non-forced tables drawn
        self.hidden: Counter = Counter()      # level -> tables not drawn
        self.unlinked = False                 # walking a detached subtree

    # -- rows ------------------------------------------------------------
    def feed(self, node: TableNode, idx, ipa, kind, first_pte, last_pte, count, ptep,
             child=None):
        special = ptep in self.path_pteps or ptep in self.marks
        p = node.pend
        gran = self.pgt.granule_size[node.level]
        if (p is not None and not special and not p.special and kind != TABLE
                and p.kind == kind and p.last + 1 == idx
                and (self.fold or kind in (EMPTY, HIDDEN))
                and (kind == HIDDEN or similar(kind, p.last_pte, first_pte, gran,
                                               self.pgt.addr_mask))):
            p.last += count
            p.count += count
            p.last_pte = last_pte
            return
        node.flush()
        row = Row(idx, kind, first_pte, last_pte, count, ipa, ptep, child, special,
                  self.marks.get(ptep))
        if special or kind == TABLE:
            node.rows.append(row)
        else:
            node.pend = row

    def want_child(self, node: TableNode | None, child: int) -> bool:
        if node is None:
            return False
        if child in self.forced:
            return True
        if self.drawn < self.max_tables and node.children < self.max_children:
            self.drawn += 1
            return True
        return False


def cap_rows(node: TableNode, max_rows: int) -> None:
    """Keep at most ``max_rows`` rows of ``node`` (plus the rows that must
    stay: path, marks, drawn children); fold each stretch of the others into
    one FOLDED row, whose ``count`` is how many rows it stands for."""
    if len(node.rows) <= max_rows:
        return
    budget = max(max_rows - 1, 0)           # leave room for one folded row
    budget -= sum(1 for r in node.rows if r.special or r.kind == TABLE)
    out: list[Row] = []
    for r in node.rows:
        if r.special or r.kind == TABLE or budget > 0:
            if not (r.special or r.kind == TABLE):
                budget -= 1
            out.append(r)
            continue
        last = out[-1] if out else None
        if last is not None and last.kind == FOLDED:
            last.last, last.count = r.last, last.count + 1
        else:
            out.append(Row(r.first, FOLDED, r.first_pte, r.last_pte, 1, r.ipa, r.ptep))
            out[-1].last = r.last
    node.rows = out


def _page_of(pgt, ptep):
    return ptep & ~(pgt.page_size - 1), (ptep & (pgt.page_size - 1)) >> 3


def draw_walker(ctx, visit):
    """TABLE_PRE: decide whether the child is drawn, add its row; LEAF: add
    the entry to its table's rows (if that table is drawn)."""
    st: DrawState = ctx.arg
    pgt = ctx.pgt
    table, idx = _page_of(pgt, ctx.ptep)
    node = st.nodes.get(table)
    if visit == TABLE_PRE:
        child = ctx.old & pgt.addr_mask
        if st.want_child(node, child):
            rc = yield page_count(child)
            # Inside an unlinked subtree addresses are offsets, not IPAs.
            st.nodes[child] = TableNode(child, ctx.level + 1,
                                        None if st.unlinked else ctx.addr, rc)
            node.children += 1
            st.feed(node, idx, ctx.addr, TABLE, ctx.old, ctx.old, 1, ctx.ptep, child)
        else:
            st.hidden[ctx.level + 1] += 1
            if node is not None:
                st.feed(node, idx, ctx.addr, HIDDEN, ctx.old, ctx.old, 1, ctx.ptep, child)
        return 0
    if node is not None:
        st.feed(node, idx, ctx.addr, entry_kind(ctx.old, ctx.level), ctx.old, ctx.old, 1,
                ctx.ptep)
    return 0


def draw_bulk(data, pgt, table: int, level: int, idx: int) -> int:
    """Bulk twin of draw_walker's LEAF case; stops before marked/path entries."""
    r = leaf_segment(data, pgt, table, level, idx)
    if r is None:
        return 0
    _, seg = r
    st: DrawState = data.walker.arg
    node = st.nodes.get(table)
    n = len(seg)
    if node is not None:
        lo, hi = table + 8 * idx, table + 8 * (idx + n)
        for sp in st.specials:
            if lo <= sp < hi:
                n = (sp - lo) >> 3
                if n == 0:
                    return 0          # the per-entry path draws the special entry
                seg = seg[:n]
                break
    gran = pgt.granule_size[level]
    base = data.addr & ~(gran - 1)
    if node is not None:
        kinds, starts = split_runs(seg, gran, pgt.addr_mask, st.fold)
        for s, e in zip(starts, starts[1:] + [n]):
            ipa = data.addr if s == 0 else base + s * gran
            st.feed(node, idx + s, ipa, int(kinds[s]), int(seg[s]), int(seg[e - 1]), e - s,
                    table + 8 * (idx + s))
    data.addr = base + n * gran
    return n


def _parent_walker(ctx, visit):
    ctx.arg[ctx.old & ctx.pgt.addr_mask] = ctx.ptep & ~(ctx.pgt.page_size - 1)
    return 0
    yield


def _skip_leaves(data, pgt, table, level, idx):
    """Bulk function for a TABLE_PRE-only walk: step over runs of leaves."""
    r = leaf_segment(data, pgt, table, level, idx)
    if r is None:
        return 0
    n = len(r[1])
    gran = pgt.granule_size[level]
    data.addr = (data.addr & ~(gran - 1)) + n * gran
    return n


def table_parents(pgt, bulk: bool = True) -> dict[int, int]:
    """{table page PA: PA of the table page holding its entry}, for every
    table reachable from the PGD (a TABLE_PRE walk)."""
    out: dict[int, int] = {}
    walker = Walker(_parent_walker, out, TABLE_PRE, _skip_leaves)
    run(kvm_pgtable_walk(pgt, 0, 1 << pgt.ia_bits, walker, bulk), pgt.machine)
    return out


# ---------------------------------------------------------------------------
# The translation path
# ---------------------------------------------------------------------------

def _path_walker(ctx, visit):
    ctx.arg.append((ctx.ptep, ctx.level, ctx.old, ctx.addr))
    return 0
    yield


def translation_path(pgt, ipa: int) -> list[tuple[int, int, int, int]]:
    """The entries the MMU reads to translate ``ipa``: [(ptep, level, pte,
    addr)], root first, ending with the leaf or the invalid entry.  A
    ``TABLE_PRE | LEAF`` walk of the one page containing ``ipa``."""
    check_pgt(pgt, "translation_path")
    if not isinstance(ipa, int) or isinstance(ipa, bool) or not 0 <= ipa < 1 << pgt.ia_bits:
        raise S2ptError(f"highlight={ipa!r}: an IPA is an integer in [0, {1 << pgt.ia_bits:#x}) "
                        f"for this {pgt.ia_bits}-bit IPA space")
    out: list = []
    page = ipa & ~(pgt.page_size - 1)
    run(kvm_pgtable_walk(pgt, page, pgt.page_size, Walker(_path_walker, out, TABLE_PRE | LEAF)),
        pgt.machine)
    return out


def _result_text(pgt, ipa, path) -> tuple[str, bool]:
    translate = getattr(pgt, "translate", None)
    ptep, level, pte, _ = path[-1]
    if translate is not None:
        try:
            t = translate(ipa)
        except Fault as f:
            return (f"IPA {ipa:#x}\n{f.kind} fault, level {f.level}\n({f.reason})", False)
        kind = "page" if t.level == 3 else "block"
        return (f"IPA {ipa:#x}\n→ PA {t.pa:#x}\nlevel {t.level} {kind}, "
                f"{t.prot or '-'}, {t.memattr}", True)
    if entry_kind(pte, level) == LEAF_KIND:
        size = pgt.granule_size[level]
        return (f"IPA {ipa:#x}\n→ PA {leaf_pa(pte, level, pgt) | (ipa & (size - 1)):#x}", True)
    return (f"IPA {ipa:#x}\ntranslation fault, level {level}", False)


# ---------------------------------------------------------------------------
# DOT
# ---------------------------------------------------------------------------

def _row_text(pgt, node: TableNode, row: Row) -> str:
    if row.count == 1:
        where = f"entry {row.first}"
    else:
        where = f"entries {row.first}–{row.last}"
    lvl = node.level
    if row.kind == EMPTY:
        what = "invalid"
    elif row.kind == TABLE:
        what = f"table → L{lvl + 1} {row.child:#x}"
    elif row.kind == HIDDEN:
        what = (f"table → {row.child:#x} (not drawn)" if row.count == 1
                else f"{row.count} tables (not drawn)")
    elif row.kind == FOLDED:
        where = f"entries {row.first}–{row.last}"
        what = f"{row.count} more rows (not drawn: max_rows={row.note})"
        return f"{where}: {what}"
    elif row.kind == INVALID:
        what = leaf_text(row.first_pte, lvl, row.count, pgt)
    else:
        plus = "+" if row.count > 1 else ""
        what = (f"{leaf_text(row.first_pte, lvl, row.count, pgt)} → PA "
                f"{leaf_pa(row.first_pte, lvl, pgt):#x}{plus}")
    text = f"{where}: {what}"
    if row.note:
        text += f"  ◀ {row.note}"
    return text


def _rec(s: str) -> str:
    """Escape text for a Graphviz record field (the renderers without expat
    cannot lay out HTML labels, so nodes are records)."""
    for ch in "\\{}|<>\"":
        s = s.replace(ch, "\\" + ch)
    return s


def _node_dot(g, pgt, node: TableNode, st: DrawState, on_path: bool,
              rankdir: str = "LR") -> None:
    """Add one table page's node (a record: header, one field per row) to ``g``.
    A record lays its fields out across the rank direction, so top to
    bottom (``TB``) wraps them in braces to keep the rows stacked."""
    if node.root_page is not None:
        title = (f"PGD page {node.root_page} of {pgt.geom.pgd_pages} (level {node.level})"
                 if pgt.geom.pgd_pages > 1 else f"PGD (level {node.level})")
    else:
        title = f"L{node.level} table"
    sub = []
    if node.ipa is not None:
        sub.append(f"IPA {node.ipa:#x}+")
    sub.append(f"refcount {node.refcount}")
    head = [f"{title}  PA {node.pa:#x}", " · ".join(sub)]
    if node.detached:
        head.append(node.detached)
    if node.label:
        head.append(f"◀ {node.label}")
    fields = ["\\n".join(_rec(h) for h in head)]
    for row in node.rows:
        text = _row_text(pgt, node, row)
        if row.ptep in st.path_pteps:
            text = "▶ " + text
        if st.alert is not None and row.ptep == st.alert and row.count == 1:
            text = "✖ " + text
        fields.append(f"<{row.port}> {_rec(text)}\\l")
    attrs = {}
    styles = []
    if node.pa == st.alert_page:
        attrs.update(color=PATH_EDGE, penwidth="2.5", fillcolor=FAULT_FILL)
        styles.append("filled")
    elif on_path:
        attrs.update(color=PATH_EDGE, penwidth="2", fillcolor=PATH_FILL)
        styles.append("filled")
    elif node.label:
        attrs.update(color="#2a6fdb", penwidth="2", fillcolor=MARK_FILL)
        styles.append("filled")
    if node.detached:
        styles.append("dashed")
    if styles:
        attrs["style"] = ",".join(styles)
    label = "|".join(fields)
    g.node(node.id, label if rankdir == "LR" else "{" + label + "}", **attrs)


def draw(pgt, highlight: int | None = None, fold: bool = True, max_tables: int = 12,
         max_children: int = 4, *, max_rows: int = 24, marks: dict | None = None,
         tables: dict | None = None, alert: int | None = None,
         bulk: bool | None = None, fold_note: str | None = None) -> Drawing:
    """A Graphviz drawing of the table tree (an :class:`s2pt.render.Drawing`).

    ``highlight``: an IPA whose translation path is coloured.  ``fold``:
    fold runs of similar leaves.  ``max_tables``/``max_children``: how many
    tables below the PGD are drawn, in total and per parent (tables on the
    path or named in ``marks``/``tables`` are always drawn).  ``max_rows``: how
    many rows a table node keeps before the rest fold into one row.
    ``marks={ptep: label}`` and ``tables={pa: label or (label, level)}``
    annotate entries and table pages; ``alert`` is the entry or table page
    where a checker fired, drawn in red (see the module docstring).
    ``fold_note`` replaces "not drawn: max_tables=..." in the summary of
    the tables left out (a caller that lists them elsewhere says where).
    """
    check_pgt(pgt, "draw")
    for name, v in (("max_tables", max_tables), ("max_children", max_children),
                    ("max_rows", max_rows)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise S2ptError(f"draw: {name}={v!r} must be a non-negative integer")
    marks = dict(marks or {})
    for k in marks:
        if not isinstance(k, int) or k & 7:
            raise S2ptError(f"draw: marks key {k!r} must be the physical address of an "
                            f"entry (an 8-byte aligned int)")
    tables = dict(tables or {})
    for k in tables:
        if not isinstance(k, int) or k & (pgt.page_size - 1):
            raise S2ptError(f"draw: tables key {k!r} must be the physical address of a "
                            f"table page ({pgt.page_size // 1024}K aligned)")
    if alert is not None and (not isinstance(alert, int) or isinstance(alert, bool)
                              or alert & 7 or alert < 0):
        shown = f"{alert:#x}" if isinstance(alert, int) and not isinstance(alert, bool) \
            and alert >= 0 else repr(alert)
        raise S2ptError(f"draw: alert={shown} must be the physical address of an entry "
                        f"or a table page (an 8-byte aligned int)")
    path = translation_path(pgt, highlight) if highlight is not None else []
    if bulk is None:
        bulk = not pgt.machine.watched
    st = DrawState(pgt, bool(fold), max_tables, max_children, path, marks,
                   {k: (v[0] if isinstance(v, tuple) else v) for k, v in tables.items()},
                   alert)
    if marks or tables or alert is not None:
        # A table that must be drawn needs its ancestors drawn too.
        parents = table_parents(pgt, bool(bulk))
        for pa in list(st.forced):
            while pa in parents:
                pa = parents[pa]
                st.forced.add(pa)
        st.forced -= {page.pa for page in pgt.pgd_pages}
    walker = Walker(draw_walker, st, TABLE_PRE | LEAF, draw_bulk)

    def walk_all():
        for i, page in enumerate(pgt.pgd_pages):
            rc = yield page_count(page.pa)
            ipa = i << pgt.granule_shift[pgt.start_level - 1]
            st.nodes[page.pa] = TableNode(page.pa, pgt.start_level, ipa, rc, root_page=i)
        return (yield from kvm_pgtable_walk(pgt, 0, 1 << pgt.ia_bits, walker, bool(bulk)))

    ret = run(walk_all(), pgt.machine)
    if ret:
        raise S2ptError(f"draw: kvm_pgtable_walk returned {ret}")
    for node in list(st.nodes.values()):
        node.flush()

    # Tables that must be shown but are not reachable from the PGD:
    # unlinked subtrees (walked on their own, as free_unlinked does) and
    # freed pages (a stub: reading them would be a use-after-free).
    stubs = []
    detached = []
    unknown = []
    for pa in sorted(st.forced - set(st.nodes)):
        page = pgt.mm.pages.get(pa >> pgt.page_shift)
        if page is None:
            raise S2ptError(f"draw: table page {pa:#x} is not a simulated page")
        if page.freed:
            stubs.append((pa, "freed (poisoned)"))
            continue
        given = tables.get(pa)
        if isinstance(given, tuple) and len(given) == 2:
            level = given[1]
        elif page.private is not None:
            level = page.private + 1          # set_page_private(): the parent entry's level
        else:
            unknown.append(pa)
            continue
        if not isinstance(level, int) or isinstance(level, bool) \
                or not pgt.start_level < level <= 3:
            raise S2ptError(f"draw: tables[{pa:#x}] level {level!r} must be in "
                            f"{pgt.start_level + 1}..3")
        detached.append((level, pa))
    # Upper levels first, so that a forced table inside an unlinked subtree
    # is drawn as part of it rather than on its own.
    for level, pa in sorted(detached):
        if pa in st.nodes:
            continue
        rc = run(_one(page_count(pa)), pgt.machine)
        st.nodes[pa] = TableNode(pa, level, None, rc,
                                 detached="unlinked: not reachable from the PGD")
        # kvm_pgtable_stage2_free_unlinked() walks a detached subtree the
        # same way: __kvm_pgtable_walk over one block's worth of addresses.
        wd = WalkData(walker, 0, 0, pgt.granule_size[level - 1], bool(bulk))
        st.unlinked = True
        ret = run(getattr(pt, "__kvm_pgtable_walk")(wd, pgt, pa, level), pgt.machine)
        if ret:
            raise S2ptError(f"draw: walk of unlinked table {pa:#x} returned {ret}")
        for node in list(st.nodes.values()):
            node.flush()
    stubs += [(pa, "not reachable from the PGD, level unknown")
              for pa in unknown if pa not in st.nodes]
    for pa, label in st.table_labels.items():
        if pa in st.nodes:
            st.nodes[pa].label = label
    for node in st.nodes.values():
        cap_rows(node, max_rows)
        for row in node.rows:
            if row.kind == FOLDED:
                row.note = max_rows

    # Left to right, unless that is too wide for the column and top to
    # bottom is narrower (Drawing picks when it renders).
    # (Both are built now: the table may change before the picture is shown.)
    return Drawing(_dot(pgt, st, highlight, stubs, fold_note),
                   narrower=_dot(pgt, st, highlight, stubs, fold_note, rankdir="TB"))


def _one(op):
    return (yield op)


def _label(text: str) -> str:
    """A plain (non-record) label: backslashes kept, each line break as the
    escape ``\\n`` (the graphviz package quotes the rest)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _dot(pgt, st: DrawState, highlight, stubs, fold_note: str | None = None,
         rankdir: str = "LR"):
    """The picture as a ``graphviz.Digraph``: VTTBR_EL2, the PGD pages, the
    drawn tables with an edge per table entry, stubs for freed pages, a
    summary node per level for the tables not drawn, and the walk's result.
    ``rankdir``: ``LR``, each level a column to the right of its parent
    (the default), or ``TB``, each level a row below it (narrower for a
    deep tree with few tables per level)."""
    g = graphviz.Digraph("stage2")
    g.attr("graph", rankdir=rankdir, nodesep="0.2", ranksep="0.5" if rankdir == "LR" else "0.35",
           fontname="Helvetica")
    g.attr("node", shape="record", fontname="Helvetica", fontsize="10")
    g.attr("edge", arrowsize="0.6")
    vttbr = kvm_get_vttbr(pgt.pgd, pgt.mmu.vmid)
    head = (f"VTTBR_EL2 {vttbr:#018x}\nVMID {pgt.mmu.vmid} · {pgt.ia_bits}-bit IPA · "
            f"{pgt.page_size // 1024}K granule")
    g.node("vttbr", _label(head), shape="box", style="rounded,filled", fillcolor="#eeeeee")
    path_tables = {st.path[0][0] & ~(pgt.page_size - 1)} if st.path else set()
    path_tables |= {p[2] & pgt.addr_mask for p in st.path[:-1]}
    edge_on = {"color": PATH_EDGE, "penwidth": "2.2"}

    # PGD pages: fold runs of empty, unmarked pages off the path.
    roots = [n for n in st.nodes.values() if n.root_page is not None]
    i = 0
    root_ids = []
    while i < len(roots):
        n = roots[i]
        j = i

        def boring(m):
            return (len(m.rows) == 1 and m.rows[0].kind == EMPTY and m.pa not in path_tables
                    and m.label is None and not m.rows[0].special)
        while j < len(roots) and boring(roots[j]):
            j += 1
        if j - i >= 2:
            nid = f"pgd_empty_{i}"
            g.node(nid, _label(f"PGD pages {i}–{j - 1}: all entries invalid"), shape="box",
                   style="dashed")
            root_ids.append((nid, False))
            i = j
            continue
        _node_dot(g, pgt, n, st, n.pa in path_tables, rankdir)
        root_ids.append((n.id, n.pa in path_tables))
        i += 1
    for nid, on in root_ids:
        g.edge("vttbr", nid, **(edge_on if on else {}))
    if len(root_ids) > 1:
        with g.subgraph() as same:
            same.attr(rank="same")
            for nid, _ in root_ids:
                same.node(nid)

    for n in st.nodes.values():
        if n.root_page is None:
            _node_dot(g, pgt, n, st, n.pa in path_tables, rankdir)
    for pa, why in stubs:
        label = st.table_labels.get(pa)
        text = f"table page PA {pa:#x}\n{why}" + (f"\n◀ {label}" if label else "")
        # Its entries cannot be drawn (reading them is the bug); their marks can.
        for ptep in sorted(m for m in st.marks if m & ~(pgt.page_size - 1) == pa):
            cross = "✖ " if ptep == st.alert else ""
            text += f"\n{cross}entry {(ptep - pa) >> 3}: ◀ {st.marks[ptep]}"
        red = pa == st.alert_page
        extra = {"color": PATH_EDGE, "penwidth": "2.5"} if red else {}
        g.node(f"t{pa:x}", _label(text), shape="box", style="filled,dashed",
               fillcolor=FAULT_FILL if red else "#dddddd", **extra)

    more_ids = {}
    for lvl, k in sorted(st.hidden.items()):
        nid = f"more{lvl}"
        more_ids[lvl] = nid
        note = fold_note or (f"not drawn: max_tables={st.max_tables}, "
                             f"max_children={st.max_children}")
        g.node(nid, _label(f"… {_n(k)} more level-{lvl} tables\n({note})"), shape="note",
               style="dashed")
    for n in st.nodes.values():
        for row in n.rows:
            src = f"{n.id}:{row.port}:e"
            if row.kind == TABLE:
                on = row.ptep in st.path_pteps
                head = f"t{row.child:x}:w" if rankdir == "LR" else f"t{row.child:x}:n"
                g.edge(src, head, **(edge_on if on else {}))
            elif row.kind == HIDDEN and n.level + 1 in more_ids:
                g.edge(src, more_ids[n.level + 1], style="dashed", color="#888888")

    if st.path:
        text, ok = _result_text(pgt, highlight, st.path)
        g.node("result", _label(text), shape="box", style="rounded,filled",
               fillcolor=OK_FILL if ok else FAULT_FILL)
        ptep, level, _, _ = st.path[-1]
        table, idx = _page_of(pgt, ptep)
        node = st.nodes.get(table)
        if node is not None:
            row = next((r for r in node.rows if r.ptep == ptep), None)
            if row is not None:
                g.edge(f"{node.id}:{row.port}:e", "result", **edge_on)
    return g
