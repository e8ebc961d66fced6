"""A trained ETA model as one object: its preprocessor, network config and weights.

A training run leaves three files side by side (``model.pt``, ``net_config.json``,
``preprocessor.json``); the registry stores the same three per version. :class:`ModelBundle`
loads them from either place and predicts delivery minutes for a frame of features, so
evaluation and serving never reassemble the pieces by hand.

A version may also hold the optimise stage's INT8 model (``model.int8.pt``) and its verdict
(``optimised.json``, :mod:`relay.model.optimise`): :meth:`ModelBundle.from_registry` loads the
INT8 model instead of the float one when the stage accepted it and measured it faster.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from relay.errors import RelayError
from relay.model.preprocess import Preprocessor

if TYPE_CHECKING:  # pragma: no cover, typing only
    from relay.model.network import ETANet
    from relay.model.quantise import OptimiseOutcome
    from relay.registry import ModelVersion, Registry

MODEL_FILE = "model.pt"
NET_CONFIG_FILE = "net_config.json"
PREPROCESSOR_FILE = "preprocessor.json"
METRICS_FILE = "metrics.json"
BUNDLE_FILES = (MODEL_FILE, NET_CONFIG_FILE, PREPROCESSOR_FILE)
"""The files a model needs to predict; a training run writes them, the registry stores them."""
INT8_MODEL_FILE = "model.int8.pt"
OPTIMISED_FILE = "optimised.json"
OPTIMISE_FILES = (INT8_MODEL_FILE, OPTIMISED_FILE)
"""The optimise stage's files: the INT8 weights (only when accepted) and its verdict."""

Variant = Literal["float", "int8"]


class ModelBundleError(RelayError):
    """A model's files are missing or do not fit together."""


@dataclass(frozen=True)
class ModelBundle:
    """Preprocessor, network config and network of one trained model.

    Attributes:
        preprocessor: the fitted preprocessing saved with the weights.
        net_config: the network's config as saved (``NetConfig.to_dict()``).
        model: the network in eval mode.
        source: where it was loaded from: a folder, or the registry's version id.
        feature_service: the Feast feature service the version was trained on (its
            ``lineage.feature_service``), which serving must read; None for a run folder.
        variant: which weights ``model`` holds: the float ones or the INT8 ones.
    """

    preprocessor: Preprocessor
    net_config: dict[str, Any]
    model: ETANet
    source: str = ""
    feature_service: str | None = None
    variant: Variant = "float"

    @classmethod
    def from_parts(
        cls,
        state: Mapping[str, Any],
        net_config: Mapping[str, Any],
        preprocessor: Preprocessor,
        source: str = "",
        feature_service: str | None = None,
        variant: Variant = "float",
    ) -> ModelBundle:
        """Rebuild the network from its weights (float or INT8, see ``variant``) and config.

        Raises:
            ModelBundleError: The weights do not fit the config.
        """
        from relay.model.quantise import load_int8
        from relay.model.training import load_model

        load = load_int8 if variant == "int8" else load_model
        try:
            model = load(state, net_config)
        except (RuntimeError, TypeError, KeyError) as err:
            raise ModelBundleError(
                f"the {variant} weights of {source or 'the model'} do not fit its "
                f"net_config.json: {err}"
            ) from err
        return cls(preprocessor, dict(net_config), model, source, feature_service, variant)

    @classmethod
    def from_dir(cls, path: Path | str) -> ModelBundle:
        """Load a training run's output folder (what ``run_training`` writes).

        Raises:
            ModelBundleError: One of the three files is missing or unreadable.
        """
        folder = Path(path)
        missing = [name for name in BUNDLE_FILES if not (folder / name).is_file()]
        if missing:
            raise ModelBundleError(
                f"{folder} lacks {', '.join(missing)}; point to the output folder of a "
                f"finished training run (it holds {', '.join(BUNDLE_FILES)})"
            )
        import torch  # heavy: imported once there is something to load

        try:
            state = torch.load(folder / MODEL_FILE, weights_only=True)
        except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
            raise ModelBundleError(
                f"{folder / MODEL_FILE} is not a loadable state dict: {err}"
            ) from err
        return cls.from_parts(
            state,
            _json_object((folder / NET_CONFIG_FILE).read_text(), f"{folder / NET_CONFIG_FILE}"),
            _preprocessor(
                (folder / PREPROCESSOR_FILE).read_text(), str(folder / PREPROCESSOR_FILE)
            ),
            source=str(folder),
        )

    @classmethod
    def from_registry(
        cls, registry: Registry, version_id: str, variant: Variant | None = None
    ) -> ModelBundle:
        """Load a registered version; every artifact is checked against its recorded sha256.

        Args:
            registry: Where the version is registered.
            version_id: The version.
            variant: ``"float"`` or ``"int8"`` to load those weights; None: the INT8 ones when
                the optimise stage accepted them and measured them faster (and
                ``RELAY_OPTIMISE__SERVE`` allows it), else the float ones.

        Raises:
            ArtifactIntegrityError: Stored bytes differ from the registered ones.
            ArtifactNotFound: The version lacks one of the three files (or the INT8 model
                that ``variant`` asks for).
            VersionNotFound: No such version.
        """
        from relay.model.quantise import quiet_quantisation_warnings

        record = registry.get(version_id)
        chosen = variant or served_variant(registry, record)
        with quiet_quantisation_warnings():
            state = registry.load_torch_state(
                version_id, INT8_MODEL_FILE if chosen == "int8" else MODEL_FILE
            )
        config = registry.load_artifact(version_id, NET_CONFIG_FILE).decode()
        prep = registry.load_artifact(version_id, PREPROCESSOR_FILE).decode()
        return cls.from_parts(
            state,
            _json_object(config, f"{NET_CONFIG_FILE} of {version_id}"),
            _preprocessor(prep, f"{PREPROCESSOR_FILE} of {version_id}"),
            source=version_id,
            feature_service=record.lineage.feature_service,
            variant=chosen,
        )

    def predict(self, frame: pd.DataFrame | Mapping[str, list[Any]]) -> np.ndarray:
        """Predicted delivery minutes, one per row of ``frame`` (float64)."""
        from relay.model.training import predict

        return predict(self.model, self.preprocessor, frame)


