"""Kernels of the modality-gap claims: angular divergence estimators and the batched CLIP toy."""

import math
import threading

import numpy as np
import pytest
import torch

from cgeom_verify import stats
from cgeom_verify.experiments import modality_gap as mg
from cgeom_verify.kernels import angular_divergence as ad
from cgeom_verify.kernels import clip_toy, infonce, rank_design, vmf
from cgeom_verify.kernels.adam import BatchedAdam


@pytest.fixture
def gen():
    g = torch.Generator()
    g.manual_seed(1234)
    return g


# --- closed forms -------------------------------------------------------------------------


def test_vm_kl_closed_form_matches_quadrature():
    theta = np.linspace(-math.pi, math.pi, 20001)[:-1]
    a, k1, b, k2 = 0.3, 2.5, -0.4, 4.0
    p = np.exp(k1 * np.cos(theta - a)) / (2 * math.pi * np.i0(k1))
    q = np.exp(k2 * np.cos(theta - b)) / (2 * math.pi * np.i0(k2))
    numeric = np.sum(p * np.log(p / q)) * (2 * math.pi / theta.size)
    closed = ad.vmf_kl(2, [math.cos(a), math.sin(a)], k1, [math.cos(b), math.sin(b)], k2)
    assert closed == pytest.approx(numeric, rel=1e-10)


def test_smoothed_target_is_below_the_divergence_and_tends_to_it():
    exact = float(
        ad.vmf_symmetric_divergence(2, [1.0, 0.0], 3.0, [math.cos(0.5), math.sin(0.5)], 4.0)
    )
    smoothed = [
        0.5 * sum(ad.smoothed_vm_divergence(0.0, 3.0, 0.5, 4.0, c)) for c in (10.0, 100.0, 1e4)
    ]
    assert all(s < exact for s in smoothed)  # data processing
    assert smoothed[0] < smoothed[1] < smoothed[2]
    assert smoothed[2] == pytest.approx(exact, rel=1e-3)


# --- the S^1 estimator --------------------------------------------------------------------


def test_identical_samples_give_exactly_zero(gen):
    x = 2 * math.pi * torch.rand(3, 400, generator=gen, dtype=torch.float64)
    est = ad.vm_kde_divergence(x, x.clone())
    assert torch.all(est.ds == 0) and torch.all(est.kl_pq == 0)


def test_finite_on_empty_regions_where_the_histogram_explodes(gen):
    x = math.pi / 2 * torch.rand(2, 500, generator=gen, dtype=torch.float64)
    y = x + math.pi
    est = ad.vm_kde_divergence(x, y)
    hist = ad.histogram_jeffreys(x, y)
    assert torch.isfinite(est.ds).all() and (est.ds > 1).all()
    assert (hist > 20).all()  # the 1e-8 smoothing: log(1/60 / 1e-8) ~ 14 per side


def test_collapsed_samples_are_finite():
    zero = torch.zeros(1, 100, dtype=torch.float64)
    assert torch.isfinite(ad.vm_kde_divergence(zero, zero + 1.0).ds).all()


def test_estimator_recovers_a_vm_divergence(gen):
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.vonmises(0.0, 4.0, (24, 2000)))
    y = torch.as_tensor(rng.vonmises(0.4, 4.0, (24, 2000)))
    est = ad.vm_kde_divergence(x, y)
    target = 0.5 * sum(ad.smoothed_vm_divergence(0.0, 4.0, 0.4, 4.0, est.concentration))
    err = est.ds.numpy() - target
    assert abs(err.mean()) < 5 * err.std() / math.sqrt(err.size)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        ad.vm_kde_divergence(
            torch.zeros(2, 10, dtype=torch.float64), torch.zeros(3, 10, dtype=torch.float64)
        )
    with pytest.raises(ValueError):
        ad.vm_kde_divergence(
            torch.full((1, 10), math.nan, dtype=torch.float64),
            torch.zeros(1, 10, dtype=torch.float64),
        )
    with pytest.raises(ValueError):
        ad.vm_kde_divergence(
            torch.zeros(1, 10, dtype=torch.float64),
            torch.zeros(1, 12, dtype=torch.float64),
            paired=True,
        )


def test_histogram_jeffreys_is_twice_ds_on_histograms():
    x = torch.tensor([[0.1, 0.2, 2.0, 2.1]], dtype=torch.float64)
    assert ad.histogram_jeffreys(x, x).item() == 0.0


# --- S^{d-1} k-NN ---------------------------------------------------------------------------


def test_knn_sphere_null_and_identical(gen):
    x = vmf.sample_uniform_sphere((16, 300), 3, gen)
    y = vmf.sample_uniform_sphere((16, 300), 3, gen)
    est = ad.knn_kl_sphere(x, y)
    assert abs(est.mean().item()) < 4 * est.std().item() / 4
    same = ad.knn_kl_sphere(x, x.clone())
    assert torch.isfinite(same).all() and same.abs().max() < 0.01


