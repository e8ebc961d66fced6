"""Predictions already made: one model version's answers by feature vector, in process (L1) and
in Redis (L2, shared by the version's replicas).

The key is the version (and the variant of its weights it serves) with the whole feature vector
the model was given, read fresh for every request: an entry can only ever answer the exact
inputs it was computed from, so a pushed or materialized feature changes the key and is used on
the next request, and no cached answer carries features older than the read that just happened.
What the cache saves is the forward pass and its preprocessing (1.2 ms for one order, 1.6 ms
for 32 on the reference machine), which pays when the same order is asked again (an app polling
its ETA) within ``RELAY_SERVING__PREDICTION_CACHE_TTL_S``. The TTL bounds how long an answer
outlives its version's reason to exist: :meth:`PredictionCache.forget` drops a version that
stopped serving at once (:func:`relay.serve.control.remove_model`), the TTL catches a replica
that died before it could.

L2 never fails a request: an error or a reply slower than its timeout answers "not cached" and
Redis is left alone for ``retry_after_s``, as the online store's reads are
(:mod:`relay.features.guarded`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:  # pragma: no cover, typing only
    from relay.settings.serving import ServingSettings

log = logging.getLogger(__name__)

L2_PREFIX = "relay:prediction"
LEVELS = ("l1", "l2")


class Predictor(Protocol):
    """Minutes for a batch of feature columns (a :class:`relay.model.bundle.ModelBundle`)."""

    def predict(self, frame: Any) -> Any: ...


@dataclass
class LevelStats:
    """One level's lookups since the replica started: how many, how many hit, time spent."""

    lookups: int = 0
    hits: int = 0
    seconds: float = 0.0

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.lookups if self.lookups else None

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "lookups": self.lookups,
            "hits": self.hits,
            "hit_rate": self.hit_rate,
            "mean_ms": self.seconds * 1000 / self.lookups if self.lookups else None,
        }


@dataclass
class CacheStats:
    """Per level (``l1``, ``l2``): lookups are rows asked, hits rows answered from it."""

    levels: dict[str, LevelStats] = field(
        default_factory=lambda: {level: LevelStats() for level in LEVELS}
    )

    def to_dict(self) -> dict[str, dict[str, float | int | None]]:
        return {level: s.to_dict() for level, s in self.levels.items()}


def vector_rows(features: Mapping[str, Sequence[Any]], n: int) -> list[tuple[Any, ...]]:
    """One tuple per row of every feature column's value (columns in name order): L1's key.

    Tuples compare value by value, so two rows share a key only when the model would be given
    the same numbers (a NaN equals only itself, the same object: at worst a miss)."""
    columns = sorted(features)
    if not columns:
        return [()] * n
    return list(zip(*(features[c] for c in columns), strict=True))[:n]


def vector_keys(features: Mapping[str, Sequence[Any]], n: int) -> list[str]:
    """One key per row: a digest of every feature column's value (columns in name order): L2's
    key, shared by processes.

    ``repr`` keeps floats exact, so two vectors share a key only when the model would be given
    the same numbers."""
    return [_digest(row) for row in vector_rows(features, n)]


def _digest(row: tuple[Any, ...]) -> str:
    return hashlib.blake2b(repr(list(row)).encode(), digest_size=16).hexdigest()


