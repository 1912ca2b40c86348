"""cgeom-verify: a symbolic-numeric certificate for arXiv 2601.19597.

Data flow: settings (:mod:`.settings`) -> kernels (:mod:`.kernels`) -> checks
(:mod:`.claim`, decided by :mod:`.stats`) -> evidence (:mod:`.evidence`) ->
certificate (:mod:`.certificate`), collected and run by the pytest plugin
(:mod:`.plugin`) and driven by the ``cgeom-verify`` command (:mod:`.cli`).

The public API for writing a claim is re-exported here, imported on first use (PEP 562):
a process that needs one light module (the report's drawing children) starts without torch.
"""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import stats
    from .claim import CheckRun, Claim, Derivation, Profiled

__all__ = ["Claim", "Derivation", "Profiled", "CheckRun", "stats"]


def __getattr__(name: str):
    if name == "stats":
        return import_module(".stats", __name__)
    if name in __all__:
        return getattr(import_module(".claim", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
