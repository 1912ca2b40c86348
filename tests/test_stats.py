"""The statistics module's error rates, measured empirically on known distributions.

Each decision rule claims a false-fail rate alpha (or, for ``exceeds``, a false-pass
rate alpha) and reports a ``detectable`` discrepancy found with probability
1 - false_pass_rate. Here both are measured over many simulated experiments and
compared with their nominal values by an exact binomial interval at level 1e-6, so
a correct module fails these tests with probability about 1e-6 each.
"""

import numpy as np
import pytest

from cgeom_verify import stats

EXPERIMENTS = 4000
LEVEL = 1e-6  # level of the binomial interval around each measured rate


def _rate(decisions) -> tuple[int, int]:
    rejected = sum(not d.passed for d in decisions)
    return rejected, len(decisions)


def _assert_rate(rejected, trials, nominal):
    lo, hi = stats.clopper_pearson(rejected, trials, LEVEL)
    assert lo <= nominal <= hi, f"measured {rejected}/{trials}, nominal {nominal}"


def _experiments(sampler, n, seed=0):
    rng = np.random.default_rng(seed)
    return stats.mean_se(sampler(rng, (EXPERIMENTS, n)))


@pytest.mark.parametrize("alpha", [0.05, 0.2])
def test_equal_false_fail_rate_normal_data_with_t_quantiles(alpha):
    means, ses = _experiments(lambda r, s: r.normal(1.5, 2.0, s), n=12)
    decisions = [stats.equal("m", m, se, 1.5, df=11).decide(alpha) for m, se in zip(means, ses, strict=True)]
    _assert_rate(*_rate(decisions), alpha)


def test_equal_false_fail_rate_skewed_data_large_sample():
    # Exponential data, n = 400: the CLT makes the z-interval nearly exact.
    means, ses = _experiments(lambda r, s: r.exponential(1.0, s), n=400, seed=1)
    decisions = [stats.equal("m", m, se, 1.0).decide(0.1) for m, se in zip(means, ses, strict=True)]
    _assert_rate(*_rate(decisions), 0.1)


def test_equal_power_at_reported_detectable_discrepancy():
    # Shift the truth by the reported detectable size: rejection rate should be
    # about 1 - false_pass_rate (slightly more: the far tail also rejects).
    alpha, beta = 0.01, 0.05
    means, ses = _experiments(lambda r, s: r.normal(0.0, 1.0, s), n=900, seed=2)
    detectable = stats.equal("m", 0.0, 1 / 30, 0.0).decide(alpha, beta).detectable
    decisions = [stats.equal("m", m, se, -detectable).decide(alpha, beta)
                 for m, se in zip(means, ses, strict=True)]
    rejected, trials = _rate(decisions)
    lo, hi = stats.clopper_pearson(rejected, trials, LEVEL)
    assert lo <= 1 - beta + 0.005 and hi >= 1 - beta - 0.005


def test_at_most_and_exceeds_error_rates():
    means, ses = _experiments(lambda r, s: r.normal(0.0, 1.0, s), n=100, seed=3)
    at_most = [stats.at_most("m", m, se, 0.0).decide(0.05) for m, se in zip(means, ses, strict=True)]
    _assert_rate(*_rate(at_most), 0.05)  # truth on the boundary: false-fail = alpha
    exceeds = [stats.exceeds("m", m, se, 0.0).decide(0.05) for m, se in zip(means, ses, strict=True)]
    passed = sum(d.passed for d in exceeds)  # truth on the boundary: false-pass = alpha
    _assert_rate(passed, EXPERIMENTS, 0.05)


def test_within_precision_and_non_finite_inputs():
    assert stats.within_precision("x", 1.0 + 1e-13, 1.0, 1e-12).decide(0.01).passed
    assert not stats.within_precision("x", 1.0 + 1e-11, 1.0, 1e-12).decide(0.01).passed
    assert not stats.within_precision("x", float("nan"), 1.0, 1e-12).decide(0.01).passed
    assert not stats.equal("x", float("nan"), 1.0, 0.0).decide(0.01).passed
    assert not stats.equal("x", 0.0, float("inf"), 0.0).decide(0.01).passed
    with pytest.raises(ValueError):
        stats.equal("x", 0.0, 1.0, 0.0).decide(0.0)


def test_weighted_least_squares_recovers_line_and_calibrated_errors():
    rng = np.random.default_rng(4)
    x = np.linspace(0, 1, 8)
    design = np.stack([np.ones_like(x), x], axis=1)
    se = np.full(8, 0.1)
    covered = 0
    for _ in range(2000):
        fit = stats.weighted_least_squares(design, 2.0 - 3.0 * x + rng.normal(0, 0.1, 8), se)
        covered += stats.equal("slope", fit.coef[1], fit.standard_error[1], -3.0).decide(0.1).passed
    _assert_rate(2000 - covered, 2000, 0.1)


def test_variance_se_is_calibrated():
    rng = np.random.default_rng(5)
    var, se = stats.variance_se(rng.normal(0.0, 2.0, (EXPERIMENTS, 500)))
    decisions = [stats.equal("v", v, s, 4.0).decide(0.1) for v, s in zip(var, se, strict=True)]
    _assert_rate(*_rate(decisions), 0.1)


def test_budgets():
    assert stats.bonferroni_split(0.01, [1, 1, 2]) == pytest.approx([0.0025, 0.0025, 0.005])
    assert stats.holm([0.001, 0.04, 0.03], 0.05) == [True, False, False]
    assert stats.holm([0.001, 0.02, 0.01], 0.05) == [True, True, True]
    with pytest.raises(ValueError):
        stats.bonferroni_split(1.5, [1])
