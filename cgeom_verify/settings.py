"""Run configuration: profile, master seed, device, error budget; and settings drawing.

Every random number in a certificate descends from the master seed:
``derive_seed(master, claim, check, ...)`` names each stream, Hypothesis draws a
check's settings from one such seed, and each drawn setting gets its own Monte
Carlo seed derived from its JSON form. Replaying a certificate therefore replays
every setting and every sample exactly (on the same device and library versions).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and Hypothesis load where used: the command line validates without them
    import torch
    from hypothesis.strategies import SearchStrategy

__all__ = [
    "PROFILES",
    "ConfigError",
    "RunConfig",
    "derive_seed",
    "draw_settings",
    "resolve_device",
    "setting_to_json",
]

PROFILES = ("quick", "full")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A user-facing configuration error: reported as one line, never a traceback."""


@dataclass(frozen=True)
class RunConfig:
    profile: str = "quick"
    master_seed: int = 20260119
    device: str = "auto"
    #: family-wise false-fail rate of the whole certificate
    family_alpha: float = 0.01
    #: probability that a decision misses a discrepancy of its reported detectable size
    false_pass_rate: float = 0.05

    def __post_init__(self):
        if self.profile not in PROFILES:
            raise ConfigError(f"unknown profile {self.profile!r}; choose one of {', '.join(PROFILES)}")
        if not 0 <= self.master_seed < 2**63:
            raise ConfigError(f"seed must be an integer in [0, 2^63), got {self.master_seed}")
        if not 0.0 < self.family_alpha < 1.0:
            raise ConfigError(f"alpha must lie in (0, 1), got {self.family_alpha}")
        if not 0.0 < self.false_pass_rate < 1.0:
            raise ConfigError(f"false-pass rate must lie in (0, 1), got {self.false_pass_rate}")
        _check_device(self.device)

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)


def _check_device(name: str) -> None:
    """A device name the run can use: one of DEVICES, and CUDA only where it is available."""
    if name not in DEVICES:
        raise ConfigError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' requested but no CUDA device is available")


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; asking for an absent CUDA is an error."""
    import torch

    _check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def derive_seed(*parts) -> int:
    """A 63-bit seed that depends on every part (stable across processes and runs)."""
    digest = hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") >> 1


def setting_to_json(setting) -> object:
    """Settings are dataclasses, dicts or plain values; the certificate stores their JSON."""
    if dataclasses.is_dataclass(setting):
        setting = dataclasses.asdict(setting)
    return json.loads(json.dumps(setting, sort_keys=True, allow_nan=False))


def draw_settings(strategy: SearchStrategy, count: int, draw_seed: int) -> list:
    """Draw ``count`` settings from a Hypothesis strategy, deterministically.

    Generation only (no shrinking, no database): a check is a statistical decision
    over a fixed sample of settings, and its failure is replayed from the recorded
    seed rather than shrunk. Hypothesis still front-loads boundary cases.
    """
    from hypothesis import HealthCheck, Phase, given, seed
    from hypothesis import settings as hypothesis_settings

    drawn: list = []

    @seed(draw_seed)
    @hypothesis_settings(
        max_examples=count,
        phases=[Phase.generate],
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(setting):
        drawn.append(setting)

    with _seed_alone():
        collect()
    return drawn[:count]


@contextlib.contextmanager
def _seed_alone():
    """Draw from the seed alone. Hypothesis (since 6.131) mixes number literals harvested from
    "local" modules (files outside site-packages) into what it generates, so the same seed drew
    other settings from an editable checkout than from an installed wheel, after an edit to any
    literal in the project, and with other modules imported. There is no public switch: the
    harvest is replaced by the empty set while drawing, and the cache of permitted constants,
    filled from either, is cleared on both sides. (hypothesis is pinned in constraints.txt;
    tests/test_claim_api.py fails if this hook moves.)"""
    from hypothesis.internal.conjecture import providers

    harvest = providers._get_local_constants
    providers._get_local_constants = providers.Constants
    providers.CONSTANTS_CACHE.cache.clear()
    try:
        yield
    finally:
        providers._get_local_constants = harvest
        providers.CONSTANTS_CACHE.cache.clear()
