"""The statistics module's error rates, measured empirically on known distributions.

Every decision kind states a false-fail rate (FAIL when the theory holds) and a
false-pass rate (PASS when the truth is off by the designed discrepancy). Here both
are measured over many simulated experiments at a design whose standard error is
exactly what :func:`stats.min_num_samples` asks for, and compared with their nominal
values by an exact binomial interval at level 1e-6, so a correct module fails these
tests with probability about 1e-6 each.
"""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from cgeom_verify import stats

EXPERIMENTS = 4000
LEVEL = 1e-6  # level of the binomial interval around each measured rate
FF, FP = 0.05, 0.10  # rates large enough to measure with EXPERIMENTS replicates
SIGMA = 1.0


def _assert_rate(count, trials, nominal):
    lo, hi = stats.clopper_pearson(count, trials, LEVEL)
    assert lo <= nominal <= hi, f"measured {count}/{trials}, nominal {nominal}"


def test_planner_inverts_the_detectable_discrepancy():
    for kind in ("equivalent", "at_most", "exceeds"):
        n = stats.min_num_samples(2.0, 0.1, 1e-3, 0.05, kind=kind, underpowered_rate=None)
        assert stats.min_discrepancy(2.0 / math.sqrt(n), 1e-3, 0.05, kind=kind) <= 0.1
        assert stats.min_discrepancy(2.0 / math.sqrt(n - 1), 1e-3, 0.05, kind=kind) > 0.1


def test_planner_spends_what_a_fixed_standard_error_leaves():
    # a standard error that does not shrink with n uses up part of the discrepancy
    fixed = 0.01
    n = stats.min_num_samples(2.0, 0.1, 1e-3, 0.05, underpowered_rate=None,
                              fixed_standard_error=fixed)

    def detectable(m):
        return stats.min_discrepancy(math.hypot(2.0 / math.sqrt(m), fixed), 1e-3, 0.05)

    assert detectable(n) <= 0.1 < detectable(n - 1)
    assert n > stats.min_num_samples(2.0, 0.1, 1e-3, 0.05, underpowered_rate=None)
    # no n resolves a discrepancy the fixed part alone already misses
    too_large = 0.1 / stats.min_discrepancy(1.0, 1e-3, 0.05)
    assert stats.min_num_samples(2.0, 0.1, 1e-3, 0.05, fixed_standard_error=too_large) == math.inf


def test_planner_finds_the_smallest_size_for_designs_of_millions():
    # the guarded, t-quantile design of a heavy-tailed mutant: the smallest n that resolves
    for sigma in (1.0, 40.0):
        n = stats.min_num_samples(sigma, 0.01, 1e-4, 0.05, kind="equivalent", t_quantiles=True)

        def resolves(m, sigma=sigma):
            shrink = 1.0 - scipy_stats.norm.ppf(1 - 1e-4) / math.sqrt(2.0 * (m - 1))
            return stats.min_discrepancy(sigma / shrink / math.sqrt(m), 1e-4, 0.05,
                                         kind="equivalent", df=m - 1) <= 0.01

        assert n > 100_000 and resolves(n) and not resolves(n - 1)


def test_planned_sample_size_meets_the_design_with_an_estimated_standard_error():
    # planned so that the estimated s.e. exceeds the design with probability <= 1e-4
    n = stats.min_num_samples(SIGMA, 0.2, FF, FP, kind="equivalent")
    rng = np.random.default_rng(1)
    means, ses = stats.mean_se(rng.normal(0.0, SIGMA, (EXPERIMENTS, n)))
    decisions = [stats.equivalent("m", m, se, 0.0, margin=0.2).decide(FF, FP)
                 for m, se in zip(means, ses, strict=True)]
    assert sum(d.outcome == "UNDERPOWERED" for d in decisions) <= 2
    se = SIGMA / math.sqrt(n)  # the false-fail rate at the planned n: below FF, as designed
    _assert_rate(sum(d.outcome == "FAIL" for d in decisions), EXPERIMENTS,
                 2 * scipy_stats.norm.sf(0.2 / se - scipy_stats.norm.ppf(1 - FP)))


def test_equivalence_rates_with_known_standard_error():
    # With the standard error known and exactly at the design, the rates are exact:
    # at the target, FAIL iff |est| >= z_{1-FF/2} se; at the margin, PASS with prob. ~FP.
    margin = 0.2
    se = margin / (scipy_stats.norm.ppf(1 - FF / 2) + scipy_stats.norm.ppf(1 - FP))
    rng = np.random.default_rng(3)
    at_target = rng.normal(0.0, se, EXPERIMENTS)
    fails = sum(stats.equivalent("m", m, se * (1 - 1e-12), 0.0, margin=margin).decide(FF, FP).outcome
                == "FAIL" for m in at_target)
    _assert_rate(fails, EXPERIMENTS, FF)
    at_margin = rng.normal(margin, se, EXPERIMENTS)
    passes = sum(stats.equivalent("m", m, se * (1 - 1e-12), 0.0, margin=margin).decide(FF, FP).passed
                 for m in at_margin)
    _assert_rate(passes, EXPERIMENTS, FP)


