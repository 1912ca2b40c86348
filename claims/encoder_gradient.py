"""Large-batch gradient consistency at the encoder level (paper Thm 3.1, Thm 4.1; Fig. 2).

arXiv 2601.19597, Thm 3.1: for negatives i.i.d. from the encoder's pushforward q_theta,
``grad_theta L_N -> grad_theta J_tau`` as N -> infinity (the ``log(N V_kappa)`` offset
does not depend on theta). Thm 4.1: the same for the symmetric loss
``L_sym = (L_{1->2} + L_{2->1})/2`` of two encoders. Here theta = W of a linear encoder
(L2-normalised output with the cosine critic, tanh output with the RBF critic
``s = -(1/d)|z - w|^2``) on Gaussian-mixture inputs.

How the rate is checked. The theta-gradient of the log-partition is a self-normalised ratio
of sample means over the N negatives, so its error is, to first order, a sample mean of
centred terms (obligation): ``MSE_N = E|g_N - g|^2 = C/N + O(1/N^2)``. Per drawn setting,
theta and the anchors are fixed, independent negative pools are drawn over a geometric grid
of N, and against an independent oracle g_ref (dense float64 autograd on N_ref >= 2^17
negatives) the slope b of ``log MSE_N = a + b log N + c/N`` is -1 (TOST, margin 10 % quick /
3 % full: an error norm decaying as N^{-1/4} fails), and the plateau D of ``MSE_N = C/N +
E/N^2 + D`` is at most the reference's own error C/N_ref (``at_most``): a gradient that
converges to the wrong vector plateaus. Negative control: stop-gradient through the
negatives (``detach_negatives``), a real implementation bug. The subject computes in float32,
as the authors' code trains; each setting bounds its rounding against the same subject in
float64 on the same pools (``bound``), and Fig. 2 each panel's.

Fig. 2 (the authors' setting, B = 64, m = 64, d = 128, N_ref = 4096): reported
``cos(g_N, g_ref) ~ 0.94`` (cosine) and ``~ 0.96`` (RBF) at N = 256, certified under the
authors' protocol (negative pool from a freshly drawn mixture) by TOST at +-0.03, the
report's own 20-seed SEM combined with ours. Under one mixture for anchors and negatives the
cosine critic's value is higher: ``exceeds`` 0 on the paired difference, designed excess 0.012.

Settings, the subject, the oracle, designs and simulations:
:mod:`cgeom_verify.experiments.encoder_gradient`.
"""

from __future__ import annotations

import math

import hypothesis.strategies as st
import sympy

from cgeom_verify import Claim, Derivation, Profiled, stats
from cgeom_verify.experiments import encoder_gradient as experiment
from cgeom_verify.experiments.encoder_gradient import (
    STOP_GRADIENT_BUG,
    SUBJECT,
    SymmetricProblem,
    UnimodalProblem,
    encoder_settings,
    symmetric_settings,
)

# -- Thm 3.1 --------------------------------------------------------------------------------

unimodal_gradient = Claim(
    id="thm3.1-encoder-gradient",
    reference="Thm 3.1",
    statement=("For a fixed encoder theta, grad_theta L_N -> grad_theta J_tau as the number N of "
               "i.i.d. negatives grows, at the Monte Carlo rate E|g_N - g|^2 ~ C/N."),
    assumptions=("negatives i.i.d. from the encoder's pushforward of the data",
                 "linear encoder, L2-normalised (cosine critic, rank >= 9) or tanh (RBF critic)",
                 "theta and the anchors held fixed; reference: N_ref >= 2^17, dense autograd"),
    subject=SUBJECT,
)


