"""Permutation feature importance: the shares (pure), the measurement on a real small network,
and its way from the training run's folder through registration into the evaluation report (a
registry on local disk, no services)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from relay.evaluate.challenger import evaluate_version
from relay.features.catalog import LABEL
from relay.model.importance import (
    IMPORTANCE_FILE,
    ImportanceError,
    _columns,
    _shuffle,
    measure_run,
    permutation_importance,
    read_importance,
    shares,
)
from relay.model.preprocess import Preprocessor
from relay.model.registration import register_trained
from relay.model.training import build_model, model_inputs, save_run, tensor_batches, train_epoch
from relay.registry import Registry, Stage
from relay.settings import ImportanceSettings, Settings
from tests.unit.model.test_behaviour import small_world

# --- the shares, pure -------------------------------------------------------------------------


def test_shares_are_non_negative_and_sum_to_one() -> None:
    out = shares({"a": 3.0, "b": 1.0, "c": -0.5, "d": math.nan})
    assert out == {"a": 0.75, "b": 0.25, "c": 0.0, "d": 0.0}
    assert math.fsum(out.values()) == pytest.approx(1.0)


def test_when_nothing_matters_every_input_gets_an_equal_share() -> None:
    assert shares({"a": 0.0, "b": -0.1, "c": 0.0, "d": -2.0}) == {
        "a": 0.25,
        "b": 0.25,
        "c": 0.25,
        "d": 0.25,
    }
    assert shares({}) == {}


# --- on a real, small network -----------------------------------------------------------------


def _fit(frame: pd.DataFrame, epochs: int, seed: int = 0) -> tuple[Preprocessor, nn.Module]:
    threads = torch.get_num_threads()
    # Small batches on 2 shared cores: a second thread only spins (32 s against 5 s here).
    torch.set_num_threads(1)
    try:
        return _fit_on_one_thread(frame, epochs, seed)
    finally:
        torch.set_num_threads(threads)


def _fit_on_one_thread(
    frame: pd.DataFrame, epochs: int, seed: int
) -> tuple[Preprocessor, nn.Module]:
    torch.manual_seed(seed)
    prep = Preprocessor.fit(frame)
    model = build_model(prep, {"hidden_layers": 2, "hidden_units": 32, "dropout": 0.0})
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    arrays = model_inputs(prep, frame)
    for epoch in range(epochs):
        train_epoch(model, tensor_batches(arrays, 128, shuffle=True, seed=epoch), optimizer,
                    prep.label_std)  # fmt: skip
    model.eval()
    return prep, model


def _distance_only(n: int, seed: int) -> pd.DataFrame:
    """small_world's inputs, but the delivery time depends on the distance alone."""
    frame = small_world(n, seed)
    noise = np.random.default_rng(seed + 100).normal(0.0, 0.5, n)
    frame[LABEL] = 10.0 + 6.0 * frame["order_distance_km"] + noise
    return frame


@pytest.fixture(scope="module")
def distance_model() -> tuple[Preprocessor, nn.Module, pd.DataFrame]:
    """A network fitted (about 3 s) where only the distance matters, and a holdout."""
    prep, model = _fit(_distance_only(2000, seed=1), epochs=10)
    return prep, model, _distance_only(1500, seed=2)


def test_the_feature_the_label_depends_on_gets_most_of_the_share(distance_model) -> None:
    prep, model, holdout = distance_model
    imp = permutation_importance(model, prep, holdout, max_rows=1000, repeats=3, seed=0)
    assert set(imp.shares) == set(prep.inputs)  # every input, hashed ids included
    assert imp.shares["order_distance_km"] > 0.9, imp.shares
    # Columns of pure noise to this label: shuffling them changes next to nothing.
    for noise in ("courier_deliveries_24h", "merchant_orders_24h", "zone_weather", "courier_id"):
        assert imp.shares[noise] < 0.02, (noise, imp.shares)
    assert imp.mae_increase["order_distance_km"] > 5 * imp.baseline_mae
    assert all(v >= 0 for v in imp.shares.values())
    assert math.fsum(imp.shares.values()) == pytest.approx(1.0)
    assert imp.top(1) == [("order_distance_km", imp.shares["order_distance_km"])]


