"""The certificate: verdicts and their evidence, as JSON and as Markdown.

Verdicts:

* an item (obligation, check, control) is PASS, FAIL, ERROR (it raised) or
  NOT RUN (collected but no evidence arrived: interrupted, crashed worker);
* a claim is PASS iff all its items are PASS, FAIL if any is FAIL, else INCOMPLETE;
* the certificate is PASS iff every claim is PASS, the run was not interrupted and
  every claim provider loaded; FAIL if any claim failed; INCOMPLETE otherwise.

``selection`` records what was run (claim ids, extra providers, shard), so that a
certificate can be replayed and shard certificates merged (:mod:`.replay`). The
HTML report and the figures are rendered by :mod:`.report`, which also checks every
certificate against the published JSON Schema before writing it.

Files are written atomically (temporary file + ``os.replace``), and a run first
writes an INCOMPLETE placeholder, so a killed run never leaves a PASS behind.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from .registry import ProviderProblem, RegisteredClaim
from .settings import RunConfig

__all__ = [
    "SCHEMA_VERSION",
    "CertificateError",
    "build",
    "placeholder",
    "selection_record",
    "overall_verdict",
    "claim_verdict",
    "load",
    "render_markdown",
    "atomic_write",
    "counts",
    "summary_lines",
    "explain_failure",
]

SCHEMA_VERSION = 2
JSON_NAME = "certificate.json"
MARKDOWN_NAME = "certificate.md"
PINNED = ("torch", "sympy", "numpy", "scipy", "hypothesis", "pytest", "pytest-xdist", "mpmath")


class CertificateError(ValueError):
    """A certificate file that cannot be used: missing, corrupt or of another schema."""


# -- environment ------------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git() -> dict:
    def git(*args):
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None

    try:
        commit = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        commit, status = None, None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def environment(run: RunConfig) -> dict:
    import torch  # here, not at the top: the command line reads certificates without torch

    from .claim import RELATIVE_DISCREPANCY

    device = run.torch_device()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in ("cgeom-verify", *PINNED)},
        "device": {
            "type": device.type,
            "name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model(),
            "torch_threads_per_process": 1,
        },
        "git": _git(),
        "profile": run.profile,
        "master_seed": run.master_seed,
        "family_alpha": run.family_alpha,
        "false_pass_rate": run.false_pass_rate,
        "relative_discrepancy": {"quick": RELATIVE_DISCREPANCY.quick, "full": RELATIVE_DISCREPANCY.full},
        "alpha_split": "Bonferroni: family_alpha (the false-fail rate: P(not PASS) when every claim "
        "holds) / number of checks, then evenly over each check's decisions; a control runs at its "
        "check's level. false_pass_rate is per decision: P(PASS) at its designed discrepancy",
    }


# -- building ---------------------------------------------------------------------------------


def selection_record(*, claims: list[str], providers=(), providers_only: bool = False,
                     shard=None, items: list[str] | None = None) -> dict:
    """What a run certified: enough to replay it, or to merge its shards.

    ``claims`` are the resolved ids of the whole run (all shards); ``shard`` a
    :class:`~cgeom_verify.shard.Shard` or None, with ``items`` every item key of the
    run in canonical order (the split is recomputed from them when merging).
    """
    return {
        "claims": list(claims),
        "providers": list(providers),
        "providers_only": bool(providers_only),
        "shard": None if shard is None else {
            "index": shard.index, "count": shard.count, "items": list(items or []),
        },
    }


def placeholder(run: RunConfig, chosen: dict | None = None) -> dict:
    """What stands on disk while a run is in progress."""
    return {
        "schema_version": SCHEMA_VERSION,
        "verdict": "INCOMPLETE",
        "reason": "run in progress, interrupted or killed",
        "created": datetime.now(UTC).isoformat(),
        "environment": environment(run),
        "selection": chosen or selection_record(claims=[]),
        "claims": [],
        "problems": [],
    }


def claim_verdict(items: list[dict]) -> str:
    """A claim's verdict from its items' verdicts (also used when merging shards)."""
    verdicts = {i["verdict"] for i in items}
    if not items:
        return "INCOMPLETE"
    if "FAIL" in verdicts:
        return "FAIL"
    if verdicts == {"PASS"}:
        return "PASS"
    return "INCOMPLETE"


def build(
    *,
    entries: list[RegisteredClaim],
    problems: tuple[ProviderProblem, ...],
    expected: list[str],
    evidence: dict[str, dict],
    errors: dict[str, str],
    durations: dict[str, float],
    run: RunConfig,
    interrupted: bool,
    collected: bool,
    wall_time_s: float,
    selection: dict | None = None,
) -> dict:
    """Assemble the certificate from static claim data and the evidence that arrived.

    ``expected`` lists the canonical item keys ``<claim id>::<item key>``
    (:func:`.shard.item_keys`) of the run; ``evidence``, ``errors`` and ``durations``
    are keyed the same way.
    """
    chosen = selection or selection_record(claims=[e.claim.id for e in entries])
    by_claim: dict[str, list[tuple[str, str]]] = {}
    for item in expected:
        claim_id, key = item.split("::", 1)  # a claim id holds no ':'
        by_claim.setdefault(claim_id, []).append((item, key))

    claims = []
    for entry in entries:
        claim = entry.claim
        if chosen["shard"] and claim.id not in by_claim:
            continue  # all of this claim's items belong to other shards
        sections: dict[str, list[dict]] = {"obligations": [], "checks": [], "controls": []}
        wall = 0.0
        for item, key in by_claim.get(claim.id, []):
            kind, name = key.split(": ", 1)
            wall += durations.get(item, 0.0)
            if item in evidence:
                record = evidence[item]
            elif item in errors:
                record = {"kind": kind, "name": name, "verdict": "ERROR", "error": errors[item]}
            else:
                record = {"kind": kind, "name": name, "verdict": "NOT RUN"}
            sections[kind + "s"].append(record)
        items = [r for section in sections.values() for r in section]
        claims.append({
            **claim.summary(),
            "source_package": entry.package,
            "module": entry.module,
            "verdict": claim_verdict(items),
            "wall_time_s": wall,
            **sections,
        })

    verdict, reason = overall_verdict(claims, interrupted=interrupted, collected=collected,
                                      problems=bool(problems))
    return {
        "schema_version": SCHEMA_VERSION,
        "verdict": verdict,
        "reason": reason,
        "created": datetime.now(UTC).isoformat(),
        "wall_time_s": wall_time_s,
        "environment": environment(run),
        "selection": chosen,
        "claims": claims,
        "problems": [p.__dict__ for p in problems],
    }


def overall_verdict(claims: list[dict], *, interrupted: bool = False, collected: bool = True,
                    problems: bool = False) -> tuple[str, str]:
    """The certificate's verdict and its reason, from its claims and how the run went."""
    verdicts = {c["verdict"] for c in claims}
    if "FAIL" in verdicts:
        return "FAIL", "a claim failed"
    if interrupted:
        return "INCOMPLETE", "the run was interrupted"
    if not collected or not claims:
        return "INCOMPLETE", "no claim was collected"
    if problems:
        return "INCOMPLETE", "a claim provider could not be loaded"
    if verdicts == {"PASS"}:
        return "PASS", "every obligation proven, every check passed, every control rejected"
    underpowered = any(i.get("verdict") == "UNDERPOWERED" for c in claims for i in c["checks"])
    if underpowered:
        return "INCOMPLETE", "a check missed its designed power or its floor of applicable settings"
    return "INCOMPLETE", "an item errored or did not run"


