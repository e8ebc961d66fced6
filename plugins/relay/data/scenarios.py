"""Named scenarios: what production throws at a model.

Drift scenarios are valid data from a changed world (they must pass validation and move a
distribution); corruption scenarios are broken batches (validation must stop them).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from relay.data.generate import Conditions, generate_orders


@dataclass(frozen=True)
class Drift:
    name: str
    description: str
    conditions: Conditions


DRIFTS: dict[str, Drift] = {
    d.name: d
    for d in (
        Drift(
            "storm",
            "a storm over most zones: slower couriers, longer deliveries",
            Conditions(storm_share=0.75),
        ),
        Drift(
            "new_zone",
            "three new suburban zones take 20% of orders, with longer distances",
            Conditions(new_zones=3, new_zone_order_share=0.2),
        ),
        Drift(
            "courier_shortage",
            "a third of the couriers on shift: higher loads, longer waits",
            Conditions(courier_share=0.33),
        ),
        Drift("menu_change", "menus that take 50% longer to prepare", Conditions(prep_factor=1.5)),
    )
}


def _nulls(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    for col in ("distance_km", "courier_id", "weather"):
        mask = rng.random(len(df)) < 0.08
        df[col] = df[col].astype(object if df[col].dtype == object else "float64")
        df.loc[mask, col] = None if df[col].dtype == object else np.nan
    return df


def _out_of_range(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    bad = rng.random(len(df)) < 0.03
    df.loc[bad, "distance_km"] = -df.loc[bad, "distance_km"]
    worse = rng.random(len(df)) < 0.02
    df.loc[worse, "delivery_minutes"] = df.loc[worse, "delivery_minutes"] * 30
    return df


def _renamed_column(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    return df.rename(columns={"distance_km": "distance"})


def _retyped_column(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    df["courier_load"] = df["courier_load"].astype(str) + " orders"
    return df


def _duplicate_orders(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    dup = df.sample(frac=0.04, random_state=int(rng.integers(1 << 31)))
    return pd.concat([df, dup], ignore_index=True).sort_values("created_at", kind="stable")


def _late_rows(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    late = rng.random(len(df)) < 0.05
    shift = pd.to_timedelta(rng.integers(2, 6, int(late.sum())), unit="D")
    for col in ("created_at", "picked_up_at", "delivered_at"):
        df.loc[late, col] = df.loc[late, col] - shift
    return df


CORRUPTIONS: dict[str, tuple[str, Callable[[pd.DataFrame, np.random.Generator], pd.DataFrame]]] = {
    "nulls": ("8% nulls in distance_km, courier_id and weather", _nulls),
    "out_of_range": ("negative distances and 30x delivery times", _out_of_range),
    "renamed_column": ("distance_km arrives as 'distance'", _renamed_column),
    "retyped_column": ("courier_load arrives as text ('2 orders')", _retyped_column),
    "duplicate_orders": ("4% of orders sent twice", _duplicate_orders),
    "late_rows": ("5% of rows belong to days 2-5 days earlier", _late_rows),
}

SCENARIOS: tuple[str, ...] = ("normal", *DRIFTS, *CORRUPTIONS)


def scenario_batch(scenario: str, date: dt.date, n_orders: int, seed: int = 7) -> pd.DataFrame:
    """One day's orders under a named scenario (``normal`` is an ordinary day)."""
    if scenario == "normal":
        return generate_orders(date, n_orders, seed)
    if scenario in DRIFTS:
        return generate_orders(date, n_orders, seed, DRIFTS[scenario].conditions)
    if scenario in CORRUPTIONS:
        df = generate_orders(date, n_orders, seed)
        rng = np.random.default_rng([seed, date.toordinal(), 99])
        return CORRUPTIONS[scenario][1](df, rng).reset_index(drop=True)
    raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
