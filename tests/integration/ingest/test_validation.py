"""Great Expectations on real batches: clean passes, every corruption is caught and named."""

import datetime as dt
from pathlib import Path

import pytest

from relay.data.lake import RAW_ORDERS, VALIDATED_ORDERS, Lake
from relay.data.scenarios import CORRUPTIONS, DRIFTS, scenario_batch
from relay.errors import DataValidationFailed
from relay.ingest.landing import land_generated_batch, validate_partition
from relay.ingest.validation import require_valid, validate_orders

DAY = dt.date(2026, 11, 10)
N = 4000

# The expectation each corruption must trip (others may fail too).
CAUGHT_BY = {
    "nulls": ("expect_column_values_to_not_be_null", "distance_km"),
    "out_of_range": ("expect_column_values_to_be_between", "distance_km"),
    "renamed_column": ("expect_table_columns_to_match_set", None),
    "retyped_column": ("expect_column_values_to_be_in_type_list", "courier_load"),
    "duplicate_orders": ("expect_column_values_to_be_unique", "order_id"),
    "late_rows": ("expect_column_values_to_be_between", "created_at"),
}


def test_clean_batch_passes_and_writes_data_docs(tmp_path):
    verdict = validate_orders(scenario_batch("normal", DAY, N), DAY, docs_dir=tmp_path)
    assert verdict.success, verdict.summary()
    assert verdict.failures == [] and verdict.evaluated > 20
    index = Path(verdict.docs_path)
    assert index.exists() and "<html" in index.read_text().lower()
    assert (tmp_path / "verdict.json").exists()


@pytest.mark.parametrize("drift", sorted(DRIFTS))
def test_drifted_but_valid_batches_pass(drift, tmp_path):
    verdict = validate_orders(scenario_batch(drift, DAY, N), DAY, docs_dir=tmp_path)
    assert verdict.success, verdict.summary()


@pytest.mark.parametrize("scenario", sorted(CORRUPTIONS))
def test_each_corruption_is_caught_and_named(scenario, tmp_path):
    verdict = validate_orders(scenario_batch(scenario, DAY, N), DAY, docs_dir=tmp_path)
    assert not verdict.success
    expectation, column = CAUGHT_BY[scenario]
    hits = [
        f
        for f in verdict.failures
        if f.expectation == expectation and (column is None or f.column == column)
    ]
    assert hits, verdict.summary()
    with pytest.raises(DataValidationFailed) as err:
        require_valid(verdict)
    assert expectation in str(err.value) and "nothing downstream was written" in str(err.value)
    if hits[0].unexpected_count is not None:
        assert hits[0].unexpected_count > 0 and hits[0].examples


def test_a_bad_batch_never_reaches_the_validated_layer():
    day = DAY + dt.timedelta(days=1)
    lake = Lake()
    land_generated_batch(day, N, "normal")
    validate_partition(day)
    good = lake.read(VALIDATED_ORDERS, day)
    # A corrupted re-delivery of the same day is rejected and the good partition stays.
    land_generated_batch(day, N, "duplicate_orders")
    with pytest.raises(DataValidationFailed):
        validate_partition(day)
    assert lake.read(VALIDATED_ORDERS, day).equals(good)
    assert len(lake.read(RAW_ORDERS, day)) > len(good)


def test_missing_column_is_reported_as_missing(tmp_path):
    verdict = validate_orders(scenario_batch("renamed_column", DAY, N), DAY, docs_dir=tmp_path)
    assert any(f.error and "'distance_km' is missing" in f.error for f in verdict.failures)
