"""The run options, defined once for the command line and the pytest plugin.

``cgeom-verify run --seed 7`` and ``pytest cgeom_verify/registry.py --cgeom-seed=7``
take the same options with the same defaults and help (:data:`RUN_OPTIONS`), and
parse and validate them the same way (:func:`run_config`, :func:`select_claims`,
:func:`id_list`): the command line validates them before it starts pytest and hands
them on as ``--cgeom-*`` arguments (:func:`pytest_arguments`, :func:`pytest_command`),
where the plugin reads them back. :func:`run_arguments` writes them as ``cgeom-verify run``
arguments (replay, calibration and mutation runs). The audit command's statement choices
(:data:`KINDS`, :data:`RETRIEVALS`, :data:`OBJECTIVES`, :data:`STATEMENT`) live here too, so the
command line is built without importing the numeric libraries the audit runs on.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

from . import registry
from .settings import ConfigError, RunConfig

__all__ = ["Option", "RUN_OPTIONS", "KINDS", "RETRIEVALS", "OBJECTIVES", "STATEMENT", "add_arguments",
           "add_pytest_options", "pytest_arguments", "pytest_command", "run_arguments", "run_config",
           "discover", "select_claims", "id_list"]


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

    def _argv(self, value, prefix: str) -> list[str]:
        """``value`` written as arguments ``<prefix><name>=...``."""
        if self.flag:
            return [f"{prefix}{self.name}"] if value else []
        if self.repeat:
            return [f"{prefix}{self.name}={v}" for v in value]
        return [f"{prefix}{self.name}={value}"]


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
_BY_DEST = {o.dest: o for o in RUN_OPTIONS}

#: How ``cgeom-verify audit`` may state the §5 claims of a model (:mod:`.audit`), and how it
#: states them unless told otherwise: a trained model whose recall@1 is claimed and whose gap
#: the objective holds (CLIP at its learned temperature).
KINDS = ("trained", "random")
RETRIEVALS = ("top1", "rank")
OBJECTIVES = ("held", "closing-favoured")
STATEMENT = {"kind": "trained", "retrieval": "top1", "objective": "held"}


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
    """The ``--cgeom-*`` arguments that hand ``values`` (keyed by dest) on to the plugin;
    an option at its default is left out."""
    argv = []
    for option in RUN_OPTIONS:
        value = values.get(option.dest, option.default)
        if option.flag or option.repeat or value != option.default:
            argv += option._argv(value, "--cgeom-")
    return argv


def pytest_command(values: dict, workers: str, *, quiet: bool = False) -> list[str]:
    """The pytest command line that certifies with the run options ``values``: the plugin's
    collection anchor, ``--cgeom-*`` arguments and ``workers`` xdist workers ("0": none).
    Run it as a child process: claim modules imported to validate the options must not be
    imported before pytest starts (assertion rewriting, clean interrupt handling)."""
    argv = [sys.executable, "-m", "pytest", str(registry.__file__), "--rootdir", os.getcwd(),
            "-p", "no:cacheprovider", "-q" if quiet else "-v", *pytest_arguments(values)]
    if workers != "0":
        # worksteal: claim items differ in cost by 1000x; an idle worker takes queued items
        # from a busy one instead of waiting while one worker runs the long tail.
        argv += ["-n", workers, "--dist", "worksteal"]
    return argv


def run_arguments(values: dict) -> list[str]:
    """``cgeom-verify run`` arguments giving each of ``values`` (keyed by dest, in its order)
    explicitly, default or not."""
    return [arg for dest, value in values.items() for arg in _BY_DEST[dest]._argv(value, "--")]


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


def discover(values: dict) -> registry.Registry:
    """The claims the ``provider`` and ``providers_only`` options register."""
    return registry.discover(tuple(values["provider"]), installed=not values["providers_only"])


def select_claims(values: dict) -> tuple[registry.Registry, list[registry.RegisteredClaim]]:
    """Every registered claim and those ``claims`` selects (an unknown id is a ConfigError)."""
    found = discover(values)
    try:
        return found, found.select(id_list(values["claims"]))
    except KeyError as exc:
        known = ", ".join(found.ids()) or "none"
        raise ConfigError(f"unknown claim id(s): {exc.args[0]}; known: {known}") from None


def id_list(text: str) -> list[str]:
    """Comma-separated ids: ``"a, b,"`` -> ``["a", "b"]``."""
    return [i.strip() for i in text.split(",") if i.strip()]
