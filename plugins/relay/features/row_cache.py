"""Online feature rows kept in process, bounded by freshness, and the signal that invalidates them.

Serving asks for the same couriers, merchants and zones again and again; a row read a moment
ago is as good as a new read *unless the store changed since*. Two rules bound what
:class:`RowCache` answers with:

* **Age**: an entry is answered for ``RELAY_FEAST__ROW_CACHE_TTL_S`` after it was read from the
  store, never longer (0 turns the cache off). That bounds staleness even for a write nobody
  announced (a ``feast materialize`` from the CLI).
* **Versions**: every push (:class:`VersionedPusher`, the events API's) and every
  materialization (:func:`relay.features.store.materialize`) gives its views a new version,
  a random token in one Redis hash (:func:`versions_key`), *after* writing the rows. A reader
  fetches that hash first in the same pipelined round trip as the rows it lacks
  (:mod:`relay.features.redis_read`); a cached entity whose view has a new version is read
  again before anything is answered (one more round trip, only then). So a pushed value is
  used on the next request of any process, and a hit costs one small HMGET.

Why versions read in the round trip rather than Redis pub/sub: a message is delivered to a
subscriber thread some time after the push returned, and an ETA requested right after its
event was acknowledged could still be answered from the old row; the version is read by the
request itself, after the push wrote it. Why per view rather than per entity: checking an
entity's own stamp costs one command per entity, which is the read the cache saves. Why random
tokens rather than counters: a Redis emptied and counted up again would repeat a number.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

VERSIONS_PREFIX = "relay:feature_versions"


def versions_key(project: str) -> bytes:
    """The Redis hash of the project's view versions (field: view name, value: a token)."""
    return f"{VERSIONS_PREFIX}:{project}".encode()


@dataclass(frozen=True)
class Entry:
    """One cached value: what was read, under which versions, when (monotonic seconds)."""

    value: Any
    version: tuple[bytes | None, ...]
    read_at: float


class RowCache:
    """Rows by key, each answered for ``ttl_s`` after it was read and only under the versions
    it was read under; at most ``max_rows`` kept (the least recently stored go first).

    One thread uses it (serving reads in one thread: :mod:`relay.features.guarded`).

    Args:
        ttl_s: how long an entry may be answered after it was read (> 0).
        max_rows: how many entries are kept.
        clock: monotonic seconds (a fake in tests).
    """

    def __init__(
        self, ttl_s: float, max_rows: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if ttl_s <= 0 or max_rows <= 0:
            raise ValueError("a row cache needs ttl_s > 0 and max_rows > 0")
        self.ttl_s = ttl_s
        self.max_rows = max_rows
        self.clock = clock
        self._rows: OrderedDict[Hashable, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: Hashable, now: float) -> Entry | None:
        """The entry for ``key`` if it is younger than the TTL at ``now`` (its versions are the
        caller's to check: they are known only once the store answered)."""
        entry = self._rows.get(key)
        if entry is None or now - entry.read_at >= self.ttl_s:
            return None
        return entry

    def put(self, key: Hashable, value: Any, version: tuple[bytes | None, ...], now: float) -> None:
        """Store ``value`` as read at ``now`` under ``version``."""
        self._rows.pop(key, None)
        self._rows[key] = Entry(value, version, now)
        while len(self._rows) > self.max_rows:
            self._rows.popitem(last=False)

    def clear(self) -> None:
        self._rows.clear()


def _redis_client(store: Any) -> Any | None:
    """The Redis client Feast writes the online store with; None for another store."""
    from feast.infra.online_stores.redis import RedisOnlineStore

    online = store._get_provider().online_store
    if not isinstance(online, RedisOnlineStore):
        return None
    return online._get_client(store.config.online_store)


def bump(store: Any, views: Iterable[str]) -> None:
    """Tell every reader's row cache that ``views`` changed: call after writing their rows.

    Args:
        store: the Feast store (``feast.FeatureStore``) that wrote them. Other stores than Redis
            have no row cache: nothing to do.
        views: the feature views written.
    """
    names = sorted(set(views))
    client = _redis_client(store) if names else None
    if client is None:
        return
    key = versions_key(store.config.project)
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hset(key, name, os.urandom(8))
        pipe.execute()


class VersionedPusher:
    """A Feast store's ``push`` that bumps the versions of the views it wrote (the events
    API's pusher, :func:`relay.ingest.event_sink.open_sink`).

    The views a push source feeds are Feast's own answer (the ones its ``push`` writes). Every
    other attribute is the store's: the sink's pusher stays a Feast store to its readers (the
    endpoint's ``/metrics`` reads the snapshot views' freshness from it).
    """

    def __init__(self, store: Any) -> None:
        self.store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def push(self, push_source_name: str, df: Any) -> None:
        """Push ``df`` online, then bump its views (also after a push that failed part way)."""
        try:
            self.store.push(push_source_name, df)
        finally:
            fed = self.store._fvs_for_push_source_or_raise(push_source_name, True)
            bump(self.store, (fv.name for fv in fed))
