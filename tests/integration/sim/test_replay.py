"""Replay against a real HTTP server on a loopback port that answers like ``POST /v1/eta`` and
``POST /v1/events``.

The server validates ETA bodies with the endpoint's own request models, splits orders between
two versions by order id like the router does, and refuses some orders (422) or fails (503) by
a rule the tests know, so every count the replay reports can be checked exactly. Events go
through the endpoint's own contract into a real event store, landed with Relay's own landing.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from relay.cli import app
from relay.data.lake import ACTUALS, Lake
from relay.data.scenarios import scenario_batch
from relay.ingest.event_sink import land
from relay.ingest.event_store import EventStore
from relay.serve.contract import Limits
from relay.serve.events import parse_events
from relay.serve.log_read import read_actuals
from relay.serve.schemas import Order, OrderBatch
from relay.serve.traffic import TrafficSplit
from relay.settings import Settings, reset_settings
from relay.sim.client import EndpointUnreachable, NotLoopback
from relay.sim.config import ReplayConfig, ReplayError
from relay.sim.orders import request_chunks
from relay.sim.replay import replay

pytestmark = pytest.mark.integration

DAY = dt.date(2026, 12, 3)
ORDERS_PER_DAY = 2000
SPLIT = TrafficSplit("eta_v1", "eta_v2", 0.3)


def status_for(order_ids: Sequence[str]) -> int:
    """The test server's rule: ids ending in 7 are refused, every 25th (from 3) fails."""
    numbers = [int(o.rsplit("-", 1)[1]) for o in order_ids]
    if any(n % 10 == 7 for n in numbers):
        return 422
    if any(n % 25 == 3 for n in numbers):
        return 503
    return 200


@dataclass
class FakeEndpoint:
    url: str
    store: EventStore
    drop_connections: bool = False  # close each connection after its answer, unannounced
    events_unavailable: int = 0  # the first this many events requests get 503 + Retry-After
    lock: threading.Lock = field(default_factory=threading.Lock)
    # (monotonic arrival, order ids, x-request-id, status) per request
    requests: list[tuple[float, list[str], str, int]] = field(default_factory=list)
    # (monotonic arrival, event type, order id) per event received
    events: list[tuple[float, str, str]] = field(default_factory=list)

    def land(self, settings: Settings) -> int:
        """What the endpoint's landing thread does: stored events and their labels to the lake."""
        return land(self.store, Lake(settings))

    @property
    def answered(self) -> list[str]:
        return [o for _, ids, _, status in self.requests if status == 200 for o in ids]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the Serve proxy
    endpoint: FakeEndpoint

    def do_POST(self) -> None:
        arrived = time.monotonic()
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/v1/events":
            with self.endpoint.lock:
                opening = self.endpoint.events_unavailable > 0
                self.endpoint.events_unavailable -= opening
            if opening:  # the router's answer while its event store opens
                self._reply(503, {"detail": "the event store is opening"}, {"Retry-After": "0.1"})
                return
            now = dt.datetime.now(dt.UTC)
            years = 10 * 365 * 86_400  # the test day may be ahead of today
            limits = Limits(created_at_max_age_s=years, created_at_max_ahead_s=years)
            rows = parse_events(raw, limits, now)
            new = self.endpoint.store.add(rows, now)
            with self.endpoint.lock:
                self.endpoint.events += [(arrived, r["type"], r["order_id"]) for r in rows]
            self._reply(200, {"accepted": sum(new), "duplicates": len(new) - sum(new)})
            return
        if self.path != "/v1/eta":
            self._reply(404, {"detail": "Not Found"})
            return
        try:
            body = json.loads(raw)
            if isinstance(body, dict) and "orders" in body:
                orders = OrderBatch.model_validate(body).orders
            else:
                orders = [Order.model_validate(body)]
        except (ValueError, ValidationError) as exc:
            self._reply(422, {"detail": str(exc)})
            return
        ids = [o.order_id for o in orders]
        status = status_for(ids)
        with self.endpoint.lock:
            self.endpoint.requests.append((arrived, ids, self.headers["x-request-id"], status))
        if status != 200:
            self._reply(status, {"detail": "refused" if status == 422 else "model failed"})
            return
        predictions = [
            {
                "order_id": o.order_id,
                "eta_minutes": round(10 + 3 * o.distance_km, 3),
                "model_version": SPLIT.version_for(o.order_id),
                "missing_features": [],
            }
            for o in orders
        ]
        self._reply(200, {"predictions": predictions, "latency_ms": 0.1})

    def _reply(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        if self.endpoint.drop_connections:
            self.close_connection = True  # no "Connection: close": the client finds out later

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture()
def endpoint(tmp_path) -> Iterator[FakeEndpoint]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    store = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    fake = FakeEndpoint(url=f"http://127.0.0.1:{server.server_address[1]}/v1/eta", store=store)
    server.RequestHandlerClass = type("Handler", (_Handler,), {"endpoint": fake})
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        store.close()


@pytest.fixture()
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path, data={"orders_per_day": ORDERS_PER_DAY})


