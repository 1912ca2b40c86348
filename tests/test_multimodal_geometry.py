"""Tests of the multimodal-geometry kernels (divergence_geometry, floored_simplex) against
closed forms, brute force and independent quadrature."""

import math

import mpmath
import numpy as np
import pytest
import torch

from cgeom_verify.kernels import divergence_geometry as geo
from cgeom_verify.kernels import floored_simplex, quadrature, vmf

EPS = 2 * quadrature.UNIT_ROUNDOFF  # machine epsilon 2^-52


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def _von_mises(points, angle, kappa):
    """log density of vM(angle, kappa) on S^1 grid points, as a one-component mixture."""
    mean = torch.tensor([[[math.cos(angle), math.sin(angle)]]], dtype=torch.float64)
    kappas = torch.tensor([[kappa]], dtype=torch.float64)
    return geo.vmf_mixture_log_density(points, mean, kappas, torch.zeros_like(kappas))[0]


# --- the precision model ----------------------------------------------------------------------


@pytest.mark.parametrize("d", [2, 3])
def test_log_volume_meets_the_stated_precision(d):
    mpmath.mp.dps = 40
    nu = mpmath.mpf(d) / 2 - 1
    for x in np.logspace(-3, 4, 29):
        ref = mpmath.log(mpmath.gamma(mpmath.mpf(d) / 2) * (2 / mpmath.mpf(x)) ** nu
                         * mpmath.besseli(nu, mpmath.mpf(x)))
        err = abs(float(vmf.log_kernel_volume(d, x)) - float(ref))
        assert err <= float(geo.log_volume_rounding(torch.tensor(x))), x


@pytest.mark.parametrize("d", [2, 3, 5])
def test_amos_bounds_bracket_the_mean_resultant_length(d):
    x = torch.logspace(-3, 4, 400, dtype=torch.float64)
    lo, hi = geo.amos_ratio_bounds(d, x)
    a = torch.as_tensor(vmf.mean_resultant_length(d, x.numpy()))
    assert torch.all(lo <= a * (1 + 4 * EPS)) and torch.all(a <= hi * (1 + 4 * EPS))
    # both are 1 - (d-1)/(2x) + O(x^-2): the bracket closes like x^-2
    assert float(((hi - lo) * x**2)[-1]) < d


@pytest.mark.parametrize("nodes", [12, 24])
def test_quadrature_bound_covers_the_actual_error(nodes):
    # n nodes integrate trigonometric degree n - 1 exactly; at 12 the error of ∫vM log vM is
    # visible, at 24 the bound must already be small (informative, not vacuous).
    points, weights = quadrature.circle_grid(nodes)
    for kappa_p, kappa_q, angle in [(3.0, 2.0, 0.7), (6.0, 5.0, 2.0), (1.0, 8.0, 3.0)]:
        log_p, log_q = _von_mises(points, 0.0, kappa_p), _von_mises(points, angle, kappa_q)
        grid = float(geo.expected_log(log_p, log_q, weights))
        exact = float(geo.vmf_expected_log(2, np.array([1.0, 0.0]), kappa_p,
                                           np.array([math.cos(angle), math.sin(angle)]), kappa_q))
        sup = kappa_q + float(vmf.log_kernel_volume(2, kappa_q))
        bound = float(quadrature.exp_polynomial_quadrature_bound(kappa_p, 1, sup, nodes - 1, 2))
        assert abs(grid - exact) <= bound + 64 * EPS * sup
        assert nodes == 12 or bound < 1e-4


def test_sum_rounding_bound_covers_a_float32_shadow():
    # The bound scales with EPS; the same sums in float32 err far more than float64 ones,
    # and a float64 sum is within the float64 bound of the exact (fsum) value.
    terms = torch.randn(4096, generator=_generator(), dtype=torch.float64) * 1e3
    exact = math.fsum(terms.tolist())
    assert abs(float(terms.sum()) - exact) <= float(quadrature.grid_sum_error_bound(terms.abs()))


# --- information functionals ----------------------------------------------------------------


def test_von_mises_kl_matches_closed_form():
    points, weights = quadrature.circle_grid(256)
    k1, k2, a, b = 3.0, 5.0, 0.4, 2.1
    log_p, log_q = _von_mises(points, a, k1), _von_mises(points, b, k2)
    a1 = float(vmf.mean_resultant_length(2, k1))
    closed = math.log(np.i0(k2) / np.i0(k1)) + a1 * (k1 - k2 * math.cos(a - b))  # docs/derivations.md
    assert float(geo.kl_divergence(log_p, log_q, weights)) == pytest.approx(closed, abs=1e-12)
    # vMF entropy: H = log V(k) - k A(k)
    assert float(geo.entropy(log_p, weights)) == pytest.approx(math.log(np.i0(k1)) - k1 * a1,
                                                               abs=1e-12)


def test_cross_term_decomposes_and_functionals_reject_zero_density():
    weights = torch.full((4,), 0.25, dtype=torch.float64)
    p = torch.tensor([0.5, 1.5, 1.0, 1.0], dtype=torch.float64)
    q = torch.tensor([1.2, 0.8, 0.6, 1.4], dtype=torch.float64)
    lp, lq = p.log(), q.log()
    decomposed = (-(geo.entropy(lp, weights) + geo.entropy(lq, weights)) / 2
                  - geo.symmetric_divergence(lp, lq, weights))
    assert float(geo.cross_term(lp, lq, weights)) == pytest.approx(float(decomposed), abs=1e-15)
    with pytest.raises(ValueError, match="finite"):
        geo.entropy(torch.log(torch.tensor([0.0, 2.0, 1.0, 1.0], dtype=torch.float64)), weights)
    with pytest.raises(ValueError, match="nodes"):
        geo.entropy(lp[:3], weights)


