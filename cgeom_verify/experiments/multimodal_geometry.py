"""Experiment machinery of the multimodal-geometry claims (``claims/multimodal_geometry.py``:
paper Prop 4.1, 4.2).

The energy under test with the switches its controls flip (PAPER and its mutants), the
settings and their Hypothesis strategies, the quadrature grids and random densities, and the
measurements, each returned with the rigorous bound of its numerical error (quadrature and
float64 rounding, from the shared precision model of :mod:`cgeom_verify.kernels.quadrature`)
as typed results from which the sheet builds its decisions, records and figures. Nothing here
samples noise: given its generator, every measurement is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import hypothesis.strategies as st
import numpy as np
import torch
from scipy import special

from cgeom_verify import Profiled
from cgeom_verify.kernels import divergence_geometry as geo
from cgeom_verify.kernels import floored_simplex, gibbs, quadrature, vmf

# == the implementation under test ===============================================================


@dataclass(frozen=True)
class CrossCoupledEnergy:
    """The multimodal intrinsic energy as Prop 4.1/4.2 state it.

    * ``divergence_sign`` — coefficient of the symmetric divergence in the decomposition
      of the partition term (-1 in the paper);
    * ``self_entropy_weight`` — weight of ``-H(rho1)`` in the coordinate energy: 0 in the
      multimodal functional, 1 restores the unimodal ``F = U/tau - H`` (a mutant);
    * ``density_floor`` — whether rho1 is kept on ``P_delta`` (delta > 0); False drops the
      floor (delta = 0), which Prop 4.2 excludes.
    """

    divergence_sign: float = -1.0
    self_entropy_weight: float = 0.0
    density_floor: bool = True

    def partition_term(self, log_p, log_q, weights, log_p_seen=None, log_q_seen=None):
        """``-(H(p) + H(q))/2 - (KL(p||q') + KL(q||p'))/2``, Prop 4.1's form of
        ``(1/2)∫p log q' + (1/2)∫q log p'`` (q' = q when sharp, k*q when smoothed)."""
        log_q_seen = log_q if log_q_seen is None else log_q_seen
        log_p_seen = log_p if log_p_seen is None else log_p_seen
        entropies = geo.entropy(log_p, weights) + geo.entropy(log_q, weights)
        divergence = 0.5 * (geo.kl_divergence(log_p, log_q_seen, weights)
                            + geo.kl_divergence(log_q, log_p_seen, weights))
        return -0.5 * entropies + self.divergence_sign * divergence

    def coordinate_energy(self, rho1, rho2, potential, tau, weights, smoother=None):
        """Prop 4.2's ``G(rho1) = (1/tau)∫U1 rho1 + partition term`` (``- w H(rho1)`` if restored).

        ``smoother`` is the grid's ``k_tau *`` (a matrix) for the energy before sharpening.
        """
        log1, log2 = torch.log(rho1), torch.log(rho2).expand_as(rho1)
        seen1, seen2 = log1, log2
        if smoother is not None:
            seen1 = torch.log(rho1 @ smoother.T)
            seen2 = torch.log(rho2 @ smoother.T).expand_as(rho1)
        alignment = (weights * potential * rho1).sum(-1) / tau
        return (alignment + self.partition_term(log1, log2, weights, seen1, seen2)
                - self.self_entropy_weight * geo.entropy(log1, weights))


PAPER = CrossCoupledEnergy()
SIGN_FLIP = replace(PAPER, divergence_sign=+1.0)
UNIMODAL = replace(PAPER, self_entropy_weight=1.0)
NO_FLOOR = replace(PAPER, density_floor=False)

# == grids, random densities, precision ==========================================================

#: S^1: 256 equispaced nodes (exact for trigonometric degree 255); S^2: 32 x 64 Gauss-Legendre
#: x equispaced nodes (exact for spherical degree min(2*32 - 1, 64 - 1) = 63).
FINE = {2: (256,), 3: (32, 64)}
#: Cells of the floored simplex: few enough that random points explore P_delta.
CELLS = {2: (48,), 3: (5, 10)}
#: Kernel temperatures of the sharpening limit: 1e-2 halving down to 1.6e-4, so that
#: 1/tau + kappa stays inside log_kernel_volume's stated range (x <= 1e4).
SHARPENING_TAUS = 0.01 * 2.0 ** -np.arange(7)


def _grid(d: int, shape: tuple[int, ...], device, refine: int = 1):
    """Nodes, weights and the degree the rule integrates exactly."""
    shape = tuple(refine * s for s in shape)
    return (*quadrature.grid(d, shape, device=device), quadrature.exact_degree(d, shape))


def _uniform(shape, gen, device):
    return torch.rand(shape, generator=gen, dtype=torch.float64, device=device)


def _random_mixtures(d, count, components, kappa_max, gen):
    """``count`` vMF mixtures (:func:`vmf.random_mixture`): uniform means, kappas
    U(0, kappa_max), Dirichlet(1) weights; as ``(means, kappas, log weights)``."""
    means, kappas, weights = vmf.random_mixture((count,), components, d, gen, kappa_max=kappa_max)
    return means, kappas, torch.log(weights)


def _grid_rounding(weights, *terms, sums: int):
    """Rounding bound of a combination of ``sums`` grid sums whose terms are bounded by
    ``w * sum |terms|``: each sum errs by at most gamma_{P+16} times that magnitude (the shared
    precision model, :func:`quadrature.grid_sum_error_bound`) and combining the results adds
    ``sums`` u of it."""
    abs_terms = weights * sum(t.abs() for t in terms)
    return sums * (quadrature.grid_sum_error_bound(abs_terms)
                   + quadrature.UNIT_ROUNDOFF * abs_terms.sum(-1))


def _closed_form_rounding(kappa):
    """Rounding of ``vmf_expected_log``: one log volume plus products of O(kappa) factors."""
    return geo.log_volume_rounding(kappa) + 8 * quadrature.UNIT_ROUNDOFF * (1 + kappa)


@dataclass(frozen=True)
class Bounded:
    """Values computed on a grid (a batch) and rigorous bounds of their numerical error
    (quadrature and rounding), elementwise."""

    value: torch.Tensor
    bound: torch.Tensor


def min_median_max(values) -> list[float]:
    return [float(values.min()), float(values.median()), float(values.max())]


# == Prop 4.1: the decomposition ==================================================================


@dataclass(frozen=True)
class DensityFamily:
    """Random densities on S^{d-1} (d = 2 or 3): vMF mixtures, or cell values above a floor."""

    d: int
    family: str  # "vmf-mixture" | "floored-cells"
    components: int
    kappa_max: float
    floor: float


def density_families():
    return st.builds(DensityFamily, d=st.sampled_from((2, 3)),
                     family=st.sampled_from(("vmf-mixture", "floored-cells")),
                     components=st.integers(1, 4), kappa_max=st.floats(0.5, 12.0),
                     floor=st.floats(0.01, 0.9))


#: Density pairs per setting.
DECOMPOSITION_PAIRS = Profiled(quick=64, full=256)


@dataclass(frozen=True)
class DecompositionMeasurement:
    """One setting on its fine grid: the direct cross term minus the subject's decomposition at
    random density pairs (``identity``), their D_S, and the decomposition at single-vMF pairs
    minus the closed-form cross term (``closed_form``)."""

    identity: Bounded
    divergence: torch.Tensor
    closed_form: Bounded


def measure_decomposition(run, s: DensityFamily, gen) -> DecompositionMeasurement:
    batch = run.pick(DECOMPOSITION_PAIRS)
    grid = _grid(s.d, FINE[s.d], run.device)
    points, weights, _ = grid
    if s.family == "vmf-mixture":
        mixtures = _random_mixtures(s.d, 2 * batch, s.components, s.kappa_max, gen)
        log_rho = geo.vmf_mixture_log_density(points, *mixtures)
    else:
        log_rho = torch.log(floored_simplex.sample_floored(weights, s.floor, 2 * batch, gen))
    log_p, log_q = log_rho[:batch], log_rho[batch:]
    direct = geo.cross_term(log_p, log_q, weights)
    decomposed = run.subject.partition_term(log_p, log_q, weights)
    return DecompositionMeasurement(
        Bounded(direct - decomposed, _decomposition_rounding(log_p, log_q, weights)),
        geo.symmetric_divergence(log_p, log_q, weights),
        _single_vmf_closed_form(run, s, grid, batch, gen))


def _decomposition_rounding(log_p, log_q, weights):
    """2 sums (direct) + 4 sums (two entropies, two KL), terms <= 2 w (p+q)(|log p|+|log q|)."""
    magnitude = 2 * (log_p.exp() + log_q.exp()) * (log_p.abs() + log_q.abs())
    return _grid_rounding(weights, magnitude, sums=6)


def _single_vmf_closed_form(run, s, grid, batch, gen) -> Bounded:
    """The decomposition on the grid vs the closed form of ``(1/2)∫p log q + (1/2)∫q log p``.

    Precision: the derived quadrature bound of each ``∫ vMF log vMF`` (an exponential times a
    degree-1 polynomial, ``exp_polynomial_quadrature_bound``) + rounding on both sides.
    """
    points, weights, exact_degree = grid
    means, kappas, log_w = _random_mixtures(s.d, 2 * batch, 1, s.kappa_max, gen)
    log_rho = geo.vmf_mixture_log_density(points, means, kappas, log_w)
    log_p, log_q = log_rho[:batch], log_rho[batch:]
    m, k = means[:, 0].cpu().numpy(), kappas[:, 0].cpu().numpy()
    (mp, mq), (kp, kq) = (m[:batch], m[batch:]), (k[:batch], k[batch:])
    closed = 0.5 * (geo.vmf_expected_log(s.d, mp, kp, mq, kq)
                    + geo.vmf_expected_log(s.d, mq, kq, mp, kp))

    def quadrature_error(k_density, k_log):  # sup |log vMF(., k_log)| = k_log + log V(k_log)
        sup = k_log + vmf.log_kernel_volume(s.d, k_log)
        return quadrature.exp_polynomial_quadrature_bound(k_density, 1, sup, exact_degree, s.d)

    analytic = (0.5 * (quadrature_error(kp, kq) + quadrature_error(kq, kp))
                + _closed_form_rounding(kp) + _closed_form_rounding(kq))
    precision = _decomposition_rounding(log_p, log_q, weights) + run.tensor(analytic)
    decomposed = run.subject.partition_term(log_p, log_q, weights)
    return Bounded(decomposed - run.tensor(closed), precision)


# == Prop 4.1: persistence under kernel sharpening ===============================================


@dataclass(frozen=True)
class MixturePair:
    """Two independent vMF mixtures of ``components`` components on S^{d-1}."""

    d: int
    components: int
    kappa_max: float


def mixture_pairs():
    return st.builds(MixturePair, d=st.sampled_from((2, 3)), components=st.integers(1, 3),
                     kappa_max=st.floats(1.0, 12.0))


#: Mixture pairs per setting.
SHARPENING_PAIRS = Profiled(quick=8, full=32)


@dataclass(frozen=True)
class SharpeningTerms:
    """Smoothed minus sharp partition term (``error``), its first order ``c1 tau``
    (``leading``), the bracket ``[lo, hi]`` of the remainder, the rounding and how far the
    remainder leaves its bracket (``excess``), all ``[batch, T]`` over ``taus``."""

    taus: torch.Tensor
    error: torch.Tensor
    leading: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    rounding: torch.Tensor
    excess: torch.Tensor

    def rate_curve(self, label: str, pair: int) -> tuple:
        """One pair's |smoothed - sharp| against tau, for :func:`cgeom_verify.figures.rate_series`
        in units of its first-order constant |c1|."""
        return (label, SHARPENING_TAUS, self.error[pair].abs().tolist(), None,
                float(self.leading[pair, 0].abs() / self.taus[0]))


@dataclass(frozen=True)
class SharpeningMeasurement:
    """One setting: the sharpening terms of its mixture pairs, and D_S(q1, q2) with its
    a-posteriori error."""

    terms: SharpeningTerms
    divergence: Bounded


def measure_sharpening(run, s: MixturePair, gen) -> SharpeningMeasurement:
    batch = run.pick(SHARPENING_PAIRS)
    taus = run.tensor(SHARPENING_TAUS)
    points, weights, _ = _grid(s.d, FINE[s.d], run.device)
    mixtures = _random_mixtures(s.d, 2 * batch, s.components, s.kappa_max, gen)
    log_q = geo.vmf_mixture_log_density(points, *mixtures)
    expansion = geo.sharpening_expansion(points, *mixtures, taus)
    return SharpeningMeasurement(
        _sharpening_terms(run.subject, log_q, expansion, weights, batch, taus),
        _persistent_divergence(run, s, mixtures, log_q, weights, batch))


def _sharpening_terms(subject, log_q, expansion, weights, batch, taus) -> SharpeningTerms:
    log1, log2 = log_q[:batch, None], log_q[batch:, None]
    ratio1, ratio2 = expansion.log_ratio[:batch], expansion.log_ratio[batch:]
    smoothed = geo.cross_term(log1, log2, weights, log1 + ratio1, log2 + ratio2)
    sharp = subject.partition_term(log_q[:batch], log_q[batch:], weights)
    p1, p2 = log1.exp(), log2.exp()

    def paired(field):  # (1/2)∫q1 f[q2] + (1/2)∫q2 f[q1]
        return 0.5 * ((weights * p1 * field[batch:]).sum(-1)
                      + (weights * p2 * field[:batch]).sum(-1))

    first = expansion.first_order
    magnitude = (p1 + p2) * (log1.abs() + log2.abs() + ratio1.abs() + ratio2.abs()
                             + first[:batch].abs() + first[batch:].abs())
    # 2 sums (smoothed) + 4 (sharp) + 2 (leading), and the propagated error of the log ratios.
    rounding = paired(expansion.rounding) + _grid_rounding(weights, magnitude, sums=8)
    error, leading = smoothed - sharp[:, None], paired(first)
    lo, hi = paired(expansion.remainder_lo), paired(expansion.remainder_hi)
    remainder = error - leading
    excess = torch.relu(remainder - hi) + torch.relu(lo - remainder)
    return SharpeningTerms(taus, error, leading, lo, hi, rounding, excess)


@dataclass(frozen=True)
class LeadingCoefficient:
    """Per pair: c1 by the Laplacian formula (``derived``), the tau -> 0 limit of
    ``(smoothed - sharp)/tau`` by Richardson extrapolation (``extrapolated``) and the latter's
    error estimate (``uncertainty``)."""

    derived: torch.Tensor
    extrapolated: torch.Tensor
    uncertainty: torch.Tensor

    def row(self, usable: torch.Tensor) -> dict:
        return {"c1_derived": [float(v) for v in self.derived],
                "c1_extrapolated": [float(v) for v in self.extrapolated],
                "extrapolation_error_estimate": [float(v) for v in self.uncertainty],
                "usable": [bool(v) for v in usable]}


def leading_coefficient(terms: SharpeningTerms) -> LeadingCoefficient:
    """The derived ``c1 = (1/4)[∫q1 Δq2/q2 + ∫q2 Δq1/q1]`` (the Laplacian formula,
    :func:`geo.vmf_mixture_laplacian_ratio`) and an independent value, the tau -> 0 limit of
    ``(smoothed - sharp)/tau`` computed from the exact closed-form smoothing (Bessel volumes of
    ``|z/tau + k m|``, no Laplacian anywhere) by Richardson extrapolation over the two smallest
    tau: ``R(tau) = 2 e(tau)/tau - e(2 tau)/(2 tau) = c1 + O(tau^2)``. Its error is estimated by
    ``|R(tau) - R(2 tau)|`` plus the rounding."""
    error, t = terms.error, terms.taus
    c1 = terms.leading[:, 0] / t[0]  # the first-order term is exactly linear in tau
    r_small = 2 * error[:, -1] / t[-1] - error[:, -2] / t[-2]
    r_next = 2 * error[:, -2] / t[-2] - error[:, -3] / t[-3]
    uncertainty = (r_small - r_next).abs() + 3 * terms.rounding[:, -1] / t[-1]
    return LeadingCoefficient(c1, r_small, uncertainty)


@dataclass(frozen=True)
class SharpeningExponent:
    """Per pair: the OLS slope of log|error| on log tau, the derived bound on |slope - 1|, and
    whether the first order dominates (``usable``); ``row`` is the record."""

    slope: torch.Tensor
    bound: torch.Tensor
    usable: torch.Tensor
    row: dict


def sharpening_exponent(terms: SharpeningTerms) -> SharpeningExponent:
    """OLS slope of log|error| on log tau, and a derived bound on |slope - 1|.

    error = c1 tau (1 + r/(c1 tau)) with r in [lo - rounding, hi + rounding], so
    log|error| = log|c1| + log tau + eps_j, |eps_j| <= delta_j, and the OLS slope is
    1 + sum_j h_j eps_j. Pairs where |r| may reach |c1 tau|/2 (c1 ~ 0) are not usable.
    """
    taus = terms.taus
    x = torch.log(taus)
    h = (x - x.mean()) / ((x - x.mean()) ** 2).sum()
    leading = terms.leading
    ends = torch.stack([terms.lo - terms.rounding, terms.hi + terms.rounding]) / leading
    usable = ends.abs().amax(dim=(0, -1)) < 0.5
    delta = torch.log1p(ends).abs().amax(dim=0)
    slope = (h * torch.log(terms.error.abs())).sum(-1)
    bound = (h.abs() * delta).sum(-1)
    row = {
        "taus": [float(t) for t in taus],
        "measured_exponent": [float(v) for v in slope],
        "exponent_bound": [float(v) if ok else None for v, ok in zip(bound, usable, strict=True)],
        "c1_derived": [float(v) for v in (leading / taus)[:, 0]],
        "error_over_tau_at_smallest_tau": [float(v) for v in (terms.error / taus)[:, -1]],
        "error_curve_pair0": [float(v) for v in terms.error[0]],
    }
    return SharpeningExponent(slope, bound, usable, row)


def _persistent_divergence(run, s, mixtures, log_q, weights, batch) -> Bounded:
    """``D_S(q1, q2)`` on the grid with an a-posteriori quadrature error.

    The error estimate is |D_S(grid) - D_S(grid refined 2x)| (the rules converge
    spectrally, so the refined value is far more accurate) plus float64 rounding.
    """
    points_fine, weights_fine, _ = _grid(s.d, FINE[s.d], run.device, refine=2)
    log_fine = geo.vmf_mixture_log_density(points_fine, *mixtures)
    divergence = geo.symmetric_divergence(log_q[:batch], log_q[batch:], weights)
    refined = geo.symmetric_divergence(log_fine[:batch], log_fine[batch:], weights_fine)
    p = log_q.exp()
    magnitude = (p[:batch] + p[batch:]) * (log_q[:batch].abs() + log_q[batch:].abs())
    # The rules converge geometrically on these analytic integrands, so the 2x-refined value
    # is far more accurate; 10x the observed change covers the coarse rule's error.
    error = 10 * (divergence - refined).abs() + _grid_rounding(weights, magnitude, sums=2)
    return Bounded(divergence, error)


# == Prop 4.1 corollary: pairwise alignment does not control the marginals =======================


@dataclass(frozen=True)
class CouplingFamily:
    """Couplings of vM(0, kappa) on S^1 with a rotated or reflected copy; ``tau`` is J_mm's."""

    kappa: float
    tau: float


def coupling_families():
    return st.builds(CouplingFamily, kappa=st.floats(0.5, 12.0), tau=st.floats(0.05, 1.0))


#: Random couplings (values of cos c) per setting.
COUPLING_PAIRS = Profiled(quick=8, full=32)


@dataclass(frozen=True)
class CouplingPair:
    """The two couplings for a batch of cos c on the S^1 grid: densities ``log_q[3, B, P]`` of
    q1 = vM(0,k), q2^A = vM(phi,k), q2^B = vM(c,k) and their vMF parameters; the alignments
    E_X[s] by quadrature with their precision; the closed-form D_S^X = k A1(k) (1 - cos angle)."""

    kappa: float
    points: torch.Tensor
    weights: torch.Tensor
    exact_degree: int
    log_q: torch.Tensor
    means: torch.Tensor
    kappas: torch.Tensor
    log_w: torch.Tensor
    cos_c: torch.Tensor
    alignment: torch.Tensor
    alignment_precision: torch.Tensor
    divergence: torch.Tensor

    def row(self) -> dict:
        return {"kappa": self.kappa, "cos_c": [float(v) for v in self.cos_c],
                "E_s": [float(v) for v in self.alignment[0]],
                "D_S_A": [float(v) for v in self.divergence[0]],
                "D_S_B": [float(v) for v in self.divergence[1]]}


def coupling_pair(run, s: CouplingFamily, gen) -> CouplingPair:
    """The two couplings for random cos c = +-U(0.1, 0.95) on the S^1 grid."""
    batch = run.pick(COUPLING_PAIRS)
    points, weights, exact_degree = _grid(2, FINE[2], run.device)
    k = s.kappa
    a2 = float(special.ive(2, k) / special.ive(0, k))  # I2/I0 = E cos 2 theta
    sign = torch.where(_uniform(batch, gen, run.device) < 0.5, -1.0, 1.0)
    cos_c = sign * (0.1 + 0.85 * _uniform(batch, gen, run.device))
    c, phi = torch.arccos(cos_c), torch.arccos(cos_c * a2)
    angles = torch.stack([torch.zeros_like(phi), phi, c])
    means = torch.stack([torch.cos(angles), torch.sin(angles)], -1)[:, :, None, :]
    kappas = torch.full((3, batch, 1), k, dtype=torch.float64, device=run.device)
    log_w = torch.zeros_like(kappas)
    log_q = geo.vmf_mixture_log_density(points, means, kappas, log_w)
    theta = torch.atan2(points[:, 1], points[:, 0])
    q1 = log_q[0].exp()
    # s(z, w) = cos(angle between z and w): phi for A, 2 theta - c for B.
    alignment = torch.stack([(weights * q1 * torch.cos(phi)[:, None]).sum(-1),
                             (weights * q1 * torch.cos(2 * theta - c[:, None])).sum(-1)])
    quad = float(quadrature.exp_polynomial_quadrature_bound(k, 2, 1.0, exact_degree, 2))
    a1 = float(vmf.mean_resultant_length(2, k))
    return CouplingPair(k, points, weights, exact_degree, log_q, means, kappas, log_w, cos_c,
                        alignment, 2 * quad + _grid_rounding(weights, q1, sums=2),
                        torch.stack([k * a1 * (1 - torch.cos(phi)), k * a1 * (1 - cos_c)]))


def sharp_separation(subject, s: CouplingFamily, pair: CouplingPair) -> Bounded:
    """J_A - J_B (sharp kernel, the subject's partition term) + (D_S^A - D_S^B), 0 exactly."""
    weights, log_q, k = pair.weights, pair.log_q, s.kappa
    partition = torch.stack([subject.partition_term(log_q[0], log_q[j], weights) for j in (1, 2)])
    objective = -pair.alignment / s.tau + partition
    sup_log = k + float(vmf.log_kernel_volume(2, k))  # sup |log vM(., k)|
    quad = float(quadrature.exp_polynomial_quadrature_bound(k, 1, sup_log, pair.exact_degree, 2))
    magnitude = 2 * log_q.exp().sum(0) * log_q.abs().sum(0)
    precision = (pair.alignment_precision / s.tau + 2 * quad
                 + _grid_rounding(weights, magnitude, sums=12) + 4 * _closed_form_rounding(k))
    divergence_gap = pair.divergence[0] - pair.divergence[1]
    return Bounded(objective[0] - objective[1] + divergence_gap, precision)


def divergence_gap(pair: CouplingPair) -> Bounded:
    """|D_S^A - D_S^B| on the grid; KL integrands are vM x (degree 1, sup 2 kappa)."""
    weights, log_q, k = pair.weights, pair.log_q, float(pair.kappas.max())
    divergence = torch.stack([geo.symmetric_divergence(log_q[0], log_q[j], weights)
                              for j in (1, 2)])
    gap = (divergence[0] - divergence[1]).abs()
    quad = 4 * float(quadrature.exp_polynomial_quadrature_bound(k, 1, 2 * k, pair.exact_degree, 2))
    rounding = _grid_rounding(weights, log_q.exp().sum(0) * log_q.abs().sum(0), sums=8)
    return Bounded(gap, quad + rounding)


@dataclass(frozen=True)
class SmoothedSeparation:
    """J_tau^A - J_tau^B per pair and tau of the sharpening grid (``objective_gap``, [B, T]),
    oriented by -sign(D_S^A - D_S^B), with its precision (rounding and alignment)."""

    taus: torch.Tensor
    objective_gap: torch.Tensor
    oriented: torch.Tensor
    precision: torch.Tensor

    def row(self) -> dict:
        """Pair 0's separation against tau."""
        return {"taus": [float(t) for t in self.taus],
                "separation": [float(v) for v in self.objective_gap[0]]}


def smoothed_separation(run, pair: CouplingPair) -> SmoothedSeparation:
    taus, weights, log_q = run.tensor(SHARPENING_TAUS), pair.weights, pair.log_q
    flat = [getattr(pair, key).flatten(0, 1) for key in ("means", "kappas", "log_w")]
    expansion = geo.sharpening_expansion(pair.points, *flat, taus)
    ratio = expansion.log_ratio.unflatten(0, log_q.shape[:2])  # [3, B, T, P]
    lq = log_q[:, :, None]
    smoothed = torch.stack([geo.cross_term(lq[0], lq[j], weights, lq[0] + ratio[0],
                                           lq[j] + ratio[j]) for j in (1, 2)])
    align_gap = pair.alignment[0] - pair.alignment[1]
    objective_gap = -align_gap[:, None] / taus + smoothed[0] - smoothed[1]  # [B, T]
    oriented = -torch.sign(pair.divergence[0] - pair.divergence[1])[:, None] * objective_gap
    magnitude = 4 * log_q.exp().sum(0)[:, None] * (lq.abs().sum(0) + ratio.abs().sum(0))
    precision = (pair.alignment_precision[:, None] / taus
                 + _grid_rounding(weights, magnitude, sums=4))
    return SmoothedSeparation(taus, objective_gap, oriented, precision)


# == Prop 4.2: the coordinate problem on the floored simplex =====================================


@dataclass(frozen=True)
class FlooredSetting:
    """A coordinate problem on the cells of S^{d-1}: floor delta, alignment temperature tau,
    kernel temperature (0 = sharp), number of potential wells (0 = no alignment), and the
    concentration scale of the fixed other modality rho2."""

    d: int
    floor: float
    tau: float
    kernel_tau: float
    wells: int
    kappa_max: float


def floored_settings(floor_max: float):
    return st.builds(FlooredSetting, d=st.sampled_from((2, 3)), floor=st.floats(0.02, floor_max),
                     tau=st.floats(0.2, 4.0),
                     kernel_tau=st.one_of(st.just(0.0), st.floats(0.1, 0.5)),
                     wells=st.integers(0, 2), kappa_max=st.floats(0.5, 8.0))


@dataclass(frozen=True)
class CoordinateProblem:
    """Cell masses, the fixed rho2 (> 0), the potential U1, the smoother (None = sharp) and the
    alignment temperature of one setting's G."""

    weights: torch.Tensor
    rho2: torch.Tensor
    potential: torch.Tensor
    smoother: torch.Tensor | None
    tau: float

    def energy(self, subject):
        """``rho1 -> G(rho1)`` of the subject."""
        return partial(subject.coordinate_energy, rho2=self.rho2, potential=self.potential,
                       tau=self.tau, weights=self.weights, smoother=self.smoother)

    def rounding(self, rho1):
        """Rounding bound of ``G(rho1)``."""
        return _energy_rounding(self.weights, rho1, self.rho2, self.potential, self.tau,
                                self.smoother)


def coordinate_problem(run, s: FlooredSetting, gen) -> CoordinateProblem:
    """The fixed rho2 a vMF mixture, U1 a mixture of ``s.wells`` wells (0 without)."""
    points, weights, _ = _grid(s.d, CELLS[s.d], run.device)
    mixture = _random_mixtures(s.d, 1, 2, s.kappa_max, gen)
    rho2 = geo.vmf_mixture_log_density(points, *mixture).exp()[0]
    potential = torch.zeros_like(weights)
    if s.wells > 0:
        wells = vmf.sample_uniform_sphere((s.wells,), s.d, gen)
        equal = torch.full_like(wells[:, 0], 1 / s.wells)
        potential = gibbs.mixture_potential(points, wells, equal, 5.0)
    smoother = geo.smoothing_matrix(points, weights, s.kernel_tau) if s.kernel_tau > 0 else None
    return CoordinateProblem(weights, rho2, potential, smoother, s.tau)


def _seen(rho, smoother):
    return rho if smoother is None else rho @ smoother.T


def _energy_rounding(weights, rho1, rho2, potential, tau, smoother):
    """Rounding bound of ``coordinate_energy``: at most 8 grid sums (alignment, two entropies,
    two KL, self-entropy) of terms bounded by these magnitudes."""
    logs = (torch.log(rho1).abs() + torch.log(rho2).abs()
            + torch.log(_seen(rho1, smoother)).abs() + torch.log(_seen(rho2, smoother)).abs())
    return _grid_rounding(weights, rho1 * potential / tau, (rho1 + rho2) * logs, sums=8)


def coordinate_closed_form(run, s: FlooredSetting, gen, pairs: int = 16) -> Bounded:
    """The subject's sharp coordinate energy G on the check's own cell grid, at single-vMF rho1,
    rho2 and a linear U1 = -b <z, u>, minus its closed form:

    ``G = -(b/tau) A_d(k1) <u, m1> + (1/2)∫vMF1 log vMF2 + (1/2)∫vMF2 log vMF1``, the last two
    by :func:`geo.vmf_expected_log`. Precision: the derived quadrature bound of each vMF x
    polynomial integrand on the grid (degree 1, k <= 1) plus rounding on both sides.
    """
    points, weights, exact = _grid(s.d, CELLS[s.d], run.device)
    means = vmf.sample_uniform_sphere((2, pairs), s.d, gen)
    kappas = 0.2 + 0.8 * _uniform((2, pairs), gen, run.device)
    u = vmf.sample_uniform_sphere((pairs,), s.d, gen)
    b = 1.0
    log_rho = geo.vmf_mixture_log_density(points, means[..., None, :], kappas[..., None],
                                          torch.zeros_like(kappas)[..., None])  # [2, B, P]
    rho1, rho2 = log_rho[0].exp(), log_rho[1].exp()
    potential = -b * (u @ points.T)  # [B, P]
    energy = run.subject.coordinate_energy(rho1, rho2, potential, s.tau, weights)
    m, k = means.cpu().numpy(), kappas.cpu().numpy()
    align = -(b / s.tau) * vmf.mean_resultant_length(s.d, k[0]) * np.sum(u.cpu().numpy() * m[0], -1)
    closed = align + 0.5 * (geo.vmf_expected_log(s.d, m[0], k[0], m[1], k[1])
                            + geo.vmf_expected_log(s.d, m[1], k[1], m[0], k[0]))

    def quad(k_density, sup):
        return quadrature.exp_polynomial_quadrature_bound(k_density, 1, sup, exact, s.d)

    sup_log = k + np.abs(vmf.log_kernel_volume(s.d, k))  # sup |log vMF(., k)|
    analytic = (quad(k[0], b) / s.tau + 0.5 * (quad(k[0], sup_log[1]) + quad(k[1], sup_log[0]))
                + (b / s.tau) * _closed_form_rounding(k[0]) + _closed_form_rounding(k[0])
                + _closed_form_rounding(k[1]))
    precision = (_energy_rounding(weights, rho1, rho2, potential, s.tau, None)
                 + run.tensor(analytic))
    return Bounded(energy - run.tensor(closed), precision)


#: Random segments of P_delta per setting.
CONCAVITY_SEGMENTS = Profiled(quick=512, full=4096)


@dataclass(frozen=True)
class ConcavityGaps:
    """On random segments rho_t = t rho0 + (1-t) rho1: the gap G(rho_t) - t G(rho0) - (1-t) G(rho1),
    the identity's value (1/2)∫rho2 [chord gap of log] (``predicted``) and their rounding bound."""

    gap: torch.Tensor
    predicted: torch.Tensor
    rounding: torch.Tensor


def concavity_gaps(run, s: FlooredSetting, problem: CoordinateProblem, gen) -> ConcavityGaps:
    count = run.pick(CONCAVITY_SEGMENTS)
    weights, rho2, smoother = problem.weights, problem.rho2, problem.smoother
    energy = problem.energy(run.subject)
    ends = floored_simplex.sample_floored(weights, s.floor, 2 * count, gen)
    rho_a, rho_b = ends[:count], ends[count:]
    t = _uniform((count, 1), gen, run.device)
    rho_t = t * rho_a + (1 - t) * rho_b
    gap = energy(rho_t) - t[:, 0] * energy(rho_a) - (1 - t[:, 0]) * energy(rho_b)
    log_seen = [torch.log(_seen(r, smoother)) for r in (rho_t, rho_a, rho_b)]
    chord_gap = log_seen[0] - t * log_seen[1] - (1 - t) * log_seen[2]
    predicted = 0.5 * (weights * rho2 * chord_gap).sum(-1)
    rounding = sum(c * problem.rounding(r)
                   for c, r in ((1.0, rho_t), (t[:, 0], rho_a), (1 - t[:, 0], rho_b)))
    rounding = rounding + _grid_rounding(weights, rho2 * sum(v.abs() for v in log_seen), sums=1)
    return ConcavityGaps(gap, predicted, rounding)


#: Random interior points, projected-gradient starts and steps per setting.
INTERIOR_POINTS = Profiled(quick=2048, full=8192)
DESCENT_STARTS = Profiled(quick=32, full=128)
DESCENT_STEPS = Profiled(quick=20, full=60)


@dataclass(frozen=True)
class VertexSearch:
    """G at the vertices of P_delta (``at_corners``) and at interior candidates: random points
    and the ends of projected-gradient descents (``ends``), with the rounding bound of both."""

    problem: CoordinateProblem
    floor: float
    at_corners: torch.Tensor
    at_candidates: torch.Tensor
    ends: torch.Tensor
    rounding: torch.Tensor

    @property
    def best(self) -> int:
        """The cell of the minimising vertex."""
        return int(torch.argmin(self.at_corners))

    @property
    def advantage(self) -> torch.Tensor:
        """How far each candidate beats the best vertex (0 where it does not)."""
        return torch.relu(self.at_corners[self.best] - self.at_candidates)

    def row(self) -> dict:
        best, rho2, potential = self.best, self.problem.rho2, self.problem.potential
        return {
            "vertex_cell": best,
            "rho2_quantile_at_vertex": float((rho2 < rho2[best]).double().mean()),
            "potential_quantile_at_vertex": float((potential < potential[best]).double().mean()),
            "best_vertex_energy": float(self.at_corners[best]),
            "best_interior_energy": float(self.at_candidates.min()),
            "pg_ends_at_a_vertex": float(((self.ends > self.floor * (1 + 1e-6)).sum(-1) == 1)
                                         .double().mean()),
        }


def search_minimum(run, problem: CoordinateProblem, corners, floor: float, gen) -> VertexSearch:
    weights = problem.weights
    energy = problem.energy(run.subject)
    inner = floored_simplex.sample_floored(weights, floor, run.pick(INTERIOR_POINTS), gen)
    start = floored_simplex.sample_floored(weights, floor, run.pick(DESCENT_STARTS), gen)
    # Concave G: every step descends whatever its size; 2/min(w) moves whole cells' mass.
    ends = floored_simplex.projected_gradient(_functional_gradient(energy, weights), start,
                                              weights, floor, 2.0 / float(weights.min()),
                                              run.pick(DESCENT_STEPS))
    candidates = torch.cat([inner, ends])
    rounding = problem.rounding(corners).max() + problem.rounding(candidates).max()
    return VertexSearch(problem, floor, energy(corners), energy(candidates), ends, rounding)


def _functional_gradient(energy, weights):
    """``rho -> dG/drho / w`` by autograd: the gradient in the cell-mass metric."""

    def gradient(rho):
        rho = rho.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(energy(rho).sum(), rho)
        return grad / weights

    return gradient


@dataclass(frozen=True)
class BarrierVertex:
    """The vertex minimising G with U1 = 0 (sharp): G(vertex j) = c + (1-delta)/2 log rho2_j +
    (w_j rho2_j/2) log(1 + (1-delta)/(delta w_j)), so on equal cells it is argmin rho2."""

    problem: CoordinateProblem  # U1 = 0, sharp
    corners: torch.Tensor
    floor: float
    best: int

    def row(self) -> dict:
        rho2 = self.problem.rho2
        return {"vertex_cell": self.best, "rho2_quantile": float((rho2 < rho2[self.best]).double().mean()),
                "rho2_at_vertex_over_min": float(rho2[self.best] / rho2.min()),
                "rho2_max_over_min": float(rho2.max() / rho2.min())}

    def excess(self) -> Bounded:
        """``log rho2[best] - log min rho2``, bounded by 2 rounding / (1 - delta) at a tie."""
        rho2 = self.problem.rho2
        tie = 2 * self.problem.rounding(self.corners).max() / (1 - self.floor)
        return Bounded(torch.log(rho2[self.best] / rho2.min()).reshape(1), tie)


def barrier_vertex(subject, problem: CoordinateProblem, corners, floor: float) -> BarrierVertex:
    pure = replace(problem, potential=torch.zeros_like(problem.weights), smoother=None)
    return BarrierVertex(pure, corners, floor, int(torch.argmin(pure.energy(subject)(corners))))
