"""Tests of the particle/KDE kernels against the authors' formulas and closed forms."""

import math

import numpy as np
import pytest
import torch

from cgeom_verify.experiments import particle_reproduction as experiment
from cgeom_verify.kernels import particles

AUTHORS_WELLS = particles.Wells(((0.0, 0.0, 1.0), (0.85, 0.15, -0.5)), (0.5, 0.5), 12.0)


def _authors_log_kde(z, h):
    """Their ``kde_on_particles_s2`` (batched), differentiated by autograd through acos."""
    return experiment.dense_log_kde(z, h, gradient_at_clamp=False)


def _tangential(grad, z):
    # z = v / |v| never sees the radial part of a gradient in z.
    return grad - (grad * z).sum(-1, keepdim=True) * z


@pytest.mark.parametrize("m", [7, 24, 96, 200])
@pytest.mark.parametrize("tile_elements", [1, 1 << 19])
def test_log_kde_value_and_gradient_match_the_authors_formula(m, tile_elements, monkeypatch):
    # float64 runs the tile programs (the C loops are float32 only).
    # tile_elements = 1: one tile per chunk, so chunk edges cross every block boundary.
    monkeypatch.setattr(particles, "_CHUNK_ELEMENTS", tile_elements)
    gen = torch.Generator().manual_seed(m)
    z = torch.nn.functional.normalize(torch.randn(3, m, 3, generator=gen, dtype=torch.float64),
                                      dim=-1).requires_grad_(True)
    h = torch.tensor([0.35, 0.2, 0.6], dtype=torch.float64)
    upstream = torch.randn(3, m, generator=gen, dtype=torch.float64)
    ours = particles.log_kde(z, h)
    (grad_ours,) = torch.autograd.grad((ours * upstream).sum(), z)
    ref = _authors_log_kde(z, h)
    (grad_ref,) = torch.autograd.grad((ref * upstream).sum(), z)
    # float64 sums of O(m) terms of size O(1): agreement to ~1e-13 expected.
    assert torch.allclose(ours, ref, rtol=0, atol=1e-12)
    assert torch.allclose(_tangential(grad_ours, z), _tangential(grad_ref, z), rtol=0, atol=1e-11)


@pytest.mark.parametrize("m", [96, 200])
def test_float32_kernel_is_within_its_stated_precision_of_float64(m):
    comparisons = experiment.kernel_against_float64(m, torch.Generator().manual_seed(m))
    # the C loops that train here and the tile programs that train elsewhere, both checked
    assert comparisons[-1].kernel == "tile programs, eager"
    if particles._kde_pairs() is not None:
        assert len(comparisons) == 2 and comparisons[0].kernel.startswith("C pair loops")
    for comparison in comparisons:
        assert comparison.value_error <= experiment.KERNEL_PRECISION
        assert comparison.gradient_error <= experiment.KERNEL_PRECISION
        # ... and the check can fail: the float32 errors are real, not zero.
        assert comparison.value_error > 1e-9 and comparison.gradient_error > 1e-10


def test_eager_fallback_computes_the_same_kernel(monkeypatch):
    """Where torch.compile fails the same tile programs run eagerly, with a warning."""
    gen = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(2, 96, 3, generator=gen, dtype=torch.float64),
                                      dim=-1).requires_grad_(True)
    h = torch.tensor([0.35, 0.6], dtype=torch.float64)
    compiled = particles.log_kde(z, h)
    (grad_compiled,) = torch.autograd.grad(compiled.sum(), z)

    def broken(*args):
        raise RuntimeError("no C++ compiler")

    for fused in (particles._DENSITY, particles._GRADIENT):
        monkeypatch.setattr(fused, "compiled", broken)
    with pytest.warns(RuntimeWarning, match="runs eagerly"):
        eager = particles.log_kde(z, h)
    (grad_eager,) = torch.autograd.grad(eager.sum(), z)
    assert particles._DENSITY.compiled is None  # the fallback sticks: no retry per call
    assert torch.allclose(eager, compiled, rtol=0, atol=1e-13)
    assert torch.allclose(grad_eager, grad_compiled, rtol=0, atol=1e-12)


@pytest.fixture
def tile_kernel(monkeypatch):
    """log_kde on the torch tile programs, as where no C compiler is found."""
    monkeypatch.setattr(particles, "_kde_pairs", lambda: None)


