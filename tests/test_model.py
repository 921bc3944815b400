"""Random operation sequences against a flat model of the kernel's semantics.

The flat model knows nothing about tables.  It keeps *extents* (one per leaf
the kernel would create: start, size, PA, permissions, memattr, AF, owner)
and applies the rules the kernel documents:

* map uses the largest block that the alignment of IPA and PA allows (pages
  only with force_pte); a new leaf replaces every extent it overlaps, so a
  page mapped inside a block loses the rest of the block ("mapped lazily");
* re-mapping an identical leaf that differs only in R/W/XN changes nothing
  (-EAGAIN: "go through the path of relaxing permissions");
* unmap removes whole extents, even when the range covers part of a block;
* wrprotect clears W; relax_perms adds R/W and sets X exactly as asked;
  test_clear_young clears AF; mkyoung sets it;
* set_owner replaces pages with owner annotations, breaking blocks.

After every step the test compares the table's leaves with the model, runs
the invariant checker, and checks that the bulk (numpy) path and the
entry-by-entry path left byte-identical memory, refcounts and TLBI logs.
"""

import bisect

from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import s2pt
from s2pt.invariants import leaves

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


class Flat:
    """IPA extents with the kernel's replacement rules; no tables at all."""

    def __init__(self, granule, ipa_bits):
        self.g = granule
        bits = {4096: 9, 16384: 11, 65536: 13}[granule]
        self.size = {3: granule, 2: granule << bits, 1: granule << 2 * bits,
                     0: granule << 3 * bits}
        self.min_block = 1 if granule == 4096 else 2
        lv = max((ipa_bits - 8) // (bits), 2)
        self.start_level = 4 - lv
        self.ext = {}          # start -> dict(size, pa, prot, memattr, af, owner)
        self.starts = []       # sorted keys of ext, for overlap queries

    def _overlapping(self, a, e):
        # Extents never overlap and none is larger than a level-1 block, so
        # only starts in [a - largest, e) can reach into [a, e).
        lo = bisect.bisect_left(self.starts, a - self.size[1] + 1)
        hi = bisect.bisect_left(self.starts, e)
        return [s for s in self.starts[lo:hi] if s + self.ext[s]["size"] > a]

    def _containing(self, ipa):
        over = self._overlapping(ipa, ipa + 1)
        return (over[0], self.ext[over[0]]) if over else (None, None)

    def _remove(self, s):
        del self.ext[s]
        self.starts.pop(bisect.bisect_left(self.starts, s))

    def _add(self, s, x):
        self.ext[s] = x
        bisect.insort(self.starts, s)

    def map(self, ipa, size, pa, prot, memattr, force_pte):
        a, end = ipa, ipa + size
        while a < end:
            for lvl in range(self.start_level, 4):
                s = self.size[lvl]
                if lvl == 3 or (not force_pte and lvl >= self.min_block and a % s == 0
                                and (pa + a - ipa) % s == 0 and a + s <= end):
                    break
            new = dict(size=s, pa=pa + a - ipa, prot=prot, memattr=memattr, af=True, owner=None)
            over = self._overlapping(a, a + s)
            old = self.ext.get(a)
            same_but_perms = (len(over) == 1 and old is not None and old["owner"] is None
                              and all(old[k] == new[k] for k in ("size", "pa", "memattr", "af")))
            if not same_but_perms:
                for o in over:
                    self._remove(o)
                self._add(a, new)
            a += s

    def unmap(self, ipa, size):
        for o in self._overlapping(ipa, ipa + size):
            self._remove(o)

    def wrprotect(self, ipa, size):
        for o in self._overlapping(ipa, ipa + size):
            x = self.ext[o]
            if x["owner"] is None:
                x["prot"] = x["prot"].replace("W", "")

    def relax_perms(self, ipa, prot):
        s, x = self._containing(ipa)
        if x is not None and x["owner"] is None:
            keep = "".join(c for c in "RW" if c in x["prot"] or c in prot)
            x["prot"] = keep + ("X" if "X" in prot else "")

    def test_clear_young(self, ipa, size, mkold):
        young = False
        for o in self._overlapping(ipa, ipa + size):
            x = self.ext[o]
            if x["owner"] is None and x["af"]:
                young = True
                if mkold:
                    x["af"] = False
        return young

    def mkyoung(self, ipa):
        s, x = self._containing(ipa)
        if x is not None and x["owner"] is None:
            x["af"] = True

    def set_owner(self, ipa, size, owner):
        for a in range(ipa, ipa + size, self.g):
            for o in self._overlapping(a, a + self.g):
                self._remove(o)
            self._add(a, dict(size=self.g, pa=None, prot=None, memattr=None, af=None,
                              owner=owner))

    def expected_leaves(self):
        return sorted((s, x["size"], x["pa"], x["prot"], x["memattr"], x["af"], x["owner"])
                      for s, x in self.ext.items())


MEMATTR = {0xF: "normal", 0x5: "normal-nc", 0x1: "device"}   # MT_S2_* without FWB


def actual_leaves(pgt):
    """The table's leaves, decoded here from the raw bits (not with s2pt.decode)."""
    out = []
    for ipa, size, level, pte in leaves(pgt):
        if pte & 1:
            prot = (("R" if pte & (1 << 6) else "") + ("W" if pte & (1 << 7) else "")
                    + ("X" if (pte >> 53) & 3 == 0 else ""))
            pa = pte & ((1 << 48) - 1) & ~(size - 1)
            out.append((ipa, size, pa, prot, MEMATTR[(pte >> 2) & 0xF],
                        bool(pte & (1 << 10)), None))
        else:
            out.append((ipa, size, None, None, None, None, (pte >> 2) & 0xFF))
    return sorted(out)


#: Where operations collide, per granule: level-2 block boundaries, and the
#: edges of the IPA span one level-2 table covers (1G with 4K, 64G with 16K;
#: with 64K and 42 bits the root is a single level-2 table, so its interior).
BASES = {
    4096: [0, 2 * MiB, GiB - 2 * MiB, GiB, GiB + 2 * MiB, 3 * GiB],
    16384: [0, 32 * MiB, 64 * GiB - 32 * MiB, 64 * GiB, 64 * GiB + 32 * MiB, 3 * 64 * GiB],
    65536: [0, 512 * MiB, GiB, 3 * 512 * MiB, 1024 * GiB - 512 * MiB, 1024 * GiB],
}


def ranges():
    """(which base, page offset, count, kind): the machine turns it into an
    IPA range with its own granule and block size (see ``_range``)."""
    return st.tuples(st.integers(0, len(BASES[4096]) - 1), st.integers(0, 3),
                     st.integers(1, 5), st.sampled_from([0, 1, 2]))


class StageTwoMachine(RuleBasedStateMachine):
    granule = 4096
    ipa_bits = 36

    def __init__(self):
        super().__init__()
        self.fast = s2pt.Stage2(self.ipa_bits, self.granule)
        self.slow = s2pt.Stage2(self.ipa_bits, self.granule)
        self.slow.machine.observers.append(lambda op, res: None)   # forces per-entry steps
        self.flat = Flat(self.granule, self.ipa_bits)
        self.block = self.flat.size[2]

    def _range(self, r):
        base, off, n, kind = r
        g = self.granule
        if kind == 0:
            return base + off * g, n * g                   # a few pages
        if kind == 1:
            return base, n * self.block                     # whole blocks
        # Straddling a block boundary: a whole block and n pages of the
        # next, or the last off pages of a block and n of the next.  (Never
        # most of a block in pages: with 64K that is 8191 stepwise maps.)
        if off == 0:
            return base, self.block + n * g
        return base + self.block - off * g, (off + n) * g

    def both(self, name, *args, **kw):
        a = getattr(self.fast, name)(*args, **kw)
        b = getattr(self.slow, name)(*args, **kw)
        assert a == b
        return a

    @rule(r=ranges(), delta=st.sampled_from([0, 1, 2, "block"]),
          prot=st.sampled_from(["RWX", "RW", "R", "RX"]),
          memattr=st.sampled_from(["normal", "normal", "device"]), force=st.booleans())
    def map(self, r, delta, prot, memattr, force):
        ipa, size = self._range(self._fit(r))
        if delta == "block":                # PA one block further: still congruent
            delta = self.block // self.granule
        misaligned = delta % (self.block // self.granule) != 0
        if (force or misaligned) and size > 64 * self.granule:
            size = 64 * self.granule   # page-by-page runs stay small (8192 pages per 64K block)
        if memattr == "device":
            prot = prot.replace("X", "")
        pa = (ipa + delta * self.granule + 0x40 * GiB) & ((1 << 48) - 1)
        self.both("map", ipa, size, pa, prot=prot, memattr=memattr, force_pte=force)
        self.flat.map(ipa, size, pa, prot, memattr, force)

    def _fit(self, r):
        which, off, n, kind = r
        limit = 1 << self.ipa_bits
        return (BASES[self.granule][which] % (limit // 2), off, n, kind)

    @rule(r=ranges())
    def unmap(self, r):
        ipa, size = self._range(self._fit(r))
        self.both("unmap", ipa, size)
        self.flat.unmap(ipa, size)

    @rule(r=ranges())
    def wrprotect(self, r):
        ipa, size = self._range(self._fit(r))
        self.both("wrprotect", ipa, size)
        self.flat.wrprotect(ipa, size)

    @rule(r=ranges(), prot=st.sampled_from(["RW", "RWX", "R", "X"]))
    def relax_perms(self, r, prot):
        ipa, _ = self._range(self._fit(r))
        self.both("relax_perms", ipa, prot)
        self.flat.relax_perms(ipa, prot)

    @rule(r=ranges(), mkold=st.booleans())
    def test_clear_young(self, r, mkold):
        ipa, size = self._range(self._fit(r))
        young = self.both("test_clear_young", ipa, size, mkold)
        assert young == self.flat.test_clear_young(ipa, size, mkold)

    @rule(r=ranges())
    def mkyoung(self, r):
        ipa, _ = self._range(self._fit(r))
        self.both("mkyoung", ipa)
        self.flat.mkyoung(ipa)

    @rule(r=ranges())
    def set_owner(self, r):
        base, off, n, kind = self._fit(r)
        ipa, size = base + off * self.granule, n * self.granule
        self.both("set_owner", ipa, size, 1)
        self.flat.set_owner(ipa, size, 1)

    @rule(r=ranges(), write=st.booleans())
    def translate(self, r, write):
        ipa, _ = self._range(self._fit(r))
        ipa += 0x123
        try:
            t = self.fast.translate(ipa, write=write)
        except s2pt.Fault as f:
            got = ("fault", f.kind)
        else:
            got = ("ok", t.pa, t.prot)
        s, x = self.flat._containing(ipa)
        if x is None or x["owner"] is not None:
            want = ("fault", "translation")
        elif not x["af"]:
            want = ("fault", "access")
        elif (write and "W" not in x["prot"]) or (not write and "R" not in x["prot"]):
            want = ("fault", "permission")
        else:
            want = ("ok", x["pa"] + ipa - s, x["prot"])
        assert got == want

    @invariant()
    def leaves_match_flat_model(self):
        assert actual_leaves(self.fast) == self.flat.expected_leaves()

    @invariant()
    def refcounts_and_reachability(self):
        self.fast.check_invariants()

    @invariant()
    def bulk_equals_stepwise(self):
        assert self.fast.mem.snapshot() == self.slow.mem.snapshot()
        assert list(self.fast.tlbis) == list(self.slow.tlbis)
        assert self.fast.stats == self.slow.stats


class StageTwo16K(StageTwoMachine):
    granule = 16384
    ipa_bits = 40


class StageTwo64K(StageTwoMachine):
    granule = 65536
    ipa_bits = 42


SETTINGS = settings(max_examples=60, stateful_step_count=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

TestStageTwo4K = StageTwoMachine.TestCase
TestStageTwo4K.settings = SETTINGS
TestStageTwo16K = StageTwo16K.TestCase
TestStageTwo16K.settings = SETTINGS
TestStageTwo64K = StageTwo64K.TestCase
TestStageTwo64K.settings = settings(SETTINGS, max_examples=50)   # about 5 s


def test_flat_model_block_rule_by_hand():
    f = Flat(4096, 36)
    f.map(0, 2 * MiB, 0, "RWX", "normal", False)
    assert [(s, x["size"]) for s, x in f.ext.items()] == [(0, 2 * MiB)]
    f.map(0x1000, 0x1000, 0x5000, "RW", "normal", False)
    assert [(s, x["size"]) for s, x in f.ext.items()] == [(0x1000, 0x1000)]
    f.unmap(0x1000, 0x1000)
    assert f.ext == {} and f.starts == []
