"""Every view's rows in one Redis round trip, in Feast's Redis layout, read by Feast's own code.

Feast's Redis online store keeps all views of an entity in one hash: the key is the serialized
entity key followed by the project, each feature a field named by the murmur3 hash of
``view:feature``, each view's event time in the field ``_ts:view`` (Feast's
``docs/specs/online_store_format.md``). :class:`PipelinedRedisRead` therefore reads the views
that share join keys (``courier_stats`` and ``courier_live``) with one HMGET per entity, and all
of them in one pipeline: for 32 orders about 80 commands in one round trip, where
``online_read`` per view sends about 150 in six. The keys and fields are Feast's
(``_generate_redis_keys_for_entities``, ``_generate_hset_keys_for_features``, the versioned view
name), the fetch is Feast's (``_read_hash_fields``: a redis-py pipeline or a GLIDE batch), and
values decode as Feast decodes them; what is the same on every call (field lists, an entity's
key bytes, a value's decoding) is worked out once and remembered
(:mod:`relay.features.online_codec`).

With a :class:`relay.features.row_cache.RowCache`, an entity read within the cache's TTL is not
asked for again unless its views' versions moved: the versions are the first command of the same
round trip (:mod:`relay.features.row_cache` says why), and a cached entity whose view turns out
to have moved is read again at once, before anything is answered.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from relay.features.online_codec import Memo
from relay.features.row_cache import RowCache, versions_key

# A view's rows for one entity: its event time (None: not stored) and its features' values.
_ViewRow = tuple[dt.datetime | None, tuple[Any, ...]]
_Command = tuple[bytes, list[Any]]


@dataclass(frozen=True)
class _Group:
    """Views keyed by the same join keys: one hash per entity, one HMGET."""

    join_keys: tuple[str, ...]
    views: tuple[int, ...]  # positions in the reader's views
    fields: list[Any]  # every view's feature fields, each view's ``_ts`` field last
    spans: tuple[tuple[int, int], ...]  # per view: its fields' slice (its ``_ts`` at end - 1)


class PipelinedRedisRead:
    """The stored views' values for request rows, read in one round trip.

    Args:
        store: the Feast store (``feast.FeatureStore``) on a Redis online store.
        views: ``(view, features)`` of each stored view of the service (``view``: the Feast
            ``FeatureView``), in the order columns are answered.
        cache: the row cache; None reads every entity every time.
        memo_max: how many entity keys, and how many values, are remembered decoded.
    """

    def __init__(
        self,
        store: Any,
        views: Sequence[tuple[Any, Sequence[str]]],
        cache: RowCache | None = None,
        memo_max: int = 100_000,
    ) -> None:
        from feast.infra.online_stores.redis import _versioned_fv_name

        self._config = store.config
        self._online = store._get_provider().online_store
        self._views = tuple((table, tuple(features)) for table, features in views)
        self.cache = cache
        by_keys: dict[tuple[str, ...], list[int]] = {}
        for i, (table, _) in enumerate(self._views):
            by_keys.setdefault(tuple(table.join_keys), []).append(i)
        groups = []
        self._place: dict[int, tuple[int, int]] = {}  # view -> (group, position in it)
        for g, (join_keys, members) in enumerate(by_keys.items()):
            fields: list[Any] = []
            spans = []
            for pos, i in enumerate(members):
                table, features = self._views[i]
                _, hset = self._online._generate_hset_keys_for_features(
                    table, list(features), fv_name_override=_versioned_fv_name(table, self._config)
                )
                spans.append((len(fields), len(fields) + len(hset)))
                fields += hset
                self._place[i] = (g, pos)
            groups.append(_Group(join_keys, tuple(members), fields, tuple(spans)))
        self._groups = tuple(groups)
        self._versions_key = versions_key(self._config.project)
        self._version_fields = [table.name for table, _ in self._views]
        self._known: list[tuple[bytes | None, ...] | None] = [None] * len(groups)
        self._memo = Memo(memo_max)

    def read(
        self, rows: Sequence[dict[str, Any]], now: dt.datetime
    ) -> tuple[dict[str, list[Any]], dict[str, float]]:
        """Feature columns of the stored views for ``rows``, and per view the age (s) at ``now``
        of the oldest row found (views none of whose entities is stored are left out)."""
        found: list[list[Any]] = []  # per group, per entity: its views' rows
        ats: list[list[int]] = []
        keys: list[list[bytes]] = []
        for group in self._groups:
            where: dict[tuple[Any, ...], int] = {}
            ats.append(
                [where.setdefault(tuple(r[k] for k in group.join_keys), len(where)) for r in rows]
            )
            keys.append(self._redis_keys(group, list(where)))
            found.append([None] * len(where))
        self._fill(found, keys)
        out: dict[str, list[Any]] = {}
        ages: dict[str, float] = {}
        for i, (table, features) in enumerate(self._views):
            g, pos = self._place[i]
            view_rows = [entity[pos] for entity in found[g]]  # every entity is filled
            stamps = [ts for ts, _ in view_rows if ts is not None]
            if stamps:
                ages[table.name] = max(0.0, (now - min(stamps)).total_seconds())
            values = [v for _, v in view_rows]
            for j, name in enumerate(features):
                out[name] = [values[at][j] for at in ats[g]]
        return out, ages

    def _fill(self, found: list[list[Any]], keys: list[list[bytes]]) -> None:
        """Each entity's rows, from the cache where still good, else from Redis."""
        cache = self.cache
        now = cache.clock() if cache is not None else 0.0
        wanted: list[tuple[int, int]] = []
        used: list[tuple[int, int, tuple[bytes | None, ...]]] = []
        for g, group_keys in enumerate(keys):
            for i, key in enumerate(group_keys):
                entry = cache.get((g, key), now) if cache is not None else None
                if entry is not None and entry.version == self._known[g]:
                    found[g][i] = entry.value
                    used.append((g, i, entry.version))
                else:
                    wanted.append((g, i))
        commands = [(keys[g][i], self._groups[g].fields) for g, i in wanted]
        if cache is None:
            if commands:
                replies = self._online._read_hash_fields(self._config, commands)
                self._store(found, keys, wanted, replies)
            return
        # The versions first: a row fetched after them is at least as new as they say.
        replies = self._online._read_hash_fields(
            self._config, [(self._versions_key, self._version_fields), *commands]
        )
        versions = replies[0]
        known = [tuple(versions[i] for i in group.views) for group in self._groups]
        self._known = list(known)
        self._store(found, keys, wanted, replies[1:], known, now)
        again = [(g, i) for g, i, version in used if version != known[g]]
        if again:  # a view moved since these were cached: read them now
            commands = [(keys[g][i], self._groups[g].fields) for g, i in again]
            replies = self._online._read_hash_fields(self._config, commands)
            self._store(found, keys, again, replies, known, now)

    def _store(
        self,
        found: list[list[Any]],
        keys: list[list[bytes]],
        at: list[tuple[int, int]],
        replies: Sequence[Sequence[bytes | None]],
        known: list[tuple[bytes | None, ...]] | None = None,
        now: float = 0.0,
    ) -> None:
        cache = self.cache
        for (g, i), reply in zip(at, replies, strict=True):
            rows = self._decode(self._groups[g], reply)
            found[g][i] = rows
            if cache is not None and known is not None:
                cache.put((g, keys[g][i]), rows, known[g], now)

    def _decode(self, group: _Group, reply: Sequence[bytes | None]) -> tuple[_ViewRow, ...]:
        """One HMGET reply as each view's (event time, values), decoded as Feast does: an
        absent or empty field is an empty ``Value`` (None), an absent ``_ts`` no row."""
        rows = []
        for start, end in group.spans:
            ts = reply[end - 1]
            values = tuple(self._value(raw) if raw else None for raw in reply[start : end - 1])
            rows.append((self._stamp(ts) if ts else None, values))
        return tuple(rows)

    def _value(self, raw: bytes) -> Any:
        return self._memo.value(raw)

    def _stamp(self, raw: bytes) -> dt.datetime:
        return self._memo.stamp(raw, _timestamp)

    def _redis_keys(self, group: _Group, entities: list[tuple[Any, ...]]) -> list[bytes]:
        """Feast's Redis keys of ``entities`` (values of ``group.join_keys``)."""
        return self._memo.keys(
            group.join_keys,
            entities,
            lambda protos: self._online._generate_redis_keys_for_entities(self._config, protos),
        )


def _timestamp(raw: bytes) -> dt.datetime:
    """A serialized ``Timestamp`` as Feast's Redis ``online_read`` answers it."""
    from google.protobuf.timestamp_pb2 import Timestamp

    proto = Timestamp()
    proto.ParseFromString(raw)
    return dt.datetime.fromtimestamp(proto.seconds + proto.nanos / 1_000_000_000.0, tz=dt.UTC)
