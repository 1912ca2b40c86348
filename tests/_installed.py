"""The harness as a user installs it: its wheel, built once per test session.

A wheel (not an editable install) puts ``cgeom_verify`` and the paper's ``claims``
in a site directory of their own, outside any user's working directory, which is
how a third party who pip-installs the harness runs it. Built once per session and
shared by all xdist workers through a file lock, like :mod:`_certified`.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from filelock import FileLock

ROOT = Path(__file__).resolve().parent.parent
#: what the wheel is built from (pyproject.toml's packages and readme)
PACKAGE_FILES = ("pyproject.toml", "README.md", "cgeom_verify", "claims")
COPY_OPTIONS = {shutil.copytree: {"ignore": shutil.ignore_patterns("__pycache__", "*.egg-info")}}


def _pip(*argv: str, cwd: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "--quiet", *argv], cwd=cwd,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def shared_dir(base: Path) -> Path:
    """The directory every xdist worker of this session shares."""
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def harness_site(base: Path) -> Path:
    """A ``--target`` directory holding the harness installed from its built wheel."""
    root = shared_dir(base) / "installed-harness"
    root.mkdir(exist_ok=True)
    with FileLock(str(root) + ".lock"):
        site = root / "site"
        if not (root / "done").exists():
            # built from a copy: setuptools writes build/ and *.egg-info beside the sources
            source = root / "src"
            source.mkdir(exist_ok=True)
            for name in PACKAGE_FILES:
                copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
                copy(ROOT / name, source / name, **COPY_OPTIONS.get(copy, {}))
            # no build isolation: the test environment has setuptools and no network is needed
            _pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", "wheels", str(source),
                 cwd=root)
            _pip("install", "--no-deps", "--target", str(site), *map(str, (root / "wheels").glob("*.whl")),
                 cwd=root)
            (root / "done").write_text("")
    return site


def run_installed(paths: list[Path], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python *args`` in ``cwd`` with only ``paths`` in front of the interpreter's own packages.

    The source tree is not on the path: every harness module comes from the wheel.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, paths))}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
