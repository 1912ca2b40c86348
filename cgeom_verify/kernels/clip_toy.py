"""The authors' two-modality toy of paper Fig. 5, every run in one tensor program.

Settings: docs/derivations.md, "Fig. 5 two-modality toy".

Data: an angle ``theta ~ w vM(0, kappa) + (1-w) vM(pi, kappa)`` (w = 0.7, kappa = 6); its
pair ``theta2 = theta + sigma N(0, 1)`` (wrapped); inputs ``x = (cos, sin) + 0.02 N(0, I)``.
Two linear 2x2 encoders without bias, outputs L2-normalised, trained on the symmetric CLIP
loss (mean of the two cross-entropies) at tau = 0.07, batch 256, Adam lr 5e-3.

A sweep trains R runs (sigmas x seeds) at once: weights ``[2, R, 2, 2]`` and one
:class:`adam.BatchedAdam` step for all (Adam is elementwise, so runs stay independent).

The loss gradient is exact but never forms the B x B logit matrix. On the circle
``exp(kappa <z, w>) = e^kappa sum_{|k|<K} ive(k, kappa) e^{ik(phi - psi)}`` (Jacobi-Anger),
so every kernel sum ``sum_j exp(kappa <z_i, w_j>) g_j`` is a trigonometric polynomial of
degree K - 1 in phi_i whose coefficients are weighted moments of the w_j: O(B K) work per
run instead of O(B^2). K is the smallest degree whose dropped tail is below ``tail`` times the
largest kernel value (K = 29 at tau = 0.07 for the default 1e-10, far below any
statistical effect of training); the certificate compares the
result with autograd of a separately written CLIP loss (claim fig5-gap-grows-with-misalignment),
the tests with autograd through :func:`cgeom_verify.kernels.infonce.symmetric_infonce`.
Only the tangential part of dJ/dz survives the chain rule through ``z = y / |y|``, so each
vector sum is needed as one component, itself a trigonometric polynomial (degree K) in the
same moments (:class:`KernelExpansion`).

Cost (the authors' Fig. 5 setting, 160 runs x 2000 steps, B = 256, float64, one torch thread,
this project's 2-core AMD EPYC with other jobs on it; benchmarks/bench_modality_gap.py). Per
step and chunk of 21 runs, both sides as one batch: a power table ``[42, 60, 256]`` (cos and
sin of n phi, n <= 29) built by doubling, then four batched products over it (moments; the
kernel sum and the tangential sum at each point; moments weighted by 1 / kernel sum; the second
tangential sum). The chunk's table (5 MiB, :data:`_CACHE_BYTES`) stays in cache between the
passes and is one buffer reused across chunks and steps (a fresh one per chunk cost page
faults). Measured per step at load ~3: ~10 ms for the chunks (table ~4, products ~5), ~5 ms
for the rest of the gradient, ~6 ms for the minibatch (normals by torch.randn's transform,
vectorised: :func:`_randn`); 19-21 ms in all, the sweep 40-42 s wall / 39-40 s CPU at load
3-4 (the code before: 149 s wall / 147 s CPU at load ~1.5, 318 s / 235 s at higher load,
71-73 ms per step side by side at load 3). With one intra-op thread and a spare core the next
minibatch is drawn on a worker thread (:func:`_minibatches`): 16 against 26 ms per step at
load 1.7 (before the faster normals), ~8% on the step at load >= 2.4, hence only below a load
of cores - 1/2. Numbers
are those of the code before, to rounding: the gradient agrees to 1e-11 relative, as far as
both are from a long-double sum of the same series; a 10-step trajectory to ~1e-12 (rounding
alone moves it 2e-14 to 1e-9 over 10 to 50 steps). Runs that end near-singular are chaotic:
their final D_S moves with any rounding, as with the old code under another power recurrence,
so compare medians. torch.compile was tried for the passes (19.6 ms per step compiled, 118 s
cold compile): not used.

The same weighted kernel sums give the gradient of the deterministic large-batch objective
(Thm 4.1) ``J_mm = -(1/tau) sum P_ij <z_i, w_j> + (1/2) sum_i a_i log sum_j b_j k(z_i, w_j)
+ (1/2) sum_j b_j log sum_i a_i k(z_i, w_j)`` on a quadrature grid (:func:`train_population`):
a minibatch is the case ``a = b = 1/B``, ``P = I/B``.

Public API: :class:`ToyData`, :class:`KernelExpansion`, :func:`sample_pairs`,
:func:`initial_weights`, :func:`train_sweep`, :func:`embed`, :func:`embedding_angles`,
:func:`alignment_metrics`, :class:`PopulationGrid`, :func:`train_population`,
:func:`pushforward_density`, :func:`symmetric_gap`, :func:`smallest_gap`.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from scipy import special

from .adam import BatchedAdam

__all__ = [
    "ToyData",
    "KernelExpansion",
    "sample_pairs",
    "initial_weights",
    "train_sweep",
    "embed",
    "embedding_angles",
    "alignment_metrics",
    "PopulationGrid",
    "train_population",
    "pushforward_density",
    "symmetric_gap",
    "smallest_gap",
]

TWO_PI = 2.0 * math.pi


@dataclass(frozen=True)
class ToyData:
    """The paired-angle law of the toy and its encoder inputs."""

    weight: float = 0.7  #: mass of the vM(0, kappa) component (the rest is at pi)
    kappa: float = 6.0
    input_noise: float = 0.02
    #: cells of the inverse-CDF table; each cell's mass is Simpson-exact to ~1e-14 and the
    #: density inside a cell is taken flat (relative error <= kappa * 2 pi / cells ~ 2e-3 locally,
    #: a KL error below 1e-6).
    table_cells: int = 1 << 14

    def __post_init__(self):
        if not 0.0 <= self.weight <= 1.0 or self.kappa < 0 or self.input_noise < 0:
            raise ValueError(f"invalid toy data law {self}")

    def density(self, theta: torch.Tensor) -> torch.Tensor:
        """Density of theta w.r.t. the uniform probability measure on the circle."""
        norm = special.ive(0, self.kappa)
        c = torch.cos(theta)
        return (
            self.weight * torch.exp(self.kappa * (c - 1))
            + (1 - self.weight) * torch.exp(self.kappa * (-c - 1))
        ) / norm

    def fourier(self, count: int) -> np.ndarray:
        """``E exp(-i k theta)``, k = 0..count-1 (real: both modes sit on the real axis)."""
        k = np.arange(count)
        return (
            special.ive(k, self.kappa)
            / special.ive(0, self.kappa)
            * (self.weight + (1 - self.weight) * (-1.0) ** k)
        )

    def sample_angles(self, shape, generator: torch.Generator) -> torch.Tensor:
        """Inverse-CDF draws from the cell table (linear inside a cell)."""
        table = self._table(generator.device)
        u = torch.rand(shape, generator=generator, dtype=torch.float64, device=generator.device)
        cell = table.cells.index_select(0, table.locate(u).view(-1) - 1)  # grid, cdf at its ends
        g0, c0, c1, g1 = cell.view(*u.shape, 4).unbind(-1)
        return g0 + (u - c0) / (c1 - c0) * (g1 - g0)

    def _table(self, device) -> _InverseCdf:
        key = (str(device),)
        cache = _TABLES.setdefault(self, {})
        if key not in cache:
            grid = torch.linspace(
                -math.pi, math.pi, self.table_cells + 1, dtype=torch.float64, device=device
            )
            mid = 0.5 * (grid[:-1] + grid[1:])
            mass = (self.density(grid[:-1]) + 4 * self.density(mid) + self.density(grid[1:])) / 6
            cdf = torch.cat([mass.new_zeros(1), torch.cumsum(mass, 0)])
            cache[key] = _InverseCdf.build(grid, cdf / cdf[-1])
        return cache[key]


@dataclass(frozen=True)
class _InverseCdf:
    """The sampler's cell table and a guide for finding a draw's cell.

    ``locate(u)`` is ``searchsorted(cdf, u, right=True)`` clamped to [1, cells], found from a
    guide over 2^18 equal bins of u (the cells a bin can hold are known in advance) and a few
    fixed bisection steps inside the bin: the same index, at a third of the cost. Where a bin
    may hold more than 15 cells (very peaked laws) it is ``searchsorted`` itself.
    """

    cdf: torch.Tensor
    cells: torch.Tensor  #: [cells, 4]: grid and cdf at each cell's two ends
    guide: torch.Tensor | None  #: [bins + 1]: searchsorted(cdf, k / bins, right=True)
    steps: tuple[int, ...]  #: bisection step sizes inside a bin, largest first

    BITS = 18
    MOST_STEPS = 4

    @classmethod
    def build(cls, grid: torch.Tensor, cdf: torch.Tensor) -> _InverseCdf:
        cells = torch.stack([grid[:-1], cdf[:-1], cdf[1:], grid[1:]], -1)
        bins = 1 << cls.BITS
        edges = torch.arange(bins + 1, dtype=torch.float64, device=cdf.device) / bins  # exact
        guide = torch.searchsorted(cdf, edges, right=True)
        span = int((guide[1:] - guide[:-1]).max())  # cells whose left end a bin can pass
        count = span.bit_length()  # 2^count - 1 >= span
        if count > cls.MOST_STEPS:
            return cls(cdf, cells, None, ())
        return cls(cdf, cells, guide, tuple(1 << s for s in reversed(range(count))))

    def locate(self, u: torch.Tensor) -> torch.Tensor:
        last = self.cdf.numel() - 1
        if self.guide is None:
            return torch.searchsorted(self.cdf, u, right=True).clamp_(1, last)
        bins = self.guide.numel() - 1
        # the bin's guide counts the cdf values <= its left edge <= u: a lower bound on the
        # answer; each step moves up by `step` while the cdf value there is still <= u (cdf[last]
        # = 1 > u stops any step that would pass the end)
        pos = self.guide.take((u * bins).long())
        for step in self.steps:
            probe = (pos + (step - 1)).clamp_(max=last)
            pos.add_(self.cdf.take(probe) <= u, alpha=step)
        return pos.clamp_(1, last)


_TABLES: dict = {}


def sample_pairs(
    data: ToyData,
    sigma: torch.Tensor,
    n: int,
    generator: torch.Generator,
    identical_inputs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` input pairs for every run: ``x1, x2 [R, n, 2]`` (``sigma [R]`` per run).

    ``identical_inputs`` feeds the first modality's inputs to both encoders (a control:
    then the pairs carry no misalignment at all, whatever sigma says). ``sigma`` must be on the
    generator's device, where the pairs are drawn.
    """
    if sigma.device.type != generator.device.type:
        raise ValueError(f"sample_pairs: sigma is on {sigma.device}, the generator on "
                         f"{generator.device}; make both on the run's device")
    runs = sigma.shape[0]
    theta = data.sample_angles((runs, n), generator)
    x1 = _circle(theta) + data.input_noise * _randn((runs, n, 2), generator)
    if identical_inputs:
        return x1, x1
    theta2 = theta + sigma[:, None] * _randn((runs, n), generator)
    x2 = _circle(theta2) + data.input_noise * _randn((runs, n, 2), generator)
    return x1, x2


