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
summation bound (:mod:`cgeom_verify.kernels.quadrature`). Because they hold for *any* grid
weights, every check also compares the same kernels against vMF closed forms (the normaliser
V_d, the mean resultant length A_d, F and KL of vMF densities) in every run, whatever family
was drawn. On S^2 the tie-breaker ratio is exact at every tau (no extrapolation), decided with
a rigorous quadrature bound; in higher d the limit is fitted with its tau-correction as a
nuisance and decided by TOST with a designed sample size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial

import hypothesis.strategies as st
import numpy as np
import sympy
import torch

from cgeom_verify import Claim, Derivation, Profiled, stats
from cgeom_verify.kernels import divergence_geometry as geo
from cgeom_verify.kernels import gibbs, landscape, quadrature, vmf
from cgeom_verify.kernels.landscape import IntrinsicEnergy

# -- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PotentialSetting:
    """A random potential family on S^1 (sphere=2) or S^2 (sphere=3).

    ``family`` "vmf-mixture": ``size`` wells at concentration ``scale``; "harmonic": degree
    ``size`` spherical-harmonic polynomial with amplitude ``scale``.
    """

    sphere: int
    family: str
    size: int
    scale: float


@dataclass(frozen=True)
class LandscapeSetting:
    potential: PotentialSetting
    taus: tuple[float, float, float]


@dataclass(frozen=True)
class MirrorDescentSetting:
    landscape: LandscapeSetting
    step_size: float


@dataclass(frozen=True)
class WellPairSetting:
    """Antipodal wells ``a_wide (1 - <z, m>)`` and ``ratio * a_wide (1 + <z, m>)`` on S^2, with
    m at ``colatitude``, ``azimuth`` (a generic orientation relative to the grid)."""

    a_wide: float
    ratio: float
    colatitude: float
    azimuth: float


@dataclass(frozen=True)
class HighDimWellPairSetting:
    """The same antipodal wells on S^{dim-1}; m is drawn uniformly (the law is invariant)."""

    dim: int
    a_wide: float
    ratio: float


def _potential_settings():
    def family(name, scale):
        return st.builds(PotentialSetting, sphere=st.sampled_from((2, 3)), family=st.just(name),
                         size=st.integers(1, 4), scale=scale)

    return st.one_of(family("vmf-mixture", st.floats(1.0, 20.0)),
                     family("harmonic", st.floats(0.2, 2.0)))


def _landscape_settings():
    taus = st.tuples(*[st.floats(0.05, 5.0)] * 3)
    return st.builds(LandscapeSetting, potential=_potential_settings(), taus=taus)


#: Random potentials drawn per setting; they, the temperatures and the random densities run
#: as one batch.
POTENTIALS = 4


def _grid(sphere: int, device):
    """The quadrature grid a potential setting lives on (identities are exact on any grid)."""
    if sphere == 2:
        return quadrature.circle_grid(*GRID_SHAPES[2], device=device)
    return quadrature.sphere_grid(*GRID_SHAPES[3], device=device)


def _potentials(setting: PotentialSetting, count: int, generator, device):
    """``(weights[M], U[count, M])`` for a potential setting."""
    points, weights = _grid(setting.sphere, device)
    if setting.family == "vmf-mixture":
        u = landscape.random_mixture_potential(points, count, setting.size, setting.scale,
                                               generator)
    elif setting.family == "harmonic":
        u = landscape.random_harmonic_potential(points, count, setting.size, setting.scale,
                                                generator)
    else:
        raise ValueError(f"unknown potential family {setting.family!r}")
    return weights, u


def _rounding_bound(weights, log_densities, *magnitudes):
    """Floating-point bound for an identity between quadrature sums ``∫ rho (terms)``.

    At a node, every term is at most (sum of the densities) x ``s`` with ``s = 1 + sum |m|``
    over the node's magnitudes (|U|/tau, |log rho|, |log Z|); the log-densities themselves
    carry an absolute rounding of a few ulp of ``s``, which multiplies the integrand, hence
    ``s^2``. Higham's bound then caps the error of all sums at ``gamma_n sum_k q_k rho_k s_k^2``.
    """
    mass = sum(torch.exp(ld) for ld in log_densities)
    scale = 1.0 + sum(m.abs() for m in magnitudes)
    return quadrature.summation_error_bound((weights * mass * scale**2).sum(-1),
                                            weights.shape[-1])


#: Largest vMF concentration of the closed-form checks on each grid: there the derived
#: quadrature bound (Taylor tail of e^{kappa <m,z>} beyond the exact degree, 95 on the circle,
#: 47 on the sphere) is below 1e-9, far under any normalisation or temperature error.
CLOSED_FORM_KAPPA = {2: 30.0, 3: 10.0}
GRID_SHAPES = {2: (96,), 3: (24, 48)}


def _closed_form_setup(sphere, taus, device, generator):
    """A linear potential ``U = -a <z, m>`` per tau with ``kappa = a/tau <= CLOSED_FORM_KAPPA``:
    its Gibbs density is vMF(m, kappa), ``Z_tau = V_d(kappa)``, ``min F = -log V_d(kappa)`` and
    ``E_{rho*}<z, m> = A_d(kappa)`` (closed forms, :mod:`vmf`, independent of the grid)."""
    points, weights = _grid(sphere, device)
    exact = quadrature.exact_degree(sphere, GRID_SHAPES[sphere])
    taus = np.asarray(taus, dtype=np.float64)
    amplitude = np.minimum(1.0, CLOSED_FORM_KAPPA[sphere] * taus)
    kappa = amplitude / taus
    m = vmf.sample_uniform_sphere((), sphere, generator)
    cosine = points @ m  # [M]
    u = -torch.as_tensor(amplitude, dtype=points.dtype, device=device)[:, None] * cosine  # [K, M]
    z_err = quadrature.exp_polynomial_quadrature_bound(kappa, 0, 1.0, exact, sphere)
    return {"points": points, "weights": weights, "exact": exact, "kappa": kappa, "u": u,
            "cosine": cosine, "z_err": z_err, "tau": torch.as_tensor(taus, dtype=points.dtype,
                                                                     device=device)}


