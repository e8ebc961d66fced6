"""Canary traffic: which model version answers which order.

The split hashes the order id, so the same order always reaches the same version (a customer
refreshing the app sees one ETA) and a share of 10% sends a stable 10% of orders to the
candidate. Pure functions: the router calls them per request.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

BUCKETS = 10_000


def bucket(order_id: str) -> int:
    """A stable bucket in [0, 10000) for an order id (crc32: same in every process)."""
    return zlib.crc32(order_id.encode()) % BUCKETS


@dataclass(frozen=True)
class TrafficSplit:
    """Stable and (optionally) candidate versions with the candidate's share of orders."""

    stable: str
    candidate: str | None = None
    candidate_share: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.candidate_share <= 1.0:
            raise ValueError(f"candidate_share must be within [0, 1], got {self.candidate_share}")
        if self.candidate is None and self.candidate_share > 0:
            raise ValueError("a candidate share needs a candidate version")

    def to_config(self) -> dict[str, Any]:
        """The split as the traffic actor keeps it and ``/v1/models`` reports it (plain JSON)."""
        return asdict(self)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TrafficSplit:
        """The inverse of :meth:`to_config` (a missing candidate means none)."""
        return cls(
            stable=config["stable"],
            candidate=config.get("candidate"),
            candidate_share=float(config.get("candidate_share", 0.0)),
        )

    def version_for(self, order_id: str) -> str:
        if self.candidate and bucket(order_id) < round(self.candidate_share * BUCKETS):
            return self.candidate
        return self.stable

    def assign(self, order_ids: Sequence[str]) -> dict[str, list[int]]:
        """Version -> indexes of the orders it answers."""
        groups: dict[str, list[int]] = {}
        for i, oid in enumerate(order_ids):
            groups.setdefault(self.version_for(oid), []).append(i)
        return groups

    def shares(self) -> dict[str, float]:
        if not self.candidate:
            return {self.stable: 1.0}
        return {self.stable: 1.0 - self.candidate_share, self.candidate: self.candidate_share}

    def versions(self) -> list[str]:
        return [v for v in (self.stable, self.candidate) if v]
