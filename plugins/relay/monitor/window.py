"""One monitoring window: the serving log of the ``window_hours`` before ``end`` and its reference.

:func:`monitor_window` is the drift job's front door: it reads the window (the predictions
served, left-joined on ``order_id`` with the actual delivery times that have landed,
:func:`relay.serve.log_read.read_served`), reads the reference (the training set the production
model learned from, :func:`reference_uri_of`) and calls
:func:`relay.monitor.report.build_report`. The run key comes from the window's end, so running
the same interval again overwrites the same report folder.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from relay.clock import as_utc
from relay.errors import PartitionNotFound
from relay.monitor.drift import DriftResult, NoServingTraffic, ReferenceUnusable
from relay.monitor.report import Predictor, build_report
from relay.serve.log_read import read_served
from relay.settings import Settings, get_settings

if TYPE_CHECKING:  # pragma: no cover, typing only
    from relay.data.lake import Lake
    from relay.registry import ModelVersion


def run_key(end: dt.datetime) -> str:
    """The report folder's name for a window ending at ``end``, e.g. ``20261121T1400Z``."""
    return as_utc(end).strftime("%Y%m%dT%H%MZ")


def reference_uri_of(version: ModelVersion) -> str:
    """The training-set URI a registered version was trained on (its lineage's training set).

    Raises:
        ReferenceUnusable: the version's lineage records no training set (it was registered
            before lineage carried one).
    """
    training_set = version.lineage.training_set
    if training_set is None:
        raise ReferenceUnusable(
            f"{version.id} records no training set in its lineage; pass reference_uri explicitly"
        )
    return training_set.uri


def read_reference(uri: str, settings: Settings | None = None) -> pd.DataFrame:
    """A reference frame from Parquet: a file or a folder, a local path or ``s3://``.

    Raises:
        ReferenceUnusable: nothing can be read there.
    """
    import pyarrow.parquet as pq

    from relay.data.lake import filesystem

    fs, path = filesystem(uri.removeprefix("file://"), settings)
    try:
        return pq.read_table(path, filesystem=fs).to_pandas()
    except (OSError, ValueError) as exc:
        raise ReferenceUnusable(
            f"cannot read the reference {uri}: {exc}. Pass the training-set Parquet of the "
            "production model (reference_uri_of(version))."
        ) from exc


def read_window(lake: Lake, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    """Serving-log rows with ``start <= requested_at < end``, left-joined with the actuals
    landed in the partitions of those days (``actual_minutes`` null where none yet).

    Raises:
        NoServingTraffic: no prediction was logged in the window.
    """
    start, end = as_utc(start), as_utc(end)
    where = f"between {start:%Y-%m-%d %H:%M} and {end:%Y-%m-%d %H:%M} UTC under {lake.root}"
    try:
        served = read_served(lake, start, end)
    except PartitionNotFound as exc:
        raise NoServingTraffic(
            f"no serving log {where}: is the endpoint serving, and its log being flushed?"
        ) from exc
    if served.empty:
        raise NoServingTraffic(
            f"the serving log has no prediction {where}: is the endpoint serving, and its log "
            "being flushed?"
        )
    return served


def monitor_window(
    end: dt.datetime,
    reference_uri: str,
    settings: Settings | None = None,
    *,
    predict: Predictor | None = None,
    features: Sequence[str] | None = None,
    lake: Lake | None = None,
) -> DriftResult:
    """Build the monitoring report for the ``window_hours`` of serving log before ``end``.

    Args:
        end: the window's end, exclusive (a DAG passes its ``data_interval_end``); naive means
            UTC.
        reference_uri: the training-set Parquet of the production model
            (:func:`reference_uri_of`), or any Parquet with the feature columns.
        settings: Relay's settings (``monitoring`` and ``reports_dir``); the process's
            settings when None.
        predict: the production model's predictor, to score the reference when it has no
            ``eta_minutes`` column (prediction drift then compares like with like).
        features: features to monitor; :data:`relay.monitor.report.MONITORED_FEATURES` by
            default.
        lake: the lake to read; one opened from ``settings`` when None.

    Returns:
        The result; its reports are under ``{reports_dir}/drift/<run_key>/``.

    Raises:
        NoServingTraffic: no prediction was logged in the window.
        ReferenceUnusable: the reference cannot be read or lacks the monitored features.
    """
    from relay.data.lake import Lake

    s = settings or get_settings()
    end = as_utc(end)
    start = end - dt.timedelta(hours=s.monitoring.window_hours)
    current = read_window(lake or Lake(s), start, end)
    reference = read_reference(reference_uri, s)
    key = run_key(end)
    return build_report(
        reference,
        current,
        s.reports_dir / "drift" / key,
        run_key=key,
        features=features,
        predict=predict,
        max_rows=s.monitoring.max_rows,
        drift_share=s.monitoring.drift_share_threshold,
        window=(start, end),
        reference_uri=reference_uri,
    )
