"""An independent oracle for the permutation p-value of :func:`cgeom_verify.stats.jonckheere_terpstra`.

:func:`jt_exact` enumerates every distinct labelling of a small example with a separately
written pairwise count (itertools, plain Python): the Fig. 5 claims decide the harness's
permutation p-value against it. The rank tests' power design lives in :mod:`cgeom_verify.stats`
(:func:`~cgeom_verify.stats.jt_power`, :func:`~cgeom_verify.stats.jt_group_size`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

__all__ = ["jt_exact"]


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
