"""Streamed reductions: a logsumexp over more columns than fit in memory at once.

The large-N reference objective of Thm 3.1 needs ``log sum_j exp(s(z, w_j)/tau)`` for
N_ref >= 2^17 negatives and many anchors; materialising [anchors, N_ref] scores
would dominate memory. :func:`streamed_logsumexp` folds chunks into a running
(max, sum) pair, so memory is bounded by one chunk while the result (and its
autograd graph) equals the dense logsumexp.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["streamed_logsumexp"]


def streamed_logsumexp(chunk_fn: Callable[[int, int], torch.Tensor], n: int, chunk: int) -> torch.Tensor:
    """``logsumexp`` over the last axis of a virtual ``[..., n]`` tensor.

    ``chunk_fn(start, stop)`` returns the columns ``start:stop`` (shape ``[..., stop - start]``).
    """
    if n < 1 or chunk < 1:
        raise ValueError("n and chunk must be positive")
    total = None
    for start in range(0, n, chunk):
        part = torch.logsumexp(chunk_fn(start, min(start + chunk, n)), dim=-1)
        total = part if total is None else torch.logaddexp(total, part)
    return total
