"""The feature store's settings: Feast's stores and registry, and serving's online reads.

Part of :mod:`relay.settings` (import them from there); kept apart only to keep each module
small.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from relay.errors import ConfigError


class FeastSettings(BaseModel):
    project: str = "relay_eta"
    repo_path: Path | None = Field(None, description="Folder holding the Feast definitions")
    registry: str | None = Field(
        None,
        description="The registry: a path, a SQLAlchemy URL (postgresql+psycopg://…: Feast's "
        "sql registry) or s3://bucket/key (endpoint: AWS_ENDPOINT_URL). None: the file at "
        "registry_path (local); the events' database, RELAY_EVENTS__DATABASE_URL (prod)",
    )
    registry_path: Path | None = Field(None, description="The local profile's registry file")
    online_store: Literal["sqlite", "redis"] | None = None
    sqlite_path: Path | None = None
    redis_connection: str = "127.0.0.1:6379"
    feature_service: str = "eta_v1"
    direct_read: bool = Field(
        True,
        description="Serving reads the online store view by view (relay.features.direct), not "
        "through FeatureStore.get_online_features: the same values, without the SDK's "
        "per-request protobuf work",
    )
    pipelined_read: bool = Field(
        True,
        description="Every view in one round trip on Redis (relay.features.redis_read), in one "
        "query on SQLite (relay.features.sqlite_read)",
    )
    row_cache_ttl_s: float = Field(
        1.0,
        ge=0,
        description="Serving answers an online row read at most this long ago from memory "
        "(relay.features.row_cache); on Redis pushes and materializations invalidate it, on "
        "SQLite any write to the file does. 0: off",
    )
    row_cache_max_rows: int = Field(
        100_000, gt=0, description="Most entities (and decoded values) the row cache keeps"
    )
    # Serving's online reads (relay.features.guarded): a store that is down or slow degrades
    # answers to the features' defaults instead of failing or holding them.
    online_read_timeout_s: float = Field(
        0.05, gt=0, description="An online read slower than this is answered with defaults"
    )
    online_read_inline: bool = Field(
        True,
        description="On Feast's SQLite online store, serving reads in the request's own thread, "
        "SQLite itself ending a read past online_read_timeout_s (a lock wait, a long "
        "statement), rather than in a worker thread: the hand-off cost a quarter of a "
        "32-order read. Off for a store file on a network filesystem, whose reads can hang",
    )
    online_connect_timeout_s: float = Field(
        0.05, gt=0, description="Connecting to Redis: longer is the store being down"
    )
    online_retry_after_s: float = Field(
        1.0, ge=0, description="After a failed or slow read, defaults without asking for this long"
    )

    def registry_location(self) -> str:
        """Where the registry is: ``registry``, else the file at ``registry_path``."""
        if self.registry:
            return self.registry
        if self.registry_path is None:  # pragma: no cover, the settings validator fills it
            raise ConfigError("RELAY_FEAST__REGISTRY_PATH is not set")
        return str(self.registry_path)
