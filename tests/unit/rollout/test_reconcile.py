"""The pure reconciler: evidence first, labels before promotion, not judged is not bad."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from relay.rollout.plan import Plan, Step
from relay.rollout.reconcile import (
    QUALITY_JUDGED,
    Observation,
    TickResult,
    desired_traffic,
    quality_judged,
    tick,
)
from relay.rollout.record import Rollout, RolloutState, VerdictAction, start_rollout
from relay.rollout.streak import FailureStreak
from relay.serve.log_read import VersionQuality
from relay.serve.windows import LATENCY_BUCKETS_MS, VersionWindow
from relay.settings import RolloutSettings

T0 = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)
HOUR = 3600.0
SETTINGS = RolloutSettings()
FAST = LATENCY_BUCKETS_MS.index(20)  # the 10-20 ms bucket
SLOW = LATENCY_BUCKETS_MS.index(300)


def _plan(*shares: float, labels: int = 50, last_labels: int | None = None) -> Plan:
    steps = [
        Step(
            share=share,
            min_duration_s=HOUR,
            max_duration_s=4 * HOUR,
            min_requests=50,
            min_labelled=labels if last_labels is None or i < len(shares) - 1 else last_labels,
        )
        for i, share in enumerate(shares)
    ]
    return Plan(steps=steps)


def _rollout(*shares: float, **kwargs: int) -> Rollout:
    plan = _plan(*(shares or (0.1, 1.0)), **kwargs)
    return start_rollout("v2", "v1", plan, by="test", now=T0, rollout_id="ro-test")


def _window(version: str, requests: int, *, errors: int = 0, slow: int = 0) -> VersionWindow:
    counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    counts[FAST], counts[SLOW] = requests - slow, slow
    return VersionWindow(
        version,
        0.0,
        HOUR,
        requests=requests,
        errors=errors,
        predictions=requests,
        latency_counts=tuple(counts),
        latency_sum_ms=20.0 * requests,
    )


def _labels(n_cand: int, n_stable: int, mae_cand: float = 6.0) -> dict[str, VersionQuality]:
    out = {}
    for version, n, mae in (("v2", n_cand, mae_cand), ("v1", n_stable, 6.0)):
        if n:
            out[version] = VersionQuality(version, n, mae, 0.0, (mae / 1.4) / n**0.5)
    return out


def _observe(
    rollout: Rollout,
    cand: int = 400,
    stable: int = 3600,
    *,
    labels: dict[str, VersionQuality] | None = None,
    cand_errors: int = 0,
    stable_errors: int = 0,
    gate_rejected: bool = False,
) -> Observation:
    return Observation(
        step=rollout.step,
        step_started_at=rollout.step_started_at,
        applied=desired_traffic(rollout, gate_rejected, SETTINGS),
        candidate=_window("v2", cand, errors=cand_errors),
        stable=_window("v1", stable, errors=stable_errors),
        quality=labels or {},
        gate_rejected=gate_rejected,
    )


def _at(hours: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=hours)


def test_holds_without_labels_then_promotes_once_labels_judge_a_good_candidate():
    ro = _rollout()
    waiting = tick(ro, _observe(ro), _at(2), SETTINGS)
    assert waiting.action is VerdictAction.HOLD
    assert waiting.rollout.state is RolloutState.HOLDING
    assert any("labels: 0 labelled predictions of v2 < min 50" in r for r in waiting.reasons)
    assert waiting.traffic.candidate_share == 0.1

    judged = tick(waiting.rollout, _observe(ro, labels=_labels(80, 700)), _at(2.5), SETTINGS)
    assert judged.action is VerdictAction.ADVANCE, judged.reasons
    assert any(r.startswith(QUALITY_JUDGED) for r in judged.reasons)
    assert quality_judged(judged.rollout)
    assert judged.traffic.candidate_share == 1.0

    last = judged.rollout
    # At the full step stable serves nothing: only the candidate's labels are counted.
    done = tick(last, _observe(last, 4000, 0, labels=_labels(60, 0)), _at(4), SETTINGS)
    assert done.action is VerdictAction.PROMOTE, done.reasons
    assert done.rollout.state is RolloutState.PROMOTED
    assert done.traffic.stable == "v2" and done.traffic.candidate is None


def test_a_verdict_lists_errors_p99_quality_and_throughput_then_the_evidence():
    ro = _rollout()
    judged = tick(ro, _observe(ro, labels=_labels(80, 700)), _at(2), SETTINGS)
    assert judged.action is VerdictAction.ADVANCE, judged.reasons
    assert [r.split(" ")[:2] for r in judged.reasons[:4]] == [
        ["PASS:", "error"],
        ["PASS:", "P99"],
        ["PASS:", "quality:"],
        ["PASS:", "throughput:"],
    ]
    assert judged.reasons[4:] == [
        f"{QUALITY_JUDGED} on 80 labelled predictions each",
        "PASS: step 0 has its evidence",
    ]


def test_at_the_full_step_errors_and_latency_are_judged_against_stable_before_it():
    ro = _rollout()
    full = tick(ro, _observe(ro, labels=_labels(80, 700)), _at(2), SETTINGS).rollout
    # 5% errors and 5% slow at 100%, as stable had at the step before: the platform's, not v2's.
    base = _observe(full, 4000, 0, labels=_labels(60, 0))
    obs = dataclasses.replace(base, candidate=_window("v2", 4000, errors=200, slow=200))
    alone = tick(full, obs, _at(4), SETTINGS)
    assert alone.action is VerdictAction.HOLD, alone.reasons
    assert alone.reasons[0].startswith("FAIL: error rate 5.00% (200/4000) > max(bar 1.00%")
    assert alone.reasons[1].startswith("FAIL: P99 latency") and "(stable 0.0%)" in alone.reasons[1]
    before = _window("v1", 3600, errors=180, slow=180)
    obs = dataclasses.replace(obs, stable_reference=before)
    judged = tick(full, obs, _at(4), SETTINGS)
    assert judged.action is VerdictAction.PROMOTE, judged.reasons
    assert "stable 5.00%" in judged.reasons[0] and "(stable 5.0%)" in judged.reasons[1]


def _failing_ticks(ro: Rollout, n: int, **kwargs: Any) -> list[TickResult]:
    """``n`` ticks ten minutes apart, each observing 40 more candidate requests than the last."""
    results = []
    for i in range(n):
        obs = _observe(ro, 400 + 40 * i, 3600 + 360 * i, **kwargs)
        results.append(tick(ro, obs, _at(2 + i / 6), SETTINGS))
        ro = results[-1].rollout
    return results


def test_a_fast_but_wrong_candidate_is_rolled_back_once_labels_judge_it():
    ro = _rollout()
    wrong = _labels(200, 1500, mae_cand=9.0)
    *held, result = _failing_ticks(ro, SETTINGS.failure_threshold, labels=wrong)
    assert [h.action for h in held] == [VerdictAction.HOLD] * (SETTINGS.failure_threshold - 1)
    assert result.action is VerdictAction.ROLLBACK, result.reasons
    assert result.degrade_candidate
    assert result.rollout.serving_after == "v1"
    assert any(r.startswith("FAIL: quality: MAE 9.00") for r in result.reasons)


def test_a_candidate_never_judged_on_labels_is_never_promoted():
    # Neither step asks for labels, yet the last one will not promote unjudged quality.
    ro = _rollout(0.1, 1.0, labels=0)
    first = tick(ro, _observe(ro), _at(2), SETTINGS)
    assert first.action is VerdictAction.ADVANCE
    last = first.rollout
    held = tick(last, _observe(last, 4000, 0), _at(3.5), SETTINGS)
    assert held.action is VerdictAction.HOLD
    assert any("quality never judged on labels" in r for r in held.reasons)
    ended = tick(held.rollout, _observe(last, 4000, 0), _at(7), SETTINGS)
    assert ended.action is VerdictAction.ABORT
    assert ended.rollout.state is RolloutState.ABORTED
    # Teams without labels may turn the requirement off.
    no_labels = SETTINGS.model_copy(update={"require_labels": False})
    assert tick(last, _observe(last, 4000, 0), _at(3.5), no_labels).action is VerdictAction.PROMOTE


def test_night_traffic_ends_aborted_never_rolled_back():
    ro = _rollout()
    night = _observe(ro, cand=8, stable=72, labels=_labels(6, 60))
    held = tick(ro, night, _at(3), SETTINGS)
    assert held.action is VerdictAction.HOLD
    assert any("evidence: 8 candidate requests < min 50" in r for r in held.reasons)
    ended = tick(held.rollout, night, _at(4), SETTINGS)
    assert ended.action is VerdictAction.ABORT
    assert ended.rollout.state is RolloutState.ABORTED
    assert not ended.degrade_candidate
    assert ended.rollout.serving_after == "v1"
    assert "v2 stays promotable" in ended.rollout.verdicts[-1].reasons[0]


def test_an_outage_of_both_versions_does_not_roll_the_candidate_back():
    ro = _rollout()
    outage = _observe(ro, cand_errors=120, stable_errors=1080, labels=_labels(80, 700))
    result = tick(ro, outage, _at(2), SETTINGS)
    assert result.action is VerdictAction.ADVANCE, result.reasons
    assert result.reasons[0].startswith("PASS: error rate 30.00% (120/400)")
    # The same errors on the candidate alone are its own.
    alone = _failing_ticks(ro, SETTINGS.failure_threshold, cand_errors=120, labels=_labels(80, 700))
    assert alone[-1].action is VerdictAction.ROLLBACK


def test_one_noisy_failing_tick_holds_with_the_failing_check_shown():
    ro = _rollout()
    noisy = tick(ro, _observe(ro, cand_errors=20, labels=_labels(80, 700)), _at(2), SETTINGS)
    assert noisy.action is VerdictAction.HOLD, noisy.reasons
    assert not noisy.degrade_candidate
    assert noisy.reasons[0].startswith("FAIL: error rate 5.00% (20/400)")
    assert any("error_rate on 1 of 3 consecutive ticks" in r for r in noisy.reasons)
    verdict = noisy.rollout.verdicts[-1]
    assert verdict.streak is not None and verdict.streak.failures == {"error_rate": 1}
    # A passing tick resets the run, and the step, having its evidence, advances.
    clean = _observe(noisy.rollout, 4000, 36000, cand_errors=20, labels=_labels(80, 700))
    passed = tick(noisy.rollout, clean, _at(2.5), SETTINGS)
    assert passed.action is VerdictAction.ADVANCE, passed.reasons


def test_consecutive_failures_roll_back_and_a_pass_between_them_resets_the_count():
    ro = _rollout()
    results = _failing_ticks(ro, 3, cand_errors=40, labels=_labels(80, 700))
    assert [r.action for r in results] == [VerdictAction.HOLD] * 2 + [VerdictAction.ROLLBACK]
    assert results[-1].degrade_candidate
    streaks = [r.rollout.verdicts[-1].streak for r in results[:2]]
    assert [s.failures if s else None for s in streaks] == [{"error_rate": 1}, {"error_rate": 2}]
    # A passing hold in between (too few labels) starts the count again.
    two = results[1].rollout
    ok = tick(two, _observe(two, 600, 5400, labels=_labels(10, 700)), _at(2.4), SETTINGS)
    assert ok.action is VerdictAction.HOLD and ok.rollout.verdicts[-1].streak is None
    again = tick(ok.rollout, _observe(two, 640, 5760, cand_errors=60), _at(2.5), SETTINGS)
    assert again.action is VerdictAction.HOLD
    assert again.rollout.verdicts[-1].streak == FailureStreak(
        failures={"error_rate": 1}, evidence=640 + 5760
    )
    # Threshold 1 is the old behaviour: the first failure rolls back.
    once = SETTINGS.model_copy(update={"failure_threshold": 1})
    first = tick(ro, _observe(ro, cand_errors=40), _at(2), once)
    assert first.action is VerdictAction.ROLLBACK


def test_a_re_tick_of_the_same_observation_does_not_count_twice():
    ro = _rollout()
    obs = _observe(ro, cand_errors=40, labels=_labels(80, 700))
    held = tick(ro, obs, _at(2), SETTINGS)
    # The same observation again, at the same time or later (a controller that measured
    # nothing new), holds with the same count.
    for now in (_at(2), _at(2.1), _at(2.2), _at(2.3)):
        again = tick(held.rollout, obs, now, SETTINGS)
        assert again.action is VerdictAction.HOLD
        assert again.rollout.verdicts[-1].streak == held.rollout.verdicts[-1].streak
    assert tick(held.rollout, obs, _at(2), SETTINGS).rollout == held.rollout


def test_the_failure_count_survives_a_json_round_trip():
    ro = _rollout()
    results = _failing_ticks(ro, 2, cand_errors=40, labels=_labels(80, 700))
    stored = results[-1].rollout.model_dump_json()
    assert '"failures":{"error_rate":2}' in stored
    reloaded = Rollout.model_validate_json(stored)
    assert reloaded == results[-1].rollout
    third = _observe(reloaded, 480, 4320, cand_errors=40, labels=_labels(80, 700))
    assert tick(reloaded, third, _at(2.4), SETTINGS).action is VerdictAction.ROLLBACK


def test_a_tick_is_idempotent():
    ro = _rollout()
    for obs, now in ((_observe(ro), _at(2)), (_observe(ro, labels=_labels(80, 700)), _at(2))):
        first, again = tick(ro, obs, now, SETTINGS), tick(ro, obs, now, SETTINGS)
        assert first == again
        # The written record ticked again with the same observation changes nothing.
        assert tick(first.rollout, obs, now, SETTINGS).rollout == first.rollout


def test_a_json_round_trip_between_ticks_changes_nothing():
    ro = _rollout()
    held = tick(ro, _observe(ro), _at(2), SETTINGS).rollout
    reloaded = Rollout.model_validate_json(held.model_dump_json())
    assert reloaded == held
    obs = _observe(held, labels=_labels(80, 700))
    assert tick(reloaded, obs, _at(2.5), SETTINGS) == tick(held, obs, _at(2.5), SETTINGS)


def test_traffic_is_healed_before_a_step_is_judged():
    ro = _rollout()
    lost = Observation(
        step=0,
        step_started_at=T0,
        applied=None,
        candidate=_window("v2", 400),
        stable=_window("v1", 3600),
    )
    result = tick(ro, lost, _at(2), SETTINGS)
    assert result.action is None and result.rollout is ro
    assert result.traffic == ro.traffic
    assert result.reasons[0].startswith("traffic healed")


def test_a_forced_candidate_is_capped_until_judged():
    ro = _rollout(0.1, 0.5, 1.0)
    assert desired_traffic(ro, True, SETTINGS).candidate_share == SETTINGS.forced_max_share
    obs = _observe(ro, 60, 5940, gate_rejected=True, labels=_labels(80, 700))
    first = tick(ro, obs, _at(2), SETTINGS)
    assert first.action is VerdictAction.ADVANCE, first.reasons
    # Judged at the step before: the next step's share is no longer capped.
    assert first.traffic.candidate_share == 0.5


def test_twenty_simulated_rollouts_promote_no_bad_candidate():
    from bench.rollouts import simulate

    tally = simulate(20, seed=0)
    assert tally.count("bad", RolloutState.PROMOTED.value) == 0
    good = tally.total("good")
    assert good and tally.count("good", RolloutState.PROMOTED.value) >= 0.9 * good
    assert tally.mismatches == 0 and tally.crashes > 0
