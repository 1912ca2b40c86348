"""Tests of the finite-batch kernels against independent references (quadrature, mpmath sums,
dense autograd, exact small cases)."""

import math

import mpmath
import numpy as np
import pytest
import torch

from cgeom_verify.kernels import finite_batch as fb
from cgeom_verify.kernels import partition, vmf
from cgeom_verify.kernels.adam import BatchedAdam

CPU = torch.device("cpu")


def _gen(seed=0):
    g = torch.Generator(device=CPU)
    g.manual_seed(seed)
    return g


def _mix():
    m = np.array([0.3, -0.4, 0.8])
    m /= np.linalg.norm(m)
    return partition.VmfMixture((0.6, 0.4), (tuple(m), (0.0, 0.0, 1.0)), (2.5, 0.8))


def _s2_quadrature(n=400):
    """Gauss-Legendre in cos(theta) x uniform in phi: weights sum to 1 (uniform probability)."""
    x, w = np.polynomial.legendre.leggauss(n)
    phi = 2 * np.pi * (np.arange(2 * n) + 0.5) / (2 * n)
    ct, p = np.meshgrid(x, phi, indexing="ij")
    st = np.sqrt(1 - ct**2)
    pts = np.stack([st * np.cos(p), st * np.sin(p), ct], -1).reshape(-1, 3)
    wts = (np.repeat(w, 2 * n) / 2) / (2 * n)
    return pts, wts


def test_bias_constant_matches_quadrature_moments():
    # beta = (R Var c - Cov(a, c))/(E c)^2 with every moment by direct quadrature of the density.
    mix, z, tau = _mix(), np.array([0.6, 0.0, 0.8]), 0.5
    pts, wts = _s2_quadrature()
    pi, means, k = mix.arrays()
    dens = sum(p * np.exp(kk * pts @ m - vmf.log_kernel_volume(3, kk))
               for p, m, kk in zip(pi, means, k, strict=True))
    kappa = np.exp(pts @ z / tau)
    ec = np.sum(wts * dens * kappa)
    ea = np.sum((wts * dens * kappa)[:, None] * pts, 0) / tau
    var_c = np.sum(wts * dens * kappa**2) - ec**2
    cov = np.sum((wts * dens * kappa**2)[:, None] * pts, 0) / tau - ea * ec
    beta = ((ea / ec) * var_c - cov) / ec**2
    np.testing.assert_allclose(fb.bias_constant(mix, z, tau), beta, rtol=1e-9, atol=1e-12)


def test_s2_sampler_matches_vmf_moments():
    # E<x, m> = A_3(k) = coth k - 1/k; E<x, m>^2 = 1 - 2 A_3(k)/k; uniform tangent (mean 0).
    mean = torch.tensor([0.0, 0.6, 0.8], dtype=torch.float64, device=CPU).expand(200000, 3)
    kappa = torch.full((200000,), 3.0, dtype=torch.float64, device=CPU)
    x = fb.sample_vmf_s2(mean, kappa, _gen(1))
    w = x @ mean[0]
    a = 1 / math.tanh(3.0) - 1 / 3.0
    assert abs(float(w.mean()) - a) < 5 * float(w.std()) / math.sqrt(w.numel())
    assert abs(float((w**2).mean()) - (1 - 2 * a / 3)) < 5 * float((w**2).std()) / math.sqrt(w.numel())
    tangent = x - w[:, None] * mean[0]
    assert float(tangent.mean(0).abs().max()) < 0.01
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(200000, dtype=torch.float64, device=CPU))
    zero = fb.sample_vmf_s2(mean[:1000], torch.zeros(1000, dtype=torch.float64, device=CPU), _gen(2))
    assert abs(float((zero @ mean[0]).mean())) < 0.15  # uniform: E w = 0, s.d. 1/sqrt(3)/sqrt(1000)


def test_jackknife_matches_explicit_leave_one_out():
    g = _gen(3)
    neg = fb.draw_negatives(_mix(), (4, 7), g)
    z = torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64, device=CPU)
    tau = 0.5

    def plug(w):
        k = torch.exp(w @ z / tau)
        return (k[:, None] * w).sum(0) / (tau * k.sum())

    jack = fb.MinibatchGradient("jackknife").estimate(z, neg, tau)
    plugin = fb.MinibatchGradient().estimate(z, neg, tau)
    for r in range(4):
        full = plug(neg[r])
        loo = torch.stack([plug(torch.cat([neg[r, :j], neg[r, j + 1:]])) for j in range(7)]).mean(0)
        torch.testing.assert_close(plugin[r], full)
        torch.testing.assert_close(jack[r], 7 * full - 6 * loo)


