"""Simulated physical memory for page-table pages, with ``struct page`` metadata.

Only the pages that hold page tables are simulated: each is a numpy array of
``PTRS_PER_PTE`` 64-bit descriptors at a physical address.  The guest memory
that stage 2 *maps to* is never backed; it is just numbers in descriptors.

What the kernel relies on, and what the model keeps:

* **Refcounts live in struct page, not in the table.**  A fresh page from
  ``zalloc_page`` has refcount 1; each counted PTE in it holds one more
  (``get_page(ptep)``), so ``page_count(table) == 1`` means *empty*.  The
  last ``put_page`` frees the page.  The metadata outlives the free, which is
  what makes ``get_page_unless_zero`` meaningful (and ABA possible).
* **A second count, for walkers** (``Page.walkers``), kept apart from the
  refcount above.  No kernel has it: it is the count Quentin Perret's
  refcount teardown idea (2022-04-22, never merged; s2pt.schemes'
  ``refcount`` and ``refcount-revalidate``) needs.  A fresh table holds 1
  (its parent entry's reference, the way ``zalloc_page`` gives
  ``page_count`` 1); each walker inside the table holds one more; a freed
  page holds 0.  **Where it lives decides whether get_page_unless_zero on
  it is legal.**  A walker may call it on a page that has been freed, and
  reallocated to anyone, since it read the pointer; that is legal only on a
  count whose meaning survives reallocation, and in struct page that is
  ``_refcount``: the page allocator owns it (0 while the page is free, 1
  when it is handed out, to whoever asks), and every owner of the page
  uses it as a reference count, so a stray increment and its put are
  harmless to any of them -- which is why ``folio_try_get`` works in the
  lockless page-cache lookup.  The model gives the walker count exactly
  that guarantee (the allocator sets it, for every owner, in
  :meth:`PhysMem._take` and :meth:`PhysMem.free_page`), and keeps it apart
  from ``page_count`` so that ``page_count == 1`` still means "no valid
  entries".  In the kernel both would have to share ``_refcount``, and the
  entry count would have to move to a field of the page-table descriptor
  (struct ptdesc), touched only by walkers that already hold a reference.
  A walker count kept in such a field instead -- one the page's next owner
  reuses for its own data (``Page.ptdesc`` says whether the page is a page
  table right now) -- would be incremented as a foreign field: the ops'
  ``field="ptdesc"`` variant (the mutation ``walker-count-in-ptdesc``)
  reports that as a use-after-free.  Only the refcount schemes' walker
  hooks touch the walker count.
* **Freeing poisons** the contents (``PAGE_POISON`` = 0xaa bytes), and any
  later access to the page is a use-after-free, reported through
  :meth:`PhysMem.violation`.
* **The allocator reuses** the most recently freed page first (LIFO), as a
  per-CPU page list would, so stale pointers can meet a *new* table at the
  same address.
* **The memcache** (``struct kvm_mmu_memory_cache``) is topped up from the
  allocator *before* a walk, so the walk itself never fails on the page
  allocator; an empty cache is the kernel's ``-ENOMEM`` path.
"""

from __future__ import annotations

import errno

import numpy as np

from .errors import KernelBug, S2ptError

__all__ = ["PhysMem", "Page", "MemCache", "PAGE_POISON64", "TABLE_POOL_BASE"]

#: PAGE_POISON (include/linux/poison.h) is the byte 0xaa; a poisoned
#: descriptor therefore reads as 0xaaaaaaaaaaaaaaaa.
PAGE_POISON64 = 0xAAAA_AAAA_AAAA_AAAA

#: Where the simulated allocator hands out page-table pages.
TABLE_POOL_BASE = 0x8000_0000


class Page:
    """The parts of ``struct page`` that stage-2 tables use."""

    __slots__ = ("pfn", "pa", "refcount", "walkers", "freed", "table", "private",
                 "ptdesc", "generation", "free_count")
    #: Not state (the explorer's snapshot protocol, s2pt.snapshot): how often
    #: the page was reused and freed, kept for the views' ABA explanations.
    #: Which fields are state is s2pt.sim.state.PAGE_STATE.
    sim_ignore = ("generation", "free_count")

    def __init__(self, pfn: int, pa: int, entries: int):
        self.pfn = pfn
        self.pa = pa
        self.refcount = 1
        self.walkers = 1         # the walker count (module docstring); 0 once freed
        self.freed = False
        self.table = np.zeros(entries, dtype=np.uint64)
        self.private = None      # set_page_private(): the level, for free_unlinked
        #: Whether the page is a page table now (from the walker's zalloc_page,
        #: or the PGD's allocation, until it is freed): while it is, the
        #: page-table descriptor's own fields are the table's; before and
        #: after, they belong to the page's other owners.
        self.ptdesc = False
        self.generation = 0      # bumped on every reuse (for ABA explanations)
        self.free_count = 0      # how many times this page was freed

    def __repr__(self):
        state = "free" if self.freed else f"ref={self.refcount}"
        return f"<Page {self.pa:#x} {state}>"


