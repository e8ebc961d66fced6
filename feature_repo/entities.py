"""Entities of the ETA domain: who delivers, who cooks, where (one per keyed view)."""

from __future__ import annotations

from collections.abc import Iterable

from feast import Entity, ValueType

from relay.features.catalog import CATALOG, VIEWS, Feature

VALUE_TYPES = {"string": ValueType.STRING, "int64": ValueType.INT64}


def entities(catalog: Iterable[Feature] = CATALOG) -> dict[str, Entity]:
    """One entity per view keyed by an entity, by join key (``courier_id`` -> ``courier``).

    The join key's type and description come from its ``entity`` feature in ``catalog``.
    """
    keys = {f.name: f for f in catalog if f.source == "entity"}
    return {
        v.entity: Entity(
            name=v.entity.removesuffix("_id"),
            join_keys=[v.entity],
            value_type=VALUE_TYPES[keys[v.entity].dtype],
            description=keys[v.entity].description,
        )
        for v in VIEWS
        if v.entity is not None
    }
