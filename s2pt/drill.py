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
    >>> print(d.report(d.check(["0x1_2345_6000", "translation 3", ...])))

Checking a student's answers (``python -m s2pt drill --seed N --answers
FILE``, or ``--check`` to answer one question at a time on stdin): an answer
is a PA (``0x800001234``) or a fault, its kind and level (``translation 3``,
``permission fault at level 2``).  Each is marked right or wrong; a wrong
one gets the right answer, the rule it broke and the worked walk, as OSTEP's
``-c`` would show it.

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
import re
from dataclasses import dataclass

from . import descriptor as d
from .descriptor import decode
from . import validate
from .errors import Fault, S2ptError
from .stage2 import Stage2

__all__ = ["Drill", "Step", "Walk", "Verdict", "ACCESSES", "parse_answer", "read_answers"]

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


#: The fault kinds an answer may name.
FAULT_KINDS = ("translation", "access", "permission")

_NUMBERED = re.compile(r"^\s*(?:q\s*)?\d+\s*[:.)]\s*", re.I)
_FAULT = re.compile(r"\b(translation|access|permission)\b(?:\s+flag)?(?:\s+fault)?"
                    r"(?:\s*,?\s*(?:at\s+)?(?:level|l)?\s*(\d+))?", re.I)
_HOW = ("a PA such as 0x800001234, or a fault as its kind and level such as "
        "'translation 3' or 'permission fault at level 2'")


def parse_answer(text: str):
    """One answer: an int PA, or a fault as (kind, level).

    Accepts ``0x8_0000_1234``, ``PA 0x800001234``, ``-> 0x800001234``,
    ``translation 3``, ``fault: access at level 3``, ``permission fault,
    level 2``, with an optional question number in front (``2: ...``).
    Raises S2ptError naming the text and the accepted forms.
    """
    if not isinstance(text, str):
        raise S2ptError(f"answer {text!r}: must be text, {_HOW}")
    t = _NUMBERED.sub("", text.strip(), count=1).strip()
    m = _FAULT.search(t)
    if m:
        if m.group(2) is None:
            raise S2ptError(f"answer {text.strip()!r}: a fault needs its level too, "
                            f"e.g. '{m.group(1).lower()} 3'")
        level = int(m.group(2))
        if not 0 <= level <= 3:
            raise S2ptError(f"answer {text.strip()!r}: level {level}: levels run from 0 to 3")
        return m.group(1).lower(), level
    word = re.sub(r"^(?:pa\b|->|-->|=)\s*", "", t, flags=re.I).strip()
    try:
        pa = int(word.replace("_", ""), 16 if word.lower().startswith("0x") else 10)
    except ValueError:
        raise S2ptError(f"answer {text.strip()!r}: not an answer; write {_HOW}") from None
    if not word.lower().startswith("0x"):
        raise S2ptError(f"answer {text.strip()!r}: write a PA in hex, with 0x")
    if pa < 0 or pa >= 1 << 48:
        raise S2ptError(f"answer {text.strip()!r}: a PA is below 2^48 on this CPU")
    return pa


def read_answers(text: str, n: int, source: str = "answers") -> list:
    """Parse an answers file: one answer per question, in order; blank lines
    and ``#`` comments are skipped.  S2ptError names the line and the rule."""
    answers = []
    for number, line in enumerate(text.splitlines(), 1):
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        try:
            answers.append(parse_answer(body))
        except S2ptError as e:
            raise S2ptError(f"{source}, line {number}: {e}") from None
    if len(answers) != n:
        raise S2ptError(f"{source}: {len(answers)} answers for {n} questions; write one "
                        f"answer per line, in the order of the questions")
    return answers


def _answer_text(answer) -> str:
    if isinstance(answer, tuple):
        return f"{answer[0]} fault at level {answer[1]}"
    return f"PA {answer:#x}"


@dataclass(frozen=True)
class Verdict:
    """One checked answer: the question's walk, what was given, right or not."""

    number: int
    walk: Walk
    given: object
    right: bool
    rule: str = ""

    @property
    def expected(self):
        w = self.walk
        return w.pa if w.fault is None else (w.fault, w.level)


def _check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    return validate.integer(name, value, lo, hi)


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



#: Widest line a drill prints: a notebook's output column holds about 95
#: characters, and a longer line wraps in the middle of a word.
WIDTH = 90


