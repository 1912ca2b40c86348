"""Tests of the shared kernels against independent references (mpmath, closed forms)."""

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import stats

from cgeom_verify.kernels import gibbs, infonce, quadrature, streaming, vmf

mpmath.mp.dps = 40


def _mp_log_volume(d, x):
    nu = mpmath.mpf(d) / 2 - 1
    return float(mpmath.log(mpmath.gamma(mpmath.mpf(d) / 2) * (2 / mpmath.mpf(x)) ** nu
                            * mpmath.besseli(nu, x)))


@pytest.mark.parametrize("d", [2, 3, 8, 128, 256, 512])
@pytest.mark.parametrize("x", [1e-8, 1e-3, 0.5, 5.0, 50.0, 1e3, 1e4])
def test_log_kernel_volume_matches_mpmath(d, x):
    # 1e-12 relative: float64 Bessel evaluation and a sum of O(1) logs.
    ref = _mp_log_volume(d, x)
    assert abs(float(vmf.log_kernel_volume(d, x)) - ref) <= 1e-12 * max(1.0, abs(ref))


@pytest.mark.parametrize("d", [2, 3, 256])
@pytest.mark.parametrize("x", [1e-6, 0.7, 30.0, 2e3])
def test_mean_resultant_length_matches_mpmath(d, x):
    nu = mpmath.mpf(d) / 2 - 1
    ref = float(mpmath.besseli(nu + 1, x) / mpmath.besseli(nu, x))
    assert abs(float(vmf.mean_resultant_length(d, x)) - ref) <= 1e-11 * ref


def test_volume_closed_forms():
    x = np.array([0.0, 0.3, 2.0, 40.0])
    assert np.allclose(vmf.log_kernel_volume(3, x[1:]), np.log(np.sinh(x[1:]) / x[1:]), rtol=1e-13)
    assert vmf.log_kernel_volume(3, 0.0) == 0.0
    assert np.allclose(vmf.log_kernel_volume(2, x), np.log(np.i0(x)), rtol=1e-13)


def test_bad_volume_arguments_are_errors():
    with pytest.raises(ValueError):
        vmf.log_kernel_volume(1, 1.0)
    with pytest.raises(ValueError):
        vmf.log_kernel_volume(3, -1.0)


@pytest.mark.parametrize("d,kappa", [(2, 0.5), (3, 4.0), (16, 30.0), (64, 0.0)])
def test_sample_vmf_mean_cosine(d, kappa):
    gen = torch.Generator().manual_seed(1)
    mean = torch.zeros(d, dtype=torch.float64)
    mean[-1] = 1.0
    x = vmf.sample_vmf(mean, kappa, 40000, gen)
    assert torch.allclose(x.norm(dim=-1), torch.ones(40000, dtype=torch.float64))
    cos = x[:, -1]
    # z-test at level 1e-6: a correct sampler fails this with probability 1e-6.
    z = (cos.mean().item() - float(vmf.mean_resultant_length(d, kappa))) / (cos.std().item() / 200)
    assert abs(z) < 4.9


@pytest.mark.parametrize("a", [0.5, 1.0, 1.5, 31.5])
def test_symmetric_beta_is_beta(a):
    """Wood's proposal Beta(a, a) as (1 + N / sqrt(N^2 + 2G)) / 2: a Kolmogorov-Smirnov test
    at level 1e-6 on 2^17 draws: it fails a correct sampler with probability 1e-6, and its
    critical distance sqrt(ln(2/1e-6) / 2^18) = 0.0074 rejects CDFs twice that far apart with
    near certainty. The same test rejects the slip ``2G -> G``, whose draws lie 0.055-0.084
    from Beta(a, a) in KS distance."""
    gen = torch.Generator().manual_seed(5)
    like = torch.zeros(2**17, dtype=torch.float64)
    z = vmf._symmetric_beta(a, like, gen).numpy()
    assert stats.kstest(z, stats.beta(a, a).cdf).pvalue > 1e-6
    gamma = vmf.standard_gamma(torch.full_like(like, a), gen)
    normal = torch.randn(like.shape, generator=gen, dtype=like.dtype)
    slipped = (0.5 + 0.5 * normal / torch.sqrt(normal * normal + gamma)).numpy()
    assert stats.kstest(slipped, stats.beta(a, a).cdf).pvalue < 1e-6


def test_sample_vmf_replays_from_seed_and_batches():
    means = torch.nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64), dim=-1)
    a = vmf.sample_vmf(means, torch.tensor([0.0, 1.0, 5.0, 50.0]), 7, torch.Generator().manual_seed(3))
    b = vmf.sample_vmf(means, torch.tensor([0.0, 1.0, 5.0, 50.0]), 7, torch.Generator().manual_seed(3))
    assert a.shape == (4, 7, 3) and torch.equal(a, b)


