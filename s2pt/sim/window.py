"""Race windows: did the race a scenario is about ever arise?

"Exhaustive search found nothing" means something only if the interleaving
the scenario was written for actually happened in some run.  Under a lock
that keeps the collapsing fault and the relaxing fault apart, no walker is
ever inside a table while it is unlinked: the scheme is safe, but for a
reason (the race never arises) that is not the reason RCU is safe (the race
arises and does no harm).  Each scenario therefore declares its **race
window** as a few stages, each a predicate over steps, and the exhaustive
search reports, for each stage, whether any run reached it and the shortest
schedule that did.  A scheme under which the last stage is never reached
gets a verdict of its own, "safe: the race never arises", with the first
stage no run reached as the reason.

A stage looks at one step: the facts the search records about it (which
table page it unlinks, whether its cmpxchg loses, whether it reaches a table
that is no longer linked ...) and the machine around it (what the other CPUs
hold pointers to, who holds which lock).  :class:`StepFacts` says what a
predicate may ask.  The predicates here know no scenario and no scheme; the
scenarios compose them (:mod:`s2pt.scenarios`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..snapshot import Frozen

__all__ = ["Stage", "Window", "StepFacts", "unlinks", "unlinks_while_held", "stores_while_held",
           "loses_race", "reaches_unlinked", "mmu_walks_while_locked", "any_of",
           "TEARDOWN", "BUILD"]

#: Kernel functions that walk a table after it was unlinked *as its
#: teardown*: the RCU callback's boring traversal, RFC v1's prune, the last
#: walker reference of the refcount schemes.  Their accesses to an unlinked
#: table are the teardown, not the race.
TEARDOWN = frozenset({
    "kvm_pgtable_stage2_free_unlinked", "stage2_free_unlinked_table_rcu_cb",
    "kvm_pgtable_stage2_free_removed", "stage2_free_removed_table_rcu_cb",
    "stage2_free_walker", "stage2_prune_unlinked_table", "stage2_prune_walker",
    "stage2_free_table_page_rcu_cb", "kvm_pgtable_stage2_destroy",
})
#: Kernel functions that fill a table before it is linked (it is private to
#: the CPU building it until then).
BUILD = frozenset({"kvm_pgtable_stage2_create_unlinked", "stage2_map_prefault_idmap"})


@dataclass
class StepFacts:
    """What the search knows about one step, for a window's predicates.

    ``cpu`` stepped, performing ``op`` from inside ``stack`` (kernel
    function names, outermost first).  ``unlinked``: the table page (its
    PA) the step unlinked -- a store that replaced the table descriptor
    pointing at it -- or None; ``lost``: a cmpxchg that found another value
    than the one it expected; ``stored``: the table page the step stored
    to; ``reached``: the table page the step accessed although it was no
    longer linked (or already freed), outside a teardown or a build;
    ``mmu``: the step is a hardware walker's (a TLB lookup or a descriptor
    read).  ``others_hold(pa)`` says whether another CPU holds a pointer
    into the table page at ``pa`` (in its locals, or in its MMU's walk
    cache); ``held_by_other(lock)`` whether another CPU holds ``lock``.
    """
    cpu: int
    op: tuple
    stack: tuple = ()
    unlinked: int | None = None
    lost: bool = False
    stored: int | None = None
    reached: int | None = None
    mmu: bool = False
    others_hold: object = None
    held_by_other: object = None


@dataclass(frozen=True)
class Stage(Frozen):
    """One stage of a race window: ``what`` it is ("a table is unlinked"),
    what it means that no run reached it (``never``: "no run unlinks a
    table"), and ``test(facts) -> bool``."""
    what: str
    never: str
    test: object


@dataclass(frozen=True)
class Window(Frozen):
    """A scenario's race window: stages, each reached only after (in some
    run) the ones before it; the race arises when the last one is reached.
    ``needs``: which step facts its predicates read (the search computes
    only those)."""
    what: str
    stages: tuple
    needs: frozenset = frozenset()

    def reason(self, reached: list) -> str:
        """Why the race never arises, given which stages were reached."""
        for stage, hit in zip(self.stages, reached):
            if not hit:
                return stage.never
        return ""


# ---------------------------------------------------------------------------
# Predicates
# ---------------------------------------------------------------------------

def unlinks(never="no run unlinks a table"):
    """A step unlinks a table page."""
    return Stage("a table is unlinked", never, lambda f: f.unlinked is not None), {"unlink"}


def unlinks_while_held(never="no table is ever unlinked while another CPU holds a pointer "
                             "into it"):
    """A step unlinks a table page while another CPU (a software walker, or
    an MMU through a walk in flight or its walk cache) holds a pointer into
    it."""
    return (Stage("a table is unlinked while another CPU holds a pointer into it", never,
                  lambda f: f.unlinked is not None and f.others_hold(f.unlinked)), {"unlink"})


def stores_while_held(never="no CPU changes a table while another CPU is walking it"):
    """A step stores to a table page another CPU is walking (holds a
    pointer into)."""
    return (Stage("a table changes while another CPU walks it", never,
                  lambda f: f.stored is not None and f.others_hold(f.stored)), {"store"})


def loses_race(never="no cmpxchg ever loses: the updates never overlap"):
    """A step's cmpxchg finds a value other than the one its CPU read."""
    return Stage("a CPU's cmpxchg loses to another CPU's store", never, lambda f: f.lost), \
        {"lost"}


def reaches_unlinked(never="no walker reaches a table after it was unlinked"):
    """A walker (not a teardown or a build) accesses a table page that is
    no longer linked, or already freed."""
    return Stage("a walker reaches a table after it was unlinked", never,
                 lambda f: f.reached is not None), {"reach"}


def mmu_walks_while_locked(lock: str, never=None):
    """A CPU's MMU looks up its TLB or reads a descriptor while another CPU
    holds ``lock`` (it is updating the table under it)."""
    never = never or f"no MMU walks the table while another CPU holds {lock}"
    return (Stage(f"a CPU's MMU walks the table while another CPU holds {lock}", never,
                  lambda f: f.mmu and f.held_by_other(lock)), {"mmu"})


def any_of(what: str, never: str, *stages):
    """A stage reached when any of ``stages`` (each as the predicates above
    return them) is."""
    tests = tuple(s.test for s, _ in stages)
    needs = set().union(*(n for _, n in stages))
    return Stage(what, never, lambda f: any(t(f) for t in tests)), needs


def window(what: str, *stages) -> Window:
    """A Window from stages as the predicates above return them."""
    return Window(what, tuple(s for s, _ in stages),
                  frozenset().union(*(n for _, n in stages)))
