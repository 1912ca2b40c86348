"""Adam on one tensor that holds every run's parameters (the project's only Adam).

Written out rather than ``torch.optim.Adam``: the update is elementwise, so one step
serves every run of a batched program while the runs stay independent, and the first
``torch.optim`` step imports ``torch._dynamo`` (seconds). The arithmetic is
``torch.optim.Adam``'s own, operation for operation (Kingma & Ba; defaults betas
0.9/0.999, eps 1e-8, no weight decay), so a run replays the authors' optimiser bit for bit
on the same gradients (tests/test_modality_gap.py compares the two).
"""

from __future__ import annotations

import math

import torch

__all__ = ["BatchedAdam"]


class BatchedAdam:
    """Adam's state and step for ``param`` (any shape; all runs at once)."""

    def __init__(self, param: torch.Tensor, lr, betas=(0.9, 0.999), eps: float = 1e-8):
        self.param = param.clone()
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)
        self.t = 0

    def moments(self, grad: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Advance the moment estimates by ``grad``: Adam's denominator ``sqrt(v_hat) + eps`` and
        the first moment's bias correction ``1 - beta1^t`` (the step is ``m / correction / denom``)."""
        b1, b2 = self.betas
        self.t += 1
        self.m.lerp_(grad, 1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        return (self.v.sqrt() / math.sqrt(1 - b2**self.t)).add_(self.eps), 1 - b1**self.t

    def step(self, grad: torch.Tensor) -> None:
        denom, correction = self.moments(grad)
        self.param.addcdiv_(self.m, denom, value=-self.lr / correction)
