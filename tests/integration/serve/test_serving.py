"""The ETA endpoint on a real local Ray Serve: no skew, 4xx, canary split, zone targeting,
rollback under load, serving log."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from relay.data.lake import VALIDATED_ORDERS, Lake
from relay.features.store import OnlineFeatures, apply, materialize, training_frame
from relay.model.bundle import ModelBundle
from relay.model.preprocess import Preprocessor
from relay.model.registration import register_trained
from relay.model.training import build_model, model_inputs, save_run, tensor_batches, train_epoch
from relay.registry import Registry
from relay.serve.traffic import OrderTargeting, TrafficSplit
from relay.settings import get_settings

pytestmark = pytest.mark.slow


def _train_and_register(frame: pd.DataFrame, out: Path, seed: int, epochs: int) -> str:
    torch.manual_seed(seed)
    prep = Preprocessor.fit(frame)
    model = build_model(prep, {"hidden_layers": 2, "hidden_units": 32})
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    arrays = model_inputs(prep, frame)
    for e in range(epochs):
        train_epoch(model, tensor_batches(arrays, 256, True, e), opt, prep.label_std)
    save_run(out, model, prep, {"hidden_layers": 2}, {"val_mae": 0.0}, len(frame))
    return register_trained(out, training_set_uri="test", data_partitions=[]).id


def _post(
    url: str,
    body: Any,
    timeout: float = 10.0,
    headers: dict[str, str] | None = None,
    path: str = "/v1/eta",
) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(
        url + path, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _order(row: pd.Series, order_id: str | None = None) -> dict[str, Any]:
    return {
        "order_id": order_id or row["order_id"],
        "courier_id": row["courier_id"],
        "merchant_id": row["merchant_id"],
        "zone_id": row["zone_id"],
        "distance_km": float(row["distance_km"]),
        "created_at": row["created_at"].isoformat(),
    }


def two_versions(lake_days, base: Path, epochs: tuple[int, int]) -> dict[str, Any]:
    """The feature store applied and materialized through the lake's last day, and two small
    versions registered from the same training frame (seeds 1 and 2) under ``base``."""
    apply()
    end = dt.datetime.combine(lake_days[-1] + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    materialize(end)
    orders = Lake().read_range(VALIDATED_ORDERS, lake_days[0], lake_days[-1])
    frame = training_frame(orders)
    v1 = _train_and_register(frame, base / "v1", seed=1, epochs=epochs[0])
    v2 = _train_and_register(frame, base / "v2", seed=2, epochs=epochs[1])
    return {"v1": v1, "v2": v2, "orders": orders, "frame": frame, "end": end}


@pytest.fixture(scope="module")
def served(lake_days, tmp_path_factory):
    import ray
    from ray import serve

    from relay.serve import control

    base = tmp_path_factory.mktemp("runs")
    made = two_versions(lake_days, base, epochs=(3, 2))
    v1, v2, orders, frame, end = (made[k] for k in ("v1", "v2", "orders", "frame", "end"))

    from tests.integration.conftest import _free_port

    settings = get_settings().model_copy(deep=True)
    settings.serving.port = _free_port()
    metrics_port = _free_port()  # the node's metrics agent, as Prometheus scrapes it
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _metrics_export_port=metrics_port,
    )
    try:
        control.start_serve(settings)
        control.deploy_model(v1, settings)
        control.deploy_model(v2, settings)
        control.set_traffic(TrafficSplit(stable=v1), settings)
        yield {
            "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
            "v1": v1,
            "v2": v2,
            "url": control.endpoint(settings),
            "settings": settings,
            "orders": orders[orders["created_at"].dt.date == lake_days[-1]],
            "frame": frame,
            "runs": base,
            "end": end,
        }
    finally:
        serve.shutdown()
        ray.shutdown()


# Relay's Ray metrics as Prometheus scrapes them (relay.serve.ray_metrics): the first test, on
# counters nothing has touched yet, serves two versions half and half and scrapes the node's
# metrics agent until every version's series are there.
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _series(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of ``name`` in a Prometheus text exposition: its labels and value."""
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m["name"] == name:
            out.append((dict(_LABEL.findall(m["labels"])), float(m["value"])))
    return out


def _summed(text: str, name: str, by: str, **match: str) -> dict[str, float]:
    """``sum by (by) (name{match})``: what the dashboard's queries add over replicas."""
    totals: Counter[str] = Counter()
    for labels, value in _series(text, name):
        if all(labels.get(k) == v for k, v in match.items()) and by in labels:
            totals[labels[by]] += value
    return dict(totals)


def test_every_version_is_counted_across_replicas_as_prometheus_scrapes_it(served, capsys):
    from relay.serve import control

    v1, v2, s = served["v1"], served["v2"], served["settings"]
    control.set_traffic(TrafficSplit(stable=v1, candidate=v2, candidate_share=0.5), s)
    try:
        _scrape_every_version(served, capsys)
    finally:
        control.set_traffic(TrafficSplit(stable=v1), s)


def _scrape_every_version(served: dict[str, Any], capsys: Any) -> None:
    v1, v2 = served["v1"], served["v2"]
    rows = served["orders"].head(50)
    sent = 400

    def one(i: int) -> tuple[int, str | None]:
        row = rows.iloc[i % len(rows)]
        status, body = _post(served["url"], {"orders": [_order(row, f"metrics-{i}")]})
        return status, (body["predictions"][0]["model_version"] if status == 200 else None)

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(one, range(sent)))
    load_s = time.monotonic() - t0
    assert Counter(s for s, _ in answers) == {200: sent}
    took = Counter(v for _, v in answers)
    assert took[v1] > 0.3 * sent and took[v2] > 0.3 * sent, took  # both took load

    # The metrics agent exports what the workers recorded every few seconds: scrape until
    # every request is there, or the deadline.
    deadline = time.monotonic() + 60
    scrapes = 0
    while True:
        text = urllib.request.urlopen(served["metrics"], timeout=10).read().decode()
        scrapes += 1
        counted = _summed(text, "ray_relay_requests_total", "model_version", outcome="ok")
        # The model replicas export on their own clock, apart from the router: wait for theirs.
        batched = _summed(text, "ray_relay_model_batch_size_count", "model_version")
        # Each series reaches the agent on its own: wait for every one asserted below.
        why = _summed(text, "ray_relay_model_batches_total", "model_version")
        aged = _summed(text, "ray_relay_feature_row_age_seconds_count", "model_version")
        cached = _series(text, "ray_relay_prediction_cache_lookups_total")
        complete = (
            sum(counted.values()) >= sent
            and set(batched) >= set(counted)
            and set(why) >= set(counted)
            and set(aged) >= set(counted)
            and cached
        )
        if complete or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # the agent's next export, bounded by the deadline
    waited_s = time.monotonic() - t0 - load_s
    with capsys.disabled():
        print(
            f"\n  {sent} requests in {load_s:.1f} s; per-version series complete "
            f"{waited_s:.1f} s later ({scrapes} scrapes): {counted}"
        )
    # Each request is one call of one version: the counter per version is what clients saw.
    for version in (v1, v2):
        assert counted.get(version, 0) == pytest.approx(took[version], rel=0.01), counted
    assert not _summed(text, "ray_relay_requests_total", "model_version", outcome="error")

    # Latency per version: a histogram whose count is the calls and whose +Inf holds them all.
    latency = _summed(text, "ray_relay_request_latency_ms_count", "model_version")
    inf = _summed(text, "ray_relay_request_latency_ms_bucket", "model_version", le="+Inf")
    for version in (v1, v2):
        assert latency[version] == counted[version] == inf[version]
    predictions = _summed(text, "ray_relay_predictions_total", "model_version")
    assert predictions == counted

    # Batch size per version: every forward pass, of 1 to 8 orders (8 concurrent clients), each
    # call in one pass. Ray exports a histogram's sum from its buckets' midpoints (a pass of one
    # order counts 0.5, of 3 counts 3), so the sum lies within [passes / 2, 1.5 x orders).
    passes = _summed(text, "ray_relay_model_batch_size_count", "model_version")
    orders = _summed(text, "ray_relay_model_batch_size_sum", "model_version")
    for version in (v1, v2):
        assert 0 < passes.get(version, 0) <= counted[version], (passes, counted)
        assert passes[version] / 2 <= orders[version] < 1.5 * counted[version], (passes, orders)
    # And why each pass went, per version.
    why = _series(text, "ray_relay_model_batches_total")
    assert {labels["model_version"] for labels, _ in why} == {v1, v2}, why
    assert {labels["reason"] for labels, _ in why} <= {"full", "joined", "waited", "alone"}

    # Feature freshness per version and view: the fixture materialized days-old values.
    ages = _series(text, "ray_relay_feature_row_age_seconds_count")
    views = {(labels["model_version"], labels["view"]) for labels, _ in ages}
    assert {v for v, _ in views} == {v1, v2}, views
    age_sum = _summed(text, "ray_relay_feature_row_age_seconds_sum", "model_version")
    age_count = _summed(text, "ray_relay_feature_row_age_seconds_count", "model_version")
    assert all(age_sum[v] / age_count[v] > 3600 for v in (v1, v2)), (age_sum, age_count)

    # The prediction cache per version and level (published about once a second per replica).
    lookups = _series(text, "ray_relay_prediction_cache_lookups_total")
    assert {labels["model_version"] for labels, _ in lookups} <= {v1, v2}
    assert lookups and all("level" in labels for labels, _ in lookups)