def _day(scenario: str = "normal") -> pd.DataFrame:
    df = scenario_batch(scenario, DAY, ORDERS_PER_DAY, 7)
    return df.sort_values("created_at", kind="stable").reset_index(drop=True)


def _today_actuals(settings: Settings) -> pd.DataFrame:
    today = dt.datetime.now(dt.UTC).date()
    one = dt.timedelta(days=1)
    return read_actuals(Lake(settings), today - one, today + one)


def test_replay_counts_paces_and_lands_one_label_per_answer(endpoint, settings):
    n, rate = 200, 200.0
    cfg = ReplayConfig(date=DAY, rate=rate, max_orders=n, url=endpoint.url)
    progress = []
    result = replay(cfg, settings, on_progress=progress.append)

    day = _day()
    first = day.iloc[:n]
    statuses = [status_for([o]) for o in first["order_id"]]
    answered = [o for o, s in zip(first["order_id"], statuses, strict=True) if s == 200]
    assert result.source == "generated normal"
    assert result.stopped_by == "max_orders"
    assert (result.requests_sent, result.orders_sent) == (n, n)
    assert result.ok == statuses.count(200) == len(endpoint.answered)
    assert result.client_errors == statuses.count(422) == 20
    assert result.server_errors == statuses.count(503) > 0
    assert result.failed == 0
    assert result.orders_answered == len(answered)
    assert result.by_version == {
        v: sum(SPLIT.version_for(o) == v for o in answered) for v in ("eta_v1", "eta_v2")
    }
    assert result.latency_p50_ms is not None and result.latency_p99_ms is not None
    assert 0 < result.latency_p50_ms <= result.latency_p99_ms
    assert progress and progress[-1].orders_sent == n

    # Sent in time order, each request once, paced: n requests at `rate` take ~n/rate s.
    assert sorted(o for _, ids, _, _ in endpoint.requests for o in ids) == sorted(first["order_id"])
    assert len({rid for _, _, rid, _ in endpoint.requests}) == n
    arrivals = sorted(t for t, _, _, _ in endpoint.requests)
    assert arrivals[-1] - arrivals[0] >= (n - 1) / rate * 0.8
    assert result.elapsed_s >= n / rate * 0.8
    assert result.achieved_rate <= rate * 1.05
    assert result.elapsed_s < 10

    # Each order's created event went before its ETA request.
    created = {o: t for t, kind, o in endpoint.events if kind == "created"}
    assert result.created_events == len(created) == n
    asked = {o: t for t, ids, _, _ in endpoint.requests for o in ids}
    assert all(created[o] <= asked[o] for o in asked)

    # Labels: one row per answered order, the generator's delivery times, in today's partition.
    endpoint.land(settings)
    labels = _today_actuals(settings)
    assert result.labels_sent == len(labels) == len(answered)
    assert sorted(labels["order_id"]) == sorted(answered)
    truth = day.set_index("order_id").loc[labels["order_id"]]
    # delivered − created, exact; the generator rounds delivery_minutes to 3 decimals.
    assert np.allclose(labels["actual_minutes"], truth["delivery_minutes"], atol=1e-3)
    assert (labels["delivered_at"].to_numpy() == truth["delivered_at"].to_numpy()).all()


def test_events_answered_503_while_the_store_opens_are_sent_again(endpoint, settings):
    """A router opens its event store on the first events request and answers 503 with
    Retry-After meanwhile: the replay waits as told and loses no event (seen in `make demo`:
    503 of 900 created events were lost before)."""
    endpoint.events_unavailable = 12
    cfg = ReplayConfig(date=DAY, rate=200, max_orders=40, concurrency=4, url=endpoint.url)
    result = replay(cfg, settings)
    assert endpoint.events_unavailable == 0 and result.event_failures == 0
    assert result.created_events == 40
    assert {o for _, kind, o in endpoint.events if kind == "created"} == set(
        _day().iloc[:40]["order_id"]
    )


def test_skip_starts_later_in_the_day(endpoint, settings):
    before = len(endpoint.requests)
    cfg = ReplayConfig(date=DAY, rate=200, max_orders=30, skip=500, url=endpoint.url)
    result = replay(cfg, settings)
    assert result.orders_sent == 30
    sent = sorted(o for _, ids, _, _ in endpoint.requests[before:] for o in ids)
    assert sent == sorted(_day().iloc[500:530]["order_id"])
    with pytest.raises(ReplayError, match="skip"):
        replay(ReplayConfig(date=DAY, rate=200, skip=10**9, url=endpoint.url), settings)


