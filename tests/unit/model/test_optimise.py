"""The optimise stage: the INT8 gate (pure), the real quantised model against the float one, and
the INT8 artifact's way through registration to serving (a registry on local disk, no services).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from markupsafe import escape
from torch import nn

from relay.evaluate.metrics import evaluate
from relay.evaluate.report import write_report
from relay.features.catalog import LABEL
from relay.model.bundle import (
    INT8_MODEL_FILE,
    MODEL_FILE,
    OPTIMISED_FILE,
    ModelBundle,
    ModelBundleError,
)
from relay.model.optimise import OptimiseError, optimise_run, read_optimised
from relay.model.preprocess import Preprocessor
from relay.model.quantise import (
    OptimiseOutcome,
    judge,
    load_int8,
    quantise,
    quiet_quantisation_warnings,
)
from relay.model.registration import register_trained
from relay.model.training import (
    build_model,
    model_inputs,
    predict,
    save_run,
    tensor_batches,
    train_epoch,
)
from relay.registry import ArtifactIntegrityError, Registry
from relay.settings import Settings
from tests.unit.model.test_behaviour import small_world

# --- the gate, pure ---------------------------------------------------------------------------

# Binary fractions, so that the boundary is exact: (8.125 - 8) / 8 == 0.015625 == 2**-6.
BOUND = 0.015625


@pytest.mark.parametrize(
    ("optimised_mae", "accepted"),
    [
        (8.0, True),  # no loss
        (7.5, True),  # better than float (quantisation noise can help)
        (8.0625, True),  # within
        (8.125, True),  # exactly at the bound: allowed
        (8.1251, False),  # just past it
        (9.0, False),
        (math.nan, False),  # an INT8 model that predicts NaN cannot be judged: refused
    ],
)
def test_the_gate_accepts_a_loss_within_the_bound_and_refuses_one_past_it(
    optimised_mae: float, accepted: bool
) -> None:
    out = judge(8.0, optimised_mae, 0.3, 0.2, max_mae_loss=BOUND, min_speedup=1.1)
    assert out.accepted is accepted
    assert out.serves_optimised is accepted  # 1.5× faster: served exactly when accepted
    assert out.float_mae == 8.0 and out.max_mae_loss == BOUND
    if accepted:
        assert out.mae_loss <= BOUND and out.reason.startswith("INT8 accepted and served")
    else:
        assert not out.mae_loss <= BOUND
        assert out.reason.startswith("INT8 refused")


def test_a_refusal_states_its_numbers() -> None:
    out = judge(5.0, 5.2, 0.31, 0.25, max_mae_loss=0.01, min_speedup=1.1)
    assert not out.accepted and not out.serves_optimised
    assert out.mae_loss == pytest.approx(0.04)
    for number in ("5.2000", "5.0000", "+4.00%", "allowed 1.00%", "0.250", "0.310", "1.24×"):
        assert number in out.reason, (number, out.reason)


def test_a_perfect_float_model_refuses_any_loss() -> None:
    assert not judge(0.0, 0.01, 1.0, 0.5, max_mae_loss=0.01, min_speedup=1.0).accepted
    assert judge(0.0, 0.0, 1.0, 0.5, max_mae_loss=0.01, min_speedup=1.0).accepted


@pytest.mark.parametrize(
    ("float_ms", "int8_ms", "faster"),
    [(0.30, 0.20, True), (0.25, 0.20, True), (0.21, 0.20, False), (0.20, 0.30, False)],
)
def test_faster_needs_the_minimum_speedup(float_ms: float, int8_ms: float, faster: bool) -> None:
    out = judge(8.0, 8.0, float_ms, int8_ms, max_mae_loss=0.01, min_speedup=1.1)
    assert out.accepted and out.faster is faster and out.serves_optimised is faster
    assert out.speedup == pytest.approx(float_ms / int8_ms)
    if not faster:
        assert out.reason.startswith("INT8 accepted, not served (not faster)")


def test_a_faster_model_past_the_bound_is_still_refused() -> None:
    out = judge(8.0, 8.5, 1.0, 0.1, max_mae_loss=0.01, min_speedup=1.1)
    assert out.faster and not out.accepted and not out.serves_optimised


def test_the_outcome_survives_json_even_with_nan() -> None:
    out = judge(8.0, math.nan, 0.3, 0.2, max_mae_loss=0.01, min_speedup=1.1)
    doc = json.loads(json.dumps(out.to_dict(), allow_nan=False))
    assert doc["optimised_mae"] is None
    back = OptimiseOutcome.from_dict({**doc, "added_by_a_later_version": 1})
    assert math.isnan(back.optimised_mae) and back.reason == out.reason
    ok = judge(8.0, 8.0, 0.3, 0.2, max_mae_loss=0.01, min_speedup=1.1)
    assert OptimiseOutcome.from_dict(ok.to_dict()) == ok


def test_the_settings_read_the_environment(tmp_path, monkeypatch) -> None:
    s = Settings(home=tmp_path)
    assert (s.optimise.enabled, s.optimise.max_mae_loss, s.optimise.serve) == (True, 0.01, True)
    monkeypatch.setenv("RELAY_OPTIMISE__MAX_MAE_LOSS", "0.02")
    monkeypatch.setenv("RELAY_OPTIMISE__SERVE", "false")
    s = Settings(home=tmp_path)
    assert (s.optimise.max_mae_loss, s.optimise.serve) == (0.02, False)


# --- the stage on a real, small model ---------------------------------------------------------


@pytest.fixture(scope="module")
def trained() -> tuple[Preprocessor, nn.Module, pd.DataFrame]:
    """A small network fitted in process (about 2 s), and a holdout from the same world."""
    torch.manual_seed(0)
    train, holdout = small_world(3000, seed=1), small_world(2000, seed=2)
    prep = Preprocessor.fit(train)
    model = build_model(prep, {"hidden_layers": 2, "hidden_units": 64, "dropout": 0.0})
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    arrays = model_inputs(prep, train)
    for epoch in range(15):
        train_epoch(model, tensor_batches(arrays, 128, shuffle=True, seed=epoch), optimizer,
                    prep.label_std)  # fmt: skip
    model.eval()
    return prep, model, holdout


def _run(folder: Path, prep: Preprocessor, model: nn.Module) -> Path:
    return save_run(folder, model, prep, {"hidden_layers": 2}, {"val_mae": 1.0}, 3000)  # type: ignore[arg-type]


def _settings(tmp_path: Path, **optimise: object) -> Settings:
    return Settings(home=tmp_path / "home", optimise=optimise)  # type: ignore[arg-type]


def _register(run: Path, settings: Settings) -> str:
    registry = Registry(settings)
    version = register_trained(
        run, training_set_uri="test", settings=settings, registry=registry, code_commit="abc"
    )
    return version.id


def _mae(pred: np.ndarray, frame: pd.DataFrame) -> float:
    return float(np.abs(pred - frame[LABEL].to_numpy()).mean())


def test_the_int8_model_predicts_within_the_gate_and_is_served_from_the_registry(
    trained, tmp_path
) -> None:
    prep, model, holdout = trained
    run = _run(tmp_path / "run", prep, model)
    # min_speedup 0: served whenever accepted, so the test does not hang on this CPU's timing.
    s = _settings(tmp_path, min_speedup=0.0)
    outcome = optimise_run(run, holdout, s)

    assert outcome.accepted and outcome.serves_optimised, outcome.reason
    assert outcome.holdout_rows == len(holdout) and outcome.timing_rows == 32
    assert outcome.float_latency_ms > 0 and outcome.optimised_latency_ms > 0
    assert read_optimised(run) == outcome
    assert outcome.float_sha256 == hashlib.sha256((run / MODEL_FILE).read_bytes()).hexdigest()
    # Checked here from the saved weights, not taken from the stage's own numbers.
    with quiet_quantisation_warnings():
        state = torch.load(run / INT8_MODEL_FILE, weights_only=True)
    int8 = load_int8(state, model.cfg.to_dict())
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in int8.modules())
    float_pred, int8_pred = predict(model, prep, holdout), predict(int8, prep, holdout)
    assert not np.array_equal(float_pred, int8_pred)  # it is quantised, not a copy
    assert _mae(int8_pred, holdout) <= 1.01 * _mae(float_pred, holdout)
    assert outcome.optimised_mae == pytest.approx(_mae(int8_pred, holdout))
    in_memory = predict(quantise(ModelBundle.from_dir(run).model), prep, holdout)
    np.testing.assert_array_equal(int8_pred, in_memory)

    version = _register(run, s)
    served = ModelBundle.from_registry(Registry(s), version)
    assert served.variant == "int8"
    got = served.predict(holdout)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, in_memory)
    as_float = ModelBundle.from_registry(Registry(s), version, variant="float")
    assert as_float.variant == "float"
    np.testing.assert_allclose(as_float.predict(holdout), float_pred, rtol=1e-6)
    switched_off = _settings(tmp_path, serve=False)
    assert ModelBundle.from_registry(Registry(switched_off), version).variant == "float"


def test_an_accepted_int8_model_that_is_not_faster_is_not_served(trained, tmp_path) -> None:
    prep, model, holdout = trained
    run = _run(tmp_path / "run", prep, model)
    s = _settings(tmp_path, min_speedup=1e9)  # no CPU makes it a billion times faster
    outcome = optimise_run(run, holdout, s)
    assert outcome.accepted and not outcome.faster
    assert (run / INT8_MODEL_FILE).is_file()  # kept on record with the version ...
    version = _register(run, s)
    assert {INT8_MODEL_FILE, OPTIMISED_FILE} <= {a.name for a in Registry(s).get(version).artifacts}
    assert ModelBundle.from_registry(Registry(s), version).variant == "float"  # ... not served


def _quantises_badly(model: nn.Module) -> nn.Module:
    """The trained model with one weight of hidden unit 0 set to 10,000 and that unit's outputs
    dropped by the next layer: the float model barely changes, but per-tensor INT8 needs a step
    of 10,000 / 127 for that layer, which rounds every other weight of it to zero."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["trunk.0.weight"][0, 0] = 1e4
    state["trunk.3.weight"][:, 0] = 0.0
    out = type(model)(model.cfg)
    out.load_state_dict(state)
    return out.eval()


