"""Monitoring settings: drift, live quality, and when they retrain or roll back.

Part of :mod:`relay.settings` (import them from there); kept apart only to keep each module
small.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from relay.features.catalog import psi_thresholds as _catalog_psi_thresholds


class MonitoringSettings(BaseModel):
    """Drift and live-quality monitoring of the production model (:mod:`relay.monitor.rules`).

    PSI bands follow the field's convention: below 0.1 stable, 0.1-0.2 moderate, above 0.2 high.
    A retrain needs drift in the features the model relies on (weighted by production's
    permutation importance), confirmed by its predictions or its accuracy, over
    ``persist_windows`` windows in a row and outside ``retrain_cooldown_s``
    (:mod:`relay.monitor.retrain_rules`). No threshold here is fitted to the simulator: a
    feature that moves every ordinary day (the weather) counts by its weight in the model, and
    a per-feature PSI threshold, where one is needed, is declared in the feature catalog with
    its reason (``Feature.psi_threshold``).
    """

    window_hours: int = Field(24, gt=0, description="Hours of serving log one run looks at")
    min_rows: int = Field(
        200, ge=1, description="Predictions a window needs before drift is judged"
    )
    max_rows: int = Field(
        20_000, ge=100, description="Rows sampled (seeded) from each side for the drift report"
    )
    drift_share_threshold: float = Field(
        0.3,
        gt=0,
        le=1,
        description="Share of drifted features behind the drift report's dataset-drift headline "
        "(Evidently's; the retrain rule weighs features: importance_drift_threshold)",
    )
    importance_drift_threshold: float = Field(
        0.3,
        gt=0,
        le=1,
        description="Share of production's feature importance carried by drifted features at "
        "which features that matter drifted (equal weights without importance: the old "
        "unweighted 30%)",
    )
    psi_threshold: float = Field(
        0.2,
        gt=0,
        description="PSI above this marks a monitored feature drifted (as does Evidently's test), "
        "unless psi_thresholds gives it its own",
    )
    psi_thresholds: dict[str, float] = Field(
        default_factory=lambda: _catalog_psi_thresholds(),
        description="Per-feature PSI thresholds that replace psi_threshold (JSON in the env); "
        "default: those the feature catalog declares",
    )
    prediction_drift_threshold: float = Field(
        0.2,
        gt=0,
        description="PSI of the predictions above this confirms drift in features that matter",
    )
    persist_windows: int = Field(
        2,
        ge=1,
        description="Windows in a row, the current one included, that must see confirmed drift "
        "before a retrain (1: at once)",
    )
    confirm_z: float = Field(
        1.645,
        ge=0,
        description="One-sided z: a live MAE past its registered MAE and the margin confirms "
        "drift only when it is this many standard errors past it (1.645: 5% by chance), in one "
        "window or, when no window alone confirms it, over the persist_windows windows' "
        "labelled rows together, each row once (relay.monitor.persistence). Looser than "
        "quality_z: a retrain's cost is compute, a rollback's is traffic",
    )
    retrain_cooldown_s: float = Field(
        86_400.0,
        ge=0,
        description="No retrain within this many seconds of the last (the newest version trained "
        "at monitoring's request): a day, so that a new day of orders has landed to learn from",
    )
    max_mae_regression: float = Field(
        0.05,
        ge=0,
        description="Production's live MAE may be at most this much worse than the previous "
        "production version's before a rollback, and than its own registered MAE before a "
        "quality loss confirms drift",
    )
    quality_z: float = Field(
        2.326,
        ge=0,
        description="One-sided z: a live MAE regression past the margin rolls back only when "
        "it is this many standard errors past it (2.326: 1% by chance, as the canary's); 0: any",
    )
    rollback_cooldown_s: float = Field(
        86_400.0,
        ge=0,
        description="No automatic rollback within this many seconds of the last rollback (one "
        "window of 24 h: the restored version's quality is first measured in full)",
    )
    min_labelled: int = Field(
        100, ge=1, description="Labelled predictions needed before live MAE is judged"
    )

    @field_validator("psi_thresholds")
    @classmethod
    def _positive_psi_thresholds(cls, limits: dict[str, float]) -> dict[str, float]:
        bad = {name: value for name, value in limits.items() if not value > 0}
        if bad:
            raise ValueError(f"PSI thresholds must be > 0: {bad}")
        return limits
