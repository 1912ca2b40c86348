"""Calibration of the whole certificate: how often does it FAIL when the theory holds?

The certificate promises a family-wise false-fail rate (``--alpha``, 0.01 by
default): over master seeds, a correct implementation of a true theory should come
out not-PASS in at most that fraction of runs. :func:`calibrate` certifies the same
claims under K consecutive master seeds and counts the verdicts; with 0.01 and 20
seeds the expected count of FAILs is 0.2, and P(2 or more) is about 0.017.
``cgeom-verify calibrate`` runs it; ``nox -s calibration`` on every claim.
"""

from __future__ import annotations

import json
from pathlib import Path

from .certificate import atomic_write
from .options import run_arguments
from .repeat import certify

__all__ = ["calibrate", "render_markdown"]


def calibrate(seeds: list[int], run_options: list[str], out: Path, family_alpha: float,
              progress=print) -> dict:
    """Certify under each master seed (reports under ``out/seed-S``); write ``out/calibration.*``."""
    runs = []
    for k, seed in enumerate(seeds, 1):
        outcome = certify([*run_arguments({"seed": seed, "alpha": family_alpha}), *run_options],
                          out / f"seed-{seed}")
        runs.append({"seed": seed, **outcome})
        progress(f"[{k}/{len(seeds)}] seed {seed}: {outcome['verdict']} ({outcome['wall_time_s']} s)"
                 + (f" — {'; '.join(outcome['not_passed'][:2])}" if outcome["verdict"] != "PASS" else ""))
    from scipy import stats as _scipy_stats

    not_passed = sum(r["verdict"] != "PASS" for r in runs)
    summary = {
        "family_alpha": family_alpha,
        "seeds": len(runs),
        "passed": len(runs) - not_passed,
        "failed": sum(r["verdict"] == "FAIL" for r in runs),
        "not_passed": not_passed,
        # P(this many or more not-PASS runs) if each run fails with probability family_alpha
        "p_value": float(_scipy_stats.binom.sf(not_passed - 1, len(runs), family_alpha)) if runs else 1.0,
        "run_options": run_options,
        "runs": runs,
    }
    atomic_write(out / "calibration.json", json.dumps(summary, indent=2) + "\n")
    atomic_write(out / "calibration.md", render_markdown(summary))
    return summary


def render_markdown(summary: dict) -> str:
    lines = [f"# Calibration: {summary['not_passed']} of {summary['seeds']} master seeds not PASS",
             "", f"Promised family-wise false-fail rate {summary['family_alpha']}; P(at least this many "
             f"| the promise holds) = {summary['p_value']:.3g}. Options: "
             f"`{' '.join(summary['run_options'])}`.", "",
             "| seed | verdict | wall time (s) | items not passed |", "|---|---|---|---|"]
    for r in summary["runs"]:
        lines.append(f"| {r['seed']} | {r['verdict']} | {r['wall_time_s']} | "
                     f"{'; '.join(r['not_passed'][:4]) or '—'} |")
    return "\n".join(lines) + "\n"
