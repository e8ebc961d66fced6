"""Behavioural tests of the ETA model, trained in process on a small world (no Ray, seconds).

Direction: a longer distance or worse weather never lowers the prediction (by construction of the
network, checked on a trained model). Minimum functionality: short, dry, off-peak orders are
predicted within a few minutes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from relay.features.catalog import LABEL, NUMERIC
from relay.model.preprocess import Preprocessor
from relay.model.training import build_model, model_inputs, predict, tensor_batches, train_epoch

WEATHER_MINUTES = {"clear": 0.0, "cloudy": 1.0, "rain": 4.0, "storm": 8.0}
RUSH_HOURS = (11, 12, 13, 17, 18, 19, 20)


def small_world(n: int, seed: int) -> pd.DataFrame:
    """Orders whose delivery time grows with distance, weather, load and preparation."""
    rng = np.random.default_rng(seed)
    hour = rng.integers(8, 23, n)
    frame = pd.DataFrame(
        {
            **{name: rng.gamma(2.0, 2.0, n) for name in NUMERIC},
            "zone_id": rng.choice([f"Z{i:03d}" for i in range(6)], n),
            "order_hour": hour,
            "order_weekday": rng.integers(0, 7, n),
            "courier_id": rng.choice([f"C{i:05d}" for i in range(50)], n),
            "merchant_id": rng.choice([f"M{i:05d}" for i in range(40)], n),
            "order_distance_km": rng.uniform(0.3, 8.0, n),
            "zone_weather": rng.choice(list(WEATHER_MINUTES), n, p=[0.5, 0.3, 0.15, 0.05]),
            "order_is_rush_hour": np.isin(hour, RUSH_HOURS).astype(int),
        }
    )
    frame[LABEL] = (
        8.0
        + 3.0 * frame["order_distance_km"]
        + frame["zone_weather"].map(WEATHER_MINUTES)
        + 0.8 * frame["merchant_mean_prep_24h"]
        + 1.5 * frame["courier_orders_1h"]
        + 3.0 * frame["order_is_rush_hour"]
        + rng.normal(0.0, 1.5, n)
    )
    return frame


@pytest.fixture(scope="module")
def trained() -> tuple[Preprocessor, torch.nn.Module, pd.DataFrame]:
    torch.manual_seed(0)
    train, holdout = small_world(4000, seed=1), small_world(600, seed=2)
    prep = Preprocessor.fit(train)
    model = build_model(prep, {"hidden_layers": 2, "hidden_units": 64, "dropout": 0.0})
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    arrays = model_inputs(prep, train)
    for epoch in range(30):
        train_epoch(model, tensor_batches(arrays, 128, shuffle=True, seed=epoch), optimizer,
                    prep.label_std)  # fmt: skip
    return prep, model, holdout


def test_a_longer_distance_never_lowers_the_prediction(trained) -> None:
    prep, model, holdout = trained
    base = predict(model, prep, holdout)
    farther = holdout.assign(order_distance_km=holdout["order_distance_km"] * 1.5 + 0.5)
    assert (predict(model, prep, farther) >= base - 1e-6).all()


@pytest.mark.parametrize(("dry", "wet"), [("clear", "rain"), ("cloudy", "rain"), ("rain", "storm")])
def test_worse_weather_never_lowers_the_prediction(trained, dry: str, wet: str) -> None:
    prep, model, holdout = trained
    better = predict(model, prep, holdout.assign(zone_weather=dry))
    worse = predict(model, prep, holdout.assign(zone_weather=wet))
    assert (worse >= better - 1e-6).all()


def test_an_easy_order_is_predicted_within_a_few_minutes(trained) -> None:
    prep, model, holdout = trained
    easy = holdout[
        (holdout["order_distance_km"] < 2)
        & (holdout["zone_weather"] == "clear")
        & (holdout["order_is_rush_hour"] == 0)
    ]
    assert len(easy) >= 10
    err = np.abs(predict(model, prep, easy) - easy[LABEL].to_numpy())
    assert np.median(err) < 3.0


def test_the_model_learns_more_than_the_mean(trained) -> None:
    # Guards the tests above against passing on a model that learned nothing.
    prep, model, holdout = trained
    y = holdout[LABEL].to_numpy()
    mae = np.abs(predict(model, prep, holdout) - y).mean()
    assert mae < 0.5 * np.abs(y - y.mean()).mean()
