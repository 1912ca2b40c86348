"""The claim API: declarations are validated; settings and seeds are deterministic."""

import importlib

import hypothesis.strategies as st
import pytest
import sympy

from cgeom_verify import Claim, Derivation, Profiled
from cgeom_verify.settings import (
    ConfigError,
    RunConfig,
    derive_seed,
    draw_settings,
    setting_to_json,
)


def test_claim_ids_and_names_are_validated():
    with pytest.raises(ValueError, match="lower-case"):
        Claim(id="Bad Id", reference="r", statement="s")
    claim = Claim(id="ok", reference="r", statement="s")

    @claim.check("c", settings=st.just(1), examples=Profiled(1, 1))
    def c(run):
        return []

    with pytest.raises(ValueError, match="duplicate name"):
        claim.obligation("c")(lambda: None)
    other = Claim(id="other", reference="r", statement="s")
    with pytest.raises(ValueError, match="another claim"):
        other.control("m", check=c, mutant=None)


def test_derivation_relations():
    x = sympy.Symbol("x", positive=True)
    assert Derivation("pos", x**2 + 1, 0, ">").discharge()["proven"]
    assert not Derivation("sign unknown", sympy.Symbol("y") , 0, ">").discharge()["proven"]
    integral = sympy.Integral(2 * x, (x, 0, 1))
    record = Derivation("integral", integral, 1).discharge()
    assert record["proven"] and "Integral" in record["lhs"]
    assert not Derivation("wrong", x + 1, x).discharge()["proven"]


def test_profiled_and_run_config():
    assert Profiled(quick=1, full=9)["full"] == 9
    with pytest.raises(KeyError):
        Profiled(1, 2)["nightly"]
    with pytest.raises(ConfigError):
        RunConfig(profile="nightly")
    with pytest.raises(ConfigError):
        RunConfig(master_seed=-3)


def test_settings_and_seeds_are_deterministic():
    strategy = st.tuples(st.integers(2, 256), st.floats(0.02, 1.0))
    assert draw_settings(strategy, 5, 11) == draw_settings(strategy, 5, 11)
    assert draw_settings(strategy, 5, 11) != draw_settings(strategy, 5, 12)
    assert derive_seed(1, "a", {"x": 1}) == derive_seed(1, "a", {"x": 1}) != derive_seed(2, "a", {"x": 1})
    assert 0 <= derive_seed("anything") < 2**63
    with pytest.raises(ValueError):
        setting_to_json(float("nan"))


