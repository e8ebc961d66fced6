"""Ordinary days vary as real ones do: weather by fronts, the week, holidays, demand noise.

Each day is still a function of ``(seed, date, conditions)`` alone, and the drift scenarios
stay larger than anything an ordinary day does.
"""

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from relay.data.days import PROFILES, daily_demand, day_kind, easter, holidays, hour_weights
from relay.data.generate import (
    Conditions,
    daily_volume,
    day_conditions,
    generate_orders,
    make_world,
    zone_residential,
)
from relay.data.scenarios import scenario_batch
from relay.data.weather import RAIN, Front, front_lift, weather_grid
from relay.settings import Settings

SEED = 7
START = dt.date(2026, 9, 1)
DAYS = [START + dt.timedelta(days=i) for i in range(120)]
WORLD = make_world(SEED)


def _lag_corr(x: np.ndarray, k: int) -> float:
    return float(np.corrcoef(x[:-k], x[k:])[0, 1])


@pytest.fixture(scope="module")
def wet() -> np.ndarray:
    """Each zone's share of wet hours (rain or storm), days x zones."""
    return np.array([(weather_grid(SEED, d, WORLD.zone_wetness) >= RAIN).mean(1) for d in DAYS])


def test_weather_persists_from_day_to_day_and_fronts_change_it_within_days(wet):
    city = wet.mean(axis=1)
    # Independent daily draws (the generator before fronts) gave a lag-1 correlation near 0.
    assert _lag_corr(city, 1) > 0.4
    zones = [_lag_corr(wet[:, z], 1) for z in range(wet.shape[1])]
    assert np.mean(zones) > 0.2
    # A front passes: a week apart the weather is unrelated, and wet spells end.
    assert abs(_lag_corr(city, 7)) < 0.25
    assert _lag_corr(city, 3) < _lag_corr(city, 1) - 0.3
    assert (city > 0.25).any() and (city < 0.02).mean() > 0.3


def test_zones_differ_in_wetness(wet):
    wettest, driest = np.argmax(WORLD.zone_wetness), np.argmin(WORLD.zone_wetness)
    assert wet[:, wettest].mean() > 2 * wet[:, driest].mean()


def test_a_front_reaches_zones_in_turn_along_its_direction():
    front = Front(
        start_hour=2.0,
        hours=48.0,
        intensity=1.0,
        direction=np.array([1.0, 0.0]),
        crossing_hours=10.0,
    )
    west_east = np.array([[0.05, 0.5], [0.5, 0.5], [0.95, 0.5]])
    hours = np.arange(24) + 0.5
    lift = front_lift(front, west_east, hours)
    first_wet_hour = (lift > 0.5).argmax(axis=1)
    assert first_wet_hour[0] < first_wet_hour[1] < first_wet_hour[2]
    assert first_wet_hour[2] - first_wet_hour[0] >= 5
    # The far side is still dry while the front arrives on the near side.
    assert (lift[2, :3] < 0.1).all() and lift[0, 3] > 0.5


def test_a_day_is_the_same_generated_alone_or_after_others():
    day = dt.date(2026, 10, 19)
    alone = generate_orders(day, 3_000, SEED)
    for d in (day - dt.timedelta(days=2), day - dt.timedelta(days=1)):
        generate_orders(d, 3_000, SEED)
    pd.testing.assert_frame_equal(alone, generate_orders(day, 3_000, SEED))
    storm = Conditions(storm_share=0.75)
    pd.testing.assert_frame_equal(
        generate_orders(day, 3_000, SEED, storm), generate_orders(day, 3_000, SEED, storm)
    )


def test_new_zones_leave_the_existing_zones_weather_and_demand_unchanged():
    day = dt.date(2026, 10, 19)
    bigger = make_world(SEED, new_zones=3)
    grid, demand = day_conditions(day, SEED, WORLD)
    grid3, demand3 = day_conditions(day, SEED, bigger)
    np.testing.assert_array_equal(grid3[:24], grid)
    # Up to the normalisation to mean 1, the existing zones' demand factors are unchanged.
    ratio = demand3.zone_factor[:24] / demand.zone_factor
    np.testing.assert_allclose(ratio, ratio[0])


def test_the_calendar_knows_its_holidays_and_their_eves():
    assert easter(2026) == dt.date(2026, 4, 5) and easter(2025) == dt.date(2025, 4, 20)
    assert {dt.date(2026, 4, 3), dt.date(2026, 4, 6), dt.date(2026, 12, 25)} <= holidays(2026)
    assert day_kind(dt.date(2026, 10, 3)) == "holiday"
    assert day_kind(dt.date(2026, 10, 2)) == "eve"
    assert day_kind(dt.date(2026, 12, 31)) == "eve"  # and Jan 1 next year is a holiday
    assert day_kind(dt.date(2026, 10, 6)) == "weekday"
    assert day_kind(dt.date(2026, 10, 10)) == "saturday"


def _dinner_share(df: pd.DataFrame) -> float:
    return float(df["created_at"].dt.hour.between(17, 21).mean())


