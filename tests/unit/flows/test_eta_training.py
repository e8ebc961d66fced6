"""The training run's pure parts: which days a run covers, its folder, a retrain's conf."""

from __future__ import annotations

import datetime as dt

import pytest

from relay.evaluate.challenger import evaluate_version
from relay.evaluate.gate import margin
from relay.flows.eta_monitoring import training_conf
from relay.flows.eta_training import register_and_gate, run_days, run_dir
from relay.settings import GateSettings, Settings

D = dt.date(2026, 11, 21)
MIDNIGHT = dt.datetime(2026, 11, 21, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


# run_days ------------------------------------------------------------------------------------


def test_daily_interval_covers_the_day_that_just_ended():
    # A daily run of [D, D+1): the end is exclusive, so D+1 is not covered.
    assert run_days(None, None, MIDNIGHT, MIDNIGHT + DAY) == [D]


def test_multi_day_interval_covers_every_day_but_the_exclusive_end():
    assert run_days(None, None, MIDNIGHT, MIDNIGHT + 3 * DAY) == [
        D,
        D + dt.timedelta(days=1),
        D + dt.timedelta(days=2),
    ]


def test_interval_ending_mid_day_covers_that_day():
    end = MIDNIGHT + DAY + dt.timedelta(hours=6)
    assert run_days(None, None, MIDNIGHT, end) == [D, D + DAY]


def test_empty_interval_covers_its_start_day():
    # A manually triggered run has data_interval_start == data_interval_end.
    at = MIDNIGHT + dt.timedelta(hours=14)
    assert run_days(None, None, at, at) == [D]


def test_params_take_precedence_over_the_interval():
    assert run_days("2026-01-01", "2026-01-03", MIDNIGHT, MIDNIGHT + DAY) == [
        dt.date(2026, 1, 1),
        dt.date(2026, 1, 2),
        dt.date(2026, 1, 3),
    ]


def test_start_param_alone_is_one_day():
    assert run_days("2026-01-05", None, MIDNIGHT, MIDNIGHT + DAY) == [dt.date(2026, 1, 5)]
    assert run_days("2026-01-05", "", MIDNIGHT, MIDNIGHT + DAY) == [dt.date(2026, 1, 5)]


def test_empty_start_param_falls_back_to_the_interval():
    assert run_days("", None, MIDNIGHT, MIDNIGHT + DAY) == [D]


def test_same_start_and_end_param_is_one_day():
    assert run_days("2026-01-05", "2026-01-05", MIDNIGHT, MIDNIGHT) == [dt.date(2026, 1, 5)]


def test_end_before_start_raises():
    with pytest.raises(ValueError, match="end 2026-01-02 is before start 2026-01-03"):
        run_days("2026-01-03", "2026-01-02", MIDNIGHT, MIDNIGHT + DAY)


def test_malformed_date_param_raises():
    with pytest.raises(ValueError):
        run_days("2026/01/03", None, MIDNIGHT, MIDNIGHT + DAY)


# run_dir -------------------------------------------------------------------------------------


def test_run_dir_is_created_under_home_runs(tmp_path):
    s = Settings(home=tmp_path)
    path = run_dir("manual_1", s)
    assert path == tmp_path.resolve() / "runs" / "manual_1"
    assert path.is_dir()
    assert run_dir("manual_1", s) == path  # a re-run reuses the folder


def test_run_dir_replaces_unsafe_characters(tmp_path):
    s = Settings(home=tmp_path)
    path = run_dir("scheduled__2026-11-21T00:00:00+00:00", s)
    assert path.name == "scheduled__2026-11-21T00_00_00_00_00"
    assert path.parent == tmp_path.resolve() / "runs"
    assert path.is_dir()


@pytest.mark.parametrize("run_id", ["../../etc", "a/b", "x y\\z", "run/../../../escape"])
def test_run_dir_never_nests_or_escapes(tmp_path, run_id):
    s = Settings(home=tmp_path)
    path = run_dir(run_id, s)
    assert path.parent == tmp_path.resolve() / "runs"
    assert path.resolve().parent == tmp_path.resolve() / "runs"
    assert "/" not in path.name and "\\" not in path.name


@pytest.mark.parametrize("run_id", ["..", "."])
def test_run_dir_of_a_dot_run_id_stays_its_own_folder_under_runs(tmp_path, run_id):
    s = Settings(home=tmp_path)
    path = run_dir(run_id, s)
    assert path.resolve().parent == tmp_path.resolve() / "runs"


# training_conf -------------------------------------------------------------------------------


def test_training_conf_covers_the_day_before_end():
    conf = training_conf("drift in zone_weather", dt.datetime(2026, 11, 21, 15, 0, tzinfo=dt.UTC))
    assert conf == {
        "reason": "drift in zone_weather",
        "start_date": "2026-11-20",
        "end_date": "2026-11-20",
        "skip_tuning": True,
    }


def test_training_conf_at_midnight_takes_the_whole_day_that_just_ended():
    conf = training_conf("r", dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    assert (conf["start_date"], conf["end_date"]) == ("2026-02-28", "2026-02-28")


def test_training_conf_dates_are_run_days_params():
    conf = training_conf("r", MIDNIGHT + dt.timedelta(hours=3))
    assert run_days(conf["start_date"], conf["end_date"], MIDNIGHT, MIDNIGHT) == [D - DAY]


def test_training_conf_truncates_the_reason_to_500_characters():
    long = "x" * 499 + "yz" + "w" * 100
    conf = training_conf(long, MIDNIGHT)
    assert len(conf["reason"]) == 500
    assert conf["reason"] == "x" * 499 + "y"
    assert training_conf("short", MIDNIGHT)["reason"] == "short"


def test_training_conf_carries_the_drift_slice_margin_for_the_gate():
    conf = training_conf("drift", MIDNIGHT, slice_margin=0.15)
    assert conf["slice_margin"] == 0.15
    assert "slice_margin" not in training_conf("drift", MIDNIGHT)


# the gate's slice margin ---------------------------------------------------------------------


def test_a_runs_slice_margin_goes_over_the_configured_one():
    base = GateSettings()
    assert margin(base, 0.15) == 0.15
    assert margin(base, 0.0) == 0.0
    assert margin(base, None) == base.slice_margin == 0.05


def test_a_negative_slice_margin_is_refused_before_anything_happens(tmp_path):
    with pytest.raises(ValueError, match="slice_margin"):
        margin(GateSettings(), -0.1)
    # Before reading the holdout or the registry, and before registering anything.
    s = Settings(home=tmp_path)
    with pytest.raises(ValueError, match="slice_margin"):
        evaluate_version("v1", tmp_path / "missing.parquet", s, slice_margin=-0.1)
    with pytest.raises(ValueError, match="slice_margin"):
        register_and_gate(str(tmp_path / "model"), "unused", [], slice_margin=-0.1)
    assert not (tmp_path / "artifacts").exists()
