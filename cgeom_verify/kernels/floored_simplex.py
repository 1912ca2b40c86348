"""The density-floored simplex ``P_delta = {rho >= delta, sum_k w_k rho_k = 1}`` (Prop 4.2).

A density discretised on n cells of probability masses ``w`` (a quadrature grid's
weights) is a vector ``rho[n]``. For ``0 < delta < 1`` the set is a polytope whose extreme
points are the n *vertices*: every cell at the floor but one, which carries the rest of
the mass, ``rho_j = delta + (1 - delta)/w_j``. A concave function attains its minimum over
P_delta at a vertex.

Public API: :func:`vertices`, :func:`sample_floored`, :func:`project`,
:func:`projected_gradient`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["vertices", "sample_floored", "project", "projected_gradient"]


def _check(weights: torch.Tensor, floor: float) -> None:
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"the floor must lie in [0, 1) for P_delta to be non-empty, got {floor}")
    if torch.any(weights <= 0):
        raise ValueError("cell masses must be positive")


def vertices(weights: torch.Tensor, floor: float) -> torch.Tensor:
    """The n extreme points of P_delta as rows of ``[n, n]``."""
    _check(weights, floor)
    n = weights.shape[-1]
    eye = torch.eye(n, dtype=weights.dtype, device=weights.device)
    return floor + eye * ((1.0 - floor) / weights)[None, :]


def sample_floored(weights: torch.Tensor, floor: float, count: int, generator) -> torch.Tensor:
    """``count`` random points of P_delta: ``rho = delta + (1 - delta) g / sum(w g)``, g ~ Exp(1).

    (Cell masses ``w rho - w delta`` are then Dirichlet(1,...,1)-distributed up to the
    weights: every point of P_delta has positive density.)
    """
    _check(weights, floor)
    u = torch.rand(count, weights.shape[-1], generator=generator, dtype=weights.dtype,
                   device=weights.device)
    g = -torch.log1p(-u)
    return floor + (1.0 - floor) * g / (g * weights).sum(-1, keepdim=True)


def project(y: torch.Tensor, weights: torch.Tensor, floor: float) -> torch.Tensor:
    """Projection of ``y[..., n]`` onto P_delta in the weighted norm ``sum w (rho - y)^2``.

    KKT: ``rho = max(delta, y + lam)`` with lam fixing the mass. If lam_k solves the mass
    equation assuming the k largest y are above the floor, then
    ``f(lam_k) = sum w max(delta, y + lam_k) >= 1``, and f is increasing, so every
    ``lam_k >= lam*`` and ``lam* = min_k lam_k``: no search over active sets is needed.
    """
    _check(weights, floor)
    order = torch.argsort(y, dim=-1, descending=True)
    y_sorted = torch.gather(y, -1, order)
    w_sorted = weights.expand_as(y).gather(-1, order)
    mass = torch.cumsum(w_sorted, -1)
    moment = torch.cumsum(w_sorted * y_sorted, -1)
    total = weights.sum(-1, keepdim=True)
    lam = ((1.0 - floor * (total - mass) - moment) / mass).min(dim=-1, keepdim=True).values
    return torch.clamp(y + lam, min=floor)


def projected_gradient(gradient: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor,
                       weights: torch.Tensor, floor: float, step: float,
                       steps: int) -> torch.Tensor:
    """``steps`` projected-gradient iterations ``rho <- P(rho - step * gradient(rho))``, batched.

    ``gradient`` returns the functional derivative (the gradient in the weighted metric).
    For a concave objective every step is a descent step whatever ``step`` is:
    ``f(new) <= f(old) + <grad, new - old>_w <= f(old) - |new - old|_w^2 / step``.
    """
    rho = project(start, weights, floor)
    for _ in range(steps):
        rho = project(rho - step * gradient(rho), weights, floor)
    return rho
