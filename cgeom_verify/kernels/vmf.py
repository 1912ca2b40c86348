"""Von Mises-Fisher kernels on S^{d-1} (the kernel volume V_kappa(tau) of paper Thm 3.1).

Derivation: docs/derivations.md, "Kernel volume and vMF densities".

``V_d(x) = ∫ exp(x <m, w>) mu(dw) = Gamma(d/2) (2/x)^nu I_nu(x)``, nu = d/2 - 1, with
``mu`` the uniform *probability* measure; the vMF density with mean m and
concentration k is ``exp(k <m, w>) / V_d(k)`` with respect to ``mu``, and its mean
resultant length is ``A_d(k) = I_{d/2}(k) / I_{d/2-1}(k) = d/dk log V_d(k)``.

Public API:

* :func:`log_kernel_volume` — ``log V_d(x)``, stable for d <= 512 and 0 <= x <= 1e4;
* :func:`mean_resultant_length` — ``A_d(x)``;
* :func:`vmf_log_density` — log density w.r.t. ``mu``;
* :func:`sample_vmf` — Wood's (1994) rejection sampler, batched, driven by a
  ``torch.Generator`` so that every draw replays from its seed;
* :func:`sample_uniform_sphere`;
* :func:`random_mixture` — random vMF mixtures (uniform means, Dirichlet(1) weights), the
  test laws of the landscape and multimodal-geometry checks.

The Bessel functions are evaluated in NumPy/SciPy (float64): they enter as
per-setting constants, never inside the per-sample hot loop.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import special

__all__ = [
    "log_kernel_volume",
    "mean_resultant_length",
    "vmf_log_density",
    "sample_vmf",
    "standard_gamma",
    "sample_uniform_sphere",
    "random_mixture",
]

# Terms of the 0F1 series used where scaled Bessel values underflow (x << nu); there
# the term ratio x^2 / (4 k (k + nu + 1)) is tiny, so this many terms is exhaustive.
_SERIES_TERMS = 400


def _log_series(d: int, x: np.ndarray, extra: int = 0) -> np.ndarray:
    """log of sum_k (x^2/4)^k Gamma(d/2 + extra) / (k! Gamma(d/2 + extra + k)).

    With extra = 0 this is V_d(x) = 0F1(; d/2; x^2/4).
    """
    k = np.arange(_SERIES_TERMS, dtype=np.float64)
    a = d / 2.0 + extra
    with np.errstate(divide="ignore", invalid="ignore"):  # x = 0: log 0 and 0 * -inf
        log_q = np.log(np.square(x) / 4.0)[..., None]
        terms = k * log_q - special.gammaln(k + 1) - special.gammaln(a + k) + special.gammaln(a)
    terms[..., 0] = 0.0  # k = 0 term is exactly 1, also at x = 0
    return special.logsumexp(terms, axis=-1)


def _log_bessel_i(nu: float, x: np.ndarray) -> np.ndarray:
    """log I_nu(x) for x > 0 via the exponentially scaled Bessel function."""
    with np.errstate(divide="ignore"):
        return np.log(special.ive(nu, x)) + x


def log_kernel_volume(d: int, x) -> np.ndarray:
    """``log V_d(x)``: log of the vMF normaliser with respect to the uniform probability measure."""
    if int(d) != d or d < 2:
        raise ValueError(f"dimension d must be an integer >= 2, got {d}")
    x = np.asarray(x, dtype=np.float64)
    if np.any(x < 0) or not np.all(np.isfinite(x)):
        raise ValueError("concentration x must be finite and non-negative")
    nu = d / 2.0 - 1.0
    safe = np.where(x > 0, x, 1.0)
    direct = special.gammaln(d / 2.0) + nu * (np.log(2.0) - np.log(safe)) + _log_bessel_i(nu, safe)
    # ive underflows to 0 (log -> -inf) when x << nu; the series is exact and fast there.
    use_series = (x == 0) | ~np.isfinite(direct) | (x < 1e-3 * (nu + 1))
    if np.any(use_series):
        direct = np.where(use_series, _log_series(d, x), direct)
    return direct


def mean_resultant_length(d: int, x) -> np.ndarray:
    """``A_d(x) = I_{d/2}(x) / I_{d/2-1}(x)``, the derivative of ``log V_d``."""
    x = np.asarray(x, dtype=np.float64)
    nu = d / 2.0 - 1.0
    safe = np.where(x > 0, x, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = special.ive(nu + 1.0, safe) / special.ive(nu, safe)
    # Where ive underflows, use d/dx 0F1(;a;x^2/4) = x/(2a) 0F1(;a+1;x^2/4).
    bad = ~np.isfinite(ratio) | (x < 1e-3 * (nu + 1))
    if np.any(bad):
        series = (x / d) * np.exp(_log_series(d, x, extra=1) - _log_series(d, x))
        ratio = np.where(bad, series, ratio)
    return np.where(x == 0, 0.0, ratio)


def vmf_log_density(x: torch.Tensor, mean: torch.Tensor, kappa, d: int | None = None) -> torch.Tensor:
    """Log vMF density at points ``x[..., d]`` w.r.t. the uniform probability measure on S^{d-1}.

    It sees x only through <x, mean>: with ``d`` given, ``x`` and ``mean`` may hold only their
    coordinates in a span that contains the mean (:mod:`.vmf_span`)."""
    d = x.shape[-1] if d is None else d
    kappa_t = torch.as_tensor(kappa, dtype=x.dtype, device=x.device)
    log_norm = torch.as_tensor(
        log_kernel_volume(d, kappa_t.detach().cpu().numpy()), dtype=x.dtype, device=x.device
    )
    return kappa_t * (x * mean).sum(-1) - log_norm


def sample_uniform_sphere(shape, d: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """Uniform points on S^{d-1}, shape ``[*shape, d]``."""
    g = torch.randn(*shape, d, generator=generator, dtype=dtype, device=generator.device)
    return g / g.norm(dim=-1, keepdim=True)


def random_mixture(shape, components: int, d: int, generator: torch.Generator, *,
                   kappa_max: float | None = None, dtype=torch.float64):
    """A random vMF mixture per entry of ``shape``: ``components`` means uniform on S^{d-1},
    concentrations U(0, ``kappa_max``) (none drawn when it is None) and Dirichlet(1, ..., 1)
    weights, drawn in that order on the generator's device.

    Returns ``(means[*shape, K, d], kappas[*shape, K] or None, weights[*shape, K])``.
    """
    shape = (*shape, components)
    means = sample_uniform_sphere(shape, d, generator, dtype=dtype)
    kappas = None
    if kappa_max is not None:
        kappas = kappa_max * torch.rand(shape, generator=generator, dtype=dtype,
                                        device=generator.device)
    # Exp(1) draws, finite for every u in [0, 1) that torch.rand returns (-log u is not at 0)
    exponential = -torch.log1p(-torch.rand(shape, generator=generator, dtype=dtype,
                                           device=generator.device))
    return means, kappas, exponential / exponential.sum(-1, keepdim=True)


def standard_gamma(alpha: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gamma(alpha, 1) draws, elementwise, from a seeded generator: torch's own sampler
    (Marsaglia-Tsang; the one ``torch.distributions.Gamma`` calls), which unlike the
    distribution object takes the generator, so draws replay from a seed on either device."""
    return torch._standard_gamma(alpha, generator=generator)


