"""The generator is reproducible, realistic in its effects, and each scenario does what it says."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from relay.data.generate import generate_orders
from relay.data.scenarios import CORRUPTIONS, DRIFTS, scenario_batch
from relay.data.schema import ORDER_COLUMNS
from relay.settings import Settings

DAY = dt.date(2026, 11, 20)
N = 20_000


@pytest.fixture(scope="module")
def normal() -> pd.DataFrame:
    return generate_orders(DAY, N, seed=7)


def test_same_seed_same_batch(normal):
    pd.testing.assert_frame_equal(normal, generate_orders(DAY, N, seed=7))


def test_other_seed_or_day_differs(normal):
    assert not generate_orders(DAY, N, seed=8)["delivery_minutes"].equals(
        normal["delivery_minutes"]
    )
    assert not generate_orders(DAY + dt.timedelta(days=1), N, seed=7)["distance_km"].equals(
        normal["distance_km"]
    )


def test_schema_and_types(normal):
    assert list(normal.columns) == list(ORDER_COLUMNS)
    assert {c: str(t) for c, t in normal.dtypes.items()} == ORDER_COLUMNS
    assert normal["order_id"].is_unique
    assert (normal["created_at"].dt.date == DAY).all()
    assert (normal["picked_up_at"] >= normal["created_at"]).all()
    assert (normal["delivered_at"] >= normal["picked_up_at"]).all()


def test_delivery_time_depends_on_its_causes(normal):
    df = normal
    far = df["distance_km"] > df["distance_km"].quantile(0.8)
    near = df["distance_km"] < df["distance_km"].quantile(0.2)
    assert df.loc[far, "delivery_minutes"].mean() > df.loc[near, "delivery_minutes"].mean() + 5
    hour = df["created_at"].dt.hour
    assert (
        df.loc[hour == 18, "delivery_minutes"].mean() > df.loc[hour == 3, "delivery_minutes"].mean()
    )
    loaded = df["courier_load"] >= 3
    assert (
        df.loc[loaded, "delivery_minutes"].mean()
        > df.loc[df["courier_load"] == 0, "delivery_minutes"].mean()
    )
    # Lunch and dinner peaks in order volume.
    counts = hour.value_counts()
    assert counts[19] > 3 * counts[4] and counts[12] > 3 * counts[4]
    # Noise: the same distance band still spreads.
    assert df.loc[near, "delivery_minutes"].std() > 3


def test_one_million_orders_vectorised():
    df = generate_orders(DAY, 1_000_000)
    assert len(df) == 1_000_000 and df["order_id"].is_unique


def _drift(name: str) -> pd.DataFrame:
    return scenario_batch(name, DAY, N)


def test_storm_raises_storm_share_and_delivery_time(normal):
    storm = _drift("storm")
    assert (storm["weather"] == "storm").mean() > 0.6 > (normal["weather"] == "storm").mean()
    assert storm["delivery_minutes"].mean() > normal["delivery_minutes"].mean() + 3


def test_new_zone_adds_unseen_zones_with_longer_distances(normal):
    drifted = _drift("new_zone")
    new = ~drifted["zone_id"].isin(set(normal["zone_id"]))
    assert 0.15 < new.mean() < 0.25
    assert drifted.loc[new, "distance_km"].mean() > normal["distance_km"].mean() * 1.3


def test_courier_shortage_raises_load_and_shrinks_the_pool(normal):
    drifted = _drift("courier_shortage")
    assert drifted["courier_id"].nunique() < 0.5 * normal["courier_id"].nunique()
    assert drifted["courier_load"].mean() > 1.5 * normal["courier_load"].mean()
    assert drifted["delivery_minutes"].mean() > normal["delivery_minutes"].mean()


def test_menu_change_lengthens_preparation(normal):
    drifted = _drift("menu_change")
    assert drifted["prep_minutes"].mean() > 1.3 * normal["prep_minutes"].mean()
    assert drifted["delivery_minutes"].mean() > normal["delivery_minutes"].mean() + 3


def test_every_scenario_is_named():
    assert set(DRIFTS) == {"storm", "new_zone", "courier_shortage", "menu_change"}
    assert set(CORRUPTIONS) == {
        "nulls",
        "out_of_range",
        "renamed_column",
        "retyped_column",
        "duplicate_orders",
        "late_rows",
    }


def test_corruptions_break_what_they_claim(normal):
    assert scenario_batch("nulls", DAY, N)["distance_km"].isna().mean() > 0.05
    assert (scenario_batch("out_of_range", DAY, N)["distance_km"] < 0).any()
    assert "distance" in scenario_batch("renamed_column", DAY, N).columns
    assert scenario_batch("retyped_column", DAY, N)["courier_load"].dtype == object
    assert not scenario_batch("duplicate_orders", DAY, N)["order_id"].is_unique
    late = scenario_batch("late_rows", DAY, N)
    assert (late["created_at"].dt.date < DAY).mean() > 0.03
    with pytest.raises(ValueError, match="unknown scenario"):
        scenario_batch("meteor", DAY, N)


def test_rush_hour_curve_is_smooth_and_bounded(normal):
    by_hour = normal.groupby(normal["created_at"].dt.hour)["delivery_minutes"].mean()
    assert np.all(by_hour.between(20, 80))


def test_make_ups_example_order_names_a_courier_and_merchant_of_its_zone():
    # The curl line `make up` prints: an unknown zone answered with every zone feature missing.
    from relay.cli.stack import EXAMPLE_ORDER
    from relay.data.generate import make_world

    s = Settings().data
    w = make_world(s.seed, s.n_zones, s.n_merchants, s.n_couriers)
    zone = list(w.zone_ids).index(EXAMPLE_ORDER["zone_id"])
    merchant = list(w.merchant_ids).index(EXAMPLE_ORDER["merchant_id"])
    courier = list(w.courier_ids).index(EXAMPLE_ORDER["courier_id"])
    assert w.merchant_zone[merchant] == zone
    assert w.courier_zone[courier] == zone