def _fit(text: str, indent: str, sep: str) -> list[str]:
    """``text`` as lines of at most WIDTH characters, broken only after ``sep``."""
    parts = text.split(sep)
    lines = [parts[0]]
    for part in parts[1:]:
        if len(lines[-1]) + len(sep) + len(part) <= WIDTH:
            lines[-1] += sep + part
        else:
            lines[-1] += sep.rstrip()
            lines.append(indent + part)
    return lines

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
            *_fit(f"IPA split: {split}", "           ", sep=" | "),
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
            line = (f"  level {s.level}: {where} {s.table:#x}[{s.index}] "
                    f"@ {s.ptep:#x} = {s.pte:#018x}")
            summary = s.decoded.summary()
            out += ([f"{line}  {summary}"] if len(line) + 2 + len(summary) <= WIDTH
                    else [line, f"{' ' * 11}{summary}"])
        if w.fault is None:
            leaf = w.steps[-1].decoded
            out.append(f"  --> PA {w.pa:#x}  ({leaf.kind} base {leaf.pa:#x} + offset "
                       f"{w.ipa & (leaf.size - 1):#x})")
        else:
            out += _fit(f"  --> Fault: {w.fault} at level {w.level} (FSC {w.fsc:#04x}): {w.reason}",
                        "      ", sep=", ")
        return out

    def solution(self) -> str:
        """The worked walk of every question."""
        out = self.geometry_notes() + [""]
        for w in self._walks:
            out += self._walk_lines(w) + [""]
        return "\n".join(out)

    def check(self, answers) -> list[Verdict]:
        """Mark a student's answers, one per question in order: each an int
        PA, a (kind, level) fault, or text that :func:`parse_answer` reads."""
        if not isinstance(answers, (list, tuple)):
            raise S2ptError(f"answers={answers!r}: a list with one answer per question")
        if len(answers) != self.n:
            raise S2ptError(f"{len(answers)} answers for {self.n} questions: give one per question")
        return [self.check_one(number, given) for number, given in enumerate(answers, 1)]

    def check_one(self, number: int, given) -> Verdict:
        """Mark the answer to question ``number`` (1-based)."""
        _check_int("number", number, 1, self.n)
        if isinstance(given, str):
            given = parse_answer(given)
        elif isinstance(given, tuple) and (len(given) != 2 or given[0] not in FAULT_KINDS):
            raise S2ptError(f"answer {number}: {given!r}: a fault is (kind, level), kind "
                            f"one of {', '.join(FAULT_KINDS)}")
        elif not isinstance(given, (int, tuple)) or isinstance(given, bool):
            raise S2ptError(f"answer {number}: {given!r}: {_HOW}")
        w = self._walks[number - 1]
        want = w.pa if w.fault is None else (w.fault, w.level)
        right = given == want
        return Verdict(number, w, given, right, "" if right else self._rule(w, given))

    def _rule(self, w: Walk, given) -> str:
        """Why ``given`` is wrong for walk ``w``: the rule, in one sentence."""
        from .feedback import FAULT_RULES, explain_pa
        if w.fault is None:
            leaf = w.steps[-1].decoded
            if isinstance(given, int):
                return explain_pa(given, w.pa, w.ipa, w.level, leaf.size)
            return (f"the walk ends at a valid level-{w.level} {leaf.kind} that allows "
                    f"{'an instruction fetch' if w.access == 'exec' else 'a ' + w.access}: "
                    f"no fault")
        if isinstance(given, tuple) and given[0] == w.fault:
            return "a fault's level is the level of the last descriptor read"
        return f"{w.reason}; {FAULT_RULES[w.fault][0]}"

    def verdict_lines(self, v: Verdict) -> list[str]:
        """One checked answer: right, or wrong with the answer, rule and walk."""
        head = (f"Q{v.number}  IPA {self._ipa_str(v.walk.ipa)} ({v.walk.access}): "
                f"you said {_answer_text(v.given)}")
        if v.right:
            return [head + ": right"]
        return ([head + ": wrong",
                 f"    the answer: {_answer_text(v.expected)}",
                 f"    rule: {v.rule}"]
                + ["    " + line for line in self._walk_lines(v.walk)[1:]])

    def report(self, verdicts) -> str:
        """OSTEP-style: each answer right or wrong; a wrong one with the right
        answer, the rule and the worked walk; then the score."""
        out = [line for v in verdicts for line in self.verdict_lines(v)]
        good = sum(v.right for v in verdicts)
        out.append("")
        out.append(f"Score: {good}/{len(verdicts)} right."
                   + ("" if good == len(verdicts) else
                      "  Read the worked walks of the wrong ones, then try another seed."))
        return "\n".join(out) + "\n"

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
