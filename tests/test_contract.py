"""The bad-input contract, kept everywhere (issue 21).

The README promises: bad input gets an :class:`s2pt.S2ptError` naming the
value and the rule, and the model is left exactly as it was.  This suite
checks that promise on generated calls to every public method of
``Stage2``, ``VM``, ``pkvm.Host`` and ``World`` and to ``decode``,
``explore``, ``replay``, ``world`` and ``compare`` (the command line is
``tests/test_contract_cli.py``).  Each generated call must

* succeed, or raise ``S2ptError`` or ``Fault`` (never ``TypeError``,
  ``KernelBug``, ...);
* after an ``S2ptError``, leave the model's fingerprint
  (``tests/contract_fingerprint.py``) byte for byte as it was;
* refuse every value of the wrong kind (a float, a bool, a string, None
  where an integer, a switch, a name is wanted), naming the parameter;
* with numpy integers instead of Python ones, do exactly what it does with
  Python ones;
* leave the model's invariants (its table and its own records) intact.

The table of specifications below cannot drift from the API:
``test_every_public_method_is_specified`` fails when a public method has
neither a specification nor a stated reason to be left out.  The named
regressions of issue 21 follow, then the invariants that see each
object's bookkeeping, each shown catching a corrupted record.
"""

from __future__ import annotations

import inspect
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import s2pt
import s2pt.draw
import s2pt.ptdump
import s2pt.sim.report
import s2pt.vmprint
from s2pt import Fault, KernelBug, S2ptError, pkvm
from s2pt.kvm import Memslot
from s2pt.sim.world import World

from contract_fingerprint import diff, fingerprint

K, M, G = 1 << 10, 1 << 20, 1 << 30
PAGE = 4 * K

#: One fixed, database-free profile: bounded, deterministic, no deadline
#: (the 2-core CI machine is shared).  For a longer hunt, run with
#: S2PT_CONTRACT_EXAMPLES=5000 (and S2PT_CONTRACT_RANDOM=1 for fresh examples).
EXAMPLES = int(os.environ.get("S2PT_CONTRACT_EXAMPLES", "300"))
CONTRACT = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    derandomize=not os.environ.get("S2PT_CONTRACT_RANDOM"),
                    suppress_health_check=list(HealthCheck))


# ---------------------------------------------------------------------------
# Values: junk (must be refused) and edges (may pass or be refused cleanly)
# ---------------------------------------------------------------------------

class _Thing:
    def __repr__(self):
        return "<thing>"


THING = _Thing()
JUNK_INT = [None, "x", "0x1000", 4096.0, 0.5, float("nan"), True, False, [4096], (1,), {},
            b"\x10", np.float32(1), 3 + 0j, THING]
JUNK_FLAG = [None, "no", "yes", "", 2, -1, 0.5, [True], np.int64(2), "False", THING]
JUNK_NAME = ["bogus", "", 3, ["x"], b"x", True, 1.0, THING]
JUNK_CALLABLE = [5, "f", [len], THING]
JUNK_SCHEDULE = [[0, "x"], [0.7, 1.9], [True, 0], "x y", "0*9999999999999", "0 -1", 5, 1.5,
                 b"0", THING, [[0]]]


def junk_names(example):
    """Junk for a set of names: None, a bare string (would be split into
    letters), non-strings, unknown names."""
    return [None, example, "x", 5, [5], ["bogus"], b"ab", 1.5, THING]


def ints(lo=None, hi=None, extra=()):
    """Integers around a range's ends, huge ones, and numpy integers."""
    out = [-1, 0, 1, 2, 2 ** 31, 2 ** 63 - 1, 2 ** 63, 2 ** 64, -2 ** 63, 10 ** 30,
           np.int8(-1), np.uint8(1), np.int64(3), np.uint64(2 ** 64 - 1)]
    for b in (lo, hi):
        if b is not None:
            out += [b - 1, b, b + 1, np.int64(b) if b < 1 << 63 else np.uint64(b)]
    return out + list(extra)


def addrs(g, bits, extra=()):
    """Addresses around a granule and the top of an address space."""
    top = 1 << bits
    return [0, 1, g - 1, g, g + 1, 2 * g, 2 * M, G, top - g, top - 1, top, top + g,
            2 ** 64 - g, 2 ** 64, -g, -1, np.uint64(g), np.int64(top - g), np.int32(-g)] \
        + list(extra)


def sizes(g, big=()):
    """Sizes around a granule: empty, negative, misaligned, and ``big``
    (chosen per method so that a valid one stays cheap)."""
    return [0, -g, -1, 1, g - 1, g, g + 1, 2 * g, 64 * g, 2 * M, 2 ** 64, 2 ** 64 + g,
            np.uint64(g), np.int64(2 * g)] + list(big)


# ---------------------------------------------------------------------------
# Specifications
# ---------------------------------------------------------------------------

class Arg:
    """One parameter: ``good(model)`` (a strategy of valid values), ``junk``
    (values of the wrong kind, which must be refused naming ``name``) and
    ``edge`` (values of the right kind that may pass or be refused)."""

    def __init__(self, name, good, junk=(), edge=(), positional=False, says=None):
        self.name, self.positional = name, positional
        self.says = says or name              # how refusals name it
        self._good, self._junk, self._edge = good, junk, edge

    def good(self, model):
        g = self._good(model) if callable(self._good) and not isinstance(
            self._good, st.SearchStrategy) else self._good
        return g if isinstance(g, st.SearchStrategy) else st.sampled_from(list(g))

    def junk(self, model):
        return list(self._junk(model) if callable(self._junk) else self._junk)

    def edge(self, model):
        return list(self._edge(model) if callable(self._edge) else self._edge)


def A(name, good, junk=(), edge=()):
    return Arg(name, good, junk, edge)


def P(name, good, junk=(), edge=()):
    return Arg(name, good, junk, edge, positional=True)


def flag(name, good=(False, True), positional=False):
    return Arg(name, list(good) + [np.bool_(True)] * (True in good), JUNK_FLAG,
               [0, 1, np.bool_(False)], positional)


class Method:
    def __init__(self, name, *args):
        self.name, self.args = name, args


# -- Stage2 -------------------------------------------------------------------

def _pgt_ipa(m):
    return st.sampled_from([G, G + 4 * M, G + 4 * M + m.page_size, 2 * G, 0, 5 * G,
                            (1 << m.ia_bits) - 4 * M])          # (with any good size)


def _pgt_size(m):
    return st.sampled_from([m.page_size, 2 * m.page_size, 2 * M, 4 * M])


