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
largest kernel value (K = 28 at tau = 0.07 for the default 1e-10, far below any
statistical effect of training); the certificate compares the
result with autograd of a separately written CLIP loss (claim fig5-gap-grows-with-misalignment),
the tests with autograd through :func:`cgeom_verify.kernels.infonce.symmetric_infonce`.

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
        grid, cdf = self._table(generator.device)
        u = torch.rand(shape, generator=generator, dtype=torch.float64, device=generator.device)
        i = torch.searchsorted(cdf, u, right=True).clamp(1, cdf.numel() - 1)
        c0, c1 = cdf[i - 1], cdf[i]
        return grid[i - 1] + (u - c0) / (c1 - c0) * (grid[i] - grid[i - 1])

    def _table(self, device):
        key = (str(device),)
        cache = _TABLES.setdefault(self, {})
        if key not in cache:
            grid = torch.linspace(
                -math.pi, math.pi, self.table_cells + 1, dtype=torch.float64, device=device
            )
            mid = 0.5 * (grid[:-1] + grid[1:])
            mass = (self.density(grid[:-1]) + 4 * self.density(mid) + self.density(grid[1:])) / 6
            cdf = torch.cat([mass.new_zeros(1), torch.cumsum(mass, 0)])
            cache[key] = (grid, cdf / cdf[-1])
        return cache[key]


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
        self.degree = int(below[0])  # harmonics 0..degree-1 are kept
        self.harmonics = 8 * math.ceil((self.degree + 1) / 8)  # +1 for the shift by b_j; block of 8
        self.coefficients = torch.as_tensor(coeff[: self.degree], dtype=torch.float64, device=device)

    def gradient(self, z1, z2, a, b, pair_z2, pair_z1):
        x1, x2 = _trig_powers(z1, self.harmonics), _trig_powers(z2, self.harmonics)
        # Seven passes over the [R, 2H, B] power tables, ordered so that x1's two kernel
        # evaluations share one pass: m -> c -> u -> (r, sums with m2 and u) -> v -> rest.
        m1, m2 = x1 @ a.unsqueeze(-1), x2 @ b.unsqueeze(-1)
        s2 = x2.transpose(1, 2) @ torch.cat([self._sum(m1), self._moment_sum(m1)], -1)
        c = s2[..., :1]
        u = x2 @ (b.unsqueeze(-1) / c)
        s1 = x1.transpose(1, 2) @ torch.cat(
            [self._sum(m2), self._moment_sum(m2), self._moment_sum(u)], -1
        )
        r, t1 = s1[..., :1], s1[..., 3:]
        v = x1 @ (a.unsqueeze(-1) / r)
        t2 = x2.transpose(1, 2) @ self._moment_sum(v)
        k = self.kappa
        g1 = -k * pair_z2 + 0.5 * k * a.unsqueeze(-1) * (s1[..., 1:3] / r + t1)
        g2 = -k * pair_z1 + 0.5 * k * b.unsqueeze(-1) * (t2 + s2[..., 1:] / c)
        value = (
            -k * (z1 * pair_z2).sum((-1, -2))
            + 0.5 * (a * torch.log(r[..., 0])).sum(-1)
            + 0.5 * (b * torch.log(c[..., 0])).sum(-1)
        )
        return g1, g2, value

    def _sum(self, mom):
        """Coefficients on (cos, sin) rows giving ``sum_j k_ij w_j`` from moments of w."""
        h, d = self.harmonics, self.degree
        lam = self.coefficients.to(mom.device)
        weight = torch.cat([lam[:1], 2 * lam[1:]])[:, None]
        coef = torch.zeros_like(mom)
        coef[:, :d] = weight * mom[:, :d]
        coef[:, h : h + d] = weight * mom[:, h : h + d]
        return coef

    def _moment_sum(self, mom):
        """Coefficients giving ``sum_j k_ij w_j z_j`` (as Re, Im columns) from moments M_n of w.

        ``sum_j k_ij w_j e^{i psi_j} = lam_0 M_1 + sum_{n>=1} lam_n [e^{in phi} conj(M_{n-1})
        + e^{-in phi} M_{n+1}]``, written out in cos/sin rows.
        """
        h, d = self.harmonics, self.degree
        lam = self.coefficients.to(mom.device)[1:]
        re, im = mom[:, :h, 0], mom[:, h:, 0]
        x, y, x2, y2 = re[:, : d - 1], im[:, : d - 1], re[:, 2 : d + 1], im[:, 2 : d + 1]
        coef = mom.new_zeros(mom.shape[0], 2 * h, 2)
        coef[:, 1:d, 0] = lam * (x + x2)
        coef[:, h + 1 : h + d, 0] = lam * (y + y2)
        coef[:, 1:d, 1] = lam * (y2 - y)
        coef[:, h + 1 : h + d, 1] = lam * (x - x2)
        coef[:, 0, 0] = self.coefficients[0] * re[:, 1]
        coef[:, 0, 1] = self.coefficients[0] * im[:, 1]
        return coef


