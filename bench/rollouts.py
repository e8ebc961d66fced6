"""Randomized rollouts through the pure reconciler (issue 12): is anything bad ever promoted?

Each rollout walks a seed-shaped plan (0.1% → 1% → all orders of 10% of zones → 100%, hours
instead of days) on a simulated clock, ticking every 10 minutes. The simulated world serves
day/night traffic (a twentieth of the day's rate between midnight and 06:00; a few quiet
markets far below it), lands each prediction's actual 30-60 minutes later, and sometimes has
an outage that fails both versions alike. Candidates are good, or bad in one way: more errors,
a slower P99, or fast but wrong (a worse MAE); some were forced past a rejecting gate.

The simulated controller keeps the record only as JSON text (its compare-and-set store): it
crashes at random before writing a tick's record or before applying its traffic, reloads the
record from JSON, and the traffic actor sometimes restarts holding no split. Every write is
read back and compared with the record written.

Prints a Markdown table. Run: ``python -m bench.rollouts --n 100 --seed 0``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from relay.rollout.plan import TrafficRule, default_plan
from relay.rollout.reconcile import Observation, desired_traffic, tick
from relay.rollout.record import Rollout, RolloutState, start_rollout
from relay.serve.log_read import VersionQuality
from relay.serve.windows import LATENCY_BUCKETS_MS, VersionWindow
from relay.settings import RolloutSettings

HOUR = 3600.0
TICK_S = 600.0
START = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
PEAK_QPS = 200.0  # orders a second at the evening peak: ~10 M a day
SETTINGS = RolloutSettings(plan_durations_s=(2 * HOUR, 4 * HOUR, 4 * HOUR, HOUR))
KINDS = ("good", "bad: errors", "bad: slow P99", "bad: fast but wrong")
CRASH_P = 0.05  # per tick, at each of the two crash points
ACTOR_RESTART_P = 0.01
OUTAGE_P = 0.25  # rollouts with one outage of both versions
QUIET_P = 0.03  # markets with a two-hundredth of the usual traffic
MAX_TICKS = 2_000  # far past any plan's maximum durations: a rollout still live here is a bug


@dataclass(frozen=True)
class Behaviour:
    """How one version serves: error rate, latency (log-normal) and absolute error (gamma)."""

    error_rate: float
    median_ms: float
    sigma: float
    mae: float
    gamma_shape: float = 2.0

    def latency_probs(self) -> np.ndarray:
        """The share of requests in each latency bucket (``+Inf`` last)."""
        cdf = [
            0.5 * (1 + math.erf((math.log(b) - math.log(self.median_ms)) / (self.sigma * 2**0.5)))
            for b in LATENCY_BUCKETS_MS
        ]
        return np.diff([0.0, *cdf, 1.0])


def _candidate(kind: str, rng: np.random.Generator) -> Behaviour:
    base = Behaviour(
        rng.uniform(0.0005, 0.002), rng.uniform(17, 23), 0.45, 6.0 * rng.uniform(0.9, 1.03)
    )
    if kind == "bad: errors":
        return Behaviour(rng.uniform(0.02, 0.05), base.median_ms, base.sigma, base.mae)
    if kind == "bad: slow P99":
        # P99 between 150 and 300 ms for a 20 ms median.
        return Behaviour(base.error_rate, 20.0, math.log(rng.uniform(7.5, 15)) / 2.326, base.mae)
    if kind == "bad: fast but wrong":
        return Behaviour(base.error_rate, 15.0, 0.4, 6.0 * rng.uniform(1.2, 1.6))
    return base


@dataclass
class _Served:
    """One version's cumulative counters at every tick, and its label batches."""

    version: str
    behaviour: Behaviour
    cumulative: list[np.ndarray] = field(default_factory=list)  # requests, errors, buckets…
    labels: list[tuple[float, float, int, float]] = field(default_factory=list)

    def serve(self, n: int, t: float, outage: bool, rng: np.random.Generator) -> None:
        b = self.behaviour
        errors = rng.binomial(n, 0.3 if outage else b.error_rate)
        buckets = rng.multinomial(n, b.latency_probs())
        last = self.cumulative[-1] if self.cumulative else np.zeros(2 + len(buckets))
        self.cumulative.append(last + np.array([n, errors, *buckets]))
        scale = b.mae / b.gamma_shape
        for part in rng.multinomial(n, [1 / 3] * 3):
            if part:
                # Actuals land 30-60 minutes after the prediction; |error| ~ Gamma(k, θ).
                arrival = t + rng.uniform(0.5, 1.0) * HOUR
                self.labels.append((t, arrival, part, rng.gamma(b.gamma_shape * part, scale)))

    def window(self, since_k: int, now_k: int) -> VersionWindow:
        diff = self.cumulative[now_k - 1] - (self.cumulative[since_k - 1] if since_k else 0)
        requests, errors, *buckets = (int(x) for x in diff)
        b = self.behaviour
        mean_ms = b.median_ms * math.exp(b.sigma**2 / 2)
        return VersionWindow(
            self.version,
            0.0,
            (now_k - since_k) * TICK_S,
            requests=requests,
            errors=errors,
            predictions=requests,
            latency_counts=tuple(buckets),
            latency_sum_ms=requests * mean_ms,
        )

    def quality(self, since: float, now: float) -> VersionQuality | None:
        rows = [(n, s) for made, landed, n, s in self.labels if made >= since and landed <= now]
        n = sum(r[0] for r in rows)
        if not n:
            return None
        mae = sum(r[1] for r in rows) / n
        k = self.behaviour.gamma_shape
        sd = mae / math.sqrt(k)  # a gamma's sd is its mean over √shape
        return VersionQuality(self.version, n, mae, 0.0, sd / math.sqrt(n))