def test_knn_on_the_circle_agrees_in_d2(gen):
    rng = np.random.default_rng(3)
    a = torch.as_tensor(rng.vonmises(0.0, 2.0, (8, 800)))
    b = torch.as_tensor(rng.vonmises(0.7, 2.0, (8, 800)))
    circle = lambda t: torch.stack([t.cos(), t.sin()], -1)  # noqa: E731
    est = ad.knn_kl_sphere(circle(a), circle(b))
    true = ad.vmf_kl(2, [1.0, 0.0], 2.0, [math.cos(0.7), math.sin(0.7)], 2.0)
    assert abs(est.mean().item() - true) < 4 * est.std().item() / math.sqrt(8) + 0.02


# --- the toy ------------------------------------------------------------------------------


def test_fourier_gradient_equals_autograd_of_symmetric_infonce(gen):
    data = clip_toy.ToyData()
    runs, batch, tau = 5, 48, 0.07
    sigma = torch.linspace(0, 0.7, runs, dtype=torch.float64)
    w = clip_toy.initial_weights(runs, gen)
    x1, x2 = clip_toy.sample_pairs(data, sigma, batch, gen)
    uniform = torch.full((runs, batch), 1.0 / batch, dtype=torch.float64)
    g1, g2, value = clip_toy._encoder_gradient(
        clip_toy.KernelExpansion(tau),
        w[0],
        w[1],
        x1,
        x2,
        uniform,
        uniform,
        lambda z1, z2: (z2 / batch, z1 / batch),
    )
    a, b = w[0].clone().requires_grad_(), w[1].clone().requires_grad_()
    z1, z2 = clip_toy.embed(a, x1), clip_toy.embed(b, x2)
    loss = infonce.symmetric_infonce(z1, z2, z1, z2, tau, include_positive=False).mean(-1)
    loss.sum().backward()
    # truncation 1e-10 of the largest kernel value: relative gradient error well below 1e-8
    assert torch.allclose(g1, a.grad, rtol=0, atol=1e-8 * a.grad.abs().max().item())
    assert torch.allclose(g2, b.grad, rtol=0, atol=1e-8 * b.grad.abs().max().item())
    assert torch.allclose(value + math.log(batch) + 1 / tau, loss.detach(), atol=1e-8)


def test_power_table_matches_cos_and_sin(gen):
    phi = 2 * math.pi * torch.rand(3, 50, generator=gen, dtype=torch.float64)
    z = torch.stack([phi.cos(), phi.sin()], -1)
    for harmonics in (1, 2, 3, 17, 30, 64):
        n = torch.arange(harmonics, dtype=torch.float64)[:, None]
        expected = torch.cat([torch.cos(n * phi[:, None]), torch.sin(n * phi[:, None])], 1)
        assert torch.allclose(clip_toy._power_table(z, harmonics), expected, rtol=0, atol=1e-13)


def test_kernel_sums_in_the_frame_match_autograd_of_the_objective(gen):
    """KernelExpansion.gradient (radial and tangential parts, general weights and coupling, the
    two modalities of different sizes) against autograd of J with the exact kernel."""
    tau, runs, n1, n2 = 0.1, 3, 40, 56
    phi = 2 * math.pi * torch.rand(runs, n1, generator=gen, dtype=torch.float64)
    psi = 2 * math.pi * torch.rand(runs, n2, generator=gen, dtype=torch.float64)
    z1 = torch.stack([phi.cos(), phi.sin()], -1).requires_grad_()
    z2 = torch.stack([psi.cos(), psi.sin()], -1).requires_grad_()
    a = torch.rand(runs, n1, generator=gen, dtype=torch.float64)
    b = torch.rand(runs, n2, generator=gen, dtype=torch.float64)
    a, b = a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)
    coupling = torch.rand(runs, n1, n2, generator=gen, dtype=torch.float64)
    coupling = coupling / coupling.sum((-1, -2), keepdim=True)
    kappa = 1 / tau
    k = torch.exp(kappa * (z1 @ z2.transpose(-1, -2) - 1))
    objective = (-kappa * (coupling * (z1 @ z2.transpose(-1, -2))).sum((-1, -2))
                 + 0.5 * (a * torch.log(k @ b.unsqueeze(-1))[..., 0]).sum(-1)
                 + 0.5 * (b * torch.log(a.unsqueeze(1) @ k)[:, 0]).sum(-1))
    d1, d2 = torch.autograd.grad(objective.sum(), (z1, z2))
    z1, z2 = z1.detach(), z2.detach()
    expansion = clip_toy.KernelExpansion(tau)
    g1, g2, value = expansion.gradient(z1, z2, a, b, coupling @ z2, coupling.transpose(-1, -2) @ z1)
    assert torch.allclose(g1, d1, rtol=0, atol=1e-9 * d1.abs().max().item())
    assert torch.allclose(g2, d2, rtol=0, atol=1e-9 * d2.abs().max().item())
    assert torch.allclose(value, objective.detach(), rtol=1e-10, atol=0)


