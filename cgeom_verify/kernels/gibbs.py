"""Alignment potentials and the Gibbs measure on a quadrature grid (paper Prop 3.1-3.3, Figs. 3-4).

Derivations: docs/derivations.md, "Unimodal landscape: Gibbs minimiser, convexity, concentration".

* :func:`mixture_potential` — ``U(z) = -(1/kappa) log sum_i w_i exp(kappa <z, m_i>)``,
  the log-sum-exp vMF-mixture potential (the authors' Figs. 3-4 use two wells);
* :func:`log_partition_function` — ``log Z_tau = log sum_k q_k exp(-U_k / tau)``, the
  quadrature of the partition function (so ``min F = -log Z_tau``, Prop 3.2);
* :func:`gibbs_log_density` — ``log rho*(z) = -U(z)/tau - log Z_tau`` on the nodes.

Densities are w.r.t. the uniform probability measure: ``sum_k q_k rho_k = 1``.
"""

from __future__ import annotations

import torch

__all__ = ["mixture_potential", "log_partition_function", "gibbs_log_density"]


def mixture_potential(z: torch.Tensor, means: torch.Tensor, weights: torch.Tensor, kappa) -> torch.Tensor:
    """``U`` at points ``z[..., P, d]`` for wells ``means[..., K, d]``, ``weights[..., K]``."""
    kappa = torch.as_tensor(kappa, dtype=z.dtype, device=z.device)
    logits = kappa[..., None, None] * (z @ means.transpose(-1, -2)) + torch.log(weights).unsqueeze(-2)
    return -torch.logsumexp(logits, dim=-1) / kappa[..., None]


def log_partition_function(potential: torch.Tensor, tau, quad_weights: torch.Tensor) -> torch.Tensor:
    """``log Z_tau`` for ``potential[..., P]`` on nodes with weights ``quad_weights[P]``."""
    tau = torch.as_tensor(tau, dtype=potential.dtype, device=potential.device)
    return torch.logsumexp(-potential / tau[..., None] + torch.log(quad_weights), dim=-1)


def gibbs_log_density(potential: torch.Tensor, tau, quad_weights: torch.Tensor) -> torch.Tensor:
    """``log rho*`` on the nodes: ``potential[..., P]``, ``tau`` broadcastable to ``[...]``."""
    tau = torch.as_tensor(tau, dtype=potential.dtype, device=potential.device)
    log_z = log_partition_function(potential, tau, quad_weights)
    return -potential / tau[..., None] - log_z[..., None]
