"""Replay's pure parts: pacing, the loopback rule, bounds, request bodies and labels."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest

from relay.data.scenarios import scenario_batch
from relay.ingest.landing import land_generated_batch
from relay.serve.schemas import Order, OrderBatch
from relay.settings import Settings
from relay.sim.client import NotLoopback, endpoint_url, require_loopback
from relay.sim.config import ReplayConfig, ReplayError, default_concurrency
from relay.sim.orders import (
    REQUEST_FIELDS,
    load_orders,
    order_payloads,
    request_body,
    request_chunks,
)
from relay.sim.replay import Pacer, percentiles

DAY = dt.date(2026, 11, 21)


class FakeClock:
    """A monotonic clock that only moves when the code under test sleeps (or a test says so)."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_pacer_sends_request_k_at_start_plus_k_over_rate():
    clock = FakeClock()
    pacer = Pacer(4.0, clock=clock, sleep=clock.sleep)
    sent = []
    for k in range(6):
        assert pacer.wait(k, deadline=clock.now + 100)
        sent.append(clock.now - 100.0)
    assert sent == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.25])


def test_pacer_does_not_drift_when_a_send_runs_late():
    clock = FakeClock()
    pacer = Pacer(10.0, clock=clock, sleep=clock.sleep)
    assert pacer.wait(0, 1e9)
    clock.now += 0.35  # the sender was held up for 3.5 slots
    for k in (1, 2, 3):
        assert pacer.wait(k, 1e9)
    assert clock.sleeps == []  # it catches up without sleeping
    assert pacer.wait(4, 1e9)
    assert clock.now == pytest.approx(100.4)  # back on the original schedule, not 0.1 s later


@pytest.mark.parametrize(("rate", "seconds", "expected"), [(50, 1.0, 50), (3, 2.0, 6), (7, 0.5, 4)])
def test_the_deadline_bounds_how_many_requests_go_out(rate, seconds, expected):
    clock = FakeClock()
    pacer = Pacer(rate, clock=clock, sleep=clock.sleep)
    deadline = pacer.start + seconds
    k = 0
    while pacer.wait(k, deadline):
        k += 1
    assert k == expected
    assert clock.now < deadline


def test_pacer_rejects_a_rate_that_is_not_positive():
    with pytest.raises(ValueError, match="rate"):
        Pacer(0)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/v1/eta",
        "http://localhost:8000/v1/eta",
        "http://LOCALHOST/v1/eta",
        "http://[::1]:8000/v1/eta",
        "https://127.0.0.1/v1/eta",
        "http://127.0.0.2:9/v1/eta",
    ],
)
def test_loopback_urls_are_accepted(url):
    assert require_loopback(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.5:8000/v1/eta",
        "http://eta.example.com/v1/eta",
        "http://127.0.0.1@evil.example.com/v1/eta",
        "http://localhost.evil.example.com/v1/eta",
        "http://0.0.0.0:8000/v1/eta",
        "http://[::ffff:10.0.0.1]:8000/v1/eta",
        "ftp://127.0.0.1/v1/eta",
        "127.0.0.1:8000/v1/eta",
        "http://127.0.0.1:99999/v1/eta",
        "",
    ],
)
def test_anything_else_is_refused_with_a_clear_error(url):
    with pytest.raises(NotLoopback, match=r"loopback|http"):
        require_loopback(url)


def test_an_invalid_port_is_named():
    with pytest.raises(NotLoopback, match="invalid port"):
        require_loopback("http://127.0.0.1:99999/v1/eta")


def test_default_url_is_the_configured_serve_proxy(tmp_path):
    assert endpoint_url(Settings(home=tmp_path)) == "http://127.0.0.1:8000/v1/eta"
    wildcard = Settings(home=tmp_path, serving={"host": "0.0.0.0", "port": 9100})
    assert endpoint_url(wildcard) == "http://127.0.0.1:9100/v1/eta"
    v6 = Settings(home=tmp_path, serving={"host": "::1", "port": 9100})
    assert require_loopback(endpoint_url(v6)) == "http://[::1]:9100/v1/eta"


def test_request_chunks_cover_every_order_once_in_order():
    chunks = request_chunks(10, 3)
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    assert [i for c in chunks for i in c] == list(range(10))
    assert request_chunks(0, 4) == []
    assert request_chunks(5, 1) == [range(i, i + 1) for i in range(5)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 0}, "rate"),
        ({"rate": float("inf")}, "rate"),
        ({"rate": 5, "max_orders": 0}, "max_orders"),
        ({"rate": 5, "max_seconds": 0}, "max_seconds"),
        ({"rate": 5, "batch": 0}, "batch"),
        ({"rate": 5, "batch": 257}, "batch"),
        ({"rate": 5, "label_delay_s": -1}, "label_delay_s"),
        ({"rate": 5, "concurrency": 0}, "concurrency"),
        ({"rate": 5, "skip": -1}, "skip"),
    ],
)
def test_config_refuses_unbounded_or_nonsense_values(kwargs, message):
    with pytest.raises(ReplayError, match=message):
        ReplayConfig(date=DAY, **kwargs)