def initial_weights(runs: int, generator: torch.Generator, identical: bool = False) -> torch.Tensor:
    """``[2, R, 2, 2]`` encoder weights, U(-1/sqrt 2, 1/sqrt 2) as torch.nn.Linear(2, 2) draws them;
    ``identical`` starts both encoders at the same matrix (q1 = q2 up to the inputs' laws)."""
    bound = 1.0 / math.sqrt(2.0)

    def draw():
        u = torch.rand(
            runs, 2, 2, generator=generator, dtype=torch.float64, device=generator.device
        )
        return (2 * u - 1) * bound

    first = draw()
    return torch.stack([first, first.clone() if identical else draw()])


class KernelExpansion:
    """Weighted kernel sums for ``k(z, w) = exp(kappa (<z, w> - 1))`` on S^1, kappa = 1/tau.

    ``gradient(z1, z2, ...)`` returns the gradient of
    ``J = -kappa sum_ij P_ij <z1_i, z2_j> + (1/2) sum_i a_i log r_i + (1/2) sum_j b_j log c_j``,
    ``r_i = sum_j b_j k_ij``, ``c_j = sum_i a_i k_ij``, with respect to the (unit) embeddings,
    and J itself. The alignment enters through ``pair_z2 = P z2`` and ``pair_z1 = P^T z1``.
    The Bessel coefficients live on ``device`` (that of the embeddings; ``None``: the CPU).

    The kernel is the truncated series ``k(delta) = sum_{|n| < degree} ive(n, kappa) e^{in delta}``
    (``delta`` the angle between z and w). A vector sum ``sum_j w_j k_ij z2_j`` is taken in the frame
    of ``z1_i`` (radial ``z``, tangential ``t = (-z_y, z_x)``): ``k(delta) (cos delta, -sin delta)``
    of the truncated kernel is again a trigonometric polynomial, of degree ``degree``, with
    coefficients ``lam_{m-1} +- lam_{m+1}`` (:attr:`radial`, :attr:`tangent`), so each component is
    one polynomial in ``phi_i`` whose coefficients are moments of the w_j: the same numbers as the
    truncated kernel times ``z2_j``, without the radial part where only the tangential one is needed
    (the chain rule through ``z = y / |y|`` keeps only that).
    """

    def __init__(self, tau: float, tail: float = 1e-10, device=None):
        if tau <= 0:
            raise ValueError(f"temperature must be positive, got {tau}")
        self.kappa = 1.0 / tau
        coeff = special.ive(np.arange(4096), self.kappa)
        tails = 2 * np.cumsum(coeff[::-1])[::-1]  # tails[K] = 2 sum_{k >= K} ive(k, kappa)
        below = np.nonzero(tails < tail * coeff[0])[0]
        if below.size == 0:
            raise ValueError(f"tau = {tau} needs more than 4096 harmonics")
        self.degree = d = int(below[0])  # harmonics 0..degree-1 of the kernel are kept
        self.harmonics = d + 1  # power tables: 0..degree (the frame's polynomials reach degree)
        lam = np.zeros(d + 2)
        lam[:d] = coeff[:d]
        #: rows of the kernel polynomial: ``(1, 2, 2, ...) lam_n``, n = 0..degree (lam_degree = 0)
        kernel = np.where(np.arange(d + 1) == 0, 1.0, 2.0) * lam[: d + 1]
        #: ``k(delta) cos delta = sum_m radial_m cos(m delta)``: lam_1, lam_0 + lam_2, lam_{m-1} + lam_{m+1}
        radial = np.r_[lam[1], lam[:d] + lam[2 : d + 2]]
        #: ``k(delta) sin delta = sum_m tangent_m sin(m delta)``: 0, lam_0 - lam_2, lam_{m-1} - lam_{m+1}
        tangent = np.r_[0.0, lam[:d] - lam[2 : d + 2]]
        # Moments M = sum_j w_j (cos n psi_j; sin n psi_j) -> coefficients on a table's (cos; sin)
        # rows, as right-multiplied maps: the kernel sum (kernel_n M^c_n, kernel_n M^s_n); the
        # tangential component sum_m tangent_m (M^s_m cos m phi - M^c_m sin m phi); the radial one
        # sum_m radial_m (M^c_m cos m phi + M^s_m sin m phi).
        zero = np.zeros((d + 1, d + 1))
        tangent_map = np.block([[zero, -np.diag(tangent)], [np.diag(tangent), zero]])
        radial_map = np.diag(np.r_[radial, radial])
        like = {"dtype": torch.float64, "device": device}
        self.coefficients = torch.as_tensor(coeff[:d], **like)
        self.kernel, self.radial, self.tangent = (
            torch.as_tensor(v, **like) for v in (kernel, radial, tangent)
        )
        frames = {1: [tangent_map], 2: [tangent_map, radial_map]}
        self._tables: dict = {}
        self._moment_maps = {
            frame: (
                torch.as_tensor(np.hstack([np.diag(np.r_[kernel, kernel]), *maps]), **like),
                torch.as_tensor(np.hstack(maps), **like),
            )
            for frame, maps in frames.items()
        }

    def gradient(self, z1, z2, a, b, pair_z2, pair_z1):
        (r1, t1), (r2, t2), log_value = self.log_terms(z1, z2, a, b, radial=True)
        k = self.kappa
        g1 = -k * pair_z2 + r1.unsqueeze(-1) * z1 + t1.unsqueeze(-1) * _turn(z1)
        g2 = -k * pair_z1 + r2.unsqueeze(-1) * z2 + t2.unsqueeze(-1) * _turn(z2)
        return g1, g2, -k * (z1 * pair_z2).sum((-1, -2)) + log_value

    def log_terms(self, z1, z2, a, b, radial: bool = False):
        """The gradient of ``(1/2) sum_i a_i log r_i + (1/2) sum_j b_j log c_j`` in each point's
        frame, and that value: ``((radial1, tangent1), (radial2, tangent2), value)`` with
        ``[R, B]`` components (the radial ones ``None`` unless ``radial``)."""
        n1, n2 = z1.shape[1], z2.shape[1]
        if n1 != n2:  # pad the shorter side with weightless points
            n = max(n1, n2)
            z1, z2, a, b = (_pad(t, n) for t in (z1, z2, a, b))
        radial_part, tangent, value = self._frame_terms(
            torch.stack([z1, z2], 1), torch.stack([a, b], 1), radial
        )
        r1, r2 = (None, None) if radial_part is None else (radial_part[:, 0, :n1], radial_part[:, 1, :n2])
        return (r1, tangent[:, 0, :n1]), (r2, tangent[:, 1, :n2]), value

    def _frame_terms(self, z, w, radial: bool):
        """:meth:`log_terms` for the two sides stacked: points ``z [R, 2, B, 2]``, weights
        ``w [R, 2, B]``; returns radial (or None) and tangential parts ``[R, 2, B]`` and the value.

        Work is O(R B harmonics); on the CPU the runs go in chunks whose power tables stay in
        cache (:data:`_CACHE_BYTES`), elsewhere all at once.
        """
        runs, _, n, _ = z.shape
        frame = 1 + radial  # components per vector sum
        maps = self._maps(z.device, frame)
        # per side: its kernel sum (r or c) and the vector sum over the other side (weights w) ...
        first = z.new_empty(runs, 2, 1 + frame, n)
        # ... and the vector sum over the other side weighted by w / (the other's kernel sum)
        second = z.new_empty(runs, 2, frame, n)
        steps = _doubling_steps(z, self.harmonics)  # [R, 2, levels, 2, B]
        step = runs
        if z.device.type == "cpu":
            step = max(1, _CACHE_BYTES // (8 * 2 * self.harmonics * 2 * n))
        table = self._workspace(z, 2 * step)
        for s in range(0, runs, step):
            chunk = slice(s, s + step)
            self._passes(steps[chunk], w[chunk], first[chunk], second[chunk], table, *maps)
        kernel_sum = first[:, :, 0]
        k = 0.5 * self.kappa
        kw = k * w
        tangent = kw * (first[:, :, 1] / kernel_sum + second[:, :, 0])
        radial_part = kw * (first[:, :, 2] / kernel_sum + second[:, :, 1]) if radial else None
        value = 0.5 * (w * torch.log(kernel_sum)).sum(-1).sum(-1)
        return radial_part, tangent, value

    def _workspace(self, z, batch):
        """The power-table buffer ``[batch, 2, harmonics, B]``, kept between calls: a fresh
        multi-MiB buffer per chunk costs page faults (the allocator hands such blocks back to
        the system), more than building the table. So an expansion serves one thread."""
        shape = (batch, 2, self.harmonics, z.shape[-2])
        key = (z.device, z.dtype)
        held = self._tables.get(key)
        if held is None or held.shape != shape:
            held = self._tables[key] = z.new_empty(shape)
        return held

    def _passes(self, steps, w, first, second, table, kernel_map, vector_map):
        """One chunk of runs, both sides as one batch ``(run, side)``: power tables, then four
        passes over them, each a batch of small matrix products: moments (weights w) -> at each
        point, the kernel sum and the vector sum over the other side -> moments with weights
        w / kernel sum -> at each point, the vector sum over the other side with those."""
        runs, n = w.shape[0], w.shape[-1]
        batch, h2 = 2 * runs, 2 * self.harmonics
        x = _table_from_steps(steps.reshape(batch, *steps.shape[2:]), self.harmonics, table[:batch])
        xt = x.transpose(1, 2)
        moments = torch.bmm(w.reshape(batch, 1, n), xt).view(runs, 2, h2)
        coef = moments.flip(1) @ kernel_map  # the other side's moments
        torch.bmm(coef.view(batch, -1, h2), x, out=first.view(batch, -1, n))
        scaled = (w / first[:, :, 0]).view(batch, 1, n)
        moments = torch.bmm(scaled, xt).view(runs, 2, h2)
        coef = moments.flip(1) @ vector_map
        torch.bmm(coef.view(batch, -1, h2), x, out=second.view(batch, -1, n))

    def _maps(self, device, frame):
        """Linear maps from moments ``sum_j w_j (cos n psi_j; sin n psi_j)`` to coefficients on
        the (cos; sin) rows of a power table: the first gives the kernel sum and the vector
        sum's components (tangential, then radial if ``frame`` is 2), the second only the latter."""
        kernel, vector = self._moment_maps[frame]
        return kernel.to(device), vector.to(device)


def embed(weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L2-normalised outputs of linear encoders: ``weights [R, 2, 2]``, ``x [R, n, 2]``."""
    y = x @ weights.transpose(-1, -2)
    return y / y.norm(dim=-1, keepdim=True)


def embedding_angles(weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _angle(x @ weights.transpose(-1, -2))


def _angle(v: torch.Tensor) -> torch.Tensor:
    """Angle of planar vectors, ``[..., 2] -> [...]`` in [-pi, pi]."""
    return torch.atan2(v[..., 1], v[..., 0])


def train_sweep(
    data: ToyData,
    sigma: torch.Tensor,
    weights: torch.Tensor,
    *,
    steps: int,
    generator: torch.Generator,
    tau: float = 0.07,
    batch: int = 256,
    lr: float = 5e-3,
    betas: tuple = (0.9, 0.999),
    identical_inputs: bool = False,
    checkpoints=(),
) -> dict[int, torch.Tensor]:
    """Train every run of ``sigma [R]`` from ``weights [2, R, 2, 2]`` on fresh minibatches.

    Returns ``{step: weights}`` at 0, each checkpoint and ``steps``.
    """
    if steps < 1 or batch < 2:
        raise ValueError("need steps >= 1 and batch >= 2")
    expansion = KernelExpansion(tau, device=weights.device)
    adam = BatchedAdam(weights, lr, betas)
    runs = sigma.shape[0]
    uniform = torch.full((runs, batch), 1.0 / batch, dtype=weights.dtype, device=weights.device)
    history = {0: weights.clone()}
    draws = _minibatches(
        lambda: sample_pairs(data, sigma, batch, generator, identical_inputs),
        steps,
        prefetch=PREFETCH and generator.device.type == "cpu",
    )
    for step, (x1, x2) in enumerate(draws, start=1):
        w = adam.param
        g1, g2, _ = _encoder_gradient(
            expansion, w[0], w[1], x1, x2, uniform, uniform, lambda z1, z2: (z2 / batch, z1 / batch)
        )
        adam.step(torch.stack([g1, g2]))
        if step in checkpoints or step == steps:
            history[step] = adam.param.clone()
    return history


def alignment_metrics(z1: torch.Tensor, z2: torch.Tensor, group: int = 256):
    """Mean paired cosine and top-1 retrieval (both directions averaged) on held-out pairs.

    Retrieval is among ``group`` candidates (the training batch size): the n pairs of each
    run are cut into n // group disjoint groups.
    """
    cosine = (z1 * z2).sum(-1).mean(-1)
    runs, n, _ = z1.shape
    groups = n // group
    if groups < 1:
        raise ValueError(f"need at least {group} pairs for top-1 retrieval among {group}")
    a, b = (_angle(z[:, : groups * group]).reshape(runs, groups, group) for z in (z1, z2))
    hits = 0.5 * (_top1_hits(a, b) + _top1_hits(b, a))
    return cosine, hits.flatten(1).mean(-1)


def _top1_hits(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Whether query i's most similar candidate is candidate i, for unit vectors in the plane
    given by their angles (``[..., G]`` each -> ``[..., G]`` as 0/1 in their dtype).

    The cosine falls with the circular distance between angles, so the most similar candidate
    is a circular neighbour of the query among the candidates' sorted angles: O(G log G) per
    group where the dense ``[G, G]`` similarity argmax costs O(G^2) (on the full profile,
    ~1.7e5 pairs per run). Each neighbour is taken as the lowest index among candidates at
    its angle, and of the two the nearer wins, the lower index on a tie: the dense argmax's
    first maximal index. The two agree but where distinct angles lie within rounding of each
    other (tests/test_modality_gap.py checks them against each other).
    """
    size = candidates.shape[-1]
    angles, order = torch.sort(candidates, dim=-1, stable=True)  # equal angles by index
    above = torch.searchsorted(angles, queries.contiguous())  # the first of its equal angles
    below = torch.searchsorted(angles, angles.gather(-1, (above - 1) % size))  # the first, too
    neighbours = torch.stack([below, above % size], dim=-1).flatten(-2)
    gap = (queries.unsqueeze(-1) - angles.gather(-1, neighbours).view(*queries.shape, 2)).abs()
    distance = torch.minimum(gap, 2 * math.pi - gap)
    index = order.gather(-1, neighbours).view(*queries.shape, 2)
    first = (distance[..., 0] < distance[..., 1]) | (
        (distance[..., 0] == distance[..., 1]) & (index[..., 0] < index[..., 1]))
    best = torch.where(first, index[..., 0], index[..., 1])
    return (best == torch.arange(size, device=best.device)).to(queries.dtype)


@dataclass(frozen=True)
class PopulationGrid:
    """Quadrature for the population objective: ``points`` angles on a uniform grid.

    Modality 1 sits at the grid with weights ``p`` (the data law), modality 2 at the same grid
    with the law of ``theta + sigma N`` (``p`` convolved with the wrapped normal, exactly in
    Fourier space); the coupling is ``P_ij = p_i c_sigma(theta_j - theta_i)``.
    """

    points: int = 512
    harmonics: int = 64  #: data-law Fourier terms kept: ive(64, 6)/ive(0, 6) < 1e-90

    def laws(self, data: ToyData, sigma: torch.Tensor):
        like = {"dtype": torch.float64, "device": sigma.device}
        theta = torch.arange(self.points, **like) * (TWO_PI / self.points)
        k = torch.arange(self.harmonics, **like)
        coeff = torch.as_tensor(data.fourier(self.harmonics), **like)
        wn = torch.exp(-0.5 * (k * sigma[:, None]) ** 2)  # [R, K]
        basis = torch.cos(k[:, None] * theta[None, :])  # the law is even in theta
        weight = torch.cat([coeff[:1], 2 * coeff[1:]])
        p1 = (weight @ basis).expand(sigma.shape[0], -1) / self.points
        p2 = ((weight * wn) @ basis) / self.points
        return theta, p1, p2


def train_population(
    data: ToyData,
    sigma: torch.Tensor,
    weights: torch.Tensor,
    *,
    steps: int,
    grid: PopulationGrid = PopulationGrid(),
    tau: float = 0.07,
    lr: float = 5e-3,
):
    """Adam on the deterministic J_mm (no minibatch, no input noise) for every run; returns
    ``(final weights [2, R, 2, 2], J_mm per run)``."""
    expansion = KernelExpansion(tau, device=weights.device)
    theta, a, b = grid.laws(data, sigma)
    x = _circle(theta).expand(sigma.shape[0], -1, -1)
    points = grid.points

    frequency = torch.arange(points // 2 + 1, dtype=torch.float64, device=sigma.device)
    wrapped_normal = torch.exp(-0.5 * (frequency * sigma[:, None]) ** 2).unsqueeze(-1)

    def couple(field):  # C_sigma field: the wrapped-normal conditional mean, exact in Fourier space
        return torch.fft.irfft(torch.fft.rfft(field, dim=1) * wrapped_normal, n=points, dim=1)

    def pair(z1, z2):
        return a.unsqueeze(-1) * couple(z2), couple(a.unsqueeze(-1) * z1)

    adam = BatchedAdam(weights, lr)
    value = None
    for _ in range(steps):
        w = adam.param
        g1, g2, value = _encoder_gradient(expansion, w[0], w[1], x, x, a, b, pair)
        adam.step(torch.stack([g1, g2]))
    return adam.param.clone(), value


def pushforward_density(
    data: ToyData,
    weights: torch.Tensor,
    phi: torch.Tensor,
    sigma: torch.Tensor | None = None,
    harmonics: int = 64,
) -> torch.Tensor:
    """Density (w.r.t. the uniform probability measure) of ``arg(W u(theta))`` at angles ``phi``.

    ``theta`` follows the data law, convolved with the wrapped normal of ``sigma`` when
    given (the second modality's law). With ``v = W^{-1} u(phi)``:
    ``q(phi) = p(arg v) / (|det W| |v|^2)``. ``weights [R, 2, 2]``, ``phi [M]`` -> ``[R, M]``.
    The law's Fourier series is cut at ``harmonics`` (64: below 1e-90 relative for kappa = 6);
    as ``cos(k theta) = T_k(cos theta)`` it is summed by Clenshaw's recurrence from
    ``cos(arg v) = v_1/|v|``: two multiply-adds per harmonic where a cosine table of
    ``[R, M, harmonics]`` cost 3/4 of the finite-batch sweep's gap records.
    """
    inv = torch.linalg.inv(weights)
    v = _circle(phi) @ inv.transpose(-1, -2)  # [R, M, 2]
    norm2 = (v**2).sum(-1)
    x = v[..., 0] * torch.rsqrt(norm2)
    like = {"dtype": torch.float64, "device": weights.device}
    k = torch.arange(harmonics, **like)
    coeff = torch.as_tensor(data.fourier(harmonics), **like)
    weight = torch.cat([coeff[:1], 2 * coeff[1:]])
    if sigma is not None:
        weight = weight * torch.exp(-0.5 * (k * sigma[:, None]) ** 2)
    else:
        weight = weight.expand(weights.shape[0], -1)
    weight = weight.unsqueeze(1)  # [R, 1, harmonics]
    after, later = torch.zeros_like(x), torch.zeros_like(x)  # b_{k+1}, b_{k+2}
    for j in range(harmonics - 1, 0, -1):
        after, later = weight[..., j] + 2 * x * after - later, after
    law = weight[..., 0] + x * after - later
    det = torch.linalg.det(weights).abs()
    return law / (det[:, None] * norm2)


def symmetric_gap(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """``D_S`` between densities on a uniform circle grid (trapezoid = mean)."""
    return 0.5 * ((q1 - q2) * (torch.log(q1) - torch.log(q2))).mean(-1)


def smallest_gap(
    data: ToyData,
    sigma: torch.Tensor,
    start: torch.Tensor,
    *,
    steps: int,
    lr: float = 1e-2,
    cells: int = 512,
    harmonics: int = 24,
) -> torch.Tensor:
    """The smallest gap two linear encoders can reach, searched from ``start [R, 2, 2]``.

    ``D_S(f1#p, f2#p_sigma)`` is invariant under composing both encoders with one circle
    bijection, so only ``M = W1^{-1} W2`` matters: minimise ``D_S(p, M#p_sigma)`` over M by
    Adam (autograd through :func:`pushforward_density`, 24 harmonics: the vM(6) tail beyond is
    ~1e-21). Returns the final maps; what they reach is an upper bound on the true minimum
    (evaluate it exactly afterwards).
    """
    like = {"dtype": torch.float64, "device": start.device}
    phi = torch.arange(cells, **like) * (TWO_PI / cells)
    eye = torch.eye(2, **like).expand(start.shape[0], 2, 2)
    target = pushforward_density(data, eye, phi, harmonics=harmonics)
    adam = BatchedAdam(start, lr)
    for _ in range(steps):
        maps = adam.param.clone().requires_grad_(True)
        gap = symmetric_gap(target, pushforward_density(data, maps, phi, sigma, harmonics))
        (grad,) = torch.autograd.grad(gap.sum(), maps)
        adam.step(grad)
    return adam.param


# --- internals ------------------------------------------------------------------------------


def _circle(theta: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1)


def _randn(shape, generator: torch.Generator) -> torch.Tensor:
    """``torch.randn(shape)`` in float64, on the CPU twice as fast. There torch draws the
    uniforms into the output and turns each block of 16 into normals by Box-Muller with scalar
    libm calls (pairing value j with j + 8; ATen's ``normal_fill``); the same transform on the
    same uniforms, vectorised, gives the same normals to a few ulp and leaves the generator in
    the same state (tests/test_modality_gap.py checks both). Sizes that are no multiple of 16
    (torch redraws the tail) and other devices go to torch.randn."""
    count = math.prod(shape)
    if generator.device.type != "cpu" or count < 16 or count % 16:
        return torch.randn(shape, generator=generator, dtype=torch.float64, device=generator.device)
    u = torch.rand(count // 16, 2, 8, generator=generator, dtype=torch.float64, device=generator.device)
    radius = torch.log(1 - u[:, 0]).mul_(-2).sqrt_()
    theta = u[:, 1] * (2.0 * math.pi)
    out = torch.empty_like(u)
    torch.mul(radius, torch.cos(theta), out=out[:, 0])
    torch.mul(radius, torch.sin(theta), out=out[:, 1])
    return out.view(shape)


def _minibatches(draw, count: int, prefetch: bool):
    """``count`` results of ``draw()``, in order. With ``prefetch``, one intra-op thread and a
    spare core, a worker thread makes the next draw while the caller computes on this one: the
    same calls on the same generator in the same order, so the same numbers (torch ops release
    the GIL, so the two run side by side). Only the worker touches the generator meanwhile."""
    if not prefetch or count < 2 or not _spare_core() or _function_mode_active():
        for _ in range(count):
            yield draw()
        return
    with ThreadPoolExecutor(max_workers=1) as worker:
        pending = worker.submit(draw)  # the worker's ops run on one intra-op thread, as set here
        for i in range(count):
            current = pending.result()
            if i + 1 < count:
                pending = worker.submit(draw)
            yield current


def _encoder_gradient(expansion, w1, w2, x1, x2, a, b, pair):
    """Chain rule through ``z = W x / |W x|``: ``dJ/dW = sum_i P_z(g_i) x_i^T / |W x_i|``, where
    ``P_z(g) = (g . t) t`` keeps only the tangential component (``t = (-z_y, z_x)``). The two
    encoders go as one ``[R, 2, ...]`` batch where their inputs have one shape."""
    k = expansion.kappa
    if x1.shape != x2.shape:
        (z1, n1), (z2, n2) = _embed(w1, x1), _embed(w2, x2)
        pz2, pz1 = pair(z1, z2)
        (_, h1), (_, h2), log_value = expansion.log_terms(z1, z2, a, b)
        value = -k * _dot(z1, pz2).sum(-1) + log_value
        return _chain(h1, z1, n1, pz2, x1, k), _chain(h2, z2, n2, pz1, x2, k), value
    x = torch.stack([x1, x2], 1)
    z, norm = _embed(torch.stack([w1, w2], 1), x)
    pz2, pz1 = pair(z[:, 0], z[:, 1])
    _, tangent, log_value = expansion._frame_terms(z, torch.stack([a, b], 1), False)
    value = -k * _dot(z[:, 0], pz2).sum(-1) + log_value
    g = _chain(tangent, z, norm, torch.stack([pz2, pz1], 1), x, k)
    return g[:, 0], g[:, 1], value


def _pad(t: torch.Tensor, n: int) -> torch.Tensor:
    """Weights ``[R, m]`` padded with zeros, points ``[R, m, 2]`` with ``(1, 0)``, to ``n``."""
    pad = t.new_zeros(t.shape[0], n - t.shape[1], *t.shape[2:])
    if t.dim() == 3:
        pad[..., 0] = 1.0
    return torch.cat([t, pad], 1)


def _embed(w: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``z = W x / |W x|`` and ``|W x|`` for ``w [..., 2, 2]``, ``x [..., n, 2]``."""
    y = torch.addcmul(x[..., :1] * w[..., None, :, 0], x[..., 1:], w[..., None, :, 1])
    norm = (y[..., 0] * y[..., 0] + y[..., 1] * y[..., 1]).sqrt_()
    return y / norm.unsqueeze(-1), norm


def _chain(tangent, z, norm, pair, x, kappa):
    """``sum_i (g_i . t_i) t_i x_i^T / norm_i`` with ``g . t = tangent - kappa pair . t``."""
    g = (tangent - kappa * (z[..., 0] * pair[..., 1] - z[..., 1] * pair[..., 0])) / norm
    return (_turn(z) * g.unsqueeze(-1)).transpose(-1, -2) @ x


def _spare_core() -> bool:
    """One intra-op thread, and a core the rest of the machine leaves idle: the 1-minute load
    average below ``cores - 1/2``. Measured on the 2-core machine: with the other core free the
    worker took the step from 26 to 16 ms wall (load 1.7); with it busy elsewhere the two threads
    share one core's scheduler share and the step took ~8% longer (load >= 2.4)."""
    cores = os.cpu_count() or 1
    if torch.get_num_threads() != 1 or cores < 2:
        return False
    try:
        return os.getloadavg()[0] < cores - 0.5
    except (AttributeError, OSError):  # no load average on this platform
        return False


def _function_mode_active() -> bool:
    """Whether a torch function or dispatch mode is on for this thread (modes are
    thread-local: a worker thread would draw outside it, e.g. outside the device checks of
    tests/test_device.py)."""
    enabled = getattr(torch._C, "_is_torch_function_mode_enabled", None)
    dispatch = getattr(torch._C, "_len_torch_dispatch_stack", None)
    return bool(enabled and enabled()) or bool(dispatch and dispatch())


#: draw the next CPU minibatch of :func:`train_sweep` on a worker thread (False: on the caller's)
PREFETCH = True

#: bytes of power tables per chunk of runs on the CPU (two tables of a chunk stay in cache)
_CACHE_BYTES = 5 << 20


def _turn(z: torch.Tensor) -> torch.Tensor:
    """The unit tangent ``(-z_y, z_x)`` at each point of ``z [..., 2]``."""
    return torch.stack([-z[..., 1], z[..., 0]], -1)


def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u[..., 0] * v[..., 0] + u[..., 1] * v[..., 1]


def _power_table(z: torch.Tensor, harmonics: int) -> torch.Tensor:
    """``[cos(n phi); sin(n phi)]`` for n = 0..harmonics-1 as ``[R, 2 harmonics, B]``."""
    return _table_from_steps(_doubling_steps(z, harmonics), harmonics)


def _doubling_steps(z: torch.Tensor, harmonics: int) -> torch.Tensor:
    """``(cos, sin)`` of ``2^l phi`` for the levels ``2^l < harmonics`` (at least ``l = 0``), as
    ``[..., levels, 2, B]`` from points ``z [..., B, 2]``: each level the square of the last."""
    levels = max(1, (harmonics - 1).bit_length())
    out = z.new_empty(*z.shape[:-2], levels, 2, z.shape[-2])
    out[..., 0, :, :] = z.transpose(-1, -2)
    for level in range(1, levels):
        c, s = out[..., level - 1, 0, :], out[..., level - 1, 1, :]
        torch.mul(c, c, out=out[..., level, 0, :]).addcmul_(s, s, value=-1)
        torch.mul(c, s, out=out[..., level, 1, :]).mul_(2)
    return out


def _table_from_steps(steps: torch.Tensor, harmonics: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """The power table from :func:`_doubling_steps` ``[M, levels, 2, B]``, by doubling: rows
    ``[k, 2k)`` are rows ``[0, k)`` turned by ``k phi``, so log2(harmonics) broadcast products
    build it (into ``out [M, 2, harmonics, B]`` if given)."""
    runs, _, _, n = steps.shape
    if out is None:
        out = steps.new_empty(runs, 2, harmonics, n)
    cos, sin = out[:, 0], out[:, 1]
    cos[:, 0] = 1
    sin[:, 0] = 0
    if harmonics > 1:
        out[:, :, 1] = steps[:, 0]
    k, level = 2, 1
    while k < harmonics:
        m = min(k, harmonics - k)
        ck, sk = steps[:, level, 0].unsqueeze(1), steps[:, level, 1].unsqueeze(1)
        torch.mul(out[:, :, :m], ck.unsqueeze(1), out=out[:, :, k : k + m])
        cos[:, k : k + m].addcmul_(sin[:, :m], sk, value=-1)
        sin[:, k : k + m].addcmul_(cos[:, :m], sk)
        k, level = 2 * k, level + 1
    return out.view(runs, 2 * harmonics, n)
