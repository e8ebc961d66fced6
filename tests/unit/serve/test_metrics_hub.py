"""The cluster's metrics hub: router replicas' counters added, never twice, never lost.

:class:`Tally` is the hub's whole logic without Ray; :class:`HubClient` runs here against a fake
hub whose calls answer through ``concurrent.futures`` as Ray's object refs do.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from typing import Any

import pytest

from relay.rollout.step_windows import step_window, windows
from relay.serve.metrics import LiveMetrics, prometheus_text
from relay.serve.metrics_hub import CLUSTER, REPLICA, HubClient, Tally
from relay.serve.windows import VersionWindow, total, window_from_dict


class FakeClock:
    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _replica(clock: FakeClock) -> LiveMetrics:
    return LiveMetrics(clock=clock)


def test_the_hub_adds_every_replicas_counters_per_version():
    clock = FakeClock()
    hub, a, b = Tally(clock), _replica(clock), _replica(clock)
    clock.t = 1_010.0
    a.observe("v1", 12.0, 2, [20.0, 40.0])
    clock.t = 1_020.0
    b.observe("v1", 300.0, 0, None, error=True, degraded=3)
    b.observe("v2", 5.0, 1, [30.0])
    clock.t = 1_030.0
    assert hub.push("a", 1, a.snapshot()) and hub.push("b", 1, b.snapshot())

    got = hub.read()
    v1, v2 = got.windows["v1"], got.windows["v2"]
    assert (v1.requests, v1.errors, v1.predictions, v1.degraded) == (2, 1, 2, 3)
    assert v1.latency_sum_ms == 312.0 and sum(v1.latency_counts) == 2
    assert (v1.latency_counts[4], v1.latency_counts[11]) == (1, 1)  # (10, 20] and (200, 300]
    assert v1.mean_prediction == 30.0 and v1.observed_prediction_values == 2
    assert (v1.first_observed, v1.last_observed) == (1_010.0, 1_020.0)  # earliest, latest
    assert (v1.since, v1.until) == (1_000.0, 1_030.0)  # since the hub started counting
    assert v2.requests == 1 and v2.mean_prediction == 30.0
    assert got.replicas == {"v1": 2, "v2": 1} and got.scope == CLUSTER


def test_a_repeated_or_late_push_never_counts_twice():
    clock = FakeClock()
    hub, a = Tally(clock), _replica(clock)
    for _ in range(3):
        a.observe("v1", 10.0, 1, [20.0])
    early = a.snapshot()
    assert hub.push("a", 1, early)
    assert not hub.push("a", 1, early)  # the same push again (a retry)
    assert hub.read().windows["v1"].requests == 3
    a.observe("v1", 10.0, 1, [20.0])
    assert hub.push("a", 3, a.snapshot())
    assert not hub.push("a", 2, early)  # an older snapshot arriving late changes nothing
    assert hub.read().windows["v1"].requests == 4


def test_a_dead_replica_keeps_its_counts_and_totals_never_go_backwards():
    clock = FakeClock()
    hub, a, b = Tally(clock), _replica(clock), _replica(clock)
    for _ in range(5):
        a.observe("v1", 10.0, 1, None)
    b.observe("v1", 10.0, 1, None)
    hub.push("a", 1, a.snapshot())
    hub.push("b", 1, b.snapshot())
    seen = [hub.read().windows["v1"].requests]
    # Replica a dies (Serve replaced it); b and a new replica c go on counting.
    c = _replica(clock)
    for seq in range(2, 6):
        clock.t += 1
        b.observe("v1", 10.0, 1, None)
        c.observe("v1", 10.0, 1, None)
        hub.push("b", seq, b.snapshot())
        hub.push("c", seq, c.snapshot())
        seen.append(hub.read().windows["v1"].requests)
    assert seen == [6, 8, 10, 12, 14]
    assert hub.read().replicas == {"v1": 3}


def test_a_replica_whose_counters_restarted_keeps_what_it_had_counted():
    clock = FakeClock()
    hub, a = Tally(clock), _replica(clock)
    a.observe("v1", 10.0, 1, None)
    a.observe("v2", 10.0, 1, None)
    hub.push("a", 1, a.snapshot())
    clock.t += 5
    a.reset("v1")  # v1 leaves the snapshot
    hub.push("a", 2, a.snapshot())
    assert hub.read().windows["v1"].requests == 1
    a.observe("v1", 10.0, 1, None)  # counted again from the reset: its `since` moved
    a.reset("v2")
    a.observe("v2", 10.0, 1, None)
    hub.push("a", 3, a.snapshot())
    got = hub.read().windows
    assert (got["v1"].requests, got["v2"].requests) == (2, 2)


def test_the_cluster_sum_diffs_into_a_step_window_as_one_replicas_did():
    clock = FakeClock()
    hub, a, b = Tally(clock), _replica(clock), _replica(clock)
    a.observe("v1", 10.0, 1, None)
    hub.push("a", 1, a.snapshot())
    clock.t = 1_010.0
    first = windows(hub.read().to_json(), ["v1", "v2"], clock.t)
    for _ in range(4):
        a.observe("v1", 40.0, 1, None)
        b.observe("v2", 40.0, 1, None, error=True, degraded=1)
    clock.t = 1_030.0
    hub.push("a", 2, a.snapshot())
    hub.push("b", 1, b.snapshot())
    later = windows(hub.read().to_json(), ["v1", "v2"], clock.t)
    v1, v2 = (step_window(later[v], first[v]) for v in ("v1", "v2"))
    assert (v1.requests, v1.since, v1.until, v1.qps) == (4, 1_010.0, 1_030.0, 0.2)
    assert (v2.requests, v2.errors, v2.degraded, v2.since) == (4, 4, 4, 1_010.0)


def test_the_json_answer_round_trips_and_renders_for_prometheus():
    clock = FakeClock()
    hub, a = Tally(clock), _replica(clock)
    a.observe("v1", 10.0, 2, [20.0, 25.0])
    hub.push("a", 1, a.snapshot())
    got = hub.read()
    body = got.to_json()["v1"]
    assert (body["replicas"], body["scope"]) == (1, CLUSTER)
    assert window_from_dict(body) == got.windows["v1"]
    assert 'relay_requests_total{version="v1"} 1.0' in prometheus_text(got.windows)


def test_windows_of_other_buckets_are_refused_and_change_nothing():
    clock = FakeClock()
    hub, a = Tally(clock), _replica(clock)
    a.observe("v1", 10.0, 1, None)
    hub.push("a", 1, a.snapshot())
    other = LiveMetrics(clock=clock, latency_buckets_ms=[1, 10, 100])
    other.observe("v1", 10.0, 1, None)
    with pytest.raises(ValueError, match="histogram buckets"):
        hub.push("b", 1, other.snapshot())
    assert hub.read().windows["v1"].requests == 1
    with pytest.raises(ValueError, match="cannot add version"):
        total("v1", [VersionWindow("v2", 0.0, 1.0)], 0.0, 1.0)


class _Ref:
    """What a Ray object ref offers the client: ``future()``."""

    def __init__(self, value: Any = None, error: Exception | None = None) -> None:
        self._future: Future[Any] = Future()
        if error is None:
            self._future.set_result(value)
        else:
            self._future.set_exception(error)

    def future(self) -> Future[Any]:
        return self._future


class _Method:
    def __init__(self, fn: Any) -> None:
        self.remote = fn


class FakeHub:
    """A :class:`Tally` behind ``.push.remote`` / ``.read.remote``; ``down`` makes it fail."""

    def __init__(self) -> None:
        self.tally = Tally(FakeClock())
        self.down = False
        self.push = _Method(lambda *a: self._answer(self.tally.push, *a))
        self.read = _Method(lambda: self._answer(self.tally.read))

    def _answer(self, fn: Any, *args: Any) -> _Ref:
        if self.down:
            return _Ref(error=ConnectionError("hub gone"))
        return _Ref(fn(*args))


def test_a_replica_reads_the_cluster_after_pushing_its_own_counts():
    hub = FakeHub()
    a, b = LiveMetrics(), LiveMetrics()
    ca, cb = HubClient(a, 1.0, lambda: hub), HubClient(b, 1.0, lambda: hub)
    a.observe("v1", 10.0, 1, None)
    b.observe("v1", 10.0, 1, None)
    assert cb.push()
    got = asyncio.run(ca.cluster())  # a's count goes in with the read, no wait for its thread
    assert got.scope == CLUSTER and got.windows["v1"].requests == 2
    assert got.replicas == {"v1": 2} and ca.replica != cb.replica


def test_a_replica_answers_its_own_counts_when_the_hub_is_unreachable(caplog):
    hub = FakeHub()
    metrics = LiveMetrics()
    client = HubClient(metrics, 1.0, lambda: hub)
    metrics.observe("v1", 10.0, 1, None)
    hub.down = True
    assert not client.push()
    got = asyncio.run(client.cluster())
    assert got.scope == REPLICA and got.windows["v1"].requests == 1
    assert got.to_json()["v1"]["scope"] == REPLICA
    assert "metrics hub unreachable" in caplog.text
    hub.down = False  # back: the next push carries everything counted meanwhile
    metrics.observe("v1", 10.0, 1, None)
    assert client.push() and hub.tally.read().windows["v1"].requests == 2
