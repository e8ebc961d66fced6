"""A vectorised generator of realistic delivery orders.

The world (zones, merchants, couriers) is fixed by the seed; each day's orders are drawn from
``(seed, date)`` so any day can be regenerated alone. Delivery time is a non-linear function of
preparation, courier wait, distance, congestion by hour and zone, weather and courier load, with
noise, so a model has something real to learn and a naive baseline has something to lose to.

Ordinary days differ as real ones do (:mod:`relay.data.weather`, :mod:`relay.data.days`):
weather comes in fronts that last days, the week and the holidays reshape the hours, the zones
and the courier supply, and demand moves from day to day with the rain and on its own.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from relay.data.days import Demand, daily_demand, hour_weights
from relay.data.schema import VEHICLES, WEATHER
from relay.data.weather import RAIN, weather_grid

_VEHICLE_SPEED_KMH = np.array([14.0, 22.0, 26.0])
_WEATHER_SPEED = np.array([1.0, 0.96, 0.8, 0.6])
_WEATHER_PREP = np.array([1.0, 1.0, 1.05, 1.12])
# On an average day nine couriers in ten work; the rest is the slack that busy days call in.
_ON_SHIFT = 0.9
# Kitchens slow down on busy days: preparation grows with the city's volume to this power.
_KITCHEN_LOAD = 0.3


@dataclass(frozen=True)
class Conditions:
    """Knobs a scenario turns; the defaults are an ordinary day."""

    storm_share: float = 0.0  # share of zone-hours forced into a storm
    new_zones: int = 0  # zones that did not exist in the reference world
    new_zone_order_share: float = 0.0
    courier_share: float = 1.0  # share of couriers on shift
    prep_factor: float = 1.0  # multiplies every merchant's preparation time


@dataclass(frozen=True)
class World:
    """Zones, merchants and couriers, with the hidden traits that shape delivery times."""

    zone_ids: np.ndarray
    zone_congestion: np.ndarray
    zone_spread_km: np.ndarray
    zone_wetness: np.ndarray
    zone_popularity: np.ndarray
    merchant_ids: np.ndarray
    merchant_zone: np.ndarray
    merchant_prep: np.ndarray
    merchant_popularity: np.ndarray
    courier_ids: np.ndarray
    courier_zone: np.ndarray
    courier_vehicle: np.ndarray
    courier_skill: np.ndarray


def make_world(
    seed: int,
    n_zones: int = 24,
    n_merchants: int = 1200,
    n_couriers: int = 1500,
    new_zones: int = 0,
) -> World:
    """The fixed world for a seed. ``new_zones`` appends zones (with merchants and couriers)
    that the reference world does not have, keeping the existing ones identical."""
    rng = np.random.default_rng([seed, 0])
    world = _draw_world(rng, n_zones, n_merchants, n_couriers, zone_offset=0)
    if new_zones == 0:
        return world
    extra_rng = np.random.default_rng([seed, 1])
    m = max(1, n_merchants * new_zones // n_zones)
    c = max(1, n_couriers * new_zones // n_zones)
    more = _draw_world(extra_rng, new_zones, m, c, zone_offset=n_zones, suburban=True)
    return World(
        **{
            name: np.concatenate([getattr(world, name), getattr(more, name)])
            for name in World.__dataclass_fields__
        }
    )


def _draw_world(
    rng: np.random.Generator,
    n_zones: int,
    n_merchants: int,
    n_couriers: int,
    zone_offset: int,
    suburban: bool = False,
) -> World:
    zone_ids = np.array([f"Z{zone_offset + i + 1:03d}" for i in range(n_zones)], dtype=object)
    spread = rng.uniform(1.8, 3.5, n_zones) * (1.8 if suburban else 1.0)
    merchant_zone = np.sort(rng.integers(0, n_zones, n_merchants)) + zone_offset
    courier_zone = np.sort(rng.integers(0, n_zones, n_couriers)) + zone_offset
    mprefix = "N" if suburban else "M"
    cprefix = "D" if suburban else "C"
    return World(
        zone_ids=zone_ids,
        zone_congestion=rng.uniform(0.2, 0.9, n_zones) * (0.6 if suburban else 1.0),
        zone_spread_km=spread,
        zone_wetness=rng.uniform(-0.6, 0.6, n_zones),
        zone_popularity=rng.dirichlet(np.full(n_zones, 4.0)),
        merchant_ids=np.array([f"{mprefix}{i:05d}" for i in range(n_merchants)], dtype=object),
        merchant_zone=merchant_zone,
        merchant_prep=rng.lognormal(np.log(11.0), 0.35, n_merchants),
        merchant_popularity=rng.pareto(2.0, n_merchants) + 0.2,
        courier_ids=np.array([f"{cprefix}{i:05d}" for i in range(n_couriers)], dtype=object),
        courier_zone=courier_zone,
        courier_vehicle=rng.choice(len(VEHICLES), n_couriers, p=[0.35, 0.45, 0.2]),
        courier_skill=rng.normal(1.0, 0.08, n_couriers).clip(0.75, 1.25),
    )


def _rush_curve(hour_frac: np.ndarray) -> np.ndarray:
    """Traffic congestion by hour of day (0..~1): morning, lunch and evening peaks."""
    return (
        0.6 * np.exp(-0.5 * ((hour_frac - 8.5) / 1.0) ** 2)
        + 0.5 * np.exp(-0.5 * ((hour_frac - 12.5) / 1.2) ** 2)
        + 1.0 * np.exp(-0.5 * ((hour_frac - 18.5) / 1.5) ** 2)
    )


def zone_residential(world: World) -> np.ndarray:
    """How residential each zone is, 0 to 1: the least congested zones are homes."""
    return np.clip((0.9 - world.zone_congestion) / 0.7, 0.0, 1.0)


def day_conditions(
    date: dt.date, seed: int = 7, world: World | None = None
) -> tuple[np.ndarray, Demand]:
    """A day's ordinary weather per (zone, hour) and its demand, before any scenario.

    Args:
        date: the day.
        seed: the world's seed.
        world: a world to use instead of the seed's default one.

    Returns:
        The weather categories per (zone, hour) and the day's :class:`~relay.data.days.Demand`.
    """
    w = world or make_world(seed)
    grid = weather_grid(seed, date, w.zone_wetness)
    return grid, daily_demand(seed, date, zone_residential(w), (grid >= RAIN).mean(axis=1))


def daily_volume(date: dt.date, base: int, seed: int = 7, world: World | None = None) -> int:
    """How many orders the simulated city places on ``date`` when an average day has ``base``.

    :func:`generate_orders` takes its count from the caller; a caller that wants volumes to
    follow the week, the holidays and the rain passes ``daily_volume(date, base)``.
    """
    return max(1, round(base * day_conditions(date, seed, world)[1].volume))


def generate_orders(
    date: dt.date,
    n_orders: int,
    seed: int = 7,
    conditions: Conditions | None = None,
    world: World | None = None,
) -> pd.DataFrame:
    """One day of delivery orders, reproducible from ``(seed, date, conditions)``.

    Args:
        date: the day the orders are created (UTC).
        n_orders: how many orders.
        seed: fixes the world and, with the date, the day's draws.
        conditions: scenario knobs (storm, new zones, courier shortage, slower kitchens).
        world: a world to use instead of the seed's default one.

    Returns:
        A frame with the columns of :data:`relay.data.schema.ORDER_COLUMNS`.
    """
    cond = conditions or Conditions()
    w = world or make_world(seed, new_zones=cond.new_zones)
    rng = np.random.default_rng([seed, date.toordinal(), 17])
    n = n_orders
    # The scenario changes the world, not the day's ordinary weather and demand (a storm is
    # laid over them below): each scenario shifts what it names and nothing else.
    grid, demand = day_conditions(date, seed, w)

    # When: hour of day with the day's lunch and dinner peaks, then a second inside the hour.
    hour = rng.choice(24, n, p=hour_weights(demand.profile))
    sec = hour * 3600 + rng.integers(0, 3600, n)
    order_idx = np.argsort(sec, kind="stable")
    sec = sec[order_idx]
    hour = sec // 3600
    hour_frac = sec / 3600.0

    # Where: a merchant by popularity in its zone's demand of the day; the delivery zone is
    # the merchant's zone.
    n_base_zones = len(w.zone_ids) - cond.new_zones
    pop = w.merchant_popularity * demand.zone_factor[w.merchant_zone]
    if cond.new_zones:
        is_new = w.merchant_zone >= n_base_zones
        pop[is_new] *= cond.new_zone_order_share / max(pop[is_new].sum() / pop.sum(), 1e-9)
        pop[~is_new] *= (1 - cond.new_zone_order_share) / (pop[~is_new].sum() / pop.sum())
    merchant = rng.choice(len(w.merchant_ids), n, p=pop / pop.sum())
    zone = w.merchant_zone[merchant]

    # Who: a courier of that zone on shift (the day's supply and a shortage set the pool).
    supply = cond.courier_share * demand.courier_supply
    on_shift = max(1, round(len(w.courier_ids) * min(1.0, _ON_SHIFT * supply)))
    shift = np.sort(rng.permutation(len(w.courier_ids))[:on_shift])
    shift_zone = w.courier_zone[shift]
    counts = np.bincount(shift_zone, minlength=len(w.zone_ids))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # A zone without couriers on shift borrows from the whole pool.
    zc = counts[zone]
    pick = np.where(
        zc > 0,
        starts[zone] + (rng.random(n) * np.maximum(zc, 1)).astype(np.int64),
        rng.integers(0, on_shift, n),
    )
    courier = shift[pick]

    if cond.storm_share > 0:
        storm = rng.random(grid.shape) < cond.storm_share
        grid = np.where(storm, 3, np.maximum(grid, 2 * (rng.random(grid.shape) < 0.5)))
    weather = grid[zone, hour]
    rush = _rush_curve(hour_frac)
    # Orders per courier against an average day's: the day's volume over its supply.
    shortage = demand.volume / supply
    load_lambda = (0.5 + 1.3 * rush) * min(shortage, 4.0) ** 0.8
    courier_load = np.minimum(rng.poisson(load_lambda), 8)

    distance = np.clip(rng.lognormal(np.log(w.zone_spread_km[zone]), 0.45), 0.3, 25.0)
    items = 1 + rng.poisson(1.6 + demand.profile.extra_items, n)
    prep = (
        w.merchant_prep[merchant]
        * cond.prep_factor
        * demand.volume**_KITCHEN_LOAD
        * rng.lognormal(0.0, 0.22, n)
        * (1 + 0.35 * rush)
        * _WEATHER_PREP[weather]
        + 0.7 * items
    )

    congestion = 1 + w.zone_congestion[zone] * rush
    speed = (
        _VEHICLE_SPEED_KMH[w.courier_vehicle[courier]]
        * w.courier_skill[courier]
        * _WEATHER_SPEED[weather]
        / congestion
    )
    # Courier reaches the merchant: assignment wait grows with load, plus a short ride.
    arrival = 1.5 + 2.8 * courier_load + rng.exponential(3.0, n) + 0.35 * distance**0.5 * 6
    pickup_min = np.maximum(prep, arrival) + rng.gamma(2.0, 0.8, n)
    # Road distance grows faster than straight-line distance; handoff at the door.
    travel_min = 60.0 * distance**1.12 / speed + 2.0 + rng.gamma(2.0, 1.2, n)
    delivery = pickup_min + travel_min

    day0 = pd.Timestamp(date, tz="UTC")
    # Milliseconds, as an order service stamps them (drawn last: the rest of the day is the
    # same as with whole seconds). Live features count orders up to an instant, so orders of
    # one zone created in the same second must not share one.
    # Sorting moves values only within a second: the rows stay in creation order.
    created = day0 + pd.to_timedelta(np.sort(sec * 1000 + rng.integers(0, 1000, n)), unit="ms")
    picked = created + pd.to_timedelta(np.round(pickup_min * 60), unit="s")
    delivered = picked + pd.to_timedelta(np.round(travel_min * 60), unit="s")
    delivery_minutes = (delivered - created).total_seconds().to_numpy() / 60.0

    ids = pd.Series(np.arange(n)).astype(str).str.zfill(7)
    frame = pd.DataFrame(
        {
            "order_id": (f"O{date:%Y%m%d}-" + ids).to_numpy(dtype=object),
            "created_at": created,
            "picked_up_at": picked,
            "delivered_at": delivered,
            "courier_id": w.courier_ids[courier],
            "merchant_id": w.merchant_ids[merchant],
            "zone_id": w.zone_ids[zone],
            "distance_km": np.round(distance, 3),
            "items": items.astype(np.int64),
            "prep_minutes": np.round(prep, 2),
            "weather": np.asarray(WEATHER, dtype=object)[weather],
            "courier_load": courier_load.astype(np.int64),
            "delivery_minutes": np.round(delivery_minutes, 3),
        }
    )
    del delivery
    return frame
