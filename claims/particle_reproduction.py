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

What is certified here:

* ``figs3-4-reproduction`` — our batched re-implementation
  (:mod:`cgeom_verify.kernels.particles`) reproduces their numbers: the Gibbs cap mass by
  quadrature (exact to rounding) matches their 120k-point Monte Carlo, and their seed-0
  trained values lie in the predictive interval of our seeds. The per-tau table of
  trained vs Gibbs is recorded. Reproducing their tau = 0.1 number means reproducing a
  *disagreement* with Gibbs, which the next claim certifies as such.
* ``kde-surrogate-bias`` — the particle/KDE objective is a surrogate whose minimiser is
  not rho*: its cap mass agrees with Gibbs when the bandwidth is small against the
  Gibbs width and over-concentrates when it is not (trained > Gibbs at r ~ 1.1, the
  authors' tau = 0.1, h = 0.35 point among them). At tau = 0.1 the excess grows with h at
  every particle count, and at the authors' h it does not vanish as M -> infinity (fit
  ``a + b/M``, a > 0): a smoothing bias, not a finite-sample effect.

"Agree" is an equivalence test (TOST) with a designed margin: 10 % of the Gibbs cap
mass p on the quick profile, 3 % on the full one. The surrogate is never exactly unbiased:
at the authors' design (M = 768, 5000 steps) the trained cap mass exceeds Gibbs by a small,
highly significant 0.007-0.011 at every tau >= 0.5 (their own seed-0 numbers show the same
+0.007 at tau = 10 and 1): 4-5 % of p, so the full profile's 3 % agreement cells at
tau = 10 and 1 are expected to FAIL, which the certificate then says. Disagreement:
``trained - Gibbs > margin`` demonstrated (``exceeds``) with a designed effect. Seeds per
cell are designed before training (``_seed_plan``: :func:`stats.min_num_samples` with
Student-t quantiles, from a pilot s.d. x 1.5); the Gibbs cap-mass quadrature, the oracle of
both claims, is checked against a closed form (one well) with a rigorous bound in every run.

The Gibbs width: near each well ``U(z) = -<z, m_k> + const`` up to the other well's
exponentially small share, and the Hessian of ``-<z, m>`` on S^2 at m is the identity
on the tangent plane, so locally ``rho* ≈ N(m_k, tau I_2)``: width ``sqrt(tau)`` (not
``sqrt(tau/kappa)``; kappa only sets how sharply U switches between the wells). For a
flat Gaussian target the KDE surrogate's minimiser has variance ratio
``(1 + sqrt(1 + 4 r^2))/2 - r^2 = 1 - r^4 + O(r^6)`` and collapses for r >= sqrt(2):
negligible bias at r = 0.35, a large one at r = 1.1, as measured.

Statistics: every run is one seed of a batched program; the seeds of a cell are the
replicates (t-statistics with seeds - 1 degrees of freedom). Training is float32, as in
the authors' code; quadrature and statistics are float64.

Designs and cost. Quick: the reproduction at M = 96, 400 steps, 48 seeds at the three
reported taus; the bias check at M = 96 (and 192 for the M trend), 400 steps, seeds per cell
designed (4 to ~75). Full: the reproduction at the authors' design (M = 768, 5000 steps, all
7 taus) with 5 seeds, not their 20: one M = 768 system costs ~5.5 ms per step here, so their
140-run figure takes ~36 min even batched on both cores (benchmarks/bench_particles.py); the
bias check at M = 384 (table over M in {192, 384, 768}), 2000 steps, designed seeds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import hypothesis.strategies as st
import numpy as np
import torch
from scipy import special
from scipy import stats as _scipy_stats

from cgeom_verify import Claim, Profiled, stats
from cgeom_verify.kernels import gibbs, particles, quadrature

#: The authors' Figs. 3-4 landscape and metric.
WELLS = particles.Wells(((0.0, 0.0, 1.0), (0.85, 0.15, -0.5)), (0.5, 0.5), 12.0)
CAP_RADIUS = 0.5
AUTHORS_BANDWIDTH = 0.35
AUTHORS_TAUS = (10.0, 5.0, 2.5, 1.0, 0.5, 0.2, 0.1)
#: Their code, seed 0, as reported to 3 decimals: tau -> (trained, Gibbs by Monte Carlo).
AUTHORS_SEED0 = {10.0: (0.137, 0.130), 1.0: (0.198, 0.191), 0.1: (1.000, 0.708)}
AUTHORS_MC_POINTS = 120_000
#: Variance of a value rounded to 3 decimals (uniform on +-0.0005).
ROUNDING_VARIANCE = 0.001**2 / 12