def _closed_form_gibbs(run, i, sphere, taus, generator):
    """Every run, whatever potential family was drawn: the subject's Gibbs minimiser on this
    check's grid against the closed forms of a linear potential (the grid identities of the
    other decisions hold for *any* quadrature weights; these do not):

    * ``F(rho*) = -log V_d(kappa)`` (the vMF normaliser), bound: relative quadrature error e0
      of ``Z`` (``-log(1 - e0)``) + rounding + the stated accuracy of ``log V_d``;
    * ``E_{rho*}<z, m> = A_d(kappa)``, bound ``(e1 + A e0)/(1 - e0)`` + rounding, e1 the
      quadrature error of the degree-1 moment.
    """
    energy: IntrinsicEnergy = run.subject
    c = _closed_form_setup(sphere, taus, run.device, generator)
    weights, u, tau, kappa = c["weights"], c["u"], c["tau"], c["kappa"]
    log_star = energy.minimizer_log_density(u, tau, weights)  # [K, M]
    log_z = gibbs.log_partition_function(u, tau, weights)
    f_star = energy.energy(log_star, u, tau, weights)
    log_v = vmf.log_kernel_volume(sphere, kappa)
    e0 = c["z_err"]
    bound_f = (_rounding_bound(weights, (log_star,), u / tau[:, None], log_star, log_z[:, None])
               + run.tensor(-np.log1p(-e0) + geo.log_volume_rounding(kappa)))
    k = _worst(f_star + run.tensor(log_v), bound_f)
    tests = [stats.within_precision(
        "closed form: F(rho*) = -log V_d(a/tau) for U = -a<z,m> (worst tau)", f_star[k],
        -float(log_v[k]), bound_f[k], example=i,
        note=f"vMF normaliser; kappa <= {CLOSED_FORM_KAPPA[sphere]:g}; bound: quadrature "
             "(Taylor tail) + Higham")]
    mean = landscape.expectation(c["cosine"], log_star, weights)
    a_d = vmf.mean_resultant_length(sphere, kappa)
    e1 = quadrature.exp_polynomial_quadrature_bound(kappa, 1, 1.0, c["exact"], sphere)
    bound_m = (quadrature.summation_error_bound(
        (weights * torch.exp(log_star) * c["cosine"].abs()).sum(-1), weights.shape[-1])
        + run.tensor((e1 + a_d * e0) / (1 - e0) + 64 * quadrature.UNIT_ROUNDOFF))
    k = _worst(mean - run.tensor(a_d), bound_m)
    tests.append(stats.within_precision(
        "closed form: E_rho*<z,m> = A_d(a/tau) (worst tau)", mean[k], float(a_d[k]), bound_m[k],
        example=i, note="mean resultant length of the vMF Gibbs density"))
    return tests


def _closed_form_energy(run, i, sphere, tau, generator, count: int = 16):
    """Every run: the subject's F and the KL functional at single-vMF densities (normalised in
    closed form, not on the grid) against ``F(vMF(m,k)) = -(a/tau) A_d(k)<u,m> + k A_d(k) -
    log V_d(k)`` and ``KL(vMF0||vMF1) = k0 A(k0) - k1 A(k0)<m0,m1> - log V(k0) + log V(k1)``.
    Bound: the derived quadrature error of each vMF x degree-1 integrand + rounding."""
    energy: IntrinsicEnergy = run.subject
    points, weights = _grid(sphere, run.device)
    exact = quadrature.exact_degree(sphere, GRID_SHAPES[sphere])
    kmax = CLOSED_FORM_KAPPA[sphere] / 2
    means = vmf.sample_uniform_sphere((2, count), sphere, generator)
    kap = 0.5 + (kmax - 0.5) * torch.rand(2, count, generator=generator, dtype=points.dtype,
                                          device=run.device)
    direction = vmf.sample_uniform_sphere((count,), sphere, generator)
    a = 1.0
    k_np = kap.cpu().numpy()
    log_v = vmf.log_kernel_volume(sphere, k_np)  # [2, B]
    log_rho = kap[..., None] * (means @ points.T) - run.tensor(log_v)[..., None]  # [2, B, M]
    u = -a * (direction @ points.T)  # [B, M]
    f = energy.energy(log_rho[0], u, tau, weights)
    a_d = vmf.mean_resultant_length(sphere, k_np)
    cos_um = np.sum(direction.cpu().numpy() * means[0].cpu().numpy(), -1)
    cos_01 = np.sum(means[0].cpu().numpy() * means[1].cpu().numpy(), -1)
    f_closed = -(a / tau) * a_d[0] * cos_um + k_np[0] * a_d[0] - log_v[0]
    kl = landscape.kl_divergence(log_rho[0], log_rho[1], weights)
    kl_closed = k_np[0] * a_d[0] - k_np[1] * a_d[0] * cos_01 - log_v[0] + log_v[1]

    def quad(k_density, sup):
        return quadrature.exp_polynomial_quadrature_bound(k_density, 1, sup, exact, sphere)

    sup_log = k_np + np.abs(log_v)
    lv_round = geo.log_volume_rounding(k_np)
    bound_f = (_rounding_bound(weights, (log_rho[0],), u / tau, log_rho[0])
               + run.tensor(quad(k_np[0], a) / tau + quad(k_np[0], sup_log[0]) + lv_round[0]
                            + 16 * quadrature.UNIT_ROUNDOFF * (1 + k_np[0] + a / tau)))
    bound_kl = (_rounding_bound(weights, (log_rho[0],), log_rho[0], log_rho[1])
                + run.tensor(quad(k_np[0], sup_log[0] + sup_log[1]) + lv_round[0] + lv_round[1]
                             + 16 * quadrature.UNIT_ROUNDOFF * (1 + k_np[0] + k_np[1])))
    k = _worst(f - run.tensor(f_closed), bound_f)
    tests = [stats.within_precision(
        "closed form: F(vMF) for a linear U (worst of the batch)", f[k], float(f_closed[k]),
        bound_f[k], example=i, note=f"tau={tau:g}; vMF entropy and mean in closed form")]
    k = _worst(kl - run.tensor(kl_closed), bound_kl)
    tests.append(stats.within_precision(
        "closed form: KL(vMF0||vMF1) (worst of the batch)", kl[k], float(kl_closed[k]),
        bound_kl[k], example=i, note="bound: quadrature (Taylor tail) + Higham"))
    return tests


