"""Entities of the ETA domain: who delivers, who cooks, where."""

from feast import Entity, ValueType

courier = Entity(
    name="courier",
    join_keys=["courier_id"],
    value_type=ValueType.STRING,
    description="A courier on the platform",
)
merchant = Entity(
    name="merchant",
    join_keys=["merchant_id"],
    value_type=ValueType.STRING,
    description="A restaurant or shop that prepares orders",
)
zone = Entity(
    name="zone",
    join_keys=["zone_id"],
    value_type=ValueType.STRING,
    description="A delivery zone",
)
