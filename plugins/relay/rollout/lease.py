"""One lease for every traffic change: who may move Serve's traffic now, and until when.

Like a Kubernetes ``coordination.k8s.io/Lease``: a small document that one owner holds at a time
and renews before it lapses; a holder that dies simply stops renewing, and after
``settings.rollout.lease_ttl_s`` anyone may take it. The rollout reconciler, restores and rollbacks
(CLI, ``eta_rollback``, monitoring) and the ``relay serve`` commands all take this one lease
before they touch traffic, so two of them never interleave their writes.

The decision is pure (:func:`take_lease`, :func:`drop_lease`); :class:`TrafficLease` keeps the
lease in the registry's artifact store under ``{model}/leases/traffic.json`` and changes it by
compare-and-set, so local disk and S3 both work and two racing acquirers cannot both win.
Owners are plain strings: ``rollout:<id>`` (see :func:`rollout_owner`) or
``cli:<user>@<host>:<pid>`` (see :func:`process_owner`).
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field

from relay.clock import as_utc, utcnow
from relay.errors import RelayError
from relay.registry.backends import registry_store
from relay.registry.errors import ConcurrentUpdate
from relay.registry.records import UPDATE_ATTEMPTS
from relay.registry.store import ArtifactStore
from relay.registry.versions import check_name
from relay.settings import Settings, get_settings

_L = TypeVar("_L", bound="Lease | None")


class LeaseHeld(RelayError):
    """Another owner holds the lease and it has not lapsed."""

    def __init__(self, holder: str, expires_at: dt.datetime, wanted_by: str) -> None:
        super().__init__(
            f"{wanted_by} cannot take the lease: {holder} holds it until "
            f"{expires_at.isoformat()}. Wait for it to finish or lapse, or abort what it runs "
            f"(`relay rollout abort` for a rollout)."
        )
        self.holder, self.expires_at, self.wanted_by = holder, expires_at, wanted_by


class LeaseLost(RelayError):
    """The owner renewing or using the lease no longer holds it."""


class Lease(BaseModel):
    """Who holds the lease, since when, and until when unless renewed.

    Attributes:
        owner: the holder, e.g. ``rollout:ro-20261121-140200-1a2b3c``.
        acquired_at: when this owner took it (kept across renewals).
        expires_at: when it lapses unless renewed.
    """

    model_config = ConfigDict(frozen=True)

    owner: str = Field(min_length=1)
    acquired_at: dt.datetime
    expires_at: dt.datetime

    def live(self, now: dt.datetime) -> bool:
        """Whether the lease still holds at ``now``."""
        return as_utc(now) < as_utc(self.expires_at)


def take_lease(current: Lease | None, owner: str, now: dt.datetime, ttl_s: float) -> Lease:
    """The lease after ``owner`` asks for it at ``now``: taken, or renewed if already theirs.

    Args:
        current: the lease as stored, None if nobody ever held it or it was released.
        owner: who asks.
        now: the time of asking.
        ttl_s: how long the lease lasts from ``now``.

    Returns:
        The lease held by ``owner`` until ``now + ttl_s``.

    Raises:
        LeaseHeld: another owner holds a lease that has not lapsed at ``now``.
        ValueError: ``ttl_s`` is not positive.
    """
    if ttl_s <= 0:
        raise ValueError(f"a lease lasts a positive time, got ttl_s={ttl_s}")
    now = as_utc(now)
    if current is not None and current.live(now) and current.owner != owner:
        raise LeaseHeld(current.owner, current.expires_at, owner)
    renewing = current is not None and current.owner == owner and current.live(now)
    acquired = current.acquired_at if renewing and current is not None else now
    return Lease(owner=owner, acquired_at=acquired, expires_at=now + dt.timedelta(seconds=ttl_s))


def drop_lease(current: Lease | None, owner: str) -> Lease | None:
    """The lease after ``owner`` releases it: gone if theirs, unchanged if someone else's."""
    return None if current is not None and current.owner == owner else current


def rollout_owner(rollout_id: str) -> str:
    """The lease owner name of a rollout's reconciler."""
    return f"rollout:{rollout_id}"


def process_owner(kind: str = "cli") -> str:
    """The lease owner name of this process: ``<kind>:<user>@<host>:<pid>``."""
    return f"{kind}:{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}"