def _worst(values, bounds):
    """Index of the entry with the largest |value| / bound."""
    return int(torch.argmax((values.abs() / bounds).reshape(-1)))


# -- Prop 3.1: strict convexity -------------------------------------------------------------

U_, Z_ = sympy.Symbol("U", real=True), sympy.Symbol("Z", positive=True)
TAU, LAM = sympy.Symbol("tau", positive=True), sympy.Symbol("lambda", real=True)
RHO, RHO0, RHO1 = sympy.symbols("rho rho_0 rho_1", positive=True)


def _energy_integrand(rho):
    """The pointwise integrand of F: ``U rho / tau + rho log rho``."""
    return U_ * rho / TAU + rho * sympy.log(rho)


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


@strict_convexity.check("convexity gap equals the KL mixture", settings=_landscape_settings(),
                        examples=Profiled(quick=3, full=12))
def convexity_gap(run):
    energy: IntrinsicEnergy = run.subject
    pairs = run.pick(Profiled(quick=32, full=128))
    tests = []
    for i, setting in enumerate(run.settings):
        gen = run.generator(i)
        weights, u = _potentials(setting.potential, POTENTIALS, gen, run.device)
        tau = run.tensor(setting.taus)[None, :, None]  # [1, K, 1]: potentials x taus x pairs
        shape = (POTENTIALS, len(setting.taus), pairs)
        log_r0 = landscape.random_log_density(shape, weights, gen)
        log_r1 = landscape.random_log_density(shape, weights, gen)
        t = 0.05 + 0.9 * torch.rand(shape, generator=gen, dtype=run.dtype, device=run.device)
        log_rt = torch.logaddexp(torch.log(t)[..., None] + log_r0,
                                 torch.log1p(-t)[..., None] + log_r1)
        pot = u[:, None, None, :]
        f0, f1, ft = (energy.energy(lr, pot, tau, weights) for lr in (log_r0, log_r1, log_rt))
        gap = t * f0 + (1 - t) * f1 - ft
        kl_mix = (t * landscape.kl_divergence(log_r0, log_rt, weights)
                  + (1 - t) * landscape.kl_divergence(log_r1, log_rt, weights))
        bound = _rounding_bound(weights, (log_r0, log_r1, log_rt), pot / tau[..., None],
                                log_r0, log_r1, log_rt)
        k = _worst(gap - kl_mix, bound)
        tests.append(stats.within_precision(
            "gap - KL mixture (worst pair)", gap.reshape(-1)[k], kl_mix.reshape(-1)[k],
            bound.reshape(-1)[k], example=i, note=f"{gap.numel()} pairs; bound: Higham"))
        k_min = _worst(bound, gap.clamp_min(0.0))  # largest bound / gap
        tests.append(stats.exceeds_precision(
            "strict convexity: rounding bound / gap, worst pair", gap.reshape(-1)[k_min],
            bound.reshape(-1)[k_min], example=i, note="<= 1: every gap is resolved above its rounding bound"))
        tests.extend(_closed_form_energy(run, i, setting.potential.sphere, setting.taus[0], gen))
        run.record(f"example {i}", {"max |gap - KL mix|": float((gap - kl_mix).abs().max()),
                                    "max rounding bound": float(bound.max()),
                                    "min gap": float(gap.min())})
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


@gibbs_minimizer.check("energy excess equals KL to the claimed minimiser",
                       settings=_landscape_settings(), examples=Profiled(quick=3, full=12))