def test_random_mixture_laws():
    # means on the sphere, kappas U(0, kappa_max), Dirichlet(1) weights: E w = 1/K, and
    # Var w = (K - 1) / (K^2 (K + 1)); 4000 mixtures put the mean within 4 s.e.
    means, kappas, weights = vmf.random_mixture((4000,), 3, 5, torch.Generator().manual_seed(2),
                                                kappa_max=7.0)
    assert means.shape == (4000, 3, 5) and kappas.shape == weights.shape == (4000, 3)
    one = torch.ones((), dtype=torch.float64)
    assert torch.allclose(means.norm(dim=-1), one, atol=1e-14)
    assert torch.allclose(weights.sum(-1), one, atol=1e-14) and bool((weights > 0).all())
    assert 0 <= float(kappas.min()) and float(kappas.max()) < 7.0
    se = math.sqrt(2 / (9 * 4) / 4000)
    assert abs(float(weights.mean(0)[0]) - 1 / 3) < 4 * se
    assert abs(float(kappas.mean()) - 3.5) < 4 * 7.0 / math.sqrt(12 * 12000)
    # without kappa_max no concentration is drawn, and the rest of the stream is unchanged
    again, none, same = vmf.random_mixture((4000,), 3, 5, torch.Generator().manual_seed(2))
    assert none is None and torch.equal(again, means)


def test_quadrature_grid_by_dimension():
    for d, shape in ((2, (16,)), (3, (4, 8))):
        points, weights = quadrature.grid(d, shape)
        assert points.shape == (math.prod(shape), d) and abs(weights.sum().item() - 1) < 1e-14
    assert quadrature.exact_degree(2, (16,)) == 15 and quadrature.exact_degree(3, (4, 8)) == 7
    with pytest.raises(ValueError):
        quadrature.grid(4, (4, 8))


def test_vmf_density_integrates_to_one_on_s2():
    points, weights = quadrature.sphere_grid(60, 120)
    mean = torch.tensor([0.0, 0.6, 0.8], dtype=torch.float64)
    mass = (weights * vmf.vmf_log_density(points, mean, 7.0).exp()).sum().item()
    assert abs(mass - 1.0) < 1e-12


def test_vmf_density_from_the_coordinate_along_the_mean():
    """Given the sphere's dimension, the density of a point is that of its coordinate on the
    mean's axis (the higher-d tie-break draws that coordinate alone)."""
    gen = torch.Generator().manual_seed(0)
    d, kappa = 21, torch.tensor([[0.5], [40.0]], dtype=torch.float64)
    mean = vmf.sample_uniform_sphere((), d, gen)
    points = vmf.sample_uniform_sphere((2, 5), d, gen)
    full = vmf.vmf_log_density(points, mean, kappa)
    on_axis = vmf.vmf_log_density((points @ mean)[..., None], torch.ones(1, dtype=torch.float64),
                                  kappa, d=d)
    torch.testing.assert_close(on_axis, full, rtol=1e-14, atol=1e-12)


def test_quadrature_weights_and_moments():
    points, weights = quadrature.sphere_grid(10, 21)
    assert abs(weights.sum().item() - 1) < 1e-14
    assert abs((weights * points[:, 0] ** 2).sum().item() - 1 / 3) < 1e-14
    circle, cw = quadrature.circle_grid(64)
    assert abs((cw * torch.exp(2 * circle[:, 0])).sum().item() - float(np.i0(2.0))) < 1e-13


def test_streamed_logsumexp_equals_dense_and_keeps_gradients():
    x = torch.randn(3, 1001, dtype=torch.float64, requires_grad=True)
    streamed = streaming.streamed_logsumexp(lambda a, b: x[:, a:b], 1001, 64)
    dense = torch.logsumexp(x, -1)
    assert torch.allclose(streamed, dense, atol=1e-13)
    (g_streamed,) = torch.autograd.grad(streamed.sum(), x)
    (g_dense,) = torch.autograd.grad(dense.sum(), x)
    assert torch.allclose(g_streamed, g_dense, atol=1e-13)


def test_infonce_matches_definition():
    gen = torch.Generator().manual_seed(0)
    z = vmf.sample_uniform_sphere((2, 5), 4, gen)
    zp = vmf.sample_uniform_sphere((2, 5), 4, gen)
    negatives = vmf.sample_uniform_sphere((2, 9), 4, gen)
    tau = 0.3
    loss = infonce.infonce_loss(z, zp, negatives, tau, include_positive=True)
    pos = (z * zp).sum(-1) / tau
    neg = torch.einsum("rbd,rnd->rbn", z, negatives) / tau
    expected = -pos + torch.log(pos.exp() + neg.exp().sum(-1))
    assert torch.allclose(loss, expected, atol=1e-13)
    chunked = infonce.infonce_loss(z, zp, negatives, tau, include_positive=True, chunk=4)
    assert torch.allclose(chunked, expected, atol=1e-13)
    without = infonce.infonce_loss(z, zp, negatives, tau, include_positive=False)
    assert torch.allclose(without, -pos + torch.log(neg.exp().sum(-1)), atol=1e-13)


