"""Canary traffic: which model version answers which order.

The split hashes the order id, so the same order always reaches the same version (a customer
refreshing the app sees one ETA) and a share of 10% sends a stable 10% of orders to the
candidate. In production the hash is keyed with a secret salt (:mod:`relay.serve.auth`), so a
client cannot choose order ids that reach the candidate. A split may also target orders
(named zones, a hashed share of zones, hours of the day): orders outside the targeting
always reach stable. Pure functions: the router calls them per request.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

BUCKETS = 10_000


def bucket(key: str, salt: bytes = b"") -> int:
    """A stable bucket in [0, 10000) for an order or zone id: keyed BLAKE2b with a salt,
    crc32 without (both the same in every process)."""
    if salt:
        digest = hashlib.blake2b(key.encode(), key=salt[:64], digest_size=8).digest()
        return int.from_bytes(digest, "big") % BUCKETS
    return zlib.crc32(key.encode()) % BUCKETS


def _within(key: str, share: float, salt: bytes = b"") -> bool:
    return bucket(key, salt) < round(share * BUCKETS)


@dataclass(frozen=True)
class OrderTargeting:
    """Which orders a split concerns; a field left None matches every order.

    Attributes:
        zones: delivery zones whose orders match.
        zone_share: the share of zones, chosen by a stable hash of the zone id, whose orders match.
        hours: hours of the day (UTC, 0-23) whose orders match.
    """

    zones: tuple[str, ...] | None = None
    zone_share: float | None = None
    hours: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.zones is not None and self.zone_share is not None:
            raise ValueError("target either named zones or a share of zones, not both")
        if self.zones is not None and not self.zones:
            raise ValueError("named zones need at least one zone")
        if self.zone_share is not None and not 0.0 < self.zone_share <= 1.0:
            raise ValueError(f"zone_share must be within (0, 1], got {self.zone_share}")
        if self.hours is not None and (not self.hours or any(not 0 <= h <= 23 for h in self.hours)):
            raise ValueError(f"hours of the day lie in 0..23, got {self.hours}")

    def matches(self, zone_id: str, hour: int) -> bool:
        """Whether an order in ``zone_id`` created at ``hour`` (UTC) is targeted."""
        if self.zones is not None and zone_id not in self.zones:
            return False
        if self.zone_share is not None and not _within(zone_id, self.zone_share):
            return False
        return self.hours is None or hour in self.hours

    def to_config(self) -> dict[str, Any]:
        """Plain JSON: ``zones``, ``zone_share`` and ``hours``, each possibly None."""
        return {
            "zones": None if self.zones is None else list(self.zones),
            "zone_share": self.zone_share,
            "hours": None if self.hours is None else list(self.hours),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> OrderTargeting:
        """The inverse of :meth:`to_config` (missing fields match every order)."""
        zones, share, hours = config.get("zones"), config.get("zone_share"), config.get("hours")
        return cls(
            zones=None if zones is None else tuple(str(z) for z in zones),
            zone_share=None if share is None else float(share),
            hours=None if hours is None else tuple(int(h) for h in hours),
        )


@dataclass(frozen=True)
class TrafficSplit:
    """Stable and (optionally) candidate versions, the candidate's share of the targeted orders,
    and the targeting (None: every order is targeted)."""

    stable: str
    candidate: str | None = None
    candidate_share: float = 0.0
    targeting: OrderTargeting | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.candidate_share <= 1.0:
            raise ValueError(f"candidate_share must be within [0, 1], got {self.candidate_share}")
        if self.candidate is None and self.candidate_share > 0:
            raise ValueError("a candidate share needs a candidate version")

    def to_config(self) -> dict[str, Any]:
        """The split as the traffic actor keeps it and ``/v1/models`` reports it (plain JSON);
        ``targeting`` appears only when set, so untargeted splits keep their old shape."""
        config: dict[str, Any] = {
            "stable": self.stable,
            "candidate": self.candidate,
            "candidate_share": self.candidate_share,
        }
        if self.targeting is not None:
            config["targeting"] = self.targeting.to_config()
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TrafficSplit:
        """The inverse of :meth:`to_config` (a missing candidate or targeting means none)."""
        targeting = config.get("targeting")
        return cls(
            stable=config["stable"],
            candidate=config.get("candidate"),
            candidate_share=float(config.get("candidate_share", 0.0)),
            targeting=None if targeting is None else OrderTargeting.from_config(targeting),
        )

    def version_for(
        self,
        order_id: str,
        zone_id: str | None = None,
        hour: int | None = None,
        salt: bytes = b"",
    ) -> str:
        """The version that answers an order; a targeted split needs its zone and hour.
        ``salt`` keys the order hash (zones are not salted: a client does not choose them)."""
        if not self.candidate:
            return self.stable
        if self.targeting is not None:
            if zone_id is None or hour is None:
                raise ValueError("a targeted split needs each order's zone and hour")
            if not self.targeting.matches(zone_id, hour):
                return self.stable
        return self.candidate if _within(order_id, self.candidate_share, salt) else self.stable

    def assign(
        self,
        order_ids: Sequence[str],
        zone_ids: Sequence[str] | None = None,
        hours: Sequence[int] | None = None,
        salt: bytes = b"",
    ) -> dict[str, list[int]]:
        """Version -> indexes of the orders it answers (``zone_ids`` and ``hours`` run
        alongside ``order_ids``; a targeted split needs them; ``salt`` as :meth:`version_for`)."""
        zones = list(zone_ids) if zone_ids is not None else [None] * len(order_ids)
        at = list(hours) if hours is not None else [None] * len(order_ids)
        groups: dict[str, list[int]] = {}
        for i, (oid, zone, hour) in enumerate(zip(order_ids, zones, at, strict=True)):
            groups.setdefault(self.version_for(oid, zone, hour, salt), []).append(i)
        return groups

    def shares(self) -> dict[str, float]:
        """Each version's share of the targeted orders (all orders when untargeted)."""
        if not self.candidate:
            return {self.stable: 1.0}
        return {self.stable: 1.0 - self.candidate_share, self.candidate: self.candidate_share}

    def versions(self) -> list[str]:
        return [v for v in (self.stable, self.candidate) if v]
