"""Framework-neutral training pieces: the time split, batches, one epoch, predictions.

Ray Train's worker loop and the plain single-process benchmark both call these, so the two
measure the same work.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from relay.features.catalog import LABEL
from relay.model.network import ETANet, NetConfig, huber_loss
from relay.model.preprocess import Preprocessor

INPUTS = ("numeric", "categorical", "distance", "weather")


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    valid: pd.DataFrame
    holdout: pd.DataFrame


def split_by_time(frame: pd.DataFrame, holdout_share: float, valid_share: float = 0.1) -> Split:
    """Oldest rows train, then validation (early stopping), newest rows are the holdout.

    A time split, not a random one: the model is always judged on orders from after the ones it
    learned from, as in production.
    """
    ordered = frame.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    n = len(ordered)
    n_hold = int(n * holdout_share)
    n_valid = int((n - n_hold) * valid_share)
    cut1, cut2 = n - n_hold - n_valid, n - n_hold
    return Split(ordered.iloc[:cut1], ordered.iloc[cut1:cut2], ordered.iloc[cut2:])


def model_inputs(prep: Preprocessor, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Preprocessed arrays plus the label ``y`` (float32)."""
    arrays = prep.transform(frame)
    arrays["y"] = frame[LABEL].to_numpy(dtype=np.float32)
    return arrays


def build_model(prep: Preprocessor, hp: Mapping[str, object]) -> ETANet:
    cfg = NetConfig(
        n_numeric=prep.n_numeric,
        cardinalities=tuple(prep.cardinalities),
        hidden_layers=int(hp.get("hidden_layers", 3)),  # type: ignore[call-overload]
        hidden_units=int(hp.get("hidden_units", 128)),  # type: ignore[call-overload]
        dropout=float(hp.get("dropout", 0.1)),  # type: ignore[arg-type]
        activation=str(hp.get("activation", "relu")),
        label_mean=prep.label_mean,
        label_std=prep.label_std,
    )
    return ETANet(cfg)


def train_epoch(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    label_std: float,
    scaler: torch.amp.GradScaler | None = None,
    device_type: str = "cpu",
) -> tuple[float, int]:
    """One pass over ``batches``; mixed precision when a scaler is given (GPU).

    Returns (mean loss, samples seen).
    """
    model.train()
    total, seen = 0.0, 0
    use_amp = scaler is not None and scaler.is_enabled()
    for batch in batches:
        with torch.autocast(device_type, dtype=torch.float16, enabled=use_amp):
            pred = model(*(batch[k] for k in INPUTS))
        loss = huber_loss(pred.float(), batch["y"].float(), label_std)
        optimizer.zero_grad(set_to_none=True)
        if use_amp and scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        n = int(batch["y"].shape[0])
        total += float(loss.detach()) * n
        seen += n
    return total / max(seen, 1), seen


@torch.no_grad()
def evaluate_sums(
    model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], label_std: float
) -> torch.Tensor:
    """[sum of loss, sum of absolute error, count] so workers can all-reduce them."""
    model.eval()
    out = torch.zeros(3, dtype=torch.float64)
    for batch in batches:
        pred = model(*(batch[k] for k in INPUTS)).float()
        y = batch["y"].float()
        n = y.shape[0]
        out[0] += float(huber_loss(pred, y, label_std)) * n
        out[1] += float((pred - y).abs().sum())
        out[2] += n
    return out


@torch.no_grad()
def predict(
    model: ETANet, prep: Preprocessor, frame: pd.DataFrame | Mapping[str, list]
) -> np.ndarray:
    """Predicted minutes for a frame or Feast's online response (dict of columns)."""
    model.eval()
    arrays = prep.transform(frame)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.inference_mode():  # no autograd graph: serving never backpropagates
        tensors = [torch.from_numpy(arrays[k]).to(device) for k in INPUTS]
        return model(*tensors).cpu().numpy().astype(np.float64)


def tensor_batches(
    arrays: Mapping[str, np.ndarray], batch_size: int, shuffle: bool, seed: int = 0
) -> Iterable[dict[str, torch.Tensor]]:
    """Mini-batches from in-memory arrays (the single-process path)."""
    n = len(arrays["y"])
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    for i in range(0, n, batch_size):
        idx = torch.from_numpy(order[i : i + batch_size])
        yield {k: t[idx] for k, t in tensors.items()}


def net_from_config(config: Mapping[str, object]) -> ETANet:
    """An untrained network of the shape a saved ``net_config.json`` describes."""
    cfg = dict(config)
    cfg["cardinalities"] = tuple(cfg["cardinalities"])  # type: ignore[arg-type]
    return ETANet(NetConfig(**cfg))  # type: ignore[arg-type]


def load_model(state: Mapping[str, torch.Tensor], config: Mapping[str, object]) -> ETANet:
    """Rebuild a network from its saved config and weights."""
    model = net_from_config(config)
    model.load_state_dict(state)
    model.eval()
    return model


def save_run(
    out: Path,
    model: ETANet,
    prep: Preprocessor,
    hyperparameters: Mapping[str, Any],
    metrics: Mapping[str, Any],
    train_rows: int,
) -> Path:
    """Write a training run's folder: model.pt, net_config.json, preprocessor.json, metrics.json
    (the layout ``relay register`` reads)."""
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "model.pt")
    (out / "net_config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2))
    (out / "preprocessor.json").write_text(prep.to_json())
    summary = {
        "metrics": dict(metrics),
        "hyperparameters": dict(hyperparameters),
        "train_rows": train_rows,
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
    return out
