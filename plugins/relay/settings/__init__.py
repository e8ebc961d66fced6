"""Typed settings for Relay, read from ``RELAY_*`` environment variables.

One object, grouped by concern. Nested fields use ``__``: ``RELAY_FEAST__ONLINE_STORE=redis``.
Two profiles fill in the defaults a user expects:

* ``local`` (default): embedded parts — SQLite Feast online store, DuckDB offline store over
  Parquet, a local Ray, lake and artifacts under ``RELAY_HOME`` on local disk.
* ``prod``: Redis online store, PostgreSQL for Airflow, S3 (or MinIO) lake and artifacts,
  a remote Ray address.

Nothing is read or created at import time: call :func:`get_settings`.
"""

from __future__ import annotations

import functools
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from relay.errors import ConfigError
from relay.settings.feast import FeastSettings
from relay.settings.importance import ImportanceSettings
from relay.settings.monitoring import MonitoringSettings
from relay.settings.notify import NotifySettings
from relay.settings.optimise import OptimiseSettings
from relay.settings.serving import RolloutSettings, ServingSettings


class Profile(StrEnum):
    LOCAL = "local"
    PROD = "prod"


class S3Settings(BaseModel):
    """Where S3 lives. Keys come from the usual ``AWS_*`` variables, never from here."""

    endpoint_url: str | None = Field(None, description="e.g. http://minio:9000; None for AWS")
    region: str = "us-east-1"


class LakeSettings(BaseModel):
    uri: str | None = Field(None, description="Root of the data lake: a path or s3://bucket/prefix")


class ArtifactSettings(BaseModel):
    uri: str | None = Field(None, description="Root of reports and model artifacts")


class RunSettings(BaseModel):
    """Training runs' folders (model, tuned config, outcome), shared by a run's Airflow tasks
    and Ray jobs. Each step works on its node's scratch copy, pulled at its start and pushed
    at its end (:mod:`relay.flows.run_store`); where ``uri`` is ``scratch``, nothing is copied."""

    uri: str | None = Field(
        None,
        description="Root of run folders: a path or s3://; default {home}/runs (local), "
        "{artifacts}/runs (prod)",
    )
    scratch: Path | None = Field(None, description="This node's local copies; default {home}/runs")


class EventSettings(BaseModel):
    """``POST /v1/events``: the order service's events (:mod:`relay.ingest.event_sink`)."""

    database_url: str | None = Field(
        None,
        description="The event store (SQLAlchemy URL); default SQLite in home; required in prod "
        "(PostgreSQL, shared by every replica)",
    )
    enabled: bool = Field(True, description="Serve POST /v1/events (the router opens the store)")
    request_timeout_s: float = Field(
        10.0, gt=0, description="A request waits this long for its events to be stored, then 503"
    )
    group_max_events: int = Field(
        1000, ge=1, description="Most events one group commit stores (a transaction, one push)"
    )
    land_every_s: float = Field(
        5.0, gt=0, description="How often stored events are copied to the lake (and labels)"
    )
    land_max_events: int = Field(50_000, ge=1, description="Most events one landing copies")
    freshness_alert_s: float = Field(
        300.0,
        gt=0,
        description="A live view not updated for this long is stale: "
        "relay_feature_stale{view} is 1 in /metrics",
    )
    snapshot_freshness_alert_s: float = Field(
        7200.0,
        gt=0,
        description="A 24-hour snapshot view whose newest value is older than this is stale "
        "(the hourly eta_features run is late): relay_feature_stale{view} is 1 in /metrics",
    )
    stream_url: str | None = Field(
        None,
        description="Redis URL of the order-events stream (redis://host:port/db); None: events "
        "arrive by POST /v1/events only. Credentials: RELAY_EVENTS__STREAM_URL from a secret",
    )
    stream_name: str = Field("relay:order_events", description="The stream's key")
    stream_group: str = Field("relay", description="The consumer group every consumer shares")
    stream_dead_letter: str = Field(
        "relay:order_events:dead", description="Where entries the contract refuses are copied"
    )
    stream_batch: int = Field(500, ge=1, description="Most entries one poll reads and stores")
    stream_block_ms: int = Field(1000, ge=1, description="How long a poll waits for entries")
    stream_claim_idle_s: float = Field(
        30.0,
        gt=0,
        description="An entry read but not acknowledged for this long is claimed by another "
        "consumer (its consumer died)",
    )
    snapshot_lookback_h: float = Field(
        6.0,
        ge=0,
        description="The hourly 24-hour snapshots (eta_features) also read orders created this "
        "long before their window, whose pickups and deliveries fall inside it",
    )


