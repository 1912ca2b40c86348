"""Linear encoders on Gaussian-mixture inputs: the encoder-level setting of Thm 3.1/4.1.

The authors' Fig. 2 (docs/derivations.md, "Fig. 2 encoder setting") takes theta = W, a
linear map ``x -> W x`` from inputs in R^m to R^d followed by an output map:

* ``"sphere"``: ``z = Wx/|Wx|`` (L2-normalised, the cosine critic's embedding);
* ``"tanh"``:   ``z = tanh(Wx)`` (bounded, the RBF critic's embedding).

Inputs come from a mixture of K Gaussians with unit-norm random means scaled by a
radius and isotropic noise sigma; positives are inputs plus augmentation noise, and a
second modality (Thm 4.1) is a fixed linear mixing of the input plus noise.

Everything is batched: weights are ``[..., d, m]`` and inputs ``[..., n, m]`` with
broadcasting leading dimensions, so R replicates (seeds, negative pools) are slices of
one ``[R, d, m]`` leaf. Summing the replicates' losses before one ``autograd.grad``
keeps their gradients apart, because each slice only enters its own loss.

Public API:

* :class:`GaussianMixture`, :func:`random_mixture`, :func:`augment`, :func:`init_weights`,
  :func:`gaussian_noise`;
* :func:`encode` (and :data:`OUTPUTS`);
* :func:`infonce_gradient`, :func:`symmetric_infonce_gradient`: finite-N gradients in
  theta, from the shared losses of :mod:`.infonce` (``detach_negatives`` reproduces
  the stop-gradient bug);
* :class:`ChunkedPool` and :func:`streamed_infonce_gradient`: the large-N reference
  gradient, computed chunk by chunk in memory bounded by the chunk size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .infonce import infonce_loss, log_partition, symmetric_infonce
from .programs import items_per_program
from .streaming import streamed_logsumexp

__all__ = [
    "OUTPUTS",
    "gaussian_noise",
    "GaussianMixture",
    "random_mixture",
    "augment",
    "init_weights",
    "encode",
    "infonce_gradient",
    "symmetric_infonce_gradient",
    "ChunkedPool",
    "streamed_infonce_gradient",
]

OUTPUTS = ("sphere", "tanh")


def gaussian_noise(shape, generator: torch.Generator, dtype) -> torch.Tensor:
    """Standard normals ``shape`` in ``dtype``, on the generator's device, drawn in float32.

    For bulk draws: the encoder checks' input noise (millions per setting) and the finite-batch
    vMF draws' tangent directions. Torch's float32 sampler is vectorised where its float64 one
    is not: 3x faster per draw on an AVX2 CPU (drawn in float64, the sampling was 37 % of the
    full profile's encoder rate checks; 18 % so). The price is float32's: each value is rounded
    to 24 bits, and the CPU sampler's 24-bit uniforms (Box-Muller) cut the tail at
    |noise| = sqrt(48 ln 2) = 5.77 (probability 6e-8). A check's subject and its oracle draw
    from the same law."""
    return torch.randn(shape, generator=generator, dtype=torch.float32,
                       device=generator.device).to(dtype)


@dataclass(frozen=True)
class GaussianMixture:
    """Equal-weight mixture of ``N(mean_k, sigma^2 I)``; ``means`` is ``[..., K, m]``."""

    means: torch.Tensor
    sigma: float

    def sample(self, n: int, generator: torch.Generator, batch: tuple[int, ...] = (),
               dtype: torch.dtype | None = None) -> torch.Tensor:
        """``n`` draws per mixture: ``[*broadcast(batch, means.shape[:-2]), n, m]``, in ``dtype``
        (default the means'). The random stream does not depend on ``dtype``."""
        if n < 1:
            raise ValueError(f"sample size must be positive, got {n}")
        *mixtures, k, m = self.means.shape
        shape = torch.broadcast_shapes(tuple(batch), tuple(mixtures))
        means = self.means.to(dtype or self.means.dtype).expand(*shape, k, m)
        component = torch.randint(k, (*shape, n), generator=generator, device=self.means.device)
        draws = gaussian_noise((*shape, n, m), generator, means.dtype).mul_(self.sigma)
        # the centres added in place, a cache-sized slice of draws at a time: gathered at once
        # they were a second sample-sized tensor (0.8 GB at Fig. 2's 400 seeds x 4096 x 64)
        step = items_per_program(draws.device, math.prod(shape) * m, n)
        for lo in range(0, n, step):
            index = component[..., lo:lo + step, None].expand(*shape, -1, m)
            draws[..., lo:lo + step, :].add_(torch.gather(means, -2, index))
        return draws


def random_mixture(batch: tuple[int, ...], components: int, dim: int, *, radius: float,
                   sigma: float, generator: torch.Generator,
                   dtype=torch.float64) -> GaussianMixture:
    """Means uniform on the sphere of the given radius (normalised Gaussians), as in Fig. 2."""
    if components < 1 or dim < 1 or radius < 0 or sigma < 0:
        raise ValueError("components and dim must be positive, radius and sigma non-negative")
    means = torch.randn(*batch, components, dim, generator=generator, dtype=dtype,
                        device=generator.device)
    return GaussianMixture(radius * means / means.norm(dim=-1, keepdim=True), sigma)


def augment(inputs: torch.Tensor, noise: float, generator: torch.Generator,
            mixing: torch.Tensor | None = None) -> torch.Tensor:
    """Paired views: ``x + noise * N(0, I)`` (a positive), or ``A x + noise * N(0, I)`` with
    ``mixing = A`` ``[m2, m]`` (the second modality of a paired dataset)."""
    view = inputs if mixing is None else inputs @ mixing.transpose(-1, -2)
    return view + noise * gaussian_noise(view.shape, generator, view.dtype)


def init_weights(batch: tuple[int, ...], d: int, m: int, generator: torch.Generator,
                 dtype=torch.float64) -> torch.Tensor:
    """``W ~ N(0, 1/m)`` entrywise, ``[*batch, d, m]`` (the authors' initialisation)."""
    return torch.randn(*batch, d, m, generator=generator, dtype=dtype,
                       device=generator.device) / math.sqrt(m)


def encode(weights: torch.Tensor, inputs: torch.Tensor, output: str) -> torch.Tensor:
    """``[..., d, m] x [..., n, m] -> [..., n, d]``: the linear map, then the output map."""
    if weights.shape[-1] != inputs.shape[-1]:
        raise ValueError(f"weights take inputs of dim {weights.shape[-1]}, got {inputs.shape[-1]}")
    linear = inputs @ weights.transpose(-1, -2)
    if output == "sphere":
        # times the reciprocal norm ([..., n, 1]): its backward multiplies where a division's
        # divides twice over [..., n, d]
        return linear * linear.norm(dim=-1, keepdim=True).reciprocal()
    if output == "tanh":
        return torch.tanh(linear)
    raise ValueError(f"unknown encoder output {output!r}; choose one of {', '.join(OUTPUTS)}")


def infonce_gradient(weights, anchors, positives, negatives, tau, *, output, critic,
                     include_positive=True, detach_negatives=False) -> torch.Tensor:
    """``d/dW`` of the anchor-mean InfoNCE loss, for every replicate slice of ``weights``.

    ``anchors``/``positives`` are inputs ``[..., B, m]``, ``negatives`` ``[..., N, m]``;
    the loss of each replicate is the mean over its B anchors (the authors' ``loss.mean()``).
    """
    leaf = weights.detach().requires_grad_(True)
    loss = infonce_loss(encode(leaf, anchors, output), encode(leaf, positives, output),
                        encode(leaf, negatives, output), tau, critic=critic,
                        include_positive=include_positive, detach_negatives=detach_negatives)
    (grad,) = torch.autograd.grad(loss.mean(-1).sum(), leaf)
    return grad


def symmetric_infonce_gradient(weights, inputs, negatives, tau, *, output, critic,
                               include_positive=True, detach_negatives=False):
    """Gradients of ``L_sym = (L_{1->2} + L_{2->1})/2`` (Thm 4.1) in both encoders.

    ``weights``, ``inputs`` and ``negatives`` are pairs (modality 1, modality 2): paired
    anchors ``[..., B, m_i]`` and a pool of N negative pairs ``[..., N, m_i]``.
    """
    leaves = [w.detach().requires_grad_(True) for w in weights]
    z, w = (encode(p, x, output) for p, x in zip(leaves, inputs, strict=True))
    z_neg, w_neg = (encode(p, x, output) for p, x in zip(leaves, negatives, strict=True))
    loss = symmetric_infonce(z, w, z_neg, w_neg, tau, critic=critic,
                             include_positive=include_positive, detach_negatives=detach_negatives)
    return torch.autograd.grad(loss.mean(-1).sum(), leaves)


@dataclass(frozen=True)
class ChunkedPool:
    """A virtual pool of ``n`` negatives regenerated chunk by chunk from per-chunk seeds.

    ``sample(count, generator)`` draws ``count`` items (a tensor or a tuple of tensors
    along dim -2). Chunk ``i`` always comes from the generator seeded ``seed + i``, so
    both passes of :func:`streamed_infonce_gradient` see the same pool while at most one
    chunk of inputs is alive at a time.
    """

    sample: Callable[[int, torch.Generator], torch.Tensor | tuple[torch.Tensor, ...]]
    n: int
    chunk: int
    seed: int
    #: where the chunk generators live: the run's device (``None``: the CPU, as ``torch.Generator()``).
    device: torch.device | None = None

    def __post_init__(self):
        if self.n < 1 or self.chunk < 1:
            raise ValueError("pool size and chunk must be positive")

    def bounds(self) -> list[tuple[int, int]]:
        return [(a, min(a + self.chunk, self.n)) for a in range(0, self.n, self.chunk)]

    def items(self, start: int, stop: int):
        """The pool's items ``start:stop`` for chunk-aligned ``start``."""
        if start % self.chunk or stop != min(start + self.chunk, self.n):
            raise ValueError(f"[{start}, {stop}) is not a chunk of this pool")
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.seed + start // self.chunk)
        return self.sample(stop - start, generator)


def streamed_infonce_gradient(params: Sequence[torch.Tensor], anchors, positives, negatives,
                              pool: ChunkedPool, tau, *, critic,
                              include_positive=True) -> tuple[torch.Tensor, ...]:
    """Gradient in ``params`` of the anchor-mean InfoNCE loss over a pool of ``pool.n`` negatives.

    ``anchors(params)`` and ``positives(params)`` give ``[..., B, d]`` embeddings and
    ``negatives(params, items)`` embeds one chunk of pool items. Two passes, memory
    bounded by one chunk:

    1. no autograd: ``K = log(sum_j exp(s(z, w_j)/tau) [+ exp(s(z, z+)/tau)])`` per anchor,
       by the shared streamed logsumexp;
    2. per chunk, the gradient of ``exp(log_partition(z, chunk) - K)``, with K held fixed.

    At K = the exact log-partition, ``d exp(lse_c - K) = sum_{j in c} softmax_j ds_j/tau``,
    so the chunk gradients sum to ``d K`` exactly (the obligation "streamed surrogate" of
    claims/encoder_gradient.py); the positive term adds ``-ds(z, z+)/tau`` and, if it is
    in the denominator, ``d exp(s(z, z+)/tau - K)``.
    """
    leaves = [p.detach().requires_grad_(True) for p in params]
    with torch.no_grad():
        z = anchors(leaves)
        # each chunk contributes its own log-partition as one column of the streamed fold.
        log_z = streamed_logsumexp(
            lambda a, b: log_partition(z, negatives(leaves, pool.items(a, b)), tau,
                                       critic=critic).unsqueeze(-1),
            pool.n, pool.chunk)
        positive_logit = _positive_logit(z, positives(leaves), tau, critic)
        if include_positive:
            log_z = torch.logaddexp(log_z, positive_logit)
    total = [torch.zeros_like(p) for p in leaves]

    def accumulate(surrogate):
        grads = torch.autograd.grad(surrogate.mean(-1).sum(), leaves, allow_unused=True)
        for acc, g in zip(total, grads, strict=True):
            if g is not None:
                acc += g

    z = anchors(leaves)
    positive_logit = _positive_logit(z, positives(leaves), tau, critic)
    accumulate(-positive_logit + (torch.exp(positive_logit - log_z) if include_positive else 0.0))
    for a, b in pool.bounds():
        chunk_lse = log_partition(anchors(leaves), negatives(leaves, pool.items(a, b)), tau,
                                  critic=critic)
        accumulate(torch.exp(chunk_lse - log_z))
    return tuple(total)


def _positive_logit(z, z_pos, tau, critic):
    """``s(z, z+)/tau`` per anchor, through the shared critic (the same as in infonce_loss)."""
    return log_partition(z.unsqueeze(-2), z_pos.unsqueeze(-2), tau, critic=critic)[..., 0]
