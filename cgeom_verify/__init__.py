"""cgeom-verify: a symbolic-numeric certificate for arXiv 2601.19597.

Data flow: settings (:mod:`.settings`) -> kernels (:mod:`.kernels`) -> checks
(:mod:`.claim`, decided by :mod:`.stats`) -> evidence (:mod:`.evidence`) ->
certificate (:mod:`.certificate`), collected and run by the pytest plugin
(:mod:`.plugin`) and driven by the ``cgeom-verify`` command (:mod:`.cli`).

The public API for writing a claim is re-exported here.
"""

from . import stats
from .claim import CheckRun, Claim, Derivation, Profiled

__all__ = ["Claim", "Derivation", "Profiled", "CheckRun", "stats"]
