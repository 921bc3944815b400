# Notebook 07: the rwlock's costs, the two counts, the naive race and each step of the
# fix, with the step numbers and counts the prose reads off the runs.
def _first(run, cpu, prefix):
    return next(e.index for e in run.events if (cpu is None or e.cpu == cpu)
                and step_text(run, e).startswith(prefix))

# rwlock: logging off costs the host (TLBIs, tables freed) and the guest (refaults); rcu neither at once
(host_rcu, faults_rcu), (host_rw, faults_rw) = trips["rcu"], trips["rwlock"]
assert host_rcu["TLBIs"] == 0 and host_rw["TLBIs"] > 0 and host_rw["tables freed"] > 0
assert faults_rw == 32 > faults_rcu
says(f"reads included ({faults_rw} regions here)")
assert logging_off_refaults("rwlock") > 0 == logging_off_refaults("rcu")
# Under rwlock a fault never unlinks: no break of L2[0], nothing freed; vCPU0 back in the guest at step 9
assert not any(ev.op[0] in ("cmpxchg", "xchg") for ev in rw.events) and not rw.frees
assert [ev.op[0] for ev in rw.events][-1] == "cpu_relax" and rw.events[-1].index == 9
assert rw.events[-1].function == "kvm_handle_guest_abort"
says("At step 9 it is back in the guest (`cpu_relax()` in `kvm_handle_guest_abort()`'s loop)")
assert not any(ev.op[0] in ("cmpxchg", "smp_store_release", "WRITE_ONCE") for ev in rw.events)
says("maps nothing, and unlocks")
# The livelock: a complete search, a lasso of 20 + 16 steps on vCPU0, and nothing else
assert r_rw.complete and r_rw.kinds == {"livelock"} and r_rw.verdict == "violation"
_ll = r_rw.found["livelock"]
assert _ll.cycle_start == 10 and len(_ll.cycle) == 16 and set(_ll.cycle) == {0}, (_ll.cycle_start, _ll.cycle)
says("Here the stem is 10 steps (vCPU1's whole fault) and the loop is vCPU0's 16 steps from its first")
_lasso = s2pt.replay("collapse-vs-fault", "rwlock", _ll.schedule_text, max_steps=_ll.cycle_start + 10 * len(_ll.cycle))
_stem = [e.cpu for e in _lasso.events[:_ll.cycle_start]]
assert _stem == [1] * 10 and _stem.count(1) == len([e for e in _lasso.events if e.cpu == 1]), _stem
_loop = [e.op[0] for e in _lasso.events[_ll.cycle_start:_ll.cycle_start + len(_ll.cycle)]]
assert _loop[0] == "read_lock" and _loop[-1] == "read_unlock" and _loop.count("read_lock") == 2, _loop
assert _loop.index("cpu_relax") == _loop.index("read_lock", 1) - 1, _loop
says("the fault takes the read lock, finds the table where it wants its block and backs off, `cpu_relax()` sends it back round")
assert "repeat forever" in _ll.diagram and "^^^ LIVELOCK ^^^" in _ll.diagram
assert not r_rw.window["reached"] and r_rw.window["reason"] == "no run unlinks a table"
# The commit ends it: no livelock, never arises, and the block mapped after the unmap
from s2pt.sim.search import NEVER_ARISES as _NA
assert commit.complete and not commit.kinds and commit.verdict == _NA
assert commit.window["stages"][0]["reached"] and not commit.window["reached"]
says("The verdict is the one that notebook 05, section 6, introduced, **safe: the race never arises**")
assert after.outcome == "done" and not after.violations and rounds >= 1 and level == 2
says("maps its block into empty space")
for _scheme in ("rwlock-collapse-write", "rwlock-relax-page"):
    _v = s2pt.explore("collapse-vs-fault", _scheme, details=False)
    assert _v.complete and _v.verdict == _NA, (_scheme, _v.verdict)
# The read side must never unlink: the mutation is a use-after-free
assert "use-after-free" in mut.kinds
assert "held for write" in (uvc.blocked(0) or "")
# Two counts, at the moments the prose reads them
_rows = {}
for _steps in (9, 25, 33):
    _rec = Recorder.replay(full, cpus[:_steps])
    _rows[_steps] = next(v for _k, sec, label, v in shared_state(_rec)
                         if sec == "table pages" and label.startswith("L3"))
