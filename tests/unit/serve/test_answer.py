"""A request's answers: predictions that cannot be returned, and what a failed call turns into.

:func:`merge_calls` is the router's whole decision (``serving/app.py`` only makes the calls):
a candidate's failure is answered by stable and counted against the candidate; a stable row
the model made nothing usable of gets a flagged fallback; a stable call that failed is a 503
naming stable.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import pytest

from relay.serve.answer import (
    CHECKED_FEATURES,
    VersionCall,
    answer_rows,
    eta_error,
    fallback_eta,
    merge_calls,
    response_body,
    row_error,
)
from relay.serve.schemas import ETAResponse, Order, Prediction, feature_row, feature_rows

NOW = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)
RANGE = (0.0, 600.0)


def _answer_rows(
    preds: list[float], eta_range: tuple[float, float] | None = RANGE, prior: float | None = None
) -> Any:
    rows = [{"order_id": f"o{i}"} for i in range(len(preds))]
    feats: dict[str, list[Any]] = {f: [1.0] * len(preds) for f in CHECKED_FEATURES}
    return answer_rows("v1", rows, ["r"] * len(preds), feats, preds, 3.0, NOW, eta_range, prior)


def test_non_finite_and_out_of_range_predictions_are_errors_and_not_logged():
    answers, records = _answer_rows([25.0, math.nan, math.inf, -2.0, 0.0, 600.0, 601.0])
    errors = [row_error(a) for a in answers]
    assert [e is None for e in errors] == [True, False, False, False, False, True, False]
    assert "finite" in str(errors[1]) and "finite" in str(errors[2])
    assert "outside" in str(errors[3]) and "outside" in str(errors[6])
    assert all(a["eta_minutes"] is None for a, e in zip(answers, errors, strict=True) if e)
    assert [r["order_id"] for r in records] == ["o0", "o5"]  # only what can be served
    assert [r["eta_minutes"] for r in records] == [25.0, 600.0]


def test_an_unusable_prediction_carries_the_cap_or_the_prior_as_its_fallback():
    answers, _ = _answer_rows([900.0, math.nan, -2.0, math.inf, 30.0], prior=38.5)
    assert [a.get("fallback_minutes") for a in answers] == [600.0, 38.5, 38.5, 38.5, None]
    no_prior, _ = _answer_rows([math.nan, 900.0])
    assert [a["fallback_minutes"] for a in no_prior] == [None, 600.0]
    assert fallback_eta(5.0, RANGE, 700.0) is None  # a prior outside the range is no answer
    assert fallback_eta(math.nan, None, 40.0) == 40.0


def test_without_a_range_only_non_finite_predictions_are_errors():
    answers, records = _answer_rows([-5.0, math.nan], eta_range=None)
    assert row_error(answers[0]) is None and "error" not in answers[0]
    assert row_error(answers[1]) is not None and len(records) == 1
    assert eta_error(5.0, None) is None


def test_an_empty_range_is_refused():
    with pytest.raises(ValueError, match="low < high"):
        _answer_rows([5.0], eta_range=(10.0, 10.0))


def _ok(version: str, rows: tuple[int, ...], minutes: float = 20.0) -> VersionCall:
    answers = [
        {"order_id": f"o{i}", "eta_minutes": minutes, "model_version": version} for i in rows
    ]
    return VersionCall(version, rows, 7.0, answers)


def _bad_rows(
    version: str, rows: tuple[int, ...], bad: set[int], fallback: float | None = None
) -> VersionCall:
    call = _ok(version, rows)
    answers = [
        {**a, "eta_minutes": None, "error": "not finite", "fallback_minutes": fallback}
        if i in bad
        else a
        for i, a in zip(rows, call.answers or [], strict=True)
    ]
    return VersionCall(version, rows, 9.0, answers)


def test_every_version_answering_fills_every_row_and_counts_each_call():
    merged = merge_calls(4, "s", [_ok("s", (0, 2), 10.0), _ok("c", (1, 3), 30.0)])
    assert merged.retry == () and merged.failed is None and merged.unanswered == ()
    assert [a["model_version"] for a in merged.answers if a] == ["s", "c", "s", "c"]
    assert [(o.version, o.values, o.error) for o in merged.observed] == [
        ("s", (10.0, 10.0), False),
        ("c", (30.0, 30.0), False),
    ]


def test_each_call_counts_the_forward_pass_its_model_reported():
    answers = [{"order_id": "o0", "eta_minutes": 9.0, "model_version": "s", "batch_orders": 12}]
    reported = VersionCall("s", (0,), 3.0, answers)
    merged = merge_calls(3, "s", [reported, _ok("c", (1, 2))])
    assert [(o.batch_orders, o.orders) for o in merged.observed] == [(12, 1), (None, 2)]
    failed = merge_calls(1, "s", [VersionCall("s", (0,), 5.0, None, "died")])
    assert failed.observed[0].batch_orders is None


def test_a_failed_candidate_call_is_answered_by_stable_and_counted_against_the_candidate():
    failed = VersionCall("c", (1, 3), 50.0, None, "RayActorError: died")
    merged = merge_calls(4, "s", [_ok("s", (0, 2)), failed])
    assert merged.retry == (1, 3) and merged.failed is None and merged.unanswered == (1, 3)
    again = merge_calls(4, "s", [_ok("s", (1, 3), 40.0)], merged)
    assert again.unanswered == () and again.failed is None and again.retry == ()
    assert [a["model_version"] for a in again.answers if a] == ["s"] * 4
    assert [(o.version, o.latency_ms, o.error) for o in again.observed] == [
        ("s", 7.0, False),
        ("c", 50.0, True),
        ("s", 7.0, False),
    ]


def test_a_candidates_unreturnable_rows_alone_go_to_stable():
    merged = merge_calls(3, "s", [_bad_rows("c", (0, 1, 2), {1})])
    assert merged.retry == (1,) and merged.unanswered == (1,)
    assert [(o.version, o.values, o.error) for o in merged.observed] == [("c", (20.0, 20.0), True)]
    again = merge_calls(3, "s", [_ok("s", (1,), 33.0)], merged)
    assert [a["eta_minutes"] for a in again.answers if a] == [20.0, 33.0, 20.0]


def test_a_candidate_answering_the_wrong_number_of_rows_is_a_failed_call():
    short = VersionCall("c", (0, 1), 5.0, [{"order_id": "o0", "eta_minutes": 1.0}])
    merged = merge_calls(2, "s", [short])
    assert merged.retry == (0, 1) and merged.observed[0].error


def test_a_stable_row_without_a_fallback_fails_the_request_naming_stable():
    merged = merge_calls(2, "s", [_bad_rows("s", (0,), {0}), _ok("c", (1,))])
    assert merged.failed is not None and "model s" in merged.failed
    assert merged.retry == ()
    assert [(o.version, o.error) for o in merged.observed] == [("s", True), ("c", False)]


def test_a_stable_call_that_failed_is_retried_once_and_then_fails_the_request():
    first = merge_calls(
        2, "s", [VersionCall("s", (0,), 5.0, None, "RayActorError: died"), _ok("c", (1,))]
    )
    assert first.failed is None and first.retry == (0,)  # another replica may answer
    answered = merge_calls(2, "s", [_ok("s", (0,), 12.0)], first)
    assert answered.failed is None and answered.unanswered == ()
    again = merge_calls(2, "s", [VersionCall("s", (0,), 5.0, None, "TimeoutError: slow")], first)
    assert again.failed == "model s failed: TimeoutError: slow" and again.retry == ()
    assert [(o.version, o.error) for o in again.observed] == [
        ("s", True),
        ("c", False),
        ("s", True),
    ]


def test_stable_failing_the_retry_fails_the_request_and_both_count_errors():
    merged = merge_calls(1, "s", [VersionCall("c", (0,), 5.0, None, "boom")])
    again = merge_calls(1, "s", [VersionCall("s", (0,), 6.0, None, "boom too")], merged)
    assert again.failed == "model s failed: boom too" and again.retry == ()
    assert [(o.version, o.error) for o in again.observed] == [("c", True), ("s", True)]


def test_the_response_body_is_the_response_models_json() -> None:
    """Written without the models, it says what they say: the same fields, the degraded flag,
    an integer fallback as a float, no extra keys; unanswered rows are left out."""
    answers, _ = _answer_rows([25.0, 900.0, 31.25], prior=38.5)
    answers[0]["batch_orders"] = 3  # the router's own key, never in the response
    answers[0]["missing_features"] = [CHECKED_FEATURES[0]]
    merged = merge_calls(3, "v1", [VersionCall("v1", (0, 1, 2), 4.0, answers)])
    rows = [*merged.answers, None]
    rows[2] = {**answers[2], "eta_minutes": 600, "degraded": True}  # an int from a fallback
    models = ETAResponse(
        predictions=[Prediction(**a) for a in rows if a is not None], latency_ms=round(12.34567, 3)
    )
    assert json.loads(response_body(rows, 12.34567)) == models.model_dump()
    assert json.loads(response_body([], 1.0)) == {"predictions": [], "latency_ms": 1.0}


def test_feature_rows_are_each_orders_feature_row() -> None:
    at = dt.datetime(2026, 11, 20, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-2)))
    orders = [
        Order(
            order_id=f"o{i}",
            courier_id="c",
            merchant_id="m",
            zone_id="z",
            distance_km=2,
            created_at=created,
        )
        for i, created in enumerate([None, at, None, NOW, at])
    ]
    rows = feature_rows(orders, NOW)
    assert rows == [feature_row(o, NOW) for o in orders]
    assert [(r["hour"], r["weekday"]) for r in rows] == [(12, 4), (1, 5), (12, 4), (12, 4), (1, 5)]
