"""Tests of the landscape kernel (cgeom_verify.kernels.landscape)."""

import math

import numpy as np
import pytest
import torch

from cgeom_verify.kernels import gibbs, landscape, quadrature
from cgeom_verify.kernels.landscape import IntrinsicEnergy


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def s2():
    return quadrature.sphere_grid(12, 24)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_first_variation_is_the_gradient_of_the_energy(s2, sign):
    points, weights = s2
    energy = IntrinsicEnergy(entropy_sign=sign)
    u = landscape.random_mixture_potential(points, 1, 3, 5.0, _gen())[0]
    rho = torch.exp(landscape.random_log_density((), weights, _gen(1))).requires_grad_()
    value = energy.energy(torch.log(rho), u, 0.7, weights)
    (grad,) = torch.autograd.grad(value, rho)
    # dF/drho_k = q_k * (first variation at node k)
    expected = weights * energy.first_variation(torch.log(rho.detach()), u, 0.7)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-14)


def test_gibbs_attains_minus_log_partition_and_kl_is_the_excess(s2):
    points, weights = s2
    energy = IntrinsicEnergy()
    u = landscape.random_harmonic_potential(points, 2, 3, 1.0, _gen())
    tau = torch.tensor([0.3, 2.0], dtype=torch.float64)
    log_star = energy.minimizer_log_density(u, tau, weights)
    log_z = gibbs.log_partition_function(u, tau, weights)
    torch.testing.assert_close(energy.energy(log_star, u, tau, weights), -log_z)
    log_rho = landscape.random_log_density((2,), weights, _gen(2))
    excess = energy.energy(log_rho, u, tau, weights) + log_z
    torch.testing.assert_close(excess, landscape.kl_divergence(log_rho, log_star, weights))
    assert bool((excess > 0).all())


def test_entropy_and_kl_of_simple_densities(s2):
    _, weights = s2
    uniform = torch.zeros_like(weights)
    assert abs(float(landscape.entropy(uniform, weights))) < 1e-15
    log_rho = landscape.random_log_density((), weights, _gen())
    assert float(landscape.entropy(log_rho, weights)) < 0  # uniform has maximal entropy 0
    assert abs(float(landscape.kl_divergence(log_rho, log_rho, weights))) < 1e-15
    assert float(landscape.kl_divergence(log_rho, uniform, weights)) > 0


def test_random_log_density_is_normalised(s2):
    _, weights = s2
    log_rho = landscape.random_log_density((3, 4), weights, _gen())
    torch.testing.assert_close((weights * torch.exp(log_rho)).sum(-1),
                               torch.ones(3, 4, dtype=torch.float64))


def test_mirror_descent_reaches_gibbs_within_its_rate(s2):
    points, weights = s2
    energy = IntrinsicEnergy()
    u = landscape.random_mixture_potential(points, 1, 2, 8.0, _gen())[0]
    log_star = energy.minimizer_log_density(u, 0.5, weights)
    log_rho0 = landscape.random_log_density((5,), weights, _gen(3))
    kl_start = landscape.kl_divergence(log_star, log_rho0, weights)
    for steps in (1, 5, 20):
        log_rho = landscape.exponentiated_gradient(
            lambda lr: energy.first_variation(lr, u, 0.5), log_rho0, weights, steps, 0.3)
        kl = landscape.kl_divergence(log_rho, log_star, weights)
        assert bool((kl <= landscape.mirror_descent_rate_bound(kl_start, 0.3, steps)).all())
    # step 1 lands on the Gibbs density in one step: log rho_1 = -U/tau + const
    one = landscape.exponentiated_gradient(
        lambda lr: energy.first_variation(lr, u, 0.5), log_rho0, weights, 1, 1.0)
    torch.testing.assert_close(one, log_star.expand_as(one))


def test_mirror_descent_rejects_bad_steps(s2):
    _, weights = s2
    with pytest.raises(ValueError):
        landscape.exponentiated_gradient(lambda lr: lr, torch.zeros_like(weights), weights, 3, 1.5)
    with pytest.raises(ValueError):
        landscape.mirror_descent_rate_bound(1.0, 1.0, 3)


def test_rate_bound_value():
    # KL / ((1 - eta)^-T - 1) with eta = 1/2, T = 3: 1 / (8 - 1)
    assert math.isclose(landscape.mirror_descent_rate_bound(1.0, 0.5, 3), 1 / 7)


def test_energy_rejects_non_positive_temperature(s2):
    _, weights = s2
    with pytest.raises(ValueError):
        IntrinsicEnergy().energy(torch.zeros_like(weights), torch.zeros_like(weights), 0.0, weights)


def test_legendre_of_dimension():
    t = torch.linspace(-1, 1, 7, dtype=torch.float64)
    torch.testing.assert_close(landscape._legendre_of_dimension(4, 2, t),
                               torch.cos(4 * torch.acos(t)))
    torch.testing.assert_close(landscape._legendre_of_dimension(3, 3, t), (5 * t**3 - 3 * t) / 2)
    one = torch.ones(1, dtype=torch.float64)
    for d in (2, 3, 5, 10):
        torch.testing.assert_close(landscape._legendre_of_dimension(5, d, one), one)


