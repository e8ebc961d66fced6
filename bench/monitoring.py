"""Monitoring's decisions over generated days: false alarms on ordinary days, drifts caught.

One world (seed 7) and an MLP trained on a reference week; then one 24-hour window per day:
``--days`` ordinary days in a row, and for each drift scenario (storm, new zone, courier
shortage, menu change) ``--seeds`` runs, each starting on another day of that horizon and
lasting two windows. Every window goes through the real drift job
(:func:`relay.monitor.report.build_report`: Evidently and PSI on the sampled rows) and is
decided twice, on the same measurements:

* **before**: the rules as they stood on main (``--before``, read from git), with main's
  settings: any feature over its PSI threshold, or 30% of the features drifted, retrains at once;
* **after**: today's :func:`relay.monitor.rules.decide`, given the model's permutation
  importance and the earlier windows' verdicts, as ``run_monitoring`` gives them.

A scenario's run is caught when a retrain is decided in one of its two windows. The bench then
times one drift verdict on 1,000,000 serving rows × 20 columns and states the sampling error of
the drift measures against the full data.

Run: ``python -m bench.monitoring`` (``--days 30 --seeds 20``; ``--quick``: 10 days, 4 seeds).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd

ORIGIN = dt.date(2026, 9, 1)  # the warm-up day; the reference week follows it
REFERENCE_DAYS = 7
SEED = 7
LABELLED_SHARE = 0.8
#: main as it stood before importance-weighted drift (this session's starting point).
BEFORE_REV = "3006a18"
#: main's per-feature PSI thresholds, tuned to the old generator's weather.
BEFORE_PSI = {"zone_mean_delivery_24h": 0.5, "zone_weather": 2.0}
VERSION = "v1"


def _utc(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


def _rows(days: Sequence[tuple[dt.date, Any]]) -> pd.DataFrame:
    """Training-set rows of ``days`` (date, conditions), the day before the first warming up."""
    from relay.data.generate import generate_orders
    from relay.features.frames import offline_rows

    first = days[0][0]
    orders = [generate_orders(first - dt.timedelta(days=1), ARGS.orders, SEED)]
    orders += [generate_orders(day, ARGS.orders, SEED, cond) for day, cond in days]
    every = pd.concat(orders, ignore_index=True)
    return offline_rows(every, _utc(first), _utc(days[-1][0] + dt.timedelta(days=1)))


@dataclass
class Model:
    """The production model of the bench: an MLP fitted on the reference week."""

    net: Any
    prep: Any
    holdout_mae: float
    importance: dict[str, float] = field(default_factory=dict)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        from relay.model.training import predict

        return predict(self.net, self.prep, frame)


def _train(reference: pd.DataFrame, epochs: int) -> Model:
    import torch

    from relay.model.preprocess import Preprocessor
    from relay.model.training import (
        build_model,
        model_inputs,
        split_by_time,
        tensor_batches,
        train_epoch,
    )

    split = split_by_time(reference, 0.2)
    prep = Preprocessor.fit(split.train)
    torch.manual_seed(0)
    net = build_model(prep, {})
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    arrays = model_inputs(prep, split.train)
    for epoch in range(epochs):
        train_epoch(net, tensor_batches(arrays, 256, True, epoch), opt, prep.label_std)
    model = Model(net, prep, 0.0)
    truth = split.holdout["delivery_minutes"].to_numpy(dtype=float)
    model.holdout_mae = float(np.mean(np.abs(model.predict(split.holdout) - truth)))
    model.importance = _importance(model, split.holdout)
    return model


def _importance(model: Model, holdout: pd.DataFrame) -> dict[str, float]:
    from relay.model.importance import permutation_importance

    return permutation_importance(model.net, model.prep, holdout).shares


def _served(rows: pd.DataFrame, model: Model, seed: int) -> pd.DataFrame:
    """What the serving log holds for ``rows``: features, the ETA, most actuals landed."""
    out = rows.copy()
    out["eta_minutes"] = model.predict(rows)
    out["model_version"] = VERSION
    landed = np.random.default_rng(seed).random(len(out)) < LABELLED_SHARE
    out["actual_minutes"] = np.where(landed, out["delivery_minutes"], np.nan)
    return out


def _rules_before() -> ModuleType | None:
    """main's ``relay.monitor.rules`` at :data:`BEFORE_REV`, or None outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        text = subprocess.run(
            ["git", "show", f"{ARGS.before}:plugins/relay/monitor/rules.py"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"(no 'before' column: git show {ARGS.before} failed: {exc})")
        return None
    spec = importlib.util.spec_from_loader("bench_rules_before", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    exec(compile(text, f"{ARGS.before}:rules.py", "exec"), module.__dict__)
    return module


@dataclass
class Judge:
    """Decides windows in order, as the hourly DAG would, keeping the verdicts it gave."""

    model: Model
    before: ModuleType | None
    history: list[dict[str, Any]] = field(default_factory=list)
    last_retrain_at: dt.datetime | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def window(self, result: Any) -> tuple[str | None, str]:
        """The action before and after for one measured window; records the after verdict."""
        from relay.monitor import rules
        from relay.settings import MonitoringSettings

        now = MonitoringSettings().model_copy(update=self.overrides)
        old = None
        if self.before is not None:
            then = MonitoringSettings(psi_thresholds=dict(BEFORE_PSI))
            old = self.before.decide(result, then, production_version=VERSION).action.value
        verdict = rules.decide(
            result,
            now,
            production_version=VERSION,
            importance=self.model.importance,
            recent=list(reversed(self.history)),
            production_registered_mae=self.model.holdout_mae,
            last_retrain_at=self.last_retrain_at,
        )
        self.history.append(verdict.to_dict())
        if verdict.action is rules.Action.RETRAIN:
            # The retrained version would be registered within the hour: the cooldown starts.
            self.last_retrain_at = result.window_end
        return old, verdict.action.value

    def fork(self) -> Judge:
        return Judge(
            self.model, self.before, list(self.history), self.last_retrain_at, self.overrides
        )


def _measure(
    reference: pd.DataFrame, rows: pd.DataFrame, model: Model, day: dt.date, out: Path
) -> Any:
    from relay.monitor.report import build_report
    from relay.settings import MonitoringSettings

    s = MonitoringSettings()
    end = _utc(day + dt.timedelta(days=1))
    return build_report(
        reference,
        _served(rows, model, day.toordinal()),
        out / f"{day:%Y%m%d}-{len(list(out.iterdir()))}",
        run_key=f"{end:%Y%m%dT%H%MZ}",
        predict=model.predict,
        max_rows=s.max_rows,
        drift_share=s.drift_share_threshold,
        window=(end - dt.timedelta(days=1), end),
    )


@dataclass
class Tally:
    """Retrain decided, per kind of window, before and after."""

    windows: int = 0
    before: int = 0
    after: int = 0
    seen: int = 0  # windows whose drift would retrain once persisting (after)

    def add(self, old: str | None, new: str, judge: Judge) -> None:
        self.windows += 1
        self.before += old == "retrain"
        self.after += new == "retrain"
        self.seen += bool(judge.history[-1].get("drift_seen"))


def _measure_all(reference: pd.DataFrame, model: Model) -> dict[str, Any]:
    """Every window's measurements: the ordinary days in a row, then each scenario's runs."""
    from relay.data.scenarios import DRIFTS

    ref_last = ORIGIN + dt.timedelta(days=REFERENCE_DAYS)
    horizon = [ref_last + dt.timedelta(days=i + 1) for i in range(ARGS.days)]
    ordinary = _rows([(d, None) for d in horizon])
    names = ARGS.scenarios.split(",") if ARGS.scenarios else list(DRIFTS)
    measured: dict[str, Any] = {"ordinary": [], "scenarios": {name: [] for name in names}}
    with tempfile.TemporaryDirectory(prefix="relay-bench-monitoring-") as tmp:
        out = Path(tmp)
        for day in horizon:
            rows = ordinary[ordinary["event_timestamp"].dt.date == day]
            measured["ordinary"].append(_measure(reference, rows, model, day, out).to_dict())
            print(f"  measured ordinary {day}", flush=True)
        for name in names:
            drift = DRIFTS[name]
            for seed in range(ARGS.seeds):
                k = 1 + seed % max(1, ARGS.days - 2)
                days = [horizon[k], horizon[k] + dt.timedelta(days=1)]
                rows = _rows([(d, drift.conditions) for d in days])
                run = [
                    _measure(reference, rows[rows["event_timestamp"].dt.date == d], model, d, out)
                    for d in days
                ]
                measured["scenarios"][name].append(
                    {"start": k, "windows": [r.to_dict() for r in run]}
                )
                print(f"  measured {name} from {days[0]}", flush=True)
    measured["ordinary_rows"] = ordinary
    return measured


def _decide_all(
    measured: dict[str, Any], model: Model, overrides: dict[str, Any]
) -> tuple[dict[str, Tally], dict[str, list[tuple[bool, bool]]], bool]:
    """Decide every measured window in order, before and after (with ``overrides``)."""
    from relay.monitor.drift import DriftResult

    judge = Judge(model, _rules_before(), overrides=overrides)
    tallies: dict[str, Tally] = {"ordinary": Tally()}
    judges: list[Judge] = []
    for doc in measured["ordinary"]:
        judges.append(judge.fork())  # the state before this day, for a scenario starting on it
        old, new = judge.window(DriftResult.from_dict(doc))
        tallies["ordinary"].add(old, new, judge)
    caught: dict[str, list[tuple[bool, bool]]] = {}
    for name, runs in measured["scenarios"].items():
        tallies[name] = Tally()
        caught[name] = []
        for run in runs:
            j = judges[run["start"]].fork()
            olds, news = [], []
            for doc in run["windows"]:
                old, new = j.window(DriftResult.from_dict(doc))
                tallies[name].add(old, new, j)
                olds.append(old == "retrain")
                news.append(new == "retrain")
            caught[name].append((any(olds), any(news)))
            if ARGS.explain and not any(news):
                print(f"missed {name} from day {run['start']}:")
                for verdict in j.history[-len(run["windows"]) :]:
                    print("   " + "\n   ".join(verdict["reasons"]))
    return tallies, caught, judge.before is not None


def main(argv: Sequence[str] | None = None) -> None:
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--days", type=int, default=30, help="ordinary days in a row")
    p.add_argument("--seeds", type=int, default=20, help="runs per drift scenario")
    p.add_argument("--orders", type=int, default=2000, help="orders per day")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--big-rows", type=int, default=1_000_000)
    p.add_argument("--before", default=BEFORE_REV, help="git revision of the 'before' rules")
    p.add_argument("--quick", action="store_true", help="10 days, 4 seeds, 200,000 big rows")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="also decide with this MonitoringSettings field changed (repeatable)",
    )
    p.add_argument("--scenarios", help="only these drift scenarios (comma-separated)")
    p.add_argument("--save", help="write the measured windows to this JSON file")
    p.add_argument("--load", help="decide the windows measured into this file (no measuring)")
    p.add_argument("--explain", action="store_true", help="print the verdicts of missed runs")
    ARGS = p.parse_args(argv)
    if ARGS.quick:
        ARGS.days, ARGS.seeds, ARGS.big_rows = 10, 4, 200_000
    t0 = time.perf_counter()
    ref_days = [ORIGIN + dt.timedelta(days=i + 1) for i in range(REFERENCE_DAYS)]
    reference = _rows([(d, None) for d in ref_days])
    model = _train(reference, ARGS.epochs)
    top = sorted(model.importance.items(), key=lambda kv: -kv[1])[:5]
    print(
        f"model: {len(reference):,} reference rows, holdout MAE {model.holdout_mae:.2f} min; "
        f"importance: {', '.join(f'{k} {v:.2f}' for k, v in top)} "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    if ARGS.load:
        measured = json.loads(Path(ARGS.load).read_text())
        ref_last = ORIGIN + dt.timedelta(days=REFERENCE_DAYS)
        horizon = [ref_last + dt.timedelta(days=i + 1) for i in range(ARGS.days)]
        measured["ordinary_rows"] = _rows([(d, None) for d in horizon])
    else:
        measured = _measure_all(reference, model)
        print(f"measured in {time.perf_counter() - t0:.0f} s")
    if ARGS.save:
        kept = {k: v for k, v in measured.items() if k != "ordinary_rows"}
        Path(ARGS.save).write_text(json.dumps(kept, default=str))
    for variant in [None, *ARGS.variant]:
        overrides: dict[str, Any] = {}
        if variant:
            key, _, value = variant.partition("=")
            overrides[key] = float(value)
        tallies, caught, has_before = _decide_all(measured, model, overrides)
        _print_table(tallies, caught, has_before, variant or "the defaults")
    _big_verdict(reference, measured["ordinary_rows"], model)
    print(f"total {time.perf_counter() - t0:.0f} s")


def _print_table(
    tallies: dict[str, Tally],
    caught: dict[str, list[tuple[bool, bool]]],
    has_before: bool,
    variant: str,
) -> None:
    def pct(n: int, d: int) -> str:
        return f"{n}/{d} ({n / d:.0%})" if d else "—"

    print(f"\nafter: {variant}")
    print("| windows | n | retrain before (main) | retrain after | drift seen after |")
    print("|---|---|---|---|---|")
    o = tallies["ordinary"]
    b = pct(o.before, o.windows) if has_before else "—"
    print(
        f"| ordinary days (false alarms) | {o.windows} | {b} | {pct(o.after, o.windows)} "
        f"| {pct(o.seen, o.windows)} |"
    )
    print()
    print("| drift scenario | runs | caught within 2 windows, before | caught, after |")
    print("|---|---|---|---|")
    for name, runs in caught.items():
        n = len(runs)
        b = pct(sum(r[0] for r in runs), n) if has_before else "—"
        print(f"| {name} | {n} | {b} | {pct(sum(r[1] for r in runs), n)} |")


def _big_verdict(reference: pd.DataFrame, ordinary: pd.DataFrame, model: Model) -> None:
    """One verdict on ``--big-rows`` serving rows × 20 columns, and the sampling error."""
    from relay.monitor.drift import psi
    from relay.monitor.report import CATEGORICAL_FEATURES, MONITORED_FEATURES, build_report
    from relay.monitor.rules import decide
    from relay.settings import MonitoringSettings

    s = MonitoringSettings()
    served = _served(ordinary, model, 1)
    # What a serving-log row carries besides the monitored features.
    logged = ("courier_id", "merchant_id", "order_weekday", "distance_km", "hour")
    extra = [c for c in logged if c in served]
    columns = [*MONITORED_FEATURES, *extra, "eta_minutes", "actual_minutes", "model_version"]
    reps = -(-ARGS.big_rows // len(served))
    big = pd.concat([served[columns]] * reps, ignore_index=True).iloc[: ARGS.big_rows]
    noise = np.random.default_rng(0).normal(0, 0.01, len(big))
    big["eta_minutes"] = big["eta_minutes"].to_numpy() * (1 + noise)
    width = len(columns)
    with tempfile.TemporaryDirectory(prefix="relay-bench-big-") as tmp:
        t = time.perf_counter()
        result = build_report(reference, big, Path(tmp), run_key="big", max_rows=s.max_rows, seed=0)
        verdict = decide(result, s, production_version=VERSION, importance=model.importance)
        took = time.perf_counter() - t
    print()
    print(
        f"drift verdict on {len(big):,} rows × {width} columns: {took:.1f} s "
        f"(sampled {s.max_rows:,} rows per side; verdict {verdict.action.value})"
    )
    errors = []
    for f in MONITORED_FEATURES:
        categorical = f in CATEGORICAL_FEATURES
        full = psi(reference[f], big[f], categorical=categorical)
        for seed in range(5):
            sample = big[f].sample(n=s.max_rows, random_state=seed)
            ref = reference[f].sample(n=min(len(reference), s.max_rows), random_state=seed)
            errors.append((f, abs(psi(ref, sample, categorical=categorical) - full), full))
    worst = max(errors, key=lambda e: e[1])
    mean = float(np.mean([e[1] for e in errors]))
    print(
        f"sampling error of the PSI ({s.max_rows:,} of {len(big):,} rows, 5 samples × "
        f"{len(MONITORED_FEATURES)} features): mean |Δ| {mean:.3f}, worst {worst[1]:.3f} on "
        f"{worst[0]} (full-data PSI {worst[2]:.3f}); thresholds are ≥ 0.2"
    )


ARGS: argparse.Namespace

if __name__ == "__main__":
    main()