def test_several_features_that_matter_rank_above_the_noise() -> None:
    """small_world's time grows with distance, weather, preparation and courier load."""
    prep, model = _fit(small_world(2000, seed=1), epochs=10)
    imp = permutation_importance(model, prep, small_world(1500, seed=2), max_rows=1500, seed=0)
    ranked = [name for name, _ in imp.top(len(imp.shares))]
    for name in ("order_distance_km", "courier_orders_1h", "merchant_mean_prep_24h"):
        assert ranked.index(name) < 5, ranked
    for noise in ("courier_deliveries_24h", "merchant_orders_1h", "zone_orders_1h"):
        assert imp.shares[noise] < 0.03, (noise, imp.shares)


def test_the_same_seed_gives_the_same_importance_and_rows_are_bounded(distance_model) -> None:
    prep, model, holdout = distance_model
    a = permutation_importance(model, prep, holdout, max_rows=400, repeats=2, seed=3)
    b = permutation_importance(model, prep, holdout, max_rows=400, repeats=2, seed=3)
    c = permutation_importance(model, prep, holdout, max_rows=400, repeats=2, seed=4)
    assert a == b
    assert a.rows == 400 and a.repeats == 2 and a.seed == 3
    assert a.mae_increase != c.mae_increase  # another sample and other shuffles
    whole = permutation_importance(model, prep, holdout, max_rows=10_000, repeats=1)
    assert whole.rows == len(holdout)


def test_shuffling_the_arrays_is_shuffling_the_raw_column() -> None:
    """The measurement transforms once and shuffles an input's preprocessed columns: the same
    as shuffling the raw column and transforming again, for every input the model reads."""
    frame = small_world(300, seed=5)
    frame.loc[::7, "courier_orders_1h"] = np.nan  # a missing flag must travel with its value
    prep = Preprocessor.fit(frame)
    order = np.random.default_rng(0).permutation(len(frame))
    arrays = {k: torch.from_numpy(v) for k, v in prep.transform(frame).items()}
    columns = _columns(prep)
    assert set(columns) == set(prep.inputs)
    for name, (key, cols) in columns.items():
        raw = frame.copy()
        raw[name] = frame[name].to_numpy()[order]
        expected = prep.transform(raw)
        got = _shuffle(arrays[key], cols, torch.from_numpy(order)).numpy()
        np.testing.assert_array_equal(got, expected[key], err_msg=name)
        for other in set(expected) - {key}:  # nothing else moved
            np.testing.assert_array_equal(arrays[other].numpy(), expected[other])


def test_a_holdout_without_labels_is_refused(distance_model) -> None:
    prep, model, holdout = distance_model
    with pytest.raises(ImportanceError, match="lacks delivery_minutes"):
        permutation_importance(model, prep, holdout.drop(columns=[LABEL]))
    with pytest.raises(ImportanceError, match="no labelled rows"):
        permutation_importance(model, prep, holdout.assign(**{LABEL: np.nan}))


def test_the_settings_read_the_environment(tmp_path, monkeypatch) -> None:
    s = Settings(home=tmp_path)
    assert (s.importance.enabled, s.importance.max_rows, s.importance.repeats) == (True, 5000, 3)
    monkeypatch.setenv("RELAY_IMPORTANCE__MAX_ROWS", "800")
    monkeypatch.setenv("RELAY_IMPORTANCE__SEED", "9")
    s = Settings(home=tmp_path)
    assert (s.importance.max_rows, s.importance.seed) == (800, 9)


# --- the run folder, registration and the report ----------------------------------------------


