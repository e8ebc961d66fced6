"""Where ``POST /v1/events`` puts events: stored by group commit, pushed, landed.

The request path (:meth:`EventSink.submit`) hands its events to one writer thread and waits.
The writer takes *everything* queued at that moment (up to
``RELAY_EVENTS__GROUP_MAX_EVENTS``), stores it in one transaction (:class:`EventStore`), pushes
the live features of every entity the group touched (:func:`relay.features.live.latest_rows`,
Feast ``push``), and only then answers each request. So:

* an acknowledged event is durable (its transaction committed before the answer), and a
  request that got no answer may be re-sent safely (``(order_id, type)`` is unique);
* an ETA requested after an order's ``created`` event was acknowledged is served the live
  features that event produced (pushed before the answer);
* under load, requests share transactions and pushes instead of queueing one commit each,
  and no request waits for a batch to fill when nothing else is queued.

A failed push does not fail the events (they are stored; the entity's next event pushes its
value again) but is counted and logged. A landing thread copies stored events to the lake every
``RELAY_EVENTS__LAND_EVERY_S`` (:func:`land`): ``raw/order_events`` and, for each order with
both a ``created`` and a ``delivered`` event, its label in ``serving/actuals``.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import pandas as pd

from relay.data.lake import ACTUALS, ORDER_EVENTS, Lake
from relay.features.catalog import live_views
from relay.features.live import WINDOW, latest_rows
from relay.ingest.event_store import EventStore

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Pusher(Protocol):
    """Writes live rows online (a Feast store's ``push``)."""

    def push(self, push_source_name: str, df: pd.DataFrame) -> Any: ...


@dataclass(frozen=True)
class Accepted:
    """What one request's events did: new ones, and ones Relay already had."""

    accepted: int
    duplicates: int


@dataclass
class Freshness:
    """Per live view: when it was last pushed (wall clock) and its newest value's time."""

    pushed_at: dict[str, float] = field(default_factory=dict)
    newest: dict[str, dt.datetime] = field(default_factory=dict)
    push_failures: int = 0
    pushes: int = 0

    def age_s(self, view: str, now: float | None = None) -> float | None:
        """Seconds since ``view`` was last pushed (None: never by this process)."""
        at = self.pushed_at.get(view)
        return None if at is None else (now or time.time()) - at


def push_live(
    store: EventStore, pusher: Pusher, created: list[dict[str, Any]]
) -> dict[str, pd.DataFrame]:
    """Push the live rows of every entity ``created`` events touched, computed from the store
    (so every replica pushes the same value, whichever received the event).

    Returns:
        Live view name -> the rows pushed.
    """
    if not created:
        return {}
    since = min(e["occurred_at"] for e in created) - WINDOW.to_pytimedelta()
    pushed = {}
    for view in live_views():
        key = view.entity
        if key is None:  # pragma: no cover, live views are keyed
            continue
        ids = sorted({e[key] for e in created})
        events = store.created(key, ids, since)
        rows = latest_rows(events, {view.name: ids}).get(view.name)
        if rows is None or rows.empty:
            continue
        pusher.push(view.push_source, rows)
        pushed[view.name] = rows
    return pushed


class EventSink:
    """Group commit of events: store, push, answer (see the module).

    Args:
        store: the event store.
        pusher: the online store's push (None: events are stored and landed, not pushed).
        lake: where :meth:`land` copies events and labels (None: no landing thread).
        max_events: most events one group stores.
        land_every_s: landing period of the background thread.
        land_max_events: most events one landing copies.
        clock: the time events are stamped as received.
    """

    def __init__(
        self,
        store: EventStore,
        pusher: Pusher | None,
        lake: Lake | None = None,
        *,
        max_events: int = 1000,
        land_every_s: float = 5.0,
        land_max_events: int = 50_000,
        clock: Clock = _utcnow,
    ) -> None:
        self.store = store
        self.pusher = pusher
        self.lake = lake
        self.max_events = max_events
        self.land_every_s = land_every_s
        self.land_max_events = land_max_events
        self._clock = clock
        self.freshness = Freshness()
        self.groups = 0
        self.landed = 0
        self._queue: queue.Queue[tuple[list[dict[str, Any]], Future[Accepted]] | None] = (
            queue.Queue()
        )
        self._closed = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="relay-events", daemon=True)
        self._writer.start()
        self._lander: threading.Thread | None = None
        if lake is not None:
            self._lander = threading.Thread(
                target=self._land_loop, name="relay-events-land", daemon=True
            )
            self._lander.start()

    # -- the request path -------------------------------------------------------------------

    def submit(self, rows: list[dict[str, Any]]) -> Future[Accepted]:
        """Queue a request's events; the future resolves once they are stored and pushed.

        Raises:
            RuntimeError: the sink is closed.
        """
        if self._closed.is_set():
            raise RuntimeError("the event sink is closed")
        done: Future[Accepted] = Future()
        self._queue.put((rows, done))
        return done

    # -- the writer ---------------------------------------------------------------------------

    def _take_group(self) -> list[tuple[list[dict[str, Any]], Future[Accepted]]] | None:
        first = self._queue.get()
        if first is None:
            return None
        group, n = [first], len(first[0])
        while n < self.max_events:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # stop after this group
                break
            group.append(item)
            n += len(item[0])
        return group

    def _write_loop(self) -> None:
        while (group := self._take_group()) is not None:
            self._commit(group)

    def _commit(self, group: list[tuple[list[dict[str, Any]], Future[Accepted]]]) -> None:
        rows = [r for rs, _ in group for r in rs]
        try:
            new = self.store.add(rows, self._clock())
        except Exception as exc:  # nothing was stored: every request of the group fails
            log.warning("storing %d events failed: %s", len(rows), exc)
            for _, done in group:
                done.set_exception(exc)
            return
        self.groups += 1
        self._push([r for r in rows if r["type"] == "created"])
        i = 0
        for rs, done in group:
            fresh = sum(new[i : i + len(rs)])
            done.set_result(Accepted(fresh, len(rs) - fresh))
            i += len(rs)

    def _push(self, created: list[dict[str, Any]]) -> None:
        if self.pusher is None or not created:
            return
        try:
            pushed = push_live(self.store, self.pusher, created)
        except Exception as exc:  # stored all the same: the entity's next event pushes again
            self.freshness.push_failures += 1
            log.warning("pushing live features failed (events are stored): %s", exc)
            return
        now = time.time()
        self.freshness.pushes += 1
        for view, df in pushed.items():
            self.freshness.pushed_at[view] = now
            newest = pd.Timestamp(df["event_timestamp"].max()).to_pydatetime()
            old = self.freshness.newest.get(view)
            self.freshness.newest[view] = newest if old is None else max(old, newest)

    # -- landing ------------------------------------------------------------------------------

    def _land_loop(self) -> None:
        while not self._closed.wait(self.land_every_s):
            try:
                self.land()
            except Exception:
                log.warning(
                    "landing events failed; they stay in the store for the next try", exc_info=True
                )

    def land(self) -> int:
        """Copy stored events not yet in the lake to it now; returns how many."""
        if self.lake is None:
            return 0
        n = land(self.store, self.lake, self.land_max_events)
        self.landed += n
        return n

    def close(self, timeout: float = 30.0) -> None:
        """Answer what is queued, stop the threads, land what is left; idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._queue.put(None)
        self._writer.join(timeout)
        if self._lander is not None:
            self._lander.join(timeout)
            self.land()


def open_sink(settings: Any = None) -> EventSink:
    """The sink the settings describe: the event store, the Feast store's push, the lake."""
    from relay.features.row_cache import VersionedPusher
    from relay.features.store import get_store
    from relay.settings import get_settings

    s = settings or get_settings()
    ev = s.events
    if ev.database_url is None:  # pragma: no cover, the settings validator fills it
        raise ValueError("RELAY_EVENTS__DATABASE_URL is not set")
    return EventSink(
        EventStore(ev.database_url),
        VersionedPusher(get_store(s)),  # serving's row caches drop the views it pushes
        Lake(s),
        max_events=ev.group_max_events,
        land_every_s=ev.land_every_s,
        land_max_events=ev.land_max_events,
    )