def test_holidays_and_weekends_change_the_hour_profile():
    weekday = hour_weights(PROFILES["weekday"])
    for kind in ("saturday", "sunday", "holiday", "eve"):
        other = hour_weights(PROFILES[kind])
        assert other[17:22].sum() > weekday[17:22].sum() + 0.03, kind
    # In generated days: Christmas (a Friday) and a Saturday against the Tuesday before.
    tuesday = generate_orders(dt.date(2026, 12, 22), 20_000, SEED)
    christmas = generate_orders(dt.date(2026, 12, 25), 20_000, SEED)
    saturday = generate_orders(dt.date(2026, 12, 19), 20_000, SEED)
    assert _dinner_share(christmas) > _dinner_share(tuesday) + 0.05
    assert _dinner_share(saturday) > _dinner_share(tuesday) + 0.02
    assert christmas["items"].mean() > tuesday["items"].mean() + 0.2


def test_holidays_move_orders_to_homes_and_couriers_off_shift():
    res = zone_residential(WORLD)
    dry = np.zeros(len(res))
    holiday = daily_demand(SEED, dt.date(2026, 12, 25), res, dry)
    weekday = daily_demand(SEED, dt.date(2026, 12, 22), res, dry)
    lift = np.log(holiday.zone_factor / weekday.zone_factor)
    assert np.corrcoef(lift, res)[0, 1] > 0.6
    assert holiday.courier_supply < 0.9 * weekday.courier_supply
    assert holiday.volume > 1.2 * weekday.volume


def test_rain_brings_orders_and_sends_couriers_home():
    res = zone_residential(WORLD)
    day = dt.date(2026, 10, 6)
    dry = daily_demand(SEED, day, res, np.zeros(len(res)))
    wet = daily_demand(SEED, day, res, np.full(len(res), 0.8))
    assert wet.volume > 1.15 * dry.volume and wet.courier_supply < 0.9 * dry.courier_supply
    one_wet = np.zeros(len(res))
    one_wet[3] = 1.0
    patchy = daily_demand(SEED, day, res, one_wet)
    assert patchy.zone_factor[3] / dry.zone_factor[3] > 1.3


def _zone_share_psi(a: pd.DataFrame, b: pd.DataFrame) -> float:
    sa = a["zone_id"].value_counts(normalize=True)
    sb = b["zone_id"].value_counts(normalize=True).reindex(sa.index).fillna(1e-4)
    return float(((sa - sb) * np.log(sa / sb)).sum())


def test_demand_noise_moves_zone_shares_and_courier_load_from_day_to_day():
    n = 20_000
    tuesdays = [generate_orders(dt.date(2026, 10, 6) + dt.timedelta(weeks=k), n) for k in (0, 1)]
    # Two draws of one day differ by sampling alone (PSI about (zones - 1) / n per side).
    resampled = generate_orders(dt.date(2026, 10, 6), n, seed=SEED, world=WORLD).sample(
        frac=1.0, replace=True, random_state=1
    )
    sampling = _zone_share_psi(tuesdays[0], resampled)
    assert _zone_share_psi(tuesdays[0], tuesdays[1]) > max(0.02, 5 * sampling)
    loads = [
        generate_orders(d, 5_000)["courier_load"].mean()
        for d in (dt.date(2026, 10, 3), dt.date(2026, 10, 6), dt.date(2026, 10, 19))
    ]
    assert max(loads) > 1.1 * min(loads)


def test_daily_volume_follows_the_week_and_the_holidays():
    by_weekday: dict[int, list[int]] = {}
    for d in DAYS:
        by_weekday.setdefault(d.weekday(), []).append(daily_volume(d, 10_000, SEED))
    mean = {k: np.mean(v) for k, v in by_weekday.items()}
    assert mean[5] > 1.1 * mean[1] and mean[4] > 1.05 * mean[2]
    assert 9_000 < np.mean([v for vs in by_weekday.values() for v in vs]) < 11_500
    assert daily_volume(dt.date(2026, 12, 25), 10_000, SEED) > 11_500
    assert daily_volume(DAYS[0], 10_000, SEED) == daily_volume(DAYS[0], 10_000, SEED)


def test_ordinary_days_stay_within_the_validation_bounds():
    v = Settings().validation
    for d in DAYS[::6]:
        df = generate_orders(d, 2_000, SEED)
        assert v.mean_delivery_minutes_min < df["delivery_minutes"].mean()
        assert df["delivery_minutes"].mean() < v.mean_delivery_minutes_max
        assert df["delivery_minutes"].between(1.0, v.max_delivery_minutes).all()
        assert df["prep_minutes"].max() <= 180 and df["courier_load"].max() <= 20
        assert df["items"].max() <= 100 and (df["distance_km"] > 0).all()


def test_a_storm_is_far_wetter_than_any_ordinary_day(wet):
    storm_days = [
        (weather_grid(SEED, d, WORLD.zone_wetness) == 3).mean() for d in DAYS
    ]  # ordinary storm share per day
    day = dt.date(2026, 10, 19)  # the wettest ordinary day of October 2026 in this world
    storm = scenario_batch("storm", day, 5_000, SEED)
    assert (storm["weather"] == "storm").mean() > max(0.6, 1.5 * max(storm_days))
    assert (storm["weather"].isin(["rain", "storm"])).mean() > 0.9 > wet.mean(axis=1).max()
