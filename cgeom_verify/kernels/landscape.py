"""The unimodal free-energy landscape on a quadrature grid (paper Prop 3.1-3.3).

Derivations: docs/derivations.md, "Unimodal landscape: Gibbs minimiser, convexity, concentration".

On nodes ``z_k`` with weights ``q_k`` (the uniform probability measure, ``sum q_k = 1``) a
density ``rho`` w.r.t. ``mu`` is carried by its logarithm ``log_rho[..., M]`` with
``sum_k q_k rho_k = 1``; every integral is the quadrature sum. The energy is

    F_{tau,U}(rho) = (1/tau) ∫ U rho dmu - H(rho),    H(rho) = -∫ rho log rho dmu.

On the discrete measure the paper's identities (F - F* = KL, the exact convexity gap) hold
*exactly*, so numerical checks of them are limited by floating point only (the precision
model of :mod:`.quadrature`: :func:`.quadrature.summation_error_bound`).

Public API:

* :class:`IntrinsicEnergy` — the energy and its claimed minimiser (the subject of the claims);
* :func:`expectation`, :func:`entropy`, :func:`kl_divergence` — quadrature functionals;
* :func:`exponentiated_gradient` — entropic mirror descent, batched over any leading dims;
* :func:`mirror_descent_rate_bound` — its known convergence rate for this energy;
* :func:`random_mixture_potential`, :func:`random_harmonic_potential`,
  :func:`random_log_density` — random test inputs on a grid;
* :func:`partition_masses` — the mass a density puts on each cell of a labelled partition.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import gibbs, vmf

__all__ = [
    "IntrinsicEnergy",
    "expectation",
    "entropy",
    "kl_divergence",
    "exponentiated_gradient",
    "mirror_descent_rate_bound",
    "random_mixture_potential",
    "random_harmonic_potential",
    "random_log_density",
    "partition_masses",
]


@dataclass(frozen=True)
class IntrinsicEnergy:
    """``F(rho) = (1/tau) ∫ U rho - entropy_sign * H(rho)`` and its claimed minimiser.

    The claimed minimiser is the Gibbs density ``exp(-s U / (c tau)) / Z`` with
    ``s = gibbs_potential_sign`` and ``c = gibbs_temperature_factor``; the theory has
    ``entropy_sign = s = c = 1``. Negative controls change one field.
    """

    entropy_sign: float = 1.0
    gibbs_temperature_factor: float = 1.0
    gibbs_potential_sign: float = 1.0

    def energy(self, log_rho: torch.Tensor, potential: torch.Tensor, tau, weights) -> torch.Tensor:
        """``F`` for ``log_rho[..., M]``, ``potential`` broadcastable, ``tau[...]``."""
        tau = _positive_temperature(tau, log_rho)
        integrand = potential / tau[..., None] + self.entropy_sign * log_rho
        return expectation(integrand, log_rho, weights)

    def first_variation(self, log_rho: torch.Tensor, potential: torch.Tensor, tau) -> torch.Tensor:
        """``dF/drho = U/tau + entropy_sign (log rho + 1)``, pointwise on the nodes."""
        tau = _positive_temperature(tau, log_rho)
        return potential / tau[..., None] + self.entropy_sign * (log_rho + 1.0)

    def minimizer_log_density(self, potential: torch.Tensor, tau, weights) -> torch.Tensor:
        """``log rho*`` of the claimed minimiser on the nodes."""
        tau = _positive_temperature(tau, potential)
        return gibbs.gibbs_log_density(
            self.gibbs_potential_sign * potential, self.gibbs_temperature_factor * tau, weights
        )


def _positive_temperature(tau, like: torch.Tensor) -> torch.Tensor:
    tau = torch.as_tensor(tau, dtype=like.dtype, device=like.device)
    if not bool((tau > 0).all()):
        raise ValueError("the temperature tau must be positive")
    return tau


def expectation(values: torch.Tensor, log_rho: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``∫ values rho dmu`` on the nodes (last axis)."""
    return (weights * torch.exp(log_rho) * values).sum(-1)


