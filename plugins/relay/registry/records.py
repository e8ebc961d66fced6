"""The registry's documents: where they live, how they are read, how a version's is updated.

Layout under the registry root (a folder or ``s3://bucket/prefix``)::

    {model}/blobs/{sha256}           artifact bytes, content-addressed
    {model}/versions/{semver}.json   a version's metadata; its presence means "registered"
    {model}/stages/{stage}.json      staging / canary / production pointer
    {model}/registrations/{key}.json an idempotent registration's claim (the version it takes)

:class:`RegistryRecords` answers every question about what is registered (versions, stage
pointers, lineage); :class:`~relay.registry.registry.Registry` adds the writes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from relay.clock import utcnow
from relay.registry.backends import open_store
from relay.registry.errors import ConcurrentUpdate, InvalidVersion, VersionNotFound
from relay.registry.models import LineageRecord, ModelVersion, StagePointer
from relay.registry.moves import pointer_stage
from relay.registry.states import Stage
from relay.registry.store import ArtifactStore
from relay.registry.versions import SemVer, check_name, parse_version_id
from relay.settings import Settings, get_settings

UPDATE_ATTEMPTS = 5
"""How often a metadata update is re-read and re-applied when a concurrent write beats it."""


class RegistryRecords:
    """Reads a registry's versions and stage pointers, and updates versions with compare-and-set."""

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
        self._clock = clock or utcnow

    # Keys ----------------------------------------------------------------------------------

    @staticmethod
    def _version_key(name: str, version: SemVer) -> str:
        return f"{name}/versions/{version}.json"

    @staticmethod
    def _pointer_key(name: str, stage: Stage) -> str:
        return f"{name}/stages/{stage.value}.json"

    # Versions ------------------------------------------------------------------------------

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

    def last_rollback_at(self, name: str | None = None) -> dt.datetime | None:
        """When the model was last rolled back (its versions' newest rollback mark), or None.

        Monitoring's cooldown reads it: any rollback counts (a restore, the guard, a rollout).
        """
        model = check_name(name or self.model_name)
        marks = [v.rolled_back.at for v in self.list_versions(model) if v.rolled_back]
        return max(marks, default=None)

    def _model_names(self) -> list[str]:
        return sorted({key.split("/")[0] for key in self.store.list_keys() if "/versions/" in key})

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

    # Stages --------------------------------------------------------------------------------

    def _read_pointer(self, name: str, stage: Stage) -> tuple[StagePointer, str] | None:
        tagged = self.store.read_json(self._pointer_key(name, stage))
        return None if tagged is None else (StagePointer.model_validate(tagged.doc), tagged.etag)

    def stage_pointer(self, stage: Stage | str, name: str | None = None) -> StagePointer | None:
        """The pointer of a staging / canary / production stage, or None if never set."""
        stage = pointer_stage(stage)
        read = self._read_pointer(check_name(name or self.model_name), stage)
        return None if read is None else read[0]

    def stage_version(self, stage: Stage | str, name: str | None = None) -> ModelVersion | None:
        """The version a stage points to, or None when it points to none."""
        pointer = self.stage_pointer(stage, name)
        if pointer is None or pointer.version_id is None:
            return None
        return self.get(pointer.version_id)

    # Lineage -------------------------------------------------------------------------------

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
