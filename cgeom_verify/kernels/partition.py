"""Closed-form partition oracle for vMF-mixture negatives (paper Thm 3.1/4.1).

Derivation: docs/derivations.md, "Closed-form partition for vMF-mixture negatives".

Negatives follow ``q = sum_i pi_i vMF(m_i, k_i)`` on S^{d-1}; the kernel is
``kappa_tau(z, w) = exp(<z, w>/tau)``. Every quantity the large-batch theorems need is a
finite sum of kernel volumes ``V_d`` (:mod:`.vmf`), because ``kappa_tau(z, .) q`` is again
a vMF mixture: with ``u_i = z/tau + k_i m_i``,

    Gamma_tau(z) = E_q kappa_tau(z, w) = sum_i pi_i V_d(|u_i|) / V_d(k_i),

and the kernel-tilted law ``kappa q / Gamma`` is the vMF mixture with weights
``w_i = pi_i V_d(|u_i|) / (V_d(k_i) Gamma)``, means ``u_i/|u_i|`` and concentrations ``|u_i|``.
Hence (all in log space, stable for d <= 512 and tau >= 0.02 as far as ``log V_d`` is):

* :func:`log_partition` — ``log Gamma_tau(z)``;
* :func:`tilted_mean` — ``g(z) = E[kappa w]/Gamma = sum_i w_i A_d(|u_i|) u_i/|u_i|``;
* :func:`grad_log_partition` — ``grad_z log Gamma_tau = g(z)/tau``;
* :func:`relative_variance` — ``c(z) = Var_q(kappa)/Gamma^2 = Gamma_{tau/2}/Gamma_tau^2 - 1``
  (``kappa_tau^2 = kappa_{tau/2}``);
* :func:`relative_moment` — ``E_q[(kappa/Gamma)^k] = Gamma_{tau/k}/Gamma_tau^k`` (the tail of the
  kernel weights, which sets how large N must be for the delta method);
* :func:`tilted_second_moment` — ``E[w w^T]`` under the tilted law (vMF second moments:
  ``E_{vMF(mu, k)}[w w^T] = (A_d(k)/k) I + (1 - d A_d(k)/k) mu mu^T``);
* :func:`gradient_error_covariance` — ``(1/tau^2) E_q[kappa^2 (w - g)(w - g)^T] / Gamma^2``, the
  limit of N times the covariance of ``grad_z log Gamma_hat_N - grad_z log Gamma``; ``kappa^2 q``
  is ``Gamma_{tau/2}`` times the law tilted at ``tau/2`` (the mixture at ``u'_i = 2z/tau + k_i m_i``,
  tilted mean ``g2``), so it equals ``(1 + c)/tau^2 (M2 - g g2^T - g2 g^T + g g^T)``;
* :func:`gradient_mse_constant` — its trace, ``(1 + c)/tau^2 (1 - 2 <g, g2> + |g|^2)`` (|w| = 1);
* :func:`log_smoothed_density` — ``log (k_tau * q)(z) = log Gamma_tau(z) - log V_d(1/tau)``.

Inputs are NumPy arrays (float64); anchors ``z`` have shape ``[..., d]`` and need not be
normalised for the formulas (the theorems use unit anchors).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from . import vmf

__all__ = [
    "VmfMixture",
    "log_partition",
    "tilted_mean",
    "grad_log_partition",
    "relative_variance",
    "relative_moment",
    "tilted_second_moment",
    "gradient_error_covariance",
    "gradient_mse_constant",
    "log_smoothed_density",
]


@dataclass(frozen=True)
class VmfMixture:
    """``q = sum_i weights[i] vMF(means[i], concentrations[i])`` on S^{d-1}."""

    weights: tuple[float, ...]
    means: tuple[tuple[float, ...], ...]
    concentrations: tuple[float, ...]

    def __post_init__(self):
        pi, m, k = self.arrays()
        if not (pi.ndim == 1 and m.ndim == 2 and k.shape == pi.shape and m.shape[0] == pi.size):
            raise ValueError("a mixture needs K weights, K concentrations and K mean vectors")
        if pi.size == 0 or m.shape[1] < 2:
            raise ValueError("a mixture needs at least one component in dimension d >= 2")
        if np.any(pi <= 0) or abs(pi.sum() - 1.0) > 1e-12:
            raise ValueError("mixture weights must be positive and sum to 1")
        if np.any(k < 0) or not np.all(np.isfinite(k)):
            raise ValueError("concentrations must be finite and non-negative")
        if np.any(np.abs(np.linalg.norm(m, axis=1) - 1.0) > 1e-12):
            raise ValueError("mean directions must be unit vectors")

    @property
    def d(self) -> int:
        return len(self.means[0])

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(weights[K], means[K, d], concentrations[K])`` as float64 arrays."""
        return (np.asarray(self.weights, dtype=np.float64),
                np.asarray(self.means, dtype=np.float64),
                np.asarray(self.concentrations, dtype=np.float64))

    def negated(self) -> VmfMixture:
        """The mixture with every mean direction reversed (a wrong negative law)."""
        return VmfMixture(self.weights, tuple(tuple(-x for x in m) for m in self.means),
                          self.concentrations)


def _tilted_components(mix: VmfMixture, z, tau: float):
    """log component masses ``log(pi_i V_d(|u_i|)/V_d(k_i))`` [..., K] and ``u_i`` [..., K, d]."""
    if not tau > 0:
        raise ValueError(f"temperature must be positive, got {tau}")
    pi, m, k = mix.arrays()
    z = np.asarray(z, dtype=np.float64)
    if z.shape[-1] != mix.d:
        raise ValueError(f"anchor dimension {z.shape[-1]} differs from the mixture's {mix.d}")
    u = z[..., None, :] / tau + k[:, None] * m
    radius = np.linalg.norm(u, axis=-1)
    log_mass = np.log(pi) + vmf.log_kernel_volume(mix.d, radius) - vmf.log_kernel_volume(mix.d, k)
    return log_mass, u, radius


