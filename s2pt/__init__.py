"""s2pt: a bit-exact model of Linux KVM/arm64 stage-2 page tables, for teaching.

The names you need::

    s2pt.Stage2      one VM's stage-2 table: map, unmap, wrprotect, translate, ptdump
    s2pt.VM          memslots, guest faults (user_mem_abort), dirty logging, vCPU TLBs
    s2pt.decode      a descriptor, field by field
    s2pt.Fault       a stage-2 abort (kind, level), as the MMU reports it
    s2pt.S2ptError   bad input; the model is left unchanged
    s2pt.Drill       seeded translation exercises (python -m s2pt drill)
    s2pt.explore     search a scenario's interleavings (python -m s2pt explore)
    s2pt.replay      run one schedule, step by step (python -m s2pt replay)
    s2pt.world       a scenario's CPUs, ready to step by hand
    s2pt.pkvm.Host   pKVM's host stage 2: identity map, donation, coalescing
    s2pt.trace       the kernel operations one call performs, in order
    s2pt.compare     every scheme against every scenario: verdicts, costs, mutations

Everything else lives in modules named after the kernel concept they model:
``geometry``, ``descriptor``, ``memory``, ``ops``, ``pgtable`` (the walker and
its visitors), ``tlb``, ``ptdump``, ``vmprint``, ``draw``.
"""

from .descriptor import decode
from .drill import Drill
from .errors import Fault, KernelBug, S2ptError
from .geometry import Geometry
from .kvm import VM
from . import pkvm
from .stage2 import Stage2, Translation
from .trace import trace

from .explorer import explore, replay, world
from .comparison import compare

__version__ = "0.1.0"

__all__ = ["Stage2", "VM", "Translation", "Geometry", "decode", "Fault", "S2ptError",
           "KernelBug", "Drill", "explore", "replay", "world", "trace", "compare"]
