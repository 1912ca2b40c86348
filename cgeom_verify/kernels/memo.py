"""Replay a seeded computation instead of repeating it.

A check and its post-hoc negative controls (a mutant that only relabels or re-weighs what was
computed) run the same computation from the same check seed: bit for bit the same result. A
function wrapped by :func:`seeded_memo` remembers its last call, keyed by its arguments and the
generator's state on entry; a repeated call returns the stored result and sets the generator
to the state the computation left it in, so every later draw is the same as if it had run.
A few entries per function and process: the repeat comes from a later item of the same claim
on the same worker, perhaps after another check of that claim.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = ["seeded_memo"]

Result = TypeVar("Result")


def seeded_memo(function: Callable[..., Result] | None = None, *,
                entries: int = 4) -> Callable[..., Result]:
    """Wrap ``function(*args, generator=..., **kwargs)``: hashable arguments, a
    ``torch.Generator`` keyword, a result its callers never modify; the last ``entries``
    calls are kept."""
    if function is None:
        return functools.partial(seeded_memo, entries=entries)
    kept: OrderedDict = OrderedDict()

    @functools.wraps(function)
    def wrapper(*args, generator: torch.Generator, **kwargs):
        key = (args, tuple(sorted(kwargs.items())), str(generator.device),
               bytes(generator.get_state().numpy()))
        if key in kept:
            kept.move_to_end(key)
            result, state = kept[key]
            generator.set_state(state)
            return result
        result = function(*args, generator=generator, **kwargs)
        kept[key] = (result, generator.get_state())
        if len(kept) > entries:
            kept.popitem(last=False)
        return result

    return wrapper
