"""The request contract: every bad input is a 4xx naming the field, nothing allowed raises."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from relay.serve.contract import (
    Limits,
    Rejected,
    check_length,
    check_request_id,
    parse_orders,
    request_body_schema,
)

NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
LIMITS = Limits()


def _order(**changes: Any) -> dict[str, Any]:
    return {
        "order_id": "o-1",
        "courier_id": "C001",
        "merchant_id": "M001",
        "zone_id": "Z01",
        "distance_km": 3.2,
        "created_at": "2026-11-20T11:55:00Z",
        **changes,
    }


def _rejected(body: bytes | dict[str, Any], limits: Limits = LIMITS) -> Rejected:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(Rejected) as info:
        parse_orders(raw, limits, NOW)
    return info.value


def test_one_order_and_a_batch_parse() -> None:
    assert [o.order_id for o in parse_orders(json.dumps(_order()).encode(), LIMITS, NOW)] == ["o-1"]
    batch = {"orders": [_order(), _order(order_id="o-2")]}
    assert len(parse_orders(json.dumps(batch).encode(), LIMITS, NOW)) == 2


def test_a_body_too_large_is_413_before_and_after_reading() -> None:
    small = Limits(max_body_bytes=100)
    with pytest.raises(Rejected) as info:
        check_length("101", small)
    assert info.value.status == 413 and info.value.detail[0]["loc"] == ["body"]
    check_length("100", small)  # at the limit: read it
    check_length(None, small)  # chunked: the read body is checked
    assert _rejected(json.dumps(_order()).encode(), small).status == 413


@pytest.mark.parametrize("depth", [9, 100_000])
def test_nesting_beyond_the_limit_is_422_not_a_recursion_error(depth: int) -> None:
    err = _rejected(b"[" * depth + b"]" * depth)
    assert err.status == 422 and err.detail[0]["type"] == "json_too_deep"


def test_an_integer_beyond_pythons_digit_limit_is_invalid_json() -> None:
    err = _rejected(b'{"distance_km": ' + b"9" * 5000 + b"}")
    assert err.status == 422 and err.detail[0]["type"] == "json_invalid"


@pytest.mark.parametrize(
    "created_at", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "2026-10-01T00:00Z"]
)
def test_created_at_out_of_range_or_window_names_the_field(created_at: str) -> None:
    err = _rejected({"orders": [_order(), _order(order_id="o-2", created_at=created_at)]})
    assert err.status == 422
    assert err.detail[0]["loc"][:4] == ["body", "orders", 1, "created_at"], err.detail


def test_a_naive_created_at_is_utc() -> None:
    body = json.dumps(_order(created_at="2026-11-20T11:00:00")).encode()
    [order] = parse_orders(body, LIMITS, NOW)
    assert order.created_at == dt.datetime(2026, 11, 20, 11, tzinfo=dt.UTC)


@pytest.mark.parametrize("field", ["order_id", "courier_id", "merchant_id", "zone_id"])
def test_an_id_with_a_control_character_names_the_field(field: str) -> None:
    err = _rejected(_order(**{field: "a\x00b"}))
    assert err.detail[0]["loc"] == ["body", field], err.detail


def test_an_order_id_twice_in_a_batch_names_the_second() -> None:
    err = _rejected({"orders": [_order(), _order()]})
    assert err.detail == [
        {
            "loc": ["body", "orders", 1, "order_id"],
            "msg": "order_id 'o-1' appears earlier in this batch",
            "type": "duplicate",
        }
    ]


@pytest.mark.parametrize("value", ["x" * 129, "a\nb"])
def test_a_bad_request_id_names_the_header(value: str) -> None:
    with pytest.raises(Rejected) as info:
        check_request_id(value, LIMITS)
    assert info.value.status == 422 and info.value.detail[0]["loc"] == ["header", "x-request-id"]
    check_request_id("req-123", LIMITS)
    check_request_id(None, LIMITS)


def test_the_body_schema_stands_alone_and_offers_both_shapes() -> None:
    schema = request_body_schema()["content"]["application/json"]["schema"]
    assert "$ref" not in json.dumps(schema)
    shapes = schema["anyOf"]
    assert {frozenset(s["properties"]) for s in shapes} == {
        frozenset(_order()),
        frozenset({"orders"}),
    }


def test_the_default_limits_are_the_settings_defaults() -> None:
    from relay.settings import ServingSettings

    assert Limits.of(ServingSettings()) == Limits()
