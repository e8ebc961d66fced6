"""Serving's online read without the Feast SDK's request machinery, from Feast's own definitions.

``FeatureStore.get_online_features`` builds, validates and fans out protobuf responses around
the store's read; for 32 orders that costs more than the read itself (README, Benchmarks). A
:class:`DirectRead` keeps what is the same on every call, resolved once from the feature
service (its views, their join keys and features, the on-demand views), and per call asks the
store's own ``online_read`` for each view's distinct entities (the keys Feast wrote them under,
so a push or a materialization is seen at once), then converts the values as Feast does. The
answer is :meth:`relay.features.store.OnlineFeatures.read`'s: the same columns and values, a
test holds them equal on SQLite and Redis. The rows' event timestamps, which the store returns
with them, give each read's feature freshness (:attr:`DirectRead.row_ages`).

On Redis the stored views are read in one round trip instead of one per view, with Feast's
keys and fields (:mod:`relay.features.redis_read`), on SQLite in one query
(:mod:`relay.features.sqlite_read`), either through an in-process row cache bounded by
freshness (:mod:`relay.features.row_cache`); the other stores keep ``online_read``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from relay.features.redis_read import PipelinedRedisRead
from relay.features.row_cache import RowCache
from relay.features.sqlite_read import SqliteRead

if TYPE_CHECKING:  # pragma: no cover, typing only
    from relay.settings import FeastSettings


@dataclass(frozen=True)
class _View:
    """One stored view of the service: its Feast object, join keys and requested features."""

    table: Any
    join_keys: tuple[str, ...]
    features: tuple[str, ...]


class DirectRead:
    """A feature service's online values for request rows, read view by view.

    Args:
        store: the Feast store (``feast.FeatureStore``) whose online store is read.
        service: the resolved feature service.
        keys: the request rows' fields answered as they are (the entity keys, as Feast does).
        on_demand: the service's on-demand views (computed here from the request fields).
        request_fields: the request fields the on-demand views take.
        pipelined: on Redis, every view in one round trip (:mod:`relay.features.redis_read`);
            on SQLite, in one query (:mod:`relay.features.sqlite_read`).
        cache: a row cache for those reads (:mod:`relay.features.row_cache`; ignored on a
            Redis Cluster, where the versions are not read before the rows).
        memo_max: how many entity keys and decoded values the pipelined read remembers.

    Attributes:
        row_ages: after each :meth:`read`, per view, the age in seconds of the oldest row it
            found (the stalest value the batch is answered with); a view none of whose entities
            is stored is left out. Read it in the thread that read.
        pipelined: the :class:`~relay.features.redis_read.PipelinedRedisRead` or
            :class:`~relay.features.sqlite_read.SqliteRead` in use, or None.
    """

    def __init__(
        self,
        store: Any,
        service: Any,
        keys: Sequence[str],
        on_demand: Sequence[Any],
        request_fields: Sequence[str],
        *,
        pipelined: bool = True,
        cache: RowCache | None = None,
        memo_max: int = 100_000,
        sqlite_timeout_s: float | None = None,
    ) -> None:
        odfv = {v.name for v in on_demand}
        self._config = store.config
        self._online = store._get_provider().online_store  # the store Feast itself reads
        self._keys = tuple(keys)
        self._on_demand = tuple(on_demand)
        self._request_fields = tuple(request_fields)
        tables = {
            p.name: store.get_feature_view(p.name)
            for p in service.feature_view_projections
            if p.name not in odfv
        }
        self._views = tuple(
            _View(
                tables[p.name], tuple(tables[p.name].join_keys), tuple(f.name for f in p.features)
            )
            for p in service.feature_view_projections
            if p.name in tables
        )
        self.row_ages: dict[str, float] = {}
        redis = _redis(self._online, self._config)
        views = [(v.table, v.features) for v in self._views]
        self.pipelined: PipelinedRedisRead | SqliteRead | None = None
        if pipelined and redis is not None:
            self.pipelined = PipelinedRedisRead(
                store, views, cache if redis == "server" else None, memo_max
            )
        elif pipelined and _sqlite(self._online):
            self.pipelined = SqliteRead(store, views, cache, memo_max, sqlite_timeout_s)

    @classmethod
    def configured(
        cls,
        store: Any,
        service: Any,
        keys: Sequence[str],
        on_demand: Sequence[Any],
        request_fields: Sequence[str],
        settings: FeastSettings,
        bounded: bool = False,
    ) -> DirectRead:
        """A read as the settings have it (``RELAY_FEAST__PIPELINED_READ``,
        ``__ROW_CACHE_TTL_S``, ``__ROW_CACHE_MAX_ROWS``); ``bounded``: a SQLite read ends
        within ``__ONLINE_READ_TIMEOUT_S`` by itself (serving's, with ``__ONLINE_READ_INLINE``)."""
        f = settings
        cache = RowCache(f.row_cache_ttl_s, f.row_cache_max_rows) if f.row_cache_ttl_s else None
        return cls(
            store,
            service,
            keys,
            on_demand,
            request_fields,
            pipelined=f.pipelined_read,
            cache=cache,
            memo_max=f.row_cache_max_rows,
            sqlite_timeout_s=f.online_read_timeout_s if bounded and f.online_read_inline else None,
        )

    @property
    def bounded(self) -> bool:
        """Whether every read ends within the online read timeout by itself (a bounded SQLite
        read; the on-demand views after it are in-process work)."""
        return isinstance(self.pipelined, SqliteRead) and self.pipelined.bounded

    def read(self, rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
        """Feature columns for ``rows`` (request rows: the keys and the request fields)."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values

        n = len(rows)
        now = dt.datetime.now(dt.UTC)
        ages: dict[str, float] = {}
        out: dict[str, list[Any]] = {k: [r[k] for r in rows] for k in self._keys}
        if self.pipelined is not None:
            stored, ages = self.pipelined.read(rows, now)
            out |= stored
        for view in self._views if self.pipelined is None else ():
            # Each distinct entity once, as Feast does: 32 orders of one zone are one read.
            where: dict[tuple[Any, ...], int] = {}
            at = [where.setdefault(tuple(r[k] for k in view.join_keys), len(where)) for r in rows]
            # Typed from the values, as Feast types entity rows (a str is a string_val).
            columns = [
                python_values_to_proto_values([key[j] for key in where])
                for j in range(len(view.join_keys))
            ]
            entity_keys = [
                EntityKey(join_keys=list(view.join_keys), entity_values=[c[i] for c in columns])
                for i in range(len(where))
            ]
            read = self._online.online_read(
                self._config, view.table, entity_keys, list(view.features)
            )
            found = [values or {} for _, values in read]  # None: an unknown entity
            # Redis answers an entity it lacks with empty values stamped at the epoch.
            stamps = [ts for ts, values in read if values and ts is not None and ts.timestamp()]
            if stamps:
                oldest = min(t if t.tzinfo else t.replace(tzinfo=dt.UTC) for t in stamps)
                ages[view.table.name] = max(0.0, (now - oldest).total_seconds())
            for name in view.features:
                column = [
                    feast_value_type_to_python_type(v[name]) if name in v else None for v in found
                ]
                out[name] = [column[i] for i in at] if n else []
        for odfv in self._on_demand:
            inputs = {k: [r[k] for r in rows] for k in self._request_fields}
            outputs = {f.name for f in odfv.features}  # transform_dict echoes its inputs
            out |= {k: list(v) for k, v in odfv.transform_dict(inputs).items() if k in outputs}
        self.row_ages = ages
        return out


def _sqlite(online: Any) -> bool:
    """Feast's own SQLite online store (a subclass may keep its rows elsewhere)."""
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    return type(online) is SqliteOnlineStore


def _redis(online: Any, config: Any) -> str | None:
    """``server`` for Feast's Redis store on one server (or a Sentinel's master), ``cluster``
    on a Redis Cluster, None for another store. The row cache needs the versions read before
    the rows, which a cluster's pipeline (one per node) does not promise."""
    from feast.infra.online_stores.redis import RedisOnlineStore, RedisType

    if not isinstance(online, RedisOnlineStore):
        return None
    return "cluster" if config.online_store.redis_type == RedisType.redis_cluster else "server"
