"""The pytest plugin (entry point ``pytest11: cgeom_verify``).

Data flow::

    registry (claims) --collect--> ClaimItem per obligation / check / control
        --run on an xdist worker--> evidence JSON in report.user_properties
        --controller--> certificate.json + .md + .html (+ figures/) under --cgeom-reports

The plugin is inert unless the collection anchor (``cgeom_verify/registry.py``) is
among pytest's arguments; ``cgeom-verify run`` and ``nox -s verify`` pass it.

Hooks implemented here, and why:

* ``pytest_addoption`` — the ``--cgeom-*`` options (profile, seed, device, claims,
  alpha, reports directory, shard).
* ``pytest_configure`` — validates them (a bad value is a ``UsageError``: one
  line, no traceback) and pins torch to one thread per process so CPU numbers are
  reproducible; parallelism comes from xdist.
* ``pytest_pycollect_makemodule`` — turns the anchor file into the claim tree.
* ``pytest_collection_finish`` — fixes the Bonferroni share of each check (over the
  whole run when sharded: see :mod:`.shard`).

:class:`CertificateWriter`, registered on the controller only, implements

* ``pytest_sessionstart`` / ``pytest_sessionfinish`` — write an INCOMPLETE
  certificate first and the final one last, so an interrupted or killed run never
  leaves a PASS behind;
* ``pytest_collection_finish`` / ``pytest_xdist_node_collection_finished`` — note
  that collection happened (the controller does not collect under xdist);
* ``pytest_runtest_logreport`` — gathers evidence and errors from every worker.

Items are identified by their canonical key ``<claim id>::<item key>``
(:func:`.shard.item_keys`), carried in each report's ``user_properties``, never by
pytest's node id: the node id depends on the rootdir and on where the package is
installed (a wheel in site-packages lies outside any user's rootdir), the key does
not. The expected items come from the selection, not from what was collected, so an
item that never reports is NOT RUN.
* ``pytest_terminal_summary`` — prints the verdict table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from . import certificate, registry, report
from .claim import Check, Claim, Control, Obligation
from .evidence import check_evidence, control_evidence, obligation_evidence
from .options import RUN_OPTIONS, add_pytest_options, run_config, select_claims
from .settings import ConfigError, RunConfig
from .shard import Shard, check_count, item_keys

ANCHOR = Path(registry.__file__).resolve()
EVIDENCE_KEY = "cgeom_evidence"
ITEM_KEY = "cgeom_item"

_config_key = pytest.StashKey[RunConfig]()
_check_count_key = pytest.StashKey[int]()
_selection_key = pytest.StashKey[list]()
_shard_key = pytest.StashKey["Shard | None"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    add_pytest_options(parser.getgroup("cgeom-verify", "certificate of the paper's claims"))


def _certifying(config: pytest.Config) -> bool:
    return any(Path(str(a).split("::")[0]).resolve() == ANCHOR for a in config.args)


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _values(config: pytest.Config) -> dict:
    return {o.dest: config.getoption(f"cgeom_{o.dest}") for o in RUN_OPTIONS}


def pytest_configure(config: pytest.Config) -> None:
    if not _certifying(config):
        return
    values = _values(config)
    try:
        config.stash[_config_key] = run_config(values)
        config.stash[_shard_key] = Shard.parse(values["shard"])
        config.stash[_selection_key] = list(select_claims(values))
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    torch.set_num_threads(1)
    if not _is_worker(config):
        config.pluginmanager.register(CertificateWriter(config), "cgeom-certificate-writer")


# -- collection ---------------------------------------------------------------------------


def pytest_pycollect_makemodule(module_path: Path, parent):
    if module_path.resolve() == ANCHOR and _config_key in parent.config.stash:
        return RegistryFile.from_parent(parent, path=module_path)
    return None


class RegistryFile(pytest.File):
    """The anchor: yields one collector per selected, registered claim."""

    def collect(self):
        _, selected = self.config.stash[_selection_key]
        for entry in selected:
            yield ClaimCollector.from_parent(self, name=entry.claim.id, claim=entry.claim)


class ClaimCollector(pytest.Collector):
    def __init__(self, *, claim: Claim, **kwargs):
        super().__init__(**kwargs)
        self.claim = claim

    def collect(self):
        shard = self.config.stash.get(_shard_key, None)
        _, selected = self.config.stash[_selection_key]
        in_shard = set(shard.select(item_keys(e.claim for e in selected))) if shard else None
        for target in (*self.claim.obligations, *self.claim.checks, *self.claim.controls):
            if in_shard is None or f"{self.claim.id}::{target.key}" in in_shard:
                yield ClaimItem.from_parent(self, name=target.key, target=target)


class ClaimFailure(Exception):
    """Raised by a ClaimItem whose evidence has verdict FAIL."""


class ClaimItem(pytest.Item):
    def __init__(self, *, target: Obligation | Check | Control, **kwargs):
        super().__init__(**kwargs)
        self.target = target
        # Every report of this item (setup, call, teardown) carries its canonical key.
        self.user_properties.append((ITEM_KEY, f"{target.claim.id}::{target.key}"))

    def _alpha(self) -> float:
        config = self.config.stash[_config_key]
        return config.family_alpha / max(self.config.stash.get(_check_count_key, 1), 1)

    def runtest(self) -> None:
        config = self.config.stash[_config_key]
        if isinstance(self.target, Obligation):
            evidence = obligation_evidence(self.target)
        elif isinstance(self.target, Check):
            evidence = check_evidence(self.target, config, self._alpha())
        else:
            evidence = control_evidence(self.target, config, self._alpha())
        self.user_properties.append((EVIDENCE_KEY, json.dumps(evidence, allow_nan=True)))
        if evidence["verdict"] != "PASS":
            raise ClaimFailure(certificate.explain_failure(evidence))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ClaimFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        # No domain: pytest would print a dotted domain as a Python path ("prop3.1" as "prop3::1").
        return self.path, None, ""


def pytest_collection_finish(session: pytest.Session) -> None:
    # Every process (each xdist worker too) sees the same items, so all agree on the
    # number of checks that share the family-wise budget.
    if _config_key in session.config.stash:
        if session.config.stash.get(_shard_key, None):  # a shard's checks share the whole run's budget
            _, selected = session.config.stash[_selection_key]
            session.config.stash[_check_count_key] = check_count(e.claim for e in selected)
            return
        items = [i for i in session.items if isinstance(i, ClaimItem)]
        session.config.stash[_check_count_key] = sum(isinstance(i.target, Check) for i in items)


# -- controller: evidence and certificate ----------------------------------------------------


class CertificateWriter:
    """Registered on the controller (or the only process) when certifying."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.run = config.stash[_config_key]
        self.reports_dir = Path(config.getoption("cgeom_reports"))
        self.started = time.time()
        self.collected = False
        self.evidence: dict[str, dict] = {}
        self.errors: dict[str, str] = {}
        self.durations: dict[str, float] = {}
        self.certificate: dict | None = None

    def _selection(self) -> dict:
        _, entries = self.config.stash[_selection_key]
        return certificate.selection_record(
            claims=[e.claim.id for e in entries],
            providers=self.config.getoption("cgeom_provider"),
            providers_only=self.config.getoption("cgeom_providers_only"),
            shard=self.config.stash.get(_shard_key, None),
            items=item_keys(e.claim for e in entries),
        )

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        report.write_reports(certificate.placeholder(self.run, self._selection()), self.reports_dir)

    def _expected(self) -> list[str]:
        """The item keys this run (this shard of it) must produce evidence for."""
        _, entries = self.config.stash[_selection_key]
        keys = item_keys(e.claim for e in entries)
        shard = self.config.stash.get(_shard_key, None)
        return shard.select(keys) if shard else keys

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.collected = True

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids) -> None:
        self.collected = True

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        properties = dict(report.user_properties)
        item = properties.get(ITEM_KEY)
        if item is None:  # not a claim item (e.g. a user's own test collected alongside)
            return
        self.durations[item] = self.durations.get(item, 0.0) + report.duration
        if EVIDENCE_KEY in properties:
            self.evidence[item] = json.loads(properties[EVIDENCE_KEY])
        if report.failed and item not in self.evidence:
            crash = getattr(report.longrepr, "reprcrash", None)
            message = crash.message if crash is not None else report.longreprtext.strip()
            self.errors[item] = f"{report.when}: {message.splitlines()[0] if message else 'error'}"

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus) -> None:
        found, entries = self.config.stash[_selection_key]
        cert = certificate.build(
            entries=entries,
            problems=found.problems,
            expected=self._expected(),
            evidence=self.evidence,
            errors=self.errors,
            durations=self.durations,
            run=self.run,
            interrupted=exitstatus in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR),
            collected=self.collected,
            wall_time_s=time.time() - self.started,
            selection=self._selection(),
        )
        report.write_reports(cert, self.reports_dir)
        self.certificate = cert
        if cert["verdict"] != "PASS" and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.certificate is None:
            return
        terminalreporter.section("cgeom-verify certificate")
        for line in certificate.summary_lines(self.certificate):
            terminalreporter.write_line(line)
        terminalreporter.write_line(
            f"written: {self.reports_dir / certificate.JSON_NAME}, "
            f"{self.reports_dir / certificate.MARKDOWN_NAME}, {self.reports_dir / report.HTML_NAME}"
        )
