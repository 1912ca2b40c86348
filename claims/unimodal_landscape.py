"""Unimodal landscape (paper §3, Prop 3.1/3.2 and Prop 3.3).

Derivations: docs/derivations.md, "Unimodal landscape: Gibbs minimiser, convexity, concentration".

For an alignment potential U on Z = S^{d-1} and temperature tau the paper studies

    F_{tau,U}(rho) = (1/tau) ∫ U rho dmu - H(rho),      H(rho) = -∫ rho log rho dmu,

and states:

* **Prop 3.1/3.2** — F is strictly convex, with the exact gap
  ``t F(rho0) + (1-t) F(rho1) - F(rho_t) = t KL(rho0||rho_t) + (1-t) KL(rho1||rho_t)``,
  and its unique minimiser is the Gibbs density ``rho* = exp(-U/tau) / Z_tau``:
  ``F(rho) - F(rho*) = KL(rho||rho*)``, so ``min F = -log Z_tau``.
* **Prop 3.3** — as tau -> 0 the Gibbs mass concentrates on the minimisers of U: every
  sublevel set's mass is non-increasing in tau (``d/dtau rho*(A) = Cov(U, 1_A)/tau^2``) and
  ``rho*(Z \\ A_eps) <= exp(-eps/(2 tau)) / mu(A_{eps/2})``; between equally deep minima
  entropy breaks the tie: the wider well wins, with mass ratio ``sqrt(det H2/det H1)``,
  i.e. ``(a2/a1)^{(d-1)/2}`` for wells ``a_i (1 - <z, m_i>)``.

Numerically everything runs on quadrature grids (S^1 trapezoid, S^2 Gauss-Legendre x
uniform). On a grid's discrete measure the identities hold *exactly* (the proofs use nothing
but ``∫ rho = 1``), so they are checked to floating-point precision with Higham's a priori
summation bound. Because they hold for *any* grid weights, every check also compares the same
kernels against vMF closed forms (V_d, A_d, F and KL of vMF densities) in every run, whatever
family was drawn. On S^2 the tie-breaker ratio is exact at every tau (no extrapolation), decided
with a rigorous quadrature bound; in higher d the limit is fitted with its tau-correction as a
nuisance and decided by TOST with a designed sample size.

Settings, grids, bounds and the batched evaluations: :mod:`cgeom_verify.experiments.unimodal_landscape`.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import sympy

from cgeom_verify import Claim, Derivation, Profiled, stats
from cgeom_verify.experiments import unimodal_landscape as experiment
from cgeom_verify.experiments.unimodal_landscape import (
    CLOSED_FORM_KAPPA,
    CONCENTRATION_TAUS,
    LaplaceTieBreak,
    high_dim_well_pair_settings,
    landscape_settings,
    mirror_descent_settings,
    potential_settings,
    well_pair_settings,
)
from cgeom_verify.kernels.landscape import IntrinsicEnergy

# -- Prop 3.1: strict convexity -------------------------------------------------------------

strict_convexity = Claim(
    id="prop3.1-strict-convexity",
    reference="Prop 3.1/3.2",
    statement=(
        "F_{tau,U}(rho) = (1/tau)∫U rho - H(rho) is strictly convex: for rho_t = t rho0 + "
        "(1-t) rho1, t F(rho0) + (1-t) F(rho1) - F(rho_t) = t KL(rho0||rho_t) + "
        "(1-t) KL(rho1||rho_t) > 0 unless rho0 = rho1; the second variation is ∫eta^2/rho."
    ),
    assumptions=("densities positive and normalised w.r.t. mu", "U bounded", "tau > 0"),
    subject=IntrinsicEnergy(),
)

U_, Z_ = sympy.Symbol("U", real=True), sympy.Symbol("Z", positive=True)
TAU, LAM = sympy.Symbol("tau", positive=True), sympy.Symbol("lambda", real=True)
RHO, RHO0, RHO1 = sympy.symbols("rho rho_0 rho_1", positive=True)


def _energy_integrand(rho):
    """The pointwise integrand of F: ``U rho / tau + rho log rho``."""
    return U_ * rho / TAU + rho * sympy.log(rho)


@strict_convexity.obligation("second variation is the Fisher form")
def second_variation():
    eta = sympy.Symbol("eta", real=True, nonzero=True)
    s = sympy.Symbol("s", real=True)
    second = sympy.Derivative(_energy_integrand(RHO + s * eta), (s, 2))
    fisher = eta**2 / RHO
    return [
        Derivation("d^2/ds^2 F(rho + s eta) at s = 0, pointwise", second.subs(s, 0), fisher),
        Derivation("eta^2/rho > 0 for eta != 0", fisher, sympy.Integer(0), relation=">"),
    ]


@strict_convexity.obligation("exact convexity gap")
def convexity_gap_identity():
    t = sympy.Symbol("t", positive=True)
    rho_t = t * RHO0 + (1 - t) * RHO1
    gap = t * _energy_integrand(RHO0) + (1 - t) * _energy_integrand(RHO1) - _energy_integrand(rho_t)
    # KL integrands written as p (log p - log q); the U terms cancel because F's U part is linear.
    kl_mix = (t * RHO0 * (sympy.log(RHO0) - sympy.log(rho_t))
              + (1 - t) * RHO1 * (sympy.log(RHO1) - sympy.log(rho_t)))
    return Derivation("t F(rho0) + (1-t) F(rho1) - F(rho_t) = t KL(rho0||rho_t) + "
                      "(1-t) KL(rho1||rho_t), pointwise", gap, kl_mix)


def closed_form_energy_tests(run, i, sphere, tau, generator) -> list:
    """Every run: the subject's F and KL at single-vMF densities against their closed forms
    (``experiment.closed_form_vmf``), worst of the batch within the derived quadrature bound
    + rounding."""
    c = experiment.closed_form_vmf(run, sphere, tau, generator)
    k = experiment.worst(c.energy - run.tensor(c.energy_closed), c.energy_bound)
    tests = [stats.within_precision(
        "closed form: F(vMF) for a linear U (worst of the batch)", c.energy[k],
        float(c.energy_closed[k]), c.energy_bound[k], example=i,
        note=f"tau={tau:g}; vMF entropy and mean in closed form")]
    k = experiment.worst(c.kl - run.tensor(c.kl_closed), c.kl_bound)
    tests.append(stats.within_precision(
        "closed form: KL(vMF0||vMF1) (worst of the batch)", c.kl[k], float(c.kl_closed[k]),
        c.kl_bound[k], example=i, note="bound: quadrature (Taylor tail) + Higham"))
    return tests


@strict_convexity.check("convexity gap equals the KL mixture", settings=landscape_settings(),
                        examples=Profiled(quick=3, full=12))
def convexity_gap(run):
    """Random density pairs and mixing weights (``experiment.measure_convexity_gap``): the gap
    equals the KL mixture within Higham's bound, and every gap is resolved above that bound."""
    tests = []
    for i, setting in enumerate(run.settings):
        gen = run.generator(i)
        m = experiment.measure_convexity_gap(run, setting, gen)
        gap, kl_mix, bound = m.gap, m.kl_mix, m.bound
        k = experiment.worst(gap - kl_mix, bound)
        tests.append(stats.within_precision(
            "gap - KL mixture (worst pair)", gap.reshape(-1)[k], kl_mix.reshape(-1)[k],
            bound.reshape(-1)[k], example=i, note=f"{gap.numel()} pairs; bound: Higham"))
        k_min = experiment.worst(bound, gap.clamp_min(0.0))  # largest bound / gap
        tests.append(stats.exceeds_precision(
            "strict convexity: rounding bound / gap, worst pair", gap.reshape(-1)[k_min],
            bound.reshape(-1)[k_min], example=i, note="<= 1: every gap is resolved above its rounding bound"))
        tests.extend(closed_form_energy_tests(run, i, setting.potential.sphere, setting.taus[0], gen))
        run.record(f"example {i}", m.row())
    return tests


