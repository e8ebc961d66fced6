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
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


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

    Attributes:
        row_ages: after each :meth:`read`, per view, the age in seconds of the oldest row it
            found (the stalest value the batch is answered with); a view none of whose entities
            is stored is left out. Read it in the thread that read.
    """

    def __init__(
        self,
        store: Any,
        service: Any,
        keys: Sequence[str],
        on_demand: Sequence[Any],
        request_fields: Sequence[str],
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

    def read(self, rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
        """Feature columns for ``rows`` (request rows: the keys and the request fields)."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values

        n = len(rows)
        now = dt.datetime.now(dt.UTC)
        ages: dict[str, float] = {}
        out: dict[str, list[Any]] = {k: [r[k] for r in rows] for k in self._keys}
        for view in self._views:
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
            stamps = [ts for ts, values in read if values and ts is not None]
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