def test_batches_under_a_drift_carry_the_drifted_labels(endpoint, settings):
    n, batch = 100, 8
    cfg = ReplayConfig(
        date=DAY, rate=50, scenario="storm", max_orders=n, batch=batch, url=endpoint.url
    )
    result = replay(cfg, settings)

    storm = _day("storm")
    ids = storm["order_id"].tolist()
    chunks = [[ids[i] for i in c] for c in request_chunks(n, batch)]
    expected = [status_for(c) for c in chunks]
    assert result.source == "generated storm"
    assert result.requests_sent == len(chunks) == 13 and result.orders_sent == n
    assert (result.ok, result.client_errors, result.server_errors) == (
        expected.count(200),
        expected.count(422),
        expected.count(503),
    )
    # Batched as the chunks say; concurrent requests may arrive in either order (seen in CI).
    assert sorted(ids for _, ids, _, _ in endpoint.requests) == chunks
    answered = [o for c, s in zip(chunks, expected, strict=True) if s == 200 for o in c]
    endpoint.land(settings)
    labels = _today_actuals(settings)
    assert sorted(labels["order_id"]) == sorted(answered) and answered
    truth = storm.set_index("order_id").loc[labels["order_id"], "delivery_minutes"]
    assert np.allclose(labels["actual_minutes"], truth, atol=1e-3)
    normal = _day().set_index("order_id").loc[labels["order_id"], "delivery_minutes"]
    assert not np.allclose(labels["actual_minutes"], normal)  # the drift is in the labels


def test_max_seconds_stops_the_run(endpoint, settings):
    cfg = ReplayConfig(date=DAY, rate=40, max_orders=100_000, max_seconds=0.5, url=endpoint.url)
    t0 = time.monotonic()
    result = replay(cfg, settings)
    assert result.stopped_by == "max_seconds"
    assert result.requests_sent == 20 == len(endpoint.requests)
    assert result.elapsed_s < 0.5 + 2.0
    assert time.monotonic() - t0 < 10  # loading the day and landing labels included


def test_keepalive_connections_the_server_dropped_are_retried_once(endpoint, settings):
    endpoint.drop_connections = True
    cfg = ReplayConfig(date=DAY, rate=100, max_orders=60, concurrency=2, url=endpoint.url)
    result = replay(cfg, settings)
    assert result.failed == 0
    assert result.ok + result.client_errors + result.server_errors == 60
    assert len({rid for _, _, rid, _ in endpoint.requests}) == len(endpoint.requests) == 60


def test_a_short_day_ends_the_run(endpoint, tmp_path):
    s = Settings(home=tmp_path, data={"orders_per_day": 30})
    result = replay(ReplayConfig(date=DAY, rate=300, url=endpoint.url), s)
    assert result.stopped_by == "end_of_day" and result.orders_sent == 30


def test_label_delay_sends_labels_during_the_run(endpoint, settings):
    cfg = ReplayConfig(date=DAY, rate=100, max_orders=180, label_delay_s=0.2, url=endpoint.url)
    result = replay(cfg, settings)
    delivered = [t for t, kind, _ in endpoint.events if kind == "delivered"]
    last_eta = max(t for t, _, _, _ in endpoint.requests)
    assert min(delivered) < last_eta  # at least one batch mid-run
    endpoint.land(settings)
    labels = _today_actuals(settings)
    assert len(labels) == labels["order_id"].nunique() == result.orders_answered


def test_non_loopback_urls_are_refused_before_anything_is_sent(endpoint, settings):
    for url in ("http://10.1.2.3:8000/v1/eta", "http://eta.example.com/v1/eta"):
        with pytest.raises(NotLoopback, match="loopback"):
            replay(ReplayConfig(date=DAY, rate=10, url=url), settings)
    assert endpoint.requests == []
    assert not Lake(settings).partitions(ACTUALS)


def test_nothing_listening_is_a_clear_error(settings):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(EndpointUnreachable, match="relay serve up"):
        replay(ReplayConfig(date=DAY, rate=10, url=f"http://127.0.0.1:{port}/v1/eta"), settings)


@pytest.fixture()
def cli_home(tmp_path, monkeypatch) -> Iterator[Any]:
    monkeypatch.setenv("RELAY_HOME", str(tmp_path))
    monkeypatch.setenv("RELAY_DATA__ORDERS_PER_DAY", str(ORDERS_PER_DAY))
    reset_settings()
    yield tmp_path
    reset_settings()


def test_cli_replays_and_prints_json(endpoint, cli_home):
    runner = CliRunner()
    args = ["replay", "--date", DAY.isoformat(), "--rate", "100", "--max-orders", "50"]
    res = runner.invoke(app, [*args, "--batch", "2", "--url", endpoint.url, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["orders_sent"] == 50 and out["requests_sent"] == 25
    assert out["ok"] + out["client_errors"] + out["server_errors"] == 25
    assert out["labels_sent"] == out["orders_answered"] == 2 * out["ok"]
    assert out["date"] == DAY.isoformat() and out["stopped_by"] == "max_orders"

    res = runner.invoke(app, [*args, "--url", endpoint.url])
    assert res.exit_code == 0, res.output
    assert "requests: 50 sent" in res.stdout and "events:" in res.stdout


def test_cli_refuses_a_remote_url_and_a_bad_scenario(endpoint, cli_home):
    runner = CliRunner()
    args = ["replay", "--date", DAY.isoformat(), "--rate", "10"]
    res = runner.invoke(app, [*args, "--url", "http://192.0.2.10:8000/v1/eta"])
    assert res.exit_code == 1
    assert "loopback" in res.output
    res = runner.invoke(app, [*args, "--scenario", "meteor", "--url", endpoint.url])
    assert res.exit_code == 2 and "--scenario" in res.output
    assert endpoint.requests == []
