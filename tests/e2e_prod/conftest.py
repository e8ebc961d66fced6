"""The production profile on this machine (``make e2e-prod``), with configuration only.

PostgreSQL (Airflow's database; the event store, where Feast's registry lives too), Redis (the
online store), an S3 endpoint over HTTP (moto's server, in a process of its own) and a two-node
Ray cluster (:mod:`relay.infra.local_cluster`): a head and a worker, each with its own temp dir,
ports and ``RELAY_HOME``, so nothing is shared between them but the network. Airflow runs its four
services on PostgreSQL, from a home of its own, as in ``make up``.

Everything started here is stopped by its process group; the databases, the Redis database and the
buckets are dropped at the end.
"""

from __future__ import annotations

import secrets
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.settings import Settings, get_settings, reset_settings

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
REDIS_DB = 12
#: make demo's short rollout and monitoring windows: the life cycle plays in minutes.
SHORT_LOOP = {
    "RELAY_ROLLOUT__MIN_REQUESTS": "10",
    "RELAY_ROLLOUT__MIN_LABELLED": "10",
    "RELAY_ROLLOUT__PLAN_SHARES": "[0.1,0.3]",
    "RELAY_ROLLOUT__PLAN_ZONE_SHARE": "0.3",
    "RELAY_ROLLOUT__PLAN_DURATIONS_S": "[20,20,20,20]",
    "RELAY_ROLLOUT__PLAN_MAX_FACTOR": "15",
    "RELAY_ROLLOUT__FORCED_MAX_SHARE": "0.1",
    "RELAY_ROLLOUT__TICK_S": "3",
    "RELAY_ROLLOUT__FOLLOW_POLL_S": "3",
    "RELAY_ROLLOUT__GUARD_BAKE_S": "60",
    "RELAY_MONITORING__WINDOW_HOURS": "1",
    "RELAY_MONITORING__MIN_ROWS": "200",
    "RELAY_MONITORING__PERSIST_WINDOWS": "1",
    # The gate's absolute bar is a business threshold for a model trained on 20,000 orders a
    # day; here each day has 2,000 and the retrain learns one storm day (storms are slower and
    # less predictable): its MAE is judged against the champion's, not against 8 minutes.
    "RELAY_GATE__MAX_MAE_MINUTES": "15",
    "RELAY_GATE__MAX_P90_ABS_ERROR_MINUTES": "25",
    "RELAY_GATE__MIN_WITHIN_5_MIN": "0.2",
}
#: Logical CPUs per Ray node, and per Train worker: more than half a node, so the two workers
#: of a run cannot share one and land on both; what is left of each node holds the endpoint's
#: replicas (sized down for 2 physical cores) and Ray Data's tasks before training starts.
NODE_CPUS = 2
TRAIN_CPUS = 1.5


def _timed(label: str, t0: float) -> None:
    print(f"[e2e-prod] {label}: {time.monotonic() - t0:.1f} s", flush=True)


def _pg_admin() -> Any:
    import psycopg2

    conn = psycopg2.connect(dbname="postgres", **PG)
    conn.autocommit = True
    return conn