def test_http_predictions_equal_offline_predictions(served):
    sample = served["orders"].sample(40, random_state=5)
    status, body = _post(served["url"], {"orders": [_order(r) for _, r in sample.iterrows()]})
    assert status == 200, body
    got = {p["order_id"]: p for p in body["predictions"]}
    assert list(got) == list(sample["order_id"])
    assert {p["model_version"] for p in got.values()} == {served["v1"]}
    # Offline: the same features from the store, the same registered model, in this process.
    feats = OnlineFeatures().read_frame(sample)
    bundle = ModelBundle.from_registry(Registry(), served["v1"])
    expected = bundle.predict(feats)
    np.testing.assert_allclose(
        [got[o]["eta_minutes"] for o in sample["order_id"]], expected, atol=1e-3
    )


def test_one_order_without_a_list_is_accepted(served):
    row = served["orders"].iloc[0]
    status, body = _post(served["url"], _order(row))
    assert status == 200 and len(body["predictions"]) == 1
    assert body["predictions"][0]["order_id"] == row["order_id"]


def test_ready_means_the_stable_version_answers_and_says_how_the_store_is(served):
    with urllib.request.urlopen(served["url"] + "/readyz", timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "ready" and body["online_store"] == "ok", body
    assert served["v1"] in body["versions"]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda o: o.pop("distance_km"), "distance_km"),
        (lambda o: o.update(distance_km="far"), "distance_km"),
        (lambda o: o.update(distance_km=-3), "distance_km"),
        (lambda o: o.update(courier_id=""), "courier_id"),
        (lambda o: o.update(created_at="yesterday"), "created_at"),
        (lambda o: o.update(surprise=1), "surprise"),
    ],
)
def test_invalid_orders_get_422_naming_the_field(served, mutate, field):
    order = _order(served["orders"].iloc[1])
    mutate(order)
    status, body = _post(served["url"], {"orders": [order]})
    assert status == 422
    assert any(field in [str(x) for x in d["loc"]] for d in body["detail"]), body


def test_openapi_declares_the_body_the_handler_accepts_and_its_4xx(served):
    from bench.fuzz import body_schema

    with urllib.request.urlopen(served["url"] + "/openapi.json", timeout=10) as resp:
        post = json.loads(resp.read())["paths"]["/v1/eta"]["post"]
    assert {"200", "413", "422", "503"} <= set(post["responses"])
    assert [p["name"] for p in post["parameters"]] == ["x-request-id"]
    shapes = body_schema(served["url"])["anyOf"]
    assert {frozenset(s["properties"]) for s in shapes} == {
        frozenset(_order(served["orders"].iloc[0])),
        frozenset({"orders"}),
    }


def test_schema_driven_fuzzing_gets_no_5xx_and_restarts_no_replica(served, capsys):
    import ray

    from bench.fuzz import fuzz

    def replicas() -> set[str]:  # a replica Serve replaced comes back under a new id
        named = ray.util.list_named_actors(all_namespaces=True)
        return {a["name"] for a in named if "SERVE_REPLICA" in a["name"]}

    before = replicas()
    rows = served["orders"].head(20).iterrows()
    orders = [_order(r, f"fuzz-{i}") for i, (_, r) in enumerate(rows)]
    n = int(os.environ.get("FUZZ_REQUESTS", "300"))  # the benchmark run: FUZZ_REQUESTS=10000
    statuses = fuzz(served["url"], orders, n=n)
    with capsys.disabled():
        print(f"\nfuzzing: {dict(statuses)}")
    assert sum(statuses.values()) >= n
    assert all(isinstance(s, int) and s < 500 for s in statuses), (statuses, statuses.failures)
    assert statuses[200] > 0 and statuses[422] > 0, statuses  # both paths were exercised
    assert replicas() == before
    status, _ = _post(served["url"], orders[0])
    assert status == 200


def test_malformed_empty_and_oversized_requests_then_still_serving(served):
    status, body = _post(served["url"], b"{not json")
    assert status == 422 and body["detail"][0]["type"] == "json_invalid"
    status, body = _post(served["url"], {"orders": []})
    assert status == 422 and "orders" in body["detail"][0]["loc"]
    row = served["orders"].iloc[2]
    big = {"orders": [_order(row, f"big-{i}") for i in range(257)]}
    status, body = _post(served["url"], big)
    assert status == 422 and "orders" in body["detail"][0]["loc"]
    status, body = _post(served["url"], b" " * ((1 << 20) + 1))
    assert status == 413 and body["detail"][0]["loc"] == ["body"]
    for created_at in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        status, body = _post(served["url"], {**_order(row), "created_at": created_at})
        assert status == 422 and body["detail"][0]["loc"] == ["body", "created_at"], body
    status, body = _post(served["url"], b"[" * 100_000 + b"]" * 100_000)
    assert status == 422 and body["detail"][0]["type"] == "json_too_deep"
    status, body = _post(served["url"], _order(row))
    assert status == 200


