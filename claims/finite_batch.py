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

Claim ``finite-batch-trajectories`` (Thm 4.1 / Fig. 5 at finite B): the Fig. 5 toy trained on
minibatches with SGD, Adam and AdamW keeps the gap increasing with the misalignment sigma, its
gap nears the population runs' as B grows, and the population runs are checked on an
independent trainer.

Settings, designs and the batched measurements: :mod:`cgeom_verify.experiments.finite_batch`.
"""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
import sympy

from cgeom_verify import Claim, Derivation, Profiled, stats
from cgeom_verify.experiments import finite_batch as experiment
from cgeom_verify.experiments.finite_batch import (
    FIRST_ORDER,
    SECOND_ORDER,
    SHIFT_GRADIENT,
    TOY,
    TRAJECTORY_SIGMAS,
    P,
    bias_settings,
    gibbs_settings,
)
from cgeom_verify.kernels import finite_batch

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


# -- checks ------------------------------------------------------------------------------------


def _bias_check(run, corrected: bool):
    """Per applicable setting (design: ``experiment.plan_bias``), the intercept of ``a + b/B``
    fitted to ``B <E g_B - grad log Gamma, e>``: TOST against beta (plug-in) or 0 (jackknife),
    margin the designed share of |beta|."""
    subject = run.subject.bias_corrected() if corrected else run.subject
    tests, measured = [], []
    for i, setting in run.settings_until_settled(tests, run.decision_false_fail_rate(len(run.settings))):
        m = experiment.measure_bias(run, i, setting, subject)
        if m is None:
            continue
        measured.append(m)
        fit = m.fit
        tests.append(stats.equivalent(
            "jackknife: B-scaled bias -> 0" if corrected else "B-scaled bias -> beta",
            fit.coef[0], fit.standard_error[0], 0.0 if corrected else m.beta_norm,
            margin=stats.relative_margin(m.beta_norm, run.relative_discrepancy), example=m.example,
            note=f"|beta| = {m.beta_norm:.4g}; next order b = {fit.coef[1]:.3g} +- "
                 f"{fit.standard_error[1]:.2g}; fit chi2 = {fit.chi2:.2f} on {fit.dof} dof; "
                 f"{m.design.replicates} replicates per B"))
    run.record("bias_table", [m.row() for m in measured])
    if measured:
        run.figure(("jackknife " if corrected else "") + "bias constant vs B, in units of |beta|",
                   experiment.bias_series(measured, level=0.0 if corrected else 1.0),
                   xlabel="B (negatives)", ylabel="B <E g_B - grad log Gamma, e> / |beta|",
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


# == the unimodal minimiser at finite batch (Prop 3.2) ==========================================

unimodal_gibbs = Claim(
    id="finite-batch-unimodal-gibbs",
    reference="Prop 3.2 (finite B)",
    statement=(
        "On n cells of equal mass, with the batch density estimate rho_hat = n (1 + C)/(B + 1) "
        "(positive in the denominator), the minimiser p_B of the batch-expected unimodal energy "
        "sum p U/tau + sum p E log rho_hat is the Gibbs law p* ~ exp(-U/tau) up to delta/B^2: "
        "the 1/B term is the same constant (n - 1)/(2B) for every law, and "
        "delta_k = -p*_k (h(p*_k) - sum_j p*_j h(p*_j)), h(p) = 5/12 - 1/(12 p^2)."
    ),
    assumptions=(
        "a discretised sphere: n equal cells, the law p a probability vector",
        "B min p* >= 16: the expansion of E log rho_hat in 1/B holds cell by cell",
    ),
    subject=finite_batch.BatchGibbs(),
)

_t = sympy.Symbol("t", positive=True)  # t = 1/B


def _expected_log_series():
    """E log((1 + C)/(B + 1)) - log p, C ~ Bin(B, p), to O(B^-2): Taylor in the centred ratio with
    the binomial's central moments (the 5th and 6th are O(B^-3) after the (B+1)^-k scaling)."""
    batch = 1 / _t
    var = batch * P * (1 - P)
    third = var * (1 - 2 * P)
    fourth = var * (1 - 6 * P * (1 - P)) + 3 * var**2
    mean = (1 + batch * P) / (batch + 1)
    scale = batch + 1
    value = (sympy.log(mean) - var / scale**2 / (2 * mean**2) + third / scale**3 / (3 * mean**3)
             - fourth / scale**4 / (4 * mean**4))
    return sympy.series(value - sympy.log(P), _t, 0, 3).removeO()