def test_plugin_is_autograd_of_log_mean_kernel():
    neg = fb.draw_negatives(_mix(), (5, 9), _gen(4))
    z = torch.tensor([0.0, 0.6, 0.8], dtype=torch.float64, device=CPU, requires_grad=True)
    tau = 0.7
    value = torch.log(torch.exp(neg @ z / tau).mean(-1)).sum()
    (grad,) = torch.autograd.grad(value, z)
    torch.testing.assert_close(fb.MinibatchGradient().estimate(z.detach(), neg, tau).sum(0), grad)


def test_scaled_residual_mean_is_beta_at_moderate_batch():
    # Monte Carlo: B <E g_B - grad log Gamma, e> at B = 64 within 6 s.e. + the O(1/B) remainder.
    mix, z, tau = _mix(), np.array([0.6, 0.0, 0.8]), 0.5
    beta = fb.bias_constant(mix, z, tau)
    e = beta / np.linalg.norm(beta)
    y = fb.MinibatchGradient().scaled_residuals(mix, z, tau, 64, 20000, e, _gen(5)).numpy()
    sd = math.sqrt(fb.scaled_bias_variance(mix, z, tau, e))
    assert abs(y.std() / sd - 1) < 0.1
    assert abs(y.mean() - np.linalg.norm(beta)) < 6 * y.std() / math.sqrt(y.size) + 0.05


def test_expected_log_density_matches_mpmath_sum():
    p = torch.tensor([0.05, 0.3, 0.65], dtype=torch.float64, device=CPU)
    b = 40
    got = fb.BatchGibbs().expected_log_density(p, b).numpy()
    for k, pk in enumerate([0.05, 0.3, 0.65]):
        pk = mpmath.mpf(pk)
        ref = mpmath.fsum(mpmath.binomial(b, j) * pk**j * (1 - pk) ** (b - j)
                          * mpmath.log(mpmath.mpf(1 + j) / (b + 1)) for j in range(b + 1))
        assert abs(got[k] - float(ref)) < 1e-12


def test_batch_gradient_matches_autograd_of_expected_energy():
    p = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64, device=CPU, requires_grad=True)
    u = torch.tensor([0.3, -0.2, 0.9], dtype=torch.float64, device=CPU)
    tau, b = 0.7, 30
    sub = fb.BatchGibbs()
    energy = (p * u / tau).sum() + (p * sub.expected_log_density(p, b)).sum()
    (grad,) = torch.autograd.grad(energy, p)
    torch.testing.assert_close(sub.gradient(p.detach(), u, tau, b), grad)


def test_minimiser_at_huge_batch_is_gibbs_and_detach_shifts_it():
    u = torch.tensor([0.0, 0.8, 1.7, 0.4], dtype=torch.float64, device=CPU)
    tau = 1.0
    gibbs = torch.softmax(-u / tau, -1)
    p = fb.BatchGibbs().minimiser(u, tau, 4096)
    assert float((p - gibbs).abs().max()) < 1e-5
    detached = fb.BatchGibbs(detach_negatives=True).minimiser(u, tau, 256)
    assert float((detached - gibbs).abs().max()) > 1e-3


def test_positive_excluded_is_refused():
    with pytest.raises(ValueError):
        fb.BatchGibbs(include_positive=False)
    with pytest.raises(ValueError):
        fb.MinibatchGradient("median")


# -- the Fig. 5 toy trainer (groundwork for the trajectory claims) ------------------------------


def test_minibatch_objective_is_symmetric_cross_entropy():
    from dataclasses import replace

    from cgeom_verify.kernels import clip_toy

    g = _gen(6)
    data = replace(clip_toy.ToyData(), input_noise=0.0)
    sigma = torch.tensor([0.0, 0.4], dtype=torch.float64, device=CPU)
    w = clip_toy.initial_weights(2, g)
    x1, x2 = fb._pairs(data, sigma, 32, g)
    uniform = torch.full((2, 32), 1 / 32, dtype=torch.float64, device=CPU)
    leaf = w.clone().requires_grad_(True)
    got = fb.mm_objective(leaf, x1, x2, uniform, uniform, None, 0.07)
    (grad,) = torch.autograd.grad(got.sum(), leaf)
    for r in range(2):
        theirs = w[:, r].clone().requires_grad_(True)
        z1 = torch.nn.functional.normalize(x1[r] @ theirs[0].T, dim=-1)
        z2 = torch.nn.functional.normalize(x2[r] @ theirs[1].T, dim=-1)
        logits = z1 @ z2.T / 0.07
        target = torch.arange(32, device=CPU)
        ce = 0.5 * (torch.nn.functional.cross_entropy(logits, target)
                    + torch.nn.functional.cross_entropy(logits.T, target))
        torch.testing.assert_close(got[r], ce - math.log(32))
        torch.testing.assert_close(grad[:, r], torch.autograd.grad(ce, theirs)[0])
    with pytest.raises(ValueError, match="too small"):  # exp(1/tau) would overflow float64
        fb.mm_objective(w, x1, x2, uniform, uniform, None, 1e-3)