strict_convexity.control(
    "entropy sign flipped", check=convexity_gap,
    mutant=replace(IntrinsicEnergy(), entropy_sign=-1.0),
    description="F = (1/tau)∫U rho + H(rho) is concave: its gap is minus the KL mixture",
)


# -- Prop 3.2: the unique Gibbs minimiser ---------------------------------------------------

gibbs_minimizer = Claim(
    id="prop3.2-gibbs-minimizer",
    reference="Prop 3.1/3.2",
    statement=(
        "The unique minimiser of F_{tau,U} is rho* = exp(-U/tau)/Z_tau; F(rho) - F(rho*) = "
        "KL(rho||rho*), so min F = -log Z_tau, and mirror descent from any start converges to it."
    ),
    assumptions=("densities positive and normalised w.r.t. mu", "U bounded", "tau > 0"),
    subject=IntrinsicEnergy(),
)


@gibbs_minimizer.obligation("Euler-Lagrange with the mass constraint")
def euler_lagrange():
    lagrangian = _energy_integrand(RHO) + LAM * RHO
    variation = sympy.Derivative(lagrangian, RHO)
    (stationary,) = sympy.solve(variation.doit(), RHO)
    # Mass constraint: ∫ exp(-U/tau - 1 - lambda) dmu = exp(-1 - lambda) Z = 1.
    (lam,) = sympy.solve(sympy.exp(-1 - LAM) * Z_ - 1, LAM)
    return [
        Derivation("first variation of F + lambda ∫rho", variation,
                   U_ / TAU + sympy.log(RHO) + 1 + LAM),
        Derivation("stationary point with lambda fixed by ∫rho = 1", stationary.subs(LAM, lam),
                   sympy.exp(-U_ / TAU) / Z_),
    ]