@pytest.mark.parametrize("shift", [0.0, 30.0, -650.0, 708.0, 760.0, -760.0, -1e4])
def test_log_partition_is_logsumexp_in_value_and_gradient(shift):
    """log(sum(exp)) where that is exact, torch.logsumexp where exp overflows or every term is
    subnormal (shifts beyond +-709): the same value and gradient (softmax) as the library's."""
    gen = torch.Generator().manual_seed(3)
    z = vmf.sample_uniform_sphere((4, 3), 5, gen).requires_grad_(True)
    w = vmf.sample_uniform_sphere((4, 50), 5, gen)

    def shifted(anchors, negatives, scale):  # a critic with logits near `shift`
        return infonce.cosine_critic(anchors, negatives, scale) + shift

    value = infonce.log_partition(z, w, 0.2, critic=shifted)
    (grad,) = torch.autograd.grad(value.sum(), z)
    logits = (z @ w.transpose(-1, -2) / 0.2 + shift).detach().requires_grad_(True)
    expected = torch.logsumexp(logits, dim=-1)
    (softmax,) = torch.autograd.grad(expected.sum(), logits)
    assert torch.isfinite(value).all()
    assert torch.allclose(value, expected, rtol=1e-15, atol=1e-12)
    assert torch.allclose(grad, softmax @ w / 0.2, rtol=1e-12, atol=1e-14)


def test_rbf_critic_and_detached_negatives():
    z = torch.randn(3, 4, dtype=torch.float64)
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(infonce.rbf_critic(z, w), -((z[:, None] - w[None]) ** 2).sum(-1) / 4)
    loss = infonce.infonce_loss(z, z, w, 0.5, detach_negatives=True).sum()
    assert not loss.requires_grad
    with pytest.raises(ValueError, match="unknown critic"):
        infonce.infonce_loss(z, z, w, 0.5, critic="dot")


def test_symmetric_infonce_is_mean_of_directions():
    gen = torch.Generator().manual_seed(2)
    z, w = vmf.sample_uniform_sphere((6,), 3, gen), vmf.sample_uniform_sphere((6,), 3, gen)
    sym = infonce.symmetric_infonce(z, w, z, w, 0.1, include_positive=False)
    logits = z @ w.T / 0.1
    clip = 0.5 * (torch.nn.functional.cross_entropy(logits, torch.arange(6), reduction="none")
                  + torch.nn.functional.cross_entropy(logits.T, torch.arange(6), reduction="none"))
    assert torch.allclose(sym, clip, atol=1e-13)


def test_gibbs_density_normalised_and_partition():
    points, weights = quadrature.sphere_grid(40, 80)
    means = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    u = gibbs.mixture_potential(points, means, torch.tensor([0.5, 0.5], dtype=torch.float64), 12.0)
    log_rho = gibbs.gibbs_log_density(u, torch.tensor([1.0, 0.1], dtype=torch.float64), weights)
    assert torch.allclose((weights * log_rho.exp()).sum(-1), torch.ones(2, dtype=torch.float64))
    # A constant potential c has Z_tau = exp(-c/tau).
    log_z = gibbs.log_partition_function(torch.full((points.shape[0],), 2.0, dtype=torch.float64),
                                         0.5, weights)
    assert math.isclose(log_z.item(), -4.0, abs_tol=1e-13)



def test_mixture_potential_gradient_is_autograd_of_the_potential():
    """The closed form -sum_i softmax_i m_i (training's) against autograd of U, with batch
    dimensions on the wells, unequal weights and points off the sphere (the ambient gradient)."""
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(2, 50, 3, generator=gen, dtype=torch.float64).requires_grad_(True)
    means = torch.nn.functional.normalize(torch.randn(2, 3, 3, generator=gen, dtype=torch.float64), dim=-1)
    weights = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.1, 0.3]], dtype=torch.float64)
    kappa = torch.tensor([12.0, 3.0], dtype=torch.float64)
    (expected,) = torch.autograd.grad(gibbs.mixture_potential(z, means, weights, kappa).sum(), z)
    closed = gibbs.mixture_potential_gradient(z.detach(), means, weights, kappa)
    assert torch.allclose(closed, expected, rtol=0, atol=1e-13)
    assert not torch.allclose(closed, torch.zeros_like(closed), atol=1e-3)  # a real comparison
