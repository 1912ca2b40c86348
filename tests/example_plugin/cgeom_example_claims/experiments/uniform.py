"""The experiment of :mod:`cgeom_example_claims.uniform`: its subject, design and simulation.

The theorem sheet states what is decided; this module, one floor below, holds what it takes
to decide it: the implementation under test with the switch its control flips, the design
constant, the batched simulation with typed results, and the figure series. It may import
the harness's public API (``from cgeom_verify import Profiled, stats``) and its kernels
(``cgeom_verify.kernels``); it defines no ``Claim`` and never imports a theorem sheet, so
tests and benchmarks can import it by its public names.
"""

from dataclasses import dataclass

import torch

from cgeom_verify import stats


@dataclass(frozen=True)
class UniformSampler:
    """The implementation under test: draws on (0, width). The control sets width = 1.2."""

    width: float = 1.0

    def sample(self, shape, generator):
        u = torch.rand(shape, generator=generator, dtype=torch.float64, device=generator.device)
        return self.width * u


#: s.d. of (U - 1/2)^2, from the fourth central moment 1/80: the design's variance
SIGMA_SQUARED_DEVIATION = (1 / 80 - 1 / 144) ** 0.5


@dataclass(frozen=True)
class VarianceEstimate:
    """One drawn setting's sample variance of ``n`` draws and its standard error."""

    example: int
    n: int
    variance: float
    standard_error: float


def sample_size(run, margin: float) -> int:
    """Draws that resolve ``margin`` by an equivalence test at the run's two error rates, fixed
    before any sampling (one decision per drawn setting)."""
    return stats.min_num_samples(SIGMA_SQUARED_DEVIATION, margin,
                                 run.decision_false_fail_rate(len(run.settings)),
                                 run.false_pass_rate, kind="equivalent")


def measure(run, needed: int) -> list[VarianceEstimate]:
    """Per drawn oversampling factor, the sample variance of ``factor * needed`` draws of the
    run's subject (so the curve spans several sizes), each setting from its own generator."""
    estimates = []
    for i, factor in enumerate(run.settings):
        n = factor * needed
        var, se = stats.variance_se(run.subject.sample((n,), run.generator(i)).cpu().numpy())
        estimates.append(VarianceEstimate(i, n, float(var), float(se)))
    return estimates


def variance_series(estimates: list[VarianceEstimate], target: float) -> list[dict]:
    """The estimates against n (s.e. bars) and the theory's ``target``, for ``run.figure``."""
    curve = sorted(estimates, key=lambda e: (e.n, e.variance, e.standard_error))
    return [
        {"label": "estimate ± s.e.", "style": "points", "x": [e.n for e in curve],
         "y": [e.variance for e in curve], "yerr": [e.standard_error for e in curve]},
        {"label": "theory: 1/12", "x": [curve[0].n, curve[-1].n], "y": [target, target]},
    ]
