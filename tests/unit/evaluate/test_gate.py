"""The evaluation gate: absolute bars, beating the champion, and no slice left behind."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from relay.evaluate.gate import decide
from relay.evaluate.metrics import Evaluation, Metrics, evaluate
from relay.settings import GateSettings

SEED = 23
N = 6_000
SETTINGS = GateSettings()


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(SEED)
    return pd.DataFrame(
        {
            "zone_id": rng.choice([f"Z{i:03d}" for i in range(8)], size=N),
            "hour": rng.integers(0, 24, size=N),
            "zone_weather": rng.choice(["clear", "rain"], size=N),
            "delivery_minutes": rng.gamma(6.0, 5.0, size=N),
        }
    )


def _model(frame: pd.DataFrame, version: str, noise: float, seed: int) -> Evaluation:
    """A model whose errors are Gaussian with standard deviation ``noise`` minutes."""
    rng = np.random.default_rng(seed)
    true = frame["delivery_minutes"].to_numpy()
    return evaluate("eta_mlp", version, frame, true + rng.normal(0, noise, len(true)))


def _metrics(mae: float, n: int = 500, p90: float = 10.0, within: float = 0.6) -> Metrics:
    return Metrics(n=n, mae=mae, rmse=mae * 1.25, p90_abs_error=p90, within_5_min=within, bias=0.0)


def _eval(version: str, mae: float, zones: dict[str, tuple[float, int]]) -> Evaluation:
    slices = {"zone_id": {z: _metrics(m, n) for z, (m, n) in zones.items()}}
    return Evaluation("eta_mlp", version, _metrics(mae), slices)


def test_a_better_challenger_passes(frame):
    champion = _model(frame, "1", noise=4.0, seed=1)
    challenger = _model(frame, "2", noise=3.0, seed=2)
    verdict = decide(challenger, champion, SETTINGS)
    assert verdict.passed, verdict.summary()
    assert verdict.failures == [] and verdict.slices_at_fault == []
    assert all(r.startswith("PASS: ") for r in verdict.reasons)
    # Absolute bars, the overall comparison and one line per compared slice value.
    assert len(verdict.reasons) == 3 + 1 + (8 + 6 + 2)
    assert verdict.champion == "eta_mlp@1" and verdict.challenger == "eta_mlp@2"


def test_a_worse_challenger_is_rejected(frame):
    champion = _model(frame, "1", noise=3.0, seed=1)
    challenger = _model(frame, "2", noise=4.0, seed=2)
    verdict = decide(challenger, champion, SETTINGS)
    assert not verdict.passed
    assert any(f.startswith("overall MAE") for f in verdict.failures)
    assert verdict.slices_at_fault  # 33% worse everywhere
    assert [f"FAIL: {f}" for f in verdict.failures] == [
        r for r in verdict.reasons if r.startswith("FAIL")
    ]


def test_better_overall_but_worse_on_one_zone_is_rejected(frame):
    rng = np.random.default_rng(5)
    true = frame["delivery_minutes"].to_numpy()
    champion = evaluate("eta_mlp", "1", frame, true + rng.normal(0, 3.5, N))
    noise = np.where(frame["zone_id"] == "Z003", 6.0, 2.5)
    challenger = evaluate("eta_mlp", "2", frame, true + rng.normal(0, 1, N) * noise)
    assert challenger.overall.mae < champion.overall.mae

    verdict = decide(challenger, champion, SETTINGS)

    assert not verdict.passed
    assert verdict.slices_at_fault == ["zone_id=Z003"]
    assert len(verdict.failures) == 1
    assert verdict.failures[0].startswith("zone_id=Z003: MAE ")


def test_slice_reason_names_the_slice_and_the_margin():
    champion = _eval("1", 7.0, {"Z007": (7.80, 400), "Z008": (6.0, 400)})
    challenger = _eval("2", 6.5, {"Z007": (9.10, 400), "Z008": (6.1, 400)})
    verdict = decide(challenger, champion, SETTINGS)
    assert not verdict.passed
    assert verdict.failures == ["zone_id=Z007: MAE 9.10 vs champion 7.80 (+16.7% > 5.0%)"]
    assert "PASS: zone_id=Z008: MAE 6.10 vs champion 6.00 (+1.7% ≤ 5.0%)" in verdict.reasons


def test_a_runs_slice_margin_replaces_the_configured_one_and_shows_in_the_lines():
    champion = _eval("1", 7.0, {"Z007": (7.80, 400)})
    challenger = _eval("2", 6.5, {"Z007": (9.10, 400)})  # +16.7%
    wide = decide(challenger, champion, SETTINGS, slice_margin=0.20)
    assert wide.passed, wide.summary()
    assert "PASS: zone_id=Z007: MAE 9.10 vs champion 7.80 (+16.7% ≤ 20.0%)" in wide.reasons
    assert not decide(challenger, champion, SETTINGS, slice_margin=None).passed
    with pytest.raises(ValueError, match="slice_margin"):
        decide(challenger, champion, SETTINGS, slice_margin=-0.1)


def test_a_slice_regression_within_paired_noise_passes():
    champion = _eval("1", 7.0, {"Z007": (4.00, 300)})
    challenger = _eval("2", 6.5, {"Z007": (4.40, 300)})  # +10%: 0.20 min past the 5% margin
    noisy = decide(challenger, champion, SETTINGS, {"zone_id": {"Z007": 0.15}})
    assert noisy.passed, noisy.summary()
    assert (
        "PASS: zone_id=Z007: MAE 4.40 vs champion 4.00 (+10.0% > 5.0%; "
        "excess 0.20 min within noise: 1.645 × SE 0.15)"
    ) in noisy.reasons
    # The same excess measured precisely is a real regression.
    sharp = decide(challenger, champion, SETTINGS, {"zone_id": {"Z007": 0.05}})
    assert sharp.slices_at_fault == ["zone_id=Z007"]
    assert "beyond noise" in sharp.failures[0]
    # z = 0 turns the noise allowance off.
    strict = GateSettings(slice_significance_z=0)
    assert not decide(challenger, champion, strict, {"zone_id": {"Z007": 0.15}}).passed


def test_paired_noise_keeps_a_retrained_twin_and_still_catches_a_broken_zone():
    from relay.evaluate.metrics import paired_slice_se

    # Thirty zones of ~200 orders: two fits of one model differ by chance in a few of them.
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "zone_id": rng.choice([f"Z{i:03d}" for i in range(30)], size=N),
            "hour": rng.integers(0, 24, size=N),
            "zone_weather": rng.choice(["clear", "rain"], size=N),
            "delivery_minutes": rng.gamma(6.0, 5.0, size=N),
        }
    )
    true = frame["delivery_minutes"].to_numpy()
    base = true + rng.normal(0, 3.5, N)  # what both fits get right and wrong alike
    first = base + rng.normal(0, 2.0, N)
    second = base + rng.normal(0, 2.0, N)
    second -= 0.1 * np.sign(second - true)  # slightly better everywhere
    champion = evaluate("eta_mlp", "1", frame, first)
    twin = evaluate("eta_mlp", "2", frame, second)

    strict = decide(twin, champion, GateSettings(slice_significance_z=0))
    assert not strict.passed and strict.slices_at_fault  # chance alone fails a few zones
    se = paired_slice_se(frame, true, second, first)
    assert set(se) == {"zone_id", "hour_band", "weather"}
    verdict = decide(twin, champion, SETTINGS, se)
    assert verdict.passed, verdict.summary()

    worse = second + 1.0 * np.sign(second - true)  # every error a minute larger
    broken = np.where(frame["zone_id"] == "Z003", worse, second)
    ev = evaluate("eta_mlp", "3", frame, broken)
    verdict = decide(ev, champion, SETTINGS, paired_slice_se(frame, true, broken, first))
    assert verdict.slices_at_fault == ["zone_id=Z003"], verdict.summary()


def test_thin_or_unshared_slices_are_not_judged():
    champion = _eval("1", 7.0, {"Z001": (5.0, 500), "Z002": (5.0, 20), "Z003": (5.0, 500)})
    challenger = _eval("2", 6.5, {"Z001": (5.0, 500), "Z002": (50.0, 20), "Z004": (50.0, 500)})
    verdict = decide(challenger, champion, SETTINGS)
    assert verdict.passed, verdict.summary()
    assert verdict.slices_at_fault == []
    assert any("2 slice value(s) not compared" in r for r in verdict.reasons)


def test_min_improvement_is_required():
    champion = _eval("1", 7.0, {})
    challenger = _eval("2", 6.9, {})
    assert decide(challenger, champion, SETTINGS).passed
    strict = SETTINGS.model_copy(update={"min_improvement": 0.5})
    verdict = decide(challenger, champion, strict)
    assert not verdict.passed
    assert verdict.failures == ["overall MAE 6.90 ≥ champion 7.00 − 0.50 (change -0.10)"]


def test_first_model_is_judged_by_absolute_bars_only(frame):
    good = decide(_model(frame, "1", noise=3.0, seed=1), None, SETTINGS)
    assert good.passed and good.champion is None
    assert len(good.reasons) == 4
    assert "first model" in good.reasons[-1]
    # No slice is compared, however bad, without a champion.
    assert not any("zone_id=" in r for r in good.reasons)

    bad = decide(_model(frame, "1", noise=15.0, seed=1), None, SETTINGS)
    assert not bad.passed
    assert {f.split(" ")[0] for f in bad.failures} == {"MAE", "P90", "within"}


def test_each_absolute_bar_is_checked_on_its_own():
    ev = Evaluation("eta_mlp", "1", _metrics(5.0, p90=16.0, within=0.6))
    verdict = decide(ev, None, SETTINGS)
    assert verdict.failures == ["P90 abs error 16.00 > max 15.00 min"]
    ev = Evaluation("eta_mlp", "1", _metrics(5.0, p90=10.0, within=0.3))
    assert decide(ev, None, SETTINGS).failures == ["within ±5 min 30.0% < min 40.0%"]


def test_verdict_serialises():
    verdict = decide(_eval("2", 6.0, {}), _eval("1", 7.0, {}), SETTINGS)
    d = verdict.to_dict()
    assert d["passed"] is True and d["champion"] == "eta_mlp@1"
    assert "REJECTED" not in verdict.summary() and "PASSED" in verdict.summary()
