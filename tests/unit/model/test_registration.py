"""Registering a training run and checking a holdout: the pure parts, without a registry."""

from __future__ import annotations

import datetime as dt
import json
import math

import pandas as pd
import pytest

from relay.evaluate.challenger import (
    REQUIRED_COLUMNS,
    HoldoutError,
    check_holdout,
    transition_reason,
)
from relay.evaluate.gate import GateVerdict
from relay.model.bundle import ModelBundle, ModelBundleError
from relay.model.registration import config_hash, numeric_metrics, training_set_ref


def test_numeric_metrics_keep_finite_numbers_only():
    metrics = {"val_mae": 4.2, "epoch": 3, "early_stopped": True, "best": math.inf, "x": "a"}
    metrics["nan"] = math.nan
    assert numeric_metrics(metrics) == {"val_mae": 4.2, "epoch": 3.0, "early_stopped": 1.0}


def test_training_set_ref_spans_the_days_of_its_partitions():
    ref = training_set_ref("s3://lake/t.parquet", ["2026-11-20", "2026-11-14", "2026-11-17"])
    assert ref.uri == "s3://lake/t.parquet"
    assert (ref.start_date, ref.end_date) == (dt.date(2026, 11, 14), dt.date(2026, 11, 20))
    unknown = training_set_ref("t.parquet", ["latest"])
    assert unknown.start_date is None and unknown.end_date is None


def test_config_hash_ignores_key_order_and_sees_values():
    a = config_hash({"lr": 0.1, "units": 64}, {"n_numeric": 16, "cardinalities": [3, 4]})
    b = config_hash({"units": 64, "lr": 0.1}, {"cardinalities": [3, 4], "n_numeric": 16})
    c = config_hash({"units": 64, "lr": 0.2}, {"cardinalities": [3, 4], "n_numeric": 16})
    assert a == b != c and len(a) == 64


def test_bundle_from_an_incomplete_folder_names_the_missing_files(tmp_path):
    (tmp_path / "net_config.json").write_text(json.dumps({"n_numeric": 16}))
    with pytest.raises(ModelBundleError, match=r"lacks model\.pt, preprocessor\.json"):
        ModelBundle.from_dir(tmp_path)


def test_holdout_without_slice_or_feature_columns_is_refused():
    frame = pd.DataFrame({c: [1.0] for c in REQUIRED_COLUMNS if c not in ("hour", "zone_weather")})
    with pytest.raises(HoldoutError, match="hour") as info:
        check_holdout(frame)
    assert "zone_weather" in str(info.value)
    full = pd.DataFrame({c: [1.0] for c in REQUIRED_COLUMNS})
    check_holdout(full)
    with pytest.raises(HoldoutError, match="no rows"):
        check_holdout(full.iloc[:0])
    with pytest.raises(HoldoutError, match="without delivery_minutes"):
        check_holdout(full.assign(delivery_minutes=[math.nan]))


def test_transition_reason_puts_failures_first():
    verdict = GateVerdict(
        passed=False,
        reasons=["PASS: MAE 5.00 ≤ max 8.00 min", "FAIL: zone_id=Z007: MAE 9 vs champion 5"],
        failures=["zone_id=Z007: MAE 9 vs champion 5"],
        slices_at_fault=["zone_id=Z007"],
        challenger="eta_mlp@2",
        champion="eta_mlp@1",
    )
    reason = transition_reason(verdict)
    assert reason == (
        "gate rejected against eta_mlp@1: FAIL: zone_id=Z007: MAE 9 vs champion 5; "
        "PASS: MAE 5.00 ≤ max 8.00 min"
    )
