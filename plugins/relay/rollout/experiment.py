"""Experiments: a champion/challenger test from a YAML spec, run as a plan, judged at its end.

An :class:`ExperimentSpec` (:func:`load_spec`) names a control, one variant with its share of
the targeted orders, optional targeting and the success criteria; :func:`compile_plan` makes it
the one-step :class:`~relay.rollout.plan.Plan` a rollout walks, so the router answers it with
the same traffic rules; :func:`judge_experiment` says who won.

Example spec (``tests/unit/rollout/test_experiment.py`` loads this very text)::

    id: eta-mlp-vs-gbm-2026-11
    start: 2026-11-20T00:00:00Z
    end: 2026-11-27T00:00:00Z
    control:
      version: delivery_eta_gbm_v1_20261101_000000
    variants:
      - name: mlp
        version: delivery_eta_mlp_v2_20261115_120000
        share: 0.5
    targeting:
      zones: [Z001, Z002]
      hours: [11, 12, 18, 19]
    primary:
      - metric: mae
        max_regression: 0.02    # MAE at most 2% worse than control's, beyond noise
    secondary:
      - metric: p99_ms
        max_value: 50           # P99 at most 50 ms, beyond chance
      - metric: error_rate
        max_value: 0.01
    min_requests: 1000
    min_labelled: 500

Criteria are guardrails (non-inferiority), each judged by the canary's own check (its lines call
the control "stable") with the criterion's bar: ``max_regression`` relative to the control over
the same period (``mae``, ``p99_ms``; a rate near 0 has no stable ratio), ``max_value`` absolute.

A failing **primary** criterion makes the control the winner at once (it keeps all traffic; the
lines say which criterion failed and by how much); the variant wins only at ``end``, every primary
criterion met on ``min_requests`` requests (and, for MAE, ``min_labelled`` labels) of each version;
else no winner. **Secondary** criteria are judged and reported, never decisive.

With targeting, the control's window counts every order it answers, targeted or not (the router
counts per version): the two windows cover different mixes of zones and hours.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Self

import yaml
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import ValidationError

from relay.clock import as_utc
from relay.errors import RelayError
from relay.rollout.plan import Plan, Step, Targeting
from relay.rollout.record import ROLLOUT_ID
from relay.rollout.rules import QualityWindow, error_check, p99_check, quality_check
from relay.serve.log_read import VersionQuality
from relay.serve.windows import VersionWindow
from relay.settings import RolloutSettings
from relay.verdict import FAIL, PASS, Verdict, mark, within_noise

Winner = Literal["variant", "control"]


class ExperimentSpecError(RelayError):
    """An experiment spec is not valid YAML or not a valid spec; the message names the field."""


class _Spec(BaseModel):
    # Specs are values: the experiment's record keeps the one it ran.
    model_config = ConfigDict(frozen=True, extra="forbid")


class Criterion(_Spec):
    """One success criterion: a metric and exactly one of a relative or an absolute bar.

    Attributes:
        metric: ``mae`` (minutes, against actuals), ``p99_ms`` or ``error_rate``.
        max_regression: at most this much worse than the control, relative (0.02: 2%).
        max_value: at most this value (minutes, ms, or a rate in [0, 1]).
    """

    metric: Literal["mae", "p99_ms", "error_rate"]
    max_regression: float | None = Field(None, ge=0)
    max_value: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _one_bar(self) -> Self:
        if (self.max_regression is None) == (self.max_value is None):
            raise ValueError(f"{self.metric}: give exactly one of max_regression or max_value")
        if self.metric == "error_rate" and self.max_regression is not None:
            raise ValueError("error_rate takes max_value only (a rate near 0 has no stable ratio)")
        if self.metric == "error_rate" and self.max_value is not None and self.max_value > 1:
            raise ValueError(f"error_rate max_value is a rate in [0, 1], got {self.max_value}")
        return self

    def describe(self) -> str:
        """E.g. ``mae ≤ +2% vs control`` or ``p99_ms ≤ 50``."""
        if self.max_regression is not None:
            return f"{self.metric} ≤ {self.max_regression:+.1%} vs control"
        return f"{self.metric} ≤ {self.max_value:g}"


class Control(_Spec):
    """The version that serves every order the variant does not (the champion)."""

    version: str = Field(min_length=1)


class Variant(_Spec):
    """A challenger: its name, its version, and the share of the targeted orders it answers."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    version: str = Field(min_length=1)
    share: float = Field(gt=0, lt=1, description="below 1: the control answers targeted orders too")