def test_config_defaults_are_bounded():
    cfg = ReplayConfig(date=DAY, rate=200)
    assert cfg.max_orders == 2000 and cfg.max_seconds == 60.0 and cfg.batch == 1
    assert cfg.workers == default_concurrency(200) == 20
    assert default_concurrency(1) == 4 and default_concurrency(10_000) == 64
    assert ReplayConfig(date=DAY, rate=200, concurrency=3).workers == 3


def test_percentiles():
    assert percentiles([]) == [None, None]
    p50, p99 = percentiles([float(v) for v in range(1, 101)])
    assert p50 == pytest.approx(50.5) and p99 == pytest.approx(99.01)


def test_payloads_carry_exactly_the_request_fields_the_endpoint_accepts():
    orders = scenario_batch("normal", DAY, 40)
    payloads = order_payloads(orders)
    assert set(REQUEST_FIELDS) == set(Order.model_fields)
    for payload, (_, row) in zip(payloads, orders.iterrows(), strict=True):
        assert set(payload) == set(REQUEST_FIELDS)
        order = Order.model_validate(json.loads(json.dumps(payload)))
        assert order.order_id == row["order_id"]
        assert order.created_at == row["created_at"].to_pydatetime()
    one = json.loads(request_body(payloads[:1], batch=1))
    assert Order.model_validate(one).order_id == payloads[0]["order_id"]
    many = json.loads(request_body(payloads[:5], batch=5))
    assert [o.order_id for o in OrderBatch.model_validate(many).orders] == [
        p["order_id"] for p in payloads[:5]
    ]


def test_missing_values_become_json_null_so_the_endpoint_answers_422():
    orders = scenario_batch("nulls", DAY, 400)
    payloads = order_payloads(orders)
    for i in range(0, len(payloads), 200):
        json.loads(request_body(payloads[i : i + 200], batch=200))  # strict JSON: no NaN
    assert any(p["distance_km"] is None for p in payloads)
    renamed = order_payloads(scenario_batch("renamed_column", DAY, 10))
    assert "distance_km" not in renamed[0]


def test_the_replayed_events_pass_the_events_contract_and_carry_the_labels():
    from relay.serve.contract import Limits
    from relay.serve.events import parse_events
    from relay.sim.lifecycle import created_event, later_events

    orders = scenario_batch("normal", DAY, 50).iloc[[5, 2, 9]]
    now = dt.datetime.combine(DAY, dt.time(23, 59), tzinfo=dt.UTC)
    created = [created_event(o) for o in orders.to_dict("records")]
    later = later_events(orders)["body"].to_list()
    body = json.dumps({"events": created + later}).encode()
    rows = parse_events(body, Limits(created_at_max_age_s=2 * 86_400), now)
    types = [r["type"] for r in rows]
    assert types[:3] == ["created"] * 3
    assert sorted(types[3:]) == ["delivered"] * 3 + ["picked_up"] * 3
    by = {(r["order_id"], r["type"]): r["occurred_at"] for r in rows}
    for o in orders.itertuples():
        minutes = (by[o.order_id, "delivered"] - by[o.order_id, "created"]).total_seconds() / 60
        assert abs(minutes - o.delivery_minutes) < 1e-3
        assert by[o.order_id, "picked_up"] == o.picked_up_at


def test_orders_come_from_the_generator_in_time_order_under_a_scenario(tmp_path):
    s = Settings(home=tmp_path, data={"orders_per_day": 500})
    orders, source = load_orders(DAY, None, s)
    assert source == "generated normal"
    expected = scenario_batch("normal", DAY, 500, s.data.seed)
    pd.testing.assert_frame_equal(orders, expected.sort_values("created_at").reset_index(drop=True))
    assert orders["created_at"].is_monotonic_increasing
    storm, source = load_orders(DAY, "storm", s)
    assert source == "generated storm"
    assert storm["delivery_minutes"].mean() > orders["delivery_minutes"].mean()
    with pytest.raises(ValueError, match="unknown scenario"):
        load_orders(DAY, "meteor", s)


def test_orders_come_from_the_lake_when_the_pipeline_landed_the_day(tmp_path):
    s = Settings(home=tmp_path)
    land_generated_batch(DAY, 300, settings=s)
    orders, source = load_orders(DAY, None, s)
    assert source == "lake raw/orders" and len(orders) == 300
    generated, _ = load_orders(DAY, "normal", s, orders_per_day=300)
    assert orders["order_id"].tolist() == generated["order_id"].tolist()
