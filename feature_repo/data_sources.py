"""Where the feature tables live: date-partitioned Parquet in Relay's lake.

Paths come from Relay's settings (RELAY_LAKE__URI), never from this file. The order itself
(distance, hour, weekday) arrives with the request.
"""

from feast import FileSource, RequestSource
from feast.data_format import ParquetFormat
from feast.field import Field
from feast.types import Float64, Int64

from relay.data.lake import COURIER_STATS, MERCHANT_STATS, ZONE_STATS, Lake
from relay.settings import get_settings

_lake = Lake()
_endpoint = get_settings().s3.endpoint_url


def _source(dataset, description: str) -> FileSource:
    return FileSource(
        name=f"{dataset.name}_source",
        path=_lake.glob(dataset),
        file_format=ParquetFormat(),
        timestamp_field="event_timestamp",
        s3_endpoint_override=_endpoint,
        description=description,
    )


courier_stats_source = _source(COURIER_STATS, "Hourly courier snapshots")
merchant_stats_source = _source(MERCHANT_STATS, "Hourly merchant snapshots")
zone_stats_source = _source(ZONE_STATS, "Hourly zone snapshots")

order_request = RequestSource(
    name="order_request",
    schema=[
        Field(name="distance_km", dtype=Float64),
        Field(name="hour", dtype=Int64),
        Field(name="weekday", dtype=Int64),
    ],
    description="Fields of the order known at request time",
)
