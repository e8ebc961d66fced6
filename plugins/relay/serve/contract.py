"""The request contract of ``POST /v1/eta``: what a body may be, and the 4xx naming what is not.

The router parses the body itself (the JSON parser is where the limits must act: FastAPI's own
parse recurses without bound and a 1,000-deep array is a ``RecursionError``, a 500), and
declares the same contract in ``/openapi.json`` (:func:`request_body_schema`), so client
generators and schema-driven fuzzers see exactly what the handler accepts.

The limits (:class:`Limits`, from ``RELAY_SERVING__*``):

* the body's size (413 before the body is read when ``Content-Length`` says so);
* the JSON nesting depth (an order batch is 3 deep);
* ``created_at`` within ``[now - created_at_max_age_s, now + created_at_max_ahead_s]``: a time
  far from now is a client's bug, and the datetime range's edges overflow once in UTC;
* the ids' characters (the schema's pattern: no control characters) and no ``order_id`` twice
  in one batch (its answers would be indistinguishable);
* ``x-request-id``: at most ``max_request_id_chars`` printable characters.

Every refusal is a :class:`Rejected` whose ``detail`` is FastAPI's list of
``{loc, msg, type}``, ``loc`` naming the field.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from relay.serve.schemas import MAX_ORDERS_PER_REQUEST, Order, OrderBatch
from relay.settings import ServingSettings

#: Containers deep enough for a batch ({"orders": [{...}]}) with room to spare.
BATCH_DEPTH = 3


@dataclass(frozen=True)
class Limits:
    """What a request may be; defaults as ``RELAY_SERVING__*``'s (:meth:`of` reads them)."""

    max_body_bytes: int = 1 << 20
    max_json_depth: int = 8
    created_at_max_age_s: float = 30 * 86_400.0
    created_at_max_ahead_s: float = 3_600.0
    max_request_id_chars: int = 128

    @classmethod
    def of(cls, serving: ServingSettings) -> Limits:
        """The limits the settings give."""
        return cls(
            max_body_bytes=serving.max_body_bytes,
            max_json_depth=serving.max_json_depth,
            created_at_max_age_s=serving.created_at_max_age_s,
            created_at_max_ahead_s=serving.created_at_max_ahead_s,
            max_request_id_chars=serving.max_request_id_chars,
        )


class Rejected(ValueError):
    """A request the contract refuses: ``status`` (413 or 422) and FastAPI-style ``detail``."""

    def __init__(self, status: int, detail: list[dict[str, Any]]) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _error(loc: list[str | int], msg: str, kind: str) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": kind}


def check_length(content_length: str | None, limits: Limits) -> None:
    """Refuse a body its ``Content-Length`` says is too large, before reading it.

    Raises:
        Rejected: 413 naming ``body``.
    """
    if content_length is not None and content_length.isdigit():
        _check_size(int(content_length), limits)


def _check_size(size: int, limits: Limits) -> None:
    if size > limits.max_body_bytes:
        msg = f"body of {size} bytes is larger than max_body_bytes {limits.max_body_bytes}"
        raise Rejected(413, [_error(["body"], msg, "body_too_large")])


def check_request_id(value: str | None, limits: Limits) -> None:
    """Refuse an ``x-request-id`` too long or with non-printable characters.

    Raises:
        Rejected: 422 naming the header.
    """
    if value is None:
        return
    loc: list[str | int] = ["header", "x-request-id"]
    if len(value) > limits.max_request_id_chars:
        msg = f"at most {limits.max_request_id_chars} characters, got {len(value)}"
        raise Rejected(422, [_error(loc, msg, "string_too_long")])
    if not value.isprintable():
        raise Rejected(422, [_error(loc, "printable characters only", "string_pattern_mismatch")])


def parse_orders(body: bytes, limits: Limits, now: dt.datetime) -> list[Order]:
    """The orders of a ``POST /v1/eta`` body: one order, or ``{"orders": [...]}``.

    Args:
        body: the raw body.
        limits: the contract's limits.
        now: the request's time (UTC), for the ``created_at`` window.

    Raises:
        Rejected: 413 for a body too large, 422 for invalid JSON or any field the contract
            refuses (``loc`` names it).
    """
    data = load_json(body, limits)
    batch = isinstance(data, dict) and "orders" in data
    try:
        orders = OrderBatch.model_validate(data).orders if batch else [Order.model_validate(data)]
    except ValidationError as exc:
        raise Rejected(422, field_errors(exc)) from exc
    errors = _window_errors(orders, batch, now, limits) + _duplicate_errors(orders, batch)
    if errors:
        raise Rejected(422, errors)
    return orders


