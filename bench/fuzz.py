"""Schema-driven fuzzing of ``POST /v1/eta`` against a running endpoint (issue 13).

The bodies come from the endpoint's own ``/openapi.json`` (``hypothesis-jsonschema`` generates
what the declared request body allows), from real orders with one field replaced, dropped or
added, from ``created_at`` at the datetime range's edges, and from raw bytes (deep nesting,
huge integers, bad UTF-8, a body over the size limit); the ``x-request-id`` header is fuzzed
too. The contract says every one of them is answered below 500: a 4xx naming the field, or
predictions.

``make test`` runs a few hundred (``tests/integration/serve/test_serving.py``); the benchmark
run sends ``--n`` (10,000 by default) to an endpoint that is already up (``make up``)::

    python -m bench.fuzz --url http://127.0.0.1:8000 --n 10000

Prints the count of each status and fails (exit 1) on any 5xx or transport error.
"""

from __future__ import annotations

import argparse
import json
import string
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

EDGE_TIMES = (
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "0001-01-01T00:00:00",
    "9999-12-31T23:59:59.999999",
    "2026-02-30T00:00:00Z",
    "1970-01-01T00:00:00Z",
)
RAW = (
    b"[" * 100_000 + b"]" * 100_000,
    b'{"orders": ' + b"[" * 50 + b"]" * 50 + b"}",
    b'{"distance_km": ' + b"9" * 5_000 + b"}",
    b"\xff\xfe\x00",
    b"",
    b"null",
    b"[]",
    b'{"orders": null}',
    b'{"orders": [null]}',
    b'{"distance_km": NaN}',
    b'{"distance_km": Infinity}',
    b" " * (2 << 20),
)

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


def _mutated(order: dict[str, Any]) -> st.SearchStrategy[Any]:
    keys = sorted(order)
    replace = st.tuples(st.sampled_from(keys), _json).map(lambda kv: {**order, kv[0]: kv[1]})
    drop = st.sampled_from(keys).map(lambda k: {x: v for x, v in order.items() if x != k})
    add = st.tuples(st.text(max_size=10), _json).map(lambda kv: {**order, kv[0]: kv[1]})
    edge = st.sampled_from(EDGE_TIMES).map(lambda t: {**order, "created_at": t})
    one = st.one_of(replace, drop, add, edge, st.just(order))
    return st.one_of(one, st.lists(one, min_size=1, max_size=40).map(lambda o: {"orders": o}))


#: What the ids' pattern allows (no control characters), drawn directly: hypothesis's strings
#: from a regex ran at 40 orders a second.
_ids = st.text(alphabet=st.characters(exclude_categories=["Cc", "Cs"]), min_size=1, max_size=24)


def _ids_as_format(order: dict[str, Any]) -> dict[str, Any]:
    """The order's schema with each patterned id drawn from :data:`_ids` instead."""
    props = {
        name: {k: v for k, v in prop.items() if k != "pattern"} | {"format": "relay-id"}
        if "pattern" in prop
        else prop
        for name, prop in order["properties"].items()
    }
    return {**order, "properties": props}


def bodies(schema: dict[str, Any], orders: Sequence[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """Request bodies: what ``schema`` allows, real ``orders`` mutated, and raw bytes.

    The schema's one-order shape is generated per order and batches made of a few (generating
    the batch shape whole, up to 256 patterned orders, ran at 10 bodies a second)."""
    single = next(s for s in schema["anyOf"] if "orders" not in s["properties"])
    one = from_schema(_ids_as_format(single), custom_formats={"relay-id": _ids})
    allowed = st.one_of(one, st.lists(one, min_size=1, max_size=8).map(lambda o: {"orders": o}))
    as_json = st.one_of(allowed, st.sampled_from(list(orders)).flatmap(_mutated), _json).map(
        lambda doc: json.dumps(doc, allow_nan=True).encode()
    )
    return st.one_of(as_json, as_json, as_json, st.sampled_from(RAW), st.binary(max_size=64))


request_ids = st.none() | st.text(alphabet=string.printable[:-5], max_size=300)


def body_schema(url: str) -> dict[str, Any]:
    """The request body's schema as the endpoint's ``/openapi.json`` declares it."""
    with urllib.request.urlopen(url + "/openapi.json", timeout=10) as resp:
        spec = json.loads(resp.read())
    body = spec["paths"]["/v1/eta"]["post"]["requestBody"]
    return dict(body["content"]["application/json"]["schema"])


def post(url: str, body: bytes, request_id: str | None) -> tuple[int | str, bytes]:
    """The status of one ``POST /v1/eta`` (or the transport error's name) and its body."""
    headers = {"Content-Type": "application/json"}
    if request_id is not None:
        headers["x-request-id"] = request_id
    req = urllib.request.Request(url + "/v1/eta", data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read()
    except Exception as exc:  # a reset connection or a timeout: counted, never a pass
        return type(exc).__name__, b""


class Fuzzed(Counter):
    """The count of each status (or transport error's name), and the first few requests that
    got a 5xx or no answer, with what came back, to reproduce them."""

    def __init__(self) -> None:
        super().__init__()
        self.failures: list[tuple[int | str, bytes, str | None, bytes]] = []

    def add(self, status: int | str, body: bytes, request_id: str | None, answer: bytes) -> None:
        self[status] += 1
        if (not isinstance(status, int) or status >= 500) and len(self.failures) < 5:
            self.failures.append((status, body[:2000], request_id, answer[:500]))


def fuzz(url: str, orders: Sequence[dict[str, Any]], n: int, at: int = 0) -> Fuzzed:
    """Send ``n`` generated requests to ``url`` (hypothesis seeded with ``at``)."""
    schema = body_schema(url)
    statuses = Fuzzed()

    @seed(at)
    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(body=bodies(schema, orders), request_id=request_ids)
    def one(body: bytes, request_id: str | None) -> None:
        status, answer = post(url, body, request_id)
        statuses.add(status, body, request_id, answer)

    one()
    return statuses


def main(argv: list[str] | None = None) -> None:
    """Fuzz a running endpoint; exit 1 on any 5xx or transport error."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    order = {
        "order_id": "fuzz-1",
        "courier_id": "C0001",
        "merchant_id": "M0001",
        "zone_id": "Z01",
        "distance_km": 3.0,
        "created_at": now,
    }
    t0 = time.perf_counter()
    statuses = fuzz(args.url, [order], args.n, args.seed)
    took = time.perf_counter() - t0
    print("| status | requests |\n|---|---|")
    for status, count in sorted(statuses.items(), key=lambda kv: str(kv[0])):
        print(f"| {status} | {count} |")
    print(f"\n{sum(statuses.values())} requests in {took:.0f} s")
    bad = {s: c for s, c in statuses.items() if not isinstance(s, int) or s >= 500}
    if bad:
        print(f"FAILED: {bad}", file=sys.stderr)
        for failure in statuses.failures:
            print(failure, file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
