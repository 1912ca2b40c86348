"""The large-batch sheet's design machinery: pooling replicates and the internal-pilot top-up."""

from __future__ import annotations

import numpy as np
import torch

from cgeom_verify.claim import CheckRun
from claims import large_batch as lb


def _run():
    return CheckRun(settings=[lb.SPOT], seeds=[5], check_seed=0, subject=lb.SUBJECT,
                    profile="quick", device=torch.device("cpu"))


def test_pooled_replicates_keep_every_axis():
    run, prediction = _run(), lb.predict(lb.SPOT)
    sizes = (4, 8)
    a = lb.simulate(run, lb.SPOT, prediction, sizes, 3, run.generator(0), gradient=True)
    b = lb.simulate(run, lb.SPOT, prediction, sizes, 2, run.generator(0), gradient=True)
    both = a.pooled_with(b)
    assert both.error.shape == (2, 5) and both.delta.shape[-1] == 5
    assert both.relative_kernels[0].shape[0] == 5 and both.tilted_residuals.shape[0] == 5
    assert both.gradient.shape[:2] == (2, 5) and both.linear.shape[:2] == (2, 5)
    np.testing.assert_array_equal(both.error[:, 3:], b.error)
    np.testing.assert_array_equal(both.gradient[:, :3], a.gradient)


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
    assert n == grown.error.shape[1] == lb._replicates_needed((0.1,), 16, (0.1,), 1e-3) > 16
