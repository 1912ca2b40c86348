"""The published JSON Schema: shipped with the package, and true of every certificate written.

Every certificate the harness writes goes through :func:`cgeom_verify.report.write_reports`,
which validates it against the schema first, so every certificate this test-suite
produces (test_plugin's included) is checked; here the schema is also checked
explicitly against the varied certificates of a run with every kind of verdict, a
placeholder, shards and a merge, and against broken certificates it must refuse.
"""

import copy
import json
import tomllib
from pathlib import Path

import jsonschema
import pytest
from _certified import certified

from cgeom_verify import certificate, registry, replay
from cgeom_verify.certificate import CertificateError
from cgeom_verify.schema import SCHEMA_FILE, schema, validate
from cgeom_verify.settings import RunConfig

ROOT = Path(__file__).resolve().parent.parent

EVERY_VERDICT = '''
from dataclasses import dataclass, replace
import hypothesis.strategies as st
import sympy
from cgeom_verify import Claim, Derivation, Profiled, stats

@dataclass(frozen=True)
class Subject:
    value: float = 0.0
    crash: bool = False

claim = Claim(id="mixed", reference="Thm 0", statement="s", subject=Subject())
x = sympy.Symbol("x")

@claim.obligation("true")
def true():
    return Derivation("x = x", x, x)

@claim.obligation("false")
def false():
    return Derivation("x > 1", x, 1, ">")

@claim.check("value is zero", settings=st.sampled_from([0.0, 0.5]), examples=Profiled(2, 2))
def zero(run):
    if run.subject.crash:
        raise RuntimeError("boom")
    return [stats.equivalent("v", run.subject.value, 0.1, 0.0, margin=1.0, example=i)
            for i in range(len(run.settings))]

@claim.check("outside", settings=st.just(1), examples=Profiled(1, 1))
def outside(run):
    run.not_applicable("never applies", 0)
    return []

claim.control("not rejected", check=zero, mutant=Subject())
claim.control("crashing", check=zero, mutant=Subject(crash=True))

failing = Claim(id="failing", reference="Thm 1", statement="t", subject=Subject(value=1.0))
failing.check("value is zero too", settings=st.just(0.0), examples=Profiled(1, 1))(zero.func)
'''


def test_schema_is_valid_and_shipped_as_package_data():
    jsonschema.Draft202012Validator.check_schema(schema())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert SCHEMA_FILE in pyproject["tool"]["setuptools"]["package-data"]["cgeom_verify.schema"]
    assert (Path(certificate.__file__).parent / "schema" / SCHEMA_FILE).is_file()


def test_every_kind_of_item_verdict_conforms(pytester):
    pytester.makepyfile(every_verdict=EVERY_VERDICT)
    pytester.runpytest(registry.__file__, "--cgeom-provider=every_verdict", "--cgeom-providers-only",
                       "--cgeom-reports=out", "-p", "no:cacheprovider")
    cert = json.loads((pytester.path / "out" / "certificate.json").read_text())
    validate(cert)  # (write_reports did so too before writing)
    verdicts = {(c["id"], i["name"]): i["verdict"] for c in cert["claims"]
                for s in ("obligations", "checks", "controls") for i in c[s]}
    assert verdicts == {
        ("mixed", "true"): "PASS", ("mixed", "false"): "FAIL", ("mixed", "value is zero"): "PASS",
        ("mixed", "outside"): "NOT APPLICABLE", ("mixed", "not rejected"): "FAIL",
        ("mixed", "crashing"): "ERROR", ("failing", "value is zero too"): "FAIL",
    }
    assert cert["verdict"] == "FAIL"


def test_placeholder_shards_and_merge_conform(tmp_path_factory):
    validate(certificate.placeholder(RunConfig(device="cpu")))
    shards = [certified(tmp_path_factory, f"toy-shard{i}") for i in (1, 2)]  # made once a session
    for path in shards:
        validate(json.loads(path.read_text()), str(path))
    validate(replay.merge([(str(p), replay.load(p)) for p in shards]))


def _valid_certificate():
    evidence = {"kind": "check", "name": "c", "claim": "c1", "check": "c", "false_fail_rate": 0.01,
                "false_fail_rate_per_decision": 0.01, "false_pass_rate": 0.05,
                "relative_discrepancy": 0.1, "check_seed": 3,
                "applicable": {"settings": 1, "inside_assumptions": 1, "required": 1,
                               "not_applicable_fraction": 0.0},
                "examples": [{"setting": {"n": 1}, "seed": 5}],
                "decisions": [{"name": "d", "kind": "equivalent", "estimate": 0.1, "standard_error": 0.2,
                               "target": 0.0, "interval": [-0.4, 0.6], "false_fail_rate": 0.01,
                               "false_pass_rate": 0.05, "p_value": 0.6, "designed": 1.5,
                               "detectable": 1.1, "outcome": "PASS", "passed": True, "example": 0,
                               "note": ""}],
                "records": {"figures": [{"title": "t", "xlabel": "x", "ylabel": "y", "xscale": "log",
                                         "yscale": "linear",
                                         "series": [{"label": "s", "x": [1, 2], "y": [3, 4]}]}]},
                "outside_assumptions": [], "outcome": "PASS", "verdict": "PASS", "wall_time_s": 0.1}
    cert = certificate.placeholder(RunConfig(device="cpu"))
    cert["claims"] = [{"id": "c1", "reference": "Thm 1", "statement": "s", "assumptions": [],
                       "source_package": "p", "module": "m", "verdict": "PASS", "wall_time_s": 0.1,
                       "obligations": [], "checks": [evidence], "controls": []}]
    return cert


def _set(path, value):
    def edit(cert):
        *parents, last = path
        for key in parents:
            cert = cert[key]
        if value is KeyError:
            del cert[last]
        else:
            cert[last] = value
    return edit


CHECK = ("claims", 0, "checks", 0)


@pytest.mark.parametrize("edit, where", [
    (_set(("verdict",), "MAYBE"), "at verdict: 'MAYBE' is not one of"),
    (_set(("environment", "git"), KeyError), "at environment: 'git' is a required property"),
    (_set(("environment", "family_alpha"), 1.5), "at environment/family_alpha: 1.5 is greater"),
    (_set(("claims", 0, "id"), "Thm-1"), "at claims/0/id: 'Thm-1' does not match"),
    (_set((*CHECK, "decisions", 0, "passed"), "yes"), "decisions/0/passed: 'yes' is not of type"),
    (_set((*CHECK, "decisions", 0, "interval"), [0.1]), "decisions/0/interval: [0.1] is too short"),
    (_set((*CHECK, "records", "figures", 0, "xscale"), "loglog"), "figures/0/xscale: 'loglog' is not"),
    (_set((*CHECK, "records", "figures", 0, "series", 0, "lower"), [0.5]),
     "figures/0/series/0: 'upper' is a dependency of 'lower'"),
    (_set((*CHECK, "verdict"), "ERROR"), "at claims/0/checks/0: 'error' is a required property"),
    (_set((*CHECK, "kind"), "control"), "at claims/0/checks/0"),
    (_set(("selection", "shard"), {"index": 1}), "at selection/shard"),
    (_set(("surprise",), 1), "Additional properties are not allowed ('surprise' was unexpected)"),
])
def test_broken_certificates_are_refused_with_the_offending_field(edit, where):
    cert = _valid_certificate()
    validate(cert)
    broken = copy.deepcopy(cert)
    edit(broken)
    with pytest.raises(CertificateError, match="does not conform to the certificate schema") as info:
        validate(broken)
    assert where in str(info.value)
