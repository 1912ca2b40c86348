"""The nightly workflow file: YAML syntax, GitHub's workflow schema, and what the job does.

The schema check uses the GitHub-workflow schema that ``check-jsonschema`` vendors from
SchemaStore (installed by ``nox -s tests``); without it that one test is skipped.
"""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "nightly.yml"
CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")
CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))


@pytest.fixture(scope="module")
def workflow():
    data = yaml.safe_load(WORKFLOW.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def _steps(workflow):
    (job,) = workflow["jobs"].values()
    return job, job["steps"]


def test_runs_every_night_and_on_demand(workflow):
    (schedule,) = workflow["on"]["schedule"]
    fields = schedule["cron"].split()
    assert len(fields) == 5
    for field, (lo, hi) in zip(fields, CRON_RANGES, strict=True):
        assert CRON_FIELD.match(field), field
        assert all(lo <= int(n) <= hi for n in re.findall(r"\d+", field.split("/")[0])), field
    assert "workflow_dispatch" in workflow["on"]


def test_certifies_the_full_profile_on_the_configured_runner(workflow):
    job, steps = _steps(workflow)
    assert "vars.CGEOM_GPU_RUNNER" in job["runs-on"] and "ubuntu-latest" in job["runs-on"]
    scripts = "\n".join(s.get("run", "") for s in steps)
    assert "nox -s nightly" in scripts
    noxfile = (ROOT / "noxfile.py").read_text()
    nightly = noxfile[noxfile.index("def nightly"):]
    assert '"--profile", "full"' in nightly.split("\n\n")[0]


def test_uploads_reports_and_fails_unless_pass(workflow):
    _, steps = _steps(workflow)
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["with"]["path"] == "reports/" and upload["if"] == "${{ always() }}"
    verdict = next(s for s in steps if s.get("name") == "Verdict")
    assert "sys.exit(v != 'PASS')" in verdict["run"]


def _validate(path):
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
         str(path)], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(importlib.util.find_spec("check_jsonschema") is None,
                    reason="check-jsonschema is not installed (nox -s tests installs it)")
def test_conforms_to_the_github_workflow_schema(tmp_path):
    result = _validate(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.yml"  # the validator does reject a wrong workflow
    broken.write_text(WORKFLOW.read_text().replace("    runs-on:", "    run-on:"))
    assert _validate(broken).returncode != 0
