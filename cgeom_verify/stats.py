"""Statistical decisions with both error rates stated and the power designed.

A numeric check never compares ``abs(x - y) < tol``. It returns *tests*: an
estimate, its standard error (or an exact null distribution), what the theory
predicts, and the **designed discrepancy**: the size of error the decision must
catch. The harness decides each test with two rates (cf. TensorFlow Probability's
``statistical_testing``, whose vocabulary this module follows):

* ``false_fail_rate``: the probability of FAIL when the theory holds. It is the
  decision's share of the certificate's family-wise budget
  (:func:`bonferroni_split`), so the family-wise false-fail rate is a parameter.
* ``false_pass_rate``: the probability of PASS when the truth is off by the
  designed discrepancy (default 0.05 per decision).

Every decision records the designed discrepancy and the one it achieved,
``detectable = (z_{1-a} + z_{1-b}) * standard_error`` with a, b its two rates
(:func:`min_discrepancy`). A decision whose achieved detectable discrepancy is
larger than designed is **UNDERPOWERED**, never a PASS: its false-fail (or
false-pass) guarantee does not hold at the size it promised. Sample sizes come
from the design before sampling (:func:`min_num_samples`), not from the result.

The kinds, with what each rate bounds:

=============== ============================ ==================== ======================
kind            theory says                  FAIL / PASS rule     rates
=============== ============================ ==================== ======================
``equivalent``  |theta - target| small       PASS iff the (1-2b)  false-pass <= b at
(TOST)          (agrees, reproduces,         interval lies inside |theta-target| >= m;
                vanishes): margin m          target +- m          false-fail <= a at
                                                                  theta = target
``at_most``     theta <= bound               FAIL iff the (1-a)   false-fail <= a at the
                                             lower bound > bound  bound; false-pass <= b
                                                                  at bound + designed
``exceeds``     theta > bound, predicted     PASS iff the (1-b)   false-pass <= b at the
                theta >= bound + effect      lower bound > bound  bound; false-fail <= a
                                                                  at bound + effect
``bound``       a deterministic identity     PASS iff |value -    exact: both 0 when the
                with a rigorous error bound  target| <= bound     bound is rigorous
``demonstrate`` an exact or permutation      PASS iff p <= b      false-pass <= b under
                test's null is false                              the null; false-fail =
                                                                  1 - power at the
                                                                  designed effect
=============== ============================ ==================== ======================

Also here: Monte Carlo summaries (:func:`mean_se`, :func:`variance_se`,
:func:`weighted_least_squares`, :func:`clopper_pearson`), large-N limits read as the
intercept of ``a + b/N + ...`` (:func:`inverse_size_fit`; :func:`intercept_variance_factor`
designs them), exact and permutation rank tests (:func:`mann_whitney`,
:func:`jonckheere_terpstra`, :func:`stratified_jonckheere_terpstra`), their power at a
designed pairwise ordering probability (:func:`jt_power`, :func:`jt_group_size`,
:func:`mw_power`) and budgets
(:func:`bonferroni_split`, :func:`holm`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as _scipy_stats

__all__ = [
    "Decision",
    "Test",
    "KINDS",
    "OUTCOMES",
    "equivalent",
    "at_most",
    "exceeds",
    "within_precision",
    "exceeds_precision",
    "demonstrate",
    "min_discrepancy",
    "min_num_samples",
    "relative_margin",
    "mean_se",
    "variance_se",
    "weighted_least_squares",
    "inverse_size_design",
    "inverse_size_fit",
    "intercept_variance_factor",
    "Fit",
    "clopper_pearson",
    "mann_whitney",
    "jonckheere_terpstra",
    "stratified_jonckheere_terpstra",
    "jt_null_moments",
    "jt_power",
    "jt_group_size",
    "mw_power",
    "RankTest",
    "bonferroni_split",
    "holm",
]

#: Default probability that a decision passes a discrepancy of its designed size.
DEFAULT_FALSE_PASS_RATE = 0.05
KINDS = ("equivalent", "at_most", "exceeds", "bound", "demonstrate")
OUTCOMES = ("PASS", "FAIL", "UNDERPOWERED")


def _z(prob: float, df: float | None = None) -> float:
    """The ``prob`` quantile of the standard normal (or of Student's t with ``df``)."""
    if df is None or math.isinf(df):
        return float(_scipy_stats.norm.ppf(prob))
    return float(_scipy_stats.t.ppf(prob, df))


def _sf(x: float, df: float | None = None) -> float:
    if df is None or math.isinf(df):
        return float(_scipy_stats.norm.sf(x))
    return float(_scipy_stats.t.sf(x, df))


def _tails(kind: str, false_fail_rate: float, false_pass_rate: float) -> tuple[float, float]:
    """The two one-sided tail probabilities whose quantiles add up to the detectable size.

    TOST must pass at theta = target through *both* one-sided tests, so its
    false-fail rate is split over two tails.
    """
    if kind == "equivalent":
        return false_fail_rate / 2.0, false_pass_rate
    return false_fail_rate, false_pass_rate


def min_discrepancy(standard_error: float, false_fail_rate: float,
                    false_pass_rate: float = DEFAULT_FALSE_PASS_RATE, *, kind: str = "at_most",
                    df: float | None = None) -> float:
    """Smallest discrepancy a ``kind`` decision with this standard error resolves at both rates.

    ``(z_{1-a} + z_{1-b}) * se``: at that distance from the boundary the decision
    errs with probability at most a on one side and b on the other.
    """
    a, b = _tails(kind, false_fail_rate, false_pass_rate)
    return (_z(1.0 - a, df) + _z(1.0 - b, df)) * float(standard_error)


def min_num_samples(sigma: float, discrepancy: float, false_fail_rate: float,
                    false_pass_rate: float = DEFAULT_FALSE_PASS_RATE, *, kind: str = "at_most",
                    underpowered_rate: float | None = 1e-4, t_quantiles: bool = False,
                    minimum: int = 2, fixed_standard_error: float = 0.0) -> float:
    """How many i.i.d. draws of s.d. ``sigma`` a ``kind`` decision needs to resolve ``discrepancy``.

    The inverse of :func:`min_discrepancy` with ``se = sigma / sqrt(n)`` (normal
    quantiles; the design is made before sampling). The decision judges its power
    on the *estimated* standard error, which at exactly that n exceeds the design
    half the time; so n grows until the estimate (relative s.d. ~ 1/sqrt(2n) for
    near-normal draws) exceeds the design with probability ``underpowered_rate``
    at most (None: plan for the expected standard error alone). ``t_quantiles``:
    the decision will use Student-t quantiles with n - 1 degrees of freedom (a mean
    over few seeds), so n grows until those resolve the discrepancy too.
    ``fixed_standard_error``: a part of the standard error that does not shrink with n (a
    reference's own error, say), added in quadrature; when it alone leaves the discrepancy
    unresolved no n does, and the answer is ``math.inf``.
    """
    if not (sigma >= 0 and discrepancy > 0 and fixed_standard_error >= 0):
        raise ValueError(f"need sigma >= 0, discrepancy > 0 and fixed_standard_error >= 0, got "
                         f"{sigma}, {discrepancy}, {fixed_standard_error}")
    a, b = _tails(kind, false_fail_rate, false_pass_rate)
    left = discrepancy**2 - min_discrepancy(fixed_standard_error, false_fail_rate,
                                            false_pass_rate, kind=kind) ** 2
    if left <= 0:
        return math.inf
    base = (_z(1.0 - a) + _z(1.0 - b)) ** 2 * sigma**2 / left
    n = max(minimum, math.ceil(base))
    z_se = None if underpowered_rate is None else _z(1.0 - underpowered_rate)

    def resolves(n: int) -> bool:
        shrink = 1.0 if z_se is None else 1.0 - z_se / math.sqrt(2.0 * (n - 1 if t_quantiles else n))
        df = n - 1 if t_quantiles else None
        se = math.hypot(sigma / shrink / math.sqrt(n), fixed_standard_error) if shrink > 0 else 0
        return shrink > 0 and min_discrepancy(se, false_fail_rate, false_pass_rate, kind=kind,
                                              df=df) <= discrepancy

    # resolves(n) is monotone in n: double until it holds, then bisect for the smallest n
    # (a designed size can run to millions; stepping by one there took minutes).
    low = n - 1  # resolves(low) is False or low < minimum
    while not resolves(n):
        low, n = n, 2 * n
    while n - low > 1:
        mid = (low + n) // 2
        if mid >= minimum and resolves(mid):
            n = mid
        else:
            low = mid
    return n


def relative_margin(target: float, relative: float, floor: float = 0.0) -> float:
    """The designed discrepancy ``relative * |target|`` (at least ``floor``, for targets near 0)."""
    return max(relative * abs(float(target)), float(floor))


@dataclass(frozen=True)
class Decision:
    """The outcome of one test, as recorded in the certificate."""

    name: str
    kind: str
    estimate: float
    standard_error: float
    target: float
    interval: tuple[float, float]
    false_fail_rate: float
    false_pass_rate: float
    p_value: float
    designed: float
    detectable: float
    outcome: str
    example: int | None = None
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.outcome == "PASS"

    def to_json(self) -> dict:
        return {**asdict(self), "passed": self.passed}


@dataclass(frozen=True)
class Test:
    """An undecided test; :meth:`decide` turns it into a :class:`Decision`.

    ``designed`` is the discrepancy the decision must resolve: the equivalence
    margin (``equivalent``), the excess over the bound it must catch
    (``at_most``), the effect the theory predicts above the bound (``exceeds``),
    the rigorous error bound (``bound``), or the power required at the designed
    effect (``demonstrate``, where ``standard_error`` carries the power the caller
    computed).
    """

    name: str
    kind: str
    estimate: float
    standard_error: float
    target: float
    designed: float
    example: int | None = None
    note: str = ""
    df: float | None = None
    p_value: float = math.nan

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown test kind {self.kind!r}; one of {', '.join(KINDS)}")
        if not (self.designed > 0 or (self.kind == "bound" and self.designed >= 0)):
            raise ValueError(f"test {self.name!r}: the designed discrepancy must be > 0, "
                             f"got {self.designed}")

    def decide(self, false_fail_rate: float,
               false_pass_rate: float = DEFAULT_FALSE_PASS_RATE) -> Decision:
        for label, rate in (("false-fail", false_fail_rate), ("false-pass", false_pass_rate)):
            if not 0.0 < rate < 1.0:
                raise ValueError(f"{label} rate must lie in (0, 1), got {rate}")
        est, se, target = float(self.estimate), float(self.standard_error), float(self.target)
        rates = (false_fail_rate, false_pass_rate)
        if self.kind == "bound":
            gap = abs(est - target)
            passed = math.isfinite(est) and gap <= self.designed
            return self._decision(rates, (est - self.designed, est + self.designed), math.nan,
                                  self.designed, "PASS" if passed else "FAIL")
        if self.kind == "demonstrate":
            power = se  # see the class docstring
            underpowered = not power >= 1.0 - false_fail_rate
            outcome = "UNDERPOWERED" if underpowered else ("PASS" if self.p_value <= false_pass_rate
                                                          else "FAIL")
            return self._decision(rates, (math.nan, math.nan), self.p_value, math.nan, outcome)
        if not (math.isfinite(est) and math.isfinite(se)) or se < 0:
            return self._decision(rates, (math.nan, math.nan), math.nan, math.inf, "FAIL")
        detectable = min_discrepancy(se, false_fail_rate, false_pass_rate, kind=self.kind, df=self.df)
        powered = detectable <= self.designed
        if self.kind == "equivalent":
            q = _z(1.0 - false_pass_rate, self.df)
            interval = (est - q * se, est + q * se)
            inside = target - self.designed < interval[0] and interval[1] < target + self.designed
            # TOST p-value: the larger of the two one-sided p-values
            p = max(_sf((est - (target - self.designed)) / se, self.df),
                    _sf((target + self.designed - est) / se, self.df)) if se > 0 else float(not inside)
            # Whatever the power, a two-sided interval at the false-fail rate wholly outside
            # the margin rejects: a subject within it gives that with probability <= the rate.
            outside = (abs(est - target) - _z(1.0 - false_fail_rate / 2, self.df) * se
                       >= self.designed)
            outcome = ("FAIL" if outside else "UNDERPOWERED") if not powered else (
                "PASS" if inside else "FAIL")
            return self._decision(rates, interval, p, detectable, outcome)
        if self.kind == "at_most":
            q = _z(1.0 - false_fail_rate, self.df)
            interval = (est - q * se, math.inf)
            p = _sf((est - target) / se, self.df) if se > 0 else float(est <= target)
            # a rejection is valid at its false-fail rate whatever the power
            outcome = "FAIL" if interval[0] > target else ("PASS" if powered else "UNDERPOWERED")
            return self._decision(rates, interval, p, detectable, outcome)
        q = _z(1.0 - false_pass_rate, self.df)  # exceeds
        interval = (est - q * se, math.inf)
        p = _sf((est - target) / se, self.df) if se > 0 else float(est <= target)
        outcome = "UNDERPOWERED" if not powered else ("PASS" if interval[0] > target else "FAIL")
        return self._decision(rates, interval, p, detectable, outcome)

    def _decision(self, rates, interval, p, detectable, outcome) -> Decision:
        return Decision(
            name=self.name,
            kind=self.kind,
            estimate=float(self.estimate),
            standard_error=float(self.standard_error),
            target=float(self.target),
            interval=(float(interval[0]), float(interval[1])),
            false_fail_rate=float(rates[0]),
            false_pass_rate=float(rates[1]),
            p_value=float(p),
            designed=float(self.designed),
            detectable=float(detectable),
            outcome=outcome,
            example=self.example,
            note=self.note,
        )


def equivalent(name, estimate, standard_error, target, *, margin, example=None, df=None,
               note="") -> Test:
    """Show agreement: |estimand - target| < ``margin``, by two one-sided tests (TOST)."""
    return Test(name, "equivalent", estimate, standard_error, target, margin, example, note, df)


def at_most(name, estimate, standard_error, bound, *, discrepancy, example=None, df=None,
            note="") -> Test:
    """The estimand does not exceed ``bound``; an excess of ``discrepancy`` must be caught."""
    return Test(name, "at_most", estimate, standard_error, bound, discrepancy, example, note, df)


def exceeds(name, estimate, standard_error, bound, *, effect, example=None, df=None,
            note="") -> Test:
    """Demonstrate that the estimand exceeds ``bound``; the theory predicts at least ``effect`` more."""
    return Test(name, "exceeds", estimate, standard_error, bound, effect, example, note, df)


def within_precision(name, value, target, bound, *, example=None, note="") -> Test:
    """A deterministic identity: |value - target| <= ``bound``, a rigorous floating-point
    or quadrature error bound (not a statistical level)."""
    return Test(name, "bound", value, 0.0, target, bound, example, note)


def exceeds_precision(name, value, bound, *, example=None, note="") -> Test:
    """A deterministic inequality ``value > 0`` resolved above its rigorous error ``bound``.

    Decided as the ``bound`` kind on the ratio ``bound / value <= 1`` (infinite, hence
    FAIL, when ``value <= 0``): the error bound is never passed as a standard error.
    """
    value, bound = float(value), float(bound)
    ratio = bound / value if value > 0 else math.inf
    return within_precision(name, ratio, 0.0, 1.0, example=example, note=note)


def demonstrate(name, statistic, p_value, *, power, example=None, note="") -> Test:
    """An exact or permutation test: PASS iff ``p_value`` <= the false-pass rate.

    ``power`` is the probability of PASS at the designed effect, computed by the
    caller (exactly, or by simulating the designed alternative); the decision is
    UNDERPOWERED unless it is at least 1 - false-fail rate.
    """
    return Test(name, "demonstrate", statistic, power, math.nan, 1.0, example, note,
                p_value=float(p_value))


def rejects(tests, false_fail_rate: float, false_pass_rate: float) -> bool:
    """Whether any of ``tests`` already FAILs at these rates. A rejection is valid at any
    power, so a check may stop drawing once this holds: more data cannot turn it into a PASS
    beyond the false-fail rate (a sequential check's early exit)."""
    return any(t.decide(false_fail_rate, false_pass_rate).outcome == "FAIL" for t in tests)


# -- Monte Carlo summaries ----------------------------------------------------------------


def mean_se(samples, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Sample mean and its standard error along ``axis``."""
    x = np.asarray(samples, dtype=np.float64)
    n = x.shape[axis]
    return x.mean(axis=axis), x.std(axis=axis, ddof=1) / math.sqrt(n)


def variance_se(samples, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Unbiased sample variance and its large-sample standard error.

    ``Var(s^2) ~ (m4 - s^4)/n``, with m4 the fourth central moment.
    """
    x = np.asarray(samples, dtype=np.float64)
    n = x.shape[axis]
    centred = x - x.mean(axis=axis, keepdims=True)
    var = (centred**2).sum(axis=axis) / (n - 1)
    m4 = (centred**4).mean(axis=axis)
    return var, np.sqrt(np.maximum(m4 - var**2, 0.0) / n)


@dataclass(frozen=True)
class Fit:
    """Weighted least-squares fit ``y ~ X beta`` with known observation errors."""

    coef: np.ndarray
    standard_error: np.ndarray
    chi2: float
    dof: int

    @property
    def p_value(self) -> float:
        """Goodness of fit: P(chi2_dof >= chi2) when the model is right (1 with no dof)."""
        return float(_scipy_stats.chi2.sf(self.chi2, self.dof)) if self.dof > 0 else 1.0


def weighted_least_squares(design, y, y_se) -> Fit:
    """Fit ``y = design @ beta`` with independent errors of known s.d. ``y_se``.

    Coefficient standard errors are those of the generalised least-squares estimator
    (``(X^T W X)^{-1}``, W = 1/se^2); ``chi2`` is the weighted residual sum, useful to
    see a misspecified model.
    """
    X = np.asarray(design, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = 1.0 / np.asarray(y_se, dtype=np.float64) ** 2
    xtwx = X.T @ (X * w[:, None])
    cov = np.linalg.inv(xtwx)
    coef = cov @ (X.T @ (w * y))
    resid = y - X @ coef
    return Fit(coef, np.sqrt(np.diag(cov)), float((w * resid**2).sum()), len(y) - X.shape[1])


# -- limits in a size N: y_N = a + b/N + ..., read the intercept ------------------------------


def inverse_size_design(sizes, powers: Sequence[int] = (0, 1)) -> np.ndarray:
    """The design of ``y_N = sum_p c_p N^-p``: one row per size, one column ``N^-p`` per power
    in ``powers``, in that order (0 is the intercept's column of ones)."""
    n = np.asarray(sizes, dtype=np.float64)
    return np.stack([np.ones_like(n) if p == 0 else 1.0 / n**p for p in powers], axis=1)


def inverse_size_fit(sizes, y, y_se, powers: Sequence[int] = (0, 1)) -> Fit:
    """:func:`weighted_least_squares` of ``y_N = sum_p c_p N^-p`` (default ``a + b/N``: the
    large-N limit ``a`` is ``coef[0]``); ``coef`` in the order of ``powers``."""
    return weighted_least_squares(inverse_size_design(sizes, powers), y, y_se)


def intercept_variance_factor(sizes, powers: Sequence[int] = (0, 1)) -> float:
    """``[(X^T X)^-1]_00`` of :func:`inverse_size_design`: the variance of the fit's first
    coefficient per unit variance of each point, when all points have the same variance (for
    designing the sample before its errors are measured)."""
    x = inverse_size_design(sizes, powers)
    return float(np.linalg.inv(x.T @ x)[0, 0])


def clopper_pearson(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    """Exact two-sided (1 - alpha) interval for a binomial proportion."""
    beta = _scipy_stats.beta
    lo = 0.0 if successes == 0 else beta.ppf(alpha / 2, successes, trials - successes + 1)
    hi = 1.0 if successes == trials else beta.ppf(1 - alpha / 2, successes + 1, trials - successes)
    return float(lo), float(hi)


# -- rank tests with exact or permutation null distributions --------------------------------


@dataclass(frozen=True)
class RankTest:
    """A rank statistic, its standardised value and its p-value under the exact/permutation null."""

    statistic: float
    z: float
    p_value: float
    method: str


def mann_whitney(larger, smaller) -> RankTest:
    """One-sided Mann–Whitney U test that ``larger`` is stochastically above ``smaller``.

    Exact null distribution (no ties) when both samples are small, else the
    normal approximation with tie correction (scipy's ``method='auto'``).
    """
    x, y = np.asarray(larger, dtype=np.float64), np.asarray(smaller, dtype=np.float64)
    result = _scipy_stats.mannwhitneyu(x, y, alternative="greater", method="auto")
    n1, n2 = len(x), len(y)
    mean, sd = n1 * n2 / 2.0, math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12.0)
    method = "exact" if min(n1, n2) <= 8 or max(n1, n2) <= 8 else "normal"
    return RankTest(float(result.statistic), (float(result.statistic) - mean) / sd,
                    float(result.pvalue), method)


def _jt_statistic(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Jonckheere–Terpstra counts for each row of ``labels`` (a batch of labellings of the
    same groups 0..k-1).

    Sum over pairs of observations in ordered groups i < j of 1 if the one in j is
    larger, 1/2 for a tie. Counted in O(n k) per labelling, not over the n^2 pairs: with the
    values sorted once, each observation of group h adds, for every group g < h, the
    observations of g at smaller values plus half those at its own value (twice that is
    ``counts[first] + counts[last + 1]`` over its run of ties: integers throughout).
    """
    n = len(values)
    order = np.argsort(values, kind="stable")
    ranked, sorted_labels = values[order], labels[..., order]
    tied_before = np.r_[False, ranked[1:] == ranked[:-1]]
    position = np.arange(n)
    first = np.maximum.accumulate(np.where(tied_before, 0, position))
    last = np.minimum.accumulate(np.where(np.r_[tied_before[1:], False], n, position)[::-1])[::-1]
    counts = np.zeros((*labels.shape[:-1], n + 1), dtype=np.int32)
    twice = np.zeros(labels.shape[:-1], dtype=np.int64)
    ties = bool(tied_before.any())
    for group in range(int(labels.max(initial=0))):
        # counts[..., j]: observations of ``group`` among the j smallest values
        np.cumsum(sorted_labels == group, axis=-1, out=counts[..., 1:])
        higher = sorted_labels > group
        if ties:
            twice += ((counts[..., first] + counts[..., last + 1]) * higher).sum(-1)
        else:
            twice += 2 * (counts[..., :-1] * higher).sum(-1)
    return twice / 2.0


def jt_null_moments(sizes: Sequence[int]) -> tuple[float, float]:
    """Null mean and sd of the Jonckheere–Terpstra count for groups of these sizes (no ties)."""
    n = np.asarray(sizes, dtype=np.float64)
    total = n.sum()
    mean = (total**2 - (n**2).sum()) / 4.0
    var = (total**2 * (2 * total + 3) - (n**2 * (2 * n + 3)).sum()) / 72.0
    return float(mean), float(math.sqrt(var))


def jt_power(sizes: Sequence[int], pi: float, false_pass_rate: float, strata: int = 1) -> float:
    """Power of the one-sided JT test at level ``false_pass_rate`` when every ordered pair of
    groups is ordered with probability ``pi`` (normal approximation, null sd); with ``strata``
    independent strata of these group sizes, of their summed statistic (stratified JT)."""
    n = np.asarray(sizes, dtype=np.float64)
    pairs = ((n.sum() ** 2) - (n**2).sum()) / 2.0  # sum_{g<h} n_g n_h
    mean0, sd0 = jt_null_moments(sizes)
    shift = math.sqrt(strata) * (pairs * pi - mean0) / sd0
    return float(_scipy_stats.norm.cdf(shift - _scipy_stats.norm.ppf(1.0 - false_pass_rate)))


def jt_group_size(groups: int, pi: float, power: float, false_pass_rate: float,
                  minimum: int = 2, strata: int = 1) -> int:
    """Smallest common group size whose (stratified) JT power at ``pi`` is at least ``power``."""
    n = max(int(minimum), 2)
    while jt_power([n] * groups, pi, false_pass_rate, strata) < power:
        n += 1
        if n > 10_000:
            raise ValueError(f"no group size reaches power {power} at pi = {pi}")
    return n


def mw_power(n_larger: int, n_smaller: int, pi: float, false_pass_rate: float) -> float:
    """Power of the one-sided Mann–Whitney test when P(larger-group draw > other) = ``pi``."""
    return jt_power([n_smaller, n_larger], pi, false_pass_rate)


def jonckheere_terpstra(groups: Sequence[Sequence[float]], *, permutations: int = 20000,
                        seed: int = 0) -> RankTest:
    """One-sided Jonckheere–Terpstra test for a trend increasing with the group index.

    The p-value comes from the permutation distribution of the group labels
    (``permutations`` random relabellings plus the observed one, so p >= 1/(B+1));
    ``z`` standardises the statistic by the null mean and variance of the no-ties
    formula, for reading.
    """
    return stratified_jonckheere_terpstra([groups], permutations=permutations, seed=seed)


def stratified_jonckheere_terpstra(strata: Sequence[Sequence[Sequence[float]]], *,
                                   permutations: int = 20000, seed: int = 0) -> RankTest:
    """JT summed over independent strata (each a list of groups in the same trend order), for a
    trend shared by strata on different scales; labels are permuted within each stratum."""
    rng = np.random.default_rng(seed)
    observed, counts, mean, var = 0.0, np.zeros(permutations), 0.0, 0.0
    for groups in strata:
        values = np.concatenate([np.asarray(g, dtype=np.float64) for g in groups])
        labels = np.concatenate([np.full(len(g), k, dtype=np.int16) for k, g in enumerate(groups)])
        observed += float(_jt_statistic(values, labels[None])[0])
        done, chunk = 0, max(1, min(permutations, 2_000_000 // max(len(values), 1)))
        while done < permutations:
            take = min(chunk, permutations - done)
            shuffled = rng.permuted(np.broadcast_to(labels, (take, len(labels))), axis=1)
            counts[done:done + take] += _jt_statistic(values, shuffled)
            done += take
        m, sd = jt_null_moments([len(g) for g in groups])
        mean, var = mean + m, var + sd**2
    count = int((counts >= observed - 1e-9).sum())
    return RankTest(observed, (observed - mean) / math.sqrt(var), (count + 1) / (permutations + 1),
                    "permutation")


# -- budgets ------------------------------------------------------------------------------


def bonferroni_split(alpha: float, weights: Sequence[float]) -> list[float]:
    """Split a family-wise level over tests in proportion to ``weights`` (Bonferroni)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"family-wise alpha must lie in (0, 1), got {alpha}")
    total = float(sum(weights))
    if total <= 0:
        return []
    return [alpha * w / total for w in weights]


def holm(p_values: Sequence[float], alpha: float) -> list[bool]:
    """Holm's step-down procedure: which hypotheses are rejected at family level alpha."""
    order = np.argsort(p_values)
    m = len(p_values)
    rejected = [False] * m
    for rank, idx in enumerate(order):
        if p_values[idx] > alpha / (m - rank):
            break
        rejected[idx] = True
    return rejected