class PhysMem:
    """The simulated RAM that holds page tables.

    ``limit`` caps how many pages the allocator can hand out in total
    (``None``: as many as wanted), so ``-ENOMEM`` can happen.
    """

    #: Statistics, not state (s2pt.snapshot): the explorer's state of memory
    #: is every page (s2pt.sim.state.PAGE_STATE), the free list and the
    #: number of pages allocated.
    sim_ignore = ("peak", "total_allocs", "total_frees", "table_frees")
    #: Set when the memory is built (the explorer refuses a search that
    #: allocates a page, so ``pages`` maps the same pages throughout).
    sim_fixed = ("_report", "page_shift", "page_size", "entries", "limit", "base", "pages",
                 "free_hooks")

    def __init__(self, page_shift: int = 12, limit: int | None = None,
                 base: int = TABLE_POOL_BASE, report=None):
        #: report(kind, message): where violations go (default: raise KernelBug)
        self._report = report
        self.page_shift = page_shift
        self.page_size = 1 << page_shift
        self.entries = self.page_size // 8
        self.limit = limit
        self.base = base
        self.pages: dict[int, Page] = {}
        self.free_list: list[int] = []     # pfns, LIFO
        self._next_pfn = base >> page_shift
        self.allocated = 0                 # pages currently allocated
        self.peak = 0
        self.total_allocs = 0
        self.total_frees = 0
        self.table_frees = 0               # frees of pages that were page tables
        #: Called as hook(page) just before a page is poisoned and freed
        #: (the TLB model checks that no walk cache still points into it).
        self.free_hooks: list = []

    # -- errors ---------------------------------------------------------------
    def violation(self, kind: str, message: str):
        """Report a memory-safety violation to the ``report`` callable given
        at construction (a Stage2 passes its machine's, which raises
        KernelBug in sequential use and records it in the explorer)."""
        if self._report is None:
            raise KernelBug(kind, message)
        self._report(kind, message)

    # -- allocation -----------------------------------------------------------
    def available(self) -> int | None:
        return None if self.limit is None else self.limit - self.allocated

    def _take(self, pfn: int, fresh: bool) -> Page:
        if fresh:
            page = Page(pfn, pfn << self.page_shift, self.entries)
            self.pages[pfn] = page
        else:
            page = self.pages[pfn]
            page.table.fill(0)
            page.refcount = 1
            page.walkers = 1
            page.freed = False
            page.private = None
            page.ptdesc = False
            page.generation += 1
        self.allocated += 1
        self.total_allocs += 1
        if self.allocated > self.peak:
            self.peak = self.allocated
        return page

    def alloc_page(self) -> Page | None:
        """__get_free_page(GFP_ZERO): a zeroed page with refcount 1, or None."""
        if self.limit is not None and self.allocated >= self.limit:
            return None
        if self.free_list:
            return self._take(self.free_list.pop(), fresh=False)
        pfn = self._next_pfn
        self._next_pfn += 1
        return self._take(pfn, fresh=True)

    def alloc_pages_exact(self, n: int) -> list[Page] | None:
        """alloc_pages_exact(): ``n`` physically contiguous zeroed pages,
        aligned to their total size (the concatenated PGD needs this)."""
        if self.limit is not None and self.allocated + n > self.limit:
            return None
        align = 1
        while align < n:
            align <<= 1
        pfn = -(-self._next_pfn // align) * align
        self._next_pfn = pfn + n
        pages = [self._take(pfn + i, fresh=True) for i in range(n)]
        for page in pages:
            page.ptdesc = True        # the PGD: a page table from the start
        return pages

    def free_page(self, page: Page, was_table: bool = True):
        """The page goes back to the allocator, poisoned."""
        if page.freed:
            self.violation("double-free", f"free of page {page.pa:#x}, which is already free")
            return
        for hook in self.free_hooks:
            hook(page)
        page.freed = True
        page.refcount = 0
        page.walkers = 0
        page.ptdesc = False
        page.free_count += 1
        page.table.fill(PAGE_POISON64)
        self.free_list.append(page.pfn)
        self.allocated -= 1
        self.total_frees += 1
        if was_table:
            self.table_frees += 1

    # -- struct page refcounts (mm_ops->get_page/put_page/page_count) ---------
    def page_of(self, pa: int) -> Page:
        """virt_to_page(): the struct page of the page containing ``pa``."""
        page = self.pages.get(pa >> self.page_shift)
        if page is None:
            raise S2ptError(f"pa={pa:#x}: no page-table page is simulated at this address")
        return page

    def get_page(self, pa: int):
        page = self.page_of(pa)
        if page.freed:
            self.violation("use-after-free", f"get_page() on freed table page {page.pa:#x}")
        page.refcount += 1

    def put_page(self, pa: int):
        page = self.page_of(pa)
        if page.freed:
            self.violation("double-free" if page.refcount == 0 else "use-after-free",
                           f"put_page() on freed table page {page.pa:#x}")
            return
        page.refcount -= 1
        if page.refcount == 0:
            self.free_page(page)

    def page_count(self, pa: int) -> int:
        # Reading the count of a freed page is legal: struct page outlives it.
        return self.page_of(pa).refcount

    def get_page_unless_zero(self, pa: int) -> bool:
        page = self.page_of(pa)
        if page.refcount == 0:
            return False
        page.refcount += 1
        return True

    # -- page->private (set_page_private / page_private)
    def set_page_private(self, pa: int, value):
        """set_page_private(): the unlinker records the level there."""
        self.page_of(pa).private = value

    def page_private(self, pa: int):
        return self.page_of(pa).private

    # -- the walker count (a second count in struct page; see the module docstring)
    def _foreign(self, page, field: str, what: str) -> bool:
        """``field`` "ptdesc" (the mutation walker-count-in-ptdesc): the count
        is a field of the page-table descriptor, which is the table's only
        while the page is one.  Touching it on a page that is not a table
        now (free, in a memcache, ...) touches its other owner's data."""
        if field == "_refcount" or page.ptdesc:
            return False
        self.violation("use-after-free",
                       f"{what} on a walker count kept in the page-table descriptor of page "
                       f"{page.pa:#x}, which is no page table now ("
                       f"{'free' if page.freed else 'reallocated'}): the field belongs to the "
                       f"page's next owner, and the walker changed it")
        return True

    def walker_get(self, pa: int, field: str = "_refcount"):
        """Take a walker reference unconditionally (get_page() on the walker
        count).  On a freed page that is a use of freed memory: the kernel's
        get_page() VM_BUG_ONs on a zero count."""
        page = self.page_of(pa)
        if self._foreign(page, field, "walker_get()"):
            return
        if page.freed or page.walkers <= 0:
            self.violation("use-after-free",
                           f"walker reference taken on freed table page {page.pa:#x}"
                           if page.freed else
                           f"walker reference taken on table page {page.pa:#x}, whose last "
                           f"reference is gone: it is being freed")
            return
        page.walkers += 1

    def walker_get_unless_zero(self, pa: int, field: str = "_refcount") -> bool:
        """get_page_unless_zero() on the walker count: False (and nothing
        taken) once the count has reached zero, i.e. the page was freed or
        is being freed.  Legal on a freed or reallocated page, because the
        count has ``_refcount``'s guarantee (module docstring); with
        ``field="ptdesc"`` it is not."""
        page = self.page_of(pa)
        if self._foreign(page, field, "get_page_unless_zero()"):
            return False
        if page.walkers <= 0:
            return False
        page.walkers += 1
        return True

    def walker_put(self, pa: int, field: str = "_refcount") -> bool:
        """put_page_testzero() on the walker count: drop one reference and
        say whether it was the last.  It frees nothing itself: whoever drops
        the last reference frees the table (and the subtree below it)."""
        page = self.page_of(pa)
        if self._foreign(page, field, "put_page_testzero()"):
            return False
        if page.walkers <= 0:
            self.violation("use-after-free" if page.freed else "refcount",
                           f"walker reference dropped on table page {page.pa:#x}, "
                           f"whose walker count is already 0")
            return False
        page.walkers -= 1
        return page.walkers == 0

    def walker_count(self, pa: int) -> int:
        return self.page_of(pa).walkers

    # -- descriptor accesses -------------------------------------------------
    def _slot(self, pa: int, what: str):
        page = self.pages.get(pa >> self.page_shift)
        if page is None:
            raise S2ptError(f"pa={pa:#x}: no page-table page is simulated at this address")
        if pa & 7:
            raise S2ptError(f"pa={pa:#x}: descriptors are 8-byte aligned")
        if page.freed:
            self.violation("use-after-free", f"{what} of {pa:#x} in freed table page {page.pa:#x}")
        return page.table, (pa & (self.page_size - 1)) >> 3

    def read64(self, pa: int, what: str = "read") -> int:
        """READ_ONCE(*ptep): the raw 64-bit word at ``pa``."""
        table, i = self._slot(pa, what)
        return table.item(i)

    def write64(self, pa: int, value: int):
        """WRITE_ONCE(*ptep, value)."""
        table, i = self._slot(pa, "write")
        table[i] = value

    def cmpxchg64(self, pa: int, old: int, new: int) -> int:
        """cmpxchg(ptep, old, new): returns the value found."""
        table, i = self._slot(pa, "cmpxchg")
        cur = table.item(i)
        if cur == old:
            table[i] = new
        return cur

    def xchg64(self, pa: int, new: int) -> int:
        """xchg(ptep, new): store ``new`` unconditionally, return the value found."""
        table, i = self._slot(pa, "xchg")
        cur = table.item(i)
        table[i] = new
        return cur

    # -- whole-state views (tests, snapshots) ----------------------------------
    def snapshot(self) -> tuple:
        """Everything observable about memory, for byte-for-byte comparisons."""
        return (
            tuple(sorted((pfn, p.refcount, p.walkers, p.freed, p.table.tobytes())
                         for pfn, p in self.pages.items())),
            tuple(self.free_list), self._next_pfn, self.allocated,
        )

    def live_pages(self):
        return [p for p in self.pages.values() if not p.freed]


class MemCache:
    """struct kvm_mmu_memory_cache: pages set aside before a walk.

    (In the explorer's machine state, s2pt.sim.state, a memcache is the
    list of pages it holds.)

    ``topup(min)`` is __kvm_mmu_topup_memory_cache(mc, capacity, min)
    (virt/kvm/kvm_main.c): nothing to do if ``min`` objects are already
    held; otherwise allocate until the cache holds ``capacity`` objects
    (``while (mc->nobjs < mc->capacity)``).  An allocation that fails after
    ``min`` objects are held still returns 0 and keeps what it got; one
    that fails earlier returns ``-ENOMEM`` (the pages already taken stay in
    the cache, as in the kernel).  kvm_mmu_topup_memory_cache(mc, min) is
    the same with capacity KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE (40 on arm64):
    the vCPU caches in :mod:`s2pt.kvm` are ``MemCache(mm, 40)``.

    Model simplification (kernel: every cache has a capacity and a top-up
    fills to it; here: a cache built with ``capacity=None`` fills to exactly
    ``min``).  Stage2.map's temporary caches and the explorer's scenarios
    use that, so their page counts -- and the explorer's state space -- do
    not grow by pages nobody uses.

    ``alloc()`` is kvm_mmu_memory_cache_alloc(); the walker calls it
    through ``mm_ops->zalloc_page(mc)``.
    """

    def __init__(self, mem: PhysMem, capacity: int | None = None):
        self.mem = mem
        self.capacity = capacity
        self.objects: list[Page] = []

    @property
    def nobjs(self) -> int:
        return len(self.objects)

    def __repr__(self):
        cap = "" if self.capacity is None else f" of {self.capacity}"
        return f"<MemCache: {len(self.objects)} pages{cap}>"

    def topup(self, min_objs: int) -> int:
        """0 on success, -ENOMEM (as a negative int) when fewer than
        ``min_objs`` pages can be held."""
        objects = self.objects
        if len(objects) >= min_objs:
            return 0
        capacity = self.capacity
        if capacity is None:
            # Fill to exactly min (see the class docstring); all or nothing,
            # so a failed top-up leaves the model unchanged.
            need = min_objs - len(objects)
            avail = self.mem.available()
            if avail is not None and avail < need:
                return -errno.ENOMEM
            for _ in range(need):
                objects.append(self.mem.alloc_page())
            return 0
        if min_objs > capacity:
            # kvm_mmu_topup_memory_cache() WARNs and clamps min; a request
            # beyond the capacity can never be met here.
            return -errno.ENOMEM
        while len(objects) < capacity:
            page = self.mem.alloc_page()
            if page is None:
                return 0 if len(objects) >= min_objs else -errno.ENOMEM
            objects.append(page)
        return 0

    def alloc(self) -> Page | None:
        return self.objects.pop() if self.objects else None

    def free_all(self):
        """kvm_mmu_free_memory_cache(): give unused pages back."""
        while self.objects:
            self.mem.free_page(self.objects.pop(), was_table=False)
