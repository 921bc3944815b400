# Notebook 00: the map it draws, the translation and the fault it runs.
assert (pgt.geom.levels, pgt.geom.start_level, pgt.geom.pgd_pages) == (3, 1, 2)
says(f"`levels={pgt.geom.levels}, start_level={pgt.geom.start_level}` and `pgd_pages={pgt.geom.pgd_pages}`")
assert pgt.vttbr >> 48 == 1 and pgt.vttbr & ((1 << 48) - 1) == pgt.pgd
says(f"The top 16 bits of VTTBR_EL2 are the VMID ({pgt.vttbr >> 48} here)")
assert t.pa == 0x8_0000_1234 and t.level == 2 and t.size == 2 * MiB
says(f"The walk stopped at level {t.level}")
assert fault.kind == "translation" and fault.fsc == 0x04 | fault.level
leaf, level = pgt.get_leaf(0x4000_0000)
assert level == 2 and s2pt.decode(leaf, level).kind == "block"
pgt.check_invariants()
# The route lists every notebook in the folder, and nothing else
from pathlib import Path as _Path
_listed = {name for p in _PROSE for name in __import__("re").findall(r"\((\d\d-[\w-]+\.ipynb)\)", p)}
assert _listed == {p.name for p in _Path(".").glob("[0-9][0-9]-*.ipynb")}, _listed
