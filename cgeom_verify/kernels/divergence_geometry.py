"""Densities on quadrature grids and the cross-coupled functionals of paper Prop 4.1/4.2.

Derivations: docs/derivations.md, "Multimodal cross-coupling and concavity".

A density on a grid (``points[P, d]``, probability ``weights[P]``, see :mod:`.quadrature`)
is given by its log values ``log_rho[..., P]``; integrals are the grid sums
``∫ f dmu ~ sum_k weights_k f(z_k)``. The same sums are *exact* integrals of the
piecewise-constant density whose cells carry the weights, which is how the
floored simplex of Prop 4.2 is discretised (:mod:`.floored_simplex`).

Public API:

* information functionals: :func:`entropy`, :func:`expected_log`, :func:`kl_divergence`,
  :func:`symmetric_divergence`, :func:`cross_term`;
* vMF mixtures: :func:`vmf_mixture_log_density`, :func:`vmf_mixture_laplacian_ratio`,
  :func:`vmf_expected_log` (closed form of ``∫ vMF_1 log vMF_2``);
* kernel smoothing ``k_tau * q``: :func:`smoothing_matrix` (any grid density) and
  :func:`sharpening_expansion` (vMF mixtures, exact, with a rigorous bracket of the
  remainder of ``log(k_tau*q) = log q + (tau/2) Δq/q + O(tau^2)``);
* precision: :func:`log_volume_rounding`; grid sums and quadrature use the one precision
  model of :mod:`.quadrature` (unit roundoff u = 2^-53, Higham's ``gamma_n``,
  :func:`.quadrature.grid_sum_error_bound`, :func:`.quadrature.exp_polynomial_quadrature_bound`).

``vmf.log_kernel_volume(d, x)`` is accurate to ``32 u (1 + x)`` (it adds x to an O(log x)
part; tested against mpmath in tests/test_multimodal_geometry.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import quadrature, vmf

__all__ = [
    "entropy",
    "expected_log",
    "kl_divergence",
    "symmetric_divergence",
    "cross_term",
    "vmf_mixture_log_density",
    "vmf_mixture_laplacian_ratio",
    "vmf_expected_log",
    "smoothing_matrix",
    "SharpeningExpansion",
    "sharpening_expansion",
    "amos_ratio_bounds",
    "log_volume_rounding",
]

#: Shorthand of the shared precision model: the unit roundoff u = 2^-53.
U = quadrature.UNIT_ROUNDOFF


# --- information functionals on a grid --------------------------------------------------------


def _check_grid(log_values: torch.Tensor, weights: torch.Tensor) -> None:
    if log_values.shape[-1] != weights.shape[-1]:
        raise ValueError(f"density has {log_values.shape[-1]} nodes, grid has {weights.shape[-1]}")
    if torch.isnan(log_values).any() or torch.isinf(log_values).any():
        raise ValueError("log density must be finite: these functionals need rho > 0 (a floor)")


def expected_log(log_p: torch.Tensor, log_q: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``∫ p log q dmu`` (``q`` need not be normalised, e.g. a smoothed density)."""
    _check_grid(log_p, weights)
    _check_grid(log_q, weights)
    return (weights * log_p.exp() * log_q).sum(-1)


