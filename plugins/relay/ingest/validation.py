"""Great Expectations 1.x validation of raw order batches.

:func:`validate_orders` runs the suite on one day's batch and returns a :class:`Verdict` that
lists every failed expectation with counts and examples, and writes Data Docs HTML.
:func:`require_valid` raises :class:`DataValidationFailed` so a pipeline stops before it touches
features or models.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from relay.data.schema import ORDER_COLUMNS, WEATHER
from relay.errors import DataValidationFailed
from relay.settings import Settings, get_settings

log = logging.getLogger(__name__)

SUITE_NAME = "raw_orders"


@dataclass(frozen=True)
class FailedExpectation:
    """One expectation that did not hold."""

    expectation: str
    column: str | None
    kwargs: dict[str, Any]
    unexpected_count: int | None
    unexpected_percent: float | None
    examples: list[Any]
    error: str | None = None

    def describe(self) -> str:
        where = f" on '{self.column}'" if self.column else ""
        if self.error:
            return f"{self.expectation}{where}: could not run ({self.error})"
        count = "" if self.unexpected_count is None else f": {self.unexpected_count} rows"
        pct = "" if self.unexpected_percent is None else f" ({self.unexpected_percent:.2f}%)"
        ex = f", e.g. {self.examples}" if self.examples else ""
        observed = self.kwargs.get("_observed")
        obs = f", observed {observed}" if observed is not None else ""
        return f"{self.expectation}{where}{count}{pct}{obs}{ex}"


@dataclass
class Verdict:
    """The outcome of validating one batch."""

    partition: str
    rows: int
    success: bool
    evaluated: int
    failures: list[FailedExpectation] = field(default_factory=list)
    docs_path: str | None = None

    def summary(self) -> str:
        head = (
            f"{self.partition}: {self.rows} rows, "
            f"{self.evaluated - len(self.failures)}/{self.evaluated} expectations passed"
        )
        lines = [head] + [f"  - {f.describe()}" for f in self.failures]
        if self.docs_path:
            lines.append(f"  Data Docs: {self.docs_path}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str, indent=2)


def build_expectations(date: dt.date, settings: Settings | None = None) -> list[Any]:
    """The raw-orders expectations for the partition of ``date``."""
    import great_expectations.expectations as gxe

    v = (settings or get_settings()).validation
    day_start = pd.Timestamp(date, tz="UTC")
    day_end = day_start + pd.Timedelta(days=1)
    exps: list[Any] = [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(ORDER_COLUMNS), exact_match=True),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]
    for col, dtype in ORDER_COLUMNS.items():
        if dtype.startswith("datetime"):
            continue  # checked by the freshness and ordering expectations below
        exps.append(gxe.ExpectColumnValuesToBeInTypeList(column=col, type_list=_type_list(dtype)))
        exps.append(gxe.ExpectColumnValuesToNotBeNull(column=col))
    exps += [
        gxe.ExpectColumnValuesToNotBeNull(column="created_at"),
        gxe.ExpectColumnValuesToNotBeNull(column="delivered_at"),
        gxe.ExpectColumnValuesToBeUnique(column="order_id"),
        # Freshness: every order of the partition was created on the partition's day.
        gxe.ExpectColumnValuesToBeBetween(
            column="created_at",
            min_value=day_start.to_pydatetime(),
            max_value=(day_end - pd.Timedelta(microseconds=1)).to_pydatetime(),
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="delivered_at", column_B="picked_up_at", or_equal=True
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="picked_up_at", column_B="created_at", or_equal=True
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="distance_km", min_value=0.0, max_value=v.max_distance_km, strict_min=True
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="delivery_minutes", min_value=1.0, max_value=v.max_delivery_minutes
        ),
        gxe.ExpectColumnValuesToBeBetween(column="prep_minutes", min_value=0.0, max_value=180.0),
        gxe.ExpectColumnValuesToBeBetween(column="courier_load", min_value=0, max_value=20),
        gxe.ExpectColumnValuesToBeBetween(column="items", min_value=1, max_value=100),
        gxe.ExpectColumnValuesToBeInSet(column="weather", value_set=list(WEATHER)),
        gxe.ExpectColumnMeanToBeBetween(
            column="delivery_minutes",
            min_value=v.mean_delivery_minutes_min,
            max_value=v.mean_delivery_minutes_max,
        ),
    ]
    return exps


def _type_list(dtype: str) -> list[str]:
    if dtype == "object":
        return ["object", "str", "string"]
    if dtype.startswith("int"):
        return ["int64", "int32", "Int64"]
    return ["float64", "float32", "Float64"]


def validate_orders(
    df: pd.DataFrame,
    date: dt.date,
    settings: Settings | None = None,
    docs_dir: Path | None = None,
) -> Verdict:
    """Run the raw-orders suite on one day's batch.

    Args:
        df: the batch, as read from the raw layer.
        date: the partition's day (freshness is checked against it).
        settings: Relay settings; the process's by default.
        docs_dir: where Data Docs go; ``{reports}/validation/{date}`` by default.

    Returns:
        The verdict, with every failed expectation and the Data Docs path.
    """
    import great_expectations as gx

    s = settings or get_settings()
    docs_dir = docs_dir or s.reports_dir / "validation" / date.isoformat()
    context = gx.get_context(mode="ephemeral")
    asset = context.data_sources.add_pandas("orders").add_dataframe_asset("raw_orders")
    batch_def = asset.add_batch_definition_whole_dataframe(f"orders_{date}")
    suite = context.suites.add(gx.ExpectationSuite(name=SUITE_NAME))
    for exp in build_expectations(date, s):
        suite.add_expectation(exp)
    vdef = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"raw_orders_{date}", data=batch_def, suite=suite)
    )
    docs_url = _add_docs_site(context, docs_dir)
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="raw_orders_checkpoint",
            validation_definitions=[vdef],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["relay"])],
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5},
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": df})
    run = next(iter(result.run_results.values()))
    missing = set(ORDER_COLUMNS) - set(df.columns)
    failures = [
        _failure(r, s.validation.max_examples, missing) for r in run.results if not r.success
    ]
    verdict = Verdict(
        partition=f"raw/orders/date={date}",
        rows=len(df),
        success=bool(result.success),
        evaluated=len(run.results),
        failures=failures,
        docs_path=docs_url,
    )
    (docs_dir / "verdict.json").write_text(verdict.to_json())
    return verdict


def _add_docs_site(context: Any, docs_dir: Path) -> str:
    docs_dir.mkdir(parents=True, exist_ok=True)
    context.add_data_docs_site(
        site_name="relay",
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    return str(docs_dir / "index.html")


def _failure(r: Any, max_examples: int, missing: set[str]) -> FailedExpectation:
    cfg = r.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
    res = r.result or {}
    exc = r.exception_info or {}
    error = None
    if exc.get("raised_exception"):
        error = str(exc.get("exception_message", "")).splitlines()[0][:200]
    column = kwargs.get("column") or kwargs.get("column_A")
    if column in missing:
        error = f"column '{column}' is missing from the batch"
    if "observed_value" in res:
        kwargs["_observed"] = res["observed_value"]
    examples = list(res.get("partial_unexpected_list") or [])[:max_examples]
    return FailedExpectation(
        expectation=cfg.type,
        column=column,
        kwargs=kwargs,
        unexpected_count=res.get("unexpected_count"),
        unexpected_percent=res.get("unexpected_percent"),
        examples=[str(e) for e in examples],
        error=error,
    )


def require_valid(verdict: Verdict) -> Verdict:
    """Return the verdict if it passed; else raise :class:`DataValidationFailed`."""
    if verdict.success:
        return verdict
    raise DataValidationFailed(
        "Batch rejected; nothing downstream was written.\n"
        + verdict.summary()
        + "\nFix the upstream export (or drop the partition) and re-run validation.",
        verdict,
    )
