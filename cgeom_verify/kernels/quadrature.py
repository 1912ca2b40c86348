"""Quadrature grids on S^1 and S^2 for the uniform *probability* measure (weights sum to 1).

* :func:`circle_grid` — n equispaced angles: the trapezoid rule, spectrally accurate
  for smooth periodic integrands (error decays like the integrand's Fourier tail).
* :func:`sphere_grid` — Gauss-Legendre nodes in cos(theta) times equispaced phi: exact
  for spherical polynomials of degree < 2 n_theta in z and < n_phi in phi.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["circle_grid", "sphere_grid"]


def circle_grid(n: int, dtype=torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(points[n, 2], weights[n])``; angles are ``atan2(points[:, 1], points[:, 0])``."""
    if n < 1:
        raise ValueError("a circle grid needs at least one node")
    angles = torch.arange(n, dtype=dtype, device=device) * (2 * math.pi / n)
    points = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    return points, torch.full((n,), 1.0 / n, dtype=dtype, device=device)


def sphere_grid(n_theta: int, n_phi: int, dtype=torch.float64, device=None):
    """``(points[n_theta * n_phi, 3], weights)`` for the uniform probability measure on S^2."""
    if n_theta < 1 or n_phi < 1:
        raise ValueError("a sphere grid needs at least one node per direction")
    nodes, gl_weights = np.polynomial.legendre.leggauss(n_theta)  # in cos(theta), sum 2
    z = torch.as_tensor(nodes, dtype=dtype, device=device)
    wz = torch.as_tensor(gl_weights / 2.0, dtype=dtype, device=device)
    phi = torch.arange(n_phi, dtype=dtype, device=device) * (2 * math.pi / n_phi)
    r = torch.sqrt(1 - z**2)
    points = torch.stack(
        [r[:, None] * torch.cos(phi)[None, :], r[:, None] * torch.sin(phi)[None, :],
         z[:, None].expand(n_theta, n_phi)], dim=-1,
    ).reshape(-1, 3)
    weights = (wz[:, None] / n_phi).expand(n_theta, n_phi).reshape(-1)
    return points, weights