def test_orders_at_the_contracts_edges_are_answered_at_every_hour(served):
    """The fuzzer's 503s: a distance the contract allows, at an hour where the model
    extrapolated outside RELAY_SERVING__MIN/MAX_ETA_MINUTES. Every such order gets an ETA."""
    row = served["orders"].iloc[4]
    start = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    orders = [
        {
            **_order(row, f"edge-{km}-{h}"),
            "courier_id": "C_NEVER_SEEN",
            "distance_km": km,
            "created_at": (start - dt.timedelta(hours=h)).isoformat(),
        }
        for km in (1e-9, 100.0)
        for h in range(0, 168, 7)  # every hour of the day, every weekday
    ]
    sv = served["settings"].serving
    status, body = _post(served["url"], {"orders": orders})
    assert status == 200, body
    etas = [p["eta_minutes"] for p in body["predictions"]]
    assert len(etas) == len(orders)
    assert all(sv.min_eta_minutes < e <= sv.max_eta_minutes for e in etas), etas


def test_unknown_courier_gets_defaults_and_a_flag(served):
    order = _order(served["orders"].iloc[3], "unknown-courier-1")
    order["courier_id"] = "C_NEVER_SEEN"
    status, body = _post(served["url"], order)
    assert status == 200
    pred = body["predictions"][0]
    assert "courier_mean_delivery_24h" in pred["missing_features"]
    assert 0 < pred["eta_minutes"] < 300


def _post_events(url: str, body: Any) -> tuple[int, dict[str, Any]]:
    """POST /v1/events, waiting out the 503s of a router still opening its event store."""
    deadline = time.monotonic() + 60
    while True:
        status, answer = _post(url, body, path="/v1/events")
        opening = status == 503 and "opening" in str(answer.get("detail"))
        if not opening or time.monotonic() > deadline:
            return status, answer
        threading.Event().wait(0.2)


def _created(row: pd.Series, **change: Any) -> dict[str, Any]:
    return {
        "type": "created",
        "order_id": row["order_id"],
        "occurred_at": row["created_at"].isoformat(),
        "courier_id": row["courier_id"],
        "merchant_id": row["merchant_id"],
        "zone_id": row["zone_id"],
        "distance_km": float(row["distance_km"]),
        "weather": row["weather"],
        **change,
    }


@pytest.mark.parametrize(
    ("mutate", "loc"),
    [
        (lambda e: e.pop("zone_id"), ["body", "created", "zone_id"]),
        (lambda e: e.update(distance_km=0), ["body", "created", "distance_km"]),
        (lambda e: e.update(weather="sunny"), ["body", "created", "weather"]),
        (lambda e: e.update(occurred_at="1999-01-01T00:00:00"), ["body", "created", "occurred_at"]),
        (lambda e: e.update(type="cooked"), ["body", "type"]),
        (lambda e: e.update(color="red"), ["body", "created", "color"]),
    ],
)
def test_invalid_events_get_422_naming_the_field(served, mutate, loc):
    event = _created(served["orders"].iloc[1], order_id="bad-event")
    mutate(event)
    status, body = _post_events(served["url"], event)
    assert status == 422, body
    assert loc in [d["loc"] for d in body["detail"]], body


def test_a_created_event_is_served_on_the_next_request_and_resending_changes_nothing(served):
    """A zone the store has never seen: its live features are missing, then one batch of
    created events later they are what the events say, in the very next ETA."""
    from relay.ingest.event_store import EventStore

    # Ids of their own: the skew test below compares every served order of the day.
    rows = served["orders"].iloc[10:15].assign(order_id=lambda d: "evt-" + d["order_id"])
    zone, weather = "Z_NEW_EVENTS", "storm"
    order = {**_order(rows.iloc[-1]), "zone_id": zone}
    status, body = _post(served["url"], order)
    assert status == 200
    assert {"zone_orders_1h", "zone_weather"} <= set(body["predictions"][0]["missing_features"])

    events = {"events": [_created(r, zone_id=zone, weather=weather) for _, r in rows.iterrows()]}
    status, body = _post_events(served["url"], events)
    assert (status, body) == (200, {"accepted": 5, "duplicates": 0})
    status, body = _post(served["url"], order)
    assert status == 200
    pred = body["predictions"][0]
    assert not {"zone_orders_1h", "zone_weather"} & set(pred["missing_features"])
    online = OnlineFeatures().read_frame([{**order, "hour": 0, "weekday": 0}])
    in_window = rows["created_at"] > rows["created_at"].iloc[-1] - pd.Timedelta(hours=1)
    assert online["zone_orders_1h"].iloc[0] == in_window.sum()
    assert online["zone_weather"].iloc[0] == weather
    # What it served is the model on the pushed features.
    bundle = ModelBundle.from_registry(Registry(), served["v1"])
    expected = bundle.predict(
        OnlineFeatures().read_frame(
            pd.DataFrame([order]).assign(created_at=pd.to_datetime([order["created_at"]], utc=True))
        )
    )
    np.testing.assert_allclose(pred["eta_minutes"], expected[0], atol=1e-3)
    # /metrics (one router replica here): the live view was just pushed; the snapshot views'
    # newest values are the fixture's materialization, days old: stale.
    text = urllib.request.urlopen(served["url"] + "/metrics").read().decode()
    lines = set(text.splitlines())
    assert 'relay_feature_stale{view="zone_live"} 0' in lines
    assert 'relay_feature_stale{view="courier_stats"} 1' in lines
    assert any(line.startswith('relay_feature_age_seconds{view="zone_stats"} ') for line in lines)

    store = EventStore(get_settings().events.database_url)
    stored = store.count()
    status, body = _post_events(served["url"], events)
    assert (status, body) == (200, {"accepted": 0, "duplicates": 5})
    assert store.count() == stored
    store.close()


def test_canary_at_ten_percent_is_deterministic_by_order_id(served):
    from relay.serve import control

    control.set_traffic(TrafficSplit(served["v1"], served["v2"], 0.10), served["settings"])
    row = served["orders"].iloc[4]
    ids = [f"canary-{i}" for i in range(2000)]
    seen: dict[str, str] = {}
    for chunk in range(0, 2000, 100):
        status, body = _post(
            served["url"], {"orders": [_order(row, oid) for oid in ids[chunk : chunk + 100]]}
        )
        assert status == 200
        seen.update({p["order_id"]: p["model_version"] for p in body["predictions"]})
    share = Counter(seen.values())[served["v2"]] / len(ids)
    assert 0.08 <= share <= 0.12, share
    # The same id always reaches the same version.
    status, body = _post(served["url"], {"orders": [_order(row, oid) for oid in ids[:100]]})
    assert all(seen[p["order_id"]] == p["model_version"] for p in body["predictions"])
    status, models = 200, json.loads(urllib.request.urlopen(served["url"] + "/v1/models").read())
    shares = {m["version"]: m["traffic_share"] for m in models["versions"]}
    assert shares == {served["v1"]: pytest.approx(0.9), served["v2"]: pytest.approx(0.1)}
    # A zone-targeted split: every order of that zone reaches v2, no order of another zone does.
    orders = served["orders"]
    zone = str(orders["zone_id"].iloc[0])
    targeted = TrafficSplit(served["v1"], served["v2"], 1.0, OrderTargeting(zones=(zone,)))
    control.set_traffic(targeted, served["settings"])
    inside = orders[orders["zone_id"] == zone].head(50)
    outside = orders[orders["zone_id"] != zone].head(50)
    assert len(inside) and len(outside)
    batch = [
        _order(r, f"zone-{i}") for i, (_, r) in enumerate(pd.concat([inside, outside]).iterrows())
    ]
    status, body = _post(served["url"], {"orders": batch})
    assert status == 200 and len(body["predictions"]) == len(batch)
    by_zone = {o["order_id"]: o["zone_id"] for o in batch}
    for p in body["predictions"]:
        want = served["v2"] if by_zone[p["order_id"]] == zone else served["v1"]
        assert p["model_version"] == want, (p, by_zone[p["order_id"]])


