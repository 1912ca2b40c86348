"""Certifying again and again, each time in a child process: what calibration and mutation share.

:func:`certify` runs ``cgeom-verify run`` with the given options (and, for a mutant,
from another source tree) and reads back its certificate; :func:`not_passed` names
the items of a certificate that did not PASS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["certify", "not_passed"]


def certify(run_options: list[str], reports: Path, *, source: Path | None = None) -> dict:
    """One ``cgeom-verify run`` in a child process: its verdict, items not passed, wall time.

    ``source``: a source root put first on ``PYTHONPATH`` and used as the working
    directory, so that its modules shadow the installed ones.
    """
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(source), os.environ.get("PYTHONPATH", "")])
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "cgeom_verify.cli", "run", "--reports", str(reports),
                             *run_options], cwd=source, env=env, capture_output=True, text=True, check=False)
    path = Path(reports) / "certificate.json"
    cert = json.loads(path.read_text()) if path.exists() else None
    crash = (result.stderr or result.stdout).strip().splitlines()[-1:]
    return {
        "verdict": cert["verdict"] if cert else "NO CERTIFICATE",
        "exit_status": result.returncode,
        "wall_time_s": round(time.time() - started, 1),
        "not_passed": not_passed(cert) if cert else crash,
    }


def not_passed(cert: dict) -> list[str]:
    """``claim / kind: item (VERDICT: decisions)`` for every item of ``cert`` that did not PASS."""
    found = []
    for claim in cert["claims"]:
        for item in claim["obligations"] + claim["checks"] + claim["controls"]:
            if item["verdict"] == "PASS":
                continue
            bad = sorted({d["name"] for d in item.get("decisions", []) if not d["passed"]})
            found.append(f"{claim['id']} / {item['kind']}: {item['name']} ({item['verdict']}"
                         + (f": {', '.join(bad[:3])}" if bad else "") + ")")
    return found