class ExperimentSpec(_Spec):
    """An experiment as its YAML declares it (see the module's example)."""

    id: str = Field(pattern=ROLLOUT_ID)
    start: AwareDatetime
    end: AwareDatetime
    control: Control
    variants: list[Variant] = Field(min_length=1)
    targeting: Targeting | None = None
    primary: list[Criterion] = Field(min_length=1)
    secondary: list[Criterion] = Field(default_factory=list)
    min_requests: int = Field(ge=1, description="Requests of each version before a winner")
    min_labelled: int = Field(ge=0, description="Labelled predictions of each, for MAE")

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, value: dt.datetime) -> dt.datetime:
        return as_utc(value)  # stored and compared in UTC, as every time in Relay

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.end <= self.start:
            raise ValueError(f"end {self.end} is not after start {self.start}")
        if len(self.variants) > 1:
            names = ", ".join(v.name for v in self.variants)
            raise ValueError(
                f"only one variant per experiment is supported for now, got {len(self.variants)} "
                f"({names}): run one experiment per variant"
            )
        if self.variant.version == self.control.version:
            raise ValueError(f"variant {self.variant.name} runs the control's version")
        if self.min_labelled < 1 and any(c.metric == "mae" for c in self.primary + self.secondary):
            raise ValueError("an mae criterion needs min_labelled ≥ 1")
        return self

    @property
    def variant(self) -> Variant:
        """The experiment's one variant."""
        return self.variants[0]

    @property
    def duration_s(self) -> float:
        """From start to end, in seconds."""
        return (self.end - self.start).total_seconds()


@dataclass(frozen=True)
class ExperimentVerdict(Verdict):
    """Who won an experiment, or why nobody has.

    Attributes:
        experiment: the spec's id.
        winner: ``variant``, ``control``, or None when the evidence does not say yet.
        final: whether the experiment is over: a winner was named, or ``end`` has passed.
        reasons: the evidence, every criterion (``PASS:``/``FAIL:``), then the outcome.
        failed_primary: the failing primary criteria (:meth:`Criterion.describe`).
        failed_secondary: the failing secondary criteria, reported only.
        control: the control's version.
        variant: the variant's version.
    """

    experiment: str
    winner: Winner | None
    final: bool
    reasons: list[str]
    failed_primary: list[str] = field(default_factory=list)
    failed_secondary: list[str] = field(default_factory=list)
    control: str = ""
    variant: str = ""

    def headline(self) -> str:
        """E.g. ``experiment x: variant v2 vs control v1: CONTROL WINS``."""
        outcome = {"variant": "VARIANT WINS", "control": "CONTROL WINS"}.get(
            self.winner or "", "NO WINNER" if self.final else "RUNNING"
        )
        versions = f"variant {self.variant} vs control {self.control}"
        return f"experiment {self.experiment}: {versions}: {outcome}"


