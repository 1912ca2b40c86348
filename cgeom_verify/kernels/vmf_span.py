"""vMF draws on S^{d-1} seen through a low-dimensional span (paper Thm 3.1/4.1 checks).

When every mean direction of a vMF mixture and every anchor lie in the span of the first
``r`` coordinates, the InfoNCE loss and the span block of its z-gradient depend on a
negative ``w`` only through its projection ``P w`` onto that span: ``<z, w> = <z, P w>``.
Drawing the full ``d``-vector costs O(d) per draw; :func:`sample_vmf_span` draws ``P w``
exactly, at O(r) cost, in any dimension:

* the cosine ``t = <m, w>`` is Wood's (1994) scalar draw for S^{d-1} (``vmf._wood_cosines``);
* the tangent direction ``v`` is uniform on the unit sphere of ``m^perp`` (dimension d - 1);
  a uniform direction is a normalised standard Gaussian, so its coordinates inside the span
  (``r - 1`` of them, orthogonal to m) are Gaussian and the squared norm of the other
  ``d - r`` is an independent chi-square: ``P v = g / sqrt(|g|^2 + chi2_{d-r})``;
* ``P w = t m + sqrt(1 - t^2) P v``.

With ``d == r`` this is the ordinary sampler (no chi-square term).
"""

from __future__ import annotations

import torch

from . import vmf

__all__ = ["sample_vmf_span", "chi_square"]


def chi_square(dof: float, shape, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """Chi-square draws with ``dof`` degrees of freedom: ``2 Gamma(dof/2, 1)``."""
    alpha = torch.full(tuple(shape), dof / 2.0, dtype=dtype, device=generator.device)
    return 2.0 * vmf.standard_gamma(alpha, generator)


def sample_vmf_span(mean: torch.Tensor, kappa, n: int, d: int,
                    generator: torch.Generator) -> torch.Tensor:
    """``n`` draws of ``P w`` for ``w ~ vMF(mean, kappa)`` on S^{d-1}: ``[..., n, r]``.

    ``mean`` is ``[..., r]``: unit mean directions written in the span's ``r <= d``
    coordinates (the remaining ``d - r`` coordinates of the mean are 0).
    """
    r = mean.shape[-1]
    if not 1 <= r <= d:
        raise ValueError(f"span dimension {r} must lie in [1, d = {d}]")
    batch = mean.shape[:-1]
    kappa = torch.as_tensor(kappa, dtype=mean.dtype, device=mean.device).expand(batch)
    kappa_n = kappa.unsqueeze(-1).expand(*batch, n).contiguous()
    t = vmf._wood_cosines(kappa_n, d, generator).unsqueeze(-1)
    m = mean.unsqueeze(-2)
    g = torch.randn(*batch, n, r, generator=generator, dtype=mean.dtype, device=mean.device)
    g = g - (g * m).sum(-1, keepdim=True) * m  # the r - 1 in-span coordinates orthogonal to m
    norm2 = (g**2).sum(-1, keepdim=True)
    if d > r:
        norm2 = norm2 + chi_square(d - r, (*batch, n, 1), generator, mean.dtype)
    direction = g / norm2.sqrt()
    return t * m + torch.sqrt((1 - t**2).clamp_min(0)) * direction
