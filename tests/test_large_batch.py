"""The large-batch experiment machinery: pooling replicates and the internal-pilot top-up, and the
sheet's checks ending a setting at the pilot."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from cgeom_verify import stats
from cgeom_verify.claim import CheckRun
from cgeom_verify.experiments import large_batch as lb
from claims.large_batch import gradient_tests, value_tests


def _run():
    return CheckRun(settings=[lb.SPOT], seeds=[5], check_seed=0, subject=lb.SUBJECT,
                    profile="quick", device=torch.device("cpu"))


def test_pooled_replicates_keep_every_axis(monkeypatch):
    run, prediction = _run(), lb.predict(lb.SPOT)
    sizes = (4, 8)
    a = lb.simulate(run, lb.SPOT, prediction, sizes, 3, run.generator(0), gradient=True)
    b = lb.simulate(run, lb.SPOT, prediction, sizes, 2, run.generator(0), gradient=True)
    both = lb.Simulation.pooled([a, b])
    assert both.error.shape == (2, 5) and both.delta.shape[-1] == 5
    assert both.kernel_means.shape == both.kernel_square_deviations.shape == (1, 5)
    assert both.tilted_means.shape == (5, 3) and both.tilted_second_moments.shape == (5, 3, 3)
    assert both.gradient.shape[:2] == (2, 5) and both.linear.shape[:2] == (2, 5)
    np.testing.assert_array_equal(both.error[:, 3:], b.error)
    np.testing.assert_array_equal(both.gradient[:, :3], a.gradient)
    # a design larger than BLOCK_DRAWS runs as blocks of whole replicates (here 2, 2, 1), pooled
    monkeypatch.setattr(lb, "BLOCK_DRAWS", 2 * sum(sizes))
    blocked = lb.simulate(run, lb.SPOT, prediction, sizes, 5, run.generator(0), gradient=True)
    generator = run.generator(0)
    parts = [lb._simulate_block(run, lb.SPOT, prediction, sizes, k, generator, gradient=True)
             for k in (2, 2, 1)]
    np.testing.assert_array_equal(blocked.error, lb.Simulation.pooled(parts).error)
    np.testing.assert_array_equal(blocked.gradient, lb.Simulation.pooled(parts).gradient)


def test_replicate_moments_are_those_of_the_draws():
    """The simulation keeps per-replicate moments of the draws, not the draws: recomputed here
    from the same negatives, redrawn from the same stream, in numpy."""
    run, prediction = _run(), lb.predict(lb.SPOT)
    sizes, replicates = (4, 8), 6
    sim = lb.simulate(run, lb.SPOT, prediction, sizes, replicates, run.generator(0), gradient=True)
    forward = prediction.directions[0]
    r = len(prediction.gradient)
    draws = lb.SUBJECT.negatives(forward.law, replicates * sum(sizes), run.generator(0), span=r)
    w = draws.numpy().reshape(replicates, sum(sizes), r)
    kernels = np.exp(w @ forward.anchor[:r] / lb.SPOT.tau - forward.log_partition)  # [R, n]
    residuals = kernels[..., None] * (w - prediction.tilted_mean)  # [R, n, r]
    np.testing.assert_allclose(sim.kernel_means[0], kernels.mean(1), rtol=1e-12)
    np.testing.assert_allclose(sim.kernel_square_deviations[0], ((kernels - 1) ** 2).mean(1),
                               rtol=1e-12)
    np.testing.assert_allclose(sim.tilted_means, residuals.mean(1), rtol=1e-12, atol=1e-15)
    outer = np.stack([v.T @ v / len(v) for v in residuals])
    np.testing.assert_allclose(sim.tilted_second_moments, outer, rtol=1e-12, atol=1e-15)
    # the pooled terms of the gradient constants: the draws' |v|^2 and across-part means
    unit = prediction.gradient / np.linalg.norm(prediction.gradient)
    norm2 = float(prediction.gradient @ prediction.gradient)
    np.testing.assert_allclose(lb._mean_across(sim.tilted_second_moments, unit, norm2),
                               lb._across(residuals, unit, norm2).mean(1), rtol=1e-10, atol=1e-15)


def test_top_up_draws_only_what_the_dispersion_asks():
    run, prediction = _run(), lb.predict(lb.SPOT)
    plan = lb.Design(fit_sizes=(4, 8), record_sizes=(), replicates=16)
    sim = lb.simulate(run, lb.SPOT, prediction, plan.sizes, 16, run.generator(0), gradient=False)
    count = lambda x: x.error.shape[1]  # noqa: E731  (the "constants": the replicate count)
    resolved, n = lb.top_up(run, lb.SPOT, prediction, plan, sim, count, lambda c: (1e-6,),
                            (1.0,), 1e-3, run.generator(0), gradient=False)
    assert resolved is sim and n == 16
    # s.e. 0.1 at 16 replicates, margin 0.1: about (z + z)^2 x 16 replicates are needed
    grown, n = lb.top_up(run, lb.SPOT, prediction, plan, sim, count, lambda c: (0.1,),
                         (0.1,), 1e-3, run.generator(0), gradient=False)
    assert n == grown.error.shape[1] == lb.replicates_needed((0.1,), 16, (0.1,), 1e-3) > 16


def _misfit_below(n_fits: int):
    """Constants whose rate fit misfits (chi2 = 100 on 2 dof) at the N0 of the first
    ``n_fits`` grids and fits (chi2 = 1) above them; standard errors already resolved."""
    n0 = lb.grid(lb.predict(lb.SPOT).scale)[0][0]

    def constants_of(plan, sim):
        chi2 = 100.0 if plan.fit_sizes[0] < n0 * 2**n_fits else 1.0
        return stats.Fit(np.zeros(2), np.zeros(2), chi2, 2)

    return constants_of


def _main_run(run, constants_of):
    return lb.main_run(run, 0, lb.SPOT, lb.predict(lb.SPOT), (1e-6,), (1.0,), 1e-3,
                       run.generator(0), constants_of, lambda c: (1e-6,), lambda c: (c,),
                       gradient=False)


def test_a_misfitted_rate_fit_moves_the_grid_up_an_octave():
    run = _run()
    plan, _, fit, moves = _main_run(run, _misfit_below(1))
    n0 = lb.grid(lb.predict(lb.SPOT).scale)[0][0]
    assert plan.fit_sizes[0] == 2 * n0 and fit.p_value > 1e-3
    assert moves == [f"misfit at N0 = {n0} (p = {stats.Fit(0, 0, 100.0, 2).p_value:.2g})"]
    assert not run.outside_assumptions


def test_a_rate_fit_that_never_fits_decides_nothing():
    run = _run()
    assert _main_run(run, _misfit_below(lb.REGIME_OCTAVES + 1)) is None
    (record,) = run.outside_assumptions
    assert record["reason"].startswith("the rate fit a + b/N misfits up to N0 = ")
    assert record["reason"].count("misfit at N0") == lb.REGIME_OCTAVES + 1


def test_a_premise_the_pilot_rejects_ends_the_setting_before_any_main_run():
    wrong = CheckRun(settings=[lb.SPOT], seeds=[5], check_seed=0,
                     subject=replace(lb.SUBJECT, negative_mean_sign=-1.0), profile="quick",
                     device=torch.device("cpu"))
    for tests_of in (value_tests, gradient_tests):
        run = _run()
        assert not any(t.decide(1e-3).outcome == "FAIL" for t in tests_of(run, 0, lb.SPOT, 4))
        assert run.records  # the correct subject's main run recorded its curves
        run = replace(wrong, records={})
        tests = tests_of(run, 0, lb.SPOT, 4)
        premises = [t for t in tests if "premise" in t.name or "unbiased" in t.name]
        assert premises and any(t.decide(1e-3).outcome == "FAIL" for t in premises)
        assert all(t in premises or "quadrature" in t.name for t in tests)
        assert not run.records and all("pilot draws" in t.note for t in premises)


def _no_draws(*args, **kwargs):
    raise AssertionError("a pilot beyond the budget was drawn")


def test_a_pilot_beyond_the_budget_draws_nothing(monkeypatch):
    """Every main run draws at least the pilot's replicates on its grid: a setting where the
    pilot does not fit is not applicable before any draw (it was 64 replicates where 5 fit)."""
    prediction = lb.predict(lb.SPOT)
    fit, records = lb.grid(prediction.scale)
    cost = sum(fit + records) * lb._unit_cost(lb.SPOT, 1)
    monkeypatch.setattr(lb, "COST_CAP", lb.Profiled(quick=(lb.PILOT_REPLICATES - 1) * cost,
                                                    full=(lb.PILOT_REPLICATES - 1) * cost))
    monkeypatch.setattr(lb, "simulate", _no_draws)
    for tests_of in (value_tests, gradient_tests):
        run = _run()
        tests = tests_of(run, 0, lb.SPOT, 4)
        assert all("quadrature" in t.name for t in tests) and not run.records
        (record,) = run.outside_assumptions
        assert record["reason"].startswith(f"the pilot needs {lb.PILOT_REPLICATES} replicates at "
                                           f"N0 = {fit[0]}")
        assert f"{lb.PILOT_REPLICATES - 1} fit the quick budget" in record["reason"]
