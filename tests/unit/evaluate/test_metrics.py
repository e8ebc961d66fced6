"""Evaluation metrics, slicing and the HTML report."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from markupsafe import escape

from relay.evaluate.gate import decide
from relay.evaluate.metrics import (
    Evaluation,
    Metrics,
    compute_metrics,
    evaluate,
    hour_band,
    hour_bands,
    slice_metrics,
)
from relay.evaluate.report import write_report
from relay.settings import GateSettings

SEED = 11


def _frame(n: int = 4_000, seed: int = SEED) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "zone_id": rng.choice([f"Z{i:03d}" for i in range(6)], size=n),
            "hour": rng.integers(0, 24, size=n),
            "zone_weather": rng.choice(["clear", "cloudy", "rain", "storm"], size=n),
            "delivery_minutes": rng.gamma(6.0, 5.0, size=n),
        }
    )


def test_metrics_match_hand_computed_values():
    # errors: +2, -2, 0, +10 -> |e| = 2, 2, 0, 10
    m = compute_metrics([10, 20, 30, 40], [12, 18, 30, 50])
    assert m.n == 4
    assert m.mae == pytest.approx(3.5)
    assert m.rmse == pytest.approx(math.sqrt(27.0))
    assert m.p90_abs_error == pytest.approx(7.6)  # linear: 2 + 0.7 * (10 - 2)
    assert m.within_5_min == pytest.approx(0.75)
    assert m.bias == pytest.approx(2.5)
    assert not m.too_small


def test_within_5_min_includes_the_boundary():
    assert compute_metrics([10, 10], [15, 4.99]).within_5_min == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("y_true", "y_pred"),
    [([], []), ([1, 2], [1]), ([1, 2], [1, float("nan")])],
)
def test_metrics_refuse_bad_input(y_true, y_pred):
    with pytest.raises(ValueError):
        compute_metrics(y_true, y_pred)


@pytest.mark.parametrize(
    ("hour", "band"),
    [
        (0, "night"),
        (6, "night"),
        (7, "morning"),
        (10, "morning"),
        (11, "lunch"),
        (14, "lunch"),
        (15, "afternoon"),
        (16, "afternoon"),
        (17, "dinner"),
        (21, "dinner"),
        (22, "late"),
        (23, "late"),
    ],
)
def test_hour_band_edges(hour, band):
    assert hour_band(hour) == band


def test_hour_bands_vectorised_and_checked():
    bands = hour_bands(np.arange(24))
    assert bands.tolist() == [hour_band(h) for h in range(24)]
    assert list(bands.cat.categories) == [
        "night",
        "morning",
        "lunch",
        "afternoon",
        "dinner",
        "late",
    ]
    with pytest.raises(ValueError):
        hour_band(24)
    with pytest.raises(ValueError):
        hour_bands([3, 24])
    with pytest.raises(ValueError):
        hour_bands([3.5])


def test_slice_metrics_default_slices_and_small_flag():
    frame = _frame(2_000)
    # Z999 is a thin slice: 10 orders.
    frame.loc[:9, "zone_id"] = "Z999"
    rng = np.random.default_rng(SEED)
    pred = frame["delivery_minutes"].to_numpy() + rng.normal(0, 3, len(frame))
    out = slice_metrics(frame, pred, min_rows=50)

    assert set(out) == {"zone_id", "hour_band", "weather"}
    assert list(out["hour_band"]) == ["night", "morning", "lunch", "afternoon", "dinner", "late"]
    assert set(out["weather"]) == {"clear", "cloudy", "rain", "storm"}
    small = out["zone_id"]["Z999"]
    assert small.n == 10 and small.too_small
    assert not any(m.too_small for v, m in out["zone_id"].items() if v != "Z999")
    for values in out.values():
        assert sum(m.n for m in values.values()) == len(frame)
    # A slice's numbers are the plain metrics of its rows.
    mask = (frame["zone_id"] == "Z001").to_numpy()
    direct = compute_metrics(frame["delivery_minutes"][mask], pred[mask])
    assert out["zone_id"]["Z001"].mae == pytest.approx(direct.mae)


def test_slice_metrics_custom_mapping_and_missing_values():
    frame = pd.DataFrame(
        {"courier": ["a", "b", None, "a"], "delivery_minutes": [10.0, 20.0, 30.0, 40.0]}
    )
    out = slice_metrics(
        frame,
        [11.0, 20.0, 30.0, 40.0],
        {"courier": "courier", "long": lambda f: f["delivery_minutes"] > 25},
        min_rows=2,
    )
    assert out["courier"]["a"].n == 2 and out["courier"]["a"].mae == pytest.approx(0.5)
    assert out["courier"]["missing"].too_small
    assert set(out["long"]) == {"False", "True"}


def test_slice_metrics_names_a_missing_column():
    frame = _frame(100).drop(columns=["zone_weather"])
    with pytest.raises(ValueError, match="zone_weather"):
        slice_metrics(frame, frame["delivery_minutes"])


def test_evaluation_round_trips_through_json():
    frame = _frame(500)
    ev = evaluate("eta_mlp", "3", frame, frame["delivery_minutes"] + 1.0)
    again = Evaluation.from_dict(json.loads(json.dumps(ev.to_dict())))
    assert again == ev
    assert ev.label == "eta_mlp@3"
    assert ev.overall.bias == pytest.approx(1.0)
    assert isinstance(ev.slices["zone_id"]["Z000"], Metrics)


def test_report_has_every_section_and_plotly_once(tmp_path: Path):
    frame = _frame(8_000)
    rng = np.random.default_rng(SEED)
    true = frame["delivery_minutes"].to_numpy()
    pred_new = true + rng.normal(0, 3, len(true))
    pred_old = true + rng.normal(0, 4, len(true))
    challenger = evaluate("eta_mlp", "2", frame, pred_new)
    champion = evaluate("eta_mlp", "1", frame, pred_old)
    verdict = decide(challenger, champion, GateSettings())

    path = write_report(
        tmp_path / "reports" / "eval.html",
        challenger,
        champion,
        true,
        pred_new,
        pred_old,
        verdict,
    )

    html = path.read_text(encoding="utf-8")
    assert path.exists()
    # plotly.js is embedded exactly once, so the page works offline and stays one bundle.
    assert len(re.findall(r"\* plotly\.js v\d", html)) == 1
    figure_ids = re.findall(r'<div id="fig-([\w-]+)" class="plotly-graph-div"', html)
    assert figure_ids == [
        "residuals",
        "scatter",
        "slice-zone_id",
        "slice-hour_band",
        "slice-weather",
    ]
    assert verdict.reasons
    for reason in verdict.reasons:
        assert str(escape(reason)) in html
    assert "eta_mlp@2" in html and "eta_mlp@1" in html
    assert "MAE (min)" in html
    # The scatter carries at most 5,000 points per model.
    assert "5,000 orders shown" in html


def test_report_without_champion_or_verdict(tmp_path: Path):
    frame = _frame(300)
    true = frame["delivery_minutes"].to_numpy()
    ev = evaluate("eta_mlp", None, frame, true + 2.0, min_rows=100)
    path = write_report(tmp_path / "first.html", ev, None, true, true + 2.0)
    html = path.read_text(encoding="utf-8")
    assert "No champion: first model." in html
    assert "The gate was not run" in html
    assert html.count('class="plotly-graph-div"') == 5
    assert "too small" in html


def test_report_escapes_names(tmp_path: Path):
    frame = _frame(200)
    true = frame["delivery_minutes"].to_numpy()
    ev = evaluate("<script>x</script>", None, frame, true)
    html = write_report(tmp_path / "r.html", ev, None, true, true).read_text(encoding="utf-8")
    assert "<h1>ETA evaluation: &lt;script&gt;x&lt;/script&gt;</h1>" in html