def test_kernel_sums_match_a_long_double_evaluation_of_the_same_series(gen):
    """Not only the exact kernel to the truncation (above): the truncated series itself, summed
    densely in long double, to 1e-13 of the largest entry (measured 7e-16 here; where r_i is
    tiny float64 rounding leaves up to ~1e-11, as it did before the rewrite). Taking the
    tangential coefficients from the derivative of the truncated kernel, (2m/kappa) lam_m, in
    place of lam_{m-1} - lam_{m+1} is off by 3e-11."""
    tau, runs, n1, n2 = 0.07, 3, 48, 40
    phi = 2 * math.pi * torch.rand(runs, n1, generator=gen, dtype=torch.float64)
    psi = 2 * math.pi * torch.rand(runs, n2, generator=gen, dtype=torch.float64)
    z1, z2 = torch.stack([phi.cos(), phi.sin()], -1), torch.stack([psi.cos(), psi.sin()], -1)
    a = torch.rand(runs, n1, generator=gen, dtype=torch.float64) + 0.5
    b = torch.rand(runs, n2, generator=gen, dtype=torch.float64) + 0.5
    a, b = a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)
    expansion = clip_toy.KernelExpansion(tau)
    zero = torch.zeros_like(z1), torch.zeros_like(z2)
    g1, g2, value = expansion.gradient(z1, z2, a, b, *zero)
    ld = np.longdouble
    lam = expansion.coefficients.numpy().astype(ld)
    delta = phi.numpy().astype(ld)[:, :, None] - psi.numpy().astype(ld)[:, None, :]
    k = lam[0] + 2 * sum(lam[m] * np.cos(m * delta) for m in range(1, lam.size))
    A, Bw = a.numpy().astype(ld), b.numpy().astype(ld)
    Z1, Z2 = z1.numpy().astype(ld), z2.numpy().astype(ld)
    r, c = (k * Bw[:, None, :]).sum(2), (k * A[:, :, None]).sum(1)
    half = ld(0.5) / ld(tau)
    d1 = half * A[..., None] * (np.einsum("rij,rjd->rid", k * Bw[:, None, :], Z2) / r[..., None]
                                + np.einsum("rij,rjd->rid", k * (Bw / c)[:, None, :], Z2))
    d2 = half * Bw[..., None] * (np.einsum("rij,rid->rjd", k * A[:, :, None], Z1) / c[..., None]
                                 + np.einsum("rij,rid->rjd", k * (A / r)[:, :, None], Z1))
    expected = ld(0.5) * ((A * np.log(r)).sum(-1) + (Bw * np.log(c)).sum(-1))
    for got, ref in ((g1, d1), (g2, d2)):
        assert np.abs(got.numpy() - ref).max() <= 1e-13 * np.abs(ref).max()
    assert np.allclose(value.numpy(), expected.astype(np.float64), rtol=1e-12, atol=0)


def test_chunks_of_runs_give_the_same_sums(gen, monkeypatch):
    data = clip_toy.ToyData()
    runs, batch = 7, 64
    w = clip_toy.initial_weights(runs, gen)
    x1, x2 = clip_toy.sample_pairs(data, torch.full((runs,), 0.3, dtype=torch.float64), batch, gen)
    uniform = torch.full((runs, batch), 1.0 / batch, dtype=torch.float64)
    args = (clip_toy.KernelExpansion(0.07), w[0], w[1], x1, x2, uniform, uniform,
            lambda z1, z2: (z2 / batch, z1 / batch))
    whole = clip_toy._encoder_gradient(*args)
    per_run = 8 * 2 * args[0].harmonics * 2 * batch
    monkeypatch.setattr(clip_toy, "_CACHE_BYTES", 3 * per_run)  # chunks of 3, 3, 1 runs
    chunked = clip_toy._encoder_gradient(*args)
    for x, y in zip(whole, chunked, strict=True):
        assert torch.allclose(x, y, rtol=1e-14, atol=0)


#: weights after 10 steps of train_sweep (4 runs, sigma 0/0.2/0.4/0.7, batch 64, seed 11) from
#: the code before the tangential-frame rewrite (seven passes over [R, 64, B] tables).
PRE_REWRITE_WEIGHTS = [
    -0.38614801939259663, 0.5136779044740112, 0.29276678035449405, 0.188300508839817,
    0.058900992007311935, -0.5082927451504631, -0.5061909612345564, -0.47742019554992443,
    0.40380254612694666, -0.052200606977035276, 0.7084886289019168, 0.2647138663446969,
    0.25506138607294626, -0.04726234604287183, -0.6191765880980873, -0.6544472084468114,
    0.5880612215308801, -0.5489344318318599, 0.6442449913018852, -0.15491579300535857,
    -0.20573284003547399, 0.506008072481256, 0.3616845235627042, 0.614246111152133,
    0.25537975690825115, 0.6247803822190995, 0.2760592279272888, 0.46971118091698183,
    -0.7275068528358699, 0.133247535048309, 0.13893302076645866, 0.19371526860864088,
]


