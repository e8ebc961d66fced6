"""The canary split: deterministic by order id, close to its share, validated."""

import pytest

from relay.serve.traffic import TrafficSplit, bucket


def test_split_sends_its_share_and_is_deterministic():
    split = TrafficSplit("v1", "v2", 0.10)
    ids = [f"O20261121-{i:07d}" for i in range(2000)]
    first = [split.version_for(o) for o in ids]
    assert 0.08 <= first.count("v2") / len(ids) <= 0.12
    assert first == [split.version_for(o) for o in ids]


def test_growing_the_share_only_moves_orders_towards_the_candidate():
    ids = [f"id-{i}" for i in range(5000)]
    small = TrafficSplit("v1", "v2", 0.01)
    large = TrafficSplit("v1", "v2", 0.50)
    for o in ids:
        if small.version_for(o) == "v2":
            assert large.version_for(o) == "v2"  # a canary customer stays on the canary


def test_assign_groups_indexes_by_version():
    split = TrafficSplit("v1", "v2", 0.5)
    ids = [f"x{i}" for i in range(100)]
    groups = split.assign(ids)
    assert sorted(i for idx in groups.values() for i in idx) == list(range(100))
    assert split.shares() == {"v1": 0.5, "v2": 0.5}


def test_full_and_empty_shares_and_bad_configs():
    assert TrafficSplit("v1", "v2", 1.0).version_for("a") == "v2"
    assert TrafficSplit("v1", "v2", 0.0).version_for("a") == "v1"
    assert TrafficSplit("v1").shares() == {"v1": 1.0}
    with pytest.raises(ValueError, match="candidate_share"):
        TrafficSplit("v1", "v2", 1.5)
    with pytest.raises(ValueError, match="needs a candidate"):
        TrafficSplit("v1", None, 0.1)
    assert 0 <= bucket("anything") < 10_000
