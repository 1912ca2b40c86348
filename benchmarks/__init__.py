"""Speed and memory benchmarks (``nox -s bench``); never timed tests.

Each ``bench_<name>.py`` module defines ``main() -> dict`` that measures one workload
and returns its numbers; ``python -m benchmarks [name ...]`` runs them and writes
``reports/benchmarks/<name>.json``.
"""