def freshness_text(
    freshness: Freshness,
    alert_s: float,
    now: float | None = None,
    snapshots: Mapping[str, float | None] | None = None,
    snapshot_alert_s: float = 7200.0,
) -> str:
    """The views' freshness as Prometheus text, one series per view: for a live view, seconds
    since this replica last pushed it (stale past ``RELAY_EVENTS__FRESHNESS_ALERT_S``); for a
    snapshot view, seconds since the end of its last materialization, the time of its newest
    value (``snapshots``, :func:`relay.features.store.snapshot_ages`; stale past
    ``RELAY_EVENTS__SNAPSHOT_FRESHNESS_ALERT_S``: the hourly ``eta_features`` run is late)."""
    lines = [
        "# HELP relay_feature_age_seconds Age of the view's newest value online (live views: "
        "since this replica last pushed it; snapshots: since their last materialization's end).",
        "# TYPE relay_feature_age_seconds gauge",
    ]
    ages = {v.name: (freshness.age_s(v.name, now), alert_s) for v in live_views()}
    ages |= {view: (age, snapshot_alert_s) for view, age in (snapshots or {}).items()}
    for view, (age, _) in ages.items():
        if age is not None:
            lines.append(f'relay_feature_age_seconds{{view="{view}"}} {age:.3f}')
    lines += [
        "# HELP relay_feature_stale 1 when the view is older than its alert threshold.",
        "# TYPE relay_feature_stale gauge",
    ]
    for view, (age, limit) in ages.items():
        stale = age is None or age > limit
        lines.append(f'relay_feature_stale{{view="{view}"}} {int(stale)}')
    lines += [
        "# HELP relay_feature_push_failures_total Live feature pushes that failed.",
        "# TYPE relay_feature_push_failures_total counter",
        f"relay_feature_push_failures_total {freshness.push_failures}",
    ]
    return "\n".join(lines) + "\n"


