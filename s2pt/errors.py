"""The three ways an s2pt call can fail, kept apart on purpose.

``S2ptError``
    You asked for something the kernel would refuse: a misaligned size, an
    IPA beyond the input range, a bad ``prot`` string, a memcache that cannot
    be topped up.  The message names the value and the rule it breaks, and
    the model is left exactly as it was before the call.  The argument
    checks live in one place, :mod:`s2pt.validate`; the contract is tested
    on generated calls to every entry point (``tests/test_contract*.py``).

``Fault``
    The *architecture* refused a translation.  This is not an error in your
    program: it is the stage-2 abort a guest access would take, with the
    fault kind and level the MMU would report in ESR_EL2.

``KernelBug``
    The model caught the kernel (or a deliberately broken variant of it)
    doing something that would WARN, BUG or corrupt memory: a use-after-free
    of a table page, a double free, ``stage2_make_pte`` on an unlocked entry.
    The sequential API raises it; the interleaving explorer records it as a
    violation instead.
"""

from __future__ import annotations

from .snapshot import Frozen

__all__ = ["S2ptError", "Fault", "KernelBug"]


class S2ptError(ValueError):
    """Bad input: the message names the offending value and the rule."""


class Fault(Exception, Frozen):
    """A stage-2 abort, as the MMU would report it.

    Attributes
    ----------
    kind : str
        ``"translation"``, ``"access"`` (access flag) or ``"permission"``:
        the three fault status codes a stage-2 walk can produce here.
    level : int
        The lookup level at which the fault was detected (ESR_EL2.FSC[1:0]).
    ipa : int
        The faulting intermediate physical address.
    write, exec : bool
        The access that faulted.
    """

    #: ESR_ELx.FSC base values (arch/arm64/include/asm/esr.h): the level is
    #: added to the low two bits.
    FSC_BASE = {"translation": 0x04, "access": 0x08, "permission": 0x0C}

    def __init__(self, kind: str, level: int, ipa: int, write: bool = False,
                 exec: bool = False, reason: str = ""):
        self.kind = kind
        self.level = level
        self.ipa = ipa
        self.write = write
        self.exec = exec
        self.reason = reason
        super().__init__(kind, level, ipa)

    def __str__(self):
        access = "exec" if self.exec else ("write" if self.write else "read")
        msg = f"stage-2 {self.kind} fault at level {self.level} on {access} of IPA {self.ipa:#x}"
        return f"{msg}: {self.reason}" if self.reason else msg

    def __repr__(self):
        return f"Fault({self.kind!r}, level={self.level}, ipa={self.ipa:#x})"

    #: A Fault is a value: the explorer's scenarios hand one to a vCPU
    #: (s2pt.snapshot.Frozen); the traceback is not part of it.
    sim_ignore = ("__traceback__",)

    @property
    def fsc(self) -> int:
        """The ESR_EL2 fault status code (e.g. 0x07 = translation fault, level 3).

        Level -1 (LPA2 only) is not modelled, so the low bits are the level.
        """
        return self.FSC_BASE[self.kind] | (self.level & 3)


class KernelBug(RuntimeError):
    """The model detected a kernel bug: WARN_ON, use-after-free, double free.

    ``kind`` is a short machine-readable tag ("use-after-free",
    "double-free", "warn", ...); the message names the kernel function.
    """

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(f"{kind}: {message}")
