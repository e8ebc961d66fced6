"""One live record and its archive in the registry's store, changed by compare-and-set.

Rollouts (:mod:`relay.rollout.store`) and experiments (:mod:`relay.rollout.experiment_record`)
keep their records the same way, under the registry root (a folder or ``s3://bucket/prefix``)::

    {model}/{folder}/active.json         the live record, or the last one to have ended
    {model}/{folder}/archive/{id}.json   every ended record, never changed again

Every change of a live record is one compare-and-set write of ``active.json`` (the store's
sha256 or S3 ETag, as for the stage pointers), so a record is never half-written, two writers
cannot both win, and at most one record is live: a new one replaces ``active.json`` only while
the one there has ended. An ended record is copied to the archive when it ends; the next start
copies it again (the same bytes), so a crash in between loses nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from relay.registry.backends import registry_store
from relay.registry.errors import ConcurrentUpdate
from relay.registry.records import UPDATE_ATTEMPTS
from relay.registry.store import ArtifactStore, Tagged, encode_json
from relay.registry.versions import check_name
from relay.settings import Settings, get_settings

R = TypeVar("R", bound=BaseModel)


@dataclass(frozen=True)
class Stored(Generic[R]):
    """A record as read, with the tag its next compare-and-set write must name."""

    record: R
    etag: str


S = TypeVar("S", bound=Stored[Any])


class RecordStore(Generic[R, S]):
    """Reads and writes one model's records of one kind (see the module docstring).

    A subclass names its ``folder``, ``kind`` (as messages say it), the record model, the
    stored type, its errors and how a live record reads in the refusal to start another.
    """

    folder: ClassVar[str]
    kind: ClassVar[str]
    record_type: type[R]
    stored_type: type[S]
    not_found: ClassVar[type[Exception]]
    active_error: ClassVar[type[Exception]]
    list_hint: ClassVar[str]  # where a person finds the ids, for the not-found message

    def __init__(
        self, settings: Settings | None = None, *, store: ArtifactStore | None = None
    ) -> None:
        """The records of ``settings.registry.model_name``, beside its registry documents.

        Args:
            settings: defaults to :func:`get_settings`.
            store: overrides the registry store named by ``settings.registry.uri``.
        """
        self.settings = settings or get_settings()
        self.store = registry_store(self.settings, store)
        self.model_name = check_name(self.settings.registry.model_name)
        self.active_key = f"{self.model_name}/{self.folder}/active.json"
        self.archive_prefix = f"{self.model_name}/{self.folder}/archive/"

    def live_message(self, live: R) -> str:
        """Why another record cannot start while ``live`` is live (what to do about it)."""
        raise NotImplementedError

    # Reads ---------------------------------------------------------------------------------

    def latest(self) -> S | None:
        """The live record, or else the last one to have ended; None before the first."""
        return self._stored(self.store.read_json(self.active_key))

    def current(self) -> S | None:
        """The live record, or None when none is."""
        active = self.latest()
        return None if active is None or _ended(active.record) else active

    def get(self, record_id: str) -> S:
        """A record by id, live or ended.

        Raises:
            ``not_found``: no record has that id.
        """
        active = self.latest()
        if active is not None and _id(active.record) == record_id:
            return active
        archived = self._stored(self.store.read_json(self._archive_key(record_id)))
        if archived is None:
            raise self.not_found(
                f"no {self.kind} {record_id} for {self.model_name} in {self.store.uri}; "
                f"{self.list_hint}"
            )
        return archived

    def history(self) -> list[R]:
        """Every record, newest first."""
        found: dict[str, R] = {}
        for key in self.store.list_keys(self.archive_prefix):
            stored = self._stored(self.store.read_json(key))
            if stored is not None:
                found[_id(stored.record)] = stored.record
        active = self.latest()
        if active is not None:
            found[_id(active.record)] = active.record
        return sorted(found.values(), key=_newest, reverse=True)

    # Writes --------------------------------------------------------------------------------

    def create(self, record: R) -> S:
        """Store a new live record, which becomes the current one.

        Raises:
            ``active_error``: another record is live.
            ConcurrentUpdate: another writer changed the active record meanwhile.
            ValueError: ``record`` has ended already.
        """
        if _ended(record):
            raise ValueError(f"{self.kind} {_id(record)} has ended; nothing to start")
        active = self.latest()
        if active is not None and not _ended(active.record):
            raise self.active_error(self.live_message(active.record))
        if active is not None:
            self._archive(active.record)
        etag = self.store.cas_json(self.active_key, _doc(record), _tag(active))
        return self.stored_type(record, etag)

    def put(self, record: R, expected_tag: str) -> str:
        """Write a changed record only if the stored one still has ``expected_tag``.

        Returns:
            The new tag.

        Raises:
            ConcurrentUpdate: the record changed (or another took its place) since it was read.
        """
        etag = self.store.cas_json(self.active_key, _doc(record), expected_tag)
        if _ended(record):
            self._archive(record)
        return etag

    def update(self, record_id: str, change: Callable[[R], R | None]) -> R:
        """Apply ``change`` to the live record ``record_id`` and write it, retrying races.

        ``change`` is re-applied to a fresh read when another writer got in first, so it must
        decide from the record it is given, which may have ended meanwhile (and raise on an
        illegal move, or return None). A None from ``change`` writes nothing.

        Raises:
            ``not_found``: ``record_id`` is not the active record (live or just ended).
            ConcurrentUpdate: it kept changing for ``UPDATE_ATTEMPTS`` attempts.
        """
        for _ in range(UPDATE_ATTEMPTS):
            active = self.latest()
            if active is None or _id(active.record) != record_id:
                raise self.not_found(
                    f"{self.kind} {record_id} is not the live {self.kind} of "
                    f"{self.model_name}; an ended {self.kind} does not change"
                )
            changed = change(active.record)
            if changed is None:
                return active.record
            try:
                self.put(changed, active.etag)
            except ConcurrentUpdate:
                continue
            return changed
        raise ConcurrentUpdate(
            f"{self.kind} {record_id} changed {UPDATE_ATTEMPTS} times while we updated it; "
            "try again"
        )

    def _archive_key(self, record_id: str) -> str:
        return f"{self.archive_prefix}{record_id}.json"

    def _archive(self, record: R) -> None:
        # An ended record never changes, so rewriting the same bytes is harmless.
        self.store.put_bytes(self._archive_key(_id(record)), encode_json(_doc(record)))

    def _stored(self, tagged: Tagged | None) -> S | None:
        if tagged is None:
            return None
        return self.stored_type(self.record_type.model_validate(tagged.doc), tagged.etag)


def _id(record: Any) -> str:
    return str(record.id)


def _ended(record: Any) -> bool:
    return bool(record.state.final)


def _newest(record: Any) -> tuple[dt.datetime, str]:
    return (record.created_at, str(record.id))


def _doc(record: BaseModel) -> dict[str, Any]:
    return record.model_dump(mode="json")


def _tag(stored: Stored[Any] | None) -> str | None:
    return None if stored is None else stored.etag
