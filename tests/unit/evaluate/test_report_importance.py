"""The evaluation report's feature-importance section: a sorted bar chart and the top features."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from relay.evaluate.metrics import evaluate
from relay.evaluate.report import write_report
from tests.unit.evaluate.test_metrics import _frame

OURS = {"order_distance_km": 0.5, "courier_orders_1h": 0.3, "zone_weather": 0.15, "zone_id": 0.05}
THEIRS = {"order_distance_km": 0.2, "courier_orders_1h": 0.1, "merchant_id": 0.7}


def _report(tmp_path: Path, **kwargs: object) -> str:
    frame = _frame(400)
    true = frame["delivery_minutes"].to_numpy()
    pred = true + np.random.default_rng(0).normal(0, 2, len(true))
    ours = evaluate("eta_mlp", "2", frame, pred, min_rows=50)
    theirs = evaluate("eta_mlp", "1", frame, pred + 1.0, min_rows=50)
    path = write_report(tmp_path / "r.html", ours, theirs, true, pred, pred + 1.0, **kwargs)  # type: ignore[arg-type]
    return path.read_text(encoding="utf-8")


def _bars(html: str) -> list[dict]:
    """The importance figure's traces, as plotly wrote them into the page."""
    start = html.index('<div id="fig-importance"')
    script = html[start : html.index("</script>", start)]
    data = re.search(r"Plotly\.newPlot\(\s*\"fig-importance\",\s*(\[.*?\]),\s*\{", script, re.S)
    assert data is not None
    return json.loads(data.group(1))


def test_the_report_draws_the_challengers_importance_sorted_with_the_champions(tmp_path):
    html = _report(tmp_path, importance=OURS, champion_importance=THEIRS)
    assert re.findall(r'<div id="fig-([\w-]+)"', html)[-1] == "importance"
    ours, theirs = _bars(html)
    assert (ours["name"], theirs["name"], ours["orientation"]) == ("eta_mlp@2", "eta_mlp@1", "h")
    # Bottom-up, the challenger's largest share on top; the champion's own inputs below.
    assert ours["y"] == [
        "merchant_id",
        "zone_id",
        "zone_weather",
        "courier_orders_1h",
        "order_distance_km",
    ]
    assert ours["x"] == [None, 0.05, 0.15, 0.3, 0.5]
    assert theirs["x"] == [0.7, None, None, 0.1, 0.2]
    assert (
        "Top features of eta_mlp@2: order_distance_km 50%, courier_orders_1h 30%, zone_weather 15%"
    ) in html
    assert "Top features of eta_mlp@1: merchant_id 70%, order_distance_km 20%" in html


def test_no_section_without_the_challengers_importance(tmp_path):
    for missing in ({}, {"importance": {}, "champion_importance": THEIRS}):
        html = _report(tmp_path, **missing)
        assert 'id="fig-importance"' not in html and "Top features" not in html
    alone = _report(tmp_path, importance=OURS)
    assert [bar["name"] for bar in _bars(alone)] == ["eta_mlp@2"]
    assert "Top features of eta_mlp@1" not in alone