def test_rollback_under_load_loses_no_request_and_stalls_none(served):
    from relay.serve import control

    control.set_traffic(TrafficSplit(served["v1"], served["v2"], 0.5), served["settings"])
    row = served["orders"].iloc[5]
    results: list[tuple[int, float, list[str]]] = []
    stop = threading.Event()

    def load() -> None:
        i = 0
        deadline = time.monotonic() + 60  # bounded even if the test fails early
        while not stop.is_set() and time.monotonic() < deadline and i < 5000:
            t = time.perf_counter()
            status, body = _post(
                served["url"], {"orders": [_order(row, f"load-{i}-{j}") for j in range(4)]}
            )
            versions = [p["model_version"] for p in body.get("predictions", [])]
            results.append((status, time.perf_counter() - t, versions))
            i += 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    while len(results) < 40:  # traffic on both versions before the switch
        time.sleep(0.05)  # polling a counter from the load threads, bounded by their deadline
    control.rollback(served["settings"])
    switched_at = len(results)
    while len(results) < switched_at + 80:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    statuses = Counter(s for s, _, _ in results)
    assert statuses == {200: len(results)}, statuses
    # A rollback that redeploys the router stalls every request for 4.6 s here; the actor split
    # must not stall at all. Four client threads on 2 cores alone reach ~1.75 s at worst, so
    # the bound sits between the two.
    assert max(lat for _, lat, _ in results) < 3.0
    assert {v for _, _, vs in results[:switched_at] for v in vs} == {served["v1"], served["v2"]}
    assert {v for _, _, vs in results[-20:] for v in vs} == {served["v1"]}


def test_serving_log_holds_every_answered_prediction(served):
    from ray import serve

    from relay.serve.log_read import read_serving_log
    from relay.serve.traffic_state import MODEL_DEPLOYMENT, model_app_name

    rows = served["orders"].iloc[10:30]
    ids = [f"logged-{i}" for i in range(len(rows))]
    status, body = _post(
        served["url"],
        {"orders": [_order(r, oid) for (_, r), oid in zip(rows.iterrows(), ids, strict=True)]},
    )
    assert status == 200
    for v in (served["v1"], served["v2"]):
        serve.get_deployment_handle(
            MODEL_DEPLOYMENT, app_name=model_app_name(v)
        ).flush_log.remote().result()
    day = dt.datetime.now(dt.UTC).date()
    log = read_serving_log(Lake(), day - dt.timedelta(days=1), day + dt.timedelta(days=1))
    logged = log[log["order_id"].isin(ids)]
    assert sorted(logged["order_id"]) == sorted(ids)
    by_id = logged.set_index("order_id")
    for p in body["predictions"]:
        assert by_id.loc[p["order_id"], "model_version"] == p["model_version"]
        assert by_id.loc[p["order_id"], "eta_minutes"] == pytest.approx(p["eta_minutes"])


#: What the order itself says, computed at request time the same way as in training.
REQUEST_TIME = (
    "order_distance_km",
    "order_hour",
    "order_weekday",
    "order_is_weekend",
    "order_is_rush_hour",
    "zone_id",
    "courier_id",
    "merchant_id",
)


def test_skew_against_point_in_time_training_rows_is_measured_per_feature(served, tmp_path, capsys):
    from ray import serve

    from relay.features.skew import skew_for_day, write_skew_report
    from relay.serve import control
    from relay.serve.traffic_state import MODEL_DEPLOYMENT, model_app_name

    control.set_traffic(TrafficSplit(stable=served["v1"]), served["settings"])
    rows = served["orders"].sample(256, random_state=3)
    since = dt.datetime.now(dt.UTC)
    status, body = _post(served["url"], {"orders": [_order(r) for _, r in rows.iterrows()]})
    assert status == 200, body
    serve.get_deployment_handle(
        MODEL_DEPLOYMENT, app_name=model_app_name(served["v1"])
    ).flush_log.remote().result()
    served_on = dt.datetime.now(dt.UTC).date()
    skew = skew_for_day(served_on, orders_of=served["orders"]["created_at"].dt.date.iloc[0])
    with capsys.disabled():  # the measurement (README's skew table)
        print(f"\nskew of {skew.orders} served orders against their training rows:")
        for row in skew.table():
            print(f"  {row['feature']:<28} {row['rate']:7.1%}  largest {row['max_abs_diff']}")
        print(f"  only served: {skew.only_served}; only in training: {skew.only_training}")
        print(f"  PSI served vs training rows: {_live_psi(served_on, rows)}")
    assert skew.orders >= 256, skew
    by = {f.feature: f for f in skew.features}
    for name in REQUEST_TIME:  # the request's own features: never skewed
        assert by[name].differing == 0, by[name]
    page = write_skew_report(tmp_path / "skew.html", skew)
    assert page.stat().st_size > 0
    # What a monitoring run calls it: the stale hourly features drift from the very orders'
    # training rows, and its feature-drift check fails on a drift no new model can answer (the
    # retrain rules then wait for confirmation and persistence; main's rules retrained at once).
    drift, verdict = _monitoring_judgement(since, rows, tmp_path / "drift", served["v1"])
    with capsys.disabled():
        print("  monitoring's drift of these orders against their training rows:")
        _print_drift(drift)
    by_feature = {f.name: f for f in drift.features}
    assert by_feature["zone_orders_1h"].drifted and (by_feature["zone_orders_1h"].psi or 0) > 0.2
    assert "feature_drift" in verdict.failed_checks, verdict.reasons
    # `relay features skew`: the same table, the report, and exit 1 while the day is skewed.
    from typer.testing import CliRunner

    from relay.cli import app

    day = served["orders"]["created_at"].dt.date.iloc[0]
    out = tmp_path / "cli-skew.html"
    args = ["features", "skew", "--date", f"{served_on}", "--orders-date", f"{day}"]
    res = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == (0 if skew.clean else 1), res.output
    assert "zone_orders_1h" in res.output and out.exists()


def _live_psi(
    served_on: dt.date, orders: pd.DataFrame, since: dt.datetime | None = None
) -> dict[str, float]:
    """Monitoring's PSI of the live features as served against the same orders' training rows:
    the part of a drift verdict that is the serving path's own staleness."""
    from relay.features.catalog import live_views, view_features
    from relay.monitor.drift import psi
    from relay.serve.log_read import features_of, read_serving_log

    log = read_serving_log(Lake(), served_on, served_on)
    if since is not None:
        log = log[log["requested_at"] >= pd.Timestamp(since)]
    log = log[log["order_id"].isin(orders["order_id"])].drop_duplicates("order_id")
    served = features_of(log)
    training = training_frame(orders)
    out = {}
    for view in live_views():
        for f in view_features(view.name):
            out[f.name] = round(psi(training[f.name], served[f.name], categorical=f.categorical), 4)
    return out


