"""Preprocessing that travels with the model: serving computes exactly what training computed.

Numeric features are filled (unknown entity -> training mean, with a missing flag) and scaled;
zone, hour and weekday get vocabularies with an index for unknown values; courier and merchant
ids are hashed into fixed buckets with a stable hash (not Python's salted ``hash``); weather is
an ordered level, because the network treats worse weather as never faster.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from relay.errors import ConfigError
from relay.features.catalog import CATALOG, LABEL, Feature, Role, with_role

# Ordered from fastest to slowest; an unknown report counts as cloudy.
WEATHER_LEVELS = {"clear": 0, "cloudy": 1, "rain": 2, "storm": 3, "unknown": 1}

# The columns of preprocessors saved before they recorded their own: frozen, never the
# catalog's current lists, so a feature added later cannot change what an old model reads.
_OLD_NUMERIC = (
    "courier_deliveries_24h",
    "courier_mean_delivery_24h",
    "courier_orders_1h",
    "merchant_mean_prep_24h",
    "merchant_orders_1h",
    "merchant_orders_24h",
    "zone_orders_1h",
    "zone_mean_delivery_24h",
)
_OLD_VOCAB = ("zone_id", "order_hour", "order_weekday")
_OLD_HASHED = ("courier_id", "merchant_id")


@dataclass
class Preprocessor:
    """Fitted statistics and vocabularies, and the columns they apply to; JSON round-trips
    exactly.

    Attributes:
        numeric: Columns filled and scaled (each with a missing flag), in input order.
        vocab: Columns indexed by a vocabulary (the first ``categorical`` columns).
        hashed: Id columns hashed into ``hash_buckets`` (the last ``categorical`` columns).
        distance: The distance the pace head multiplies.
        weather: The weather report, read as an ordered level.
    """

    means: dict[str, float] = field(default_factory=dict)
    stds: dict[str, float] = field(default_factory=dict)
    vocabs: dict[str, list[str]] = field(default_factory=dict)
    hash_buckets: int = 2048
    label_mean: float = 0.0
    label_std: float = 1.0
    version: int = 1
    numeric: list[str] = field(default_factory=lambda: list(_OLD_NUMERIC))
    vocab: list[str] = field(default_factory=lambda: list(_OLD_VOCAB))
    hashed: list[str] = field(default_factory=lambda: list(_OLD_HASHED))
    distance: str = "order_distance_km"
    weather: str = "zone_weather"

    @classmethod
    def fit(
        cls, frame: pd.DataFrame, hash_buckets: int = 2048, catalog: Iterable[Feature] = CATALOG
    ) -> Preprocessor:
        """Learn fill values, scales and vocabularies from a training frame.

        Args:
            frame: The training set: every model input of ``catalog`` and the label.
            hash_buckets: Embedding rows per hashed id column.
            catalog: The features and their roles; the preprocessor records its columns.
        """
        catalog = tuple(catalog)
        p = cls(
            hash_buckets=hash_buckets,
            numeric=list(with_role("numeric", catalog)),
            vocab=list(with_role("vocab", catalog)),
            hashed=list(with_role("hashed", catalog)),
            distance=_only("distance", catalog),
            weather=_only("weather", catalog),
        )
        for col in p.numeric:
            values = pd.to_numeric(frame[col], errors="coerce").astype(float)
            p.means[col] = float(np.nan_to_num(values.mean()))
            p.stds[col] = float(values.std()) if values.std() > 0 else 1.0
        for col in p.vocab:
            p.vocabs[col] = sorted(frame[col].dropna().astype(str).unique().tolist())
        label = frame[LABEL].astype(float)
        p.label_mean, p.label_std = float(label.mean()), float(label.std() or 1.0)
        return p

    @property
    def inputs(self) -> tuple[str, ...]:
        """Every column :meth:`transform` reads."""
        return (*self.numeric, *self.vocab, *self.hashed, self.distance, self.weather)

    @property
    def n_numeric(self) -> int:
        """Width of ``numeric``: a value and a missing flag per numeric column."""
        return 2 * len(self.numeric)

    @property
    def cardinalities(self) -> list[int]:
        """Embedding sizes in the column order of ``categorical`` (index 0 = unknown)."""
        return [len(self.vocabs[c]) + 1 for c in self.vocab] + [self.hash_buckets] * len(
            self.hashed
        )

    def transform(self, data: pd.DataFrame | Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
        """Model inputs for a frame or a dict of columns (Feast's online response).

        Returns:
            ``numeric`` float32 [n, n_numeric], ``categorical`` int64 [n, vocab + hashed],
            ``distance`` float32 [n], ``weather`` int64 [n].
        """
        cols = data if isinstance(data, pd.DataFrame) else pd.DataFrame(dict(data))
        n = len(cols)
        numeric = np.empty((n, self.n_numeric), dtype=np.float32)
        for i, col in enumerate(self.numeric):
            v = pd.to_numeric(cols[col], errors="coerce").to_numpy(dtype=float)
            missing = np.isnan(v)
            v = np.where(missing, self.means[col], v)
            numeric[:, 2 * i] = (v - self.means[col]) / self.stds[col]
            numeric[:, 2 * i + 1] = missing
        cat = np.empty((n, len(self.vocab) + len(self.hashed)), dtype=np.int64)
        for i, col in enumerate(self.vocab):
            index = {v: k + 1 for k, v in enumerate(self.vocabs[col])}
            cat[:, i] = [index.get(str(x), 0) for x in cols[col]]
        for j, col in enumerate(self.hashed):
            cat[:, len(self.vocab) + j] = [
                zlib.crc32(str(x).encode()) % self.hash_buckets for x in cols[col]
            ]
        distance = pd.to_numeric(cols[self.distance], errors="coerce").to_numpy(dtype=np.float32)
        weather = np.array(
            [WEATHER_LEVELS.get(str(w), 1) for w in cols[self.weather]], dtype=np.int64
        )
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


def _only(role: Role, catalog: tuple[Feature, ...]) -> str:
    found = with_role(role, catalog)
    if len(found) != 1:  # the network has one distance and one weather input
        raise ConfigError(f"the feature catalog must give one {role!r} feature, not {found}")
    return found[0]