def test_harmonic_potential_on_the_circle_is_a_trigonometric_polynomial():
    points, weights = quadrature.circle_grid(64)
    u = landscape.random_harmonic_potential(points, 3, 4, 1.0, _gen())
    spectrum = np.abs(np.fft.rfft(u.numpy(), axis=-1))
    assert spectrum[:, 5:].max() < 1e-12 * spectrum.max()  # degree <= 4
    assert spectrum[:, 0].max() < 1e-12 * spectrum.max()  # no constant term


def test_harmonic_potential_integrates_to_zero_on_the_sphere(s2):
    points, weights = s2
    u = landscape.random_harmonic_potential(points, 4, 3, 1.0, _gen())
    assert float((weights * u).sum(-1).abs().max()) < 1e-13


def test_mixture_potential_is_bounded_below_by_minus_one(s2):
    points, _ = s2
    u = landscape.random_mixture_potential(points, 4, 3, 10.0, _gen())
    assert u.shape == (4, points.shape[0])
    assert float(u.min()) >= -1.0 - 1e-12  # -(1/kappa) log sum w e^{kappa <z,m>} >= -1


def test_partition_masses_add_up(s2):
    _, weights = s2
    log_rho = landscape.random_log_density((2,), weights, _gen())
    labels = torch.arange(weights.shape[0]) % 3
    masses = landscape.partition_masses(log_rho, labels, weights, 3)
    assert masses.shape == (2, 3)
    torch.testing.assert_close(masses.sum(-1), torch.ones(2, dtype=torch.float64))


def test_summation_error_bound():
    n = 1000
    bound = quadrature.summation_error_bound(2.0, n)
    assert math.isclose(bound, 2.0 * (n + 16) * 2.0**-53, rel_tol=1e-9)


def test_one_precision_model():
    # gamma_n = n u / (1 - n u); the grid bound is gamma_{M + 16} sum |terms|.
    u = quadrature.UNIT_ROUNDOFF
    assert math.isclose(quadrature.gamma(10), 10 * u / (1 - 10 * u), rel_tol=1e-15)
    terms = torch.full((5, 100), 0.5, dtype=torch.float64)
    bound = quadrature.grid_sum_error_bound(terms)
    torch.testing.assert_close(bound, torch.full((5,), 50.0 * quadrature.gamma(116),
                                                 dtype=torch.float64))
    assert quadrature.exact_degree(2, (96,)) == 95 and quadrature.exact_degree(3, (24, 48)) == 47


@pytest.mark.parametrize("sphere,shape,kappa", [(2, (96,), 30.0), (3, (24, 48), 10.0),
                                                (3, (6, 12), 4.0)])
def test_vmf_normaliser_quadrature_bound_covers_the_error(sphere, shape, kappa):
    # The closed-form oracle of the landscape checks: sum_k q_k e^{kappa <z_k, m>} = V_d(kappa)
    # up to the derived relative bound (plus rounding).
    from cgeom_verify.kernels import vmf

    points, weights = quadrature.grid(sphere, shape)
    m = vmf.sample_uniform_sphere((), sphere, _gen(5))
    grid = float(torch.logsumexp(kappa * (points @ m) + torch.log(weights), -1))
    exact = float(vmf.log_kernel_volume(sphere, kappa))
    rel = float(quadrature.exp_polynomial_quadrature_bound(kappa, 0, 1.0,
                                                           quadrature.exact_degree(sphere, shape),
                                                           sphere))
    assert abs(grid - exact) <= -math.log1p(-min(rel, 0.5)) + 1e-13


def test_closed_form_checks_catch_unnormalised_weights(monkeypatch):
    # The grid identities hold for any weights; the closed-form decisions do not.
    from cgeom_verify.claim import CheckRun
    from cgeom_verify.experiments import unimodal_landscape as experiment
    from claims.unimodal_landscape import closed_form_energy_tests, closed_form_gibbs_tests

    run = CheckRun(settings=[None], seeds=[1], check_seed=1, subject=IntrinsicEnergy(),
                   profile="quick", device=torch.device("cpu"))
    good = [t.decide(1e-3).passed for t in closed_form_gibbs_tests(run, 0, 3, (0.3, 1.0), _gen())]
    assert all(good)
    original = experiment.grid

    def doubled(sphere, device):
        points, weights = original(sphere, device)
        return points, 2 * weights

    monkeypatch.setattr(experiment, "grid", doubled)
    bad = [t.decide(1e-3).passed for t in closed_form_gibbs_tests(run, 0, 3, (0.3, 1.0), _gen())]
    bad += [t.decide(1e-3).passed for t in closed_form_energy_tests(run, 0, 3, 0.5, _gen())]
    assert not all(bad)