def served_variant(registry: Registry, version: ModelVersion) -> Variant:
    """The weights serving loads for ``version``: INT8 only when the version holds the INT8
    model and a verdict that accepted it, measured it faster and was made from this version's
    ``model.pt``, and the settings allow it; otherwise float.

    Raises:
        ArtifactIntegrityError: ``optimised.json``'s bytes differ from the registered ones.
        ModelBundleError: ``optimised.json`` is unreadable.
    """
    names = {ref.name for ref in version.artifacts}
    if not registry.settings.optimise.serve or not set(OPTIMISE_FILES) <= names:
        return "float"
    text = registry.load_artifact(version.id, OPTIMISED_FILE).decode()
    outcome = read_outcome(text, f"{OPTIMISED_FILE} of {version.id}")
    same_model = outcome.float_sha256 == version.artifact(MODEL_FILE).sha256
    return "int8" if outcome.serves_optimised and same_model else "float"


def read_outcome(text: str, what: str) -> OptimiseOutcome:
    """The optimise stage's verdict from ``optimised.json``'s text.

    Raises:
        ModelBundleError: Not JSON, or not a verdict.
    """
    from relay.model.quantise import OptimiseOutcome

    try:
        return OptimiseOutcome.from_dict(_json_object(text, what))
    except TypeError as err:
        raise ModelBundleError(f"{what} is not the optimise stage's verdict: {err}") from err


def feature_count(prep: Preprocessor) -> int:
    """How many input features the model reads: numeric, vocabulary and hashed columns,
    distance and weather (a numeric feature's missing flag is not counted separately)."""
    return len(prep.inputs)


def _preprocessor(text: str, what: str) -> Preprocessor:
    try:
        return Preprocessor.from_json(text)
    except (json.JSONDecodeError, TypeError) as err:
        raise ModelBundleError(f"{what} is not a saved Preprocessor: {err}") from err


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ModelBundleError(f"{what} is not valid JSON: {err}") from err
    if not isinstance(doc, dict):
        raise ModelBundleError(f"{what} must hold a JSON object, not {type(doc).__name__}")
    return doc
