"""Quadrature grids on S^1 and S^2 for the uniform *probability* measure (weights sum to 1).

* :func:`circle_grid` — n equispaced angles: the trapezoid rule, spectrally accurate
  for smooth periodic integrands (error decays like the integrand's Fourier tail).
* :func:`sphere_grid` — Gauss-Legendre nodes in cos(theta) times equispaced phi: exact
  for spherical polynomials of degree < 2 n_theta in z and < n_phi in phi.
* :func:`grid` — either, by the ambient dimension d (2: the circle, 3: the sphere), with
  :func:`exact_degree` the degree it integrates exactly.

and the one precision model of the quadrature claims (landscape, multimodal geometry):
:data:`UNIT_ROUNDOFF`, :func:`gamma`, :func:`summation_error_bound`,
:func:`grid_sum_error_bound` (float64 rounding of grid sums), :func:`exact_degree` and
:func:`exp_polynomial_quadrature_bound` (quadrature error of vMF-weighted polynomials).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import special

from . import vmf

__all__ = [
    "circle_grid",
    "sphere_grid",
    "grid",
    "UNIT_ROUNDOFF",
    "OPS_PER_TERM",
    "gamma",
    "summation_error_bound",
    "grid_sum_error_bound",
    "exact_degree",
    "exp_polynomial_quadrature_bound",
]


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


def grid(d: int, shape: tuple[int, ...], dtype=torch.float64, device=None):
    """``(points, weights)`` on S^{d-1}: :func:`circle_grid` for d = 2 (``shape = (n,)``),
    :func:`sphere_grid` for d = 3 (``shape = (n_theta, n_phi)``); :func:`exact_degree` says
    which spherical polynomials it integrates exactly."""
    if d == 2:
        return circle_grid(*shape, dtype=dtype, device=device)
    if d == 3:
        return sphere_grid(*shape, dtype=dtype, device=device)
    raise ValueError(f"quadrature grids are on S^1 (d = 2) and S^2 (d = 3), not d = {d}")


# --- the one precision model for grid sums and quadrature ------------------------------------
#
# Every rounding bound of the landscape and multimodal-geometry kernels/claims derives from
# this model (it replaces the two that landscape.py and divergence_geometry.py used to carry):
# a float64 operation has relative error at most the unit roundoff u = 2^-53; a sum of n
# computed terms, each carrying at most ``ops_per_term`` relative roundings, is off by at most
# ``gamma_{n + ops_per_term} * sum |term|`` with ``gamma_m = m u / (1 - m u)`` (Higham,
# *Accuracy and Stability of Numerical Algorithms*, 2002, eq. 4.4 and Lemma 3.1), whatever
# the summation order.

#: float64 unit roundoff u = 2^-53.
UNIT_ROUNDOFF = 2.0**-53
#: Relative roundings allowed inside one term of a grid sum (products, a log or an exp).
OPS_PER_TERM = 16


def gamma(n: int) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)``."""
    nu = n * UNIT_ROUNDOFF
    if not nu < 1.0:
        raise ValueError(f"gamma_n needs n u < 1, got n = {n}")
    return nu / (1.0 - nu)


def summation_error_bound(abs_sum, n_terms: int, ops_per_term: int = OPS_PER_TERM):
    """A priori float64 error of a sum of ``n_terms`` computed terms with ``sum |term|`` =
    ``abs_sum`` (tensor or float): ``gamma_{n_terms + ops_per_term} * abs_sum``."""
    return abs_sum * gamma(n_terms + ops_per_term)


def grid_sum_error_bound(abs_terms: torch.Tensor, ops_per_term: int = OPS_PER_TERM) -> torch.Tensor:
    """The same bound for a grid sum along the last axis, given ``|term|`` per node."""
    return summation_error_bound(abs_terms.sum(-1), abs_terms.shape[-1], ops_per_term)


def exact_degree(sphere: int, shape: tuple[int, ...]) -> int:
    """The spherical-polynomial degree the grid of :func:`circle_grid` (``sphere`` = 2, shape
    ``(n,)``) or :func:`sphere_grid` (``sphere`` = 3, ``(n_theta, n_phi)``) integrates exactly."""
    if sphere == 2:
        return shape[0] - 1
    return min(2 * shape[0] - 1, shape[1] - 1)


def exp_polynomial_quadrature_bound(kappa, degree: int, sup: float, exact: int, d: int):
    """Quadrature error bound for ``∫ vMF(m, kappa)(z) g(z) dmu``, g a polynomial of ``degree``.

    For a positive rule with weights summing to 1 that integrates spherical polynomials of
    degree <= ``exact`` exactly, the error is at most twice the uniform distance of the
    integrand to such polynomials. Truncating ``e^{kappa <m,z>}`` at degree
    ``L = exact - degree`` leaves ``sum_{j > L} kappa^j / j!``
    ``= e^kappa P(Poisson(kappa) > L) = e^kappa * gammainc(L + 1, kappa)`` (as |<m,z>| <= 1);
    hence the bound ``2 sup|g| e^kappa gammainc(L + 1, kappa) / V_d(kappa)``. With ``g = 1``
    it is the relative quadrature error of the vMF normaliser ``V_d(kappa)``.
    """
    kappa = np.asarray(kappa, dtype=np.float64)
    tail_degree = exact - degree + 1
    if tail_degree < 1:
        raise ValueError("the grid does not integrate the polynomial factor exactly")
    with np.errstate(divide="ignore"):
        log_tail = np.log(special.gammainc(tail_degree, kappa)) + kappa
    return 2 * sup * np.exp(log_tail - vmf.log_kernel_volume(d, kappa))
