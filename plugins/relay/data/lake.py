"""The data lake: date-partitioned Parquet on local disk or S3.

Every dataset has a layer and a name (``raw/orders``, ``validated/orders``,
``features/courier_stats``, ``serving/predictions`` …) and one partition per day:
``{lake}/{layer}/{name}/date=YYYY-MM-DD/part-0.parquet``. The serving log is also partitioned
by hour inside the day (``date=YYYY-MM-DD/hour=HH/``; the ``hour`` arguments below).
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from relay.errors import PartitionNotFound
from relay.settings import Settings, get_settings


@dataclass(frozen=True)
class Dataset:
    """A named dataset in the lake."""

    layer: str
    name: str

    def __str__(self) -> str:
        return f"{self.layer}/{self.name}"


RAW_ORDERS = Dataset("raw", "orders")
VALIDATED_ORDERS = Dataset("validated", "orders")
COURIER_STATS = Dataset("features", "courier_stats")
MERCHANT_STATS = Dataset("features", "merchant_stats")
ZONE_STATS = Dataset("features", "zone_stats")
COURIER_LIVE = Dataset("features", "courier_live")
MERCHANT_LIVE = Dataset("features", "merchant_live")
ZONE_LIVE = Dataset("features", "zone_live")
SNAPSHOT_TABLES = (COURIER_STATS, MERCHANT_STATS, ZONE_STATS)
LIVE_TABLES = (COURIER_LIVE, MERCHANT_LIVE, ZONE_LIVE)
FEATURE_TABLES = (*SNAPSHOT_TABLES, *LIVE_TABLES)
"""One table per keyed feature view (:data:`relay.features.catalog.VIEWS`)."""
ORDER_EVENTS = Dataset("raw", "order_events")
TRAINING_SETS = Dataset("training", "eta")
SERVING_LOG = Dataset("serving", "predictions")
ACTUALS = Dataset("serving", "actuals")

PART_FILE = "part-0.parquet"


def filesystem(
    uri: str, settings: Settings | None = None, *, single_put: bool = False
) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it for a local path or an ``s3://`` URI.

    With ``single_put``, an S3 file smaller than pyarrow's first upload part (about 10 MB) is
    written with one PutObject instead of a three-request multipart upload (pyarrow's
    ``allow_delayed_open``); a missing bucket is then reported when the file is closed rather
    than when it is opened. Larger files still go multipart, which is atomic too.
    """
    if uri.startswith("s3://"):
        s = (settings or get_settings()).s3
        endpoint = s.endpoint_url
        kwargs: dict[str, object] = {"region": s.region}
        if single_put:
            kwargs["allow_delayed_open"] = True
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs.update(endpoint_override=host, scheme=scheme)
        # Keys come from the standard AWS variables (never from Relay's settings).
        if os.environ.get("AWS_ACCESS_KEY_ID"):
            kwargs.update(
                access_key=os.environ["AWS_ACCESS_KEY_ID"],
                secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
            )
        return pafs.S3FileSystem(**kwargs), uri.removeprefix("s3://").rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