def _monitoring_judgement(
    since: dt.datetime, orders: pd.DataFrame, out_dir: Path, version: str
) -> tuple[Any, Any]:
    """What a monitoring run (``eta_monitoring``) measures and decides of the serving log since
    ``since`` for ``orders``, read as the DAG reads its window, against those orders' own
    training rows: any drift is the serving path's, none the world's."""
    from relay.features.catalog import live_views, view_features
    from relay.monitor.report import build_report
    from relay.monitor.rules import decide
    from relay.monitor.window import read_window

    end = dt.datetime.now(dt.UTC)
    window = read_window(Lake(), since, end)
    window = window[window["order_id"].isin(orders["order_id"])].drop_duplicates("order_id")
    bundle = ModelBundle.from_registry(Registry(), version)
    drift = build_report(
        training_frame(orders),
        window,
        out_dir,
        run_key=out_dir.name,
        predict=bundle.predict,
        window=(since, end),
    )
    live = {f.name for view in live_views() for f in view_features(view.name)}
    assert live <= {f.name for f in drift.features}, drift.skipped_features
    return drift, decide(drift, get_settings().monitoring, production_version=None)


def _print_drift(drift: Any) -> None:
    for f in drift.features:
        psi = "n/a" if f.psi is None else f"{f.psi:.4f}"
        print(f"  {f.name:<28} PSI {psi:<8} {f.method} {f.score:.4f}  drifted {f.drifted}")


PLAYED = 500  # orders of the day played through the events API: five hours' snapshots


def test_a_day_played_through_the_events_api_is_served_exactly_its_training_rows(
    served, lake_days, capsys, tmp_path
):
    """Issue 14's proof: 500 orders of a day from 08:00, each one's created event then its ETA
    request, pickups and deliveries as they happen, the hourly snapshots materialized as the
    clock crosses each hour. Every feature served equals the order's point-in-time training row,
    every prediction the model's on that row, and every delivery's label landed; monitoring's
    drift judgement of what was served, against those orders' training rows, finds nothing."""
    from ray import serve

    from relay.features.skew import skew_for_day
    from relay.ingest.event_sink import land
    from relay.ingest.event_store import EventStore
    from relay.serve import control
    from relay.serve.log_read import read_actuals, read_serving_log
    from relay.serve.traffic_state import MODEL_DEPLOYMENT, model_app_name
    from relay.sim.lifecycle import play

    control.set_traffic(TrafficSplit(stable=served["v1"]), served["settings"])
    day = lake_days[-1]
    orders = Lake().read(VALIDATED_ORDERS, day).sort_values("created_at", kind="stable")
    orders = orders.reset_index(drop=True)
    # From 08:00: the hour before is sent as created events only (the live counts' window).
    first = int(
        (orders["created_at"] >= pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=8)).argmax()
    )
    since = dt.datetime.now(dt.UTC)
    result = play(orders, first, PLAYED, served["url"])
    assert result.answered == PLAYED and result.hours_materialized >= 3, result
    serve.get_deployment_handle(
        MODEL_DEPLOYMENT, app_name=model_app_name(served["v1"])
    ).flush_log.remote().result()

    skew = skew_for_day(since.date(), orders_of=day, since=since)
    mine = orders.iloc[first : first + PLAYED].reset_index(drop=True)
    with capsys.disabled():
        print(f"\nplayed through the events API: {result.summary()}")
        print(f"  PSI served vs training rows: {_live_psi(since.date(), mine, since)}")
        print(f"skew of {skew.orders} served orders against their training rows:")
        for row in skew.table():
            print(f"  {row['feature']:<28} {row['rate']:>6.1%}  largest {row['max_abs_diff']}")
    assert skew.orders >= PLAYED and skew.unmatched == 0, skew
    assert skew.clean, [f for f in skew.features if f.differing]

    # The predictions: the model on the training rows, within the answer's 3 decimals.
    log = read_serving_log(Lake(), since.date(), dt.datetime.now(dt.UTC).date())
    log = log[log["requested_at"] >= pd.Timestamp(since)].set_index("order_id")
    rows = training_frame(mine)
    expected = ModelBundle.from_registry(Registry(), served["v1"]).predict(rows)
    got = log.loc[mine["order_id"], "eta_minutes"].to_numpy()
    np.testing.assert_allclose(got, expected, atol=5e-4 + 1e-4)

    # The labels came through the delivered events: one per played order, the true minutes.
    land(EventStore(get_settings().events.database_url), Lake())
    actuals = read_actuals(Lake(), since.date(), dt.datetime.now(dt.UTC).date())
    labelled = actuals.drop_duplicates("order_id").set_index("order_id")
    assert set(mine["order_id"]) <= set(labelled.index)
    np.testing.assert_allclose(
        labelled.loc[mine["order_id"], "actual_minutes"], mine["delivery_minutes"], atol=1e-3
    )

    # Monitoring's drift judgement of the played window against the same orders' training
    # rows finds nothing; the same orders served the stale way do drift (the test above).
    drift, verdict = _monitoring_judgement(since, mine, tmp_path / "drift", served["v1"])
    with capsys.disabled():
        print("  monitoring's drift of the played window against its training rows:")
        _print_drift(drift)
    assert not [f.name for f in drift.features if f.drifted or (f.psi or 0) > 0.01]
    assert verdict.action.value == "ok", verdict.reasons


def test_metrics_are_exposed_per_version(served):
    text = urllib.request.urlopen(served["url"] + "/metrics").read().decode()
    assert f'relay_requests_total{{version="{served["v1"]}"}}' in text
    assert "relay_request_latency_ms_bucket" in text
    # Batch fill per version: every answered model call reported the pass it rode in.
    v1 = f'version="{served["v1"]}"'
    passes = re.search(rf"relay_model_batches_total{{{v1}}} (\S+)", text)
    orders = re.search(rf"relay_model_batched_orders_total{{{v1}}} (\S+)", text)
    assert passes and orders and 0 < float(passes[1]) <= float(orders[1]), text
    assert any(
        line.startswith("relay_model_batch_orders_bucket{") and v1 in line and 'le="32.0"' in line
        for line in text.splitlines()
    ), text


def test_two_router_replicas_count_every_request_once_in_the_cluster_metrics(served):
    """A second router application of two fresh replicas under concurrent load: the hub's sum
    holds every request once, both replicas' counters are in it, and it keeps them after the
    replicas are gone."""
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    from relay.serve import control
    from serving.app import router_application

    s = served["settings"].model_copy(deep=True)
    s.serving.router_replicas = 2
    v1 = served["v1"]

    def counted() -> dict[str, Any]:
        return control.live_metrics(s).get(v1) or {"requests": 0, "replicas": 0}

    control.set_traffic(TrafficSplit(stable=v1), served["settings"])
    serve.run(router_application(s), name="eta-two-routers", route_prefix="/two")
    url = served["url"] + "/two"
    try:
        before = counted()
        row = served["orders"].iloc[6]
        sent = 300
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = Counter(
                pool.map(lambda i: _post(url, _order(row, f"two-{i}"))[0], range(sent))
            )
        assert statuses == {200: sent}, statuses
        deadline = time.monotonic() + 15  # replicas push every metrics_push_s (0.5 s)
        after = counted()
        while after["requests"] - before["requests"] < sent and time.monotonic() < deadline:
            time.sleep(0.1)  # polling the hub for the replicas' next push, bounded
            after = counted()
        assert abs(after["requests"] - before["requests"] - sent) <= 0.01 * sent, (before, after)
        assert after["scope"] == "cluster"
        # Both fresh replicas served and pushed: two more replicas' counters hold v1.
        assert after["replicas"] - before["replicas"] == 2, (before, after)
        scope = urllib.request.urlopen(url + "/v1/metrics").headers["x-relay-metrics-scope"]
        assert scope == "cluster"
    finally:
        serve.delete("eta-two-routers")
    # The replicas are gone; what they counted is not.
    assert counted()["requests"] >= after["requests"]


