"""nox sessions: verify (the certificate), nightly, tests, lint, bench, calibration, mutants.

Every session installs exactly the versions pinned in constraints.txt (torch 2.13.0
CPU among them), so a certificate records the versions it was produced with.

    nox -s verify                      # quick profile, all claims, reports/certificate.*
    nox -s verify -- --profile full    # nightly profile; any `cgeom-verify run` option
    nox -s nightly                     # what .github/workflows/nightly.yml runs
    nox -s tests                       # harness tests (what .ci/run calls)
    nox -s calibration                 # the quick certificate over 20 master seeds: how many FAIL
    nox -s mutants                     # mutation score of tests/mutants/*.toml
"""

import glob

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint"]

PYTHON = "3.11"


def install(session: nox.Session, *extra: str) -> None:
    session.install("-c", "constraints.txt", "-e", ".", *extra)


@nox.session(python=PYTHON)
def verify(session: nox.Session) -> None:
    """Certify every registered claim; exits non-zero unless the certificate is PASS."""
    install(session)
    session.run("cgeom-verify", "run", *session.posargs)


@nox.session(python=PYTHON)
def nightly(session: nox.Session) -> None:
    """The nightly certification: the full profile of every claim (on CUDA when present)."""
    install(session)
    session.run("cgeom-verify", "run", "--profile", "full", *session.posargs)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The harness's own tests (statistics, plugin, certificate, report, CLI, kernels)."""
    # PyYAML and check-jsonschema: test_nightly_workflow validates the workflow file;
    # setuptools: test_example_plugin and test_installed build wheels without build isolation.
    install(session, "PyYAML", "check-jsonschema", "setuptools")
    session.run("pytest", "-n", "auto", "tests", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("-c", "constraints.txt", "ruff")
    session.run("ruff", "check", "cgeom_verify", "claims", "tests", "benchmarks", "noxfile.py")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Speed and memory benchmarks; numbers go to reports/benchmarks/*.json."""
    install(session)
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session(python=PYTHON)
def calibration(session: nox.Session) -> None:
    """The quick certificate under 20 master seeds (1001-1020): how many are not PASS."""
    install(session)
    session.run("cgeom-verify", "calibrate", "--seeds", "20", *session.posargs)


@nox.session(python=PYTHON)
def mutants(session: nox.Session) -> None:
    """The mutation score: the quick certificate on each catalogued bug (reports/mutants/score.md)."""
    install(session)
    session.run("cgeom-verify", "mutants", *sorted(glob.glob("tests/mutants/*.toml")), *session.posargs)
