"""The run options, defined once for the command line and the pytest plugin.

``cgeom-verify run --seed 7`` and ``pytest cgeom_verify/registry.py --cgeom-seed=7``
take the same options with the same defaults and help (:data:`RUN_OPTIONS`), and
parse them the same way (:func:`run_config`, :func:`claim_ids`): the command line
validates them and hands them on to pytest as ``--cgeom-*`` arguments
(:func:`pytest_arguments`), where the plugin reads them back.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from .settings import ConfigError, RunConfig

__all__ = ["Option", "RUN_OPTIONS", "add_arguments", "add_pytest_options", "pytest_arguments",
           "run_config", "claim_ids"]


@dataclass(frozen=True)
class Option:
    name: str  # as written after "--" (command line) or "--cgeom-" (pytest)
    default: object
    help: str
    repeat: bool = False  # may be given several times (a list)
    flag: bool = False  # takes no value

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    def _kwargs(self) -> dict:
        if self.flag:
            return {"action": "store_true", "help": self.help}
        if self.repeat:
            return {"action": "append", "default": [], "help": self.help}
        return {"default": self.default, "help": self.help}


RUN_OPTIONS = (
    Option("profile", "quick", "quick (CI) or full (nightly)"),
    Option("seed", "20260119", "master seed of every random stream"),
    Option("device", "auto", "auto, cpu or cuda"),
    Option("claims", "", "comma-separated claim ids (default: all)"),
    Option("alpha", "0.01", "family-wise false-fail rate"),
    Option("reports", "reports", "directory for the certificate"),
    Option("provider", [], "extra claim provider module to import (repeatable)", repeat=True),
    Option("providers-only", False, "ignore installed providers; certify only --provider modules",
           flag=True),
    Option("shard", "", "i/n: run only the i-th of n shards of the claim items (see merge)"),
)
_BY_NAME = {o.name: o for o in RUN_OPTIONS}


def add_arguments(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None,
                  **defaults) -> None:
    """Add the run options (all, or ``names``) to a command-line parser; ``defaults`` override."""
    for option in (RUN_OPTIONS if names is None else [_BY_NAME[n] for n in names]):
        kwargs = option._kwargs()
        if option.dest in defaults:
            kwargs["default"] = defaults[option.dest]
        parser.add_argument(f"--{option.name}", **kwargs)


def add_pytest_options(group) -> None:
    """Add the run options to the plugin's pytest option group, as ``--cgeom-<name>``."""
    for option in RUN_OPTIONS:
        group.addoption(f"--cgeom-{option.name}", **option._kwargs())


def pytest_arguments(values: dict) -> list[str]:
    """The ``--cgeom-*`` arguments that hand ``values`` (keyed by dest) on to the plugin."""
    argv = []
    for option in RUN_OPTIONS:
        value = values.get(option.dest, option.default)
        if option.flag:
            argv += [f"--cgeom-{option.name}"] if value else []
        elif option.repeat:
            argv += [f"--cgeom-{option.name}={v}" for v in value]
        elif value != option.default:
            argv.append(f"--cgeom-{option.name}={value}")
    return argv


def run_config(values: dict) -> RunConfig:
    """Parse and validate profile, seed, device and alpha (ConfigError: one line for the user)."""
    try:
        seed = int(values["seed"])
    except ValueError:
        raise ConfigError(f"seed must be an integer, got {values['seed']!r}") from None
    try:
        alpha = float(values["alpha"])
    except ValueError:
        raise ConfigError(f"alpha must be a number, got {values['alpha']!r}") from None
    return RunConfig(profile=values["profile"], master_seed=seed, device=values["device"],
                     family_alpha=alpha)


def claim_ids(text: str) -> list[str]:
    """``"a, b,"`` -> ``["a", "b"]``."""
    return [i.strip() for i in text.split(",") if i.strip()]
