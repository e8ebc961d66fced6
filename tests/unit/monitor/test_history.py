"""What monitoring remembers (verdicts, gate rejections) and the retrain step over two days of
persistent drift, against a registry store and a lake in a temporary folder."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from relay.data.lake import RAW_ORDERS, Lake
from relay.flows.eta_retrain import note_gate_rejection, plan_retrain
from relay.monitor.history import REJECTIONS_KEPT, MonitoringHistory
from relay.monitor.retrain import GateRejection
from relay.registry.backends import open_store
from relay.registry.errors import ConcurrentUpdate
from relay.registry.store import ArtifactStore, Tagged
from relay.settings import Settings
from tests.unit.monitor.test_retrain import _verdict

DAY = dt.date(2026, 11, 20)
AT = dt.datetime(2026, 11, 21, 3, tzinfo=dt.UTC)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path)


def _rejection(i: int, kind: str = "drift of v1") -> GateRejection:
    return GateRejection(
        run_id=f"drift__{i}",
        kind=kind,
        data_day=DAY,
        version=f"v{i}",
        rejected_at=AT + dt.timedelta(minutes=i),
    )


def test_verdicts_come_back_newest_first_and_a_rerun_window_overwrites(settings: Settings) -> None:
    history = MonitoringHistory(settings)
    for hour in (1, 2, 3):
        history.record_verdict({"run_key": f"20261121T{hour:02d}00Z", "action": "ok"})
    history.record_verdict({"run_key": "20261121T0200Z", "action": "retrain"})
    got = history.verdicts(last=2)
    assert [v["run_key"] for v in got] == ["20261121T0300Z", "20261121T0200Z"]
    assert got[1]["action"] == "retrain" and "recorded_at" in got[1]
    assert len(history.verdicts(last=10)) == 3
    assert MonitoringHistory(settings).verdicts(last=1)[0]["run_key"] == "20261121T0300Z"


def test_a_verdict_without_its_window_is_refused(settings: Settings) -> None:
    with pytest.raises(ValueError, match="run_key"):
        MonitoringHistory(settings).record_verdict({"action": "ok"})


def test_rejections_are_kept_newest_and_once_per_run(settings: Settings) -> None:
    history = MonitoringHistory(settings)
    for i in range(REJECTIONS_KEPT + 3):
        history.add_rejection(_rejection(i))
    history.add_rejection(_rejection(REJECTIONS_KEPT + 2))  # the same run noted again
    kept = history.rejections()
    assert len(kept) == REJECTIONS_KEPT
    assert kept[0].run_id == "drift__3" and kept[-1].run_id == f"drift__{REJECTIONS_KEPT + 2}"


class RacingStore(ArtifactStore):
    """A real store, where another writer adds a rejection just before our first write."""

    def __init__(self, inner: ArtifactStore, settings: Settings) -> None:
        self.inner, self.settings, self.raced = inner, settings, False
        self.uri = inner.uri

    def cas_json(self, key: str, doc: Mapping[str, Any], expected_etag: str | None) -> str:
        if not self.raced:
            self.raced = True
            other = MonitoringHistory(self.settings, store=self.inner)
            other.add_rejection(_rejection(99, "other"))
        return self.inner.cas_json(key, doc, expected_etag)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.inner.put_bytes(key, data)

    def get_bytes(self, key: str) -> bytes:
        return self.inner.get_bytes(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list_keys(self, prefix: str = "") -> list[str]:
        return self.inner.list_keys(prefix)

    def read_json(self, key: str) -> Tagged | None:
        return self.inner.read_json(key)


def test_a_racing_rejection_is_merged_not_lost(settings: Settings) -> None:
    assert settings.registry.uri is not None
    store = RacingStore(open_store(settings.registry.uri, settings), settings)
    MonitoringHistory(settings, store=store).add_rejection(_rejection(1))
    assert store.raced
    assert {r.run_id for r in MonitoringHistory(settings).rejections()} == {"drift__1", "drift__99"}


def test_a_store_that_keeps_changing_gives_up_loudly(settings: Settings) -> None:
    class Busy(RacingStore):
        def cas_json(self, key: str, doc: Mapping[str, Any], expected_etag: str | None) -> str:
            raise ConcurrentUpdate("someone else wrote")

    assert settings.registry.uri is not None
    busy = Busy(open_store(settings.registry.uri, settings), settings)
    with pytest.raises(ConcurrentUpdate, match="run the task again"):
        MonitoringHistory(settings, store=busy).add_rejection(_rejection(1))


# The retrain step over two days of persistent drift --------------------------------------------


class FakeAirflow:
    """The ``eta_training`` runs Airflow holds: ids unique, as Airflow keeps them."""

    def __init__(self) -> None:
        self.runs: dict[str, str] = {}
        self.confs: dict[str, dict[str, Any]] = {}

    def open_runs(self) -> int:
        return sum(state in ("queued", "running") for state in self.runs.values())

    def trigger(self, run_id: str, conf: dict[str, Any]) -> bool:
        if run_id in self.runs:
            return False  # refused as a duplicate: already triggered
        self.runs[run_id], self.confs[run_id] = "queued", conf
        return True


def _land(settings: Settings, day: dt.date) -> None:
    (Path(Lake(settings).uri(RAW_ORDERS, day))).mkdir(parents=True, exist_ok=True)


def test_two_days_of_hourly_drift_trigger_one_retrain_per_day_of_new_data(
    settings: Settings,
) -> None:
    """Hourly drift for two days: the first hour triggers, the run queues and runs (the next
    hours wait), the gate rejects it (the rest of the day asks for nothing), and the next
    day's retrain waits for that day's orders to land, then triggers once."""
    airflow = FakeAirflow()
    _land(settings, DAY)
    triggered: list[tuple[int, str]] = []
    for hour in range(48):
        day = DAY + dt.timedelta(days=hour // 24)
        if hour == 26:  # the daily run lands yesterday's orders after midnight
            _land(settings, day)
        verdict = _verdict(day=day, hour=hour % 24)
        decision = plan_retrain(verdict, airflow.open_runs(), settings)
        if decision.trigger and decision.run_id and airflow.trigger(decision.run_id, decision.conf):
            triggered.append((hour, decision.run_id))
        for run_id, state in list(airflow.runs.items()):
            if state == "queued":
                airflow.runs[run_id] = "running"
            elif state == "running":  # the gate rejects the refit: the world has not changed
                airflow.runs[run_id] = "success"
                conf = airflow.confs[run_id]
                assert note_gate_rejection(run_id, conf, f"rejected_{hour}", settings)
    assert [hour for hour, _ in triggered] == [0, 26]
    assert triggered[0][1].startswith("drift__2026-11-20__")
    assert triggered[1][1].startswith("drift__2026-11-21__")
    assert [r.run_id for r in MonitoringHistory(settings).rejections()] == [
        run_id for _, run_id in triggered
    ]


def test_a_scheduled_run_rejected_by_the_gate_is_not_remembered(settings: Settings) -> None:
    assert not note_gate_rejection("scheduled__x", {"reason": "scheduled"}, "v", settings)
    assert MonitoringHistory(settings).rejections() == []


def test_an_ok_verdict_reads_nothing_and_triggers_nothing(tmp_path: Path) -> None:
    # No store or lake is opened for a verdict that asks for no retrain.
    broken = Settings(home=tmp_path, registry={"uri": "ftp://nowhere"})
    assert not plan_retrain(_verdict(action="ok"), 0, broken).trigger