def _float32_against_float64(m: int, h, per_run: bool = False):
    """Largest |d log rho| and tangential |d grad| of float32 log_kde against float64 (dense),
    under random upstream weights, or one weight per run (``per_run``: training's case)."""
    gen = torch.Generator().manual_seed(m)
    z = torch.nn.functional.normalize(torch.randn(len(h), m, 3, generator=gen), dim=-1)
    h = torch.tensor(h)
    upstream = torch.randn(len(h), 1 if per_run else m, generator=gen, dtype=torch.float64)
    ours = z.clone().requires_grad_(True)
    value = particles.log_kde(ours, h)
    (grad,) = torch.autograd.grad((value * upstream.float()).sum(), ours)
    exact = z.double().requires_grad_(True)
    ref = experiment.dense_log_kde(exact, h.double())
    (grad_ref,) = torch.autograd.grad((ref * upstream).sum(), exact)
    with torch.no_grad():
        gradient = _tangential(grad.double() - grad_ref, exact).abs().max() / grad_ref.abs().max()
        return float((value.double() - ref).abs().max()), float(gradient)


@pytest.mark.skipif(particles._kde_pairs() is None, reason="no C compiler: the tile programs run")
@pytest.mark.parametrize("per_run", [False, True], ids=["any upstream", "one weight per run"])
@pytest.mark.parametrize("m", [2, 7, 17, 96, 200])
def test_c_pair_loops_match_float64_at_any_particle_count(m, per_run):
    # Counts off the 16-lane vector (2, 7, 17, 200) exercise the padded stride and masked lanes.
    assert particles.kde_implementation("cpu", torch.float32).startswith("C pair loops")
    value, gradient = _float32_against_float64(m, [0.11, 0.35, 1.1], per_run)
    assert value <= experiment.KERNEL_PRECISION and gradient <= experiment.KERNEL_PRECISION
    assert value > 0 and gradient > 0  # float32 rounding is there: the comparison can fail


def test_tile_programs_match_float64_in_float32(tile_kernel):
    assert particles.kde_implementation("cpu", torch.float32).startswith("tile programs")
    value, gradient = _float32_against_float64(96, [0.11, 0.35, 1.1])
    assert value <= experiment.KERNEL_PRECISION and gradient <= experiment.KERNEL_PRECISION


@pytest.mark.skipif(particles._kde_pairs() is None, reason="no C compiler: the tile programs run")
def test_gradient_made_with_the_density_is_the_gradient_at_a_unit_weight():
    """kde_pairs without weights = kde_pairs with c = 1/(h^2 sums) given, bit for bit; without a
    gradient the same sums. Through autograd, a weight per run takes that gradient (times the
    weight), any other upstream the weighted visit."""
    lib, runs, m, stride = particles._kde_pairs(), 3, 200, 208
    coords = torch.zeros(runs, 3, stride)
    coords[:, :, :m] = torch.nn.functional.normalize(
        torch.randn(runs, 3, m, generator=torch.Generator().manual_seed(5)), dim=1)
    h = torch.tensor([0.11, 0.35, 1.1])
    inv_two_h2 = 0.5 / h**2  # as log_kde computes it
    sums, unit = torch.empty(runs, stride), torch.empty(runs, 3, stride)
    particles._kde_pairs_call(lib, coords, inv_two_h2, m, sums, None, unit)
    c = torch.zeros(runs, stride)
    c[:, :m] = 2 * inv_two_h2[:, None] / sums[:, :m]
    given, again = torch.empty(runs, 3, stride), torch.empty(runs, stride)
    particles._kde_pairs_call(lib, coords, inv_two_h2, m, again, c, given)
    only = torch.empty(runs, stride)
    particles._kde_pairs_call(lib, coords, inv_two_h2, m, only, None, None)
    assert torch.equal(given[..., :m], unit[..., :m])
    assert torch.equal(again[:, :m], sums[:, :m]) and torch.equal(only[:, :m], sums[:, :m])

    z = coords[:, :, :m].transpose(1, 2).clone().requires_grad_(True)
    weights = torch.tensor([[0.5], [-2.0], [3.0]])
    (uniform,) = torch.autograd.grad((particles.log_kde(z, h) * weights).sum(), z)
    assert torch.equal(uniform, (unit[:, :, :m] * weights[:, :, None]).transpose(1, 2))
    weights = weights.expand(runs, m).clone()
    weights[:, 0] *= 1 + 2**-20
    (varying,) = torch.autograd.grad((particles.log_kde(z, h) * weights).sum(), z)
    assert not torch.equal(varying, (unit[:, :, :m] * weights[:, :1, None]).transpose(1, 2))
    assert torch.allclose(varying, uniform, rtol=0, atol=1e-5 * uniform.abs().max())


