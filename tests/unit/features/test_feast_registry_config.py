"""Which Feast registry a location names."""

from __future__ import annotations

from relay.features.feast_registry import is_sql, registry_config
from relay.settings import FeastSettings


def test_a_database_url_is_feasts_sql_registry():
    url = "postgresql+psycopg://relay@db:5432/relay"
    assert registry_config(FeastSettings(registry=url)) == {
        "registry_type": "sql",
        "path": url,
        "schema_mode": "auto",
    }
    assert is_sql("mysql+pymysql://x@y/z") and is_sql("sqlite:////tmp/r.db")


def test_s3_and_paths_are_file_registries(tmp_path):
    s3 = registry_config(FeastSettings(registry="s3://bucket/feast/registry.pb"))
    assert s3 == {"registry_type": "file", "path": "s3://bucket/feast/registry.pb"}
    path = tmp_path / "feast" / "registry.db"
    assert registry_config(FeastSettings(registry_path=path)) == {
        "registry_type": "file",
        "path": str(path),
    }
    assert path.parent.is_dir()  # Feast does not create it
    assert not is_sql(str(path)) and not is_sql("s3://bucket/key")