#: Quadrature resolution of the Gibbs cap mass, and the check of its convergence.
GIBBS_NODES = 96


@dataclass(frozen=True)
class Setting:
    """The physical setting (fixed: the authors'); the sample design comes from the profile."""

    kappa: float = WELLS.kappa
    well_weight: float = WELLS.weights[0]
    second_well: tuple[float, float, float] = WELLS.means[1]
    cap_radius: float = CAP_RADIUS


@dataclass(frozen=True)
class KDESurrogate:
    """The authors' particle method, the subject of both claims.

    ``entropy_weight`` multiplies ``mean log rho_h`` (1: the authors'), ``tau_factor``
    scales the temperature the particles are trained at, and ``exact_gibbs`` replaces
    training by i.i.d. Gibbs draws of the same size (what a perfect method would give).
    """

    entropy_weight: float = 1.0
    tau_factor: float = 1.0
    exact_gibbs: bool = False

    def cap_fractions(self, tau, bandwidth, num_particles, steps, generator) -> np.ndarray:
        """Cap fraction of one particle system per entry of ``tau``/``bandwidth`` (batched)."""
        tau = torch.as_tensor(tau, dtype=torch.float64, device=generator.device)
        if self.exact_gibbs:
            z = particles.sample_gibbs(WELLS, tau, num_particles, generator)
        else:
            z = particles.train_particles(
                WELLS, tau * self.tau_factor, bandwidth, num_particles,
                particles.AdamSchedule(steps=steps), generator,
                entropy_weight=self.entropy_weight)
        return particles.cap_fraction(z, WELLS.centres(device=z.device), CAP_RADIUS).cpu().numpy()


@dataclass(frozen=True)
class Design:
    """Sample design: particle count(s), Adam steps, seeds per cell."""

    particles: int
    steps: int
    seeds: int


def _train_cells(run, cells, design: Design, num_particles: int, generator,
                 seeds=None) -> list[np.ndarray]:
    """Cap fractions per cell (``seeds[c]`` runs of cell c, default ``design.seeds``) for
    ``cells = ((tau, h), ...)``, trained as one batched program."""
    counts = [design.seeds] * len(cells) if seeds is None else list(seeds)
    tau = np.repeat([c[0] for c in cells], counts)
    bandwidth = np.repeat([c[1] for c in cells], counts)
    fractions = run.subject.cap_fractions(tau, bandwidth, num_particles, design.steps, generator)
    return np.split(fractions, np.cumsum(counts)[:-1])


def _seed_sd(fractions: np.ndarray, num_particles: int) -> np.ndarray:
    """Across-seed s.d. of cap fractions (last axis), floored at the metric's resolution.

    A fraction of M particles moves in steps of 1/M; seeds that all land on the same
    value (e.g. every particle in the caps) do not show a zero s.d., only one below the
    quantisation s.d. 1/(M sqrt 12), which is used as the floor.
    """
    return np.maximum(fractions.std(axis=-1, ddof=1), 1.0 / (num_particles * math.sqrt(12)))


#: Planning s.d. of one trained system's cap fraction at M = 96, 400 steps: per cell the larger
#: of two pilots (16 seeds each; and 9-34 seeds of a first run of this check), master seed
#: 20260119. The trained s.d. is 0.3-0.6 of the binomial sqrt(p(1-p)/M) because the KDE
#: repulsion spreads the particles evenly. Other particle counts scale it by sqrt(96/M); cells
#: without a pilot use the largest value. Designs multiply it by PLANNING_SAFETY (pilot error);
#: the seed counts then also guard against a high *estimated* s.d. (_design_seeds).
PILOT_M = 96
PILOT_SD = {(1.0, 0.35): 0.019, (0.1, 0.11): 0.0158, (0.1, 0.35): 0.0188, (0.2, 0.5): 0.0378,
            (0.1, 0.25): 0.0258, (0.1, 0.18): 0.0264, (10.0, 0.35): 0.0206, (0.5, 0.25): 0.0239,
            (0.2, 0.16): 0.0173}
