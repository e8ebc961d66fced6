"""The traffic actor's state (:class:`relay.serve.traffic_state.TrafficBoard`), without Ray:
routers long-poll it, so a move must wake every waiter and a quiet board must let them go."""

from __future__ import annotations

import asyncio
from typing import Any

from relay.serve.traffic_state import TrafficBoard

SPLIT = {"stable": "v1", "candidate": None, "candidate_share": 0.0}
CANARY = {"stable": "v1", "candidate": "v2", "candidate_share": 0.1}


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_waiter_behind_the_board_is_answered_at_once() -> None:
    async def go() -> tuple[int, Any]:
        board = TrafficBoard()
        await board.set(SPLIT)
        return await asyncio.wait_for(board.wait(0, timeout_s=60), 1)

    generation, config = _run(go())
    assert generation > 0 and config == SPLIT


def test_every_waiter_wakes_on_a_move_with_the_new_split() -> None:
    async def go() -> list[tuple[int, Any]]:
        board = TrafficBoard()
        first = await board.set(SPLIT)
        waiters = [asyncio.create_task(board.wait(first, timeout_s=60)) for _ in range(3)]
        await asyncio.sleep(0)  # one turn of the loop: every waiter is waiting now
        assert not any(w.done() for w in waiters)
        moved = await board.set(CANARY)
        got = await asyncio.wait_for(asyncio.gather(*waiters), 1)  # not the 60 s timeout
        assert all(g == moved for g, _ in got)
        return got

    assert [config for _, config in _run(go())] == [CANARY] * 3


def test_a_quiet_board_lets_the_waiter_go_unchanged_after_its_timeout() -> None:
    async def go() -> tuple[int, tuple[int, Any]]:
        board = TrafficBoard()
        first = await board.set(SPLIT)
        return first, await board.wait(first, timeout_s=0.01)

    first, (generation, config) = _run(go())
    assert generation == first and config == SPLIT


def test_faults_move_the_generation_and_wake_the_waiters() -> None:
    async def go() -> tuple[int, int, Any]:
        board = TrafficBoard()
        first = await board.set(SPLIT)
        waiter = asyncio.create_task(board.wait(first, timeout_s=60))
        await asyncio.sleep(0)
        await board.set_faults({"v1": {"error_rate": 0.5}})
        generation, config = await asyncio.wait_for(waiter, 1)
        return first, generation, config

    first, generation, config = _run(go())
    assert generation > first
    assert config == {**SPLIT, "faults": {"v1": {"error_rate": 0.5}}}


def test_a_seed_never_overrides_a_live_split() -> None:
    async def go() -> tuple[int, int, Any]:
        board = TrafficBoard()
        first = await board.seed(SPLIT)
        again = await board.seed(CANARY)
        return first, again, await board.get()

    first, again, (generation, config) = _run(go())
    assert first == again == generation and config == SPLIT