def _pgt_edges(m):
    return addrs(m.page_size, m.ia_bits, [G + M, 2 * G + PAGE])


def _pgt_sizes(m):
    return sizes(m.page_size, big=[1 << m.ia_bits, (1 << m.ia_bits) + m.page_size])


PROT = A("prot", ["R", "RW", "RWX", "", "x", "rw"], [None, 7, ["R"], "RWZ", "RR", b"R", THING])
IPA = P("ipa", _pgt_ipa, JUNK_INT, _pgt_edges)
SIZE = P("size", _pgt_size, JUNK_INT, _pgt_sizes)

STAGE2 = [
    Method("map", IPA, SIZE, P("pa", [0x8000_0000, 0x40_0000_0000, 0], JUNK_INT,
                               lambda m: addrs(m.page_size, 48)),
           PROT, A("memattr", ["normal", "device", "normal-nc"], JUNK_NAME),
           flag("force_pte")),
    Method("unmap", IPA, SIZE),
    Method("wrprotect", IPA, SIZE),
    Method("relax_perms", IPA, PROT),
    Method("mkyoung", IPA),
    Method("test_clear_young", IPA, SIZE, flag("mkold")),
    Method("set_owner", IPA, SIZE, P("owner_id", [0, 1], JUNK_INT, ints(0, 1))),
    Method("flush_tlb", A("ipa", lambda m: st.one_of(st.none(), _pgt_ipa(m)), JUNK_INT[1:],
                          _pgt_edges),
           A("size", lambda m: st.one_of(st.none(), _pgt_size(m)), JUNK_INT[1:], _pgt_sizes)),
    Method("destroy"),
    Method("walk", IPA, SIZE, P("visitor", [lambda ctx, visit: 0],
                                JUNK_CALLABLE + [None, lambda: 0]),
           A("flags", ["LEAF", "TABLE_PRE|TABLE_POST", "LEAF | TABLE_POST", 1, 7],
             [None, 1.0, True, ["LEAF"], "BOGUS", "", b"LEAF"], ints(0, 127) + [0, 8])),
    Method("get_leaf", IPA),
    Method("translate", IPA, flag("write"), flag("exec")),
    Method("ptdump", flag("final")),
    Method("vmprint", A("max_entries", [None, 0, 3, 100], JUNK_INT[1:], ints(0)),
           A("ipa", lambda m: st.one_of(st.none(), _pgt_ipa(m)), JUNK_INT[1:], _pgt_edges),
           A("size", lambda m: st.one_of(st.none(), _pgt_size(m)), JUNK_INT[1:], _pgt_sizes),
           flag("fold")),
    Method("draw", A("highlight", lambda m: st.one_of(st.none(), _pgt_ipa(m)), JUNK_INT[1:],
                     _pgt_edges)),
    Method("check_invariants"),
]
#: Public names of Stage2 that the suite does not generate calls for, and why.
STAGE2_LEFT_OUT = {
    "classify": "the MMU model's fault classification, called by the TLB model with "
                "values read from the table (s2pt.tlb), not an entry point",
    "stale_reason": "the TLB model's question on every hit (s2pt.tlb); arguments come "
                    "from the TLB, not from users",
    "supports_block": "kvm_level_supports_block_mapping(), a walker helper",
    "pgd_page_idx": "kvm_pgd_page_idx(), a walker helper",
    "warn": "WARN_ON(): raises KernelBug by design",
}


def build_stage2(variant):
    g = {"4k": 4096, "16k": 16384, "64k": 65536}[variant.split("-")[0]]
    pgt = s2pt.Stage2(ipa_bits=40 if g != 16384 else 36, granule=g, ram_pages=200)
    pgt.map(G, 2 * M if g == 4096 else 32 * M if g == 16384 else 512 * M, 0x8000_0000)
    pgt.map(G + 4 * M if g != 65536 else 2 * G, 8 * g, 0x9000_0000, prot="R", force_pte=True)
    pgt.set_owner(3 * G, g, 1)
    if variant.endswith("destroyed"):
        pgt.destroy()
    return pgt


# -- VM -----------------------------------------------------------------------

VM_SLOTS = [(G, 64 * M, "2M", False), (2 * G, 4 * M, "4K", False), (3 * G, 2 * M, "2M", True)]


def build_vm(variant):
    kw = dict(initially_set=True) if variant == "initially-set" else \
        dict(manual_protect=False) if variant == "plain" else {}
    vm = s2pt.VM(ram_pages=400, eager_split_chunk=2 * M if variant == "eager" else None, **kw)
    for gpa, size, backing, ro in VM_SLOTS:
        vm.add_memslot(gpa, size, backing=backing, readonly=ro)
    vm.access(G + PAGE, write=True)
    vm.access(G + 8 * M)
    vm.access(2 * G + 3 * PAGE, write=True)
    vm.enable_dirty_logging(1)
    vm.access(2 * G + 5 * PAGE, write=True)
    if variant == "destroyed":
        vm.pgt.flush_tlb()                     # no vCPU may walk it any more
        vm.pgt.destroy()
    return vm


def _gpa(m):
    return st.sampled_from([G, G + PAGE, G + 3 * M, 2 * G + 5 * PAGE, 3 * G, 0x10_0000,
                            5 * G, 2 * G])


FOREIGN_SLOT = Memslot(0, G, 64 * M, 2 * M, False, 0)
SLOT = P("slot", lambda m: st.sampled_from(list(m.memslots) + list(range(len(m.memslots)))),
         [None, "0", 1.0, True, FOREIGN_SLOT, THING], ints(0, 3))
VCPU = A("vcpu", [0, 1], JUNK_INT, ints(0, 2))
GPA = P("gpa", _gpa, JUNK_INT, addrs(PAGE, 40, [G + 64 * M - PAGE]))