def energy_excess_is_kl(run):
    energy: IntrinsicEnergy = run.subject
    densities = run.pick(Profiled(quick=32, full=128))
    tests = []
    for i, setting in enumerate(run.settings):
        gen = run.generator(i)
        weights, u = _potentials(setting.potential, POTENTIALS, gen, run.device)
        tau = run.tensor(setting.taus)
        log_z = gibbs.log_partition_function(u[:, None, :], tau[None, :], weights)  # [P, K]
        log_star = energy.minimizer_log_density(u[:, None, :], tau[None, :], weights)
        log_rho = landscape.random_log_density((POTENTIALS, len(setting.taus), densities),
                                               weights, gen)
        pot, log_star_b = u[:, None, None, :], log_star[:, :, None, :]
        tau_b = tau[None, :, None]
        excess = (energy.energy(log_rho, pot, tau_b, weights)
                  - energy.energy(log_star_b, pot, tau_b, weights))
        kl = landscape.kl_divergence(log_rho, log_star_b, weights)
        bound = _rounding_bound(weights, (log_rho, log_star_b), pot / tau_b[..., None], log_rho,
                                log_star_b, log_z[:, :, None, None])
        k = _worst(excess - kl, bound)
        tests.append(stats.within_precision(
            "F(rho) - F(rho*) - KL(rho||rho*) (worst density)", excess.reshape(-1)[k],
            kl.reshape(-1)[k], bound.reshape(-1)[k], example=i, note="bound: Higham"))
        f_star = energy.energy(log_star, u[:, None, :], tau[None, :], weights)
        bound_star = _rounding_bound(weights, (log_star,), u[:, None, :] / tau[None, :, None],
                                     log_star, log_z[..., None])
        k = _worst(f_star + log_z, bound_star)
        tests.append(stats.within_precision(
            "F(rho*) = -log Z_tau (worst potential, tau)", f_star.reshape(-1)[k],
            -log_z.reshape(-1)[k], bound_star.reshape(-1)[k], example=i))
        tests.extend(_closed_form_gibbs(run, i, setting.potential.sphere, setting.taus, gen))
        run.record(f"example {i}", {"max |F(rho) - F(rho*) - KL|": float((excess - kl).abs().max()),
                                    "max |F(rho*) + log Z|": float((f_star + log_z).abs().max()),
                                    "max rounding bound": float(bound.max())})
    return tests


@gibbs_minimizer.check(
    "mirror descent from many starts converges to the claimed minimiser",
    settings=st.builds(MirrorDescentSetting, landscape=_landscape_settings(),
                       step_size=st.floats(0.1, 0.9)),
    examples=Profiled(quick=3, full=12))
def mirror_descent_converges(run):
    energy: IntrinsicEnergy = run.subject
    starts = run.pick(Profiled(quick=24, full=64))
    # Run until the known rate guarantees F(rho_T) - min F <= 1e-6 KL(rho*||rho_0): far above
    # rounding, far below any wrong limit, and still a real (finite-T) convergence statement.
    rate_target = 1e-6
    tests = []
    for i, setting in enumerate(run.settings):
        gen = run.generator(i)
        eta = setting.step_size
        steps = math.ceil(math.log(rate_target) / math.log1p(-eta))
        weights, u = _potentials(setting.landscape.potential, POTENTIALS, gen, run.device)
        tau = run.tensor(setting.landscape.taus)
        pot, tau_b = u[:, None, None, :], tau[None, :, None]  # potentials x taus x starts
        log_rho0 = landscape.random_log_density((POTENTIALS, len(setting.landscape.taus), starts),
                                                weights, gen)
        log_rho = landscape.exponentiated_gradient(
            partial(energy.first_variation, potential=pot, tau=tau_b), log_rho0, weights, steps,
            eta)
        log_star = energy.minimizer_log_density(u[:, None, :], tau[None, :], weights)[:, :, None]
        log_z = gibbs.log_partition_function(u[:, None, :], tau[None, :], weights)[:, :, None]
        rate = landscape.mirror_descent_rate_bound(
            landscape.kl_divergence(log_star, log_rho0, weights), eta, steps)

        kl_end = landscape.kl_divergence(log_rho, log_star, weights)
        bound = rate + _rounding_bound(weights, (log_rho, log_star), log_rho, log_star)
        k = _worst(kl_end, bound)
        tests.append(stats.within_precision(
            "KL(rho_T||rho*) within the mirror-descent rate (worst start)", kl_end.reshape(-1)[k],
            0.0, bound.reshape(-1)[k], example=i,
            note=f"T={steps}, eta={eta:.3f}; rate: Lu-Freund-Nesterov Thm 3.1"))
        f_end = energy.energy(log_rho, pot, tau_b, weights)
        bound_f = rate + _rounding_bound(weights, (log_rho,), pot / tau_b[..., None], log_rho,
                                         log_z[..., None])
        k = _worst(f_end + log_z, bound_f)
        tests.append(stats.within_precision(
            "min F reached = -log Z_tau (worst start)", f_end.reshape(-1)[k],
            -log_z.expand_as(f_end).reshape(-1)[k], bound_f.reshape(-1)[k], example=i))
        tests.append(_closed_form_descent(run, i, setting.landscape, eta, steps, starts, gen))
        spread = (log_rho.max(dim=2).values - log_rho.min(dim=2).values).abs().max()
        run.record(f"example {i}", {
            "steps": steps, "step_size": eta, "starts": starts,
            "max KL(rho_T||rho*)": float(kl_end.max()), "max rate bound": float(rate.max()),
            "max spread of log rho_T across starts": float(spread)})
    return tests


