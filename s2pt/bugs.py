"""Every bug the model can switch back on, in one registry.

A :class:`Bug` is a historical commit reverted (``a9f0e3d5a089``: the
walker no longer reloads the entry after a ``TABLE_PRE`` callback) or a
deliberate breakage that is not a real commit (``no-bbm-tlbi``: faults break
entries without the TLBI), kept so that the explorer and the course can show
what each piece of the kernel is for.

``target`` says what the bug switches, and so who is built with it:

``walker``
    the table's walker (:class:`s2pt.stage2.KvmPgtable`, ``Stage2(bugs=...)``,
    read by :mod:`s2pt.pgtable`);
``vm``
    a guest's fault and logging paths (:class:`s2pt.kvm.VM`, ``VM(bugs=...)``);
``host``
    pKVM's host stage 2 at EL2 (:class:`s2pt.pkvm.Host`, ``Host(bugs=...)``);
``mm_ops``
    a teardown scheme's mm_ops (``Scheme.mm_ops(bugs)``, :mod:`s2pt.schemes`).

A VM passes its walker bugs on to its table, and so does a host; a scenario
(:mod:`s2pt.scenarios`) hands each part the bugs of its target.  The names
are a contract: the command line's ``--bug``, the mutations and the
notebooks use them.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import validate
from .errors import S2ptError

__all__ = ["Bug", "BUGS", "TARGETS", "WALKER", "VM", "HOST", "MM_OPS", "check_bugs", "of"]

WALKER, VM, HOST, MM_OPS = "walker", "vm", "host", "mm_ops"
#: target -> what a bug of that target switches.
TARGETS = {
    WALKER: "the table's walker (s2pt.pgtable, built by s2pt.stage2.KvmPgtable)",
    VM: "a guest's fault and logging paths (s2pt.kvm.VM)",
    HOST: "pKVM's host stage 2 at EL2 (s2pt.pkvm.Host)",
    MM_OPS: "a teardown scheme's mm_ops (s2pt.schemes)",
}


@dataclass(frozen=True)
class Bug:
    """One switchable bug: ``name`` (a commit id, or a short name for a
    deliberate breakage), ``what`` it does, and the ``target`` it switches
    (one of :data:`TARGETS`)."""
    name: str
    what: str
    target: str

    def __post_init__(self):
        if self.target not in TARGETS:
            raise S2ptError(f"bug {self.name!r}: target={self.target!r}; one of "
                            f"{', '.join(TARGETS)}")


#: name -> Bug: every bug the model knows.
BUGS: dict[str, Bug] = {b.name: b for b in (
    # The walker: historical commits reverted, and two breakages.
    Bug("a9f0e3d5a089", "no reload of the PTE after a TABLE_PRE callback", WALKER),
    Bug("f6a27d6dc51b", "free_unlinked does not drop the subtree root's last reference",
        WALKER),
    Bug("1f0f4a2ef7a5", "the map walker advances its own PA after each leaf instead of "
        "inferring it from the IPA (KVM: arm64: Infer the PA offset from IPA in stage-2 map "
        "walker, reverted)", WALKER),
    Bug("c60d847be7b8", "the split walker puts the subtree root again after "
        "kvm_pgtable_stage2_free_unlinked() (KVM: arm64: Fix double-free following "
        "kvm_pgtable_stage2_free_unlinked(), reverted)", WALKER),
    Bug("no-rcu-read-lock", "shared walks skip rcu_read_lock() in kvm_pgtable_walk_begin(): "
        "not a real commit, an RCU reader that forgets to be one", WALKER),
    Bug("rfc-plain-prune", "RFC v1's pruning walker locks the unlinked subtree's entries with "
        "plain READ_ONCE / WRITE_ONCE instead of xchg (not a real commit: what the atomics "
        "are for)", WALKER),
    # A guest's paths (s2pt.kvm): none is a real commit.
    Bug("no-flush-after-wp", "write-protecting a memslot for dirty logging skips "
        "kvm_flush_remote_tlbs_memslot()", VM),
    Bug("no-bbm-tlbi", "faults break entries without the TLBI (KVM_PGTABLE_WALK_SKIP_BBM_TLBI): "
        "not a real commit, the hardware walker's hazard", VM),
    Bug("no-shared-walk", "faults walk without KVM_PGTABLE_WALK_SHARED while holding only the "
        "read lock: stage2_try_set_pte() does a WRITE_ONCE, not a cmpxchg. Not a real commit: "
        "the hazard the SHARED flag exists for", VM),
    Bug("collapse-under-read-lock", "the rwlock scheme's faults lose the model's NO_COLLAPSE "
        "flag: a fault under the read lock replaces a table by a block and frees it at once. "
        "Not a real commit: what Oliver Upton's rwlock sketch rules out", VM),
    # pKVM's host stage 2 (s2pt.pkvm).
    Bug("donate-no-tlbi", "set_owner breaks the covering entry without the TLBI "
        "(SKIP_BBM_TLBI): host CPUs keep the old block in their TLBs", HOST),
    Bug("coalesce-no-tlbi", "stage2_coalesce_walk_table_post breaks the table entry without "
        "its TLBI (kvm_tlb_flush_vmid_range) and frees the table: walk caches still point "
        "into it", HOST),
    # The refcount schemes' mm_ops (s2pt.schemes).
    Bug("shared-walker-count", "refcount schemes: walker references taken in page_count, the "
        "count whose value 1 means 'no valid entries', instead of a walker count of their "
        "own", MM_OPS),
    Bug("walker-count-in-ptdesc", "refcount schemes: the walker count kept in a field of the "
        "page-table descriptor, which the page's next owner reuses, instead of a count with "
        "_refcount's guarantee: get_page_unless_zero on a freed or reallocated page touches "
        "a foreign field", MM_OPS),
)}


def check_bugs(bugs, *targets) -> frozenset:
    """``bugs`` as a frozenset of names, each a known :class:`Bug` (of one of
    ``targets``, when given); S2ptError otherwise, naming the value and the
    rule."""
    bugs = validate.names("bugs", bugs, BUGS, "bug name")
    if targets:
        wrong = sorted(b for b in bugs if BUGS[b].target not in targets)
        if wrong:
            raise S2ptError(
                f"bugs={wrong!r}: " + "; ".join(f"{b} switches {TARGETS[BUGS[b].target]}"
                                                for b in wrong)
                + f", not {' or '.join(TARGETS[t] for t in targets)}")
    return bugs


def of(bugs, *targets) -> frozenset:
    """The names in ``bugs`` whose target is one of ``targets``."""
    return frozenset(b for b in bugs if BUGS[b].target in targets)