VM = [
    Method("add_memslot", P("gpa", [4 * G, 8 * G, 8 * G + 2 * M, G], JUNK_INT,
                            addrs(PAGE, 40)),
           P("size", [2 * M, PAGE, 64 * PAGE, G], JUNK_INT, sizes(PAGE, [1 << 40, 2 << 40])),
           A("backing", ["4K", "2M", "1G", 4096, 2 * M, "2m", np.int64(4096)],
             [None, 4096.0, True, ["2M"], "3M", "", b"2M", THING], ints(PAGE, G, [16 * K])),
           flag("readonly"),
           A("userspace_addr", [None, 0x7f00_0000_0000, 0x7f80_0000_0000], JUNK_INT[1:],
             addrs(PAGE, 48))),
    Method("enable_cap_eager_split", P("chunk", [0, 2 * M, G], JUNK_INT, ints(0, G, [PAGE]))),
    Method("memslot_for", GPA),
    Method("translate", GPA, flag("write"), flag("exec"), VCPU),
    Method("fault", GPA, flag("write"), VCPU, flag("exec")),
    Method("access", GPA, flag("write"), VCPU, flag("exec"),
           A("max_faults", [0, 1, 4], JUNK_INT, ints(0))),
    # (touch makes size / stride accesses: valid edges stay small)
    Method("touch", GPA, P("size", [PAGE, 4 * PAGE, 2 * M], JUNK_INT,
                           [0, -PAGE, -1, 1, PAGE - 1, PAGE + 1, 64 * PAGE, 2 ** 64,
                            (1 << 40) + PAGE, np.uint64(PAGE), np.int64(2 * PAGE)]),
           flag("write"), A("stride", [None, PAGE, 3 * PAGE, 2 * M], JUNK_INT[1:],
                            [0, -1, 2 ** 64, np.int64(PAGE), PAGE + 1]),
           VCPU, A("write_every", [None, 1, 3], JUNK_INT[1:], ints(1))),
    Method("enable_dirty_logging", SLOT,
           A("eager_split_chunk", [None, 0, 2 * M], JUNK_INT[1:], ints(0, G, [PAGE]))),
    Method("disable_dirty_logging", SLOT, flag("commit")),
    Method("get_dirty_log", SLOT),
    Method("clear_dirty_log", SLOT, A("first", [0, 64], JUNK_INT, ints(0, 1024, [63, 512])),
           A("npages", [None, 0, 64, 512], JUNK_INT[1:], ints(0, 1024, [63, 448]))),
    Method("unmap_memslot", SLOT),
    Method("kvm_mmu_split_nr_page_tables", P("size", [2 * M, G, PAGE], JUNK_INT, sizes(PAGE))),
    Method("check"),
    Method("check_invariants"),
]
VM_LEFT_OUT = {
    "measure": "a context manager that reads the counters around the caller's own calls "
               "(notebooks 03, 04, 07); it changes nothing",
}


# -- pkvm.Host ----------------------------------------------------------------

HOST_MEM = [(2 * G, 64 * M), (3 * G, 2 * M)]
HOST_MMIO = [(G, M)]


def build_host(variant):
    host = pkvm.Host(memory=HOST_MEM, mmio=HOST_MMIO, pool_pages=12 if variant == "small-pool"
                     else None, prefault=variant == "prefault")
    host.access(2 * G)
    host.access(G, write=True)
    host.donate(2 * G + 5 * PAGE, 2, to="guest")
    host.donate(3 * G + PAGE, 1, to="hyp")
    host.share_hyp(2 * G + 9 * PAGE)
    return host


def _hpa(m):
    return st.sampled_from([2 * G, 2 * G + 5 * PAGE, 2 * G + 6 * PAGE, 2 * G + 9 * PAGE,
                            3 * G + PAGE, 2 * G + 4 * M, 3 * G, G, G + PAGE, 4 * G])


HPA = P("pa", _hpa, JUNK_INT, addrs(PAGE, 40, [2 * G + 64 * M - PAGE, 2 * G + 64 * M]))
NPAGES = P("npages", [1, 2, 3, 512], JUNK_INT, ints(1, 16384, [513, 1 << 20]))

HOST = [
    Method("host_stage2_adjust_range", P("addr", _hpa, JUNK_INT, addrs(PAGE, 40)),
           P("rng", [(2 * G, 2 * G + 64 * M), (0, 1 << 40)],
             [None, 5, "x", (1,), (1, 2, 3), [None, 5], (2 * G + 1.0, 4 * G)],
             [(0, 0), (4 * G, 2 * G), (-1, 1 << 41)])),
    Method("host_stage2_try", P("fn", [lambda: iter(()), lambda: (x for x in ())],
                                JUNK_CALLABLE + [None, lambda a: 0])),
    Method("host_stage2_unmap_dev_all"),
    Method("host_stage2_idmap", P("addr", _hpa, JUNK_INT, addrs(PAGE, 40))),
    Method("access", HPA, flag("write"), flag("exec"), A("cpu", [0, 1], JUNK_INT, ints(0, 2))),
    Method("donate", HPA, NPAGES, A("to", ["guest", "hyp"], JUNK_NAME + [None, "host"])),
    Method("reclaim", HPA, NPAGES),
    Method("coalesce", A("pa", lambda m: st.one_of(st.none(), _hpa(m)), JUNK_INT[1:],
                         addrs(PAGE, 40)),
           A("size", [None, PAGE, 2 * M], JUNK_INT[1:], sizes(PAGE, [64 * M, 1 << 40]))),
    Method("share_hyp", HPA),
    Method("unshare_hyp", HPA),
    Method("owner", HPA),
    Method("page_state", HPA, A("who", ["host", "hyp", "guest"], JUNK_NAME + [None])),
    Method("owned_pages", A("owner", [None, "guest", "hyp"], JUNK_NAME + ["host"])),
    Method("check_isolation", A("pages", [None, [], [0x80005]],
                                ["x", 5, THING, b"ab"]),
           A("full", [False, True], JUNK_FLAG)),
    Method("check_invariants"),
    Method("leaf_sizes"),
]
HOST_LEFT_OUT = {
    "find_mem_range": "find_mem_range(): called by the fault path with addresses from the "
                      "MMU, not an entry point",
    "addr_is_memory": "called by host_stage2_pte_is_counted() for every table entry",
    "range_is_memory": "called by host_stage2_force_pte_cb() inside the walker",
    "host_stage2_force_pte_cb": "the walker's force_pte callback (kvm_pgtable_stage2_init)",
    "sim_state": "the explorer's snapshot protocol (s2pt.snapshot): the search takes it",
    "sim_restore": "the explorer's snapshot protocol: the search hands back a value "
                   "sim_state() returned",
}


# -- World ----------------------------------------------------------------------

WORLDS = {"donate": ("donate-vs-host-access", "hyp-lock"), "map": ("map-vs-map", "rcu"),
          "collapse": ("collapse-vs-fault", "none")}


def build_world(variant):
    name, steps = variant.split("-") if "-" in variant else (variant, "0")
    w = s2pt.world(*WORLDS[name])
    if steps == "done":
        w.run()
    else:
        for _ in range(int(steps)):
            if w.outcome is not None:
                break
            w.step(w.enabled()[0])
    return w


