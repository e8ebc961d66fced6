"""A past day played as it happened: every order's life through the events API.

:func:`play` walks the day's events in time order, one order at a time, the way an order
service and the feature pipeline would have lived it:

1. when the clock crosses an hour, the hourly snapshots up to that hour are materialized (what
   the hourly ``eta_features`` DAG does: :func:`relay.features.store.materialize` of the
   snapshot views, from the day's feature tables in the lake); the first time, the snapshot
   views' online rows are cleared first, so none from later in the day remains;
2. the order's ``created`` event is POSTed to ``/v1/events`` (its live features are pushed
   before the answer), then the order to ``/v1/eta``;
3. ``picked_up`` and ``delivered`` events are POSTed once their time has come, in groups of
   :data:`LABEL_GROUP`: the labels reach Relay the only way a real order service can send them.

Orders created in the hour before the first one played send their ``created`` event only, so
the live counts of the first orders are complete. Played this way, each order is served exactly
the features its point-in-time training row holds (``relay features skew``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import pandas as pd

from relay.data.lake import SNAPSHOT_TABLES
from relay.settings import Settings, get_settings
from relay.sim.client import require_loopback
from relay.sim.config import ReplayError

log = logging.getLogger(__name__)

HOUR = pd.Timedelta(hours=1)
LABEL_GROUP = 100
"""Pickup and delivery events sent together once this many are due."""
SNAPSHOT_TTL = dt.timedelta(days=2)
"""How far back the first materialization looks (the snapshot views' TTL)."""


@dataclass(frozen=True)
class LifecycleResult:
    """What a played day did."""

    orders: int
    answered: int
    events_accepted: int
    events_duplicate: int
    hours_materialized: int
    started_at: dt.datetime
    elapsed_s: float

    def summary(self) -> str:
        return (
            f"{self.answered}/{self.orders} orders answered, {self.events_accepted} events "
            f"accepted ({self.events_duplicate} already known), {self.hours_materialized} "
            f"hourly materializations, {self.elapsed_s:.1f} s"
        )


def created_event(order: Mapping[Any, Any]) -> dict[str, Any]:
    """An order's ``created`` event body."""
    return {
        "type": "created",
        "order_id": str(order["order_id"]),
        "occurred_at": pd.Timestamp(order["created_at"]).isoformat(),
        "courier_id": str(order["courier_id"]),
        "merchant_id": str(order["merchant_id"]),
        "zone_id": str(order["zone_id"]),
        "distance_km": float(order["distance_km"]),
        "weather": None if pd.isna(order.get("weather")) else str(order["weather"]),
    }


def eta_request(order: Mapping[Any, Any]) -> dict[str, Any]:
    """An order's ``/v1/eta`` body."""
    body = {k: str(order[k]) for k in ("order_id", "courier_id", "merchant_id", "zone_id")}
    created = pd.Timestamp(order["created_at"]).isoformat()
    return body | {"distance_km": float(order["distance_km"]), "created_at": created}


def later_events(orders: pd.DataFrame) -> pd.DataFrame:
    """Every order's ``picked_up`` (with the merchant's ``prep_minutes`` when known) and
    ``delivered`` events: ``time``, ``body``."""
    rows = []
    prep = orders["prep_minutes"] if "prep_minutes" in orders else pd.Series(None, orders.index)
    for kind, column in (("picked_up", "picked_up_at"), ("delivered", "delivered_at")):
        for oid, at, minutes in zip(orders["order_id"], orders[column], prep, strict=True):
            body: dict[str, Any] = {
                "type": kind,
                "order_id": str(oid),
                "occurred_at": pd.Timestamp(at).isoformat(),
            }
            if kind == "picked_up" and not pd.isna(minutes):
                body["prep_minutes"] = float(minutes)
            rows.append({"time": pd.Timestamp(at), "body": body})
    return pd.DataFrame(rows, columns=["time", "body"]).sort_values("time", kind="stable")


def order_events(orders: pd.DataFrame) -> list[dict[str, Any]]:
    """Every event of ``orders`` as the order service sends them: each ``created`` event, in
    the orders' order, then the pickups and deliveries in time order (:func:`later_events`)."""
    created = [created_event(o) for o in orders.to_dict("records")]
    return created + later_events(orders)["body"].to_list()


class _Client:
    def __init__(self, base: str, timeout_s: float, api_key: str | None) -> None:
        self.base = base.rstrip("/")
        self.http = httpx.Client(timeout=timeout_s, trust_env=False)
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def post(self, path: str, body: Any, patience_s: float = 60.0) -> dict[str, Any]:
        """POST, sent again on a 503 (Retry-After honoured) or a lost connection for up to
        ``patience_s`` (events are idempotent; an ETA request keeps its ``x-request-id``):
        a router still opening its event store answers 503 for a few seconds."""
        headers = {**self.headers, "x-request-id": uuid.uuid4().hex}
        data = json.dumps(body).encode()
        deadline = time.monotonic() + patience_s
        while True:
            try:
                resp = self.http.post(self.base + path, content=data, headers=headers)
            except httpx.RequestError as exc:
                last, wait = f"{type(exc).__name__}: {exc}", 0.5
            else:
                if resp.status_code == 200:
                    answer: dict[str, Any] = resp.json()
                    return answer
                if resp.status_code != 503:
                    raise ReplayError(f"POST {path} answered {resp.status_code}: {resp.text[:500]}")
                last, wait = resp.text, float(resp.headers.get("retry-after", "1"))
            if time.monotonic() + wait > deadline:
                raise ReplayError(f"POST {path} failed for {patience_s:g} s: {last[:500]}")
            threading.Event().wait(wait)

    def close(self) -> None:
        self.http.close()


def play(
    day_orders: pd.DataFrame,
    first: int,
    count: int,
    url: str,
    settings: Settings | None = None,
    *,
    api_key: str | None = None,
    timeout_s: float = 30.0,
    materialize_hourly: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> LifecycleResult:
    """Play ``count`` orders of a day from position ``first`` (see the module).

    Args:
        day_orders: the day's orders sorted by ``created_at`` (the lake's validated orders).
        first: position of the first order to play.
        count: orders to play.
        url: the endpoint's base URL (``http://127.0.0.1:8000``); loopback only.
        settings: for the hourly materialization (the stack's Feast store and lake).
        api_key: the endpoint's API key, when it has keys.
        timeout_s: per request.
        materialize_hourly: materialize the snapshots at each hour (off: someone else does).
        on_progress: called with (orders done, orders planned) every 100 orders.

    Raises:
        NotLoopback: ``url`` is not a loopback address.
        ReplayError: a request refused or failing after retries.
    """
    from relay.features.store import clear_online, materialize

    s = settings or get_settings()
    base = require_loopback(url)
    orders = day_orders.sort_values("created_at", kind="stable").reset_index(drop=True)
    played = orders.iloc[first : first + count]
    if played.empty:
        raise ReplayError(f"no orders from position {first} ({len(orders)} in the day)")
    t0 = pd.Timestamp(played["created_at"].iloc[0])
    warm = orders[(orders["created_at"] >= t0 - HOUR) & (orders.index < first)]
    client = _Client(base, timeout_s, api_key)
    accepted = duplicate = answered = hours = 0
    started = dt.datetime.now(dt.UTC)

    def send_events(bodies: list[dict[str, Any]]) -> None:
        nonlocal accepted, duplicate
        for i in range(0, len(bodies), 500):
            answer = client.post("/v1/events", {"events": bodies[i : i + 500]})
            accepted += int(answer["accepted"])
            duplicate += int(answer["duplicates"])

    try:
        if not warm.empty:
            send_events([created_event(o) for o in warm.to_dict("records")])
        pending = later_events(played)
        times, bodies = pending["time"].to_list(), pending["body"].to_list()
        next_later = 0
        hour = None
        for k, order in enumerate(played.to_dict("records")):
            created = pd.Timestamp(order["created_at"])
            due = next_later
            while due < len(times) and times[due] <= created:
                due += 1
            # Pickups and deliveries change no feature an ETA reads (the snapshots come from
            # the lake): they go in groups, in time order, not one request per order.
            if due - next_later >= LABEL_GROUP:
                send_events(bodies[next_later:due])
                next_later = due
            if materialize_hourly and created.floor("h") != hour:
                end = created.floor("h").to_pydatetime()
                start = hour.to_pydatetime() if hour is not None else end - SNAPSHOT_TTL
                if hour is None:
                    # Back to the day's start: the snapshots as of the first hour, within
                    # Feast's TTL, and none of a later one (an entity that only appears
                    # later in the day is unknown until then, as it was then).
                    clear_online(SNAPSHOT_TABLES, s)
                materialize(end, start, s, tables=SNAPSHOT_TABLES)
                hour = created.floor("h")
                hours += 1
            send_events([created_event(order)])
            answer = client.post("/v1/eta", eta_request(order))
            answered += len(answer.get("predictions", []))
            if on_progress is not None and (k + 1) % 100 == 0:
                on_progress(k + 1, len(played))
        if next_later < len(bodies):  # the rest of the played orders' lives
            send_events(bodies[next_later:])
    finally:
        client.close()
    elapsed = (dt.datetime.now(dt.UTC) - started).total_seconds()
    result = LifecycleResult(
        orders=len(played),
        answered=answered,
        events_accepted=accepted,
        events_duplicate=duplicate,
        hours_materialized=hours,
        started_at=started,
        elapsed_s=elapsed,
    )
    log.info("played: %s", result.summary())
    return result