def _closed_form_descent(run, i, landscape_setting, eta, steps, starts, gen):
    """Mirror descent on a linear potential ``U = -a<z, m>`` (same grid, taus, step size and
    number of steps) reaches ``min F = -log V_d(a/tau)``, the closed-form vMF normaliser:
    ``0 <= F(rho_T) - min_grid F <= rate`` and ``|min_grid F + log V_d| <= -log(1 - e0)``."""
    energy: IntrinsicEnergy = run.subject
    sphere = landscape_setting.potential.sphere
    c = _closed_form_setup(sphere, landscape_setting.taus, run.device, gen)
    weights, u, tau = c["weights"], c["u"][:, None, :], c["tau"][:, None]  # [K, starts, M]
    log_rho0 = landscape.random_log_density((len(c["kappa"]), starts), weights, gen)
    log_rho = landscape.exponentiated_gradient(
        partial(energy.first_variation, potential=u, tau=tau), log_rho0, weights, steps, eta)
    log_star = gibbs.gibbs_log_density(u, tau, weights)  # the rate's reference point only
    rate = landscape.mirror_descent_rate_bound(
        landscape.kl_divergence(log_star, log_rho0, weights), eta, steps)
    f_end = energy.energy(log_rho, u, tau, weights)
    log_v = run.tensor(vmf.log_kernel_volume(sphere, c["kappa"]))[:, None]
    bound = (rate + _rounding_bound(weights, (log_rho,), u / tau[..., None], log_rho)
             + run.tensor(-np.log1p(-c["z_err"]) + geo.log_volume_rounding(c["kappa"]))[:, None])
    k = _worst(f_end + log_v, bound)
    return stats.within_precision(
        "closed form: mirror descent on U = -a<z,m> reaches -log V_d(a/tau) (worst start)",
        f_end.reshape(-1)[k], -log_v.expand_as(f_end).reshape(-1)[k], bound.reshape(-1)[k],
        example=i, note="vMF normaliser; bound: rate + quadrature + rounding")


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


#: Temperatures of the concentration checks: four decades, down to where the Gibbs density
#: is a few grid nodes wide.
CONCENTRATION_TAUS = np.geomspace(2e-3, 20.0, 33)


@concentration.check("sublevel masses are non-increasing in tau", settings=_potential_settings(),
                     examples=Profiled(quick=3, full=12))
def sublevel_monotone(run):
    energy: IntrinsicEnergy = run.subject
    tau = run.tensor(CONCENTRATION_TAUS)
    tests = []
    for i, setting in enumerate(run.settings):
        weights, u = _potentials(setting, 2 * POTENTIALS, run.generator(i), run.device)
        levels = torch.quantile(u, run.tensor(np.linspace(0.02, 0.98, 17)), dim=-1).T  # [P, C]
        inside = (u[:, None, :] <= levels[:, :, None]).to(run.dtype)  # [P, C, M]
        log_star = energy.minimizer_log_density(u[:, None, :], tau[None, :], weights)  # [P, K, M]
        mass = (weights * torch.exp(log_star)) @ inside.transpose(-1, -2)  # [P, K, C]
        log_z = gibbs.log_partition_function(u[:, None, :], tau[None, :], weights)
        err = _rounding_bound(weights, (log_star,), u[:, None, :] / tau[None, :, None],
                              log_z[..., None])  # [P, K], bounds every mass at (P, K)
        rise = mass[:, 1:, :] - mass[:, :-1, :]
        rise_bound = (err[:, 1:] + err[:, :-1])[..., None].expand_as(rise)
        k = _worst(rise.clamp_min(0.0), rise_bound)
        tests.append(stats.within_precision(
            "largest increase of a sublevel mass as tau grows (0 if none)",
            rise.clamp_min(0.0).reshape(-1)[k], 0.0, rise_bound.reshape(-1)[k], example=i,
            note=f"{rise.numel()} consecutive tau pairs x levels"))
        tests.extend(_closed_form_gibbs(run, i, setting.sphere, CONCENTRATION_TAUS,
                                        run.generator(i)))
        run.record(f"example {i}", {"max increase": float(rise.max()),
                                    "largest decrease": float(-rise.min())})
    return tests


@concentration.check("tail mass below exp(-eps/(2 tau))/mu(A_eps/2) down to tau = 0.002",
                     settings=_potential_settings(), examples=Profiled(quick=3, full=12))
def tail_mass(run):
    energy: IntrinsicEnergy = run.subject
    tau = run.tensor(CONCENTRATION_TAUS)
    fractions = run.tensor([0.02, 0.05, 0.1, 0.2, 0.4])  # eps as a fraction of osc(U)
    tests = []
    for i, setting in enumerate(run.settings):
        weights, u = _potentials(setting, 2 * POTENTIALS, run.generator(i), run.device)
        low, high = u.min(-1).values, u.max(-1).values
        eps = fractions[None, :] * (high - low)[:, None]  # [P, E]
        outside = (u[:, None, :] > (low[:, None] + eps)[..., None]).to(run.dtype)  # [P, E, M]
        near = (u[:, None, :] <= (low[:, None] + eps / 2)[..., None]).to(run.dtype)
        log_star = energy.minimizer_log_density(u[:, None, :], tau[None, :], weights)
        tail = (weights * torch.exp(log_star)) @ outside.transpose(-1, -2)  # [P, K, E]
        mu_near = (weights * near).sum(-1)  # [P, E]
        bound = torch.exp(-eps[:, None, :] / (2 * tau[None, :, None])) / mu_near[:, None, :]
        log_z = gibbs.log_partition_function(u[:, None, :], tau[None, :], weights)
        err = _rounding_bound(weights, (log_star,), u[:, None, :] / tau[None, :, None],
                              log_z[..., None])[..., None] + quadrature.summation_error_bound(
            bound, weights.shape[-1])
        excess = (tail - bound).clamp_min(0.0)
        k = _worst(excess, err.expand_as(excess))
        tests.append(stats.within_precision(
            "largest excess of the tail mass over its bound (0 if none)", excess.reshape(-1)[k],
            0.0, err.expand_as(excess).reshape(-1)[k], example=i,
            note=f"tau in [{CONCENTRATION_TAUS[0]}, {CONCENTRATION_TAUS[-1]}], eps/osc(U) in "
                 "{0.02, ..., 0.4}"))
        tests.extend(_closed_form_gibbs(run, i, setting.sphere, CONCENTRATION_TAUS,
                                        run.generator(i)))
        run.record(f"example {i}", {
            "tail mass at the smallest tau, per eps": tail[:, 0, :].max(0).values.tolist(),
            "its bound": bound[:, 0, :].max(0).values.tolist(),
            "tail mass at the largest tau, per eps": tail[:, -1, :].max(0).values.tolist()})
    return tests