@gibbs_minimizer.obligation("energy excess is KL to the Gibbs density")
def energy_excess():
    rho_star = sympy.exp(-U_ / TAU) / Z_
    kl_integrand = RHO * sympy.log(RHO / rho_star)
    return [
        Derivation("integrand of F(rho) - KL(rho||rho*) = -rho log Z (integrates to -log Z)",
                   _energy_integrand(RHO) - kl_integrand, -RHO * sympy.log(Z_)),
        Derivation("integrand of F(rho*) = -rho* log Z, so F(rho*) = -log Z = min F",
                   _energy_integrand(rho_star), -rho_star * sympy.log(Z_)),
    ]


def closed_form_gibbs_tests(run, i, sphere, taus, generator) -> list:
    """Every run, whatever potential family was drawn: the subject's Gibbs minimiser of a linear
    potential on this check's grid against the vMF closed forms (the grid identities of the
    other decisions hold for *any* quadrature weights; these do not), worst tau within the
    derived bounds of ``experiment.closed_form_gibbs``."""
    c = experiment.closed_form_gibbs(run, sphere, taus, generator)
    k = experiment.worst(c.energy + run.tensor(c.log_volume), c.energy_bound)
    tests = [stats.within_precision(
        "closed form: F(rho*) = -log V_d(a/tau) for U = -a<z,m> (worst tau)", c.energy[k],
        -float(c.log_volume[k]), c.energy_bound[k], example=i,
        note=f"vMF normaliser; kappa <= {CLOSED_FORM_KAPPA[sphere]:g}; bound: quadrature "
             "(Taylor tail) + Higham")]
    k = experiment.worst(c.mean - run.tensor(c.mean_resultant), c.mean_bound)
    tests.append(stats.within_precision(
        "closed form: E_rho*<z,m> = A_d(a/tau) (worst tau)", c.mean[k], float(c.mean_resultant[k]),
        c.mean_bound[k], example=i, note="mean resultant length of the vMF Gibbs density"))
    return tests


@gibbs_minimizer.check("energy excess equals KL to the claimed minimiser",
                       settings=landscape_settings(), examples=Profiled(quick=3, full=12))
def energy_excess_is_kl(run):
    """At random densities F(rho) - F(rho*) = KL(rho||rho*), and F(rho*) = -log Z_tau, within
    Higham's bound (``experiment.measure_energy_excess``); then the closed forms."""
    tests = []
    for i, setting in enumerate(run.settings):
        gen = run.generator(i)
        m = experiment.measure_energy_excess(run, setting, gen)
        k = experiment.worst(m.excess - m.kl, m.bound)
        tests.append(stats.within_precision(
            "F(rho) - F(rho*) - KL(rho||rho*) (worst density)", m.excess.reshape(-1)[k],
            m.kl.reshape(-1)[k], m.bound.reshape(-1)[k], example=i, note="bound: Higham"))
        k = experiment.worst(m.minimum + m.log_z, m.minimum_bound)
        tests.append(stats.within_precision(
            "F(rho*) = -log Z_tau (worst potential, tau)", m.minimum.reshape(-1)[k],
            -m.log_z.reshape(-1)[k], m.minimum_bound.reshape(-1)[k], example=i))
        tests.extend(closed_form_gibbs_tests(run, i, setting.potential.sphere, setting.taus, gen))
        run.record(f"example {i}", m.row())
    return tests


