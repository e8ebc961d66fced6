"""A loaded replica's heap leaves the collector's scans (relay.serve.heap)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from relay.serve.heap import settle


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the test session scans as before


def test_what_the_process_holds_is_frozen_and_full_collections_skip_it(unfrozen):
    held = [[i] for i in range(50_000)]  # long-lived containers, as a loaded model's
    frozen = settle(True)
    # Not equal to the count read after: another thread of the test process may free frozen
    # objects in between (refcounting still frees them), which leaves the generation.
    assert frozen >= len(held) and gc.get_freeze_count() >= len(held)
    # A full collection now scans only what was made since: none of what was held.
    assert len(gc.get_objects()) < len(held)
    made = [[i] for i in range(1000)]
    assert len(made) <= len(gc.get_objects()) < len(held)


def test_off_it_freezes_nothing(unfrozen):
    assert settle(False) == 0
    assert gc.get_freeze_count() == 0