def load_json(body: bytes, limits: Limits) -> Any:
    """The JSON of a body within the size and depth limits.

    Raises:
        Rejected: 413 for a body too large, 422 for invalid or too deeply nested JSON.
    """
    _check_size(len(body), limits)
    try:
        data = json.loads(body)
    except RecursionError:
        raise Rejected(422, [_too_deep(limits)]) from None
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, an integer of 5,000 digits
        raise Rejected(422, [_error(["body"], f"invalid JSON: {exc}", "json_invalid")]) from exc
    if _depth(data, limits.max_json_depth) > limits.max_json_depth:
        raise Rejected(422, [_too_deep(limits)])
    return data


def field_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """A validation error as FastAPI's ``detail``, each ``loc`` starting at ``body``."""
    return [_error(["body", *e["loc"]], e.get("msg", ""), e.get("type", "")) for e in exc.errors()]


def error(loc: list[str | int], msg: str, kind: str) -> dict[str, Any]:
    """One refused field, as FastAPI writes it."""
    return _error(loc, msg, kind)


def _too_deep(limits: Limits) -> dict[str, Any]:
    msg = f"JSON nested deeper than max_json_depth {limits.max_json_depth}"
    return _error(["body"], msg, "json_too_deep")


def _depth(value: Any, limit: int) -> int:
    """The nesting depth of containers in ``value``, counted up to just past ``limit``.

    Level by level, keeping only the containers: every request pays this, and visiting each
    leaf (32 orders: 200 values) cost as much as validating the orders."""
    depth, level = 0, [value] if isinstance(value, dict | list) else []
    while level:
        depth += 1
        if depth > limit:
            return depth
        inner: list[Any] = []
        for item in level:
            children = item.values() if isinstance(item, dict) else item
            inner.extend([c for c in children if isinstance(c, dict | list)])
        level = inner
    return depth


def _loc(batch: bool, i: int, field: str) -> list[str | int]:
    return ["body", "orders", i, field] if batch else ["body", field]


def _window_errors(
    orders: list[Order], batch: bool, now: dt.datetime, limits: Limits
) -> list[dict[str, Any]]:
    earliest = now - dt.timedelta(seconds=limits.created_at_max_age_s)
    latest = now + dt.timedelta(seconds=limits.created_at_max_ahead_s)
    errors = []
    for i, order in enumerate(orders):
        if order.created_at is not None and not earliest <= order.created_at <= latest:
            msg = (
                f"created_at {order.created_at.isoformat()} is outside [now - "
                f"{limits.created_at_max_age_s:g} s, now + {limits.created_at_max_ahead_s:g} s]"
            )
            errors.append(_error(_loc(batch, i, "created_at"), msg, "datetime_out_of_window"))
    return errors


def _duplicate_errors(orders: list[Order], batch: bool) -> list[dict[str, Any]]:
    seen: set[str] = set()
    errors = []
    for i, order in enumerate(orders):
        if order.order_id in seen:
            msg = f"order_id {order.order_id!r} appears earlier in this batch"
            errors.append(_error(_loc(batch, i, "order_id"), msg, "duplicate"))
        seen.add(order.order_id)
    return errors


#: The ``x-request-id`` header as ``/openapi.json`` declares it (its limit is a setting).
REQUEST_ID_PARAMETER: dict[str, Any] = {
    "name": "x-request-id",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": Limits.max_request_id_chars},
    "description": "Your id for the request, kept in the serving log (printable; at most "
    "RELAY_SERVING__MAX_REQUEST_ID_CHARS characters, 128 by default); default: a new uuid",
}


def request_body_schema() -> dict[str, Any]:
    """The body's JSON schema for ``/openapi.json``: one order or a batch, definitions inlined
    (the route's schema must stand alone: the models are not among the app's components)."""
    return {
        "required": True,
        "content": {"application/json": {"schema": inline_refs(TypeAdapter(Order | OrderBatch))}},
        "description": f'One order, or {{"orders": [...]}} with up to {MAX_ORDERS_PER_REQUEST}',
    }


def inline_refs(adapter: TypeAdapter[Any]) -> dict[str, Any]:
    """A type's JSON schema with its definitions inlined (a route's schema must stand alone)."""
    schema = adapter.json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    inlined: dict[str, Any] = inline(schema)
    return inlined