class Lake:
    """Reads and writes dataset partitions under the configured lake root."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        root = self.settings.lake.uri
        if root is None:  # pragma: no cover, the settings validator fills it
            raise ValueError("lake URI not set")
        self.root = root.rstrip("/")
        self.fs, self._root_path = filesystem(self.root, self.settings)
        self._put_fs: pafs.FileSystem | None = None  # for append(); made on first use

    def uri(self, dataset: Dataset, date: dt.date | None = None) -> str:
        """The URI of a dataset's folder, or of one day's partition folder."""
        base = f"{self.root}/{dataset.layer}/{dataset.name}"
        return base if date is None else f"{base}/date={date.isoformat()}"

    def glob(self, dataset: Dataset) -> str:
        """A glob over every partition file of a dataset (DuckDB and Feast read it)."""
        return f"{self.uri(dataset)}/*/*.parquet"

    def _path(self, dataset: Dataset, date: dt.date, hour: int | None = None) -> str:
        day = f"{self._root_path}/{dataset.layer}/{dataset.name}/date={date.isoformat()}"
        return day if hour is None else f"{day}/hour={hour:02d}"

    def folder(self, dataset: Dataset, date: dt.date | None = None, hour: int | None = None) -> str:
        """The filesystem path (in :attr:`fs`) of a dataset, a day's partition or an hour's."""
        if date is None:
            return f"{self._root_path}/{dataset.layer}/{dataset.name}"
        return self._path(dataset, date, hour)

    def write(
        self, df: pd.DataFrame, dataset: Dataset, date: dt.date, *, only: bool = False
    ) -> str:
        """Replace one day's partition with ``df``; readers never see a half-written file.

        With ``only``, the partition's other files (``hour-HH.parquet`` of the hourly runs)
        are removed once it is written: ``df`` is the whole day.

        Returns the partition's file URI.
        """
        uri = self.write_part(df, dataset, date, PART_FILE)
        if only:
            for path in self.files(dataset, date):
                if not path.endswith(f"/{PART_FILE}"):
                    self.fs.delete_file(path)
        return uri

    def write_part(
        self,
        df: pd.DataFrame | pa.Table,
        dataset: Dataset,
        date: dt.date,
        name: str,
        *,
        hour: int | None = None,
        row_group_rows: int | None = None,
    ) -> str:
        """Write (or replace) one named file of a day's partition (or of an hour in it, with
        ``hour``); returns its URI. A table's schema metadata is kept in the file."""
        folder = self._path(dataset, date, hour)
        self._write_file(df, folder, name, self.fs, row_group_rows)
        return f"{self.root}/{folder.removeprefix(self._root_path + '/')}/{name}"

    @staticmethod
    def _write_file(
        df: pd.DataFrame | pa.Table,
        folder: str,
        name: str,
        fs: pafs.FileSystem,
        row_group_rows: int | None = None,
    ) -> None:
        """Write one Parquet file so readers never see it half-written: a temp file and
        ``os.replace`` locally, a single object PUT (or a multipart upload, atomic on
        completion) on S3."""
        table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
        # DuckDB (Feast's offline store) rejects nanosecond tz-aware timestamps.
        opts: dict[str, Any] = {"coerce_timestamps": "us", "allow_truncated_timestamps": True}
        if row_group_rows is not None:
            opts["row_group_size"] = row_group_rows
        if isinstance(fs, pafs.LocalFileSystem):
            fs.create_dir(folder, recursive=True)
            tmp = f"{folder}/.{uuid.uuid4().hex}.tmp"
            pq.write_table(table, tmp, filesystem=fs, **opts)
            os.replace(tmp, f"{folder}/{name}")
        else:
            pq.write_table(table, f"{folder}/{name}", filesystem=fs, **opts)

    def append(
        self, df: pd.DataFrame, dataset: Dataset, date: dt.date, hour: int | None = None
    ) -> str:
        """Add ``df`` to one day's partition (or to an hour in it, with ``hour``) as a new file;
        existing files are left alone.

        The file is ``part-<UTC timestamp, microseconds>-<uuid>.parquet``, so names sort by
        write time and concurrent writers never collide. Readers never see a half-written
        file (a local temp file and ``os.replace``; one PUT on S3). Read every file of a
        partition with :meth:`read_all` (:meth:`read` reads only ``part-0.parquet``).

        Returns the new file's URI.
        """
        folder = self._path(dataset, date, hour)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"part-{stamp}-{uuid.uuid4().hex}.parquet"
        put_fs = self.fs
        if not isinstance(self.fs, pafs.LocalFileSystem):
            # One PutObject (a file under ~10 MB): atomic, no multipart upload left over.
            if self._put_fs is None:
                self._put_fs, _ = filesystem(self.root, self.settings, single_put=True)
            put_fs = self._put_fs
        self._write_file(df, folder, name, put_fs)
        return f"{self.root}/{folder.removeprefix(self._root_path + '/')}/{name}"

    def files(self, dataset: Dataset, date: dt.date, hour: int | None = None) -> list[str]:
        """The Parquet files of one day's partition, or of one hour in it with ``hour``
        (filesystem paths), in name order; a day's hour folders are not descended into.

        Temp files of writes in progress (``.*.tmp``) are never listed.
        """
        selector = pafs.FileSelector(self._path(dataset, date, hour), allow_not_found=True)
        return sorted(
            info.path
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File
            and info.base_name.endswith(".parquet")
            and not info.base_name.startswith(".")
        )

    def read_all(
        self, dataset: Dataset, start: dt.date, end: dt.date, columns: list[str] | None = None
    ) -> pd.DataFrame:
        """Every Parquet file of every partition with ``start <= date <= end``, concatenated.

        Files may differ in schema (a column added later is missing from older files); the
        frame has the union of their columns, missing values as nulls. With ``columns``, only
        those columns are returned (a column no file has raises ``KeyError``).
        """
        frames = []
        for day in date_range(start, end):
            for path in self.files(dataset, day):
                with self.fs.open_input_file(path) as f:
                    pf = pq.ParquetFile(f)
                    names = pf.schema_arrow.names
                    wanted = None if columns is None else [c for c in columns if c in names]
                    frames.append(pf.read(columns=wanted).to_pandas())
        if not frames:
            raise PartitionNotFound(
                f"{dataset} has no files between {start} and {end} under {self.root}"
            )
        frames = [f for f in frames if len(f)] or frames[:1]
        out = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        if columns is not None:
            absent = [c for c in columns if c not in out.columns]
            if absent:
                raise KeyError(f"{dataset} has no column(s) {absent} between {start} and {end}")
            out = out[columns]
        return out.reset_index(drop=True)

    def exists(self, dataset: Dataset, date: dt.date) -> bool:
        info = self.fs.get_file_info(f"{self._path(dataset, date)}/{PART_FILE}")
        return bool(info.type == pafs.FileType.File)

    def read(
        self, dataset: Dataset, date: dt.date, columns: list[str] | None = None
    ) -> pd.DataFrame:
        """One day's partition as a DataFrame."""
        if not self.exists(dataset, date):
            raise PartitionNotFound(
                f"{dataset} has no partition for {date} under {self.root}; "
                f"run the step that writes it first (e.g. `relay generate --date {date}`)."
            )
        path = f"{self._path(dataset, date)}/{PART_FILE}"
        return pq.read_table(path, filesystem=self.fs, columns=columns).to_pandas()

    def read_range(
        self, dataset: Dataset, start: dt.date, end: dt.date, columns: list[str] | None = None
    ) -> pd.DataFrame:
        """Every existing partition with ``start <= date <= end``, concatenated."""
        frames = [
            self.read(dataset, day, columns)
            for day in date_range(start, end)
            if self.exists(dataset, day)
        ]
        if not frames:
            raise PartitionNotFound(f"{dataset} has no partition between {start} and {end}")
        return pd.concat(frames, ignore_index=True)

    def partitions(self, dataset: Dataset) -> list[dt.date]:
        """The days for which a dataset has a partition, in order."""
        base = f"{self._root_path}/{dataset.layer}/{dataset.name}"
        selector = pafs.FileSelector(base, allow_not_found=True)
        days = []
        for info in self.fs.get_file_info(selector):
            name = info.base_name
            if info.type == pafs.FileType.Directory and name.startswith("date="):
                days.append(dt.date.fromisoformat(name.removeprefix("date=")))
        return sorted(days)


def date_range(start: dt.date, end: dt.date) -> list[dt.date]:
    """Days from ``start`` to ``end`` inclusive."""
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
