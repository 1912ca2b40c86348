"""The ``cgeom-verify`` command.

* ``cgeom-verify list`` — registered claims: id, paper reference, source package;
* ``cgeom-verify run`` — certify: a thin wrapper over the pytest invocation
  (``pytest -n WORKERS cgeom_verify/registry.py --cgeom-...``).

Every user error (unknown claim id, bad profile, seed, device, worker count) is one
line on stderr and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from . import registry
from .settings import PROFILES, ConfigError, RunConfig

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"cgeom-verify: error: {message}\n")


def _workers(value: str) -> str:
    if value == "auto" or (value.isdigit() and int(value) >= 0):
        return value
    raise argparse.ArgumentTypeError(f"workers must be 'auto' or a non-negative integer, got {value!r}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cgeom-verify", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    listing = sub.add_parser("list", help="list registered claims")
    listing.add_argument("--provider", action="append", default=[], help="extra provider module")
    listing.add_argument("--providers-only", action="store_true", help="ignore installed providers")

    run = sub.add_parser("run", help="run the claims and write the certificate")
    run.add_argument("--profile", default="quick", help=f"one of {', '.join(PROFILES)}")
    run.add_argument("--seed", default="20260119", help="master seed")
    run.add_argument("--device", default="auto", help="auto, cpu or cuda")
    run.add_argument("--claims", default="", help="comma-separated claim ids (default: all)")
    run.add_argument("--alpha", default="0.01", help="family-wise false-fail rate")
    run.add_argument("--workers", default="auto", type=_workers, help="xdist workers (0: no xdist)")
    run.add_argument("--reports", default="reports", help="directory for the certificate")
    run.add_argument("--provider", action="append", default=[], help="extra provider module")
    run.add_argument("--providers-only", action="store_true", help="ignore installed providers")
    run.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    return parser


def _list(args) -> int:
    found = registry.discover(tuple(args.provider), installed=not args.providers_only)
    if not found.claims:
        print("no claims registered")
    width = max((len(r.claim.id) for r in found.claims), default=8)
    for entry in found.claims:
        print(f"{entry.claim.id:<{width}}  {entry.claim.reference:<22}  {entry.package} ({entry.module})")
    for problem in found.problems:
        print(f"PROBLEM {problem.provider} ({problem.package}): {problem.message}", file=sys.stderr)
    return 1 if found.problems else 0


def _run(args) -> int:
    try:
        seed = int(args.seed)
    except ValueError:
        raise ConfigError(f"seed must be an integer, got {args.seed!r}") from None
    try:
        alpha = float(args.alpha)
    except ValueError:
        raise ConfigError(f"alpha must be a number, got {args.alpha!r}") from None
    RunConfig(profile=args.profile, master_seed=seed, device=args.device, family_alpha=alpha)
    ids = [i.strip() for i in args.claims.split(",") if i.strip()]
    found = registry.discover(tuple(args.provider), installed=not args.providers_only)
    try:
        found.select(ids)
    except KeyError as exc:
        raise ConfigError(f"unknown claim id(s): {exc.args[0]}; known: {', '.join(found.ids())}") from None
    argv = [
        sys.executable, "-m", "pytest",
        str(registry.__file__),
        "--rootdir", os.getcwd(),
        "-p", "no:cacheprovider",
        "-v",
        f"--cgeom-profile={args.profile}",
        f"--cgeom-seed={seed}",
        f"--cgeom-device={args.device}",
        f"--cgeom-alpha={alpha}",
        f"--cgeom-reports={args.reports}",
    ]
    if ids:
        argv.append(f"--cgeom-claims={','.join(ids)}")
    argv += [f"--cgeom-provider={p}" for p in args.provider]
    if args.providers_only:
        argv.append("--cgeom-providers-only")
    if args.workers != "0":
        argv += ["-n", args.workers]
    # A child process: the claim modules imported above for validation must not be
    # imported before pytest starts (assertion rewriting, clean interrupt handling).
    return subprocess.run(argv + list(args.pytest_args), check=False).returncode


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _list(args) if args.command == "list" else _run(args)
    except ConfigError as exc:
        print(f"cgeom-verify: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