# -- files ------------------------------------------------------------------------------------


def umask_mode(mode: int) -> int:
    """``mode`` less the process umask: what open() would have given (mkstemp gives 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, umask_mode(0o666))  # reports are for reading: CI artifacts, web servers
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path) -> dict:
    """Read a certificate, refusing corrupt files and other schema versions."""
    path = Path(path)
    try:
        cert = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CertificateError(f"{path}: no such certificate") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CertificateError(f"{path}: not a readable certificate ({exc})") from None
    if not isinstance(cert, dict) or "schema_version" not in cert:
        raise CertificateError(f"{path}: not a certificate (no schema_version)")
    if cert["schema_version"] != SCHEMA_VERSION:
        raise CertificateError(
            f"{path}: schema version {cert['schema_version']!r}, this harness reads {SCHEMA_VERSION}"
        )
    for key, kind in (("verdict", str), ("claims", list), ("environment", dict)):
        if not isinstance(cert.get(key), kind):
            raise CertificateError(f"{path}: field {key!r} missing or malformed")
    return cert


# -- rendering --------------------------------------------------------------------------------


def counts(claim: dict) -> tuple[str, str]:
    checks = claim["checks"] + claim["obligations"]
    passed = sum(i["verdict"] == "PASS" for i in checks)
    rejected = sum(i.get("rejected", False) for i in claim["controls"])
    return f"{passed}/{len(checks)}", f"{rejected}/{len(claim['controls'])}"


REFERENCE_WIDTH = 24


def summary_lines(cert: dict) -> list[str]:
    lines = [f"verdict: {cert['verdict']} ({cert.get('reason', '')})"]
    id_width = max((len(c["id"]) for c in cert["claims"]), default=0)
    for claim in cert["claims"]:
        proven, rejected = counts(claim)
        reference = claim["reference"]
        if len(reference) > REFERENCE_WIDTH:  # the full reference is in the Markdown and HTML
            reference = reference[: REFERENCE_WIDTH - 1] + "…"
        lines.append(
            f"  {claim['verdict']:<10} {claim['id']:<{id_width}} {reference:<{REFERENCE_WIDTH}} "
            f"checks+obligations {proven:>5}  controls rejected {rejected:>5}  "
            f"{claim.get('wall_time_s', 0.0):7.1f}s"
        )
    for problem in cert.get("problems", []):
        lines.append(f"  PROBLEM    {problem['provider']} ({problem['package']}): {problem['message']}")
    return lines


def explain_failure(evidence: dict) -> str:
    """One short paragraph saying why an item's verdict is not PASS."""
    if evidence["kind"] == "obligation":
        bad = [d for d in evidence["derivations"] if not d["proven"]]
        return "\n".join(f"not proven: {d['statement']}; residual {d['residual']}" for d in bad)
    if evidence["kind"] == "control":
        return (f"negative control {evidence['name']!r} was NOT rejected: check "
                f"{evidence['check']!r} passed on the mutant ({evidence['description']})")
    failed = [d for d in evidence["decisions"] if not d["passed"]]
    lines = [f"{len(failed)} of {len(evidence['decisions'])} decisions did not pass "
             f"(false-fail rate per decision {evidence['false_fail_rate_per_decision']:.2e}):"]
    applicable = evidence["applicable"]
    if applicable["inside_assumptions"] < applicable["required"]:
        lines.append(f"  only {applicable['inside_assumptions']} of {applicable['settings']} settings "
                     f"inside the assumptions, {applicable['required']} required")
    for d in failed[:8]:
        setting = evidence["examples"][d["example"]] if d["example"] is not None else None
        lines.append(
            f"  {d['outcome']} {d['name']}: estimate {d['estimate']:.6g} +- {d['standard_error']:.3g}, "
            f"designed {d['designed']:.3g}, achieved detectable {d['detectable']:.3g}, "
            f"target {d['target']:.6g}, interval [{d['interval'][0]:.6g}, {d['interval'][1]:.6g}]"
            + (f", setting {json.dumps(setting['setting'])}, seed {setting['seed']}" if setting else "")
        )
    return "\n".join(lines)


