"""Feast's DuckDB offline store reading the lake on S3, with no internet.

Feast reads a ``s3://`` source with ``ibis.read_parquet`` on ibis's default DuckDB connection,
and ibis then asks DuckDB for its ``httpfs`` extension, which DuckDB downloads on first use: on a
Ray node or an Airflow worker with no way out, the training set's first read fails there. The
extension ships as a wheel pinned to DuckDB's own version (``duckdb-extension-httpfs``), so
:func:`enable_s3` installs it from that wheel, loads it, and gives the connection an S3 secret
for ``RELAY_S3__*`` and this process's ``AWS_*`` keys (never the settings', never logged).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from relay.errors import ConfigError
from relay.settings import S3Settings

_LAKE_CREDENTIAL = "relay_lake_s3"  # the name DuckDB files the S3 secret under
_READY = "_relay_s3_ready"  # set on a backend once it can read S3


def httpfs_extension() -> Path:
    """The ``httpfs`` extension file shipped for the installed DuckDB version."""
    import duckdb

    try:
        import duckdb_extension_httpfs
    except ImportError as exc:  # the features extra installs it
        raise ConfigError(
            "reading the lake on S3 needs the duckdb-extension-httpfs wheel (relay[features])"
        ) from exc
    base = Path(duckdb_extension_httpfs.__file__).parent / "extensions"
    found = sorted(base.glob(f"v{duckdb.__version__}/**/httpfs.duckdb_extension"))
    if not found:
        shipped = sorted(p.name for p in base.iterdir()) if base.is_dir() else []
        raise ConfigError(
            f"duckdb-extension-httpfs has no extension for DuckDB {duckdb.__version__} "
            f"(it ships {shipped}): pin both to the same version"
        )
    return found[0]


def secret_sql(s3: S3Settings, env: dict[str, str] | None = None) -> str:
    """``CREATE OR REPLACE SECRET`` for the lake's S3: the endpoint from settings (path-style and
    plain HTTP for MinIO or moto), the keys from ``AWS_*`` in ``env`` (this process's)."""
    env = dict(os.environ) if env is None else env
    opts: dict[str, str] = {"TYPE": "s3", "REGION": s3.region}
    if env.get("AWS_ACCESS_KEY_ID"):
        opts["KEY_ID"] = env["AWS_ACCESS_KEY_ID"]
        opts["SECRET"] = env.get("AWS_SECRET_ACCESS_KEY", "")
    if env.get("AWS_SESSION_TOKEN"):
        opts["SESSION_TOKEN"] = env["AWS_SESSION_TOKEN"]
    if s3.endpoint_url:
        url = urlsplit(s3.endpoint_url)
        opts["ENDPOINT"] = url.netloc
        opts["URL_STYLE"] = "path"
        opts["USE_SSL"] = "true" if url.scheme == "https" else "false"
    body = ", ".join(
        f"{k} {v}" if k in {"TYPE", "USE_SSL"} else f"{k} '{_quote(v)}'" for k, v in opts.items()
    )
    return f"CREATE OR REPLACE SECRET {_LAKE_CREDENTIAL} ({body})"


def _quote(value: str) -> str:
    return value.replace("'", "''")


def enable_s3(s3: S3Settings, backend: Any | None = None) -> Any:
    """Make ibis's default DuckDB connection (or ``backend``) read ``s3://``; once per connection.

    Returns the backend. Call it before Feast's first offline read of an S3 lake.
    """
    import ibis

    con = backend if backend is not None else ibis.get_backend()
    if getattr(con, _READY, False):
        return con
    raw = con.con  # the duckdb connection under ibis
    raw.install_extension(str(httpfs_extension()))
    raw.load_extension("httpfs")
    raw.execute(secret_sql(s3))
    setattr(con, _READY, True)
    return con