def test_dense_population_training_matches_the_fourier_oracle():
    from dataclasses import replace

    from cgeom_verify.kernels import clip_toy

    g = _gen(7)
    data = replace(clip_toy.ToyData(), input_noise=0.0)
    sigma = torch.tensor([0.3, 0.6], dtype=torch.float64, device=CPU)
    w = clip_toy.initial_weights(2, g, identical=True)
    ours = fb.train_toy(data, sigma, w, [fb.Optimiser("adam", 5e-3)] * 2, [0, 0], steps=15,
                        generator=g, points=64)
    ref, _ = clip_toy.train_population(data, sigma, w, steps=15,
                                       grid=clip_toy.PopulationGrid(points=64))
    torch.testing.assert_close(ours, ref, rtol=1e-7, atol=1e-9)


def test_toy_training_does_not_depend_on_runs_per_program(monkeypatch):
    """Runs share no parameter, so one run per program and all runs in one program train alike
    (population and finite-batch groups both; the batches are drawn once per group and step)."""
    from dataclasses import replace

    from cgeom_verify.kernels import clip_toy, programs

    data = replace(clip_toy.ToyData(), input_noise=0.0)
    sigma = torch.tensor([0.3, 0.6, 0.3, 0.6], dtype=torch.float64, device=CPU)
    w = clip_toy.initial_weights(4, _gen(3))
    args = (data, sigma, w, [fb.Optimiser("adam", 5e-3)] * 4, [0, 0, 8, 8])
    trained = []
    for floats in (1, 2**40):
        monkeypatch.setattr(programs, "PROGRAM_FLOATS", floats)
        assert programs.items_per_program(CPU, 64, 4) == (1 if floats == 1 else 4)
        trained.append(fb.train_toy(*args, steps=5, generator=_gen(5), points=32))
    torch.testing.assert_close(trained[0], trained[1], rtol=1e-12, atol=0)
    assert programs.items_per_program(torch.device("cuda"), 2**30, 7) == 7


def test_batched_optimiser_kinds():
    param = torch.linspace(-1, 1, 16, dtype=torch.float64, device=CPU).reshape(2, 2, 2, 2)
    grad = torch.linspace(0.5, -0.3, 16, dtype=torch.float64, device=CPU).reshape(2, 2, 2, 2)
    opt = fb.BatchedOptimiser(param, [fb.Optimiser("sgd", 0.1, 0.5), fb.Optimiser("adam", 0.01)])
    ref = BatchedAdam(param[:, 1:], 0.01)
    for _ in range(3):
        opt.step(grad)
        ref.step(grad[:, 1:])
    sgd = param[:, :1].clone()
    for _ in range(3):
        sgd = sgd - 0.1 * (grad[:, :1] + 0.5 * sgd)
    torch.testing.assert_close(opt.param[:, :1], sgd)
    torch.testing.assert_close(opt.param[:, 1:], ref.param)


