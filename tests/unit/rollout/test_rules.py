"""The canary's rollback checks, each on its own: P99, quality and throughput beyond chance."""

from __future__ import annotations

import pytest

from relay.rollout.rules import (
    Check,
    QualityWindow,
    error_check,
    p99_check,
    quality_check,
    throughput_check,
)
from relay.serve.metrics import LiveMetrics
from relay.serve.windows import VersionWindow
from relay.settings import RolloutSettings, Settings

SETTINGS = RolloutSettings()
SECONDS = 600.0
TOTAL_QPS = 10.0

CheckResult = tuple[Check, bool, str]


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


def _checks(
    share: float,
    cand: VersionWindow,
    stable: VersionWindow,
    quality: QualityWindow | None = None,
    s: RolloutSettings = SETTINGS,
) -> list[CheckResult]:
    """All three checks on one step's windows, as the reconciler runs them."""
    return [
        p99_check(cand, stable, s),
        quality_check(quality, s),
        throughput_check(cand, stable, share, s),
    ]


def _failed(checks: list[CheckResult]) -> list[str]:
    return [str(name) for name, ok, _ in checks if not ok]


def _only_failure(checks: list[CheckResult], check: Check, text: str) -> str:
    """Assert that ``check`` alone fails, its line starting with ``text``; return the line."""
    assert _failed(checks) == [check], checks
    line = next(msg for name, _, msg in checks if name is check)
    assert line.startswith(text), line
    return line


def test_a_healthy_candidate_passes_every_check():
    cand, stable = _pair(0.10)
    checks = _checks(0.10, cand, stable)
    assert [name for name, _, _ in checks] == [Check.P99_LATENCY, Check.QUALITY, Check.THROUGHPUT]
    assert _failed(checks) == [], checks
    assert checks[0][2].startswith("P99 latency") and "ms ≤ max 100.0 ms" in checks[0][2]
    assert checks[1][2] == "quality: no actuals joined back yet, not judged"
    assert checks[2][2].startswith("throughput: candidate")


def test_p99_needs_a_hundred_requests_then_slow_requests_must_be_beyond_chance():
    _, stable = _pair(0.01)

    def check(n: int, slow: int, against: VersionWindow = stable) -> CheckResult:
        cand = _window("v2", n, slow=slow, slow_ms=150.0, seconds=30.0)
        return p99_check(cand, against, SETTINGS)

    # Three slow of the first eight requests after a share grew: not a P99 yet.
    _, ok, line = check(8, 3)
    assert ok and "over 8 requests < 100, not judged yet" in line, line
    # Of 200: three slow is what a true P99 of 100 ms gives one time in three; eight is not.
    _, ok, line = check(200, 3)
    assert ok and "3 of 200 requests slower (stable 0.0%), within chance" in line, line
    name, ok, line = check(200, 8)
    assert name is Check.P99_LATENCY and not ok, line
    assert "8 of 200 requests slower (stable 0.0%), beyond chance" in line
    # A machine that is slow for both versions is not the candidate's fault.
    busy = _window("v1", 2000, slow=80, slow_ms=150.0, seconds=30.0)  # stable: 4% slow
    _, ok, line = check(200, 8, busy)
    assert ok, line
    _, ok, line = check(200, 30, busy)  # 15%: its own problem
    assert not ok, line


def test_without_stable_traffic_p99_is_judged_against_the_bar_or_a_reference():
    cand = _window("v2", 400, slow=20, slow_ms=150.0, seconds=30.0)  # 5% slow at 100%
    idle = _window("v1", 0, seconds=30.0)  # stable serves nothing at 100%
    before = _window("v1", 200, slow=10, slow_ms=150.0, seconds=30.0)  # 5% slow at 50%
    for alone in (idle, None):
        _, ok, line = p99_check(cand, alone, SETTINGS)
        assert not ok and "(stable 0.0%)" in line, line
    _, ok, line = p99_check(cand, before, SETTINGS)
    assert ok and "(stable 5.0%)" in line, line
    # A window without requests has no P99.
    assert p99_check(idle, before, SETTINGS) == (
        Check.P99_LATENCY,
        True,
        "P99 latency: no requests in the window, not judged",
    )


