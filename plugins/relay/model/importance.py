"""Permutation feature importance: how much the holdout MAE grows when one input is shuffled.

:func:`permutation_importance` scores a trained network on (a seeded sample of) its holdout,
then, for every column the preprocessor reads, shuffles that column across the rows, scores
again and keeps the MAE increase, averaged over a few shuffles. :func:`shares` turns the
increases into each input's share of their total: negative increases (shuffling helped, i.e.
noise) count as 0, and when no input matters at all every one gets an equal share.

The training run (:func:`relay.model.ray_train.run_training`) measures it while the holdout and
the model are at hand and writes ``importance.json`` into the run folder; registration stores
the shares with the version (``TrainingInfo.feature_importance``), the evaluation report draws
them, and monitoring weighs drift by them. Keys are the training set's column names (the
catalog's), hashed ids included.

The preprocessor's transform is row-wise, so shuffling an input's preprocessed columns (a
numeric value with its missing flag, an embedding index, the distance, the weather level) is the
same as shuffling the raw column and transforming again; the data are transformed once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from relay.errors import RelayError
from relay.features.catalog import LABEL
from relay.model.bundle import MODEL_FILE
from relay.model.preprocess import Preprocessor
from relay.settings import ImportanceSettings

if TYPE_CHECKING:  # pragma: no cover, typing only
    import torch

    from relay.model.network import ETANet

log = logging.getLogger(__name__)

IMPORTANCE_FILE = "importance.json"
METHOD = "permutation: mean holdout MAE increase when the input is shuffled, as shares"


class ImportanceError(RelayError):
    """Importance cannot be measured: no holdout rows, or no labels on them."""


@dataclass(frozen=True)
class Importance:
    """One run's permutation importance.

    Attributes:
        shares: Each input's share of the total MAE increase (≥ 0, summing to 1), by column.
        mae_increase: Each input's mean MAE increase in minutes (may be negative: noise).
        baseline_mae: The unshuffled MAE on the sampled rows.
        rows: Holdout rows scored.
        repeats: Shuffles per input.
        seed: Seed of the sample and the shuffles.
        model_sha256: sha256 of the ``model.pt`` it was measured on ("" when not from a file).
    """

    shares: dict[str, float]
    mae_increase: dict[str, float]
    baseline_mae: float
    rows: int
    repeats: int
    seed: int
    model_sha256: str = ""
    method: str = field(default=METHOD)

    def top(self, n: int = 3) -> list[tuple[str, float]]:
        """The ``n`` largest shares, largest first (ties by name)."""
        return sorted(self.shares.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Importance:
        known = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc}
        return cls(**known)


def permutation_importance(
    model: ETANet,
    prep: Preprocessor,
    holdout: pd.DataFrame,
    *,
    max_rows: int = 5_000,
    repeats: int = 3,
    seed: int = 0,
) -> Importance:
    """Permutation importance of every input the preprocessor reads, on the holdout.

    Args:
        model: The trained network (put in eval mode).
        prep: Its preprocessor; its ``inputs`` are the columns measured.
        holdout: Labelled rows the model did not train on.
        max_rows: At most this many rows are scored (a seeded sample), which bounds the cost:
            ``len(prep.inputs) × repeats + 1`` forward passes over them.
        repeats: Shuffles per input, averaged.
        seed: Seed of the sample and the shuffles: the same inputs give the same result.

    Raises:
        ImportanceError: The holdout has no rows or no labels.
    """
    import torch  # heavy: registration reads importance.json without it

    if LABEL not in holdout.columns:
        raise ImportanceError(f"the holdout lacks {LABEL}: importance is measured on labels")
    labelled = holdout[holdout[LABEL].notna()]
    if len(labelled) == 0:
        raise ImportanceError("the holdout has no labelled rows: nothing to measure on")
    rng = np.random.default_rng(seed)
    if len(labelled) > max_rows:
        labelled = labelled.iloc[np.sort(rng.choice(len(labelled), max_rows, replace=False))]
    truth = labelled[LABEL].to_numpy(dtype=np.float64)
    arrays = {k: torch.from_numpy(v) for k, v in prep.transform(labelled).items()}
    model.eval()
    baseline = _mae(model, arrays, truth)
    columns = _columns(prep)
    increase = {name: 0.0 for name in columns}
    for _ in range(repeats):
        # One permutation per repeat, shared by every input: each is judged on the same shuffle.
        order = torch.from_numpy(rng.permutation(len(truth)))
        for name, (key, cols) in columns.items():
            shuffled = dict(arrays)
            shuffled[key] = _shuffle(arrays[key], cols, order)
            increase[name] += (_mae(model, shuffled, truth) - baseline) / repeats
    return Importance(
        shares=shares(increase),
        mae_increase=increase,
        baseline_mae=baseline,
        rows=len(truth),
        repeats=repeats,
        seed=seed,
    )


def shares(increases: Mapping[str, float]) -> dict[str, float]:
    """Each input's share of the total MAE increase: ≥ 0, summing to 1.

    A negative increase (the model did better shuffled: the input is noise to it) counts as 0;
    when no input increases the error, every one gets the same share.
    """
    clipped = {name: max(float(v), 0.0) if np.isfinite(v) else 0.0 for name, v in increases.items()}
    total = sum(clipped.values())
    if not clipped:
        return {}
    if total <= 0.0:
        return {name: 1.0 / len(clipped) for name in clipped}
    return {name: v / total for name, v in clipped.items()}


def measure_run(
    output_dir: Path | str,
    model: ETANet,
    prep: Preprocessor,
    holdout: pd.DataFrame,
    settings: ImportanceSettings,
) -> Importance:
    """Measure a training run's importance and write ``importance.json`` into its folder.

    ``model`` must be the run's saved ``model.pt``: the file records that model's sha256, and
    registration ignores an ``importance.json`` made from other weights.

    Raises:
        ImportanceError: The holdout has no rows or no labels.
    """
    import torch

    folder = Path(output_dir)
    threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        measured = permutation_importance(
            model,
            prep,
            holdout,
            max_rows=settings.max_rows,
            repeats=settings.repeats,
            seed=settings.seed,
        )
    finally:
        torch.set_num_threads(threads)
    result = Importance(**{**measured.to_dict(), "model_sha256": _sha256(folder / MODEL_FILE)})
    (folder / IMPORTANCE_FILE).write_text(json.dumps(result.to_dict(), indent=2))
    top = ", ".join(f"{name} {share:.0%}" for name, share in result.top())
    log.info("feature importance of %s on %d holdout rows: %s", folder, result.rows, top)
    return result


def read_importance(output_dir: Path | str) -> Importance | None:
    """The importance a run recorded for its current ``model.pt``; None when it recorded none,
    or recorded it for other weights (a re-used run folder), or the file is unreadable."""
    folder = Path(output_dir)
    path = folder / IMPORTANCE_FILE
    if not path.is_file():
        return None
    try:
        found = Importance.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, AttributeError) as err:
        log.warning("ignoring %s: not an importance record (%s)", path, err)
        return None
    if found.model_sha256 != _sha256(folder / MODEL_FILE):
        log.warning("ignoring %s: it was measured on another model.pt", path)
        return None
    return found


def _columns(prep: Preprocessor) -> dict[str, tuple[str, list[int] | None]]:
    """Each raw input column and where it lands in the transformed arrays: (array, columns)
    or (array, None) for a one-dimensional array. Mirrors :meth:`Preprocessor.transform`."""
    out: dict[str, tuple[str, list[int] | None]] = {}
    for i, name in enumerate(prep.numeric):
        out[name] = ("numeric", [2 * i, 2 * i + 1])  # the value and its missing flag
    for i, name in enumerate((*prep.vocab, *prep.hashed)):
        out[name] = ("categorical", [i])
    out[prep.distance] = ("distance", None)
    out[prep.weather] = ("weather", None)
    return out


def _shuffle(array: torch.Tensor, cols: list[int] | None, order: torch.Tensor) -> torch.Tensor:
    if cols is None:
        return array[order]
    out = array.clone()
    out[:, cols] = array[order][:, cols]
    return out


def _mae(model: ETANet, arrays: Mapping[str, torch.Tensor], truth: np.ndarray) -> float:
    import torch

    from relay.model.training import INPUTS

    with torch.inference_mode():
        pred = model(*(arrays[k] for k in INPUTS)).double().numpy()
    return float(np.mean(np.abs(pred - truth)))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
