"""A step's live windows: what the router's cumulative counters counted since a step began.

The router reports cumulative counters per version (:func:`relay.serve.control.live_metrics`);
a step is judged on the difference between a snapshot taken when it began and a later one.
The reconciler's controller (:mod:`relay.rollout.controller`, through
:mod:`relay.rollout.observe`) measures steps this way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from relay.serve.windows import VersionWindow, diff, window_from_dict


def windows(
    metrics: Mapping[str, Any], versions: list[str], now: float
) -> dict[str, VersionWindow]:
    """Each of ``versions``' window in a live-metrics answer; empty where it has none yet.

    Args:
        metrics: the router's answer, version → ``VersionWindow.to_dict()``.
        versions: the versions wanted.
        now: the metrics' clock when none of them was observed yet.
    """
    # Not observed yet (a candidate just deployed): empty counters on the router's clock,
    # borrowed from any version it reports, so the step's later snapshot diffs over the step.
    clock = next((d for d in metrics.values() if isinstance(d, Mapping) and d), None)
    since, until = (clock["since"], clock["until"]) if clock else (now, now)
    return {
        v: window_from_dict(metrics[v])
        if metrics.get(v)
        else VersionWindow(version=v, since=since, until=until)
        for v in versions
    }


def step_window(later: VersionWindow, earlier: VersionWindow) -> VersionWindow:
    """What ``later`` counted since the step began (``earlier``, its first snapshot)."""
    if later.since == earlier.since and later.until >= earlier.until:
        return diff(later, earlier)
    if earlier.requests == 0 and later.since <= earlier.until <= later.until:
        # Nothing was counted when the step began (a candidate just deployed): all of
        # ``later`` fell within the step, so its rates are over the step, not the router's life.
        return dataclasses.replace(later, since=earlier.until, first_observed=None)
    return later  # counters restarted (a router replica restarted)
