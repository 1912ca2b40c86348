"""Finite batches against the large-batch landscape (the referee's objection to paper Thm 3.1 and
Prop 3.2): how far a batch of B moves the gradient, and the unimodal minimiser, from their limits.

Claim ``finite-batch-gradient-bias`` (Thm 3.1 at finite B): the expected minibatch gradient in z
differs from ``grad_z log Gamma_tau`` by ``beta/B + O(B^-2)``, ``beta = (1 + c)(g - g_{tau/2})/tau``
(second-order delta method for a ratio of means; every moment closed form for vMF-mixture
negatives), and a leave-one-out jackknife over the batch removes the 1/B term.

Claim ``finite-batch-unimodal-gibbs`` (Prop 3.2 at finite B): on a discretised sphere, the
minimiser of the batch-expected unimodal energy (positive in the denominator, the authors'
convention) is the Gibbs law up to ``delta/B^2``: the 1/B term of the energy is the same for
every law, so it moves nothing, and ``delta`` is derived in closed form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import hypothesis.strategies as st
import numpy as np
import sympy
import torch

from cgeom_verify import Claim, Derivation, Profiled, stats
from cgeom_verify.kernels import finite_batch, partition

gradient_bias = Claim(
    id="finite-batch-gradient-bias",
    reference="Thm 3.1 (finite B)",
    statement=(
        "With B i.i.d. negatives from a vMF mixture q on S^2, the minibatch gradient "
        "g_B = sum_j kappa_j w_j / (tau sum_j kappa_j) of the uniformity term satisfies "
        "B (E g_B - grad_z log Gamma_tau(z)) -> beta = (1 + c(z)) (g(z) - g_{tau/2}(z)) / tau "
        "(c the kernel's relative variance, g_t the kernel-tilted mean at temperature t); "
        "the leave-one-out jackknife over the batch has no 1/B term."
    ),
    assumptions=(
        "negatives i.i.d. from q (vMF mixture on S^2, d = 3)",
        "B >= 4 max(c, m3/m2, m4/m3), m_k = E[(kappa/Gamma)^k]: the delta-method regime",
    ),
    subject=finite_batch.MinibatchGradient(),
)

# -- obligations -------------------------------------------------------------------------------


@gradient_bias.obligation("second-order delta method for a ratio of means")
def ratio_delta_method():
    """E[(mu_a + da)/(mu_c + dc)] to second order in the fluctuations, whose moments are those of
    batch means: E da = E dc = 0, E dc^2 = Var(c)/B, E da dc = Cov(a, c)/B."""
    mu_a, mu_c, da, dc, eps = sympy.symbols("mu_a mu_c delta_a delta_c epsilon", real=True)
    var_c, cov_ac, batch = sympy.symbols("Var_c Cov_ac B", positive=True)
    ratio = (mu_a + eps * da) / (mu_c + eps * dc)
    second = sympy.series(ratio, eps, 0, 3).removeO().subs(eps, 1)
    moment = {(0, 0): 1, (1, 0): 0, (0, 1): 0, (1, 1): cov_ac / batch, (0, 2): var_c / batch,
              (2, 0): sympy.Symbol("Var_a") / batch}
    poly = sympy.Poly(sympy.expand(second), da, dc)
    expected = sum(coeff * moment[monomial] for monomial, coeff in poly.terms())
    beta = (mu_a / mu_c * var_c - cov_ac) / mu_c**2
    return Derivation("E[a_bar/c_bar] = R + beta/B + O(B^-2), beta = (R Var c - Cov(a, c))/(E c)^2",
                      expected, mu_a / mu_c + beta / batch)


@gradient_bias.obligation("beta in closed form for vMF-mixture negatives")
def closed_form_beta():
    """With c' = kappa/Gamma (mean 1): Var c' = c, E[c' w] = g, E[c'^2 w] = (1 + c) g_{tau/2}
    (kappa^2 q = Gamma_{tau/2} times the law tilted at tau/2, and Gamma_{tau/2}/Gamma^2 = 1 + c)."""
    c, tau = sympy.symbols("c tau", positive=True)
    g, g_half = sympy.symbols("g g_half", real=True)  # one coordinate of each vector
    mean_a, mean_c = g / tau, 1
    var_c = c
    cov_ac = (1 + c) * g_half / tau - mean_a * mean_c
    beta = (mean_a / mean_c * var_c - cov_ac) / mean_c**2
    return Derivation("(R Var c - Cov(a, c))/(E c)^2 = (1 + c)(g - g_{tau/2})/tau",
                      beta, (1 + c) * (g - g_half) / tau)


@gradient_bias.obligation("the jackknife cancels the 1/B term")
def jackknife_cancels():
    """If E theta_B = theta + beta/B + gamma/B^2, then E[B theta_B - (B-1) theta_{B-1}] has no
    1/B term: B times its bias -> 0."""
    theta, beta, gamma, batch = sympy.symbols("theta beta gamma B", positive=True)
    bias = lambda n: beta / n + gamma / n**2  # noqa: E731
    jack = batch * (theta + bias(batch)) - (batch - 1) * (theta + bias(batch - 1))
    return [
        Derivation("B E[theta_J - theta] -> 0", sympy.Limit(batch * (jack - theta), batch, sympy.oo), 0),
        Derivation("the plug-in's B E[theta_B - theta] -> beta",
                   sympy.Limit(batch * bias(batch), batch, sympy.oo), beta),
    ]


# -- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BiasSetting:
    """Anchor z on S^2, temperature and the negatives' vMF mixture."""

    tau: float
    anchor: tuple[float, float, float]
    weights: tuple[float, ...]
    means: tuple[tuple[float, float, float], ...]
    concentrations: tuple[float, ...]

    def law(self) -> partition.VmfMixture:
        return partition.VmfMixture(self.weights, self.means, self.concentrations)


