"""Sharding: split a run's claim items over independent machines or CI matrix jobs.

``--shard i/n`` (1 <= i <= n) keeps every n-th item of the run, starting at the
i-th, in the canonical item order: claims in selection order, each claim's
obligations, checks and controls in declaration order. Round-robin spreads every
claim's expensive checks over the shards, and every shard computes the same split
without talking to the others.

A shard runs each check at the level of the *whole* run (the Bonferroni split is
over all checks of all shards), so merging the shard certificates
(:func:`cgeom_verify.replay.merge`) gives the numbers of the unsharded run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .settings import ConfigError

if TYPE_CHECKING:
    from .claim import Claim

__all__ = ["Shard", "item_keys", "check_count"]

_PATTERN = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based, as written on the command line
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard | None:
        """``"i/n"`` -> Shard; ``""`` -> None (no sharding); anything else: ConfigError."""
        if not text:
            return None
        match = _PATTERN.match(text)
        if not match:
            raise ConfigError(f"shard must look like i/n (e.g. 2/4), got {text!r}")
        index, count = int(match[1]), int(match[2])
        if not 1 <= index <= count:
            raise ConfigError(f"shard {text!r}: need 1 <= i <= n")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def keeps(self, position: int) -> bool:
        """Whether the item at ``position`` of the canonical order belongs to this shard."""
        return position % self.count == self.index - 1

    def select(self, keys: list[str]) -> list[str]:
        return [k for p, k in enumerate(keys) if self.keeps(p)]


def item_keys(claims: Iterable[Claim]) -> list[str]:
    """``"<claim id>::<item key>"`` of every item of ``claims``, in canonical order."""
    return [f"{c.id}::{t.key}" for c in claims for t in (*c.obligations, *c.checks, *c.controls)]


def check_count(claims: Iterable[Claim]) -> int:
    """How many checks share the family-wise budget (all shards together)."""
    return sum(len(c.checks) for c in claims)