def _run(folder: Path, prep: Preprocessor, model: nn.Module) -> Path:
    return save_run(folder, model, prep, {"hidden_layers": 2}, {"val_mae": 1.0}, 3000)  # type: ignore[arg-type]


def _register(run: Path, settings: Settings) -> str:
    version = register_trained(
        run, training_set_uri="t.parquet", settings=settings, registry=Registry(settings),
        code_commit="abc",
    )  # fmt: skip
    return version.id


def test_registration_carries_the_runs_importance_into_the_version(distance_model, tmp_path):
    prep, model, holdout = distance_model
    run = _run(tmp_path / "run", prep, model)
    threads = torch.get_num_threads()
    settings = ImportanceSettings(max_rows=500, threads=2 if threads == 1 else 1)
    measured = measure_run(run, model, prep, holdout, settings)  # type: ignore[arg-type]
    assert torch.get_num_threads() == threads  # its own thread count, restored
    on_disk = json.loads((run / IMPORTANCE_FILE).read_text())
    assert on_disk["shares"] == measured.shares and on_disk["rows"] == 500
    assert read_importance(run) == measured
    s = Settings(home=tmp_path / "home")
    version = Registry(s).get(_register(run, s))
    assert version.training.feature_importance == measured.shares
    assert max(
        version.training.feature_importance, key=version.training.feature_importance.get
    ) == (  # type: ignore[arg-type]
        "order_distance_km"
    )


def test_a_run_without_importance_or_with_a_stale_one_registers_with_none(distance_model, tmp_path):
    prep, model, holdout = distance_model
    s = Settings(home=tmp_path / "home")
    old = _run(tmp_path / "old", prep, model)  # a run from before importance was measured
    assert read_importance(old) is None
    assert Registry(s).get(_register(old, s)).training.feature_importance == {}

    reused = _run(tmp_path / "reused", prep, model)
    measure_run(reused, model, prep, holdout, ImportanceSettings(max_rows=200))  # type: ignore[arg-type]
    state = torch.load(reused / "model.pt", weights_only=True)
    state["base.bias"] += 1.0
    torch.save(state, reused / "model.pt")  # a re-run's new weights beside the old record
    assert read_importance(reused) is None
    assert Registry(s).get(_register(reused, s)).training.feature_importance == {}
    (reused / IMPORTANCE_FILE).write_text("[not a record]")
    assert read_importance(reused) is None


def test_the_evaluation_report_draws_both_versions_importance(distance_model, tmp_path):
    prep, model, holdout = distance_model
    path = tmp_path / "holdout.parquet"
    holdout.assign(hour=holdout["order_hour"]).to_parquet(path)
    s = Settings(home=tmp_path / "home", gate={"max_mae_minutes": 100.0})  # type: ignore[arg-type]
    registry = Registry(s)

    def version(name: str, seed: int | None) -> str:
        run = _run(tmp_path / name, prep, model)
        if seed is not None:  # None: a run from before importance was measured
            settings = ImportanceSettings(max_rows=300, repeats=1, seed=seed)
            measure_run(run, model, prep, holdout, settings)  # type: ignore[arg-type]
        return _register(run, s)

    def report(version_id: str) -> str:
        out = tmp_path / f"{version_id}.html"
        evaluate_version(version_id, path, s, registry=registry, report_path=out)
        return out.read_text(encoding="utf-8")

    champion = version("champion", seed=1)
    assert 'id="fig-importance"' in report(champion)
    registry.promote(champion, Stage.PRODUCTION)
    challenger = version("challenger", seed=2)
    html = report(challenger)
    assert re.findall(r'<div id="fig-([\w-]+)"', html)[-1] == "importance"
    for shown in (challenger, champion):  # the champion's drawn beside the challenger's
        label = f"{registry.get(shown).name}@{shown}"
        assert f"Top features of {label}: order_distance_km" in html
    assert 'id="fig-importance"' not in report(version("before", seed=None))