@dataclass
class Tally:
    """What the simulated rollouts ended as, per kind of candidate."""

    ends: Counter[tuple[str, str]] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    forced: int = 0
    crashes: int = 0
    heals: int = 0
    holds: int = 0
    round_trips: int = 0
    mismatches: int = 0
    sim_hours: float = 0.0

    def count(self, kind: str, end: str) -> int:
        """Rollouts of ``kind`` (``bad`` for every bad kind) that ended ``end``."""
        if kind == "bad":
            return sum(v for (k, e), v in self.ends.items() if k != "good" and e == end)
        return self.ends[(kind, end)]

    def total(self, kind: str) -> int:
        """Rollouts of ``kind`` (``bad`` for every bad kind)."""
        if kind == "bad":
            return sum(v for k, v in self.kinds.items() if k != "good")
        return self.kinds[kind]


def _rate(t: float, scale: float) -> float:
    hour = (t / HOUR) % 24
    if hour < 6:
        return PEAK_QPS * scale * 0.05
    return PEAK_QPS * scale * (0.05 + 0.95 * math.sin(math.pi * (hour - 6) / 18))


def _candidate_share(rule: TrafficRule | None) -> float:
    if rule is None or rule.candidate is None:
        return 0.0  # a restarted traffic actor routes to stable until told otherwise
    zones = rule.targeting.zone_share if rule.targeting and rule.targeting.zone_share else 1.0
    return rule.candidate_share * zones


