"""What a model deployment loads for one version: the model, its feature reader, its serving log.

Serve deployments take a loader as an argument (``serving/app.py``'s ``ETAModel``), so a test can
hand them a small one; :func:`load_version` is the real one, and the plain baseline in ``bench/``
loads the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from relay.features.guarded import OnlineRead


class Predictor(Protocol):
    """Minutes for a batch of feature columns (a :class:`relay.model.bundle.ModelBundle`)."""

    def predict(self, frame: Any) -> Any: ...


class FeatureReader(Protocol):
    """Online features for feature rows, never failing: the defaults and the reason when the
    store cannot answer (a :class:`relay.features.guarded.GuardedReader`)."""

    def read(self, orders: list[dict[str, Any]]) -> OnlineRead: ...

    def defaults(self, orders: list[dict[str, Any]]) -> dict[str, list[Any]]: ...

    def status(self) -> str: ...

    def warm_up(self, orders: list[dict[str, Any]]) -> None: ...


class RecordLog(Protocol):
    """Where answered predictions go (a :class:`relay.serve.log.ServingLogWriter`)."""

    @property
    def written(self) -> int: ...

    def log(self, records: list[dict[str, Any]]) -> None: ...

    def flush(self) -> int: ...

    def close(self) -> None: ...


@dataclass
class Loaded:
    """One version, ready to answer; ``prior_minutes`` (its training set's mean ETA) answers
    an order the model made nothing usable of (:func:`relay.serve.answer.fallback_eta`)."""

    model: Predictor
    features: FeatureReader
    log: RecordLog
    prior_minutes: float | None = None


def load_version(version: str) -> Loaded:
    """The registry version (sha256 checked), read with its own feature service, logging to the
    lake (all from the settings of the process that loads it)."""
    from relay.data.lake import Lake
    from relay.features.guarded import GuardedReader
    from relay.features.store import OnlineFeatures
    from relay.model.bundle import ModelBundle
    from relay.registry import Registry
    from relay.serve.log import ServingLogWriter
    from relay.settings import get_settings

    s = get_settings()
    bundle = ModelBundle.from_registry(Registry(s), version)
    if bundle.variant == "float" and serving_device() == "cuda":
        bundle.model.to("cuda")  # INT8 (dynamic quantisation) runs on CPU only
    return Loaded(
        model=bundle,
        features=GuardedReader(
            OnlineFeatures(s, bundle.feature_service, read_timeouts=True),  # as trained on
            timeout_s=s.feast.online_read_timeout_s,
            retry_after_s=s.feast.online_retry_after_s,
        ),
        log=ServingLogWriter(
            Lake(s),
            max_batch=s.serving.log_max_batch,
            max_delay_s=s.serving.log_max_delay_s,
            child_process=s.serving.log_writer == "process",
        ),
        prior_minutes=bundle.preprocessor.label_mean,
    )


def serving_device() -> str:
    """``cuda`` when this process may use a GPU: Ray gave its replica one
    (``RELAY_SERVING__MODEL_GPUS`` or the version's ``serving.gpus``), or, outside Ray, torch
    sees one; else ``cpu``."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    import ray

    if ray.is_initialized() and not ray.get_gpu_ids():
        return "cpu"  # a CPU replica on a GPU node leaves the GPU to the replicas given it
    return "cuda"
