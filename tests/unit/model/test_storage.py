"""Ray's storage for checkpoints and Tune results: S3 through pyarrow, without keys."""

from __future__ import annotations

import pickle

import pyarrow.fs as pafs

from relay.model.storage import ray_storage
from relay.settings import S3Settings


def test_s3_storage_gets_a_filesystem_on_the_configured_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-key")
    path, fs = ray_storage(
        "s3://artifacts/eta/ray_results/",
        S3Settings(endpoint_url="http://127.0.0.1:9000", region="eu-west-1"),
    )
    assert path == "artifacts/eta/ray_results"
    assert isinstance(fs, pafs.S3FileSystem)
    assert fs.region == "eu-west-1"
    # Ray pickles the filesystem to every worker: no key travels with it.
    blob = pickle.dumps(fs)
    assert b"very-secret-key" not in blob and b"AKIDEXAMPLE" not in blob
    assert b"127.0.0.1:9000" in blob


def test_a_local_path_is_made_absolute_and_needs_no_filesystem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ray_storage("ray_results", S3Settings()) == (str(tmp_path / "ray_results"), None)
