"""Where the feature tables live (date-partitioned Parquet in Relay's lake) and what the request
carries (distance, hour, weekday).

The library passes each table's location (from ``RELAY_LAKE__URI``) and the S3 endpoint; this
file holds no path.
"""

from __future__ import annotations

from collections.abc import Mapping

from feast import FileSource, PushSource, RequestSource
from feast.data_format import ParquetFormat
from feast.field import Field
from feast.types import Float64, Int64

from relay.features.catalog import VIEWS


def file_sources(
    paths: Mapping[str, str], s3_endpoint: str | None
) -> dict[str, FileSource | PushSource]:
    """One source per keyed view, by view name: its Parquet table in the lake, behind a
    ``PushSource`` for a live view (the events API pushes its rows; the lake holds the same
    rows computed from landed orders, for training and materialization).

    Args:
        paths: View name -> glob over the feature table's partition files.
        s3_endpoint: The S3 endpoint for an ``s3://`` lake; None for AWS or a local lake.
    """
    files = {
        v.name: FileSource(
            name=f"{v.name}_source",
            path=paths[v.name],
            file_format=ParquetFormat(),
            timestamp_field="event_timestamp",
            s3_endpoint_override=s3_endpoint,
            description=v.description,
        )
        for v in VIEWS
        if v.entity is not None
    }
    pushed = {
        v.name: PushSource(
            name=v.push_source, batch_source=files[v.name], description=v.description
        )
        for v in VIEWS
        if v.live
    }
    return files | pushed


def order_request() -> RequestSource:
    """The fields of the order known at request time (the on-demand view's inputs)."""
    return RequestSource(
        name="order_request",
        schema=[
            Field(name="distance_km", dtype=Float64),
            Field(name="hour", dtype=Int64),
            Field(name="weekday", dtype=Int64),
        ],
        description="Fields of the order known at request time",
    )