PLANNING_SAFETY = 1.25
MIN_SEEDS = 4


def _planning_sd(cell, num_particles: int) -> float:
    sd = PILOT_SD.get(tuple(cell), max(PILOT_SD.values()))
    return PLANNING_SAFETY * sd * math.sqrt(PILOT_M / num_particles)


def _design_seeds(sd: float, discrepancy: float, false_fail_rate: float, false_pass_rate: float,
                  kind: str) -> int:
    """Seeds for a ``kind`` decision on a mean over seeds (Student-t, seeds - 1 d.o.f.) with the
    planner's guard against a high *estimated* s.d."""
    return stats.min_num_samples(sd, discrepancy, false_fail_rate, false_pass_rate, kind=kind,
                                 t_quantiles=True, minimum=MIN_SEEDS)


def _cap_quadrature_closed_form(run, taus) -> list:
    """The Gibbs cap-mass quadrature (the oracle of both claims) against a closed form, in
    every run: for one well ``U = -<z, m>`` the Gibbs density is vMF(m, 1/tau) and its cap of
    radius r has mass ``(1 - e^{-k(1 - cos r)}) / (1 - e^{-2k})``, k = 1/tau.

    Rigorous bound: the cap rule is Gauss-Legendre (n nodes, exact to degree 2n - 1) in
    t = cos(theta) on [cos r, 1]; with ``e^{kt} = e^{k c} e^{k w s}`` (c the midpoint, w the
    half-width, s in [-1, 1]) the Taylor tail beyond degree L is ``e^{k(c + w)} gammainc(L+1,
    k w)``, so the cap integral errs by at most twice that times the cap's measure; the
    partition function's relative error is :func:`quadrature.exp_polynomial_quadrature_bound`.
    Both are divided by the exact partition function; rounding adds gamma_n of the masses.
    """
    well = particles.Wells(((0.3, -0.2, 0.9),), (1.0,), 5.0)
    tau = np.asarray(taus, dtype=np.float64)
    k = 1.0 / tau
    cos_r = math.cos(CAP_RADIUS)
    exact = -np.expm1(-k * (1 - cos_r)) / -np.expm1(-2 * k)
    mass = particles.gibbs_cap_mass(well, tau, CAP_RADIUS, nodes=GIBBS_NODES,
                                    device=run.device).cpu().numpy()
    degree = 2 * GIBBS_NODES - 1
    half, mid = (1 - cos_r) / 2, (1 + cos_r) / 2
    # Cap integral over the uniform measure: (1/2)∫_{cos r}^1 e^{k t} dt; its error, relative to
    # the exact partition function V_3(k) = sinh(k)/k (log-space to avoid overflow).
    log_v = np.log(-np.expm1(-2 * k)) + k - np.log(2 * k)
    with np.errstate(divide="ignore"):  # a tail below the smallest double is 0
        cap_err = 2 * half * np.exp(k * (mid + half) - log_v
                                    + np.log(special.gammainc(degree + 1, k * half)))
    z_err = quadrature.exp_polynomial_quadrature_bound(k, 0, 1.0, degree, 3)
    bound = (cap_err + exact * z_err) / (1 - z_err) + quadrature.summation_error_bound(
        2 * exact + 1, 4 * GIBBS_NODES**2)
    j = int(np.argmax(np.abs(mass - exact) / bound))
    return [stats.within_precision(
        "Gibbs cap-mass quadrature = closed form (one well, vMF), worst tau", float(mass[j]),
        float(exact[j]), float(bound[j]),
        note=f"tau in {list(map(float, tau))}; bound: Gauss-Legendre Taylor tail + rounding")]


def _gibbs(tau, device) -> np.ndarray:
    return particles.gibbs_cap_mass(WELLS, tau, CAP_RADIUS, nodes=GIBBS_NODES,
                                    device=device).cpu().numpy()


def _width_ratio(tau: float, bandwidth: float) -> float:
    """r = h / sqrt(tau): bandwidth over the Gibbs width at the wells (module docstring)."""
    return bandwidth / math.sqrt(tau)