def test_sweep_trajectory_matches_the_code_before_the_rewrite():
    """Numbers do not move beyond rounding: a short trajectory against recorded weights. (Over
    10 steps rounding alone moves them ~2e-14 relative: the same old code with another power
    recurrence differs by that much.)"""
    gen = torch.Generator(device="cpu").manual_seed(11)
    sigma = torch.tensor([0.0, 0.2, 0.4, 0.7], dtype=torch.float64)
    w = clip_toy.initial_weights(4, gen)
    final = clip_toy.train_sweep(clip_toy.ToyData(), sigma, w, steps=10, generator=gen, batch=64)[10]
    expected = torch.tensor(PRE_REWRITE_WEIGHTS, dtype=torch.float64).view(2, 4, 2, 2)
    scale = expected.abs().amax((-1, -2), keepdim=True)
    assert ((final - expected).abs() / scale).max().item() < 1e-10


def test_sampler_matches_the_mixture_moments(gen):
    theta = clip_toy.ToyData().sample_angles((200000,), gen)
    expected = clip_toy.ToyData().fourier(3)
    for k in (1, 2):
        assert torch.cos(k * theta).mean().item() == pytest.approx(
            expected[k], abs=5 / math.sqrt(2e5)
        )


@pytest.mark.parametrize("law", [{}, {"kappa": 0.0}, {"kappa": 2.0, "weight": 0.5}, {"weight": 1.0}])
def test_guided_cell_search_is_searchsorted(gen, law):
    """The sampler's guided search returns searchsorted's cell for every u, edges included
    (each guide bin's left edge, every cdf value and its neighbours); peaked laws fall back."""
    table = clip_toy.ToyData(**law)._table(torch.device("cpu"))
    cdf, bins = table.cdf, 1 << clip_toy._InverseCdf.BITS
    up, down = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    u = torch.cat([
        torch.rand(100000, generator=gen, dtype=torch.float64),
        torch.arange(bins, dtype=torch.float64) / bins,
        cdf[:-1], torch.nextafter(cdf[:-1], up), torch.nextafter(cdf[1:], down),
        torch.tensor([0.0, 1 - 2.0**-53], dtype=torch.float64),
    ])
    expected = torch.searchsorted(cdf, u, right=True).clamp(1, cdf.numel() - 1)
    assert torch.equal(table.locate(u), expected)
    assert (table.guide is None) == (law == {"weight": 1.0})


@pytest.mark.parametrize("shape", [(160, 256, 2), (160, 256), (3, 16), (16,), (7, 3), (5,)])
def test_normals_are_torch_randn_to_a_few_ulp(shape):
    """clip_toy's vectorised normals against torch.randn on the same generator state: a few
    ulp apart (libm against vectorised log/cos/sin), mostly bit-equal, and the generator ends
    in the same state. If torch changes how randn turns uniforms into normals, this fails."""
    ours, theirs = torch.Generator(device="cpu"), torch.Generator(device="cpu")
    ours.manual_seed(17)
    theirs.manual_seed(17)
    got = clip_toy._randn(shape, ours)
    expected = torch.randn(shape, generator=theirs, dtype=torch.float64)
    ulp = torch.finfo(torch.float64).eps * expected.abs().clamp(min=1e-3)
    assert ((got - expected).abs() <= 4 * ulp).all()
    assert (got == expected).double().mean() > 0.9
    assert torch.equal(ours.get_state(), theirs.get_state())


def test_identical_init_and_inputs_keep_encoders_identical(gen):
    sigma = torch.tensor([0.0, 0.5], dtype=torch.float64)
    w = clip_toy.initial_weights(2, gen, identical=True)
    hist = clip_toy.train_sweep(
        clip_toy.ToyData(), sigma, w, steps=5, generator=gen, identical_inputs=True
    )
    final = hist[5]
    assert torch.equal(final[0], final[1])


def test_sweep_runs_are_independent(gen):
    """Run r of a batched sweep does not see the other runs: same draws, same result."""
    data = clip_toy.ToyData()
    sigma = torch.tensor([0.3, 0.3, 0.6], dtype=torch.float64)
    w = clip_toy.initial_weights(3, gen)
    w[:, 1] = w[:, 0]
    g_a, g_b = torch.Generator(), torch.Generator()
    g_a.manual_seed(7)
    g_b.manual_seed(7)
    full = clip_toy.train_sweep(data, sigma, w, steps=3, generator=g_a)[3]
    changed = w.clone()
    changed[:, 2] = 5.0
    other = clip_toy.train_sweep(data, sigma, changed, steps=3, generator=g_b)[3]
    assert torch.equal(full[:, :2], other[:, :2])