@gibbs_minimizer.check(
    "mirror descent from many starts converges to the claimed minimiser",
    settings=mirror_descent_settings(), examples=Profiled(quick=3, full=12))
def mirror_descent_converges(run):
    """From many random starts, for ``experiment.descent_steps`` steps (the known rate then
    guarantees F(rho_T) - min F <= DESCENT_RATE_TARGET x KL(rho*||rho_0)): KL(rho_T||rho*) and
    F(rho_T) + log Z within the rate + rounding; then the same descent on a linear potential
    against the vMF normaliser."""
    tests = []
    for i, setting in enumerate(run.settings):
        gen = run.generator(i)
        m = experiment.measure_mirror_descent(run, setting, gen)
        k = experiment.worst(m.kl_end, m.kl_bound)
        tests.append(stats.within_precision(
            "KL(rho_T||rho*) within the mirror-descent rate (worst start)", m.kl_end.reshape(-1)[k],
            0.0, m.kl_bound.reshape(-1)[k], example=i,
            note=f"T={m.steps}, eta={m.step_size:.3f}; rate: Lu-Freund-Nesterov Thm 3.1"))
        k = experiment.worst(m.energy + m.log_z, m.energy_bound)
        tests.append(stats.within_precision(
            "min F reached = -log Z_tau (worst start)", m.energy.reshape(-1)[k],
            -m.log_z.expand_as(m.energy).reshape(-1)[k], m.energy_bound.reshape(-1)[k], example=i))
        c = experiment.closed_form_descent(run, setting, m.steps, m.starts, gen)
        k = experiment.worst(c.energy + c.log_volume, c.bound)
        tests.append(stats.within_precision(
            "closed form: mirror descent on U = -a<z,m> reaches -log V_d(a/tau) (worst start)",
            c.energy.reshape(-1)[k], -c.log_volume.expand_as(c.energy).reshape(-1)[k],
            c.bound.reshape(-1)[k], example=i,
            note="vMF normaliser; bound: rate + quadrature + rounding"))
        run.record(f"example {i}", m.row())
    return tests


gibbs_minimizer.control(
    "Gibbs at the wrong temperature", check=energy_excess_is_kl,
    mutant=replace(IntrinsicEnergy(), gibbs_temperature_factor=2.0),
    description="claimed minimiser exp(-U/(2 tau))/Z is not the minimiser",
)
gibbs_minimizer.control(
    "mirror descent against a wrong-temperature Gibbs", check=mirror_descent_converges,
    mutant=replace(IntrinsicEnergy(), gibbs_temperature_factor=2.0),
    description="mirror descent converges to exp(-U/tau)/Z, not to exp(-U/(2 tau))/Z",
)
gibbs_minimizer.control(
    "mirror descent on the entropy-flipped energy", check=mirror_descent_converges,
    mutant=replace(IntrinsicEnergy(), entropy_sign=-1.0),
    description="F = (1/tau)∫U rho + H is concave: descent collapses onto grid nodes",
)


# -- Prop 3.3: concentration as tau -> 0 ---------------------------------------------------

concentration = Claim(
    id="prop3.3-concentration",
    reference="Prop 3.3",
    statement=(
        "Gibbs mass concentrates on the minimisers of U as tau -> 0: d/dtau rho*_tau(A_c) = "
        "Cov(U, 1_{A_c})/tau^2 <= 0 for sublevel sets A_c = {U <= c}, and with m = min U, "
        "rho*_tau(Z \\ A_{m+eps}) <= exp(-eps/(2 tau)) / mu(A_{m+eps/2})."
    ),
    assumptions=("U bounded and measurable", "tau > 0",
                 "checked on the grids' discrete measures, where the proposition applies as is"),
    subject=IntrinsicEnergy(),
)


@concentration.obligation("temperature derivative of a Gibbs mass is a covariance")
def mass_derivative():
    # On a quadrature measure sum_i q_i delta_{z_i} with any number n of nodes (the measure the
    # checks use; the continuum is the same computation with an integral).
    i, n = sympy.Symbol("i", integer=True), sympy.Symbol("n", integer=True, positive=True)
    q = sympy.IndexedBase("q", positive=True)
    u, chi = sympy.IndexedBase("U", real=True), sympy.IndexedBase("chi_A", real=True)
    boltzmann = q[i] * sympy.exp(-u[i] / TAU)

    def mean(f):
        return sympy.Sum(f * boltzmann, (i, 1, n)) / sympy.Sum(boltzmann, (i, 1, n))

    return Derivation("d/dtau rho*(A) = (E[U 1_A] - E[U] E[1_A]) / tau^2",
                      sympy.Derivative(mean(chi[i]), TAU),
                      (mean(u[i] * chi[i]) - mean(u[i]) * mean(chi[i])) / TAU**2)