def test_a_router_holding_the_models_itself_answers_as_the_split_layout_does(served):
    """``RELAY_SERVING__LAYOUT=inline``: a router application whose replica holds the split's
    versions in process. Under the same canary it answers every order exactly as the router →
    model layout does, counts each version apart, and stops answering with a version the
    split dropped."""
    from ray import serve

    from relay.serve import control
    from serving.app import router_application

    s = served["settings"].model_copy(deep=True)
    s.serving.layout = "inline"
    v1, v2 = served["v1"], served["v2"]
    control.set_traffic(TrafficSplit(v1, v2, 0.5), served["settings"])
    serve.run(router_application(s), name="eta-inline", route_prefix="/inline")
    inline = served["url"] + "/inline"
    try:
        rows = served["orders"].head(40)
        batch = [_order(r, f"inline-{i}") for i, (_, r) in enumerate(rows.iterrows())]
        before = control.live_metrics(s)
        status, split_body = _post(served["url"], {"orders": batch})
        assert status == 200
        status, inline_body = _post(inline, {"orders": batch})
        assert status == 200
        answers = {(p["order_id"], p["model_version"]): p for p in split_body["predictions"]}
        assert Counter(p["model_version"] for p in inline_body["predictions"]).keys() == {v1, v2}
        for p in inline_body["predictions"]:
            same = answers[(p["order_id"], p["model_version"])]  # the same version per order
            assert p["eta_minutes"] == pytest.approx(same["eta_minutes"], rel=1e-5)
        # Each version's calls are counted apart, by both routers.
        deadline = time.monotonic() + 15  # routers push every metrics_push_s (0.5 s)
        while time.monotonic() < deadline:
            after = control.live_metrics(s)
            grown = {
                v: after.get(v, {}).get("requests", 0) - before.get(v, {}).get("requests", 0)
                for v in (v1, v2)
            }
            if all(n >= 2 for n in grown.values()):
                break
            time.sleep(0.1)  # polling the hub for the replicas' next push, bounded
        assert all(n >= 2 for n in grown.values()), grown
        # v2 leaves the split: the inline router stops answering with it at once.
        control.set_traffic(TrafficSplit(stable=v1), served["settings"])
        models = json.loads(urllib.request.urlopen(served["url"] + "/v1/models").read())
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # the inline router's watch applies it (at once)
            seen = json.loads(urllib.request.urlopen(inline + "/v1/models").read())
            if seen["generation"] >= models["generation"]:
                break
            time.sleep(0.05)  # polling the router for a state change, bounded
        assert seen["generation"] >= models["generation"]
        for _ in range(3):
            status, body = _post(inline, {"orders": batch})
            assert status == 200
            assert {p["model_version"] for p in body["predictions"]} == {v1}
        # A candidate that cannot load (no such version): the inline router keeps the split it
        # has and answers with it; once the split is back to one it can load, it follows again.
        import ray

        from relay.serve.traffic_state import traffic_state

        # Straight into the traffic actor: set_traffic waits for the routers, and neither takes
        # a split they cannot serve.
        missing = TrafficSplit(v1, "eta_mlp_missing", 0.5).to_config()
        broken = ray.get(traffic_state().set.remote(missing))
        for _ in range(3):
            status, body = _post(inline, {"orders": batch})
            assert status == 200
            assert {p["model_version"] for p in body["predictions"]} == {v1}
        held = json.loads(urllib.request.urlopen(inline + "/v1/models").read())
        assert held["generation"] < broken
        assert [m["version"] for m in held["versions"]] == [v1]
        control.set_traffic(TrafficSplit(stable=v1), served["settings"])
        fixed = json.loads(urllib.request.urlopen(served["url"] + "/v1/models").read())
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            seen = json.loads(urllib.request.urlopen(inline + "/v1/models").read())
            if seen["generation"] >= fixed["generation"]:
                break
            time.sleep(0.05)  # polling the router for a state change, bounded
        assert seen["generation"] >= fixed["generation"]
    finally:
        serve.delete("eta-inline")


def test_a_router_with_secrets_wants_keys_and_salts_the_canary(served, tmp_path):
    """The prod profile's router: an API key on /v1/eta, the admin token on the admin routes,
    the canary's order hash salted; only the files' paths travel with the deployment."""
    from ray import serve

    from relay.serve import control
    from relay.serve.auth import API_KEY_HEADER
    from serving.app import router_application

    for name, secret in (("keys", "k-123\nk-456"), ("admin", "adm-789"), ("salt", "salt-0")):
        (tmp_path / name).write_text(secret)
        (tmp_path / name).chmod(0o600)
    s = served["settings"].model_copy(deep=True)
    sv = s.serving
    sv.api_keys_file, sv.admin_token_file = tmp_path / "keys", tmp_path / "admin"
    sv.bucket_salt_file = tmp_path / "salt"
    app = router_application(s)
    assert "k-123" not in repr(app._bound_deployment.init_kwargs)  # paths, not secrets
    url = served["url"] + "/auth"
    control.set_traffic(TrafficSplit(served["v1"], served["v2"], 0.3), served["settings"])
    serve.run(app, name="eta-auth", route_prefix="/auth")
    try:
        rows = served["orders"].iloc[40:80]
        batch = {"orders": [_order(r, f"salted-{i}") for i, (_, r) in enumerate(rows.iterrows())]}
        status, body = _post(url, batch)
        assert status == 401 and body["detail"][0]["loc"] == ["header", "authorization"]
        status, body = _post(url, batch, headers={API_KEY_HEADER: "k-456"})
        assert status == 200, body
        split = TrafficSplit(served["v1"], served["v2"], 0.3)
        got = {p["order_id"]: p["model_version"] for p in body["predictions"]}
        salted = {o: split.version_for(o, salt=b"salt-0") for o in got}
        plain = {o: split.version_for(o) for o in got}
        assert got == salted and got != plain
        status, body = _post(served["url"], batch)  # the open router keeps crc32
        assert {p["order_id"]: p["model_version"] for p in body["predictions"]} == plain
        for route in ("/v1/models", "/v1/metrics", "/metrics"):
            req = urllib.request.Request(url + route, headers={"Authorization": "Bearer k-123"})
            with pytest.raises(urllib.error.HTTPError) as denied:
                urllib.request.urlopen(req, timeout=10)
            assert denied.value.code == 401, route
            req = urllib.request.Request(url + route, headers={"Authorization": "Bearer adm-789"})
            assert urllib.request.urlopen(req, timeout=10).status == 200, route
    finally:
        serve.delete("eta-auth")
        control.set_traffic(TrafficSplit(stable=served["v1"]), served["settings"])


