"""Example claim: the variance of a Uniform(0, 1) draw is 1/12.

One obligation (the integral, by SymPy), one check (Monte Carlo sample variances
with their standard errors, one equivalence decision per drawn sample size, its
sample size designed from the margin and both error rates, and a published
curve) and one negative control (a sampler on (0, 1.2) that the check must reject).
"""

from dataclasses import dataclass, replace

import hypothesis.strategies as st
import sympy
import torch

from cgeom_verify import Claim, Derivation, Profiled, stats


@dataclass(frozen=True)
class UniformSampler:
    """The implementation under test: draws on (0, width)."""

    width: float = 1.0

    def sample(self, shape, generator):
        u = torch.rand(shape, generator=generator, dtype=torch.float64, device=generator.device)
        return self.width * u


uniform_variance = Claim(
    id="example-uniform-variance",
    reference="textbook",
    statement="A Uniform(0, 1) random variable has variance 1/12.",
    assumptions=("draws are independent",),
    subject=UniformSampler(),
)


@uniform_variance.obligation("variance of the uniform density")
def variance_integral():
    x = sympy.Symbol("x", real=True)
    mean = sympy.Integral(x, (x, 0, 1))
    return Derivation("Var U = E[U^2] - (E U)^2", sympy.Integral(x**2, (x, 0, 1)) - mean**2,
                      sympy.Rational(1, 12))


#: s.d. of (U - 1/2)^2, from the fourth central moment 1/80: the design's variance
SIGMA_SQUARED_DEVIATION = (1 / 80 - 1 / 144) ** 0.5


@uniform_variance.check("sample variance equals 1/12",
                        settings=st.integers(min_value=1, max_value=4),
                        examples=Profiled(quick=3, full=6))
def sample_variance(run):
    # The design, fixed before sampling: agreement within 10 % (quick) / 3 % (full) of 1/12,
    # shown by an equivalence test; the sample size that resolves it at both error rates,
    # times the drawn oversampling factor (so the curve spans several sizes).
    margin = stats.relative_margin(1 / 12, run.relative_discrepancy)
    needed = stats.min_num_samples(SIGMA_SQUARED_DEVIATION, margin,
                                   run.decision_false_fail_rate(len(run.settings)),
                                   run.false_pass_rate, kind="equivalent")
    fits = []
    for i, factor in enumerate(run.settings):
        n = factor * needed
        var, se = stats.variance_se(run.subject.sample((n,), run.generator(i)).cpu().numpy())
        fits.append((n, float(var), float(se)))
    curve = sorted(fits)
    run.figure("sample variance vs n", [
        {"label": "estimate ± s.e.", "style": "points", "x": [n for n, _, _ in curve],
         "y": [v for _, v, _ in curve], "yerr": [se for _, _, se in curve]},
        {"label": "theory: 1/12", "x": [curve[0][0], curve[-1][0]], "y": [1 / 12, 1 / 12]},
    ], xlabel="n", ylabel="variance", xscale="log")
    return [stats.equivalent("variance", var, se, 1 / 12, margin=margin, example=i)
            for i, (_, var, se) in enumerate(fits)]


uniform_variance.control("sampler on (0, 1.2)", check=sample_variance,
                         mutant=replace(UniformSampler(), width=1.2),
                         description="draws on (0, 1.2): variance 0.12, not 1/12")
