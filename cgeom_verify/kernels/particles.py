"""Particle/KDE surrogate of the Gibbs equilibrium: the authors' Figs. 3-4 (paper Prop 3.2, 3.3).

Settings: docs/derivations.md, "Figs. 3-4 particle/KDE landscape".

The authors realise the unimodal free energy ``F(rho) = (1/tau) ∫U rho - H(rho)``
(Prop 3.2) with ``M`` particles ``z_i = v_i / |v_i|`` on S^2 and minimise

    L(v) = mean_i U(z_i) / tau  +  mean_i log rho_h(z_i),
    rho_h(z_i) = mean_j exp(-d(z_i, z_j)^2 / (2 h^2)),     d = geodesic distance,

with Adam on the unnormalised ``v`` (lr 5e-2) and Gaussian noise (s.d. 0.06) added to
``v`` after every step. As in their code the particles live in R^3 and are projected
on read, so ``|v|`` grows as noise and Adam steps accumulate and the angular step and
noise shrink over training (an implicit annealing that this module reproduces, not
corrects). The KDE entropy is a surrogate: its minimiser is not the Gibbs density
once the Gibbs width is comparable to ``h``.

Public API:

* :func:`train_particles` — every run (seeds x taus x bandwidths, one particle count)
  trained at once as one batched program; returns ``z[runs, M, 3]``;
* :func:`log_kde` — ``log rho_h`` at the particles, an autograd function whose
  backward uses the symmetry of the pairwise kernel (the training hot loop);
* :func:`cap_fraction` — fraction of particles within geodesic radius r of any centre;
* :func:`gibbs_cap_mass` — the same mass under the Gibbs density, by quadrature;
* :func:`sample_gibbs` — exact i.i.d. draws from the Gibbs density (rejection), the
  reference a perfect particle method would match.

Cost: the pairwise kernel is evaluated only on the upper-triangular blocks of the
``[M, M]`` matrix (it is symmetric: 36/64 of the pairs), in float32 like the authors'
code, a cache-sized chunk of (block pair, run) tiles at a time. On the 2-core
development CPU the step is bound by float32 acos/exp/rsqrt throughput (~6 ms per
M = 768 system per step, one thread); see benchmarks/bench_particles.py.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from . import gibbs, quadrature, vmf

__all__ = [
    "Wells",
    "AdamSchedule",
    "train_particles",
    "log_kde",
    "cap_fraction",
    "gibbs_cap_mass",
    "sample_gibbs",
]

#: The authors clamp inner products to [-1 + 1e-6, 1 - 1e-6] before acos; so do we.
#: (Their autograd then zeroes the gradient of clamped pairs, ours keeps K' at the clamp:
#: for i = j that term is radial, invisible to z = v/|v|; distinct particles closer than
#: 1.4e-3 rad are the only other difference.)
_ACOS_CLAMP = 1e-6
#: Pairwise elements evaluated per chunk of tiles: 1 MB per float32 buffer, so the few
#: live buffers of a chunk stay in cache (the measured cost is flat from 2^16 to 2^21).
_CHUNK_ELEMENTS = 1 << 18
_MIN_BLOCK = 48


@dataclass(frozen=True)
class Wells:
    """The mixture potential ``U = -(1/kappa) log sum_k w_k exp(kappa <z, m_k>)`` on S^2."""

    means: tuple[tuple[float, ...], ...]
    weights: tuple[float, ...]
    kappa: float

    def __post_init__(self):
        if len(self.means) != len(self.weights) or not self.means:
            raise ValueError("one weight per well, at least one well")
        if any(len(m) != 3 for m in self.means):
            raise ValueError("wells are points of S^2 (3 coordinates)")
        if any(w <= 0 for w in self.weights) or not math.isclose(sum(self.weights), 1.0):
            raise ValueError(f"weights must be positive and sum to 1, got {self.weights}")
        if not self.kappa > 0:
            raise ValueError(f"kappa must be positive, got {self.kappa}")

    def centres(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """Unit well centres ``[K, 3]`` (the given means, normalised)."""
        m = torch.tensor(self.means, dtype=dtype, device=device)
        return m / m.norm(dim=-1, keepdim=True)

    def potential(self, z: torch.Tensor) -> torch.Tensor:
        """``U(z)`` for ``z[..., P, 3]`` (the shared :func:`gibbs.mixture_potential`)."""
        means = self.centres(z.dtype, z.device)
        weights = torch.tensor(self.weights, dtype=z.dtype, device=z.device)
        return gibbs.mixture_potential(z, means, weights, self.kappa)


@dataclass(frozen=True)
class AdamSchedule:
    """The authors' optimiser: Adam with torch's defaults, then Gaussian noise on ``v``."""

    steps: int = 5000
    lr: float = 5e-2
    noise_std: float = 0.06
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self):
        if self.steps < 0 or not self.lr > 0 or self.noise_std < 0:
            raise ValueError(f"invalid schedule {self}")


def train_particles(
    wells: Wells,
    tau,
    bandwidth,
    num_particles: int,
    schedule: AdamSchedule,
    generator: torch.Generator,
    *,
    entropy_weight: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Train one particle system per entry of ``tau[runs]`` / ``bandwidth[runs]``.

    Minimises ``mean U / tau + entropy_weight * mean log rho_h`` (``entropy_weight=1``
    is the authors' objective). Initial ``v ~ N(0, I_3)`` and the per-step noise are
    drawn from ``generator`` for the whole batch, so runs are independent replicates
    and the batch replays from the seed. Returns the unit particles ``[runs, M, 3]``
    (in ``dtype``; float32 is what the authors train in).
    """
    device = generator.device
    tau = torch.as_tensor(tau, dtype=dtype, device=device).reshape(-1)
    bandwidth = torch.as_tensor(bandwidth, dtype=dtype, device=device).reshape(-1)
    if tau.shape != bandwidth.shape:
        raise ValueError(f"tau {tuple(tau.shape)} and bandwidth {tuple(bandwidth.shape)} differ")
    if not (bool((tau > 0).all()) and bool((bandwidth > 0).all())):
        raise ValueError("tau and bandwidth must be positive")
    if num_particles < 2:
        raise ValueError("a KDE needs at least two particles")
    runs = tau.shape[0]
    v = torch.randn(runs, num_particles, 3, generator=generator, dtype=dtype, device=device)
    v.requires_grad_(True)
    first, second = torch.zeros_like(v), torch.zeros_like(v)  # Adam's moment estimates
    beta1, beta2 = schedule.betas
    inv_tau = (1.0 / tau)[:, None]
    for step in range(1, schedule.steps + 1):
        z = v / v.norm(dim=-1, keepdim=True)
        per_particle = wells.potential(z) * inv_tau + entropy_weight * log_kde(z, bandwidth)
        # Runs share no parameter, so the sum over runs gives each run its own gradient.
        (grad,) = torch.autograd.grad(per_particle.mean(dim=-1).sum(), v)
        with torch.no_grad():
            # torch.optim.Adam's update, elementwise and hence batched over runs (it is
            # written out: the first torch.optim step imports torch._dynamo, seconds).
            first.lerp_(grad, 1 - beta1)
            second.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (second.sqrt() / math.sqrt(1 - beta2**step)).add_(schedule.eps)
            v.addcdiv_(first, denom, value=-schedule.lr / (1 - beta1**step))
            if schedule.noise_std > 0:
                noise = torch.randn(v.shape, generator=generator, dtype=dtype, device=device)
                v.add_(noise, alpha=schedule.noise_std)
    with torch.no_grad():
        return v / v.norm(dim=-1, keepdim=True)


