import pytest

from relay.errors import ConfigError
from relay.settings import Profile, Settings


def test_local_profile_puts_everything_under_home(tmp_path, monkeypatch):
    monkeypatch.setenv("RELAY_HOME", str(tmp_path))
    s = Settings()
    assert s.profile is Profile.LOCAL
    assert s.lake.uri == str(tmp_path / "lake")
    assert s.artifacts.uri == str(tmp_path / "artifacts")
    assert s.feast.online_store == "sqlite"
    assert s.feast.sqlite_path == tmp_path / "feast" / "online.db"
    assert s.airflow.database_url == f"sqlite:///{tmp_path / 'airflow' / 'airflow.db'}"
    assert (s.feast.repo_path / "feature_store.yaml").exists()


def test_nested_environment_variables_override(tmp_path, monkeypatch):
    monkeypatch.setenv("RELAY_HOME", str(tmp_path))
    monkeypatch.setenv("RELAY_FEAST__ONLINE_STORE", "redis")
    monkeypatch.setenv("RELAY_FEAST__REDIS_CONNECTION", "redis.internal:6380")
    monkeypatch.setenv("RELAY_DATA__ORDERS_PER_DAY", "123")
    s = Settings()
    assert s.feast.online_store == "redis"
    assert s.feast.redis_connection == "redis.internal:6380"
    assert s.data.orders_per_day == 123


def test_prod_profile_defaults_to_redis_and_requires_remote_stores(monkeypatch):
    monkeypatch.setenv("RELAY_PROFILE", "prod")
    with pytest.raises(ConfigError, match="RELAY_LAKE__URI"):
        Settings()
    monkeypatch.setenv("RELAY_LAKE__URI", "s3://lake/eta")
    monkeypatch.setenv("RELAY_ARTIFACTS__URI", "s3://artifacts/eta")
    monkeypatch.setenv("RELAY_AIRFLOW__DATABASE_URL", "postgresql://airflow@db/airflow")
    with pytest.raises(ConfigError, match=r"API_KEYS_FILE.*ADMIN_TOKEN_FILE.*BUCKET_SALT_FILE"):
        Settings()
    for name in ("API_KEYS", "ADMIN_TOKEN", "BUCKET_SALT"):
        monkeypatch.setenv(f"RELAY_SERVING__{name}_FILE", f"/run/secrets/{name.lower()}")
    with pytest.raises(ConfigError, match="RELAY_EVENTS__DATABASE_URL"):
        Settings()  # every router replica, on every node, stores events in one database
    monkeypatch.setenv("RELAY_EVENTS__DATABASE_URL", "postgresql://relay@db/relay")
    s = Settings()
    assert s.feast.online_store == "redis"
    assert s.lake.uri == "s3://lake/eta"
    assert (s.serving.model_replicas, s.serving.router_replicas) == (2, 2)
    monkeypatch.setenv("RELAY_SERVING__MODEL_REPLICAS", "3")
    assert Settings().serving.model_replicas == 3
    monkeypatch.setenv("RELAY_SERVING__ROUTER_REPLICAS", "1")
    with pytest.raises(ConfigError, match="ROUTER_REPLICAS must be ≥ 2"):
        Settings()


def test_the_local_profile_runs_one_replica_each_and_open(monkeypatch):
    s = Settings()
    assert (s.serving.model_replicas, s.serving.router_replicas) == (1, 1)
    assert s.serving.api_keys_file is None and s.serving.bucket_salt_file is None


def test_invalid_values_are_rejected(monkeypatch):
    monkeypatch.setenv("RELAY_FEAST__ONLINE_STORE", "cassandra")
    with pytest.raises(ValueError, match="online_store"):
        Settings()


def test_rule_thresholds_are_settings_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("RELAY_ROLLOUT__P99_ALPHA", "0.001")
    monkeypatch.setenv("RELAY_ROLLOUT__P99_MIN_REQUESTS", "400")
    monkeypatch.setenv("RELAY_ROLLOUT__QUALITY_Z", "3")
    monkeypatch.setenv("RELAY_GATE__DRIFT_SLICE_MARGIN", "0.2")
    s = Settings()
    assert (s.rollout.p99_alpha, s.rollout.p99_min_requests, s.rollout.quality_z) == (
        0.001,
        400,
        3.0,
    )
    assert s.gate.drift_slice_margin == 0.2
    monkeypatch.setenv("RELAY_ROLLOUT__P99_ALPHA", "1.5")
    with pytest.raises(ValueError, match="p99_alpha"):
        Settings()


def test_nothing_durable_lives_on_one_node_in_prod(monkeypatch):
    """prod: the Feast registry in PostgreSQL (the events' database), run folders and Ray's
    checkpoints beside the artifacts on S3; each node's home is scratch only."""
    monkeypatch.setenv("RELAY_PROFILE", "prod")
    monkeypatch.setenv("RELAY_LAKE__URI", "s3://lake/eta")
    monkeypatch.setenv("RELAY_ARTIFACTS__URI", "s3://artifacts/eta/")
    monkeypatch.setenv("RELAY_AIRFLOW__DATABASE_URL", "postgresql://airflow@db/airflow")
    monkeypatch.setenv("RELAY_EVENTS__DATABASE_URL", "postgresql://relay@db/relay")
    for name in ("API_KEYS", "ADMIN_TOKEN", "BUCKET_SALT"):
        monkeypatch.setenv(f"RELAY_SERVING__{name}_FILE", f"/run/secrets/{name.lower()}")
    s = Settings()
    # psycopg (v3), as Feast wants it, instead of SQLAlchemy's psycopg2 default
    assert s.feast.registry_location() == "postgresql+psycopg://relay@db/relay"
    assert s.runs.uri == "s3://artifacts/eta/runs"
    assert s.runs.scratch == s.home / "runs"
    assert s.train.storage_uri == "s3://artifacts/eta/ray_results"
    monkeypatch.setenv("RELAY_FEAST__REGISTRY", "s3://artifacts/eta/feast/registry.pb")
    monkeypatch.setenv("RELAY_RUNS__URI", "s3://runs/eta")
    monkeypatch.setenv("RELAY_TRAIN__STORAGE_URI", "s3://ckpt/eta")
    s = Settings()
    assert (s.feast.registry_location(), s.runs.uri, s.train.storage_uri) == (
        "s3://artifacts/eta/feast/registry.pb",
        "s3://runs/eta",
        "s3://ckpt/eta",
    )
    for local in ("/var/relay/registry.db", "sqlite:////var/relay/registry.db"):
        monkeypatch.setenv("RELAY_FEAST__REGISTRY", local)
        with pytest.raises(ConfigError, match="RELAY_FEAST__REGISTRY"):
            Settings()


def test_the_local_profile_keeps_everything_embedded(tmp_path, monkeypatch):
    monkeypatch.setenv("RELAY_HOME", str(tmp_path))
    s = Settings()
    assert s.feast.registry is None
    assert s.feast.registry_location() == str(tmp_path / "feast" / "registry.db")
    assert s.runs.uri == str(tmp_path / "runs") and s.runs.scratch == tmp_path / "runs"
    assert s.train.storage_uri == str(tmp_path / "ray_results")
    monkeypatch.setenv("RELAY_FEAST__REGISTRY", "postgresql+psycopg://postgres@127.0.0.1/feast")
    assert Settings().feast.registry_location() == "postgresql+psycopg://postgres@127.0.0.1/feast"
