"""Mutation score: does the certificate catch realistic bugs?

A *mutant* is one realistic single-point bug in the source (a sign, an off-by-one,
a dropped term), written in a TOML catalogue::

    [[mutant]]
    id = "vmf-logvolume-dminus1"
    file = "cgeom_verify/kernels/vmf.py"      # relative to the source root
    find = '''exact text, present exactly once'''
    replace = '''the buggy text'''
    claims = ["thm3.1-value"]                 # whose quick certificate must catch it
    why = "what a contributor could get wrong, and which decision should catch it"

Unlike a claim's negative controls (mutant *subjects* a check was built around),
these bugs are edits of the code itself. For each mutant, :func:`score` copies the
source root to a temporary directory, applies the edit, certifies the mutant's
claims from there (the copy first on ``PYTHONPATH``), and counts the mutant
*killed* when the certificate is not PASS. An unmutated baseline of the same claims
must PASS first, or the score means nothing. ``cgeom-verify mutants`` runs it;
``nox -s mutants`` on the project's own catalogue (``tests/mutants/*.toml``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from .certificate import atomic_write
from .options import run_arguments
from .repeat import certify
from .settings import ConfigError

__all__ = ["Mutant", "load_catalogue", "score", "render_markdown"]

#: not copied with the source root: VCS, environments, generated reports
IGNORED = shutil.ignore_patterns(".git", ".nox", ".venv", "reports", "__pycache__", "*.egg-info",
                                 "build", ".hypothesis")


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    find: str
    replace: str
    claims: tuple[str, ...]
    why: str
    catalogue: str


def load_catalogue(paths: list[Path], root: Path) -> list[Mutant]:
    """Every mutant of the TOML files, validated against the source root (ConfigError if not)."""
    mutants: list[Mutant] = []
    for path in paths:
        try:
            entries = tomllib.loads(Path(path).read_text(encoding="utf-8")).get("mutant", [])
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: not a readable mutant catalogue ({exc})") from None
        for n, entry in enumerate(entries):
            where = f"{path}: mutant {entry.get('id', n)!r}"
            missing = [k for k in ("id", "file", "find", "replace", "claims", "why") if k not in entry]
            if missing:
                raise ConfigError(f"{where} lacks {', '.join(missing)}")
            source = root / entry["file"]
            if not source.is_file():
                raise ConfigError(f"{where}: no file {entry['file']} under {root}")
            found = source.read_text(encoding="utf-8").count(entry["find"])
            if found != 1:
                raise ConfigError(f"{where}: its 'find' text occurs {found} times in {entry['file']}, "
                                  "not once")
            if entry["find"] == entry["replace"] or not entry["claims"]:
                raise ConfigError(f"{where}: changes nothing or names no claim")
            mutants.append(Mutant(entry["id"], entry["file"], entry["find"], entry["replace"],
                                  tuple(entry["claims"]), entry["why"], str(path)))
    ids = [m.id for m in mutants]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise ConfigError(f"duplicate mutant ids: {', '.join(duplicated)}")
    return mutants


def score(mutants: list[Mutant], root: Path, run_options: list[str], out: Path,
          progress=print) -> dict:
    """Certify a baseline and every mutant; write ``out/score.{json,md}``; return the score."""
    with tempfile.TemporaryDirectory(prefix="cgeom-mutants-") as tmp:
        work = Path(tmp)
        pristine = work / "pristine"
        shutil.copytree(root, pristine, ignore=IGNORED)
        claims = sorted({c for m in mutants for c in m.claims})
        progress(f"baseline: certifying {len(claims)} claims unmutated ...")
        baseline = certify([*run_arguments({"claims": ",".join(claims)}), *run_options],
                           work / "baseline", source=pristine)
        progress(f"baseline: {baseline['verdict']} ({baseline['wall_time_s']} s)")
        results = []
        for k, mutant in enumerate(mutants, 1):
            source = work / mutant.id
            shutil.copytree(pristine, source)
            target = source / mutant.file
            target.write_text(target.read_text(encoding="utf-8").replace(mutant.find, mutant.replace),
                              encoding="utf-8")
            outcome = certify([*run_arguments({"claims": ",".join(mutant.claims)}), *run_options],
                              work / f"{mutant.id}-reports", source=source)
            killed = outcome["verdict"] != "PASS"
            results.append({**asdict(mutant), "killed": killed, **outcome})
            progress(f"[{k}/{len(mutants)}] {mutant.id}: {'killed' if killed else 'SURVIVED'} "
                     f"({outcome['verdict']}, {outcome['wall_time_s']} s)")
            shutil.rmtree(source)
    killed = sum(r["killed"] for r in results)
    summary = {
        "baseline": baseline,
        "valid": baseline["verdict"] == "PASS",
        "killed": killed,
        "total": len(results),
        "score": killed / len(results) if results else None,
        "run_options": run_options,
        "mutants": results,
    }
    atomic_write(out / "score.json", json.dumps(summary, indent=2) + "\n")
    atomic_write(out / "score.md", render_markdown(summary))
    return summary


def render_markdown(summary: dict) -> str:
    valid = "" if summary["valid"] else (" — **INVALID: the unmutated baseline is "
                                         f"{summary['baseline']['verdict']}, not PASS**")
    lines = [f"# Mutation score: {summary['killed']}/{summary['total']} killed{valid}", "",
             f"Options: `{' '.join(summary['run_options'])}`; a mutant is killed when the certificate "
             "of its claims is not PASS.", "",
             "| mutant | file | claims | killed | verdict | caught by | why |",
             "|---|---|---|---|---|---|---|"]
    for r in summary["mutants"]:
        caught = "; ".join(r["not_passed"][:3]) or "—"
        lines.append(f"| `{r['id']}` | `{r['file']}` | {', '.join(r['claims'])} | "
                     f"{'yes' if r['killed'] else '**NO**'} | {r['verdict']} | {caught} | {r['why']} |")
    return "\n".join(lines) + "\n"
