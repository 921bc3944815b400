"""The one declaration table: what every scheme shows on every scenario.

:data:`DECLARATIONS` is ``{scenario: {scheme: kinds or why-not}}``, one row
per scenario (in the order :data:`s2pt.scenarios.SCENARIOS` lists them) and
one cell per scheme of :data:`s2pt.schemes.SCHEMES`:

* a tuple of violation kinds (:data:`s2pt.sim.violation.KINDS`): the scheme
  is declared on the scenario, and those kinds are expected **Sometimes**
  (some interleaving shows each) -- every other kind is expected **Never**;
  ``()`` declares that nothing is ever found;
* a string: the scenario does not declare the scheme, and this is why (the
  explorer refuses the pair and says so).

Every cell is filled: :mod:`s2pt.scenarios` checks at import that each
scenario has a row and each row a cell for every scheme, and derives each
scenario's ``expect``, ``why_not``, ``expected()`` and ``check_scheme()``
from it.  Adding a scheme is one column here; adding a scenario one row
(and its builder in :mod:`s2pt.scenarios.guest` or
:mod:`s2pt.scenarios.pkvm`).  ``tests/test_explorer.py`` checks every
declaration exhaustively.

:data:`MUTATIONS` lists the deliberately broken variants the explorer must
catch (``python -m s2pt compare --mutations``).
"""

from __future__ import annotations

__all__ = ["DECLARATIONS", "MUTATIONS"]

# ---------------------------------------------------------------------------
# Why a scenario does not declare a scheme
# ---------------------------------------------------------------------------

#: pKVM's hypervisor has no RCU.
NO_RCU_AT_EL2 = (
    "pKVM's hypervisor has no RCU: at EL2 kvm_pgtable_walk_begin() returns -EPERM for a "
    "KVM_PGTABLE_WALK_SHARED walk (\"only non-shared table walkers are allowed in the "
    "hypervisor\"), so no fault can be an RCU reader there")
RCU_RFC_NO_RCU_AT_EL2 = ("rcu-rfc runs guest faults as shared walks under kvm->mmu_lock, like "
                         "rcu; " + NO_RCU_AT_EL2)
NONE_AT_EL2 = (
    "'none' runs faults as shared walks under read_lock(&kvm->mmu_lock); the host stage 2 has "
    "no kvm->mmu_lock and refuses shared walks at EL2 (-EPERM); its free-at-once with "
    "exclusive walks under one lock is hyp-lock")
_NO_MMU_LOCK = ("{} is a scheme of kvm->mmu_lock for a guest's stage 2; the host stage 2 at EL2 "
                "has only host_mmu.lock (a hyp_spinlock_t) and refuses shared walks (-EPERM)")
WRITE_LOCK_AT_EL2 = _NO_MMU_LOCK.format("write-lock")
RWLOCK_AT_EL2 = _NO_MMU_LOCK.format("rwlock") + (
    ". The thread's pKVM question is asked in host-fault-vs-donate-shared: coalescing (the "
    "host stage 2's unlink) would go on the write side, but host faults and donations cannot "
    "share the read side either (the fault path checks, then acts); see "
    "s2pt.schemes.RwlockScheme")
COLLAPSE_WRITE_AT_EL2 = _NO_MMU_LOCK.format("rwlock-collapse-write")
RELAX_PAGE_AT_EL2 = _NO_MMU_LOCK.format("rwlock-relax-page")
REFCOUNT_AT_EL2 = (
    "this scenario races on pKVM's host stage 2 at EL2 under hyp-lock (host_mmu.lock, "
    "exclusive walks only): walker references would change nothing there; the refcount "
    "schemes run shared guest faults under read_lock(&kvm->mmu_lock)")

#: host-fault-vs-donate-shared: the rwlock question, not any other scheme's.
_SHARED = ("this scenario asks the rwlock question of pKVM's host stage 2 (host faults and "
           "donations sharing the read side of host_mmu.lock made an rwlock, with shared walks "
           "at EL2); {}")
_NOT_THE_QUESTION = "{} is a scheme of kvm->mmu_lock for a guest's stage 2, not the question"