def load_spec(source: Path | str) -> ExperimentSpec:
    """An experiment spec from a YAML file (a :class:`~pathlib.Path`) or YAML text (a str).

    Raises:
        ExperimentSpecError: the file is missing, the YAML does not parse or is not a mapping,
            or a field is invalid (the message names its path, e.g. ``variants[0].share``).
    """
    where = str(source) if isinstance(source, Path) else "text"
    try:
        text = source.read_text() if isinstance(source, Path) else source
    except OSError as exc:
        raise ExperimentSpecError(f"experiment spec {where} could not be read: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ExperimentSpecError(f"experiment spec {where} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ExperimentSpecError(
            f"experiment spec {where} must be a mapping of fields (id, start, end, ...), "
            f"got {type(data).__name__}"
        )
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_path(e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
        )
        raise ExperimentSpecError(f"experiment spec {where} is invalid: {problems}") from exc


def compile_plan(spec: ExperimentSpec) -> Plan:
    """The experiment as a rollout plan: one step at the variant's share, ``end - start`` long.

    The step's minimum and maximum durations are both the experiment's length, its evidence
    minimums the spec's; the record's traffic (:func:`relay.rollout.record.traffic_of`) is then
    the experiment's split: the variant (as candidate) on its share of the targeted orders.
    """
    return Plan(
        steps=[
            Step(
                share=spec.variant.share,
                targeting=spec.targeting,
                min_duration_s=spec.duration_s,
                max_duration_s=spec.duration_s,
                min_requests=spec.min_requests,
                min_labelled=spec.min_labelled,
            )
        ]
    )


def judge_experiment(
    spec: ExperimentSpec,
    control: VersionWindow,
    variant: VersionWindow,
    control_quality: VersionQuality | None,
    variant_quality: VersionQuality | None,
    now: dt.datetime,
    settings: RolloutSettings,
) -> ExperimentVerdict:
    """Judge the experiment on both versions' windows since it began and their quality.

    Args:
        spec: the experiment.
        control: the control's window since ``start`` (over the same interval as the variant's).
        variant: the variant's window since ``start``.
        control_quality: the control's labelled quality since ``start``; None: no labels yet.
        variant_quality: the variant's.
        now: the judgement's time: the variant wins only from ``end`` on.
        settings: the canary's chance and noise settings (``error_alpha``, ``p99_alpha``,
            ``p99_min_requests``, ``quality_z``); the bars are the criteria's.

    Raises:
        ValueError: a window of another version than the spec's.
    """
    versions = (spec.control.version, spec.variant.version)
    if (control.version, variant.version) != versions:
        raise ValueError(f"experiment {spec.id} compares {versions}, not the windows' versions")
    s = settings.model_copy(update={"min_requests": spec.min_requests})
    judged = [
        (kind, c, *_criterion(c, control, variant, control_quality, variant_quality, spec, s))
        for kind, criteria in (("primary", spec.primary), ("secondary", spec.secondary))
        for c in criteria
    ]
    failed = {
        kind: [c.describe() for k, c, ok, _ in judged if k == kind and not ok]
        for kind in ("primary", "secondary")
    }
    evidence = _evidence(spec, control, variant, control_quality, variant_quality)
    reasons = [f"{mark(not e)}: {m}" for e, m in evidence]
    reasons += [f"{mark(ok)}: {kind} {c.describe()}: {msg}" for kind, c, ok, msg in judged]
    ended = as_utc(now) >= spec.end
    winner: Winner | None = None
    if failed["primary"]:
        winner = "control"
        reasons.append(
            f"{FAIL}: primary criteria failed ({'; '.join(failed['primary'])}): "
            f"{spec.control.version} keeps all traffic"
        )
    elif any(short for short, _ in evidence):
        outcome = "no winner" if ended else f"runs until {spec.end.isoformat()}"
        reasons.append(f"{FAIL}: not enough evidence: {outcome}, the control keeps its orders")
    elif not ended:
        reasons.append(
            f"{PASS}: every primary criterion met so far; the experiment runs until "
            f"{spec.end.isoformat()}"
        )
    else:
        winner = "variant"
        reasons.append(f"{PASS}: every primary criterion met: variant {spec.variant.name} wins")
    return ExperimentVerdict(
        experiment=spec.id,
        winner=winner,
        final=winner is not None or ended,
        reasons=reasons,
        failed_primary=failed["primary"],
        failed_secondary=failed["secondary"],
        control=spec.control.version,
        variant=spec.variant.version,
    )


def _criterion(
    c: Criterion,
    control: VersionWindow,
    variant: VersionWindow,
    control_q: VersionQuality | None,
    variant_q: VersionQuality | None,
    spec: ExperimentSpec,
    s: RolloutSettings,
) -> tuple[bool, str]:
    """One criterion by the canary's check for its metric, with the criterion's bar."""
    if c.metric == "error_rate":
        return error_check(variant, None, s.model_copy(update={"max_error_rate": c.max_value}))
    if c.metric == "p99_ms":
        if c.max_value is not None:
            bar, reference = c.max_value, None
        elif control.p99_ms is None:
            return True, "P99 latency: the control served nothing, not compared"
        else:
            bar, reference = control.p99_ms * (1 + (c.max_regression or 0.0)), control
        _, ok, msg = p99_check(variant, reference, s.model_copy(update={"max_p99_ms": bar}))
        return ok, msg
    if c.max_regression is not None:
        q = None
        if control_q is not None and variant_q is not None and control_q.n and variant_q.n:
            se = None
            if control_q.mae_se is not None and variant_q.mae_se is not None:
                se = math.hypot(control_q.mae_se, variant_q.mae_se)
            n = min(control_q.n, variant_q.n)
            q = QualityWindow(variant_q.mae, control_q.mae, n, se)
        update = {"max_mae_regression": c.max_regression, "min_labelled": spec.min_labelled}
        _, ok, msg = quality_check(q, s.model_copy(update=update))
        return ok, msg
    bar = c.max_value or 0.0
    if variant_q is None or variant_q.n < spec.min_labelled:
        n = variant_q.n if variant_q is not None else 0
        return True, f"MAE: {n} labelled < min {spec.min_labelled}, not judged"
    excess = variant_q.mae - bar
    ok = within_noise(excess, variant_q.mae_se, s.quality_z)
    return ok, (
        f"MAE {variant_q.mae:.2f} min {'≤' if excess <= 0 else '>'} {bar:g}"
        f"{'' if excess <= 0 else (', within' if ok else ', beyond') + ' noise'} "
        f"({variant_q.n} labelled)"
    )


def _evidence(
    spec: ExperimentSpec,
    control: VersionWindow,
    variant: VersionWindow,
    control_q: VersionQuality | None,
    variant_q: VersionQuality | None,
) -> list[tuple[bool, str]]:
    """(short, line) per evidence minimum: requests of each version, labels when MAE is asked."""
    counts = [("requests", "control", control.requests), ("requests", "variant", variant.requests)]
    if any(c.metric == "mae" for c in spec.primary):
        counts += [
            ("labelled", role, q.n if q is not None else 0)
            for role, q in (("control", control_q), ("variant", variant_q))
        ]
    need = {"requests": spec.min_requests, "labelled": spec.min_labelled}
    return [
        (
            n < need[what],
            f"evidence: {n} {role} {what} {'<' if n < need[what] else '≥'} min {need[what]}",
        )
        for what, role, n in counts
    ]


def _path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a field path, e.g. ``variants[0].share``; ``spec`` for all."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f"{'.' if out else ''}{part}"
    return out or "spec"