def test_toy_sweep_layout_pairs_starts_and_control_switches():
    from dataclasses import replace

    from cgeom_verify.kernels import clip_toy

    data = replace(clip_toy.ToyData(), input_noise=0.0)
    opts = (fb.Optimiser("sgd", 0.1), fb.Optimiser("adam", 5e-3))
    kwargs = dict(steps=0, points=32)
    sweep = fb.FiniteBatchToy().sweep(data, (0.2, 0.5), opts, (16,), 3, 2, generator=_gen(1), **kwargs)
    # per optimiser: 2 sigma x 2 population seeds + 2 sigma x 3 seeds at B = 16
    assert sweep.gap.shape == (2 * (4 + 6),)
    sigma, gap = sweep.select(1, 16)
    assert sigma.tolist() == [0.2] * 3 + [0.5] * 3
    # zero steps: every run is its seed's identical start, so gaps depend on (sigma, seed) only
    for o in range(2):
        for b in (0, 16):
            rows = (sweep.optimiser == o) & (sweep.batch == b) & (sweep.seed < 2)
            np.testing.assert_allclose(sweep.gap[rows & (sweep.sigma == 0.2)],
                                       sweep.gap[(sweep.batch == 0) & (sweep.sigma == 0.2)][:2])
    shuffled = fb.FiniteBatchToy(shuffle_sigma=True).sweep(data, (0.2, 0.5), opts, (16,), 3, 2,
                                                           generator=_gen(1), **kwargs)
    assert shuffled.sigma.tolist() != sweep.sigma.tolist()
    for o in range(2):  # permuted within (optimiser, B); the population runs keep theirs
        for b in (0, 16):
            rows = (sweep.optimiser == o) & (sweep.batch == b)
            assert sorted(shuffled.sigma[rows]) == sorted(sweep.sigma[rows])
    np.testing.assert_array_equal(shuffled.sigma[sweep.batch == 0], sweep.sigma[sweep.batch == 0])
    np.testing.assert_array_equal(shuffled.gap, sweep.gap)


def test_secret_batch_makes_population_runs_stochastic():
    from dataclasses import replace

    from cgeom_verify.kernels import clip_toy

    data = replace(clip_toy.ToyData(), input_noise=0.0)
    args = (data, (0.3,), (fb.Optimiser("adam", 5e-3),), (), 0, 2)
    honest = fb.FiniteBatchToy().sweep(*args, steps=20, generator=_gen(2), points=32)
    secret = fb.FiniteBatchToy(secret_batch=16).sweep(*args, steps=20, generator=_gen(2), points=32)
    assert not np.allclose(honest.gap, secret.gap, rtol=1e-6)


def test_sweep_window_population_subset_and_batch_shuffle():
    """The window's gap is the mean of the gaps at its steps (replayed by hand: the sweep's seed
    drawn from its generator, its WINDOW_CELLS); population runs only for the optimisers asked;
    the batch-label control permutes B within each (optimiser, sigma) and leaves the gaps where
    they were."""
    from dataclasses import replace

    from cgeom_verify.kernels import clip_toy

    data = replace(clip_toy.ToyData(), input_noise=0.0)
    opts = (fb.Optimiser("sgd", 0.1), fb.Optimiser("adam", 5e-3))
    args = (data, (0.2, 0.5), opts, (8, 16), 3, 2)
    kwargs = dict(steps=12, points=32, window=(6, 3, fb.WINDOW_CELLS), population={1})
    sweep = fb.FiniteBatchToy().sweep(*args, generator=_gen(4), **kwargs)
    assert set(sweep.optimiser[sweep.batch == 0]) == {1}
    assert sweep.gap.shape == (2 * 2 * 2 * 3 + 2 * 2,)
    # replay: same generator, same run layout, gaps recorded at steps 9 and 12
    runs = [(o, b, s, k) for o in range(2) for b in (0, 8, 16) for s in (0.2, 0.5)
            for k in range(3 if b else 2 if o == 1 else 0)]
    g = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=_gen(4))))
    start = clip_toy.initial_weights(3, g, identical=True)
    sigma = torch.tensor([r[2] for r in runs], dtype=torch.float64, device=CPU)
    seen = []

    def observe(step, w):
        if step in (9, 12):
            seen.append(fb.exact_gap(data, w, sigma, fb.WINDOW_CELLS))

    final = fb.train_toy(data, sigma, start[:, [r[3] for r in runs]], [opts[r[0]] for r in runs],
                         [r[1] for r in runs], steps=12, generator=g, points=32, observe=observe)
    np.testing.assert_allclose(sweep.window_gap, torch.stack(seen).mean(0).numpy(), rtol=1e-11)
    np.testing.assert_allclose(sweep.gap, fb.exact_gap(data, final, sigma).numpy(), rtol=1e-11)
    shuffled = fb.FiniteBatchToy(shuffle_batch=True).sweep(*args, generator=_gen(4), **kwargs)
    np.testing.assert_array_equal(shuffled.gap, sweep.gap)
    assert shuffled.batch.tolist() != sweep.batch.tolist()
    for o in range(2):
        for s in (0.2, 0.5):
            rows = (sweep.optimiser == o) & (sweep.sigma == s)
            assert sorted(shuffled.batch[rows]) == sorted(sweep.batch[rows])
    np.testing.assert_array_equal(shuffled.batch[sweep.batch == 0], 0)
