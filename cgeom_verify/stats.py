"""Statistical decisions with stated error rates.

A numeric check never compares ``abs(x - y) < tol``. It returns *tests*: an
estimate, its standard error and what the theory predicts. The harness decides each
test at a level taken from the certificate's family-wise budget
(:func:`bonferroni_split`), so the false-fail rate of the whole certificate is a
parameter, not an accident (cf. TensorFlow Probability's ``statistical_testing``).

Every decision also reports the smallest discrepancy it would detect with
probability ``1 - false_pass_rate`` (:attr:`Decision.detectable`): a PASS says how
large an error could still hide.

Public API:

* test constructors: :func:`equal`, :func:`at_most`, :func:`exceeds`,
  :func:`within_precision`;
* Monte Carlo summaries: :func:`mean_se`, :func:`variance_se`,
  :func:`weighted_least_squares`, :func:`clopper_pearson`;
* budgets: :func:`bonferroni_split`, :func:`holm`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats as _scipy_stats

__all__ = [
    "Decision",
    "Test",
    "equal",
    "at_most",
    "exceeds",
    "within_precision",
    "mean_se",
    "variance_se",
    "weighted_least_squares",
    "clopper_pearson",
    "bonferroni_split",
    "holm",
]

#: Default probability that a check misses a discrepancy of the reported size.
DEFAULT_FALSE_PASS_RATE = 0.05


@dataclass(frozen=True)
class Decision:
    """The outcome of one test, as recorded in the certificate."""

    name: str
    kind: str
    estimate: float
    standard_error: float
    target: float
    interval: tuple[float, float]
    alpha: float
    p_value: float
    detectable: float
    passed: bool
    example: int | None = None
    note: str = ""

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Test:
    """An undecided statistical test; :meth:`decide` turns it into a :class:`Decision`.

    ``kind`` is one of

    * ``"equal"``: the theory says estimand == target. Pass iff the two-sided
      (1 - alpha) interval contains the target. False-fail rate = alpha.
    * ``"at_most"``: the theory says estimand <= target. Pass iff the one-sided
      lower confidence bound does not exceed the target. False-fail rate = alpha.
    * ``"exceeds"``: the theory says estimand > target and the check must show it.
      Pass iff the one-sided lower confidence bound exceeds the target. Here alpha
      bounds the false-*pass* rate (the claim is accepted only on evidence).
    * ``"precision"``: a deterministic identity evaluated in floating point or by
      quadrature. Pass iff |estimate - target| <= bound, where the bound is the
      stated numerical precision of the computation (not a statistical level).
    """

    name: str
    kind: str
    estimate: float
    standard_error: float
    target: float
    example: int | None = None
    note: str = ""
    df: float | None = field(default=None)

    def _quantile(self, prob: float) -> float:
        if self.df is None or math.isinf(self.df):
            return float(_scipy_stats.norm.ppf(prob))
        return float(_scipy_stats.t.ppf(prob, self.df))

    def _sf(self, z: float) -> float:
        if self.df is None or math.isinf(self.df):
            return float(_scipy_stats.norm.sf(z))
        return float(_scipy_stats.t.sf(z, self.df))

    def decide(self, alpha: float, false_pass_rate: float = DEFAULT_FALSE_PASS_RATE) -> Decision:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
        est, se, target = float(self.estimate), float(self.standard_error), float(self.target)
        finite = math.isfinite(est) and math.isfinite(se)
        if self.kind == "precision":
            # ``standard_error`` carries the precision bound for deterministic identities.
            gap = abs(est - target)
            passed = finite and gap <= se
            return self._decision(alpha, (est - se, est + se), float(passed), se, passed)
        if not finite or se < 0:
            return self._decision(alpha, (math.nan, math.nan), 0.0, math.nan, False)
        z_beta = self._quantile(1.0 - false_pass_rate)
        if self.kind == "equal":
            q = self._quantile(1.0 - alpha / 2.0)
            interval = (est - q * se, est + q * se)
            p = 2.0 * self._sf(abs(est - target) / se) if se > 0 else float(est == target)
            passed = interval[0] <= target <= interval[1]
            return self._decision(alpha, interval, p, (q + z_beta) * se, passed)
        q = self._quantile(1.0 - alpha)
        interval = (est - q * se, math.inf)
        if self.kind == "at_most":
            p = self._sf((est - target) / se) if se > 0 else float(est <= target)
            return self._decision(alpha, interval, p, (q + z_beta) * se, interval[0] <= target)
        if self.kind == "exceeds":
            p = self._sf((est - target) / se) if se > 0 else float(est <= target)
            return self._decision(alpha, interval, p, (q + z_beta) * se, interval[0] > target)
        raise ValueError(f"unknown test kind {self.kind!r}")

    def _decision(self, alpha, interval, p, detectable, passed) -> Decision:
        return Decision(
            name=self.name,
            kind=self.kind,
            estimate=float(self.estimate),
            standard_error=float(self.standard_error),
            target=float(self.target),
            interval=(float(interval[0]), float(interval[1])),
            alpha=alpha,
            p_value=float(p),
            detectable=float(detectable),
            passed=bool(passed),
            example=self.example,
            note=self.note,
        )


def equal(name, estimate, standard_error, target, *, example=None, df=None, note="") -> Test:
    """Test that an estimated quantity equals its theoretical value."""
    return Test(name, "equal", estimate, standard_error, target, example, note, df)


def at_most(name, estimate, standard_error, bound, *, example=None, df=None, note="") -> Test:
    """Test that an estimated quantity does not exceed a theoretical bound."""
    return Test(name, "at_most", estimate, standard_error, bound, example, note, df)


def exceeds(name, estimate, standard_error, bound, *, example=None, df=None, note="") -> Test:
    """Demonstrate, at false-pass rate alpha, that a quantity exceeds ``bound``."""
    return Test(name, "exceeds", estimate, standard_error, bound, example, note, df)


def within_precision(name, value, target, precision, *, example=None, note="") -> Test:
    """A deterministic identity: |value - target| <= the stated numerical precision."""
    return Test(name, "precision", value, precision, target, example, note)


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


def clopper_pearson(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    """Exact two-sided (1 - alpha) interval for a binomial proportion."""
    beta = _scipy_stats.beta
    lo = 0.0 if successes == 0 else beta.ppf(alpha / 2, successes, trials - successes + 1)
    hi = 1.0 if successes == trials else beta.ppf(1 - alpha / 2, successes + 1, trials - successes)
    return float(lo), float(hi)


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
