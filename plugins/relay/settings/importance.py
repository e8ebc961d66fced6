"""Feature importance settings: how the training run measures each input's weight.

Part of :mod:`relay.settings` (import them from there); kept apart only to keep each module
small.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class ImportanceSettings(BaseModel):
    """Permutation importance on the holdout, at the end of every training run
    (:mod:`relay.model.importance`): each model input's share of the MAE increase when its
    column is shuffled. Stored with the version (``TrainingInfo.feature_importance``), shown in
    the evaluation report.

    ``RELAY_IMPORTANCE__MAX_ROWS=5000``: at most 5,000 holdout rows are scored per shuffle.
    """

    enabled: bool = Field(True, description="Measure it at the end of every training run")
    max_rows: int = Field(
        5_000,
        ge=1,
        description="Holdout rows sampled (seeded) for the measurement; the cost grows with it "
        "(inputs × repeats forward passes over these rows)",
    )
    repeats: int = Field(3, ge=1, description="Shuffles per input; its MAE increase is their mean")
    seed: int = Field(0, description="Seed of the row sample and of the shuffles")
    threads: int = Field(
        1,
        ge=0,
        description="torch intra-op threads while measuring (restored after); 0: torch's "
        "default. Default MLP, 5,000 rows, 15 inputs, 3 repeats: 0.74 s on one thread, "
        "0.46 s on two of 2 idle cores, but 4-13 s on two of 2 busy cores (one: ~1.3 s)",
    )