# --- vMF mixtures and the sharpening expansion ----------------------------------------------


def _mixture(d, gen, count=3, components=3, kappa_max=8.0):
    means = vmf.sample_uniform_sphere((count, components), d, gen)
    kappas = kappa_max * torch.rand(count, components, generator=gen, dtype=torch.float64)
    logits = torch.randn(count, components, generator=gen, dtype=torch.float64)
    return means, kappas, torch.log_softmax(logits, -1)


def test_mixture_density_is_normalised_and_laplacian_matches_finite_differences():
    gen = _generator(1)
    points, weights = quadrature.circle_grid(2048)
    mixture = _mixture(2, gen)
    log_q = geo.vmf_mixture_log_density(points, *mixture)
    assert torch.allclose((weights * log_q.exp()).sum(-1), torch.ones(3, dtype=torch.float64))
    # on S^1 the Laplace-Beltrami operator is d^2/dtheta^2
    q, h = log_q.exp(), 2 * math.pi / 2048
    second = (q.roll(-1, -1) - 2 * q + q.roll(1, -1)) / h**2
    ratio = geo.vmf_mixture_laplacian_ratio(points, *mixture)
    assert torch.allclose(second / q, ratio, atol=1e-4 * float(ratio.abs().max()))


@pytest.mark.parametrize("d", [2, 3])
def test_sharpening_expansion_is_exact_and_its_bracket_holds(d):
    gen = _generator(2)
    points, weights = quadrature.grid(d, (512,) if d == 2 else (24, 48))
    mixture = _mixture(d, gen)
    taus = torch.tensor([0.2, 0.05, 0.01, 1e-3, 1e-4], dtype=torch.float64)
    ex = geo.sharpening_expansion(points, *mixture, taus)
    remainder = ex.log_ratio - ex.first_order
    assert torch.all(remainder >= ex.remainder_lo - ex.rounding)
    assert torch.all(remainder <= ex.remainder_hi + ex.rounding)
    width = (ex.remainder_hi - ex.remainder_lo).amax(dim=(0, 2))[1:]  # tau <= 0.05
    assert torch.all(width[1:] / width[:-1] < (taus[2:] / taus[1:-1]) ** 1.5)  # ~ tau^2
    # the closed form equals the grid smoothing k_tau * q computed by quadrature
    log_q = geo.vmf_mixture_log_density(points, *mixture)
    smoothed = torch.log(log_q.exp() @ geo.smoothing_matrix(points, weights, 0.2).T)
    assert torch.allclose(smoothed - log_q, ex.log_ratio[:, 0], atol=1e-9)


def test_sharpening_expansion_rejects_nonpositive_temperature():
    points, _ = quadrature.circle_grid(8)
    with pytest.raises(ValueError, match="positive"):
        geo.sharpening_expansion(points, *_mixture(2, _generator()), [0.1, 0.0])


# --- the floored simplex --------------------------------------------------------------------


def test_projection_is_feasible_idempotent_and_optimal():
    gen = _generator(3)
    weights = torch.rand(9, generator=gen, dtype=torch.float64) + 0.1
    weights = weights / weights.sum()
    floor = 0.2
    y = 3 * torch.randn(16, 9, generator=gen, dtype=torch.float64)
    rho = floored_simplex.project(y, weights, floor)
    assert torch.allclose((weights * rho).sum(-1), torch.ones(16, dtype=torch.float64))
    assert torch.all(rho >= floor)
    assert torch.allclose(floored_simplex.project(rho, weights, floor), rho)
    # KKT: rho - y is one constant on the cells above the floor, and >= it on the floor cells.
    shift = rho - y
    for row, s in zip(rho, shift, strict=True):
        free = row > floor + 1e-12
        lam = s[free].mean()
        assert torch.allclose(s[free], lam.expand(int(free.sum())))
        assert torch.all(s[~free] >= lam - 1e-12)


def test_vertices_and_samples_lie_in_p_delta():
    _, weights = quadrature.sphere_grid(4, 6)
    corners = floored_simplex.vertices(weights, 0.3)
    assert torch.allclose((corners * weights).sum(-1), torch.ones(24, dtype=torch.float64))
    assert torch.all((corners > 0.3 + 1e-12).sum(-1) == 1)
    inner = floored_simplex.sample_floored(weights, 0.3, 100, _generator())
    assert torch.allclose((inner * weights).sum(-1), torch.ones(100, dtype=torch.float64))
    assert torch.all(inner >= 0.3)
    with pytest.raises(ValueError, match="floor"):
        floored_simplex.vertices(weights, 1.0)


def test_projected_gradient_descends_a_concave_function_to_a_vertex():
    weights = torch.full((6,), 1 / 6, dtype=torch.float64)
    rho2 = torch.tensor([1.0, 0.2, 2.0, 1.5, 0.8, 0.5], dtype=torch.float64)

    def energy(rho):  # concave: (1/2) sum w rho2 log rho
        return 0.5 * (weights * rho2 * torch.log(rho)).sum(-1)

    def gradient(rho):
        return 0.5 * rho2 / rho

    start = floored_simplex.sample_floored(weights, 0.1, 8, _generator())
    end = floored_simplex.projected_gradient(gradient, start, weights, 0.1, 12.0, 30)
    assert torch.all(energy(end) <= energy(start))
    assert torch.all((end > 0.1 + 1e-9).sum(-1) == 1)