def log_kde(z: torch.Tensor, bandwidth: torch.Tensor) -> torch.Tensor:
    """``log rho_h(z_i)``, ``rho_h(z_i) = mean_j exp(-d(z_i, z_j)^2 / (2 h^2))``, ``[runs, M]``.

    ``z[runs, M, 3]`` unit vectors, ``bandwidth[runs]``. The kernel is unnormalised, as
    in the authors' code (a constant shift of the loss). Differentiable in ``z``.
    """
    if z.dim() != 3 or z.shape[-1] != 3:
        raise ValueError(f"z must be [runs, M, 3], got {tuple(z.shape)}")
    size = _blocking(z.shape[1], z.device)[0]
    tile_chunk = _CHUNK_ELEMENTS // (size * size)
    return _LogKDE.apply(z, bandwidth.to(z.dtype).reshape(-1), max(tile_chunk, 1))


def cap_fraction(z: torch.Tensor, centres: torch.Tensor, radius: float) -> torch.Tensor:
    """Fraction of ``z[..., M, 3]`` within geodesic distance ``radius`` of any ``centres[K, 3]``."""
    cosines = z @ centres.to(z.dtype).transpose(-1, -2)
    inside = (cosines >= math.cos(radius)).any(dim=-1)
    return inside.to(torch.float64).mean(dim=-1)


