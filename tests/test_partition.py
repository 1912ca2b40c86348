"""Tests of the closed-form partition oracle against independent references.

References: the d = 3 sinh closed forms, quadrature on S^1 and S^2 (spectrally accurate for
these smooth integrands), a seeded Monte Carlo in d = 16, and mpmath at 40 digits for the
extremes of the supported range (d = 256, tau = 0.02; tiny c at large tau).
"""

import math

import mpmath
import numpy as np
import pytest
import torch

from cgeom_verify.kernels import partition, quadrature, vmf

mpmath.mp.dps = 40


def _mixture(d, weights, means, concentrations):
    means = [np.asarray(m, dtype=np.float64) / np.linalg.norm(m) for m in means]
    return partition.VmfMixture(tuple(weights), tuple(tuple(m) for m in means),
                                tuple(concentrations))


def _mixture_density(mix, points):
    """The vMF mixture's density w.r.t. the normalised surface measure, at ``points``."""
    pi, means, k = mix.arrays()
    return sum(p * np.exp(kk * points @ m - vmf.log_kernel_volume(mix.d, kk))
               for p, m, kk in zip(pi, means, k, strict=True))


def _quadrature_moments(mix, z, tau, points, weights):
    """Gamma, g, c, the gradient constant and log(k_tau*q)(z) by direct quadrature."""
    density = _mixture_density(mix, points)
    kernel = np.exp(points @ z / tau)
    gamma = np.sum(weights * kernel * density)
    g = np.sum((weights * kernel * density)[:, None] * points, axis=0) / gamma
    second = np.sum(weights * kernel**2 * density)
    spread = np.sum(weights * kernel**2 * density * np.sum((points - g) ** 2, axis=1))
    smoothed = np.sum(weights * kernel * density) / math.exp(vmf.log_kernel_volume(mix.d, 1 / tau))
    return gamma, g, second / gamma**2 - 1, spread / gamma**2 / tau**2, math.log(smoothed)


def _sphere_points(n_theta=96, n_phi=192):
    points, weights = quadrature.sphere_grid(n_theta, n_phi)
    return points.numpy(), weights.numpy()


def _circle_points(n=4096):
    points, weights = quadrature.circle_grid(n)
    return points.numpy(), weights.numpy()


def test_single_vmf_matches_sinh_closed_forms_in_d3():
    # d = 3: V_3(x) = sinh(x)/x and A_3(x) = coth(x) - 1/x.
    k, tau = 4.0, 0.5
    mix = _mixture(3, [1.0], [(0, 0, 1)], [k])
    z = np.array([0.6, 0.0, 0.8])
    u = z / tau + k * np.array([0.0, 0.0, 1.0])
    r = np.linalg.norm(u)
    log_v3 = lambda x: math.log(math.sinh(x) / x)  # noqa: E731
    assert partition.log_partition(mix, z, tau) == pytest.approx(log_v3(r) - log_v3(k), rel=1e-13)
    a3 = 1 / math.tanh(r) - 1 / r
    assert np.allclose(partition.tilted_mean(mix, z, tau), a3 * u / r, rtol=1e-12, atol=0)
    u2 = 2 * z / tau + k * np.array([0.0, 0.0, 1.0])
    c = math.exp(log_v3(np.linalg.norm(u2)) + log_v3(k) - 2 * log_v3(r)) - 1
    assert partition.relative_variance(mix, z, tau) == pytest.approx(c, rel=1e-12)
    assert c == pytest.approx(0.2365, abs=5e-5)  # spot value: docs/derivations.md, partition section


@pytest.mark.parametrize("tau", [0.15, 0.5, 1.0])
def test_mixture_on_s2_matches_quadrature(tau):
    mix = _mixture(3, [0.3, 0.5, 0.2], [(0, 0, 1), (1, 1, 0), (-1, 0.2, -0.3)], [5.0, 1.5, 9.0])
    z = np.array([0.48, -0.6, 0.64])
    points, weights = _sphere_points()
    gamma, g, c, grad_constant, log_smoothed = _quadrature_moments(mix, z, tau, points, weights)
    # 96 x 192 Gauss-Legendre x trapezoid nodes: the integrands are entire with bandwidth
    # <= 2/tau + 9 = 22.3, far below the grid's exactness degree, so quadrature error is ~1e-13.
    assert partition.log_partition(mix, z, tau) == pytest.approx(math.log(gamma), abs=1e-11)
    assert np.allclose(partition.tilted_mean(mix, z, tau), g, atol=1e-11)
    assert np.allclose(partition.grad_log_partition(mix, z, tau), g / tau, atol=1e-10)
    assert partition.relative_variance(mix, z, tau) == pytest.approx(c, rel=1e-10)
    assert partition.gradient_mse_constant(mix, z, tau) == pytest.approx(grad_constant, rel=1e-10)
    assert partition.log_smoothed_density(mix, z, tau) == pytest.approx(log_smoothed, abs=1e-11)


