"""The ``cgeom-verify`` command.

* ``cgeom-verify list`` — registered claims: id, paper reference, source package;
* ``cgeom-verify run`` — certify: a thin wrapper over the pytest invocation
  (``pytest -n WORKERS cgeom_verify/registry.py --cgeom-...``); ``--shard i/n`` runs
  one of n shards of the claim items;
* ``cgeom-verify replay CERT`` — re-run exactly what a certificate records and list
  every verdict or number that differs (exit 1 if any);
* ``cgeom-verify diff A B`` — compare two certificates (exit 1 if they differ);
* ``cgeom-verify merge SHARD...`` — join shard certificates into one;
* ``cgeom-verify calibrate --seeds K`` — certify under K master seeds and count the
  runs that are not PASS (the family-wise false-fail rate, measured);
* ``cgeom-verify mutants CATALOGUE...`` — the mutation score: certify each
  catalogued bug's claims on a mutated copy of the source (:mod:`.mutation`).
* ``cgeom-verify audit EMB...`` — the §5 claims on a user's own paired embeddings
  (:mod:`.audit`), one certificate with an audit section.

Every user error (unknown claim id, bad profile, seed, device, worker count, shard,
corrupt or foreign certificate, shards of different runs) is one line on stderr and
exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from . import calibration, certificate, mutation, options, replay, report
from .certificate import CertificateError
from .options import KINDS, OBJECTIVES, RETRIEVALS, STATEMENT
from .settings import ConfigError, RunConfig
from .shard import Shard, check_count

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"cgeom-verify: error: {message}\n")


def _workers(value: str) -> str:
    if value == "auto" or (value.isdigit() and int(value) >= 0):
        return value
    raise argparse.ArgumentTypeError(f"workers must be 'auto' or a non-negative integer, got {value!r}")


def _add_workers(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--workers``: the xdist workers of every command that certifies."""
    parser.add_argument("--workers", default=default, type=_workers, help="xdist workers (0: no xdist)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cgeom-verify", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    listing = sub.add_parser("list", help="list registered claims")
    options.add_arguments(listing, ("provider", "providers-only"))

    run = sub.add_parser("run", help="run the claims and write the certificate")
    options.add_arguments(run)
    _add_workers(run)
    run.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")

    again = sub.add_parser("replay", help="re-run what a certificate records and compare")
    again.add_argument("certificate", help="certificate.json to replay")
    again.add_argument("--reports", default=None,
                       help="directory for the new certificate (default: replay/ beside it)")
    _add_workers(again)

    compare = sub.add_parser("diff", help="compare two certificates: verdicts and numbers")
    compare.add_argument("first")
    compare.add_argument("second")

    join = sub.add_parser("merge", help="join shard certificates (--shard i/n) into one")
    join.add_argument("shards", nargs="+", help="the shard certificate.json files, 1/n to n/n")
    join.add_argument("--reports", default="reports", help="directory for the merged certificate")

    calib = sub.add_parser("calibrate", help="certify under K master seeds; count the not-PASS runs")
    calib.add_argument("--seeds", type=_positive, default=20, help="how many master seeds (default 20)")
    calib.add_argument("--first-seed", type=int, default=1001, help="the first master seed (default 1001)")
    options.add_arguments(calib, ("alpha",))
    calib.add_argument("--reports", default="reports/calibration", help="directory for the runs and summary")
    _certify_options(calib)

    mutate = sub.add_parser("mutants", help="mutation score of a catalogue of realistic bugs")
    mutate.add_argument("catalogues", nargs="+", help="TOML catalogues of mutants")
    mutate.add_argument("--root", default=".", help="the source root the catalogue's paths are relative to")
    mutate.add_argument("--only", default="", help="comma-separated mutant ids (default: all)")
    mutate.add_argument("--reports", default="reports/mutants", help="directory for score.json and score.md")
    _certify_options(mutate)

    audit = sub.add_parser("audit", help="certify the §5 claims on your own paired embeddings")
    audit.add_argument("embeddings", nargs="+",
                       help=".npy (2, n, d) or .npz with two (n, d) arrays; several: a trend across them")
    audit.add_argument("--temperature", default="0.07", help="the model's InfoNCE temperature")
    audit.add_argument("--initialisation", choices=KINDS, default=STATEMENT["kind"],
                       help="trained: alignment is claimed; random: alignment at chance is claimed")
    audit.add_argument("--retrieval", choices=RETRIEVALS, default=STATEMENT["retrieval"],
                       help="top1: recall@1 above chance is claimed; rank: only the partner's rank")
    audit.add_argument("--objective", choices=OBJECTIVES, default=STATEMENT["objective"],
                       help="held: the gap is the loss's minimum along the shift; closing-favoured: "
                            "closing it lowers the loss (Liang et al.'s higher-temperature regime)")
    options.add_arguments(audit, ("profile", "seed", "device", "alpha", "reports"), reports="reports/audit")
    _add_workers(audit, default="0")
    return parser


def _positive(value: str) -> int:
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}")


def _certify_options(parser: argparse.ArgumentParser) -> None:
    """The ``run`` options a calibration or mutation run passes on to each certification."""
    options.add_arguments(parser, ("profile", "device", "claims", "provider", "providers-only"))
    _add_workers(parser)


def _run_options(args) -> list[str]:
    """The ``run`` arguments a calibration or mutation run hands on to each certification."""
    RunConfig(profile=args.profile, device=args.device)  # validated before any run starts
    return options.run_arguments({"profile": args.profile, "device": args.device,
                                  "provider": args.provider, "providers_only": args.providers_only}
                                 ) + [f"--workers={args.workers}"]


