"""What serving's direct reads work out once and remember: entity keys and decoded values.

Serving asks for the same couriers, merchants and zones again and again, and Feast's stores keep
values as serialized protobufs under serialized entity keys. Building an entity's key and
decoding a value cost more than fetching them, and are the same every time, so
:class:`Memo` remembers both (up to ``memo_max`` of each; beyond that it starts over). Used by
the Redis read (:mod:`relay.features.redis_read`) and the SQLite read
(:mod:`relay.features.sqlite_read`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Hashable, Sequence
from typing import Any

_IMMUTABLE = (int, float, str, bytes, bool, dt.datetime)

MakeKeys = Callable[[list[Any]], Sequence[bytes]]
"""A store's keys for a list of ``EntityKey`` protos."""


class Memo:
    """Entity keys and decoded values, remembered.

    Args:
        memo_max: how many entity keys, values and stamps are remembered (each).
    """

    def __init__(self, memo_max: int = 100_000) -> None:
        self.memo_max = memo_max
        self._keys: dict[Hashable, bytes] = {}
        self._values: dict[bytes, Any] = {}
        self._stamps: dict[Any, dt.datetime] = {}

    def value(self, raw: bytes) -> Any:
        """A serialized Feast ``Value`` as Feast answers it (its Python value)."""
        value = self._values.get(raw)
        if value is None:
            from feast.protos.feast.types.Value_pb2 import Value
            from feast.type_map import feast_value_type_to_python_type

            proto = Value()
            proto.ParseFromString(raw)
            value = feast_value_type_to_python_type(proto)
            if not isinstance(value, _IMMUTABLE):  # a list would be shared between rows
                return value
            if len(self._values) >= self.memo_max:
                self._values.clear()
            self._values[raw] = value
        return value

    def stamp(self, raw: Any, decode: Callable[[Any], dt.datetime]) -> dt.datetime:
        """An event time as the store's ``online_read`` answers it (``decode``), remembered by
        its raw form (a serialized ``Timestamp`` on Redis, epoch seconds on SQLite)."""
        stamp = self._stamps.get(raw)
        if stamp is None:
            stamp = decode(raw)
            if len(self._stamps) >= self.memo_max:
                self._stamps.clear()
            self._stamps[raw] = stamp
        return stamp

    def keys(
        self, join_keys: tuple[str, ...], entities: list[tuple[Any, ...]], make: MakeKeys
    ) -> list[bytes]:
        """The store's keys of ``entities`` (values of ``join_keys``), typed from the values as
        Feast types entity rows: a column of one Python type converts value by value as it does
        whole, so those keys are remembered; any other column is converted whole."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.type_map import python_values_to_proto_values

        width = len(join_keys)
        types = tuple({type(e[j]) for e in entities} for j in range(width))
        simple = all(len(t) == 1 and type(None) not in t for t in types)
        memo_of = (join_keys, tuple(next(iter(t)) for t in types)) if simple else None
        todo = [e for e in entities if memo_of is None or (memo_of, e) not in self._keys]
        made: dict[tuple[Any, ...], bytes] = {}
        if todo:
            columns = [python_values_to_proto_values([e[j] for e in todo]) for j in range(width)]
            entity_keys = [
                EntityKey(join_keys=list(join_keys), entity_values=[c[i] for c in columns])
                for i in range(len(todo))
            ]
            made = dict(zip(todo, make(entity_keys), strict=True))
        if memo_of is None:
            return [made[e] for e in entities]
        out = [made.get(e) or self._keys[(memo_of, e)] for e in entities]
        if made:
            if len(self._keys) + len(made) > self.memo_max:
                self._keys.clear()
            self._keys.update(((memo_of, e), k) for e, k in made.items())
        return out