def gibbs_cap_mass(wells: Wells, tau, radius: float, nodes: int = 96, device=None) -> torch.Tensor:
    """Gibbs mass ``rho*_tau(union of caps)`` for ``tau[...]``, by quadrature (float64).

    Computed on ``device`` (``None``: tau's device when tau is a tensor, as in ``torch.as_tensor``).

    The caps must be disjoint. Each cap integral uses the shared Gauss-Legendre x
    uniform-phi grid with its ``cos(theta)`` nodes mapped affinely onto the cap's range
    ``[cos r, 1]`` around the well (so the cap boundary is a grid edge and the
    integrand is smooth: spectral convergence); the partition function uses the grid
    on the whole sphere, where ``exp(-U/tau)`` is smooth too.
    """
    tau = torch.as_tensor(tau, dtype=torch.float64, device=device)
    device = tau.device
    centres = wells.centres(device=device)
    if len(centres) > 1:
        gram = centres @ centres.T
        off_diagonal = ~torch.eye(len(centres), dtype=torch.bool, device=device)
        separation = torch.acos(gram[off_diagonal].clamp(-1, 1))
        if bool((separation <= 2 * radius).any()):
            raise ValueError("caps overlap: the union's mass is not the sum of cap masses")
    points, weights = quadrature.sphere_grid(nodes, 2 * nodes, device=device)
    log_z = gibbs.log_partition_function(wells.potential(points), tau, weights)
    cos_r = math.cos(radius)
    t = cos_r + (1.0 - cos_r) * (points[:, 2] + 1.0) / 2.0  # cos(theta) from the pole, in the cap
    ring = torch.sqrt((1.0 - t**2) / (1.0 - points[:, 2] ** 2))
    cap_local = torch.stack([points[:, 0] * ring, points[:, 1] * ring, t], dim=-1)
    cap_weights = weights * (1.0 - cos_r) / 2.0  # Jacobian of the affine map of cos(theta)
    mass = torch.zeros(tau.shape, dtype=torch.float64, device=device)
    for centre in centres:
        cap_points = cap_local @ _rotation_to(centre).T
        log_rho = -wells.potential(cap_points) / tau[..., None] - log_z[..., None]
        mass = mass + (log_rho.exp() * cap_weights).sum(dim=-1)
    return mass