def test_an_online_store_that_stops_or_hangs_degrades_answers_and_fails_none(served, monkeypatch):
    """A version reading Redis through a fault proxy, under load: the store stopped, then
    blackholed. Every answer meanwhile is 200 and flagged degraded, none hangs, the metric
    counts them, and answers are normal again once the store is back."""
    from ray import serve

    from relay.serve import control
    from relay.serve.traffic_state import model_app_name
    from tests.integration.conftest import _feast_settings
    from tests.integration.tcp_fault import FaultProxy

    timeout_s = 0.25
    feast = _feast_settings("redis", redis_db=13)
    apply(feast)
    materialize(served["end"], settings=feast)
    proxy = FaultProxy(("127.0.0.1", 6379))
    f = feast.feast
    for name, value in {
        "PROJECT": f.project,
        "REGISTRY_PATH": str(f.registry_path),
        "ONLINE_STORE": "redis",
        "REDIS_CONNECTION": f"127.0.0.1:{proxy.port},db=13",
        "ONLINE_READ_TIMEOUT_S": str(timeout_s),
        "ONLINE_RETRY_AFTER_S": "0.5",
    }.items():
        monkeypatch.setenv(f"RELAY_FEAST__{name}", value)  # what v3's replicas are given
    v3 = _train_and_register(served["frame"], served["runs"] / "v3", seed=3, epochs=1)
    s = served["settings"]
    row = served["orders"].iloc[6]
    results: list[tuple[float, float, int, bool]] = []  # sent, answered, status, degraded
    stop = threading.Event()

    def load(k: int) -> None:
        i, deadline = 0, time.monotonic() + 120  # bounded even if the test fails early
        while not stop.is_set() and time.monotonic() < deadline:
            t0 = time.monotonic()
            status, body = _post(served["url"], _order(row, f"store-{k}-{i}"))
            flagged = status == 200 and body["predictions"][0]["degraded"]
            results.append((t0, time.monotonic(), status, flagged))
            i += 1

    def wait_for(n: int, since: float, healthy: bool = False) -> None:
        deadline = time.monotonic() + 30
        while True:  # polling what the load threads recorded, bounded
            after = [r for r in results if r[0] >= since]
            if healthy:
                after = after[-n:] if len(after) >= n and not any(r[3] for r in after[-n:]) else []
            if len(after) >= n:
                return
            assert time.monotonic() < deadline, (n, since, results[-5:])
            time.sleep(0.05)

    threads = [threading.Thread(target=load, args=(k,)) for k in range(4)]
    try:
        control.deploy_model(v3, s)
        control.set_traffic(TrafficSplit(stable=v3), s)
        for t in threads:
            t.start()
        wait_for(30, time.monotonic(), healthy=True)
        outages = []
        for mode in ("refuse", "blackhole"):
            proxy.set(mode)
            began = time.monotonic()
            wait_for(60, began)
            proxy.set("forward")
            ended = time.monotonic()
            outages.append((began, ended))
            wait_for(30, ended, healthy=True)  # normal answers again
    finally:
        stop.set()
        for t in threads:
            t.join()
        proxy.close()
        control.set_traffic(TrafficSplit(stable=served["v1"]), s)
        serve.delete(model_app_name(v3))
    statuses = Counter(r[2] for r in results)
    assert statuses == {200: len(results)}, statuses
    during = [r for b, e in outages for r in results if b <= r[0] and r[1] <= e]
    assert len(during) >= 100 and all(r[3] for r in during), Counter(r[3] for r in during)
    slowest = max(r[1] - r[0] for r in during)
    assert slowest < 3.0, slowest  # nothing waits on the store: 2 cores, 4 clients, Serve
    degraded = sum(r[3] for r in results)

    def counted() -> float:
        text = urllib.request.urlopen(served["url"] + "/metrics", timeout=10).read().decode()
        line = f'relay_degraded_total{{version="{v3}"}}'
        return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(line))

    deadline = time.monotonic() + 15
    while counted() < degraded:  # the replicas push their counters every 0.5 s
        assert time.monotonic() < deadline, (counted(), degraded)
        time.sleep(0.1)


@pytest.mark.drill
def test_a_sigkilled_model_replica_then_router_replica_lose_almost_nothing(served, capsys):
    """Two replicas of each deployment under 8 clients: kill -9 one model replica, then one
    router replica. At most 0.1% of requests fail; the time until each deployment runs two
    replicas again is measured and printed. A drill (`make drill`), not in `make test`: its
    verdict needs thousands of requests (~3 min here)."""
    import signal

    import ray
    from ray import serve

    from relay.serve import control
    from relay.serve.traffic_state import MODEL_DEPLOYMENT, ROUTER_DEPLOYMENT, model_app_name
    from serving.app import model_application, router_application

    s = served["settings"].model_copy(deep=True)
    sv = s.serving
    sv.model_replicas = sv.router_replicas = 2
    sv.model_cpus, sv.router_cpus = 0.1, 0.05  # logical: they share 2 cores with the rest
    v2, app = served["v2"], "eta-drill"
    serve.run(model_application(v2, s), name=model_app_name(v2), route_prefix=None)
    control.set_traffic(TrafficSplit(stable=v2), served["settings"])
    serve.run(router_application(s), name=app, route_prefix="/drill")
    url, row = served["url"] + "/drill", served["orders"].iloc[7]
    results: list[tuple[float, int | str]] = []
    stop = threading.Event()

    def load(k: int) -> None:
        i, deadline = 0, time.monotonic() + 300  # bounded even if the test fails early
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                status, _ = _post(url, _order(row, f"drill-{k}-{i}"))
            except Exception as exc:  # reset, refused, timed out: a failure, never a pass
                status = type(exc).__name__
            results.append((time.monotonic(), status))
            i += 1

    def running(app_name: str, deployment: str) -> int:
        d = serve.status().applications[app_name].deployments[deployment]
        return int(d.replica_states.get("RUNNING", 0))

    def kill_one(app_name: str, deployment: str) -> int:
        """kill -9 of one replica's process, as an operator (or the OOM killer) would."""
        named = ray.util.list_named_actors(all_namespaces=True)
        tag = f"SERVE_REPLICA::{app_name}#{deployment}#"
        replicas = [a for a in named if a["name"].startswith(tag)]
        assert len(replicas) == 2, (tag, named)
        actor = ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"])
        pid = ray.get(actor.__ray_call__.remote(lambda _: os.getpid()), timeout=30)
        os.kill(pid, signal.SIGKILL)
        return int(pid)

    def restored(app_name: str, deployment: str, killed: int) -> float:
        t0 = time.monotonic()
        while not _gone(killed):
            time.sleep(0.05)  # polling until the kernel took it
        seen_down = False
        while True:  # polling Serve's view, bounded: until two replicas run again
            n = running(app_name, deployment)
            seen_down |= n < 2
            if seen_down and n == 2:
                return time.monotonic() - t0
            assert time.monotonic() - t0 < 90, (app_name, deployment, n)
            time.sleep(0.2)

    threads = [threading.Thread(target=load, args=(k,)) for k in range(8)]
    try:
        assert running(model_app_name(v2), MODEL_DEPLOYMENT) == 2 == running(app, ROUTER_DEPLOYMENT)
        for t in threads:
            t.start()
        while len(results) < 200:  # load on both before the first kill
            time.sleep(0.05)
        model_down = kill_one(model_app_name(v2), MODEL_DEPLOYMENT)
        model_s = restored(model_app_name(v2), MODEL_DEPLOYMENT, model_down)
        router_down = kill_one(app, ROUTER_DEPLOYMENT)
        router_s = restored(app, ROUTER_DEPLOYMENT, router_down)
        while len(results) < 6000:  # full capacity again, and enough requests to judge 0.1%
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
        serve.delete(app)
        control.set_traffic(TrafficSplit(stable=served["v1"]), served["settings"])
    failed = [r for r in results if r[1] != 200]
    with capsys.disabled():
        print(
            f"\nreplica kill drill: {len(results)} requests, {len(failed)} failed "
            f"({100 * len(failed) / len(results):.3f}%), {Counter(r[1] for r in failed)}; "
            f"model replica back in {model_s:.1f} s, router replica in {router_s:.1f} s"
        )
    assert len(failed) <= 0.001 * len(results), Counter(r[1] for r in failed)


