"""The Ray Serve ETA application: a FastAPI router in front of one deployment per model version.

Nothing runs on import; ``relay.serve.control`` deploys. Each model version is its own Serve
application (no HTTP route); the router is the HTTP ingress. The traffic split lives in a small
named Ray actor that every router replica watches, so moving traffic never redeploys anything:
redeploying a deployment from Python replaces its replicas (Serve gives each ``serve.run`` a new
code version), and that stalled requests for 4-6 s here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve
from ray.serve.handle import DeploymentHandle

from relay.serve.answer import (
    BATCH_KEY,
    VersionCall,
    answer_rows,
    merge_calls,
    response_body,
)
from relay.serve.auth import Credentials, SecretFiles, unauthorized
from relay.serve.batcher import Batcher
from relay.serve.contract import (
    REQUEST_ID_PARAMETER,
    Limits,
    Rejected,
    check_length,
    check_request_id,
    parse_orders,
    request_body_schema,
)
from relay.serve.events import EventsAccepted, events_body_schema, parse_events
from relay.serve.faults import Fault, InjectedFault, faults_from_config
from relay.serve.loader import Loaded, load_version
from relay.serve.schemas import (
    ETAResponse,
    Invalid,
    ModelsResponse,
    Problem,
    ServingVersion,
    feature_rows,
)
from relay.serve.traffic import TrafficSplit
from relay.serve.traffic_state import (
    MODEL_DEPLOYMENT,
    ROUTER_DEPLOYMENT,
    model_app_name,
    traffic_state,
)

log = logging.getLogger(__name__)

TRAFFIC_WAIT_S = 10.0
"""How long one long poll of the traffic actor waits for a new generation before asking again."""
TRAFFIC_RETRY_S = 0.1
"""The wait before asking again after the traffic actor could not be asked."""
SCOPE_HEADER = "x-relay-metrics-scope"
"""Response header of the metrics routes: ``cluster`` (every replica's) or ``replica`` (own)."""


@serve.deployment(name=MODEL_DEPLOYMENT)
class ETAModel:
    """One registry version: online features for the whole batch, then one forward pass."""

    def __init__(
        self,
        version: str,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        loader: Callable[[str], Loaded] = load_version,
        eta_range: tuple[float, float] | None = None,
        flush_when_idle: bool | None = None,
        in_flight: Callable[[], int] | None = None,
    ) -> None:
        """``eta_range``: the (exclusive low, high] minutes a returned prediction must lie in;
        None reads ``RELAY_SERVING__MIN_ETA_MINUTES`` and ``__MAX_ETA_MINUTES``.
        ``flush_when_idle``: None reads ``RELAY_SERVING__FLUSH_WHEN_IDLE``. ``in_flight``: how
        many calls for this version are under way in the process (the inline router's count);
        a batch goes as soon as all of them joined it (None: it waits the window)."""
        from relay.settings import get_settings

        sv = get_settings().serving
        if eta_range is None:
            eta_range = (sv.min_eta_minutes, sv.max_eta_minutes)
        self.flush_when_idle = sv.flush_when_idle if flush_when_idle is None else flush_when_idle
        self.idle_after_s = sv.idle_after_s
        self._inflight = 0
        self._overlapped_at = -math.inf  # when two requests last met in this replica
        loaded = loader(version)  # the real one checks the weights' sha256
        self.version = version
        self.eta_range = eta_range
        self.bundle, self.features, self.log = loaded.model, loaded.features, loaded.log
        self.prior_minutes = loaded.prior_minutes
        self.cache, self.cache_metrics = _prediction_cache(version, self.bundle)
        self.ray_metrics = _model_metrics(version)
        # Batched per instance (the inline router holds one per version), on the loop: a
        # worker thread lost 35% of the peak on 2 cores (the loop and the batch contend for
        # the GIL) and batches filled less (README).
        self.batcher: Batcher[tuple[list[dict[str, Any]], str], list[dict[str, Any]]] = Batcher(
            lambda calls: self.answer(calls),
            max_batch_size,
            batch_wait_timeout_s,
            in_flight,
            self.ray_metrics.count_batch if self.ray_metrics is not None else None,
        )
        self.predict_batch = self.batcher.submit
        self._warm_up()
        from relay.serve.heap import settle

        settle(sv.gc_freeze)  # loaded: out of the collector's scans (why: relay.serve.heap)

    def _warm_up(self) -> None:
        # Serve sends traffic only once __init__ returns: pay the first online-store read
        # (connection, registry) and the first forward pass here, not on a canary's first
        # requests, where a 1 s outlier would be judged as the version's P99.
        from relay.serve.schemas import Order, feature_row

        order = Order(
            order_id="warm-up",
            courier_id="warm-up",
            merchant_id="warm-up",
            zone_id="warm-up",
            distance_km=1.0,
        )
        rows = [feature_row(order, dt.datetime.now(dt.UTC))]
        self._health_rows = rows
        self.features.warm_up(rows)
        for _ in range(2):
            self.bundle.predict(self.features.read(rows).features)

    def check_health(self) -> None:
        """Serve's periodic check (``RELAY_SERVING__HEALTH_CHECK_PERIOD_S``): the model still
        predicts a finite number. The online store is not this replica's health: without it
        answers degrade to defaults, and replacing the replica would not bring it back."""
        rows = self._health_rows
        minutes = float(self.bundle.predict(self.features.defaults(rows))[0])
        if not math.isfinite(minutes):
            raise RuntimeError(f"model {self.version} predicts {minutes} on the health order")

    def ready(self) -> dict[str, str]:
        """What ``/readyz`` reports of this version: the online store's state."""
        return {"online_store": self.features.status()}

    async def predict(self, rows: list[dict[str, Any]], request_id: str) -> list[dict[str, Any]]:
        self._inflight += 1
        try:
            if self.flush_when_idle:
                # One turn of the loop lets every request already delivered to this replica
                # check in. Alone, and none met another lately: no batch would fill within
                # the window, answer now. Measured: deciding on the moment alone sent most
                # requests under load down this path too (each answer is quick and
                # synchronous, so the next request finds the replica empty), and batches
                # stopped filling (README).
                await asyncio.sleep(0)
                now = time.monotonic()
                if self._inflight > 1:
                    self._overlapped_at = now
                elif now - self._overlapped_at > self.idle_after_s:
                    if self.ray_metrics is not None:
                        self.ray_metrics.count_batch("alone", 1)
                    return self.answer([(rows, request_id)])[0]
            return await self.predict_batch((rows, request_id))
        finally:
            self._inflight -= 1

    def answer(self, calls: list[tuple[list[dict[str, Any]], str]]) -> list[list[dict[str, Any]]]:
        """One batch of requests (their rows and request ids): one online-store read, one
        forward pass, each request's answers in its own order, and the log records. A row whose
        prediction is not finite or out of range is answered with an ``error`` and a fallback,
        and not logged; with the store down or slow, every answer is ``degraded``."""
        t0 = time.perf_counter()
        flat = [row for rows, _ in calls for row in rows]
        request_ids = [request_id for rows, request_id in calls for _ in rows]
        read = self.features.read(flat)  # one online-store read for the whole batch
        feats = read.features
        if self.cache is None:
            preds = self.bundle.predict(feats)
        else:
            preds = self.cache.predict(self.bundle, feats, len(flat))
            if self.cache_metrics is not None:
                self.cache_metrics.publish(self.cache.stats)
        if self.ray_metrics is not None:
            self.ray_metrics.observe_pass(len(flat), read.row_ages)
        elapsed_ms = (time.perf_counter() - t0) * 1000
        answers, records = answer_rows(
            self.version,
            flat,
            request_ids,
            feats,
            preds,
            elapsed_ms,
            dt.datetime.now(dt.UTC),
            eta_range=self.eta_range,
            prior_minutes=self.prior_minutes,
            degraded=read.degraded,
        )
        self.log.log(records)  # buffered; written off the request path
        for a in answers:  # how full this pass was, for the router's metrics
            a[BATCH_KEY] = len(flat)
        out: list[list[dict[str, Any]]] = []
        i = 0
        for rows, _ in calls:
            out.append(answers[i : i + len(rows)])
            i += len(rows)
        return out

    def cache_stats(self) -> dict[str, Any]:
        """Lookups, hits, hit rate and mean lookup time per level of the prediction cache
        (empty when it is off)."""
        return {} if self.cache is None else self.cache.stats.to_dict()

    def flush_log(self) -> int:
        """Write every buffered serving-log record now; returns how many were written so far."""
        self.log.flush()
        return int(self.log.written)

    def __del__(self) -> None:
        log = getattr(self, "log", None)
        if log is not None:
            log.close()


def _prediction_cache(version: str, model: Any) -> tuple[Any, Any]:
    """The replica's prediction cache from the settings (None when off) and its Ray metrics
    (None outside a Ray worker, e.g. the unit tests' direct construction)."""
    from relay.serve.prediction_cache import RayCacheMetrics, from_settings
    from relay.settings import get_settings

    cache = from_settings(version, getattr(model, "variant", None), get_settings().serving)
    if cache is None or not ray.is_initialized():
        return cache, None
    return cache, RayCacheMetrics(version)


def _model_metrics(version: str) -> Any:
    """The replica's Ray metrics (batch size, feature ages); None outside a Ray worker."""
    from relay.serve.ray_metrics import ModelMetrics

    return ModelMetrics(version) if ray.is_initialized() else None


async def _call(
    version: str,
    handle: DeploymentHandle,
    rows: list[dict[str, Any]],
    idx: Sequence[int],
    request_id: str,
    fault: Fault | None = None,
    timeout_s: float | None = None,
) -> VersionCall:
    """One version's call for some rows, timed from its dispatch to its answer: the latency
    its metrics are credited with (never another version's wait).

    Defined above the Router: ``@serve.ingress`` pickles the FastAPI app, its routes' globals
    included, when the class is decorated; a name defined below it is missing on the replica.
    """
    t0 = time.perf_counter()
    try:
        if fault is not None and fault.active():  # a drill (relay.serve.faults)
            await asyncio.sleep(fault.delay_ms / 1000)
            if fault.fails(random.random()):
                raise InjectedFault(f"injected fault on {version}")
        response = handle.predict.remote([rows[i] for i in idx], request_id)
        try:
            answers = await asyncio.wait_for(_result(response), timeout_s)
        except TimeoutError:
            response.cancel()  # a late answer is no answer: free its replica's slot
            raise TimeoutError(f"no answer in {timeout_s} s") from None
    except Exception as exc:  # a replica died or timed out: merge_calls decides what follows
        ms = (time.perf_counter() - t0) * 1000
        return VersionCall(version, tuple(idx), ms, None, f"{type(exc).__name__}: {exc}")
    return VersionCall(version, tuple(idx), (time.perf_counter() - t0) * 1000, answers)


async def _result(response: Any) -> Any:
    return await response


class _Remote:
    """``method.remote(...)`` of an in-process model: a task on the router's loop, awaited and
    cancelled as a Serve response is."""

    def __init__(self, method: Callable[..., Any]) -> None:
        self._method = method

    def remote(self, *args: Any) -> asyncio.Future[Any]:
        result = self._method(*args)
        if asyncio.iscoroutine(result):
            return asyncio.ensure_future(result)
        done = asyncio.get_running_loop().create_future()
        done.set_result(result)
        return done


class VersionLoadFailed(RuntimeError):
    """The inline router could not load a version of the split; the current split stays."""


class LoadDeferred(RuntimeError):
    """A version that failed to load is not tried again until its backoff is over."""


class InProcessModel:
    """A version's model held by the router itself (``RELAY_SERVING__LAYOUT=inline``): the
    same :class:`ETAModel` (features, batching, cache, log, metrics), called without the
    router → replica hop, behind the handle methods the router uses."""

    def __init__(
        self, version: str, options: dict[str, Any], in_flight: Callable[[], int] | None = None
    ) -> None:
        self.model = ETAModel.func_or_class(version, **options, in_flight=in_flight)
        self.predict = _Remote(self.model.predict)
        self.ready = _Remote(self.model.ready)
        self.cache_stats = _Remote(self.model.cache_stats)
        self.flush_log = _Remote(self.model.flush_log)

    def close(self, after_s: float = 0.0) -> None:
        """The version left the split: land its buffered serving-log records, ``after_s``
        from now (a call dispatched under the old split may still be answering and logging)."""
        if after_s <= 0:
            self.model.log.close()
            return
        timer = threading.Timer(after_s, self.model.log.close)
        timer.daemon = True
        timer.start()


api = FastAPI(
    title="Relay ETA",
    description="Delivery-time predictions with online features, batching and canary traffic.",
    version="1",
)


@serve.deployment(name=ROUTER_DEPLOYMENT)
@serve.ingress(api)
class Router:
    """HTTP ingress: validates, splits orders between versions by order id, merges answers.

    What a failed call turns into is :func:`relay.serve.answer.merge_calls`'s decision: a
    candidate's failed call or unreturnable predictions are answered by stable, a stable failure
    is a 503 naming it. Each call's own latency is credited to its version, in this replica's
    counters, which it pushes to the cluster's metrics hub (:mod:`relay.serve.metrics_hub`).
    """

    def __init__(
        self,
        initial: dict[str, Any] | None = None,
        *,
        metrics_push_s: float,
        metrics_hub_timeout_s: float,
        drift_refresh_s: float = 60.0,
        limits: Limits | None = None,
        secrets: SecretFiles | None = None,
        model_timeout_s: float | None = None,
        retry_after_s: float = 1.0,
        events_timeout_s: float | None = None,
        consume_stream: bool = False,
        inline_model: dict[str, Any] | None = None,
        load_retry_s: tuple[float, float] = (1.0, 60.0),
    ) -> None:
        """``events_timeout_s``: how long ``POST /v1/events`` waits for its group commit (None:
        no events route, the store is not opened). ``consume_stream``: this replica also
        consumes the order-events stream (``RELAY_EVENTS__STREAM_URL``) into the same sink,
        one consumer of the group per replica. ``inline_model``: :class:`ETAModel`'s options
        when this replica holds the split's models itself (None: it calls their deployments);
        ``load_retry_s``: the first and the longest wait before loading again a version that
        failed to load."""
        from relay.serve.backoff import Backoff

        self.inline_model = inline_model
        self._loads = Backoff(*load_retry_s)
        # Inline, what each version's batcher waits for: requests still being parsed (their
        # version not known yet) and calls already sent to it.
        self._parsing = 0
        self._calling: dict[str, int] = {}
        self.limits = limits or Limits()
        self.model_timeout_s = model_timeout_s
        self.retry_after = {"Retry-After": str(max(1, math.ceil(retry_after_s)))}
        # Read here, on the replica's node: only the files' paths travel with the deployment.
        self.credentials = Credentials.load(secrets or SecretFiles())
        from relay.serve.metrics import LiveMetrics
        from relay.serve.metrics_hub import HubClient

        self.metrics = LiveMetrics()
        # This replica's counters go to the cluster's hub; /v1/metrics answers the sum.
        self.hub = HubClient(self.metrics, metrics_hub_timeout_s)
        self.hub.start(metrics_push_s)
        # The same calls as Ray metrics, which Prometheus sums over replicas, and monitoring's
        # newest drift as gauges beside them (relay.serve.ray_metrics).
        from relay.serve.ray_metrics import RouterMetrics, start_drift_export

        self.ray_metrics = RouterMetrics()
        self.drift = start_drift_export(drift_refresh_s)
        self.split: TrafficSplit | None = None
        self.faults: dict[str, Fault] = {}
        self.handles: dict[str, DeploymentHandle] = {}
        self.generation = -1
        # The event store and the Feast push open on the first POST /v1/events, off the
        # request (importing Feast takes seconds of CPU, which a router that never receives an
        # event should not spend); until then that route answers 503 with Retry-After.
        self.events: Any = None
        self.events_error: str | None = None
        self.events_timeout_s = events_timeout_s
        self._events_opening = threading.Lock()
        self._events_opener: threading.Thread | None = None
        self.consume_stream = consume_stream
        self._stop_consuming = threading.Event()
        self._state = traffic_state()
        if initial and initial.get("stable"):
            # From `serve deploy` args: only seeds an empty state, never overrides a live split.
            ray.get(self._state.seed.remote(initial))
        self._sync()
        from relay.serve.heap import settle
        from relay.settings import get_settings

        settle(get_settings().serving.gc_freeze)  # loaded (inline: its models too)
        threading.Thread(target=self._watch, name="relay-traffic-watch", daemon=True).start()
        if consume_stream:  # the stream needs the sink now, not at the first POST
            self._start_opening_events()

    def _start_opening_events(self) -> None:
        with self._events_opening:
            if self._events_opener is None:
                self._events_opener = threading.Thread(
                    target=self._open_events, name="relay-events", daemon=True
                )
                self._events_opener.start()

    def _open_events(self) -> None:
        from relay.ingest.event_sink import open_sink

        try:
            self.events = open_sink()
        except Exception as exc:  # answered on each events request, and logged once
            self.events_error = f"{type(exc).__name__}: {exc}"[:300]
            log.exception("the event store could not be opened")
            return
        if self.consume_stream:
            import os
            import socket

            from relay.ingest.event_log import consume_forever
            from relay.settings import get_settings

            name = f"{socket.gethostname()}-{os.getpid()}"
            threading.Thread(
                target=consume_forever,
                args=(get_settings(), self.events, name, self._stop_consuming),
                name="relay-events-stream",
                daemon=True,
            ).start()

    def _sync(self, wait_s: float = 0.0) -> None:
        """Apply the split if its generation moved; ``wait_s``: wait that long for it to move."""
        if wait_s > 0 and not hasattr(self._state, "wait"):  # an older Relay's actor: poll
            time.sleep(TRAFFIC_RETRY_S)
            wait_s = 0.0
        if wait_s > 0:
            call = self._state.wait.remote(self.generation, wait_s)
        else:
            call = self._state.get.remote()
        generation, config = ray.get(call, timeout=wait_s + TRAFFIC_WAIT_S)
        if generation != self.generation and config is not None:
            self._apply(config)
        self.generation = generation

    def _watch(self) -> None:
        while True:
            try:
                self._sync(TRAFFIC_WAIT_S)
                continue  # the actor answers as soon as the split moves: ask again at once
            except LoadDeferred:  # said when it failed; tried again once its wait is over
                pass
            except VersionLoadFailed:
                log.exception("keeping the current split")
            except Exception:  # the actor restarting or gone: keep the last split, look again
                log.exception("traffic state unavailable; keeping the current split")
                try:
                    # A handle to a dead actor stays dead: find (or create) the live one, whose
                    # split the rollout controller's next tick sets from the record.
                    self._state = traffic_state()
                except Exception:
                    log.exception("traffic state not found; retrying")
            time.sleep(TRAFFIC_RETRY_S)

    def _apply(self, config: dict[str, Any]) -> None:
        split = TrafficSplit.from_config(config)
        # Inline, a new version loads here (registry, sha256, online store, warm-up) before
        # any order is sent to it; until then the old split keeps answering.
        handles = {v: self.handles.get(v) or self._handle(v) for v in split.versions()}
        dropped = [h for v, h in self.handles.items() if v not in handles]
        self.faults = faults_from_config(config.get("faults"))
        # One assignment: a request sees either the old split or the new one, never a mix.
        self.handles, self.split = handles, split
        for h in dropped:
            if isinstance(h, InProcessModel):  # past any call's wait for it
                h.close(after_s=2 * (self.model_timeout_s or 10.0))

    def _handle(self, version: str) -> Any:
        if self.inline_model is not None:
            if not self._loads.due(version, time.monotonic()):
                raise LoadDeferred(version)
            try:
                model = InProcessModel(
                    version,
                    self.inline_model,
                    lambda: self._parsing + self._calling.get(version, 0),
                )
            except Exception as exc:
                wait = self._loads.failed(version, time.monotonic())
                raise VersionLoadFailed(
                    f"version {version} did not load ({type(exc).__name__}: {exc}); "
                    f"next try in {wait:.0f} s"
                ) from exc
            self._loads.succeeded(version)
            return model
        return serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=model_app_name(version))

    def _denied(self, request: Request, admin: bool) -> JSONResponse | None:
        why = unauthorized(request.headers, self.credentials, admin)
        if why is None:
            return None
        detail = [{"loc": ["header", "authorization"], "msg": why, "type": "unauthorized"}]
        return JSONResponse(
            status_code=401, content={"detail": detail}, headers={"WWW-Authenticate": "Bearer"}
        )

    @api.post(
        "/v1/eta",
        response_model=ETAResponse,
        # The handler parses the body itself (the contract's limits act in the parse); the
        # schema says exactly what it accepts.
        openapi_extra={"requestBody": request_body_schema(), "parameters": [REQUEST_ID_PARAMETER]},
        responses={
            401: {"model": Invalid, "description": "No valid API key (when keys are set)"},
            413: {"model": Invalid, "description": "Body larger than the limit"},
            422: {"model": Invalid, "description": "A field refused: `loc` names it"},
            503: {"model": Problem, "description": "No model deployed, or none could answer"},
        },
    )
    async def eta(self, request: Request) -> Response:
        self._parsing += 1
        try:
            return await self._eta(request)
        finally:
            if not getattr(request.state, "dispatched", False):  # refused, or failed early
                self._parsing -= 1
            self._poke()

    def _poke(self) -> None:
        for h in self.handles.values():
            if isinstance(h, InProcessModel):
                h.model.batcher.poke()

    async def _dispatch(
        self,
        version: str,
        handle: Any,
        rows: list[dict[str, Any]],
        idx: Sequence[int],
        request_id: str,
        fault: Fault | None,
        wait: float | None,
    ) -> VersionCall:
        """``_call``, counted in ``_calling[version]`` (the caller counted it already, before
        any await, so the version's batcher never sees the count dip)."""
        try:
            return await _call(version, handle, rows, idx, request_id, fault, wait)
        finally:
            self._calling[version] -= 1
            self._poke()

    async def _eta(self, request: Request) -> Response:
        t0 = time.perf_counter()
        now = dt.datetime.now(dt.UTC)
        if (denied := self._denied(request, admin=False)) is not None:
            return denied
        request_id = request.headers.get("x-request-id")
        try:
            check_length(request.headers.get("content-length"), self.limits)
            check_request_id(request_id, self.limits)
            orders = parse_orders(await request.body(), self.limits, now)
        except Rejected as exc:
            return JSONResponse(status_code=exc.status, content={"detail": exc.detail})
        split, handles = self.split, self.handles
        if split is None:
            return JSONResponse(
                status_code=503, content={"detail": "no model deployed"}, headers=self.retry_after
            )
        rows = feature_rows(orders, now)
        groups = split.assign(
            [r["order_id"] for r in rows],
            [r["zone_id"] for r in rows],
            [r["hour"] for r in rows],
            salt=self.credentials.salt,
        )
        request_id = request_id or uuid.uuid4().hex
        faults = self.faults
        wait = self.model_timeout_s
        for v in groups:  # from here on counted by version, until _dispatch ends
            self._calling[v] = self._calling.get(v, 0) + 1
        request.state.dispatched = True
        self._parsing -= 1
        calls = await asyncio.gather(
            *(
                self._dispatch(v, handles[v], rows, idx, request_id, faults.get(v), wait)
                for v, idx in groups.items()
            )
        )
        merged = merge_calls(len(rows), split.stable, calls)
        if merged.retry:  # failed the first time: stable answers them, once
            stable = split.stable
            self._calling[stable] = self._calling.get(stable, 0) + 1
            again = await self._dispatch(
                stable, handles[stable], rows, merged.retry, request_id, faults.get(stable), wait
            )
            merged = merge_calls(len(rows), split.stable, [again], merged)
        for c in merged.observed:
            self.metrics.observe(
                c.version,
                c.latency_ms,
                len(c.values),
                c.values,
                c.error,
                c.degraded,
                batch_orders=c.batch_orders,
                orders=c.orders,
            )
            self.ray_metrics.observe(c)
        if merged.failed or merged.unanswered:
            detail = merged.failed or f"orders {list(merged.unanswered)} got no answer"
            return JSONResponse(
                status_code=503, content={"detail": detail}, headers=self.retry_after
            )
        latency_ms = (time.perf_counter() - t0) * 1000
        return Response(response_body(merged.answers, latency_ms), media_type="application/json")

    @api.post(
        "/v1/events",
        response_model=EventsAccepted,
        openapi_extra={"requestBody": events_body_schema()},
        responses={
            401: {"model": Invalid, "description": "No valid API key (when keys are set)"},
            413: {"model": Invalid, "description": "Body larger than the limit"},
            422: {"model": Invalid, "description": "A field refused: `loc` names it"},
            503: {"model": Problem, "description": "Events not stored: send them again"},
        },
    )
    async def events_in(self, request: Request) -> JSONResponse:
        """Order lifecycle events: stored durably before the answer (a re-sent event is a
        duplicate, never stored twice), live features pushed, labels landed."""
        now = dt.datetime.now(dt.UTC)
        if (denied := self._denied(request, admin=False)) is not None:
            return denied
        try:
            check_length(request.headers.get("content-length"), self.limits)
            rows = parse_events(await request.body(), self.limits, now)
        except Rejected as exc:
            return JSONResponse(status_code=exc.status, content={"detail": exc.detail})
        sink = self.events
        if sink is None:
            why = self.events_error or "the event store is opening"
            if self.events_timeout_s is None:
                why = "events are disabled (RELAY_EVENTS__ENABLED)"
            else:
                self._start_opening_events()
            return JSONResponse(status_code=503, content={"detail": why}, headers=self.retry_after)
        try:
            done = await asyncio.wait_for(
                asyncio.wrap_future(sink.submit(rows)), self.events_timeout_s
            )
        except Exception as exc:  # not stored (or not known to be): the client sends again
            detail = f"events not stored: {type(exc).__name__}: {exc}"[:300]
            return JSONResponse(
                status_code=503, content={"detail": detail}, headers=self.retry_after
            )
        body = EventsAccepted(accepted=done.accepted, duplicates=done.duplicates)
        return JSONResponse(body.model_dump())

    @api.get("/v1/models", response_model=ModelsResponse)
    async def models(self, request: Request) -> JSONResponse:
        if (denied := self._denied(request, admin=True)) is not None:
            return denied
        split = self.split
        if split is None:
            return JSONResponse(
                ModelsResponse(versions=[], generation=self.generation).model_dump()
            )
        roles = {
            split.stable: "stable",
            **({split.candidate: "candidate"} if split.candidate else {}),
        }
        body = ModelsResponse(
            versions=[
                ServingVersion(version=v, role=roles[v], traffic_share=share)
                for v, share in split.shares().items()
            ],
            generation=self.generation,
        )
        return JSONResponse(body.model_dump())

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        """Ready when the stable version answers (its model replicas, within the model
        timeout); ``online_store`` says whether answers are degraded to defaults now."""
        split, handles = self.split, self.handles
        if split is None:
            return JSONResponse(
                status_code=503, content={"status": "no model deployed"}, headers=self.retry_after
            )
        try:
            stable = handles[split.stable].ready.remote()
            state = await asyncio.wait_for(_result(stable), self.model_timeout_s)
        except Exception as exc:
            why = f"stable version {split.stable} not answering: {type(exc).__name__}"
            return JSONResponse(status_code=503, content={"status": why}, headers=self.retry_after)
        return JSONResponse(
            content={"status": "ready", "versions": split.versions(), **state},
        )

    @api.get("/metrics", response_model=None)
    async def metrics_text(self, request: Request) -> PlainTextResponse | JSONResponse:
        """Every router replica's counters added (this one's own when the hub is unreachable:
        the ``x-relay-metrics-scope`` header says which)."""
        from relay.serve.metrics import prometheus_text

        if (denied := self._denied(request, admin=True)) is not None:
            return denied
        cluster = await self.hub.cluster()
        text = prometheus_text(cluster.windows)
        if self.events is not None:  # this replica's own: the live views' freshness
            from relay.features.store import snapshot_ages
            from relay.ingest.event_sink import freshness_text
            from relay.settings import get_settings

            ev = get_settings().events
            try:  # the snapshot views' from the registry (a cached read)
                snapshots = await asyncio.to_thread(snapshot_ages, self.events.pusher)
            except Exception:  # a registry that cannot be read: those series are left out
                log.warning("snapshot freshness unavailable", exc_info=True)
                snapshots = None
            text += freshness_text(
                self.events.freshness,
                ev.freshness_alert_s,
                snapshots=snapshots,
                snapshot_alert_s=ev.snapshot_freshness_alert_s,
            )
        return PlainTextResponse(
            text,
            media_type=CONTENT_TYPE_LATEST,
            headers={SCOPE_HEADER: cluster.scope},
        )

    @api.get("/v1/metrics")
    async def metrics_json(self, request: Request) -> JSONResponse:
        """The live window per version, every router replica's added, for the rollout logic;
        each carries ``scope`` (``cluster``, or ``replica`` when the hub was unreachable) and
        how many ``replicas`` were added."""
        if (denied := self._denied(request, admin=True)) is not None:
            return denied
        cluster = await self.hub.cluster()
        return JSONResponse(cluster.to_json(), headers={SCOPE_HEADER: cluster.scope})

    async def cache_stats(self, version: str) -> dict[str, Any]:
        """The prediction cache's stats of ``version``'s model held in this replica (inline
        layout; empty otherwise, or when the version is not serving)."""
        h = self.handles.get(version)
        return await h.cache_stats.remote() if isinstance(h, InProcessModel) else {}

    async def push_metrics(self) -> bool:
        """Push this replica's counters to the hub now (through its handle); False on failure."""
        return await asyncio.to_thread(self.hub.push)

    def __del__(self) -> None:
        # Serve shuts the replica down: hand the hub the counts since the last push, answer
        # the queued events and land what is stored.
        hub = getattr(self, "hub", None)
        if hub is not None:
            hub.push()
        stop = getattr(self, "_stop_consuming", None)
        if stop is not None:
            stop.set()
        events = getattr(self, "events", None)
        if events is not None:
            events.close()
        for h in getattr(self, "handles", {}).values():
            if isinstance(h, InProcessModel):
                h.close()