def entropy(log_rho: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``H(rho) = -∫ rho log rho dmu``."""
    return -expected_log(log_rho, log_rho, weights)


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``KL(p || q) = ∫ p log(p/q) dmu``."""
    _check_grid(log_p, weights)
    _check_grid(log_q, weights)
    return (weights * log_p.exp() * (log_p - log_q)).sum(-1)


def symmetric_divergence(log_p: torch.Tensor, log_q: torch.Tensor,
                         weights: torch.Tensor) -> torch.Tensor:
    """``D_S(p, q) = (KL(p||q) + KL(q||p)) / 2`` (the authors' code reports ``2 D_S``)."""
    return 0.5 * (kl_divergence(log_p, log_q, weights) + kl_divergence(log_q, log_p, weights))


def cross_term(log_p, log_q, weights, log_p_seen=None, log_q_seen=None) -> torch.Tensor:
    """The partition part of J_mm: ``(1/2)∫ p log q' + (1/2)∫ q log p'``, computed directly.

    ``q'`` (``log_q_seen``) is what modality 1 sees of modality 2: ``q`` itself after kernel
    sharpening, ``k_tau * q`` before; likewise ``p'``. Defaults are the sharp term.
    """
    log_q_seen = log_q if log_q_seen is None else log_q_seen
    log_p_seen = log_p if log_p_seen is None else log_p_seen
    return 0.5 * (expected_log(log_p, log_q_seen, weights)
                  + expected_log(log_q, log_p_seen, weights))


# --- vMF mixtures -------------------------------------------------------------------------------


def _log_volume(d: int, x: torch.Tensor) -> torch.Tensor:
    """``log V_d`` of a tensor (the Bessel function is evaluated by the shared NumPy kernel)."""
    values = vmf.log_kernel_volume(d, x.detach().cpu().numpy())
    return torch.as_tensor(values, dtype=x.dtype, device=x.device)


def _component_logits(points, means, kappas, log_weights):
    """``log pi_i + k_i <z, m_i> - log V_d(k_i)`` as ``[..., P, K]``, and the cosines."""
    d = points.shape[-1]
    cosines = torch.einsum("pd,...kd->...pk", points, means)
    logits = log_weights[..., None, :] + kappas[..., None, :] * cosines
    return logits - _log_volume(d, kappas)[..., None, :], cosines


def vmf_mixture_log_density(points, means, kappas, log_weights) -> torch.Tensor:
    """Log density w.r.t. mu of ``sum_i pi_i vMF(m_i, k_i)`` at ``points[P, d]``.

    ``means[..., K, d]`` unit vectors, ``kappas[..., K]`` >= 0, ``log_weights[..., K]``
    (log pi, summing to 1 in probability). Returns ``[..., P]``.
    """
    logits, _ = _component_logits(points, means, kappas, log_weights)
    return torch.logsumexp(logits, dim=-1)


def vmf_mixture_laplacian_ratio(points, means, kappas, log_weights) -> torch.Tensor:
    """``(Δ q)/q`` on S^{d-1} for a vMF mixture q, exactly.

    For one component ``Δ e^{k<m,z>} = e^{k<m,z>} (k^2 (1 - c^2) - (d-1) k c)``, c = <m,z>;
    a mixture averages these with the posterior weights of the components at z.
    """
    d = points.shape[-1]
    logits, c = _component_logits(points, means, kappas, log_weights)
    k = kappas[..., None, :]
    per_component = k**2 * (1 - c**2) - (d - 1) * k * c
    return (torch.softmax(logits, dim=-1) * per_component).sum(-1)


def vmf_expected_log(d: int, mean_p, kappa_p, mean_q, kappa_q) -> np.ndarray:
    """Closed form ``∫ vMF(m_p,k_p) log vMF(m_q,k_q) dmu = k_q A_d(k_p) <m_p,m_q> - log V_d(k_q)``.

    (The vMF mean is ``A_d(k_p) m_p`` and the log density is affine in z.)
    """
    cos = np.sum(np.asarray(mean_p) * np.asarray(mean_q), axis=-1)
    return kappa_q * vmf.mean_resultant_length(d, kappa_p) * cos - vmf.log_kernel_volume(d, kappa_q)


# --- kernel smoothing ---------------------------------------------------------------------------


def smoothing_matrix(points: torch.Tensor, weights: torch.Tensor, tau: float) -> torch.Tensor:
    """``K[P, P]`` with ``(K rho)_i = sum_j k_tau(z_i, z_j) w_j rho_j``: the grid's ``k_tau * rho``.

    ``k_tau(z, .) = vMF(z, 1/tau)``. K is linear and entrywise positive, which is all the
    concavity of ``rho -> ∫ rho2 log(K rho)`` needs.
    """
    d = points.shape[-1]
    log_v = float(vmf.log_kernel_volume(d, 1.0 / tau))
    return torch.exp((points @ points.T) / tau - log_v) * weights[None, :]


def amos_ratio_bounds(d: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Amos (1974) bounds ``lo <= A_d(x) <= hi`` for nu = d/2 - 1 >= 0:

    ``x / (nu + 1/2 + sqrt(x^2 + (nu + 3/2)^2)) <= I_{nu+1}/I_nu``
    ``<= x / (nu + 1/2 + sqrt(x^2 + (nu + 1/2)^2))`` (verified against SciPy in the tests).
    Both are ``1 - (nu + 1/2)/x + O(x^-2)``, so they bracket ``A_d`` to ``O(x^-2)``.
    """
    a = d / 2.0 - 0.5
    return x / (a + torch.sqrt(x**2 + (a + 1) ** 2)), x / (a + torch.sqrt(x**2 + a**2))


def _amos_integral_minus_drift(a, b, inv_tau, k, c, chord):
    """``F(x1) - F(x0) - k c`` for ``F(x) = sqrt(x^2 + b^2) - a log(a + sqrt(x^2 + b^2))``,

    the antiderivative of the Amos bound ``x / (a + sqrt(x^2 + b^2))``, between
    ``x0 = 1/tau`` and ``x1 = |z/tau + k m|``; ``chord = x1^2 - x0^2 = 2 k c / tau + k^2``.
    Written without cancellation: every difference of large numbers is rationalised.
    """
    s0 = torch.sqrt(inv_tau**2 + b**2)
    s1 = torch.sqrt(inv_tau**2 + chord + b**2)
    ds = chord / (s0 + s1)  # s1 - s0
    # 2/tau - s0 - s1, each (1/tau - s) rationalised.
    gap = -(b**2) / (inv_tau + s0) - (chord + b**2) / (inv_tau + s1)
    ds_minus_drift = (k * c * gap + k**2) / (s0 + s1)  # (s1 - s0) - k c
    return ds_minus_drift - a * torch.log1p(ds / (a + s0))


@dataclass(frozen=True)
class SharpeningExpansion:
    """``log((k_tau * q)/q)(z) = (tau/2)(Δq/q)(z) + r(z)`` on a grid, for several tau.

    Every field is ``[..., T, P]`` (T temperatures, P nodes).

    * ``log_ratio`` — ``log((k_tau * q)/q)``, exact closed form;
    * ``first_order`` — ``(tau/2) (Δq/q)``, the heat-kernel term;
    * ``remainder_lo``, ``remainder_hi`` — a rigorous bracket of ``r`` (Amos bounds per
      component, Jensen across components), both ``O(tau^2)``;
    * ``rounding`` — a floating-point error bound of the computed ``log_ratio``.
    """

    log_ratio: torch.Tensor
    first_order: torch.Tensor
    remainder_lo: torch.Tensor
    remainder_hi: torch.Tensor
    rounding: torch.Tensor


def sharpening_expansion(points, means, kappas, log_weights, taus) -> SharpeningExpansion:
    """The smoothing ``k_tau * q`` of a vMF mixture q, exactly and to first order in tau.

    Closed form (docs/derivations.md, "Smoothing a vMF mixture"): with ``u_i = z/tau + k_i m_i``,
    ``(k_tau * vMF(m_i,k_i))(z) = V_d(|u_i|) / (V_d(1/tau) V_d(k_i))``, so per component
    ``l_i(z) = log((k_tau*q_i)/q_i)(z) = ∫_{1/tau}^{|u_i|} A_d(x) dx - k_i <z, m_i>``
    and ``log((k_tau*q)/q) = log sum_i omega_i e^{l_i}`` with posterior weights omega_i(z).
    Expanding ``|u_i|`` and ``A_d = 1 - (d-1)/(2x) + O(x^-2)`` gives
    ``l_i = (tau/2)(k_i^2 (1 - c_i^2) - (d-1) k_i c_i) + O(tau^2)``. The bracket of the
    remainder replaces ``A_d`` by its Amos bounds (integrated in closed form) and uses
    ``sum omega l_lo <= log sum omega e^l <= log sum omega e^{l_hi}`` (Jensen, monotonicity).
    """
    d = points.shape[-1]
    taus = torch.as_tensor(taus, dtype=points.dtype, device=points.device)
    if torch.any(taus <= 0):
        raise ValueError("kernel temperatures must be positive")
    logits, c = _component_logits(points, means, kappas, log_weights)  # [..., P, K]
    log_omega = torch.log_softmax(logits, dim=-1)[..., None, :, :]  # [..., 1, P, K]
    c = c[..., None, :, :]
    k = kappas[..., None, None, :]
    inv_tau = (1.0 / taus)[:, None, None]  # [T, 1, 1]
    chord = 2 * k * c * inv_tau + k**2  # |u|^2 - 1/tau^2
    x1 = torch.sqrt(inv_tau**2 + chord)
    x0 = inv_tau.expand_as(x1)
    log_v1, log_v0 = _log_volume(d, x1), _log_volume(d, x0)
    exact = log_v1 - log_v0 - k * c  # l_i
    first = 0.5 / inv_tau * (k**2 * (1 - c**2) - (d - 1) * k * c)

    a = d / 2.0 - 0.5
    upper_integral = _amos_integral_minus_drift(a, a, inv_tau, k, c, chord)
    lower_integral = _amos_integral_minus_drift(a, a + 1, inv_tau, k, c, chord)
    # When x1 < x0 the integral runs backwards and the bounds swap roles.
    l_lo = torch.minimum(upper_integral, lower_integral)
    l_hi = torch.maximum(upper_integral, lower_integral)

    first_mix = (log_omega.exp() * first).sum(-1)
    log_ratio = torch.logsumexp(log_omega + exact, dim=-1)
    lo = (log_omega.exp() * (l_lo - first)).sum(-1)
    hi = torch.logsumexp(log_omega + (l_hi - first_mix[..., None]), dim=-1)
    # Rounding of l_i: the two log volumes (log_volume_rounding each, plus the propagated
    # relative error 8 u of the computed |u| times A_d <= 1), k c, and 3 subtractions of
    # operands bounded by x1 + x0 + k. The posterior weights err by a few u of the logits,
    # and the logsumexp adds a few u of its result.
    per_component = (log_volume_rounding(x1) + log_volume_rounding(x0) + 8 * U * x1
                     + 6 * U * (x1 + x0 + k))
    logit_scale = logits.abs().amax(dim=-1)[..., None, :]
    rounding = (per_component.max(dim=-1).values + 8 * U * logit_scale
                + 16 * U * (1 + log_ratio.abs()))
    return SharpeningExpansion(log_ratio, first_mix, lo, hi, rounding)


# --- precision bounds ---------------------------------------------------------------------------


def log_volume_rounding(x: torch.Tensor) -> torch.Tensor:
    """Stated accuracy of ``vmf.log_kernel_volume`` at x: ``32 u (1 + x)``."""
    return 32 * U * (1 + x)
