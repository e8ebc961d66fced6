"""The relay CLI, run as a user runs it."""

import os
import subprocess
import sys


def _relay(*args: str, home) -> subprocess.CompletedProcess:
    env = {**os.environ, "RELAY_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_generate_then_validate_clean_and_corrupted(tmp_path):
    ok = _relay("generate", "--date", "2026-11-01", "--orders", "2000", home=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "lake/raw/orders/date=2026-11-01/part-0.parquet").exists()
    good = _relay("validate", "--date", "2026-11-01", home=tmp_path)
    assert good.returncode == 0, good.stderr
    assert (tmp_path / "lake/validated/orders/date=2026-11-01/part-0.parquet").exists()

    _relay(
        "generate",
        "--date",
        "2026-11-02",
        "--orders",
        "2000",
        "--scenario",
        "late_rows",
        home=tmp_path,
    )
    bad = _relay("validate", "--date", "2026-11-02", home=tmp_path)
    assert bad.returncode == 1
    assert "expect_column_values_to_be_between" in bad.stderr and "created_at" in bad.stderr
    assert not (tmp_path / "lake/validated/orders/date=2026-11-02").exists()


def test_bad_option_names_the_option(tmp_path):
    res = _relay("generate", "--date", "2026-11-01", "--scenario", "meteor", home=tmp_path)
    assert res.returncode == 2 and "--scenario" in res.stderr
    res = _relay("generate", "--date", "20261101", home=tmp_path)
    assert res.returncode == 2 and "--date" in res.stderr
