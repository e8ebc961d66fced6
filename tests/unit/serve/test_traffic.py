"""The canary split: deterministic by order id, close to its share, targeted, validated."""

import json

import pytest

from relay.serve.traffic import OrderTargeting, TrafficSplit, bucket


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


# Targeting ------------------------------------------------------------------------------------

ZONES = [f"Z{i:03d}" for i in range(1, 41)]


def _orders(zones=ZONES, hours=range(24), per=5):
    return [(f"{z}-{h}-{i}", z, h) for z in zones for h in hours for i in range(per)]


def test_a_zone_targeted_split_sends_exactly_that_zones_orders_to_the_candidate():
    split = TrafficSplit("v1", "v2", 1.0, OrderTargeting(zones=("Z007",)))
    orders = _orders()
    groups = split.assign(*zip(*orders, strict=True))
    assert {orders[i][1] for i in groups["v2"]} == {"Z007"}
    assert len(groups["v2"]) == sum(z == "Z007" for _, z, _ in orders)  # all of them
    assert "Z007" not in {orders[i][1] for i in groups["v1"]}
    # Within the zone the share applies by order hash; other zones still never see v2.
    tenth = TrafficSplit("v1", "v2", 0.1, OrderTargeting(zones=("Z007",)))
    got = [tenth.version_for(o, z, h) for o, z, h in orders if z == "Z007"]
    assert 0 < got.count("v2") < len(got) / 4
    assert all(tenth.version_for(o, z, h) == "v1" for o, z, h in orders if z != "Z007")


def test_an_hour_targeted_split_sends_only_those_hours_orders():
    split = TrafficSplit("v1", "v2", 1.0, OrderTargeting(hours=(18, 19)))
    for oid, zone, hour in _orders():
        assert split.version_for(oid, zone, hour) == ("v2" if hour in (18, 19) else "v1")
    both = TrafficSplit("v1", "v2", 1.0, OrderTargeting(zones=("Z003",), hours=(18,)))
    assert both.version_for("o", "Z003", 18) == "v2"
    assert both.version_for("o", "Z003", 19) == "v1"
    assert both.version_for("o", "Z004", 18) == "v1"


def test_a_hashed_share_of_zones_picks_a_stable_set_of_zones():
    zones = [f"Z{i:03d}" for i in range(1, 1001)]
    tenth = OrderTargeting(zone_share=0.1)
    picked = {z for z in zones if tenth.matches(z, 12)}
    assert 0.07 <= len(picked) / len(zones) <= 0.13
    assert picked == {z for z in zones if OrderTargeting(zone_share=0.1).matches(z, 3)}
    assert picked <= {z for z in zones if OrderTargeting(zone_share=0.5).matches(z, 12)}
    split = TrafficSplit("v1", "v2", 1.0, tenth)
    for oid, zone, hour in _orders(zones=zones[:100], hours=[12], per=3):
        assert split.version_for(oid, zone, hour) == ("v2" if zone in picked else "v1")


def test_targeting_round_trips_through_the_config_and_old_configs_still_load():
    for targeting in (
        OrderTargeting(zones=("Z001", "Z002"), hours=(7,)),
        OrderTargeting(zone_share=0.1),
    ):
        split = TrafficSplit("v1", "v2", 0.5, targeting)
        config = json.loads(json.dumps(split.to_config()))
        assert TrafficSplit.from_config(config) == split
    old = {"stable": "v1", "candidate": "v2", "candidate_share": 0.1}
    assert TrafficSplit.from_config(old) == TrafficSplit("v1", "v2", 0.1)
    assert TrafficSplit("v1", "v2", 0.1).to_config() == old


def test_bad_targeting_and_a_targeted_split_without_zone_or_hour():
    with pytest.raises(ValueError, match="not both"):
        OrderTargeting(zones=("Z001",), zone_share=0.1)
    with pytest.raises(ValueError, match=r"0\.\.23"):
        OrderTargeting(hours=(24,))
    with pytest.raises(ValueError, match="zone_share"):
        OrderTargeting(zone_share=0.0)
    with pytest.raises(ValueError, match="zone and hour"):
        TrafficSplit("v1", "v2", 1.0, OrderTargeting(hours=(1,))).version_for("o")
