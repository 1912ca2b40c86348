"""Two-sample and paired statistics for embeddings on the sphere (torch, device-aware, batched).

Generic tools the §5 claims on real embeddings use (:mod:`cgeom_verify.audit`); none of them
knows about a paper. Every tensor is created on the input's device; permutation nulls and
bootstraps are batched over a ``[P, n]`` index (or weight) tensor in chunks, never a Python
loop over permutations.

* :func:`two_sample_u` — unbiased (U-statistic, diagonal excluded) MMD² for any kernel matrix
  of the pooled sample, with an exact permutation null by relabelling the two samples;
  the energy distance with the chordal metric is the MMD² of the kernel ``-||x - y||``
  (:func:`chordal_distance`), the RBF MMD² that of :func:`rbf_kernel`.
* :func:`paired_bootstrap_u` — the same statistic under a paired bootstrap (pairs resampled
  jointly, count weights), for standard errors of the effect sizes.
* :func:`centroid_distance_bootstrap` — ``||mean x - mean y||`` and its paired bootstrap.
* :func:`pairing_permutation` — the paired permutation test of ``mean_i s_i,sigma(i)`` (paired
  similarity against re-pairings).
* :func:`fit_logistic` — ridge logistic regression by Newton's method (the held-out classifier
  of the separability test and of the NWJ bound).
* :func:`nwj_terms` — per-pair terms of the NWJ lower bound on the symmetric KL;
  :func:`binary_divergence_bound` — its exact finite-sample version for a binary critic.
* :func:`binomial_test` — exact one-sided binomial p-value and exact power at a designed rate.
* :func:`symmetric_infonce_per_pair` — per-pair symmetric InfoNCE over a batch, for a batch of
  transformed embeddings at once.
"""

from __future__ import annotations

import math

import torch
from scipy import stats as _scipy_stats

__all__ = [
    "chordal_distance",
    "rbf_kernel",
    "median_distance",
    "two_sample_u",
    "two_sample_u_many",
    "paired_bootstrap_u",
    "centroid_distance_bootstrap",
    "random_permutations",
    "bootstrap_counts",
    "pairing_permutation",
    "fit_logistic",
    "nwj_terms",
    "binomial_test",
    "symmetric_infonce_per_pair",
    "permutation_p_value",
    "logistic_logit",
    "normal_power",
    "binary_divergence_bound",
    "designed_rate_gap",
]


