"""Feast operations: apply the repo, write feature tables, materialize, build training sets,
read online features.

The store's config is built from Relay's settings (SQLite online store in ``local``, Redis in
``prod``; DuckDB offline store over the lake's Parquet), so ``feature_store.yaml`` is only for
people who use the ``feast`` CLI.
"""

from __future__ import annotations

import atexit
import datetime as dt
import functools
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pandas as pd

from relay.data.lake import (
    FEATURE_TABLES,
    SNAPSHOT_TABLES,
    TRAINING_SETS,
    VALIDATED_ORDERS,
    Dataset,
    Lake,
)
from relay.errors import FeatureStoreError, PartitionNotFound
from relay.features.catalog import VIEWS
from relay.features.direct import DirectRead
from relay.features.duckdb_s3 import enable_s3
from relay.features.feast_registry import registry_config, removed_objects
from relay.features.frames import entity_frame, feature_tables
from relay.features.row_cache import bump
from relay.settings import Settings, get_settings

if TYPE_CHECKING:
    from feast import FeatureStore, RepoConfig

log = logging.getLogger(__name__)

ENTITY_KEYS = tuple(v.entity for v in VIEWS if v.entity is not None)
REQUEST_FIELDS = ("distance_km", "hour", "weekday")


def repo_config(settings: Settings | None = None, *, read_timeouts: bool = False) -> RepoConfig:
    """Feast's RepoConfig for the configured profile.

    ``read_timeouts``: a Redis client that gives up after ``RELAY_FEAST__ONLINE_CONNECT_TIMEOUT_S``
    and ``__ONLINE_READ_TIMEOUT_S`` without retrying (serving's reads, which answer with defaults
    instead); materialization's writes keep redis-py's defaults.
    """
    from feast import RepoConfig
    from feast.infra.offline_stores.duckdb import DuckDBOfflineStoreConfig
    from feast.infra.online_stores.redis import RedisOnlineStoreConfig
    from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig

    s = settings or get_settings()
    f = s.feast
    assert f.sqlite_path and f.repo_path  # filled by the settings validator
    online: Any
    if f.online_store == "redis":
        connection = f.redis_connection
        if read_timeouts:
            connection = with_timeouts(
                connection, f.online_connect_timeout_s, f.online_read_timeout_s
            )
        online = RedisOnlineStoreConfig(connection_string=connection)
    else:
        f.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        online = SqliteOnlineStoreConfig(path=str(f.sqlite_path))
    return RepoConfig(
        project=f.project,
        provider="local",
        registry=registry_config(f),
        online_store=online,
        offline_store=DuckDBOfflineStoreConfig(),
        entity_key_serialization_version=3,
        repo_path=f.repo_path,
    )


def with_timeouts(connection: str, connect_s: float, read_s: float) -> str:
    """A Feast Redis connection string whose client times out and never retries (redis-py 7
    retries three times with up to 10 s of backoff by default). Options the string sets itself
    are kept."""
    options = {p.split("=", 1)[0] for p in connection.split(",") if "=" in p}
    wanted = {"socket_connect_timeout": connect_s, "socket_timeout": read_s, "retry": "null"}
    extra = [f"{k}={v}" for k, v in wanted.items() if k not in options]
    return ",".join([connection, *extra])


@functools.cache
def _release_duckdb_at_exit() -> None:
    atexit.register(_release_duckdb)


def _release_duckdb() -> None:
    # Feast's DuckDB offline store keeps ibis's default connection open; closed during interpreter
    # teardown it makes nanobind print pages of "leaked instance" reports.
    import ibis

    backend = ibis.options.default_backend
    if backend is not None:
        backend.disconnect()
        ibis.options.default_backend = None


def get_store(
    settings: Settings | None = None, *, read_timeouts: bool = False, offline: bool = False
) -> FeatureStore:
    """A FeatureStore on the configured registry and stores (see :func:`repo_config`).
    ``offline``: it reads the lake (on S3: DuckDB gets httpfs and the S3 secret); online readers
    and pushers (serving, the events API) never do, and the secret stays out of them."""
    from feast import FeatureStore

    s = settings or get_settings()
    _release_duckdb_at_exit()
    if offline and str(s.lake.uri).startswith("s3://"):
        # Feast's offline reads of the lake go through ibis's default DuckDB connection.
        enable_s3(s.s3)
    cfg = repo_config(s, read_timeouts=read_timeouts)
    return FeatureStore(config=cfg, repo_path=str(cfg.repo_path))


