"""Seeded stage-2 translation drills, in the format of OSTEP's
``paging-multilevel-translate.py``.

A drill is a small, realistic stage-2 table and a handful of guest accesses.
The problem shows what the MMU sees: VTCR_EL2, VTTBR_EL2 and a raw dump of
every table page reachable from VTTBR_EL2 (non-zero descriptors only).  For
each access you work out the walk by hand: split the IPA into indices, read
one descriptor per level, and say where the walk stops and why::

    >>> import s2pt
    >>> d = s2pt.Drill(seed=1)
    >>> print(d)                 # the problem: registers, dump, questions
    >>> print(d.solution())      # the worked walks (python -m s2pt drill -c)
    >>> d.answers()              # the same answers, as dicts, for graders

Same seed, same drill, on any machine: the table is built from
``random.Random(seed)`` alone (only ``randrange``, ``shuffle`` and
``choice``, whose results Python keeps stable across versions), through the
public :class:`~s2pt.Stage2` operations a VM's life would use: ``map`` of
blocks and pages, device mappings, ``wrprotect`` (dirty logging) and
``test_clear_young(mkold=True)`` (the MMU notifier's ageing, which clears AF).

The worked walk does *not* call ``translate``: it reads each descriptor with
``pgt.mem.read64`` at the address the walk visits and applies the
architecture's rules itself, in the order the MMU applies them (translation,
then access flag, then permission).  The tests check that it agrees with
``Stage2.translate`` on every question.

Model of the guest (stated once): accesses come from EL1, so an instruction
fetch is allowed when XN is 0b00 or 0b11; there is no FEAT_HAFDBS, so a clear
AF raises an Access flag fault rather than being set by hardware.
"""

from __future__ import annotations

import html
import random
from dataclasses import dataclass

from . import descriptor as d
from .descriptor import decode
from .errors import Fault, S2ptError
from .stage2 import Stage2

__all__ = ["Drill", "Step", "Walk", "ACCESSES"]

#: The accesses a question can ask about.  "exec" is an instruction fetch.
ACCESSES = ("read", "write", "exec")

#: Largest ``n`` a drill accepts: beyond this the questions start repeating
#: the same leaves and the point of a drill (one walk each, by hand) is lost.
MAX_QUESTIONS = 50

# Where the host's memory for the guest comes from.  Page-table pages live in
# s2pt's pool at 0x8000_0000 (memory.TABLE_POOL_BASE); guest RAM is taken from
# above 4 GiB and device (MMIO) pages from below 2 GiB, so no output address
# can be mistaken for a table page.
RAM_PA_BASE = 1 << 32
RAM_PA_SPAN = 1 << 36
MMIO_PA_BASE = 0x1000_0000
MMIO_PA_SPAN = 0x6000_0000


@dataclass(frozen=True)
class Step:
    """One descriptor read of a walk."""

    level: int
    table: int          # PA of the table page (the PGD page at the start level)
    index: int          # index of the descriptor in that page
    ptep: int           # PA of the descriptor: table + 8 * index
    pte: int            # the value read there
    decoded: d.Decoded

    def as_dict(self) -> dict:
        return {"level": self.level, "table": self.table, "index": self.index,
                "ptep": self.ptep, "pte": self.pte, "kind": self.decoded.kind}


@dataclass(frozen=True)
class Walk:
    """A walk done by hand: the steps and where it ended."""

    ipa: int
    access: str
    steps: tuple
    pa: int | None = None       # the output address, or None on a fault
    fault: str | None = None    # "translation", "access" or "permission"
    reason: str = ""

    @property
    def level(self) -> int:
        """The level of the last descriptor read: the leaf, or the faulting level."""
        return self.steps[-1].level

    @property
    def fsc(self) -> int | None:
        """ESR_EL2.FSC for a fault (kind base | level), as s2pt.Fault computes it."""
        return None if self.fault is None else Fault.FSC_BASE[self.fault] | (self.level & 3)

    def as_dict(self) -> dict:
        return {"ipa": self.ipa, "access": self.access, "pa": self.pa,
                "fault": self.fault, "level": self.level, "fsc": self.fsc,
                "trail": [s.as_dict() for s in self.steps]}