def _authors_mc_standard_error(tau: float, device) -> float:
    """S.e. of their self-normalised Monte Carlo (uniform proposals, n = 120k).

    Its asymptotic variance is ``∫ rho*^2 (1_A - p)^2 dmu / n``; with ``∫_A rho*^2 =
    Z_{tau/2} rho*_{tau/2}(A) / Z_tau^2`` every term is a smooth quadrature.
    """
    points, weights = quadrature.sphere_grid(GIBBS_NODES, 2 * GIBBS_NODES, device=device)
    log_z = gibbs.log_partition_function(WELLS.potential(points),
                                         torch.tensor([tau, tau / 2], device=device), weights)
    second_moment = float(torch.exp(log_z[1] - 2 * log_z[0]))
    in_caps = second_moment * float(_gibbs(tau / 2, device))
    p = float(_gibbs(tau, device))
    variance = (1 - p) ** 2 * in_caps + p**2 * (second_moment - in_caps)
    return math.sqrt(max(variance, 0.0) / AUTHORS_MC_POINTS)  # (a broken oracle: decide, not crash)


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

REPRODUCTION_DESIGN = Profiled(quick=Design(particles=96, steps=400, seeds=48),
                               full=Design(particles=768, steps=5000, seeds=5))
REPRODUCTION_TAUS = Profiled(quick=(10.0, 1.0, 0.1), full=AUTHORS_TAUS)


@reproduction.check("reproduces the authors' cap masses", settings=st.just(Setting()),
                    examples=Profiled(quick=1, full=1))
def reproduces_authors(run):
    design, taus = run.pick(REPRODUCTION_DESIGN), run.pick(REPRODUCTION_TAUS)
    compared = [tau for tau in taus if tau in AUTHORS_SEED0]
    rate = run.decision_false_fail_rate(1 + 2 * len(compared))  # fixed before sampling
    run.record("design", {**asdict(design), "taus": list(taus), "bandwidth": AUTHORS_BANDWIDTH,
                          "false_fail_rate_per_decision": rate})
    gibbs_mass = _gibbs(taus, run.device)
    finer = particles.gibbs_cap_mass(WELLS, taus, CAP_RADIUS, nodes=2 * GIBBS_NODES,
                                     device=run.device).cpu().numpy()
    cells = tuple((tau, AUTHORS_BANDWIDTH) for tau in taus)
    trained = np.stack(_train_cells(run, cells, design, design.particles, run.generator(0)))
    mean = trained.mean(axis=1)
    sd = _seed_sd(trained, design.particles)
    sem = sd / math.sqrt(design.seeds)
    tests = _cap_quadrature_closed_form(run, taus)
    df = design.seeds - 1
    for k, tau in enumerate(taus):
        if tau not in AUTHORS_SEED0:
            continue
        their_trained, their_gibbs = AUTHORS_SEED0[tau]
        # Their Gibbs value is a 120k-point Monte Carlo rounded to 3 decimals: its s.e. is known
        # in advance (theory, _authors_mc_standard_error), and no margin below what that s.e.
        # resolves can be meaningful, so the margin is the larger of the relative one and it.
        mc_se = math.sqrt(_authors_mc_standard_error(tau, run.device) ** 2 + ROUNDING_VARIANCE
                          + float(gibbs_mass[k] - finer[k]) ** 2)
        margin = max(run.relative_discrepancy * their_gibbs,
                     stats.min_discrepancy(mc_se, rate, run.false_pass_rate, kind="equivalent"))
        tests.append(stats.equivalent(
            f"Gibbs = authors' Monte Carlo tau={tau:g}", gibbs_mass[k], mc_se, their_gibbs,
            margin=margin, note=f"s.e.: their MC and 3-decimal rounding; margin {margin:.4f}"))
        # Their trained value is ONE run: it differs from our mean by sd^2 (1 + 1/S) in
        # variance, so agreement cannot be resolved below (t + t) times that s.d.; the margin is
        # the larger of the relative one and that resolution at the planning s.d. (fixed before
        # training), and the decision is UNDERPOWERED if the measured s.d. exceeds the plan.
        # Planning s.d.: the pilot's (x safety), inflated for a high *estimated* s.d. as in
        # _design_seeds (at most 2x: the full profile's 5 seeds cannot guard better).
        planned = _planning_sd((tau, AUTHORS_BANDWIDTH), design.particles)
        shrink = max(0.5, 1.0 - float(_scipy_stats.norm.ppf(1 - 1e-4)) / math.sqrt(2 * df))
        margin = max(run.relative_discrepancy * their_trained, stats.min_discrepancy(
            planned / shrink * math.sqrt(1 + 1 / design.seeds), rate, run.false_pass_rate,
            kind="equivalent", df=df))
        predictive = math.sqrt(sd[k] ** 2 * (1 + 1 / design.seeds) + ROUNDING_VARIANCE)
        tests.append(stats.equivalent(
            f"trained = authors' seed-0 run tau={tau:g}", mean[k], predictive, their_trained,
            margin=margin, df=df,
            note=f"predictive interval of one run; margin {margin:.4f} = resolution of one run"))
    run.record("gibbs_quadrature_refinement", {"taus": list(taus),
                                               "|96 - 192 nodes|": np.abs(gibbs_mass - finer).tolist()})
    run.record("trained_vs_gibbs", [
        {"tau": tau, "r": _width_ratio(tau, AUTHORS_BANDWIDTH), "trained_mean": float(mean[k]),
         "trained_sem": float(sem[k]), "gibbs": float(gibbs_mass[k]),
         "difference": float(mean[k] - gibbs_mass[k]),
         "authors_seed0": AUTHORS_SEED0.get(tau)} for k, tau in enumerate(taus)])
    theirs = sorted(t for t in taus if t in AUTHORS_SEED0)
    run.figure("cap mass per tau: trained on the KDE surrogate vs the Gibbs measure", [
        {"label": "Gibbs cap mass (quadrature)", "x": list(taus), "y": gibbs_mass.tolist()},
        {"label": f"trained, mean ± s.e. of {design.seeds} seeds (h = {AUTHORS_BANDWIDTH:g})",
         "style": "points", "x": list(taus), "y": mean.tolist(), "yerr": sem.tolist()},
        {"label": "authors' seed-0 run", "style": "points", "x": theirs,
         "y": [AUTHORS_SEED0[t][0] for t in theirs]},
    ], xlabel="tau", ylabel="mass of the cap", xscale="log")
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