@pytest.mark.skipif(particles._kde_pairs() is None, reason="no C compiler: the tile programs run")
def test_c_pair_loops_do_not_depend_on_the_thread_count():
    z = torch.nn.functional.normalize(torch.randn(5, 200, 3, generator=torch.Generator().manual_seed(2)),
                                      dim=-1).requires_grad_(True)
    h = torch.full((5,), 0.35)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            value = particles.log_kde(z, h)
            results.append((value, *torch.autograd.grad(value.sum(), z)))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_a_failed_c_build_warns_and_leaves_the_tile_programs(monkeypatch):
    from cgeom_verify.kernels import native

    monkeypatch.setenv("CC", "false")  # a "compiler" that fails every build
    native.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not build kde_pairs.c"):
            assert native.library("kde_pairs") is None
        monkeypatch.setenv("CGEOM_VERIFY_NATIVE", "0")
        native.library.cache_clear()
        assert native.library("kde_pairs") is None  # switched off: no build, no warning
    finally:
        native.library.cache_clear()


def test_reproduction_trains_the_reported_taus_first_coldest_first():
    # The coldest reported tau is where a wrong subject shows first; the rest come last.
    assert experiment.reproduction_stages((10.0, 5.0, 1.0, 0.5, 0.1)) == [
        (0.1,), (1.0,), (10.0,), (5.0, 0.5)]


def test_surrogate_grid_trains_the_cheapest_particle_count_first_and_can_stop():
    # full: M = 192 (3 cells x 17 seeds) before 768 (41 seeds) before 384 (~1100 seeds)
    plan = {(0.1, 0.35, 192): 17, (0.1, 0.11, 192): 17, (0.1, 0.35, 768): 15,
            (0.1, 0.11, 768): 13, (0.1, 0.35, 384): 15, (10.0, 0.35, 384): 522}
    assert experiment.grid_stages(plan) == [192, 768, 384]

    class Trained:
        def __init__(self):
            self.counts = []

        def cap_fractions(self, tau, bandwidth, num_particles, steps, generator):
            self.counts.append(num_particles)
            return np.full(len(tau), 0.5)

    from cgeom_verify.claim import CheckRun

    subject = Trained()
    run = CheckRun(settings=[None], seeds=[1], check_seed=1, subject=subject, profile="quick",
                   device=torch.device("cpu"))
    design = experiment.Design(particles=384, steps=1, seeds=2)
    seen = []
    cells = experiment.train_grid(run, design, plan, stop=lambda so_far: seen.append(dict(so_far)))
    assert subject.counts == [192, 768, 384] and len(cells) == len(plan)
    assert [len(c) for c in seen] == [2, 4]  # asked after every stage but the last
    subject.counts.clear()
    cells = experiment.train_grid(run, design, plan, stop=lambda so_far: True)
    assert subject.counts == [192] and sorted(cells) == [(0.1, 0.11, 192), (0.1, 0.35, 192)]


def test_training_replays_the_authors_loop():
    """Same initial v and noise: our batched step == their per-run Adam step on their loss."""
    runs, m, steps = 2, 16, 6
    tau = torch.tensor([1.0, 0.1], dtype=torch.float64)
    h = torch.tensor([0.35, 0.2], dtype=torch.float64)
    schedule = particles.AdamSchedule(steps=steps)
    ours = particles.train_particles(AUTHORS_WELLS, tau, h, m, schedule,
                                     torch.Generator().manual_seed(5), dtype=torch.float64)
    draws = torch.Generator().manual_seed(5)  # replay the same stream: v0, then noise per step
    v0 = torch.randn(runs, m, 3, generator=draws, dtype=torch.float64)
    noise = [torch.randn(runs, m, 3, generator=draws, dtype=torch.float64) for _ in range(steps)]
    for r in range(runs):
        v = torch.nn.Parameter(v0[r].clone())
        opt = torch.optim.Adam([v], lr=schedule.lr)
        for step in range(steps):
            z = v / v.norm(dim=-1, keepdim=True)
            loss = AUTHORS_WELLS.potential(z).mean() / tau[r] + _authors_log_kde(
                z[None], h[r:r + 1])[0].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                v.add_(noise[step][r] * schedule.noise_std)
        ref = (v / v.norm(dim=-1, keepdim=True)).detach()
        # Adam divides by sqrt(v_hat): gradient rounding (~1e-15) is amplified at most by
        # lr/eps-free ratios of O(1); 1e-9 leaves ample room and still catches any real bug.
        assert torch.allclose(ours[r], ref, rtol=0, atol=1e-9)


def test_training_is_seeded_and_shaped():
    args = (AUTHORS_WELLS, [1.0, 0.5], [0.3, 0.3], 8, particles.AdamSchedule(steps=3))
    a = particles.train_particles(*args, torch.Generator().manual_seed(1))
    b = particles.train_particles(*args, torch.Generator().manual_seed(1))
    assert a.shape == (2, 8, 3) and torch.equal(a, b)
    assert torch.allclose(a.norm(dim=-1), torch.ones(2, 8), atol=1e-6)


