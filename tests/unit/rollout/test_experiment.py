"""Experiments: the YAML spec and its errors, the plan it compiles to, and the verdict."""

from __future__ import annotations

import datetime as dt
import json
import textwrap
from pathlib import Path

import pytest

from relay.rollout import experiment
from relay.rollout.experiment import (
    ExperimentSpec,
    ExperimentSpecError,
    compile_plan,
    judge_experiment,
    load_spec,
)
from relay.rollout.plan import Targeting
from relay.rollout.record import start_rollout, traffic_of
from relay.serve.log_read import VersionQuality
from relay.serve.windows import LATENCY_BUCKETS_MS, VersionWindow
from relay.settings import RolloutSettings

SETTINGS = RolloutSettings()
CONTROL = "delivery_eta_gbm_v1_20261101_000000"
VARIANT = "delivery_eta_mlp_v2_20261115_120000"
START = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
END = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)
FAST = LATENCY_BUCKETS_MS.index(20)  # the 10-20 ms bucket
SLOW = LATENCY_BUCKETS_MS.index(100)  # the 75-100 ms bucket


def _example() -> str:
    """The spec in the module's docstring, which users copy."""
    doc = experiment.__doc__ or ""
    block = doc.split("this very text)::\n\n", 1)[1].split("\n\n", 1)[0]
    return textwrap.dedent(block)


SPEC = load_spec(_example())


def _with(**changes: object) -> str:
    """The example's YAML with top-level fields replaced (None: removed)."""
    import yaml

    data = yaml.safe_load(_example())
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    return yaml.safe_dump(data)


def _window(version: str, requests: int, *, errors: int = 0, slow: int = 0) -> VersionWindow:
    counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    counts[FAST], counts[SLOW] = requests - slow, slow
    return VersionWindow(
        version,
        0.0,
        7 * 86_400.0,
        requests=requests,
        errors=errors,
        predictions=requests,
        latency_counts=tuple(counts),
        latency_sum_ms=20.0 * requests,
    )


def _quality(version: str, mae: float, n: int = 2000) -> VersionQuality:
    return VersionQuality(version, n, mae, 0.0, (mae / 1.4) / n**0.5)


def _judge(
    *,
    variant_mae: float = 6.0,
    variant_slow: int = 0,
    requests: int = 5000,
    labelled: int = 2000,
    now: dt.datetime = END,
):
    return judge_experiment(
        SPEC,
        _window(CONTROL, requests),
        _window(VARIANT, requests, slow=variant_slow),
        _quality(CONTROL, 6.0, labelled),
        _quality(VARIANT, variant_mae, labelled),
        now,
        SETTINGS,
    )


def test_the_documented_example_loads():
    assert SPEC.id == "eta-mlp-vs-gbm-2026-11"
    assert (SPEC.start, SPEC.end) == (START, END)
    assert SPEC.variant.name == "mlp" and SPEC.variant.version == VARIANT
    assert SPEC.control.version == CONTROL
    assert SPEC.targeting == Targeting(zones=["Z001", "Z002"], hours=[11, 12, 18, 19])
    assert [c.describe() for c in SPEC.primary] == ["mae ≤ +2.0% vs control"]
    assert [c.describe() for c in SPEC.secondary] == ["p99_ms ≤ 50", "error_rate ≤ 0.01"]
    assert ExperimentSpec.model_validate_json(SPEC.model_dump_json()) == SPEC


def test_a_spec_loads_from_a_file(tmp_path: Path):
    path = tmp_path / "eta_mlp_vs_stable.yaml"
    path.write_text(_example())
    assert load_spec(path) == SPEC
    with pytest.raises(ExperimentSpecError, match=r"missing\.yaml could not be read"):
        load_spec(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            _with(variants=[{"name": "mlp", "version": VARIANT, "share": 1.5}]),
            r"variants\[0\]\.share: Input should be less than 1",
        ),
        (_with(start="2026-11-20T00:00:00"), "start: Input should have timezone info"),
        (
            _with(end="2026-11-19T00:00:00Z"),
            "spec: end 2026-11-19 00:00:00[+]00:00 is not after start",
        ),
        (
            _with(
                variants=[
                    {"name": "mlp", "version": VARIANT, "share": 0.1},
                    {"name": "dnn", "version": "v3", "share": 0.1},
                ]
            ),
            r"only one variant per experiment is supported for now, got 2 \(mlp, dnn\)",
        ),
        (
            _with(primary=[{"metric": "mae", "max_regression": 0.1, "max_value": 5}]),
            r"primary\[0\]: mae: give exactly one of max_regression or max_value",
        ),
        (
            _with(secondary=[{"metric": "error_rate", "max_regression": 0.1}]),
            r"secondary\[0\]: error_rate takes max_value only",
        ),
        (_with(primary=[{"metric": "accuracy", "max_value": 0.95}]), r"primary\[0\]\.metric"),
        (_with(min_labelled=0), "an mae criterion needs min_labelled ≥ 1"),
        (_with(min_requests=None), "min_requests: Field required"),
        (_with(owner="me"), "owner: Extra inputs are not permitted"),
        (_with(control={"version": VARIANT}), "variant mlp runs the control's version"),
        (_with(targeting={"zone_share": 2}), r"targeting\.zone_share"),
        ("id: [unclosed", "is not valid YAML"),
        ("- just\n- a list\n", "must be a mapping of fields"),
    ],
)
def test_an_invalid_spec_names_the_field(text: str, message: str):
    with pytest.raises(ExperimentSpecError, match=message):
        load_spec(text)


