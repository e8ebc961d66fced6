"""People are told: a real HTTP receiver on loopback gets each notification with its reason,
from the functions where the decisions happen (the gate, the rollout controller, a restore,
monitoring's retrain and rollback, Airflow's failure callback); a receiver that is down,
failing or hung costs the caller at most the configured timeouts and never an exception.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from relay.airflow.notifier import RelayNotifier
from relay.flows.eta_training import register_and_gate
from relay.flows.notices import monitoring_notice, notify_retrain
from relay.notify import Notification, NotificationKind, send
from relay.registry import Registry
from relay.rollout.controller import abort_rollout
from relay.rollout.manual import restore
from relay.rollout.record import RolloutState
from relay.settings import Settings, get_settings, reset_settings
from tests.unit.flows.test_gate_retry import untrained_run
from tests.unit.rollout.test_controller import World

pytestmark = [pytest.mark.integration]

SECRET_PATH = "/hooks/T0/B0/s3cr3t-path"
TOKEN = "tok-5f1e9c"


@dataclass
class Receiver:
    """A webhook on 127.0.0.1: records each POST, answers ``statuses`` in turn (then 200), or
    holds every request until released while ``hang`` is set."""

    url: str = ""
    posts: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    hang: bool = False
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def kinds(self) -> list[str]:
        return [p["kind"] for p in self.posts]

    def of(self, kind: NotificationKind) -> dict[str, Any]:
        (found,) = [p for p in self.posts if p["kind"] == kind.value]
        return found


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            if rec.hang:
                rec.release.wait(10)  # a hung server: holds the request until the test ends
                return
            with rec.lock:
                rec.posts.append(json.loads(body))
                rec.headers.append({k.lower(): v for k, v in self.headers.items()})
                status = rec.statuses.pop(0) if rec.statuses else 200
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    rec.url = f"http://127.0.0.1:{server.server_address[1]}{SECRET_PATH}"
    try:
        yield rec
    finally:
        rec.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def _told(s: Settings, url: str, **notify: Any) -> Settings:
    s.notify.webhook_url = SecretStr(url)
    s.notify.retry_backoff_s = 0.0
    for key, value in notify.items():
        setattr(s.notify, key, value)
    return s


def _notice() -> Notification:
    return Notification(kind=NotificationKind.ROLLBACK, subject="v1 restored", reason="p99 up")


# the webhook ----------------------------------------------------------------------------------


def test_a_notification_is_posted_as_json_with_the_bearer_token_and_no_secret_logged(
    receiver, tmp_path, caplog
):
    token = tmp_path / "notify_token"
    token.write_text(f"# the webhook's token\n{TOKEN}\n")
    s = _told(Settings(home=tmp_path), receiver.url, token_file=token)
    with caplog.at_level(logging.DEBUG):
        assert send(_notice(), s) is True
    (post,) = receiver.posts
    assert (post["kind"], post["reason"], post["subject"]) == ("rollback", "p99 up", "v1 restored")
    assert receiver.headers[0]["authorization"] == f"Bearer {TOKEN}"
    assert "p99 up" in caplog.text  # what happened is logged…
    assert TOKEN not in caplog.text and "s3cr3t" not in caplog.text  # …its secrets are not


def test_a_failing_receiver_is_tried_again_and_a_refusing_one_is_not(receiver, tmp_path):
    s = _told(Settings(home=tmp_path), receiver.url, attempts=3)
    receiver.statuses = [503, 503]
    assert send(_notice(), s) is True
    assert len(receiver.posts) == 3
    receiver.statuses = [400]
    assert send(_notice(), s) is False  # a refusal is final: the same body is refused again
    assert len(receiver.posts) == 4


def test_the_back_off_doubles_between_attempts(receiver, tmp_path):
    s = _told(Settings(home=tmp_path), receiver.url, attempts=3, retry_backoff_s=0.5)
    receiver.statuses = [500, 500, 500]
    waits: list[float] = []
    assert send(_notice(), s, sleep=waits.append) is False
    assert waits == [0.5, 1.0]


def test_a_receiver_that_is_down_fails_nothing(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed on exit: nothing listens there
    s = _told(Settings(home=tmp_path), f"http://127.0.0.1:{port}/hook", attempts=2)
    assert send(_notice(), s) is False


def test_a_hung_receiver_holds_the_caller_no_longer_than_the_timeouts(receiver, tmp_path):
    receiver.hang = True
    s = _told(Settings(home=tmp_path), receiver.url, attempts=2, timeout_s=0.3)
    began = time.monotonic()
    assert send(_notice(), s) is False
    assert time.monotonic() - began < 2.0  # two attempts of 0.3 s, with room for a slow box


def test_an_unreadable_token_file_fails_nothing(receiver, tmp_path):
    s = _told(Settings(home=tmp_path), receiver.url, token_file=tmp_path / "missing")
    assert send(_notice(), s) is False
    assert receiver.posts == []


# the decisions --------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> Iterator[Settings]:
    """``register_and_gate`` reads the process's settings: this test's home and receiver."""
    monkeypatch.setenv("RELAY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RELAY_NOTIFY__WEBHOOK_URL", receiver.url)
    monkeypatch.setenv("RELAY_NOTIFY__RETRY_BACKOFF_S", "0")
    reset_settings()
    yield get_settings()
    reset_settings()


def test_a_gate_rejection_is_told_and_the_version_names_the_drift_run_behind_it(
    home, receiver, tmp_path
):
    conf = {
        "reason": "eta_monitoring 20261121T1400 retrain: feature PSI: distance_km 0.41 > 0.2",
        "trigger": {
            "triggered_by": "eta_monitoring",
            "run_id": "scheduled__2026-11-21T14:00:00+00:00",
            "monitoring_run": "20261121T1400",
            "drift_report": "/reports/drift/20261121T1400.html",
            "drifted_features": ["distance_km"],
        },
    }
    run = untrained_run(tmp_path / "runs" / "retrain__1" / "model")
    outcome = register_and_gate(str(run), "train.parquet", [], run_id="retrain__1", conf=conf)
    assert outcome["passed"] is False
    told = receiver.of(NotificationKind.GATE_REJECTED)
    assert told["reason"] == outcome["summary"] and "REJECTED" in told["reason"]
    assert (told["versions"], told["report"], told["run_id"]) == (
        [outcome["version"]],
        outcome["report"],
        "retrain__1",
    )
    assert told["details"]["trigger"]["run_id"] == "scheduled__2026-11-21T14:00:00+00:00"
    # The registry, read afresh, names the drift run that triggered the version.
    trigger = Registry(home).get(outcome["version"]).lineage.trigger
    assert trigger is not None
    assert trigger.run_id == "scheduled__2026-11-21T14:00:00+00:00"
    assert trigger.drift_report == "/reports/drift/20261121T1400.html"
    assert trigger.reason == conf["reason"]
    # A retried gate task returns the recorded verdict and tells nobody twice.
    register_and_gate(str(run), "train.parquet", [], run_id="retrain__1", conf=conf)
    assert receiver.kinds() == ["gate_rejected"]


def test_monitoring_tells_a_triggered_retrain_and_a_rollback(receiver, tmp_path):
    s = _told(Settings(home=tmp_path), receiver.url)
    retrain = {
        "action": "retrain",
        "reasons": ["PASS: traffic: 900", "FAIL: prediction drift: PSI 0.350 > 0.2"],
        "production_version": "v2",
        "drifted_features": [],
        "report_path": "/reports/drift/x.html",
    }
    assert notify_retrain(retrain, "scheduled__1", "retrain__x", s) is True
    assert notify_retrain({**retrain, "action": "ok"}, "scheduled__2", None, s) is False
    rollback = {**retrain, "action": "rollback", "previous_version": "v1"}
    rollback["reasons"] = ["FAIL: quality: v2 live MAE 9.00 vs v1's live MAE 6.00 min"]
    notice = monitoring_notice(rollback, "scheduled__3")  # what run_monitoring sends
    assert notice is not None and send(notice, s)
    drift = receiver.of(NotificationKind.DRIFT_RETRAIN)
    assert drift["reason"] == "FAIL: prediction drift: PSI 0.350 > 0.2"
    assert (drift["report"], drift["details"]["training_run"]) == (
        "/reports/drift/x.html",
        "retrain__x",
    )
    back = receiver.of(NotificationKind.ROLLBACK)
    assert "live MAE 9.00" in back["reason"] and back["versions"] == ["v2", "v1"]


def test_the_controller_tells_a_rollback(world: World, receiver):
    w = world
    _told(w.s, receiver.url)
    w.start()
    w.ep.error_rates[w.candidate] = 0.2
    assert w.run_out() is RolloutState.ROLLED_BACK
    told = receiver.of(NotificationKind.ROLLBACK)
    assert "error" in told["reason"].lower()
    assert told["run_id"] == w.record().id and told["versions"] == [w.candidate, w.stable]


def test_the_controller_tells_a_step_held_past_its_time_once_then_its_abort(world: World, receiver):
    w = world
    _told(w.s, receiver.url)
    w.ep.rate = 0.0  # no candidate requests: the step never has its evidence
    w.start()
    assert w.run_out(ticks=30) is RolloutState.ABORTED
    assert receiver.kinds() == ["rollout_held", "rollout_aborted"]
    held = receiver.of(NotificationKind.ROLLOUT_HELD)
    assert "candidate requests" in held["reason"] and "past its 60 s minimum" in held["subject"]
    assert "max duration" in receiver.of(NotificationKind.ROLLOUT_ABORTED)["reason"]


def test_an_abort_is_told_with_who_and_why(world: World, receiver):
    w = world
    _told(w.s, receiver.url)
    w.start()
    w.tick()
    ended = abort_rollout(
        "cli:ana@laptop:4242",
        "pager: p99 alarm",
        w.s,
        registry=w.reg,
        store=w.store,
        endpoint=w.ep,
        lease=w.lease,
        now=w.now,
    )
    assert ended.state is RolloutState.ABORTED
    told = receiver.of(NotificationKind.ROLLOUT_ABORTED)
    assert "pager: p99 alarm" in told["reason"] and "cli:ana@laptop:4242" in told["subject"]


def test_a_restore_of_the_previous_version_is_told_as_a_rollback(world: World, receiver):
    w = world
    w.start()
    assert w.run_out() is RolloutState.PROMOTED
    _told(w.s, receiver.url)
    restore(
        w.stable,
        w.s,
        by="airflow:eta_rollback:manual__1",
        reason="support: ETAs too short since 14:00",
        registry=w.reg,
        store=w.store,
        endpoint=w.ep,
        lease=w.lease,
        now=w.now + dt.timedelta(minutes=1),
    )
    back = receiver.of(NotificationKind.ROLLBACK)
    assert back["reason"] == "support: ETAs too short since 14:00"
    assert back["versions"] == [w.candidate, w.stable]
    assert "airflow:eta_rollback:manual__1" in back["subject"]


def test_a_down_receiver_neither_fails_nor_stalls_a_rollback(world: World, tmp_path):
    w = world
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _told(w.s, f"http://127.0.0.1:{port}/hook", attempts=2)
    w.start()
    w.ep.error_rates[w.candidate] = 0.2
    assert w.run_out() is RolloutState.ROLLED_BACK


def test_airflows_failure_callback_posts_the_failed_run(receiver, tmp_path):
    from airflow.sdk import DAG

    s = _told(Settings(home=tmp_path), receiver.url)
    dag = DAG(dag_id="eta_training", schedule=None)
    context = {
        "dag": dag,
        "run_id": "manual__2026-11-21T14:00:00+00:00",
        "exception": RuntimeError("Ray job raysubmit_1 FAILED"),
    }
    RelayNotifier(settings=s)(context)
    told = receiver.of(NotificationKind.DAG_FAILED)
    assert told["subject"] == "eta_training run manual__2026-11-21T14:00:00+00:00 failed"
    assert told["reason"] == "RuntimeError: Ray job raysubmit_1 FAILED"
    assert told["run_id"] == "manual__2026-11-21T14:00:00+00:00"


def test_every_dag_tells_its_failures():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[3] / "dags"))
    assert bag.import_errors == {} and bag.dags
    for dag in bag.dags.values():
        callbacks = dag.on_failure_callback
        listed = callbacks if isinstance(callbacks, list) else [callbacks]
        assert any(isinstance(c, RelayNotifier) for c in listed), dag.dag_id
