"""The optimise stage: after training, try an INT8 model and keep it only if it loses ≤ 1%.

:func:`optimise_run` reads a training run's folder (what ``save_run`` writes), quantises the
network (:func:`relay.model.quantise.quantise`), measures both models on the run's holdout (MAE)
and on one batch (median latency, interleaved on the same machine), and lets the pure
:func:`relay.model.quantise.judge` decide. It writes, into the run folder:

* ``model.int8.pt``: the INT8 state dict, only when accepted (a refused model leaves none);
* ``optimised.json``: the numbers and the decision either way, so a refusal is on record with
  the numbers that refused it.

``register_trained`` registers both with the version (sha256-checked like every artifact), and
:meth:`relay.model.bundle.ModelBundle.from_registry` serves the INT8 model when it was accepted
and measured faster.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from relay.errors import RelayError
from relay.features.catalog import LABEL
from relay.model.bundle import (
    INT8_MODEL_FILE,
    MODEL_FILE,
    OPTIMISED_FILE,
    ModelBundle,
    read_outcome,
)
from relay.model.network import ETANet
from relay.model.preprocess import Preprocessor
from relay.model.quantise import OptimiseOutcome, judge, quantise
from relay.model.training import INPUTS, predict
from relay.settings import Settings, get_settings

log = logging.getLogger(__name__)

WARMUP_CALLS = 3
"""Untimed calls per model first: the first ones allocate and pack, and would be timed high."""


class OptimiseError(RelayError):
    """The optimise stage cannot judge a model: no holdout rows, or no labels on them."""


def optimise_run(
    output_dir: Path | str, holdout: pd.DataFrame, settings: Settings | None = None
) -> OptimiseOutcome:
    """Quantise a training run's model, judge it on the holdout, and record the outcome.

    Args:
        output_dir: The run's folder (``model.pt``, ``net_config.json``, ``preprocessor.json``).
        holdout: The run's holdout rows, with their ``delivery_minutes``: the same rows the
            evaluation gate judges the float model on.
        settings: Relay's settings (``settings.optimise``); :func:`get_settings` when None.

    Returns:
        The numbers and the decision, also written to ``optimised.json``.

    Raises:
        OptimiseError: The holdout has no rows or no labels.
        ModelBundleError: The run's model files are missing or do not load together.
    """
    o = (settings or get_settings()).optimise
    folder = Path(output_dir)
    if LABEL not in holdout.columns:
        raise OptimiseError(f"the holdout lacks {LABEL}: the INT8 model is judged on labels")
    if len(holdout) == 0:
        raise OptimiseError("the holdout has 0 rows: nothing to judge the INT8 model on")
    bundle = ModelBundle.from_dir(folder)
    int8 = quantise(bundle.model)
    truth = holdout[LABEL].to_numpy(dtype=np.float64)
    float_mae = _mae(bundle.predict(holdout), truth)
    int8_mae = _mae(predict(int8, bundle.preprocessor, holdout), truth)
    batch = holdout.iloc[np.arange(o.timing_rows) % len(holdout)]
    float_ms, int8_ms = time_batch(bundle.model, int8, bundle.preprocessor, batch, o.timing_repeats)
    outcome = dataclasses.replace(
        judge(
            float_mae,
            int8_mae,
            float_ms,
            int8_ms,
            max_mae_loss=o.max_mae_loss,
            min_speedup=o.min_speedup,
        ),
        holdout_rows=len(holdout),
        timing_rows=o.timing_rows,
        float_sha256=hashlib.sha256((folder / MODEL_FILE).read_bytes()).hexdigest(),
        measured_on=_machine(),
    )
    _write(folder, outcome, int8)
    if outcome.accepted:
        log.info("optimise %s: %s", folder, outcome.reason)
    else:
        log.warning("optimise %s: %s", folder, outcome.reason)
    return outcome


def time_batch(
    float_model: ETANet,
    int8_model: ETANet,
    prep: Preprocessor,
    batch: pd.DataFrame,
    repeats: int,
) -> tuple[float, float]:
    """Median milliseconds of one forward pass over ``batch``: (float, INT8).

    Only the network is timed: preprocessing is the same work for both. The two are timed in
    turns, alternating which goes first, so a busy neighbour on the machine slows both alike
    rather than whichever happened to run during it.
    """
    arrays = prep.transform(batch)
    inputs = [torch.from_numpy(arrays[k]) for k in INPUTS]
    models = (float_model, int8_model)
    samples: tuple[list[float], list[float]] = ([], [])
    with torch.inference_mode():
        for model in models:
            for _ in range(WARMUP_CALLS):
                model(*inputs)
        for i in range(repeats):
            for j in (0, 1) if i % 2 == 0 else (1, 0):
                start = time.perf_counter()
                models[j](*inputs)
                samples[j].append((time.perf_counter() - start) * 1000.0)
    return statistics.median(samples[0]), statistics.median(samples[1])


def read_optimised(output_dir: Path | str) -> OptimiseOutcome | None:
    """The outcome a run's optimise stage recorded, or None when it did not run."""
    path = Path(output_dir) / OPTIMISED_FILE
    return read_outcome(path.read_text(), str(path)) if path.is_file() else None


def _write(folder: Path, outcome: OptimiseOutcome, int8: ETANet) -> None:
    # A refused model must not leave an earlier run's INT8 weights behind to be registered.
    (folder / INT8_MODEL_FILE).unlink(missing_ok=True)
    if outcome.accepted:
        torch.save(int8.state_dict(), folder / INT8_MODEL_FILE)
    # The verdict last: once it says accepted, the weights it speaks of are whole on disk.
    (folder / OPTIMISED_FILE).write_text(json.dumps(outcome.to_dict(), indent=2))


def _mae(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - truth)))


def _machine() -> str:
    return (
        f"torch {torch.__version__}, {torch.backends.quantized.engine} engine, "
        f"{platform.machine()}, {torch.get_num_threads()} threads"
    )