assert _rows[9].endswith("page_count 4, walker count 2"), _rows
assert _rows[25].endswith("page_count 4, walker count 1") and "unlinked" in _rows[25], _rows
assert _rows[33].endswith("walker count 0"), _rows
assert any(step_text(full, e) == "page_private(0x80002000) = 2" for e in full.events if e.cpu == 1)
assert any(step_text(full, e) == "set_page_private(0x80002000, 2)" for e in full.events if e.cpu == 0)
says("`page_count 4` (three valid page entries, +1) and walker count 2")
says("`page_count` is still 4")
says("The walker count is 1")
# page_count and the walker count shared: they leak
assert shared.kinds == {"leak"}
# A walker count without _refcount's guarantee (a page-table descriptor field) is caught
_ptdesc = s2pt.explore("collapse-vs-fault", "refcount-revalidate", bugs=["walker-count-in-ptdesc"], details=False)
assert "use-after-free" in _ptdesc.kinds
says("The mutation `walker-count-in-ptdesc` makes the other choice")
says("The count must be one every owner of the page uses the same way, `_refcount`")
# The naive race, and each step of the fix
assert naive.complete and "use-after-free" in naive.kinds
assert by_hand.violations[0].kind == "use-after-free" and by_hand.violations[0].actor == "vCPU1"
assert uaf.schedule_text == "0*5 1*5 0*10 1"               # the schedule the prose has you drive
_u = s2pt.replay("collapse-vs-fault", "refcount", uaf.schedule_text)
_read = _first(_u, 1, "READ_ONCE(L2[0])")
_last = _first(_u, 0, "walker_put(0x80002000) = last reference")
_get = _first(_u, 1, "walker_get(0x80002000)")
says(f"vCPU1 read the table pointer at step {_read} and had not yet taken its reference")
says(f"dropped the parent's reference (step {_last})")
says(f"At step {_get} vCPU1 takes its reference on a freed page")
failed = [ev for ev in step1.events if ev.cpu == 1 and ev.op[0] == "walker_get_unless_zero" and not ev.result]
assert failed and not step1.violations
says(f"vCPU1 read `L2[0]` (the table) at step {_first(step1, 1, 'READ_ONCE(L2[0])')}")
assert [v.kind for v in aba.violations] == ["lost-update"]
says(f"The collapse freed that page (step {_first(aba, 0, 'walker_put(0x80002000) = last reference')})")
says(f"got it back from `zalloc_page` (step {_first(aba, 0, 'zalloc_page')})")
got = [ev for ev in step3.events if ev.cpu == 1 and ev.op[0] == "walker_get_unless_zero" and ev.result]
assert len(got) == 2 and not step3.violations                 # L2 table, then the reused page
assert same.outcome == "done" and not same.violations
# Exhaustive: the naive scheme fails, the fixed one passes, every search complete
for (name, scheme), r in fixed.items():
    assert r.complete and (bool(r.kinds) == (scheme == "refcount")), (name, scheme, r.kinds)
# "For notebook 04's 16 GiB guest the same trade was ...": that run, again
def _after_logging(size=16 << 30):
    g = s2pt.VM(eager_split_chunk=2 << 20)
    s = g.add_memslot(BASE, size, backing="2M")
    g.touch(s.gpa, s.size, write=True, stride=2 << 20)
    g.enable_dirty_logging(s)
    g.disable_dirty_logging(s)
    return g, s
_cost = {}
for _path in ("lazy", "unmap"):
    _g, _s = _after_logging()
    with _g.measure() as _host:
        if _path == "unmap":
            _g.unmap_memslot(_s)
    with _g.measure() as _guest:
        _g.touch(_s.gpa, _s.size, stride=64 * PAGE, write_every=10)
    _cost[_path] = (_host, _guest)
says(f"the same trade was {_cost['unmap'][0]['dcache_clean_inval_poc'] / 1e6:.1f} million TLBIs and cache cleans "
     f"for the host, and {_cost['unmap'][1]['faults']} faults against {_cost['lazy'][1]['faults']} for the guest")
assert round(_cost["unmap"][0].tlbis / 1e6, 1) == round(_cost["unmap"][0]["dcache_clean_inval_poc"] / 1e6, 1)