def entropy(log_rho: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``H(rho) = -∫ rho log rho dmu``."""
    return -expectation(log_rho, log_rho, weights)


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``KL(p || q) = ∫ p log(p/q) dmu``."""
    return expectation(log_p - log_q, log_p, weights)


def exponentiated_gradient(
    first_variation: Callable[[torch.Tensor], torch.Tensor],
    log_rho: torch.Tensor,
    weights: torch.Tensor,
    steps: int,
    step_size: float,
) -> torch.Tensor:
    """Entropic mirror descent ``rho <- rho exp(-eta dF/drho) / normaliser``, ``steps`` times.

    Works in log space (so a density that collapses onto a node stays finite) and on any
    leading batch shape: starts, potentials and temperatures run as one tensor program.
    """
    if steps < 0 or not 0.0 < step_size <= 1.0:
        raise ValueError("need steps >= 0 and a step size in (0, 1]")
    log_weights = torch.log(weights)
    for _ in range(steps):
        log_rho = log_rho - step_size * first_variation(log_rho)
        log_rho = log_rho - torch.logsumexp(log_rho + log_weights, dim=-1, keepdim=True)
    return log_rho


def mirror_descent_rate_bound(kl_start, step_size: float, steps: int):
    """Bound on ``F(rho_T) - min F`` after ``steps`` of :func:`exponentiated_gradient`.

    ``F - h`` is linear for ``h(rho) = ∫ rho log rho``, so F is 1-smooth and 1-strongly convex
    relative to h, and so also (1/eta)-smooth for eta <= 1. Lu, Freund & Nesterov (SIAM J.
    Optim. 28, 2018, Thm 3.1) then give, with the Bregman divergence of h being KL,
    ``F(rho_T) - F* <= KL(rho*||rho_0) / ((1 - eta)^(-T) - 1)``.
    ``kl_start`` is ``KL(rho*||rho_0)`` (tensor or float).
    """
    if not 0.0 < step_size < 1.0:
        raise ValueError("the rate is stated for step sizes in (0, 1)")
    return kl_start / math.expm1(-steps * math.log1p(-step_size))


def random_mixture_potential(
    points: torch.Tensor, count: int, components: int, kappa: float, generator: torch.Generator
) -> torch.Tensor:
    """``count`` log-sum-exp vMF-mixture potentials (:func:`gibbs.mixture_potential`) on
    ``points[M, d]`` of the mixtures :func:`vmf.random_mixture` draws (uniform random means,
    Dirichlet(1) weights) at concentration ``kappa``. Returns ``[count, M]``."""
    means, _, weights = vmf.random_mixture((count,), components, points.shape[-1], generator,
                                           dtype=points.dtype)
    return gibbs.mixture_potential(points, means, weights, kappa)


def random_harmonic_potential(
    points: torch.Tensor, count: int, degree: int, amplitude: float, generator: torch.Generator
) -> torch.Tensor:
    """``count`` random spherical-harmonic polynomials of degree 1..``degree`` on ``points[M, d]``.

    ``U(z) = sum_k sum_j c_jk P_k(<z, v_j>)`` with ``P_k`` the Legendre polynomial of
    dimension d (``P_k(1) = 1``: Chebyshev ``cos(k theta)`` on S^1, Legendre on S^2) and
    ``2k + 1`` random centres ``v_j`` per degree: zonal harmonics about that many generic
    centres span the degree-k harmonics on S^1 and S^2, so on S^1 this is a random
    trigonometric polynomial. ``c_jk ~ N(0, amplitude^2 / (k (2k + 1)))``. Returns ``[count, M]``.
    """
    if degree < 1:
        raise ValueError("a harmonic potential needs degree >= 1")
    d = points.shape[-1]
    total = torch.zeros(count, points.shape[0], dtype=points.dtype, device=points.device)
    for k in range(1, degree + 1):
        centres = vmf.sample_uniform_sphere((count, 2 * k + 1), d, generator, dtype=points.dtype)
        coef = torch.randn(count, 2 * k + 1, generator=generator, dtype=points.dtype,
                           device=points.device) * (amplitude / math.sqrt(k * (2 * k + 1)))
        cosines = points @ centres.transpose(-1, -2)  # [count, M, 2k+1]
        total = total + (_legendre_of_dimension(k, d, cosines) * coef[:, None, :]).sum(-1)
    return total


def _legendre_of_dimension(k: int, d: int, t: torch.Tensor) -> torch.Tensor:
    """``P_k`` (k >= 1) of dimension d, by ``P_{j+1} = ((2j+d-2) t P_j - j P_{j-1}) / (j+d-2)``."""
    previous, current = torch.ones_like(t), t
    for j in range(1, k):
        previous, current = current, ((2 * j + d - 2) * t * current - j * previous) / (j + d - 2)
    return current


def random_log_density(
    shape: tuple[int, ...], weights: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Random normalised log densities ``[*shape, M]``: i.i.d. log-normal node values with a
    log-spread drawn uniformly in (0.2, 3) per density (from nearly flat to very rough)."""
    m = weights.shape[-1]
    spread = 0.2 + 2.8 * torch.rand(*shape, 1, generator=generator, dtype=weights.dtype,
                                    device=weights.device)
    noise = torch.randn(*shape, m, generator=generator, dtype=weights.dtype, device=weights.device)
    log_rho = spread * noise
    return log_rho - torch.logsumexp(log_rho + torch.log(weights), dim=-1, keepdim=True)


def partition_masses(
    log_rho: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, cells: int
) -> torch.Tensor:
    """``rho(cell c) = sum_{k: labels_k = c} q_k rho_k`` for ``c < cells``: ``[..., cells]``."""
    indicator = torch.nn.functional.one_hot(labels, cells).to(log_rho.dtype)  # [..., M, cells]
    return ((weights * torch.exp(log_rho)).unsqueeze(-2) @ indicator).squeeze(-2)
