"""Rollout records in the registry's artifact store, changed by compare-and-set.

Layout under the registry root (a folder or ``s3://bucket/prefix``, beside the registry's own
documents; see :mod:`relay.registry.records`)::

    {model}/rollouts/active.json         the live rollout, or the last one to have ended
    {model}/rollouts/archive/{id}.json   every ended rollout, never changed again
    {model}/leases/traffic.json          the traffic lease (relay.rollout.lease)

Every change of a live rollout is one compare-and-set write of ``active.json`` (the store's
sha256 or S3 ETag, as for the stage pointers), so a record is never half-written, two writers
cannot both win, and at most one rollout is live: a new one replaces ``active.json`` only
while the rollout there has ended. An ended rollout is copied to the archive when it ends; the
next start copies it again (the same bytes), so a crash in between loses nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relay.registry.errors import ConcurrentUpdate
from relay.registry.records import UPDATE_ATTEMPTS
from relay.registry.store import ArtifactStore, Tagged, encode_json
from relay.registry.versions import check_name
from relay.rollout.lease import registry_store
from relay.rollout.record import Rollout, RolloutError
from relay.settings import Settings, get_settings


class RolloutNotFound(RolloutError):
    """No rollout has this id."""


class RolloutActive(RolloutError):
    """A rollout is live already; it must end (or be aborted) before another starts."""


@dataclass(frozen=True)
class StoredRollout:
    """A rollout as read, with the tag its next compare-and-set write must name."""

    rollout: Rollout
    etag: str


class RolloutStore:
    """Reads and writes one model's rollout records."""

    def __init__(
        self, settings: Settings | None = None, *, store: ArtifactStore | None = None
    ) -> None:
        """The rollouts of ``settings.registry.model_name``, beside its registry documents.

        Args:
            settings: defaults to :func:`get_settings`.
            store: overrides the registry store named by ``settings.registry.uri``.
        """
        self.settings = settings or get_settings()
        self.store = registry_store(self.settings, store)
        self.model_name = check_name(self.settings.registry.model_name)
        self.active_key = f"{self.model_name}/rollouts/active.json"
        self.archive_prefix = f"{self.model_name}/rollouts/archive/"

    def _archive_key(self, rollout_id: str) -> str:
        return f"{self.archive_prefix}{rollout_id}.json"

    # Reads ---------------------------------------------------------------------------------

    def _active(self) -> StoredRollout | None:
        return _stored(self.store.read_json(self.active_key))

    def current(self) -> StoredRollout | None:
        """The live rollout (running or holding), or None when none is."""
        active = self._active()
        return None if active is None or active.rollout.state.final else active

    def latest(self) -> StoredRollout | None:
        """The live rollout, or else the last one to have ended; None before the first."""
        return self._active()

    def get(self, rollout_id: str) -> StoredRollout:
        """A rollout by id, live or ended.

        Raises:
            RolloutNotFound: no rollout has that id.
        """
        active = self._active()
        if active is not None and active.rollout.id == rollout_id:
            return active
        archived = _stored(self.store.read_json(self._archive_key(rollout_id)))
        if archived is None:
            raise RolloutNotFound(
                f"no rollout {rollout_id} for {self.model_name} in {self.store.uri}; "
                "`relay rollout history` lists them"
            )
        return archived

    def history(self) -> list[Rollout]:
        """Every rollout, newest first."""
        found: dict[str, Rollout] = {}
        for key in self.store.list_keys(self.archive_prefix):
            stored = _stored(self.store.read_json(key))
            if stored is not None:
                found[stored.rollout.id] = stored.rollout
        active = self._active()
        if active is not None:
            found[active.rollout.id] = active.rollout
        return sorted(found.values(), key=lambda r: (r.created_at, r.id), reverse=True)

    # Writes --------------------------------------------------------------------------------

    def create(self, rollout: Rollout) -> StoredRollout:
        """Store a new live rollout, which becomes the current one.

        Raises:
            RolloutActive: another rollout is live.
            ConcurrentUpdate: another writer changed the active rollout meanwhile.
            ValueError: ``rollout`` has ended already.
        """
        if rollout.state.final:
            raise ValueError(f"rollout {rollout.id} has ended ({rollout.state}); nothing to start")
        active = self._active()
        if active is not None and not active.rollout.state.final:
            live = active.rollout
            raise RolloutActive(
                f"rollout {live.id} ({live.candidate} against {live.stable}) is {live.state} "
                f"at step {live.step}; abort it (`relay rollout abort {live.id}`) or let it end "
                "before starting another"
            )
        if active is not None:
            self._archive(active.rollout)
        etag = self.store.cas_json(self.active_key, _doc(rollout), _tag(active))
        return StoredRollout(rollout, etag)

    def put(self, rollout: Rollout, expected_tag: str) -> str:
        """Write a changed rollout only if the stored one still has ``expected_tag``.

        Args:
            rollout: the rollout as changed (by the functions of :mod:`relay.rollout.record`).
            expected_tag: the tag of the :class:`StoredRollout` it was changed from.

        Returns:
            The new tag.

        Raises:
            ConcurrentUpdate: the rollout changed (or another took its place) since it was read.
        """
        etag = self.store.cas_json(self.active_key, _doc(rollout), expected_tag)
        if rollout.state.final:
            self._archive(rollout)
        return etag

    def update(self, rollout_id: str, change: Callable[[Rollout], Rollout | None]) -> Rollout:
        """Apply ``change`` to the live rollout ``rollout_id`` and write it, retrying races.

        ``change`` is re-applied to a fresh read when another writer got in first, so it must
        decide from the record it is given (the functions of :mod:`relay.rollout.record` do,
        and raise on an illegal move). A None from ``change`` writes nothing.

        Raises:
            RolloutNotFound: ``rollout_id`` is not the active rollout.
            ConcurrentUpdate: it kept changing for ``UPDATE_ATTEMPTS`` attempts.
        """
        for _ in range(UPDATE_ATTEMPTS):
            active = self._active()
            if active is None or active.rollout.id != rollout_id:
                raise RolloutNotFound(
                    f"rollout {rollout_id} is not the active rollout of {self.model_name}; "
                    "an ended rollout does not change"
                )
            changed = change(active.rollout)
            if changed is None:
                return active.rollout
            try:
                self.put(changed, active.etag)
            except ConcurrentUpdate:
                continue
            return changed
        raise ConcurrentUpdate(
            f"rollout {rollout_id} changed {UPDATE_ATTEMPTS} times while we updated it; try again"
        )

    def _archive(self, rollout: Rollout) -> None:
        # An ended record never changes, so rewriting the same bytes is harmless.
        self.store.put_bytes(self._archive_key(rollout.id), encode_json(_doc(rollout)))


def _doc(rollout: Rollout) -> dict[str, Any]:
    return rollout.model_dump(mode="json")


def _stored(tagged: Tagged | None) -> StoredRollout | None:
    return (
        None if tagged is None else StoredRollout(Rollout.model_validate(tagged.doc), tagged.etag)
    )


def _tag(stored: StoredRollout | None) -> str | None:
    return None if stored is None else stored.etag
