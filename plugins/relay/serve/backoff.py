"""When to try again something that failed: doubling waits per key, reset by a success.

The inline router loads a version entering the split in its watch thread, which asks the
traffic state again every 0.1 s while a load fails; a version that will not load (its registry
unreachable, its weights failing their sha256) must not be reloaded at that rate, each try
costing the serving loop seconds of CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Per key: after the n-th failure in a row, wait ``first_s`` × 2^(n−1), at most ``max_s``."""

    first_s: float
    max_s: float
    _failures: dict[str, int] = field(default_factory=dict)
    _next_at: dict[str, float] = field(default_factory=dict)

    def due(self, key: str, now: float) -> bool:
        """Whether ``key`` may be tried at ``now`` (never failed, or its wait is over)."""
        return now >= self._next_at.get(key, now)

    def failed(self, key: str, now: float) -> float:
        """Record a failure of ``key`` at ``now``; returns the wait before its next try."""
        n = self._failures.get(key, 0) + 1
        self._failures[key] = n
        wait = min(self.max_s, self.first_s * 2 ** (n - 1))
        self._next_at[key] = now + wait
        return wait

    def succeeded(self, key: str) -> None:
        """``key`` worked: its next failure waits ``first_s`` again."""
        self._failures.pop(key, None)
        self._next_at.pop(key, None)
