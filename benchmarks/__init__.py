"""Speed and memory benchmarks (``nox -s bench``); never timed tests.

Each ``bench_<name>.py`` module defines ``main() -> dict`` that measures one workload
and returns its numbers; ``python -m benchmarks [name ...]`` runs them and writes
``reports/benchmarks/<name>.json``.

Every benchmark runs with the allocator set by :func:`keep_freed_memory`, ours and the
authors' programs alike.
"""

import ctypes
import ctypes.util

#: glibc's mallopt parameters, and the values set: blocks up to 32 MiB (its largest threshold)
#: come from the heap, and up to 256 MiB of freed heap stays in the process.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD, _TRIM_THRESHOLD = 32 << 20, 256 << 20


def keep_freed_memory() -> str:
    """Fix glibc's allocator so that freed memory stays in the process; says what was set.

    By default glibc maps a large block afresh and returns it at free (its threshold adapts to
    what the process freed before) and trims the heap, so a step that allocates the same large
    temporaries every time pays new page faults, depending on the process's history: the
    authors' Figs. 3-4 step (three [768, 768] float32 temporaries) took 11-13 ms in a fresh
    process and 7.3 ms after other work, or with these thresholds. A benchmark should not
    depend on that, and the baseline should be timed at its best."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt"):
        return "default (no glibc mallopt)"
    ok = (libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
          and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1)
    return (f"glibc mallopt: mmap threshold {_MMAP_THRESHOLD >> 20} MiB, trim threshold "
            f"{_TRIM_THRESHOLD >> 20} MiB" if ok else "default (mallopt refused)")

