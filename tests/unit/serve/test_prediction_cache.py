"""The prediction cache's L1: answers only the exact vector it was computed from, within its TTL,
for its own version; and the model deployment with it answers a changed feature at once."""

from __future__ import annotations

import math
from typing import Any

import pytest

from relay.serve.prediction_cache import PredictionCache, cache_namespace, vector_keys


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Model:
    """Minutes = 10 per km + the courier's load; counts the rows it was asked for."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def predict(self, frame: Any) -> list[float]:
        self.rows.append(len(frame["km"]))
        return [10.0 * km + load for km, load in zip(frame["km"], frame["load"], strict=True)]


def frame(*rows: tuple[float, float]) -> dict[str, list[float]]:
    return {"km": [r[0] for r in rows], "load": [r[1] for r in rows]}


def test_the_same_vector_is_answered_from_l1_and_only_new_vectors_reach_the_model() -> None:
    model, cache = Model(), PredictionCache("v1:float", size=100, ttl_s=60, clock=Clock())
    assert cache.predict(model, frame((1.0, 0.0), (2.0, 0.0)), 2) == [10.0, 20.0]
    assert cache.predict(model, frame((2.0, 0.0), (3.0, 1.0), (1.0, 0.0)), 3) == [20.0, 31.0, 10.0]
    assert model.rows == [2, 1]  # the second batch's forward pass had its one new row only
    l1 = cache.stats.levels["l1"]
    assert (l1.lookups, l1.hits) == (5, 2)


def test_a_changed_feature_is_a_new_vector_answered_by_the_model() -> None:
    model, cache = Model(), PredictionCache("v1:float", size=100, ttl_s=60, clock=Clock())
    assert cache.predict(model, frame((2.0, 0.0)), 1) == [20.0]
    # the courier's load was pushed: same order, same distance, new answer
    assert cache.predict(model, frame((2.0, 3.0)), 1) == [23.0]
    assert model.rows == [1, 1]


def test_a_prediction_is_not_answered_past_its_ttl() -> None:
    clock = Clock()
    model, cache = Model(), PredictionCache("v1:float", size=100, ttl_s=60, clock=clock)
    cache.predict(model, frame((1.0, 0.0)), 1)
    clock.now += 59.9
    cache.predict(model, frame((1.0, 0.0)), 1)
    assert model.rows == [1]
    clock.now += 0.2  # 60.1 s after it was made
    cache.predict(model, frame((1.0, 0.0)), 1)
    assert model.rows == [1, 1]


def test_l1_keeps_at_most_its_size_least_recently_used_first() -> None:
    model, cache = Model(), PredictionCache("v1:float", size=2, ttl_s=60, clock=Clock())
    cache.predict(model, frame((1.0, 0.0), (2.0, 0.0)), 2)
    cache.predict(model, frame((1.0, 0.0)), 1)  # 1 km is now the most recent
    cache.predict(model, frame((3.0, 0.0)), 1)  # evicts 2 km
    model.rows.clear()
    cache.predict(model, frame((1.0, 0.0), (3.0, 0.0), (2.0, 0.0)), 3)
    assert model.rows == [1]


def test_an_unusable_prediction_is_never_kept() -> None:
    class NaN:
        calls = 0

        def predict(self, frame: Any) -> list[float]:
            self.calls += 1
            return [math.nan] * len(frame["km"])

    model, cache = NaN(), PredictionCache("v1:float", size=10, ttl_s=60, clock=Clock())
    assert math.isnan(cache.predict(model, frame((1.0, 0.0)), 1)[0])
    cache.predict(model, frame((1.0, 0.0)), 1)
    assert model.calls == 2


def test_forget_drops_every_answer_and_versions_never_share_keys() -> None:
    model, cache = Model(), PredictionCache("v1:float", size=10, ttl_s=60, clock=Clock())
    cache.predict(model, frame((1.0, 0.0)), 1)
    cache.forget()
    cache.predict(model, frame((1.0, 0.0)), 1)
    assert model.rows == [1, 1]
    assert cache_namespace("v1") != cache_namespace("v2") != cache_namespace("v1", "int8")


def test_vector_keys_tell_apart_values_that_print_alike_only_when_they_differ() -> None:
    a = vector_keys({"x": [0.1 + 0.2, 0.3], "y": ["a", "a"]}, 2)
    assert a[0] != a[1]  # 0.30000000000000004 is not 0.3: the model would see different inputs
    assert vector_keys({"y": ["a"], "x": [0.3]}, 1) == [a[1]]  # column order does not matter


def test_a_cache_needs_room() -> None:
    with pytest.raises(ValueError, match="size"):
        PredictionCache("v1:float", size=0, ttl_s=60)