def land(store: EventStore, lake: Lake, max_events: int = 50_000) -> int:
    """Copy up to ``max_events`` unlanded events to ``raw/order_events`` (by the UTC date they
    happened) and the labels they complete to ``serving/actuals`` (by the date the label was
    received, the serving log's partition of a prediction answered then), then mark them.

    At least once: a crash after the copy and before the mark copies them again, and readers
    drop repeated ``(order_id, type)`` (and ``order_id`` in the labels).

    Returns:
        Events landed.
    """
    events = store.unlanded(max_events)
    if events.empty:
        return 0
    out = events.drop(columns=["seq", "landed"])
    for day, part in out.groupby(out["occurred_at"].dt.date, sort=True):
        lake.append(part.reset_index(drop=True), ORDER_EVENTS, day)
    labels = _labels(store, events)
    for day, part in labels.groupby(labels.pop("_received").dt.date, sort=True):
        lake.append(part.reset_index(drop=True), ACTUALS, day)
    store.mark_landed(events["seq"].tolist())
    return len(events)


def _labels(store: EventStore, events: pd.DataFrame) -> pd.DataFrame:
    """The labels these events complete: orders among them with both ``created`` and
    ``delivered`` stored (either may have landed earlier)."""
    mine = events[events["type"].isin(["created", "delivered"])]
    ids = sorted(set(mine["order_id"]))
    created = store.occurred_at_of("created", ids)
    delivered = store.occurred_at_of("delivered", ids)
    both = [i for i in ids if i in created and i in delivered]
    received = events[events["type"] == "delivered"].set_index("order_id")["received_at"].to_dict()
    fallback = events["received_at"].max()
    rows = [
        {
            "order_id": i,
            "delivered_at": pd.Timestamp(delivered[i]),
            "actual_minutes": (delivered[i] - created[i]).total_seconds() / 60.0,
            "_received": received.get(i, fallback),
        }
        for i in both
    ]
    frame = pd.DataFrame(rows, columns=["order_id", "delivered_at", "actual_minutes", "_received"])
    frame["delivered_at"] = pd.to_datetime(frame["delivered_at"], utc=True)
    frame["_received"] = pd.to_datetime(frame["_received"], utc=True)
    return frame