_anti_gibbs = replace(IntrinsicEnergy(), gibbs_potential_sign=-1.0)
concentration.control("exp(+U/tau) fails monotonicity", check=sublevel_monotone,
                      mutant=_anti_gibbs,
                      description="exp(+U/tau)/Z moves mass into sublevel sets as tau grows")
concentration.control("exp(+U/tau) fails the tail bound", check=tail_mass, mutant=_anti_gibbs,
                      description="exp(+U/tau)/Z concentrates on the maximisers of U")


# -- Prop 3.3: entropy as tie-breaker -------------------------------------------------------


@dataclass(frozen=True)
class LaplaceTieBreak:
    """The predicted low-temperature mass ratio of two equally deep wells ``a_i (1 - <z, m_i>)``.

    Laplace's method integrates over the ``d - tangent_codimension`` tangent directions of
    S^{d-1} at a minimiser: ``ratio -> (a_narrow / a_wide)^{(d - tangent_codimension)/2}``.
    """

    tangent_codimension: int = 1

    def limit_ratio(self, a_wide: float, a_narrow: float, d: int) -> float:
        return (a_narrow / a_wide) ** ((d - self.tangent_codimension) / 2.0)


K_HALF = sympy.Symbol("k", positive=True)  # k = (d-1)/2, half the tangent dimension


def _hankel_prefactor(x):
    """``Gamma(d/2) (2/x)^nu / sqrt(2 pi x)``: the large-x form of ``V_d(x) e^{-x}``."""
    half_d, nu = K_HALF + sympy.Rational(1, 2), K_HALF - sympy.Rational(1, 2)
    return sympy.gamma(half_d) * (2 / x) ** nu / sympy.sqrt(2 * sympy.pi * x)


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


def _antipodal_wells(points, m, a_wide, a_narrow):
    """Branches ``a_wide (1 - <z, m>)``, ``a_narrow (1 + <z, m>)``; U is their minimum and the
    basin of a well is where its branch is the smaller: ``(U[M], labels[M])``."""
    c = points @ m
    branches = torch.stack([a_wide * (1 - c), a_narrow * (1 + c)])
    u, labels = branches.min(0)
    return u, labels


def _basin_masses(n_theta, m, a_wide, a_narrow, tau):
    """Gibbs masses ``sum_k q_k e^{-U_k/tau}`` of the wide and the narrow basin on the
    ``n_theta x 2 n_theta`` Gauss-Legendre x trapezoid grid, per tau: ``[K, 2]`` (unnormalised:
    U >= 0, so every term is <= 1 and nothing over- or underflows)."""
    points, weights = quadrature.sphere_grid(n_theta, 2 * n_theta, device=m.device)
    u, labels = _antipodal_wells(points, m, a_wide, a_narrow)
    log_mass = -u / tau[:, None]  # [K, M]
    return landscape.partition_masses(log_mass, labels, weights, 2), weights.shape[-1]


def _basin_ratio_bound(ratio, target, a_wide, a_narrow, boundary, taus, exact, nodes):
    """Rigorous bound on ``|grid basin ratio - target|``.

    The full wells have the exact integrals ``F_i = e^{-k_i} V_3(k_i) = (1 - e^{-2 k_i})/(2 k_i)``
    (k_i = a_i/tau); on the grid each is off by a relative ``e_i`` at most
    (:func:`quadrature.exp_polynomial_quadrature_bound`, degree 0). A basin's grid mass differs
    from its full well's by the well's terms in the other basin, where its branch exceeds the
    boundary height U_b: between 0 and ``e^{-U_b/tau}``. So the grid ratio is
    ``(F_w/F_n)(1 + d)`` with ``|d| <= (eps_w + eps_n)/(1 - eps_n)``, ``eps_i = e_i +
    e^{-U_b/tau}/F_i``, and ``F_w/F_n = target (1 - e^{-2k_w})/(1 - e^{-2k_n})`` is within
    ``target (e^{-2k_w} + e^{-2k_n})/(1 - e^{-2k_n})`` of the target (d = 3). Rounding: two grid
    sums, 2 gamma_{n+16} relative.
    """
    k_w, k_n = a_wide / taus, a_narrow / taus
    full = [-np.expm1(-2 * k) / (2 * k) for k in (k_w, k_n)]
    eps = [quadrature.exp_polynomial_quadrature_bound(k, 0, 1.0, exact, 3)
           + np.exp(-boundary / taus) / f for k, f in zip((k_w, k_n), full, strict=True)]
    exact_ratio = full[0] / full[1]
    quad = exact_ratio * (eps[0] + eps[1]) / (1 - eps[1])
    finite_tau = target * (np.exp(-2 * k_w) + np.exp(-2 * k_n)) / -np.expm1(-2 * k_n)
    rounding = 2 * quadrature.gamma(nodes + quadrature.OPS_PER_TERM) * np.abs(ratio) * 1.01
    return quad + finite_tau + rounding


