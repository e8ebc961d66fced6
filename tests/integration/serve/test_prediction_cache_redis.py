"""The prediction cache's L2 on the machine's Redis: shared by a version's replicas, never by two
versions, emptied when a version stops serving, and never a failure or a wait when Redis is down
or hung."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from relay.serve.prediction_cache import (
    L2_PREFIX,
    PredictionCache,
    RedisLevel,
    cache_namespace,
    forget_version,
)
from relay.settings import get_settings
from tests.integration.tcp_fault import FaultProxy

DB = 14  # Feast's tests flush 15


class Model:
    def __init__(self) -> None:
        self.rows = 0

    def predict(self, frame: Any) -> list[float]:
        self.rows += len(frame["km"])
        return [10.0 * km for km in frame["km"]]


@pytest.fixture
def url() -> Iterator[str]:
    client = redis.Redis(host="127.0.0.1", port=6379, db=DB)
    client.ping()  # .ci/run starts the machine's Redis
    client.flushdb()
    yield f"redis://127.0.0.1:6379/{DB}"
    client.flushdb()


def replica(url: str, version: str, ttl_s: float = 60.0) -> PredictionCache:
    """What one model replica builds: its own L1 over the shared L2."""
    return PredictionCache(cache_namespace(version), 100, ttl_s, RedisLevel(url, 0.05, 10.0))


def test_a_second_replica_answers_from_l2_without_the_model(url: str) -> None:
    first, second, model = replica(url, "v1"), replica(url, "v1"), Model()
    assert first.predict(model, {"km": [1.0, 2.0]}, 2) == [10.0, 20.0]
    assert second.predict(model, {"km": [2.0, 1.0]}, 2) == [20.0, 10.0]
    assert model.rows == 2
    assert second.stats.levels["l2"].hits == 2
    assert second.stats.levels["l2"].seconds > 0  # its lookup time is measured
    # L2 keeps each answer no longer than the TTL
    client = redis.Redis.from_url(url)
    keys = client.keys(f"{L2_PREFIX}:v1:*")
    assert len(keys) == 2 and all(0 < client.pttl(k) <= 60_000 for k in keys)


def test_a_version_that_stopped_serving_answers_nothing(url: str) -> None:
    model = Model()
    replica(url, "v1").predict(model, {"km": [1.0]}, 1)
    replica(url, "v2").predict(model, {"km": [1.0]}, 1)
    assert model.rows == 2  # v2 never found v1's answer for the same vector
    serving = get_settings().serving.model_copy(update={"prediction_cache_redis_url": url})
    assert forget_version(serving, "v1") == 1  # what remove_model does
    again = replica(url, "v1")
    again.predict(model, {"km": [1.0]}, 1)
    assert (model.rows, again.stats.levels["l2"].hits) == (3, 0)
    other = replica(url, "v2")
    other.predict(model, {"km": [1.0]}, 1)
    assert other.stats.levels["l2"].hits == 1  # another version's entries stay


@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
def test_redis_down_or_hung_answers_from_the_model_and_is_then_left_alone(url: str, mode) -> None:
    proxy = FaultProxy(("127.0.0.1", 6379))
    try:
        now = [0.0]
        level = RedisLevel(f"redis://127.0.0.1:{proxy.port}/{DB}", 0.05, 10.0, clock=lambda: now[0])
        cache, model = PredictionCache("v1:float", 100, 60.0, level), Model()
        proxy.set(mode)
        t0 = time.perf_counter()
        assert cache.predict(model, {"km": [1.0, 2.0]}, 2) == [10.0, 20.0]
        assert time.perf_counter() - t0 < 1.0  # one timeout (50 ms) at most, never a hang
        calls = []
        real = level.client.mget
        level.client.mget = lambda *a, **k: calls.append(a) or real(*a, **k)  # type: ignore
        proxy.set("forward")
        cache.predict(model, {"km": [3.0]}, 1)
        assert calls == []  # within retry_after: not asked
        now[0] = 10.0
        cache.predict(model, {"km": [4.0]}, 1)
        assert len(calls) == 1  # asked again once it is due
        assert model.rows == 4
    finally:
        proxy.close()
