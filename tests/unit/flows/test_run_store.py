"""Run folders: where a step's copy lives, what it pulls and pushes; the local profile copies
nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relay.flows import run_store
from relay.flows.run_store import Stat, scratch_path, to_pull, to_push
from relay.settings import Settings


def test_a_run_key_is_one_safe_folder_name() -> None:
    assert run_store.run_key("manual__2026-11-20T00:00:00+00:00") == (
        "manual__2026-11-20T00_00_00_00_00"
    )
    assert run_store.run_key("..") == "run"
    assert run_store.run_key("../../etc") == "_.._etc"


def test_the_copy_of_a_run_folder_keeps_its_place_under_scratch(tmp_path: Path) -> None:
    runs = "s3://artifacts/eta/runs"
    assert scratch_path(f"{runs}/r1/model", runs, tmp_path) == tmp_path / "r1" / "model"
    assert scratch_path(f"{runs}/r1", runs + "/", tmp_path) == tmp_path / "r1"
    # Outside the runs' root: under _uri, still inside scratch.
    other = scratch_path("s3://other/x/y", runs, tmp_path)
    assert other == tmp_path / "_uri" / "other" / "x" / "y"
    with pytest.raises(ValueError, match="climbs"):
        scratch_path(f"{runs}/r1/../../../etc", runs, tmp_path)
    # A local path is used as it is: no copy.
    assert scratch_path("/data/runs/r1", runs, tmp_path) == Path("/data/runs/r1")


def test_pull_fetches_missing_and_changed_files_only() -> None:
    remote = {"model/model.pt": Stat(10, 5), "tune/best_config.json": Stat(3, 7), "a": Stat(1, 1)}
    local = {"model/model.pt": Stat(10, 5), "tune/best_config.json": Stat(3, 6), "mine": Stat(1, 1)}
    assert to_pull(remote, local) == ["a", "tune/best_config.json"]
    assert to_pull({}, local) == []


def test_push_sends_what_the_step_wrote_or_changed() -> None:
    before = {"model/model.pt": Stat(10, 5), "keep.json": Stat(2, 2)}
    after = {"model/model.pt": Stat(12, 9), "keep.json": Stat(2, 2), "new.json": Stat(1, 3)}
    assert to_push(before, after) == ["model/model.pt", "new.json"]
    assert to_push(after, after) == []


def test_the_local_profile_uses_the_run_folder_itself(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    uri = run_store.run_uri("manual__1", s)
    assert uri == str(tmp_path / "runs" / "manual__1")
    with run_store.workspace(f"{uri}/model", s) as folder:
        assert folder == tmp_path / "runs" / "manual__1" / "model" and folder.is_dir()
        (folder / "model.pt").write_bytes(b"w")
    assert (tmp_path / "runs" / "manual__1" / "model" / "model.pt").read_bytes() == b"w"
    path = run_store.write_text(f"{uri}/tune/best_config.json", "{}", s)
    assert run_store.read_text(path, s) == "{}" and run_store.exists(path, s)
    with pytest.raises(FileNotFoundError):
        run_store.read_text(f"{uri}/missing.json", s)


def test_a_local_root_other_than_scratch_is_synced_like_a_remote_one(tmp_path: Path) -> None:
    """The listing and copy logic on two local folders: pull, change, push."""
    shared, scratch = tmp_path / "shared", tmp_path / "scratch"
    (shared / "r1" / "tune").mkdir(parents=True)
    (shared / "r1" / "tune" / "best_config.json").write_text('{"lr": 1}')
    fetched = run_store.pull(str(shared / "r1"), scratch / "r1")
    assert fetched == ["tune/best_config.json"]
    copy = scratch / "r1" / "tune" / "best_config.json"
    assert copy.read_text() == '{"lr": 1}'
    # The copy carries the source's time: pulling again fetches nothing.
    assert run_store.pull(str(shared / "r1"), scratch / "r1") == []
    before = run_store.local_listing(scratch / "r1")
    (scratch / "r1" / "model").mkdir()
    (scratch / "r1" / "model" / "model.pt").write_bytes(b"weights")
    names = to_push(before, run_store.local_listing(scratch / "r1"))
    run_store.push(scratch / "r1", str(shared / "r1"), names)
    assert (shared / "r1" / "model" / "model.pt").read_bytes() == b"weights"
    assert (
        os.stat(scratch / "r1" / "model" / "model.pt").st_mtime_ns
        == os.stat(shared / "r1" / "model" / "model.pt").st_mtime_ns
    )
