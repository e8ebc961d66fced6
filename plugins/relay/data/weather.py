"""The simulated world's weather: fronts that persist for days and cross the city in hours.

Each zone-hour's weather is a latent wetness cut into clear, cloudy, rain and storm. The
latent is the sum of a seasonal level (wettest in late November), a regional air mass that
changes slowly (an AR(1) over days, :func:`relay.data.days.ar1_over_days`), the fronts
overhead, the zone's own wetness and an hourly AR(1). A front is an event seeded by the day
it starts: it lasts one to four days, reaches each zone in turn as it crosses the city along
its direction (in 4 to 14 hours), rains hardest at its leading edge and weakens as it ages.
Every part is a function of ``(seed, date)``, so one day is computed alone, while the fronts
and the air mass make consecutive days alike and change them within days, as real ones do.

These are the simulated world's constants, not operator settings: they live in this module.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from relay.data.days import ar1_over_days

# Latent cut points: clear | cloudy | rain | storm.
CUTS = (0.3, 1.3, 2.4)
RAIN = 2  # categories from this one up are wet (rain, storm)

# A temperate, maritime climate: drier in early summer, wettest in late November.
_SEASON_MEAN = -0.55
_SEASON_AMPLITUDE = 0.2
_WETTEST_DAY_OF_YEAR = 330
# The regional air mass: AR(1) over days, about three days of memory.
_AIR_PHI = 0.7
_AIR_SD = 0.4
# Fronts: one starts on about one day in seven; it lasts 1 to 4 days and lifts the latent by
# ``intensity`` while overhead (fading to 60% by its end) and by more at its leading edge.
_FRONT_START_PROB = 0.16
_FRONT_DAYS = (1, 4)
_FRONT_INTENSITY = (0.6, 1.5)
_FRONT_EDGE = 0.5  # extra lift at the edge, as a share of the intensity
_FRONT_EDGE_HOURS = 3.0
_FRONT_CROSSING_HOURS = (4.0, 14.0)
_FRONT_RAMP_HOURS = 1.5
# Hour-to-hour showers and clearings inside a zone.
_HOURLY_PHI = 0.85
_HOURLY_SD = 0.6
# Seed tags of the weather's streams (distinct from the generator's own).
_TAG_AIR, _TAG_FRONT, _TAG_HOURLY, _TAG_PLACE = 31, 33, 35, 37


@dataclass(frozen=True)
class Front:
    """A front, in hours from midnight of the day it is looked at."""

    start_hour: float
    hours: float
    intensity: float
    direction: np.ndarray
    crossing_hours: float


def fronts_near(seed: int, date: dt.date) -> list[Front]:
    """The fronts that may be overhead on ``date``: those started on it or the days before."""
    out = []
    for back in range(_FRONT_DAYS[1] + 1):
        day = date.toordinal() - back
        rng = np.random.default_rng([seed, _TAG_FRONT, day])
        if rng.random() >= _FRONT_START_PROB:
            continue
        angle = rng.uniform(0, 2 * np.pi)
        out.append(
            Front(
                start_hour=-24.0 * back + rng.uniform(0, 24),
                hours=24.0 * rng.integers(_FRONT_DAYS[0], _FRONT_DAYS[1] + 1),
                intensity=rng.uniform(*_FRONT_INTENSITY),
                direction=np.array([np.cos(angle), np.sin(angle)]),
                crossing_hours=rng.uniform(*_FRONT_CROSSING_HOURS),
            )
        )
    return out


def zone_positions(seed: int, n_zones: int) -> np.ndarray:
    """Each zone's place in the unit square (fixed by the seed; appended zones keep the rest)."""
    return np.random.default_rng([seed, _TAG_PLACE]).random((n_zones, 2))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def front_lift(front: Front, positions: np.ndarray, hours: np.ndarray) -> np.ndarray:
    """The latent lift of one front per (zone, hour)."""
    # Where a zone lies along the front's path, 0 (reached first) to about 1 (last).
    along = (positions - 0.5) @ front.direction / np.sqrt(2) + 0.5
    arrive = front.start_hour + along[:, None] * front.crossing_hours
    since = hours[None, :] - arrive
    overhead = _sigmoid(since / _FRONT_RAMP_HOURS) * _sigmoid(
        (front.hours - since) / _FRONT_RAMP_HOURS
    )
    fading = 1 - 0.4 * np.clip(since / front.hours, 0, 1)
    edge = _FRONT_EDGE * np.exp(-0.5 * (since / _FRONT_EDGE_HOURS) ** 2)
    return front.intensity * (overhead * fading + edge)


def season_level(date: dt.date) -> float:
    """The seasonal latent level of ``date``."""
    phase = 2 * np.pi * (date.timetuple().tm_yday - _WETTEST_DAY_OF_YEAR) / 365.25
    return float(_SEASON_MEAN + _SEASON_AMPLITUDE * np.cos(phase))


def latent(seed: int, date: dt.date, zone_wetness: np.ndarray) -> np.ndarray:
    """The latent wetness per (zone, hour) of ``date``; higher is wetter."""
    n_zones = len(zone_wetness)
    hours = np.arange(24) + 0.5
    # The air mass moves from today's level towards tomorrow's through the day: no jump at
    # midnight between two days generated apart.
    today = ar1_over_days(seed, date, _TAG_AIR, 1, _AIR_PHI)[0]
    tomorrow = ar1_over_days(seed, date + dt.timedelta(days=1), _TAG_AIR, 1, _AIR_PHI)[0]
    air = _AIR_SD * (today + (tomorrow - today) * hours / 24)
    level = season_level(date) + air[None, :] + zone_wetness[:, None]
    positions = zone_positions(seed, n_zones)
    for front in fronts_near(seed, date):
        level = level + front_lift(front, positions, hours)
    # Drawn zone by zone (rows first), so appended zones leave the others' weather unchanged.
    shocks = np.random.default_rng([seed, _TAG_HOURLY, date.toordinal()]).standard_normal(
        (n_zones, 25)
    )
    noise = np.empty((n_zones, 24))
    state = shocks[:, 0]
    for h in range(24):
        state = _HOURLY_PHI * state + np.sqrt(1 - _HOURLY_PHI**2) * shocks[:, h + 1]
        noise[:, h] = state
    return level + _HOURLY_SD * noise


def weather_grid(seed: int, date: dt.date, zone_wetness: np.ndarray) -> np.ndarray:
    """Weather category per (zone, hour) of ``date``: indices into ``relay.data.schema.WEATHER``."""
    return np.digitize(latent(seed, date, zone_wetness), CUTS)
