"""Dynamic INT8 quantisation of the ETA network, and the gate that decides whether to keep it.

Dynamic quantisation stores the weights of every ``nn.Linear`` as 8-bit integers and quantises
the activations on the fly, batch by batch; the embeddings and the monotone output head stay in
float, so the network's guarantees (a longer distance or worse weather never lowers the ETA)
hold for the INT8 model too. :func:`judge` is the pure decision (the numbers in, a verdict
out); :mod:`relay.model.optimise` measures the numbers and writes the result.

The quantised weights are saved as a state dict, not as a pickled module or TorchScript: it
loads with ``torch.load(weights_only=True)`` like ``model.pt`` (no code runs on load), into an
``ETANet`` rebuilt from ``net_config.json`` and quantised the same way.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from relay.verdict import relative_change

if TYPE_CHECKING:  # pragma: no cover, typing only
    from relay.model.network import ETANet

METHOD = "dynamic-int8"


@dataclass(frozen=True)
class OptimiseOutcome:
    """What the optimise stage measured and decided (``optimised.json``).

    Attributes:
        float_mae: the float model's MAE on the holdout, minutes.
        optimised_mae: the INT8 model's MAE on the same rows, minutes.
        mae_loss: how much worse the INT8 MAE is, as a share of the float one (0.004: 0.4%).
        max_mae_loss: the largest loss allowed (``RELAY_OPTIMISE__MAX_MAE_LOSS``).
        float_latency_ms: the float model's median time for one batch of ``timing_rows``.
        optimised_latency_ms: the INT8 model's, measured on the same machine, interleaved.
        speedup: ``float_latency_ms / optimised_latency_ms``.
        min_speedup: the speedup needed to count as faster (``RELAY_OPTIMISE__MIN_SPEEDUP``).
        accepted: the INT8 model is within the allowed loss (and was saved).
        faster: it is also faster by ``min_speedup``: serving loads it in place of the float one.
        reason: the decision and its numbers, for people.
        method: how the model was optimised.
        holdout_rows: the rows the MAEs were measured on.
        timing_rows: the rows of the timed batch.
        float_sha256: sha256 of the ``model.pt`` it was made from; an INT8 model is only ever
            served with that float model.
        measured_on: torch version, quantised engine, CPU and threads of the timing.
    """

    float_mae: float
    optimised_mae: float
    mae_loss: float
    max_mae_loss: float
    float_latency_ms: float
    optimised_latency_ms: float
    speedup: float
    min_speedup: float
    accepted: bool
    faster: bool
    reason: str
    method: str = METHOD
    holdout_rows: int = 0
    timing_rows: int = 0
    float_sha256: str = ""
    measured_on: str = ""

    @property
    def serves_optimised(self) -> bool:
        """Whether serving should load the INT8 model: within the loss bound and faster."""
        return self.accepted and self.faster

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for ``optimised.json`` (non-finite numbers as None: JSON has no NaN)."""
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> OptimiseOutcome:
        """Read ``optimised.json``; keys this version does not know are ignored.

        Raises:
            TypeError: A required key is missing.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {
            k: (math.nan if v is None else v) for k, v in doc.items() if k in known
        }
        return cls(**values)


def judge(
    float_mae: float,
    optimised_mae: float,
    float_latency_ms: float,
    optimised_latency_ms: float,
    *,
    max_mae_loss: float,
    min_speedup: float,
) -> OptimiseOutcome:
    """Keep the optimised model only when it predicts (almost) as well as the float one.

    Accepted when its holdout MAE is at most ``max_mae_loss`` (a share) worse than the float
    model's, boundary included; an unmeasurable loss (NaN) is refused. A faster model that
    loses more is refused: a served ETA must not get worse to save a fraction of a millisecond.
    Faster is judged separately, so an accepted model that is not faster is kept on record but
    not served.

    Returns:
        The numbers and the decision; ``reason`` states the numbers either way.
    """
    loss = relative_change(optimised_mae, float_mae)
    accepted = loss <= max_mae_loss  # NaN compares False: refused
    speedup = float_latency_ms / optimised_latency_ms if optimised_latency_ms > 0 else math.inf
    faster = speedup >= min_speedup
    maes = (
        f"holdout MAE {optimised_mae:.4f} vs float {float_mae:.4f} min "
        f"({loss:+.2%}, allowed {max_mae_loss:.2%})"
    )
    times = (
        f"batch latency {optimised_latency_ms:.3f} vs float {float_latency_ms:.3f} ms "
        f"({speedup:.2f}×, needs {min_speedup:.2f}×)"
    )
    if not accepted:
        reason = f"INT8 refused: {maes} is more than the allowed loss; {times}; float kept"
    elif faster:
        reason = f"INT8 accepted and served: {maes}; {times}"
    else:
        reason = f"INT8 accepted, not served (not faster): {maes}; {times}"
    return OptimiseOutcome(
        float_mae=float(float_mae),
        optimised_mae=float(optimised_mae),
        mae_loss=float(loss),
        max_mae_loss=float(max_mae_loss),
        float_latency_ms=float(float_latency_ms),
        optimised_latency_ms=float(optimised_latency_ms),
        speedup=float(speedup),
        min_speedup=float(min_speedup),
        accepted=bool(accepted),
        faster=bool(faster),
        reason=reason,
    )


@contextmanager
def quiet_quantisation_warnings() -> Iterator[None]:
    """Silence torch's deprecation notices for eager-mode quantisation.

    torch 2.13 warns on every quantised call that ``torch.ao.quantization`` moves to torchao;
    the API still works, and torchao is not a dependency. One notice per model load in every
    serving replica's log says nothing new; the pinned torch version is where to notice it.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*deprecated")
        warnings.filterwarnings("ignore", message=r".*TypedStorage is deprecated")
        yield


def quantise(model: ETANet) -> ETANet:
    """A copy of ``model`` with its linear layers dynamically quantised to INT8, in eval mode."""
    import torch  # heavy: imported once there is a model to quantise
    from torch import nn

    # Per-tensor scales (torch's default dynamic qconfig): one outlying weight coarsens its
    # whole layer, which is why the result is judged on the holdout before it is kept.
    with quiet_quantisation_warnings():
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def load_int8(state: Mapping[str, Any], net_config: Mapping[str, Any]) -> ETANet:
    """Rebuild an INT8 network from its saved state dict and the float model's config.

    Raises:
        RuntimeError, TypeError, KeyError: The state does not fit the config.
    """
    from relay.model.training import net_from_config

    model = quantise(net_from_config(net_config))
    with quiet_quantisation_warnings():
        model.load_state_dict(state)
    model.eval()
    return model