@unimodal_gibbs.obligation("E log rho_hat in powers of 1/B")
def expected_log_expansion():
    series = sympy.expand(_expected_log_series())
    return [
        Derivation("1/B coefficient of E log((1+C)/(B+1)) - log p", series.coeff(_t, 1), FIRST_ORDER),
        Derivation("1/B^2 coefficient", series.coeff(_t, 2), SECOND_ORDER),
    ]


@unimodal_gibbs.obligation("the 1/B term is the same for every law")
def first_order_constant():
    """p a1(p) = (1 - p)/2 is affine in p, so sum_k p_k a1(p_k) = (n - 1)/2 on the simplex: its
    gradient is constant and moves no minimiser."""
    return [Derivation("p a1(p) = (1 - p)/2", P * FIRST_ORDER, (1 - P) / 2),
            Derivation("d/dp [p a2(p)] = 5/12 - 1/(12 p^2)", sympy.diff(P * SECOND_ORDER, P),
                       SHIFT_GRADIENT)]


@unimodal_gibbs.obligation("the second-order shift of the minimiser")
def second_order_shift():
    """Stationarity of F + G/B^2 on the simplex, G = sum p a2(p), linearised at p* (log p = log p* +
    e): e_k + h_k/B^2 = const with sum p*_k e_k = 0, so p_B - p* = -p* (h - <p*, h>)/B^2. Shown on
    two cells, where it is a scalar equation in p1 (p2 = 1 - p1)."""
    eps = sympy.Symbol("epsilon", positive=True)
    p1, x = sympy.symbols("p_1 x", positive=True)
    gibbs = p1
    # F on two cells in the coordinate x = p_1, plus eps G (eps = 1/B^2); U absorbed into p*.
    energy = (x * sympy.log(x / gibbs) + (1 - x) * sympy.log((1 - x) / (1 - gibbs))
              + eps * (x * SECOND_ORDER.subs(P, x) + (1 - x) * SECOND_ORDER.subs(P, 1 - x)))
    stationary = sympy.diff(energy, x)
    shift = sympy.Symbol("s")
    linear = sympy.series(stationary.subs(x, gibbs + eps * shift), eps, 0, 2).removeO()
    solved = sympy.solve(sympy.expand(linear).coeff(eps, 1), shift)[0]
    h1, h2 = SHIFT_GRADIENT.subs(P, p1), SHIFT_GRADIENT.subs(P, 1 - p1)
    predicted = -p1 * (h1 - (p1 * h1 + (1 - p1) * h2))
    return Derivation("two cells: B^2 (p_B - p*)_1 -> -p*_1 (h_1 - <p*, h>)", solved, predicted)


@unimodal_gibbs.check("minimiser shift B^2 (p_B - p*) -> delta", settings=gibbs_settings(),
                      examples=Profiled(quick=3, full=12))
def minimiser_shift(run):
    """``y(B) = B^2 (p_B - p*)`` over B0, 2 B0, 4 B0; its second-order Richardson extrapolation
    ``(8 y(4B0) - 6 y(2B0) + y(B0))/3`` removes the B^-1 and B^-2 terms of y; the gap between
    the first- and second-order extrapolations estimates what is left (recorded, and decided: it
    must be below a quarter of the design). The decision is deterministic (no sampling): the
    distance to delta within the designed 10 % (quick) of |delta|."""
    measured = [experiment.measure_shift(run, i, setting) for i, setting in enumerate(run.settings)]
    tests = []
    for m in measured:
        margin = stats.relative_margin(m.delta_norm, run.relative_discrepancy)
        tests.append(stats.within_precision(
            "|extrapolated B^2 (p_B - p*) - delta|", float(np.linalg.norm(m.second - m.delta)), 0.0,
            margin, example=m.example,
            note=f"|delta| = {m.delta_norm:.4g}; max |p_B - p*| at B = {m.sizes[-1]}: "
                 f"{float(np.abs(m.scaled[2]).max()) / m.sizes[-1] ** 2:.3g}"))
        tests.append(stats.within_precision(
            "extrapolation error estimate", float(np.linalg.norm(m.second - m.first)), 0.0,
            margin / 4, example=m.example,
            note="|second- minus first-order Richardson|: the numerical error left"))
    run.record("gibbs_table", [m.row() for m in measured])
    if measured:
        run.figure("minimiser shift B^2 |p_B - p*| in units of |delta|", experiment.shift_series(measured),
                   xlabel="B (negatives)", ylabel="B^2 |p_B - p*| / |delta|", xscale="log",
                   yscale="log")
    return tests