def embed(weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L2-normalised outputs of linear encoders: ``weights [R, 2, 2]``, ``x [R, n, 2]``."""
    y = x @ weights.transpose(-1, -2)
    return y / y.norm(dim=-1, keepdim=True)


def embedding_angles(weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    y = x @ weights.transpose(-1, -2)
    return torch.atan2(y[..., 1], y[..., 0])


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
    for step in range(1, steps + 1):
        x1, x2 = sample_pairs(data, sigma, batch, generator, identical_inputs)
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
    a = z1[:, : groups * group].reshape(runs, groups, group, 2)
    b = z2[:, : groups * group].reshape(runs, groups, group, 2)
    hits = torch.zeros(runs, dtype=z1.dtype, device=z1.device)
    target = torch.arange(group, device=z1.device)
    for r in range(runs):  # one run at a time bounds memory at groups x group^2
        sim = a[r] @ b[r].transpose(-1, -2)
        hits[r] = 0.5 * (
            (sim.argmax(-1) == target).double().mean() + (sim.argmax(-2) == target).double().mean()
        )
    return cosine, hits


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
    The law's Fourier series is cut at ``harmonics`` (64: below 1e-90 relative for kappa = 6).
    """
    inv = torch.linalg.inv(weights)
    v = _circle(phi) @ inv.transpose(-1, -2)  # [R, M, 2]
    theta = torch.atan2(v[..., 1], v[..., 0])
    like = {"dtype": torch.float64, "device": weights.device}
    k = torch.arange(harmonics, **like)
    coeff = torch.as_tensor(data.fourier(harmonics), **like)
    weight = torch.cat([coeff[:1], 2 * coeff[1:]])
    if sigma is not None:
        weight = weight * torch.exp(-0.5 * (k * sigma[:, None]) ** 2)
    else:
        weight = weight.expand(weights.shape[0], -1)
    law = (weight.unsqueeze(1) * torch.cos(k * theta.unsqueeze(-1))).sum(-1)
    det = torch.linalg.det(weights).abs()
    return law / (det[:, None] * (v**2).sum(-1))


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
    return torch.randn(shape, generator=generator, dtype=torch.float64, device=generator.device)


def _encoder_gradient(expansion, w1, w2, x1, x2, a, b, pair):
    """Chain rule through ``z = W x / |W x|``: ``dJ/dW = sum_i P_z(g_i) x_i^T / |W x_i|``."""
    y1, y2 = x1 @ w1.transpose(-1, -2), x2 @ w2.transpose(-1, -2)
    n1, n2 = y1.norm(dim=-1, keepdim=True), y2.norm(dim=-1, keepdim=True)
    z1, z2 = y1 / n1, y2 / n2
    pz2, pz1 = pair(z1, z2)
    g1, g2, value = expansion.gradient(z1, z2, a, b, pz2, pz1)
    gy1 = (g1 - (g1 * z1).sum(-1, keepdim=True) * z1) / n1
    gy2 = (g2 - (g2 * z2).sum(-1, keepdim=True) * z2) / n2
    return gy1.transpose(-1, -2) @ x1, gy2.transpose(-1, -2) @ x2, value


def _trig_powers(z: torch.Tensor, harmonics: int, block: int = 8) -> torch.Tensor:
    """``[cos(n phi); sin(n phi)]`` for n = 0..harmonics-1 as ``[R, 2 harmonics, B]``.

    ``e^{i n phi}`` with ``n = block q + r`` is ``(e^{i block phi})^q e^{i r phi}``: two short
    recurrences and one broadcast product instead of ``harmonics`` dependent steps.
    """
    c, s = z[..., 0], z[..., 1]
    blocks = harmonics // block
    lc, ls = [torch.ones_like(c)], [torch.zeros_like(s)]
    for _ in range(block):  # e^{i r phi}, r = 0..block (the last one is the block step)
        lc, ls = lc + [lc[-1] * c - ls[-1] * s], ls + [ls[-1] * c + lc[-1] * s]
    cb, sb = lc.pop(), ls.pop()
    hc, hs = [torch.ones_like(c)], [torch.zeros_like(s)]
    for _ in range(blocks - 1):
        hc, hs = hc + [hc[-1] * cb - hs[-1] * sb], hs + [hs[-1] * cb + hc[-1] * sb]
    low_c, low_s = torch.stack(lc, 1).unsqueeze(1), torch.stack(ls, 1).unsqueeze(1)
    high_c, high_s = torch.stack(hc, 1).unsqueeze(2), torch.stack(hs, 1).unsqueeze(2)
    out = torch.empty(c.shape[0], 2, blocks, block, c.shape[1], dtype=z.dtype, device=z.device)
    torch.mul(high_c, low_c, out=out[:, 0])
    out[:, 0].addcmul_(high_s, low_s, value=-1)
    torch.mul(high_s, low_c, out=out[:, 1])
    out[:, 1].addcmul_(high_c, low_s)
    return out.reshape(c.shape[0], 2 * harmonics, c.shape[1])