def test_at_most_false_fail_at_the_bound_and_false_pass_at_the_designed_excess():
    d = 0.2
    se = d / (scipy_stats.norm.ppf(1 - FF) + scipy_stats.norm.ppf(1 - FP))
    rng = np.random.default_rng(4)
    fails = sum(stats.at_most("m", m, se, 0.0, discrepancy=d).decide(FF, FP).outcome == "FAIL"
                for m in rng.normal(0.0, se, EXPERIMENTS))
    _assert_rate(fails, EXPERIMENTS, FF)
    passes = sum(stats.at_most("m", m, se, 0.0, discrepancy=d).decide(FF, FP).passed
                 for m in rng.normal(d, se, EXPERIMENTS))
    _assert_rate(passes, EXPERIMENTS, FP)


def test_exceeds_false_pass_at_the_bound_and_false_fail_at_the_predicted_effect():
    e = 0.2
    se = e / (scipy_stats.norm.ppf(1 - FF) + scipy_stats.norm.ppf(1 - FP))
    rng = np.random.default_rng(5)
    passes = sum(stats.exceeds("m", m, se, 0.0, effect=e).decide(FF, FP).passed
                 for m in rng.normal(0.0, se, EXPERIMENTS))
    _assert_rate(passes, EXPERIMENTS, FP)
    fails = sum(stats.exceeds("m", m, se, 0.0, effect=e).decide(FF, FP).outcome == "FAIL"
                for m in rng.normal(e, se, EXPERIMENTS))
    _assert_rate(fails, EXPERIMENTS, FF)


def test_a_decision_short_of_its_design_is_underpowered_never_a_pass():
    for test in (stats.equivalent("e", 0.0, 1.0, 0.0, margin=1.0),
                 stats.at_most("a", -5.0, 1.0, 0.0, discrepancy=1.0),
                 stats.exceeds("x", 50.0, 1.0, 0.0, effect=1.0),
                 stats.demonstrate("d", 3.0, 1e-9, power=0.9)):
        decision = test.decide(1e-3)
        assert decision.outcome == "UNDERPOWERED" and not decision.passed
        assert decision.to_json()["passed"] is False
    # a rejection is valid at its false-fail rate whatever the power
    assert stats.at_most("a", 50.0, 1.0, 0.0, discrepancy=1.0).decide(1e-3).outcome == "FAIL"
    assert stats.equivalent("e", 50.0, 1.0, 0.0, margin=1.0).decide(1e-3).outcome == "FAIL"
    assert stats.equivalent("e", -50.0, 1.0, 0.0, margin=1.0).decide(1e-3).outcome == "FAIL"
    # ... and only then: 1 + z_{0.9995} se = 4.29 is inside what the false-fail rate allows
    assert stats.equivalent("e", 4.2, 1.0, 0.0, margin=1.0).decide(1e-3).outcome == "UNDERPOWERED"


def test_an_underpowered_equivalence_rejects_at_its_false_fail_rate():
    # true value on the margin's edge, se far too large for a PASS: FAIL with rate <= FF
    rng = np.random.default_rng(3)
    fails = sum(stats.equivalent("m", m, 1.0, 0.0, margin=0.5).decide(FF, FP).outcome == "FAIL"
                for m in rng.normal(0.5, 1.0, EXPERIMENTS))
    z = scipy_stats.norm.ppf(1 - FF / 2)
    nominal = scipy_stats.norm.sf(z) + scipy_stats.norm.cdf(-1.0 - z)
    assert nominal <= FF
    _assert_rate(fails, EXPERIMENTS, nominal)


def test_bound_kind_is_deterministic_and_non_finite_inputs_fail():
    assert stats.within_precision("x", 1.0 + 1e-13, 1.0, 1e-12).decide(0.01).passed
    assert not stats.within_precision("x", 1.0 + 1e-11, 1.0, 1e-12).decide(0.01).passed
    assert not stats.within_precision("x", float("nan"), 1.0, 1e-12).decide(0.01).passed
    assert stats.within_precision("x", 1.0, 1.0, 1e-12).decide(0.01).standard_error == 0.0
    assert stats.equivalent("x", float("nan"), 1.0, 0.0, margin=9).decide(0.01).outcome == "FAIL"
    assert stats.equivalent("x", 0.0, float("inf"), 0.0, margin=9).decide(0.01).outcome == "FAIL"
    with pytest.raises(ValueError):
        stats.equivalent("x", 0.0, 1.0, 0.0, margin=1.0).decide(0.0)
    with pytest.raises(ValueError, match="designed discrepancy"):
        stats.at_most("x", 0.0, 1.0, 0.0, discrepancy=0.0)