#: (tau, h) cells. r ~ 0.35: agreement expected; r ~ 1.1: over-concentration expected.
AGREE_CELLS = Profiled(quick=((1.0, 0.35), (0.1, 0.11)),
                       full=((10.0, 0.35), (1.0, 0.35), (0.5, 0.25), (0.2, 0.16), (0.1, 0.11)))
DISAGREE_CELLS = Profiled(quick=((0.1, 0.35), (0.2, 0.5)),
                          full=((0.1, 0.35), (0.2, 0.5), (0.5, 0.8)))
#: The bias table at tau = 0.1: bandwidths x particle counts.
BIAS_TAU = 0.1
BIAS_BANDWIDTHS = Profiled(quick=(0.35, 0.25, 0.18, 0.11), full=(0.35, 0.25, 0.18, 0.11))
BIAS_PARTICLES = Profiled(quick=(96, 192), full=(192, 384, 768))
#: Bandwidths trained at the other particle counts (the design M has all of them).
BIAS_BANDWIDTHS_OTHER_M = Profiled(quick=(0.35, 0.11), full=(0.35, 0.18, 0.11))
#: ``seeds`` is the floor; each cell's count is designed from its decisions (_seed_plan).
BIAS_DESIGN = Profiled(quick=Design(particles=96, steps=400, seeds=MIN_SEEDS),
                       full=Design(particles=384, steps=2000, seeds=MIN_SEEDS))
#: Designed effects of the "exceeds" decisions, set at about half the pilot's values (M = 96,
#: 400 steps, 16 seeds): excess over the agreement margin at r ~ 1.1 (pilot 0.19-0.22),
#: WLS slope of the bias in h at tau = 0.1 (pilot ~1.0 per unit h), limit a of
#: ``a + b/M`` at h = 0.35 (pilot ~0.25). The Gaussian-surrogate theory (module docstring)
#: predicts the same order: at r = 1.1 the trained variance is half the Gibbs one.
DISAGREE_EFFECT = 0.1
SLOPE_EFFECT = 0.5
PERSIST_EFFECT = 0.1


