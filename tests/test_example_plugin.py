"""Third-party claims as plugins: tests/example_plugin installed like any package.

The example package (and two broken ones written here: one that fails to import, one
that reuses the example's claim id and, sorting after it, is the one refused) are
pip-installed into a directory put on the path of the commands run below, next to
the harness itself installed from its wheel (:mod:`tests._installed`), and the
commands run in an unrelated temporary directory: this is how a third party who
pip-installs the harness and a claim package runs them. The interpreter running the
tests is left untouched, so concurrent tests (and other work on the machine) never
see these claims.
"""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _installed import ROOT, harness_site, run_installed, shared_dir
from filelock import FileLock

EXAMPLE = ROOT / "tests" / "example_plugin"
CLAIM = "example-uniform-variance"

BROKEN = {
    "cgeom-broken-claims": "import a_module_that_does_not_exist\n",
    "cgeom-other-claims": textwrap.dedent(f'''
        from cgeom_verify import Claim
        again = Claim(id="{CLAIM}", reference="copy", statement="the same id twice")
    '''),
}


def _package(root: Path, dist: str, source: str) -> Path:
    module = dist.replace("-", "_")
    (root / dist / module).mkdir(parents=True)
    (root / dist / module / "__init__.py").write_text(source)
    (root / dist / "pyproject.toml").write_text(textwrap.dedent(f'''
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{dist}"
        version = "0.0.1"
        [project.entry-points."cgeom_verify.claims"]
        broken = "{module}"
        [tool.setuptools]
        packages = ["{module}"]
    '''))
    return root / dist


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """pip-install the example and the broken plugins once per session: PYTHONPATH for them."""
    shared = shared_dir(tmp_path_factory.getbasetemp()) / "plugins"
    shared.mkdir(exist_ok=True)
    with FileLock(str(shared) + ".lock"):
        target = shared / "site"
        if not (shared / "installed").exists():
            # built from copies: setuptools writes build/ and *.egg-info beside the sources
            example = shutil.copytree(EXAMPLE, shared / "src" / EXAMPLE.name,
                                      ignore=shutil.ignore_patterns("build", "*.egg-info"))
            sources = [example, *(_package(shared / "src", d, s) for d, s in BROKEN.items())]
            result = subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                 "--no-build-isolation", "--target", str(target), *map(str, sources)],
                capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, result.stdout + result.stderr
            (shared / "installed").write_text("")
    return [target, harness_site(tmp_path_factory.getbasetemp())]


def _python(site, *args, cwd):
    return run_installed(site, *args, cwd=cwd)


def test_list_names_the_plugin_claim_its_package_and_the_broken_plugins(site, tmp_path):
    result = _python(site, "-m", "cgeom_verify.cli", "list", cwd=tmp_path)
    line = next(x for x in result.stdout.splitlines() if x.startswith(CLAIM))
    assert "textbook" in line and "cgeom-example-claims (cgeom_example_claims.uniform)" in line
    assert "cgeom-verify (claims." in result.stdout  # the paper's claims are still all there
    assert ("PROBLEM cgeom_broken_claims (cgeom-broken-claims): import failed: "
            "ModuleNotFoundError: No module named 'a_module_that_does_not_exist'") in result.stderr
    assert (f"PROBLEM cgeom_other_claims (cgeom-other-claims): duplicate claim id "
            f"'{CLAIM}' (already defined in cgeom_example_claims.uniform)") in result.stderr
    assert result.returncode == 1  # a broken plugin is never silent


def test_certificate_includes_the_plugin_claim_and_reports_the_broken_ones(site, tmp_path):
    result = _python(site, "-m", "cgeom_verify.cli", "run", f"--claims={CLAIM}", "--workers=2",
                     "--reports=out", cwd=tmp_path)
    cert = json.loads((tmp_path / "out" / "certificate.json").read_text())
    (claim,) = cert["claims"]
    assert claim["id"] == CLAIM and claim["source_package"] == "cgeom-example-claims"
    # the broken plugins did not take the example claim down ...
    assert claim["verdict"] == "PASS", result.stdout[-3000:]
    assert claim["controls"][0]["rejected"] and claim["checks"][0]["records"]["figures"]
    # ... but the certificate says it is not the whole picture
    assert {p["package"] for p in cert["problems"]} == {"cgeom-broken-claims", "cgeom-other-claims"}
    assert cert["verdict"] == "INCOMPLETE" and result.returncode == 1
    page = (tmp_path / "out" / "certificate.html").read_text()
    assert "package cgeom-example-claims" in page and "Provider problem" in page