def test_events_streamed_through_a_sigkilled_router_replica_are_all_in_the_lake(served, capsys):
    """Four clients stream order events (created, then delivered) to two router replicas, as
    an order service does: an event without an answer is sent again. One replica is killed
    with SIGKILL mid-stream. Every event ends up stored once and landed in the lake, and
    every delivered order's label with it."""
    import signal

    import ray
    from ray import serve

    from relay.data.lake import ORDER_EVENTS
    from relay.ingest.event_sink import land
    from relay.ingest.event_store import EventStore
    from relay.serve.log_read import read_actuals
    from relay.serve.traffic_state import ROUTER_DEPLOYMENT
    from serving.app import router_application

    s = served["settings"].model_copy(deep=True)
    s.serving.router_replicas, s.serving.router_cpus = 2, 0.05
    app, tag = "eta-events-kill", uuid.uuid4().hex[:8]
    serve.run(router_application(s), name=app, route_prefix="/events-kill")
    url = served["url"] + "/events-kill"
    row = served["orders"].iloc[9]
    per_client, clients = 150, 4  # orders each: 2 events per order
    acked: list[int] = []
    resent: list[str] = []

    def stream(k: int) -> None:
        for i in range(0, per_client, 5):
            now = dt.datetime.now(dt.UTC)
            ids = [f"kill-{tag}-{k}-{j}" for j in range(i, i + 5)]
            body = {
                "events": [_created(row, order_id=o, occurred_at=now.isoformat()) for o in ids]
                + [
                    {
                        "type": "delivered",
                        "order_id": o,
                        "occurred_at": (now + dt.timedelta(minutes=30)).isoformat(),
                    }
                    for o in ids
                ]
            }
            deadline = time.monotonic() + 120
            while True:  # until acknowledged: the order service's retry
                try:
                    status, answer = _post(url, body, path="/v1/events")
                except Exception as exc:  # reset or refused by the dying replica
                    status, answer = 0, {"detail": type(exc).__name__}
                if status == 200:
                    acked.append(answer["accepted"] + answer["duplicates"])
                    break
                resent.append(str(answer.get("detail"))[:60])
                assert time.monotonic() < deadline, answer
                threading.Event().wait(0.2)

    threads = [threading.Thread(target=stream, args=(k,)) for k in range(clients)]
    try:
        for t in threads:
            t.start()
        while len(acked) < 20:  # events flowing through both replicas
            threading.Event().wait(0.05)
        named = ray.util.list_named_actors(all_namespaces=True)
        replicas = [
            a for a in named if a["name"].startswith(f"SERVE_REPLICA::{app}#{ROUTER_DEPLOYMENT}#")
        ]
        actor = ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"])
        pid = ray.get(actor.__ray_call__.remote(lambda _: os.getpid()), timeout=30)
        os.kill(pid, signal.SIGKILL)
        for t in threads:
            t.join(timeout=300)
    finally:
        serve.delete(app)
    sent = 2 * per_client * clients
    assert sum(acked) == sent
    store = EventStore(get_settings().events.database_url)
    land(store, Lake())  # what the surviving replicas had not landed yet
    mine = store.frame(store_filter(tag))
    store.close()
    today = dt.datetime.now(dt.UTC).date()
    lake = Lake()
    days = [d for d in lake.partitions(ORDER_EVENTS) if d >= today - dt.timedelta(days=1)]
    landed = lake.read_all(ORDER_EVENTS, days[0], days[-1])
    landed = landed[landed["order_id"].str.startswith(f"kill-{tag}-")]
    labels = read_actuals(lake, today - dt.timedelta(days=1), today + dt.timedelta(days=1))
    labels = labels[labels["order_id"].str.startswith(f"kill-{tag}-")]
    with capsys.disabled():
        print(
            f"\nevents through a killed router replica: {sent} sent, {len(resent)} requests "
            f"sent again ({Counter(resent).most_common(3)}), {len(mine)} stored, "
            f"{len(landed)} rows landed ({landed.drop_duplicates(['order_id', 'type']).shape[0]} "
            f"distinct), {labels['order_id'].nunique()} labels"
        )
    assert len(mine) == sent
    assert landed.drop_duplicates(["order_id", "type"]).shape[0] == sent
    assert labels["order_id"].nunique() == sent // 2
    assert (labels.drop_duplicates("order_id")["actual_minutes"] == 30.0).all()


def store_filter(tag: str) -> Any:
    from relay.ingest.event_store import ORDER_EVENTS as TABLE

    return TABLE.c.order_id.like(f"kill-{tag}-%")


def _gone(pid: int) -> bool:
    import psutil

    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def test_a_version_is_deployed_as_big_as_its_stored_needs_say(served):
    import ray
    from ray import serve

    from relay.registry import ServingRequirements
    from relay.serve import control
    from relay.serve.traffic_state import model_app_name

    needs = ServingRequirements(cpus=0.1, memory_mb=300, replicas=2)
    big = register_trained(
        served["runs"] / "v1", training_set_uri="test", data_partitions=[], serving=needs
    ).id
    free = ray.available_resources()
    name = control.deploy_model(big, served["settings"])
    try:
        app = serve.status().applications[name]
        (deployment,) = app.deployments.values()
        assert deployment.replica_states.get("RUNNING") == 2, deployment.replica_states
        taken = {k: free.get(k, 0.0) - v for k, v in ray.available_resources().items()}
        assert taken["CPU"] == pytest.approx(2 * 0.1)
        assert taken["memory"] == pytest.approx(2 * 300 * 1024 * 1024)
    finally:
        serve.delete(model_app_name(big))


def test_training_frees_the_version_without_traffic_and_v1_keeps_answering(served):
    # Last in the module: it deletes v2. Training calls this before asking Ray for workers.
    from relay.rollout.manual import free_idle_models
    from relay.serve import control

    s = served["settings"]
    control.set_traffic(TrafficSplit(stable=served["v1"]), s)
    assert set(control.deployed_models()) == {served["v1"], served["v2"]}
    assert free_idle_models(control, s, emit=lambda _: None) == [served["v2"]]
    assert control.deployed_models() == [served["v1"]]
    status, body = _post(served["url"], _order(served["orders"].iloc[3], "after-free"))
    assert status == 200 and body["predictions"][0]["model_version"] == served["v1"]
