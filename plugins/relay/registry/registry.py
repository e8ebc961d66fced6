"""The model registry: registers versions and moves them through their lifecycle and stages.

Registering writes the blobs first and the metadata last with a create-only write, so a crash
at any point leaves either no version or a whole one; at worst, orphaned blobs nobody refers to.
The metadata key is the semantic version, so two registrations that compute the same next
version cannot both succeed. Every later change to a document is a compare-and-set write.

A stage pointer is the source of truth for which version takes a stage's traffic. Promotion
moves the pointer first (the commit point) and then records the change on the versions; a crash
between the two leaves the versions' ``stage`` and ``state`` fields behind the pointer.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from relay.registry import moves
from relay.registry.errors import (
    ArtifactIntegrityError,
    ArtifactNotFound,
    ConcurrentUpdate,
    InvalidPromotion,
    NothingToRollBack,
    ObjectNotFound,
    VersionConflict,
)
from relay.registry.models import (
    ArtifactRef,
    HistoryEntry,
    Lineage,
    ModelVersion,
    ServingRequirements,
    StagePointer,
    TrainingInfo,
)
from relay.registry.records import UPDATE_ATTEMPTS, RegistryRecords
from relay.registry.states import INITIAL_STATES, ModelState, Stage
from relay.registry.store import Tagged
from relay.registry.versions import BumpKind, SemVer, check_name, make_version_id, next_version


class Registry(RegistryRecords):
    """Registers model versions and moves them through their lifecycle and stages."""

    # Registering ---------------------------------------------------------------------------

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
        key: str | None = None,
    ) -> ModelVersion:
        """Store a model's artifacts and register them as its next version.

        With ``key`` the registration is idempotent: a version registered with the same key is
        returned as it is now (whatever its state), and of any number of concurrent
        registrations with one key exactly one version results (see :meth:`_register_once`).

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
            key: An idempotency key (e.g. :func:`registration_key` of the training run and
                the model's sha256); None: always a new version.

        Returns:
            The registered version, or the one already registered with ``key``.

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
        if key is not None:
            check_name(key, "registration key")
        if lineage.parent_version_id is not None:
            self.get(lineage.parent_version_id)
        if key is not None:
            claimed = self.store.read_json(self._claim_key(name, key))
            if claimed is not None:  # registered (or being registered) already: no new blobs
                return self._register_once(name, key, bump, claimed)
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
            registration_key=key,
        )
        if key is not None:
            return self._register_once(name, key, bump, record)
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

    @staticmethod
    def _claim_key(name: str, key: str) -> str:
        return f"{name}/registrations/{key}.json"

    def _register_once(
        self, name: str, key: str, bump: BumpKind, first: ModelVersion | Tagged
    ) -> ModelVersion:
        # The claim under `registrations/{key}` is an intent record: the whole version document,
        # written create-only before the version itself. Whoever finds a claim completes it by
        # writing that document at its version, create-only; every completer writes the same
        # bytes, so one succeeds and the others find it. A claimed version number taken meanwhile
        # by another registration (not ours: no document of ours is ever written at two numbers)
        # is renumbered with compare-and-set on the claim, and everyone follows the claim.
        claim_key = self._claim_key(name, key)
        claim = first if isinstance(first, Tagged) else None
        for _ in range(UPDATE_ATTEMPTS):
            if claim is None:
                claim = self.store.read_json(claim_key)
            if claim is None and isinstance(first, ModelVersion):
                doc = first.model_dump(mode="json")
                try:
                    claim = Tagged(doc, self.store.cas_json(claim_key, doc, None))
                except ConcurrentUpdate:
                    continue  # another registration with this key claimed first: follow it
            if claim is None:  # pragma: no cover, a claim never disappears
                raise VersionConflict(f"the claim {claim_key} vanished; register again")
            intent = ModelVersion.model_validate(claim.doc)
            version_key = self._version_key(name, SemVer.parse(intent.version))
            found = self.store.read_json(version_key)
            if found is not None and found.doc.get("registration_key") == key:
                return ModelVersion.model_validate(found.doc)
            if found is not None:  # the number went to another registration: renumber
                claim = self._renumber(claim_key, claim, intent, bump)
                continue
            try:
                self.store.cas_json(version_key, claim.doc, None)
            except ConcurrentUpdate:
                claim = None  # ours by another completer, or someone else's: look again
                continue
            return intent
        raise VersionConflict(
            f"registering {name} with key {key} met {UPDATE_ATTEMPTS} concurrent "
            f"registrations; register again (the same key gives the same version)"
        )

    def _renumber(
        self, claim_key: str, claim: Tagged, intent: ModelVersion, bump: BumpKind
    ) -> Tagged | None:
        version = self.next_version(bump, intent.name)
        moved = intent.model_copy(
            update={
                "version": str(version),
                "id": make_version_id(intent.name, version, intent.created_at),
            }
        ).model_dump(mode="json")
        try:
            return Tagged(moved, self.store.cas_json(claim_key, moved, claim.etag))
        except ConcurrentUpdate:
            return None  # another completer renumbered it first: read theirs

    def _put_artifact(self, model: str, name: str, data: Path | bytes) -> ArtifactRef:
        # Whole-file reads: model artifacts here are megabytes, not gigabytes.
        payload = data if isinstance(data, bytes) else Path(data).read_bytes()
        digest = hashlib.sha256(payload).hexdigest()
        key = f"{model}/blobs/{digest}"
        self.store.put_bytes(key, payload)
        return ArtifactRef(name=name, key=key, sha256=digest, size=len(payload))

    # Lifecycle -----------------------------------------------------------------------------

    def transition(
        self,
        version_id: str,
        to_state: ModelState | str,
        reason: str,
        *,
        rolled_back: bool = False,
    ) -> ModelVersion:
        """Move a version to another lifecycle state and record why.

        Archiving also puts the version in the archived stage. ``rolled_back`` marks the version
        as rolled back in the same write (a rollout degrading the candidate it rolled back).

        Raises:
            IllegalTransition: The transition table does not allow it.
            VersionNotFound: No such version.
        """
        target = ModelState(to_state)
        return self._update(
            version_id,
            lambda v: moves.transitioned(v, target, reason, self._clock(), rolled_back),
        )

    # Stages --------------------------------------------------------------------------------

    def promote(
        self,
        version_id: str,
        stage: Stage | str,
        expected_current: str | None = None,
        reason: str = "",
        *,
        rolling_back: bool = False,
        allow_rolled_back: bool = False,
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
            rolling_back: The move is a rollback (a restore): the displaced version is marked
                rolled back, and no automatic move puts it on traffic again.
            allow_rolled_back: A person's explicit choice to promote a rolled-back version.

        Returns:
            The new pointer.

        Raises:
            ConcurrentUpdate: The stage does not point to ``expected_current``, or another
                promotion moved it first.
            InvalidPromotion: The version's state does not allow this stage.
            RolledBackVersion: The version was rolled back and ``allow_rolled_back`` is False.
            VersionNotFound: No such version.
        """
        stage = moves.pointer_stage(stage)
        version = self.get(version_id)
        read = self._read_pointer(version.name, stage)
        pointer, etag = (None, None) if read is None else read
        reason = reason or f"promoted to {stage.value}"
        new = moves.promotion(
            version, stage, pointer, expected_current, reason, self._clock(), allow_rolled_back
        )
        if new is pointer:  # the stage points to the version already: no move to write
            if allow_rolled_back and version.barred:
                self._enter_stage(version_id, stage, reason, forced=True)  # clears the mark
            return new
        # The commit point: of two promotions that read the same pointer, one write fails here.
        self.store.cas_json(
            self._pointer_key(version.name, stage), new.model_dump(mode="json"), etag
        )
        self._enter_stage(version_id, stage, reason, forced=allow_rolled_back)
        if new.previous_version_id is not None:
            why = f"replaced in {stage.value} by {version_id}"
            self._leave_stage(
                new.previous_version_id,
                stage,
                f"rolled back: {why}: {reason}" if rolling_back else why,
                rolled_back=rolling_back,
            )
        return new

    def rollback(
        self,
        stage: Stage | str = Stage.PRODUCTION,
        name: str | None = None,
        reason: str = "",
        *,
        allow_rolled_back: bool = False,
    ) -> StagePointer:
        """Point a stage back at its previous version (compare-and-set).

        The version rolled back from is archived and deprecated like a replaced one, and marked
        rolled back; the restored version starts deploying. The new pointer records no previous
        version, so a second rollback in a row is refused.

        Raises:
            NothingToRollBack: The stage records no previous version.
            InvalidPromotion: The previous version can no longer serve (e.g. archived).
            RolledBackVersion: The previous version was rolled back itself (a person may
                ``allow_rolled_back``).
            ConcurrentUpdate: Another promotion or rollback moved the pointer first.
        """
        stage = moves.pointer_stage(stage)
        name = check_name(name or self.model_name)
        read = self._read_pointer(name, stage)
        if read is None or read[0].previous_version_id is None:
            raise NothingToRollBack(
                f"{stage.value} of {name} records no previous version to restore"
            )
        pointer, etag = read
        target = self.get(read[0].previous_version_id)
        reason = reason or f"rolled back {stage.value} from {pointer.version_id}"
        new = moves.rolled_back(
            pointer, target, name, stage, reason, self._clock(), allow_rolled_back
        )
        self.store.cas_json(self._pointer_key(name, stage), new.model_dump(mode="json"), etag)
        self._enter_stage(target.id, stage, reason, forced=allow_rolled_back)
        if pointer.version_id is not None:
            self._leave_stage(pointer.version_id, stage, reason, rolled_back=True)
        return new

    def _enter_stage(
        self, version_id: str, stage: Stage, reason: str, forced: bool = False
    ) -> None:
        self._update(version_id, lambda v: moves.entered(v, stage, reason, self._clock(), forced))

    def _leave_stage(
        self, version_id: str, stage: Stage, reason: str, rolled_back: bool = False
    ) -> None:
        self._update(version_id, lambda v: moves.left(v, stage, reason, self._clock(), rolled_back))

    # Artifacts -----------------------------------------------------------------------------

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
