"""The model deployment with a small loader: one batch's answers and log records, without Serve.

``ETAModel`` takes its loader as an argument, so the class behind the Serve decorator runs here
on a tiny model, feature reader and log (the real
loader and batching are exercised in tests/integration/serve/test_serving.py).
"""

from __future__ import annotations

import math
from typing import Any

from relay.features.catalog import NUMERIC, WEATHER
from relay.features.guarded import GuardedReader
from relay.serve.loader import Loaded


class Minutes:
    """Predicts 10 minutes per km: enough to tell which row got which answer."""

    def predict(self, frame: Any) -> list[float]:
        return [10.0 * d for d in frame["order_distance_km"]]


class Store:
    """Knows every courier but ``C-unknown``; counts its reads (one per batch); ``down``
    makes it refuse."""

    def __init__(self) -> None:
        self.reads: list[int] = []
        self.down = False

    def read(self, orders: list[dict[str, Any]]) -> dict[str, list[Any]]:
        if self.down:
            raise ConnectionError("refused")
        self.reads.append(len(orders))
        known = [o["courier_id"] != "C-unknown" for o in orders]
        out: dict[str, list[Any]] = {name: [1.0 if k else None for k in known] for name in NUMERIC}
        out[WEATHER] = ["clear"] * len(orders)
        out["order_distance_km"] = [o["distance_km"] for o in orders]
        return out

    def defaults(self, orders: list[dict[str, Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {name: [None] * len(orders) for name in (*NUMERIC, WEATHER)}
        out["order_distance_km"] = [o["distance_km"] for o in orders]
        return out


class Features(GuardedReader):
    def __init__(self) -> None:
        super().__init__(Store(), timeout_s=5.0, retry_after_s=60.0)
        self.reads = self.store.reads


class Log:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    @property
    def written(self) -> int:
        return len(self.records)

    def log(self, records: list[dict[str, Any]]) -> None:
        self.records.extend(records)

    def flush(self) -> int:
        return len(self.records)

    def close(self) -> None:
        pass


def _row(order_id: str, km: float, courier: str = "C1") -> dict[str, Any]:
    return {"order_id": order_id, "courier_id": courier, "distance_km": km}


def test_a_batch_of_requests_shares_one_feature_read_and_each_gets_its_own_answers() -> None:
    from serving.app import ETAModel

    features, log = Features(), Log()
    model = ETAModel.func_or_class(
        "v1", 32, 0.05, loader=lambda version: Loaded(Minutes(), features, log)
    )
    features.reads.clear()  # the warm-up's reads

    first, second = model.answer(
        [([_row("a", 1.0), _row("b", 2.0)], "req-1"), ([_row("c", 3.0, "C-unknown")], "req-2")]
    )
    assert features.reads == [3]  # one online read for the whole batch
    assert {a["batch_orders"] for a in first + second} == {3}  # for the router's metrics
    assert [(a["order_id"], a["eta_minutes"]) for a in first] == [("a", 10.0), ("b", 20.0)]
    assert second[0]["eta_minutes"] == 30.0
    assert second[0]["missing_features"] == list(NUMERIC)
    assert first[0]["missing_features"] == []
    assert {a["model_version"] for a in first + second} == {"v1"}
    by_order = {r["order_id"]: r for r in log.records}
    assert by_order["a"]["request_id"] == by_order["b"]["request_id"] == "req-1"
    assert by_order["c"]["request_id"] == "req-2"
    assert model.flush_log() == len(log.records) == 3


class Wild:
    """Predicts NaN for the first row and 10 minutes per km after it."""

    def predict(self, frame: Any) -> list[float]:
        return [math.nan, *(10.0 * d for d in frame["order_distance_km"][1:])]


def test_a_prediction_that_cannot_be_returned_is_an_error_answer_and_not_logged() -> None:
    from serving.app import ETAModel

    features, log = Features(), Log()
    model = ETAModel.func_or_class(
        "v1",
        32,
        0.05,
        loader=lambda version: Loaded(Wild(), features, log, prior_minutes=35.0),
        eta_range=(0.0, 60.0),
    )
    log.records.clear()  # the warm-up logs nothing, but be sure
    (answers,) = model.answer([([_row("a", 1.0), _row("b", 2.0), _row("c", 9.0)], "req-1")])
    assert [a.get("error") is not None for a in answers] == [True, False, True]  # NaN, 90 > 60
    assert answers[0]["eta_minutes"] is None and answers[1]["eta_minutes"] == 20.0
    assert [a.get("fallback_minutes") for a in answers] == [35.0, None, 60.0]  # prior, cap
    assert [r["order_id"] for r in log.records] == ["b"]


def test_with_the_store_down_every_answer_is_degraded_with_the_defaults_and_still_logged() -> None:
    from serving.app import ETAModel

    features, log = Features(), Log()
    model = ETAModel.func_or_class(
        "v1", 32, 0.05, loader=lambda version: Loaded(Minutes(), features, log)
    )
    log.records.clear()
    features.store.down = True
    (answers,) = model.answer([([_row("a", 1.0), _row("b", 2.0)], "req-1")])
    assert [(a["eta_minutes"], a.get("degraded")) for a in answers] == [(10.0, True), (20.0, True)]
    assert all(a["missing_features"] == [*NUMERIC, WEATHER] for a in answers)
    assert [r["order_id"] for r in log.records] == ["a", "b"]  # served, so logged
    assert features.degraded_reads == 1


def test_the_health_check_needs_a_finite_prediction_and_not_the_store() -> None:
    import pytest

    from serving.app import ETAModel

    features, log = Features(), Log()
    model = ETAModel.func_or_class(
        "v1", 32, 0.05, loader=lambda version: Loaded(Minutes(), features, log)
    )
    features.store.down = True
    model.check_health()  # the store down is no reason to replace the replica
    assert model.ready() == {"online_store": "ok"}
    model.answer([([_row("a", 1.0)], "req-1")])
    assert "ConnectionError" in model.ready()["online_store"]
    model.bundle = Wild()  # NaN for the first row
    with pytest.raises(RuntimeError, match="predicts nan"):
        model.check_health()


class Loaded10(Minutes):
    """10 minutes per km plus the first numeric feature (a courier's load, say); counts rows."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def predict(self, frame: Any) -> list[float]:
        self.rows.append(len(frame["order_distance_km"]))
        return [
            10.0 * d + (f or 0.0)
            for d, f in zip(frame["order_distance_km"], frame[NUMERIC[0]], strict=True)
        ]


def test_the_prediction_cache_answers_a_repeat_and_a_changed_feature_on_the_next_request() -> None:
    from serving.app import ETAModel

    class Pushed(Store):
        value = 1.0

        def read(self, orders: list[dict[str, Any]]) -> dict[str, list[Any]]:
            out = super().read(orders)
            out[NUMERIC[0]] = [self.value] * len(orders)
            return out

    features, log, net = Features(), Log(), Loaded10()
    features.store = Pushed()
    model = ETAModel.func_or_class(
        "v1", 32, 0.05, loader=lambda version: Loaded(net, features, log)
    )
    assert model.cache is not None  # on by default (RELAY_SERVING__PREDICTION_CACHE_SIZE)
    net.rows.clear()
    (a,) = model.answer([([_row("a", 1.0)], "req-1")])
    (b,) = model.answer([([_row("a", 1.0)], "req-2")])
    assert a[0]["eta_minutes"] == b[0]["eta_minutes"] == 11.0
    assert net.rows == [1]  # the repeat came from the cache
    features.store.value = 4.0  # a push lands in the online store
    (c,) = model.answer([([_row("a", 1.0)], "req-3")])
    assert c[0]["eta_minutes"] == 14.0
    assert model.cache_stats()["l1"]["hits"] == 1
    assert len(log.records) == 3  # a cached answer is served, so logged


def test_a_lone_request_is_answered_at_once_and_concurrent_ones_go_to_the_batcher() -> None:
    import asyncio

    from serving.app import ETAModel

    features, log = Features(), Log()
    model = ETAModel.func_or_class(
        "v1", 32, 0.05, loader=lambda version: Loaded(Minutes(), features, log)
    )
    direct: list[int] = []
    batched: list[str] = []
    answer = model.answer

    def counted(calls):
        direct.append(len(calls))
        return answer(calls)

    async def batcher(call):  # records the batch path's callers
        batched.append(call[1])
        await asyncio.sleep(0)
        return answer([call])[0]

    model.answer, model.predict_batch = counted, batcher

    async def main() -> list[list[dict[str, Any]]]:
        alone = await model.predict([_row("a", 1.0)], "req-1")
        together = await asyncio.gather(
            *(model.predict([_row(f"o{i}", float(i))], f"req-{i}") for i in range(2, 6))
        )
        return [alone, *together]

    answers = asyncio.run(main())
    assert direct == [1] and batched == ["req-2", "req-3", "req-4", "req-5"]
    assert [a[0]["eta_minutes"] for a in answers] == [10.0, 20.0, 30.0, 40.0, 50.0]
    # Right after requests overlapped, a lone one still batches (load comes in bursts) ...
    asyncio.run(model.predict([_row("c", 1.0)], "req-7"))
    assert direct == [1] and batched[-1] == "req-7"
    model._overlapped_at -= model.idle_after_s + 1  # ... until the replica has been idle
    asyncio.run(model.predict([_row("d", 1.0)], "req-8"))
    assert direct == [1, 1]
    model.flush_when_idle = False  # RELAY_SERVING__FLUSH_WHEN_IDLE=false: always the window
    asyncio.run(model.predict([_row("b", 1.0)], "req-6"))
    assert direct == [1, 1] and batched[-1] == "req-6"


def test_two_versions_in_one_process_batch_apart() -> None:
    """The inline layout holds every serving version in the router: each batches only its own
    requests (``@serve.batch`` on the class kept one queue per process: both versions' calls in
    one batch, answered by the first's model)."""
    import asyncio

    from serving.app import ETAModel

    class Fixed:
        def __init__(self, minutes: float) -> None:
            self.minutes = minutes

        def predict(self, frame: Any) -> list[float]:
            return [self.minutes] * len(frame["order_distance_km"])

    models = {
        v: ETAModel.func_or_class(
            v,
            32,
            0.05,
            loader=lambda version, m=m: Loaded(Fixed(m), Features(), Log()),
            flush_when_idle=False,  # every call through the batcher
        )
        for v, m in (("v1", 10.0), ("v2", 20.0))
    }

    async def main() -> list[list[dict[str, Any]]]:
        return await asyncio.gather(
            *(
                models["v1" if i % 2 else "v2"].predict([_row(f"o{i}", 1.0)], f"req-{i}")
                for i in range(8)
            )
        )

    answers = asyncio.run(main())
    for i, (a,) in enumerate(answers):
        v = "v1" if i % 2 else "v2"
        assert (a["model_version"], a["eta_minutes"]) == (v, 10.0 if v == "v1" else 20.0)
        assert a["batch_orders"] == 4  # the four calls of its own version, one pass
    assert {len(m.log.records) for m in models.values()} == {4}


def test_the_router_calls_an_in_process_model_as_it_calls_a_deployment() -> None:
    """The inline layout's adapter: ``predict.remote`` is awaited (and can be cancelled) as a
    Serve response is; sync methods answer too."""
    import asyncio

    from serving.app import InProcessModel

    features, log = Features(), Log()
    model = InProcessModel(
        "v1",
        {
            "max_batch_size": 32,
            "batch_wait_timeout_s": 0.01,
            "loader": lambda version: Loaded(Minutes(), features, log),
        },
    )

    async def main() -> tuple[Any, Any, Any]:
        answer = await model.predict.remote([_row("a", 2.0)], "req-1")
        ready = await model.ready.remote()
        pending = model.predict.remote([_row("b", 1.0)], "req-2")
        pending.cancel()
        return answer, ready, pending

    answer, ready, pending = asyncio.run(main())
    assert answer[0]["eta_minutes"] == 20.0 and answer[0]["model_version"] == "v1"
    assert ready == {"online_store": features.status()}
    assert pending.cancelled()
    model.close()