def simulate_one(index: int, seed: int, tally: Tally) -> None:
    """One randomized rollout from start to its end, counted into ``tally``."""
    rng = np.random.default_rng([seed, index])
    kind = KINDS[0] if rng.random() < 0.5 else KINDS[int(rng.integers(1, len(KINDS)))]
    forced = bool(rng.random() < 0.1)
    scale = 0.005 if rng.random() < QUIET_P else rng.uniform(0.3, 1.5)
    offset = float(rng.uniform(0, 24)) * HOUR  # the hour of day the rollout starts
    outage = rng.uniform(0, 20) * HOUR if rng.random() < OUTAGE_P else -1.0
    outage_end = outage + rng.uniform(1 / 3, 2 / 3) * HOUR
    stable = _Served("v1", Behaviour(0.001, 20.0, 0.45, 6.0))
    cand = _Served("v2", _candidate(kind, rng))
    begin = START + dt.timedelta(seconds=offset)
    record = start_rollout(
        "v2", "v1", default_plan(SETTINGS), by="bench", now=begin, rollout_id=f"ro-{index}"
    )
    stored = record.model_dump_json()  # the compare-and-set store
    memory: Rollout | None = record
    actor: TrafficRule | None = desired_traffic(record, forced, SETTINGS)
    split_since = begin
    k = 0
    while (memory is None or not memory.state.final) and k < MAX_TICKS:
        k += 1
        t0 = offset + (k - 1) * TICK_S
        n = rng.poisson(_rate(t0, scale) * TICK_S)
        n_cand = rng.binomial(n, _candidate_share(actor))
        down = outage <= t0 < outage_end
        cand.serve(n_cand, t0, down, rng)
        stable.serve(n - n_cand, t0, down, rng)
        now = begin + dt.timedelta(seconds=k * TICK_S)
        if memory is None:
            memory = Rollout.model_validate_json(stored)
        since_k = round((memory.step_started_at - begin).total_seconds() / TICK_S)
        since_t, now_t = offset + since_k * TICK_S, offset + k * TICK_S
        quality = {
            q.version: q
            for q in (cand.quality(since_t, now_t), stable.quality(since_t, now_t))
            if q is not None
        }
        observed = Observation(
            step=memory.step,
            step_started_at=memory.step_started_at,
            applied=actor,
            candidate=cand.window(since_k, k),
            stable=stable.window(since_k, k),
            quality=quality,
            gate_rejected=forced,
            split_since=split_since,
        )
        result = tick(memory, observed, now, SETTINGS)
        tally.holds += result.action is not None and result.action.value == "hold"
        tally.heals += result.action is None and result.traffic != actor
        if rng.random() < CRASH_P:  # dies before writing: the tick is lost, the next redoes it
            memory, tally.crashes = None, tally.crashes + 1
            continue
        if result.rollout is not memory:
            stored = result.rollout.model_dump_json()
            tally.round_trips += 1
            tally.mismatches += Rollout.model_validate_json(stored) != result.rollout
        memory = result.rollout
        if rng.random() < CRASH_P:  # dies after writing, before moving traffic
            memory, tally.crashes = None, tally.crashes + 1
            continue
        if result.traffic != actor:
            actor, split_since = result.traffic, now
        if rng.random() < ACTOR_RESTART_P:
            actor = None
    memory = memory or Rollout.model_validate_json(stored)
    tally.kinds[kind] += 1
    tally.forced += forced
    tally.ends[(kind, memory.state.value)] += 1
    tally.sim_hours += k * TICK_S / HOUR


def simulate(n: int, seed: int) -> Tally:
    """``n`` randomized rollouts, seeded by ``seed``."""
    tally = Tally()
    for i in range(n):
        simulate_one(i, seed, tally)
    return tally


def table(tally: Tally) -> str:
    """The Markdown table of what the rollouts ended as."""
    ends = (RolloutState.PROMOTED, RolloutState.ROLLED_BACK, RolloutState.ABORTED)
    lines = [
        "| candidate | rollouts | promoted | rolled back | aborted (still promotable) |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind in (*KINDS, "bad"):
        cells = " | ".join(str(tally.count(kind, e.value)) for e in ends)
        name = "all bad" if kind == "bad" else kind
        lines.append(f"| {name} | {tally.total(kind)} | {cells} |")
    good = tally.total("good")
    promoted = tally.count("good", RolloutState.PROMOTED.value)
    lines += [
        "",
        f"bad candidates promoted: {tally.count('bad', RolloutState.PROMOTED.value)} (must be 0)",
        f"good candidates promoted: {promoted}/{good} = {promoted / max(good, 1):.0%} (≥ 95%)",
        f"forced past the gate: {tally.forced}; crashes injected: {tally.crashes}; traffic healed: "
        f"{tally.heals}; holding ticks: {tally.holds}",
        f"records written and read back from JSON: {tally.round_trips}, differing: "
        f"{tally.mismatches}; simulated hours: {tally.sim_hours:.0f}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the simulation and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="rollouts to simulate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    tally = simulate(args.n, args.seed)
    print(table(tally))
    print(f"wall time: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
