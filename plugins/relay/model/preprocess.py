"""Preprocessing that travels with the model: serving computes exactly what training computed.

Numeric features are filled (unknown entity -> training mean, with a missing flag) and scaled;
zone, hour and weekday get vocabularies with an index for unknown values; courier and merchant
ids are hashed into fixed buckets with a stable hash (not Python's salted ``hash``); weather is
an ordered level, because the network treats worse weather as never faster.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from relay.features.catalog import DISTANCE, HASHED, LABEL, NUMERIC, VOCAB, WEATHER

# Ordered from fastest to slowest; an unknown report counts as cloudy.
WEATHER_LEVELS = {"clear": 0, "cloudy": 1, "rain": 2, "storm": 3, "unknown": 1}


@dataclass
class Preprocessor:
    """Fitted statistics and vocabularies; JSON round-trips exactly."""

    means: dict[str, float] = field(default_factory=dict)
    stds: dict[str, float] = field(default_factory=dict)
    vocabs: dict[str, list[str]] = field(default_factory=dict)
    hash_buckets: int = 2048
    label_mean: float = 0.0
    label_std: float = 1.0
    version: int = 1

    @classmethod
    def fit(cls, frame: pd.DataFrame, hash_buckets: int = 2048) -> Preprocessor:
        """Learn fill values, scales and vocabularies from a training frame."""
        p = cls(hash_buckets=hash_buckets)
        for col in NUMERIC:
            values = pd.to_numeric(frame[col], errors="coerce").astype(float)
            p.means[col] = float(np.nan_to_num(values.mean()))
            p.stds[col] = float(values.std()) if values.std() > 0 else 1.0
        for col in VOCAB:
            p.vocabs[col] = sorted(frame[col].dropna().astype(str).unique().tolist())
        label = frame[LABEL].astype(float)
        p.label_mean, p.label_std = float(label.mean()), float(label.std() or 1.0)
        return p

    @property
    def n_numeric(self) -> int:
        return 2 * len(NUMERIC)  # value and missing flag

    @property
    def cardinalities(self) -> list[int]:
        """Embedding sizes in the column order of ``categorical`` (index 0 = unknown)."""
        return [len(self.vocabs[c]) + 1 for c in VOCAB] + [self.hash_buckets] * len(HASHED)

    def transform(self, data: pd.DataFrame | Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
        """Model inputs for a frame or a dict of columns (Feast's online response).

        Returns:
            ``numeric`` float32 [n, 2*len(NUMERIC)], ``categorical`` int64 [n, 5],
            ``distance`` float32 [n], ``weather`` int64 [n].
        """
        cols = data if isinstance(data, pd.DataFrame) else pd.DataFrame(dict(data))
        n = len(cols)
        numeric = np.empty((n, self.n_numeric), dtype=np.float32)
        for i, col in enumerate(NUMERIC):
            v = pd.to_numeric(cols[col], errors="coerce").to_numpy(dtype=float)
            missing = np.isnan(v)
            v = np.where(missing, self.means[col], v)
            numeric[:, 2 * i] = (v - self.means[col]) / self.stds[col]
            numeric[:, 2 * i + 1] = missing
        cat = np.empty((n, len(VOCAB) + len(HASHED)), dtype=np.int64)
        for i, col in enumerate(VOCAB):
            index = {v: k + 1 for k, v in enumerate(self.vocabs[col])}
            cat[:, i] = [index.get(str(x), 0) for x in cols[col]]
        for j, col in enumerate(HASHED):
            cat[:, len(VOCAB) + j] = [
                zlib.crc32(str(x).encode()) % self.hash_buckets for x in cols[col]
            ]
        distance = pd.to_numeric(cols[DISTANCE], errors="coerce").to_numpy(dtype=np.float32)
        weather = np.array([WEATHER_LEVELS.get(str(w), 1) for w in cols[WEATHER]], dtype=np.int64)
        return {
            "numeric": numeric,
            "categorical": cat,
            "distance": np.nan_to_num(distance, nan=0.0).clip(min=0.0),
            "weather": weather,
        }

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Preprocessor:
        return cls(**json.loads(text))
