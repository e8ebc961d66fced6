"""The plain baseline for ``bench.serving``: one FastAPI app, no Ray, no batching.

Per request it does what the Serve path does for one request: parse and validate the body
(``Order`` or ``OrderBatch``), one Feast online read (:class:`OnlineFeatures`), one forward pass
(:class:`ModelBundle`), the same answers, and the same serving-log records (buffered, written
by a background thread). It keeps nothing between requests: ``bench.serving`` starts it with
Relay's prediction and row caches off. Run one uvicorn server per core on the same port::

    RELAY_BENCH_MODEL_VERSION=<version> python -m bench.plain_app --port 8100 &   # x cores

Each has its own ``SO_REUSEPORT`` socket, so the kernel spreads connections over them.
``uvicorn --workers N`` shares one listening socket instead, and whichever worker accepts first
can take every connection of a client that opens them one at a time (measured: all 8 connections
of an aiohttp client on one of 2 workers, half the throughput).

The work runs inline in the async endpoint: it is CPU-bound, and one worker per core has
nothing else to do meanwhile (a thread pool only adds hand-offs and GIL contention).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from relay.serve.answer import VersionCall, answer_rows, merge_calls, response_body
from relay.serve.contract import Limits, Rejected, parse_orders
from relay.serve.schemas import feature_rows

VERSION_ENV = "RELAY_BENCH_MODEL_VERSION"


def create_app(version: str | None = None) -> FastAPI:
    """The app for one registry version (default: ``$RELAY_BENCH_MODEL_VERSION``)."""
    import torch

    from relay.serve.loader import load_version

    torch.set_num_threads(1)  # one worker per core; Ray gives its replicas one thread too
    model_version = version or os.environ[VERSION_ENV]
    loaded = load_version(model_version)  # as the Serve deployment loads it
    bundle, features, serving_log = loaded.model, loaded.features, loaded.log

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        serving_log.close()  # writes what is still buffered

    app = FastAPI(title="Relay ETA (plain baseline)", lifespan=lifespan)

    from relay.settings import get_settings

    sv = get_settings().serving
    eta_range = (sv.min_eta_minutes, sv.max_eta_minutes)
    limits = Limits.of(sv)

    @app.post("/v1/eta")
    async def eta(request: Request) -> Response:
        t0 = time.perf_counter()
        now = dt.datetime.now(dt.UTC)
        try:
            orders = parse_orders(await request.body(), limits, now)
        except Rejected as exc:
            return JSONResponse(status_code=exc.status, content={"detail": exc.detail})
        rows = feature_rows(orders, now)
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        read = features.read(rows)
        feats = read.features
        preds = bundle.predict(feats)
        latency_ms = (time.perf_counter() - t0) * 1000
        answers, records = answer_rows(
            model_version,
            rows,
            [request_id] * len(rows),
            feats,
            preds,
            latency_ms,
            now,
            eta_range=eta_range,
            prior_minutes=loaded.prior_minutes,
            degraded=read.degraded,
        )
        serving_log.log(records)
        merged = merge_calls(
            len(rows),
            model_version,
            [VersionCall(model_version, tuple(range(len(rows))), latency_ms, answers)],
        )
        if merged.failed:
            return JSONResponse(status_code=503, content={"detail": merged.failed})
        return Response(response_body(merged.answers, latency_ms), media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "pid": os.getpid()}

    return app


def serve(port: int, host: str = "127.0.0.1") -> None:
    """One worker: uvicorn on its own ``SO_REUSEPORT`` socket (stops on SIGTERM or SIGINT)."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    config = uvicorn.Config(create_app(), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args()
    serve(args.port, args.host)