@unimodal_gradient.obligation("self-normalised ratio error is a centred mean")
def ratio_linearisation() -> Derivation:
    # grad log Gamma_hat = (mean of kappa_j grad s_j/tau) / (mean of kappa_j): a ratio of
    # sample means A + eps a, B + eps b with eps ~ N^{-1/2}. Its first-order error is the
    # centred mean (a - (A/B) b)/B, whose second moment is Var/N: hence MSE ~ C/N.
    big_a, a, b, eps = sympy.symbols("A a b epsilon", real=True)
    big_b = sympy.Symbol("B", positive=True)
    ratio = (big_a + eps * a) / (big_b + eps * b)
    return Derivation("d/d eps of the self-normalised ratio at eps = 0 is (a - (A/B) b)/B",
                      sympy.Subs(sympy.Derivative(ratio, eps), eps, 0),
                      (a - big_a / big_b * b) / big_b)


def rate_tests(run, measured: experiment.RateMeasurement, label: str = "") -> list:
    """Decisions for one setting from its squared errors against the reference.

    * slope b of ``log MSE_N = a + b log N + c/N``: the theorem's rate says b = -1; TOST with
      margin 10 % (quick) / 3 % (full) of it, so an N^(-1/2) error norm (b = -1/2) fails;
    * plateau D of ``MSE_N = C/N + E/N^2 + D``: at most the reference's own error C/N_ref; the
      designed excess is PLATEAU_SHARE x that share of C/N at the largest N. A gradient
      converging to the wrong vector plateaus;
    * the subject's float32 rounding: its gradient is within ROUNDING_SHARE x sqrt(plateau
      design), the distance of the nearest wrong limit the plateau must catch, of the subject in
      float64 on the same pools at the largest N (a deterministic bound: no false-fail rate).
    """
    fit = measured.fit
    slope, slope_se = fit.slope
    return [
        stats.equivalent(f"{label}slope of log MSE_N vs log N = -1", slope, slope_se, -1.0,
                         margin=run.relative_discrepancy, example=measured.example,
                         note="fit a + b log N + c/N; error norm ~ N^(b/2); margin: rel of -1"),
        stats.at_most(f"{label}plateau D of MSE_N = C/N + E/N^2 + D at most C/N_ref", fit.plateau,
                      fit.plateau_se, fit.reference_mse, discrepancy=measured.plateau_design,
                      example=measured.example,
                      note="designed excess: PLATEAU_SHARE rel C/N at the largest N"),
        stats.within_precision(f"{label}subject rounding: gradient = float64 subject's, same pools",
                               measured.rounding_error, 0.0,
                               experiment.ROUNDING_SHARE * math.sqrt(measured.plateau_design),
                               example=measured.example,
                               note=f"max |g_N - g_N(float64)| over {experiment.ROUNDING_POOLS} "
                                    "pools at the largest N; bound: ROUNDING_SHARE sqrt(plateau "
                                    "design)"),
    ]


def _consistency_tests(run, problem_type) -> list:
    """The rate decisions (:func:`rate_tests`) per applicable setting, on the main run its pilot
    designed (``experiment.plan_rate``, ``experiment.measure_rate``), shared by Thm 3.1 and 4.1."""
    rate = run.decision_false_fail_rate(2 * len(run.settings))  # the rounding bound spends none
    tests, measured = [], []
    for i, setting in run.settings_until_settled(tests, rate):
        reason = experiment.outside_assumptions(setting)
        if reason:
            run.not_applicable(reason, example=i)
            continue
        design = experiment.plan_rate(run, i, setting, problem_type, rate)
        if design.within_budget:
            measurement, label = experiment.measure_rate(run, design, rate), ""
        else:
            measurement, label = design.pilot, "pilot: "
        decisions = rate_tests(run, measurement, label)
        # A plateau the pilot already rejects is a valid FAIL at its false-fail rate
        # whatever the power; anything else is beyond the budget: not applicable.
        if not design.within_budget and decisions[1].decide(rate).outcome != "FAIL":
            run.not_applicable(f"the designed power needs {design.needed} replicates per N; "
                               f"{design.affordable} fit the {run.profile} budget", example=i)
            continue
        run.record(f"example {i}", measurement.row())
        measured.append(measurement)
        tests += decisions
    run.figure("theta-gradient MSE vs N in units of the fitted constant C",
               experiment.rate_figure_series(run, measured),
               xlabel="N (negatives)", ylabel="E|g_N - g_ref|^2 / C", xscale="log", yscale="log")
    return tests


