"""Calibration over master seeds and the mutation score, on the toy provider.

Both drive ``cgeom-verify run`` in subprocesses; here they certify the small
``tests.providers.toy_claims`` claim so that each run takes seconds.
"""

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from cgeom_verify import cli

ROOT = Path(__file__).resolve().parent.parent
TOY = ["--provider", "tests.providers.toy_claims", "--providers-only", "--workers", "0", "--device", "cpu"]

CATALOGUE = textwrap.dedent("""
    [[mutant]]
    id = "toy-sampler-shift"
    file = "tests/providers/toy_claims.py"
    find = '''        return mean + self.shift + noise'''
    replace = '''        return mean + self.shift + noise + 0.3'''
    claims = ["toy-mean"]
    why = "a stray offset in the sampler: the mean check must catch it"

    [[mutant]]
    id = "toy-docstring"
    file = "tests/providers/toy_claims.py"
    find = '''A small claim provider'''
    replace = '''A tiny claim provider'''
    claims = ["toy-mean"]
    why = "changes nothing that runs: the score must show it as a survivor"
""")


@pytest.fixture
def toy_root(tmp_path):
    """A source root holding just the toy provider (the harness comes from the environment)."""
    root = tmp_path / "root"
    shutil.copytree(ROOT / "tests" / "providers", root / "tests" / "providers",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_mutation_score_counts_killed_and_surviving_mutants(toy_root, tmp_path, capsys, monkeypatch):
    (tmp_path / "cat.toml").write_text(CATALOGUE)
    monkeypatch.chdir(toy_root)
    status = cli.main(["mutants", str(tmp_path / "cat.toml"), "--root", str(toy_root),
                       "--reports", str(tmp_path / "out"), *TOY])
    summary = json.loads((tmp_path / "out" / "score.json").read_text())
    assert summary["valid"] and summary["baseline"]["verdict"] == "PASS"
    assert {m["id"]: m["killed"] for m in summary["mutants"]} == {"toy-sampler-shift": True,
                                                                  "toy-docstring": False}
    killed = summary["mutants"][0]
    assert killed["verdict"] == "FAIL" and any("sample mean equals mu" in c for c in killed["not_passed"])
    assert status == 1  # a survivor
    assert "**NO**" in (tmp_path / "out" / "score.md").read_text()
    assert "mutation score 1/2" in capsys.readouterr().out


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("find = '''A small", "find = '''the"), "occurs 0 times"),
    (lambda t: t.replace("toy-docstring", "toy-sampler-shift"), "duplicate mutant ids"),
    (lambda t: t.replace('"tests/providers/toy_claims.py"', '"nope.py"', 1), "no file nope.py"),
    (lambda t: "[[mutant]\n", "not a readable mutant catalogue"),
])
def test_bad_catalogues_are_refused_in_one_line(toy_root, tmp_path, capsys, edit, message):
    (tmp_path / "cat.toml").write_text(edit(CATALOGUE))
    status = cli.main(["mutants", str(tmp_path / "cat.toml"), "--root", str(toy_root), *TOY])
    err = capsys.readouterr().err
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_calibration_counts_verdicts_over_seeds(toy_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(toy_root)
    status = cli.main(["calibrate", "--seeds", "3", "--first-seed", "7",
                       "--reports", str(tmp_path / "cal"), *TOY])
    summary = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert [r["seed"] for r in summary["runs"]] == [7, 8, 9]
    assert summary["not_passed"] == 0 and summary["passed"] == 3 and status == 0
    assert json.loads((tmp_path / "cal" / "seed-8" / "certificate.json").read_text())["environment"][
        "master_seed"] == 8
    assert "0 of 3 master seeds not PASS" in (tmp_path / "cal" / "calibration.md").read_text()


def test_the_projects_own_catalogues_apply_to_the_current_source():
    """Every mutant of tests/mutants finds its text exactly once in today's source (a kernel
    rewritten under a mutant leaves it stale: the score would refuse the whole catalogue)."""
    from cgeom_verify import mutation
    from cgeom_verify.registry import discover

    catalogues = sorted((ROOT / "tests" / "mutants").glob("*.toml"))
    mutants = mutation.load_catalogue(catalogues, ROOT)
    assert catalogues and len(mutants) >= 4 * len(catalogues)
    claims = {entry.claim.id for entry in discover().claims}
    assert {c for m in mutants for c in m.claims} <= claims