def test_settings_depend_on_the_seed_alone_not_on_literals_in_local_modules(tmp_path, monkeypatch):
    """Hypothesis harvests number literals from local modules into its draws; an editable
    checkout and a wheel (site-packages: no harvest) would then draw different settings."""
    strategy = st.tuples(st.integers(2, 256), st.floats(0.02, 1.0))
    before = draw_settings(strategy, 200, 11)
    bait = tmp_path / "literal_bait.py"
    bait.write_text("VALUES = (" + ", ".join(f"{0.02 + k / 997:.6f}" for k in range(100))
                    + ", " + ", ".join(str(k) for k in range(101, 256)) + ")\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("literal_bait")
    assert draw_settings(strategy, 200, 11) == before


def test_a_broken_module_does_not_hide_its_siblings(tmp_path, monkeypatch):
    from cgeom_verify import registry

    package = tmp_path / "mixed_provider"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "good.py").write_text(
        "from cgeom_verify import Claim\nok = Claim(id='sibling-ok', reference='r', statement='s')\n"
    )
    (package / "bad.py").write_text("raise RuntimeError('half-written module')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = registry.discover(("mixed_provider",), installed=False)
    assert found.ids() == ["sibling-ok"]
    (problem,) = found.problems
    assert problem.provider == "mixed_provider.bad" and "half-written module" in problem.message


def test_figure_series_lengths_are_checked():
    import torch

    from cgeom_verify.claim import CheckRun

    run = CheckRun(settings=[], seeds=[], check_seed=0, subject=None, profile="quick",
                   device=torch.device("cpu"))
    run.figure("ok", [{"label": "q", "x": [1, 2], "y": [1, 2], "lower": [0, 1], "upper": [2, 3]}],
               xlabel="x", ylabel="y")
    assert run.records["figures"][0]["series"][0]["upper"] == [2, 3]
    for bad, message in (({"yerr": [1]}, "mismatched lengths"),
                         ({"lower": [0], "upper": [2, 3]}, "mismatched lengths"),
                         ({"lower": [0, 1]}, "needs both lower and upper")):
        with pytest.raises(ValueError, match=message):
            run.figure("bad", [{"label": "b", "x": [1, 2], "y": [1, 2], **bad}],
                       xlabel="x", ylabel="y")
    run.figure("empty", [], xlabel="x", ylabel="y")  # a check stopped before any curve
    assert [f["title"] for f in run.records["figures"]] == ["ok"]


def test_explicit_settings_come_first_in_every_profile():
    from cgeom_verify import stats
    from cgeom_verify.evidence import check_evidence

    claim = Claim(id="explicit", reference="r", statement="s")
    seen = []

    @claim.check("c", settings=st.integers(0, 9), examples=Profiled(2, 3), explicit=(-1,))
    def c(run):
        seen.append(list(run.settings))
        return [stats.within_precision("x", 0.0, 0.0, 0.0)]

    for profile, count in (("quick", 3), ("full", 4)):
        evidence = check_evidence(c, RunConfig(profile=profile), 0.01)
        assert seen[-1][0] == -1 and len(seen[-1]) == count == len(evidence["examples"])
        assert evidence["applicable"]["required"] == count and evidence["outcome"] == "PASS"
    with pytest.raises(ValueError, match="min_applicable"):
        claim.check("d", settings=st.just(1), examples=Profiled(1, 1), explicit=(0,),
                    min_applicable=Profiled(3, 3))(lambda run: [])


def test_a_check_stops_at_the_settings_that_settle_it():
    """settings_until_settled: a FAIL on a setting's complete data, or more settings outside the
    assumptions than the floor allows, ends the loop (the verdict cannot be PASS any more);
    the evidence counts only the settings looked at, and says why it stopped."""
    from cgeom_verify import stats
    from cgeom_verify.evidence import check_evidence, control_evidence

    claim = Claim(id="settled", reference="r", statement="s", subject=0.0)
    seen = []

    def decide(run):  # the subject is an offset the decision must find equal to 0
        tests = []
        for i, _setting in run.settings_until_settled(tests, run.decision_false_fail_rate(4)):
            seen.append(i)
            if run.subject == "outside":
                run.not_applicable("the mutant is outside", example=i)
                continue
            tests.append(stats.within_precision("offset = 0", run.subject, 0.0, 0.5, example=i))
        return tests

    check = claim.check("c", settings=st.integers(0, 99), examples=Profiled(4, 4),
                        min_applicable=Profiled(3, 3))(decide)
    passed = check_evidence(check, RunConfig(), 0.01)
    assert seen == [0, 1, 2, 3] and passed["outcome"] == "PASS"
    assert "stopped_early" not in passed["records"] and passed["applicable"]["inside_assumptions"] == 4

    seen.clear()
    wrong = claim.control("offset 1", check=check, mutant=1.0)
    rejected = control_evidence(wrong, RunConfig(), 0.01)
    assert seen == [0] and rejected["rejected"] and rejected["outcome"] == "FAIL"
    assert rejected["records"]["stopped_early"]["settings_run"] == 1
    assert rejected["applicable"] == {"settings": 4, "inside_assumptions": 1, "required": 3,
                                      "not_applicable_fraction": 0.0}

    seen.clear()
    outside = claim.control("outside", check=check, mutant="outside")
    rejected = control_evidence(outside, RunConfig(), 0.01)
    # two settings outside leave at most 2 < 3 inside: no PASS is possible after the second
    assert seen == [0, 1] and rejected["rejected"] and rejected["outcome"] == "NOT APPLICABLE"
    assert "floor" in rejected["records"]["stopped_early"]["reason"]
    assert rejected["applicable"]["inside_assumptions"] == 0


def test_a_check_stops_between_its_own_stages_once_a_decision_fails():
    """A check's own stages (panels, training stages) stop the same way: CheckRun.already_fails
    on the decisions so far, and CheckRun.record_stop says why and how far it got."""
    from cgeom_verify import stats
    from cgeom_verify.claim import ALREADY_FAILS
    from cgeom_verify.evidence import check_evidence, control_evidence

    claim = Claim(id="staged", reference="r", statement="s", subject=0.0)
    stages = []

    def decide(run):
        rate, tests = run.decision_false_fail_rate(3), []
        for k in range(3):
            if k and run.already_fails(tests, rate):
                run.record_stop(stages_run=k)
                break
            stages.append(k)
            tests.append(stats.within_precision(f"stage {k}: offset = 0", run.subject, 0.0, 0.5))
        return tests

    check = claim.check("c", settings=st.just(0), examples=Profiled(1, 1))(decide)
    passed = check_evidence(check, RunConfig(), 0.01)
    assert stages == [0, 1, 2] and passed["outcome"] == "PASS" and "stopped_early" not in passed["records"]

    stages.clear()
    rejected = control_evidence(claim.control("offset 1", check=check, mutant=1.0), RunConfig(), 0.01)
    assert stages == [0] and rejected["rejected"] and rejected["outcome"] == "FAIL"
    assert rejected["records"]["stopped_early"] == {"stages_run": 1, "reason": ALREADY_FAILS}


def test_settings_a_strategy_cannot_draw_do_not_count_as_applicable():
    from cgeom_verify import stats
    from cgeom_verify.evidence import check_evidence

    claim = Claim(id="few", reference="r", statement="s")

    @claim.check("c", settings=st.just(1), examples=Profiled(2, 2))  # one distinct setting
    def c(run):
        return [stats.within_precision("x", 0.0, 0.0, 0.0, example=0)]

    evidence = check_evidence(c, RunConfig(), 0.01)
    assert evidence["applicable"]["settings"] == evidence["applicable"]["inside_assumptions"] == 1
    assert evidence["outcome"] == "UNDERPOWERED"  # 1 < the 2 required
