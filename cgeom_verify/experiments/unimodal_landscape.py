"""Experiment machinery of the unimodal-landscape claims (``claims/unimodal_landscape.py``).

The settings and their Hypothesis strategies, the quadrature grids and random potentials, the
rigorous error bounds (Higham's summation bound for the grid identities, the derived quadrature
bounds of the vMF closed forms), the tie-breaker's subject (Laplace's prediction, with the
switch its controls flip), and the batched evaluations and the designed Monte Carlo, returned
as typed results from which the sheet builds its decisions and records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import hypothesis.strategies as st
import numpy as np
import torch

from cgeom_verify import Profiled, stats
from cgeom_verify.kernels import divergence_geometry as geo
from cgeom_verify.kernels import gibbs, landscape, quadrature, vmf, vmf_span

# == settings ====================================================================================


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


def potential_settings():
    def family(name, scale):
        return st.builds(PotentialSetting, sphere=st.sampled_from((2, 3)), family=st.just(name),
                         size=st.integers(1, 4), scale=scale)

    return st.one_of(family("vmf-mixture", st.floats(1.0, 20.0)),
                     family("harmonic", st.floats(0.2, 2.0)))


def landscape_settings():
    taus = st.tuples(*[st.floats(0.05, 5.0)] * 3)
    return st.builds(LandscapeSetting, potential=potential_settings(), taus=taus)


def mirror_descent_settings():
    return st.builds(MirrorDescentSetting, landscape=landscape_settings(),
                     step_size=st.floats(0.1, 0.9))


def well_pair_settings():
    return st.builds(WellPairSetting, a_wide=st.floats(0.5, 2.0), ratio=st.floats(1.5, 4.0),
                     colatitude=st.floats(0.0, math.pi), azimuth=st.floats(0.0, 2 * math.pi))


def high_dim_well_pair_settings():
    return st.builds(HighDimWellPairSetting, dim=st.integers(4, 24), a_wide=st.floats(0.5, 2.0),
                     ratio=st.floats(2.0, 3.0))


# == grids, potentials and rigorous bounds =======================================================

#: Random potentials drawn per setting; they, the temperatures and the random densities run
#: as one batch.
POTENTIALS = 4
#: Largest vMF concentration of the closed-form checks on each grid: there the derived
#: quadrature bound (Taylor tail of e^{kappa <m,z>} beyond the exact degree, 95 on the circle,
#: 47 on the sphere) is below 1e-9, far under any normalisation or temperature error.
CLOSED_FORM_KAPPA = {2: 30.0, 3: 10.0}
GRID_SHAPES = {2: (96,), 3: (24, 48)}


def grid(sphere: int, device):
    """The quadrature grid a potential setting lives on (identities are exact on any grid)."""
    return quadrature.grid(sphere, GRID_SHAPES[sphere], device=device)


def potentials(setting: PotentialSetting, count: int, generator, device):
    """``(weights[M], U[count, M])`` for a potential setting."""
    points, weights = grid(setting.sphere, device)
    if setting.family == "vmf-mixture":
        u = landscape.random_mixture_potential(points, count, setting.size, setting.scale,
                                               generator)
    elif setting.family == "harmonic":
        u = landscape.random_harmonic_potential(points, count, setting.size, setting.scale,
                                                generator)
    else:
        raise ValueError(f"unknown potential family {setting.family!r}")
    return weights, u


def rounding_bound(weights, log_densities, *magnitudes):
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


def worst(values, bounds) -> int:
    """Flat index of the entry with the largest |value| / bound."""
    return int(torch.argmax((values.abs() / bounds).reshape(-1)))


# == vMF closed forms, checked in every run whatever family was drawn ============================


@dataclass(frozen=True)
class LinearPotential:
    """``U = -a <z, m>`` per tau with ``kappa = a/tau <= CLOSED_FORM_KAPPA`` on a check's grid:
    its Gibbs density is vMF(m, kappa), ``Z_tau = V_d(kappa)``, ``min F = -log V_d(kappa)`` and
    ``E_{rho*}<z, m> = A_d(kappa)`` (closed forms, :mod:`vmf`, independent of the grid)."""

    weights: torch.Tensor
    exact: int  # the grid's exact polynomial degree
    kappa: np.ndarray
    u: torch.Tensor  # [K, M]
    cosine: torch.Tensor  # <z, m> at the nodes
    z_err: np.ndarray  # relative quadrature error of Z, per tau
    tau: torch.Tensor


def linear_potential(sphere, taus, device, generator) -> LinearPotential:
    points, weights = grid(sphere, device)
    exact = quadrature.exact_degree(sphere, GRID_SHAPES[sphere])
    taus = np.asarray(taus, dtype=np.float64)
    amplitude = np.minimum(1.0, CLOSED_FORM_KAPPA[sphere] * taus)
    kappa = amplitude / taus
    m = vmf.sample_uniform_sphere((), sphere, generator)
    cosine = points @ m  # [M]
    u = -torch.as_tensor(amplitude, dtype=points.dtype, device=device)[:, None] * cosine  # [K, M]
    z_err = quadrature.exp_polynomial_quadrature_bound(kappa, 0, 1.0, exact, sphere)
    return LinearPotential(weights, exact, kappa, u, cosine, z_err,
                           torch.as_tensor(taus, dtype=points.dtype, device=device))


@dataclass(frozen=True)
class GibbsClosedForms:
    """The subject's Gibbs minimiser of a linear potential, per tau: ``F(rho*)`` (to compare
    with ``-log V_d(kappa)``) and ``E_{rho*}<z, m>`` (with ``A_d(kappa)``), with their bounds."""

    energy: torch.Tensor
    log_volume: np.ndarray
    energy_bound: torch.Tensor
    mean: torch.Tensor
    mean_resultant: np.ndarray
    mean_bound: torch.Tensor


def closed_form_gibbs(run, sphere, taus, generator) -> GibbsClosedForms:
    """The bounds: for F, the relative quadrature error e0 of ``Z`` (``-log(1 - e0)``) +
    rounding + the stated accuracy of ``log V_d``; for the mean, ``(e1 + A e0)/(1 - e0)`` +
    rounding, e1 the quadrature error of the degree-1 moment."""
    energy = run.subject
    c = linear_potential(sphere, taus, run.device, generator)
    weights, u, tau, kappa = c.weights, c.u, c.tau, c.kappa
    log_star = energy.minimizer_log_density(u, tau, weights)  # [K, M]
    log_z = gibbs.log_partition_function(u, tau, weights)
    f_star = energy.energy(log_star, u, tau, weights)
    log_v = vmf.log_kernel_volume(sphere, kappa)
    e0 = c.z_err
    bound_f = (rounding_bound(weights, (log_star,), u / tau[:, None], log_star, log_z[:, None])
               + run.tensor(-np.log1p(-e0) + geo.log_volume_rounding(kappa)))
    mean = landscape.expectation(c.cosine, log_star, weights)
    a_d = vmf.mean_resultant_length(sphere, kappa)
    e1 = quadrature.exp_polynomial_quadrature_bound(kappa, 1, 1.0, c.exact, sphere)
    bound_m = (quadrature.summation_error_bound(
        (weights * torch.exp(log_star) * c.cosine.abs()).sum(-1), weights.shape[-1])
        + run.tensor((e1 + a_d * e0) / (1 - e0) + 64 * quadrature.UNIT_ROUNDOFF))
    return GibbsClosedForms(f_star, log_v, bound_f, mean, a_d, bound_m)


@dataclass(frozen=True)
class VmfClosedForms:
    """The subject's F and the KL functional at a batch of single-vMF densities, with their
    closed forms and bounds."""

    energy: torch.Tensor
    energy_closed: np.ndarray
    energy_bound: torch.Tensor
    kl: torch.Tensor
    kl_closed: np.ndarray
    kl_bound: torch.Tensor


def closed_form_vmf(run, sphere, tau, generator, count: int = 16) -> VmfClosedForms:
    """Densities normalised in closed form, not on the grid, against ``F(vMF(m,k)) = -(a/tau)
    A_d(k)<u,m> + k A_d(k) - log V_d(k)`` and ``KL(vMF0||vMF1) = k0 A(k0) - k1 A(k0)<m0,m1> -
    log V(k0) + log V(k1)``. Bound: the derived quadrature error of each vMF x degree-1
    integrand + rounding."""
    energy = run.subject
    points, weights = grid(sphere, run.device)
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
    bound_f = (rounding_bound(weights, (log_rho[0],), u / tau, log_rho[0])
               + run.tensor(quad(k_np[0], a) / tau + quad(k_np[0], sup_log[0]) + lv_round[0]
                            + 16 * quadrature.UNIT_ROUNDOFF * (1 + k_np[0] + a / tau)))
    bound_kl = (rounding_bound(weights, (log_rho[0],), log_rho[0], log_rho[1])
                + run.tensor(quad(k_np[0], sup_log[0] + sup_log[1]) + lv_round[0] + lv_round[1]
                             + 16 * quadrature.UNIT_ROUNDOFF * (1 + k_np[0] + k_np[1])))
    return VmfClosedForms(f, f_closed, bound_f, kl, kl_closed, bound_kl)


# == Prop 3.1/3.2: grid identities at random potentials and densities ===========================

#: Random density pairs per potential and tau of the convexity check.
CONVEXITY_PAIRS = Profiled(quick=32, full=128)
#: Random densities per potential and tau of the energy-excess check.
EXCESS_DENSITIES = Profiled(quick=32, full=128)
#: Mirror-descent starts per potential and tau.
DESCENT_STARTS = Profiled(quick=24, full=64)
#: Run until the known rate guarantees F(rho_T) - min F <= this x KL(rho*||rho_0): far above
#: rounding, far below any wrong limit, and still a real (finite-T) convergence statement.
DESCENT_RATE_TARGET = 1e-6


@dataclass(frozen=True)
class ConvexityGap:
    """``t F(rho0) + (1-t) F(rho1) - F(rho_t)`` and the KL mixture, over potentials x taus x
    pairs, with the rounding bound of their difference."""

    gap: torch.Tensor
    kl_mix: torch.Tensor
    bound: torch.Tensor

    def row(self) -> dict:
        return {"max |gap - KL mix|": float((self.gap - self.kl_mix).abs().max()),
                "max rounding bound": float(self.bound.max()), "min gap": float(self.gap.min())}


def measure_convexity_gap(run, setting: LandscapeSetting, generator) -> ConvexityGap:
    energy = run.subject
    weights, u = potentials(setting.potential, POTENTIALS, generator, run.device)
    tau = run.tensor(setting.taus)[None, :, None]  # [1, K, 1]: potentials x taus x pairs
    shape = (POTENTIALS, len(setting.taus), run.pick(CONVEXITY_PAIRS))
    log_r0 = landscape.random_log_density(shape, weights, generator)
    log_r1 = landscape.random_log_density(shape, weights, generator)
    t = 0.05 + 0.9 * torch.rand(shape, generator=generator, dtype=run.dtype, device=run.device)
    log_rt = torch.logaddexp(torch.log(t)[..., None] + log_r0, torch.log1p(-t)[..., None] + log_r1)
    pot = u[:, None, None, :]
    f0, f1, ft = (energy.energy(lr, pot, tau, weights) for lr in (log_r0, log_r1, log_rt))
    kl_mix = (t * landscape.kl_divergence(log_r0, log_rt, weights)
              + (1 - t) * landscape.kl_divergence(log_r1, log_rt, weights))
    bound = rounding_bound(weights, (log_r0, log_r1, log_rt), pot / tau[..., None],
                           log_r0, log_r1, log_rt)
    return ConvexityGap(t * f0 + (1 - t) * f1 - ft, kl_mix, bound)


@dataclass(frozen=True)
class EnergyExcess:
    """``F(rho) - F(rho*)`` and ``KL(rho||rho*)`` at random densities (potentials x taus x
    densities), and ``F(rho*)`` against ``-log Z_tau`` (potentials x taus), with their bounds."""

    excess: torch.Tensor
    kl: torch.Tensor
    bound: torch.Tensor
    minimum: torch.Tensor  # F(rho*)
    log_z: torch.Tensor
    minimum_bound: torch.Tensor

    def row(self) -> dict:
        return {"max |F(rho) - F(rho*) - KL|": float((self.excess - self.kl).abs().max()),
                "max |F(rho*) + log Z|": float((self.minimum + self.log_z).abs().max()),
                "max rounding bound": float(self.bound.max())}


def measure_energy_excess(run, setting: LandscapeSetting, generator) -> EnergyExcess:
    energy = run.subject
    weights, u = potentials(setting.potential, POTENTIALS, generator, run.device)
    tau = run.tensor(setting.taus)
    log_z = gibbs.log_partition_function(u[:, None, :], tau[None, :], weights)  # [P, K]
    log_star = energy.minimizer_log_density(u[:, None, :], tau[None, :], weights)
    log_rho = landscape.random_log_density((POTENTIALS, len(setting.taus),
                                            run.pick(EXCESS_DENSITIES)), weights, generator)
    pot, log_star_b = u[:, None, None, :], log_star[:, :, None, :]
    tau_b = tau[None, :, None]
    excess = (energy.energy(log_rho, pot, tau_b, weights)
              - energy.energy(log_star_b, pot, tau_b, weights))
    kl = landscape.kl_divergence(log_rho, log_star_b, weights)
    bound = rounding_bound(weights, (log_rho, log_star_b), pot / tau_b[..., None], log_rho,
                           log_star_b, log_z[:, :, None, None])
    f_star = energy.energy(log_star, u[:, None, :], tau[None, :], weights)
    bound_star = rounding_bound(weights, (log_star,), u[:, None, :] / tau[None, :, None],
                                log_star, log_z[..., None])
    return EnergyExcess(excess, kl, bound, f_star, log_z, bound_star)


@dataclass(frozen=True)
class MirrorDescent:
    """Mirror descent from random starts (potentials x taus x starts) after ``steps`` steps:
    ``KL(rho_T||rho*)`` and ``F(rho_T)`` (against ``-log Z_tau``), each with the rate bound
    plus rounding."""

    steps: int
    step_size: float
    starts: int
    kl_end: torch.Tensor
    kl_bound: torch.Tensor
    energy: torch.Tensor
    log_z: torch.Tensor  # [P, K, 1]
    energy_bound: torch.Tensor
    rate: torch.Tensor
    spread: torch.Tensor  # of log rho_T across starts

    def row(self) -> dict:
        return {"steps": self.steps, "step_size": self.step_size, "starts": self.starts,
                "max KL(rho_T||rho*)": float(self.kl_end.max()), "max rate bound": float(self.rate.max()),
                "max spread of log rho_T across starts": float(self.spread)}


def descent_steps(step_size: float) -> int:
    """Steps after which the mirror-descent rate is DESCENT_RATE_TARGET x the initial KL."""
    return math.ceil(math.log(DESCENT_RATE_TARGET) / math.log1p(-step_size))


def measure_mirror_descent(run, setting: MirrorDescentSetting, generator) -> MirrorDescent:
    energy = run.subject
    starts = run.pick(DESCENT_STARTS)
    eta = setting.step_size
    steps = descent_steps(eta)
    weights, u = potentials(setting.landscape.potential, POTENTIALS, generator, run.device)
    tau = run.tensor(setting.landscape.taus)
    pot, tau_b = u[:, None, None, :], tau[None, :, None]  # potentials x taus x starts
    log_rho0 = landscape.random_log_density((POTENTIALS, len(setting.landscape.taus), starts),
                                            weights, generator)
    log_rho = landscape.exponentiated_gradient(
        partial(energy.first_variation, potential=pot, tau=tau_b), log_rho0, weights, steps, eta)
    log_star = energy.minimizer_log_density(u[:, None, :], tau[None, :], weights)[:, :, None]
    log_z = gibbs.log_partition_function(u[:, None, :], tau[None, :], weights)[:, :, None]
    rate = landscape.mirror_descent_rate_bound(
        landscape.kl_divergence(log_star, log_rho0, weights), eta, steps)
    kl_end = landscape.kl_divergence(log_rho, log_star, weights)
    kl_bound = rate + rounding_bound(weights, (log_rho, log_star), log_rho, log_star)
    f_end = energy.energy(log_rho, pot, tau_b, weights)
    energy_bound = rate + rounding_bound(weights, (log_rho,), pot / tau_b[..., None], log_rho,
                                         log_z[..., None])
    spread = (log_rho.max(dim=2).values - log_rho.min(dim=2).values).abs().max()
    return MirrorDescent(steps, eta, starts, kl_end, kl_bound, f_end, log_z, energy_bound, rate,
                         spread)


@dataclass(frozen=True)
class ClosedFormDescent:
    """Mirror descent on a linear potential: ``F(rho_T)`` [K, starts] against ``-log V_d(a/tau)``
    [K, 1], bound ``rate + quadrature + rounding``."""

    energy: torch.Tensor
    log_volume: torch.Tensor
    bound: torch.Tensor


def closed_form_descent(run, setting: MirrorDescentSetting, steps: int, starts: int,
                        generator) -> ClosedFormDescent:
    """Same grid, taus, step size and number of steps as the setting's descent:
    ``0 <= F(rho_T) - min_grid F <= rate`` and ``|min_grid F + log V_d| <= -log(1 - e0)``."""
    energy = run.subject
    eta = setting.step_size
    sphere = setting.landscape.potential.sphere
    c = linear_potential(sphere, setting.landscape.taus, run.device, generator)
    weights, u, tau = c.weights, c.u[:, None, :], c.tau[:, None]  # [K, starts, M]
    log_rho0 = landscape.random_log_density((len(c.kappa), starts), weights, generator)
    log_rho = landscape.exponentiated_gradient(
        partial(energy.first_variation, potential=u, tau=tau), log_rho0, weights, steps, eta)
    log_star = gibbs.gibbs_log_density(u, tau, weights)  # the rate's reference point only
    rate = landscape.mirror_descent_rate_bound(
        landscape.kl_divergence(log_star, log_rho0, weights), eta, steps)
    f_end = energy.energy(log_rho, u, tau, weights)
    log_v = run.tensor(vmf.log_kernel_volume(sphere, c.kappa))[:, None]
    bound = (rate + rounding_bound(weights, (log_rho,), u / tau[..., None], log_rho)
             + run.tensor(-np.log1p(-c.z_err) + geo.log_volume_rounding(c.kappa))[:, None])
    return ClosedFormDescent(f_end, log_v, bound)


# == Prop 3.3: concentration as tau -> 0 =========================================================

#: Temperatures of the concentration checks: four decades, down to where the Gibbs density
#: is a few grid nodes wide.
CONCENTRATION_TAUS = np.geomspace(2e-3, 20.0, 33)
#: Sublevel sets {U <= c} of the monotonicity check: c at these quantiles of U on the grid.
SUBLEVEL_QUANTILES = np.linspace(0.02, 0.98, 17)
#: eps of the tail bound as fractions of osc(U).
TAIL_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.4)


@dataclass(frozen=True)
class SublevelRise:
    """Increase of every sublevel mass between consecutive temperatures [P, K - 1, C], and the
    rounding bound of each increase."""

    rise: torch.Tensor
    bound: torch.Tensor

    def row(self) -> dict:
        return {"max increase": float(self.rise.max()), "largest decrease": float(-self.rise.min())}


def measure_sublevel_rise(run, setting: PotentialSetting, generator) -> SublevelRise:
    energy = run.subject
    tau = run.tensor(CONCENTRATION_TAUS)
    weights, u = potentials(setting, 2 * POTENTIALS, generator, run.device)
    levels = torch.quantile(u, run.tensor(SUBLEVEL_QUANTILES), dim=-1).T  # [P, C]
    inside = (u[:, None, :] <= levels[:, :, None]).to(run.dtype)  # [P, C, M]
    log_star = energy.minimizer_log_density(u[:, None, :], tau[None, :], weights)  # [P, K, M]
    mass = (weights * torch.exp(log_star)) @ inside.transpose(-1, -2)  # [P, K, C]
    log_z = gibbs.log_partition_function(u[:, None, :], tau[None, :], weights)
    err = rounding_bound(weights, (log_star,), u[:, None, :] / tau[None, :, None],
                         log_z[..., None])  # [P, K], bounds every mass at (P, K)
    rise = mass[:, 1:, :] - mass[:, :-1, :]
    return SublevelRise(rise, (err[:, 1:] + err[:, :-1])[..., None].expand_as(rise))


@dataclass(frozen=True)
class TailMass:
    """Gibbs mass outside ``A_{m+eps}`` and its bound ``exp(-eps/(2 tau))/mu(A_{m+eps/2})``,
    [P, K, E] over potentials x CONCENTRATION_TAUS x TAIL_FRACTIONS, and the rounding bound of
    their difference."""

    tail: torch.Tensor
    bound: torch.Tensor
    error: torch.Tensor

    def row(self) -> dict:
        return {"tail mass at the smallest tau, per eps": self.tail[:, 0, :].max(0).values.tolist(),
                "its bound": self.bound[:, 0, :].max(0).values.tolist(),
                "tail mass at the largest tau, per eps": self.tail[:, -1, :].max(0).values.tolist()}


def measure_tail_mass(run, setting: PotentialSetting, generator) -> TailMass:
    energy = run.subject
    tau = run.tensor(CONCENTRATION_TAUS)
    fractions = run.tensor(TAIL_FRACTIONS)
    weights, u = potentials(setting, 2 * POTENTIALS, generator, run.device)
    low, high = u.min(-1).values, u.max(-1).values
    eps = fractions[None, :] * (high - low)[:, None]  # [P, E]
    outside = (u[:, None, :] > (low[:, None] + eps)[..., None]).to(run.dtype)  # [P, E, M]
    near = (u[:, None, :] <= (low[:, None] + eps / 2)[..., None]).to(run.dtype)
    log_star = energy.minimizer_log_density(u[:, None, :], tau[None, :], weights)
    tail = (weights * torch.exp(log_star)) @ outside.transpose(-1, -2)  # [P, K, E]
    mu_near = (weights * near).sum(-1)  # [P, E]
    bound = torch.exp(-eps[:, None, :] / (2 * tau[None, :, None])) / mu_near[:, None, :]
    log_z = gibbs.log_partition_function(u[:, None, :], tau[None, :], weights)
    err = rounding_bound(weights, (log_star,), u[:, None, :] / tau[None, :, None],
                         log_z[..., None])[..., None] + quadrature.summation_error_bound(
        bound, weights.shape[-1])
    return TailMass(tail, bound, err)


# == Prop 3.3: entropy as tie-breaker ============================================================


@dataclass(frozen=True)
class LaplaceTieBreak:
    """The predicted low-temperature mass ratio of two equally deep wells ``a_i (1 - <z, m_i>)``.

    Laplace's method integrates over the ``d - tangent_codimension`` tangent directions of
    S^{d-1} at a minimiser: ``ratio -> (a_narrow / a_wide)^{(d - tangent_codimension)/2}``.
    """

    tangent_codimension: int = 1

    def limit_ratio(self, a_wide: float, a_narrow: float, d: int) -> float:
        return (a_narrow / a_wide) ** ((d - self.tangent_codimension) / 2.0)


def _antipodal_wells(c, a_wide, a_narrow):
    """Branches ``a_wide (1 - c)``, ``a_narrow (1 + c)`` of a point with ``c = <z, m>``; U is
    their minimum and the basin of a well is where its branch is the smaller:
    ``(U[M], labels[M])``."""
    branches = torch.stack([a_wide * (1 - c), a_narrow * (1 + c)])
    u, labels = branches.min(0)
    return u, labels


def _basin_masses(n_theta, m, a_wide, a_narrow, tau):
    """Gibbs masses ``sum_k q_k e^{-U_k/tau}`` of the wide and the narrow basin on the
    ``n_theta x 2 n_theta`` Gauss-Legendre x trapezoid grid, per tau: ``[K, 2]`` (unnormalised:
    U >= 0, so every term is <= 1 and nothing over- or underflows)."""
    points, weights = quadrature.sphere_grid(n_theta, 2 * n_theta, device=m.device)
    u, labels = _antipodal_wells(points @ m, a_wide, a_narrow)
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


@dataclass(frozen=True)
class BasinRatio:
    """Basin-mass ratio wide/narrow on an S^2 grid per tau, with its rigorous distance bound to
    the exact ratio ``a_narrow/a_wide``."""

    a_narrow: float
    taus: np.ndarray
    n_theta: int
    ratio: np.ndarray
    bound: np.ndarray

    def row(self, predicted: float) -> dict:
        return {"taus": self.taus.tolist(), "ratio": self.ratio.tolist(),
                "wider well wins at every tau": bool((self.ratio > 1).all()),
                "error bound": self.bound.tolist(), "predicted limit": predicted}


def measure_basin_ratio(run, s: WellPairSetting) -> BasinRatio:
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
    bound = _basin_ratio_bound(ratio, a_narrow / s.a_wide, s.a_wide, a_narrow, boundary, taus,
                               exact, nodes)
    return BasinRatio(a_narrow, taus, n_theta, ratio, bound)


def orthogonal_wells_reproduction(run) -> dict:
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


#: Samples per tau of the pilot that designs the higher-d Monte Carlo (its own seed stream).
PILOT_SAMPLES = 4000
#: The design's per-sample s.d. of the fitted log-limit is the pilot's times this.
PILOT_SAFETY = 1.3
#: Samples per tau one setting may cost; a setting needing more is recorded not applicable.
SAMPLE_CAP = Profiled(quick=400_000, full=2_000_000)


def _ratio_estimate(numerator, denominator):
    """``mean(num)/mean(den)`` over the last axis and its delta-method standard error."""
    n = numerator.shape[-1]
    ratio = numerator.mean(-1) / denominator.mean(-1)
    residual = numerator - ratio[..., None] * denominator
    return ratio, residual.std(-1) / (math.sqrt(n) * denominator.mean(-1))


@dataclass(frozen=True)
class TieBreakFit:
    """The mass ratio wide/narrow per tau (estimate, s.e.) and the fit ``log ratio(tau) =
    log L + b tau + c tau^2``."""

    fit: stats.Fit
    ratio: np.ndarray
    se: np.ndarray


def _tie_break_fit(run, d, a_wide, a_narrow, taus, n, gen) -> TieBreakFit:
    """Importance-sampled mass ratio wide/narrow at each tau and the fit of its log-limit.

    Importance sampling from the equal mixture q of the two wells' vMF laws. In its own basin
    a well's weight e^{-U/tau}/q is at most 2 V_d(a/tau) e^{-a/tau}: bounded weights, so the
    delta-method standard error of the ratio is reliable. Fit ``log ratio(tau) = log L + b tau
    + c tau^2``: on the log scale the standard error ~ se/ratio does not grow with the estimate
    itself (weighting by the estimate's own se would favour low estimates and bias L down).

    U, the basins and q see a point z only through ``c = <z, m>``, m the wide well's axis: the
    draws are of c alone, z's coordinate on that axis (:mod:`.vmf_span`, one span coordinate),
    O(1) per draw in any d (the d-vectors were [K, n, d] floats: 1.9 GB at the full profile's
    largest setting, and a tangent direction nothing read).
    """
    tau = run.tensor(taus)[:, None]  # [K, 1]
    kappas = torch.stack([a_wide / tau, a_narrow / tau], dim=-1)  # [K, 1, 2]
    comp = (torch.rand(len(taus), n, generator=gen, dtype=run.dtype, device=run.device)
            < 0.5).long()  # [K, n]
    kappa = torch.gather(kappas.expand(-1, n, -1), -1, comp[..., None])[..., 0]
    wells = run.tensor([[1.0], [-1.0]])  # the wells' means on the axis: m and -m
    c = vmf_span.sample_vmf_span(wells[comp], kappa, 1, d, gen)[..., 0, 0]  # [K, n]
    u, labels = _antipodal_wells(c, a_wide, a_narrow)
    on_axis = c[..., None]
    log_q = torch.logaddexp(vmf.vmf_log_density(on_axis, wells[0], kappas[..., 0], d=d),
                            vmf.vmf_log_density(on_axis, wells[1], kappas[..., 1], d=d)) - math.log(2.0)
    log_w = -u / tau - log_q
    w = torch.exp(log_w - log_w.max(-1, keepdim=True).values)
    ratio, se = _ratio_estimate(w * (labels == 0), w * (labels == 1))
    ratio, se = ratio.cpu().numpy(), se.cpu().numpy()
    design = np.stack([np.ones_like(taus), taus, taus**2], axis=1)
    return TieBreakFit(stats.weighted_least_squares(design, np.log(ratio), se / ratio), ratio, se)


@dataclass(frozen=True)
class TieBreakDesign:
    """One higher-d setting's temperatures and samples per tau, fixed from a pilot
    before the decisive sample is drawn."""

    d: int
    a_wide: float
    a_narrow: float
    beta: float  # (4 nu^2 - 1)/8, nu = d/2 - 1: the Hankel correction of V_d
    taus: np.ndarray
    samples: int


def plan_tie_break(run, i: int, s: HighDimWellPairSetting, margin: float, rate: float,
                   gen) -> TieBreakDesign | None:
    """Samples per tau from a pilot that measures the per-sample s.d. of the fitted log-limit,
    times PILOT_SAFETY, through stats.min_num_samples; a setting beyond SAMPLE_CAP is recorded
    not applicable."""
    d, a_wide, a_narrow = s.dim, s.a_wide, s.a_wide * s.ratio
    # The correction to the limit is a series in beta tau / a, beta = (4 nu^2 - 1)/8 (the
    # Hankel expansion of V_d): tau <= 0.2 a / max(beta, 2) keeps the quadratic fit's
    # truncation below 1e-4 relative and e^{-U_b/tau} below 1e-3, both far under the margin.
    nu = d / 2 - 1
    beta = (4 * nu**2 - 1) / 8
    taus = 0.2 * a_wide / max(beta, 2.0) * np.array([1.0, 0.6, 0.35, 0.2, 0.125])
    pilot = _tie_break_fit(run, d, a_wide, a_narrow, taus, PILOT_SAMPLES, gen).fit
    sigma = PILOT_SAFETY * pilot.standard_error[0] * math.sqrt(PILOT_SAMPLES)
    n = stats.min_num_samples(sigma, margin, rate, run.false_pass_rate, kind="equivalent")
    cap = run.pick(SAMPLE_CAP)
    if n > cap:
        run.not_applicable(f"d={d}: the design needs {n} samples per tau (> {cap})", i)
        return None
    return TieBreakDesign(d, a_wide, a_narrow, beta, taus, n)


def measure_tie_break(run, design: TieBreakDesign, gen) -> TieBreakFit:
    """The decisive sample: ``design.samples`` per tau, on the generator the pilot advanced."""
    return _tie_break_fit(run, design.d, design.a_wide, design.a_narrow, design.taus,
                          design.samples, gen)


def tie_break_row(design: TieBreakDesign, measured: TieBreakFit, predicted: float) -> dict:
    fit = measured.fit
    # Hankel: V_d(x) e^{-x} ~ x^{-(d-1)/2} (1 - beta/x), so d log ratio/dtau -> -beta (1/a1 - 1/a2)
    hankel_slope = -design.beta * (1 / design.a_wide - 1 / design.a_narrow)
    return {
        "d": design.d, "taus": design.taus.tolist(), "samples_per_tau": design.samples,
        "ratio": measured.ratio.tolist(), "se": measured.se.tolist(),
        "wider well wins at every tau": bool((measured.ratio > 1).all()),
        "fitted limit": math.exp(fit.coef[0]), "limit relative se": float(fit.standard_error[0]),
        "predicted limit": predicted, "fitted log slope": float(fit.coef[1]),
        "Hankel log slope -beta (1/a1 - 1/a2)": hankel_slope, "chi2/dof": fit.chi2 / fit.dof}