REPO_PACKAGE = "feature_repo"
"""The name ``feature_repo/`` is imported under; its ``definitions`` module builds the objects."""


def load_definitions(settings: Settings | None = None) -> list[Any]:
    """The Feast objects of ``feature_repo/`` (entities, sources, views, services), built over
    the configured lake: each feature table's partition files and the S3 endpoint."""
    s = settings or get_settings()
    if s.feast.repo_path is None:  # pragma: no cover, the settings validator fills it
        raise FeatureStoreError("RELAY_FEAST__REPO_PATH is not set")
    lake = Lake(s)
    paths = {ds.name: lake.glob(ds) for ds in FEATURE_TABLES}
    module = _repo_module(s.feast.repo_path, "definitions")
    objects: list[Any] = module.definitions(paths, s.s3.endpoint_url)
    return objects


def _repo_module(repo: Path, name: str) -> ModuleType:
    """``repo/<name>.py``, imported as a module of the package at ``repo`` (its files import
    each other relatively), without putting ``repo`` on ``sys.path``."""
    package = sys.modules.get(REPO_PACKAGE)
    if package is None or Path(package.__path__[0]).resolve() != repo.resolve():
        for loaded in [m for m in sys.modules if m.split(".")[0] == REPO_PACKAGE]:
            del sys.modules[loaded]  # another folder's package and modules
        spec = importlib.util.spec_from_file_location(
            REPO_PACKAGE, repo / "__init__.py", submodule_search_locations=[str(repo)]
        )
        if spec is None or spec.loader is None:
            raise FeatureStoreError(f"{repo} holds no feature repo (no __init__.py)")
        package = importlib.util.module_from_spec(spec)
        sys.modules[REPO_PACKAGE] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"{REPO_PACKAGE}.{name}")


def apply(settings: Settings | None = None, objects: Sequence[Any] | None = None) -> list[str]:
    """Register entities, sources, views and services (what ``feast apply`` does), and delete
    the registered ones they no longer include, with a deleted view's online table.

    ``objects``: the Feast objects; default :func:`load_definitions`. Returns the names applied.
    """
    objects = list(objects) if objects is not None else load_definitions(settings)
    store = get_store(settings, offline=True)
    gone = removed_objects(store, objects)
    if gone:
        log.info("apply deletes %s", ", ".join(sorted(o.name for o in gone)))
    store.apply(objects, objects_to_delete=gone, partial=False)
    return sorted(o.name for o in objects)


def write_feature_tables(date: dt.date, settings: Settings | None = None) -> dict[str, str]:
    """Compute one day's feature tables from validated orders and land them in the lake: the
    hourly snapshots and the live views' rows (one per order, as the events API computes them).

    Reads the validated partition of ``date`` and, when present, of the day before (so that
    24-hour windows at midnight are complete). Idempotent: re-running replaces the partitions.

    Returns:
        Feature table name -> partition URI.
    """
    lake = Lake(settings)
    if not lake.exists(VALIDATED_ORDERS, date):
        raise PartitionNotFound(
            f"no validated orders for {date}: run `relay validate --date {date}` first"
        )
    orders = lake.read_range(VALIDATED_ORDERS, date - dt.timedelta(days=1), date)
    start = pd.Timestamp(date, tz="UTC")
    end = start + pd.Timedelta(days=1)
    tables = feature_tables(orders, start, end)
    written = {}
    for ds in FEATURE_TABLES:
        # The whole day replaces the hourly runs' snapshots of it (relay.flows.eta_features).
        written[ds.name] = lake.write(tables[ds.name], ds, date, only=True)
    return written


