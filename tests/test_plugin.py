"""End-to-end tests of the pytest plugin: collection, xdist transport, verdicts, safety.

Each test writes small claim providers into a temporary directory and runs the
certification (``pytest cgeom_verify/registry.py --cgeom-provider ...``) on them.
"""

import json
import textwrap

import pytest

from cgeom_verify import registry

ANCHOR = str(registry.__file__)

PROVIDER = textwrap.dedent('''
    from dataclasses import dataclass, replace
    import hypothesis.strategies as st
    import sympy
    import torch
    from cgeom_verify import Claim, Derivation, Profiled, stats

    @dataclass(frozen=True)
    class Sampler:
        shift: float = 0.0
        crash: bool = False

    claim = Claim(id="demo", reference="Thm 0", statement="means are unbiased", subject=Sampler())

    @claim.obligation("algebra")
    def algebra():
        x = sympy.Symbol("x")
        return Derivation("(x+1)^2 expands", (x + 1) ** 2, x**2 + 2 * x + 1)

    @claim.check("mean", settings=st.floats(-1, 1), examples=Profiled(3, 4))
    def mean(run):
        if run.subject.crash:
            raise RuntimeError("boom")
        tests = []
        for i, mu in enumerate(run.settings):
            x = mu + run.subject.shift + torch.randn(2000, generator=run.generator(i), dtype=run.dtype)
            m, se = stats.mean_se(x.numpy())
            tests.append(stats.equivalent("mean", m, se, mu, margin=0.2, example=i))
        return tests

    claim.control("shifted", check=mean, mutant=replace(Sampler(), shift=1.0))
''')


@pytest.fixture
def certify(pytester):
    def run(*args, provider=PROVIDER, name="demo_claims", subprocess=False):
        pytester.makepyfile(**{name: provider})
        argv = [ANCHOR, f"--cgeom-provider={name}", "--cgeom-reports=out", "--cgeom-claims=demo",
                "--cgeom-providers-only", "-p", "no:cacheprovider", *args]
        result = (pytester.runpytest_subprocess if subprocess else pytester.runpytest)(*argv)
        path = pytester.path / "out" / "certificate.json"
        cert = json.loads(path.read_text()) if path.exists() else None
        return result, cert

    return run


def test_passing_claim_gives_pass_certificate(certify):
    result, cert = certify()
    assert result.ret == 0
    assert cert["verdict"] == "PASS"
    (claim,) = cert["claims"]
    assert claim["verdict"] == "PASS" and claim["source_package"] == "(command line)"
    assert claim["obligations"][0]["derivations"][0]["proven"]
    check = claim["checks"][0]
    assert len(check["examples"]) == 3 and all("seed" in e for e in check["examples"])
    assert check["false_fail_rate"] == pytest.approx(0.01)
    assert check["false_fail_rate_per_decision"] == pytest.approx(0.01 / 3)
    assert check["applicable"] == {"settings": 3, "inside_assumptions": 3, "required": 3,
                                   "not_applicable_fraction": 0.0}
    assert all(d["kind"] == "equivalent" and d["detectable"] <= d["designed"] for d in check["decisions"])
    assert claim["controls"][0]["rejected"] is True
    env = cert["environment"]
    assert env["profile"] == "quick" and env["packages"]["torch"] and env["device"]["type"] == "cpu"


def test_same_seed_same_numbers_and_xdist_transport(certify):
    _, serial = certify()
    result, parallel = certify("-n", "2")
    assert result.ret == 0
    assert serial["claims"][0]["checks"] == [
        {**c, "wall_time_s": serial["claims"][0]["checks"][0]["wall_time_s"]}
        for c in parallel["claims"][0]["checks"]
    ]


def test_other_seed_other_settings(certify):
    _, first = certify()
    _, second = certify("--cgeom-seed=7")
    assert first["claims"][0]["checks"][0]["examples"] != second["claims"][0]["checks"][0]["examples"]


def test_wrong_subject_fails_and_unrejected_control_fails(certify):
    broken = PROVIDER.replace("subject=Sampler()", "subject=Sampler(shift=1.0)")
    broken = broken.replace("mutant=replace(Sampler(), shift=1.0)", "mutant=Sampler()")
    result, cert = certify(provider=broken, name="broken_claims")
    assert result.ret == 1
    assert cert["verdict"] == "FAIL"
    claim = cert["claims"][0]
    assert claim["checks"][0]["verdict"] == "FAIL"
    assert claim["controls"][0]["rejected"] is False
    result.stdout.fnmatch_lines(["*decisions did not pass*", "*was NOT rejected*"])


def test_erroring_check_is_never_pass(certify):
    crashing = PROVIDER.replace("subject=Sampler()", "subject=Sampler(crash=True)")
    result, cert = certify(provider=crashing, name="crashing_claims")
    assert result.ret == 1
    assert cert["verdict"] == "INCOMPLETE"
    assert cert["claims"][0]["checks"][0]["verdict"] == "ERROR"
    assert "boom" in cert["claims"][0]["checks"][0]["error"]


def test_killed_run_leaves_incomplete_certificate(certify):
    killer = PROVIDER.replace('raise RuntimeError("boom")', "import os; os._exit(3)")
    killer = killer.replace("subject=Sampler()", "subject=Sampler(crash=True)")
    result, cert = certify(provider=killer, name="killer_claims", subprocess=True)
    assert result.ret != 0
    assert cert["verdict"] == "INCOMPLETE"


def test_interrupted_run_is_incomplete(certify):
    interrupt = PROVIDER.replace('raise RuntimeError("boom")', "raise KeyboardInterrupt")
    interrupt = interrupt.replace("subject=Sampler()", "subject=Sampler(crash=True)")
    # In a subprocess: an in-process KeyboardInterrupt would stop this test session too.
    result, cert = certify(provider=interrupt, name="interrupt_claims", subprocess=True)
    assert result.ret != 0
    assert cert["verdict"] == "INCOMPLETE"


def test_broken_and_duplicate_providers_are_reported_not_fatal(certify, pytester):
    pytester.makepyfile(broken_provider="import does_not_exist\n")
    pytester.makepyfile(dup_provider="from demo_claims import claim as again\n")
    result, cert = certify("--cgeom-provider=broken_provider", "--cgeom-provider=dup_provider")
    assert cert["claims"][0]["verdict"] == "PASS"
    messages = [p["message"] for p in cert["problems"]]
    assert any("No module named 'does_not_exist'" in m for m in messages)
    assert any("duplicate claim id 'demo'" in m for m in messages)
    assert cert["verdict"] == "INCOMPLETE"
    assert result.ret == 1


@pytest.mark.parametrize(
    "option, message",
    [
        ("--cgeom-profile=fast", "unknown profile 'fast'"),
        ("--cgeom-seed=x", "seed must be an integer"),
        ("--cgeom-device=tpu", "unknown device 'tpu'"),
        ("--cgeom-alpha=2", "alpha must lie in (0, 1)"),
        ("--cgeom-claims=demo,nope", "unknown claim id(s): nope"),
    ],
)
def test_bad_options_are_one_line_usage_errors(certify, option, message):
    result, _ = certify(option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()
    assert "Traceback" not in result.stderr.str()


def test_plugin_is_inert_for_ordinary_test_runs(pytester):
    # an ordinary suite keeps its own outcomes (the failure stays a failure) and writes no certificate
    pytester.makepyfile(test_plain="def test_ok():\n    assert 1 + 1 == 2\n\n"
                                   "def test_broken():\n    assert 1 + 1 == 3\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    assert not (pytester.path / "reports").exists()