def test_gradient_covariance_on_s2_matches_quadrature():
    mix = _mixture(3, [0.6, 0.4], [(0, 0, 1), (1, 0, 0)], [3.0, 6.0])
    z, tau = np.array([0.0, 0.6, 0.8]), 0.4
    points, weights = _sphere_points()
    density = _mixture_density(mix, points)
    kernel = np.exp(points @ z / tau)
    gamma = np.sum(weights * kernel * density)
    g = partition.tilted_mean(mix, z, tau)
    centred = points - g
    covariance = np.einsum("m,ma,mb->ab", weights * kernel**2 * density, centred, centred)
    covariance /= gamma**2 * tau**2
    assert np.allclose(partition.gradient_error_covariance(mix, z, tau), covariance,
                       rtol=1e-10, atol=1e-12)
    tilted = weights * kernel**2 * density
    second = np.einsum("m,ma,mb->ab", tilted, points, points) / tilted.sum()
    assert np.allclose(partition.tilted_second_moment(mix, z, tau / 2), second, atol=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_relative_moments_on_s2_match_quadrature(order):
    mix = _mixture(3, [0.5, 0.5], [(0, 0, 1), (0, 1, 0)], [4.0, 2.0])
    z, tau = np.array([0.6, 0.0, 0.8]), 0.3
    points, weights = _sphere_points()
    density = _mixture_density(mix, points)
    ratio = np.exp(points @ z / tau) / np.sum(weights * np.exp(points @ z / tau) * density)
    reference = np.sum(weights * ratio**order * density)
    assert partition.relative_moment(mix, z, tau, order) == pytest.approx(reference, rel=1e-10)
    if order == 2:
        assert partition.relative_variance(mix, z, tau) == pytest.approx(reference - 1, rel=1e-10)


def test_mixture_on_s1_matches_quadrature():
    mix = _mixture(2, [0.7, 0.3], [(1, 0), (-0.6, 0.8)], [2.0, 6.0])
    z, tau = np.array([0.0, 1.0]), 0.2
    points, weights = _circle_points()
    gamma, g, c, grad_constant, log_smoothed = _quadrature_moments(mix, z, tau, points, weights)
    # trapezoid rule on 4096 nodes: Fourier tail of exp(<= 16 cos) is below 1e-300.
    assert partition.log_partition(mix, z, tau) == pytest.approx(math.log(gamma), abs=1e-12)
    assert np.allclose(partition.tilted_mean(mix, z, tau), g, atol=1e-12)
    assert partition.relative_variance(mix, z, tau) == pytest.approx(c, rel=1e-11)
    assert partition.gradient_mse_constant(mix, z, tau) == pytest.approx(grad_constant, rel=1e-11)
    assert partition.log_smoothed_density(mix, z, tau) == pytest.approx(log_smoothed, abs=1e-12)


def test_monte_carlo_in_d16():
    d, tau = 16, 0.4
    e = np.eye(d)
    mix = _mixture(d, [0.5, 0.5], [e[0], e[0] + e[1]], [6.0, 10.0])
    z = (e[0] + 2 * e[2]) / math.sqrt(5)
    gen = torch.Generator().manual_seed(7)
    n = 200_000
    pi, means, k = mix.arrays()
    labels = torch.multinomial(torch.as_tensor(pi), n, replacement=True, generator=gen)
    w = vmf.sample_vmf(torch.as_tensor(means)[labels], torch.as_tensor(k)[labels], 1, gen)[:, 0]
    kernel = torch.exp(w @ torch.as_tensor(z) / tau).numpy()
    w = w.numpy()
    gamma = math.exp(partition.log_partition(mix, z, tau))
    # 5 standard errors: a false failure has probability < 1e-6 per assertion.
    assert abs(kernel.mean() - gamma) < 5 * kernel.std() / math.sqrt(n)
    c = partition.relative_variance(mix, z, tau)
    ratio = kernel / gamma
    fourth = np.mean((ratio - 1) ** 4)
    assert abs(ratio.var() - c) < 5 * math.sqrt((fourth - c**2) / n)
    g = partition.tilted_mean(mix, z, tau)
    residual = ratio[:, None] * (w - g)
    assert np.all(np.abs(residual.mean(0)) < 5 * residual.std(0) / math.sqrt(n) + 1e-12)
    spread = ratio**2 * np.sum((w - g) ** 2, axis=1) / tau**2
    assert abs(spread.mean() - partition.gradient_mse_constant(mix, z, tau)) \
        < 5 * spread.std() / math.sqrt(n)


def _mp_log_volume(d, x):
    nu = mpmath.mpf(d) / 2 - 1
    x = mpmath.mpf(x)
    return mpmath.log(mpmath.gamma(mpmath.mpf(d) / 2) * (2 / x) ** nu * mpmath.besseli(nu, x))


@pytest.mark.parametrize("d, tau, k, cosine", [(256, 0.02, 40.0, -0.3), (256, 1.0, 0.5, 0.2),
                                               (128, 0.05, 300.0, 0.9), (2, 0.02, 3.0, -1.0)])
def test_extremes_match_mpmath(d, tau, k, cosine):
    e = np.eye(d)
    mix = _mixture(d, [1.0], [e[0]], [k])
    z = cosine * e[0] + math.sqrt(1 - cosine**2) * e[1]

    def log_gamma(t):
        r = math.sqrt(1 / t**2 + k**2 + 2 * k * cosine / t)
        return _mp_log_volume(d, r) - _mp_log_volume(d, k)

    assert partition.log_partition(mix, z, tau) == pytest.approx(float(log_gamma(tau)), rel=1e-11)
    c = float(mpmath.expm1(log_gamma(tau / 2) - 2 * log_gamma(tau)))
    # relative accuracy even when c ~ 1e-4 (expm1 of a difference of O(1) logs: 1e-12 / c)
    assert partition.relative_variance(mix, z, tau) == pytest.approx(c, rel=1e-7)
    for value in (partition.tilted_mean(mix, z, tau), partition.gradient_mse_constant(mix, z, tau)):
        assert np.all(np.isfinite(value))
    assert np.linalg.norm(partition.tilted_mean(mix, z, tau)) < 1


def test_trace_of_covariance_is_the_mse_constant():
    e = np.eye(64)
    mix = _mixture(64, [0.2, 0.8], [e[0], e[3]], [12.0, 3.0])
    z = (e[0] + e[1]) / math.sqrt(2)
    covariance = partition.gradient_error_covariance(mix, z, 0.1)
    assert np.trace(covariance) == pytest.approx(partition.gradient_mse_constant(mix, z, 0.1),
                                                 rel=1e-12)
    assert np.allclose(covariance, covariance.T)
    assert np.min(np.linalg.eigvalsh(covariance)) > -1e-12


def test_negated_mixture_reverses_means():
    mix = _mixture(3, [0.4, 0.6], [(0, 0, 1), (1, 0, 0)], [2.0, 3.0])
    _, means, _ = mix.negated().arrays()
    assert np.array_equal(means, -mix.arrays()[1])


@pytest.mark.parametrize("bad", [
    dict(weights=(0.5, 0.6), means=((1.0, 0.0), (0.0, 1.0)), concentrations=(1.0, 1.0)),
    dict(weights=(1.0,), means=((1.0, 1.0),), concentrations=(1.0,)),
    dict(weights=(1.0,), means=((1.0, 0.0),), concentrations=(-1.0,)),
    dict(weights=(1.0,), means=((1.0, 0.0),), concentrations=(1.0, 2.0)),
    dict(weights=(1.0,), means=((1.0,),), concentrations=(1.0,)),
])
def test_bad_mixtures_are_rejected(bad):
    with pytest.raises(ValueError):
        partition.VmfMixture(**bad)


def test_bad_inputs_are_rejected():
    mix = _mixture(3, [1.0], [(0, 0, 1)], [1.0])
    with pytest.raises(ValueError, match="temperature"):
        partition.log_partition(mix, np.array([0.0, 0.0, 1.0]), 0.0)
    with pytest.raises(ValueError, match="dimension"):
        partition.log_partition(mix, np.array([0.0, 1.0]), 0.5)
    with pytest.raises(ValueError, match="order"):
        partition.relative_moment(mix, np.array([0.0, 0.0, 1.0]), 0.5, 0)


def test_span_sampler_matches_the_full_sampler_in_distribution():
    # projections on the first r coordinates: same first and second moments as full draws
    from cgeom_verify.kernels import vmf_span

    gen = torch.Generator().manual_seed(5)
    for d in (3, 16, 128):
        r = min(d, 4)
        mean = torch.zeros(d, dtype=torch.float64)
        mean[0], mean[1] = 0.6, 0.8
        full = vmf.sample_vmf(mean, 3.0, 40000, gen)[:, :r]
        span = vmf_span.sample_vmf_span(mean[:r], 3.0, 40000, d, gen)
        assert span.shape == (40000, r)
        tol = 6 / 200  # 6 standard errors of a mean of 40000 draws of s.d. <= 1
        assert torch.all((full.mean(0) - span.mean(0)).abs() < tol)
        second = lambda x: (x[:, :, None] * x[:, None, :]).mean(0)  # noqa: E731
        assert torch.all((second(full) - second(span)).abs() < tol)
        if d == r:
            assert torch.allclose(span.norm(dim=-1), torch.ones(40000, dtype=torch.float64))


def test_log_volume_quadrature_is_independent_and_agrees():
    from cgeom_verify.experiments.large_batch import log_volume_quadrature

    for d in (2, 3, 4, 8, 64, 256):
        for x in (0.0, 0.5, 5.0, 50.0):
            value, bound = log_volume_quadrature(d, x)
            assert bound < 1e-9
            assert abs(value - float(vmf.log_kernel_volume(d, x))) <= bound * abs(value) + 1e-10
    # an additive error in log V_d (the kind that cancels in every Monte Carlo check) is visible
    assert abs(log_volume_quadrature(5, 2.0)[0] - float(vmf.log_kernel_volume(4, 2.0))) > 1e-3
