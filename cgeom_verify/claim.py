"""The claim API: what a theorem module declares.

A claim module builds one :class:`Claim` per statement of the paper and attaches
three kinds of evidence producers to it::

    consistency = Claim(
        id="thm3.1-value",
        reference="Thm 3.1",
        statement="L_N - log(N V_kappa(tau)) -> J_tau as N -> infinity.",
        assumptions=("negatives i.i.d. from q",),
        subject=InfoNCE(),            # the implementation the theorem speaks about
    )

    @consistency.obligation("the gradient formula differentiates the log-partition")
    def gradient_formula():
        return Derivation("d/dx log V_d = A_d", lhs, rhs)

    @consistency.check("N-scaled bias -> -c/2", settings=vmf_settings(),
                       examples=Profiled(quick=3, full=12), min_applicable=Profiled(3, 10))
    def scaled_bias(run):
        ...                            # batched torch Monte Carlo
        margin = stats.relative_margin(c / 2, run.relative_discrepancy)
        return [stats.equivalent("intercept", a, se, -c / 2, margin=margin, example=i)]

    consistency.control("wrong kernel volume", check=scaled_bias,
                        mutant=replace(InfoNCE(), volume_temperature_factor=2.0))

* An **obligation** returns :class:`Derivation` objects; the harness simplifies
  ``lhs - rhs`` with SymPy and records both expressions.
* A **check** receives a :class:`CheckRun` (the Hypothesis-drawn settings, a seed per
  setting, the device, the profile, the subject and the design: the check's share
  of the false-fail budget, the false-pass rate and the relative discrepancy every
  decision must resolve) and returns :class:`~cgeom_verify.stats.Test` objects, each
  with its designed discrepancy; the harness decides them at the check's share of
  the family-wise budget. Fewer applicable settings than the check's
  ``min_applicable`` is not a PASS.
* A **control** runs a check on a mutant subject; it is *rejected*, as it must be,
  when that check FAILS.

Any importable module can define claims; see :mod:`cgeom_verify.registry` for how
packages register them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sympy
import torch
from hypothesis.strategies import SearchStrategy

from . import stats
from .stats import Test

__all__ = ["Claim", "Derivation", "Profiled", "CheckRun", "Obligation", "Check", "Control"]

_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.,:;'()\[\]/+\-=<>^*|]*$")


#: Why a check stopped early when :meth:`CheckRun.already_fails`.
ALREADY_FAILS = "a decision on the work done so far already FAILs at its false-fail rate"


@dataclass(frozen=True)
class Profiled:
    """A value that depends on the run profile: ``quick`` for CI, ``full`` for nightly."""

    quick: Any
    full: Any

    def __getitem__(self, profile: str) -> Any:
        if profile not in ("quick", "full"):
            raise KeyError(f"unknown profile {profile!r}")
        return getattr(self, profile)


@dataclass(frozen=True)
class Derivation:
    """One symbolic statement ``lhs <relation> rhs``, discharged by SymPy.

    ``relation`` is ``"=="`` (``simplify(lhs - rhs) == 0``), or ``">"``, ``">="``,
    ``"<"``, ``"<="`` (the sign of ``simplify(lhs - rhs)`` decided by SymPy's
    assumptions; undecided counts as not proven).
    """

    statement: str
    lhs: sympy.Expr
    rhs: sympy.Expr
    relation: str = "=="

    def discharge(self) -> dict:
        # doit() evaluates Integral/Derivative/Limit objects kept unevaluated for printing.
        residual = sympy.simplify((sympy.sympify(self.lhs) - sympy.sympify(self.rhs)).doit())
        test = {
            "==": lambda r: r == 0,
            ">": lambda r: r.is_positive,
            ">=": lambda r: r.is_nonnegative,
            "<": lambda r: r.is_negative,
            "<=": lambda r: r.is_nonpositive,
        }[self.relation]
        proven = bool(test(residual))
        return {
            "statement": self.statement,
            "relation": self.relation,
            "lhs": str(self.lhs),
            "rhs": str(self.rhs),
            "lhs_latex": sympy.latex(self.lhs),
            "rhs_latex": sympy.latex(self.rhs),
            "residual": str(residual),
            "proven": proven,
        }


#: The discrepancy every decision must resolve, relative to its target, unless the
#: claim states why another size is the meaningful one (issue: designed power).
RELATIVE_DISCREPANCY = Profiled(quick=0.10, full=0.03)


@dataclass
class CheckRun:
    """What a numeric check works with: settings, seeds, device, profile, subject and design.

    The design is fixed before any sample is drawn: ``false_fail_rate`` is the
    check's share of the certificate's family-wise budget (split evenly over its
    decisions: :meth:`decision_false_fail_rate`), ``false_pass_rate`` the
    probability a decision may pass an error of its designed size, and
    ``relative_discrepancy`` that size relative to the target (10 % quick, 3 % full).
    Sample sizes come from these through :func:`~cgeom_verify.stats.min_num_samples`.
    """

    settings: list
    seeds: list[int]
    check_seed: int
    subject: Any
    profile: str
    device: torch.device
    dtype: torch.dtype = torch.float64
    false_fail_rate: float = 0.01
    false_pass_rate: float = 0.05
    #: the fewest settings inside the assumptions a PASS needs (the check's min_applicable).
    min_applicable: int = 1
    #: free-form numbers a check wants in the certificate (tables, reproductions).
    records: dict = field(default_factory=dict)
    #: settings found outside the claim's assumptions: recorded, never counted as a pass.
    outside_assumptions: list = field(default_factory=list)
    #: how many settings the check went through before it stopped early (None: all of them).
    settings_run: int | None = None

    def pick(self, value: Profiled | Any) -> Any:
        """The profile's value of a :class:`Profiled`, or ``value`` itself."""
        return value[self.profile] if isinstance(value, Profiled) else value

    @property
    def relative_discrepancy(self) -> float:
        return RELATIVE_DISCREPANCY[self.profile]

    def decision_false_fail_rate(self, decisions: int) -> float:
        """Each decision's false-fail rate when the check returns ``decisions`` tests."""
        return self.false_fail_rate / max(int(decisions), 1)

    def settings_until_settled(self, tests: list, rate: float):
        """``(i, setting)`` for each setting in order, until the check can no longer PASS
        whatever the settings left would show: a decision in ``tests`` (the list the loop
        appends each setting's decisions to, each on its setting's complete data) already FAILs
        at ``rate``, their designed per-decision false-fail rate (a rejection is valid at any
        power: :func:`stats.rejects`), or more settings are outside the assumptions than
        ``min_applicable`` allows. A negative control's mutant is then rejected at the first
        settings that show it, not after all of them. A stop is recorded (``stopped_early``)."""
        for i, setting in enumerate(self.settings):
            if i:
                outside = {r["example"] for r in self.outside_assumptions}
                if self.already_fails(tests, rate):
                    reason = ALREADY_FAILS
                elif None in outside or len(self.settings) - len(outside) < self.min_applicable:
                    reason = ("more settings are outside the assumptions than the check's floor "
                              f"({self.min_applicable} inside) allows")
                else:
                    reason = None
                if reason:
                    self.settings_run = i
                    self.record_stop(reason, settings_run=i, settings=len(self.settings))
                    return
            yield i, setting

    def already_fails(self, tests: list, rate: float) -> bool:
        """Whether a decision in ``tests`` already FAILs at ``rate``, its designed per-decision
        false-fail rate: the test by which a check stops early, valid at any power
        (:func:`stats.rejects`)."""
        return stats.rejects(tests, rate, self.false_pass_rate)

    def record_stop(self, reason: str = ALREADY_FAILS, **progress) -> None:
        """Record that the check stopped before all its work (``stopped_early``): why (by
        default, :meth:`already_fails`), and how far it got (``progress``: what was run, in the
        check's own units)."""
        self.record("stopped_early", {**progress, "reason": reason})

    def generator(self, example: int | None = None) -> torch.Generator:
        """A torch generator on the run's device, seeded for one example (or the check)."""
        seed = self.check_seed if example is None else self.seeds[example]
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        return gen

    def tensor(self, data) -> torch.Tensor:
        return torch.as_tensor(data, dtype=self.dtype, device=self.device)

    def record(self, key: str, value: Any) -> None:
        """Attach JSON-serialisable numbers (e.g. a reproduction table) to the evidence."""
        self.records[key] = value

    def figure(self, title: str, series: list[dict], *, xlabel: str, ylabel: str,
               xscale: str = "linear", yscale: str = "linear") -> None:
        """Publish a curve for the report (where a curve says more than a number).

        ``series`` items are ``{"label", "x", "y"}`` with optional ``"yerr"`` (symmetric
        error bars or band half-widths) or ``"lower"`` and ``"upper"`` (an asymmetric
        interval, e.g. quartiles), and ``"style": "line" | "points" | "band"``; a predicted
        curve is just another series (e.g. ``"label": "theory: slope -1/2"``). With no
        series (a check stopped before any curve) nothing is published: an empty plot says
        nothing.
        """
        if not series:
            return
        for s in series:
            if ("lower" in s) != ("upper" in s):
                raise ValueError(f"figure {title!r}: series {s.get('label')!r} needs both lower "
                                 "and upper")
            if any(len(s[key]) != len(s["y"]) for key in ("x", "yerr", "lower", "upper") if key in s):
                raise ValueError(f"figure {title!r}: series {s.get('label')!r} has mismatched lengths")
        self.records.setdefault("figures", []).append({
            "title": title, "series": series, "xlabel": xlabel, "ylabel": ylabel,
            "xscale": xscale, "yscale": yscale,
        })

    def not_applicable(self, reason: str, example: int | None = None) -> None:
        """Record that a setting (or the subject) violates the claim's assumptions.

        Such a setting yields no test. A check whose every setting is outside the
        assumptions has verdict NOT APPLICABLE, which is not a PASS.
        """
        self.outside_assumptions.append({"example": example, "reason": reason})


