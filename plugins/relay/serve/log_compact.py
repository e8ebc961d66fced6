"""Compacting the serving log: an hour's small files become one Parquet file sorted by time.

Writers add one small file per flush per replica (up to 3,600 an hour each); the hourly
monitoring run compacts the hours before its window's end (:func:`compact_before`, the
``compact_serving_log`` task of ``dags/eta_monitoring.py``, or ``relay serve compact``), so a
24-hour window is about 24 files. One hour (:func:`compact_hour`):

1. list the hour's files; read the record of each compacted file there
   (:data:`relay.serve.log_store.COMPACTED_FROM`); delete the files a compacted file already
   holds (what an interrupted run left);
2. read the remaining files, sort by ``requested_at`` then ``logged_at``, drop repeated
   (``request_id``, ``order_id``) rows (a retried write), and write them as one
   ``compact-<digest of the inputs' names>.parquet`` whose footer names its inputs: one
   atomic write (temp file and rename locally, one PUT or multipart upload on S3);
3. delete the inputs.

Readers skip a file named by a compacted file beside it (:mod:`relay.serve.log_store`), so at
every point of this sequence each row is read once; a crash anywhere leaves a state the next
run finishes. Run one compaction per hour at a time (the DAG has ``max_active_runs=1``): two at
once never lose a row, but may leave a row in two files until the next run merges them (readers
drop the repeat by ``request_id``, ``order_id`` meanwhile).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import posixpath
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow.dataset as ds
import pyarrow.parquet as pq

from relay.clock import as_utc
from relay.data.lake import SERVING_LOG, Lake
from relay.serve.log_store import (
    COMPACT_PREFIX,
    COMPACTED_FROM,
    compacted_from,
    hours_between,
    read_table,
    sorted_unique,
    superseded,
)

log = logging.getLogger(__name__)

_DELETE_THREADS = 8  # S3 deletes one object per request: overlap their round trips


@dataclass(frozen=True)
class Compaction:
    """What compacting one hour did.

    Attributes:
        date: the hour's UTC date.
        hour: the hour (0-23).
        inputs: files merged into the compacted file (0: nothing to merge).
        rows: rows in the compacted file (repeats dropped).
        removed: files deleted (inputs, and leftovers of an interrupted run).
        uri: the compacted file; None when nothing was merged.
    """

    date: dt.date
    hour: int
    inputs: int
    rows: int
    removed: int
    uri: str | None


def compacted_name(inputs: Sequence[str]) -> str:
    """The compacted file's name for a set of input names: the same set, the same name, so a
    re-run after a crash rewrites the same file rather than adding a second copy."""
    digest = hashlib.sha256("\n".join(sorted(inputs)).encode()).hexdigest()[:24]
    return f"{COMPACT_PREFIX}{digest}.parquet"


def plan_hour(
    names: Sequence[str], records: Mapping[str, Sequence[str]], min_files: int
) -> tuple[list[str], list[str]]:
    """Which files of an hour folder to merge, and which to delete first.

    Args:
        names: the folder's Parquet files.
        records: each compacted file of the folder with the names it holds.
        min_files: merge only when at least this many files are live.

    Returns:
        ``(merge, leftovers)``: the live files to merge (none below ``min_files``) and the
        files a compacted file present already holds.
    """
    gone = superseded(records)
    live = sorted(n for n in names if n not in gone)
    return (live if len(live) >= max(min_files, 2) else []), sorted(gone & set(names))


def _delete(lake: Lake, folder: str, names: Sequence[str]) -> int:
    def one(name: str) -> int:
        try:
            lake.fs.delete_file(f"{folder}/{name}")
        except FileNotFoundError:  # another run deleted it first
            return 0
        return 1

    if not names:
        return 0
    with ThreadPoolExecutor(min(_DELETE_THREADS, len(names))) as pool:
        return sum(pool.map(one, names))


def compact_hour(
    lake: Lake,
    date: dt.date,
    hour: int,
    *,
    min_files: int | None = None,
    row_group_rows: int | None = None,
) -> Compaction:
    """Merge one hour's serving-log files into one file sorted by time; safe to interrupt and
    to re-run (see the module's docstring).

    Args:
        lake: the lake of the serving log.
        date: the hour's UTC date.
        hour: the hour, 0-23.
        min_files: merge once the hour has this many live files
            (``RELAY_SERVING__LOG_COMPACT_MIN_FILES`` by default).
        row_group_rows: rows per Parquet row group of the compacted file
            (``RELAY_SERVING__LOG_COMPACT_ROW_GROUP_ROWS`` by default).
    """
    s = lake.settings.serving
    min_files = s.log_compact_min_files if min_files is None else min_files
    row_group_rows = s.log_compact_row_group_rows if row_group_rows is None else row_group_rows
    folder = lake.folder(SERVING_LOG, date, hour)
    names = [posixpath.basename(p) for p in lake.files(SERVING_LOG, date, hour)]
    records = {}
    for name in names:
        if name.startswith(COMPACT_PREFIX):
            inputs = compacted_from(pq.read_schema(f"{folder}/{name}", filesystem=lake.fs).metadata)
            if inputs is not None:
                records[name] = inputs
    merge, leftovers = plan_hour(names, records, min_files)
    removed = _delete(lake, folder, leftovers)
    if not merge:
        return Compaction(date, hour, 0, 0, removed, None)
    fmt = ds.ParquetFileFormat()
    fragments = [fmt.make_fragment(f"{folder}/{n}", filesystem=lake.fs) for n in merge]
    table = sorted_unique(read_table(lake, fragments))
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), COMPACTED_FROM: json.dumps(merge).encode()}
    )
    uri = lake.write_part(
        table, SERVING_LOG, date, compacted_name(merge), hour=hour, row_group_rows=row_group_rows
    )
    # Only now: until the compacted file exists its inputs are the only copy of their rows.
    removed += _delete(lake, folder, merge)
    log.info(
        "compacted %s hour %02d: %d files, %d rows -> %s", date, hour, len(merge), len(table), uri
    )
    return Compaction(date, hour, len(merge), table.num_rows, removed, uri)


def hours_before(end: dt.datetime, hours: int) -> list[tuple[dt.date, int]]:
    """The ``hours`` whole UTC hours that ended by ``end`` (the hour under way excluded)."""
    top = as_utc(end).replace(minute=0, second=0, microsecond=0)
    return hours_between(top - dt.timedelta(hours=hours), top)


def compact_before(
    lake: Lake, end: dt.datetime, lookback_hours: int | None = None
) -> list[Compaction]:
    """Compact each whole hour of the ``lookback_hours`` before ``end``
    (``RELAY_SERVING__LOG_COMPACT_LOOKBACK_HOURS`` by default): the last hour, and earlier
    hours again when late files landed there or a run was missed.

    Args:
        lake: the lake of the serving log.
        end: an instant; the hour it falls in is still being written and is left alone.
        lookback_hours: how many hours back to look.
    """
    n = lookback_hours or lake.settings.serving.log_compact_lookback_hours
    return [compact_hour(lake, day, hour) for day, hour in hours_before(end, n)]
