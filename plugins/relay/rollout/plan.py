"""A rollout's plan: the ordered steps, which orders each sends to the candidate, and the split.

Pure values (pydantic, JSON round-trip). A step sends the candidate a share of orders by order
hash, optionally only within a targeting rule (named zones, a hashed share of zones, hours of
the day); :class:`TrafficRule` is the resulting split as the traffic actor will keep it.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from relay.serve.traffic import OrderTargeting, TrafficSplit
from relay.settings import RolloutSettings


class _Frozen(BaseModel):
    # Plans are values, stored inside rollout records.
    model_config = ConfigDict(frozen=True, extra="forbid")


class Targeting(_Frozen):
    """Which orders a step concerns beyond the order-hash share; empty fields match all.

    Attributes:
        zones: delivery zones whose orders match (experiments name cities this way).
        zone_share: the share of zones, chosen by a stable hash of the zone id, whose orders
            match (the seed's "10% of cities" without knowing the zone list).
        hours: hours of the day (UTC, 0-23) whose orders match.
    """

    zones: list[str] | None = Field(None, min_length=1)
    zone_share: float | None = Field(None, gt=0, le=1)
    hours: list[int] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        self.rule()  # the router's rule checks the fields together
        return self

    def rule(self) -> OrderTargeting:
        """The targeting as the router applies it."""
        return OrderTargeting.from_config(self.model_dump())

    def matches(self, zone_id: str, hour: int) -> bool:
        """Whether an order in ``zone_id`` created at ``hour`` (UTC) is targeted."""
        return self.rule().matches(zone_id, hour)

    def describe(self) -> str:
        """E.g. ``10% of zones`` or ``zones Z001, Z002 at hours 18, 19``."""
        parts = []
        if self.zones is not None:
            parts.append(f"zones {', '.join(self.zones)}")
        if self.zone_share is not None:
            parts.append(f"{_pct(self.zone_share)} of zones")
        if self.hours is not None:
            parts.append(f"at hours {', '.join(str(h) for h in self.hours)}")
        return " ".join(parts) or "all orders"


class Step(_Frozen):
    """One step of a plan: which orders the candidate answers and what it takes to judge it.

    Attributes:
        share: the share of the targeted orders (by order hash) that the candidate answers.
        targeting: which orders the step concerns; None: all of them.
        min_duration_s: the step lasts at least this long.
        max_duration_s: a step still not judged after this long ends (not promoted).
        min_requests: candidate requests needed before the step is judged.
        min_labelled: labelled predictions (each version) needed; 0: quality not asked.
    """

    share: float = Field(gt=0, le=1)
    targeting: Targeting | None = None
    min_duration_s: float = Field(gt=0)
    max_duration_s: float = Field(gt=0)
    min_requests: int = Field(0, ge=0)
    min_labelled: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _durations(self) -> Self:
        if self.max_duration_s < self.min_duration_s:
            raise ValueError(
                f"a step's max_duration_s {self.max_duration_s} is below its min_duration_s "
                f"{self.min_duration_s}"
            )
        return self

    @property
    def full(self) -> bool:
        """Whether the candidate answers every order at this step."""
        return self.share == 1.0 and self.targeting is None

    def describe(self) -> str:
        """E.g. ``0.1% of orders`` or ``100% of orders in 10% of zones``."""
        where = "" if self.targeting is None else f" in {self.targeting.describe()}"
        return f"{_pct(self.share)} of orders{where}"


class Plan(_Frozen):
    """The ordered steps a candidate walks through before promotion."""

    steps: list[Step] = Field(min_length=1)


def default_plan(settings: RolloutSettings) -> Plan:
    """The seed's shape: 0.1% of orders → 1% → all orders of 10% of zones → 100%.

    Shares and minimum durations come from ``settings.plan_*`` (24 h, 3 days, a week and an hour
    by default; seconds in ``make demo``); each step may run ``plan_max_factor`` times its
    minimum before it ends unjudged; evidence minimums are ``min_requests`` and ``min_labelled``.
    """
    first, second = settings.plan_shares
    shapes: list[tuple[float, Targeting | None]] = [
        (first, None),
        (second, None),
        (1.0, Targeting(zone_share=settings.plan_zone_share)),
        (1.0, None),
    ]
    return Plan(
        steps=[
            Step(
                share=share,
                targeting=targeting,
                min_duration_s=duration,
                max_duration_s=duration * settings.plan_max_factor,
                min_requests=settings.min_requests,
                min_labelled=settings.min_labelled,
            )
            for (share, targeting), duration in zip(shapes, settings.plan_durations_s, strict=True)
        ]
    )


class TrafficRule(_Frozen):
    """Which version answers which order: :meth:`TrafficSplit.to_config`'s shape plus targeting.

    The candidate answers an order when the order matches ``targeting`` (None: every order)
    and its order-hash bucket falls within ``candidate_share``; stable answers the rest.
    """

    stable: str
    candidate: str | None = None
    candidate_share: float = Field(0.0, ge=0, le=1)
    targeting: Targeting | None = None

    def order_split(self) -> TrafficSplit:
        """The order-hash part of the rule; the whole rule only when ``targeting`` is None."""
        return TrafficSplit(self.stable, self.candidate, self.candidate_share)

    def split(self) -> TrafficSplit:
        """The whole rule as the router applies it, targeting included."""
        targeting = None if self.targeting is None else self.targeting.rule()
        return TrafficSplit(self.stable, self.candidate, self.candidate_share, targeting)

    def to_config(self) -> dict[str, Any]:
        """The rule as plain JSON: ``TrafficSplit.to_config()`` plus ``targeting``."""
        return self.model_dump(mode="json")

    def version_for(self, order_id: str, zone_id: str, hour: int) -> str:
        """The version that answers an order."""
        return self.split().version_for(order_id, zone_id, hour)


def _pct(share: float) -> str:
    return f"{share * 100:.6g}%"
