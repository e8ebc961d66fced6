"""Where the live traffic split is kept: a small named Ray actor that every router replica watches.

Moving traffic only changes this actor, never a deployment: redeploying from Python replaces its
replicas (Serve gives each ``serve.run`` a new code version), which stalled requests for 4-6 s here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

import ray

MODEL_DEPLOYMENT = "ETAModel"
ROUTER_DEPLOYMENT = "Router"
TRAFFIC_ACTOR = "relay-eta-traffic"
TRAFFIC_NAMESPACE = "relay"


class TrafficBoard:
    """The current split (:meth:`TrafficSplit.to_config`), the injected faults (drills, under
    ``faults`` in what :meth:`get` returns) and a generation number: :class:`TrafficState`'s
    state, on one event loop.

    Every method is a coroutine, so the actor is an async one and runs them all on its loop: a
    router waits in :meth:`wait` until the generation moves (a long poll) instead of asking ten
    times a second (those asks took about 2% of each router replica's core and 3% of one for
    the actor, under load; README, fast serving)."""

    def __init__(self) -> None:
        self.generation = 0
        self.config: dict[str, Any] | None = None
        self.faults: dict[str, Any] = {}  # relay.serve.faults, applied by every router
        self._moved = asyncio.Event()

    def _bump(self) -> int:
        # Monotonic across restarts and re-creations (milliseconds of wall clock): a router
        # that applied generation n of a lost actor must see the new actor's splits as newer.
        self.generation = max(self.generation + 1, int(time.time() * 1000))
        self._moved.set()  # wakes every waiter; later ones wait for the next move
        self._moved = asyncio.Event()
        return self.generation

    async def set(self, config: dict[str, Any]) -> int:
        self.config = config
        return self._bump()

    async def get(self) -> tuple[int, dict[str, Any] | None]:
        return self._current()

    async def wait(self, generation: int, timeout_s: float) -> tuple[int, dict[str, Any] | None]:
        """What :meth:`get` returns, once the generation is not ``generation`` (at once when it
        is not already) or after ``timeout_s``."""
        if self.generation == generation:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._moved.wait(), timeout_s)
        return self._current()

    def _current(self) -> tuple[int, dict[str, Any] | None]:
        if self.config is None or not self.faults:
            return self.generation, self.config
        return self.generation, {**self.config, "faults": self.faults}

    async def set_faults(self, faults: dict[str, Any]) -> int:
        """Replace the injected faults (drills); routers apply them with the next generation."""
        self.faults = dict(faults)
        return self._bump()

    async def seed(self, config: dict[str, Any]) -> int:
        return self.generation if self.config is not None else await self.set(config)


# Restarted by Ray when its process dies (empty: the rollout controller's next tick sets the
# split again from the record; routers keep the last split meanwhile).
@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class TrafficState(TrafficBoard):
    """The cluster's one :class:`TrafficBoard`, a named Ray actor (:func:`traffic_state`)."""


def named_actor(actor_class: Any, name: str, *args: Any, **options: Any) -> Any:
    """The cluster's one actor ``name`` of ``actor_class`` (a ``@ray.remote`` class) in
    Relay's namespace, created on first use with ``args`` (detached: it outlives the caller)."""
    return actor_class.options(
        name=name,
        namespace=TRAFFIC_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        **options,
    ).remote(*args)


def traffic_state() -> Any:
    """The cluster's traffic actor, created on first use."""
    return named_actor(TrafficState, TRAFFIC_ACTOR)


def model_app_name(version: str) -> str:
    """The Serve application that runs one model version."""
    return f"eta-model-{version}"


def relay_env() -> dict[str, str]:
    """Relay's public variables, handed to replicas so they read the same settings; secrets
    (AWS keys, passwords, URLs with credentials) come from the nodes' own environment."""
    from relay.infra.rayjobs import public_env

    return public_env(os.environ)
