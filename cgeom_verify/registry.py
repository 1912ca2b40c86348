"""Claim discovery: every :class:`~cgeom_verify.claim.Claim` registered by an installed package.

A package registers claims under the entry-point group ``cgeom_verify.claims``::

    [project.entry-points."cgeom_verify.claims"]
    mine = "my_package.claims"      # a module, or a package whose modules all count

Every ``Claim`` object at the top level of those modules is collected. A provider
that fails to import, or that reuses a claim id, is reported as a
:class:`ProviderProblem` and does not take the other providers down.

This module is also the pytest collection anchor: collecting its file with the
plugin active yields one pytest item per obligation, check and control.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import traceback
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # claim loads torch and SymPy; the command line lists options without them
    from .claim import Claim

__all__ = ["GROUP", "RegisteredClaim", "ProviderProblem", "Registry", "discover"]

GROUP = "cgeom_verify.claims"


@dataclass(frozen=True)
class RegisteredClaim:
    claim: Claim
    module: str
    package: str  # the distribution that registered it


@dataclass(frozen=True)
class ProviderProblem:
    provider: str
    package: str
    message: str


@dataclass(frozen=True)
class Registry:
    claims: tuple[RegisteredClaim, ...]
    problems: tuple[ProviderProblem, ...]

    def ids(self) -> list[str]:
        return [r.claim.id for r in self.claims]

    def select(self, ids: list[str] | None) -> list[RegisteredClaim]:
        """The claims with the given ids (all when None); unknown ids raise KeyError."""
        if not ids:
            return list(self.claims)
        known = {r.claim.id: r for r in self.claims}
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise KeyError(", ".join(unknown))
        return [known[i] for i in ids]


def _import(name: str, package: str, problems: list[ProviderProblem]) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except Exception as exc:  # a broken provider must not take the others down
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        problems.append(ProviderProblem(name, package, f"import failed: {last}"))
        return None


def _modules(provider: str, package: str, problems: list[ProviderProblem]) -> list[ModuleType]:
    """The provider module, or every module of a provider package (each imported on its own)."""
    target = _import(provider, package, problems)
    if target is None or not hasattr(target, "__path__"):
        return [target] if target is not None else []
    found = [target]
    for info in sorted(pkgutil.iter_modules(target.__path__), key=lambda m: m.name):
        module = _import(f"{target.__name__}.{info.name}", package, problems)
        if module is not None:
            found.append(module)
    return found


def _claims_in(module: ModuleType) -> list[Claim]:
    from .claim import Claim

    return [v for v in vars(module).values() if isinstance(v, Claim)]


def _providers(extra: tuple[str, ...], installed: bool) -> list[tuple[str, str]]:
    """(module name, distribution) of every provider: entry points, then ``extra``."""
    found = sorted(
        ((ep.value, ep.dist.name if ep.dist else "?") for ep in entry_points(group=GROUP)),
        key=lambda p: (p[1], p[0]),
    ) if installed else []
    return found + [(name, "(command line)") for name in extra]


def discover(extra: tuple[str, ...] = (), installed: bool = True) -> Registry:
    """Import every provider and gather its claims, in a stable order.

    ``extra`` names further provider modules (``--cgeom-provider``), e.g. claims under
    development that are not installed yet; ``installed=False`` skips the entry points.
    """
    if extra and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like pytest's rootdir: local modules by dotted name
    claims: list[RegisteredClaim] = []
    problems: list[ProviderProblem] = []
    seen: dict[str, RegisteredClaim] = {}
    for provider, package in _providers(tuple(extra), installed):
        modules = _modules(provider, package, problems)
        for module in modules:
            for claim in _claims_in(module):
                if claim.id in seen:
                    other = seen[claim.id]
                    problems.append(ProviderProblem(
                        module.__name__, package,
                        f"duplicate claim id {claim.id!r} (already defined in {other.module})",
                    ))
                    continue
                entry = RegisteredClaim(claim, module.__name__, package)
                seen[claim.id] = entry
                claims.append(entry)
    return Registry(tuple(claims), tuple(problems))