@dataclass(frozen=True)
class Obligation:
    claim: Claim
    name: str
    func: Callable[[], Derivation | Sequence[Derivation]]

    @property
    def key(self) -> str:
        return f"obligation: {self.name}"


@dataclass(frozen=True)
class Check:
    claim: Claim
    name: str
    func: Callable[[CheckRun], Sequence[Test]]
    settings: SearchStrategy
    examples: Profiled
    #: fewer settings inside the assumptions than this is not a PASS
    min_applicable: Profiled
    #: settings checked in every profile before the drawn ones (Hypothesis's ``@example``)
    explicit: tuple = ()

    @property
    def key(self) -> str:
        return f"check: {self.name}"


@dataclass(frozen=True)
class Control:
    claim: Claim
    name: str
    check: Check
    mutant: Any
    description: str

    @property
    def key(self) -> str:
        return f"control: {self.name}"


@dataclass
class Claim:
    """One statement of the paper and the evidence that certifies it."""

    id: str
    reference: str
    statement: str
    assumptions: tuple[str, ...] = ()
    subject: Any = None
    obligations: list[Obligation] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    controls: list[Control] = field(default_factory=list)

    def __post_init__(self):
        if not _ID_PATTERN.match(self.id):
            raise ValueError(f"claim id {self.id!r} must be lower-case letters, digits, '.', '-'")
        self.assumptions = tuple(self.assumptions)

    def _check_name(self, name: str) -> None:
        if not _NAME_PATTERN.match(name):
            raise ValueError(f"{self.id}: name {name!r} has characters a test id cannot carry")
        taken = {p.name for p in (*self.obligations, *self.checks, *self.controls)}
        if name in taken:
            raise ValueError(f"{self.id}: duplicate name {name!r}")

    def obligation(self, name: str):
        """Decorator: a function returning one or more :class:`Derivation`."""

        def register(func):
            self._check_name(name)
            self.obligations.append(Obligation(self, name, func))
            return func

        return register

    def check(self, name: str, *, settings: SearchStrategy, examples: Profiled,
              min_applicable: Profiled | None = None, explicit: Sequence = ()):
        """Decorator: a numeric check ``func(run: CheckRun) -> list[Test]``.

        ``settings`` is a Hypothesis strategy for one setting (a JSON-serialisable
        dataclass or dict); ``examples`` how many settings each profile draws;
        ``explicit`` settings every profile checks first, whatever the draw (a case a bug
        shows only in, which the strategy may miss); ``min_applicable`` how many of all
        the settings must lie inside the assumptions for the check to PASS (default: all).
        Returns the :class:`Check`, so controls can name it.
        """

        def register(func):
            self._check_name(name)
            total = Profiled(quick=examples["quick"] + len(explicit),
                             full=examples["full"] + len(explicit))
            floor = total if min_applicable is None else min_applicable
            for profile in ("quick", "full"):
                if not 1 <= floor[profile] <= total[profile]:
                    raise ValueError(f"{self.id}: check {name!r} needs 1 <= min_applicable <= examples")
            check = Check(self, name, func, settings, examples, floor, tuple(explicit))
            self.checks.append(check)
            return check

        return register

    def control(self, name: str, *, check: Check, mutant: Any, description: str = "") -> Control:
        """A negative control: ``check`` run on ``mutant`` instead of the subject must FAIL."""
        if check.claim is not self:
            raise ValueError(f"{self.id}: control {name!r} names a check of another claim")
        self._check_name(name)
        control = Control(self, name, check, mutant, description or name)
        self.controls.append(control)
        return control

    def summary(self) -> dict:
        """The static part of the claim, as the certificate records it."""
        return {
            "id": self.id,
            "reference": self.reference,
            "statement": self.statement,
            "assumptions": list(self.assumptions),
        }