@concentration.obligation("the covariance is non-positive on sublevel sets")
def covariance_sign():
    p, q = sympy.symbols("p q", positive=True)  # rho*(A), rho*(A^c); p + q = 1
    c = sympy.Symbol("c", real=True)
    below, above = sympy.Symbol("delta_A", nonnegative=True), sympy.Symbol("delta_B", positive=True)
    u_a, u_b = c - below, c + above  # E[U | A] <= c < E[U | A^c] for A = {U <= c}
    covariance = p * u_a - (p * u_a + q * u_b) * p
    return [
        Derivation("Cov(U, 1_A) = p q (E[U|A] - E[U|A^c]) with q = 1 - p",
                   covariance.subs(q, 1 - p), (p * (1 - p) * (u_a - u_b))),
        Derivation("p q (E[U|A] - E[U|A^c]) < 0", p * q * (u_a - u_b), sympy.Integer(0),
                   relation="<"),
    ]


@concentration.obligation("tail bound")
def tail_bound():
    m, eps = sympy.Symbol("m", real=True), sympy.Symbol("epsilon", positive=True)
    mu_half, mu_inside = sympy.symbols("mu_half mu_inside", positive=True)
    # rho*(Z\A_eps) <= mu(Z\A_eps) e^{-(m+eps)/tau} / Z and Z >= mu(A_{eps/2}) e^{-(m+eps/2)/tau}
    ratio = ((1 - mu_inside) * sympy.exp(-(m + eps) / TAU)
             / (mu_half * sympy.exp(-(m + eps / 2) / TAU)))
    bound = sympy.exp(-eps / (2 * TAU)) / mu_half
    return [
        Derivation("the two exponentials leave exp(-eps/(2 tau))", ratio,
                   (1 - mu_inside) * bound),
        Derivation("mu(Z \\ A_eps) <= 1", ratio, bound, relation="<="),
    ]


@concentration.check("sublevel masses are non-increasing in tau", settings=potential_settings(),
                     examples=Profiled(quick=3, full=12))
def sublevel_monotone(run):
    """Masses of the sublevel sets at SUBLEVEL_QUANTILES of U, over CONCENTRATION_TAUS: no
    increase between consecutive temperatures beyond rounding; then the closed forms (on a
    fresh generator of the same seed)."""
    tests = []
    for i, setting in enumerate(run.settings):
        m = experiment.measure_sublevel_rise(run, setting, run.generator(i))
        increase = m.rise.clamp_min(0.0)
        k = experiment.worst(increase, m.bound)
        tests.append(stats.within_precision(
            "largest increase of a sublevel mass as tau grows (0 if none)",
            increase.reshape(-1)[k], 0.0, m.bound.reshape(-1)[k], example=i,
            note=f"{m.rise.numel()} consecutive tau pairs x levels"))
        tests.extend(closed_form_gibbs_tests(run, i, setting.sphere, CONCENTRATION_TAUS,
                                             run.generator(i)))
        run.record(f"example {i}", m.row())
    return tests


@concentration.check("tail mass below exp(-eps/(2 tau))/mu(A_eps/2) down to tau = 0.002",
                     settings=potential_settings(), examples=Profiled(quick=3, full=12))
def tail_mass(run):
    """The Gibbs mass outside A_{m+eps}, eps at TAIL_FRACTIONS of osc(U), over
    CONCENTRATION_TAUS: no excess over its bound beyond rounding; then the closed forms."""
    tests = []
    for i, setting in enumerate(run.settings):
        m = experiment.measure_tail_mass(run, setting, run.generator(i))
        excess = (m.tail - m.bound).clamp_min(0.0)
        error = m.error.expand_as(excess)
        k = experiment.worst(excess, error)
        tests.append(stats.within_precision(
            "largest excess of the tail mass over its bound (0 if none)", excess.reshape(-1)[k],
            0.0, error.reshape(-1)[k], example=i,
            note=f"tau in [{CONCENTRATION_TAUS[0]}, {CONCENTRATION_TAUS[-1]}], eps/osc(U) in "
                 "{0.02, ..., 0.4}"))
        tests.extend(closed_form_gibbs_tests(run, i, setting.sphere, CONCENTRATION_TAUS,
                                             run.generator(i)))
        run.record(f"example {i}", m.row())
    return tests


