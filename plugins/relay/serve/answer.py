"""What one request turns into: its orders parsed, its answers and its serving-log records.

The Serve app and the plain baseline in ``bench/`` build both from here, so the benchmark compares
transports, not two copies of the same work.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from relay.features.catalog import NUMERIC, WEATHER

CHECKED_FEATURES: tuple[str, ...] = (*NUMERIC, WEATHER)
"""Inputs whose absence the answer reports (``missing_features``): the model then used defaults."""


def answer_rows(
    version: str,
    rows: Sequence[Mapping[str, Any]],
    request_ids: Sequence[str],
    features: Mapping[str, Sequence[Any]],
    predictions: Sequence[float] | Any,
    latency_ms: float,
    served_at: dt.datetime,
    eta_range: tuple[float, float] | None = None,
    prior_minutes: float | None = None,
    degraded: str | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One answer per row, and one serving-log record per row that can be returned.

    A prediction that is not finite, or outside ``eta_range``, is never returned as the
    model's: its row's answer carries an ``error`` (see :func:`row_error`), ``eta_minutes``
    None and a ``fallback_minutes`` (:func:`fallback_eta`), and it gets no log record (the
    model's prediction was not served). The router answers such rows from stable, and a
    stable's such rows with their fallback, flagged ``degraded`` (:func:`merge_calls`).

    Args:
        version: The model version that predicted.
        rows: Feature rows (``feature_row``), in the order of ``features`` and ``predictions``.
        request_ids: The request each row came with (one per row).
        features: Column -> value per row, as the online store returned them.
        predictions: Minutes per row.
        latency_ms: Time spent on the rows (feature read and forward pass, or the whole request).
        served_at: When the answers were made.
        eta_range: ``(low, high)``: a prediction must be ``> low`` and ``<= high`` minutes
            (``RELAY_SERVING__MIN_ETA_MINUTES``, ``__MAX_ETA_MINUTES``); None checks finiteness
            only.
        prior_minutes: what to answer when the model's own prediction is unusable and cannot
            be clamped (the training set's mean ETA); None: no fallback.
        degraded: why ``features`` are the defaults rather than the store's
            (:class:`relay.features.guarded.OnlineRead`): every answer is flagged ``degraded``.

    Raises:
        ValueError: ``eta_range`` is empty (``low >= high``).
    """
    if eta_range is not None and not eta_range[0] < eta_range[1]:
        raise ValueError(f"eta_range must be (low, high) with low < high, got {eta_range}")
    answers: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        missing = [f for f in CHECKED_FEATURES if features[f][i] is None]
        raw = float(predictions[i])
        error = eta_error(raw, eta_range)
        value = None if error else round(raw, 3)
        answer = {
            "order_id": row["order_id"],
            "eta_minutes": value,
            "model_version": version,
            "missing_features": missing,
        }
        if degraded:
            answer["degraded"] = True
        if error:
            fallback = fallback_eta(raw, eta_range, prior_minutes)
            answers.append({**answer, "error": error, "fallback_minutes": fallback})
            continue
        answers.append(answer)
        records.append(
            {
                "request_id": request_ids[i],
                "order_id": row["order_id"],
                "requested_at": served_at,
                "model_version": version,
                "features": {k: features[k][i] for k in features},
                "eta_minutes": value,
                "latency_ms": latency_ms,
                "missing_features": missing,
            }
        )
    return answers, records


_encode = msgspec.json.Encoder().encode


def response_body(answers: Sequence[Mapping[str, Any] | None], latency_ms: float) -> bytes:
    """The JSON of :class:`relay.serve.schemas.ETAResponse` for a request's returnable answers
    (None is left out), with ``latency_ms`` rounded to the microsecond.

    Written from the answers directly, which :func:`answer_rows` and :func:`merge_calls` made:
    validating them into the response's models and dumping those again took 86 µs for 32
    orders in process, this 11 µs (README, fast serving). A test holds it equal to the models'
    JSON."""
    predictions = [
        {
            "order_id": a["order_id"],
            "eta_minutes": float(a["eta_minutes"]),
            "model_version": a["model_version"],
            "missing_features": a["missing_features"],
            "degraded": bool(a.get("degraded", False)),
        }
        for a in answers
        if a is not None
    ]
    return _encode({"predictions": predictions, "latency_ms": round(latency_ms, 3)})


def eta_error(minutes: float, eta_range: tuple[float, float] | None) -> str | None:
    """Why a predicted ETA cannot be returned, or None when it can."""
    if not math.isfinite(minutes):
        return f"prediction is not a finite number ({minutes})"
    if eta_range is not None and not eta_range[0] < minutes <= eta_range[1]:
        return f"prediction {minutes:.3f} min is outside ({eta_range[0]}, {eta_range[1]}]"
    return None


def fallback_eta(
    minutes: float, eta_range: tuple[float, float] | None, prior: float | None
) -> float | None:
    """What to answer instead of an unusable prediction: the range's top for one above it (the
    model says "very long", and the cap is the longest ETA the platform will promise), else the
    prior (the training set's mean) when it lies in the range; None when there is nothing sane."""
    if eta_range is not None and math.isfinite(minutes) and minutes > eta_range[1]:
        return float(eta_range[1])
    if prior is None or not math.isfinite(prior) or eta_error(prior, eta_range) is not None:
        return None
    return round(float(prior), 3)


