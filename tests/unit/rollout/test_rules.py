"""Canary rollout decisions: each rollback rule on its own, hold, advance and promote."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from relay.rollout.rules import Action, QualityWindow, decide, next_step
from relay.serve.metrics import LiveMetrics
from relay.serve.windows import VersionWindow
from relay.settings import RolloutSettings, Settings

SETTINGS = RolloutSettings(step_duration_s=0.5)
SECONDS = 600.0
TOTAL_QPS = 10.0


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _window(
    version: str,
    requests: int,
    *,
    errors: int = 0,
    latency_ms: float = 20.0,
    slow: int = 0,
    slow_ms: float = 400.0,
    seconds: float = SECONDS,
) -> VersionWindow:
    """``requests`` spread over ``seconds``: the first ``errors`` fail, the first ``slow`` lag."""
    clock = FakeClock()
    metrics = LiveMetrics(clock=clock)
    for i in range(requests):
        clock.t = seconds * (i + 1) / (requests + 1)
        ms = slow_ms if i < slow else latency_ms
        metrics.observe(version, ms, 1, [30.0], error=i < errors)
    clock.t = seconds
    return metrics.snapshot(versions=[version])[version]


def _pair(share: float, **candidate: float) -> tuple[VersionWindow, VersionWindow]:
    """Candidate and stable windows over the same interval, traffic split by ``share``."""
    n_cand = round(TOTAL_QPS * SECONDS * share)
    n_stable = round(TOTAL_QPS * SECONDS * (1 - share))
    kwargs = {"requests": n_cand, **candidate}
    return _window("v2", **kwargs), _window("v1", n_stable)  # type: ignore[arg-type]


def _only_failure(verdict, check: str, text: str) -> None:
    assert verdict.action is Action.ROLLBACK, verdict.summary()
    assert verdict.next_share == 0.0
    assert verdict.failed_checks == [check], verdict.summary()
    failing = [r for r in verdict.reasons if r.startswith("FAIL: ")]
    assert len(failing) == 1 and failing[0].startswith(f"FAIL: {text}"), failing


def test_a_healthy_step_advances():
    cand, stable = _pair(0.10)
    verdict = decide(cand, stable, SETTINGS, step_share=0.10, healthy_for_s=1.0)
    assert verdict.action is Action.ADVANCE, verdict.summary()
    assert verdict.next_share == 0.50
    assert verdict.failed_checks == []
    assert all(r.startswith("PASS: ") for r in verdict.reasons)
    # Every check is listed: error rate, P99, quality, throughput, evidence, duration, timeout.
    assert len(verdict.reasons) == 7
    assert any(r.startswith("PASS: throughput: candidate") for r in verdict.reasons)
    assert verdict.summary().startswith("candidate v2 vs stable v1 at 10%: ADVANCE → 50%")
    assert json.loads(json.dumps(verdict.to_dict()))["action"] == "advance"


def test_rolls_back_on_error_rate():
    cand, stable = _pair(0.10, errors=12)  # 12 of 600 = 2%
    verdict = decide(cand, stable, SETTINGS, step_share=0.10, healthy_for_s=1.0)
    _only_failure(verdict, "error_rate", "error rate 2.00%")


def test_p99_needs_a_hundred_requests_then_slow_requests_must_be_beyond_chance():
    _, stable = _pair(0.01)

    def verdict(n: int, slow: int):
        cand = _window("v2", n, slow=slow, slow_ms=150.0, seconds=30.0)
        return decide(cand, stable, SETTINGS, step_share=0.01, healthy_for_s=1.0)

    # Three slow of the first eight requests after a share grew: not a P99 yet.
    early = verdict(8, 3)
    assert "p99_latency" not in early.failed_checks, early.summary()
    assert "over 8 requests < 100, not judged yet" in early.summary()
    # Of 200: three slow is what a true P99 of 100 ms gives one time in three; eight is not.
    chance = verdict(200, 3)
    assert "p99_latency" not in chance.failed_checks, chance.summary()
    assert "3 of 200 requests slower (stable 0.0%), within chance" in chance.summary()
    slow = verdict(200, 8)
    assert slow.action is Action.ROLLBACK and "p99_latency" in slow.failed_checks
    assert "8 of 200 requests slower (stable 0.0%), beyond chance" in slow.summary()
    # A machine that is slow for both versions is not the candidate's fault.
    busy = _window("v1", 2000, slow=80, slow_ms=150.0, seconds=30.0)  # stable: 4% slow
    cand = _window("v2", 200, slow=8, slow_ms=150.0, seconds=30.0)
    same = decide(cand, busy, SETTINGS, step_share=0.01, healthy_for_s=1.0)
    assert "p99_latency" not in same.failed_checks, same.summary()
    cand = _window("v2", 200, slow=30, slow_ms=150.0, seconds=30.0)  # 15%: its own problem
    worse = decide(cand, busy, SETTINGS, step_share=0.01, healthy_for_s=1.0)
    assert "p99_latency" in worse.failed_checks, worse.summary()


def test_at_the_last_step_stable_latency_comes_from_the_step_before():
    cand = _window("v2", 400, slow=20, slow_ms=150.0, seconds=30.0)  # 5% slow at 100%
    idle = _window("v1", 0, seconds=30.0)  # stable serves nothing at 100%
    before = _window("v1", 200, slow=10, slow_ms=150.0, seconds=30.0)  # 5% slow at 50%
    alone = decide(cand, idle, SETTINGS, step_share=1.0, healthy_for_s=1.0)
    assert "p99_latency" in alone.failed_checks, alone.summary()
    judged = decide(
        cand, idle, SETTINGS, step_share=1.0, healthy_for_s=1.0, stable_reference=before
    )
    assert "p99_latency" not in judged.failed_checks, judged.summary()
    assert "(stable 5.0%)" in judged.summary()


def test_binomial_tail():
    from relay.verdict import binomial_tail

    assert binomial_tail(0, 10, 0.01) == 1.0 and binomial_tail(11, 10, 0.01) == 0.0
    assert binomial_tail(1, 10, 0.01) == pytest.approx(1 - 0.99**10)
    assert binomial_tail(2, 10, 0.01) == pytest.approx(1 - 0.99**10 - 10 * 0.01 * 0.99**9)
    assert binomial_tail(50, 1000, 0.01) < 1e-12


def test_rolls_back_on_p99_latency():
    cand, stable = _pair(0.10, slow=30)  # 5% at 400 ms: P99 in (300, 500]
    assert cand.p50_ms is not None and cand.p50_ms < 30
    verdict = decide(cand, stable, SETTINGS, step_share=0.10, healthy_for_s=1.0)
    _only_failure(verdict, "p99_latency", "P99 latency")


def test_rolls_back_on_quality():
    cand, stable = _pair(0.10)
    worse = QualityWindow(candidate_mae=8.8, stable_mae=8.0, n_labelled=200)  # +10%
    verdict = decide(cand, stable, SETTINGS, step_share=0.10, healthy_for_s=1.0, quality=worse)
    _only_failure(verdict, "quality", "quality: MAE 8.80 vs stable 8.00")


def test_a_live_quality_regression_within_noise_holds_and_beyond_it_rolls_back():
    cand, stable = _pair(0.10)
    # Sixty labelled orders: +6.9% is 0.11 min past the margin, with a standard error of 0.5.
    noisy = QualityWindow(candidate_mae=5.84, stable_mae=5.46, n_labelled=60, diff_se=0.5)
    verdict = decide(cand, stable, SETTINGS, step_share=0.10, healthy_for_s=1.0, quality=noisy)
    assert "quality" not in verdict.failed_checks, verdict.summary()
    assert "within noise 2.326 × SE 0.50" in verdict.summary()
    # The bad model of `make demo`: twice the error, measured well enough to be sure.
    bad = QualityWindow(candidate_mae=11.0, stable_mae=5.4, n_labelled=60, diff_se=0.9)
    verdict = decide(cand, stable, SETTINGS, step_share=0.10, healthy_for_s=1.0, quality=bad)
    _only_failure(verdict, "quality", "quality: MAE 11.00 vs stable 5.40")
    assert "beyond noise" in verdict.summary()


def test_quality_within_the_margin_or_too_thin_is_no_reason_to_roll_back():
    cand, stable = _pair(0.10)
    for quality in (
        QualityWindow(candidate_mae=8.3, stable_mae=8.0, n_labelled=200),  # +3.75%
        QualityWindow(candidate_mae=20.0, stable_mae=8.0, n_labelled=10),  # too few labels
    ):
        verdict = decide(
            cand, stable, SETTINGS, step_share=0.10, healthy_for_s=1.0, quality=quality
        )
        assert verdict.action is Action.ADVANCE, verdict.summary()


def test_rolls_back_on_throughput():
    # 10% of the traffic should bring 600 requests; 360 is a 40% drop, 60 below the 30% floor
    # of 420 where chance allows 2·√600 ≈ 49.
    cand, stable = _pair(0.10, requests=360)
    verdict = decide(cand, stable, SETTINGS, step_share=0.10, healthy_for_s=1.0)
    _only_failure(verdict, "throughput", "throughput")
    assert "drop 40.0% > max 30.0%, beyond noise" in verdict.summary()


def test_a_throughput_dip_within_counting_noise_passes():
    # 400 of an expected 600 is a 33% drop, but only 20 below the floor: hashing noise.
    cand, stable = _pair(0.10, requests=400)
    verdict = decide(cand, stable, SETTINGS, step_share=0.10, healthy_for_s=1.0)
    assert "throughput" not in verdict.failed_checks, verdict.summary()
    assert "drop 33.3% > max 30.0%, within noise" in verdict.summary()


def test_throughput_is_normalised_by_traffic_share():
    # At 50% the candidate's and stable's raw QPS are equal; at 10% a tenth is right.
    for share in (0.10, 0.50):
        cand, stable = _pair(share)
        verdict = decide(cand, stable, SETTINGS, step_share=share, healthy_for_s=1.0)
        assert "throughput" not in verdict.failed_checks, verdict.summary()


def test_holds_when_healthy_but_not_for_long_enough():
    cand, stable = _pair(0.10)
    verdict = decide(cand, stable, SETTINGS, step_share=0.10, healthy_for_s=0.2)
    assert verdict.action is Action.HOLD, verdict.summary()
    assert verdict.next_share == 0.10
    assert verdict.failed_checks == ["duration"]


def test_holds_on_too_few_requests():
    # A quiet hour: 20 candidate requests, and stable's rate predicts no more than that.
    cand = _window("v2", 20, seconds=60)
    stable = _window("v1", 180, seconds=60)
    verdict = decide(cand, stable, SETTINGS, step_share=0.10, healthy_for_s=10.0)
    assert verdict.action is Action.HOLD, verdict.summary()
    assert verdict.failed_checks == ["evidence"]
    assert any("not judged" in r and "throughput" in r for r in verdict.reasons)


def test_a_rollback_rule_wins_over_too_little_evidence():
    cand = _window("v2", 20, errors=2, seconds=60)
    stable = _window("v1", 180, seconds=60)
    verdict = decide(cand, stable, SETTINGS, step_share=0.10, healthy_for_s=10.0)
    assert verdict.action is Action.ROLLBACK
    assert verdict.failed_checks == ["error_rate", "evidence"]


def test_promotes_when_healthy_at_full_traffic():
    cand, stable = _pair(1.0)
    assert stable.requests == 0
    verdict = decide(cand, stable, SETTINGS, step_share=1.0, healthy_for_s=1.0)
    assert verdict.action is Action.PROMOTE, verdict.summary()
    assert verdict.next_share == 1.0
    assert "PASS: throughput: candidate takes all traffic, not compared" in verdict.reasons


def test_steps_go_1_10_50_100():
    steps = RolloutSettings().steps
    assert next_step(0.0, steps) == 0.01
    assert next_step(0.01, steps) == 0.10
    assert next_step(0.10, steps) == 0.50
    assert next_step(0.50, steps) == 1.0
    assert next_step(1.0, steps) is None
    assert next_step(0.05, steps) == 0.10  # between steps: the next one up
    with pytest.raises(ValueError, match="share"):
        next_step(1.5, steps)


def test_a_step_that_would_hold_past_its_timeout_rolls_back():
    # A quiet hour: too few requests to judge, so the step holds until it times out.
    cand = _window("v2", 20, seconds=60)
    stable = _window("v1", 180, seconds=60)
    s = SETTINGS.model_copy(update={"step_timeout_s": 30.0})

    def verdict(elapsed: float | None):
        return decide(cand, stable, s, step_share=0.10, healthy_for_s=10.0, step_elapsed_s=elapsed)

    assert verdict(None).action is Action.HOLD
    assert "PASS: timeout: step start not given, not judged" in verdict(None).reasons
    assert verdict(30.0).action is Action.HOLD, verdict(30.0).summary()
    late = verdict(31.0)
    assert late.action is Action.ROLLBACK and late.next_share == 0.0, late.summary()
    assert late.failed_checks == ["evidence", "timeout"]
    assert (
        "FAIL: step held for 31 s > step_timeout_s 30 s without enough evidence to advance"
        in late.reasons
    )
    # A step that can be judged is judged, however long it took.
    healthy, base = _pair(0.10)
    judged = decide(healthy, base, s, step_share=0.10, healthy_for_s=1.0, step_elapsed_s=99.0)
    assert judged.action is Action.ADVANCE, judged.summary()


def test_a_healthy_candidate_walks_every_step_to_promotion():
    share: float | None = next_step(0.0, SETTINGS.steps)
    walked: list[tuple[float, Action]] = []
    while share is not None:
        cand, stable = _pair(share)
        verdict = decide(cand, stable, SETTINGS, step_share=share, healthy_for_s=1.0)
        walked.append((share, verdict.action))
        share = None if verdict.action is Action.PROMOTE else verdict.next_share
    assert walked == [
        (0.01, Action.ADVANCE),
        (0.10, Action.ADVANCE),
        (0.50, Action.ADVANCE),
        (1.0, Action.PROMOTE),
    ]


def test_decide_rejects_nonsense():
    cand, stable = _pair(0.10)
    with pytest.raises(ValueError, match="step_share"):
        decide(cand, stable, SETTINGS, step_share=0.0, healthy_for_s=1.0)
    with pytest.raises(ValueError, match="same version"):
        decide(cand, cand, SETTINGS, step_share=0.10, healthy_for_s=1.0)


def test_rollout_settings_defaults_and_validation():
    s = Settings().rollout
    assert s.steps == (0.01, 0.10, 0.50, 1.0)
    assert (s.max_error_rate, s.max_p99_ms, s.max_mae_regression, s.max_qps_drop) == (
        0.01,
        100.0,
        0.05,
        0.30,
    )
    # The significance thresholds of the rules are settings too.
    assert (s.p99_alpha, s.p99_min_requests, s.quality_z, s.qps_noise_z) == (
        0.01,
        100,
        2.326,
        2.0,
    )
    for steps in [(), (0.1, 0.5), (0.5, 0.1, 1.0), (0.0, 1.0)]:
        with pytest.raises(ValidationError):
            RolloutSettings(steps=steps)


def test_the_significance_settings_move_the_verdicts():
    _, stable = _pair(0.01)
    cand = _window("v2", 200, slow=8, slow_ms=150.0, seconds=30.0)  # p ≈ 0.001
    slow = decide(cand, stable, SETTINGS, step_share=0.01, healthy_for_s=1.0)
    assert "p99_latency" in slow.failed_checks, slow.summary()
    lenient = SETTINGS.model_copy(update={"p99_alpha": 0.0001})
    assert (
        "p99_latency"
        not in decide(cand, stable, lenient, step_share=0.01, healthy_for_s=1.0).failed_checks
    )
    patient = SETTINGS.model_copy(update={"p99_min_requests": 500})
    waited = decide(cand, stable, patient, step_share=0.01, healthy_for_s=1.0)
    assert "over 200 requests < 500, not judged yet" in waited.summary()
    cand, stable = _pair(0.10)
    noisy = QualityWindow(candidate_mae=5.84, stable_mae=5.46, n_labelled=60, diff_se=0.5)
    strict = SETTINGS.model_copy(update={"quality_z": 0.0})
    verdict = decide(cand, stable, strict, step_share=0.10, healthy_for_s=1.0, quality=noisy)
    assert "quality" in verdict.failed_checks, verdict.summary()