def _unit3():
    raw = st.tuples(*[st.floats(-1.0, 1.0)] * 3).filter(lambda v: math.hypot(*v) > 0.3)
    return raw.map(lambda v: tuple(float(x) / math.hypot(*v) for x in v))


@st.composite
def bias_settings(draw):
    """tau in [0.4, 1], 1-2 components with concentrations in [0.5, 4]: the kernel weights'
    scale max(c, m3/m2, m4/m3) stays below ~4, so the regime starts at B <= 16."""
    parts = draw(st.lists(st.tuples(st.floats(0.2, 1.0), _unit3(), st.floats(0.5, 4.0)),
                          min_size=1, max_size=2))
    total = sum(w for w, _, _ in parts)
    return BiasSetting(tau=draw(st.floats(0.4, 1.0)), anchor=draw(_unit3()),
                       weights=tuple(w / total for w, _, _ in parts),
                       means=tuple(m for _, m, _ in parts),
                       concentrations=tuple(k for _, _, k in parts))


# -- design ------------------------------------------------------------------------------------

#: The smallest batch is this multiple of the kernel weights' scale (large_batch's regime rule).
REGIME_MARGIN = 4
MIN_BATCH = 8
FIT_STEPS = 4  # B0, 2 B0, 4 B0, 8 B0
#: The design's sigma is the Gaussian (B -> infinity) limit of the scaled remainder's s.d.
#: times this: at B = 8 the measured s.d. exceeds the limit by 9 % (spot setting, 20000
#: replicates), the next order in B^-1/2.
SIGMA_SAFETY = 1.15
#: Draws (negatives) one setting may cost; a setting needing more is recorded not applicable.
DRAW_CAP = Profiled(quick=6.0e6, full=6.0e7)


@dataclass(frozen=True)
class BiasDesign:
    sizes: tuple[int, ...]
    replicates: int
    beta: np.ndarray
    direction: np.ndarray
    sigma: float


def _fit_variance_factor(sizes) -> float:
    """``[(X^T X)^-1]_00`` for rows ``[1, 1/B]``: the intercept's variance per unit point variance."""
    x = np.stack([np.ones(len(sizes)), 1.0 / np.asarray(sizes, dtype=np.float64)], axis=1)
    return float(np.linalg.inv(x.T @ x)[0, 0])


def plan_bias(run, i: int, setting: BiasSetting, decisions: int) -> BiasDesign | None:
    law, z = setting.law(), np.asarray(setting.anchor)
    beta = finite_batch.bias_constant(law, z, setting.tau)
    size = float(np.linalg.norm(beta))
    direction = beta / size
    scale = finite_batch.regime_scale(law, z, setting.tau)
    b0 = max(MIN_BATCH, 2 ** math.ceil(math.log2(REGIME_MARGIN * scale)))
    sizes = tuple(b0 * 2**k for k in range(FIT_STEPS))
    sigma = SIGMA_SAFETY * math.sqrt(finite_batch.scaled_bias_variance(law, z, setting.tau, direction))
    margin = stats.relative_margin(size, run.relative_discrepancy)
    replicates = stats.min_num_samples(sigma * math.sqrt(_fit_variance_factor(sizes)), margin,
                                       run.decision_false_fail_rate(decisions),
                                       run.false_pass_rate, kind="equivalent")
    if replicates * sum(sizes) > run.pick(DRAW_CAP):
        run.not_applicable(f"regime B0 = {b0} (scale {scale:.3g}) needs {replicates} replicates "
                           f"x {sum(sizes)} draws, beyond the {run.profile} budget", example=i)
        return None
    return BiasDesign(sizes, replicates, beta, direction, sigma)


