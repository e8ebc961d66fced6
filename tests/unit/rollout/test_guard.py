"""The production guard: a sustained breach restores the previous version, nothing else does."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from relay.rollout.guard import GuardAction, GuardState, guard_tick, start_guard
from relay.serve.windows import LATENCY_BUCKETS_MS, VersionWindow
from relay.settings import RolloutSettings

T0 = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)
SETTINGS = RolloutSettings()
FAST = LATENCY_BUCKETS_MS.index(20)  # the 10-20 ms bucket
SLOW = LATENCY_BUCKETS_MS.index(300)  # the 200-300 ms bucket
MINUTE = 60.0


def _window(
    requests: int = 600,
    *,
    errors: int = 0,
    slow: int = 0,
    seconds: float = MINUTE,
    version: str = "v2",
) -> VersionWindow:
    """``requests`` over ``seconds`` (10 QPS by default), ``slow`` of them at 200-300 ms."""
    counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    counts[FAST], counts[SLOW] = requests - slow, slow
    return VersionWindow(
        version,
        0.0,
        seconds,
        requests=requests,
        errors=errors,
        predictions=requests,
        latency_counts=tuple(counts),
        latency_sum_ms=20.0 * requests,
    )


BASELINE = _window(36_000, seconds=3600.0)  # the hour before: 10 QPS, fast, no errors


def _at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def _run(
    windows: list[tuple[float, VersionWindow]],
    state: GuardState | None = None,
    baseline: VersionWindow | None = BASELINE,
) -> list:
    """Tick the guard at each (seconds after T0, window); the results in order."""
    state = state or start_guard("v2", "v1", T0, SETTINGS)
    results = []
    for seconds, window in windows:
        result = guard_tick(state, window, baseline, _at(seconds), SETTINGS)
        results.append(result)
        state = result.state
    return results


def test_a_healthy_production_is_watched():
    (result,) = _run([(60, _window())])
    assert result.action is GuardAction.WATCH, result.summary()
    checks = [r for r in result.reasons if r.startswith(("PASS: ", "FAIL: "))]
    assert len(checks) == 3 and all(r.startswith("PASS: ") for r in checks), result.reasons
    assert result.reasons[0].startswith("baseline: v2 over 3600 s (36000 requests, 10.00 QPS")
    assert result.state.breaches == {} and result.state.ended is None
    assert result.state.baseline == BASELINE
    assert result.summary().startswith("guard of v2 (previous v1): WATCH")


def test_a_p99_breach_sustained_for_three_minutes_restores_the_previous_version():
    slow = _window(slow=60)  # 10% of requests at 200-300 ms: P99 far over 100 ms
    results = _run([(t, slow) for t in (0, 60, 120, 180)])
    assert [r.action for r in results] == [GuardAction.BREACHING] * 3 + [GuardAction.RESTORE]
    last = results[-1]
    assert last.state.ended is GuardAction.RESTORE and last.state.ended_at == _at(180)
    assert last.state.breaches == {"p99_latency": T0}
    assert any(r.startswith("FAIL: P99 latency") for r in last.reasons), last.reasons
    assert "FAIL: p99_latency breaching since" in " ".join(last.reasons)
    assert last.reasons[-1].startswith("RESTORE: p99_latency breached for guard_sustain_s 180 s")
    assert "v1 serves all orders again in place of v2" in last.reasons[-1]
    assert last.state.reasons == last.reasons  # recorded: the state says why


def test_a_breach_of_170_seconds_then_a_pass_does_not_restore():
    slow, fast = _window(slow=60), _window()
    results = _run([(0, slow), (60, slow), (170, slow), (180, fast), (200, slow), (370, slow)])
    assert [r.action for r in results] == [
        GuardAction.BREACHING,
        GuardAction.BREACHING,
        GuardAction.BREACHING,
        GuardAction.WATCH,  # the pass ends the run ...
        GuardAction.BREACHING,  # ... so the next breach starts a new one
        GuardAction.BREACHING,  # 170 s into the new run
    ]
    assert results[3].state.breaches == {}
    assert results[-1].state.breaches == {"p99_latency": _at(200)}
    assert "for 170 s < guard_sustain_s 180 s" in " ".join(results[-1].reasons)


def test_while_breaching_the_baseline_from_before_the_breach_is_kept():
    # The caller's rolling baseline soon holds the breach itself; judged against that, the
    # slow requests would look like chance and the breach would never be sustained.
    slow = _window(slow=60)
    state = _run([(0, slow)])[0].state
    later = guard_tick(state, slow, _window(36_000, slow=3600, seconds=3600.0), _at(180), SETTINGS)
    assert later.action is GuardAction.RESTORE, later.summary()
    assert later.state.baseline == BASELINE


def test_a_window_without_requests_is_not_a_breach():
    (result,) = _run([(60, _window(0))])
    assert result.action is GuardAction.WATCH
    assert any(r.startswith("SKIP: no requests in production's window") for r in result.reasons)
    assert not any(r.startswith("FAIL: ") for r in result.reasons)
    # Nor does it end a breach, or restore on its own: only a breaching tick restores.
    slow = _window(slow=60)
    results = _run([(0, slow), (200, _window(0)), (240, slow)])
    assert [r.action for r in results] == [
        GuardAction.BREACHING,
        GuardAction.BREACHING,
        GuardAction.RESTORE,
    ]
    assert results[1].state.breaches == {"p99_latency": T0}


def test_too_little_traffic_to_judge_p99_is_no_breach():
    # 3 of 40 requests slow: P99 over the bar but under p99_min_requests, not judged.
    results = _run([(t, _window(40, slow=3)) for t in (0, 100, 200)], baseline=None)
    assert all(r.action is GuardAction.WATCH for r in results), results[-1].summary()
    assert any("not judged yet" in r for r in results[-1].reasons)


def test_errors_beyond_chance_restore_but_not_those_the_baseline_already_had():
    failing = _window(errors=30)  # 5% of 600 against a baseline without errors
    results = _run([(0, failing), (180, failing)])
    assert results[-1].action is GuardAction.RESTORE
    assert results[-1].state.breaches == {"error_rate": T0}
    assert any(r.startswith("FAIL: error rate 5.00% (30/600)") for r in results[-1].reasons)
    # The service failed as much before the promotion's window: nothing to restore from.
    noisy = _window(36_000, errors=1800, seconds=3600.0)
    calm = _run([(0, failing), (180, failing)], baseline=noisy)
    assert [r.action for r in calm] == [GuardAction.WATCH, GuardAction.WATCH]


def test_a_qps_drop_against_the_baseline_restores():
    half = _window(300)  # 5 QPS against the baseline's 10
    results = _run([(0, half), (180, half)])
    assert results[-1].action is GuardAction.RESTORE
    assert results[-1].state.breaches == {"throughput": T0}
    line = next(r for r in results[-1].reasons if r.startswith("FAIL: throughput"))
    assert line.startswith("FAIL: throughput: production 5.00 vs baseline 10.00 QPS (drop 50.0%")
    # Without a baseline the QPS has nothing to be compared with.
    (alone,) = _run([(0, half)], baseline=None)
    assert alone.action is GuardAction.WATCH
    assert "PASS: throughput: no baseline QPS to compare with, not judged" in alone.reasons


def test_a_small_qps_dip_within_noise_is_no_breach():
    # 35 of 60 expected requests (baseline 1 QPS over a minute): a 42% drop, within Poisson noise.
    sparse = _run([(0, _window(35))], baseline=_window(3600, seconds=3600.0))
    assert sparse[0].action is GuardAction.WATCH, sparse[0].summary()
    assert any("within noise" in r for r in sparse[0].reasons)


def test_the_bake_ends_done_and_stays_done():
    late = SETTINGS.guard_bake_s
    results = _run([(60, _window()), (late, _window())])
    assert results[-1].action is GuardAction.DONE
    assert results[-1].state.ended is GuardAction.DONE
    assert results[-1].reasons[-1].startswith("DONE: baked until")
    again = guard_tick(results[-1].state, _window(slow=60), BASELINE, _at(late + 600), SETTINGS)
    assert again.action is GuardAction.DONE and again.state == results[-1].state


def test_a_breach_sustained_at_the_bake_end_still_restores():
    slow, end = _window(slow=60), SETTINGS.guard_bake_s
    results = _run([(end - 200, slow), (end, slow)])
    assert results[-1].action is GuardAction.RESTORE


def test_ticks_are_idempotent_and_a_restore_is_repeated():
    slow = _window(slow=60)
    first = _run([(0, slow)])[0]
    again = guard_tick(first.state, slow, BASELINE, T0, SETTINGS)
    assert again.state == first.state and again.action is first.action
    restored = _run([(180, slow)], state=first.state)[0]
    # A controller killed before switching the traffic switches it on its next tick.
    repeat = guard_tick(restored.state, _window(), BASELINE, _at(999), SETTINGS)
    assert repeat.action is GuardAction.RESTORE
    assert repeat.state == restored.state and repeat.reasons == restored.reasons


def test_the_state_round_trips_through_json():
    state = _run([(0, _window(slow=60))])[0].state
    text = state.model_dump_json()
    assert GuardState.model_validate_json(text) == state
    assert json.loads(text)["breaches"] == {"p99_latency": T0.isoformat().replace("+00:00", "Z")}
    assert state.baked_until == T0 + dt.timedelta(seconds=86_400)


def test_the_guard_refuses_a_window_of_another_version_and_a_self_restore():
    state = start_guard("v2", "v1", T0, SETTINGS)
    with pytest.raises(ValueError, match="the guard watches 'v2'"):
        guard_tick(state, _window(version="v1"), BASELINE, T0, SETTINGS)
    with pytest.raises(ValueError, match="same version"):
        start_guard("v2", "v2", T0, SETTINGS)


def test_the_guard_settings_default_to_a_day_and_three_minutes():
    assert (SETTINGS.guard_bake_s, SETTINGS.guard_sustain_s) == (86_400.0, 180.0)
    shorter = RolloutSettings(guard_sustain_s=60)
    results = [
        guard_tick(start_guard("v2", "v1", T0, shorter), _window(slow=60), BASELINE, T0, shorter)
    ]
    results.append(guard_tick(results[0].state, _window(slow=60), BASELINE, _at(60), shorter))
    assert results[-1].action is GuardAction.RESTORE