def _cell_row(tau, h, m, fractions, gibbs_mass, margin) -> dict:
    mean, sem = fractions.mean(), _seed_sd(fractions, m) / math.sqrt(len(fractions))
    return {"tau": tau, "h": h, "r": _width_ratio(tau, h), "M": m, "seeds": len(fractions),
            "trained_mean": float(mean), "trained_sem": float(sem), "gibbs": float(gibbs_mass),
            "bias": float(mean - gibbs_mass), "bias_sem": float(sem),
            "margin": float(margin),
            "resolution": math.sqrt(max(gibbs_mass * (1 - gibbs_mass), 0.0) / m)}


def _agreement_margin(run, p) -> float:
    """The designed equivalence margin: ``run.relative_discrepancy`` (10 % quick, 3 % full)
    of the Gibbs cap mass p."""
    return run.relative_discrepancy * float(p)


def _wls_contrast(x) -> np.ndarray:
    """OLS slope weights ``c`` (slope = sum c_k y_k) over the points ``x``."""
    x = np.asarray(x, dtype=np.float64)
    dev = x - x.mean()
    return dev / (dev**2).sum()


def _limit_weights(ms) -> np.ndarray:
    """Weights ``w`` of the intercept a = sum w_k y_k of the OLS fit ``y = a + b/M``."""
    design = np.column_stack([np.ones(len(ms)), 1.0 / np.asarray(ms, dtype=np.float64)])
    return np.linalg.pinv(design)[0]


def _seed_plan(run, design: Design, rate: float) -> dict:
    """Seeds per (tau, h, M), designed before training from the planning s.d. (pilot x safety):
    each cell gets the largest count any of its decisions needs, with equal seeds in a fit."""
    fp = run.false_pass_rate
    plan: dict = {}

    def need(key, n):
        plan[key] = max(plan.get(key, design.seeds), n)

    m0 = design.particles
    for cell in run.pick(AGREE_CELLS):
        margin = _agreement_margin(run, _gibbs([cell[0]], run.device)[0])
        need((*cell, m0), _design_seeds(_planning_sd(cell, m0), margin, rate, fp, "equivalent"))
    for cell in run.pick(DISAGREE_CELLS):
        need((*cell, m0), _design_seeds(_planning_sd(cell, m0), DISAGREE_EFFECT, rate, fp,
                                        "exceeds"))
    table = {m0: run.pick(BIAS_BANDWIDTHS)}
    for m in run.pick(BIAS_PARTICLES):
        table.setdefault(m, run.pick(BIAS_BANDWIDTHS_OTHER_M))
    for m, hs in table.items():  # slope in h at each M: sd of sum c_h mean_h with n seeds each
        c = _wls_contrast(hs)
        sd = math.sqrt(sum((ck * _planning_sd((BIAS_TAU, h), m)) ** 2 for ck, h in zip(c, hs, strict=True)))
        n = _design_seeds(sd, SLOPE_EFFECT, rate, fp, "exceeds")
        for h in hs:
            need((BIAS_TAU, h, m), n)
    ms = sorted(m for m, hs in table.items() if AUTHORS_BANDWIDTH in hs)
    w = _limit_weights(ms)
    sd = math.sqrt(sum((wk * _planning_sd((BIAS_TAU, AUTHORS_BANDWIDTH), m)) ** 2
                       for wk, m in zip(w, ms, strict=True)))
    n = _design_seeds(sd, PERSIST_EFFECT, rate, fp, "exceeds")
    for m in ms:
        need((BIAS_TAU, AUTHORS_BANDWIDTH, m), n)
    return plan


def _decision_count(run) -> int:
    table = {run.pick(BIAS_DESIGN).particles: run.pick(BIAS_BANDWIDTHS)}
    for m in run.pick(BIAS_PARTICLES):
        table.setdefault(m, run.pick(BIAS_BANDWIDTHS_OTHER_M))
    slopes = sum(len(hs) >= 2 for hs in table.values())
    return 1 + len(run.pick(AGREE_CELLS)) + len(run.pick(DISAGREE_CELLS)) + slopes + 1