def materialize(
    end: dt.datetime,
    start: dt.datetime | None = None,
    settings: Settings | None = None,
    tables: Sequence[Dataset] = FEATURE_TABLES,
) -> dict[str, tuple[dt.datetime | None, dt.datetime]]:
    """Load the latest feature values into the online store.

    With ``start``, materializes ``[start, end]`` (a backfill). Without it, each view continues
    from where its last materialization ended; a view never materialized is backfilled from its
    earliest lake partition, because Feast's own first incremental run would silently skip rows
    older than now − TTL.

    ``tables``: the views to materialize (default: every keyed view).

    Returns:
        View name -> (start, end) materialized.
    """
    store = get_store(settings, offline=True)
    lake = Lake(settings)
    done: dict[str, tuple[dt.datetime | None, dt.datetime]] = {}
    for ds in tables:
        view = _feature_view(store, ds.name)
        begin = start or view.most_recent_end_time
        if begin is None:
            days = lake.partitions(ds)
            if not days:
                raise PartitionNotFound(f"{ds} has no partitions to materialize")
            begin = dt.datetime.combine(days[0], dt.time(), tzinfo=dt.UTC)
        if begin >= end:
            done[ds.name] = (begin, end)
            continue
        try:
            store.materialize(start_date=begin, end_date=end, feature_views=[ds.name])
        finally:  # the rows written so far, too: serving's row caches drop the view
            bump(store, [ds.name])
        done[ds.name] = (begin, end)
    return done


def clear_online(tables: Sequence[Dataset], settings: Settings | None = None) -> None:
    """Remove every online row of these views (the views stay registered), so that a
    materialization rebuilds their state as of its end: how a past day is replayed from its
    start (:mod:`relay.sim.lifecycle`). Until then their reads answer missing values."""
    store = get_store(settings, offline=True)
    online = store._get_provider().online_store
    views = [_feature_view(store, ds.name) for ds in tables]
    if hasattr(online, "delete_table"):  # Redis: every entity's hash fields of the view
        for view in views:
            online.delete_table(store.config, view)
        bump(store, [v.name for v in views])
        return
    # SQLite and the others: drop the view's table, then create it empty.
    online.update(store.config, views, [], [], [], partial=True)
    online.update(store.config, [], views, [], [], partial=True)


def snapshot_ages(store: FeatureStore, now: dt.datetime | None = None) -> dict[str, float | None]:
    """Seconds from the end of each snapshot view's last materialization (its newest value
    online) to ``now``; None for a view never materialized."""
    at = now or dt.datetime.now(dt.UTC)
    ages: dict[str, float | None] = {}
    for ds in SNAPSHOT_TABLES:
        end = _feature_view(store, ds.name).most_recent_end_time
        if end is not None and end.tzinfo is None:
            end = end.replace(tzinfo=dt.UTC)
        ages[ds.name] = None if end is None else (at - end).total_seconds()
    return ages


def _feature_view(store: FeatureStore, name: str) -> Any:
    try:
        return store.get_feature_view(name)
    except Exception as exc:  # feast raises its own not-found types per registry
        raise FeatureStoreError(
            f"feature view {name!r} is not registered: run `relay features apply`"
        ) from exc


def training_frame(orders: pd.DataFrame, settings: Settings | None = None) -> pd.DataFrame:
    """Point-in-time-correct features for ``orders``: each row sees only values stamped at or
    before the order's creation. Rows come back in the orders' order."""
    store = get_store(settings, offline=True)
    service = store.get_feature_service((settings or get_settings()).feast.feature_service)
    entities = entity_frame(orders)
    entities["_row"] = range(len(entities))
    job = store.get_historical_features(entity_df=entities, features=service)
    df = job.to_df()
    return df.sort_values("_row").drop(columns="_row").reset_index(drop=True)


def build_training_set(
    start: dt.date, end: dt.date, settings: Settings | None = None
) -> tuple[str, int]:
    """Training set for every validated order created from ``start`` to ``end`` (inclusive),
    written as Parquet in the lake. Returns (URI, rows)."""
    lake = Lake(settings)
    orders = lake.read_range(VALIDATED_ORDERS, start, end)
    df = training_frame(orders, settings)
    name = Dataset(TRAINING_SETS.layer, f"{TRAINING_SETS.name}_{start:%Y%m%d}_{end:%Y%m%d}")
    return lake.write(df, name, end), len(df)