def _resilience(sv: Any) -> dict[str, Any]:
    """Both deployments: a bounded queue per caller (overload is a quick 503 with
    Retry-After, not a wait) and Serve's health checks (a failing replica is replaced)."""
    from ray.serve.config import BackpressureConfig

    return {
        "max_queued_requests": sv.max_queued_requests,
        "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=sv.retry_after_s),
        "health_check_period_s": sv.health_check_period_s,
        "health_check_timeout_s": sv.health_check_timeout_s,
    }


def model_application(version: str, settings: Any = None) -> Any:
    """One model version's Serve application, sized from the version's stored requirements
    within the settings (``relay.serve.control`` deploys it; ``serve deploy`` reaches it through
    :func:`build_model_app`)."""
    from relay.serve.sizing import model_replica_options, stored_needs
    from relay.serve.traffic_state import relay_env
    from relay.settings import get_settings

    sv = (settings or get_settings()).serving
    size = model_replica_options(stored_needs(version), sv)
    return ETAModel.options(
        num_replicas=size["num_replicas"],
        max_ongoing_requests=sv.max_ongoing_requests,
        **_resilience(sv),
        ray_actor_options={**size["ray_actor_options"], "runtime_env": {"env_vars": relay_env()}},
    ).bind(version, **_model_options(sv))


