"""Stopping the stack forgets the Ray head it stopped, and only that one."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.infra import processes
from relay.settings import Settings


@pytest.mark.parametrize(("noted", "kept"), [("10.0.0.5:6380", False), ("10.0.0.5:7000", True)])
def test_stop_all_forgets_only_the_head_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, noted: str, kept: bool
) -> None:
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "raytmp"))
    marker = tmp_path / "raytmp" / "ray" / "ray_current_cluster"
    marker.parent.mkdir(parents=True)
    marker.write_text(noted + "\n")
    settings = Settings(home=tmp_path / "home")
    assert settings.ray.gcs_port == 6380
    processes.stop_all(settings)  # nothing recorded as running: only the note is looked at
    assert marker.exists() is kept