@surrogate_bias.check("agreement iff h is small against the Gibbs width; bias grows with h",
                      settings=st.just(Setting()), examples=Profiled(quick=1, full=1))
def surrogate_regime(run):
    design = run.pick(BIAS_DESIGN)
    rate = run.decision_false_fail_rate(_decision_count(run))  # fixed before training
    plan = _seed_plan(run, design, rate)
    agree, disagree = run.pick(AGREE_CELLS), run.pick(DISAGREE_CELLS)
    run.record("design", {**asdict(design), "particle_counts": list(run.pick(BIAS_PARTICLES)),
                          "false_fail_rate_per_decision": rate,
                          "seeds_per_cell": {f"tau={k[0]:g} h={k[1]:g} M={k[2]}": n
                                             for k, n in sorted(plan.items())},
                          "planning_sd": "pilot s.d. x 1.5 (PILOT_SD)",
                          "agreement_margin": f"{run.relative_discrepancy:.0%} of the Gibbs mass"})
    rows = _train_grid(run, design, plan)
    run.record("cells", list(rows.values()))
    tests = _cap_quadrature_closed_form(run, sorted({c[0] for c in (*agree, *disagree)}))
    for tau, h in agree:
        row = rows[(tau, h, design.particles)]
        where = f"r={row['r']:.2f} (tau={tau:g}, h={h:g})"
        tests.append(stats.equivalent(
            f"trained = Gibbs cap mass at {where}", row["trained_mean"], row["bias_sem"],
            row["gibbs"], margin=row["margin"], df=row["seeds"] - 1,
            note=f"TOST, margin {run.relative_discrepancy:.0%} of p = {row['margin']:.4f}"))
    for tau, h in disagree:
        row = rows[(tau, h, design.particles)]
        authors = " (authors' point)" if (tau, h) == (BIAS_TAU, AUTHORS_BANDWIDTH) else ""
        tests.append(stats.exceeds(
            f"excess > agreement margin at r={row['r']:.2f} (tau={tau:g}, h={h:g}){authors}",
            row["bias"], row["bias_sem"], row["margin"], effect=DISAGREE_EFFECT,
            df=row["seeds"] - 1, note=f"margin {row['margin']:.4f}; designed effect "
                                      f"{DISAGREE_EFFECT} above it"))
    # The authors' point decided as an *agreement* test (the one applied to the agree cells),
    # recorded (not counted): the certificate shows that this agreement test fails.
    row = rows[(BIAS_TAU, AUTHORS_BANDWIDTH, design.particles)]
    run.record("authors_point_agreement_test", stats.equivalent(
        "trained = Gibbs at the authors' point (tau=0.1, h=0.35)", row["trained_mean"],
        row["bias_sem"], row["gibbs"], margin=row["margin"],
        df=row["seeds"] - 1).decide(rate, run.false_pass_rate).to_json())
    table = {m: {h: rows[(BIAS_TAU, h, m)] for (tau, h, mm) in sorted(rows)
                 if mm == m and tau == BIAS_TAU} for m in sorted({key[2] for key in rows})}
    run.record("bias_table_tau_0.1", {str(m): {f"{h:g}": [r["bias"], r["bias_sem"]]
                                               for h, r in t.items()} for m, t in table.items()})
    fits = {h: _fit_in_inverse_m(table, h) for h in sorted({h for t in table.values() for h in t})
            if sum(h in t for t in table.values()) >= 2}
    run.record("bias_vs_particle_count", {
        f"{h:g}": {"M": ms, **dict(zip(("a", "b", "a_se", "b_se"),
                                       map(float, (*fit.coef, *fit.standard_error)), strict=True))}
        for h, (fit, ms) in fits.items()})
    largest = max(table)
    run.figure(f"surrogate bias at tau = {BIAS_TAU:g} vs bandwidth, per particle count M", [
        *({"label": f"M = {m}", "style": "points", "x": list(t), "y": [r["bias"] for r in t.values()],
           "yerr": [r["bias_sem"] for r in t.values()]} for m, t in table.items()),
        {"label": f"agreement margin, M = {largest}", "x": list(table[largest]),
         "y": [r["margin"] for r in table[largest].values()]},
    ], xlabel=f"KDE bandwidth h (Gibbs width sqrt(tau) = {math.sqrt(BIAS_TAU):.3g})",
        ylabel="trained - Gibbs cap mass")
    return tests + _trend_tests(table, fits)


