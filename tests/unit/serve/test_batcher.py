"""The micro-batcher: full, joined or waited, per call; failures and cancellations."""

from __future__ import annotations

import asyncio

import pytest

from relay.serve.batcher import Batcher


def _doubler(log: list[list[int]]):
    def run(items: list[int]) -> list[int]:
        log.append(list(items))
        return [2 * i for i in items]

    return run


def test_a_lone_call_goes_at_once_when_nothing_else_is_in_flight() -> None:
    batches: list[list[int]] = []
    # A window far longer than the test: had the call waited it out, the wait_for fails.
    b = Batcher(_doubler(batches), max_size=32, wait_s=30.0, in_flight=lambda: 1)

    async def main() -> int:
        return await asyncio.wait_for(b.submit(4), 5.0)

    assert asyncio.run(main()) == 8
    assert batches == [[4]] and b.stats.joined == 1 and b.stats.waited == 0


def test_a_batch_waits_for_every_call_in_flight_then_goes_without_the_window() -> None:
    batches: list[list[int]] = []
    flying = {"n": 3}
    b = Batcher(_doubler(batches), max_size=32, wait_s=30.0, in_flight=lambda: flying["n"])

    async def main() -> list[int]:
        first = asyncio.ensure_future(b.submit(1))
        second = asyncio.ensure_future(b.submit(2))
        for _ in range(5):  # several turns of the loop: the third is still on its way
            await asyncio.sleep(0)
        assert batches == []
        third = b.submit(3)
        return list(await asyncio.wait_for(asyncio.gather(first, second, third), 5.0))

    assert asyncio.run(main()) == [2, 4, 6]
    assert batches == [[1, 2, 3]] and b.stats.joined == 1


def test_one_leaving_the_flight_lets_the_others_go() -> None:
    batches: list[list[int]] = []
    flying = {"n": 2}
    b = Batcher(_doubler(batches), max_size=32, wait_s=30.0, in_flight=lambda: flying["n"])

    async def main() -> int:
        waiting = asyncio.ensure_future(b.submit(5))
        await asyncio.sleep(0)
        assert batches == []
        flying["n"] = 1  # the other call ended elsewhere (another version, a 4xx)
        b.poke()
        return await asyncio.wait_for(waiting, 5.0)

    assert asyncio.run(main()) == 10


def test_without_a_flight_count_calls_batch_within_the_window() -> None:
    batches: list[list[int]] = []
    b = Batcher(_doubler(batches), max_size=32, wait_s=0.05)

    async def main() -> list[int]:
        return list(await asyncio.gather(*(b.submit(i) for i in range(3))))

    assert asyncio.run(main()) == [0, 2, 4]
    assert batches == [[0, 1, 2]] and b.stats.waited == 1


def test_a_full_batch_goes_and_the_rest_follow_in_order() -> None:
    batches: list[list[int]] = []
    b = Batcher(_doubler(batches), max_size=2, wait_s=0.05)

    async def main() -> list[int]:
        return list(await asyncio.gather(*(b.submit(i) for i in range(5))))

    assert asyncio.run(main()) == [0, 2, 4, 6, 8]
    assert batches == [[0, 1], [2, 3], [4]] and b.stats.full == 2


def test_each_batch_is_reported_with_why_it_went_and_its_size() -> None:
    """What the version's ``relay_model_batches`` counter is told."""
    told: list[tuple[str, int]] = []
    b = Batcher(_doubler([]), max_size=2, wait_s=0.05, on_batch=lambda *a: told.append(a))

    async def main() -> None:
        await asyncio.gather(*(b.submit(i) for i in range(3)))
        flying = Batcher(
            _doubler([]), 32, 30.0, in_flight=lambda: 1, on_batch=lambda *a: told.append(a)
        )
        await asyncio.wait_for(flying.submit(7), 5.0)

    asyncio.run(main())
    assert told == [("full", 2), ("waited", 1), ("joined", 1)]


def test_a_failing_batch_fails_each_of_its_callers_and_the_next_batch_runs() -> None:
    calls = {"n": 0}

    def run(items: list[int]) -> list[int]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("model broke")
        return items

    b = Batcher(run, max_size=32, wait_s=0.05)

    async def main() -> tuple[list[object], int]:
        failed = await asyncio.gather(b.submit(1), b.submit(2), return_exceptions=True)
        return failed, await b.submit(3)

    failed, after = asyncio.run(main())
    assert all(isinstance(f, ValueError) for f in failed) and after == 3


def test_a_wrong_number_of_results_is_an_error_not_a_hang() -> None:
    b = Batcher(lambda items: items[:1], max_size=32, wait_s=0.05)

    async def main() -> list[object]:
        return await asyncio.wait_for(
            asyncio.gather(b.submit(1), b.submit(2), return_exceptions=True), 5.0
        )

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(main()))


def test_a_cancelled_caller_is_left_out_of_its_batch() -> None:
    batches: list[list[int]] = []
    b = Batcher(_doubler(batches), max_size=32, wait_s=0.05)

    async def main() -> int:
        gone = asyncio.ensure_future(b.submit(1))
        kept = asyncio.ensure_future(b.submit(2))
        await asyncio.sleep(0)
        gone.cancel()
        return await kept

    assert asyncio.run(main()) == 4
    assert batches == [[2]]


def test_max_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_size"):
        Batcher(lambda items: items, max_size=0, wait_s=0.01)
