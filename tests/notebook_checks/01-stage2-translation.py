# Notebook 01: the kernel's formulas, the descriptors, the walk by hand, the faults,
# the walker's visits and the drill, against the model.
assert (start_level(40, 12), kvm_pgd_pages(40, 1, 12)) == (1, 2)
assert (start_level(40, 14), kvm_pgd_pages(40, 2, 14)) == (2, 16)
assert (start_level(44, 12), kvm_pgd_pages(44, 0, 12)) == (0, 1)
assert start_level_from_vtcr(pgt.vtcr, 4096) == 1
assert split(g, 0x4020_1abc) == {"PGD page": 0, "level 1 index": 1, "level 2 index": 1,
                                 "level 3 index": 1, "page offset": 0xabc}
# Descriptors
assert page == 0x9_0000_07ff and block == 0x8_0000_07fd
assert rw_page ^ page == (1 << 54) | (0x1000)          # XN bit 54, and the next page's PA
assert s2pt.decode(table_desc, 1).kind == "table"
assert s2pt.decode(dev, 3).memattr == "device" and (dev >> 2) & 0xf == 0b0001
assert s2pt.decode(owned, 3).owner == 1
assert s2pt.decode(0x400, 3).kind == "locked"
# The walks by hand agree with translate: a page, and a block
assert pa_by_hand == 0x9_0000_1abc == t.pa
assert pa_blk == 0x8_0000_1234 and s2pt.decode(e2, 2).kind == "block"
# Faults
faults = {}
for ipa_, how, want in [(0x1_0000_0000, "read", ("translation", 1)),
                        (0x4060_0000, "read", ("translation", 2)),
                        (0x4020_5000, "read", ("translation", 3)),
                        (0x4020_1000, "exec", ("permission", 3))]:
    try:
        pgt.translate(ipa_, write=how == "write", exec=how == "exec")
    except s2pt.Fault as f:
        faults[ipa_] = (f.kind, f.level)
    assert faults.get(ipa_) == want, (hex(ipa_), faults.get(ipa_))
# The walker visited what the prose says it did
assert counts["LEAF", 3, "page"] == 3 and counts["TABLE_PRE", 1, "table"] == 1
assert counts["TABLE_POST", 1, "table"] == 1 and counts["LEAF", 2, "block"] == 1
assert counts["TABLE_PRE", 2, "table"] == counts["TABLE_POST", 2, "table"] == 1
level3 = sum(n for (v, lvl, _), n in counts.items() if v == "LEAF" and lvl == 3)
assert level3 == 512
says(f"all {level3} entries of the level-3 table as LEAF visits: {counts['LEAF', 3, 'page']} pages, "
     f"{counts['LEAF', 3, 'owner']} owner annotation and {counts['LEAF', 3, 'invalid']} empty entries")
# The drill's worked answers agree with the MMU model
for a in drill.answers():
    try:
        got = drill.pgt.translate(a["ipa"], write=a["access"] == "write",
                                  exec=a["access"] == "exec").pa
    except s2pt.Fault as f:
        got = (f.kind, f.level)
    assert got == (a["pa"] if a["fault"] is None else (a["fault"], a["level"]))
pgt.check_invariants()