def _check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise S2ptError(f"{name}={value!r}: must be an integer")
    if value < lo or (hi is not None and value > hi):
        rng = f"from {lo} to {hi}" if hi is not None else f"at least {lo}"
        raise S2ptError(f"{name}={value!r}: must be {rng}")
    return value


def _round_robin(rng: random.Random, groups: dict, keys: list, k: int, skip=()) -> list:
    """Up to ``k`` items, one from each group in a shuffled order, then again."""
    keys = list(keys)
    rng.shuffle(keys)
    pools = {}
    for key in keys:
        pools[key] = [x for x in groups[key] if x not in skip]
        rng.shuffle(pools[key])
    out, depth = [], 0
    while len(out) < k and any(depth < len(pools[key]) for key in keys):
        for key in keys:
            if len(out) < k and depth < len(pools[key]):
                out.append(pools[key][depth])
        depth += 1
    return out


class Drill:
    """A seeded IPA -> PA exercise on a small random stage-2 table.

    Parameters
    ----------
    seed : int
        Everything random comes from ``random.Random(seed)``.
    n : int
        How many accesses to ask about (1..50); about half translate.
    ipa_bits : int
        Guest IPA size.  The default, 36 bits, gives three levels with the 4K
        granule and a one-page PGD, so the dump stays short; 32 bits shows
        concatenated PGD pages; 40 and up add levels.
    granule : int
        4096, 16384 or 65536.

    Attributes
    ----------
    pgt : Stage2
        The table the questions are about (use it, e.g. ``d.pgt.translate``).
    questions : list of (ipa, access)
    """

    def __init__(self, seed: int = 0, n: int = 5, ipa_bits: int = 36, granule: int = 4096):
        self.seed = _check_int("seed", seed, 0)
        self.n = _check_int("n", n, 1, MAX_QUESTIONS)
        self.pgt = Stage2(ipa_bits=ipa_bits, granule=granule)   # checks both
        self.geom = self.pgt.geom
        self.ipa_bits, self.granule = self.geom.ipa_bits, self.geom.granule
        rng = random.Random(self.seed)
        self._build(rng)
        self.questions = self._pick_questions(rng)
        self._walks = [self.walk(ipa, acc) for ipa, acc in self.questions]

    # -- building the table ----------------------------------------------------
    def _build(self, rng: random.Random) -> None:
        """Lay out a VM the way its life would: a run of RAM blocks, a slot of
        RAM pages next to it, a device page or two, and one stray page
        elsewhere; then write-protect something (dirty logging starts) and
        age something (the MMU notifier clears AF)."""
        pgt, g = self.pgt, self.geom
        gran = g.granule
        blk = g.granule_size(2)              # 2M / 32M / 512M: KVM's PMD-level block
        nslots = g.ipa_limit // blk
        used: set[int] = set()               # block slots taken (membership only)

        def free_slot() -> int:
            while True:
                s = rng.randrange(nslots)
                if s not in used:
                    used.add(s)
                    return s

        def ram_pa(align: int) -> int:
            return RAM_PA_BASE + rng.randrange(RAM_PA_SPAN // align) * align

        # RAM: one or two consecutive blocks, then a slot of 4K pages right
        # after them (so both hang off the same next-level table).
        nblk = 1 + rng.randrange(2)
        first = rng.randrange(nslots - nblk)
        for s in range(first, first + nblk + 1):
            used.add(s)
        blocks = []
        for i in range(nblk):
            ipa = (first + i) * blk
            pgt.map(ipa, blk, ram_pa(blk), prot=rng.choice(("RWX", "RW")))
            blocks.append(ipa)
        page_slot = (first + nblk) * blk
        per_slot = blk // gran
        npages = 3 + rng.randrange(3)
        picks: list[int] = []
        while len(picks) < npages:
            p = rng.randrange(per_slot)
            if p not in picks:
                picks.append(p)
        pages = []
        for p in picks:
            ipa = page_slot + p * gran
            pgt.map(ipa, gran, ram_pa(gran), prot=rng.choice(("RWX", "RW", "RW")))
            pages.append(ipa)

        # MMIO: one or two device pages (never executable: stage2_set_prot_attr
        # refuses X with device memory).
        dev_slot = free_slot() * blk
        dev0 = rng.randrange(per_slot - 1)
        pa = MMIO_PA_BASE + rng.randrange(MMIO_PA_SPAN // gran) * gran
        ndev = 1 + rng.randrange(2)
        pgt.map(dev_slot + dev0 * gran, ndev * gran, pa, prot="RW", memattr="device")

        # A stray mapping far away: another branch of the tree.
        stray = free_slot() * blk
        if rng.randrange(2):
            pgt.map(stray, blk, ram_pa(blk), prot="RWX")
            blocks.append(stray)
        else:
            ipa = stray + rng.randrange(per_slot) * gran
            pgt.map(ipa, gran, ram_pa(gran), prot="RWX")
            pages.append(ipa)

        # Dirty logging write-protects; ageing clears AF.  Pick different
        # leaves, so each question has one reason to fault.
        leaves = [(ipa, blk) for ipa in blocks] + [(ipa, gran) for ipa in pages]
        rng.shuffle(leaves)
        ipa, size = leaves[0]
        pgt.wrprotect(ipa, size)
        ipa, size = leaves[1]
        pgt.test_clear_young(ipa, size, mkold=True)

    # -- the walk, by hand -------------------------------------------------------
    def walk(self, ipa: int, access: str = "read") -> Walk:
        """Walk ``ipa`` the way the MMU does, reading each descriptor with
        ``pgt.mem.read64``: independent of ``Stage2.translate``, and checked
        against it by the tests."""
        if access not in ACCESSES:
            raise S2ptError(f"access={access!r}: must be one of {', '.join(ACCESSES)}")
        ipa = self.pgt._check_ipa(ipa)
        g, mem = self.geom, self.pgt.mem
        # The start level's tables are concatenated: the top IPA bits pick
        # the PGD page, the next bits the entry inside it.
        table = self.pgt.pgd + g.pgd_page_idx(ipa) * g.granule
        steps = []
        for level in range(g.start_level, 4):
            i = g.idx(ipa, level)
            ptep = table + 8 * i
            pte = mem.read64(ptep)
            dec = decode(pte, level, g.granule, self.pgt.fwb)
            steps.append(Step(level, table, i, ptep, pte, dec))
            if dec.kind != "table":
                break
            table = dec.pa
        return self._classify(ipa, access, tuple(steps))

    def _classify(self, ipa: int, access: str, steps: tuple) -> Walk:
        last = steps[-1]
        dec, pte = last.decoded, last.pte

        def fault(kind, why):
            return Walk(ipa, access, steps, fault=kind, reason=why)

        if dec.kind not in ("block", "page"):
            why = {"invalid": "descriptor invalid (bit 0 = 0)",
                   "locked": "descriptor locked for break-before-make (invalid)",
                   "owner": "descriptor invalid (a pKVM owner annotation)",
                   "reserved": "reserved encoding"}.get(dec.kind, dec.kind)
            return fault("translation", why)
        if not pte & d.KVM_PTE_LEAF_ATTR_LO_S2_AF:
            return fault("access", "AF (bit 10) = 0, and this CPU has no hardware AF update")
        if access == "write" and not pte & d.KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W:
            return fault("permission", "S2AP[1] (bit 7) = 0: no write access")
        if access == "exec" and (pte >> 53) & 3 not in (0b00, 0b11):
            return fault("permission", f"XN (bits 54:53) = {(pte >> 53) & 3:#04b}: execute-never")
        if access == "read" and not pte & d.KVM_PTE_LEAF_ATTR_LO_S2_S2AP_R:
            return fault("permission", "S2AP[0] (bit 6) = 0: no read access")
        return Walk(ipa, access, steps, pa=dec.pa | (ipa & (dec.size - 1)))

    # -- choosing the questions ------------------------------------------------------
    def tables(self) -> list[tuple[int, int]]:
        """Every table page reachable from VTTBR_EL2, as (pa, level), sorted by PA."""
        g, mem = self.geom, self.pgt.mem
        found = [(self.pgt.pgd + k * g.granule, g.start_level) for k in range(g.pgd_pages)]
        todo = list(found)
        while todo:
            pa, level = todo.pop()
            if level == 3:
                continue
            for i in range(g.ptrs_per_pte):
                pte = mem.read64(pa + 8 * i)
                if d.kvm_pte_table(pte, level):
                    child = (pte & self.pgt.addr_mask, level + 1)
                    found.append(child)
                    todo.append(child)
        return sorted(found)

    def _leaves_and_holes(self):
        """(leaves, holes): the IPA ranges of every valid leaf, and of every
        invalid entry of every table, each with its level, in table order."""
        g, mem = self.geom, self.pgt.mem
        leaves, holes = [], []

        def visit(pa, level, base):
            size = g.granule_size(level)
            for i in range(g.ptrs_per_pte):
                pte = mem.read64(pa + 8 * i)
                ipa = base + i * size
                if ipa >= g.ipa_limit:
                    break
                if d.kvm_pte_table(pte, level):
                    visit(pte & self.pgt.addr_mask, level + 1, ipa)
                elif pte & d.KVM_PTE_VALID:
                    leaves.append((ipa, size, level))
                else:
                    holes.append((ipa, size, level))

        span = g.granule_size(g.start_level - 1)
        for k in range(g.pgd_pages):
            visit(self.pgt.pgd + k * g.granule, g.start_level, k * span)
        return leaves, holes

    def _pick_questions(self, rng: random.Random) -> list[tuple[int, str]]:
        """About half successes, and faults spread over as many (kind, level)
        outcomes as the table offers."""
        leaves, holes = self._leaves_and_holes()
        holes_by_level: dict[int, list] = {}
        for h in holes:
            holes_by_level.setdefault(h[2], []).append(h)
        groups: dict[tuple, list] = {}
        seen: set[int] = set()
        rounds = total = 0
        while (total < 3 * self.n or rounds < 2) and rounds < 100:
            rounds += 1
            cands = []
            for ipa, size, _ in leaves:
                cands.extend((ipa + rng.randrange(size), acc) for acc in ACCESSES)
            for level in sorted(holes_by_level):
                ipa, size, _ = rng.choice(holes_by_level[level])
                cands.append((ipa + rng.randrange(size), rng.choice(ACCESSES)))
            for ipa, acc in cands:
                if ipa in seen:
                    continue
                seen.add(ipa)
                w = self.walk(ipa, acc)
                if w.fault is None:
                    key = ("ok", w.steps[-1].ptep)          # one group per leaf
                elif w.fault == "permission":
                    key = (w.fault, acc)                   # write vs exec vs read
                else:
                    key = (w.fault, w.level)
                groups.setdefault(key, []).append((ipa, acc))
                total += 1
        # Successes: one leaf after another.  Faults: one kind after another
        # (translation, access, permission), and within a kind one level or
        # access after another, so a short drill still shows each kind.
        ok_keys = sorted(k for k in groups if k[0] == "ok")
        by_kind = {}
        for kind in ("translation", "access", "permission"):
            keys = sorted(k for k in groups if k[0] == kind)
            if keys:
                by_kind[kind] = _round_robin(rng, groups, keys, len(seen))
        n_ok = self.n // 2 + (rng.randrange(2) if self.n % 2 else 0)
        chosen = _round_robin(rng, groups, ok_keys, n_ok)
        chosen += _round_robin(rng, by_kind, sorted(by_kind), self.n - len(chosen))
        if len(chosen) < self.n:      # a table with few outcomes: top up with anything
            chosen += _round_robin(rng, groups, sorted(groups), self.n - len(chosen),
                                   skip=set(chosen))
        rng.shuffle(chosen)
        return chosen

    # -- output ------------------------------------------------------------------------
    def _ipa_str(self, ipa: int) -> str:
        return f"{ipa:#0{2 + (self.ipa_bits + 3) // 4}x}"

    def args(self) -> list[str]:
        """One line naming the drill's settings, as the command that repeats it."""
        return [f"Drill: python -m s2pt drill --seed {self.seed} -n {self.n} "
                f"--ipa-bits {self.ipa_bits} --granule {self.granule // 1024}K"]

    def problem(self) -> str:
        """The drill as a student sees it: settings, registers, dump, questions."""
        g, pgt, mem = self.geom, self.pgt, self.pgt.mem
        v = g.describe_vtcr()
        out = self.args() + [
            "",
            f"VTCR_EL2  {g.vtcr:#018x}   T0SZ={v['T0SZ']} SL0={v['SL0']} "
            f"TG0={v['TG0']} ({g.granule // 1024}K granule) PS={v['PS']}",
            f"VTTBR_EL2 {pgt.vttbr:#018x}   VMID={pgt.mmu.vmid} BADDR={pgt.pgd:#x}",
            "",
            "Table pages reachable from VTTBR_EL2 (non-zero descriptors only, index: value):",
        ]
        width = len(str(g.ptrs_per_pte - 1))
        for pa, _level in self.tables():
            out.append(f"page {pa:#x}:")
            rows = [(i, mem.read64(pa + 8 * i)) for i in range(g.ptrs_per_pte)]
            rows = [(i, pte) for i, pte in rows if pte]
            if not rows:
                out.append("    (all zero)")
            out.extend(f"  {i:>{width}}: {pte:#018x}" for i, pte in rows)
        out += ["", "Accesses from the guest (EL1):"]
        for ipa, acc in self.questions:
            out.append(f"  IPA {self._ipa_str(ipa)} ({acc}): translates to what PA? Or fault?")
        return "\n".join(out) + "\n"

    def geometry_notes(self) -> list[str]:
        """How to read VTCR_EL2 for this drill, and the IPA split it implies."""
        g = self.geom
        pgd = (f"{g.pgd_pages} concatenated PGD pages" if g.pgd_pages > 1 else "a one-page PGD")
        split = " | ".join(f"[{hi}:{lo}] {name}" for name, hi, lo in g.index_bits())
        return [
            f"T0SZ={64 - g.ipa_bits}: a {g.ipa_bits}-bit IPA.  TG0: {g.granule // 1024}K pages, "
            f"{g.ptrs_per_pte} descriptors per table.",
            f"SL0={g.sl0}: the walk starts at level {g.start_level} ({g.levels} levels), "
            f"with {pgd}.",
            f"IPA split: {split}",
        ]

    def _walk_lines(self, w: Walk) -> list[str]:
        g = self.geom
        out = [f"IPA {self._ipa_str(w.ipa)} ({w.access}):"]
        parts = []
        for name, hi, lo in g.index_bits():
            val = (w.ipa >> lo) & ((1 << (hi - lo + 1)) - 1)
            label = name.replace(" index", "").replace("level ", "L")
            parts.append(f"{label} {val:#x}" if name == "page offset" else f"{label} {val}")
        out.append("  split: " + ", ".join(parts))
        for s in w.steps:
            where = (f"PGD page {g.pgd_page_idx(w.ipa)}" if s.level == g.start_level
                     and g.pgd_pages > 1 else "PGD" if s.level == g.start_level else "table")
            out.append(f"  level {s.level}: {where} {s.table:#x}[{s.index}] "
                       f"@ {s.ptep:#x} = {s.pte:#018x}  {s.decoded.summary()}")
        if w.fault is None:
            leaf = w.steps[-1].decoded
            out.append(f"  --> PA {w.pa:#x}  ({leaf.kind} base {leaf.pa:#x} + offset "
                       f"{w.ipa & (leaf.size - 1):#x})")
        else:
            out.append(f"  --> Fault: {w.fault} at level {w.level} (FSC {w.fsc:#04x}): {w.reason}")
        return out

    def solution(self) -> str:
        """The worked walk of every question."""
        out = self.geometry_notes() + [""]
        for w in self._walks:
            out += self._walk_lines(w) + [""]
        return "\n".join(out)

    def answers(self) -> list[dict]:
        """One dict per question: ipa, access, pa (None on a fault), fault
        (None or the kind), level (of the leaf or the fault), fsc, trail."""
        return [w.as_dict() for w in self._walks]

    def __str__(self) -> str:
        return self.problem()

    def __repr__(self) -> str:
        return (f"Drill(seed={self.seed}, n={self.n}, ipa_bits={self.ipa_bits}, "
                f"granule={self.granule})")

    def _repr_html_(self) -> str:
        esc = html.escape
        return (f"<pre>{esc(self.problem())}</pre>"
                f"<details><summary>Solution (try the walks first)</summary>"
                f"<pre>{esc(self.solution())}</pre></details>")