def test_exceeds_precision_resolves_an_inequality_above_its_bound():
    assert stats.exceeds_precision("x", 1.0, 0.5, example=0).decide(1e-3).passed
    assert not stats.exceeds_precision("x", 0.4, 0.5).decide(1e-3).passed
    assert not stats.exceeds_precision("x", -1.0, 0.5).decide(1e-3).passed
    assert stats.exceeds_precision("x", 1.0, 0.5).kind == "bound"


def test_demonstrate_passes_on_the_p_value_at_the_false_pass_rate():
    assert stats.demonstrate("d", 1.0, 0.01, power=0.9999).decide(1e-3, 0.05).passed
    assert stats.demonstrate("d", 1.0, 0.2, power=0.9999).decide(1e-3, 0.05).outcome == "FAIL"


def test_mann_whitney_exact_small_samples():
    # 3 vs 3, complete separation: P(U = 9) = 1 / C(6, 3) = 0.05 under the null
    result = stats.mann_whitney([4.0, 5.0, 6.0], [1.0, 2.0, 3.0])
    assert result.statistic == 9 and result.p_value == pytest.approx(0.05)


# The permutation p-value against exact enumeration: tests/test_modality_gap.py (with the
# separately written oracle cgeom_verify.kernels.rank_design.jt_exact).


def test_jonckheere_terpstra_is_calibrated_under_the_null():
    rng = np.random.default_rng(6)
    hits = sum(stats.jonckheere_terpstra([rng.normal(size=5) for _ in range(4)], permutations=400,
                                         seed=k).p_value <= 0.1 for k in range(600))
    _assert_rate(hits, 600, 0.1 * 401 / 401)


def test_weighted_least_squares_recovers_line_and_calibrated_errors():
    rng = np.random.default_rng(7)
    x = np.linspace(0, 1, 8)
    design = np.stack([np.ones_like(x), x], axis=1)
    se = np.full(8, 0.1)
    z = scipy_stats.norm.ppf(0.95)
    missed = 0
    for _ in range(2000):
        fit = stats.weighted_least_squares(design, 2.0 - 3.0 * x + rng.normal(0, 0.1, 8), se)
        missed += abs(fit.coef[1] + 3.0) > z * fit.standard_error[1]
    _assert_rate(missed, 2000, 0.1)


def test_variance_se_is_calibrated():
    rng = np.random.default_rng(8)
    var, se = stats.variance_se(rng.normal(0.0, 2.0, (EXPERIMENTS, 500)))
    missed = int((np.abs(var - 4.0) > scipy_stats.norm.ppf(0.95) * se).sum())
    _assert_rate(missed, EXPERIMENTS, 0.1)


def test_budgets():
    assert stats.bonferroni_split(0.01, [1, 1, 2]) == pytest.approx([0.0025, 0.0025, 0.005])
    assert stats.holm([0.001, 0.04, 0.03], 0.05) == [True, False, False]
    assert stats.holm([0.001, 0.02, 0.01], 0.05) == [True, True, True]
    with pytest.raises(ValueError):
        stats.bonferroni_split(1.5, [1])


def test_inverse_size_fit_reads_the_limit_of_a_plus_b_over_n():
    sizes = np.array([16.0, 32.0, 64.0, 128.0])
    se = np.full(4, 1e-3)
    fit = stats.inverse_size_fit(sizes, 2.0 + 5.0 / sizes - 7.0 / sizes**2, se, powers=(0, 1, 2))
    np.testing.assert_allclose(fit.coef, [2.0, 5.0, -7.0], rtol=1e-9)
    # the column order follows ``powers``; the default is a + b/N
    swapped = stats.inverse_size_fit(sizes, 2.0 + 5.0 / sizes, se, powers=(1, 0))
    np.testing.assert_allclose(swapped.coef, [5.0, 2.0], rtol=1e-9)
    plain = stats.inverse_size_fit(sizes, 2.0 + 5.0 / sizes, se)
    np.testing.assert_allclose(plain.coef, [2.0, 5.0], rtol=1e-9)
    # equal errors: the intercept's s.e. is the point s.e. times sqrt of the design factor
    assert plain.standard_error[0] == pytest.approx(1e-3 * stats.intercept_variance_factor(sizes) ** 0.5)