class TrafficLease:
    """The traffic lease in the registry's artifact store, changed by compare-and-set."""

    def __init__(
        self,
        store: ArtifactStore,
        model_name: str,
        ttl_s: float,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        """The lease of one model's traffic.

        Args:
            store: where it is kept (the registry's artifact store).
            model_name: the model whose traffic it guards.
            ttl_s: how long it lasts after each take or renewal.
            clock: the current UTC time (tests pin it).
        """
        self.store = store
        self.key = f"{check_name(model_name)}/leases/traffic.json"
        self.ttl_s = ttl_s
        self._clock = clock

    @classmethod
    def open(
        cls, settings: Settings | None = None, *, clock: Callable[[], dt.datetime] = utcnow
    ) -> TrafficLease:
        """The lease of ``settings.registry.model_name`` in the registry's store, with
        ``settings.rollout.lease_ttl_s`` (settings default to :func:`get_settings`)."""
        s = settings or get_settings()
        return cls(registry_store(s), s.registry.model_name, s.rollout.lease_ttl_s, clock=clock)

    def holder(self) -> Lease | None:
        """The lease if someone holds it now, else None."""
        lease, _ = self._read()
        return lease if lease is not None and lease.live(self._clock()) else None

    def acquire(self, owner: str) -> Lease:
        """Take the lease for ``owner``, or renew it if ``owner`` already holds it.

        Raises:
            LeaseHeld: another owner holds it (also when it took it while we were asking).
        """
        return self._change(lambda lease: take_lease(lease, owner, self._clock(), self.ttl_s))

    def renew(self, owner: str) -> Lease:
        """Extend ``owner``'s lease by the TTL from now.

        Raises:
            LeaseLost: ``owner`` does not hold it (released, or taken by another after lapsing).
        """

        def extend(lease: Lease | None) -> Lease:
            if lease is None or lease.owner != owner:
                held = f"{lease.owner} holds it" if lease else "nobody holds it"
                raise LeaseLost(f"{owner} cannot renew the traffic lease: {held}")
            return take_lease(lease, owner, self._clock(), self.ttl_s)

        return self._change(extend)

    def release(self, owner: str) -> bool:
        """Give the lease up; returns whether ``owner`` held it (else nothing changes)."""
        released = False

        def drop(lease: Lease | None) -> Lease | None:
            nonlocal released
            released = lease is not None and lease.owner == owner
            return drop_lease(lease, owner)

        self._change(drop)
        return released

    def acquire_within(self, owner: str, wait_s: float) -> Lease:
        """:meth:`acquire`, waiting up to ``wait_s`` for another holder to let go (a
        controller's tick holds it for seconds; a person's restore should not fail on that).

        Raises:
            LeaseHeld: still held by another owner after ``wait_s``.
        """
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self.acquire(owner)
            except LeaseHeld:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(0.2)  # polling a remote lease, bounded by the deadline

    @contextmanager
    def held(self, owner: str, wait_s: float = 0.0) -> Iterator[Lease]:
        """Hold the lease for the ``with`` block and release it afterwards, even on error;
        wait up to ``wait_s`` for another holder to let go first."""
        lease = self.acquire_within(owner, wait_s)
        try:
            yield lease
        finally:
            self.release(owner)

    def _read(self) -> tuple[Lease | None, str | None]:
        tagged = self.store.read_json(self.key)
        if tagged is None:
            return None, None
        raw = tagged.doc.get("lease")
        return (None if raw is None else Lease.model_validate(raw)), tagged.etag

    def _change(self, decide: Callable[[Lease | None], _L]) -> _L:
        # Re-read and re-decide when another writer got in between: the loser of a race to
        # take a free lease then sees the winner's lease and gets LeaseHeld naming it.
        for _ in range(UPDATE_ATTEMPTS):
            current, etag = self._read()
            changed = decide(current)
            if changed is current:
                return changed  # nothing to write (a release by someone not holding it)
            doc = {"lease": None if changed is None else changed.model_dump(mode="json")}
            try:
                self.store.cas_json(self.key, doc, etag)
            except ConcurrentUpdate:
                continue
            return changed
        raise ConcurrentUpdate(
            f"the traffic lease {self.key} changed {UPDATE_ATTEMPTS} times while we updated it; "
            "try again"
        )