def chordal_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sqrt(2 - 2 <a_i, b_j>)`` for unit rows (clamped at 0 against rounding)."""
    return (2.0 - 2.0 * (a @ b.T)).clamp_min(0.0).sqrt()


def median_distance(distances: torch.Tensor) -> float:
    """Median of the off-diagonal entries of a square distance matrix (the usual bandwidth)."""
    n = distances.shape[0]
    off = distances[~torch.eye(n, dtype=torch.bool, device=distances.device)]
    return float(off.median())


def rbf_kernel(distances: torch.Tensor, bandwidth: float) -> torch.Tensor:
    return torch.exp(-(distances**2) / (2.0 * bandwidth**2))


def random_permutations(count: int, n: int, generator: torch.Generator, device) -> torch.Tensor:
    """``[count, n]`` independent uniform permutations of ``range(n)`` (argsort of uniforms)."""
    u = torch.rand(count, n, generator=generator, device=device, dtype=torch.float32)
    return u.argsort(dim=1)


def bootstrap_counts(
    count: int, n: int, generator: torch.Generator, device, dtype=torch.float64
) -> torch.Tensor:
    """``[count, n]`` multinomial resampling counts (a bootstrap of n items, as weights)."""
    idx = torch.randint(0, n, (count, n), generator=generator, device=device)
    w = torch.zeros(count, n, dtype=dtype, device=device)
    return w.scatter_add_(1, idx, torch.ones_like(idx, dtype=dtype))


def _u_from_masks(
    kernel0: torch.Tensor, a: torch.Tensor, row_sums: torch.Tensor | None = None, total: float | None = None
) -> torch.Tensor:
    """Unbiased MMD² for labellings ``a [c, N]`` (1 = first sample) of a zero-diagonal kernel.

    One matmul per chunk: with ``ka = a K``, ``r = K 1`` and ``t = 1' K 1``,
    ``a'Ka = ka . a``, ``a'Kb = ka . 1 - a'Ka``, ``b'Kb = t - 2 a'r + a'Ka``.
    """
    if row_sums is None:
        row_sums = kernel0.sum(1)
        total = float(row_sums.sum())
    m = a.sum(1)
    k = a.shape[1] - m
    ka = a @ kernel0
    aka = (ka * a).sum(1)
    akb = ka.sum(1) - aka
    bkb = total - 2.0 * (a @ row_sums) + aka
    return aka / (m * (m - 1)) + bkb / (k * (k - 1)) - 2.0 * akb / (m * k)


def two_sample_u(
    kernel: torch.Tensor,
    m: int,
    *,
    permutations: int = 0,
    generator: torch.Generator | None = None,
    chunk: int = 256,
):
    """Unbiased MMD² of the pooled kernel matrix ``kernel [N, N]`` (first ``m`` rows: sample 1).

    Returns ``(statistic, null)``: ``null [permutations]`` holds the statistic under random
    relabellings of the pooled sample (the exact permutation null, sampled). The p-value is
    ``(1 + #{null >= statistic}) / (1 + permutations)``.
    """
    n_total = kernel.shape[0]
    k0 = kernel.clone()
    k0.fill_diagonal_(0.0)
    observed = torch.zeros(1, n_total, dtype=kernel.dtype, device=kernel.device)
    observed[0, :m] = 1.0
    row_sums = k0.sum(1)
    total = float(row_sums.sum())
    stat = float(_u_from_masks(k0, observed, row_sums, total)[0])
    null = []
    done = 0
    while done < permutations:
        take = min(chunk, permutations - done)
        perm = random_permutations(take, n_total, generator, kernel.device)
        a = torch.zeros(take, n_total, dtype=kernel.dtype, device=kernel.device)
        a.scatter_(1, perm[:, :m], 1.0)
        null.append(_u_from_masks(k0, a, row_sums, total))
        done += take
    null_t = torch.cat(null) if null else kernel.new_zeros(0)
    return stat, null_t


def two_sample_u_many(
    kernels: list[torch.Tensor],
    m: int,
    *,
    permutations: int,
    generator: torch.Generator,
    chunk: int = 128,
    paired: bool = False,
):
    """:func:`two_sample_u` for several kernels of the same pooled sample, every kernel judged
    on the same relabellings (one ``[c, N] @ [N, K N]`` matmul per chunk).

    ``paired``: the pooled sample is m pairs ``(i, m + i)`` (x_i, y_i). The statistic is then the
    U-statistic over pairs (a pair's own cross term ``k(x_i, y_i)`` excluded, so it is unbiased
    for MMD² whatever the dependence inside a pair), and the null swaps x_i and y_i inside
    random pairs (exact when each pair is exchangeable under H0), instead of relabelling freely
    (which would break the pairing). Returns ``(statistics [K], null [K, permutations])``.
    """
    n_total = kernels[0].shape[0]
    if paired and n_total != 2 * m:
        raise ValueError("paired samples need N = 2 m")
    k0 = torch.stack(kernels)  # [K, N, N]
    k0 = k0 * (1.0 - torch.eye(n_total, dtype=k0.dtype, device=k0.device))
    row_sums = k0.sum(2)  # [K, N]
    totals = row_sums.sum(1)  # [K]
    idx = torch.arange(m, device=k0.device)
    own = k0[:, idx, idx + m].sum(1) if paired else None  # [K]
    wide = k0.permute(1, 0, 2).reshape(n_total, -1)  # [N, K N]

    def u(a):  # a [c, N] -> [K, c]
        m_a = a.sum(1)
        k_a = a.shape[1] - m_a
        ka = (a @ wide).reshape(a.shape[0], len(kernels), n_total).permute(1, 0, 2)  # [K, c, N]
        aka = (ka * a[None]).sum(2)
        akb = ka.sum(2) - aka
        bkb = totals[:, None] - 2.0 * (row_sums @ a.T) + aka
        if paired:  # every pair split across the two samples: its own cross term is constant
            return (aka + bkb - 2.0 * (akb - own[:, None])) / (m_a * (m_a - 1))
        return aka / (m_a * (m_a - 1)) + bkb / (k_a * (k_a - 1)) - 2.0 * akb / (m_a * k_a)

    observed = torch.zeros(1, n_total, dtype=k0.dtype, device=k0.device)
    observed[0, :m] = 1.0
    stats_ = u(observed)[:, 0]
    null, done = [], 0
    while done < permutations:
        take = min(chunk, permutations - done)
        a = torch.zeros(take, n_total, dtype=k0.dtype, device=k0.device)
        if paired:
            flip = torch.rand(take, m, generator=generator, device=k0.device) < 0.5
            a[:, :m] = (~flip).to(a.dtype)
            a[:, m:] = flip.to(a.dtype)
        else:
            perm = random_permutations(take, n_total, generator, k0.device)
            a.scatter_(1, perm[:, :m], 1.0)
        null.append(u(a))
        done += take
    return stats_, (torch.cat(null, dim=1) if null else k0.new_zeros(len(kernels), 0))


def permutation_p_value(statistic: float, null: torch.Tensor) -> float:
    return (1.0 + float((null >= statistic - 1e-12 * abs(statistic)).sum())) / (1.0 + null.numel())


def paired_bootstrap_u(
    kxx: torch.Tensor, kyy: torch.Tensor, kxy: torch.Tensor, weights: torch.Tensor, chunk: int = 256
) -> torch.Tensor:
    """The paired MMD² U-statistic (see :func:`two_sample_u_many`) under bootstrap weights
    ``[B, n]`` (pairs resampled jointly). A pair drawn twice meets itself only on the excluded
    diagonals, so each replicate is the U-statistic of its resample."""
    kxx0, kyy0, kxy0 = kxx.clone(), kyy.clone(), kxy.clone()
    kxx0.fill_diagonal_(0.0)
    kyy0.fill_diagonal_(0.0)
    kxy0.fill_diagonal_(0.0)
    out = []
    for w in weights.split(chunk):
        total = w.sum(1)
        own = total**2 - (w**2).sum(1)
        within_x = ((w @ kxx0) * w).sum(1) / own
        within_y = ((w @ kyy0) * w).sum(1) / own
        # cross terms x_i with y_j over distinct pairs i != j (a pair's own term excluded, as in
        # the paired U-statistic of two_sample_u_many)
        cross = ((w @ kxy0) * w).sum(1) / own
        out.append(within_x + within_y - 2.0 * cross)
    return torch.cat(out)


def centroid_distance_bootstrap(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor):
    """``||mean x - mean y||`` and its value under paired bootstrap weights ``[B, n]``."""
    diff = x - y
    stat = float(diff.mean(0).norm())
    boot = ((weights @ diff) / weights.sum(1, keepdim=True)).norm(dim=1)
    return stat, boot


def pairing_permutation(sim: torch.Tensor, permutations: int, generator: torch.Generator, chunk: int = 512):
    """Paired permutation test: ``mean_i sim[i, i]`` against ``mean_i sim[i, sigma(i)]``.

    ``sim [n, n]`` is the cross-modal similarity matrix. Returns ``(statistic, null)``.
    """
    n = sim.shape[0]
    stat = float(sim.diagonal().mean())
    rows = torch.arange(n, device=sim.device)
    null, done = [], 0
    while done < permutations:
        take = min(chunk, permutations - done)
        perm = random_permutations(take, n, generator, sim.device)
        null.append(sim[rows[None, :], perm].mean(1))
        done += take
    return stat, (torch.cat(null) if null else sim.new_zeros(0))


def fit_logistic(
    features: torch.Tensor, labels: torch.Tensor, l2: float, *, iterations: int = 25, tol: float = 1e-10
) -> torch.Tensor:
    """Ridge logistic regression ``P(label = 1 | z) = sigmoid(w . [z, 1])`` by Newton's method.

    Minimises ``mean log-loss + (l2 / 2) ||w_without_intercept||^2``. Returns ``w [d + 1]``.
    """
    n, d = features.shape
    design = torch.cat([features, features.new_ones(n, 1)], dim=1)
    w = features.new_zeros(d + 1)
    penalty = torch.full((d + 1,), float(l2), dtype=features.dtype, device=features.device)
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = torch.sigmoid(design @ w)
        grad = design.T @ (p - labels) / n + penalty * w
        hess = (design.T * (p * (1 - p))) @ design / n + torch.diag(penalty + 1e-10)
        step = torch.linalg.solve(hess, grad)
        w = w - step
        if float(step.abs().max()) < tol:
            break
    return w


def logistic_logit(w: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    return features @ w[:-1] + w[-1]


def nwj_terms(t_x: torch.Tensor, t_y: torch.Tensor) -> torch.Tensor:
    """Per-pair terms of the NWJ bound on ``D_S`` from a critic ``T`` (``t_x = T(x_i)``, ...).

    ``KL(P||Q) >= E_P[T] - E_Q[exp(T - 1)]`` for any T (Nguyen-Wainwright-Jordan); with ``T``
    for ``KL(P||Q)`` and ``2 - T`` (the critic of the reversed ratio, ``1 - logit``) for
    ``KL(Q||P)``, ``D_S = (KL(P||Q) + KL(Q||P)) / 2 >= mean_i`` of the returned terms.
    """
    forward = t_x - torch.exp(t_y - 1.0)
    backward = (2.0 - t_y) - torch.exp(1.0 - t_x)
    return 0.5 * (forward + backward)


def binomial_test(
    successes: int, trials: int, null_rate: float, alternative_rate: float, level: float
) -> tuple[float, float]:
    """Exact one-sided binomial test of ``rate > null_rate``: ``(p_value, power)``, the power
    being the exact probability of rejecting at ``level`` when the rate is ``alternative_rate``."""
    binom = _scipy_stats.binom
    p_value = float(binom.sf(successes - 1, trials, null_rate))
    # smallest k with P0(X >= k) <= level
    k = int(binom.isf(level, trials, null_rate)) + 1
    while k > 0 and binom.sf(k - 2, trials, null_rate) <= level:
        k -= 1
    while binom.sf(k - 1, trials, null_rate) > level:
        k += 1
    power = float(binom.sf(k - 1, trials, alternative_rate))
    return p_value, power


def symmetric_infonce_per_pair(x: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-pair symmetric InfoNCE ``(l_i(x->y) + l_i(y->x)) / 2`` over the batch of all pairs.

    ``x, y [..., n, d]`` (a leading batch of transformed embeddings); returns ``[..., n]``; its
    mean over pairs is the symmetric CLIP loss at temperature ``tau``.
    """
    logits = (x @ y.transpose(-1, -2)) / tau
    diag = logits.diagonal(dim1=-2, dim2=-1)
    return 0.5 * ((torch.logsumexp(logits, -1) - diag) + (torch.logsumexp(logits, -2) - diag))


def normal_power(effect: float, null_sd: float, level: float) -> float:
    """Power of a one-sided test at ``level`` whose statistic is normal with s.d. ``null_sd``
    under the null and shifted by ``effect`` at the designed alternative."""
    if not null_sd > 0:
        return 1.0 if effect > 0 else 0.0
    z = _scipy_stats.norm.ppf(1.0 - level)
    return float(_scipy_stats.norm.cdf(effect / null_sd - z))


def _jeffreys_binary(a: float, b: float) -> float:
    """``kl(a||b) + kl(b||a)`` of two Bernoulli rates (0 when a <= b)."""
    if a <= b:
        return 0.0
    a, b = min(max(a, 1e-300), 1 - 1e-16), min(max(b, 1e-300), 1 - 1e-16)
    return (a - b) * (math.log(a / b) + math.log((1 - b) / (1 - a)))


def binary_divergence_bound(hits_x: int, hits_y: int, trials: int, level: float = 0.05):
    """A finite-sample lower bound on ``D_S(P, Q)`` from a held-out binary test (data processing).

    ``hits_x`` of ``trials`` held-out x and ``hits_y`` of ``trials`` held-out y are called "x" by
    a classifier fitted elsewhere; by data processing ``D_S(P, Q) >= D_S(Bern(a), Bern(b))``
    with a, b the two call rates (this is the NWJ / Donsker-Varadhan bound maximised over the
    critics ``T = u + v 1{called x}``). With exact one-sided Clopper-Pearson limits at
    ``level/2`` each (Bonferroni: valid whatever the dependence between the x and y of a pair),
    ``D_S >= J(a_lo, b_hi)/2`` at ``1 - level``. Returns ``(bound, p_value)``, the p-value of
    H0: a = b (D_S = 0) for that construction (the smallest level at which the bound is > 0).
    """
    beta = _scipy_stats.beta

    def limits(alpha):
        lo = 0.0 if hits_x == 0 else float(beta.ppf(alpha / 2, hits_x, trials - hits_x + 1))
        hi = 1.0 if hits_y == trials else float(beta.ppf(1 - alpha / 2, hits_y + 1, trials - hits_y))
        return lo, hi

    lo, hi = limits(level)
    bound = 0.5 * _jeffreys_binary(lo, hi)
    if hits_x <= hits_y:
        return bound, 1.0
    low, high = 0.0, 1.0  # bisection on the level: separated at alpha iff lo(alpha) > hi(alpha)
    for _ in range(60):
        mid = 0.5 * (low + high)
        a, b = limits(mid)
        low, high = (low, mid) if a > b else (mid, high)
    return bound, high


def designed_rate_gap(divergence: float) -> float:
    """Half-gap e of rates a = 1/2 + e, b = 1/2 - e whose binary D_S equals ``divergence``."""
    from scipy import optimize

    return float(
        optimize.brentq(lambda e: 0.5 * _jeffreys_binary(0.5 + e, 0.5 - e) - divergence, 1e-9, 0.5 - 1e-12)
    )