@unimodal_gradient.check("MSE of the theta-gradient decays as 1/N", settings=encoder_settings(),
                         examples=Profiled(quick=2, full=8), min_applicable=Profiled(2, 7))
def unimodal_rate(run):
    return _consistency_tests(run, UnimodalProblem)


unimodal_gradient.control(
    "stop-gradient through the negatives", check=unimodal_rate, mutant=STOP_GRADIENT_BUG,
    description="negatives' embeddings detached: the gradient converges to the wrong vector")

# -- Thm 4.1 --------------------------------------------------------------------------------

symmetric_gradient = Claim(
    id="thm4.1-encoder-gradient",
    reference="Thm 4.1",
    statement=("For fixed encoders (theta, phi), the gradient of the symmetric loss "
               "(L_{1->2} + L_{2->1})/2 converges to grad J_mm as N grows, "
               "with E|g_N - g|^2 ~ C/N."),
    assumptions=("negative pairs i.i.d. from the paired data's pushforward",
                 "one linear encoder per modality, L2-normalised (cosine, rank >= 9) or tanh (RBF)",
                 "encoders and anchor pairs held fixed; reference: N_ref >= 2^17, dense autograd"),
    subject=SUBJECT,
)

symmetric_gradient.obligation("self-normalised ratio error is a centred mean")(ratio_linearisation)


@symmetric_gradient.check("MSE of the symmetric-loss gradient decays as 1/N",
                          settings=symmetric_settings(), examples=Profiled(quick=1, full=4),
                          min_applicable=Profiled(1, 3))
def symmetric_rate(run):
    return _consistency_tests(run, SymmetricProblem)


symmetric_gradient.control(
    "stop-gradient through the negatives", check=symmetric_rate, mutant=STOP_GRADIENT_BUG,
    description="both modalities' negatives detached: the gradient converges to the wrong vector")

# -- Fig. 2 reproduction --------------------------------------------------------------------

figure2 = Claim(
    id="fig2-gradient-alignment",
    reference="Fig. 2 (Thm 3.1)",
    statement=("In the authors' setting, cos(g_N, g_ref) at N = 256 is about 0.94 (cosine critic, "
               "tau = 0.1) and 0.96 (RBF critic, tau = 1), g_ref the N_ref = 4096 gradient; the "
               "cosine value holds for the authors' protocol (negative pool from a freshly drawn "
               "mixture), not for one mixture shared by anchors and negatives."),
    assumptions=("20 seeds, B = 64, m = 64, d = 128, W ~ N(0, 1/m)",
                 "inputs: mixture of 4 Gaussians, means of norm 4, sigma 1",
                 "positive included in the denominator",
                 "the reported values carry 2 digits and a 20-seed sampling error"),
    subject=SUBJECT,
)


@figure2.obligation("relative error from cosine and norm ratio")
def relative_error_identity():
    # |g_N - g|^2/|g|^2 = r^2 - 2 r cos + 1 with r = |g_N|/|g|: a relative error near 1
    # at cos near 1 means |g_N| << |g| (the positive term dominates the denominator).
    r, phi = sympy.symbols("r phi", real=True)
    return Derivation("|r e_phi - e_0|^2 = r^2 - 2 r cos(phi) + 1",
                      (r * sympy.cos(phi) - 1) ** 2 + (r * sympy.sin(phi)) ** 2,
                      r**2 - 2 * r * sympy.cos(phi) + 1)


def _record_panel(run, panel: experiment.Fig2Panel, protocol: str, curves: dict, seeds: int) -> None:
    run.record(f"{panel.critic} critic, {protocol} mixture",
               experiment.panel_row(panel, protocol, curves, seeds))