def row_error(answer: Mapping[str, Any]) -> str | None:
    """The reason a model's answer for one row cannot be returned (:func:`answer_rows`)."""
    error = answer.get("error")
    return None if error is None else str(error)


@dataclass(frozen=True)
class VersionCall:
    """One model version's call for some of a request's rows, as it came back.

    Attributes:
        version: the version called.
        rows: the request's row indices it was given, in order.
        latency_ms: from dispatch to its answer (or its failure).
        answers: its answer per row (:func:`answer_rows`); None when the call raised.
        failure: what the call raised, for the 503's detail.
    """

    version: str
    rows: tuple[int, ...]
    latency_ms: float
    answers: Sequence[Mapping[str, Any]] | None = None
    failure: str | None = None


BATCH_KEY = "batch_orders"
"""The key of a model's answer that says how many orders its forward pass had (the router
counts it, the response leaves it out)."""


@dataclass(frozen=True)
class CallMetrics:
    """What the live metrics record of one call (:meth:`LiveMetrics.observe`): its valid
    predictions, whether it failed or produced any prediction that cannot be returned, how
    many of its answers were served ``degraded``, and the forward pass it was answered in
    (``batch_orders``, as the model reported it; None for a failed call) with its own
    ``orders``."""

    version: str
    latency_ms: float
    values: tuple[float, ...]
    error: bool
    degraded: int = 0
    batch_orders: int | None = None
    orders: int = 0


@dataclass(frozen=True)
class Merged:
    """A request's answers put together from its versions' calls.

    Attributes:
        answers: the answer per request row; None where none is returnable yet.
        observed: one :class:`CallMetrics` per call so far.
        retry: rows the stable version must answer again (its candidate failed them).
        failed: why the request fails (a 503 naming stable), or None.
    """

    answers: tuple[Mapping[str, Any] | None, ...]
    observed: tuple[CallMetrics, ...] = ()
    retry: tuple[int, ...] = ()
    failed: str | None = None

    @property
    def unanswered(self) -> tuple[int, ...]:
        """Rows without a returnable answer."""
        return tuple(i for i, a in enumerate(self.answers) if a is None)


def _degraded(answer: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in answer.items() if k not in ("error", "fallback_minutes")}
    return {**out, "eta_minutes": answer["fallback_minutes"], "degraded": True}


def merge_calls(
    n_rows: int, stable: str, calls: Sequence[VersionCall], before: Merged | None = None
) -> Merged:
    """Put a request's answers together, and decide what a failed call or row turns into.

    A candidate's failure (its call raised or returned the wrong number of answers, or a row's
    prediction cannot be returned) is answered by stable: its rows go to ``retry``, once; so
    do the rows of a stable call that failed the first time (its replica died or was late). A
    stable row whose prediction cannot be returned is answered with its ``fallback_minutes``,
    flagged ``degraded``: an order the contract allows is never a 5xx for what the model made
    of it. A stable retry that failed, or a row without a fallback, fails the request
    (``failed``, a 503 naming stable): there is nothing safer to fall back on. Every call
    counts in the metrics of the version that made it, an error where it failed or produced
    a prediction that cannot be returned.

    Args:
        n_rows: how many rows (orders) the request has.
        stable: the stable version of the split the request was routed by.
        calls: the calls that came back, each with the rows it was given.
        before: the merge these calls follow (the stable retry's), whose answers they fill in.
    """
    answers: list[Mapping[str, Any] | None] = (
        list(before.answers) if before is not None else [None] * n_rows
    )
    observed = list(before.observed) if before is not None else []
    retry: list[int] = []
    failed = before.failed if before is not None else None
    for call in calls:
        got = call.answers
        if got is None or len(got) != len(call.rows):
            why = (
                call.failure
                or f"{0 if got is None else len(got)} answers for {len(call.rows)} orders"
            )
            observed.append(CallMetrics(call.version, call.latency_ms, (), True))
            if call.version == stable and before is not None:
                failed = failed or f"model {call.version} failed: {why}"
            # A first failure is retried on stable once: the candidate's, or stable's own (a
            # replica that died or was late; Serve routes the retry to a live one).
            retry.extend(call.rows)
            continue
        bad: list[tuple[int, str]] = []
        values: list[float] = []
        fell_back = False
        for i, a in zip(call.rows, got, strict=True):
            error = row_error(a)
            if error is None:
                answers[i] = a
                values.append(float(a["eta_minutes"]))
            elif call.version == stable and a.get("fallback_minutes") is not None:
                # Nothing safer to ask: the order still gets an ETA, flagged, and the version's
                # metrics count the error.
                answers[i] = _degraded(a)
                fell_back = True
            else:
                bad.append((i, f"order {a.get('order_id')}: {error}"))
        failing = bool(bad) or fell_back
        flagged = sum(1 for i in call.rows if (answers[i] or {}).get("degraded"))
        batch = got[0].get(BATCH_KEY) if got else None
        observed.append(
            CallMetrics(
                call.version,
                call.latency_ms,
                tuple(values),
                failing,
                flagged,
                int(batch) if isinstance(batch, int) else None,
                len(call.rows),
            )
        )
        if bad and call.version == stable:
            failed = failed or f"model {call.version} gave no valid prediction for {bad[0][1]}"
        retry.extend(i for i, _ in bad)
    return Merged(
        answers=tuple(answers),
        observed=tuple(observed),
        retry=() if failed else tuple(sorted(retry)),
        failed=failed,
    )