def _symmetric_beta(a: float, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Beta(a, a) draws shaped like ``like``, from one Gamma(a) and one normal draw each.

    ``(1 + T / sqrt(2a + T^2)) / 2 ~ Beta(a, a)`` for ``T ~ t_{2a}``, and with
    ``T = N sqrt(2a / (2G))`` (N standard normal, G ~ Gamma(a, 1)) this is
    ``(1 + N / sqrt(N^2 + 2G)) / 2``: a normal in place of the second Gamma draw of
    ``G1 / (G1 + G2)`` (torch's CPU Gamma sampler takes ~55 ns per draw, its normal ~30: one
    Beta draw 84-90 ns instead of 104-123, 2^20 draws on one AVX2 core). The same law, in
    float64 throughout. Derivation: docs/derivations.md, "Symmetric Beta from a Student t"."""
    gamma = standard_gamma(torch.full_like(like, a), generator)
    normal = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
    return 0.5 + 0.5 * normal / torch.sqrt(normal * normal + 2 * gamma)


def _wood_cosines(kappa: torch.Tensor, d: int, generator: torch.Generator) -> torch.Tensor:
    """Draw w = <x, mean> for vMF(mean, kappa) in S^{d-1}; kappa has the output's shape."""
    dm1 = d - 1.0
    # b written in the cancellation-free form (d-1) / (2k + sqrt(4k^2 + (d-1)^2)).
    b = dm1 / (2 * kappa + torch.sqrt(4 * kappa**2 + dm1**2))
    x0 = (1 - b) / (1 + b)
    c = kappa * x0 + dm1 * torch.log1p(-(x0**2))

    def propose(b, x0, c, kappa):
        z = _symmetric_beta(dm1 / 2, kappa, generator)
        w = (1 - (1 + b) * z) / (1 - (1 - b) * z)
        u = torch.rand(z.shape, generator=generator, dtype=z.dtype, device=z.device)
        return w, kappa * w + dm1 * torch.log1p(-x0 * w) - c >= torch.log(u)

    # The first round proposes for every entry, in place (no gather or scatter: most accept);
    # later rounds only for the entries still rejected.
    out, accepted = propose(b, x0, c, kappa)
    pending = ~accepted
    while pending.any():
        idx = pending.nonzero(as_tuple=True)
        w, ok = propose(b[idx], x0[idx], c[idx], kappa[idx])
        sel = tuple(i[ok] for i in idx)
        out[sel] = w[ok]
        pending[sel] = False
    return out


def sample_vmf(mean: torch.Tensor, kappa, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` draws from vMF(mean, kappa) for every batch entry: ``[..., n, d]``.

    ``mean`` is ``[..., d]`` (unit vectors), ``kappa`` broadcastable to ``mean.shape[:-1]``;
    kappa = 0 gives the uniform law. The draws are made on ``mean``'s device, which must be
    the generator's.
    """
    if mean.device.type != generator.device.type:
        raise ValueError(f"sample_vmf: mean is on {mean.device}, the generator on "
                         f"{generator.device}; make both on the run's device")
    d = mean.shape[-1]
    batch = mean.shape[:-1]
    kappa = torch.as_tensor(kappa, dtype=mean.dtype, device=mean.device).expand(batch)
    kappa_n = kappa.unsqueeze(-1).expand(*batch, n).contiguous()
    w = _wood_cosines(kappa_n, d, generator).unsqueeze(-1)
    m = mean.unsqueeze(-2)
    v = torch.randn(*batch, n, d, generator=generator, dtype=mean.dtype, device=mean.device)
    v = v - (v * m).sum(-1, keepdim=True) * m  # uniform direction tangent to the mean
    v = v / v.norm(dim=-1, keepdim=True)
    return w * m + torch.sqrt((1 - w**2).clamp_min(0)) * v