def log_partition(mix: VmfMixture, z, tau: float) -> np.ndarray:
    """``log Gamma_tau(z) = log E_q exp(<z, w>/tau)``, shape ``z.shape[:-1]``."""
    log_mass, _, _ = _tilted_components(mix, z, tau)
    return special.logsumexp(log_mass, axis=-1)


def tilted_mean(mix: VmfMixture, z, tau: float) -> np.ndarray:
    """``g(z) = E_q[kappa w] / E_q[kappa]``, the mean of the kernel-tilted law, ``[..., d]``."""
    log_mass, u, radius = _tilted_components(mix, z, tau)
    weights = special.softmax(log_mass, axis=-1)
    resultant = vmf.mean_resultant_length(mix.d, radius)
    # u_i = 0 only if z/tau = -k_i m_i exactly; then A_d(0) = 0 and the direction is moot.
    direction = u / np.where(radius > 0, radius, 1.0)[..., None]
    return np.einsum("...k,...kd->...d", weights * resultant, direction)


def grad_log_partition(mix: VmfMixture, z, tau: float) -> np.ndarray:
    """``grad_z log Gamma_tau(z) = g(z)/tau`` (ambient gradient in R^d)."""
    return tilted_mean(mix, z, tau) / tau


def relative_variance(mix: VmfMixture, z, tau: float) -> np.ndarray:
    """``c(z) = Var_q kappa_tau(z, w) / Gamma_tau(z)^2 = Gamma_{tau/2}/Gamma_tau^2 - 1``."""
    # expm1 keeps c accurate when it is tiny (high d, large tau), where the ratio is ~1.
    return np.expm1(log_partition(mix, z, tau / 2.0) - 2.0 * log_partition(mix, z, tau))


def relative_moment(mix: VmfMixture, z, tau: float, order: int) -> np.ndarray:
    """``E_q[(kappa_tau/Gamma_tau)^order] = Gamma_{tau/order}(z) / Gamma_tau(z)^order``."""
    if int(order) != order or order < 1:
        raise ValueError(f"order must be a positive integer, got {order}")
    return np.exp(log_partition(mix, z, tau / order) - order * log_partition(mix, z, tau))


def tilted_second_moment(mix: VmfMixture, z, tau: float) -> np.ndarray:
    """``E[w w^T]`` under the kernel-tilted law ``kappa_tau(z, .) q / Gamma_tau(z)``, ``[..., d, d]``."""
    log_mass, u, radius = _tilted_components(mix, z, tau)
    weights = special.softmax(log_mass, axis=-1)
    d = mix.d
    safe = np.where(radius > 0, radius, 1.0)
    # A_d(k)/k -> 1/d as k -> 0 (the uniform law's E[w w^T] = I/d).
    isotropic = np.where(radius > 0, vmf.mean_resultant_length(d, safe) / safe, 1.0 / d)
    direction = u / safe[..., None]
    outer = np.einsum("...ka,...kb->...kab", direction, direction)
    per_component = (isotropic[..., None, None] * np.eye(d)
                     + (1.0 - d * isotropic)[..., None, None] * outer)
    return np.einsum("...k,...kab->...ab", weights, per_component)


def gradient_error_covariance(mix: VmfMixture, z, tau: float) -> np.ndarray:
    """``(1/tau^2) E_q[kappa^2 (w - g)(w - g)^T] / Gamma_tau^2``, ``[..., d, d]``.

    ``N`` times the covariance of ``grad_z log Gamma_hat_N`` tends to it (delta method).
    """
    g = tilted_mean(mix, z, tau)
    g2 = tilted_mean(mix, z, tau / 2.0)
    second = tilted_second_moment(mix, z, tau / 2.0)
    ratio = np.exp(log_partition(mix, z, tau / 2.0) - 2.0 * log_partition(mix, z, tau))
    cross = np.einsum("...a,...b->...ab", g, g2)
    centred = second - cross - np.swapaxes(cross, -1, -2) + np.einsum("...a,...b->...ab", g, g)
    return ratio[..., None, None] * centred / tau**2


def gradient_mse_constant(mix: VmfMixture, z, tau: float) -> np.ndarray:
    """``(1/tau^2) E_q[kappa^2 |w - g(z)|^2] / Gamma_tau(z)^2`` (trace of the covariance).

    With ``|w| = 1``: ``E[kappa^2 |w - g|^2] = Gamma_{tau/2} (1 - 2 <g, g2> + |g|^2)``.
    """
    g = tilted_mean(mix, z, tau)
    g2 = tilted_mean(mix, z, tau / 2.0)
    ratio = np.exp(log_partition(mix, z, tau / 2.0) - 2.0 * log_partition(mix, z, tau))
    spread = 1.0 - 2.0 * np.sum(g * g2, axis=-1) + np.sum(g * g, axis=-1)
    return ratio * spread / tau**2


def log_smoothed_density(mix: VmfMixture, z, tau: float) -> np.ndarray:
    """``log (k_tau * q)(z) = log Gamma_tau(z) - log V_d(1/tau)``, k_tau the vMF(z, 1/tau) density."""
    return log_partition(mix, z, tau) - vmf.log_kernel_volume(mix.d, 1.0 / tau)
