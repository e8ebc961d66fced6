"""Fault injection's rules: what a fault does to a call, and when it ends by itself."""

from __future__ import annotations

import pytest

from relay.serve.faults import Fault, faults_from_config, faults_to_config


def test_a_fault_fails_the_share_of_calls_it_names() -> None:
    fault = Fault(error_rate=0.25, until=100.0)
    draws = [i / 1000 for i in range(1000)]
    assert sum(fault.fails(d) for d in draws) == 250
    assert not any(Fault(until=100.0).fails(d) for d in draws)  # a delay alone fails nothing


def test_a_fault_ends_by_itself_and_expired_ones_are_dropped() -> None:
    faults = {"v1": Fault(delay_ms=150, until=100.0), "v2": Fault(error_rate=1.0, until=50.0)}
    kept = faults_to_config(faults)
    assert faults_from_config(kept, now=10.0) == faults
    assert faults_from_config(kept, now=60.0) == {"v1": faults["v1"]}
    assert faults_from_config(kept, now=100.0) == {}
    assert faults_from_config(None) == {}


@pytest.mark.parametrize("bad", [{"delay_ms": -1.0}, {"error_rate": 1.5}, {"error_rate": -0.1}])
def test_a_fault_out_of_range_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        Fault(**bad)
