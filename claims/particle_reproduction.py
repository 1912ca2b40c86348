"""The authors' particle experiment (Figs. 3-4) and when it reaches the Gibbs minimiser.

arXiv 2601.19597, Prop 3.2: the unimodal free energy ``F(rho) = (1/tau) ∫U rho - H(rho)``
has the unique minimiser ``rho* ∝ exp(-U/tau)``; Prop 3.3: as tau -> 0 the Gibbs mass
concentrates on the sublevel sets of U. Figs. 3-4 illustrate both with particles
(docs/derivations.md, "Figs. 3-4 particle/KDE landscape"): on S^2 with
``U = -(1/kappa) log(w e^{kappa<z,m1>} + (1-w) e^{kappa<z,m2>})``,
kappa = 12, w = 0.5, m1 = (0,0,1), m2 = normalise(0.85, 0.15, -0.5), M = 768 particles
are trained for 5000 Adam steps (lr 5e-2, noise 0.06 per step) on
``mean U / tau + mean log rho_h`` with a geodesic Gaussian KDE of bandwidth h = 0.35,
and the fraction of particles within geodesic radius 0.5 of m1 or m2 is compared with
the Gibbs mass of those caps. Their code, seed 0: tau = 10: trained 0.137 vs Gibbs 0.130;
tau = 1: 0.198 vs 0.191; tau = 0.1: trained 1.000 vs Gibbs 0.708.

Claim ``figs3-4-reproduction``: our batched re-implementation
(:mod:`cgeom_verify.kernels.particles`) reproduces their numbers: the Gibbs cap mass by
quadrature matches their 120k-point Monte Carlo, and their seed-0 trained values lie in the
predictive interval of our seeds; at tau = 0.1 that means reproducing a *disagreement* with
Gibbs, which the next claim certifies as such.

Claim ``kde-surrogate-bias``: the particle/KDE objective is a surrogate whose minimiser is
not rho*: its cap mass agrees with Gibbs when the bandwidth is small against the Gibbs width
sqrt(tau) and over-concentrates when it is not (trained > Gibbs at r = h/sqrt(tau) ~ 1.1, the
authors' tau = 0.1, h = 0.35 point among them). At tau = 0.1 the excess grows with h at every
particle count, and at the authors' h it does not vanish as M -> infinity (fit ``a + b/M``,
a > 0): a smoothing bias, not a finite-sample effect.

"Agree" is an equivalence test (TOST) with a designed margin: 10 % of the Gibbs cap mass p on
the quick profile, 3 % on the full one; "disagree" is ``trained - Gibbs > margin``
demonstrated (``exceeds``) with a designed effect. The Gibbs cap-mass quadrature, the oracle
of both claims, is checked against a closed form with a rigorous bound in every run.

The Gibbs width, the surrogate's small bias at the authors' design, the seed designs and the
cost: :mod:`cgeom_verify.experiments.particle_reproduction`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace

import hypothesis.strategies as st
import numpy as np

from cgeom_verify import Claim, Profiled, stats
from cgeom_verify.experiments import particle_reproduction as experiment
from cgeom_verify.experiments.particle_reproduction import (
    AUTHORS_BANDWIDTH,
    AUTHORS_SEED0,
    BIAS_TAU,
    DISAGREE_EFFECT,
    PERSIST_EFFECT,
    ROUNDING_VARIANCE,
    SLOPE_EFFECT,
    KDESurrogate,
    Setting,
)

# --------------------------------------------------------------------------------------
# Claim 1: the authors' numbers
# --------------------------------------------------------------------------------------

reproduction = Claim(
    id="figs3-4-reproduction",
    reference="Figs. 3-4 (Prop 3.2, 3.3)",
    statement=(
        "The authors' particle experiment is reproduced: the Gibbs cap mass (quadrature) "
        "matches their Monte Carlo values 0.130 / 0.191 / 0.708 at tau = 10 / 1 / 0.1, and "
        "their seed-0 trained values 0.137 / 0.198 / 1.000 lie in the predictive interval "
        "of our seeds. Trained vs Gibbs per tau is recorded; at tau = 0.1 they disagree "
        "(see kde-surrogate-bias)."),
    assumptions=(
        "the authors' landscape, metric, optimiser and noise (paper Figs. 3-4)",
        "full profile: their design (M = 768, 5000 steps, 7 taus); quick: M = 96, 400 "
        "steps at their three reported taus (a smaller system, so a wider interval)",
    ),
    subject=KDESurrogate(),
)


def cap_quadrature_test(run, taus) -> list:
    """The Gibbs cap-mass quadrature (the oracle of both claims) against the closed form of
    one well, within its rigorous bound (:func:`experiment.cap_quadrature_against_closed_form`)
    at the tau where it comes closest to the bound."""
    comparison = experiment.cap_quadrature_against_closed_form(taus, run.device)
    j = comparison.worst
    return [stats.within_precision(
        "Gibbs cap-mass quadrature = closed form (one well, vMF), worst tau",
        float(comparison.mass[j]), float(comparison.exact[j]), float(comparison.bound[j]),
        note=f"tau in {list(map(float, comparison.taus))}; bound: Gauss-Legendre Taylor tail + rounding")]


def kernel_precision_tests(run, num_particles: int) -> list:
    """Each training kernel (float32, fused: the one this device runs, and the tile programs
    that train elsewhere) against the authors' dense formula in float64 on the same inputs,
    within its stated precision (:func:`experiment.kernel_against_float64`)."""
    comparisons = experiment.kernel_against_float64(num_particles, run.generator())
    run.record("training_kernel_vs_float64", [c.row() for c in comparisons])
    note = (f"M = {num_particles}, stated precision 2^-16 (256 float32 roundoffs); "
            "oracle: dense float64 acos/exp/mean with autograd")
    tests = []
    for c in comparisons:
        kernel = c.kernel.partition(" (")[0]  # the build flags are in the record
        tests += [
            stats.within_precision(f"training kernel log rho = float64 dense formula ({kernel})",
                                   c.value_error, 0.0, experiment.KERNEL_PRECISION, note=note),
            stats.within_precision(f"training kernel gradient = float64 autograd, per |terms| "
                                   f"({kernel})", c.gradient_error, 0.0,
                                   experiment.KERNEL_PRECISION, note=note)]
    return tests


@reproduction.check("reproduces the authors' cap masses", settings=st.just(Setting()),
                    examples=Profiled(quick=1, full=1))
def reproduces_authors(run):
    design, taus = run.pick(experiment.REPRODUCTION_DESIGN), run.pick(experiment.REPRODUCTION_TAUS)
    compared = [tau for tau in taus if tau in AUTHORS_SEED0]
    # Fixed before sampling: the quadrature, each kernel's value and gradient, two per compared tau.
    kernels = len(experiment.kernels_under_test(run.device))
    rate = run.decision_false_fail_rate(1 + 2 * kernels + 2 * len(compared))
    run.record("design", {**asdict(design), "taus": list(taus), "bandwidth": AUTHORS_BANDWIDTH,
                          "false_fail_rate_per_decision": rate})
    df = design.seeds - 1

    def compared_with_authors(measured) -> list:
        tests = []
        for k, tau in enumerate(measured.taus):
            if tau not in AUTHORS_SEED0:
                continue
            their_trained, their_gibbs = AUTHORS_SEED0[tau]
            # Their Gibbs value is a 120k-point Monte Carlo rounded to 3 decimals: its s.e. is
            # known in advance (theory, authors_mc_standard_error), and no margin below what that
            # s.e. resolves can be meaningful, so the margin is the larger of the relative one and it.
            mc_se = math.sqrt(experiment.authors_mc_standard_error(tau, run.device) ** 2
                              + ROUNDING_VARIANCE + float(measured.gibbs[k] - measured.finer[k]) ** 2)
            margin = max(run.relative_discrepancy * their_gibbs,
                         stats.min_discrepancy(mc_se, rate, run.false_pass_rate, kind="equivalent"))
            tests.append(stats.equivalent(
                f"Gibbs = authors' Monte Carlo tau={tau:g}", measured.gibbs[k], mc_se, their_gibbs,
                margin=margin, note=f"s.e.: their MC and 3-decimal rounding; margin {margin:.4f}"))
            # Their trained value is ONE run: it differs from our mean by sd^2 (1 + 1/S) in
            # variance, so agreement cannot be resolved below (t + t) times that s.d.; the margin
            # is the larger of the relative one and that resolution at the planning s.d. (fixed
            # before training); UNDERPOWERED if the measured s.d. exceeds the plan.
            margin = max(run.relative_discrepancy * their_trained,
                         experiment.one_run_resolution(design, tau, rate, run.false_pass_rate))
            tests.append(stats.equivalent(
                f"trained = authors' seed-0 run tau={tau:g}", measured.mean[k],
                measured.predictive_sd(k), their_trained, margin=margin, df=df,
                note=f"predictive interval of one run; margin {margin:.4f} = resolution of one run"))
        return tests

    measured = experiment.reproduce(
        run, design, taus, stop=lambda so_far: run.already_fails(compared_with_authors(so_far), rate))
    tests = (cap_quadrature_test(run, taus) + kernel_precision_tests(run, design.particles)
             + compared_with_authors(measured))
    if measured.taus != tuple(taus):
        run.record_stop(trained_taus=list(measured.taus))
    run.record("gibbs_quadrature_refinement", {
        "taus": list(taus), "|96 - 192 nodes|": np.abs(measured.gibbs - measured.finer).tolist()})
    run.record("trained_vs_gibbs", measured.rows())
    run.figure("cap mass per tau: trained on the KDE surrogate vs the Gibbs measure", measured.series(),
               xlabel="tau", ylabel="mass of the cap", xscale="log")
    return tests


reproduction.control(
    "trained at twice the temperature", check=reproduces_authors,
    mutant=replace(KDESurrogate(), tau_factor=2.0),
    description="mean U/(2 tau) in the objective: at tau = 0.1 the cap mass drops to ~0.47")


# --------------------------------------------------------------------------------------
# Claim 2: the surrogate's bias and the regime where it agrees with Gibbs
# --------------------------------------------------------------------------------------

surrogate_bias = Claim(
    id="kde-surrogate-bias",
    reference="Prop 3.2 via Figs. 3-4 (particle/KDE surrogate)",
    statement=(
        "The particle/KDE surrogate agrees with the Gibbs minimiser only when the bandwidth "
        "is small against the Gibbs width sqrt(tau): at r = h/sqrt(tau) ~ 0.35 the trained "
        "cap mass is equivalent to the Gibbs mass p within the designed margin (10 % of p on "
        "the quick profile, 3 % on the full one), at r ~ 1.1 it exceeds p by more than that "
        "margin. The authors' tau = 0.1, h = 0.35 point has "
        "r = 1.11: outside the regime (trained ~1.0 vs Gibbs 0.706). At tau = 0.1 the "
        "excess increases with h at every particle count M and, at h = 0.35, does not "
        "vanish as M -> infinity."),
    assumptions=(
        "the authors' landscape, metric, optimiser and noise (paper Figs. 3-4)",
        "agreement is certified on the tested cells only (tau in [0.1, 10], r ~ 0.35) and "
        "at the designed margin; the surrogate's bias there is small but not zero",
        "a finite M adds its own bias when few particles fall within h (small h, small tau)",
    ),
    subject=KDESurrogate(),
)


@surrogate_bias.check("agreement iff h is small against the Gibbs width; bias grows with h",
                      settings=st.just(Setting()), examples=Profiled(quick=1, full=1))
def surrogate_regime(run):
    design = run.pick(experiment.BIAS_DESIGN)
    rate = run.decision_false_fail_rate(experiment.decision_count(run, design))  # fixed before training
    plan = experiment.seed_plan(run, design, rate)
    agree, disagree = run.pick(experiment.AGREE_CELLS), run.pick(experiment.DISAGREE_CELLS)
    run.record("design", {**asdict(design), "particle_counts": list(run.pick(experiment.BIAS_PARTICLES)),
                          "false_fail_rate_per_decision": rate,
                          "seeds_per_cell": {f"tau={k[0]:g} h={k[1]:g} M={k[2]}": n
                                             for k, n in sorted(plan.items())},
                          "planning_sd": "pilot s.d. x 1.5 (PILOT_SD)",
                          "agreement_margin": f"{run.relative_discrepancy:.0%} of the Gibbs mass"})
    m0 = design.particles
    cells = experiment.train_grid(run, design, plan, stop=lambda so_far: run.already_fails(
        _regime_tests(run, m0, so_far, complete=False), rate))
    complete = len(cells) == len(plan)
    if not complete:
        run.record_stop(trained_particle_counts=sorted({key[2] for key in cells}))
    run.record("cells", [cell.row() for cell in cells.values()])
    tests = cap_quadrature_test(run, sorted({c[0] for c in (*agree, *disagree)}))
    tests += _regime_tests(run, m0, cells, complete)
    if (BIAS_TAU, AUTHORS_BANDWIDTH, m0) in cells:
        # The authors' point decided as an *agreement* test (the one applied to the agree
        # cells), recorded (not counted): the certificate shows that this agreement test fails.
        cell = cells[(BIAS_TAU, AUTHORS_BANDWIDTH, m0)]
        run.record("authors_point_agreement_test", stats.equivalent(
            "trained = Gibbs at the authors' point (tau=0.1, h=0.35)", cell.trained_mean,
            cell.trained_sem, cell.gibbs, margin=cell.margin,
            df=cell.seeds - 1).decide(rate, run.false_pass_rate).to_json())
    table = experiment.bias_table(cells)
    run.record("bias_table_tau_0.1", {str(m): {f"{h:g}": [c.bias, c.trained_sem] for h, c in t.items()}
                                      for m, t in table.items()})
    if complete:
        run.record("bias_vs_particle_count",
                   {f"{h:g}": fit.row() for h, fit in experiment.limit_fits(table).items()})
    run.figure(f"surrogate bias at tau = {BIAS_TAU:g} vs bandwidth, per particle count M",
               experiment.bias_series(table),
               xlabel=f"KDE bandwidth h (Gibbs width sqrt(tau) = {math.sqrt(BIAS_TAU):.3g})",
               ylabel="trained - Gibbs cap mass")
    return tests


def _regime_tests(run, m0: int, cells: dict, complete: bool) -> list:
    """The decisions on the cells trained so far: agreement and disagreement at the design M
    ``m0`` once its stage is trained, the slope in h at each M trained, and the limit in M once
    every M is (``complete``)."""
    tests = []
    if (BIAS_TAU, AUTHORS_BANDWIDTH, m0) in cells:
        for tau, h in run.pick(experiment.AGREE_CELLS):
            cell = cells[(tau, h, m0)]
            where = f"r={experiment.width_ratio(tau, h):.2f} (tau={tau:g}, h={h:g})"
            tests.append(stats.equivalent(
                f"trained = Gibbs cap mass at {where}", cell.trained_mean, cell.trained_sem,
                cell.gibbs, margin=cell.margin, df=cell.seeds - 1,
                note=f"TOST, margin {run.relative_discrepancy:.0%} of p = {cell.margin:.4f}"))
        for tau, h in run.pick(experiment.DISAGREE_CELLS):
            cell = cells[(tau, h, m0)]
            authors = " (authors' point)" if (tau, h) == (BIAS_TAU, AUTHORS_BANDWIDTH) else ""
            tests.append(stats.exceeds(
                f"excess > agreement margin at r={experiment.width_ratio(tau, h):.2f} "
                f"(tau={tau:g}, h={h:g}){authors}",
                cell.bias, cell.trained_sem, cell.margin, effect=DISAGREE_EFFECT,
                df=cell.seeds - 1, note=f"margin {cell.margin:.4f}; designed effect "
                                        f"{DISAGREE_EFFECT} above it"))
    table = experiment.bias_table(cells)
    tests += _slope_tests(table)
    if complete:
        tests.append(_limit_test(experiment.limit_fits(table)))
    return tests


def _slope_tests(table: dict) -> list:
    """At tau = 0.1, the bias grows with h at every M trained with two bandwidths or more
    (:class:`experiment.BandwidthSlope`)."""
    tests = []
    for m, by_h in table.items():
        if len(by_h) < 2:
            continue
        slope = experiment.bandwidth_slope(by_h)
        tests.append(stats.exceeds(f"bias increases with h at tau=0.1, M={m}", slope.estimate,
                                   slope.standard_error, 0.0, effect=SLOPE_EFFECT, df=slope.df,
                                   note=f"OLS slope over h in {slope.bandwidths}; designed effect "
                                        f"{SLOPE_EFFECT}"))
    return tests


def _limit_test(fits: dict):
    """With ``bias_M = a + b/M`` fitted per bandwidth (``fits``), the bias at the authors' h
    persists as M -> infinity (a > 0)."""
    limit = fits[AUTHORS_BANDWIDTH]
    return stats.exceeds(
        "bias at h=0.35 persists as M -> inf (a in a + b/M)", limit.fit.coef[0],
        limit.fit.standard_error[0], 0.0, effect=PERSIST_EFFECT, df=limit.df,
        note=f"M in {limit.particle_counts}; b = {limit.fit.coef[1]:.3g} +- "
             f"{limit.fit.standard_error[1]:.2g}")


surrogate_bias.control(
    "entropy sign flipped", check=surrogate_regime,
    mutant=replace(KDESurrogate(), entropy_weight=-1.0),
    description="mean U/tau - mean log rho_h: particles attract and collapse into the wells")
surrogate_bias.control(
    "exact Gibbs draws", check=surrogate_regime,
    mutant=replace(KDESurrogate(), exact_gibbs=True),
    description="i.i.d. Gibbs samples in place of training: no surrogate bias to find")
