"""Certifications that several test modules read, made once per test session.

Each certification is a pytest run of the plugin. Starting an interpreter (torch,
scipy, sympy) costs seconds, so all of them run one after the other in ONE
subprocess (``pytest.main`` per run), once per session, shared by all xdist workers
through a file lock in the session's temporary directory. The last run is killed
mid-way on purpose (``os._exit`` in a check), so it must stay last.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from filelock import FileLock

from cgeom_verify import registry

ROOT = Path(__file__).resolve().parent.parent
TOY = ["--cgeom-provider=tests.providers.toy_claims", "--cgeom-providers-only"]

FIGURE_PROVIDER = textwrap.dedent('''
    """A provider whose checks publish curves, like the paper's claims do."""
    import os
    from dataclasses import dataclass, replace
    import hypothesis.strategies as st
    import numpy as np
    import sympy
    import torch
    from cgeom_verify import Claim, Derivation, Profiled, stats

    @dataclass(frozen=True)
    class Estimator:
        bias: float = 0.0
        exit: bool = False  # a crash that kills the process (the "killed run")

    claim = Claim(id="rate-demo", reference="Thm 9.9", subject=Estimator(),
                  statement="The Monte Carlo error of a mean decays like N^(-1/2) <with markup>.",
                  assumptions=("finite variance",))

    @claim.obligation("Gaussian integral")
    def gaussian():
        x = sympy.Symbol("x", real=True)
        return [Derivation("normalisation", sympy.Integral(sympy.exp(-x**2), (x, -sympy.oo, sympy.oo)),
                           sympy.sqrt(sympy.pi)),
                Derivation("a case split", sympy.Piecewise((x + x, x >= 0), (0, True)),
                           sympy.Piecewise((2 * x, x >= 0), (0, True)))]

    @claim.check("error vs N", settings=st.just(0), examples=Profiled(1, 1))
    def rate(run):
        if run.subject.exit:
            os._exit(3)
        ns = np.array([100, 400, 1600, 6400])
        gen = run.generator(0)
        errs = [float((torch.randn(200, int(n), generator=gen, dtype=run.dtype).mean(1)
                       + run.subject.bias).abs().mean()) for n in ns]
        slope = np.polyfit(np.log(ns), np.log(errs), 1)[0]
        run.figure("error vs N", [
            {"label": "measured", "style": "points", "x": ns.tolist(), "y": errs,
             "lower": (0.9 * np.array(errs)).tolist(), "upper": (1.2 * np.array(errs)).tolist()},
            {"label": "theory: slope -1/2", "x": ns.tolist(), "y": (0.8 / np.sqrt(ns)).tolist()},
            {"label": "band", "style": "band", "x": ns.tolist(), "y": (0.8 / np.sqrt(ns)).tolist(),
             "yerr": (0.1 / np.sqrt(ns)).tolist()},
        ], xlabel="N", ylabel="mean |error|", xscale="log", yscale="log")
        run.figure("a band without its width", [{"label": "b", "style": "band", "x": [1, 2],
                                                 "y": [1, 2]}], xlabel="x", ylabel="y")
        run.record("slope", float(slope))
        return [stats.equivalent("log-log slope", float(slope), 0.03, -0.5, margin=0.15, example=0)]

    claim.control("biased estimator", check=rate, mutant=replace(Estimator(), bias=0.5))
''')
KILLER_PROVIDER = FIGURE_PROVIDER.replace("subject=Estimator()", "subject=Estimator(exit=True)")

FIGURES = ["--cgeom-provider=figure_claims", "--cgeom-providers-only"]
#: name -> plugin options, in the order they run (the killed run last).
RUNS = {
    "toy-whole": TOY,
    "toy-shard1": [*TOY, "--cgeom-shard=1/2"],
    "toy-shard2": [*TOY, "--cgeom-shard=2/2"],
    "figures": FIGURES,
    "killed": ["--cgeom-provider=killer_claims", "--cgeom-providers-only"],
}

_DRIVER = textwrap.dedent('''
    import json, sys
    import pytest
    sys.path.insert(0, sys.argv[1])  # the repository: tests.providers.*
    for name, args in json.loads(sys.argv[2]):
        print(f"=== {name}: pytest {' '.join(args)}", flush=True)
        print("=== exit status", pytest.main(args), flush=True)
''')


def certified(tmp_path_factory, name: str) -> Path:
    """The certificate.json of run ``name`` (see :data:`RUNS`)."""
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "certified"
    shared.mkdir(exist_ok=True)
    with FileLock(str(shared) + ".lock"):
        if not (shared / "log.txt").exists():
            (shared / "figure_claims.py").write_text(FIGURE_PROVIDER)
            (shared / "killer_claims.py").write_text(KILLER_PROVIDER)
            runs = [(n, [registry.__file__, "-p", "no:cacheprovider", "-q",
                         f"--cgeom-reports={shared / n}", *options]) for n, options in RUNS.items()]
            result = subprocess.run([sys.executable, "-c", _DRIVER, str(ROOT), json.dumps(runs)],
                                    cwd=shared, capture_output=True, text=True, timeout=900)
            (shared / "log.txt").write_text(result.stdout + result.stderr)
    return shared / name / "certificate.json"


def log(certificate_json: Path) -> str:
    """What the certifications printed (for assertion messages)."""
    return (certificate_json.parent.parent / "log.txt").read_text()[-5000:]
