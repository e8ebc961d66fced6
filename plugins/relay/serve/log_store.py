"""The serving log's files in the lake: the hourly layout, compaction's record, the reader.

Layout: ``serving/predictions/date=YYYY-MM-DD/hour=HH/`` (hive partitions of the UTC time of
``requested_at``). Writers add small ``part-<timestamp>-<uuid>.parquet`` files
(:class:`relay.serve.log.ServingLogWriter`, one per flush per replica); compaction
(:mod:`relay.serve.log_compact`) replaces an hour's files with one ``compact-<digest>.parquet``
sorted by time. Files written before the hourly layout lie directly in ``date=YYYY-MM-DD/``
(no ``hour=``); they are still read, and only the time filter applies to them.

The invariant that makes compaction safe to interrupt anywhere: a compacted file records, in
its Parquet footer (:data:`COMPACTED_FROM`), the names of the files of its hour whose rows it
holds, and it appears at once and whole (one atomic write). A file named in the record of a
compacted file present in the same folder is *superseded*: readers skip it, and compaction may
delete it. So between writing the compacted file and deleting its inputs, readers see every
row once; re-running compaction deletes what a crash left and writes nothing new. Compacting
an hour again (late files, or a previous compacted file) names the older compacted file among
its inputs, so the rule applies transitively.
"""

from __future__ import annotations

import datetime as dt
import json
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from relay.clock import as_utc
from relay.data.lake import SERVING_LOG, Lake
from relay.errors import PartitionNotFound

COMPACTED_FROM = b"relay.compacted_from"
"""Parquet schema-metadata key of a compacted file: a JSON list of the names it replaces."""
COMPACT_PREFIX = "compact-"
TIME = "requested_at"
_PARTITIONING = ds.partitioning(
    pa.schema([("date", pa.string()), ("hour", pa.int32())]), flavor="hive"
)
_PARTITION_COLUMNS = ("date", "hour")
_KEYS = ("request_id", "order_id")
_READ_ATTEMPTS = 3  # a compaction may delete a listed file before it is opened: list again


def hour_of(at: dt.datetime) -> tuple[dt.date, int]:
    """The ``(date, hour)`` partition of a UTC instant (naive means UTC)."""
    at = as_utc(at)
    return at.date(), at.hour


def hours_between(start: dt.datetime, end: dt.datetime) -> list[tuple[dt.date, int]]:
    """The hour partitions that hold instants of ``[start, end)``, in order."""
    start, end = as_utc(start), as_utc(end)
    at = start.replace(minute=0, second=0, microsecond=0)
    out = []
    while at < end:
        out.append(hour_of(at))
        at += dt.timedelta(hours=1)
    return out


def compacted_from(metadata: Mapping[bytes, bytes] | None) -> tuple[str, ...] | None:
    """The names a compacted file replaces, from its schema metadata; None: not compacted."""
    raw = (metadata or {}).get(COMPACTED_FROM)
    return None if raw is None else tuple(json.loads(raw))


def superseded(records: Mapping[str, Sequence[str]]) -> set[str]:
    """The names of one folder whose rows a compacted file present in it already holds.

    Args:
        records: each compacted file present, by name, with the names it replaces.
    """
    return {name for inputs in records.values() for name in inputs}


@dataclass(frozen=True)
class LogScan:
    """What a read of the serving log opened.

    Attributes:
        files: the files read (filesystem paths), after partition pruning and skipping the
            superseded.
        skipped: files of the read partitions skipped as superseded (footer read only).
        legacy: files read from the day-only layout (written before hourly partitions).
        unique: every hour read is one compacted file (no repeated row to look for).
    """

    files: tuple[str, ...]
    skipped: tuple[str, ...]
    legacy: int
    unique: bool = False

    @property
    def opened(self) -> int:
        """Files whose footer or data was read."""
        return len(self.files) + len(self.skipped)


def _listing(lake: Lake, days: Iterable[dt.date]) -> list[str]:
    """The Parquet files under the given days' partitions, hour folders included."""
    paths: list[str] = []
    for day in days:
        selector = pafs.FileSelector(
            lake.folder(SERVING_LOG, day), allow_not_found=True, recursive=True
        )
        paths.extend(
            i.path
            for i in lake.fs.get_file_info(selector)
            if i.type == pafs.FileType.File
            and i.base_name.endswith(".parquet")
            and not i.base_name.startswith(".")
        )
    return sorted(paths)


def _partition_filter(hours: Sequence[tuple[dt.date, int]]) -> ds.Expression:
    by_day: dict[dt.date, list[int]] = {}
    for day, hour in hours:
        by_day.setdefault(day, []).append(hour)
    expr: ds.Expression | None = None
    for day, hs in by_day.items():
        # A file of the day-only layout has no hour: keep it, the time filter sorts its rows.
        on_day = (ds.field("date") == day.isoformat()) & (
            ds.field("hour").is_null() | ds.field("hour").isin(hs)
        )
        expr = on_day if expr is None else expr | on_day
    if expr is None:
        raise ValueError("an empty time range has no partition")
    return expr


def unify(schemas: Sequence[pa.Schema]) -> pa.Schema:
    """One schema for files that may differ: the union of their columns in first-seen order.

    A column typed differently in different files (a feature all missing in one flush is
    float64 there, string elsewhere) takes the type every file's values cast to: its one
    non-null type, float64 for numbers of several types, else string.
    """
    types: dict[str, list[pa.DataType]] = {}
    for schema in schemas:
        for field in schema:
            if field.name not in _PARTITION_COLUMNS:
                types.setdefault(field.name, []).append(field.type)
    fields = []
    for name, seen in types.items():
        kinds = {t for t in seen if not pa.types.is_null(t)}
        if not kinds:
            typ: pa.DataType = pa.null()
        elif len(kinds) == 1:
            typ = kinds.pop()
        elif all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in kinds):
            typ = pa.float64()
        elif all(pa.types.is_timestamp(t) for t in kinds):
            typ = pa.timestamp("us", tz="UTC")
        else:
            typ = pa.string()
        fields.append(pa.field(name, typ))
    return pa.schema(fields)