#: aba-table-reuse-same (s2pt.scenarios.ABA_SAME) is replayed, not searched.
_ABA_SAME = ("aba-table-reuse-same is replayed with chosen schedules (tests/test_refcount.py, "
             "notebook 07), not searched: it declares the refcount schemes whose walkers it is "
             "about, and 'none' and 'rcu' as the baselines; {}")

#: The kinds a walk that is not KVM_PGTABLE_WALK_SHARED shows when two
#: faults run on the read side at once (map-vs-map-no-shared).
NO_SHARED = ("lost-update", "leak", "refcount", "warn")

# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------

#: scenario -> {scheme -> the kinds expected Sometimes (every other kind
#: Never), or why the scenario does not declare the scheme}.
DECLARATIONS = {
    "collapse-vs-fault": {
        "none": ("use-after-free",),
        "rcu": (),
        "hyp-lock": (),
        "write-lock": (),
        # vCPU0's fault wants the block, finds the table and may not collapse
        # it on the read side: the walk maps nothing and returns -EAGAIN, and
        # the guest takes the same fault again, for as long as the table is
        # there (until the memslot's commit unmaps it, which this scenario
        # does not run; collapse-vs-commit does).
        "rwlock": ("livelock",),
        # The collapse runs under the write lock: no software walker is
        # inside the table it frees at once.
        "rwlock-collapse-write": (),
        # No fault asks for a block over a table: nothing is unlinked on the
        # read side (vCPU0's write fault relaxes its page).
        "rwlock-relax-page": (),
        "rcu-rfc": (),
        # the walker takes its reference after the unlinker dropped the last one
        "refcount": ("use-after-free",),
        "refcount-revalidate": (),
    },
    "collapse-vs-fault-3": {
        "none": ("use-after-free",),
        "rcu": (),
        "hyp-lock": (),
        "write-lock": (),
        "rwlock": ("livelock",),
        "rwlock-collapse-write": (),
        "rwlock-relax-page": (),
        "rcu-rfc": (),
        "refcount": ("use-after-free",),
        "refcount-revalidate": (),
    },
    "collapse-vs-fault-4": {
        "none": ("use-after-free",),
        "rcu": (),
        "hyp-lock": (),
        "write-lock": (),
        "rwlock": ("livelock",),
        "rwlock-collapse-write": (),
        "rwlock-relax-page": (),
        "rcu-rfc": (),
        "refcount": ("use-after-free",),
        "refcount-revalidate": (),
    },
    "unmap-vs-fault": {
        "none": (),
        "rcu": (),
        "hyp-lock": (),
        "write-lock": (),
        "rwlock": (),
        "rwlock-collapse-write": (),
        "rwlock-relax-page": (),
        "rcu-rfc": (),
        "refcount": (),
        "refcount-revalidate": (),
    },
    "split-vs-fault": {
        "none": (),
        "rcu": (),
        "hyp-lock": (),
        "write-lock": "write-lock models v6.1, and eager page splitting "
                      "(kvm_mmu_split_huge_pages, KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE) arrived "
                      "in v6.5",
        "rwlock": (),
        "rwlock-collapse-write": (),
        "rwlock-relax-page": (),
        "rcu-rfc": (),
        "refcount": (),
        "refcount-revalidate": (),
    },
    "stash-old-pte": {
        # a9f0e3d5a089 reverted: freed at once the table the collapsing
        # walker then descends into is a use-after-free; deferred, harmless.
        "none": ("use-after-free",),
        "rcu": (),
        # The pKVM bug (host stage 2, freed at once under the one lock).
        "hyp-lock": ("use-after-free",),
        "write-lock": "write-lock models v6.1, and the stale table PTE of a9f0e3d5a089 never "
                      "existed there: v6.1's TABLE_PRE visitor only cleared the table entry and "
                      "set its anchor, then descended on purpose into the table it had unlinked, "
                      "which it freed on the way back up (stage2_map_walk_table_post).  The bug "
                      "came with 5c359cca1faf (v6.2), which freed the subtree inside TABLE_PRE, "
                      "and a9f0e3d5a089 fixed it in v6.4",
        "rwlock": (),
        # the collapse frees the table at once under the write lock, and the
        # walker then descends into it (the pKVM bug, as under hyp-lock)
        "rwlock-collapse-write": ("use-after-free",),
        "rwlock-relax-page": (),
        "rcu-rfc": (),
        # the collapser descends into the table it freed
        "refcount": ("use-after-free",),
        # get_page_unless_zero fails on the freed table: the walker visits the
        # entry again and finds its own block (a9f0e3d5a089 is not needed here)
        "refcount-revalidate": (),
    },
    "collapse-vs-hw-walk": {
        "none": (),
        "rcu": (),
        "hyp-lock": (),
        "write-lock": (),
        "rwlock": (),
        "rwlock-collapse-write": (),
        "rwlock-relax-page": (),
        "rcu-rfc": (),
        "refcount": (),
        "refcount-revalidate": (),
    },
    "collapse-vs-hw-walk-no-tlbi": {
        # Without the TLBI before the free, every scheme that frees the
        # collapsed table fails, RCU included: RCU does not cover the MMU.
        "none": ("use-after-free",),
        "rcu": ("use-after-free",),
        "hyp-lock": ("use-after-free",),
        "write-lock": ("use-after-free",),
        # no fault unlinks anything on the read side
        "rwlock": (),
        "rwlock-collapse-write": ("use-after-free",),
        "rwlock-relax-page": (),
        "rcu-rfc": ("use-after-free",),
        "refcount": ("use-after-free",),
        "refcount-revalidate": ("use-after-free",),
    },
    "map-vs-map": {
        "none": (),
        "rcu": (),
        "hyp-lock": (),
        "write-lock": (),
        "rwlock": (),
        "rwlock-collapse-write": (),
        "rwlock-relax-page": (),
        "rcu-rfc": (),
        "refcount": (),
        "refcount-revalidate": (),
    },
    "map-vs-map-no-shared": {
        # Every scheme with parallel faults loses an update without cmpxchg;
        # the exclusive ones never needed it.
        "none": NO_SHARED,
        "rcu": NO_SHARED,
        "hyp-lock": (),
        "write-lock": (),
        "rwlock": NO_SHARED,
        "rwlock-collapse-write": NO_SHARED,
        "rwlock-relax-page": NO_SHARED,
        "rcu-rfc": NO_SHARED,
        "refcount": NO_SHARED,
        "refcount-revalidate": NO_SHARED,
    },
    "donate-vs-host-access": {
        "none": NONE_AT_EL2,
        "rcu": NO_RCU_AT_EL2,
        "hyp-lock": (),
        "write-lock": WRITE_LOCK_AT_EL2,
        "rwlock": RWLOCK_AT_EL2,
        "rwlock-collapse-write": COLLAPSE_WRITE_AT_EL2,
        "rwlock-relax-page": RELAX_PAGE_AT_EL2,
        "rcu-rfc": RCU_RFC_NO_RCU_AT_EL2,
        "refcount": REFCOUNT_AT_EL2,
        "refcount-revalidate": REFCOUNT_AT_EL2,
    },
    "donate-vs-host-access-no-tlbi": {
        "none": NONE_AT_EL2,
        "rcu": NO_RCU_AT_EL2,
        "hyp-lock": ("isolation", "stale-tlb"),
        "write-lock": WRITE_LOCK_AT_EL2,
        "rwlock": RWLOCK_AT_EL2,
        "rwlock-collapse-write": COLLAPSE_WRITE_AT_EL2,
        "rwlock-relax-page": RELAX_PAGE_AT_EL2,
        "rcu-rfc": RCU_RFC_NO_RCU_AT_EL2,
        "refcount": REFCOUNT_AT_EL2,
        "refcount-revalidate": REFCOUNT_AT_EL2,
    },
    "coalesce-vs-host-fault": {
        "none": NONE_AT_EL2,
        "rcu": NO_RCU_AT_EL2,
        "hyp-lock": (),
        "write-lock": WRITE_LOCK_AT_EL2,
        "rwlock": RWLOCK_AT_EL2,
        "rwlock-collapse-write": COLLAPSE_WRITE_AT_EL2,
        "rwlock-relax-page": RELAX_PAGE_AT_EL2,
        "rcu-rfc": RCU_RFC_NO_RCU_AT_EL2,
        "refcount": REFCOUNT_AT_EL2,
        "refcount-revalidate": REFCOUNT_AT_EL2,
    },
    "coalesce-vs-host-fault-no-tlbi": {
        "none": NONE_AT_EL2,
        "rcu": NO_RCU_AT_EL2,
        "hyp-lock": ("use-after-free", "stale-tlb"),
        "write-lock": WRITE_LOCK_AT_EL2,
        "rwlock": RWLOCK_AT_EL2,
        "rwlock-collapse-write": COLLAPSE_WRITE_AT_EL2,
        "rwlock-relax-page": RELAX_PAGE_AT_EL2,
        "rcu-rfc": RCU_RFC_NO_RCU_AT_EL2,
        "refcount": REFCOUNT_AT_EL2,
        "refcount-revalidate": REFCOUNT_AT_EL2,
    },
    "host-fault-vs-donate-shared": {
        "none": _SHARED.format(NONE_AT_EL2),
        "rcu": _SHARED.format(NO_RCU_AT_EL2),
        "hyp-lock": _SHARED.format("pKVM's answer is one spinlock, under which "
                                   "donate-vs-host-access and coalesce-vs-host-fault find "
                                   "nothing"),
        "write-lock": _SHARED.format(_NOT_THE_QUESTION.format("write-lock")),
        # The fault checks, then acts (host_stage2_adjust_range, then the map).
        "rwlock": ("isolation",),
        "rwlock-collapse-write": _SHARED.format(_NOT_THE_QUESTION.format(
            "rwlock-collapse-write")),
        "rwlock-relax-page": _SHARED.format(_NOT_THE_QUESTION.format("rwlock-relax-page")),
        "rcu-rfc": _SHARED.format(RCU_RFC_NO_RCU_AT_EL2),
        "refcount": _SHARED.format(_NOT_THE_QUESTION.format("refcount")),
        "refcount-revalidate": _SHARED.format(_NOT_THE_QUESTION.format("refcount-revalidate")),
    },
    "collapse-vs-map": {
        "none": ("use-after-free", "leak", "warn"),
        "rcu": (),
        "hyp-lock": (),
        "write-lock": (),
        "rwlock": (),
        "rwlock-collapse-write": (),
        "rwlock-relax-page": (),
        "rcu-rfc": (),
        "refcount": ("use-after-free",),
        "refcount-revalidate": (),
    },
    "unmap-vs-collapse": {
        # The unmap takes the write lock: no walker is inside when it frees;
        # the collapse that loses to it, or wins, drops the parent's reference.
        "none": (),
        "rcu": (),
        "hyp-lock": (),
        "write-lock": (),
        "rwlock": (),
        "rwlock-collapse-write": (),
        "rwlock-relax-page": (),
        "rcu-rfc": (),
        "refcount": (),
        "refcount-revalidate": (),
    },
    "logging-mismatch": {
        # under 'none' the block also replaces a fresh table while its
        # installer is inside
        "none": ("use-after-free", "leak", "warn"),
        "rcu": (),
        "hyp-lock": (),
        "write-lock": (),
        "rwlock": (),
        "rwlock-collapse-write": (),
        "rwlock-relax-page": (),
        "rcu-rfc": (),
        # vCPU0's block replaces the table vCPU1 has just installed, before
        # vCPU1's reference on it
        "refcount": ("use-after-free",),
        "refcount-revalidate": (),
    },
    "split-double-put": {
        "none": (),
        "rcu": (),
        "hyp-lock": "under one spinlock the split cannot run beside a fault, so its break "
                    "never loses (the scenario is a split on the read side)",
        "write-lock": "before 6.2 no walk was shared: a split under the read lock, racing "
                      "vCPU faults, is a later proposal",
        "rwlock": (),
        "rwlock-collapse-write": (),
        "rwlock-relax-page": (),
        "rcu-rfc": (),
        # A split on the read side walks shared, so it takes walker
        # references; its unused subtree was never linked, and it frees that
        # at once.
        "refcount": (),
        "refcount-revalidate": (),
    },
    "aba-table-reuse": {
        "none": ("use-after-free", "lost-update"),
        "rcu": (),
        # Under write-lock and hyp-lock the collapse excludes the relax_perms
        # walk, so the page is reused only once no walker holds its pointer.
        "hyp-lock": (),
        "write-lock": (),
        # Under rwlock vCPU0's fault collapses nothing (no fault unlinks a
        # table on the read side), so nothing is freed or reused.
        "rwlock": (),
        "rwlock-collapse-write": (),
        "rwlock-relax-page": (),
        "rcu-rfc": (),
        # the page reused elsewhere: the naive walker walks the ROM's new table
        "refcount": ("use-after-free", "lost-update"),
        "refcount-revalidate": (),
    },
    "collapse-vs-commit": {
        "none": (),
        "rcu": (),
        "hyp-lock": (),
        "write-lock": (),
        # the commit unmaps the slot: vCPU0's refault then maps the block
        "rwlock": (),
        "rwlock-collapse-write": (),
        "rwlock-relax-page": "under rwlock-relax-page vCPU0 relaxes its page instead of asking "
                             "for the block, so it has no -EAGAIN refaults for the commit to "
                             "end.  And once the commit has unmapped the page, this scenario's "
                             "retried access keeps the fault it took first (a permission fault, "
                             "s2pt.kvm.guest_fault) where the kernel's guest would take a "
                             "translation fault and map the page: relaxing a page that is gone "
                             "returns -EAGAIN for ever, a livelock of the model, not of the "
                             "scheme",
        "rcu-rfc": (),
        "refcount": (),
        "refcount-revalidate": (),
    },
    "aba-table-reuse-same": {
        "none": ("use-after-free",),
        "rcu": (),
        "hyp-lock": _ABA_SAME.format("hyp-lock is pKVM's lock for the host stage 2 at EL2 "
                                     "(host_mmu.lock), a question on a guest's table, not "
                                     "this one's"),
        "write-lock": _ABA_SAME.format("under write-lock the collapse excludes every walker"),
        "rwlock": _ABA_SAME.format("under rwlock no fault collapses on the read side"),
        "rwlock-collapse-write": _ABA_SAME.format(
            "under rwlock-collapse-write the collapse excludes every walker"),
        "rwlock-relax-page": _ABA_SAME.format(
            "under rwlock-relax-page no fault collapses"),
        "rcu-rfc": _ABA_SAME.format("rcu-rfc defers the free as rcu does"),
        "refcount": ("use-after-free",),
        "refcount-revalidate": (),
    },
}

