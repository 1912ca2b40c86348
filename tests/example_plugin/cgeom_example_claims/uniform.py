"""Theorem sheet: the variance of a Uniform(0, 1) draw is 1/12.

One obligation (the integral, by SymPy), one check (an equivalence decision per drawn
sample size, its sample size designed from the margin and both error rates, and a
published curve) and one negative control (a sampler on (0, 1.2) that the check must
reject). The subject, the design and the simulation live one floor below, in
:mod:`cgeom_example_claims.experiments.uniform`.
"""

from dataclasses import replace

import hypothesis.strategies as st
import sympy

from cgeom_example_claims.experiments import uniform as experiment
from cgeom_verify import Claim, Derivation, Profiled, stats

uniform_variance = Claim(
    id="example-uniform-variance",
    reference="textbook",
    statement="A Uniform(0, 1) random variable has variance 1/12.",
    assumptions=("draws are independent",),
    subject=experiment.UniformSampler(),
)


@uniform_variance.obligation("variance of the uniform density")
def variance_integral():
    x = sympy.Symbol("x", real=True)
    mean = sympy.Integral(x, (x, 0, 1))
    return Derivation("Var U = E[U^2] - (E U)^2", sympy.Integral(x**2, (x, 0, 1)) - mean**2,
                      sympy.Rational(1, 12))


@uniform_variance.check("sample variance equals 1/12",
                        settings=st.integers(min_value=1, max_value=4),
                        examples=Profiled(quick=3, full=6))
def sample_variance(run):
    """Agreement within 10 % (quick) / 3 % (full) of 1/12, shown by an equivalence test per
    drawn oversampling factor of the designed sample size."""
    margin = stats.relative_margin(1 / 12, run.relative_discrepancy)
    estimates = experiment.measure(run, experiment.sample_size(run, margin))
    run.figure("sample variance vs n", experiment.variance_series(estimates, 1 / 12),
               xlabel="n", ylabel="variance", xscale="log")
    return [stats.equivalent("variance", e.variance, e.standard_error, 1 / 12, margin=margin,
                             example=e.example) for e in estimates]


uniform_variance.control("sampler on (0, 1.2)", check=sample_variance,
                         mutant=replace(experiment.UniformSampler(), width=1.2),
                         description="draws on (0, 1.2): variance 0.12, not 1/12")
