"""Run the benchmarks: ``python -m benchmarks [name ...]`` (default: all)."""

import importlib
import json
import pkgutil
import sys
from pathlib import Path

import benchmarks

OUT = Path("reports/benchmarks")


def main(names: list[str]) -> int:
    available = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(benchmarks.__path__)
                       if m.name.startswith("bench_"))
    unknown = sorted(set(names) - set(available))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available)}",
              file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    allocator = benchmarks.keep_freed_memory()
    for name in names or available:
        print(f"== benchmark {name}", flush=True)
        module = importlib.import_module(f"benchmarks.bench_{name}")
        benchmarks.reset_peak_rss()
        numbers = {**module.main(), "allocator": allocator,
                   "peak_rss_mib": benchmarks.peak_rss_mib()}
        (OUT / f"{name}.json").write_text(json.dumps(numbers, indent=2) + "\n")
        print(json.dumps(numbers, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