def _moto(home: Path, s: Settings) -> str:
    """moto's S3 server in a process (and process group) of its own, recorded in ``home``."""
    from relay.infra.local_cluster import free_port
    from relay.infra.processes import http_ok, start_process, venv_bin, wait_until

    port = free_port()
    argv = [venv_bin("moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    start_process("moto", argv, {}, s)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(f"{url}/moto-api/"), "moto's S3 server", 60)
    return url


def _secrets(folder: Path) -> dict[str, str]:
    """The endpoint's three secret files (a mounted secret on every node, as /run/secrets)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in ("api_keys", "admin_token", "bucket_salt"):
        path = folder / name
        path.write_text(secrets.token_urlsafe(24) + "\n")
        path.chmod(0o600)
        out[f"RELAY_SERVING__{name.upper()}_FILE"] = str(path)
    return out


def _groups(*homes: Path) -> list[int]:
    """The process groups recorded under each home's ``run/`` (:mod:`relay.infra.processes`)."""
    return [int(p.read_text()) for h in homes for p in sorted((h / "run").glob("*.pid"))]


def _drop_bucket(s3: Any, bucket: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})
    s3.delete_bucket(Bucket=bucket)


@pytest.fixture(scope="module")
def prod_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Services, a two-node Ray cluster and Airflow on PostgreSQL, in the prod profile."""
    import boto3
    import redis

    from relay.infra import airflow_api, local_cluster, processes
    from relay.infra import airflow_services as af
    from relay.infra.local_cluster import free_port
    from relay.infra.stack import DAGS

    root = tmp_path_factory.mktemp("prod")
    tag = uuid.uuid4().hex[:8]
    services_home = root / "services"
    # The machine's own settings object for moto's pid file: the profile is not set yet.
    services = get_settings().model_copy(deep=True)
    services.home = services_home
    dbs = {"airflow": f"relay_e2e_airflow_{tag}", "events": f"relay_e2e_events_{tag}"}
    buckets = {"lake": f"relay-lake-{tag}", "artifacts": f"relay-artifacts-{tag}"}
    cluster = None
    airflow: Settings | None = None
    s3_url = ""
    admin = _pg_admin()
    online = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    t0 = time.monotonic()
    try:
        s3_url = _moto(services_home, services)
        s3 = boto3.client(
            "s3",
            endpoint_url=s3_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # moto's: any key works
        )
        for bucket in buckets.values():
            s3.create_bucket(Bucket=bucket)
        with admin.cursor() as cur:
            for db in dbs.values():
                cur.execute(f'CREATE DATABASE "{db}"')
        online.flushdb()
        pg = f"{PG['user']}@{PG['host']}:{PG['port']}"
        env = {
            "RELAY_PROFILE": "prod",
            "RELAY_LAKE__URI": f"s3://{buckets['lake']}/eta",
            "RELAY_ARTIFACTS__URI": f"s3://{buckets['artifacts']}/eta",
            "RELAY_S3__ENDPOINT_URL": s3_url,
            "RELAY_S3__REGION": "us-east-1",
            "AWS_ENDPOINT_URL": s3_url,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "RELAY_FEAST__ONLINE_STORE": "redis",
            "RELAY_FEAST__REDIS_CONNECTION": f"127.0.0.1:6379,db={REDIS_DB}",
            "RELAY_EVENTS__DATABASE_URL": f"postgresql+psycopg://{pg}/{dbs['events']}",
            "RELAY_AIRFLOW__DATABASE_URL": f"postgresql+psycopg2://{pg}/{dbs['airflow']}",
            "RELAY_AIRFLOW__API_URL": f"http://127.0.0.1:{free_port()}",
            "RELAY_RAY__DASHBOARD_URL": f"http://127.0.0.1:{free_port()}",
            "RELAY_RAY__GCS_PORT": str(free_port()),
            "RELAY_RAY__NUM_CPUS": str(NODE_CPUS),
            "RELAY_SERVING__PORT": str(free_port()),
            "RELAY_SERVING__MODEL_CPUS": "0.1",
            "RELAY_SERVING__ROUTER_CPUS": "0.05",
            "RELAY_TRAIN__CPUS_PER_WORKER": str(TRAIN_CPUS),
            "RELAY_TRAIN__NUM_WORKERS": "2",
            "RELAY_DATA__ORDERS_PER_DAY": "2000",
            **SHORT_LOOP,
            **_secrets(root / "secrets"),
            # Ray's token: every node and client holds it (no ~/.ray/auth_token shared).
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
            "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",
        }
        _timed("services (moto, buckets, databases, redis)", t0)
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            # Airflow's (and this process's) own home: neither node's.
            mp.setenv("RELAY_HOME", str(root / "airflow-node"))
            reset_settings()
            s = get_settings()
            t1 = time.monotonic()
            cluster = local_cluster.start(s, root / "ray", env, num_cpus=NODE_CPUS)
            _timed("two-node Ray cluster", t1)
            mp.setenv("RELAY_RAY__ADDRESS", cluster.gcs_address)
            reset_settings()
            s = get_settings()
            for k, v in af.airflow_env(s).items():
                mp.setenv(k, v)
            t1 = time.monotonic()
            airflow = s
            af.start_airflow(s)
            client = airflow_api.api(s)
            for dag_id in DAGS:
                airflow_api.wait_for_dag(client, dag_id)
            _timed("Airflow on PostgreSQL", t1)
            yield {"settings": s, "cluster": cluster, "api": client, "root": root, "tag": tag}
    finally:
        t1 = time.monotonic()
        # Every process group started, read before they are stopped: checked gone at the end.
        groups = _groups(services_home, root / "airflow-node", *(root / "ray").glob("*/home"))
        if airflow is not None:
            processes.stop_all(airflow, timeout_s=15)  # Airflow's four services
        if cluster is not None:
            local_cluster.stop(cluster)
            local_cluster.remove_temp_dirs(cluster)
        if s3_url:
            for bucket in buckets.values():
                try:
                    _drop_bucket(s3, bucket)
                except Exception as exc:  # report it, and go on freeing the rest
                    print(f"[e2e-prod] bucket {bucket}: {exc}", file=sys.stderr)
        processes.stop_all(services, timeout_s=10)  # moto
        with admin.cursor() as cur:
            for db in dbs.values():
                cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()
        online.flushdb()
        reset_settings()
        _timed("teardown", t1)
        alive = [g for g in groups if processes._alive(g, group=True)]  # zombies aside
        assert not alive, f"process groups left running: {alive}"
