# Notebook 06: the grace period drawn from a run and the step numbers the prose reads off
# it, rcu-rfc's costs, the boring traversal, the MMU, and the exhaustive searches.
def _at(run, cpu, op, nth=0, text=None):
    hits = [e.index for e in run.events if e.cpu == cpu and e.op[0] == op
            and (text is None or step_text(run, e).startswith(text))]
    return hits[nth] if nth < len(hits) else hits[-1]

# The run: no violation, the table freed by the callback thread
assert w.outcome == "done" and not w.violations
[(step, cpu, _)] = w.frees.values()
assert w.actors[cpu].name == "rcu"
brk, pub, call = _at(w, 0, "cmpxchg"), _at(w, 0, "smp_store_release"), _at(w, 0, "call_rcu")
sub1 = _at(w, 1, "READ_ONCE", text="READ_ONCE(L2[0])")
reread0 = [e.index for e in w.events if e.cpu == 0 and step_text(w, e).startswith("READ_ONCE(L2[0])")][-1]
cx1 = _at(w, 1, "cmpxchg")
says(f"At step {brk} vCPU0's `cmpxchg` breaks the level-2 entry")
says(f"at step {pub} `stage2_make_pte()` publishes the block")
says(f"vCPU1 read it at step {sub1}, before the break")
says(f"vCPU0 re-reads at step {reread0}")
says(f"its `cmpxchg` at step {cx1} succeeds")
says(f"Between step {pub} and the free")
says(f"`call_rcu()` at step {call} does not free anything")
_priv = _at(w, 0, "set_page_private")
assert _priv == call - 1
says(f"(At step {_priv} vCPU0 recorded the table's level in the page's `page->private`")
# One grace period: from call_rcu to the last pre-existing reader's unlock, then the free
[g] = t.periods
assert g["start"] == call + 1 and [w.actors[c].name for c in g["waited_for"]] == ["vCPU0", "vCPU1"]
unlock1 = _at(w, 1, "rcu_read_unlock")
assert g["end"] == unlock1 + 1 < step
says(f"vCPU1, leaves at step {unlock1}")
# vCPU2's section began after call_rcu and outlived the free: not waited for
enter2, leave2 = _at(w, 2, "rcu_read_lock"), _at(w, 2, "rcu_read_unlock")
assert call < enter2 and leave2 > step
says(f"Its section began at step {enter2}, after `call_rcu()`, and lasts until step {leave2}")
says(f"vCPU2 entered its section (step {enter2}) after vCPU0 had published the block and called "
     f"`call_rcu()` (steps {pub}-{call})")
# The MMU is not a reader: the grace period does not cover it
assert hw.kinds == {"use-after-free"} and hw_run.violations[0].kind == "use-after-free"
# rcu-rfc: 512 xchg inside break-before-make, a long LOCKED window, -EAGAIN for a late fault
assert bbm_window["rcu-rfc"] > 100 * bbm_window["rcu"]
says(f"instead of {['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine'][bbm_window['rcu']]}")
assert 900 <= bbm_window["rcu-rfc"] < 1200
says("stays `LOCKED` for a thousand steps")
# v6.1's collapse (write-lock): a clear, the whole-VMID TLBI, the teardown, then the block; no atomics
_wl = s2pt.replay("collapse-vs-fault", "write-lock")
_wl0 = [e for e in _wl.events if e.cpu == 0]
_clr = next(e.index for e in _wl0 if e.op[0] == "WRITE_ONCE" and step_text(_wl, e) == "WRITE_ONCE(L2[0], 0)")
_blk = next(e.index for e in _wl0 if e.op[0] == "smp_store_release" and "L2[0]" in step_text(_wl, e))
assert not any(e.op[0] in ("cmpxchg", "xchg") for e in _wl0)
assert any(step_text(_wl, e).startswith("TLBI VMALLS12E1IS") for e in _wl0 if _clr < e.index < _blk)
assert round(_blk - _clr, -1) == 1030, _blk - _clr
says("for about 1,030 steps, only without atomics")
# rcu-rfc's break flushes the whole VMID
_rfc = s2pt.replay("collapse-vs-fault", "rcu-rfc")
assert any(e.cpu == 0 and step_text(_rfc, e).startswith("TLBI VMALLS12E1IS") for e in _rfc.events)
says("flushed the whole VMID (`__kvm_tlb_flush_vmid`)")
assert late.results[1].eagain and not late.violations
assert cmp2.cell("rcu", "collapse-vs-fault").safe and cmp2.cell("rcu-rfc", "collapse-vs-fault").safe
assert cmp2.cost("rcu", 2).mean("xchg_per_fault") == 0 < cmp2.cost("rcu-rfc", 2).mean("xchg_per_fault")
assert 100 <= cmp2.cost("rcu-rfc", 2).mean("atomics_per_fault") < 1000
says("`rcu-rfc` pays hundreds of atomic operations per fault")
# The pruner spins on vCPU1's LOCKED entry, then takes its page; plain stores leak the table
assert any(ev.cpu == 0 and ev.op[0] == "cpu_relax" for ev in spin.events) and not spin.violations
assert "leak" in plain.kinds and lost.violations[0].kind == "leak"
# The order the prose tells: vCPU1 breaks L3[3], takes its reference and installs its page;
# vCPU0's plain LOCKED store comes after and throws it away
_on = [(e.cpu, e.op[0]) for e in lost.events if e.op[0] in ("cmpxchg", "get_page", "smp_store_release", "WRITE_ONCE")
       and "L3[3]" in step_text(lost, e)]
