"""Every view's rows in one SQLite query, in Feast's SQLite layout, with a row cache any write ends.

Feast's SQLite online store keeps each view in its own table, one row per entity and feature
(``entity_key``, ``feature_name``, ``value``: a serialized ``Value``, ``event_ts``), and its
``online_read`` asks one view at a time, serializing every entity key and parsing every value
anew: for 32 orders of six views that is most of a request's CPU (4.5 ms here, README). A
:class:`SqliteRead` asks for every view's entities in one ``UNION ALL`` query on its own
connection, with Feast's table names and keys (``_table_id``, ``serialize_entity_key``) and
values decoded as Feast decodes them, each remembered (:mod:`relay.features.online_codec`).

With a :class:`relay.features.row_cache.RowCache`, an entity read within the cache's TTL is
answered from memory unless the database changed since: each read first asks SQLite's
``PRAGMA data_version``, which moves whenever another connection (a materialization, a push, a
``feast`` command from a shell, another process) commits to the file. So on SQLite every write is
seen on the next read, announced or not, and a hit costs one pragma and no query.

With a ``timeout_s`` the read bounds itself: SQLite waits at most that long for another
connection's lock, and a statement still running at the deadline is interrupted (a progress
handler), raising :class:`TimeoutError`. Serving's guard then reads in the caller's thread
(:class:`relay.features.guarded.GuardedReader`) instead of handing every read to a worker
thread and back, which cost 0.25 ms of a 0.57 ms read of 32 orders here (README, fast serving).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relay.features.online_codec import Memo
from relay.features.row_cache import RowCache

# A view's row for one entity: its event time (None: not stored) and its features' values.
_ViewRow = tuple[dt.datetime | None, tuple[Any, ...]]


class SqliteRead:
    """The stored views' values for request rows, read in one query.

    Args:
        store: the Feast store (``feast.FeatureStore``) on a SQLite online store.
        views: ``(view, features)`` of each stored view of the service (``view``: the Feast
            ``FeatureView``), in the order columns are answered.
        cache: the row cache; None reads every entity every time.
        memo_max: how many entity keys, and how many values, are remembered decoded.
        timeout_s: the longest a read may take, waiting for a lock included; past it the read
            raises :class:`TimeoutError`. None: SQLite's default lock wait, no deadline.
    """

    # SQLite calls the deadline check every this many virtual-machine steps (a few µs each).
    PROGRESS_STEPS = 1_000

    def __init__(
        self,
        store: Any,
        views: Sequence[tuple[Any, Sequence[str]]],
        cache: RowCache | None = None,
        memo_max: int = 100_000,
        timeout_s: float | None = None,
    ) -> None:
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.infra.online_stores.sqlite import _quote_id, _table_id

        config = store.config
        self.path = store._get_provider().online_store._get_db_path(config)
        self._views = tuple((table, tuple(features)) for table, features in views)
        self._join_keys = tuple(tuple(table.join_keys) for table, _ in self._views)
        versioning = config.registry.enable_online_feature_view_versioning
        self._tables = tuple(
            _quote_id(_table_id(config.project, table, versioning)) for table, _ in self._views
        )
        self._columns = tuple(
            {name: j for j, name in enumerate(features)} for _, features in self._views
        )
        version = config.entity_key_serialization_version
        self._make_keys = lambda protos: [
            serialize_entity_key(p, entity_key_serialization_version=version) for p in protos
        ]
        self.cache = cache
        self._memo = Memo(memo_max)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # warm-up reads in the caller's thread, then one thread
        self._known: bytes | None = None  # the data_version the cached rows were read under
        self.timeout_s = timeout_s
        self._deadline = 0.0

    def read(
        self, rows: Sequence[dict[str, Any]], now: dt.datetime
    ) -> tuple[dict[str, list[Any]], dict[str, float]]:
        """Feature columns of the stored views for ``rows``, and per view the age (s) at ``now``
        of the oldest row found (views none of whose entities is stored are left out)."""
        ats: list[list[int]] = []
        keys: list[list[bytes]] = []
        done: dict[tuple[str, ...], tuple[list[int], list[bytes]]] = {}
        for join_keys in self._join_keys:
            if join_keys not in done:  # views keyed alike (courier_stats, courier_live): once
                where: dict[tuple[Any, ...], int] = {}
                at = [where.setdefault(tuple(r[k] for k in join_keys), len(where)) for r in rows]
                done[join_keys] = (at, self._memo.keys(join_keys, list(where), self._make_keys))
            ats.append(done[join_keys][0])
            keys.append(done[join_keys][1])
        with self._lock:
            if self.timeout_s is None:
                found = self._fill(keys)
            else:
                self._deadline = time.monotonic() + self.timeout_s
                try:
                    found = self._fill(keys)
                except sqlite3.OperationalError as exc:
                    if "interrupted" in str(exc):
                        raise TimeoutError(
                            f"SQLite read interrupted after {self.timeout_s * 1000:.0f} ms"
                        ) from exc
                    raise
        out: dict[str, list[Any]] = {}
        ages: dict[str, float] = {}
        for v, (table, features) in enumerate(self._views):
            stamps = [ts for ts, _ in found[v] if ts is not None]
            if stamps:
                ages[table.name] = max(0.0, (now - min(stamps)).total_seconds())
            values = [vals for _, vals in found[v]]
            for j, name in enumerate(features):
                out[name] = [values[at][j] for at in ats[v]]
        return out, ages

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # Read-only and shared by the threads that read (never at once: the lock).
            uri = f"{Path(self.path).resolve().as_uri()}?mode=ro"
            if self.timeout_s is None:
                self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            else:  # a writer's lock is waited for no longer than a read may take
                self._conn = sqlite3.connect(
                    uri, uri=True, check_same_thread=False, timeout=self.timeout_s
                )
                self._conn.set_progress_handler(self._past_deadline, self.PROGRESS_STEPS)
        return self._conn

    def _fill(self, keys: list[list[bytes]]) -> list[list[_ViewRow]]:
        """Each entity's row, from the cache where the database has not changed, else read."""
        cache = self.cache
        conn = self._connection()
        found: list[list[Any]] = [[None] * len(view_keys) for view_keys in keys]
        wanted: list[tuple[int, int]] = []
        known: tuple[bytes | None, ...] = ()
        now = 0.0
        if cache is not None:
            # Before the rows: a row read after it is at least as new as it says.
            known = (str(conn.execute("PRAGMA data_version").fetchone()[0]).encode(),)
            now = cache.clock()
        for v, view_keys in enumerate(keys):
            for i, key in enumerate(view_keys):
                entry = cache.get((v, key), now) if cache is not None else None
                if entry is not None and entry.version == known:
                    found[v][i] = entry.value
                else:
                    wanted.append((v, i))
        if wanted:
            self._query(conn, keys, wanted, found)
            if cache is not None:
                for v, i in wanted:
                    cache.put((v, keys[v][i]), found[v][i], known, now)
        return found

    def _query(
        self,
        conn: sqlite3.Connection,
        keys: list[list[bytes]],
        wanted: list[tuple[int, int]],
        found: list[list[Any]],
    ) -> None:
        """The wanted entities' rows of every view, in one statement."""
        by_view: dict[int, list[int]] = {}
        for v, i in wanted:
            by_view.setdefault(v, []).append(i)
        parts, params = [], []
        where: dict[tuple[int, bytes], int] = {}
        for v, idx in by_view.items():
            # Feast's quoted table names and a view's index; the keys are bound parameters.
            parts.append(
                f"SELECT {v}, entity_key, feature_name, value, event_ts FROM {self._tables[v]} "  # noqa: S608
                f"WHERE entity_key IN ({','.join('?' * len(idx))})"
            )
            for i in idx:
                params.append(keys[v][i])
                where[(v, keys[v][i])] = i
        got: dict[tuple[int, int], tuple[Any, list[Any]]] = {}
        for v, key, name, raw, ts in conn.execute(" UNION ALL ".join(parts), params):
            j = self._columns[v].get(name)
            i = where[(v, key)]
            row = got.get((v, i))
            if row is None:
                row = got[(v, i)] = (ts, [None] * len(self._columns[v]))
            if j is not None and raw:
                row[1][j] = self._memo.value(raw)
        for v, i in wanted:
            row = got.get((v, i))
            if row is None:  # an entity the store does not know
                found[v][i] = (None, (None,) * len(self._columns[v]))
            else:
                ts = self._memo.stamp(row[0], _epoch) if row[0] is not None else None
                found[v][i] = (ts, tuple(row[1]))

    def _past_deadline(self) -> int:
        """SQLite's progress handler: non-zero interrupts the statement."""
        return int(time.monotonic() > self._deadline)

    @property
    def bounded(self) -> bool:
        """Whether every read ends within ``timeout_s`` by itself."""
        return self.timeout_s is not None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _epoch(raw: Any) -> dt.datetime:
    """``event_ts`` as Feast's SQLite ``online_read`` answers it: Feast writes naive UTC times
    through sqlite3's epoch adapter (local time) and reads them back through its converter."""
    return dt.datetime.fromtimestamp(int(raw)).replace(tzinfo=dt.UTC)
