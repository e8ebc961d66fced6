"""Rollout records in the registry's artifact store, changed by compare-and-set.

Layout under the registry root (a folder or ``s3://bucket/prefix``, beside the registry's own
documents; see :mod:`relay.registry.records` and :mod:`relay.rollout.record_store`)::

    {model}/rollouts/active.json         the live rollout, or the last one to have ended
    {model}/rollouts/archive/{id}.json   every ended rollout, never changed again
    {model}/leases/traffic.json          the traffic lease (relay.rollout.lease)

At most one rollout is live; every change is one compare-and-set write of ``active.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.rollout.record import Rollout, RolloutError
from relay.rollout.record_store import RecordStore, Stored


class RolloutNotFound(RolloutError):
    """No rollout has this id."""


class RolloutActive(RolloutError):
    """A rollout is live already; it must end (or be aborted) before another starts."""


@dataclass(frozen=True)
class StoredRollout(Stored[Rollout]):
    """A rollout as read, with the tag its next compare-and-set write must name."""

    @property
    def rollout(self) -> Rollout:
        return self.record


class RolloutStore(RecordStore[Rollout, StoredRollout]):
    """Reads and writes one model's rollout records."""

    folder = "rollouts"
    kind = "rollout"
    record_type = Rollout
    stored_type = StoredRollout
    not_found = RolloutNotFound
    list_hint = "`relay rollout history` lists them"
    active_error = RolloutActive

    def live_message(self, live: Rollout) -> str:
        return (
            f"rollout {live.id} ({live.candidate} against {live.stable}) is {live.state} "
            f"at step {live.step}; abort it (`relay rollout abort {live.id}`) or let it end "
            "before starting another"
        )