def _plan(
    lake: Lake, hours: Sequence[tuple[dt.date, int]]
) -> tuple[list[ds.ParquetFileFragment], LogScan]:
    days = sorted({day for day, _ in hours})
    paths = _listing(lake, days)
    if not paths:
        raise PartitionNotFound(
            f"{SERVING_LOG} has no files between {days[0]} and {days[-1]} under {lake.root}"
        )
    found = ds.dataset(
        paths,
        filesystem=lake.fs,
        format="parquet",
        partitioning=_PARTITIONING,
        schema=_PARTITIONING.schema,  # no file opened to guess a schema; unify() reads footers
        partition_base_dir=lake.folder(SERVING_LOG),
    )
    fragments = list(found.get_fragments(filter=_partition_filter(hours)))
    if not fragments:
        raise PartitionNotFound(
            f"{SERVING_LOG} has no partition for the hours {hours[0]} to {hours[-1]} "
            f"under {lake.root}"
        )
    records: dict[str, dict[str, tuple[str, ...]]] = {}
    for frag in fragments:
        folder, name = posixpath.split(frag.path)
        if name.startswith(COMPACT_PREFIX):
            inputs = compacted_from(frag.physical_schema.metadata)
            if inputs is not None:
                records.setdefault(folder, {})[name] = inputs
    gone = {folder: superseded(r) for folder, r in records.items()}
    keep: list[ds.ParquetFileFragment] = []
    skipped: list[ds.ParquetFileFragment] = []
    for frag in fragments:
        folder, name = posixpath.split(frag.path)
        (skipped if name in gone.get(folder, ()) else keep).append(frag)
    legacy = len(
        [f for f in keep if not posixpath.basename(posixpath.dirname(f.path)).startswith("hour=")]
    )
    folders = [posixpath.split(f.path) for f in keep]
    unique = (
        legacy == 0
        and len({d for d, _ in folders}) == len(folders)
        and all(n.startswith(COMPACT_PREFIX) for _, n in folders)
    )
    scan = LogScan(tuple(f.path for f in keep), tuple(f.path for f in skipped), legacy, unique)
    return keep, scan


def sorted_unique(table: pa.Table, dedupe: bool = True) -> pa.Table:
    """Rows by request time then log time; with ``dedupe``, only the first of rows repeating a
    (``request_id``, ``order_id``) (a retried write; one request may carry many orders)."""
    order = [(c, "ascending") for c in (TIME, "logged_at") if c in table.column_names]
    if order:
        table = table.sort_by(order)
    keys = [c for c in _KEYS if c in table.column_names]
    if not dedupe or not keys or table.num_rows == 0:
        return table
    idx = table.select(keys).append_column("_row", pa.array(range(table.num_rows), pa.int64()))
    first = idx.group_by(keys, use_threads=False).aggregate([("_row", "min")])["_row_min"]
    return table.take(pc.take(first, pc.sort_indices(first)))


def read_table(
    lake: Lake, fragments: Sequence[ds.ParquetFileFragment], where: ds.Expression | None = None
) -> pa.Table:
    """The rows of some serving-log files (with ``where``: those that pass), one schema."""
    schema = unify([f.physical_schema for f in fragments])
    dataset = ds.FileSystemDataset(list(fragments), schema, ds.ParquetFileFormat(), lake.fs)
    return dataset.to_table(filter=where)


def scan_log(
    lake: Lake, start: dt.datetime, end: dt.datetime, dedupe: bool = False
) -> tuple[pd.DataFrame, LogScan]:
    """Serving-log rows with ``start <= requested_at < end``, oldest request first, and what
    was opened to read them (only the hour partitions of the range, and the day-only files of
    its days). Rows are as written (a retried write's copy too) unless ``dedupe``
    (:func:`sorted_unique`).

    Raises:
        PartitionNotFound: no serving-log file in the range's hours.
    """
    start, end = as_utc(start), as_utc(end)
    hours = hours_between(start, end)
    if not hours:
        raise PartitionNotFound(f"{SERVING_LOG}: the range {start} to {end} is empty")
    bounds = pa.timestamp("us", tz="UTC")
    where = (ds.field(TIME) >= pa.scalar(start, bounds)) & (ds.field(TIME) < pa.scalar(end, bounds))
    for attempt in range(_READ_ATTEMPTS):
        fragments, scan = _plan(lake, hours)
        try:
            table = read_table(lake, fragments, where)
            break
        except OSError:  # e.g. compacted and deleted since listed (its rows moved): list again
            if attempt == _READ_ATTEMPTS - 1:
                raise
    # Sort and drop repeats in Arrow: on a day of log, pandas took seconds for each.
    return sorted_unique(table, dedupe and not scan.unique).to_pandas(), scan


def read_log(
    lake: Lake, start: dt.datetime, end: dt.datetime, dedupe: bool = False
) -> pd.DataFrame:
    """:func:`scan_log`'s rows alone."""
    return scan_log(lake, start, end, dedupe)[0]


def day_bounds(start: dt.date, end: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """The instants ``[start 00:00, end + 1 day 00:00)`` UTC of the days ``start`` to ``end``."""
    midnight = dt.time(tzinfo=dt.UTC)
    return dt.datetime.combine(start, midnight), dt.datetime.combine(
        end + dt.timedelta(days=1), midnight
    )
