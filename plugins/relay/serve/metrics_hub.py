"""The cluster's live serving counters: every router replica's, added in one named Ray actor.

Each router replica counts what it serves in its own :class:`~relay.serve.metrics.LiveMetrics`.
Behind Serve's proxy a replica sees only part of the traffic, so a canary step judged on one
replica's counters would be judged on a sample nobody chose. Every replica therefore pushes its
cumulative snapshot to the hub (:class:`HubClient`, every ``RELAY_SERVING__METRICS_PUSH_S``), and
the hub answers the sum per version (:class:`Tally`):

* Snapshots are cumulative and replace the replica's previous one, and each carries a sequence
  number: a repeated, retried or late push never counts anything twice.
* A replica that died keeps its last snapshot, so totals never go backwards when Serve replaces
  or scales down a router replica.
* A replica's counters of a version that restarted (their ``since`` moved, or the version left
  its snapshot: :meth:`LiveMetrics.reset`) are retired into a sum that stays.
* Every time is wall-clock (``time.time``): windows of different processes are added. The sum
  runs from when the hub started counting (``since``) until it is read (``until``). A hub that
  is lost and created again starts a new ``since``, which
  :func:`relay.rollout.step_windows.step_window` treats as counters that restarted.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import ray

from relay.serve.metrics import LiveMetrics
from relay.serve.traffic_state import TRAFFIC_NAMESPACE, named_actor
from relay.serve.windows import VersionWindow, total

log = logging.getLogger(__name__)

HUB_ACTOR = "relay-eta-metrics"

CLUSTER, REPLICA = "cluster", "replica"
"""The ``scope`` of a metrics answer: every replica's counters added, or one replica's own
(the hub could not be reached)."""


@dataclass(frozen=True)
class ClusterWindows:
    """Live windows per version and where they come from.

    Attributes:
        windows: version → its window.
        replicas: version → how many router replicas' counters were added into it.
        scope: :data:`CLUSTER` (from the hub) or :data:`REPLICA` (one replica's own).
    """

    windows: dict[str, VersionWindow]
    replicas: dict[str, int] = field(default_factory=dict)
    scope: str = CLUSTER

    def to_json(self) -> dict[str, dict[str, Any]]:
        """Version → ``VersionWindow.to_dict()`` plus ``replicas`` and ``scope`` (keys that
        :func:`relay.serve.windows.window_from_dict` ignores): what ``GET /v1/metrics`` answers."""
        return {
            v: {**w.to_dict(), "replicas": self.replicas.get(v, 0), "scope": self.scope}
            for v, w in self.windows.items()
        }


class Tally:
    """The latest cumulative snapshot of every router replica, and their sum per version.

    Not thread-safe: the actor (:class:`MetricsHub`) runs one call at a time.

    Args:
        clock: wall-clock seconds; inject a fake in tests.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.since = clock()
        self._latest: dict[str, dict[str, VersionWindow]] = {}
        self._seq: dict[str, int] = {}
        self._retired: dict[str, VersionWindow] = {}

    def push(self, replica: str, seq: int, windows: Mapping[str, VersionWindow]) -> bool:
        """Keep ``windows`` as ``replica``'s counters, unless a later snapshot is held already.

        Args:
            replica: the pushing replica's id (unique per replica process).
            seq: the snapshot's sequence number, increasing per replica.
            windows: the replica's cumulative window per version.

        Returns:
            Whether it was kept (False: same or older than the held one, nothing changed).

        Raises:
            ValueError: a window whose histogram buckets differ from those held for its version
                (a replica of other code); nothing is changed then.
        """
        if seq <= self._seq.get(replica, -1):
            return False
        for v, w in windows.items():
            held = self._parts(v, skip=replica)
            if held and (held[0].latency_bounds, held[0].prediction_bounds) != (
                w.latency_bounds,
                w.prediction_bounds,
            ):
                raise ValueError(
                    f"replica {replica} counts version {v!r} in other histogram buckets"
                )
        for v, old in self._latest.get(replica, {}).items():
            new = windows.get(v)
            if new is None or new.since != old.since:  # its counters restarted: keep the old
                self._retire(old)
        self._latest[replica] = dict(windows)
        self._seq[replica] = seq
        return True

    def read(self) -> ClusterWindows:
        """Every version's counters added over the replicas (live or dead) and retired ones."""
        until = max(self._clock(), self.since)
        versions = dict.fromkeys(
            itertools.chain(self._retired, *(held for held in self._latest.values()))
        )
        return ClusterWindows(
            windows={v: total(v, self._parts(v), self.since, until) for v in versions},
            replicas={v: sum(v in held for held in self._latest.values()) for v in versions},
        )

    def _parts(self, version: str, skip: str | None = None) -> list[VersionWindow]:
        parts = [held[version] for r, held in self._latest.items() if r != skip and version in held]
        retired = self._retired.get(version)
        return parts if retired is None else [*parts, retired]

    def _retire(self, window: VersionWindow) -> None:
        earlier = self._retired.get(window.version)
        both = [window] if earlier is None else [earlier, window]
        self._retired[window.version] = total(window.version, both, self.since, self.since)


@ray.remote(num_cpus=0)
class MetricsHub:
    """The cluster's :class:`Tally`, in a named detached actor that outlives the routers."""

    def __init__(self) -> None:
        self._tally = Tally()

    def push(self, replica: str, seq: int, windows: dict[str, VersionWindow]) -> bool:
        return self._tally.push(replica, seq, windows)

    def read(self) -> ClusterWindows:
        return self._tally.read()


def metrics_hub() -> Any:
    """The cluster's metrics hub, created on first use."""
    return named_actor(MetricsHub, HUB_ACTOR)


def read_hub(timeout_s: float) -> ClusterWindows:
    """The cluster's sum, read from the hub by a Ray driver; empty when no router ever counted.

    Raises:
        ray.exceptions.GetTimeoutError: the hub did not answer within ``timeout_s``.
    """
    try:
        hub = ray.get_actor(HUB_ACTOR, namespace=TRAFFIC_NAMESPACE)
    except ValueError:  # no router has started on this cluster: nothing was counted
        return ClusterWindows(windows={})
    return cast(ClusterWindows, ray.get(hub.read.remote(), timeout=timeout_s))


class HubClient:
    """A router replica's side of the hub: pushes its counters, reads the cluster's sum.

    Args:
        metrics: the replica's counters.
        timeout_s: how long a push or a read may wait on the hub.
        hub: returns the hub's actor handle (:func:`metrics_hub`; a fake in tests). Called
            again after a failure, so a hub that was lost is created anew.
    """

    def __init__(
        self, metrics: LiveMetrics, timeout_s: float, hub: Callable[[], Any] = metrics_hub
    ) -> None:
        self.metrics = metrics
        self.replica = uuid.uuid4().hex
        self.timeout_s = timeout_s
        self._hub_factory = hub
        self._hub: Any = None
        self._lock = threading.Lock()
        self._seq = 0

    def submit(self) -> Any:
        """Send this replica's snapshot now; returns the push's object ref (its result: kept)."""
        return self._submit(self._handle())

    def _handle(self) -> Any:
        hub = self._hub
        if hub is None:
            hub = self._hub = self._hub_factory()
        return hub

    def _submit(self, hub: Any) -> Any:
        with self._lock:  # snapshot and number together, so the numbers order the snapshots
            self._seq += 1
            seq, windows = self._seq, self.metrics.snapshot()
        return hub.push.remote(self.replica, seq, windows)

    def push(self) -> bool:
        """Push now and wait for the hub (at most ``timeout_s``); False when it failed."""
        try:
            self.submit().future().result(timeout=self.timeout_s)
        except Exception:  # the hub restarting or unreachable: the next push carries everything
            self._hub = None
            return False
        return True

    def start(self, every_s: float) -> threading.Thread:
        """Push every ``every_s`` seconds from a daemon thread, for the replica's life."""

        def loop() -> None:
            failing = False
            while True:
                ok = self.push()
                if ok == failing:  # log when it starts or stops failing, not at every push
                    log.warning(
                        "metrics hub reachable again"
                        if ok
                        else "metrics hub unreachable; "
                        "the cluster's totals miss this replica's counters until it answers"
                    )
                failing = not ok
                time.sleep(every_s)  # the push interval, not a synchronisation

        thread = threading.Thread(target=loop, name="relay-metrics-push", daemon=True)
        thread.start()
        return thread

    async def cluster(self) -> ClusterWindows:
        """Every replica's counters added, this one's pushed first so they are current; this
        replica's own (scope :data:`REPLICA`, and a warning in the log) when the hub fails."""
        try:
            hub = self._handle()
            await asyncio.wait_for(asyncio.wrap_future(self._submit(hub).future()), self.timeout_s)
            read = asyncio.wrap_future(hub.read.remote().future())
            answer: ClusterWindows = await asyncio.wait_for(read, self.timeout_s)
        except Exception:
            self._hub = None
            log.warning("metrics hub unreachable: answering with replica %s's own", self.replica)
            own = self.metrics.snapshot()
            return ClusterWindows(windows=own, replicas=dict.fromkeys(own, 1), scope=REPLICA)
        return answer