def test_binomial_tail():
    from relay.verdict import binomial_tail

    assert binomial_tail(0, 10, 0.01) == 1.0 and binomial_tail(11, 10, 0.01) == 0.0
    assert binomial_tail(1, 10, 0.01) == pytest.approx(1 - 0.99**10)
    assert binomial_tail(2, 10, 0.01) == pytest.approx(1 - 0.99**10 - 10 * 0.01 * 0.99**9)
    assert binomial_tail(50, 1000, 0.01) < 1e-12


def test_excess_chance():
    from relay.verdict import excess_chance

    assert excess_chance(0, 10, 5, 10, 0.05) == 1.0  # no excess at all
    assert excess_chance(120, 400, 1080, 3600, 0.05) == 1.0  # the same rate on both
    assert excess_chance(5, 10, 5, 0, 0.05) == 1.0  # no reference to compare with
    assert excess_chance(240, 600, 120, 600, 0.05) < 1e-6  # 40% against 20%, on 600 each
    # More evidence of the same excess, less chance.
    rates = [excess_chance(n // 2, n, 3 * n // 10, n, 0.05) for n in (100, 200, 400, 800)]
    assert rates == sorted(rates, reverse=True) and rates[0] > 0.01 > rates[-1], rates


def test_a_shared_outage_noise_read_at_every_tick_rolls_nothing_back():
    """Both versions failing 30% of calls, the step judged every 0.5 s for 30 s at 10 and 40
    requests a second: a fixed-sample test would roll the candidate back in several percent
    of such steps (its chance read 60 times); the sequential one in none of 200."""
    import numpy as np

    from relay.rollout.streak import extend

    rng = np.random.default_rng(7)
    rolled_back = 0
    for rate in (10, 40):
        for _ in range(100):
            c = s = errors_c = errors_s = 0
            streak = None
            for _tick in range(60):
                c, s = c + rate // 2, s + rate // 2 + rate * 3 // 20  # stable answers retries too
                errors_c += int(rng.binomial(rate // 2, 0.3))
                errors_s += int(rng.binomial(rate // 2 + rate * 3 // 20, 0.3))
                ok, _ = error_check(
                    _counts("v2", c, errors_c), _counts("v1", s, errors_s), SETTINGS
                )
                streak = extend(streak, [] if ok else ["error_rate"], c + s)
                if streak.worst >= SETTINGS.failure_threshold:
                    rolled_back += 1
                    break
    assert rolled_back == 0, f"{rolled_back} of 200 rolled back"


def test_a_candidate_failing_beyond_a_shared_outage_is_rolled_back():
    ok, line = error_check(_counts("v2", 600, 240), _counts("v1", 600, 120), SETTINGS)
    assert not ok and "max(bar 1.00%, stable 20.00%), beyond chance" in line, line
    # Stable's rate is a sample: a few dozen requests each do not show 31% is beyond 19%.
    ok, line = error_check(_counts("v2", 80, 25), _counts("v1", 80, 15), SETTINGS)
    assert ok and "stable 18.75%), within chance" in line, line
    # With stable healthy, the bar is the reference: a small stable sample forgives nothing.
    ok, line = error_check(_counts("v2", 600, 30), _counts("v1", 50, 0), SETTINGS)
    assert not ok and "max(bar 1.00%, stable 0.00%), beyond chance" in line, line


def _counts(version: str, requests: int, errors: int) -> VersionWindow:
    return VersionWindow(
        version=version, since=0.0, until=SECONDS, requests=requests, errors=errors
    )


def test_fails_on_p99_latency():
    cand, stable = _pair(0.10, slow=30)  # 5% at 400 ms: P99 in (300, 500]
    assert cand.p50_ms is not None and cand.p50_ms < 30
    _only_failure(_checks(0.10, cand, stable), Check.P99_LATENCY, "P99 latency")


def test_fails_on_quality():
    cand, stable = _pair(0.10)
    worse = QualityWindow(candidate_mae=8.8, stable_mae=8.0, n_labelled=200)  # +10%
    line = _only_failure(
        _checks(0.10, cand, stable, worse), Check.QUALITY, "quality: MAE 8.80 vs stable 8.00"
    )
    assert "+10.0% > 5.0%" in line and "noise" not in line  # no standard error: no allowance


def test_a_live_quality_regression_within_noise_passes_and_beyond_it_fails():
    # Sixty labelled orders: +6.9% is 0.11 min past the margin, with a standard error of 0.5.
    noisy = QualityWindow(candidate_mae=5.84, stable_mae=5.46, n_labelled=60, diff_se=0.5)
    _, ok, line = quality_check(noisy, SETTINGS)
    assert ok and "within noise 2.326 × SE 0.50" in line, line
    # The bad model of `make demo`: twice the error, measured well enough to be sure.
    cand, stable = _pair(0.10)
    bad = QualityWindow(candidate_mae=11.0, stable_mae=5.4, n_labelled=60, diff_se=0.9)
    line = _only_failure(
        _checks(0.10, cand, stable, bad), Check.QUALITY, "quality: MAE 11.00 vs stable 5.40"
    )
    assert "beyond noise" in line


def test_quality_within_the_margin_or_too_thin_is_no_reason_to_roll_back():
    within = QualityWindow(candidate_mae=8.3, stable_mae=8.0, n_labelled=200)  # +3.75%
    _, ok, line = quality_check(within, SETTINGS)
    assert ok and "+3.8% ≤ 5.0%" in line, line
    thin = QualityWindow(candidate_mae=20.0, stable_mae=8.0, n_labelled=10)  # too few labels
    assert quality_check(thin, SETTINGS) == (
        Check.QUALITY,
        True,
        "quality: 10 labelled < min 50, not judged",
    )


def test_fails_on_throughput():
    # 10% of the traffic should bring 600 requests; 360 is a 40% drop, 60 below the 30% floor
    # of 420 where chance allows 2·√600 ≈ 49.
    cand, stable = _pair(0.10, requests=360)
    line = _only_failure(_checks(0.10, cand, stable), Check.THROUGHPUT, "throughput")
    assert "drop 40.0% > max 30.0%, beyond noise" in line


def test_a_throughput_dip_within_counting_noise_passes():
    # 400 of an expected 600 is a 33% drop, but only 20 below the floor: hashing noise.
    cand, stable = _pair(0.10, requests=400)
    _, ok, line = throughput_check(cand, stable, 0.10, SETTINGS)
    assert ok and "drop 33.3% > max 30.0%, within noise" in line, line


def test_throughput_is_normalised_by_traffic_share():
    # At 50% the candidate's and stable's raw QPS are equal; at 10% a tenth is right.
    for share in (0.10, 0.50):
        cand, stable = _pair(share)
        _, ok, line = throughput_check(cand, stable, share, SETTINGS)
        assert ok and "drop 0.0% ≤ max 30.0%" in line, line


def test_throughput_is_not_judged_on_too_few_expected_requests():
    # A quiet hour: 20 candidate requests, and stable's rate predicts no more than that.
    cand = _window("v2", 20, seconds=60)
    stable = _window("v1", 180, seconds=60)
    _, ok, line = throughput_check(cand, stable, 0.10, SETTINGS)
    assert ok and line == "throughput: 20 candidate requests expected < min 50, not judged"


def test_throughput_is_not_compared_at_full_traffic_or_without_stable_traffic():
    cand, stable = _pair(1.0)
    assert stable.requests == 0
    assert throughput_check(cand, stable, 1.0, SETTINGS) == (
        Check.THROUGHPUT,
        True,
        "throughput: candidate takes all traffic, not compared",
    )
    _, ok, line = throughput_check(cand, stable, 0.5, SETTINGS)
    assert ok and line == "throughput: stable served nothing, not compared"


def test_rollout_settings_defaults_and_validation():
    s = Settings().rollout
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


def test_the_significance_settings_move_the_verdicts():
    _, stable = _pair(0.01)
    cand = _window("v2", 200, slow=8, slow_ms=150.0, seconds=30.0)  # p ≈ 0.001
    assert not p99_check(cand, stable, SETTINGS)[1]
    lenient = SETTINGS.model_copy(update={"p99_alpha": 0.0001})
    assert p99_check(cand, stable, lenient)[1]
    patient = SETTINGS.model_copy(update={"p99_min_requests": 500})
    _, ok, line = p99_check(cand, stable, patient)
    assert ok and "over 200 requests < 500, not judged yet" in line, line
    noisy = QualityWindow(candidate_mae=5.84, stable_mae=5.46, n_labelled=60, diff_se=0.5)
    strict = SETTINGS.model_copy(update={"quality_z": 0.0})
    assert not quality_check(noisy, strict)[1]
    # A dip within counting noise fails once no noise is allowed.
    cand, stable = _pair(0.10, requests=400)
    exact = SETTINGS.model_copy(update={"qps_noise_z": 0.0})
    _, ok, line = throughput_check(cand, stable, 0.10, exact)
    assert not ok and "beyond noise" in line, line
