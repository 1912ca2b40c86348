"""Native CPU kernels: C sources shipped beside this module, built by the system C compiler at
first use and called through ctypes.

Why C at all: where a loop nest must feed two reductions along different axes (the row and the
column sums of a symmetric pair kernel), ``torch.compile``'s CPU backend realises the pairwise
tile in memory between them; a plain C loop keeps the pair in registers. Measured for the KDE of
the authors' Figs. 3-4 (140 runs x 768 particles, 2 threads, on a 2-core AVX2 CPU, AMD EPYC Zen 3):
0.16 s per step for the compiled tiles' density and gradient; in C (``kde_pairs.c``) 0.044 s for
the density alone and 0.054 s with the gradient made with it.

Build: once per process, into a temporary directory (~0.3 s; no cache, so no stale binary or one
built for another CPU can be loaded), with ``$CC`` or ``cc``, trying :data:`FLAG_TIERS` from the
host's full vector width down to portable code. ``-O2 -ftree-vectorize`` rather than ``-O3``: gcc 12 at
``-O3`` versions the masked pair loop and runs its scalar copy (13x slower). No ``-ffast-math``:
linked into a shared object it sets flush-to-zero for the whole process. Where no compiler is
found, a build fails or ``CGEOM_VERIFY_NATIVE=0``, :func:`library` returns ``None`` (with a
warning for a failure) and the caller runs its torch implementation.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

__all__ = ["FLAG_TIERS", "library", "pointer"]

_BASE_FLAGS = ("-O2", "-ftree-vectorize", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared")
#: Tried in order; the first that builds is used. ``-fopenmp`` links libgomp.so.1, which inside a
#: torch process is torch's own (same soname): its thread pool, no second runtime spinning
#: against the first. Without it the parallel loops run serially (the simd ones still vectorise).
FLAG_TIERS = (("-fopenmp", "-march=native", "-mprefer-vector-width=512"), ("-fopenmp", "-march=native"),
              ("-fopenmp-simd", "-march=native"), ("-fopenmp-simd",))


@functools.cache
def library(name: str) -> ctypes.CDLL | None:
    """The built ``<name>.c`` of this package, or ``None`` where native code is unavailable.

    The loaded library records the flags it was built with as ``.build_flags``."""
    if os.environ.get("CGEOM_VERIFY_NATIVE", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    source = Path(__file__).with_name(f"{name}.c")
    errors = []
    with tempfile.TemporaryDirectory(prefix="cgeom-native-", ignore_cleanup_errors=True) as build:
        target = Path(build) / f"{name}.so"
        for tier in FLAG_TIERS:
            flags = (*_BASE_FLAGS, *tier)
            result = subprocess.run([compiler, *flags, str(source), "-o", str(target)],
                                    capture_output=True, text=True)
            if result.returncode == 0:
                lib = ctypes.CDLL(str(target))  # mapped: the file may go with the directory
                lib.build_flags = " ".join(flags)
                return lib
            errors.append(result.stderr.strip().splitlines()[-1:] or [f"exit {result.returncode}"])
    warnings.warn(f"could not build {source.name} with {compiler} ({errors[-1][0]}); "
                  "the torch implementation runs instead", RuntimeWarning, stacklevel=2)
    return None


def pointer(t: torch.Tensor) -> ctypes.c_void_p:
    """The address of a contiguous CPU tensor's data, for a C argument."""
    if not t.is_contiguous() or t.device.type != "cpu":
        raise ValueError("native kernels take contiguous CPU tensors")
    return ctypes.c_void_p(t.data_ptr())