CPU = Arg("i", lambda w: st.sampled_from(list(range(w.n))), JUNK_INT + [[0]],
          lambda w: ints(0, w.n - 1, [w.n, w.n + 1]), positional=True, says="cpu")

WORLD = [
    Method("step", CPU),
    Method("run", A("schedule", ["", (), [0, 0], "1*3 0", "0 1 0"], JUNK_SCHEDULE,
                    ["9", [9], "0*20000", "0*20001", "0,0,,1", [np.int64(0)]]),
           A("policy", [None, lambda w, en: en[0], lambda w, en: en[-1]],
             JUNK_CALLABLE + [lambda: 0],
             # callables that pick no CPU (or one that cannot step): refused by step()
             [lambda w, en: "x", lambda w, en: 99, lambda w, en: True,
              lambda w, en: w.n - 1]),
           flag("complete")),
    Method("again", A("record", [None, False, True], JUNK_FLAG[1:]),
           A("max_steps", [None, 1, 100, 20000], JUNK_INT[1:], ints(1))),
    Method("blocked", CPU),
    Method("name", CPU),
    Method("pending_text", CPU),
    Method("enabled"),
    Method("live"),
    Method("end_checks"),
    Method("diagram", A("width", [None, 20, 46, 80], JUNK_INT[1:], ints(16))),
    Method("log"),
    Method("status"),
]
WORLD_LEFT_OUT = {
    "stop": "ends a replayed run with the livelock the search found as a cycle "
            "(s2pt.sim.search's lasso), with a Violation the search built",
    "step_diagram": "a view of the run so far (every step), like diagram(), whose options "
                    "the suite covers",
}


# -- module functions --------------------------------------------------------------

QUICK = ["donate-vs-host-access", "map-vs-map"]
SCHEME_OF = {"donate-vs-host-access": "hyp-lock", "map-vs-map": "rcu"}
JUNK_SCENARIO = [None, 5, ["map-vs-map"], "no-such-scenario", b"map-vs-map", THING]
JUNK_SCHEME = [None, 5, ["rcu"], "bogus", b"rcu", THING]
BUG = "no-bbm-tlbi"

DECODE = Method("decode", P("value", [0, 0x7ff, 0x40000000 | 0x7ff, 0x8, 0x403, 2 ** 64 - 1],
                            JUNK_INT, ints(0, 2 ** 64 - 1)),
                P("level", [0, 1, 2, 3], JUNK_INT, ints(0, 3)),
                A("granule", [4096, 16384, 65536], JUNK_INT + [4096.5, "4K"],
                  ints(4096, 65536, [16384, 8192])),
                flag("fwb"))


def _scenario_args(scheme_default=True):
    return [P("scenario", QUICK, JUNK_SCENARIO), P("scheme", ["hyp-lock", "rcu"], JUNK_SCHEME)]


FUNCTIONS = [
    DECODE,
    Method("world", *_scenario_args(),
           A("bugs", [(), [], frozenset()], junk_names(BUG)),
           A("max_steps", [20000, 500], JUNK_INT, ints(1)),
           flag("record")),
    Method("replay", *_scenario_args(),
           A("schedule", ["", "1*3 0", [1, 1, 0], (0, 1)], JUNK_SCHEDULE, ["9", [9], "0*30000"]),
           A("bugs", [(), []], junk_names(BUG)),
           A("max_steps", [20000, 500], JUNK_INT, ints(1))),
    Method("explore", *_scenario_args(),
           A("mode", ["exhaustive", "unreduced", "random", "pct"], JUNK_NAME + [None]),
           A("runs", [1, 2, 5], JUNK_INT, [0, -1, 1, 1_000_001, 2 ** 64, np.int64(2)]),
           A("depth", [1, 2, 3], JUNK_INT, ints(1)),
           A("seed", [0, 1, 2 ** 64 - 1], JUNK_INT, ints(0, 2 ** 64 - 1)),
           A("preemptions", [None, 0, 1], JUNK_INT[1:], ints(0)),
           A("bugs", [()], junk_names(BUG)),
           A("max_states", [1, 50, 300], JUNK_INT, [0, -1, 1, np.int64(20)]),
           A("max_steps", [20000, 200], JUNK_INT, [0, -1, 1, 5, np.int64(100)]),
           A("progress", [False, None, lambda states, depth, frontier: None],
             ["yes", 5, 1.5, b"x", THING]),
           flag("details"), flag("check"),
           A("cancel", [None, lambda: False, lambda: True], JUNK_CALLABLE),
           flag("symmetry"), flag("por"), flag("liveness")),
    Method("compare", A("schemes", [["hyp-lock"], "hyp-lock", ("hyp-lock", "hyp-lock")],
                        [[["x"]], [None], 5, "bogus", [], ["bogus"], THING, {"hyp-lock": 1}]),
           A("scenarios", [["donate-vs-host-access"], "donate-vs-host-access"],
             [[["x"]], [5], 5, "nowhere", [], THING]),
           A("costs", [False], JUNK_FLAG),
           A("vcpus", [1, 4], JUNK_INT, ints(1, 4)),
           A("runs", [1, 2], JUNK_INT, [0, -1, 1, np.int64(2), 2 ** 64]),
           A("seed", [0, 7], JUNK_INT, ints(0, 2 ** 64 - 1)),
           A("mutations", [False], JUNK_FLAG),
           A("max_states", [1, 100], JUNK_INT, [0, -1, 1, np.int64(50)]),
           A("progress", [None, lambda text: None], JUNK_CALLABLE + [lambda: 0]),
           A("jobs", [1], JUNK_INT, [0, -1, 1, 64, 65, np.int64(1)]),
           A("cache", [None], [5, "x", b"x", THING, {}])),
]
PUBLIC_FUNCTIONS = {"decode", "explore", "replay", "world", "compare"}


TARGETS = {
    "Stage2": (s2pt.Stage2, build_stage2, ["4k", "16k", "64k", "4k-destroyed"], STAGE2,
               STAGE2_LEFT_OUT),
    "VM": (s2pt.VM, build_vm, ["default", "eager", "initially-set", "plain", "destroyed"], VM,
           VM_LEFT_OUT),
    "Host": (pkvm.Host, build_host, ["default", "small-pool", "prefault"], HOST,
             HOST_LEFT_OUT),
    "World": (World, build_world, ["donate", "donate-20", "map-7", "collapse-3", "map-done"],
              WORLD, WORLD_LEFT_OUT),
}


#: Methods that pass ``**kw`` on to a view function: the names they accept.
VIEWS = {"ptdump": s2pt.ptdump.ptdump, "vmprint": s2pt.vmprint.vmprint,
         "draw": s2pt.draw.draw, "diagram": s2pt.sim.report.race_diagram}