def _dense_top1(z1, z2, group):
    """The oracle: the whole [G, G] similarity matrix per group and its first maximal index.
    Each similarity by the same two products and one sum, so identical candidates tie exactly:
    a batched matmul need not (on an AVX2 CPU it rounded equal columns differently, 297 rows of
    the collapsed case)."""
    runs, n, _ = z1.shape
    a = z1[:, : n // group * group].reshape(runs, -1, group, 2)
    b = z2[:, : n // group * group].reshape(runs, -1, group, 2)
    sim = (a[..., :, None, :] * b[..., None, :, :]).sum(-1)
    target = torch.arange(group)
    return 0.5 * ((sim.argmax(-1) == target).double() + (sim.argmax(-2) == target).double())


@pytest.mark.parametrize("case", ["aligned", "noisy", "collapsed"])
def test_top1_retrieval_by_sorted_angles_is_the_dense_argmax(gen, case):
    """Every query's hit, as the dense argmax scores it: on continuous draws, and where the
    candidates collapse onto two antipodal points (every query ties: the lowest index wins)."""
    x = torch.randn(3, 5 * 64 + 7, 2, dtype=torch.float64, generator=gen)
    y = x + {"aligned": 0.02, "noisy": 1.0, "collapsed": 0.0}[case] * torch.randn(
        x.shape, dtype=torch.float64, generator=gen)
    if case == "collapsed":
        y = torch.where(y[..., :1] >= 0, 1.0, -1.0) * torch.tensor([0.6, 0.8], dtype=torch.float64)
    z1, z2 = x / x.norm(dim=-1, keepdim=True), y / y.norm(dim=-1, keepdim=True)
    dense = _dense_top1(z1, z2, 64)
    a, b = (clip_toy._angle(z[:, :320]).reshape(3, 5, 64) for z in (z1, z2))
    sorted_hits = 0.5 * (clip_toy._top1_hits(a, b) + clip_toy._top1_hits(b, a))
    assert torch.equal(sorted_hits, dense)
    assert 0 < dense.sum() < dense.numel() or case == "aligned"
    cosine, top1 = clip_toy.alignment_metrics(z1, z2, 64)
    assert torch.allclose(top1, dense.flatten(1).mean(-1), rtol=0, atol=1e-15)
    assert torch.allclose(cosine, (z1 * z2).sum(-1).mean(-1))


def test_prefetched_minibatches_are_the_same_draws(monkeypatch):
    """Drawing the next minibatch on a worker thread changes nothing: same weights, and the
    generator ends in the same state (exactly `steps` draws)."""
    monkeypatch.setattr(clip_toy, "_spare_core", lambda: True)
    sample, threads = clip_toy.sample_pairs, {False: set(), True: set()}
    out = {}
    for prefetch in (False, True):
        monkeypatch.setattr(clip_toy, "PREFETCH", prefetch)

        def traced(*args, prefetch=prefetch, **kwargs):
            threads[prefetch].add(threading.get_ident())
            return sample(*args, **kwargs)

        monkeypatch.setattr(clip_toy, "sample_pairs", traced)
        gen = torch.Generator(device="cpu").manual_seed(5)
        sigma = torch.tensor([0.1, 0.5], dtype=torch.float64)
        w = clip_toy.initial_weights(2, gen)
        hist = clip_toy.train_sweep(clip_toy.ToyData(), sigma, w, steps=6, generator=gen, batch=32,
                                    checkpoints=(2,))
        out[prefetch] = (hist[2], hist[6], torch.rand(4, generator=gen, dtype=torch.float64))
    assert threads == {False: {threading.get_ident()}, True: threads[True] - {threading.get_ident()}}
    assert threads[True]  # the prefetched draws ran on the worker
    for x, y in zip(out[False], out[True], strict=True):
        assert torch.equal(x, y)


def test_minibatches_stay_on_the_thread_of_an_active_torch_function_mode(monkeypatch):
    """A function mode (the device checks of test_device.py) is thread-local: with one on, the
    draws stay on the calling thread, where the mode sees them."""
    from torch.overrides import TorchFunctionMode

    class Count(TorchFunctionMode):
        seen = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            Count.seen += "generator" in (kwargs or {})
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(clip_toy, "_spare_core", lambda: True)
    gen = torch.Generator(device="cpu").manual_seed(5)
    sigma = torch.tensor([0.1, 0.5], dtype=torch.float64)
    w = clip_toy.initial_weights(2, gen)
    with Count():
        clip_toy.train_sweep(clip_toy.ToyData(), sigma, w, steps=4, generator=gen, batch=32)
    assert Count.seen == 4 * 4  # four draws from the generator per minibatch, all seen


def test_pushforward_density_integrates_to_one(gen):
    w = clip_toy.initial_weights(3, gen)[0]
    phi = torch.arange(8192, dtype=torch.float64) * (2 * math.pi / 8192)
    q = clip_toy.pushforward_density(clip_toy.ToyData(), w, phi, torch.tensor([0.0, 0.2, 0.5]))
    assert torch.allclose(q.mean(-1), torch.ones(3, dtype=torch.float64), atol=1e-6)


def test_pushforward_density_matches_the_explicit_series(gen):
    """Clenshaw's sum against the law written term by term: the data law (two von Mises modes,
    their Bessel-series coefficients from scipy) at arg(W^-1 u(phi)), times the Jacobian."""
    from scipy import special

    data = clip_toy.ToyData()
    w = 2 * clip_toy.initial_weights(4, gen)[0]
    sigma = torch.tensor([0.0, 0.1, 0.3, 0.7], dtype=torch.float64)
    phi = torch.linspace(0, 2 * math.pi, 97, dtype=torch.float64)
    v = torch.stack([torch.cos(phi), torch.sin(phi)], -1) @ torch.linalg.inv(w).transpose(-1, -2)
    theta = torch.atan2(v[..., 1], v[..., 0]).numpy()
    k = np.arange(64)
    coeff = special.ive(k, data.kappa) / special.ive(0, data.kappa) * (
        data.weight + (1 - data.weight) * (-1.0) ** k)
    damp = np.exp(-0.5 * (k * sigma.numpy()[:, None]) ** 2)
    terms = np.where(k == 0, 1.0, 2.0) * coeff * damp  # [R, K]
    law = (terms[:, None, :] * np.cos(k * theta[..., None])).sum(-1)
    expected = law / (np.abs(np.linalg.det(w.numpy()))[:, None] * (v.numpy() ** 2).sum(-1))
    got = clip_toy.pushforward_density(data, w, phi, sigma).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_population_gradient_matches_finite_differences(gen):
    data = clip_toy.ToyData()
    sigma = torch.tensor([0.3], dtype=torch.float64)
    grid = clip_toy.PopulationGrid(points=64)
    theta, a, b = grid.laws(data, sigma)
    x = torch.stack([theta.cos(), theta.sin()], -1).expand(1, -1, -1)
    frequency = torch.arange(33, dtype=torch.float64)
    wn = torch.exp(-0.5 * (frequency * sigma[:, None]) ** 2).unsqueeze(-1)
    couple = lambda f: torch.fft.irfft(torch.fft.rfft(f, dim=1) * wn, n=64, dim=1)  # noqa: E731
    pair = lambda z1, z2: (a.unsqueeze(-1) * couple(z2), couple(a.unsqueeze(-1) * z1))  # noqa: E731
    exp = clip_toy.KernelExpansion(0.5)
    w = clip_toy.initial_weights(1, gen)
    g1, _, _ = clip_toy._encoder_gradient(exp, w[0], w[1], x, x, a, b, pair)
    h = 1e-6
    for i in range(2):
        for j in range(2):
            up, down = w[0].clone(), w[0].clone()
            up[0, i, j] += h
            down[0, i, j] -= h
            f_up = clip_toy._encoder_gradient(exp, up, w[1], x, x, a, b, pair)[2]
            f_down = clip_toy._encoder_gradient(exp, down, w[1], x, x, a, b, pair)[2]
            assert ((f_up - f_down) / (2 * h)).item() == pytest.approx(
                g1[0, i, j].item(), rel=1e-5, abs=1e-8
            )


# --- trend statistic and its design ----------------------------------------------------------


def test_jt_of_stats_matches_exact_enumeration():
    """The function the claims use (stats.jonckheere_terpstra) against brute-force enumeration."""
    groups = [np.array([0.3, -0.2]), np.array([0.9, 0.1]), np.array([1.4, 0.2, 0.8])]
    j, p = rank_design.jt_exact(groups)
    jt = stats.jonckheere_terpstra(groups, permutations=40000, seed=1)
    assert jt.statistic == j
    assert abs(jt.p_value - p) < 5 * math.sqrt(p * (1 - p) / 40000)


def test_jt_count_of_every_labelling_matches_the_pairwise_oracle():
    """The O(n k) count of stats (sorted values, runs of ties) against the oracle's pairwise
    double loop, on labellings with and without ties (runs at either end included)."""
    rng = np.random.default_rng(11)
    for levels in (None, 2, 3, 7):
        sizes = rng.integers(1, 6, size=rng.integers(2, 6))
        values = rng.normal(size=sizes.sum()) if levels is None else \
            rng.integers(0, levels, size=sizes.sum()).astype(float)
        labels = np.concatenate([np.full(s, k, dtype=np.int16) for k, s in enumerate(sizes)])
        batch = rng.permuted(np.broadcast_to(labels, (20, len(labels))), axis=1)
        expected = [rank_design._jt_count(values, row.tolist()) for row in batch]
        assert stats._jt_statistic(values, batch).tolist() == expected


def test_stratified_jt_matches_exact_enumeration_within_strata():
    """Labels permuted within each stratum: the exact p of the summed count, by enumerating the
    product of the strata's distinct labellings with the oracle's separately written count."""
    import itertools

    strata = [[np.array([0.3, -0.2]), np.array([0.9, 0.1, 0.4])],
              [np.array([5.0, 7.0]), np.array([6.0]), np.array([8.0, 4.0])]]
    counts = []
    for groups in strata:
        values = np.concatenate(groups)
        labels = np.concatenate([np.full(len(g), k) for k, g in enumerate(groups)]).tolist()
        counts.append([rank_design._jt_count(values, lab)
                       for lab in set(itertools.permutations(labels))])
    observed = sum(rank_design.jt_exact(g)[0] for g in strata)
    sums = np.add.outer(*counts).ravel()
    p = float(np.mean(sums >= observed - 1e-9))
    jt = stats.stratified_jonckheere_terpstra(strata, permutations=40000, seed=2)
    assert jt.statistic == observed
    assert abs(jt.p_value - p) < 5 * math.sqrt(p * (1 - p) / 40000)


def test_stratified_jt_power_design_holds_under_a_location_shift():
    """Three strata on different scales, each shifted so pairs are ordered with probability pi:
    the summed count's simulated power is at least the stratified design's."""
    from scipy import stats as ss

    rng = np.random.default_rng(3)
    n, groups, pi, strata = 5, 2, 0.75, 3
    delta = math.sqrt(2) * ss.norm.ppf(pi)
    labels = np.repeat(np.arange(groups), n)
    later = labels[:, None] < labels[None, :]
    total = 0
    for scale in (0.01, 1.0, 100.0):
        x = scale * (rng.normal(size=(4000, groups * n)) + delta * labels)
        total = total + ((x[:, :, None] < x[:, None, :]) & later).sum((1, 2))
    mean0, sd0 = stats.jt_null_moments([n] * groups)
    simulated = (total > strata * mean0 + ss.norm.ppf(0.95) * math.sqrt(strata) * sd0).mean()
    designed = stats.jt_power([n] * groups, pi, 0.05, strata=strata)
    assert designed > stats.jt_power([n] * groups, pi, 0.05)
    assert simulated >= designed - 0.02


def test_jt_null_moments_match_enumeration():
    groups = [np.array([1.0, 5.0]), np.array([2.0, 3.0]), np.array([4.0, 0.5, 6.0])]
    values = np.concatenate(groups)
    labels = [0, 0, 1, 1, 2, 2, 2]
    import itertools

    counts = [rank_design._jt_count(values, lab) for lab in set(itertools.permutations(labels))]
    mean, sd = stats.jt_null_moments([2, 2, 3])
    assert np.mean(counts) == pytest.approx(mean, rel=1e-12)
    assert np.std(counts) == pytest.approx(sd, rel=1e-12)


def test_jt_power_design_is_conservative_under_a_location_shift():
    """Simulated power at the designed pairwise probability is at least the normal design's."""
    rng = np.random.default_rng(0)
    n, groups, pi = 4, 8, 0.75
    # location shift delta per group step chosen so the *average* pairwise probability is pi
    from scipy import optimize
    from scipy import stats as ss

    steps = np.array([h - g for g in range(groups) for h in range(g + 1, groups)])
    delta = optimize.brentq(lambda d: ss.norm.cdf(d * steps / math.sqrt(2)).mean() - pi, 0, 5)
    labels = np.repeat(np.arange(groups), n)
    x = rng.normal(size=(4000, groups * n)) + delta * labels
    later = labels[:, None] < labels[None, :]
    j = ((x[:, :, None] < x[:, None, :]) & later).sum((1, 2))
    mean0, sd0 = stats.jt_null_moments([n] * groups)
    assert j.std() < sd0  # the alternative's variance is below the null's
    simulated = (j > mean0 + ss.norm.ppf(0.95) * sd0).mean()
    assert simulated >= stats.jt_power([n] * groups, pi, 0.05) - 0.02


def test_jt_group_size_reaches_the_power():
    n = stats.jt_group_size(8, 0.75, 1 - 1e-4, 0.05)
    assert stats.jt_power([n] * 8, 0.75, 0.05) >= 1 - 1e-4
    assert stats.jt_power([n - 1] * 8, 0.75, 0.05) < 1 - 1e-4


def test_mirrored_labels_reverse_the_order():
    sigma = np.repeat(np.array(mg.SIGMAS), 2)
    mirrored = mg.sigma_labels(mg.Fig5Experiment(reverse_labels=True), sigma)
    assert np.allclose(mirrored, 0.7 - sigma)


# --- the independent smoothed oracle --------------------------------------------------------


def test_quadrature_smoothed_target_matches_the_grid_code():
    for args in ((0.0, 6.0, 0.25, 6.0, 78.0), (0.0, 12.0, 0.3, 15.4, 211.0), (0.0, 1.0, 0.8, 0.8, 8.0)):
        quad = ad.smoothed_vm_divergence_quad(*args)
        grid = ad.smoothed_vm_divergence(*args)
        assert quad[0] == pytest.approx(float(grid[0]), rel=1e-9)
        assert quad[1] == pytest.approx(float(grid[1]), rel=1e-9)


def test_convolved_density_is_a_probability_density():
    t = np.arange(8192) * (2 * math.pi / 8192)
    f = ad.vm_convolved_density(t, 0.4, 5.0, 50.0)
    assert f.mean() == pytest.approx(1.0, rel=1e-12)


def test_oracle_concentration_grows_with_n_and_kappa():
    assert ad.vm_oracle_concentration(6.0, 4000) > ad.vm_oracle_concentration(6.0, 1000)
    assert ad.vm_oracle_concentration(12.0, 1000) > ad.vm_oracle_concentration(6.0, 1000)


def test_influence_sd_predicts_the_estimator_spread():
    rng = np.random.default_rng(2)
    k1, k2, d, n = 4.0, 4.5, 0.5, 1000
    x = torch.as_tensor(rng.vonmises(0.0, k1, (200, n)))
    y = torch.as_tensor(rng.vonmises(d, k2, (200, n)))
    est = ad.vm_kde_divergence(x, y, concentration=ad.vm_oracle_concentration(k2, n))
    sd, _ = ad.vm_influence_sd(0.0, k1, d, k2, n, n)
    assert 0.7 < est.ds.numpy().std() / sd < mg.INFLUENCE_INFLATION


def test_clip_loss_oracle_is_infonce(gen):
    data = clip_toy.ToyData()
    sigma = torch.tensor([0.2, 0.5], dtype=torch.float64)
    w = clip_toy.initial_weights(2, gen)
    x1, x2 = clip_toy.sample_pairs(data, sigma, 32, gen)
    ours = mg.clip_loss_autograd(w[0], w[1], x1, x2, 0.07)
    z1, z2 = clip_toy.embed(w[0], x1), clip_toy.embed(w[1], x2)
    theirs = infonce.symmetric_infonce(z1, z2, z1, z2, 0.07, include_positive=False).mean(-1)
    assert torch.allclose(ours, theirs, rtol=1e-12, atol=1e-12)


def test_batched_adam_matches_torch_adam():
    grads = torch.randn(
        5, 2, 3, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    start = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = BatchedAdam(start, 5e-3)
    param = torch.nn.Parameter(start.clone())
    opt = torch.optim.Adam([param], lr=5e-3)
    for g in grads:
        ours.step(g)
        param.grad = g.clone()
        opt.step()
    assert torch.equal(ours.param, param.detach())  # the same arithmetic, bit for bit


def test_smallest_gap_search_only_lowers_the_gap(gen):
    data = clip_toy.ToyData(input_noise=0.0)
    sigma = torch.tensor([0.0, 0.5], dtype=torch.float64)
    start = torch.eye(2, dtype=torch.float64).expand(2, 2, 2) + 0.2 * torch.randn(
        2, 2, 2, generator=gen, dtype=torch.float64
    )
    phi = torch.arange(2048, dtype=torch.float64) * (2 * math.pi / 2048)
    eye = torch.eye(2, dtype=torch.float64).expand(2, 2, 2)

    def gap(maps):
        return clip_toy.symmetric_gap(
            clip_toy.pushforward_density(data, eye, phi),
            clip_toy.pushforward_density(data, maps, phi, sigma),
        )

    found = clip_toy.smallest_gap(data, sigma, start, steps=60)
    assert torch.all(gap(found) < gap(start))
    assert gap(found)[0] < 1e-3 * gap(start)[0]  # sigma = 0: the identity map closes the gap


def test_floor_bound_holds_on_adversarial_inputs(gen):
    bound = mg.floor_bound()
    half = math.pi * torch.rand(2, 300, generator=gen, dtype=torch.float64)
    est = ad.vm_kde_divergence(half, half + math.pi)
    for t in (est.ds, est.kl_pq, est.ds_plugin):
        assert torch.isfinite(t).all() and (t.abs() <= 3.01 * bound).all()
    assert (est.kl_pq_plugin.abs() <= 1.01 * bound).all()


def test_direct_population_objective_matches_the_trainer(gen):
    data = clip_toy.ToyData(input_noise=0.0)
    sigma = torch.tensor([0.0, 0.3, 0.6], dtype=torch.float64)
    w = clip_toy.initial_weights(3, gen)
    _, value = clip_toy.train_population(data, sigma, w, steps=1,
                                         grid=clip_toy.PopulationGrid(points=128))
    direct = mg.direct_population_objective(data, sigma, w, 128, 0.07)
    assert torch.allclose(value, direct, rtol=1e-10, atol=1e-10)