class RaySettings(BaseModel):
    address: str | None = Field(None, description="Ray cluster address; None starts a local one")
    gcs_port: int = Field(6380, description="Port of the Ray head `make up` starts (6379: Redis)")
    num_cpus: int = 2
    dashboard_url: str = "http://127.0.0.1:8265"
    node_ip: str = Field(
        "127.0.0.1",
        description="The address the head `make up` starts advertises and binds its HTTP and "
        "metrics servers to; a node's own address to let other nodes join",
    )
    metrics_export_port: int = Field(
        8090, gt=0, lt=65536, description="Metrics agent port of the head (node_ip): Prometheus"
    )


class AirflowSettings(BaseModel):
    database_url: str | None = Field(None, description="Metadata DB; default SQLite in home")
    api_url: str = "http://127.0.0.1:8080"
    parallelism: int = Field(4, ge=1, description="Task processes at once (2 cores: keep low)")
    gpu_pool_slots: int = Field(1, ge=1, description="Ray jobs that may use a GPU at once")
    auth_manager: Literal["simple", "fab"] = Field(
        "simple",
        description="Airflow's auth manager: simple (one admin, development) or fab (users and "
        "roles in the metadata DB; the prod compose's)",
    )


class DataSettings(BaseModel):
    """The synthetic ETA world: its size and seed."""

    seed: int = 7
    orders_per_day: int = 20_000
    n_zones: int = 24
    n_merchants: int = 1_200
    n_couriers: int = 1_500


class ValidationSettings(BaseModel):
    max_examples: int = 5
    mean_delivery_minutes_min: float = 15.0
    mean_delivery_minutes_max: float = 75.0
    max_distance_km: float = 40.0
    max_delivery_minutes: float = 300.0


class TrainSettings(BaseModel):
    """Ray Train / Tune defaults; every one can be overridden per run."""

    num_workers: int = 2
    use_gpu: bool | None = Field(None, description="None: use a GPU when Ray sees one")
    # Half a core each leaves room on a laptop for the Ray Data tasks that feed the workers.
    cpus_per_worker: float = 0.5
    max_epochs: int = 20
    early_stopping_patience: int = 5
    batch_size: int = 256
    learning_rate: float = 3e-3
    hidden_layers: int = 3
    hidden_units: int = 128
    dropout: float = 0.1
    activation: Literal["relu", "tanh"] = "relu"
    max_failures: int = 2
    storage_uri: str | None = Field(
        None,
        description="Ray Train checkpoints and Tune results: a path or s3://; default "
        "{home}/ray_results (local), {artifacts}/ray_results (prod)",
    )
    tune_trials: int = 8
    holdout_share: float = 0.2
    seed: int = 7


class RegistrySettings(BaseModel):
    uri: str | None = Field(None, description="Registry root; default {artifacts}/registry")
    model_name: str = "eta_mlp"


class GateSettings(BaseModel):
    """Evaluation gate: absolute bars, and how a challenger must compare with the champion."""

    max_mae_minutes: float = 8.0
    max_p90_abs_error_minutes: float = 15.0
    min_within_5_min: float = 0.4
    min_improvement: float = 0.0  # challenger MAE must be below champion MAE minus this
    slice_margin: float = 0.05  # any slice may be at most 5% worse than the champion's
    min_slice_rows: int = 50
    # One-sided z: a slice fails only when its MAE beyond the margin is this many standard
    # errors of the paired difference (1.645: 95% sure it is worse, not noise); 0: any excess.
    slice_significance_z: float = Field(1.645, ge=0)
    # A drift retrain replaces a champion fitted to a world that has changed; refitting every
    # zone moves some slices by more than 5% either way (make demo: one zone of 27 12-16% worse
    # in three retrains, each 13-19% better overall and 35-47% better in the new zones), and
    # blocking it keeps the stale model everywhere. Monitoring's retrains use this margin.
    drift_slice_margin: float = Field(0.15, ge=0)