# ---------------------------------------------------------------------------
# Mutations: deliberately broken variants the explorer must catch
# ---------------------------------------------------------------------------

#: name -> (scheme, scenario, the kind it must show, what it is, the bugs it
#: switches on besides the scenario's own).
MUTATIONS = {
    "no-bbm-tlbi/rcu": (
        "rcu", "collapse-vs-hw-walk-no-tlbi", "use-after-free",
        "RCU with the break-before-make TLBI left out: RCU does not cover the hardware walker, "
        "whose walk cache still points at the table when the callback frees it", ()),
    "no-bbm-tlbi/none": (
        "none", "collapse-vs-hw-walk-no-tlbi", "use-after-free",
        "free-at-once with the break-before-make TLBI left out", ()),
    "no-shared-walk/rcu": (
        "rcu", "map-vs-map-no-shared", "lost-update",
        "faults in parallel whose walks are not KVM_PGTABLE_WALK_SHARED: plain stores instead "
        "of cmpxchg, so one vCPU's new table overwrites the other's", ()),
    "no-shared-walk/none": (
        "none", "map-vs-map-no-shared", "lost-update",
        "the same plain stores under the counterfactual 'none'", ()),
    "no-reload/none": (
        "none", "stash-old-pte", "use-after-free",
        "a9f0e3d5a089 reverted: no reload after a TABLE_PRE callback, so the collapsing walker "
        "descends into the table it has just freed", ()),
    "donate-no-tlbi/hyp-lock": (
        "hyp-lock", "donate-vs-host-access-no-tlbi", "isolation",
        "pKVM donates a page without the TLBI after breaking the host's block: a host CPU's TLB "
        "keeps the 2M block over the guest's page", ()),
    "coalesce-no-tlbi/hyp-lock": (
        "hyp-lock", "coalesce-vs-host-fault-no-tlbi", "use-after-free",
        "pKVM coalesces and frees the host's tables without the TLBI of their break: a host "
        "CPU's walk cache still points into them", ()),
    "rfc-plain-prune/rcu-rfc": (
        "rcu-rfc", "collapse-vs-map", "leak",
        "RFC v1's pruning walker with plain READ_ONCE / WRITE_ONCE instead of xchg: vCPU1 "
        "installs its page between the pruner's read and its store, the store throws the "
        "install away (the block still maps the page, so the guest loses nothing) and the "
        "reference vCPU1 took on the level-3 table is never dropped: the table leaks",
        ("rfc-plain-prune",)),
    "no-rcu-read-lock/rcu": (
        "rcu", "collapse-vs-fault", "use-after-free",
        "RCU whose shared walkers forget rcu_read_lock() (kvm_pgtable_walk_begin): the grace "
        "period does not wait for vCPU1, and the callback frees the table it walks",
        ("no-rcu-read-lock",)),
    "collapse-under-read-lock/rwlock": (
        "rwlock", "collapse-vs-fault", "use-after-free",
        "rwlock whose faults may replace a table by a block under the read lock: vCPU0 "
        "collapses the table dirty logging left and frees it at once while vCPU1 walks it",
        ("collapse-under-read-lock",)),
    "f6a27d6dc51b/rcu": (
        "rcu", "collapse-vs-fault", "leak",
        "f6a27d6dc51b reverted: kvm_pgtable_stage2_free_unlinked() does not drop the subtree "
        "root's last reference, so every collapsed table leaks", ("f6a27d6dc51b",)),
    "c60d847be7b8/rcu": (
        "rcu", "split-double-put", "double-free",
        "c60d847be7b8 reverted: the split walker that lost its break frees its unused subtree "
        "and then puts the root once more", ("c60d847be7b8",)),
    "1f0f4a2ef7a5/rcu": (
        "rcu", "logging-mismatch", "lost-update",
        "1f0f4a2ef7a5 reverted: vCPU0 installs its block, advances its PA by 2M, finds vCPU1's "
        "table on reloading and maps the whole table 2M off", ("1f0f4a2ef7a5",)),
    "no-revalidate/refcount": (
        "refcount", "aba-table-reuse", "lost-update",
        "refcount without revalidation: the walker takes its reference after reading the table "
        "pointer, on a page that was freed and reused as the ROM's table; it makes a read-only "
        "page writable", ()),
    "no-revalidate/refcount-uaf": (
        "refcount", "collapse-vs-fault", "use-after-free",
        "refcount without revalidation: the walker takes its reference on a table whose last "
        "reference the collapse has just dropped", ()),
    "shared-walker-count/refcount-revalidate": (
        "refcount-revalidate", "collapse-vs-fault", "leak",
        "walker references kept in page_count, where 1 means 'no valid entries': the unlinked "
        "table's entries keep the count above zero, so the last walker reference is never the "
        "last reference and the table is never freed", ("shared-walker-count",)),
    # Where refcount-revalidate's walker count lives (s2pt.memory): only a
    # count whose meaning survives reallocation makes get_page_unless_zero
    # legal on a page freed since the walker read its pointer.
    "walker-count-in-ptdesc/refcount-revalidate": (
        "refcount-revalidate", "collapse-vs-fault", "use-after-free",
        "refcount-revalidate with its walker count in a field of the page-table descriptor: "
        "vCPU1 read the level-3 table's pointer, the collapse freed the table, and "
        "get_page_unless_zero then touches a field that now belongs to the page's next owner",
        ("walker-count-in-ptdesc",)),
}
