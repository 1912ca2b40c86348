"""A small claim provider used by the harness's own tests (not part of the paper).

"The mean of N(mu, 1) samples is mu": one obligation, one check, one control
(a shifted sampler) that the check must reject.
"""

from dataclasses import dataclass, replace

import hypothesis.strategies as st
import sympy
import torch

from cgeom_verify import Claim, Derivation, Profiled, stats


@dataclass(frozen=True)
class GaussianSampler:
    shift: float = 0.0

    def sample(self, mean, n, generator):
        noise = torch.randn(n, generator=generator, dtype=torch.float64, device=generator.device)
        return mean + self.shift + noise


sample_mean = Claim(
    id="toy-mean",
    reference="toy",
    statement="The sample mean of N(mu, 1) draws is an unbiased estimate of mu.",
    assumptions=("unit variance",),
    subject=GaussianSampler(),
)


@sample_mean.obligation("linearity of expectation")
def linearity():
    mu, x = sympy.symbols("mu x", real=True)
    density = sympy.exp(-((x - mu) ** 2) / 2) / sympy.sqrt(2 * sympy.pi)
    return Derivation("E[X] = mu", sympy.integrate(x * density, (x, -sympy.oo, sympy.oo)), mu)


@sample_mean.check("sample mean equals mu", settings=st.floats(-3, 3), examples=Profiled(3, 5))
def mean_is_mu(run):
    tests = []
    for i, mu in enumerate(run.settings):
        draws = run.subject.sample(mu, 4000, run.generator(i))
        m, se = stats.mean_se(draws.cpu().numpy())
        tests.append(stats.equivalent("mean", m, se, mu, margin=0.1, example=i))
    return tests


sample_mean.control("shifted sampler", check=mean_is_mu, mutant=replace(GaussianSampler(), shift=0.5))