def public_methods(cls) -> set:
    return {n for n, v in inspect.getmembers(cls) if not n.startswith("_") and callable(v)
            and not isinstance(inspect.getattr_static(cls, n), (property, staticmethod,
                                                                  classmethod))
            and not isinstance(v, type)}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_public_method_is_specified(target):
    cls, _build, _variants, methods, left_out = TARGETS[target]
    specified = {m.name for m in methods}
    public = public_methods(cls)
    assert public - specified - set(left_out) == set(), "public methods with no specification"
    assert specified - public == set(), "specified methods that no longer exist"
    assert set(left_out) & specified == set()
    for m in methods:
        params = inspect.signature(getattr(cls, m.name)).parameters
        names = [p for p in params if p != "self" and params[p].kind not in (
            inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
        if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
            # A view that passes **kw on (Stage2.ptdump, .vmprint, .draw): the
            # specified names are the view function's own.
            names += list(inspect.signature(VIEWS[m.name]).parameters)[1:]
            assert {a.name for a in m.args} <= set(names), f"{target}.{m.name}"
            continue
        assert [a.name for a in m.args] == names, f"{target}.{m.name}: parameters changed"


def test_every_public_function_is_specified():
    assert {m.name for m in FUNCTIONS} == PUBLIC_FUNCTIONS
    for m in FUNCTIONS:
        params = inspect.signature(getattr(s2pt, m.name)).parameters
        assert [a.name for a in m.args] == list(params), f"{m.name}: parameters changed"


# ---------------------------------------------------------------------------
# The generated calls
# ---------------------------------------------------------------------------

def _draw_call(data, model, method):
    """(args, kwargs, junk name or None, numpy twin or None, mode)."""
    mode = data.draw(st.sampled_from(["good", "edge", "junk", "junk", "mixed"]), label="mode")
    args = method.args
    picked = {}
    special = None
    if mode in ("edge", "junk") and args:
        cands = [a for a in args if (a.junk(model) if mode == "junk" else a.edge(model))]
        if cands:
            special = data.draw(st.sampled_from(cands), label="which")
    for a in args:
        if a is special:
            pool = a.junk(model) if mode == "junk" else a.edge(model)
            picked[a.name] = data.draw(st.sampled_from(pool), label=a.name)
        elif mode == "mixed":
            pool = a.junk(model) + a.edge(model)
            kind = data.draw(st.sampled_from(["good", "good", "other"]), label=f"{a.name}?")
            picked[a.name] = (data.draw(a.good(model), label=a.name) if kind == "good" or not pool
                              else data.draw(st.sampled_from(pool), label=a.name))
        else:
            picked[a.name] = data.draw(a.good(model), label=a.name)
    return picked, (special.name if mode == "junk" and special is not None else None), mode


def _numpy(v):
    """The same value with every Python int made a numpy integer."""
    if type(v) is int:
        return np.uint64(v) if v >= 1 << 63 else np.int64(v) if -(1 << 63) <= v < 1 << 63 else v
    if isinstance(v, list):
        return [_numpy(x) for x in v]
    if isinstance(v, tuple):
        return tuple(_numpy(x) for x in v)
    return v


def _call(fn, method, picked):
    pos = [picked[a.name] for a in method.args if a.positional]
    kw = {a.name: picked[a.name] for a in method.args if not a.positional}
    return fn(*pos, **kw)


def _outcome(fn, method, picked):
    try:
        return "ok", _call(fn, method, picked)
    except S2ptError as e:
        return "refused", e
    except Fault as e:
        return "fault", e


def _unusable(model) -> bool:
    """A destroyed table refuses every call for that reason first."""
    pgt = getattr(model, "pgt", model)
    return bool(getattr(pgt, "destroyed", False))


def _check_call(counts, model, method, picked, junk, fn=None):
    """One generated call, checked against the contract."""
    counts["tried"] += 1
    fn = fn or getattr(model, method.name)
    before = fingerprint(model) if model is not None else None
    where = f"{method.name}({', '.join(f'{k}={v!r}' for k, v in picked.items())})"
    try:
        kind, value = _outcome(fn, method, picked)
    except Exception as e:                          # noqa: BLE001 -- the contract
        raise AssertionError(f"{where} raised {type(e).__name__}: {e}") from e
    if kind == "refused":
        msg = str(value)
        assert msg.strip() and "\n" not in msg, f"{where}: not a one-line message: {msg!r}"
        if model is not None:
            after = fingerprint(model)
            assert after == before, f"{where} was refused ({msg}) but changed the model: " \
                                    f"{diff(before, after)}"
        if junk is not None and not _unusable(model):
            says = next(a.says for a in method.args if a.name == junk)
            assert says in msg, f"{where}: the refusal does not name {says!r}: {msg}"
    elif junk is not None:
        raise AssertionError(f"{where}: {junk}={picked[junk]!r} was accepted ({kind})")
    counts[kind] += 1
    counts["passed"] += 1
    return kind, value


def _after(model, target):
    """Invariants and views after each call: nothing half-done."""
    if target in ("Stage2", "VM", "Host"):
        model.check_invariants()
        assert isinstance(model.stats, dict)
    else:
        model.status()
    repr(model)


#: Targets and functions whose generated calls run searches and whole runs
#: (tens of milliseconds a case): the developer's loop tries a fifth of their
#: cases (the ``_sampled`` tests below), CI all of them.
HEAVY = {"World", "explore"}
SAMPLED = settings(CONTRACT, max_examples=max(1, EXAMPLES // 5))


def _slow_if_heavy(names):
    return [pytest.param(n, marks=[pytest.mark.slow] if n in HEAVY else []) for n in names]


@pytest.mark.parametrize("target", _slow_if_heavy(sorted(TARGETS)))
@CONTRACT
@given(data=st.data())
def test_generated_calls_keep_the_contract(target, data, contract_counts):
    _generated_calls(target, data, contract_counts)


@pytest.mark.parametrize("target", sorted(HEAVY & set(TARGETS)))
@SAMPLED
@given(data=st.data())
def test_generated_calls_keep_the_contract_sampled(target, data, contract_counts):
    _generated_calls(target, data, contract_counts)


def _generated_calls(target, data, contract_counts):
    cls, build, variants, methods, _ = TARGETS[target]
    variant = data.draw(st.sampled_from(variants), label="variant")
    model = build(variant)
    for _ in range(data.draw(st.integers(1, 3), label="calls")):
        method = data.draw(st.sampled_from(methods), label="method")
        picked, junk, mode = _draw_call(data, model, method)
        kind, _value = _check_call(contract_counts, model, method, picked, junk)
        _after(model, target)
        if mode == "good" and target != "World" and any(
                type(v) is int for v in picked.values()) and data.draw(st.booleans(),
                                                                       label="numpy twin"):
            # The same call with numpy integers, on a twin built the same way
            # and brought to the same point, must do the same thing.
            contract_counts["tried"] += 1
            twin_a, twin_b = build(variant), build(variant)
            ka, va = _outcome(getattr(twin_a, method.name), method, picked)
            kb, vb = _outcome(getattr(twin_b, method.name), method,
                              {k: _numpy(v) for k, v in picked.items()})
            assert (ka, type(va)) == (kb, type(vb)), \
                f"{method.name}{picked}: {ka} with ints, {kb} with numpy integers ({vb})"
            fa, fb = fingerprint(twin_a), fingerprint(twin_b)
            assert fa == fb, f"{method.name}: numpy integers left different state: " \
                             f"{diff(fa, fb)}"
            contract_counts["numpy-twin"] += 1
            contract_counts["passed"] += 1


@pytest.mark.parametrize("name", _slow_if_heavy(sorted(PUBLIC_FUNCTIONS)))
@settings(CONTRACT, max_examples=max(1, EXAMPLES * 2 // 5))
@given(data=st.data())
def test_generated_function_calls_keep_the_contract(name, data, contract_counts):
    _generated_function_call(name, data, contract_counts)


@pytest.mark.parametrize("name", sorted(HEAVY & set(PUBLIC_FUNCTIONS)))
@settings(CONTRACT, max_examples=max(1, EXAMPLES * 2 // 25))
@given(data=st.data())
def test_generated_function_calls_keep_the_contract_sampled(name, data, contract_counts):
    _generated_function_call(name, data, contract_counts)


def _generated_function_call(name, data, contract_counts):
    method = next(m for m in FUNCTIONS if m.name == name)
    picked, junk, _mode = _draw_call(data, None, method)
    if isinstance(picked.get("scenario"), str) and picked["scenario"] in SCHEME_OF and \
            picked.get("scheme") in ("hyp-lock", "rcu"):
        picked["scheme"] = SCHEME_OF[picked["scenario"]]     # a declared pair
    _check_call(contract_counts, None, method, picked, junk, fn=getattr(s2pt, name))


# ---------------------------------------------------------------------------
# Named regressions: every case of issue 21
# ---------------------------------------------------------------------------

def refused(fn, *args, match=None, **kw):
    """``fn(*args, **kw)`` raises S2ptError (matching ``match``) and leaves
    the model it belongs to unchanged."""
    owner = getattr(fn, "__self__", None)
    before = fingerprint(owner) if owner is not None else None
    with pytest.raises(S2ptError, match=match) as e:
        fn(*args, **kw)
    if owner is not None:
        after = fingerprint(owner)
        assert after == before, diff(before, after)
    return str(e.value)


def test_donation_that_runs_the_pool_dry_is_refused_whole():
    # Issue 21: the second page hit -ENOMEM; the first stayed annotated as
    # the guest's while the records said "host".
    host = pkvm.Host(memory=[(0x8000_0000, 4 << 30)], pool_pages=2)
    before = host.pgt.get_leaf(0x801F_F000)
    msg = refused(host.donate, 0x801F_F000, 2, match="ENOMEM")
    assert "host_s2_pool" in msg
    assert host.pgt.get_leaf(0x801F_F000) == before and host.owner(0x801F_F000) == "host"
    host.check_invariants()
    assert host.access(0x801F_F000).pa == 0x801F_F000        # the host can use it
    host.donate(0x801F_F000, 1)                             # one page fits the pool
    assert host.owned_pages() == [0x801F_F000]
    host.check_invariants()


def test_donation_with_pool_exhausted_is_s2pterror_not_kernelbug():
    host = pkvm.Host(memory=[(0x8000_0000, 1 << 30)], pool_pages=1)
    refused(host.donate, 0x8000_0000, 1, match="ENOMEM")
    refused(host.donate, 0x8000_0000, 3, to="hyp", match="ENOMEM")


def test_donation_that_fits_after_recycling_mmio_tables_succeeds():
    # The kernel's host_stage2_try(): -ENOMEM recycles the MMIO tables and
    # retries; a donation that then fits is not refused.
    host = pkvm.Host(memory=[(2 * G - PAGE, PAGE), (2 * G, 2 * M)],
                     mmio=[(2 * G - 2 * PAGE, PAGE)], pool_pages=2)
    host.access(2 * G - 2 * PAGE, write=True)                 # the pool: 2 MMIO tables
    host.donate(2 * G + PAGE, 1)
    assert host.stats["enomem_retries"] >= 1 and host.owner(2 * G + PAGE) == "guest"
    host.check_invariants()


def test_enabling_dirty_logging_twice_keeps_the_dirty_pages():
    vm = s2pt.VM()
    slot = vm.add_memslot(G, G)
    vm.enable_dirty_logging(slot)
    vm.access(G + PAGE, write=True)
    before = fingerprint(vm)
    vm.enable_dirty_logging(slot)                # the flags do not change: nothing happens
    assert fingerprint(vm) == before
    assert vm.get_dirty_log(slot)[1] and vm.get_dirty_log(slot).sum() == 1


def test_disabling_dirty_logging_on_a_quiet_slot_keeps_the_split_cache():
    vm = s2pt.VM(eager_split_chunk=2 * M)
    a = vm.add_memslot(G, 64 * M)
    b = vm.add_memslot(2 * G, 2 * M)
    vm.touch(G, 8 * M, write=True)
    vm.enable_dirty_logging(a)                   # eager split fills the split cache
    cached = vm.split_page_cache.nobjs
    assert cached
    before = fingerprint(vm)
    vm.disable_dirty_logging(b)                  # b was not logging: nothing happens
    assert fingerprint(vm) == before and vm.split_page_cache.nobjs == cached
    vm.disable_dirty_logging(a)                  # a was: its commit frees the cache
    assert vm.split_page_cache.nobjs == 0


@pytest.mark.parametrize("granule", [4096, 16384, 65536])
def test_destroy_frees_everything_and_only_once(granule):
    pgt = s2pt.Stage2(granule=granule)
    block = pgt.geom.granule_size(pgt.geom.min_block_level)
    pgt.map(G, block, 0x40_0000_0000)             # a block at the first block level
    pgt.map(0, 4 * granule, 0, force_pte=True)
    pgt.destroy()
    assert not pgt.mem.live_pages() and pgt.stats["tables_live"] == 0
    pgt.check_invariants()
    for call in (lambda: pgt.translate(G), pgt.destroy, lambda: pgt.map(0, granule, 0),
                 pgt.ptdump, lambda: pgt.get_leaf(G), pgt.vmprint):
        refused(call, match="destroyed")
    assert "destroyed" in repr(pgt)


def test_destroy_refuses_while_a_vcpu_walk_cache_points_into_the_table():
    vm = s2pt.VM()
    vm.add_memslot(G, 4 * M, backing="4K")
    vm.access(G + PAGE)
    refused(vm.pgt.destroy, match="walk cache")
    vm.pgt.flush_tlb()
    vm.pgt.destroy()
    refused(vm.fault, G, match="destroyed")
    vm.check()


@pytest.mark.parametrize("call,match", [
    (lambda: s2pt.Stage2(granule=4096.0), "granule=4096.0"),
    (lambda: s2pt.Stage2(granule=[4096]), r"granule=\[4096\]"),
    (lambda: s2pt.decode(0x7ff, 3, granule=4096.0), "granule=4096.0"),
    (lambda: s2pt.VM(memcache_capacity=0), "memcache_capacity=0"),
    (lambda: s2pt.VM(memcache_capacity=-1), "memcache_capacity=-1"),
    (lambda: s2pt.VM(memcache_capacity="x"), "memcache_capacity='x'"),
    (lambda: s2pt.VM(memcache_capacity=1), "kvm_mmu_cache_min_pages"),
    (lambda: s2pt.explore("collapse-vs-fault", "none", max_steps=0), "max_steps=0"),
    (lambda: s2pt.replay("collapse-vs-fault", "none", max_steps=-5), "max_steps=-5"),
    (lambda: s2pt.world("collapse-vs-fault", "none", max_steps=0), "max_steps=0"),
    (lambda: s2pt.explore("collapse-vs-fault", "none", max_states="x"), "max_states='x'"),
    (lambda: s2pt.replay("collapse-vs-fault", "none", schedule=[0, "x"]), "'x'"),
    (lambda: s2pt.replay("collapse-vs-fault", "none", schedule=[0.7, 1.9]), "0.7"),
    (lambda: s2pt.pkvm.Host(memory=[(2 * G, G)], bugs=None), "bugs=None"),
    (lambda: s2pt.pkvm.Host(memory=[(2 * G, G)], bugs="donate-no-tlbi"), "single string"),
    (lambda: s2pt.explore("collapse-vs-fault", "none", bugs=None), "bugs=None"),
    (lambda: s2pt.compare(schemes=[["x"]]), r"\['x'\]"),
    (lambda: s2pt.Stage2(fwb="no"), "fwb='no'"),
    (lambda: s2pt.decode(True, 3), "value=True"),
    (lambda: s2pt.decode(0x7ff, level=True), "level=True"),
    (lambda: s2pt.VM().add_memslot(0, G, backing=4096.0), "backing=4096.0"),
    (lambda: s2pt.explore("collapse-vs-fault", "none", mode="random", seed=True), "seed=True"),
    (lambda: s2pt.explore("collapse-vs-fault", "none", progress="yes"), "progress='yes'"),
    (lambda: s2pt.pkvm.Host(memory=[(2 * G, G)], pa_bits=52), "pa_bits=52"),
])
def test_issue_21_constructor_and_function_cases(call, match):
    refused(call, match=match)


def test_issue_21_world_step_cases():
    w = s2pt.world("collapse-vs-fault", "none")
    for bad in (5, "a", None, 0.0, -1, True, np.float64(1)):
        assert "cpu=" in refused(w.step, bad)
    assert w.nsteps == 0 and not w.events
    w.step(np.int64(0))                                    # numpy CPU ids are CPU ids
    assert w.events[-1].cpu == 0 and type(w.events[-1].cpu) is int
    w.run()
    assert "run is over" in refused(w.step, 0)


def test_world_run_refuses_a_blocked_cpu_without_stepping():
    w = s2pt.world("collapse-vs-fault", "none")
    w.step(0)
    before = fingerprint(w)
    # CPU 2 is the RCU callback thread, with nothing queued: it cannot step.
    refused(w.run, [1, 2], match="schedule step 1: CPU 2")
    assert fingerprint(w) == before
    refused(w.run, (), lambda world, enabled: 2, match="cannot step")
    assert fingerprint(w) == before and w.run().outcome is not None


@pytest.mark.parametrize("call,match", [
    (lambda vm: vm.touch(None, PAGE), "gpa=None"),
    (lambda vm: vm.touch(G, "4K"), "size='4K'"),
    (lambda vm: vm.touch(G, -4096), "size=-4096"),
    (lambda vm: vm.clear_dirty_log(1, first=None), "first=None"),
    (lambda vm: vm.clear_dirty_log(1, first=0, npages=5), "npages=5"),
    (lambda vm: vm.access(G, max_faults=-1), "max_faults=-1"),
    (lambda vm: vm.enable_dirty_logging(2), "read-only"),
])
def test_issue_21_vm_cases(call, match):
    vm = build_vm("default")
    before = fingerprint(vm)
    with pytest.raises(S2ptError, match=match):
        call(vm)
    assert fingerprint(vm) == before, diff(before, fingerprint(vm))


@pytest.mark.parametrize("call,match", [
    (lambda h: h.page_state(None), "pa=None"),
    (lambda h: h.page_state("x"), "pa='x'"),
    (lambda h: h.page_state(-4096), "pa=-4096"),
    (lambda h: h.owned_pages("bogus"), "owner='bogus'"),
    (lambda h: h.coalesce(2 * G, size="x"), "size='x'"),
    (lambda h: h.coalesce(2 * G, size=-5), "size=-5"),
    (lambda h: h.coalesce(size=PAGE), "without pa"),
    (lambda h: h.access(2 * G, cpu=True), "cpu=True"),
])
def test_issue_21_host_cases(call, match):
    host = build_host("default")
    before = fingerprint(host)
    with pytest.raises(S2ptError, match=match):
        call(host)
    assert fingerprint(host) == before, diff(before, fingerprint(host))


@pytest.mark.parametrize("call,match", [
    (lambda p: p.walk(0, PAGE, None), "visitor=None"),
    (lambda p: p.walk(0, PAGE, lambda ctx: 0), "visitor="),
    (lambda p: p.walk(0, PAGE, lambda c, v: 0, flags=12345), "flags=12345"),
    (lambda p: p.walk(0, PAGE, lambda c, v: 0, flags=1 << 3), "visits nothing"),
    (lambda p: p.translate(G, write=True, exec=True), "read, a write or a fetch"),
    (lambda p: p.flush_tlb(None, PAGE), "without ipa"),
    (lambda p: p.map(G, PAGE, 0, memattr=["normal"]), "memattr="),
])
def test_issue_21_stage2_cases(call, match):
    pgt = build_stage2("4k")
    refused(lambda: call(pgt), match=match)
    assert fingerprint(pgt) == fingerprint(pgt)


def test_numpy_integers_are_integers():
    assert s2pt.Stage2(ipa_bits=np.int64(40)).ia_bits == 40
    assert type(s2pt.Stage2(ipa_bits=np.int64(40)).ia_bits) is int
    assert s2pt.decode(np.uint64(0x40000000 | 0x7ff), level=np.int64(3)).summary() == \
        s2pt.decode(0x40000000 | 0x7ff, level=3).summary()
    w = s2pt.replay("collapse-vs-fault", "none", [np.int64(1)] * 5 + [np.uint8(0)])
    assert w.outcome == "violation"


def test_relax_perms_default_drops_execute_as_the_kernel_does():
    # kvm_pgtable_stage2_relax_perms() rewrites XN from prot; the docstring
    # says so now, and "RWX" keeps execute.
    pgt = s2pt.Stage2()
    pgt.map(G, PAGE, 0x8000_0000, prot="R")
    assert pgt.relax_perms(G) == 0 and pgt.translate(G).prot == "RW"
    assert pgt.relax_perms(G, "RWX") == 0 and pgt.translate(G).prot == "RWX"
    assert "execute-never" in s2pt.Stage2.relax_perms.__doc__


def test_map_over_a_mapping_that_differs_only_in_permissions_keeps_it():
    pgt = s2pt.Stage2()
    pgt.map(G, PAGE, 0x8000_0000, prot="RWX")
    pgt.map(G, PAGE, 0x8000_0000, prot="R")            # -EAGAIN in the walker, as the kernel
    assert pgt.translate(G).prot == "RWX"
    pgt.map(G, PAGE, 0x9000_0000, prot="R")            # another PA: replaced
    assert pgt.translate(G).prot == "R" and pgt.translate(G).pa == 0x9000_0000
    assert "only in permissions" in s2pt.Stage2.map.__doc__


def test_access_with_no_fault_budget_left_raises_the_fault():
    vm = s2pt.VM()
    vm.add_memslot(G, 2 * M)
    with pytest.raises(Fault, match="max_faults=0"):
        vm.access(G, max_faults=0)
    assert vm.stats["faults"] == 0
    assert vm.access(G, max_faults=1).pa == vm.memslots[0].pa


# ---------------------------------------------------------------------------
# Invariants that see bookkeeping: corrupt one record, see it caught
# ---------------------------------------------------------------------------

def _corrupted(model, corrupt, match):
    model.check_invariants()                       # clean before
    corrupt(model)
    with pytest.raises(KernelBug, match=match):
        model.check_invariants()


def _record(pa, owner):
    """Corrupt the host's owner record of ``pa`` (None: forget it), keeping
    its sorted cache in step so that the table check is what fires."""
    def corrupt(h):
        if owner is None:
            h._owner.pop(pa >> 12)
        else:
            h._owner[pa >> 12] = owner
        h._nonhost_sorted = None
    return corrupt


@pytest.mark.parametrize("corrupt,match", [
    # The issue's state corruption: annotated in the table, 'host' in the records.
    (_record(2 * G + 5 * PAGE, None), "annotated as owned by guest"),
    (_record(2 * G + 5 * PAGE, pkvm.OWNER_IDS["hyp"]), "owned by guest in the table but by hyp"),
    (_record(2 * G + 20 * PAGE, pkvm.OWNER_IDS["guest"]), "maps PA|owner annotation"),
    (_record(2 * G - PAGE, pkvm.OWNER_IDS["guest"]), "not memory"),
    (_record(2 * G + 5 * PAGE, 7), "owner id 7"),
    (lambda h: h._shared.add((2 * G + 5 * PAGE) >> 12), "shared with the hypervisor"),
    (lambda h: setattr(h, "_nonhost_sorted", [1, 2, 3]), "sorted cache"),
])
def test_host_invariants_see_the_owner_records(corrupt, match):
    _corrupted(build_host("default"), corrupt, match)


def _dirty(vm):
    return vm.memslots[1].dirty


@pytest.mark.parametrize("corrupt,match", [
    (lambda vm: setattr(vm.memslots[1], "dirty", None), "dirty bitmap is missing"),
    (lambda vm: setattr(vm.memslots[0], "dirty", np.zeros(3, bool)),
     "dirty bitmap is present"),
    (lambda vm: setattr(vm.memslots[1], "dirty", np.zeros(3, bool)), "not 1024 bools"),
    (lambda vm: _dirty(vm).__setitem__(5, False), "mapped writable with its dirty bit clear"),
    (lambda vm: setattr(vm.memslots[2], "logging", True), "read-only but marked as logging"),
    (lambda vm: setattr(vm.memslots[1], "id", 7), "has id 7"),
    (lambda vm: setattr(vm.memslots[1], "gpa", G + 2 * M), "overlap"),
])
def test_vm_invariants_see_memslots_and_dirty_bitmaps(corrupt, match):
    _corrupted(build_vm("default"), corrupt, match)


def test_destroyed_table_invariants_see_pages_still_held():
    pgt = build_stage2("4k-destroyed")
    pgt.check_invariants()
    pgt.mem.alloc_page()                           # a page the destroyed table still holds
    with pytest.raises(KernelBug, match="destroyed but 1 page"):
        pgt.check_invariants()


def test_dirty_bit_invariant_holds_over_random_guest_work():
    """The writable-implies-dirty rule is a real invariant, not a wish: it
    holds after every step of random guest work in each dirty-log mode."""
    rng = np.random.default_rng(21)
    for mode in ("default", "eager", "initially-set", "plain"):
        vm = build_vm(mode)
        for _ in range(300):
            op = rng.integers(0, 6)
            gpa = int(2 * G + rng.integers(0, 1024) * PAGE)
            if op < 3:
                vm.access(gpa, write=bool(op))
            elif op == 3 and mode != "plain":
                vm.clear_dirty_log(1, 64 * int(rng.integers(0, 16)), 64)
            elif op == 4:
                vm.get_dirty_log(1)
            else:
                vm.pgt.test_clear_young(gpa, PAGE)
            vm.check_invariants()