unimodal_gibbs.control("stop-gradient through the negatives", check=minimiser_shift,
                       mutant=finite_batch.BatchGibbs(detach_negatives=True),
                       description="the negatives' dependence on p dropped: a 1/B shift "
                                   "-p* (a1 - <p*, a1>)/B, so B^2 (p_B - p*) grows like B")


# == the Fig. 5 toy at finite batch: trajectories and optimisers (Thm 4.1's prediction) ==========

trajectories = Claim(
    id="finite-batch-trajectories",
    reference="Thm 4.1 / Fig. 5 (finite B; SGD, Adam, AdamW)",
    statement=(
        "Training the Fig. 5 toy on minibatches of B pairs from identical encoders, with plain "
        "SGD, Adam (the authors' choice) or Adam with decoupled weight decay up to 1, the "
        "end-of-training gap D_S still increases with the misalignment sigma at every batch size "
        "B >= 8 (Jonckheere-Terpstra per optimiser and B): finite batches and the regulariser "
        "do not remove Thm 4.1's monotone gap. The gap (its mean over the closing steps) nears "
        "the population runs' (J_mm by quadrature, Adam with the same weight decay, same steps) "
        "as B grows: its relative deviation falls with B at every sigma (stratified "
        "Jonckheere-Terpstra per optimiser; the exponent of the fall is measured and "
        "recorded). The population runs "
        "reach, within 3 % of the gap, the optimum an independent trainer finds."
    ),
    assumptions=(
        "the toy's data law without input noise (the population objective has none), "
        "tau = 0.07, sigma in {0.2, 0.35, 0.5}, both encoders identical at the start (per seed)",
        "B >= 8; decoupled weight decay up to 1 (AdamW at the authors' rate 5e-3); 300 steps "
        "(the population runs converge within them at sigma >= 0.35), the gap averaged over "
        "every 10th of the last 150",
    ),
    subject=finite_batch.FiniteBatchToy(),
)


@trajectories.check("population runs reach the population optimum", settings=st.just(TOY),
                    examples=Profiled(quick=1, full=1))
def population_reference(run):
    """The reference the finite-B gaps are drawn against: the trainer's population runs
    (autograd of the dense quadrature of J_mm, Adam, two starts) against the Fourier-space
    trainer (another start), within POPULATION_TOLERANCE of the gap."""
    sweep = experiment.population_runs(run)
    oracle = experiment.independent_population_gaps(run)
    tests = []
    for sigma, reference in zip(TRAJECTORY_SIGMAS, oracle, strict=True):
        gaps = sweep.gap[np.isclose(sweep.sigma, sigma)]
        tests.append(stats.within_precision(
            f"sigma {sigma}: population-run gap = independent trainer's",
            float(np.abs(gaps - reference).max()), 0.0, experiment.POPULATION_TOLERANCE * reference,
            note=f"{gaps.size} runs (own starts): {np.array2string(gaps, precision=8)}; "
                 f"train_population: {reference:.8g}"))
    run.record("population_gap", dict(zip(map(str, TRAJECTORY_SIGMAS), oracle.tolist(), strict=True)))
    return tests


@trajectories.check("gap increases with sigma and nears the population's as B grows",
                    settings=st.just(TOY), examples=Profiled(quick=1, full=1))
