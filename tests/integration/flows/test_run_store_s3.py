"""Run folders on S3 (moto's server over HTTP): two nodes with their own scratch share a run
through the bucket only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from relay.flows import run_store
from relay.settings import Settings, get_settings, reset_settings

BUCKET = "relay-runs"


@pytest.fixture
def runs_uri(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    if BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=BUCKET)
    return f"s3://{BUCKET}/eta/runs"


def _node(tmp_path: Path, name: str, runs_uri: str, endpoint: str) -> Settings:
    """One node's settings: the shared runs root, its own home and scratch."""
    return Settings(home=tmp_path / name, runs={"uri": runs_uri}, s3={"endpoint_url": endpoint})


def _keys(endpoint: str, prefix: str) -> set[str]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"].removeprefix(prefix) for o in listed}


def test_a_step_pushes_what_it_wrote_and_another_node_pulls_it(
    runs_uri: str, s3_endpoint: str, tmp_path: Path
) -> None:
    a = _node(tmp_path, "a", runs_uri, s3_endpoint)
    b = _node(tmp_path, "b", runs_uri, s3_endpoint)
    run = run_store.run_uri("manual__2026-11-20T00:00:00+00:00", a)
    assert run == f"{runs_uri}/manual__2026-11-20T00_00_00_00_00"

    with run_store.workspace(f"{run}/model", a, fetch=False) as folder:
        assert folder == a.home / "runs" / "manual__2026-11-20T00_00_00_00_00" / "model"
        (folder / "data").mkdir()
        (folder / "model.pt").write_bytes(b"weights")
        (folder / "data" / "holdout.parquet").write_bytes(b"PAR1")
        assert _keys(s3_endpoint, "eta/runs/") == set()  # nothing until the step ends
    assert _keys(s3_endpoint, "eta/runs/manual__2026-11-20T00_00_00_00_00/model/") == {
        "model.pt",
        "data/holdout.parquet",
    }

    copy = run_store.fetch(f"{run}/model", b)
    assert copy.is_relative_to(b.home)
    assert (copy / "model.pt").read_bytes() == b"weights"
    assert (copy / "data" / "holdout.parquet").read_bytes() == b"PAR1"
    assert run_store.pull(f"{run}/model", copy, b) == []  # unchanged: not fetched again

    # Node b replaces one file; a's next pull fetches that one only.
    with run_store.workspace(f"{run}/model", b) as folder:
        (folder / "model.pt").write_bytes(b"weights v2")
    assert run_store.pull(f"{run}/model", a.home / "runs" / run.rsplit("/", 1)[1] / "model", a) == [
        "model.pt"
    ]


def test_a_failed_step_leaves_nothing_in_the_shared_folder(
    runs_uri: str, s3_endpoint: str, tmp_path: Path
) -> None:
    a = _node(tmp_path, "a", runs_uri, s3_endpoint)
    run = run_store.run_uri("failing", a)
    with (
        pytest.raises(RuntimeError, match="training died"),
        run_store.workspace(f"{run}/model", a, fetch=False) as folder,
    ):
        (folder / "model.pt").write_bytes(b"half")
        raise RuntimeError("training died")
    assert _keys(s3_endpoint, "eta/runs/failing/") == set()


@pytest.fixture
def prod_runs(runs_uri: str, s3_endpoint: str, tmp_path: Path, monkeypatch) -> Iterator[Settings]:
    """The process's settings with run folders on S3 (what a prod node reads)."""
    monkeypatch.setenv("RELAY_RUNS__URI", runs_uri)
    monkeypatch.setenv("RELAY_S3__ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("RELAY_RUNS__SCRATCH", str(tmp_path / "scratch"))
    reset_settings()
    try:
        yield get_settings()
    finally:
        monkeypatch.undo()
        reset_settings()


def test_the_training_steps_small_files_live_in_the_bucket(prod_runs: Settings, s3_endpoint):
    """reuse_hyperparameters → merge_overrides → the train job reads the config: S3 URIs all
    the way, as the DAG passes them."""
    from relay.flows import eta_training

    run = eta_training.run_uri("scheduled__x")
    assert run.startswith("s3://")
    config = eta_training.reuse_hyperparameters(f"{run}/tune")
    assert config == f"{run}/tune/best_config.json"
    merged = eta_training.merge_overrides(config, {"batch_size": 64})
    assert json.loads(run_store.read_text(merged))["batch_size"] == 64
    assert _keys(s3_endpoint, "eta/runs/scheduled__x/") == {"tune/best_config.json"}
    assert prod_runs.runs.scratch is not None
    assert not (prod_runs.runs.scratch / "scheduled__x").exists()  # small files go straight