def router_application(settings: Any = None, initial: dict[str, Any] | None = None) -> Any:
    """The router's Serve application; ``initial`` seeds the split only when none is set yet."""
    from relay.serve.traffic_state import relay_env
    from relay.settings import get_settings

    s = settings or get_settings()
    sv, ev = s.serving, s.events
    return Router.options(
        num_replicas=sv.router_replicas,
        max_ongoing_requests=sv.max_ongoing_requests,
        **_resilience(sv),
        ray_actor_options={"num_cpus": sv.router_cpus, "runtime_env": {"env_vars": relay_env()}},
    ).bind(
        initial,
        metrics_push_s=sv.metrics_push_s,
        metrics_hub_timeout_s=sv.metrics_hub_timeout_s,
        drift_refresh_s=sv.drift_refresh_s,
        limits=Limits.of(sv),
        secrets=SecretFiles.of(sv),
        model_timeout_s=sv.model_timeout_s,
        retry_after_s=sv.retry_after_s,
        events_timeout_s=ev.request_timeout_s if ev.enabled else None,
        consume_stream=bool(ev.stream_url),
        inline_model=_model_options(sv) if sv.layout == "inline" else None,
        load_retry_s=(sv.inline_load_retry_s, sv.inline_load_retry_max_s),
    )


def _model_options(sv: Any) -> dict[str, Any]:
    """:class:`ETAModel`'s options from the serving settings (either layout)."""
    return {
        "max_batch_size": sv.max_batch_size,
        "batch_wait_timeout_s": sv.batch_wait_timeout_s,
        "eta_range": (sv.min_eta_minutes, sv.max_eta_minutes),
    }


def build_model_app(args: dict[str, Any]) -> Any:
    """``serve deploy`` builder for one model version: ``args: {version: …}``."""
    return model_application(str(args["version"]))


def build_router_app(args: dict[str, Any]) -> Any:
    """``serve deploy`` builder for the router: ``args: {stable, candidate, candidate_share}``
    seed the traffic split when none is set yet."""
    return router_application(initial=dict(args))