def test_gibbs_cap_mass_single_well_closed_form():
    # One well: U = -<z, m>, rho* = vMF(m, 1/tau): cap mass (e^k - e^{k cos r}) / (e^k - e^-k).
    well = particles.Wells(((0.3, -0.2, 0.9),), (1.0,), 5.0)
    tau = torch.tensor([3.0, 0.5, 0.05], dtype=torch.float64)
    k, r = 1 / tau, 0.7
    exact = (1 - torch.exp(-k * (1 - math.cos(r)))) / (1 - torch.exp(-2 * k))
    # Smooth integrands, Gauss-Legendre on both factors: converged to rounding.
    assert torch.allclose(particles.gibbs_cap_mass(well, tau, r), exact, rtol=1e-12, atol=0)


def test_gibbs_cap_mass_high_temperature_is_the_cap_area():
    mass = particles.gibbs_cap_mass(AUTHORS_WELLS, 1e9, 0.5)
    assert abs(float(mass) - (1 - math.cos(0.5))) < 1e-8  # two caps of area (1 - cos r)/2


def test_gibbs_cap_mass_reproduces_the_authors_monte_carlo():
    # Their 120k-point Monte Carlo (seed 0), 3 decimals: 0.130, 0.191, 0.708; MC s.e. <= 0.0023.
    mass = particles.gibbs_cap_mass(AUTHORS_WELLS, [10.0, 1.0, 0.1], 0.5)
    assert torch.allclose(mass, torch.tensor([0.130, 0.191, 0.708], dtype=torch.float64),
                          atol=5 * 0.0023)


def test_sample_gibbs_matches_quadrature():
    tau = [5.0, 0.2]
    z = particles.sample_gibbs(AUTHORS_WELLS, tau, 20000, torch.Generator().manual_seed(3))
    frac = particles.cap_fraction(z, AUTHORS_WELLS.centres(), 0.5)
    mass = particles.gibbs_cap_mass(AUTHORS_WELLS, tau, 0.5)
    binomial_se = torch.sqrt(mass * (1 - mass) / 20000)
    assert bool(((frac - mass).abs() < 5 * binomial_se).all())


def test_cap_fraction_counts_points_inside():
    centres = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    angles = torch.tensor([0.0, 0.49, 0.51, 2.0], dtype=torch.float64)
    z = torch.stack([torch.sin(angles), torch.zeros(4, dtype=torch.float64), torch.cos(angles)], -1)
    assert float(particles.cap_fraction(z, centres, 0.5)) == 0.5


def test_bad_input_is_an_error():
    with pytest.raises(ValueError):
        particles.Wells(((0.0, 0.0, 1.0),), (0.7,), 12.0)
    with pytest.raises(ValueError):
        particles.gibbs_cap_mass(AUTHORS_WELLS, 1.0, 1.1)  # caps 2.09 rad apart overlap
    with pytest.raises(ValueError):
        particles.train_particles(AUTHORS_WELLS, [1.0, 1.0], [0.3], 8, particles.AdamSchedule(1),
                                  torch.Generator())
    with pytest.raises(ValueError):
        particles.log_kde(torch.zeros(4, 3), torch.ones(1))
    with pytest.raises(ValueError, match="one bandwidth per run"):
        particles.log_kde(torch.ones(2, 4, 3), torch.ones(3))


def test_seed_design_resolves_the_margin_with_t_quantiles():
    from cgeom_verify import stats
    from cgeom_verify.experiments.particle_reproduction import design_seeds

    n = design_seeds(0.02, 0.02, 1e-4, 0.05, "equivalent")
    assert stats.min_discrepancy(0.02 / (n ** 0.5), 1e-4, 0.05, kind="equivalent",
                                 df=n - 1) <= 0.02
    assert design_seeds(0.04, 0.02, 1e-4, 0.05, "equivalent") > n  # larger s.d., more seeds


def test_cap_quadrature_closed_form_decision_passes():
    from cgeom_verify.claim import CheckRun
    from cgeom_verify.experiments.particle_reproduction import KDESurrogate
    from claims.particle_reproduction import cap_quadrature_test

    run = CheckRun(settings=[None], seeds=[1], check_seed=1, subject=KDESurrogate(),
                   profile="quick", device=torch.device("cpu"))
    (test,) = cap_quadrature_test(run, [10.0, 1.0, 0.2, 0.1])
    decision = test.decide(1e-3)
    assert decision.passed and decision.designed < 1e-9
