"""Designed power for the rank tests of the modality-gap claims (Jonckheere–Terpstra, Mann–Whitney).

The harness decides a rank test with :func:`cgeom_verify.stats.demonstrate`: PASS iff the
(permutation or exact) p-value is at most the false-pass rate, and UNDERPOWERED unless the
power at the designed effect is at least 1 - false-fail rate. This module computes that
power before any sample is drawn, and the group sizes that reach it.

The designed alternative is stated as a *pairwise ordering probability* ``pi``: a draw of a
later (larger-sigma) group exceeds a draw of an earlier one with probability at least ``pi``.
The statistic's mean is then at least ``sum_{g<h} n_g n_h pi``; the power is the normal
approximation ``Phi((mu_1 - mu_0) / sd_0 - z_{1 - false_pass})`` with the null mean and sd
(no ties). Under location-shift alternatives with pi <= 0.8 the statistic's variance is below
the null's (checked by simulation in tests/test_modality_gap.py), so using the null sd
understates the power there: the design is conservative.

Also here, as an independent oracle for the permutation p-value of
:func:`cgeom_verify.stats.jonckheere_terpstra`: :func:`jt_exact` enumerates every distinct
labelling of a small example (itertools, a separately written count).

(Generic: candidates for :mod:`cgeom_verify.stats`.)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as _scipy_stats

__all__ = ["jt_null_moments", "jt_power", "jt_group_size", "mw_power", "jt_exact"]


def jt_null_moments(sizes: Sequence[int]) -> tuple[float, float]:
    """Null mean and sd of the Jonckheere–Terpstra count for groups of these sizes (no ties)."""
    n = np.asarray(sizes, dtype=np.float64)
    total = n.sum()
    mean = (total**2 - (n**2).sum()) / 4.0
    var = (total**2 * (2 * total + 3) - (n**2 * (2 * n + 3)).sum()) / 72.0
    return float(mean), float(math.sqrt(var))


def jt_power(sizes: Sequence[int], pi: float, false_pass_rate: float) -> float:
    """Power of the one-sided JT test at level ``false_pass_rate`` when every ordered pair of
    groups is ordered with probability ``pi`` (normal approximation, null sd)."""
    n = np.asarray(sizes, dtype=np.float64)
    pairs = ((n.sum() ** 2) - (n**2).sum()) / 2.0  # sum_{g<h} n_g n_h
    mean0, sd0 = jt_null_moments(sizes)
    shift = (pairs * pi - mean0) / sd0
    return float(_scipy_stats.norm.cdf(shift - _scipy_stats.norm.ppf(1.0 - false_pass_rate)))


def jt_group_size(groups: int, pi: float, power: float, false_pass_rate: float,
                  minimum: int = 2) -> int:
    """Smallest common group size whose JT power at ``pi`` is at least ``power``."""
    n = max(int(minimum), 2)
    while jt_power([n] * groups, pi, false_pass_rate) < power:
        n += 1
        if n > 10_000:
            raise ValueError(f"no group size reaches power {power} at pi = {pi}")
    return n


def mw_power(n_larger: int, n_smaller: int, pi: float, false_pass_rate: float) -> float:
    """Power of the one-sided Mann–Whitney test when P(larger-group draw > other) = ``pi``."""
    return jt_power([n_smaller, n_larger], pi, false_pass_rate)


def _jt_count(values: np.ndarray, labels: Sequence[int]) -> float:
    count = 0.0
    for a in range(len(values)):
        for b in range(len(values)):
            if labels[a] < labels[b]:
                count += 1.0 if values[b] > values[a] else (0.5 if values[b] == values[a] else 0.0)
    return count


def jt_exact(groups: Sequence[Sequence[float]]) -> tuple[float, float]:
    """``(J, exact one-sided p-value)`` by enumerating every distinct labelling (small examples)."""
    values = np.concatenate([np.asarray(g, dtype=np.float64) for g in groups])
    labels = [k for k, g in enumerate(groups) for _ in g]
    observed = _jt_count(values, labels)
    labellings = set(itertools.permutations(labels))
    if len(labellings) > 200_000:
        raise ValueError("too many labellings to enumerate")
    at_least = sum(_jt_count(values, lab) >= observed - 1e-9 for lab in labellings)
    return observed, at_least / len(labellings)
