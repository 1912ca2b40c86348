"""The certificate from an installed wheel, run from a directory unrelated to the package.

Regression: with the harness installed non-editably, its collection anchor lies
outside pytest's rootdir, pytest's node ids change form, and the certificate came
out INCOMPLETE with no evidence although every item passed. Items are now keyed by
claim and item name, whatever the working directory and the install.
"""

import json
import shutil

import pytest
from _installed import harness_site, run_installed

CLAIMS = ["prop4.1-decomposition", "prop4.2-concavity"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return harness_site(tmp_path_factory.getbasetemp())


def test_harness_imports_from_the_wheel(site, tmp_path):
    result = run_installed([site], "-c", "import cgeom_verify, claims; print(cgeom_verify.__file__); "
                           "print(claims.__file__)", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert all(line.startswith(str(site)) for line in result.stdout.split()), result.stdout


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_the_wheel_ships_and_builds_the_c_kernels(site, tmp_path):
    result = run_installed([site], "-c", "import torch; from cgeom_verify.kernels import particles; "
                           "print(particles.kde_implementation('cpu', torch.float32))", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("C pair loops"), result.stdout + result.stderr


@pytest.mark.parametrize("workers", ["0", "2"])
def test_certificate_from_another_directory_has_every_items_evidence(site, tmp_path, workers):
    result = run_installed([site], "-m", "cgeom_verify.cli", "run", "--claims", ",".join(CLAIMS),
                           "--workers", workers, "--device", "cpu", "--reports", "out", cwd=tmp_path)
    cert = json.loads((tmp_path / "out" / "certificate.json").read_text())
    assert cert["verdict"] == "PASS", result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0
    assert [c["id"] for c in cert["claims"]] == CLAIMS
    for claim in cert["claims"]:
        items = claim["obligations"] + claim["checks"] + claim["controls"]
        assert claim["obligations"] and claim["checks"] and claim["controls"]
        assert all(i["verdict"] == "PASS" for i in items)
        assert all(d["passed"] for c in claim["checks"] for d in c["decisions"])
        assert all(d["proven"] for o in claim["obligations"] for d in o["derivations"])
