"""Micro-batching of model calls on one event loop.

A batch goes when it is full, when its oldest call has waited the window, or, given a count of
the calls that could still join (``in_flight``), as soon as every one of them has: waiting longer
would only add latency, since nothing else is on its way. Under load the calls in flight outrun
the batch and it fills; alone, a call goes at once.

Serve's ``@serve.batch`` cannot do the last (it waits out the window for a batch that will not
fill) and keeps one queue per decorated method, shared by every instance in a process, where a
router holding two versions needs one per version (README, fast serving).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class BatchStats:
    """What this batcher did: batches run, calls in them, and why each batch went."""

    batches: int = 0
    calls: int = 0
    full: int = 0
    joined: int = 0
    waited: int = 0


class Batcher(Generic[T, R]):
    """Calls ``run`` on batches of submitted items, on the submitting loop.

    Args:
        run: answers a batch of items, one result per item in order (synchronous: it holds the
            loop, so calls arriving meanwhile queue for the next batch).
        max_size: items per batch at most.
        wait_s: how long the oldest item of a batch waits for more at most.
        in_flight: how many calls are under way that could still join a batch (those queued
            included); None: only ``max_size`` and ``wait_s`` decide. Whoever changes that count
            calls :meth:`poke`.
        on_batch: told each batch's reason (``full``, ``joined`` or ``waited``) and size, as
            it goes (the version's metrics).
    """

    def __init__(
        self,
        run: Callable[[list[T]], list[R]],
        max_size: int,
        wait_s: float,
        in_flight: Callable[[], int] | None = None,
        on_batch: Callable[[str, int], None] | None = None,
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, not {max_size}")
        self.run, self.max_size, self.wait_s, self.in_flight = run, max_size, wait_s, in_flight
        self.stats = BatchStats()
        self.on_batch = on_batch
        self._pending: list[tuple[T, asyncio.Future[R], float]] = []
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """The result of ``item``, answered in the batch it joins."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future, time.monotonic()))
        self.poke()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await future

    def poke(self) -> None:
        """Something changed (a call joined, one in flight ended): look again."""
        if self._wake is not None:
            self._wake.set()

    def _why_go(self) -> str | None:
        n = len(self._pending)
        if n >= self.max_size:
            return "full"
        if self.in_flight is not None and n >= self.in_flight():
            return "joined"
        return None

    async def _drain(self) -> None:
        while self._pending:
            why = self._why_go()
            while why is None:
                left = self._pending[0][2] + self.wait_s - time.monotonic()
                if left <= 0:
                    why = "waited"
                    break
                self._wake = asyncio.Event()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except TimeoutError:
                    pass
                finally:
                    self._wake = None
                if not self._pending:  # every waiting caller was cancelled
                    return
                why = self._why_go()
            taken = self._pending[: self.max_size]
            del self._pending[: self.max_size]
            live = [(item, fut) for item, fut, _ in taken if not fut.done()]
            if not live:
                continue
            self._count(why, len(live))
            try:
                results = self.run([item for item, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"{len(results)} results for a batch of {len(live)}")
            except Exception as exc:  # every caller of the batch gets it
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
            else:
                for (_, fut), result in zip(live, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)
            # Let the answered callers finish (and leave the in-flight count) before the
            # next batch decides whether everyone still in flight has joined.
            await asyncio.sleep(0)

    def _count(self, why: str, calls: int) -> None:
        s = self.stats
        s.batches += 1
        s.calls += calls
        if why == "full":
            s.full += 1
        elif why == "joined":
            s.joined += 1
        else:
            s.waited += 1
        if self.on_batch is not None:
            self.on_batch(why, calls)
