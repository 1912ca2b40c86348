"""Certificate files: verdict logic, atomic writes, and refusal of bad files."""

import json

import pytest

from cgeom_verify import certificate
from cgeom_verify.claim import Claim
from cgeom_verify.registry import ProviderProblem, RegisteredClaim
from cgeom_verify.settings import RunConfig

RUN = RunConfig(device="cpu")
NODE = "c1::"  # canonical item keys: <claim id>::<item key>


def _build(evidence=None, errors=None, expected=None, problems=(), interrupted=False):
    entry = RegisteredClaim(Claim(id="c1", reference="Thm 1", statement="s"), "m", "pkg")
    expected = expected if expected is not None else [NODE + "check: a", NODE + "control: b"]
    return certificate.build(
        entries=[entry], problems=problems, expected=expected, evidence=evidence or {},
        errors=errors or {}, durations={}, run=RUN, interrupted=interrupted,
        collected=True, wall_time_s=1.0,
    )


PASSING = {
    NODE + "check: a": {"kind": "check", "name": "a", "verdict": "PASS", "decisions": []},
    NODE + "control: b": {"kind": "control", "name": "b", "verdict": "PASS", "rejected": True},
}


def test_verdicts():
    assert _build(PASSING)["verdict"] == "PASS"
    failing = {**PASSING, NODE + "check: a": {**PASSING[NODE + "check: a"], "verdict": "FAIL"}}
    assert _build(failing)["verdict"] == "FAIL"
    missing = {NODE + "check: a": PASSING[NODE + "check: a"]}
    cert = _build(missing)
    assert cert["verdict"] == "INCOMPLETE" and cert["claims"][0]["controls"][0]["verdict"] == "NOT RUN"
    assert _build(PASSING, interrupted=True)["verdict"] == "INCOMPLETE"
    problem = ProviderProblem("x", "y", "import failed")
    assert _build(PASSING, problems=(problem,))["verdict"] == "INCOMPLETE"
    errored = _build(missing, errors={NODE + "control: b": "call: boom"})
    assert errored["verdict"] == "INCOMPLETE"
    assert errored["claims"][0]["controls"][0] == {"kind": "control", "name": "b",
                                                    "verdict": "ERROR", "error": "call: boom"}


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such certificate"),
        ("{not json", "not a readable certificate"),
        ('{"schema_version": 2, "verdict": "PA', "not a readable certificate"),
        ("[1, 2]", "no schema_version"),
        ('{"schema_version": 99, "verdict": "PASS", "claims": [], "environment": {}}',
         "schema version 99"),
        ('{"schema_version": 1, "verdict": "PASS", "claims": [], "environment": {}}',
         "schema version 1"),
        ('{"schema_version": 2, "verdict": "PASS", "claims": {}, "environment": {}}',
         "field 'claims' missing or malformed"),
    ],
)
def test_bad_certificate_files_are_refused_clearly(tmp_path, content, message):
    path = tmp_path / "c.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(certificate.CertificateError, match=message.replace("(", r"\(")):
        certificate.load(path)


def test_placeholder_is_incomplete():
    cert = certificate.placeholder(RUN)
    assert cert["verdict"] == "INCOMPLETE"
    json.dumps(cert)