def sample_gibbs(wells: Wells, tau, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` i.i.d. draws ``[runs, n, 3]`` from ``rho*_tau ∝ exp(-U/tau)`` for each ``tau[runs]``.

    Rejection from the uniform measure with acceptance ``exp(-(U + 1)/tau)``: since the
    weights sum to 1, ``U(z) >= -max_k <z, m_k> >= -1``, so the ratio is at most 1 and
    the accepted points are exact Gibbs draws (float64).
    """
    device = generator.device
    tau = torch.as_tensor(tau, dtype=torch.float64, device=device).reshape(-1)
    if not bool((tau > 0).all()) or n < 1:
        raise ValueError("tau must be positive and n >= 1")
    runs = tau.shape[0]
    out = torch.empty(runs, n, 3, dtype=torch.float64, device=device)
    filled = torch.zeros(runs, dtype=torch.long, device=device)
    while int(filled.min()) < n:
        proposals = vmf.sample_uniform_sphere((runs, 4 * n), 3, generator)
        ratio = torch.exp(-(wells.potential(proposals) + 1.0) / tau[:, None])
        accept = torch.rand(ratio.shape, generator=generator, dtype=torch.float64,
                            device=device) < ratio
        slot = filled[:, None] + accept.cumsum(dim=-1) - 1
        keep = accept & (slot < n)
        run_index = torch.arange(runs, device=device)[:, None].expand_as(keep)
        out[run_index[keep], slot[keep]] = proposals[keep]
        filled = torch.clamp(filled + accept.sum(dim=-1), max=n)
    return out


def _rotation_to(target: torch.Tensor) -> torch.Tensor:
    """A rotation matrix taking the north pole e_3 to the unit vector ``target``."""
    like = {"dtype": target.dtype, "device": target.device}
    north = torch.tensor([0.0, 0.0, 1.0], **like)
    axis = torch.linalg.cross(north, target)
    s, c = axis.norm(), torch.dot(north, target)
    if float(s) < 1e-12:
        flip = 1.0 if float(c) > 0 else -1.0  # the identity, or a half turn about e_1
        return torch.diag(torch.tensor([1.0, flip, flip], **like))
    k = axis / s
    skew = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]], **like)
    return torch.eye(3, **like) + s * skew + (1 - c) * skew @ skew


@functools.cache
def _blocking(m: int, device: torch.device) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Block size and the (row, column) block indices of the upper triangle, diagonal first
    (on ``device``: one cached copy per device, so no step copies indices to the device).

    At most 8 blocks (then the upper triangle is 36/64 of the matrix) and blocks of at
    least ``_MIN_BLOCK`` particles, below which batched matmuls are overhead-bound.
    """
    count = next(b for b in range(8, 0, -1) if m % b == 0 and (m // b >= _MIN_BLOCK or b == 1))
    rows, cols = torch.triu_indices(count, count, device=device)
    order = torch.argsort((cols - rows) != 0, stable=True)  # diagonal blocks first
    return m // count, rows[order], cols[order]


class _LogKDE(torch.autograd.Function):
    """Forward: ``log rho_h``. Backward: ``dL/dz_i = sum_j K'(x_ij) (c_i + c_j) z_j``.

    With ``x_ij = <z_i, z_j>``, ``rho_i = (1/M) sum_j K(x_ij)`` and upstream gradient
    ``g_i`` on ``log rho_i``, write ``c_i = g_i / (M rho_i)``; because ``K'(x_ij)`` is
    symmetric in (i, j), each off-diagonal block pair is computed once and used for
    both its rows and its columns. ``K(x) = exp(-acos(x)^2 / (2h^2))``,
    ``K'(x) = K(x) acos(x) / (h^2 sqrt(1 - x^2))``. Only ``K'`` blocks are saved.

    The work is a list of tiles, one per (block pair, run), block-pair-major so that
    the off-diagonal tiles are one contiguous range; the forward evaluates them
    ``tile_chunk`` at a time (cache-sized), the backward in two batched products.
    """

    @staticmethod
    def forward(ctx, z, bandwidth, tile_chunk):
        runs, m, _ = z.shape
        size, rows, cols = _blocking(m, z.device)
        count = m // size
        run = torch.arange(runs, device=z.device).repeat(len(rows))
        row_block = run * count + rows.repeat_interleave(runs)  # index into [runs * B]
        col_block = run * count + cols.repeat_interleave(runs)
        off = slice(count * runs, len(run))  # tiles of off-diagonal block pairs
        zf = z.detach().reshape(runs * count, size, 3)
        inv_two_h2 = (0.5 / bandwidth**2)[run].reshape(-1, 1, 1)
        row_sums = torch.zeros(runs * count, size, dtype=z.dtype, device=z.device)
        slopes = torch.empty(len(run), size, size, dtype=z.dtype, device=z.device)
        one = torch.ones((), dtype=z.dtype, device=z.device)
        for lo in range(0, len(run), tile_chunk):
            hi = min(lo + tile_chunk, len(run))
            x = zf[row_block[lo:hi]] @ zf[col_block[lo:hi]].transpose(-1, -2)  # [t, s, s]
            x.clamp_(-1 + _ACOS_CLAMP, 1 - _ACOS_CLAMP)
            theta = torch.acos(x)
            kernel = torch.mul(theta, theta).mul_(-inv_two_h2[lo:hi]).exp_()
            row_sums.index_add_(0, row_block[lo:hi], kernel.sum(dim=-1))
            first_off = max(lo, off.start)
            if first_off < hi:
                row_sums.index_add_(0, col_block[first_off:hi],
                                    kernel[first_off - lo:].sum(dim=-2))
            # h^2 K'(x) = K theta / sqrt(1 - x^2); the 1/h^2 is applied in backward.
            inv_sine = torch.addcmul(one, x, x, value=-1).rsqrt_()
            torch.mul(theta, kernel, out=slopes[lo:hi]).mul_(inv_sine)
        rho = row_sums.reshape(runs, m) / m
        ctx.save_for_backward(z.detach(), rho, bandwidth, slopes, row_block, col_block)
        ctx.block = (size, off)
        return rho.log()

    @staticmethod
    def backward(ctx, grad_log_rho):
        z, rho, bandwidth, slopes, row_block, col_block = ctx.saved_tensors
        size, off = ctx.block
        runs, m, _ = z.shape
        c = (grad_log_rho / (m * rho) / bandwidth[:, None] ** 2).reshape(-1, size, 1)
        zf = z.reshape(-1, size, 3)
        # [runs * B, 6, s]: z_j and c_j z_j, transposed: BLAS is much faster with the
        # thin [6, s] operand on the left.
        paired_t = torch.cat([zf, c * zf], dim=-1).transpose(-1, -2)
        grad = torch.zeros_like(zf)
        # Rows of each tile (I, J): sum_j K'_ij (c_i z_j + c_j z_j).
        by_rows = (paired_t[col_block] @ slopes.transpose(-1, -2)).transpose(-1, -2)
        grad.index_add_(0, row_block, c[row_block] * by_rows[..., :3] + by_rows[..., 3:])
        # Columns of the off-diagonal tiles: the transposed block.
        rows_off, cols_off = row_block[off], col_block[off]
        by_cols = (paired_t[rows_off] @ slopes[off]).transpose(-1, -2)
        grad.index_add_(0, cols_off, c[cols_off] * by_cols[..., :3] + by_cols[..., 3:])
        return grad.reshape(runs, m, 3), None, None
