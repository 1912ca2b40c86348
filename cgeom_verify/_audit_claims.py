"""Claim provider of ``cgeom-verify audit``: the §5 claims built from the user's files.

``cgeom-verify audit`` validates the files, then runs the certificate machinery (the pytest
plugin) with this module as the only provider; the files, the temperature and the statement
come in the environment variable ``CGEOM_AUDIT`` (JSON ``{"files", "temperature", "statement"}``). For file k
(1-based, in the order given) the claims are ``audit-k-...`` (:func:`cgeom_verify.audit.section5_claims`,
stated as ``statement`` says: trained or random initialisation, recall@1 or rank, gap held or
closing favoured; by default as for a trained CLIP), and with two or more files
``audit-gap-trend`` tests that the gap increases along the series.
"""

from __future__ import annotations

import json
import os

from .audit import Series, audit_specs, section5_claims, trend_claim

ENV = "CGEOM_AUDIT"


def _build() -> dict:
    raw = os.environ.get(ENV)
    if not raw:
        return {}
    spec = json.loads(raw)
    specs = audit_specs(spec["files"], float(spec["temperature"]), spec["statement"])
    found = {}
    for model in specs:
        for key, claim in section5_claims(model, reference="§5 (audit)").items():
            found[f"{model.key.replace('-', '_')}_{key}"] = claim
    if len(specs) > 1:
        found["audit_gap_trend"] = trend_claim(Series(tuple(m.source for m in specs)))
    return found


globals().update(_build())