def test_a_model_that_loses_past_the_bound_is_refused_and_the_float_one_served(
    trained, tmp_path
) -> None:
    prep, model, holdout = trained
    lossy = _quantises_badly(model)
    run = _run(tmp_path / "run", prep, lossy)
    (run / INT8_MODEL_FILE).write_bytes(b"an earlier run's INT8 weights")
    s = _settings(tmp_path, min_speedup=0.0)
    outcome = optimise_run(run, holdout, s)

    assert not outcome.accepted and not outcome.serves_optimised
    assert outcome.mae_loss > 0.01
    assert _mae(predict(lossy, prep, holdout), holdout) < 1.5 * _mae(
        predict(model, prep, holdout), holdout
    )  # the float model is still a good one: the loss is INT8's
    assert not (run / INT8_MODEL_FILE).exists()  # no weights to register, not even stale ones
    recorded = json.loads((run / OPTIMISED_FILE).read_text())
    assert recorded["accepted"] is False
    assert f"{outcome.optimised_mae:.4f}" in recorded["reason"]
    assert f"{outcome.float_mae:.4f}" in recorded["reason"]
    assert recorded["reason"].startswith("INT8 refused")

    version = _register(run, s)
    names = {a.name for a in Registry(s).get(version).artifacts}
    assert OPTIMISED_FILE in names and INT8_MODEL_FILE not in names
    served = ModelBundle.from_registry(Registry(s), version)
    assert served.variant == "float"
    np.testing.assert_allclose(served.predict(holdout), predict(lossy, prep, holdout), rtol=1e-6)