def finite_batch_trend(run):
    """Every (optimiser, B, sigma, seed) run and the population runs in one training program.
    Per optimiser and B, JT for the final D_S increasing in sigma. Per optimiser, JT stratified
    by sigma for the window-mean deviation |D_S(B)/D_S(pop) - 1| decreasing in B: the runs
    approach the population flow (the sign of the rate, decided; its exponent, recorded)."""
    seeds, decisions = experiment.trajectory_design(run)
    sweep = experiment.trajectory_sweep(run, seeds)
    batches = run.pick(experiment.BATCHES)
    power = stats.jt_power([seeds] * len(TRAJECTORY_SIGMAS), experiment.TREND_PI, run.false_pass_rate)
    convergence_power = stats.jt_power([seeds] * len(batches), experiment.CONVERGENCE_PI,
                                       run.false_pass_rate, strata=len(TRAJECTORY_SIGMAS))
    tests, table, rates = [], [], []
    optimisers = run.pick(experiment.OPTIMISERS)
    for o, optimiser in enumerate(optimisers):
        population = experiment.population_gaps(sweep, optimisers, o)
        for batch in batches:
            sigma, gap = sweep.select(o, batch)
            groups = [gap[sigma == s] for s in TRAJECTORY_SIGMAS]
            jt = stats.jonckheere_terpstra(groups, seed=run.check_seed)
            tests.append(stats.demonstrate(
                f"{optimiser.label}, B = {batch}: D_S increases with sigma", jt.statistic,
                jt.p_value, power=power,
                note=(f"JT over {seeds} seeds per sigma ({jt.method} p, z = {jt.z:.2f}); designed "
                      f"effect: pairwise ordering probability {experiment.TREND_PI}, "
                      f"power {power:.6f}")))
            table += experiment.gap_rows(optimiser, batch, groups, population)
        run.figure(f"{optimiser.label}: end-of-training gap vs 1/B (1/B = 0: population J_mm)",
                   experiment.gap_series(optimiser, table, population), xlabel="1/B",
                   ylabel="D_S (median, quartiles)", yscale="log")
        rate = experiment.convergence(sweep, optimisers, o, batches)
        jt = stats.stratified_jonckheere_terpstra(rate.strata(), seed=run.check_seed)
        tests.append(stats.demonstrate(
            f"{optimiser.label}: |D_S(B)/D_S(pop) - 1| falls as B grows", jt.statistic, jt.p_value,
            power=convergence_power,
            note=(f"JT over B = {', '.join(map(str, batches))}, stratified by sigma, {seeds} seeds "
                  f"per cell (z = {jt.z:.2f}); designed effect: ordering probability "
                  f"{experiment.CONVERGENCE_PI}, power {convergence_power:.6f}; measured exponent "
                  "of the median deviation ~ B^-alpha: "
                  + ", ".join(f"sigma {s}: {a:.2f}" for s, a in rate.exponent.items()))))
        rates += rate.rows()
        run.figure(f"{optimiser.label}: relative deviation from the population gap vs B",
                   rate.series(), xlabel="B", ylabel="|D_S(B)/D_S(pop) - 1| (window mean)",
                   xscale="log", yscale="log")
    run.record("per_optimiser_batch_sigma", table)
    run.record("convergence", rates)
    run.record("design", {"seeds_per_group": seeds, "decisions": decisions,
                          "steps": experiment.TRAJECTORY_STEPS,
                          "window_length_every_cells": list(experiment.TRAJECTORY_WINDOW),
                          "population_seeds": experiment.POPULATION_SEEDS})
    return tests


trajectories.control("population runs secretly on batches of 16", check=population_reference,
                     mutant=finite_batch.FiniteBatchToy(secret_batch=16),
                     description="the reference is itself a finite-batch run: it misses the "
                                 "population optimum by the finite-B deviation")
trajectories.control("sigma labels permuted", check=finite_batch_trend,
                     mutant=finite_batch.FiniteBatchToy(shuffle_sigma=True),
                     description="the runs' sigma labels shuffled after training: no trend")
trajectories.control("batch labels permuted", check=finite_batch_trend,
                     mutant=finite_batch.FiniteBatchToy(shuffle_batch=True),
                     description="the finite-B runs' batch sizes shuffled within each optimiser "
                                 "and sigma after training: no approach to the population")
