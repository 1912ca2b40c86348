"""Replay, diff and merge certificates.

* :func:`diff` compares two certificates by claim / item / decision key and lists
  every verdict or number that differs (exact equality: the same code, seeds,
  device and library versions give bit-identical numbers), plus the environment
  differences that could explain them.
* :func:`replay_arguments` turns a certificate into the ``cgeom-verify run``
  arguments that re-run exactly what it records: profile, master seed, alpha,
  device type, claim set, extra providers and shard. ``cgeom-verify replay`` runs
  them and diffs the result against the recorded certificate.
* :func:`merge` joins shard certificates (``--shard i/n``) into the certificate of
  the whole run, refusing shards that are not parts of one run.

Every certificate read here is checked against the published schema first
(:func:`load`); a corrupt, truncated or foreign file is a :class:`CertificateError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from . import certificate, options
from .certificate import CertificateError
from .settings import RunConfig
from .text import clip

__all__ = ["load", "Diff", "diff", "replay_arguments", "merge", "MergeError"]

#: Fields of a decision compared by diff and replay (everything but its name and kind).
DECISION_FIELDS = ("estimate", "standard_error", "target", "interval", "false_fail_rate",
                   "false_pass_rate", "p_value", "designed", "detectable", "outcome", "note")
#: Environment fields that must agree for shards to be parts of one run.
SAME_RUN = (("git", "commit"), ("profile",), ("master_seed",), ("family_alpha",),
            ("false_pass_rate",), ("device", "type"))


class MergeError(CertificateError):
    """Shard certificates that are not the parts of one run."""


def load(path: str | Path) -> dict:
    """Read a certificate and check it against the schema (clear error otherwise)."""
    from .schema import validate

    cert = certificate.load(path)
    validate(cert, str(path))
    return cert


# -- diff ------------------------------------------------------------------------------------


@dataclass
class Diff:
    differences: list[str] = field(default_factory=list)  # verdicts and numbers
    environment: list[str] = field(default_factory=list)  # what could explain them

    @property
    def identical(self) -> bool:
        return not self.differences

    def lines(self, limit: int = 200) -> list[str]:
        out = [f"environment: {e}" for e in self.environment]
        out += self.differences[:limit]
        if len(self.differences) > limit:
            out.append(f"... and {len(self.differences) - limit} more differences")
        out.append("identical verdicts and numbers" if self.identical
                   else f"{len(self.differences)} differences")
        return out


def _same(a, b) -> bool:
    """Exact equality, with NaN equal to NaN (JSON keeps NaN for failed estimates)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _first_difference(a, b, path: str = "") -> str:
    """Where two JSON values first differ, e.g. ``example 0/curve/3: 0.51 -> 0.52``."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(a.keys() | b.keys()):
            if key not in a or key not in b:
                return f"{path}{key}: {'added' if key not in a else 'removed'}"
            if not _same(a[key], b[key]):
                return _first_difference(a[key], b[key], f"{path}{key}/")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if not _same(x, y):
                return _first_difference(x, y, f"{path}{i}/")
    return f"{path.rstrip('/') or 'value'}: {_short(a)} -> {_short(b)}"


def _short(value) -> str:
    return clip(repr(value), 80)


def _decision_keys(decisions: list[dict]) -> dict[str, dict]:
    """Decisions keyed by name and example (and occurrence, for repeated names)."""
    keyed, seen = {}, {}
    for d in decisions:
        base = d["name"] + ("" if d["example"] is None else f" (example {d['example']})")
        seen[base] = seen.get(base, 0) + 1
        keyed[base if seen[base] == 1 else f"{base} #{seen[base]}"] = d
    return keyed


def _items(claim: dict) -> dict[str, dict]:
    return {f"{i['kind']}: {i['name']}": i
            for section in ("obligations", "checks", "controls") for i in claim[section]}


def _diff_item(where: str, a: dict, b: dict, out: list[str]) -> None:
    if a["verdict"] != b["verdict"]:
        out.append(f"{where}: verdict {a['verdict']} -> {b['verdict']}")
    if a.get("error") != b.get("error"):
        out.append(f"{where}: error {_short(a.get('error'))} -> {_short(b.get('error'))}")
    if a["kind"] == "obligation":
        dera, derb = a.get("derivations", []), b.get("derivations", [])
        if len(dera) != len(derb):
            out.append(f"{where}: {len(dera)} -> {len(derb)} derivations")
        for k, (da, db) in enumerate(zip(dera, derb, strict=False)):
            for name in ("lhs", "rhs", "residual", "proven"):
                if da[name] != db[name]:
                    out.append(f"{where} / derivation {k}: {name} {_short(da[name])} -> "
                               f"{_short(db[name])}")
        return
    for name in ("false_fail_rate", "false_fail_rate_per_decision", "check_seed", "rejected"):
        if name in a and name in b and not _same(a[name], b[name]):
            out.append(f"{where}: {name} {_short(a[name])} -> {_short(b[name])}")
    if "examples" in a and "examples" in b and not _same(a["examples"], b["examples"]):
        out.append(f"{where}: settings/seeds differ ("
                   f"{_first_difference(a['examples'], b['examples'])})")
    da, db = _decision_keys(a.get("decisions", [])), _decision_keys(b.get("decisions", []))
    for key in [k for k in da if k not in db]:
        out.append(f"{where} / {key}: decision only in the first")
    for key in [k for k in db if k not in da]:
        out.append(f"{where} / {key}: decision only in the second")
    for key in [k for k in da if k in db]:
        changed = [f"{f} {_short(da[key][f])} -> {_short(db[key][f])}"
                   for f in DECISION_FIELDS if not _same(da[key][f], db[key][f])]
        if changed:
            out.append(f"{where} / {key}: " + "; ".join(changed))
    ra, rb = a.get("records", {}), b.get("records", {})
    if "records" in a and "records" in b and not _same(ra, rb):
        out.append(f"{where}: records differ ({_first_difference(ra, rb)})")


def _environment_changes(a: dict, b: dict) -> list[str]:
    ea, eb = a["environment"], b["environment"]
    out = []
    for path in (*SAME_RUN, ("device", "name"), ("python",), ("git", "dirty")):
        va, vb = ea, eb
        for key in path:
            va, vb = va.get(key), vb.get(key)
        if va != vb:
            out.append(f"{'.'.join(path)} {va} -> {vb}")
    for name in sorted(ea["packages"].keys() | eb["packages"].keys()):
        va, vb = ea["packages"].get(name), eb["packages"].get(name)
        if va != vb:
            out.append(f"{name} {va} -> {vb}")
    return out


def diff(a: dict, b: dict) -> Diff:
    """Every verdict and number that differs between certificates ``a`` and ``b``."""
    result = Diff(environment=_environment_changes(a, b))
    out = result.differences
    if a["verdict"] != b["verdict"]:
        out.append(f"certificate: verdict {a['verdict']} -> {b['verdict']}")
    ca = {c["id"]: c for c in a["claims"]}
    cb = {c["id"]: c for c in b["claims"]}
    out += [f"{cid}: claim only in the first" for cid in ca if cid not in cb]
    out += [f"{cid}: claim only in the second" for cid in cb if cid not in ca]
    for cid in (c for c in ca if c in cb):
        if ca[cid]["verdict"] != cb[cid]["verdict"]:
            out.append(f"{cid}: verdict {ca[cid]['verdict']} -> {cb[cid]['verdict']}")
        ia, ib = _items(ca[cid]), _items(cb[cid])
        out += [f"{cid} / {key}: only in the first" for key in ia if key not in ib]
        out += [f"{cid} / {key}: only in the second" for key in ib if key not in ia]
        for key in (k for k in ia if k in ib):
            _diff_item(f"{cid} / {key}", ia[key], ib[key], out)
    pa = {(p["provider"], p["message"]) for p in a["problems"]}
    pb = {(p["provider"], p["message"]) for p in b["problems"]}
    out += [f"problem only in the first: {p[0]}: {p[1]}" for p in sorted(pa - pb)]
    out += [f"problem only in the second: {p[0]}: {p[1]}" for p in sorted(pb - pa)]
    return result


# -- replay ----------------------------------------------------------------------------------


def replay_arguments(cert: dict, reports: str) -> list[str]:
    """The ``cgeom-verify run`` arguments that re-run what ``cert`` records."""
    env, chosen = cert["environment"], cert["selection"]
    if not chosen["claims"]:
        raise CertificateError("nothing to replay: the certificate records no claim "
                               f"(verdict {cert['verdict']}: {cert['reason']})")
    if env["false_pass_rate"] != RunConfig().false_pass_rate:
        raise CertificateError(f"cannot replay false-pass rate {env['false_pass_rate']}: "
                               "the command line has no option for it")
    values = {"profile": env["profile"], "seed": env["master_seed"], "alpha": repr(env["family_alpha"]),
              "device": env["device"]["type"], "claims": ",".join(chosen["claims"]),
              "reports": reports, "provider": chosen["providers"],
              "providers_only": chosen["providers_only"]}
    if chosen["shard"]:
        values["shard"] = f"{chosen['shard']['index']}/{chosen['shard']['count']}"
    return ["run", *options.run_arguments(values)]


# -- merge -----------------------------------------------------------------------------------


def _env_value(cert: dict, path: tuple[str, ...]):
    value = cert["environment"]
    for key in path:
        value = value[key]
    return value


def _check_parts(shards: list[tuple[str, dict]]) -> int:
    """Refuse shard certificates that are not the n parts of one run; return n."""
    for name, cert in shards:
        if not cert["selection"]["shard"]:
            raise MergeError(f"{name}: not a shard certificate (run with --shard i/n)")
    first_name, first = shards[0]
    for name, cert in shards[1:]:
        for path in SAME_RUN:
            va, vb = _env_value(first, path), _env_value(cert, path)
            if va != vb:
                raise MergeError(f"{name}: {'.'.join(path)} {vb!r} differs from {first_name}'s "
                                 f"{va!r}: shards must come from one run")
        sa, sb = first["selection"], cert["selection"]
        for key in ("claims", "providers", "providers_only"):
            if sa[key] != sb[key]:
                raise MergeError(f"{name}: {key} differ from {first_name}'s: shards must come "
                                 "from one run")
        if (sa["shard"]["count"], sa["shard"]["items"]) != (sb["shard"]["count"], sb["shard"]["items"]):
            raise MergeError(f"{name}: split {sb['shard']['index']}/{sb['shard']['count']} is not "
                             f"of the same item list as {first_name}'s "
                             f"{sa['shard']['index']}/{sa['shard']['count']}")
    count = first["selection"]["shard"]["count"]
    indices: dict[int, str] = {}
    for name, cert in shards:
        index = cert["selection"]["shard"]["index"]
        if index in indices:
            raise MergeError(f"{name}: shard {index}/{count} given twice (also {indices[index]})")
        indices[index] = name
    missing = sorted(set(range(1, count + 1)) - indices.keys())
    if missing:
        raise MergeError(f"missing shard(s) {', '.join(f'{i}/{count}' for i in missing)}")
    return count


def merge(shards: list[tuple[str, dict]]) -> dict:
    """Join the certificates of shards 1/n .. n/n (``(name, certificate)`` pairs) into one.

    Refused (:class:`MergeError`): a non-shard certificate, shards from different
    commits, profiles, master seeds, alphas, device types or claim sets, a shard
    given twice, a missing shard, an item found in a shard it does not belong to.
    An item that no shard reported (a shard was killed) is NOT RUN in the result.
    """
    if not shards:
        raise MergeError("no shard certificate given")
    count = _check_parts(shards)
    first = shards[0][1]
    keys = first["selection"]["shard"]["items"]
    owner = {key: position % count + 1 for position, key in enumerate(keys)}
    records: dict[str, dict] = {}
    claims_static: dict[str, dict] = {}
    walls: dict[str, float] = {}
    for name, cert in shards:
        index = cert["selection"]["shard"]["index"]
        for claim in cert["claims"]:
            claims_static.setdefault(claim["id"], claim)
            walls[claim["id"]] = walls.get(claim["id"], 0.0) + claim["wall_time_s"]
            for section in ("obligations", "checks", "controls"):
                for item in claim[section]:
                    key = f"{claim['id']}::{item['kind']}: {item['name']}"
                    if owner.get(key) != index:
                        raise MergeError(f"{name}: item {key!r} does not belong to shard "
                                         f"{index}/{count} (overlapping or foreign shard)")
                    records[key] = item
    claims = []
    for cid in first["selection"]["claims"]:
        static = claims_static.get(cid)
        if static is None:  # every shard holding this claim's items was killed before writing
            static = {"id": cid, "reference": "?", "statement": "(not recorded: its shards did "
                      "not finish)", "assumptions": [], "source_package": "?", "module": "?"}
        sections: dict[str, list] = {"obligations": [], "checks": [], "controls": []}
        for key in (k for k in keys if k.split("::", 1)[0] == cid):
            kind, item_name = key.split("::", 1)[1].split(": ", 1)
            sections[kind + "s"].append(records.get(key) or
                                        {"kind": kind, "name": item_name, "verdict": "NOT RUN"})
        items = [i for s in sections.values() for i in s]
        claims.append({**{k: static[k] for k in ("id", "reference", "statement", "assumptions",
                                                 "source_package", "module")},
                       "verdict": certificate.claim_verdict(items),
                       "wall_time_s": walls.get(cid, 0.0), **sections})
    problems = []
    for _, cert in shards:
        problems += [p for p in cert["problems"] if p not in problems]
    verdict, reason = certificate.overall_verdict(claims, problems=bool(problems))
    unfinished = [c for _, c in shards if c["verdict"] == "INCOMPLETE"]
    if verdict == "PASS" and unfinished:  # e.g. a shard interrupted after its last item
        verdict, reason = "INCOMPLETE", f"a shard is INCOMPLETE: {unfinished[0]['reason']}"
    by_index = sorted(shards, key=lambda s: s[1]["selection"]["shard"]["index"])
    return {
        "schema_version": certificate.SCHEMA_VERSION,
        "verdict": verdict,
        "reason": reason,
        "created": datetime.now(UTC).isoformat(),
        "wall_time_s": max((c.get("wall_time_s", 0.0) for _, c in shards), default=0.0),
        "environment": {**first["environment"], "git": {
            "commit": first["environment"]["git"]["commit"],
            "dirty": _any_dirty(c for _, c in shards)}},
        "selection": {**first["selection"], "shard": None},
        "claims": claims,
        "problems": problems,
        "merged_from": [{
            "shard": f"{c['selection']['shard']['index']}/{count}",
            "verdict": c["verdict"], "reason": c["reason"], "created": c["created"],
            "wall_time_s": c.get("wall_time_s"), "device": c["environment"]["device"]["name"],
        } for _, c in by_index],
    }


def _any_dirty(certs) -> bool | None:
    flags = [c["environment"]["git"]["dirty"] for c in certs]
    return True if any(flags) else (None if None in flags else False)
