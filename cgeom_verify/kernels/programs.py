"""How many independent items (runs, replicates) one batched tensor program holds."""

from __future__ import annotations

import torch

#: Floats of the largest per-item tensor summed over one CPU program: cache-sized. Measured: the
#: encoder's fastest chunk held 0.6-1.4 M floats at every setting tried (1.3-2x faster than 256
#: replicates at N = 4096), and the finite-batch toy's 264 runs at B = 256 (138 MB of logits,
#: mapped afresh and faulted in at every step) ran 1.35x faster in chunks of this size.
PROGRAM_FLOATS = 2**20


def items_per_program(device: torch.device, floats_per_item: int, most: int) -> int:
    """Items per program: ``most`` on CUDA, where small programs are launch-bound; on the CPU as
    many as keep the program near PROGRAM_FLOATS, at least one and at most ``most``."""
    if device.type == "cuda":
        return most
    return max(1, min(most, PROGRAM_FLOATS // floats_per_item))
