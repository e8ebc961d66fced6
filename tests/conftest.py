"""Test-wide set-up: every test run gets its own RELAY_HOME, so nothing touches ./var."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_HOME: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _HOME
    # Set before any relay import: settings are read once, on first use.
    _HOME = Path(tempfile.mkdtemp(prefix="relay-test-"))
    os.environ["RELAY_HOME"] = str(_HOME)
    for key in [k for k in os.environ if k.startswith("RELAY_") and k != "RELAY_HOME"]:
        del os.environ[key]
    # The tests replay fixed days of November 2026 through the endpoint; the contract refuses
    # an order created more than a month before now (tests/unit/serve/test_contract.py).
    os.environ["RELAY_SERVING__CREATED_AT_MAX_AGE_S"] = str(10 * 365 * 86_400)
    # On 2 busy cores an online read now and then takes longer than production's 50 ms; a test
    # comparing served with offline predictions must not get the defaults for it. The tests of
    # the timeout itself set their own (tests/unit/features/test_guarded.py, test_serving.py).
    os.environ["RELAY_FEAST__ONLINE_READ_TIMEOUT_S"] = "1.0"
    # Likewise a model call: four clients on 2 cores reach ~1.75 s at worst (test_serving.py).
    os.environ["RELAY_SERVING__MODEL_TIMEOUT_S"] = "10.0"


def pytest_unconfigure(config: pytest.Config) -> None:
    if _HOME is not None:
        shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def relay_home() -> Path:
    assert _HOME is not None
    return _HOME
