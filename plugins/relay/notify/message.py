"""What people are told: one typed notification per thing that happened to production.

A notification names what happened (:class:`NotificationKind`), to which versions, why (the
decision's own lines), where to read more (a report, a log) and which run decided it. The
deciders build them (:mod:`relay.flows.notices`, :mod:`relay.rollout.announce`,
:mod:`relay.airflow.notifier`); :func:`relay.notify.webhook.send` delivers them. Nothing here
does I/O.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from relay.clock import utcnow

#: The longest reason a notification carries; a chat message is no place for a whole report.
MAX_REASON_CHARS = 2000


class NotificationKind(StrEnum):
    """What happened."""

    ROLLBACK = "rollback"
    GATE_REJECTED = "gate_rejected"
    DRIFT_RETRAIN = "drift_retrain"
    ROLLOUT_HELD = "rollout_held"
    ROLLOUT_ABORTED = "rollout_aborted"
    DAG_FAILED = "dag_failed"


class Notification(BaseModel):
    """One notification, as the webhook receives it (``model_dump(mode="json")`` plus ``text``).

    Attributes:
        kind: what happened.
        subject: one line for a person: what, to which version.
        reason: why, in the deciding code's own words (at most :data:`MAX_REASON_CHARS`).
        versions: the versions concerned, the one acted on first.
        report: where to read more: a drift or evaluation report, a task log (path or URL).
        run_id: the run that decided it (an Airflow run id, a rollout id), if any.
        source: who decided (``eta_monitoring``, ``eta_training``, ``rollout:<id>``, a DAG id).
        at: when it was decided (UTC).
        details: further facts a receiver may route on (e.g. ``forced``, ``step``).
    """

    model_config = ConfigDict(frozen=True)

    kind: NotificationKind
    subject: str = Field(min_length=1)
    reason: str = ""
    versions: list[str] = Field(default_factory=list)
    report: str | None = None
    run_id: str | None = None
    source: str = "relay"
    at: dt.datetime = Field(default_factory=utcnow)
    details: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("reason")
    @classmethod
    def _bounded(cls, reason: str) -> str:
        if len(reason) <= MAX_REASON_CHARS:
            return reason
        return reason[: MAX_REASON_CHARS - 1] + "…"

    def text(self) -> str:
        """The notification as a few lines of plain text (a chat message, a log line)."""
        lines = [f"[relay] {self.kind.value}: {self.subject}"]
        if self.reason:
            lines.append(f"why: {self.reason}")
        if self.report:
            lines.append(f"report: {self.report}")
        if self.run_id:
            lines.append(f"run: {self.run_id} ({self.source})")
        return "\n".join(lines)

    def payload(self) -> dict[str, Any]:
        """The JSON body POSTed: every field, and ``text`` for chat webhooks that show only it."""
        return {**self.model_dump(mode="json"), "text": self.text()}