@figure2.check("Fig. 2 as coded: negative pool from a freshly drawn mixture",
               settings=st.just("fig2"), examples=Profiled(quick=1, full=1))
def fig2_as_coded(run):
    """The reported value per critic, TOST at +-FIG2_MARGIN, with the SEM of both 20-seed-scale
    means combined (the reported one estimated by ours rescaled to 20 seeds) and Welch degrees
    of freedom. Seeds from the pilot's per-seed dispersion (``experiment.reproduction_seeds``).
    A panel whose decision already FAILs ends the check: a wrong subject costs one panel. The
    subject's float32 rounding is bounded per panel (deterministic: no false-fail rate)."""
    rate = run.decision_false_fail_rate(len(experiment.FIG2_PANELS))
    tests = []
    for k, panel in enumerate(experiment.FIG2_PANELS):
        if k and run.already_fails(tests, rate):
            run.record_stop(panels_run=k)
            break
        seeds = experiment.reproduction_seeds(run, panel, rate)
        curves = experiment.fig2_curves(run.subject, panel, seeds, run.generator(0),
                                        protocols=("fresh",))["fresh"]
        _record_panel(run, panel, "fresh", curves, seeds)
        cos = experiment.cos_at_256(curves)
        mean, sem = stats.mean_se(cos)
        theirs = cos.std(ddof=1) / math.sqrt(experiment.AUTHORS_SEEDS)
        se = math.hypot(sem, theirs)
        df = se**4 / (sem**4 / (seeds - 1) + theirs**4 / (experiment.AUTHORS_SEEDS - 1))
        tests.append(stats.equivalent(
            f"{panel.critic}: mean cos at N=256 = reported {panel.reported_cos_at_256}",
            float(mean), se, panel.reported_cos_at_256, margin=experiment.FIG2_MARGIN, df=df,
            note=f"{seeds} seeds; margin: 2-digit report of a 20-seed mean (see FIG2_MARGIN)"))
        tests.append(stats.within_precision(
            f"{panel.critic}: subject rounding: cos = float64 subject's on the same inputs",
            experiment.fig2_rounding_error(run, panel), 0.0,
            experiment.ROUNDING_SHARE * experiment.FIG2_MARGIN,
            note=f"max over the {experiment.FIG2_PILOT_SEEDS} pilot seeds and every N; "
                 "bound: ROUNDING_SHARE of the margin"))
    return tests


@figure2.check("protocol matters: one mixture for anchors and negatives gives a higher cosine value",
               settings=st.just("fig2"), examples=Profiled(quick=1, full=1))
def fig2_one_mixture(run):
    """One input mixture for anchors and negatives (as the paper describes the setting) vs the
    authors' code, whose negative pool comes from a fresh mixture: seed by seed (same W, data,
    anchors) the one-mixture cos at N = 256 is higher for the cosine critic; the reported 0.94
    belongs to the fresh-mixture protocol. Decided on the paired difference, with the designed
    excess PROTOCOL_GAP; the RBF panel barely moves between protocols and is recorded only.
    """
    panel = experiment.FIG2_PANELS[0]
    design = experiment.protocol_design(run, panel, run.decision_false_fail_rate(1))
    # the decision needs N = 256 only (the pilot's full curves of both protocols are recorded)
    for protocol in ("one", "fresh"):
        _record_panel(run, panel, protocol, design.pilot[protocol], experiment.FIG2_PILOT_SEEDS)
    mean, se = stats.mean_se(experiment.protocol_gaps(run, panel, design.seeds))
    gap = experiment.PROTOCOL_GAP
    return [stats.exceeds("cosine: mean cos at N=256, one mixture minus fresh mixture > 0",
                          float(mean), float(se), 0.0, effect=gap, df=design.seeds - 1,
                          note=f"{design.seeds} paired seeds; designed excess {gap}")]


figure2.control(
    "stop-gradient through the negatives", check=fig2_as_coded, mutant=STOP_GRADIENT_BUG,
    description="negatives detached in g_N (g_ref stays the correct gradient)")