def test_the_spec_compiles_to_one_step_of_the_same_traffic_rules():
    plan = compile_plan(SPEC)
    (step,) = plan.steps
    assert step.share == 0.5 and step.targeting == SPEC.targeting
    assert step.min_duration_s == step.max_duration_s == 7 * 86_400
    assert (step.min_requests, step.min_labelled) == (1000, 500)
    rule = traffic_of(start_rollout(VARIANT, CONTROL, plan, by="test", now=START))
    assert (rule.stable, rule.candidate, rule.candidate_share) == (CONTROL, VARIANT, 0.5)
    orders = [f"order-{i}" for i in range(200)]
    targeted = {rule.version_for(o, "Z001", 18) for o in orders}
    assert targeted == {CONTROL, VARIANT}  # half of the targeted orders each, by order hash
    assert {rule.version_for(o, "Z009", 18) for o in orders} == {CONTROL}  # another zone
    assert {rule.version_for(o, "Z001", 3) for o in orders} == {CONTROL}  # another hour


def test_the_variant_wins_at_the_end_when_every_primary_criterion_passes():
    verdict = _judge(variant_mae=6.05)  # +0.8%, within the 2% allowed
    assert (verdict.winner, verdict.final) == ("variant", True), verdict.summary()
    assert verdict.failed_primary == [] and verdict.failed_secondary == []
    assert verdict.reasons[-1] == "PASS: every primary criterion met: variant mlp wins"
    assert any(
        r.startswith("PASS: primary mae ≤ +2.0% vs control: quality:") for r in verdict.reasons
    )
    assert json.loads(json.dumps(verdict.to_dict()))["winner"] == "variant"
    assert verdict.headline().endswith("VARIANT WINS")


def test_a_failing_primary_criterion_keeps_all_traffic_on_the_control_and_says_by_how_much():
    verdict = _judge(variant_mae=6.6, now=START + dt.timedelta(days=2))  # +10%, before the end
    assert (verdict.winner, verdict.final) == ("control", True), verdict.summary()
    assert verdict.failed_primary == ["mae ≤ +2.0% vs control"]
    line = next(r for r in verdict.reasons if r.startswith("FAIL: primary mae"))
    assert "MAE 6.60 vs stable 6.00 min (+10.0% > 2.0%" in line
    assert verdict.reasons[-1].startswith("FAIL: primary criteria failed (mae ≤ +2.0% vs control)")
    assert f"{CONTROL} keeps all traffic" in verdict.reasons[-1]


def test_a_regression_within_noise_is_no_failure():
    # +3% on 500 labels each: past the 2% margin, but well within 2.326 standard errors.
    verdict = _judge(variant_mae=6.18, labelled=500, requests=5000)
    assert verdict.winner == "variant", verdict.summary()
    assert any("within noise" in r for r in verdict.reasons)


def test_secondary_criteria_are_reported_but_do_not_decide():
    verdict = _judge(variant_slow=500)  # 10% of requests at 75-100 ms: P99 far over 50 ms
    assert verdict.winner == "variant", verdict.summary()
    assert verdict.failed_secondary == ["p99_ms ≤ 50"]
    assert any(r.startswith("FAIL: secondary p99_ms ≤ 50: P99 latency") for r in verdict.reasons)


def test_no_winner_before_the_end_or_without_enough_evidence():
    early = _judge(now=START + dt.timedelta(days=1))
    assert (early.winner, early.final) == (None, False), early.summary()
    assert early.headline().endswith("RUNNING")
    short = _judge(labelled=100)  # 100 labelled of each < 500
    assert (short.winner, short.final) == (None, True), short.summary()
    assert "FAIL: evidence: 100 variant labelled < min 500" in short.reasons
    assert short.reasons[-1].startswith("FAIL: not enough evidence: no winner")
    few = _judge(requests=300)
    assert few.winner is None and "FAIL: evidence: 300 control requests < min 1000" in few.reasons


def test_the_judge_refuses_windows_of_other_versions():
    with pytest.raises(ValueError, match="not the windows' versions"):
        judge_experiment(SPEC, _window("v9", 10), _window(VARIANT, 10), None, None, END, SETTINGS)


def test_absolute_mae_and_relative_p99_criteria():
    text = _with(
        primary=[
            {"metric": "mae", "max_value": 5.0},
            {"metric": "p99_ms", "max_regression": 0.1},
        ],
        secondary=[],
    )
    spec = load_spec(text)
    control = _window(CONTROL, 5000)
    slow = _window(VARIANT, 5000, slow=500)
    verdict = judge_experiment(
        spec, control, slow, _quality(CONTROL, 6.0), _quality(VARIANT, 4.8), END, SETTINGS
    )
    assert verdict.failed_primary == ["p99_ms ≤ +10.0% vs control"], verdict.summary()
    assert any(r.startswith("PASS: primary mae ≤ 5: MAE 4.80 min ≤ 5") for r in verdict.reasons)
    worse = judge_experiment(
        spec, control, _window(VARIANT, 5000), None, _quality(VARIANT, 5.5), END, SETTINGS
    )
    assert worse.failed_primary == ["mae ≤ 5"], worse.summary()