class RedisLevel:
    """L2: predictions in Redis, ``relay:prediction:<namespace>:<digest>`` with a TTL.

    Args:
        url: a Redis URL (``redis://host:port/db``).
        timeout_s: the longest a lookup or write may take; then it counts as a miss.
        retry_after_s: after a failure, Redis is not asked for this long.
        clock: monotonic seconds (a fake in tests).
    """

    def __init__(
        self,
        url: str,
        timeout_s: float,
        retry_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import redis

        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self.retry_after_s = retry_after_s
        self.clock = clock
        self._down_until = 0.0

    def _available(self) -> bool:
        return self.clock() >= self._down_until

    def _failed(self, what: str, err: Exception) -> None:
        self._down_until = self.clock() + self.retry_after_s
        log.warning("prediction cache L2 %s failed (%s); not asked for %ss", what, err,
                    self.retry_after_s)  # fmt: skip

    def get_many(self, namespace: str, digests: Sequence[str]) -> list[float | None]:
        if not digests or not self._available():
            return [None] * len(digests)
        try:
            raw = cast(
                list[bytes | None],
                self.client.mget([f"{L2_PREFIX}:{namespace}:{d}" for d in digests]),
            )
        except Exception as err:
            self._failed("read", err)
            return [None] * len(digests)
        return [None if v is None else float(v) for v in raw]

    def set_many(self, namespace: str, items: Mapping[str, float], ttl_s: float) -> None:
        if not items or not self._available():
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for digest, value in items.items():
                pipe.set(f"{L2_PREFIX}:{namespace}:{digest}", repr(value), px=int(ttl_s * 1000))
            pipe.execute()
        except Exception as err:
            self._failed("write", err)

    def forget(self, namespace: str) -> int:
        """Delete every entry of ``namespace``; returns how many."""
        n = 0
        batch: list[bytes] = []
        for key in self.client.scan_iter(match=f"{L2_PREFIX}:{namespace}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                n += cast(int, self.client.unlink(*batch))
                batch = []
        if batch:
            n += cast(int, self.client.unlink(*batch))
        return n


class PredictionCache:
    """One version's predictions by feature vector: an LRU in process, then optionally Redis.

    Args:
        namespace: the version id and the variant of its weights (``v1:int8``): no other
            version's answer can be found under it.
        size: the most predictions L1 keeps (least recently used go first).
        ttl_s: how long a prediction may be answered after it was made, at either level.
        l2: the shared level, or None.
        clock: monotonic seconds (a fake in tests).
    """

    def __init__(
        self,
        namespace: str,
        size: int,
        ttl_s: float,
        l2: RedisLevel | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if size < 1:
            raise ValueError(f"an L1 cache needs a size of at least 1, got {size}")
        self.namespace = namespace
        self.size = size
        self.ttl_s = ttl_s
        self.l2 = l2
        self.clock = clock
        self.stats = CacheStats()
        self._l1: OrderedDict[tuple[Any, ...], tuple[float, float]] = OrderedDict()

    def predict(
        self, model: Predictor, features: Mapping[str, Sequence[Any]], n: int
    ) -> list[float]:
        """Minutes for ``n`` rows: cached where the same vector was answered within the TTL,
        the rest in one forward pass (then cached, when finite)."""
        # L1 by the values themselves: hashing a tuple of them is a tenth of a digest of their
        # repr, which only L2 (shared by processes) needs, for the rows L1 did not have.
        keys = vector_rows(features, n)
        out: list[float | None] = self._from_l1(keys)
        digests: dict[int, str] = {}
        if self.l2 is not None:
            missing = [i for i, v in enumerate(out) if v is None]
            if missing:
                digests = {i: _digest(keys[i]) for i in missing}
                t0 = time.perf_counter()
                got = self.l2.get_many(self.namespace, [digests[i] for i in missing])
                self._count("l2", len(missing), sum(v is not None for v in got), t0)
                now = self.clock()
                for i, v in zip(missing, got, strict=True):
                    if v is not None:
                        out[i] = v
                        self._remember(keys[i], v, now)
        todo = [i for i, v in enumerate(out) if v is None]
        if todo:
            frame = {c: [col[i] for i in todo] for c, col in features.items()}
            made = [float(p) for p in model.predict(frame)]
            new: dict[str, float] = {}
            now = self.clock()
            for i, v in zip(todo, made, strict=True):
                out[i] = v
                if v == v and abs(v) != float("inf"):  # an unusable prediction is never kept
                    if self.l2 is not None:
                        new[digests[i]] = v
                    self._remember(keys[i], v, now)
            if self.l2 is not None:
                self.l2.set_many(self.namespace, new, self.ttl_s)
        return cast(list[float], out)  # every row is filled above

    def _from_l1(self, keys: Sequence[tuple[Any, ...]]) -> list[float | None]:
        t0 = time.perf_counter()
        now = self.clock()
        out: list[float | None] = []
        for key in keys:
            hit = self._l1.get(key)
            if hit is not None and hit[0] > now:
                self._l1.move_to_end(key)
                out.append(hit[1])
            else:
                if hit is not None:
                    del self._l1[key]  # expired
                out.append(None)
        self._count("l1", len(keys), sum(v is not None for v in out), t0)
        return out

    def _remember(self, key: tuple[Any, ...], value: float, now: float) -> None:
        self._l1[key] = (now + self.ttl_s, value)
        self._l1.move_to_end(key)
        while len(self._l1) > self.size:
            self._l1.popitem(last=False)

    def _count(self, level: str, lookups: int, hits: int, t0: float) -> None:
        s = self.stats.levels[level]
        s.lookups += lookups
        s.hits += hits
        s.seconds += time.perf_counter() - t0

    def forget(self) -> int:
        """Drop every prediction of this namespace, at both levels (the version stopped
        serving); returns how many L2 entries went."""
        self._l1.clear()
        return self.l2.forget(self.namespace) if self.l2 is not None else 0


def cache_namespace(version: str, variant: str | None = None) -> str:
    """The key prefix of one version's predictions (and of its weights' variant)."""
    return f"{version}:{variant or 'float'}"


def from_settings(
    version: str, variant: str | None, serving: ServingSettings
) -> PredictionCache | None:
    """The cache a model replica of ``version`` uses (``RELAY_SERVING__PREDICTION_CACHE_*``), or
    None when its size is 0."""
    if serving.prediction_cache_size == 0:
        return None
    l2 = None
    if serving.prediction_cache_redis_url:
        l2 = RedisLevel(
            serving.prediction_cache_redis_url,
            serving.prediction_cache_timeout_s,
            serving.prediction_cache_retry_after_s,
        )
    return PredictionCache(
        cache_namespace(version, variant),
        serving.prediction_cache_size,
        serving.prediction_cache_ttl_s,
        l2,
    )


def forget_version(serving: ServingSettings, version: str) -> int:
    """Drop a version's L2 predictions, every variant (it stopped serving); returns how many.
    Its replicas' L1s went with them."""
    if not serving.prediction_cache_redis_url:
        return 0
    level = RedisLevel(serving.prediction_cache_redis_url, 1.0, 0.0)
    return level.forget(f"{version}:*")


class RayCacheMetrics:
    """The cache's counts as Ray metrics (``relay_prediction_cache_lookups_total`` and
    ``..._hits_total``, ``..._seconds_total``, tagged ``model_version`` and ``level``: see
    :mod:`relay.serve.ray_metrics`), summed across replicas by Prometheus. Published at most
    every ``every_s``, as increments since the last publish."""

    def __init__(self, version: str, every_s: float = 1.0) -> None:
        from relay.serve.ray_metrics import ray_metric

        self.lookups = ray_metric("relay_prediction_cache_lookups")
        self.hits = ray_metric("relay_prediction_cache_hits")
        self.seconds = ray_metric("relay_prediction_cache_seconds")
        self.version = version
        self.every_s = every_s
        self._last = 0.0
        self._sent: dict[str, tuple[int, int, float]] = {}

    def publish(self, stats: CacheStats, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        for level, s in stats.levels.items():
            lookups, hits, seconds = self._sent.get(level, (0, 0, 0.0))
            tags = {"model_version": self.version, "level": level}
            if s.lookups > lookups:
                self.lookups.inc(s.lookups - lookups, tags)
            if s.hits > hits:
                self.hits.inc(s.hits - hits, tags)
            if s.seconds > seconds:
                self.seconds.inc(s.seconds - seconds, tags)
            self._sent[level] = (s.lookups, s.hits, s.seconds)
