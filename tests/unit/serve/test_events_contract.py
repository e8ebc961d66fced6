"""POST /v1/events' contract: what an event may be, and the 422 naming what is not."""

import datetime as dt
import json

import pytest

from relay.serve.contract import Limits, Rejected
from relay.serve.events import MAX_EVENTS_PER_REQUEST, parse_events

NOW = dt.datetime(2026, 12, 2, 12, tzinfo=dt.UTC)
CREATED = {
    "type": "created",
    "order_id": "o1",
    "occurred_at": "2026-12-02T11:59:00",
    "courier_id": "C1",
    "merchant_id": "M1",
    "zone_id": "Z1",
    "distance_km": 2.5,
    "weather": "rain",
}


def _parse(body: object) -> list[dict]:
    return parse_events(json.dumps(body).encode(), Limits(), NOW)


def _refused(body: object) -> list[dict]:
    with pytest.raises(Rejected) as err:
        _parse(body)
    assert err.value.status == 422
    return err.value.detail


def test_one_event_or_a_batch_become_rows_in_utc():
    (row,) = _parse(CREATED)
    assert row["occurred_at"] == dt.datetime(2026, 12, 2, 11, 59, tzinfo=dt.UTC)
    assert row["zone_id"] == "Z1" and row["weather"] == "rain"
    rows = _parse(
        {
            "events": [
                CREATED,
                {"type": "delivered", "order_id": "o1", "occurred_at": "2026-12-02T13:30:00+01:00"},
            ]
        }
    )
    assert [r["type"] for r in rows] == ["created", "delivered"]
    assert rows[1]["occurred_at"] == dt.datetime(2026, 12, 2, 12, 30, tzinfo=dt.UTC)
    assert rows[1]["zone_id"] is None
    assert _parse({**CREATED, "weather": None})[0]["weather"] is None
    picked = {"type": "picked_up", "order_id": "o1", "occurred_at": "2026-12-02T11:59:30"}
    assert _parse(picked)[0]["prep_minutes"] is None
    assert _parse({**picked, "prep_minutes": 12.5})[0]["prep_minutes"] == 12.5


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (
            {k: v for k, v in CREATED.items() if k != "courier_id"},
            ["body", "created", "courier_id"],
        ),
        ({**CREATED, "distance_km": 101}, ["body", "created", "distance_km"]),
        ({**CREATED, "weather": "hail"}, ["body", "created", "weather"]),
        ({**CREATED, "type": "eaten"}, ["body", "type"]),
        ({k: v for k, v in CREATED.items() if k != "type"}, ["body", "type"]),
        ({**CREATED, "occurred_at": "2026-12-02T14:00:00"}, ["body", "created", "occurred_at"]),
        ({**CREATED, "order_id": "a\nb"}, ["body", "created", "order_id"]),
        (
            {
                "type": "picked_up",
                "order_id": "o",
                "occurred_at": "2026-12-02T11:00:00",
                "zone_id": "Z1",
            },
            ["body", "picked_up", "zone_id"],
        ),
        (
            {
                "type": "picked_up",
                "order_id": "o",
                "occurred_at": "2026-12-02T11:00:00",
                "prep_minutes": -1,
            },
            ["body", "picked_up", "prep_minutes"],
        ),
        ({"events": []}, ["body", "events"]),
        ({"events": [CREATED] * (MAX_EVENTS_PER_REQUEST + 1)}, ["body", "events"]),
        ({"events": [CREATED, CREATED]}, ["body", "events", 1, "created", "order_id"]),
    ],
)
def test_each_refusal_names_its_field(body, loc):
    assert loc in [d["loc"] for d in _refused(body)]
