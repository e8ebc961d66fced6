"""Where the live traffic split is kept: a small named Ray actor that every router replica watches.

Moving traffic only changes this actor, never a deployment: redeploying from Python replaces its
replicas (Serve gives each ``serve.run`` a new code version), which stalled requests for 4-6 s here.
"""

from __future__ import annotations

import os
from typing import Any

import ray

MODEL_DEPLOYMENT = "ETAModel"
ROUTER_DEPLOYMENT = "Router"
TRAFFIC_ACTOR = "relay-eta-traffic"
TRAFFIC_NAMESPACE = "relay"


@ray.remote(num_cpus=0)
class TrafficState:
    """The current split (:meth:`TrafficSplit.to_config`) and a generation number."""

    def __init__(self) -> None:
        self.generation = 0
        self.config: dict[str, Any] | None = None

    def set(self, config: dict[str, Any]) -> int:
        self.generation += 1
        self.config = config
        return self.generation

    def get(self) -> tuple[int, dict[str, Any] | None]:
        return self.generation, self.config

    def seed(self, config: dict[str, Any]) -> int:
        return self.generation if self.config is not None else self.set(config)


def traffic_state() -> Any:
    """The cluster's traffic actor, created on first use (detached: it outlives the caller)."""
    return TrafficState.options(  # type: ignore[attr-defined]
        name=TRAFFIC_ACTOR,
        namespace=TRAFFIC_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
    ).remote()


def model_app_name(version: str) -> str:
    """The Serve application that runs one model version."""
    return f"eta-model-{version}"


def relay_env() -> dict[str, str]:
    """RELAY_* and AWS_* variables, handed to replicas so they read the same settings."""
    keep = ("RELAY_", "AWS_")
    return {k: v for k, v in os.environ.items() if k.startswith(keep)}
