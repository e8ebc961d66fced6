"""Retry waits for a version the inline router could not load."""

from __future__ import annotations

from relay.serve.backoff import Backoff


def test_waits_double_per_failure_up_to_the_cap_and_a_success_resets_them() -> None:
    b = Backoff(first_s=1.0, max_s=5.0)
    assert b.due("v2", 0.0)
    assert b.failed("v2", 0.0) == 1.0
    assert not b.due("v2", 0.5) and b.due("v2", 1.0)
    assert b.failed("v2", 1.0) == 2.0
    assert b.failed("v2", 3.0) == 4.0
    assert b.failed("v2", 7.0) == 5.0  # capped
    assert not b.due("v2", 11.9) and b.due("v2", 12.0)
    assert b.due("v1", 7.5)  # another version is not held back
    b.succeeded("v2")
    assert b.due("v2", 12.0) and b.failed("v2", 12.0) == 1.0