_anti_gibbs = replace(IntrinsicEnergy(), gibbs_potential_sign=-1.0)
concentration.control("exp(+U/tau) fails monotonicity", check=sublevel_monotone,
                      mutant=_anti_gibbs,
                      description="exp(+U/tau)/Z moves mass into sublevel sets as tau grows")
concentration.control("exp(+U/tau) fails the tail bound", check=tail_mass, mutant=_anti_gibbs,
                      description="exp(+U/tau)/Z concentrates on the maximisers of U")


# -- Prop 3.3: entropy as tie-breaker -------------------------------------------------------

tie_break = Claim(
    id="prop3.3-entropy-tiebreak",
    reference="Prop 3.3",
    statement=(
        "Between two equally deep minima entropy breaks the tie as tau -> 0: the masses near "
        "them tend to the ratio sqrt(det H2/det H1); for wells a_i (1 - <z, m_i>) on S^{d-1}, "
        "mass(wide)/mass(narrow) -> (a_narrow/a_wide)^{(d-1)/2}: the wider well wins."
    ),
    assumptions=("non-degenerate minima", "equal depths", "basins separated (antipodal wells)"),
    subject=LaplaceTieBreak(),
)

K_HALF = sympy.Symbol("k", positive=True)  # k = (d-1)/2, half the tangent dimension


def _hankel_prefactor(x):
    """``Gamma(d/2) (2/x)^nu / sqrt(2 pi x)``: the large-x form of ``V_d(x) e^{-x}``."""
    half_d, nu = K_HALF + sympy.Rational(1, 2), K_HALF - sympy.Rational(1, 2)
    return sympy.gamma(half_d) * (2 / x) ** nu / sympy.sqrt(2 * sympy.pi * x)


@tie_break.obligation("Laplace ratio from the tangent Hessians")
def hessian_ratio():
    a, r = sympy.Symbol("a", positive=True), sympy.Symbol("r", real=True)
    a1, a2 = sympy.symbols("a_1 a_2", positive=True)
    return [
        Derivation("a (1 - cos r) has second derivative a at r = 0 (Hessian a I_{d-1})",
                   sympy.Derivative(a * (1 - sympy.cos(r)), (r, 2)).subs(r, 0), a),
        Derivation("sqrt(det H2 / det H1) = (a2/a1)^{(d-1)/2}",
                   sympy.sqrt(a2 ** (2 * K_HALF) / a1 ** (2 * K_HALF)), (a2 / a1) ** K_HALF),
    ]


@tie_break.obligation("well-mass ratio from the large-x asymptotics of V_d(x) e^-x")
def well_mass_asymptotics():
    x, s, tau = sympy.Symbol("x", positive=True), sympy.Symbol("s", positive=True), TAU
    a1, a2 = sympy.symbols("a_1 a_2", positive=True)
    # V_d(x) = c_d ∫_{-1}^{1} e^{xt} (1-t^2)^{k-1} dt; with t = 1 - s/x, Laplace's method gives
    # x^k V_d(x) e^{-x} -> c_d 2^{k-1} ∫_0^oo e^{-s} s^{k-1} ds.
    c_d = sympy.gamma(K_HALF + sympy.Rational(1, 2)) / (sympy.sqrt(sympy.pi) * sympy.gamma(K_HALF))
    laplace = c_d * 2 ** (K_HALF - 1) * sympy.Integral(sympy.exp(-s) * s ** (K_HALF - 1),
                                                       (s, 0, sympy.oo))
    return [
        Derivation("Laplace's method on V_d's integral form gives x^k times the Hankel prefactor",
                   laplace, sympy.simplify(_hankel_prefactor(x) * x**K_HALF)),
        Derivation("d = 3 in closed form (V_3(x) = sinh(x)/x): x V_3(x) e^{-x} -> x times the "
                   "Hankel prefactor = 1/2",
                   sympy.Limit(x * sympy.sinh(x) / x * sympy.exp(-x), x, sympy.oo),
                   _hankel_prefactor(x).subs(K_HALF, 1) * x),
        Derivation("mass(a1)/mass(a2) = V_d(a1/tau)e^{-a1/tau} / V_d(a2/tau)e^{-a2/tau} "
                   "-> (a2/a1)^{(d-1)/2}",
                   _hankel_prefactor(a1 / tau) / _hankel_prefactor(a2 / tau), (a2 / a1) ** K_HALF),
    ]