def test_a_version_without_the_stage_serves_the_float_model(trained, tmp_path) -> None:
    prep, model, _ = trained
    s = _settings(tmp_path, min_speedup=0.0)
    version = _register(_run(tmp_path / "run", prep, model), s)
    assert ModelBundle.from_registry(Registry(s), version).variant == "float"


def test_a_verdict_left_by_another_model_is_refused_at_registration(trained, tmp_path) -> None:
    prep, model, holdout = trained
    run = _run(tmp_path / "run", prep, model)
    optimise_run(run, holdout, _settings(tmp_path))
    # A re-run into the same folder that skipped the stage: model.pt is new, the verdict old.
    _run(run, prep, _quantises_badly(model))
    with pytest.raises(ModelBundleError, match=r"made from another model\.pt"):
        _register(run, _settings(tmp_path))


def test_the_stage_refuses_a_holdout_it_cannot_judge(trained, tmp_path) -> None:
    prep, model, holdout = trained
    run = _run(tmp_path / "run", prep, model)
    with pytest.raises(OptimiseError, match="0 rows"):
        optimise_run(run, holdout.iloc[:0], _settings(tmp_path))
    with pytest.raises(OptimiseError, match=LABEL):
        optimise_run(run, holdout.drop(columns=[LABEL]), _settings(tmp_path))
    assert not (run / OPTIMISED_FILE).exists()


