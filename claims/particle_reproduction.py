"""The authors' particle experiment (Figs. 3-4) and when it reaches the Gibbs minimiser.

arXiv 2601.19597, Prop 3.2: the unimodal free energy ``F(rho) = (1/tau) ∫U rho - H(rho)``
has the unique minimiser ``rho* ∝ exp(-U/tau)``; Prop 3.3: as tau -> 0 the Gibbs mass
concentrates on the sublevel sets of U. Figs. 3-4 illustrate both with particles
(THEORY.md §3): on S^2 with ``U = -(1/kappa) log(w e^{kappa<z,m1>} + (1-w) e^{kappa<z,m2>})``,
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

"Agree" needs a scale, because the surrogate is never exactly unbiased: at the authors'
design (M = 768, 5000 steps) the trained cap mass exceeds Gibbs by a small, highly
significant 0.007-0.011 at every tau >= 0.5 (their own seed-0 numbers show the same
+0.007 at tau = 10 and 1), so "no discrepancy detected" would only measure the number
of seeds. The scale used is the resolution of an M-particle representation: the
binomial s.d. ``delta_M = sqrt(p (1 - p) / M)`` of the cap fraction of M i.i.d. Gibbs
draws (p the Gibbs cap mass). Agreement: ``|trained - Gibbs| <= delta_M`` (two one-sided
``at_most`` tests; fails only on evidence of a larger bias, detectable size reported).
Disagreement: ``trained - Gibbs > delta_M`` demonstrated (``exceeds``).

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

Designs and cost (one thread of the shared 2-core development CPU). Quick: the
reproduction at M = 96, 400 steps, 8 seeds at the three reported taus; the bias check at
M = 96 (and 192 for the M trend), 400 steps, 10 seeds; ~28 s with all controls. Full:
the reproduction at the authors' design (M = 768, 5000 steps, all 7 taus) with 5 seeds,
not their 20: one M = 768 system costs ~5.5 ms per step here, so their 140-run figure
takes ~36 min even batched on both cores (benchmarks/bench_particles.py); the bias check
at M = 384 (table over M in {192, 384, 768}), 2000 steps, 12 seeds. Measured: 37 min
for the full reproduction check and 38 min for the full bias check (each alone, machine
shared); each trained control costs as much again.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import hypothesis.strategies as st
import numpy as np
import torch

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


def _train_cells(run, cells, design: Design, num_particles: int, generator) -> np.ndarray:
    """Cap fractions ``[cells, seeds]`` for ``cells = ((tau, h), ...)``, one batched program."""
    tau = np.repeat([c[0] for c in cells], design.seeds)
    bandwidth = np.repeat([c[1] for c in cells], design.seeds)
    fractions = run.subject.cap_fractions(tau, bandwidth, num_particles, design.steps, generator)
    return fractions.reshape(len(cells), design.seeds)


def _seed_sd(fractions: np.ndarray, num_particles: int) -> np.ndarray:
    """Across-seed s.d. of cap fractions (last axis), floored at the metric's resolution.

    A fraction of M particles moves in steps of 1/M; seeds that all land on the same
    value (e.g. every particle in the caps) do not show a zero s.d., only one below the
    quantisation s.d. 1/(M sqrt 12), which is used as the floor.
    """
    return np.maximum(fractions.std(axis=-1, ddof=1), 1.0 / (num_particles * math.sqrt(12)))


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
    return math.sqrt(variance / AUTHORS_MC_POINTS)


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
        "the authors' landscape, metric, optimiser and noise (THEORY.md §3)",
        "full profile: their design (M = 768, 5000 steps, 7 taus); quick: M = 96, 400 "
        "steps at their three reported taus (a smaller system, so a wider interval)",
    ),
    subject=KDESurrogate(),
)

REPRODUCTION_DESIGN = Profiled(quick=Design(particles=96, steps=400, seeds=8),
                               full=Design(particles=768, steps=5000, seeds=5))
REPRODUCTION_TAUS = Profiled(quick=(10.0, 1.0, 0.1), full=AUTHORS_TAUS)


@reproduction.check("reproduces the authors' cap masses", settings=st.just(Setting()),
                    examples=Profiled(quick=1, full=1))
def reproduces_authors(run):
    design, taus = run.pick(REPRODUCTION_DESIGN), run.pick(REPRODUCTION_TAUS)
    run.record("design", {**asdict(design), "taus": list(taus), "bandwidth": AUTHORS_BANDWIDTH})
    gibbs_mass = _gibbs(taus, run.device)
    finer = particles.gibbs_cap_mass(WELLS, taus, CAP_RADIUS, nodes=2 * GIBBS_NODES,
                                     device=run.device).cpu().numpy()
    cells = tuple((tau, AUTHORS_BANDWIDTH) for tau in taus)
    trained = _train_cells(run, cells, design, design.particles, run.generator(0))
    mean = trained.mean(axis=1)
    sd = _seed_sd(trained, design.particles)
    sem = sd / math.sqrt(design.seeds)
    tests = []
    for k, tau in enumerate(taus):
        # Gauss-Legendre in cos(theta) x trapezoid in phi on analytic integrands: the
        # 96- and 192-node rules both converge geometrically (32 -> 48 nodes already
        # gains 50x), so they agree to float64 rounding of a sum of ~4e4 terms <= 1.
        tests.append(stats.within_precision(f"Gibbs quadrature converged tau={tau:g}",
                                            gibbs_mass[k], finer[k], 1e-12))
        if tau not in AUTHORS_SEED0:
            continue
        their_trained, their_gibbs = AUTHORS_SEED0[tau]
        mc_se = math.sqrt(_authors_mc_standard_error(tau, run.device) ** 2 + ROUNDING_VARIANCE)
        tests.append(stats.equal(f"Gibbs = authors' Monte Carlo tau={tau:g}", gibbs_mass[k],
                                 mc_se, their_gibbs, note="s.e.: their MC and 3-decimal rounding"))
        # One new run of the same design (theirs) differs from our mean by
        # sd^2 (1 + 1/S) in variance; plus their rounding.
        predictive = math.sqrt(sd[k] ** 2 * (1 + 1 / design.seeds) + ROUNDING_VARIANCE)
        tests.append(stats.equal(f"trained = authors' seed-0 run tau={tau:g}", mean[k],
                                 predictive, their_trained, df=design.seeds - 1,
                                 note="predictive interval of one run"))
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
        "cap mass is within the M-particle resolution delta_M = sqrt(p(1-p)/M) of the Gibbs "
        "mass p, at r ~ 1.1 it exceeds p by more than delta_M. The authors' tau = 0.1, "
        "h = 0.35 point has "
        "r = 1.11: outside the regime (trained ~1.0 vs Gibbs 0.706). At tau = 0.1 the "
        "excess increases with h at every particle count M and, at h = 0.35, does not "
        "vanish as M -> infinity."),
    assumptions=(
        "the authors' landscape, metric, optimiser and noise (THEORY.md §3)",
        "agreement is certified on the tested cells only (tau in [0.1, 10], r ~ 0.35) and "
        "at the scale delta_M; the surrogate's bias there is small but not zero",
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
#: Bandwidths trained at the larger particle counts (the design M has all of them).
BIAS_BANDWIDTHS_OTHER_M = Profiled(quick=(0.35, 0.11), full=(0.35, 0.18, 0.11))
BIAS_DESIGN = Profiled(quick=Design(particles=96, steps=400, seeds=10),
                       full=Design(particles=384, steps=2000, seeds=12))


def _cell_row(tau, h, m, fractions, gibbs_mass) -> dict:
    mean, sem = fractions.mean(), _seed_sd(fractions, m) / math.sqrt(len(fractions))
    return {"tau": tau, "h": h, "r": _width_ratio(tau, h), "M": m,
            "trained_mean": float(mean), "trained_sem": float(sem), "gibbs": float(gibbs_mass),
            "bias": float(mean - gibbs_mass), "bias_sem": float(sem),
            "resolution": math.sqrt(gibbs_mass * (1 - gibbs_mass) / m)}


@surrogate_bias.check("agreement iff h is small against the Gibbs width; bias grows with h",
                      settings=st.just(Setting()), examples=Profiled(quick=1, full=1))
def surrogate_regime(run):
    design = run.pick(BIAS_DESIGN)
    agree, disagree = run.pick(AGREE_CELLS), run.pick(DISAGREE_CELLS)
    run.record("design", {**asdict(design), "particle_counts": list(run.pick(BIAS_PARTICLES))})
    rows = _train_grid(run, design)
    run.record("cells", list(rows.values()))
    df = design.seeds - 1
    tests = []
    for tau, h in agree:
        row = rows[(tau, h, design.particles)]
        where, delta = f"r={row['r']:.2f} (tau={tau:g}, h={h:g})", row["resolution"]
        note = f"delta_M = sqrt(p(1-p)/M) = {delta:.4f}"
        tests.append(stats.at_most(f"excess <= delta_M at {where}", row["bias"],
                                   row["bias_sem"], delta, df=df, note=note))
        tests.append(stats.at_most(f"deficit <= delta_M at {where}", -row["bias"],
                                   row["bias_sem"], delta, df=df, note=note))
    for tau, h in disagree:
        row = rows[(tau, h, design.particles)]
        authors = " (authors' point)" if (tau, h) == (BIAS_TAU, AUTHORS_BANDWIDTH) else ""
        tests.append(stats.exceeds(f"excess > delta_M at r={row['r']:.2f} "
                                   f"(tau={tau:g}, h={h:g}){authors}",
                                   row["bias"], row["bias_sem"], row["resolution"], df=df,
                                   note=f"delta_M = {row['resolution']:.4f}"))
    # The authors' point decided as an *agreement* test (the one applied to the agree
    # cells), at a level (1e-6) below any decision of this check, i.e. as lenient to
    # agreement as the check could be; recorded (not counted): the certificate shows
    # that this agreement test fails.
    row = rows[(BIAS_TAU, AUTHORS_BANDWIDTH, design.particles)]
    run.record("authors_point_agreement_test", stats.at_most(
        "excess <= delta_M at the authors' point (tau=0.1, h=0.35)", row["bias"],
        row["bias_sem"], row["resolution"], df=df).decide(1e-6).to_json())
    table = {m: {h: rows[(BIAS_TAU, h, m)] for (tau, h, mm) in sorted(rows)
                 if mm == m and tau == BIAS_TAU} for m in sorted({key[2] for key in rows})}
    run.record("bias_table_tau_0.1", {str(m): {f"{h:g}": [r["bias"], r["bias_sem"]]
                                               for h, r in t.items()} for m, t in table.items()})
    # Below the collapse the bias also falls with M (full design, h = 0.18: 0.044, 0.019,
    # 0.013 at M = 192, 384, 768), a ~5.7 s.e. slope b: not decisive at a per-decision
    # level near 1e-5 with 12 seeds, so the fits are recorded; their limits a are decided.
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
        {"label": f"resolution delta_M, M = {largest}", "x": list(table[largest]),
         "y": [r["resolution"] for r in table[largest].values()]},
    ], xlabel=f"KDE bandwidth h (Gibbs width sqrt(tau) = {math.sqrt(BIAS_TAU):.3g})",
        ylabel="trained - Gibbs cap mass")
    return tests + _trend_tests(table, fits, df)


def _train_grid(run, design: Design) -> dict:
    """Every (tau, h, M) cell of the check, trained once: one batched program per M."""
    wanted = {design.particles: {*run.pick(AGREE_CELLS), *run.pick(DISAGREE_CELLS),
                                 *((BIAS_TAU, h) for h in run.pick(BIAS_BANDWIDTHS))}}
    for m in run.pick(BIAS_PARTICLES):
        wanted.setdefault(m, set()).update(
            (BIAS_TAU, h) for h in run.pick(BIAS_BANDWIDTHS_OTHER_M))
    generator = run.generator(0)
    rows = {}
    for m, cells in sorted(wanted.items()):
        cells = sorted(cells)
        fractions = _train_cells(run, cells, design, m, generator)
        masses = _gibbs([c[0] for c in cells], run.device)
        for cell, f, g in zip(cells, fractions, masses, strict=True):
            rows[(*cell, m)] = _cell_row(*cell, m, f, g)
    return rows


def _trend_tests(table: dict, fits: dict, df: int) -> list:
    """At tau = 0.1, with ``bias_M = a + b/M`` fitted per bandwidth (``fits``): the bias
    grows with h at every M; as M -> infinity it persists at the authors' h (a > 0) and
    vanishes at the smallest h (a = 0)."""
    tests = []
    for m, by_h in table.items():
        hs = sorted(by_h)
        if len(hs) < 2:
            continue
        # The WLS slope is a fixed linear contrast of the cell means with zero sum: its
        # expectation is 0 if h does not matter, and its s.e. (from the cells' s.e.) is
        # valid whether or not the bias is linear in h (it is not: chi2 shows it).
        fit = stats.weighted_least_squares(np.column_stack([np.ones(len(hs)), hs]),
                                           [by_h[h]["bias"] for h in hs],
                                           [by_h[h]["bias_sem"] for h in hs])
        tests.append(stats.exceeds(f"bias increases with h at tau=0.1, M={m}", fit.coef[1],
                                   fit.standard_error[1], 0.0, df=df,
                                   note=f"WLS slope over h in {hs}; chi2={fit.chi2:.1f}"))
    fit, ms = fits[AUTHORS_BANDWIDTH]
    tests.append(stats.exceeds(
        "bias at h=0.35 persists as M -> inf (a in a + b/M)", fit.coef[0], fit.standard_error[0],
        0.0, df=df, note=f"M in {ms}; b = {fit.coef[1]:.3g} +- {fit.standard_error[1]:.2g}"))
    smallest = min(fits)
    fit, ms = fits[smallest]
    tests.append(stats.equal(
        f"bias at h={smallest:g} vanishes as M -> inf (a in a + b/M)", fit.coef[0],
        fit.standard_error[0], 0.0, df=df,
        note=f"M in {ms}; b = {fit.coef[1]:.3g} +- {fit.standard_error[1]:.2g}"))
    return tests


def _fit_in_inverse_m(table: dict, bandwidth: float):
    """Weighted fit ``bias_M = a + b/M`` at one bandwidth over the particle counts that have it."""
    ms = sorted(m for m in table if bandwidth in table[m])
    rows = [table[m][bandwidth] for m in ms]
    fit = stats.weighted_least_squares(np.column_stack([np.ones(len(ms)), 1.0 / np.array(ms)]),
                                       [r["bias"] for r in rows], [r["bias_sem"] for r in rows])
    return fit, ms


surrogate_bias.control(
    "entropy sign flipped", check=surrogate_regime,
    mutant=replace(KDESurrogate(), entropy_weight=-1.0),
    description="mean U/tau - mean log rho_h: particles attract and collapse into the wells")
surrogate_bias.control(
    "exact Gibbs draws", check=surrogate_regime,
    mutant=replace(KDESurrogate(), exact_gibbs=True),
    description="i.i.d. Gibbs samples in place of training: no surrogate bias to find")