@tie_break.check("S^2 quadrature: basin-mass ratio equals (a2/a1)^((d-1)/2)",
                 settings=well_pair_settings(), examples=Profiled(quick=3, full=12))
def s2_tie_break(run):
    """The grid's basin-mass ratio at temperatures U_b/S2_TAU_STEPS against the subject's limit,
    worst tau within the rigorous bound of ``experiment.measure_basin_ratio`` (the ratio is
    exact up to e^{-2a/tau} at every tau on S^2: no extrapolation)."""
    law: LaplaceTieBreak = run.subject
    tests = []
    for i, s in enumerate(run.settings):
        m = experiment.measure_basin_ratio(run, s)
        target = law.limit_ratio(s.a_wide, m.a_narrow, 3)
        k = int(np.argmax(np.abs(m.ratio - target) / m.bound))
        tests.append(stats.within_precision(
            "basin-mass ratio wide/narrow on the grid = (a2/a1)^((d-1)/2) (worst tau)",
            float(m.ratio[k]), target, float(m.bound[k]), example=i,
            note=f"tau in [{m.taus[-1]:.4g}, {m.taus[0]:.4g}], grid {m.n_theta}x{2 * m.n_theta}; bound: "
                 "quadrature (Taylor tail) + cross-basin e^{-U_b/tau} + e^{-2a/tau} + rounding"))
        run.record(f"example {i}", m.row(target))
    run.record("d=3, a=(1,3) orthogonal-wells reproduction", experiment.orthogonal_wells_reproduction(run))
    return tests


@tie_break.check("higher d Monte Carlo: mass ratio extrapolates to (a2/a1)^((d-1)/2)",
                 settings=high_dim_well_pair_settings(), examples=Profiled(quick=2, full=8))
def mc_tie_break(run):
    """Importance-sampled mass ratio at five temperatures, its log-limit fitted with the
    tau-correction ``b tau + c tau^2`` as a nuisance (``experiment.measure_tie_break``), TOST
    against the subject's limit. Designed margin: the ratio within 10 % (quick) / 3 % (full),
    i.e. log(1 + rel) on the log scale the fit works on; samples per tau from a pilot on the
    setting's own seed stream (``experiment.plan_tie_break``), fixed before the decisive sample
    is drawn."""
    law: LaplaceTieBreak = run.subject
    margin = math.log1p(run.relative_discrepancy)
    rate = run.decision_false_fail_rate(len(run.settings))
    tests = []
    for i, s in run.settings_until_settled(tests, rate):
        gen = run.generator(i)
        design = experiment.plan_tie_break(run, i, s, margin, rate, gen)
        if design is None:
            continue
        measured = experiment.measure_tie_break(run, design, gen)
        fit = measured.fit
        target = law.limit_ratio(design.a_wide, design.a_narrow, design.d)
        tests.append(stats.equivalent(
            "log of the extrapolated mass ratio wide/narrow", fit.coef[0], fit.standard_error[0],
            math.log(target), margin=margin, example=i,
            note=f"d={design.d}, {design.samples} samples per tau (designed from a "
                 f"{experiment.PILOT_SAMPLES}-sample pilot x {experiment.PILOT_SAFETY}), "
                 f"nuisance b tau + c tau^2; margin log(1 + {run.relative_discrepancy})"))
        run.record(f"example {i}", experiment.tie_break_row(design, measured, target))
    return tests


_wrong_exponent = replace(LaplaceTieBreak(), tangent_codimension=0)
tie_break.control("Laplace exponent d/2 on S^2", check=s2_tie_break, mutant=_wrong_exponent,
                  description="counting d instead of d-1 tangent directions predicts "
                              "(a2/a1)^{d/2}")
tie_break.control("Laplace exponent d/2 in higher d", check=mc_tie_break, mutant=_wrong_exponent,
                  description="counting d instead of d-1 tangent directions predicts "
                              "(a2/a1)^{d/2}")
