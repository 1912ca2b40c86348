"""Turn obligations, checks and controls into evidence: plain JSON records.

Evidence is what travels from an xdist worker to the controller and what the
certificate stores. Each record has a ``verdict``:

* obligation: ``PASS`` iff every derivation is proven by SymPy;
* check: ``FAIL`` if any decision fails; ``NOT APPLICABLE`` if every setting was
  outside the claim's assumptions (no decision at all); ``UNDERPOWERED`` if a
  decision missed its designed power or fewer settings than the check's
  ``min_applicable`` were inside the assumptions; else ``PASS``;
* control: ``PASS`` iff the check, run on the mutant, does not PASS (the mutant is
  rejected), with the reason: it failed, it was outside the assumptions, or the
  check's design did not hold for it (underpowered).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from .claim import Check, CheckRun, Control, Derivation, Obligation
from .settings import RunConfig, derive_seed, draw_settings, setting_to_json
from .stats import Test

__all__ = ["obligation_evidence", "check_evidence", "control_evidence", "CheckError"]


class CheckError(RuntimeError):
    """A claim module returned something the harness cannot decide."""


def obligation_evidence(obligation: Obligation) -> dict:
    started = time.perf_counter()
    result = obligation.func()
    derivations = [result] if isinstance(result, Derivation) else list(result)
    if not derivations or not all(isinstance(d, Derivation) for d in derivations):
        raise CheckError(f"obligation {obligation.name!r} must return Derivation objects")
    discharged = [d.discharge() for d in derivations]
    return {
        "kind": "obligation",
        "claim": obligation.claim.id,
        "name": obligation.name,
        "derivations": discharged,
        "verdict": "PASS" if all(d["proven"] for d in discharged) else "FAIL",
        "wall_time_s": time.perf_counter() - started,
    }


def _run_check(check: Check, subject, config: RunConfig, alpha: float) -> dict:
    started = time.perf_counter()
    claim_id = check.claim.id
    settings = [*check.explicit, *draw_settings(
        check.settings, check.examples[config.profile],
        derive_seed(config.master_seed, claim_id, check.name, "settings"))]
    settings_json = [setting_to_json(s) for s in settings]
    seeds = [derive_seed(config.master_seed, claim_id, check.name, s) for s in settings_json]
    run = CheckRun(
        settings=settings,
        seeds=seeds,
        check_seed=derive_seed(config.master_seed, claim_id, check.name),
        subject=subject,
        profile=config.profile,
        device=config.torch_device(),
        false_fail_rate=alpha,
        false_pass_rate=config.false_pass_rate,
        min_applicable=check.min_applicable[config.profile],
    )
    tests = check.func(run)
    if not isinstance(tests, Sequence) or not all(isinstance(t, Test) for t in tests):
        raise CheckError(f"check {check.name!r} must return a list of stats.Test")
    if not tests and not run.outside_assumptions:
        raise CheckError(f"check {check.name!r} returned no test and no not-applicable record")
    # Bonferroni within the check: its share of the family budget, split evenly.
    per_test = run.decision_false_fail_rate(len(tests))
    decisions = [t.decide(per_test, config.false_pass_rate).to_json() for t in tests]
    # Settings a strategy did not draw, or a check that stopped early did not reach, are not
    # inside the assumptions: only those looked at count towards the floor.
    ran = len(settings) if run.settings_run is None else run.settings_run
    outside = {r["example"] for r in run.outside_assumptions}
    applicable = 0 if None in outside else ran - len(outside)
    floor = run.min_applicable
    return {
        "claim": claim_id,
        "check": check.name,
        "false_fail_rate": alpha,
        "false_fail_rate_per_decision": per_test,
        "false_pass_rate": config.false_pass_rate,
        "relative_discrepancy": run.relative_discrepancy,
        "applicable": {"settings": len(settings), "inside_assumptions": applicable,
                       "required": floor,
                       "not_applicable_fraction": (ran - applicable) / ran if ran else 0.0},
        "check_seed": run.check_seed,
        "examples": [{"setting": s, "seed": seed} for s, seed in zip(settings_json, seeds, strict=True)],
        "decisions": decisions,
        "records": run.records,
        "outside_assumptions": run.outside_assumptions,
        "outcome": _outcome(decisions, applicable, floor),
        "wall_time_s": time.perf_counter() - started,
    }


def _outcome(decisions: list[dict], applicable: int, floor: int) -> str:
    outcomes = {d["outcome"] for d in decisions}
    if "FAIL" in outcomes:
        return "FAIL"
    if not decisions:
        return "NOT APPLICABLE"
    if "UNDERPOWERED" in outcomes or applicable < floor:
        return "UNDERPOWERED"
    return "PASS"


def check_evidence(check: Check, config: RunConfig, alpha: float) -> dict:
    result = _run_check(check, check.claim.subject, config, alpha)
    return {"kind": "check", "name": check.name, **result, "verdict": result["outcome"]}


def control_evidence(control: Control, config: RunConfig, alpha: float) -> dict:
    """A mutant is rejected when its check FAILS or finds it outside the assumptions."""
    result = _run_check(control.check, control.mutant, config, alpha)
    rejected = result["outcome"] != "PASS"
    return {
        "kind": "control",
        **result,
        "name": control.name,
        "description": control.description,
        "rejected": rejected,
        "rejected_because": {"FAIL": "check failed", "NOT APPLICABLE": "outside the assumptions",
                             "UNDERPOWERED": "the check's design does not hold for the mutant",
                             "PASS": None}[result["outcome"]],
        "verdict": "PASS" if rejected else "FAIL",
    }
