"""The daily training run's steps, as plain functions (no Airflow import).

``dags/eta_training.py`` wraps each in a task; ``make demo`` and the tests call them directly.
Every step is keyed on its days or its run folder and overwrites what it writes, so re-running
a task for the same data interval is safe. Steps pass paths and ids, never data frames.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relay.data.lake import VALIDATED_ORDERS, Lake, date_range
from relay.flows import run_store
from relay.settings import Settings, get_settings

if TYPE_CHECKING:
    from relay.registry import ModelVersion

log = logging.getLogger(__name__)


def run_days(
    start: str | None, end: str | None, interval_start: dt.datetime, interval_end: dt.datetime
) -> list[dt.date]:
    """The days a run covers: the Params' ``start``/``end`` (YYYY-MM-DD) when given, else the
    run's data interval (a daily run covers the day that just ended)."""
    if start:
        first = dt.date.fromisoformat(start)
        last = dt.date.fromisoformat(end) if end else first
    else:
        first = interval_start.date()
        # The interval's end is exclusive: a daily run of [D, D+1) covers D.
        last = max(first, (interval_end - dt.timedelta(microseconds=1)).date())
    if last < first:
        raise ValueError(f"end {last} is before start {first}")
    return date_range(first, last)


def run_dir(run_id: str, settings: Settings | None = None) -> Path:
    """This node's copy of the run's folder: ``{RELAY_RUNS__SCRATCH}/<run id>`` (in the local
    profile the run folder itself, ``{home}/runs/<run id>``)."""
    s = settings or get_settings()
    path = run_store.scratch_path(run_uri(run_id, s), s.runs.uri or "", s.runs.scratch or Path())
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_uri(run_id: str, settings: Settings | None = None) -> str:
    """The run's folder that every step shares: ``{RELAY_RUNS__URI}/<run id>`` (a path in the
    local profile, an ``s3://`` URI in prod). Steps on it open a :func:`run_store.workspace`."""
    return run_store.run_uri(run_id, settings)


def has_new_days(days: list[dt.date], settings: Settings | None = None) -> bool:
    """Whether any of ``days`` is missing from the production model's training data.

    A scheduled run whose days production was already trained on (``make up``'s first run
    covers yesterday, then the daily schedule fires for yesterday too) has nothing to learn.
    """
    from relay.registry import Registry

    production = Registry(settings).stage_version("production")
    if production is None:
        return True
    trained_on = set(production.lineage.data_partitions)
    return any(f"{VALIDATED_ORDERS}/date={d}" not in trained_on for d in days)


def ingest(
    days: list[dt.date],
    orders: int | None = None,
    scenario: str = "normal",
    overwrite: bool = False,
    settings: Settings | None = None,
) -> list[str]:
    """Land each day's batch of orders in ``raw/orders`` (the generator stands in for the
    order service's export). A day already landed is kept as it is (the export lands once;
    ``overwrite`` lands it again). Returns the partition URIs."""
    from relay.data.lake import RAW_ORDERS
    from relay.ingest.landing import land_generated_batch

    lake = Lake(settings)
    uris = []
    for day in days:
        if lake.exists(RAW_ORDERS, day) and not overwrite:
            log.info("%s already landed: kept (%s)", day, lake.uri(RAW_ORDERS, day))
            uris.append(lake.uri(RAW_ORDERS, day))
            continue
        uri, rows = land_generated_batch(day, orders, scenario, settings)
        log.info("landed %s orders of %s (%s) -> %s", rows, day, scenario, uri)
        uris.append(uri)
    return uris


def validate(days: list[dt.date]) -> list[str]:
    """Validate each day's raw batch; copy it to ``validated/orders`` only when it passes.

    Returns the Data Docs pages. Raises ``DataValidationFailed`` (its message names the failed
    expectations and the Data Docs page) at the first bad day, before anything downstream.
    """
    from relay.ingest.landing import validate_partition

    docs = []
    for day in days:
        verdict = validate_partition(day)
        log.info("%s", verdict.summary())
        docs.append(verdict.docs_path or "")
    return docs


