"""Fixtures that stand up real services: a Feast store over the lake, Redis, an S3 endpoint."""

from __future__ import annotations

import datetime as dt
import socket
import uuid
from collections.abc import Iterator

import pytest

from relay.settings import Settings, get_settings

DAYS = (dt.date(2026, 11, 19), dt.date(2026, 11, 20))
ORDERS_PER_DAY = 3000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def lake_days() -> tuple[dt.date, ...]:
    """Two validated days with feature tables in the test lake."""
    from relay.features.store import write_feature_tables
    from relay.ingest.landing import land_generated_batch, validate_partition

    for day in DAYS:
        land_generated_batch(day, ORDERS_PER_DAY)
        validate_partition(day)
        write_feature_tables(day)
    return DAYS


def _feast_settings(online: str, redis_db: int = 15) -> Settings:
    s = get_settings().model_copy(deep=True)
    tag = f"{online}_{uuid.uuid4().hex[:6]}"
    assert s.feast.registry_path is not None
    s.feast.project = f"relay_test_{tag}"
    s.feast.registry_path = s.feast.registry_path.parent / f"registry_{tag}.db"
    s.feast.sqlite_path = s.feast.registry_path.parent / f"online_{tag}.db"
    s.feast.online_store = online  # type: ignore[assignment]
    s.feast.redis_connection = f"127.0.0.1:6379,db={redis_db}"
    return s


@pytest.fixture(scope="session", params=["sqlite", "redis"])
def feast_settings(request, lake_days) -> Iterator[Settings]:
    """A Feast store applied and materialized over the test lake, on SQLite or on Redis."""
    from relay.features.store import apply, materialize

    s = _feast_settings(request.param)
    if request.param == "redis":
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379, db=15)
        client.ping()  # the machine's Redis must be up: .ci/run starts it
        client.flushdb()
    apply(s)
    end = dt.datetime.combine(lake_days[-1] + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    materialize(end, settings=s)
    yield s
    if request.param == "redis":
        client.flushdb()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a loopback port: S3 over real HTTP."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def atomic_moto_puts(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's S3 PUT made atomic, as S3 and MinIO are.

    moto 5.2.5 checks If-Match / If-None-Match and then stores the object as two steps with no
    lock between them, so two racing conditional PUTs can both pass (seen with a short thread
    switch interval). S3 and MinIO do the check and the write as one step; serialising moto's PUT
    handler gives the fake that guarantee. The code under test is untouched.
    """
    import threading

    from moto.s3.responses import S3Response

    lock = threading.Lock()
    put_object = S3Response.put_object

    def atomic_put_object(self):  # type: ignore[no-untyped-def]
        with lock:
            return put_object(self)

    monkeypatch.setattr(S3Response, "put_object", atomic_put_object)
