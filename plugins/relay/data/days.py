"""The simulated world's calendar and day-to-day demand: why one ordinary day is not the next.

Real order streams move every day with no change in the world behind them: Fridays and Sundays
differ from Tuesdays, a public holiday brings family dinners to residential zones while fewer
couriers work, rain sends people to their phones and couriers home, and some days are simply
busier. Monitoring that is tested on days without such variation learns nothing about false
alarms, so the generator draws them here, each from ``(seed, date)`` alone (any day can be
generated without its predecessors) yet persistent from one day to the next where the world
is: :func:`ar1_over_days` gives an AR(1) over days whose innovations are seeded by date.

These are the simulated world's constants, not operator settings: they live in this module.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DayProfile:
    """How a kind of day orders, relative to an average day of the simulated city.

    Attributes:
        kind: weekday (Monday to Thursday), friday, saturday, sunday, holiday or eve.
        lunch: weight of the lunch peak in the hour profile.
        lunch_hour: centre of the lunch peak (hours, UTC).
        dinner: weight of the dinner peak.
        dinner_hour: centre of the dinner peak.
        late: extra weight of the hours from 21:00 (parties, late films).
        volume: the city's orders relative to an average day.
        courier_supply: couriers on shift relative to an average weekday.
        residential_lift: log-lift of a zone's demand per unit of how residential it is.
        extra_items: added to the mean number of items (larger baskets: families, guests).
    """

    kind: str
    lunch: float
    lunch_hour: float
    dinner: float
    dinner_hour: float
    late: float
    volume: float
    courier_supply: float
    residential_lift: float
    extra_items: float


# Shapes of a delivery market: Monday to Thursday are alike and the quietest; Friday and the
# weekend move orders to dinner and homes; a holiday is a long Sunday with fewer couriers; the
# eve of a holiday is the busiest dinner of the week. Volumes average 1.0 over a week.
PROFILES: dict[str, DayProfile] = {
    p.kind: p
    for p in (
        DayProfile("weekday", 1.0, 12.5, 1.1, 19.5, 0.0, 0.95, 1.0, 0.0, 0.0),
        DayProfile("friday", 1.0, 12.5, 1.35, 19.75, 0.08, 1.1, 0.97, 0.1, 0.1),
        DayProfile("saturday", 0.8, 13.0, 1.4, 19.5, 0.08, 1.15, 0.93, 0.25, 0.2),
        DayProfile("sunday", 0.9, 13.0, 1.4, 19.0, 0.0, 1.1, 0.9, 0.3, 0.25),
        DayProfile("holiday", 1.1, 13.25, 1.7, 18.75, 0.0, 1.25, 0.8, 0.45, 0.4),
        DayProfile("eve", 0.8, 12.5, 1.8, 19.75, 0.15, 1.2, 0.88, 0.3, 0.3),
    )
}

# A central-European public calendar, fixed dates and Easter-based ones (days after Easter).
_FIXED_HOLIDAYS = ((1, 1), (5, 1), (10, 3), (11, 1), (12, 25), (12, 26))
_EASTER_HOLIDAYS = (-2, 1, 39, 50)  # Good Friday, Easter Monday, Ascension, Whit Monday
# Not holidays, but the evenings of the year: behave as the eve of one.
_FIXED_EVES = ((12, 24), (12, 31))

# Day-to-day demand noise. Volume and courier supply move by a few percent on their own
# (events, sickness, a match on TV); zones by more, and a zone's extra demand lasts a few days
# (a new restaurant, roadworks): AR(1) with this memory per day.
_VOLUME_SD = 0.05
_SUPPLY_SD = 0.06
_ZONE_SD = 0.18
_ZONE_PHI = 0.5
# Rain: a fully wet day brings 25% more orders and 20% fewer couriers; a zone wetter than
# the city that day gets more of the orders (log-lift per unit of its wet-hour share).
_RAIN_VOLUME = 0.25
_RAIN_SUPPLY = 0.2
_RAIN_ZONE_LIFT = 0.35
_AR_LAGS = 12  # terms of the truncated AR(1): phi**12 is below 1e-3 for phi <= 0.55


def easter(year: int) -> dt.date:
    """Easter Sunday of ``year`` (Gregorian; the anonymous algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = divmod(b, 4)
    g = (8 * b + 13) // 25
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    ell = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * ell) // 451
    month, day = divmod(h + ell - 7 * m + 114, 31)
    return dt.date(year, month, day + 1)


