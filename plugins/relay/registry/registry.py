"""The model registry: versions, their lifecycle, stage pointers and verified artifacts.

Layout under the registry root (a folder or ``s3://bucket/prefix``)::

    {model}/blobs/{sha256}           artifact bytes, content-addressed
    {model}/versions/{semver}.json   a version's metadata; its presence means "registered"
    {model}/stages/{stage}.json      staging / canary / production pointer

Registering writes the blobs first and the metadata last with a create-only write, so a crash
at any point leaves either no version or a whole one; at worst, orphaned blobs nobody refers to.
The metadata key is the semantic version, so two registrations that compute the same next
version cannot both succeed. Every later change to a document is a compare-and-set write.

A stage pointer is the source of truth for which version takes a stage's traffic. Promotion
moves the pointer first (the commit point) and then records the change on the versions; a crash
between the two leaves the versions' ``stage`` and ``state`` fields behind the pointer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from relay.registry.errors import (
    ArtifactIntegrityError,
    ArtifactNotFound,
    ConcurrentUpdate,
    InvalidPromotion,
    InvalidVersion,
    NothingToRollBack,
    ObjectNotFound,
    VersionConflict,
    VersionNotFound,
)
from relay.registry.models import (
    ArtifactRef,
    HistoryEntry,
    Lineage,
    LineageRecord,
    ModelVersion,
    ServingRequirements,
    StagePointer,
    TrainingInfo,
)
from relay.registry.states import (
    INITIAL_STATES,
    POINTER_STAGES,
    PROMOTABLE,
    SERVING_STAGES,
    ModelState,
    Stage,
    check_transition,
    entering_serving_state,
    leaving_serving_state,
)
from relay.registry.store import ArtifactStore, open_store
from relay.registry.versions import (
    BumpKind,
    SemVer,
    check_name,
    make_version_id,
    next_version,
    parse_version_id,
)
from relay.settings import Settings, get_settings

UPDATE_ATTEMPTS = 5
"""How often a metadata update is re-read and re-applied when a concurrent write beats it."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Registry:
    """Registers model versions and moves them through their lifecycle and stages."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        store: ArtifactStore | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        """Open the registry at ``settings.registry.uri``.

        Args:
            settings: Relay's settings; :func:`get_settings` when None.
            store: A store to use instead of the one the URI names (tests, tools).
            clock: Returns the current UTC time (tests pin it).
        """
        self.settings = settings or get_settings()
        uri = self.settings.registry.uri
        if uri is None:  # pragma: no cover, the settings validator fills it
            raise ValueError("registry URI not set")
        self.store = store or open_store(uri, self.settings)
        self.model_name = self.settings.registry.model_name
        self._clock = clock or _utcnow

    # Keys ----------------------------------------------------------------------------------

    @staticmethod
    def _version_key(name: str, version: SemVer) -> str:
        return f"{name}/versions/{version}.json"

    @staticmethod
    def _pointer_key(name: str, stage: Stage) -> str:
        return f"{name}/stages/{stage.value}.json"

    # Registering and reading ---------------------------------------------------------------

    def versions_of(self, name: str | None = None) -> list[SemVer]:
        """The registered semantic versions of a model, oldest first (reads no metadata)."""
        name = check_name(name or self.model_name)
        prefix = f"{name}/versions/"
        found = []
        for key in self.store.list_keys(prefix):
            stem = key.removeprefix(prefix).removesuffix(".json")
            if "/" in stem or not key.endswith(".json"):
                continue
            try:
                found.append(SemVer.parse(stem))
            except InvalidVersion:
                continue  # not a version document (someone's stray file): not ours to judge
        return sorted(found)

    def next_version(self, bump: BumpKind = "minor", name: str | None = None) -> SemVer:
        """The version a registration with ``bump`` would take now."""
        registered = self.versions_of(name)
        return next_version(registered[-1] if registered else None, bump)

    def register(
        self,
        artifacts: Mapping[str, Path | bytes],
        *,
        lineage: Lineage,
        owner: str,
        training: TrainingInfo | None = None,
        serving: ServingRequirements | None = None,
        bump: BumpKind = "minor",
        name: str | None = None,
        state: ModelState = ModelState.CREATED,
        reason: str = "registered",
    ) -> ModelVersion:
        """Store a model's artifacts and register them as its next version.

        Args:
            artifacts: File name → a path to read or the bytes themselves, e.g.
                ``{"model.pt": path, "preprocessor.json": b"...", "evaluation.html": path}``.
            lineage: Features, data, code, config and parent the version came from.
            owner: Who registers it (a person or a pipeline).
            training: Training set, hyperparameters and metrics.
            serving: What a serving replica needs.
            bump: Which part of the latest registered version to increase.
            name: The model; ``settings.registry.model_name`` when None.
            state: Created, or Trained when the weights come from a finished training run.
            reason: Recorded as the first history entry.

        Returns:
            The registered version.

        Raises:
            VersionNotFound: ``lineage.parent_version_id`` is not registered.
            VersionConflict: A concurrent registration took the same version; register again.
            InvalidName: A model or artifact name that cannot be a storage key.
        """
        name = check_name(name or self.model_name)
        state = ModelState(state)
        if state not in INITIAL_STATES:
            allowed = ", ".join(sorted(s.value for s in INITIAL_STATES))
            raise InvalidPromotion(f"a new version starts as one of {allowed}, not {state.value}")
        for artifact_name in artifacts:
            check_name(artifact_name, "artifact name")
        if lineage.parent_version_id is not None:
            self.get(lineage.parent_version_id)
        version = self.next_version(bump, name)
        now = self._clock()
        refs = [self._put_artifact(name, n, data) for n, data in artifacts.items()]
        record = ModelVersion(
            id=make_version_id(name, version, now),
            name=name,
            version=str(version),
            owner=owner,
            created_at=now,
            state=state,
            training=training or TrainingInfo(),
            artifacts=refs,
            serving=serving or ServingRequirements(),
            lineage=lineage,
            history=[HistoryEntry(at=now, reason=reason, from_state=None, to_state=state)],
        )
        try:
            # Last write, create-only: the version exists from here on, and only one writer wins.
            self.store.cas_json(
                self._version_key(name, version), record.model_dump(mode="json"), None
            )
        except ConcurrentUpdate as err:
            raise VersionConflict(
                f"{name} {version} was registered by someone else meanwhile; "
                f"register again to take the next version"
            ) from err
        return record

    def _put_artifact(self, model: str, name: str, data: Path | bytes) -> ArtifactRef:
        # Whole-file reads: model artifacts here are megabytes, not gigabytes.
        payload = data if isinstance(data, bytes) else Path(data).read_bytes()
        digest = hashlib.sha256(payload).hexdigest()
        key = f"{model}/blobs/{digest}"
        self.store.put_bytes(key, payload)
        return ArtifactRef(name=name, key=key, sha256=digest, size=len(payload))

    def _read(self, version_id: str) -> tuple[ModelVersion, str]:
        parsed = parse_version_id(version_id)
        tagged = self.store.read_json(self._version_key(parsed.name, parsed.version))
        if tagged is None or tagged.doc.get("id") != version_id:
            raise VersionNotFound(
                f"no model version {version_id} in {self.store.uri}; "
                f"`list_versions()` shows the registered ones"
            )
        return ModelVersion.model_validate(tagged.doc), tagged.etag

    def get(self, version_id: str) -> ModelVersion:
        """A registered version's metadata.

        Raises:
            VersionNotFound: No such version.
            InvalidVersion: ``version_id`` does not have the id shape.
        """
        return self._read(version_id)[0]

    def list_versions(self, name: str | None = None) -> list[ModelVersion]:
        """Every registered version of one model, or of all models when ``name`` is None.

        Sorted by model name, then version. Half-registered versions never appear.
        """
        names = [check_name(name)] if name else self._model_names()
        versions = []
        for model in names:
            for semver in self.versions_of(model):
                tagged = self.store.read_json(self._version_key(model, semver))
                if tagged is not None:
                    versions.append(ModelVersion.model_validate(tagged.doc))
        return versions

    def _model_names(self) -> list[str]:
        return sorted({key.split("/")[0] for key in self.store.list_keys() if "/versions/" in key})

    # Lifecycle -----------------------------------------------------------------------------

    def _update(
        self, version_id: str, change: Callable[[ModelVersion], ModelVersion | None]
    ) -> ModelVersion:
        # Optimistic concurrency: re-read and re-apply `change` (which re-checks legality on
        # the fresh record) when another writer got in between.
        for _ in range(UPDATE_ATTEMPTS):
            current, etag = self._read(version_id)
            changed = change(current)
            if changed is None:
                return current
            key = self._version_key(current.name, SemVer.parse(current.version))
            try:
                self.store.cas_json(key, changed.model_dump(mode="json"), etag)
            except ConcurrentUpdate:
                continue
            return changed
        raise ConcurrentUpdate(
            f"{version_id} changed {UPDATE_ATTEMPTS} times while we updated it; try again"
        )

    def _changed(
        self,
        version: ModelVersion,
        reason: str,
        state: ModelState | None = None,
        stage: Stage | None = None,
    ) -> ModelVersion:
        to_state = version.state if state is None else state
        to_stage = version.stage if stage is None else stage
        entry = HistoryEntry(
            at=self._clock(),
            reason=reason,
            from_state=version.state,
            to_state=to_state,
            from_stage=version.stage,
            to_stage=to_stage,
        )
        return version.model_copy(
            update={"state": to_state, "stage": to_stage, "history": [*version.history, entry]}
        )

    def transition(self, version_id: str, to_state: ModelState | str, reason: str) -> ModelVersion:
        """Move a version to another lifecycle state and record why.

        Archiving also puts the version in the archived stage.

        Raises:
            IllegalTransition: The transition table does not allow it.
            VersionNotFound: No such version.
        """
        target = ModelState(to_state)

        def change(version: ModelVersion) -> ModelVersion:
            check_transition(version.state, target)
            stage = Stage.ARCHIVED if target is ModelState.ARCHIVED else None
            return self._changed(version, reason, state=target, stage=stage)

        return self._update(version_id, change)

    # Stages --------------------------------------------------------------------------------

    def stage_pointer(self, stage: Stage | str, name: str | None = None) -> StagePointer | None:
        """The pointer of a staging / canary / production stage, or None if never set."""
        stage = _pointer_stage(stage)
        tagged = self.store.read_json(self._pointer_key(check_name(name or self.model_name), stage))
        return None if tagged is None else StagePointer.model_validate(tagged.doc)

    def stage_version(self, stage: Stage | str, name: str | None = None) -> ModelVersion | None:
        """The version a stage points to, or None when it points to none."""
        pointer = self.stage_pointer(stage, name)
        if pointer is None or pointer.version_id is None:
            return None
        return self.get(pointer.version_id)

    def promote(
        self,
        version_id: str,
        stage: Stage | str,
        expected_current: str | None = None,
        reason: str = "",
    ) -> StagePointer:
        """Point a stage at a version with a compare-and-set write.

        The displaced version is remembered as the pointer's previous version (what
        :meth:`rollback` restores), put in the archived stage and, when it was serving
        traffic in canary or production, deprecated. A version entering canary or production
        starts deploying if it was validated or deprecated.

        Args:
            version_id: The version to promote.
            stage: staging, canary or production.
            expected_current: The version id the caller believes the stage points to now;
                None to accept whatever it points to when read. Either way, a pointer that
                changes between our read and our write makes this call fail.
            reason: Recorded on the pointer and in the versions' history.

        Returns:
            The new pointer.

        Raises:
            ConcurrentUpdate: The stage does not point to ``expected_current``, or another
                promotion moved it first.
            InvalidPromotion: The version's state does not allow this stage.
            VersionNotFound: No such version.
        """
        stage = _pointer_stage(stage)
        version = self.get(version_id)
        if version.state not in PROMOTABLE[stage]:
            allowed = ", ".join(sorted(s.value for s in PROMOTABLE[stage]))
            raise InvalidPromotion(
                f"{version_id} is {version.state.value}; only a version that is {allowed} "
                f"can be promoted to {stage.value}"
            )
        reason = reason or f"promoted to {stage.value}"
        key = self._pointer_key(version.name, stage)
        tagged = self.store.read_json(key)
        pointer = None if tagged is None else StagePointer.model_validate(tagged.doc)
        current = None if pointer is None else pointer.version_id
        if expected_current is not None and current != expected_current:
            raise ConcurrentUpdate(
                f"{stage.value} of {version.name} points to {current or 'no version'}, "
                f"not {expected_current}; re-read it and decide again"
            )
        if pointer is not None and current == version_id:
            return pointer
        new = StagePointer(
            name=version.name,
            stage=stage,
            version_id=version_id,
            previous_version_id=current,
            generation=0 if pointer is None else pointer.generation + 1,
            updated_at=self._clock(),
            reason=reason,
        )
        # The commit point: of two promotions that read the same pointer, one write fails here.
        etag = None if tagged is None else tagged.etag
        self.store.cas_json(key, new.model_dump(mode="json"), etag)
        self._enter_stage(version_id, stage, reason)
        if current is not None:
            self._leave_stage(current, stage, f"replaced in {stage.value} by {version_id}")
        return new

    def rollback(
        self, stage: Stage | str = Stage.PRODUCTION, name: str | None = None, reason: str = ""
    ) -> StagePointer:
        """Point a stage back at its previous version (compare-and-set).

        The version rolled back from is archived and deprecated like a replaced one; the
        restored version starts deploying. The new pointer records no previous version, so a
        second rollback in a row is refused.

        Raises:
            NothingToRollBack: The stage records no previous version.
            InvalidPromotion: The previous version can no longer serve (e.g. archived).
            ConcurrentUpdate: Another promotion or rollback moved the pointer first.
        """
        stage = _pointer_stage(stage)
        name = check_name(name or self.model_name)
        key = self._pointer_key(name, stage)
        tagged = self.store.read_json(key)
        pointer = None if tagged is None else StagePointer.model_validate(tagged.doc)
        if tagged is None or pointer is None or pointer.previous_version_id is None:
            raise NothingToRollBack(
                f"{stage.value} of {name} records no previous version to restore"
            )
        target = self.get(pointer.previous_version_id)
        if target.state not in PROMOTABLE[stage]:
            raise InvalidPromotion(
                f"cannot roll {stage.value} of {name} back to {target.id}: it is "
                f"{target.state.value}; promote another version instead"
            )
        reason = reason or f"rolled back {stage.value} from {pointer.version_id}"
        new = StagePointer(
            name=name,
            stage=stage,
            version_id=target.id,
            previous_version_id=None,
            generation=pointer.generation + 1,
            updated_at=self._clock(),
            reason=reason,
        )
        self.store.cas_json(key, new.model_dump(mode="json"), tagged.etag)
        self._enter_stage(target.id, stage, reason)
        if pointer.version_id is not None:
            self._leave_stage(pointer.version_id, stage, reason)
        return new

    def _enter_stage(self, version_id: str, stage: Stage, reason: str) -> None:
        def change(version: ModelVersion) -> ModelVersion:
            state = version.state
            if stage in SERVING_STAGES and version.state in PROMOTABLE[stage]:
                state = entering_serving_state(version.state)
            return self._changed(version, reason, state=state, stage=stage)

        self._update(version_id, change)

    def _leave_stage(self, version_id: str, stage: Stage, reason: str) -> None:
        def change(version: ModelVersion) -> ModelVersion | None:
            if version.stage is not stage:
                return None  # it has moved on to another stage since
            state = leaving_serving_state(version.state) if stage in SERVING_STAGES else None
            return self._changed(version, reason, state=state, stage=Stage.ARCHIVED)

        self._update(version_id, change)

    # Lineage and artifacts -----------------------------------------------------------------

    def lineage(self, version_id: str) -> list[LineageRecord]:
        """The version's lineage followed by its parent's, grandparent's and so on.

        The chain ends at a version without a parent, or at a parent not in this registry
        (the last record still names it in ``lineage.parent_version_id``).
        """
        chain: list[LineageRecord] = []
        seen: set[str] = set()
        next_id: str | None = version_id
        while next_id is not None and next_id not in seen:
            seen.add(next_id)
            try:
                version = self.get(next_id)
            except VersionNotFound:
                if not chain:
                    raise
                break
            chain.append(
                LineageRecord(
                    version_id=version.id,
                    version=version.version,
                    created_at=version.created_at,
                    state=version.state,
                    lineage=version.lineage,
                )
            )
            next_id = version.lineage.parent_version_id
        return chain

    def load_artifact(self, version_id: str, name: str) -> bytes:
        """An artifact's bytes, after checking them against the recorded sha256 and size.

        Raises:
            ArtifactIntegrityError: The stored bytes are not the registered ones.
            ArtifactNotFound: The version has no such artifact, or its bytes are gone.
        """
        ref = self.get(version_id).artifact(name)
        try:
            data = self.store.get_bytes(ref.key)
        except ObjectNotFound as err:
            raise ArtifactNotFound(
                f"artifact {name!r} of {version_id} is missing from {self.store.uri} "
                f"(key {ref.key}); restore it or register the model again"
            ) from err
        actual = hashlib.sha256(data).hexdigest()
        if actual != ref.sha256 or len(data) != ref.size:
            raise ArtifactIntegrityError(version_id, name, ref.sha256, actual)
        return data

    def load_torch_state(self, version_id: str, name: str = "model.pt") -> Any:
        """A verified torch artifact (usually a state dict), loaded with ``weights_only=True``.

        Raises:
            ArtifactIntegrityError: The stored bytes are not the registered ones.
        """
        data = self.load_artifact(version_id, name)
        import torch  # heavy: imported only by the callers that load weights

        return torch.load(io.BytesIO(data), weights_only=True)


def _pointer_stage(stage: Stage | str) -> Stage:
    value = Stage(stage)
    if value not in POINTER_STAGES:
        names = ", ".join(s.value for s in POINTER_STAGES)
        raise InvalidPromotion(
            f"{value.value} is not a stage with a pointer ({names}); archive a version with "
            f"transition(version_id, 'archived', reason)"
        )
    return value