def _train_grid(run, design: Design, plan: dict) -> dict:
    """Every (tau, h, M) cell of the check, trained once: one batched program per M."""
    generator = run.generator(0)
    rows = {}
    for m in sorted({key[2] for key in plan}):
        cells = sorted((tau, h) for (tau, h, mm) in plan if mm == m)
        fractions = _train_cells(run, cells, design, m, generator,
                                 seeds=[plan[(*c, m)] for c in cells])
        masses = _gibbs([c[0] for c in cells], run.device)
        for cell, f, g in zip(cells, fractions, masses, strict=True):
            rows[(*cell, m)] = _cell_row(*cell, m, f, g, _agreement_margin(run, g))
    return rows


def _trend_tests(table: dict, fits: dict) -> list:
    """At tau = 0.1, with ``bias_M = a + b/M`` fitted per bandwidth (``fits``): the bias
    grows with h at every M, and as M -> infinity it persists at the authors' h (a > 0).
    Degrees of freedom: the smallest seed count among the cells of the contrast, minus 1."""
    tests = []
    for m, by_h in table.items():
        hs = sorted(by_h)
        if len(hs) < 2:
            continue
        # The OLS slope is a fixed linear contrast of the cell means with zero sum: its
        # expectation is 0 if h does not matter, and its s.e. (from the cells' s.e.) is
        # valid whether or not the bias is linear in h (it is not).
        c = _wls_contrast(hs)
        slope = float(sum(ck * by_h[h]["bias"] for ck, h in zip(c, hs, strict=True)))
        se = math.sqrt(sum((ck * by_h[h]["bias_sem"]) ** 2 for ck, h in zip(c, hs, strict=True)))
        df = min(by_h[h]["seeds"] for h in hs) - 1
        tests.append(stats.exceeds(f"bias increases with h at tau=0.1, M={m}", slope, se, 0.0,
                                   effect=SLOPE_EFFECT, df=df,
                                   note=f"OLS slope over h in {hs}; designed effect {SLOPE_EFFECT}"))
    fit, ms = fits[AUTHORS_BANDWIDTH]
    df = min(table[m][AUTHORS_BANDWIDTH]["seeds"] for m in ms) - 1
    tests.append(stats.exceeds(
        "bias at h=0.35 persists as M -> inf (a in a + b/M)", fit.coef[0], fit.standard_error[0],
        0.0, effect=PERSIST_EFFECT, df=df,
        note=f"M in {ms}; b = {fit.coef[1]:.3g} +- {fit.standard_error[1]:.2g}"))
    return tests


def _fit_in_inverse_m(table: dict, bandwidth: float):
    """Fit ``bias_M = a + b/M`` at one bandwidth over the particle counts that have it; the
    coefficients are fixed linear combinations of the cell means (OLS), so their s.e. come from
    the cells' s.e. (not from a model's residual)."""
    ms = sorted(m for m in table if bandwidth in table[m])
    rows = [table[m][bandwidth] for m in ms]
    design = np.column_stack([np.ones(len(ms)), 1.0 / np.array(ms, dtype=np.float64)])
    weights = np.linalg.pinv(design)
    y = np.array([r["bias"] for r in rows])
    se = np.array([r["bias_sem"] for r in rows])
    coef = weights @ y
    coef_se = np.sqrt((weights**2) @ se**2)
    return stats.Fit(coef, coef_se, float("nan"), len(ms) - 2), ms


surrogate_bias.control(
    "entropy sign flipped", check=surrogate_regime,
    mutant=replace(KDESurrogate(), entropy_weight=-1.0),
    description="mean U/tau - mean log rho_h: particles attract and collapse into the wells")
surrogate_bias.control(
    "exact Gibbs draws", check=surrogate_regime,
    mutant=replace(KDESurrogate(), exact_gibbs=True),
    description="i.i.d. Gibbs samples in place of training: no surrogate bias to find")
