"""Speed and memory benchmarks (``nox -s bench``); never timed tests.

Each ``bench_<name>.py`` module defines ``main() -> dict`` that measures one workload
and returns its numbers; ``python -m benchmarks [name ...]`` runs them and writes
``reports/benchmarks/<name>.json``.

Every benchmark runs with the allocator set by :func:`keep_freed_memory`, ours and the
authors' programs alike, and reports its peak resident memory (:func:`peak_rss_mib`).
"""

import ctypes
import ctypes.util
import re
import resource
from pathlib import Path

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



_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        found = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) if found else None


def reset_peak_rss() -> float:
    """Start a new peak of resident memory; returns the resident memory now (MiB).

    Linux resets the high-water mark (VmHWM) when 5 is written to clear_refs; ``ru_maxrss``
    cannot be reset, so a peak read from it after other work (imports, an earlier benchmark)
    shows their peak, not this one's. Where /proc is unavailable nothing is reset."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        pass
    now = _status_kib("VmRSS")
    return (now if now is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def peak_rss_mib() -> float:
    """The process's peak resident memory since :func:`reset_peak_rss` (MiB): VmHWM, or
    ``ru_maxrss`` (the peak since the process started) where /proc is unavailable."""
    peak = _status_kib("VmHWM")
    return (peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024