def _list(args) -> int:
    found = options.discover(vars(args))
    if not found.claims:
        print("no claims registered")
    width = max((len(r.claim.id) for r in found.claims), default=8)
    for entry in found.claims:
        print(f"{entry.claim.id:<{width}}  {entry.claim.reference:<22}  {entry.package} ({entry.module})")
    for problem in found.problems:
        print(f"PROBLEM {problem.provider} ({problem.package}): {problem.message}", file=sys.stderr)
    return 1 if found.problems else 0


def _run(args) -> int:
    values = vars(args)
    options.run_config(values)
    Shard.parse(args.shard)
    if options.id_list(args.claims):  # unknown ids: one line here, before pytest starts
        options.select_claims(values)
    argv = options.pytest_command(values, args.workers) + list(args.pytest_args)
    return subprocess.run(argv, check=False).returncode


def _replay(args) -> int:
    source = Path(args.certificate)
    recorded = replay.load(source)
    reports = Path(args.reports) if args.reports else source.parent / "replay"
    if (reports / certificate.JSON_NAME).resolve() == source.resolve():
        raise ConfigError(f"--reports {reports} would overwrite the certificate being replayed")
    argv = replay.replay_arguments(recorded, str(reports)) + ["--workers", args.workers]
    print(f"replaying {source}: cgeom-verify {shlex.join(argv)}", flush=True)
    started = time.time()
    status = main(argv)
    replayed = reports / certificate.JSON_NAME
    if status == 2 or not replayed.exists() or replayed.stat().st_mtime < started:
        print(f"cgeom-verify: error: the replay wrote no certificate (exit status {status})",
              file=sys.stderr)
        return 2
    again = replay.load(replayed)
    result = replay.diff(recorded, again)
    print(f"recorded {recorded['verdict']} ({source}), replayed {again['verdict']} ({replayed}):")
    for line in result.lines():
        print(f"  {line}")
    return 0 if result.identical else 1


def _diff(args) -> int:
    result = replay.diff(replay.load(args.first), replay.load(args.second))
    for line in result.lines():
        print(line)
    return 0 if result.identical else 1


def _merge(args) -> int:
    target = Path(args.reports) / certificate.JSON_NAME
    if any(Path(s).resolve() == target.resolve() for s in args.shards):
        raise ConfigError(f"--reports {args.reports} would overwrite an input shard certificate")
    merged = replay.merge([(s, replay.load(s)) for s in args.shards])
    report.write_reports(merged, Path(args.reports))
    for line in certificate.summary_lines(merged):
        print(line)
    print(f"written: {target}, {target.with_suffix('.md')}, {target.parent / report.HTML_NAME}")
    return 0 if merged["verdict"] == "PASS" else 1


def _calibrate(args) -> int:
    alpha = options.run_config({"seed": "0", "profile": args.profile, "device": args.device,
                                "alpha": args.alpha}).family_alpha
    run_options = _run_options(args)
    ids = options.id_list(args.claims)
    if ids:
        # A subset runs each check at the share it has in the whole certificate (the same
        # numbers, bit for bit), so subsets calibrated apart add up to the whole.
        found, chosen = options.select_claims(vars(args))
        alpha *= check_count(e.claim for e in chosen) / check_count(e.claim for e in found.claims)
        run_options += options.run_arguments({"claims": ",".join(ids)})
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    summary = calibration.calibrate(seeds, run_options, Path(args.reports), alpha,
                                    progress=lambda line: print(line, flush=True))
    print(f"{summary['not_passed']} of {summary['seeds']} seeds not PASS (false-fail rate of the "
          f"run{' (its share of the whole certificate)' if ids else ''} {alpha:.3g}; "
          f"P(at least this many) = {summary['p_value']:.3g}); "
          f"written: {Path(args.reports) / 'calibration.md'}")
    return 0 if summary["p_value"] > 0.01 or summary["not_passed"] <= 1 else 1


def _mutants(args) -> int:
    if args.claims:
        raise ConfigError("mutants: each mutant names its own claims; --claims does not apply")
    root = Path(args.root).resolve()
    mutants = mutation.load_catalogue([Path(c) for c in args.catalogues], root)
    only = options.id_list(args.only)
    unknown = sorted(set(only) - {m.id for m in mutants})
    if unknown:
        raise ConfigError(f"unknown mutant id(s): {', '.join(unknown)}")
    chosen = [m for m in mutants if not only or m.id in only]
    summary = mutation.score(chosen, root, _run_options(args), Path(args.reports),
                             progress=lambda line: print(line, flush=True))
    print(f"mutation score {summary['killed']}/{summary['total']}"
          + ("" if summary["valid"] else " — INVALID: the unmutated baseline did not PASS")
          + f"; written: {Path(args.reports) / 'score.md'}")
    return 0 if summary["valid"] and summary["killed"] == summary["total"] else 1


def _audit(args) -> int:
    from .audit import run_audit

    try:
        temperature = float(args.temperature)
    except ValueError:
        raise ConfigError(f"temperature must be a number, got {args.temperature!r}") from None
    statement = {"kind": args.initialisation, "retrieval": args.retrieval, "objective": args.objective}
    return run_audit(args.embeddings, temperature=temperature, config=options.run_config(vars(args)),
                     values=vars(args), workers=args.workers, statement=statement)


COMMANDS = {"list": _list, "run": _run, "replay": _replay, "diff": _diff, "merge": _merge,
            "calibrate": _calibrate, "mutants": _mutants, "audit": _audit}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, CertificateError) as exc:
        print(f"cgeom-verify: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