class Settings(BaseSettings):
    """All of Relay's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="RELAY_", env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    profile: Profile = Profile.LOCAL
    home: Path = Field(default_factory=lambda: Path.cwd() / "var")
    s3: S3Settings = S3Settings()
    lake: LakeSettings = LakeSettings()
    artifacts: ArtifactSettings = ArtifactSettings()
    runs: RunSettings = RunSettings()
    feast: FeastSettings = FeastSettings()
    events: EventSettings = EventSettings()
    ray: RaySettings = RaySettings()
    airflow: AirflowSettings = AirflowSettings()
    data: DataSettings = DataSettings()
    validation: ValidationSettings = ValidationSettings()
    train: TrainSettings = TrainSettings()
    optimise: OptimiseSettings = OptimiseSettings()
    importance: ImportanceSettings = ImportanceSettings()
    registry: RegistrySettings = RegistrySettings()
    gate: GateSettings = GateSettings()
    rollout: RolloutSettings = RolloutSettings()
    serving: ServingSettings = ServingSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    notify: NotifySettings = NotifySettings()

    @model_validator(mode="after")
    def _profile_defaults(self) -> Settings:
        self.home = self.home.expanduser().resolve()
        prod = self.profile is Profile.PROD
        if self.lake.uri is None:
            if prod:
                raise ConfigError("RELAY_LAKE__URI is required in the prod profile (s3://bucket/…)")
            self.lake.uri = str(self.home / "lake")
        if self.artifacts.uri is None:
            if prod:
                raise ConfigError("RELAY_ARTIFACTS__URI is required in the prod profile")
            self.artifacts.uri = str(self.home / "artifacts")
        artifacts = self.artifacts.uri.rstrip("/")
        if self.registry.uri is None:
            self.registry.uri = f"{artifacts}/registry"
        # prod: run folders and checkpoints beside the artifacts, never on one node's disk.
        self.runs.scratch = self.runs.scratch or self.home / "runs"
        if self.runs.uri is None:
            self.runs.uri = f"{artifacts}/runs" if prod else str(self.runs.scratch)
        if self.train.storage_uri is None:
            self.train.storage_uri = (
                f"{artifacts}/ray_results" if prod else str(self.home / "ray_results")
            )
        f = self.feast
        f.repo_path = f.repo_path or _project_root() / "feature_repo"
        f.registry_path = f.registry_path or self.home / "feast" / "registry.db"
        f.sqlite_path = f.sqlite_path or self.home / "feast" / "online.db"
        f.online_store = f.online_store or ("redis" if prod else "sqlite")
        if prod:
            _prod_serving(self.serving)
        if self.events.database_url is None:
            if prod:
                raise ConfigError(
                    "RELAY_EVENTS__DATABASE_URL is required in the prod profile (PostgreSQL: "
                    "every router replica stores events in it)"
                )
            self.events.database_url = f"sqlite:///{self.home / 'events' / 'events.db'}"
        if self.airflow.database_url is None:
            if prod:
                raise ConfigError("RELAY_AIRFLOW__DATABASE_URL is required in the prod profile")
            self.airflow.database_url = f"sqlite:///{self.home / 'airflow' / 'airflow.db'}"
        if prod:
            _prod_registry(f, self.events.database_url)
        return self

    @property
    def reports_dir(self) -> Path:
        """Local folder for HTML reports (copied to the artifact store when it is remote)."""
        return self.home / "reports"


def _prod_registry(f: FeastSettings, events_database_url: str) -> None:
    """The prod profile's Feast registry: in PostgreSQL (the events' database unless
    RELAY_FEAST__REGISTRY names another) or on S3; a file on one node's disk is refused."""
    registry = f.registry or events_database_url
    scheme = registry.partition("://")[0] if "://" in registry else "file"
    if scheme.startswith("sqlite") or scheme == "file":
        raise ConfigError(
            "RELAY_FEAST__REGISTRY must be a database URL or s3:// in the prod profile, not a "
            f"path on one node's disk: {registry}"
        )
    # SQLAlchemy maps a bare postgresql:// to psycopg2; Feast rewrites it to psycopg (v3),
    # with a warning on every start. Say so here instead.
    if registry.startswith("postgresql://"):
        registry = "postgresql+psycopg://" + registry.removeprefix("postgresql://")
    f.registry = registry


def _prod_serving(sv: ServingSettings) -> None:
    """The prod profile's endpoint: two replicas of each deployment at least (one dying must not
    take the endpoint down), and the three secrets (:mod:`relay.serve.auth`)."""
    for name in ("model_replicas", "router_replicas"):
        if name not in sv.model_fields_set:
            setattr(sv, name, 2)
        elif getattr(sv, name) < 2:
            raise ConfigError(f"RELAY_SERVING__{name.upper()} must be ≥ 2 in the prod profile")
    missing = [
        f"RELAY_SERVING__{name.upper()}"
        for name in ("api_keys_file", "admin_token_file", "bucket_salt_file")
        if getattr(sv, name) is None
    ]
    if missing:
        raise ConfigError(f"the prod profile needs {', '.join(missing)} (secret files)")


def _project_root() -> Path:
    # plugins/relay/settings/__init__.py -> project root; a checkout or an editable install.
    return Path(__file__).resolve().parents[3]


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests and long-lived processes that change the environment)."""
    get_settings.cache_clear()