#: tau grid of the S^2 check, as fractions of the basin-boundary height U_b: from U_b/30, where
#: the exponentially small cross-basin terms (<= e^{-U_b/tau}) are ~1e-13, down by 1.5^5.
S2_TAU_STEPS = 30.0 * 1.5 ** np.arange(6)


@tie_break.check("S^2 quadrature: basin-mass ratio equals (a2/a1)^((d-1)/2)",
                 settings=st.builds(WellPairSetting, a_wide=st.floats(0.5, 2.0),
                                    ratio=st.floats(1.5, 4.0), colatitude=st.floats(0.0, math.pi),
                                    azimuth=st.floats(0.0, 2 * math.pi)),
                 examples=Profiled(quick=3, full=12))
def s2_tie_break(run):
    law: LaplaceTieBreak = run.subject
    tests = []
    for i, s in enumerate(run.settings):
        a_narrow = s.a_wide * s.ratio
        boundary = 2 * s.a_wide * a_narrow / (s.a_wide + a_narrow)  # U on the basin boundary
        taus = boundary / S2_TAU_STEPS
        m = run.tensor([math.sin(s.colatitude) * math.cos(s.azimuth),
                        math.sin(s.colatitude) * math.sin(s.azimuth), math.cos(s.colatitude)])
        # On S^2 the basin ratio is a_narrow/a_wide up to e^{-2 a/tau} at *every* tau (the
        # mass of a(1 - <z,m>) is e^{-k} V_3(k) = (1 - e^{-2k})/(2k)), so no extrapolation is
        # needed. Grid degree: the Taylor tail of e^{k<z,m>} beyond k + 12 sqrt(k) + 20 is
        # negligible (a Poisson(k) tail), which makes the derived quadrature bound tiny.
        k_max = a_narrow / float(taus[-1])
        degree = math.ceil(k_max + 12 * math.sqrt(k_max) + 20)
        n_theta = (degree + 2) // 2
        exact = quadrature.exact_degree(3, (n_theta, 2 * n_theta))
        masses, nodes = _basin_masses(n_theta, m, s.a_wide, a_narrow, run.tensor(taus))
        ratio = (masses[:, 0] / masses[:, 1]).cpu().numpy()
        target = law.limit_ratio(s.a_wide, a_narrow, 3)
        bound = _basin_ratio_bound(ratio, a_narrow / s.a_wide, s.a_wide, a_narrow, boundary,
                                   taus, exact, nodes)
        k = int(np.argmax(np.abs(ratio - target) / bound))
        tests.append(stats.within_precision(
            "basin-mass ratio wide/narrow on the grid = (a2/a1)^((d-1)/2) (worst tau)",
            float(ratio[k]), target, float(bound[k]), example=i,
            note=f"tau in [{taus[-1]:.4g}, {taus[0]:.4g}], grid {n_theta}x{2 * n_theta}; bound: "
                 "quadrature (Taylor tail) + cross-basin e^{-U_b/tau} + e^{-2a/tau} + rounding"))
        run.record(f"example {i}", {"taus": taus.tolist(), "ratio": ratio.tolist(),
                                    "wider well wins at every tau": bool((ratio > 1).all()),
                                    "error bound": bound.tolist(), "predicted limit": target})
    run.record("d=3, a=(1,3) orthogonal-wells reproduction", _theory_reproduction(run))
    return tests


def _theory_reproduction(run):
    """The project's reference numbers (2.546 at tau=0.2, 2.9952 at 0.05, 3.0000 at 0.02;
    docs/derivations.md, "Unimodal landscape: Gibbs minimiser, convexity, concentration")
    are for *orthogonal* wells with U = min of the branches and mass split by the nearer mean."""
    points, weights = quadrature.sphere_grid(200, 400, device=run.device)
    m1, m2 = run.tensor([0.0, 0.0, 1.0]), run.tensor([1.0, 0.0, 0.0])
    u = torch.minimum(1 - points @ m1, 3 * (1 - points @ m2))
    labels = (points @ m2 > points @ m1).long()
    taus = run.tensor([0.2, 0.05, 0.02])
    masses = landscape.partition_masses(gibbs.gibbs_log_density(u, taus, weights), labels,
                                        weights, 2)
    return {"taus": taus.tolist(), "ratio": (masses[:, 0] / masses[:, 1]).tolist(),
            "reference values": [2.546, 2.9952, 3.0000]}


def _ratio_estimate(numerator, denominator):
    """``mean(num)/mean(den)`` over the last axis and its delta-method standard error."""
    n = numerator.shape[-1]
    ratio = numerator.mean(-1) / denominator.mean(-1)
    residual = numerator - ratio[..., None] * denominator
    return ratio, residual.std(-1) / (math.sqrt(n) * denominator.mean(-1))


@tie_break.check("higher d Monte Carlo: mass ratio extrapolates to (a2/a1)^((d-1)/2)",
                 settings=st.builds(HighDimWellPairSetting, dim=st.integers(4, 24),
                                    a_wide=st.floats(0.5, 2.0), ratio=st.floats(2.0, 3.0)),
                 examples=Profiled(quick=2, full=8))