def publish_features(days: list[dt.date]) -> str:
    """Feature tables for the days, ``feast apply``, and materialize the online store up to the
    end of the last day. Returns the online store's materialized-until timestamp."""
    from relay.features.store import apply, materialize, write_feature_tables

    for day in days:
        write_feature_tables(day)
    apply()
    stop = dt.datetime.combine(days[-1] + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    materialize(stop)
    return stop.isoformat()


def training_set(
    days: list[dt.date], window_days: int, settings: Settings | None = None
) -> dict[str, Any]:
    """Build the training set from the validated days in the ``window_days`` ending with the
    run's last day. Returns ``{"uri", "rows", "partitions"}``."""
    s = settings or get_settings()
    from relay.features.store import build_training_set

    end = days[-1]
    start = end - dt.timedelta(days=window_days - 1)
    have = [d for d in Lake(s).partitions(VALIDATED_ORDERS) if start <= d <= end]
    if not have:
        raise FileNotFoundError(f"no validated orders between {start} and {end}")
    uri, rows = build_training_set(have[0], end, s)
    parts = [f"{VALIDATED_ORDERS}/date={d}" for d in have]
    log.info("training set: %s rows from %s to %s -> %s", rows, have[0], end, uri)
    return {"uri": uri, "rows": rows, "partitions": parts}


def landed_drift(days: list[dt.date], training_set_uri: str, folder: Path | str) -> dict[str, Any]:
    """Compare the run's landed days in its training set with production's training set, into
    ``<run>/landed_drift/`` (:func:`relay.monitor.landed.measure`). Records, never stops the
    run: nothing in production or a failure is recorded as such. Returns the record (JSON) with
    ``record`` (the ``landed.json`` path) and ``line`` (the one-line summary)."""
    from relay.monitor.landed import FOLDER, RECORD_FILE, measure

    uri = f"{str(folder).rstrip('/')}/{FOLDER}"
    with run_store.workspace(uri, fetch=False) as out:
        record = measure(training_set_uri, days, out)
    return {
        **record.model_dump(mode="json"),
        "record": f"{uri}/{RECORD_FILE}",
        "line": record.line(),
    }


def reuse_hyperparameters(folder: Path | str, overrides: Mapping[str, Any] | None = None) -> str:
    """Write ``best_config.json`` for a run that skips tuning: the production version's
    hyperparameters (the defaults when nothing is in production), then ``overrides``."""
    from relay.registry import Registry

    production = Registry().stage_version("production")
    config: dict[str, Any] = dict(production.training.hyperparameters) if production else {}
    config.update(overrides or {})
    path = run_store.write_text(
        f"{str(folder).rstrip('/')}/best_config.json", json.dumps(config, indent=2)
    )
    source = production.id if production else "the defaults"
    log.info("not tuning: hyperparameters of %s, overrides %s -> %s", source, overrides, path)
    return path


def merge_overrides(config_path: str, overrides: Mapping[str, Any] | None) -> str:
    """Apply the run's hyperparameter overrides on top of a tuned ``best_config.json``."""
    if not overrides:
        return config_path
    config = json.loads(run_store.read_text(config_path))
    config.update(overrides)
    return run_store.write_text(config_path, json.dumps(config, indent=2))


@dataclass
class GateOutcome:
    """Registration and gate result of a training run (JSON-able, for XCom)."""

    version: str
    passed: bool
    deploy: bool
    forced: bool
    summary: str
    report: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def register_and_gate(
    model_dir: str,
    training_set_uri: str,
    partitions: list[str],
    force: bool = False,
    slice_margin: float | None = None,
    run_id: str | None = None,
    conf: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Register the trained model, then gate it against the production champion.

    ``conf`` is the run's conf (its ``reason`` and, for a drift retrain, the ``trigger``
    monitoring put there): the version's lineage records it (:func:`notices.training_trigger`),
    with the run's landed-drift record (:func:`landed_drift`, in the run folder) when there is one.
    A rejection is sent as a notification (:mod:`relay.notify`) with the gate's reasons.

    With ``force`` a rejected version is still deployed (as a canary, judged by live metrics);
    the registry records that the gate failed and that the deployment was forced.
    ``slice_margin`` replaces ``GateSettings.slice_margin`` for this run (a drift retrain's);
    a negative one is refused before anything is registered.

    Safe to retry: the run (``run_id``, default the model folder) and its ``model.pt`` always
    give the same version. A version left Trained or Evaluating by an earlier try is evaluated
    (again); one the gate already judged is not judged twice: its recorded verdict is returned.
    """
    from relay.evaluate.challenger import evaluate_version
    from relay.evaluate.gate import margin
    from relay.flows import notices
    from relay.model.registration import register_trained
    from relay.monitor.landed import FOLDER, read_record
    from relay.notify import send
    from relay.registry import ModelState

    s = get_settings()
    margin(s.gate, slice_margin)
    trigger = notices.training_trigger(conf)
    # This node's copies of the model and of the run folder's landed_drift/ (the step beside
    # training; no record if it did not run). The gate writes nothing into the run folder.
    model_uri = str(model_dir).rstrip("/")
    model = run_store.fetch(model_uri)
    drift = run_store.fetch(f"{model_uri.rsplit('/', 1)[0]}/{FOLDER}")
    version = register_trained(
        model,
        training_set_uri=training_set_uri,
        data_partitions=partitions,
        run_id=run_id or (model_uri if run_store.is_remote(model_uri) else str(model.resolve())),
        trigger=trigger,
        landed_drift=read_record(drift),
    )
    if version.state not in (ModelState.TRAINED, ModelState.EVALUATING):
        out = recorded_outcome(version, s)
        log.info("gate for %s already judged (a retry): %s", version.id, out.summary)
        return out.to_dict()
    holdout = str(model / "data" / "holdout.parquet")
    res = evaluate_version(version.id, holdout, force=force, slice_margin=slice_margin)
    verdict = res.result.verdict
    out = GateOutcome(
        version=version.id,
        passed=verdict.passed,
        deploy=verdict.passed or force,
        forced=force and not verdict.passed,
        summary=verdict.summary(),
        report=str(res.result.report),
    )
    log.info("gate for %s: %s\nreport: %s", version.id, verdict.summary(), res.result.report)
    if not verdict.passed:  # told once: a retry returns the recorded verdict above
        run = version.lineage.training_run
        notice = notices.gate_rejected(
            out.version, out.summary, out.report, forced=out.forced, run_id=run, trigger=trigger
        )
        send(notice, s)
    return out.to_dict()


def recorded_outcome(version: ModelVersion, settings: Settings | None = None) -> GateOutcome:
    """The gate's outcome for a version it already judged, from the version's history.

    The verdict is the reason of its move out of Evaluating (to Validated: passed or forced;
    to Failed: rejected, or broken predictions). A version that never went through the gate
    here (no move out of Evaluating) is not deployed.
    """
    from relay.evaluate.challenger import FORCED_REASON
    from relay.registry import ModelState

    s = settings or get_settings()
    judged = [h for h in version.history if h.from_state is ModelState.EVALUATING]
    reason = judged[-1].reason if judged else f"{version.id} is {version.state.value}"
    validated = bool(judged) and judged[-1].to_state is ModelState.VALIDATED
    forced = validated and reason.startswith(FORCED_REASON)
    return GateOutcome(
        version=version.id,
        passed=validated and not forced,
        deploy=validated,
        forced=forced,
        summary=reason,
        report=str(s.reports_dir / "evaluation" / f"{version.id}.html"),
    )