def holidays(year: int) -> set[dt.date]:
    """The simulated country's public holidays in ``year``."""
    fixed = {dt.date(year, m, d) for m, d in _FIXED_HOLIDAYS}
    sunday = easter(year)
    return fixed | {sunday + dt.timedelta(days=k) for k in _EASTER_HOLIDAYS}


def day_kind(date: dt.date) -> str:
    """The kind of day: a holiday, the eve of one, else by weekday."""
    if date in holidays(date.year):
        return "holiday"
    tomorrow = date + dt.timedelta(days=1)
    if (date.month, date.day) in _FIXED_EVES or tomorrow in holidays(tomorrow.year):
        return "eve"
    return {4: "friday", 5: "saturday", 6: "sunday"}.get(date.weekday(), "weekday")


def hour_weights(profile: DayProfile) -> np.ndarray:
    """Probability of an order being created in each hour of the day (sums to 1)."""
    hours = np.arange(24)
    lunch = np.exp(-0.5 * ((hours - profile.lunch_hour) / 1.1) ** 2)
    dinner = np.exp(-0.5 * ((hours - profile.dinner_hour) / 1.4) ** 2)
    base = np.where(hours < 7, 0.02, 0.12) + np.where(hours >= 21, profile.late, 0.0)
    w = base + profile.lunch * lunch + profile.dinner * dinner
    return w / w.sum()


def ar1_over_days(
    seed: int, date: dt.date, tag: int, size: int, phi: float, lags: int = _AR_LAGS
) -> np.ndarray:
    """A standard-normal AR(1) over days, ``size`` independent series, at ``date``.

    ``x[d] = phi * x[d-1] + sqrt(1 - phi**2) * e[d]`` unrolled over the last ``lags`` days,
    each day's innovations ``e`` seeded by ``(seed, tag, day)``: a day is computed alone, and
    consecutive days share all but one innovation. Series of one tag share their prefix, so
    appending series (new zones) leaves the existing ones unchanged.
    """
    out = np.zeros(size)
    scale = np.sqrt(1 - phi**2)
    for k in range(lags):
        day = date.toordinal() - k
        out += phi**k * scale * np.random.default_rng([seed, tag, day]).standard_normal(size)
    return out


@dataclass(frozen=True)
class Demand:
    """One day's demand and courier supply, relative to an average day.

    Attributes:
        profile: the kind of day's profile.
        volume: the city's orders relative to an average day (calendar, rain, noise).
        courier_supply: couriers on shift relative to an average weekday.
        zone_factor: multiplies the order weight of each zone's merchants (mean 1).
    """

    profile: DayProfile
    volume: float
    courier_supply: float
    zone_factor: np.ndarray


def daily_demand(seed: int, date: dt.date, residential: np.ndarray, zone_wet: np.ndarray) -> Demand:
    """The day's demand, from its calendar, its rain and its noise.

    Args:
        seed: the world's seed.
        date: the day.
        residential: how residential each zone is, 0 (centre) to 1 (homes only).
        zone_wet: each zone's share of the day's hours with rain or storm.
    """
    profile = PROFILES[day_kind(date)]
    day_noise = ar1_over_days(seed, date, 41, 2, phi=0.3)
    wet = float(zone_wet.mean())
    volume = profile.volume * (1 + _RAIN_VOLUME * wet) * np.exp(_VOLUME_SD * day_noise[0])
    supply = profile.courier_supply * (1 - _RAIN_SUPPLY * wet) * np.exp(_SUPPLY_SD * day_noise[1])
    zone_noise = ar1_over_days(seed, date, 43, len(residential), phi=_ZONE_PHI)
    log_zone = (
        _ZONE_SD * zone_noise
        + profile.residential_lift * (residential - residential.mean())
        + _RAIN_ZONE_LIFT * (zone_wet - wet)
    )
    factor = np.exp(log_zone)
    return Demand(profile, float(volume), float(supply), factor / factor.mean())