def mc_tie_break(run):
    law: LaplaceTieBreak = run.subject
    # Designed margin: the ratio within 10 % (quick) / 3 % (full), i.e. log(1 + rel) on the log
    # scale the fit works on. Samples per tau: from a pilot (its own seed stream) that measures
    # the per-sample s.d. of the fitted log-limit, times a safety factor, through
    # stats.min_num_samples; both fixed before the decisive sample is drawn.
    margin = math.log1p(run.relative_discrepancy)
    rate = run.decision_false_fail_rate(len(run.settings))
    pilot_n, safety = 4000, 1.3
    cap = run.pick(Profiled(quick=400_000, full=2_000_000))
    tests = []
    for i, s in enumerate(run.settings):
        gen = run.generator(i)
        d, a_wide, a_narrow = s.dim, s.a_wide, s.a_wide * s.ratio
        # The correction to the limit is a series in beta tau / a, beta = (4 nu^2 - 1)/8 (the
        # Hankel expansion of V_d): tau <= 0.2 a / max(beta, 2) keeps the quadratic fit's
        # truncation below 1e-4 relative and e^{-U_b/tau} below 1e-3, both far under the margin.
        nu = d / 2 - 1
        beta = (4 * nu**2 - 1) / 8
        taus = 0.2 * a_wide / max(beta, 2.0) * np.array([1.0, 0.6, 0.35, 0.2, 0.125])
        m = vmf.sample_uniform_sphere((), d, gen)
        pilot = _tie_break_fit(run, d, a_wide, a_narrow, taus, m, pilot_n, gen)
        sigma = safety * pilot.standard_error[0] * math.sqrt(pilot_n)
        n = stats.min_num_samples(sigma, margin, rate, run.false_pass_rate, kind="equivalent")
        if n > cap:
            run.not_applicable(f"d={d}: the design needs {n} samples per tau (> {cap})", i)
            continue
        fit, ratio, se = _tie_break_fit(run, d, a_wide, a_narrow, taus, m, n, gen, full=True)
        target = law.limit_ratio(a_wide, a_narrow, d)
        tests.append(stats.equivalent(
            "log of the extrapolated mass ratio wide/narrow", fit.coef[0], fit.standard_error[0],
            math.log(target), margin=margin, example=i,
            note=f"d={d}, {n} samples per tau (designed from a {pilot_n}-sample pilot x "
                 f"{safety}), nuisance b tau + c tau^2; margin log(1 + {run.relative_discrepancy})"))
        # Hankel: V_d(x) e^{-x} ~ x^{-(d-1)/2} (1 - beta/x), so d log ratio/dtau -> -beta (1/a1 - 1/a2)
        run.record(f"example {i}", {
            "d": d, "taus": taus.tolist(), "samples_per_tau": n, "ratio": ratio.tolist(),
            "se": se.tolist(), "wider well wins at every tau": bool((ratio > 1).all()),
            "fitted limit": math.exp(fit.coef[0]), "limit relative se": float(fit.standard_error[0]),
            "predicted limit": target, "fitted log slope": float(fit.coef[1]),
            "Hankel log slope -beta (1/a1 - 1/a2)": -beta * (1 / a_wide - 1 / a_narrow),
            "chi2/dof": fit.chi2 / fit.dof})
    return tests


def _tie_break_fit(run, d, a_wide, a_narrow, taus, m, n, gen, full=False):
    """Importance-sampled mass ratio wide/narrow at each tau and the fit of its log-limit.

    Importance sampling from the equal mixture q of the two wells' vMF laws. In its own basin
    a well's weight e^{-U/tau}/q is at most 2 V_d(a/tau) e^{-a/tau}: bounded weights, so the
    delta-method standard error of the ratio is reliable. Fit ``log ratio(tau) = log L + b tau
    + c tau^2``: on the log scale the standard error ~ se/ratio does not grow with the estimate
    itself (weighting by the estimate's own se would favour low estimates and bias L down).
    """
    tau = run.tensor(taus)[:, None]  # [K, 1]
    means = torch.stack([m, -m])  # [2, d]
    kappas = torch.stack([a_wide / tau, a_narrow / tau], dim=-1)  # [K, 1, 2]
    comp = (torch.rand(len(taus), n, generator=gen, dtype=run.dtype, device=run.device)
            < 0.5).long()  # [K, n]
    kappa = torch.gather(kappas.expand(-1, n, -1), -1, comp[..., None])[..., 0]
    z = vmf.sample_vmf(means[comp], kappa, 1, gen)[..., 0, :]  # [K, n, d]
    u, labels = _antipodal_wells(z, m, a_wide, a_narrow)
    log_q = torch.logaddexp(vmf.vmf_log_density(z, m, kappas[..., 0]),
                            vmf.vmf_log_density(z, -m, kappas[..., 1])) - math.log(2.0)
    log_w = -u / tau - log_q
    w = torch.exp(log_w - log_w.max(-1, keepdim=True).values)
    ratio, se = _ratio_estimate(w * (labels == 0), w * (labels == 1))
    ratio, se = ratio.cpu().numpy(), se.cpu().numpy()
    design = np.stack([np.ones_like(taus), taus, taus**2], axis=1)
    fit = stats.weighted_least_squares(design, np.log(ratio), se / ratio)
    return (fit, ratio, se) if full else fit


_wrong_exponent = replace(LaplaceTieBreak(), tangent_codimension=0)
tie_break.control("Laplace exponent d/2 on S^2", check=s2_tie_break, mutant=_wrong_exponent,
                  description="counting d instead of d-1 tangent directions predicts "
                              "(a2/a1)^{d/2}")
tie_break.control("Laplace exponent d/2 in higher d", check=mc_tie_break, mutant=_wrong_exponent,
                  description="counting d instead of d-1 tangent directions predicts "
                              "(a2/a1)^{d/2}")
