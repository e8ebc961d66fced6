"""The serving side's settings: the Ray Serve endpoint and the rollouts that move its traffic.

Part of :mod:`relay.settings` (import them from there); kept apart only to keep each module
small.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator


class RolloutSettings(BaseModel):
    """Rollouts: the default plan, the rules that hold or roll back a step, the controller.

    The thresholds follow the field's automatic-rollback rules (error rate > 1%, P99 > 100 ms,
    accuracy down > 5%, QPS down > 30%); the checks of :mod:`relay.rollout.rules` and
    :func:`relay.rollout.rules.error_check` apply them, the reconciler
    (:mod:`relay.rollout.reconcile`) walks the plan (``plan_*``).
    """

    max_error_rate: float = Field(0.01, ge=0, le=1, description="Candidate errors / requests")
    error_alpha: float = Field(
        0.01, gt=0, lt=1, description="Errors over max(bar, stable's rate) roll back below it"
    )
    error_spread: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="Excess over stable's error rate the sequential test is tuned to find (its "
        "mixture's standard deviation): larger finds big excesses sooner, small ones later",
    )
    max_p99_ms: float = Field(100.0, gt=0, description="Candidate P99 request latency")
    p99_alpha: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="A P99 over the bar rolls back when chance would give that many slow "
        "requests less often than this",
    )
    p99_min_requests: int = Field(
        100,
        ge=1,
        description="Requests a window needs before its P99 is judged (a 1% tail holds one "
        "in a hundred); at least min_requests",
    )
    max_mae_regression: float = Field(
        0.05, ge=0, description="Candidate MAE may be at most this much worse than stable's"
    )
    quality_z: float = Field(
        2.326,
        ge=0,
        description="One-sided z: an MAE regression past the margin rolls back only when it "
        "is this many standard errors past it (2.326: 1% by chance); 0: any excess",
    )
    max_qps_drop: float = Field(
        0.30, ge=0, le=1, description="Largest drop in share-normalised QPS against stable"
    )
    qps_noise_z: float = Field(
        2.0,
        ge=0,
        description="A QPS drop past the margin rolls back only when the shortfall is this many "
        "standard deviations of a Poisson count (√expected requests); 0: any shortfall",
    )
    failure_threshold: int = Field(
        3,
        ge=1,
        description="Consecutive ticks of a step (each with new evidence) a rollback check must "
        "fail on before the reconciler rolls back; fewer hold. 1: the first failure rolls back",
    )
    min_requests: int = Field(
        50, ge=1, description="Candidate requests a window needs before a step may advance"
    )
    min_labelled: int = Field(
        50, ge=1, description="Labelled predictions needed before quality is judged"
    )
    require_labels: bool = Field(
        True, description="Promote only once quality was judged (off: teams without labels)"
    )
    forced_max_share: float = Field(
        0.01, gt=0, le=1, description="A gate-rejected candidate's traffic cap until judged"
    )
    plan_shares: tuple[float, float] = Field(
        (0.001, 0.01), description="Default plan: its first two steps' shares of orders"
    )
    plan_zone_share: float = Field(
        0.10, gt=0, le=1, description="Default plan, third step: share of zones, all orders"
    )
    plan_durations_s: tuple[float, float, float, float] = Field(
        (86_400.0, 259_200.0, 604_800.0, 3_600.0),
        description="Default plan: minimum duration of each step (0.1%, 1%, zones, 100%)",
    )
    plan_max_factor: float = Field(
        4.0, ge=1, description="A plan step not judged within this × its minimum duration ends"
    )
    lease_ttl_s: float = Field(
        60.0, gt=0, description="The traffic lease lapses this long after its last renewal"
    )
    lease_wait_s: float = Field(
        30.0,
        ge=0,
        description="A restore waits this long for the traffic lease (a controller's tick "
        "holds it for seconds) before it fails naming the holder",
    )
    tick_s: float = Field(
        15.0,
        gt=0,
        description="How often the rollout controller ticks (judges the step, heals traffic); "
        "well under lease_ttl_s, so a live controller never lets its lease lapse",
    )
    follow_poll_s: float = Field(
        10.0, gt=0, description="How often a task waiting for a rollout's end reads its record"
    )
    guard_bake_s: float = Field(
        86_400.0, gt=0, description="After promotion, production is watched this long (bake)"
    )
    guard_sustain_s: float = Field(
        180.0, gt=0, description="A production breach this long restores the previous version"
    )

    @field_validator("plan_shares")
    @classmethod
    def _plan_shares_increase(cls, shares: tuple[float, float]) -> tuple[float, float]:
        if not 0 < shares[0] < shares[1] < 1:
            raise ValueError(f"plan shares must increase within (0, 1): {shares}")
        return shares

    @field_validator("plan_durations_s")
    @classmethod
    def _plan_durations_positive(cls, durations: tuple[float, ...]) -> tuple[float, ...]:
        if any(d <= 0 for d in durations):
            raise ValueError(f"plan step durations must be > 0 s: {durations}")
        return durations


class ServingSettings(BaseModel):
    """The Ray Serve endpoint."""

    host: str = "127.0.0.1"
    port: int = 8000
    app_name: str = "eta"
    # Import path of the Serve application (its builders), as `serve deploy` would take it.
    app_module: str = "serving.app"
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.010
    flush_when_idle: bool = Field(
        True,
        description="A request that finds no other in its model replica is answered at once, "
        "without waiting out batch_wait_timeout_s for a batch that won't fill; under load "
        "requests still batch",
    )
    idle_after_s: float = Field(
        1.0,
        ge=0,
        description="flush_when_idle: a replica is idle once no two requests overlapped in it "
        "for this long (a busy one keeps batching between bursts)",
    )
    gc_freeze: bool = Field(
        True,
        description="A replica that finished loading moves what it holds out of the garbage "
        "collector's scans (gc.freeze): the libraries' 300,000 objects made each full "
        "collection a 100-200 ms pause in the request path (relay.serve.heap)",
    )
    layout: Literal["split", "inline"] = Field(
        "split",
        description="split: the router calls each version's model deployment (a replica "
        "crash stays in the model's; models scale apart from the router); inline: each router "
        "replica holds the split's models itself, one hop fewer (README, fast serving)",
    )
    inline_load_retry_s: float = Field(
        1.0,
        gt=0,
        description="layout=inline: the wait before a router retries loading a version that "
        "failed to load (the current split keeps answering); doubles per failure",
    )
    inline_load_retry_max_s: float = Field(
        60.0, gt=0, description="layout=inline: the longest wait between two load tries"
    )
    inline_check_timeout_s: float = Field(
        120.0,
        gt=0,
        description="layout=inline: how long a deploy waits for its check that the version "
        "loads (a Ray task: registry, sha256, weights); no model app is started inline",
    )
    # Must exceed batch size x concurrent batches, or batches never fill (Serve's default is 5).
    max_ongoing_requests: int = 256
    # Replicas of each model version and of the router (prod profile: 2 at least, one dying
    # must not take the endpoint down; relay.settings fills them).
    model_replicas: int = Field(1, ge=1, description="Replicas of each model version's deployment")
    router_replicas: int = Field(1, ge=1, description="Replicas of the router (HTTP ingress)")
    # Overload answers at once instead of queueing (relay.serve.control, serving/app.py).
    max_queued_requests: int = Field(
        1024, ge=1, description="Requests waiting per caller beyond that: 503 with Retry-After"
    )
    retry_after_s: float = Field(
        1.0, ge=0, description="The Retry-After of an overloaded or unready endpoint's 503"
    )
    model_timeout_s: float = Field(
        2.0, gt=0, description="The router's wait for a model call (late: stable, else 503)"
    )
    request_timeout_s: float = Field(
        10.0, gt=0, description="Serve's end-to-end limit on one HTTP request (then 408)"
    )
    health_check_period_s: float = Field(
        5.0, gt=0, description="How often Serve checks each replica (a failing one is replaced)"
    )
    health_check_timeout_s: float = Field(
        1.0, gt=0, description="A replica's health check slower than this fails"
    )
    # The prediction cache (relay.serve.prediction_cache): answers by version and feature vector.
    prediction_cache_size: int = Field(
        4096, ge=0, description="Predictions an L1 (per model replica, LRU) keeps; 0: no cache"
    )
    prediction_cache_ttl_s: float = Field(
        60.0, gt=0, description="A cached prediction is answered for at most this long"
    )
    prediction_cache_redis_url: str | None = Field(
        None, description="L2 shared by a version's replicas (redis://host:port/db); None: none"
    )
    prediction_cache_timeout_s: float = Field(
        0.005, gt=0, description="An L2 lookup or write slower than this is a miss"
    )
    prediction_cache_retry_after_s: float = Field(
        10.0, ge=0, description="After an L2 failure, L2 is not asked for this long"
    )
    model_cpus: float = 0.5
    model_gpus: float = Field(
        0.0,
        ge=0,
        description="GPUs per model replica (0: CPU; 1 on a GPU node; a fraction shares one); "
        "a version's stored serving.gpus overrides it",
    )
    router_cpus: float = 0.25
    log_max_batch: int = 1000
    log_max_delay_s: float = 1.0
    log_writer: Literal["thread", "process"] = Field(
        "process",
        description="Where the serving log's batches are tabulated and written: a child "
        "process of the replica (relay.serve.log_child), whose writes do not hold the "
        "replica's GIL (32-order p99 in process 29 -> 10 ms; about 150 MB per replica), or a "
        "thread of the replica",
    )
    log_compact_min_files: int = Field(
        2,
        ge=2,
        description="Serving log: compaction merges an hour once it holds this many files "
        "(relay.serve.log_compact)",
    )
    log_compact_row_group_rows: int = Field(
        131_072,
        ge=1_024,
        description="Serving log: rows per Parquet row group of an hour's compacted file (one "
        "file per hour; an hour at 20 orders/s is 72,000 rows)",
    )
    log_compact_lookback_hours: int = Field(
        3,
        ge=1,
        description="Serving log: each monitoring run compacts the whole hours this far back "
        "(late files, a missed run); older hours: `relay serve compact --since`",
    )
    metrics_push_s: float = Field(
        0.5, gt=0, description="Seconds between a router's pushes to the metrics hub (its lag)"
    )
    metrics_hub_timeout_s: float = Field(
        2.0, gt=0, description="Wait on the metrics hub, then answer a router's own counters"
    )
    drift_refresh_s: float = Field(
        60.0,
        gt=0,
        description="Seconds between a router's reads of the newest monitoring verdict for "
        "the relay_drift_* Ray gauges (monitoring runs hourly)",
    )
    metrics_read_timeout_s: float = Field(
        15.0,
        gt=0,
        description="Wait on the metrics hub by a driver (controller tick, CLI) before it fails",
    )
    max_body_bytes: int = Field(
        1 << 20, gt=0, description="POST /v1/eta: a larger body is refused (413)"
    )
    max_json_depth: int = Field(
        8, ge=3, description="POST /v1/eta: JSON nested deeper is refused (a batch is 3 deep)"
    )
    created_at_max_age_s: float = Field(
        30 * 86_400.0,
        gt=0,
        description="POST /v1/eta: an order's created_at at most this old (a month: replays)",
    )
    created_at_max_ahead_s: float = Field(
        3_600.0, ge=0, description="POST /v1/eta: an order's created_at at most this far ahead"
    )
    max_request_id_chars: int = Field(
        128, ge=1, description="POST /v1/eta: the x-request-id header's length at most"
    )
    # Secrets, each in a file a router reads on its own node (relay.serve.auth); required in
    # the prod profile.
    api_keys_file: Path | None = Field(
        None, description="POST /v1/eta needs a bearer key from this file (one per line)"
    )
    admin_token_file: Path | None = Field(
        None, description="/v1/models, /v1/metrics, /metrics need the bearer token in this file"
    )
    bucket_salt_file: Path | None = Field(
        None, description="A secret keying the canary's order hash (clients can't pick versions)"
    )
    min_eta_minutes: float = Field(0.0, description="A returned prediction exceeds this")
    max_eta_minutes: float = Field(600.0, gt=0, description="A returned prediction is at most this")

    @property
    def url(self) -> str:
        """The endpoint's base URL for a client on this machine (a wildcard host means loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(  # noqa: S104
            self.host, self.host
        )
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"
