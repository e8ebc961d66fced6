"""Fault injection for drills: delay or fail one version's calls, as a service mesh does.

Like Istio's ``HTTPFaultInjection``: a fault names a model version, a delay added to each of its
calls and the share of its calls that fail, and expires on its own. It is kept in the traffic
actor beside the split (:mod:`relay.serve.traffic_state`), so every router replica applies it
as soon as it is set (routers long-poll the actor) and a restarted router forgets nothing;
``relay serve fault`` sets and clears it.
Drills and the fault tests use it to check what users care about when a version turns slow or
fails: the rollout controller rolls back only a candidate at fault, and the production guard
restores the previous version after a sustained breach.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Fault:
    """What happens to one version's calls until ``until`` (unix seconds).

    Attributes:
        delay_ms: added before each call (a slow version).
        error_rate: the share of calls that fail (an erroring version), in [0, 1].
        until: when the fault ends by itself.
    """

    delay_ms: float = 0.0
    error_rate: float = 0.0
    until: float = 0.0

    def __post_init__(self) -> None:
        if self.delay_ms < 0:
            raise ValueError(f"delay_ms must be ≥ 0, got {self.delay_ms}")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate must be within [0, 1], got {self.error_rate}")

    def active(self, now: float | None = None) -> bool:
        """Whether the fault still applies at ``now`` (unix seconds; the current time)."""
        return (time.time() if now is None else now) < self.until

    def fails(self, draw: float) -> bool:
        """Whether a call with uniform ``draw`` in [0, 1) fails."""
        return draw < self.error_rate


class InjectedFault(RuntimeError):
    """A call failed on purpose (a fault drill), as a crashed replica's call would."""


def faults_to_config(faults: dict[str, Fault]) -> dict[str, dict[str, float]]:
    """The JSON-able form kept in the traffic actor."""
    return {version: asdict(fault) for version, fault in faults.items()}


def faults_from_config(config: dict[str, Any] | None, now: float | None = None) -> dict[str, Fault]:
    """The faults still active at ``now`` from their kept form (expired ones dropped)."""
    faults = {v: Fault(**{k: float(x) for k, x in f.items()}) for v, f in (config or {}).items()}
    return {v: f for v, f in faults.items() if f.active(now)}
