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

Cost: one step is ~41M pair interactions at the authors' full setting (140 runs x 768^2/2).
Both passes visit each unordered pair once (the kernel is symmetric), in float32 like the
authors' code, with ``acos`` by a polynomial (:func:`_angle`). On the CPU in float32 they are C
loops (``kde_pairs.c``, built at first use by :mod:`.native`): each pair's kernel goes to its row
and its column from registers, one run per thread. Elsewhere (CUDA, float64, or no C compiler)
they are tile programs over the upper-triangular blocks of the ``[M, M]`` matrix, fused under
``torch.compile`` (eager where compilation fails); the backward recomputes the kernel. The
float32 kernels agree with a dense float64 evaluation to within 2^-16 (tests/test_particles.py and
the figs3-4-reproduction evidence). Training's gradient (of ``mean log rho``, one upstream weight
per run) is made in C with the density, each run's pair slopes kept in cache between the two
passes. Measured on a 2-core AVX2 CPU (AMD EPYC Zen 3), 2 threads, all 140 runs: 0.054 s per
step for density and gradient in C (0.044 + 0.053 s as two passes), against 0.16 s for the
compiled tiles; see benchmarks/bench_particles.py.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import warnings
from dataclasses import dataclass

import torch

from . import gibbs, native, quadrature, vmf
from .adam import BatchedAdam

__all__ = [
    "Wells",
    "AdamSchedule",
    "train_particles",
    "log_kde",
    "cap_fraction",
    "gibbs_cap_mass",
    "sample_gibbs",
    "ACOS_CLAMP",
    "kde_implementation",
]

#: The authors clamp inner products to [-1 + 1e-6, 1 - 1e-6] before acos; so do we.
#: (Their autograd then zeroes the gradient of clamped pairs, ours keeps K' at the clamp:
#: for i = j that term is radial, invisible to z = v/|v|; distinct particles closer than
#: 1.4e-3 rad are the only other difference.)
ACOS_CLAMP = 1e-6
#: Abramowitz & Stegun 4.4.46: ``acos(t) ~ sqrt(1 - t) sum_k a_k t^k`` on [0, 1], |error| <= 2e-8.
_ACOS_POLYNOMIAL = (1.5707963050, -0.2145988016, 0.0889789874, -0.0501743046, 0.0308918810,
                    -0.0170881256, 0.0066700901, -0.0012624911)
