"""What a replay is asked to do (:class:`ReplayConfig`) and what it reports while it runs
(:class:`ReplayProgress`) and at the end (:class:`ReplayResult`)."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    model_validator,
)

from relay.errors import RelayError
from relay.serve.schemas import MAX_ORDERS_PER_REQUEST

DEFAULT_MAX_ORDERS = 2000
DEFAULT_MAX_SECONDS = 60.0
DEFAULT_TIMEOUT_S = 5.0

StopReason = Literal["max_orders", "max_seconds", "end_of_day"]


class ReplayError(RelayError):
    """A replay could not run as asked."""


def default_concurrency(rate: float) -> int:
    """Threads for a rate: enough for 100 ms answers at full rate, within 4..64."""
    return min(64, max(4, math.ceil(rate / 10)))


class ReplayConfig(BaseModel):
    """What to replay, where, and the bounds of the run.

    A value out of bounds raises :class:`ReplayError` naming each field that is wrong.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    date: dt.date = Field(description="The day whose orders are replayed (UTC)")
    rate: float = Field(gt=0, allow_inf_nan=False, description="Requests per second")
    scenario: str | None = Field(
        None,
        description="A scenario of relay.data.scenarios.SCENARIOS to generate the day under; "
        "None replays the day's raw/orders partition when the lake has one, else a normal day",
    )
    max_orders: int = Field(DEFAULT_MAX_ORDERS, ge=1, description="Stop after this many orders")
    max_seconds: float = Field(
        DEFAULT_MAX_SECONDS,
        gt=0,
        description="Stop sending after this many seconds (answers in flight are waited for: "
        "timeout_s more at most, twice that when a request is retried on a fresh connection)",
    )
    batch: int = Field(
        1,
        ge=1,
        le=MAX_ORDERS_PER_REQUEST,
        description='Orders per request ({"orders": [...]} when above 1)',
    )
    url: str | None = Field(
        None, description="The endpoint; default {serving.url}/v1/eta (loopback only)"
    )
    label_delay_s: float | None = Field(
        None,
        ge=0,
        description="Send labels (picked_up and delivered events) during the run, each this "
        "long after its answer; None sends every label after the run",
    )
    timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0, description="Per-request timeout")
    events_patience_s: float = Field(
        30.0,
        ge=0,
        description="An events request answered 503/429 (Retry-After honoured) or not at all is "
        "sent again for this long: events are idempotent",
    )
    concurrency: int | None = Field(
        None, ge=1, description="Requests in flight at most; default rate / 10 within 4..64"
    )
    orders_per_day: int | None = Field(
        None,
        ge=1,
        description="Orders in a generated day; default data.orders_per_day (what "
        "`relay generate` lands, so the same order ids)",
    )
    skip: int = Field(
        0, ge=0, description="Start after the day's first skip orders (a long replay in parts)"
    )

    @model_validator(mode="wrap")
    @classmethod
    def _as_replay_error(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        # A RelayError, so the CLI reports it like every other refused input (exit code 1).
        try:
            return handler(data)
        except ValidationError as exc:
            problems = (
                f"{'.'.join(map(str, e['loc']))}: {e['msg'].lower()}, got {e['input']!r}"
                for e in exc.errors()
            )
            raise ReplayError("; ".join(problems)) from exc

    @property
    def workers(self) -> int:
        """Requests in flight at most."""
        return self.concurrency or default_concurrency(self.rate)


@dataclass(frozen=True, kw_only=True)
class RequestCounts:
    """Requests by how they ended: ``ok``, ``client_errors`` (4xx), ``server_errors`` (5xx)
    and ``failed`` (no HTTP answer: refused, reset, timed out, or an unreadable body) add up
    to ``requests_sent``, which carried ``orders_sent`` orders."""

    requests_sent: int
    orders_sent: int
    ok: int
    client_errors: int
    server_errors: int
    failed: int


@dataclass(frozen=True, kw_only=True)
class ReplayProgress(RequestCounts):
    """Counts so far, handed to the progress callback about once a second."""

    elapsed_s: float
    planned_orders: int
    labels_sent: int


@dataclass(frozen=True, kw_only=True)
class ReplayResult(RequestCounts):
    """What a replay sent, what came back, and the events it sent.

    ``created_events`` counts orders whose ``created`` event the events API acknowledged
    (before their ETA request), ``labels_sent`` orders whose ``picked_up`` and ``delivered``
    events it acknowledged; ``event_failures`` event requests that failed (after one retry).

    ``by_version`` counts answered orders per model version. Latencies are client-side, over
    the requests answered 2xx (``None`` when there were none).
    """

    url: str
    date: dt.date
    source: str
    rate: float
    batch: int
    stopped_by: StopReason
    elapsed_s: float
    planned_orders: int
    orders_answered: int
    by_version: dict[str, int]
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    created_events: int
    labels_sent: int
    event_failures: int

    @property
    def achieved_rate(self) -> float:
        """Requests per second actually sent."""
        return self.requests_sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready values."""
        d = asdict(self)
        d["date"] = self.date.isoformat()
        d["achieved_rate"] = round(self.achieved_rate, 3)
        return d

    def summary(self) -> str:
        """A few lines for a person."""

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f} ms"

        versions = ", ".join(f"{v}: {n}" for v, n in sorted(self.by_version.items())) or "-"
        return "\n".join(
            [
                f"replayed {self.date} ({self.source}) to {self.url}: stopped by "
                f"{self.stopped_by} after {self.elapsed_s:.1f} s",
                f"requests: {self.requests_sent} sent at {self.achieved_rate:.1f}/s "
                f"(target {self.rate:g}/s, {self.batch} per request), {self.ok} ok, "
                f"{self.client_errors} 4xx, {self.server_errors} 5xx, {self.failed} failed",
                f"orders: {self.orders_sent} sent, {self.orders_answered} answered; "
                f"by version: {versions}",
                f"latency: p50 {ms(self.latency_p50_ms)}, p99 {ms(self.latency_p99_ms)}",
                f"events: {self.created_events} created, {self.labels_sent} labels "
                f"(picked up and delivered), {self.event_failures} requests failed",
            ]
        )
