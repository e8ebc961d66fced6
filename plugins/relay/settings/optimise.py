"""The optimise stage's settings: when an INT8 model is kept, and when it is served.

Part of :mod:`relay.settings` (import them from there); kept apart only to keep each module
small.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class OptimiseSettings(BaseModel):
    """The stage after training (:mod:`relay.model.optimise`): dynamic INT8 quantisation of the
    network's linear layers, judged on the run's holdout by :func:`relay.model.quantise.judge`.

    ``RELAY_OPTIMISE__MAX_MAE_LOSS=0.01``: the INT8 model may be at most 1% worse than the float
    one, or it is refused with its numbers.
    """

    enabled: bool = Field(True, description="Run the stage at the end of every training run")
    max_mae_loss: float = Field(
        0.01,
        ge=0,
        description="The INT8 model's holdout MAE may exceed the float model's by at most this "
        "share of it (0.01: 1%); more and the INT8 model is refused",
    )
    min_speedup: float = Field(
        1.1,
        ge=0,
        description="The INT8 model counts as faster when the float model's median batch "
        "latency is at least this multiple of its own (a smaller gain is within timing noise); "
        "0: whenever accepted",
    )
    serve: bool = Field(
        True,
        description="Load a version's INT8 model in place of its float one when the stage "
        "accepted it and measured it faster; False: always the float model",
    )
    timing_rows: int = Field(32, ge=1, description="Rows of the batch both models are timed on")
    timing_repeats: int = Field(
        15, ge=3, description="Timed samples per model (the median counts), after a warm-up"
    )