class OnlineFeatures:
    """Reads a feature service's latest values for batches of orders.

    Holds the store and the resolved feature service: looking the service up in the registry
    on every call costs more than the online read itself.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        service: str | None = None,
        *,
        read_timeouts: bool = False,
    ) -> None:
        """Open the store and resolve the service.

        Args:
            settings: Relay's settings; :func:`get_settings` when None.
            service: The feature service to read, e.g. the one a model version was trained on
                (``lineage.feature_service``); None: the configured one
                (``RELAY_FEAST__FEATURE_SERVICE``).
            read_timeouts: serving's: reads give up after the online timeouts (:attr:`bounded`).
        """
        s = settings or get_settings()
        self.store = get_store(s, read_timeouts=read_timeouts)
        self.service = self.store.get_feature_service(service or s.feast.feature_service)
        # Resolved now, from the registry: the defaults must not need the online store.
        self._stored: list[str] = []
        self._on_demand: list[Any] = []
        on_demand = {v.name for v in self.store.list_on_demand_feature_views()}
        for projection in self.service.feature_view_projections:
            if projection.name in on_demand:
                self._on_demand.append(self.store.get_on_demand_feature_view(projection.name))
            else:
                self._stored.extend(f.name for f in projection.features)
        self._columns: tuple[str, ...] | None = None
        #: After each read, per view, the age (s) of its oldest row found (direct reads only).
        self.row_ages: dict[str, float] = {}
        args = (self.store, self.service, ENTITY_KEYS, self._on_demand, REQUEST_FIELDS, s.feast)
        self._direct: DirectRead | None = None
        if s.feast.direct_read:
            self._direct = DirectRead.configured(*args, bounded=read_timeouts)
        #: read() raises TimeoutError past the online read timeout itself (DirectRead.bounded)
        self.bounded = self._direct is not None and self._direct.bounded

    def read(self, orders: list[dict[str, Any]], sdk: bool = False) -> dict[str, list[Any]]:
        """Feature columns for orders given as request rows (keys and request fields), through
        :mod:`relay.features.direct` unless ``RELAY_FEAST__DIRECT_READ`` is off or ``sdk``."""
        rows = [{k: r[k] for k in (*ENTITY_KEYS, *REQUEST_FIELDS)} for r in orders]
        if self._direct is not None and not sdk:
            out = self._direct.read(rows)
            self.row_ages = self._direct.row_ages
        else:
            resp = self.store.get_online_features(features=self.service, entity_rows=rows)
            out = dict(resp.to_dict())
            self.row_ages = {}
        self._columns = tuple(out)
        return out

    def defaults(self, orders: list[dict[str, Any]]) -> dict[str, list[Any]]:
        """What :meth:`read` answers for entities the store does not know, without asking it:
        the keys and request fields from the rows, None for every stored feature (the model
        uses its defaults), the on-demand features computed here as Feast would."""
        n = len(orders)
        out: dict[str, list[Any]] = {k: [r[k] for r in orders] for k in ENTITY_KEYS}
        out |= {k: [r[k] for r in orders] for k in REQUEST_FIELDS}
        out |= {name: [None] * n for name in self._stored}
        for view in self._on_demand:
            inputs = {k: [r[k] for r in orders] for k in REQUEST_FIELDS}
            out |= {k: list(v) for k, v in view.transform_dict(inputs).items()}
        if self._columns is not None:  # the same columns as the store's answers
            return {k: out.get(k, [None] * n) for k in self._columns}
        return out

    def read_frame(self, orders: pd.DataFrame | list[dict[str, Any]]) -> pd.DataFrame:
        """Like :meth:`read`, for a frame of orders (``created_at`` gives hour and weekday)."""
        if isinstance(orders, pd.DataFrame):
            frame = orders if "hour" in orders else entity_frame(orders)
            rows: list[dict[str, Any]] = frame.to_dict("records")  # type: ignore[assignment]
        else:
            rows = orders
        return pd.DataFrame(self.read(rows))


def online_features(
    orders: pd.DataFrame | list[dict[str, Any]], settings: Settings | None = None
) -> pd.DataFrame:
    """Latest feature values for a batch of orders (keys, ``distance_km``, and ``hour`` and
    ``weekday`` or ``created_at``); unknown ids are nulls. Repeated reads: an OnlineFeatures."""
    return OnlineFeatures(settings).read_frame(orders)