def _fmt(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


LATEX_RELATION = {"==": "=", ">": ">", ">=": r"\geq", "<": "<", "<=": r"\leq"}


def run_scope(cert: dict) -> str:
    """One line saying whether this is a shard, a merge of shards, or a whole run."""
    shard = cert.get("selection", {}).get("shard")
    if shard:
        return (f"Shard {shard['index']}/{shard['count']} of a run of {len(shard['items'])} items: "
                "merge the shards with `cgeom-verify merge` for the certificate.")
    if cert.get("merged_from"):
        return f"Merged from {len(cert['merged_from'])} shard certificates."
    return ""


def power_rows(cert: dict) -> list[dict]:
    """Per check: its decision kinds, the designed discrepancy relative to the target (the
    smallest), the worst achieved/designed ratio (> 1 is UNDERPOWERED) and the N/A fraction."""
    rows = []
    for claim in cert["claims"]:
        for check in claim["checks"]:
            decisions = [d for d in check.get("decisions", []) if d["kind"] not in ("bound", "demonstrate")]
            relative = [d["designed"] / abs(d["target"]) for d in decisions if d["target"]]
            ratios = [d["detectable"] / d["designed"] for d in decisions]
            rows.append({
                "claim": claim["id"], "check": check["name"], "verdict": check["verdict"],
                "kinds": sorted({d["kind"] for d in check.get("decisions", [])}),
                "designed_relative": min(relative) if relative else None,
                "achieved_over_designed": max(ratios) if ratios else None,
                "not_applicable_fraction": check.get("applicable", {}).get("not_applicable_fraction"),
            })
    return rows


def power_table(cert: dict) -> list[str]:
    """The Markdown table of :func:`power_rows`."""
    rows = power_rows(cert)
    if not rows:
        return []
    out = ["### Designed power", "",
           "Per check: the smallest designed discrepancy relative to its target, and the worst "
           "achieved detectable / designed (above 1: UNDERPOWERED). Bounds and exact tests are "
           "listed by kind only.", "",
           "| claim | check | kinds | designed (rel.) | worst achieved / designed | N/A | verdict |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        rel = "—" if r["designed_relative"] is None else f"{r['designed_relative']:.3g}"
        ratio = "—" if r["achieved_over_designed"] is None else f"{r['achieved_over_designed']:.3g}"
        na = "—" if r["not_applicable_fraction"] is None else f"{r['not_applicable_fraction']:.0%}"
        out.append(f"| `{r['claim']}` | {r['check']} | {', '.join(r['kinds'])} | {rel} | {ratio} | {na} | "
                   f"{r['verdict']} |")
    return out + [""]


def audit_lines(cert: dict) -> list[str]:
    """The audit section (``cgeom-verify audit``): which files, in which order, which claims."""
    audit = cert.get("audit")
    if not audit:
        return []
    stated = audit["statement"]
    out = [f"Audit of {len(audit['files'])} embedding file(s) at temperature {audit['temperature']:g}"
           + (f"; trend across them: `{audit['trend']}`." if audit["trend"] else "."),
           f"Stated as: {stated['kind']} model, retrieval claimed as {stated['retrieval']}, "
           f"gap {stated['objective']} by the objective."]
    for k, f in enumerate(audit["files"], 1):
        out.append(f"{k}. `{f['path']}` ({f['pairs']} pairs x {f['dim']} dims, sha256 {f['sha256'][:12]}): "
                   + ", ".join(f"`{c}`" for c in f["claims"]))
    return out


def render_markdown(cert: dict, figures: dict | None = None) -> str:
    """The Markdown report; ``figures`` maps (claim id, item key or None) to
    ``[(title, relative path)]`` of PNG files written beside it (see :mod:`.report`)."""
    figures = figures or {}

    def images(claim_id, key, indent=""):
        return [f"{indent}![{title}]({path})" for title, path in figures.get((claim_id, key), [])]

    env = cert["environment"]
    out = [
        "# cgeom-verify certificate",
        "",
        "*The Geometric Mechanics of Contrastive Representation Learning* (arXiv 2601.19597)",
        "",
        f"**Verdict: {cert['verdict']}** — {cert.get('reason', '')}",
        "",
        f"Profile `{env['profile']}`, master seed `{env['master_seed']}`, device "
        f"{env['device']['type']} ({env['device']['name']}), family-wise false-fail rate "
        f"{env['family_alpha']}, false-pass rate per decision {env['false_pass_rate']}. "
        f"Commit `{env['git']['commit']}`{' (dirty)' if env['git']['dirty'] else ''}. "
        f"Created {cert['created']}. {run_scope(cert)}".rstrip(),
        "",
    ]
    if cert.get("audit"):
        out += ["## Audit", "", *audit_lines(cert), ""]
    if cert["claims"]:
        out += [
            "| claim | reference | verdict | checks + obligations passed | controls rejected | wall time |",
            "|---|---|---|---|---|---|",
        ]
        for claim in cert["claims"]:
            proven, rejected = counts(claim)
            out.append(f"| `{claim['id']}` | {claim['reference']} | **{claim['verdict']}** | "
                       f"{proven} | {rejected} | {claim.get('wall_time_s', 0.0):.1f} s |")
        out.append("")
        out += power_table(cert)
    for problem in cert.get("problems", []):
        out.append(f"- **Provider problem** `{problem['provider']}` ({problem['package']}): "
                   f"{problem['message']}")
    for claim in cert["claims"]:
        out += ["", f"## `{claim['id']}` — {claim['reference']}: {claim['verdict']}", "",
                claim["statement"], ""]
        if claim["assumptions"]:
            out += ["Assumptions: " + "; ".join(claim["assumptions"]) + ".", ""]
        out.append(f"Source: `{claim['module']}` ({claim['source_package']}).")
        out.append("")
        out += [*images(claim["id"], None), ""] if figures.get((claim["id"], None)) else []
        for ob in claim["obligations"]:
            out.append(f"- obligation **{ob['name']}**: {ob['verdict']}")
            for d in ob.get("derivations", []):
                # GitHub's inline math; the residual stays plain SymPy text.
                math = f"{d['lhs_latex']} {LATEX_RELATION[d['relation']]} {d['rhs_latex']}"
                out.append(f"  - {d['statement']}: $`{math}`$ (residual `{d['residual']}`)")
        for ch in claim["checks"]:
            decisions = ch.get("decisions", [])
            out.append(f"- check **{ch['name']}**: {ch['verdict']} — "
                       f"{sum(d['passed'] for d in decisions)}/{len(decisions)} decisions at false-fail "
                       f"rate {_fmt(ch.get('false_fail_rate_per_decision', float('nan')))} each, "
                       f"{len(ch.get('examples', []))} settings")
            worst = sorted(decisions, key=lambda d: (d["passed"], -d["detectable"] / d["designed"]
                                                     if d["designed"] > 0 else 0.0))[:3]
            for d in worst:
                out.append(f"  - {d['name']} ({d['kind']}): {_fmt(d['estimate'])} ± "
                           f"{_fmt(d['standard_error'])} vs {_fmt(d['target'])} (designed "
                           f"{_fmt(d['designed'])}, achieved {_fmt(d['detectable'])}) "
                           f"{'ok' if d['passed'] else d['outcome']}")
            if ch.get("error"):
                out.append(f"  - error: {ch['error']}")
            out += images(claim["id"], f"check: {ch['name']}", "  ")
        for co in claim["controls"]:
            if "rejected" in co:
                state = "rejected" if co["rejected"] else "NOT rejected"
            else:
                state = co["verdict"]
            out.append(f"- control **{co['name']}** (on check *{co.get('check', '?')}*): {state}")
            out += images(claim["id"], f"control: {co['name']}", "  ")
    return "\n".join(out) + "\n"