@pytest.mark.parametrize("artifact", [INT8_MODEL_FILE, OPTIMISED_FILE])
def test_a_tampered_optimise_artifact_is_refused_at_load(trained, tmp_path, artifact) -> None:
    prep, model, holdout = trained
    run = _run(tmp_path / "run", prep, model)
    s = _settings(tmp_path, min_speedup=0.0)
    optimise_run(run, holdout, s)
    registry = Registry(s)
    version = _register(run, s)
    ref = registry.get(version).artifact(artifact)
    blob = Path(s.registry.uri or "") / ref.key
    tampered = bytearray(blob.read_bytes())
    tampered[-2] ^= 0xFF  # same size, one byte changed
    blob.write_bytes(bytes(tampered))

    with pytest.raises(ArtifactIntegrityError) as caught:
        ModelBundle.from_registry(registry, version)
    assert caught.value.name == artifact
    if artifact == INT8_MODEL_FILE:
        # The float model's own bytes are untouched and still load when asked for by name.
        assert ModelBundle.from_registry(registry, version, variant="float").variant == "float"


def test_the_int8_model_keeps_the_networks_guarantees(trained) -> None:
    prep, model, holdout = trained
    int8 = quantise(model)
    base = predict(int8, prep, holdout)
    farther = holdout.assign(order_distance_km=holdout["order_distance_km"] * 1.5 + 0.5)
    assert (predict(int8, prep, farther) >= base - 1e-6).all()
    worse = predict(int8, prep, holdout.assign(zone_weather="storm"))
    assert (worse >= predict(int8, prep, holdout.assign(zone_weather="clear")) - 1e-6).all()


def test_the_evaluation_report_shows_the_optimise_verdict(tmp_path) -> None:
    frame = _report_frame(300)
    true = frame[LABEL].to_numpy()
    ev = evaluate("eta_mlp", "2", frame, true + 1.0, min_rows=50)
    refused = judge(5.0, 5.2, 0.31, 0.25, max_mae_loss=0.01, min_speedup=1.1)
    path = write_report(tmp_path / "r.html", ev, None, true, true + 1.0, optimised=refused)
    html = path.read_text(encoding="utf-8")
    assert 'id="optimised"' in html and "Evaluated with its float weights" in html
    assert str(escape(refused.reason)) in html
    served = judge(5.0, 5.0, 0.31, 0.25, max_mae_loss=0.01, min_speedup=1.1)
    path = write_report(tmp_path / "s.html", ev, None, true, true, optimised=served, variant="int8")
    assert "Evaluated with its int8 weights" in path.read_text(encoding="utf-8")
    plain = write_report(tmp_path / "p.html", ev, None, true, true).read_text(encoding="utf-8")
    assert 'id="optimised"' not in plain  # a version the stage never saw: no section


def _report_frame(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame(
        {
            "zone_id": rng.choice(["Z000", "Z001"], size=n),
            "hour": rng.integers(0, 24, size=n),
            "zone_weather": rng.choice(["clear", "rain"], size=n),
            LABEL: rng.gamma(6.0, 5.0, size=n),
        }
    )