_k = _on.index((1, "smp_store_release"))
assert (1, "cmpxchg") in _on[:_k] and (0, "WRITE_ONCE") in _on[_k + 1:], _on
says("then threw vCPU1's page away")
assert 1500 <= len(spin.step_diagram(fold=False).splitlines()) < 2500
says("Unfolded, it has two thousand lines")
# The boring traversal: no atomics on the callback thread
assert cb_ops["READ_ONCE"] > 500 and not (cb_ops["xchg"] or cb_ops["cmpxchg"]) and not boring.violations
assert 900 <= cb_ops["READ_ONCE"] < 1200 and cb_ops["put_page"] < 10
says("A thousand plain reads and a few `put_page`s")
# Planning a schedule: the counts the prose quotes
_own = {a.name: [e for e in plan.events if e.cpu == i] for i, a in enumerate(plan.actors)}
assert [e.op[0] for e in _own["vCPU1"][:3]][-1] == "rcu_read_lock"
_call = next(k for k, e in enumerate(_own["vCPU0"], 1) if e.op[0] == "call_rcu")
says(f"So `1*3` puts vCPU1 inside its section, and `0*{_call}` takes vCPU0 up to its `call_rcu()`")
says(f"vCPU0 collapses as far as `call_rcu()` (`0*{_call}`)")
assert f" 0*{_call} " in LATE
# Try to break it: only the fourth attempt is refused, and why
_refused = []
for _s in attempts:
    try:
        s2pt.replay("collapse-vs-fault-3", "rcu", _s)
    except s2pt.S2ptError as _e:
        _refused.append((_s, str(_e)))
assert [s for s, _ in _refused] == [attempts[3]] and "grace period" in _refused[0][1]
says("The fourth attempt is refused")
# Exhaustive and complete: nothing under rcu in any bug-free scenario
assert searches and all(r.complete and not r.kinds for r in searches.values())
assert 8_500 <= searches["collapse-vs-fault-3"].states < 9_500
says("The 3-vCPU one keeps about nine thousand states")
_four = searches["collapse-vs-fault-4"]
assert _four.settings.get("symmetry") == [["vCPU1", "vCPU2", "vCPU3"]]
assert 25_000 <= _four.states < 35_000
says("and keeps about thirty thousand")
# Notebook 04's 16 GiB guest: the collapses it unlinked
_g = s2pt.VM(eager_split_chunk=2 * (1 << 20))
_slot = _g.add_memslot(1 << 30, 16 << 30, backing="2M")
_g.touch(_slot.gpa, _slot.size, write=True, stride=2 << 20)
_g.enable_dirty_logging(_slot)
_g.disable_dirty_logging(_slot)
with _g.measure() as _m:
    _g.touch(_slot.gpa, _slot.size, stride=64 * 4096, write_every=10)
says(f"notebook 04's 16 GiB guest unlinked {_m['tables_freed']}")
