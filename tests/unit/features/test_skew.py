"""Skew: served features against point-in-time training rows, feature by feature."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from relay.features.skew import compare, write_skew_report


def _rows(n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "order_id": [f"o{i}" for i in range(n)],
            "courier_orders_1h": rng.integers(0, 5, n),
            "zone_mean_delivery_24h": rng.normal(35, 5, n),
            "zone_weather": rng.choice(["clear", "rain"], n),
            "order_distance_km": rng.uniform(0.5, 10, n),
        }
    )


def test_the_same_rows_are_clean_even_through_float32_and_missing_values() -> None:
    training = _rows()
    training.loc[3, "zone_mean_delivery_24h"] = np.nan
    served = training.copy()
    # The serving path may carry float32: rounding is not skew.
    served["order_distance_km"] = served["order_distance_km"].astype(np.float32).astype(float)
    skew = compare(served.sample(frac=1, random_state=1), training)  # order does not matter
    assert skew.clean and skew.orders == 200 and skew.unmatched == 0
    assert all(f.differing == 0 for f in skew.features)


def test_stale_features_are_counted_per_feature_with_the_largest_gap_and_examples() -> None:
    training = _rows()
    served = training.copy()
    served.loc[:49, "courier_orders_1h"] = served.loc[:49, "courier_orders_1h"] + 3  # a stale hour
    served.loc[:9, "zone_weather"] = "storm"
    served.loc[0, "zone_weather"] = training.loc[0, "zone_weather"]
    served = pd.concat([served, pd.DataFrame({"order_id": ["ghost"]})], ignore_index=True)
    skew = compare(served, training, dt.date(2026, 11, 20))
    by = {f.feature: f for f in skew.features}
    assert by["courier_orders_1h"].differing == 50 and by["courier_orders_1h"].rate == 0.25
    assert by["courier_orders_1h"].max_abs_diff == 3.0
    assert by["zone_weather"].differing == sum(training.loc[1:9, "zone_weather"] != "storm")
    assert by["zone_weather"].max_abs_diff is None  # a category: equal or not
    assert by["order_distance_km"].differing == 0
    assert skew.features[0].feature == "courier_orders_1h"  # worst first
    assert by["courier_orders_1h"].examples[0] == (
        "o0",
        served.loc[0, "courier_orders_1h"],
        training.loc[0, "courier_orders_1h"],
    )
    assert skew.unmatched == 1 and not skew.clean
    assert skew.table()[0] == {
        "feature": "courier_orders_1h",
        "compared": 200,
        "differing": 50,
        "rate": 0.25,
        "max_abs_diff": 3.0,
    }


def test_features_on_one_side_only_are_named() -> None:
    training = _rows()
    served = training.drop(columns=["zone_weather"]).assign(extra=1)
    skew = compare(served, training)
    assert skew.only_served == ["extra"] and skew.only_training == ["zone_weather"]
    assert not skew.clean


def test_the_report_is_a_page_with_the_chart_and_every_feature(tmp_path) -> None:
    training = _rows()
    served = training.copy()
    served.loc[:9, "courier_orders_1h"] += 1
    page = write_skew_report(
        tmp_path / "skew.html", compare(served, training, dt.date(2026, 11, 20))
    )
    text = page.read_text()
    assert "plotly" in text and "SKEW" in text and "2026-11-20" in text
    for name in ("courier_orders_1h", "zone_weather", "order_distance_km"):
        assert name in text