#: Pairwise elements per chunk of tiles on the CPU: a chunk's realised intermediates stay in the
#: last-level cache, and fewer chunks mean fewer parallel regions (at M = 768, two threads:
#: 0.114 / 0.106 / 0.099 / 0.110 s per step for 2^18 ... 2^21); on CUDA every tile goes at once.
_CHUNK_ELEMENTS = 1 << 20
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
        return gibbs.mixture_potential(z, *self._wells(z), self.kappa)

    def potential_gradient(self, z: torch.Tensor) -> torch.Tensor:
        """``grad_z U`` in R^3 for ``z[..., P, 3]`` (:func:`gibbs.mixture_potential_gradient`)."""
        return gibbs.mixture_potential_gradient(z, *self._wells(z), self.kappa)

    def _wells(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.centres(z.dtype, z.device), torch.tensor(self.weights, dtype=z.dtype, device=z.device)


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
    # Coordinate-major [runs, 3, M] state: |v|, <z, g> and the wells' logits reduce over the 3
    # coordinates with whole vectors of particles, where [runs, M, 3] reduced over a last
    # dimension of 3 (torch's norm there: ~2 ms a step at 140 x 768). Adam is elementwise, and
    # v0 and the noise are drawn [runs, M, 3] as before: the same stream, the same runs.
    start = torch.randn(runs, num_particles, 3, generator=generator, dtype=dtype, device=device)
    adam = BatchedAdam(start.transpose(1, 2).contiguous(), schedule.lr, schedule.betas, schedule.eps)
    potential_weight = (1.0 / (tau * num_particles))[:, None, None]
    for _ in range(schedule.steps):
        adam.step(_objective_gradient(adam.param, wells, potential_weight, bandwidth, entropy_weight))
        if schedule.noise_std > 0:
            noise = torch.randn(runs, num_particles, 3, generator=generator, dtype=dtype, device=device)
            adam.param.add_(noise.transpose(1, 2), alpha=schedule.noise_std)
    return (adam.param / _coordinate_norm(adam.param)).transpose(1, 2).contiguous()


def _coordinate_norm(v: torch.Tensor) -> torch.Tensor:
    """``|v|`` of coordinate-major ``v[runs, 3, M]`` as ``[runs, 1, M]``."""
    return v.square().sum(dim=1, keepdim=True).sqrt_()


def _objective_gradient(v, wells: Wells, potential_weight, bandwidth, entropy_weight) -> torch.Tensor:
    """Gradient in coordinate-major ``v[runs, 3, M]`` of ``sum_runs mean_i [U(z_i) / tau +
    entropy_weight log rho_h(z_i)]``, ``z = v / |v|`` (``potential_weight`` = 1 / (tau M) per
    run; runs share no parameter, so each gets its own). The potential's part in closed form, the
    KDE's by :func:`log_kde`'s backward (in C, made with the density), then the derivative of
    ``v / |v|``: the tangential part of the z-gradient over ``|v|``. Written out rather than
    autograd through the whole loss, whose small operations (in the order of 60 per step) were a
    third of a step at M = 384 (140 runs, one thread), the kernel's pair work the rest;
    tests/test_particles.py replays the authors' autograd loop."""
    norm = _coordinate_norm(v)
    z = (v / norm).requires_grad_(True)
    (entropy,) = torch.autograd.grad(log_kde(z.transpose(1, 2), bandwidth).mean(dim=-1).sum(), z)
    z = z.detach()
    g = wells.potential_gradient(z.transpose(1, 2)).transpose(1, 2) * potential_weight
    g = g + entropy_weight * entropy
    return (g - z * (z * g).sum(dim=1, keepdim=True)) / norm


def log_kde(z: torch.Tensor, bandwidth: torch.Tensor, *, fallback: bool = False) -> torch.Tensor:
    """``log rho_h(z_i)``, ``rho_h(z_i) = mean_j exp(-d(z_i, z_j)^2 / (2 h^2))``, ``[runs, M]``.

    ``z[runs, M, 3]`` unit vectors, ``bandwidth[runs]``. The kernel is unnormalised, as
    in the authors' code (a constant shift of the loss). Differentiable in ``z``.
    ``fallback``: the tile programs, eagerly, whatever the device and compiler (the code that
    trains where the C loops do not apply; a certificate checks it on any machine).
    """
    if z.dim() != 3 or z.shape[-1] != 3:
        raise ValueError(f"z must be [runs, M, 3], got {tuple(z.shape)}")
    bandwidth = bandwidth.to(z.dtype).reshape(-1)
    if bandwidth.shape[0] != z.shape[0]:
        raise ValueError(f"one bandwidth per run: {bandwidth.shape[0]} for {z.shape[0]} runs")
    lib = None if fallback else _native_library(z)
    if lib is not None:
        return _NativeLogKDE.apply(z, bandwidth, lib)
    size, rows, _ = _blocking(z.shape[1], z.device)
    tiles = len(rows) * z.shape[0]
    tile_chunk = tiles if z.device.type == "cuda" else max(_CHUNK_ELEMENTS // (size * size), 1)
    return _LogKDE.apply(z, bandwidth, tile_chunk, fallback)


def kde_implementation(device, dtype: torch.dtype, *, fallback: bool = False) -> str:
    """Which kernel :func:`log_kde` runs for tensors of ``device`` and ``dtype`` (for the evidence)."""
    lib = None if fallback else _native_library(torch.empty(0, dtype=dtype, device=device))
    if lib is not None:
        return f"C pair loops ({lib.build_flags})"
    compiled = (not fallback and _DENSITY.compiled is not None
                and os.environ.get("TORCH_COMPILE_DISABLE", "0") != "1")
    return "tile programs under torch.compile" if compiled else "tile programs, eager"


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
    least ``_MIN_BLOCK`` particles, below which a tile's loops are overhead-bound.
    """
    count = next(b for b in range(8, 0, -1) if m % b == 0 and (m // b >= _MIN_BLOCK or b == 1))
    rows, cols = torch.triu_indices(count, count, device=device)
    order = torch.argsort((cols - rows) != 0, stable=True)  # diagonal blocks first
    return m // count, rows[order], cols[order]


def _angle(x: torch.Tensor) -> torch.Tensor:
    """``acos(x)``. In float32 by Abramowitz & Stegun 4.4.46, ``acos(t) = sqrt(1 - t) P_7(t)``
    for ``t = |x|`` (absolute error <= 2e-8, below float32's resolution of an angle near pi,
    2.4e-7; the reflection ``pi - acos(-x)`` for x < 0): a square root and seven multiply-adds
    that vectorise, where the library acos costs ~1.6x more in the fused step. In float64,
    ``torch.acos`` itself (the polynomial would be the precision floor there)."""
    if x.dtype != torch.float32:
        return torch.acos(x)
    t = x.abs()
    poly = torch.full_like(t, _ACOS_POLYNOMIAL[-1])
    for coefficient in _ACOS_POLYNOMIAL[-2::-1]:
        poly = poly * t + coefficient
    near = torch.sqrt(1 - t) * poly
    return torch.where(x >= 0, near, math.pi - near)


def _tile_cosines(blocks, rows, cols) -> torch.Tensor:
    """``<z_i, z_j>`` of every (row, column) particle pair of the tiles ``(rows[t], cols[t])``,
    clamped as the authors do: ``[tiles, s, s]``. ``blocks[runs * B, 3, s]`` is coordinate-major
    (contiguous vector loads); the gathers happen inside the fused loop."""
    a, b = blocks[rows], blocks[cols]
    x = (a[:, 0, :, None] * b[:, 0, None, :] + a[:, 1, :, None] * b[:, 1, None, :]
         + a[:, 2, :, None] * b[:, 2, None, :])
    return x.clamp(-1 + ACOS_CLAMP, 1 - ACOS_CLAMP)


def _tile_density(blocks, rows, cols, inv_two_h2):
    """Row and column sums of ``K(x_ij) = exp(-acos(x_ij)^2 / (2 h^2))`` per tile ``[tiles, s]``."""
    theta = _angle(_tile_cosines(blocks, rows, cols))
    kernel = torch.exp(theta * theta * -inv_two_h2)
    return kernel.sum(-1), kernel.sum(-2)


def _tile_gradient(blocks, c, rows, cols, inv_two_h2):
    """Per tile ``sum_j W_ij z_j`` (rows) and ``sum_i W_ij z_i`` (columns), ``[tiles, 3, s]``,
    with ``W_ij = h^2 K'(x_ij) (c_i + c_j)``; ``h^2 K'(x) = K(x) acos(x) / sqrt(1 - x^2)``,
    the sine as ``sqrt((1 - |x|)(1 + |x|))``: the same rounded ``1 - |x|`` as in the angle,
    so their ratio stays accurate for nearly coincident particles."""
    x = _tile_cosines(blocks, rows, cols)
    theta = _angle(x)
    t = x.abs()
    slope = torch.exp(theta * theta * -inv_two_h2) * theta * torch.rsqrt((1 - t) * (1 + t))
    weight = slope * (c[rows][:, :, None] + c[cols][:, None, :])
    a, b = blocks[rows], blocks[cols]
    by_rows = torch.stack([(weight * b[:, d, None, :]).sum(-1) for d in range(3)], dim=1)
    by_cols = torch.stack([(weight * a[:, d, :, None]).sum(-2) for d in range(3)], dim=1)
    return by_rows, by_cols


class _Fused:
    """``fn`` under torch.compile: inductor fuses a tile program into one loop nest (vectorised
    C++ with OpenMP on the CPU, Triton on CUDA) that never writes a pairwise intermediate to
    memory. Where compilation fails (no C++ compiler, no Triton) the same function runs
    eagerly, with a warning: slower, same arithmetic. TORCH_COMPILE_DISABLE=1 forces eager."""

    def __init__(self, fn):
        # Compiled on first call: torch.compile imports dynamo and inductor (2.5 s), which a
        # process that never trains particles should not pay.
        self.eager, self.compiled = fn, functools.partial(_compile_and_call, self)

    def __call__(self, *args):
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as error:  # any backend failure: the eager code is the fallback
                warnings.warn(f"torch.compile failed ({type(error).__name__}: {error}); "
                              f"{self.eager.__name__} runs eagerly", RuntimeWarning, stacklevel=2)
                self.compiled = None
        return self.eager(*args)


def _compile_and_call(fused: _Fused, *args):
    fused.compiled = torch.compile(fused.eager)
    return fused.compiled(*args)


_DENSITY, _GRADIENT = _Fused(_tile_density), _Fused(_tile_gradient)


class _LogKDE(torch.autograd.Function):
    """Forward: ``log rho_h``. Backward: ``dL/dz_i = sum_j K'(x_ij) (c_i + c_j) z_j``.

    With ``x_ij = <z_i, z_j>``, ``rho_i = (1/M) sum_j K(x_ij)`` and upstream gradient
    ``g_i`` on ``log rho_i``, write ``c_i = g_i / (M rho_i)``. Both passes walk the
    upper-triangular block pairs only (K is symmetric), one tile per (block pair, run); each
    tile's row and column reductions come out of one fused loop over its pairs. A block's
    total is then its rows over the pairs where it is the row block plus its columns over the
    off-diagonal pairs where it is the column block: one small 0/1 matrix product
    (:func:`_incidence`). The backward recomputes the kernel instead of saving M^2 slopes
    (memory traffic costs more than the arithmetic). Tiles go ``tile_chunk`` at a time:
    cache-sized on the CPU, all at once on CUDA.
    """

    @staticmethod
    def forward(ctx, z, bandwidth, tile_chunk, eager):
        runs, m, _ = z.shape
        size, rows, cols = _blocking(m, z.device)
        count = m // size
        run = torch.arange(runs, device=z.device).repeat(len(rows))
        row_block = run * count + rows.repeat_interleave(runs)  # tile -> index into [runs * B]
        col_block = run * count + cols.repeat_interleave(runs)
        blocks = z.detach().reshape(runs * count, size, 3).transpose(1, 2).contiguous()
        inv_two_h2 = (0.5 / bandwidth**2)[run].reshape(-1, 1, 1)
        density = _DENSITY.eager if eager else _DENSITY
        parts = _tiled(density, (blocks,), row_block, col_block, inv_two_h2, tile_chunk)
        rho = _per_block(parts, m, runs).reshape(runs, m) / m
        ctx.save_for_backward(blocks, rho, bandwidth, row_block, col_block, inv_two_h2)
        ctx.tile_chunk, ctx.eager = tile_chunk, eager
        return rho.log()

    @staticmethod
    def backward(ctx, grad_log_rho):
        blocks, rho, bandwidth, row_block, col_block, inv_two_h2 = ctx.saved_tensors
        runs, m = rho.shape
        c = (grad_log_rho / (m * rho) / bandwidth[:, None] ** 2).reshape(-1, blocks.shape[-1])
        gradient = _GRADIENT.eager if ctx.eager else _GRADIENT
        parts = _tiled(gradient, (blocks, c), row_block, col_block, inv_two_h2, ctx.tile_chunk)
        grad = _per_block(parts, m, runs)  # [runs * B, 3, s]
        return grad.transpose(1, 2).reshape(runs, m, 3), None, None, None


def _native_library(z: torch.Tensor):
    """The built ``kde_pairs.c`` where it applies (float32 on the CPU), else ``None``."""
    return _kde_pairs() if z.device.type == "cpu" and z.dtype == torch.float32 else None


@functools.cache
def _kde_pairs():
    lib = native.library("kde_pairs")
    if lib is not None:
        p, n = ctypes.c_void_p, ctypes.c_int64
        lib.kde_pairs.argtypes = (p, p, n, n, n, n, p, p, p, p)
        lib.kde_scratch_floats.argtypes, lib.kde_scratch_floats.restype = (n,), n
    return lib


class _NativeLogKDE(torch.autograd.Function):
    """:class:`_LogKDE`'s two passes as the C loops of ``kde_pairs.c``: the same sums, each
    unordered pair once, on ``[runs, 3, stride]`` coordinate-major copies padded to whole
    64-byte vectors.

    Where ``z`` needs a gradient, the forward also makes the gradient for a unit upstream weight
    on every ``log rho_i``, in the same visit of each run's pairs (the slopes stay in cache
    between the passes). Training differentiates ``mean log rho``, whose upstream weight is the
    same for every particle of a run, so its backward is that gradient times the weight; any
    other upstream visits the pairs again with its own weights. At the authors' Figs. 3-4
    setting (2 threads, 2-core AVX2 CPU): 0.054 s per step for both, against 0.044 + 0.053 s in
    two visits."""

    @staticmethod
    def forward(ctx, z, bandwidth, lib):
        runs, m, _ = z.shape
        stride = -(-m // 16) * 16
        coords = z.new_zeros(runs, 3, stride)
        coords[:, :, :m] = z.detach().transpose(1, 2)
        inv_two_h2 = (0.5 / bandwidth**2).contiguous()
        sums = z.new_empty(runs, stride)
        unit_gradient = torch.empty_like(coords) if ctx.needs_input_grad[0] else None
        _kde_pairs_call(lib, coords, inv_two_h2, m, sums, None, unit_gradient)
        rho = sums[:, :m] / m
        ctx.save_for_backward(coords, rho, bandwidth, inv_two_h2, unit_gradient)
        ctx.lib = lib
        return rho.log()

    @staticmethod
    def backward(ctx, grad_log_rho):
        coords, rho, bandwidth, inv_two_h2, unit_gradient = ctx.saved_tensors
        runs, m = rho.shape
        per_run = grad_log_rho[:, :1]
        if bool((grad_log_rho == per_run).all()):
            return (unit_gradient[:, :, :m] * per_run[:, :, None]).transpose(1, 2), None, None
        c = coords.new_zeros(runs, coords.shape[-1])
        c[:, :m] = grad_log_rho / (m * rho) / bandwidth[:, None] ** 2
        grad = torch.empty_like(coords)
        _kde_pairs_call(ctx.lib, coords, inv_two_h2, m, torch.empty_like(c), c, grad)
        return grad[:, :, :m].transpose(1, 2), None, None


def _kde_pairs_call(lib, coords, inv_two_h2, m, sums, c, grad) -> None:
    """``kde_pairs`` on ``coords[runs, 3, stride]``: ``sums``, and ``grad`` unless None, with the
    weights ``c`` (None: a unit upstream weight on every log rho_i)."""
    runs, _, stride = coords.shape
    threads = torch.get_num_threads()
    scratch = coords.new_empty(threads * lib.kde_scratch_floats(stride))
    lib.kde_pairs(*(native.pointer(t) for t in (coords, inv_two_h2)), runs, m, stride, threads,
                  *(None if t is None else native.pointer(t) for t in (scratch, sums, c, grad)))


def _tiled(program, inputs, row_block, col_block, inv_two_h2, tile_chunk):
    """``program`` over all tiles, ``tile_chunk`` at a time: its (rows, columns) outputs, each
    ``[tiles, ...]``."""
    outputs = None
    for lo in range(0, len(row_block), tile_chunk):
        hi = min(lo + tile_chunk, len(row_block))
        tiles = (row_block[lo:hi], col_block[lo:hi], inv_two_h2[lo:hi])
        # One compiled program per block size and dtype, whatever the number of runs, blocks
        # and tiles (only the block size, the vectorised loop, stays static).
        for t in (*inputs, *tiles):
            if t.shape[0] > 1:
                torch._dynamo.mark_dynamic(t, 0)
        chunk = program(*inputs, *tiles)
        if outputs is None:
            outputs = [torch.empty((len(row_block), *o.shape[1:]), dtype=o.dtype, device=o.device)
                       for o in chunk]
        for whole, part in zip(outputs, chunk, strict=True):
            whole[lo:hi] = part
    return outputs


def _per_block(parts, m: int, runs: int) -> torch.Tensor:
    """Sum tile outputs ``(by_rows, by_cols)``, each ``[pairs * runs, ...]`` (block-pair-major),
    into per-block totals ``[runs * B, ...]``."""
    by_rows, by_cols = parts
    as_row, as_col = _incidence(m, by_rows.device, by_rows.dtype)
    trailing = by_rows.shape[1:]
    total = (as_row @ by_rows.reshape(as_row.shape[1], -1)
             + as_col @ by_cols.reshape(as_col.shape[1], -1))  # [B, runs * prod(trailing)]
    return total.reshape(len(as_row), runs, *trailing).transpose(0, 1).reshape(-1, *trailing)


@functools.cache
def _incidence(m: int, device: torch.device, dtype: torch.dtype):
    """0/1 matrices ``[B, pairs]``: block I is the row block of pair p; block I is the column
    block of an off-diagonal pair p (a diagonal pair's columns are its rows)."""
    _, rows, cols = _blocking(m, device)
    blocks = torch.arange(int(rows.max()) + 1, device=device)[:, None]
    as_row = (rows[None, :] == blocks).to(dtype)
    as_col = ((cols[None, :] == blocks) & (rows != cols)[None, :]).to(dtype)
    return as_row, as_col