def scaled_bias_fit(run, i: int, setting: BiasSetting, design: BiasDesign, subject):
    """Mean and s.e. of ``B <E g_B - grad log Gamma, e>`` per B, and the fit ``a + b/B``."""
    generator = run.generator(i)
    means, errors = [], []
    for batch in design.sizes:
        y = subject.scaled_residuals(setting.law(), np.asarray(setting.anchor), setting.tau, batch,
                                     design.replicates, design.direction, generator).cpu().numpy()
        mean, se = stats.mean_se(y)
        means.append(float(mean))
        errors.append(float(se))
    n = np.asarray(design.sizes, dtype=np.float64)
    fit = stats.weighted_least_squares(np.stack([np.ones_like(n), 1.0 / n], axis=1), means, errors)
    return np.asarray(means), np.asarray(errors), fit


def _bias_check(run, corrected: bool):
    settings = run.settings
    tests, curves, table = [], [], []
    subject = run.subject.bias_corrected() if corrected else run.subject
    for i, setting in enumerate(settings):
        design = plan_bias(run, i, setting, len(settings))
        if design is None:
            continue
        means, errors, fit = scaled_bias_fit(run, i, setting, design, subject)
        size = float(np.linalg.norm(design.beta))
        margin = stats.relative_margin(size, run.relative_discrepancy)
        target = 0.0 if corrected else size
        name = "jackknife: B-scaled bias -> 0" if corrected else "B-scaled bias -> beta"
        tests.append(stats.equivalent(
            name, fit.coef[0], fit.standard_error[0], target, margin=margin, example=i,
            note=f"|beta| = {size:.4g}; next order b = {fit.coef[1]:.3g} +- "
                 f"{fit.standard_error[1]:.2g}; fit chi2 = {fit.chi2:.2f} on {fit.dof} dof; "
                 f"{design.replicates} replicates per B"))
        table.append({"example": i, "beta": design.beta.tolist(), "beta_norm": size,
                      "batches": list(design.sizes), "replicates": design.replicates,
                      "scaled_bias": means.tolist(), "scaled_bias_se": errors.tolist(),
                      "intercept": float(fit.coef[0]), "intercept_se": float(fit.standard_error[0]),
                      "slope": float(fit.coef[1]), "chi2": fit.chi2})
        curves.append({"label": f"setting {i}: |beta| = {size:.3g}", "style": "points",
                       "x": list(design.sizes), "y": (means / size).tolist(),
                       "yerr": (2 * errors / size).tolist()})
    run.record("bias_table", table)
    if curves:
        xs = [x for c in curves for x in c["x"]]
        level = 0.0 if corrected else 1.0
        curves.append({"label": f"theory: {level:g}", "x": [min(xs), max(xs)], "y": [level, level]})
        run.figure(("jackknife " if corrected else "") + "bias constant vs B, in units of |beta|",
                   curves, xlabel="B (negatives)", ylabel="B <E g_B - grad log Gamma, e> / |beta|",
                   xscale="log")
    return tests


@gradient_bias.check("plug-in: B (E g_B - grad log Gamma) -> beta", settings=bias_settings(),
                     examples=Profiled(quick=2, full=8), min_applicable=Profiled(quick=2, full=7))
def plugin_bias(run):
    return _bias_check(run, corrected=False)


@gradient_bias.check("jackknife over the batch: no 1/B term", settings=bias_settings(),
                     examples=Profiled(quick=2, full=8), min_applicable=Profiled(quick=2, full=7))
def jackknife_bias(run):
    """The stated margin is the plug-in's own term |beta| at the certificate's resolution: a
    jackknife leaving a tenth (quick) of the 1/B term is caught."""
    return _bias_check(run, corrected=True)


gradient_bias.control("the bias-corrected estimator in place of the plug-in", check=plugin_bias,
                      mutant=finite_batch.MinibatchGradient(estimator="jackknife"),
                      description="the jackknife has no 1/B term: its B-scaled bias -> 0, not beta")
gradient_bias.control("jackknife without the (B - 1) inflation", check=jackknife_bias,
                      mutant=finite_batch.MinibatchGradient(jackknife_inflation=False),
                      description="theta_B - (mean theta_{-j} - theta_B): keeps beta/B to first order")
