"""The model registry: versioned, verified model artifacts with a lifecycle and stage pointers.

Start with :class:`Registry`; the other names are its inputs, outputs and errors.
"""

from relay.registry.backends import open_store
from relay.registry.errors import (
    ArtifactIntegrityError,
    ArtifactNotFound,
    ConcurrentUpdate,
    IllegalTransition,
    InvalidName,
    InvalidPromotion,
    InvalidVersion,
    NothingToRollBack,
    ObjectNotFound,
    RegistryError,
    RolledBackVersion,
    VersionConflict,
    VersionNotFound,
)
from relay.registry.local_store import LocalStore
from relay.registry.models import (
    ArtifactRef,
    HistoryEntry,
    LandedDrift,
    Lineage,
    LineageRecord,
    ModelVersion,
    ServingRequirements,
    StagePointer,
    TrainingInfo,
    TrainingSetRef,
    TrainingTrigger,
)
from relay.registry.registry import Registry
from relay.registry.s3_store import S3Store
from relay.registry.states import (
    TRANSITIONS,
    ModelState,
    Stage,
    check_transition,
    is_legal,
    legal_targets,
)
from relay.registry.store import ArtifactStore, Tagged
from relay.registry.versions import (
    BumpKind,
    SemVer,
    VersionId,
    make_version_id,
    next_version,
    parse_version_id,
)

__all__ = [
    "TRANSITIONS",
    "ArtifactIntegrityError",
    "ArtifactNotFound",
    "ArtifactRef",
    "ArtifactStore",
    "BumpKind",
    "ConcurrentUpdate",
    "HistoryEntry",
    "IllegalTransition",
    "InvalidName",
    "InvalidPromotion",
    "InvalidVersion",
    "LandedDrift",
    "Lineage",
    "LineageRecord",
    "LocalStore",
    "ModelState",
    "ModelVersion",
    "NothingToRollBack",
    "ObjectNotFound",
    "Registry",
    "RegistryError",
    "RolledBackVersion",
    "S3Store",
    "SemVer",
    "ServingRequirements",
    "Stage",
    "StagePointer",
    "Tagged",
    "TrainingInfo",
    "TrainingSetRef",
    "TrainingTrigger",
    "VersionConflict",
    "VersionId",
    "VersionNotFound",
    "check_transition",
    "is_legal",
    "legal_targets",
    "make_version_id",
    "next_version",
    "open_store",
    "parse_version_id",
]
