"""Ray Jobs glue without a cluster: ids, the forwarded environment, following logs, submitting."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from relay.infra.rayjobs import (
    JobFollower,
    JobSpec,
    RayJobFailed,
    follow,
    is_secret,
    relay_job_env,
    submission_id,
    submit,
)
from relay.settings import Settings

JOB = "eta_training-train-manual_1"


@dataclass
class Status:
    """What ``get_job_status`` returns: an enum-like object with ``.value``."""

    value: str


@dataclass
class Info:
    """What ``get_job_info`` returns; only ``message`` is read."""

    message: str = ""


@dataclass
class FakeJobClient:
    """A JobSubmissionClient whose log grows and status moves one poll at a time.

    ``logs[i]`` and ``statuses[i]`` are what the i-th poll sees; the last entry repeats.
    """

    logs: list[str] = field(default_factory=lambda: [""])
    statuses: list[str] = field(default_factory=lambda: ["RUNNING"])
    info: Info | None = None
    log_calls: int = 0
    status_calls: int = 0
    stopped: list[str] = field(default_factory=list)
    submitted: list[dict[str, Any]] = field(default_factory=list)

    def get_job_logs(self, job_id: str) -> str:
        text = self.logs[min(self.log_calls, len(self.logs) - 1)]
        self.log_calls += 1
        return text

    def get_job_status(self, job_id: str) -> Status:
        st = self.statuses[min(self.status_calls, len(self.statuses) - 1)]
        self.status_calls += 1
        return Status(st)

    def get_job_info(self, job_id: str) -> Info:
        if self.info is None:
            raise RuntimeError("Request failed with status code 404: Job does not exist.")
        return self.info

    def stop_job(self, job_id: str) -> bool:
        self.stopped.append(job_id)
        return True

    def submit_job(self, **kwargs: Any) -> str:
        self.submitted.append(kwargs)
        return kwargs["submission_id"]


class FakeClock:
    """Monotonic seconds that move only when the code under test waits."""

    def __init__(self) -> None:
        self.t = 0.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.t

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.t += seconds


# submission_id -----------------------------------------------------------------------------


def test_submission_id_replaces_unsafe_characters():
    sid = submission_id("eta_training", "train", "manual__2026-11-21T14:02:00+00:00", "1")
    assert sid == "eta_training-train-manual__2026-11-21T14_02_00_00_00-1"


def test_submission_id_collapses_runs_of_unsafe_characters_and_skips_empty_parts():
    assert submission_id("a b/c", "", "d!!e") == "a_b_c-d_e"
    assert submission_id("ok-1.2_x") == "ok-1.2_x"  # safe characters untouched


def test_submission_id_is_capped_at_200_characters():
    sid = submission_id("x" * 150, "y" * 150)
    assert len(sid) == 200
    assert sid == ("x" * 150 + "-" + "y" * 150)[:200]


# relay_job_env -----------------------------------------------------------------------------


def test_relay_job_env_forwards_relay_settings_but_no_secrets(tmp_path):
    environ = {
        "RELAY_PROFILE": "local",
        "RELAY_LAKE__URI": "s3://lake/relay",
        "RELAY_AIRFLOW__DATABASE_URL": "postgresql://airflow:secret@db/airflow",
        "RELAY_AIRFLOW__PARALLELISM": "4",
        "RELAY_RAY__ADDRESS": "ray://head:10001",
        "RELAY_HOME": "/somewhere/else",
        "AWS_ENDPOINT_URL": "http://minio:9000",
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "AKIA...",
        "AWS_SECRET_ACCESS_KEY": "very-secret",
        "AWS_SESSION_TOKEN": "token",
        "PATH": "/usr/bin",
        "XRELAY_NOT_OURS": "1",
        "RELAY_FEATURES__ONLINE_STORE_URL": "redis://:hunter2@redis:6379/0",
        "RELAY_SERVING__API_KEY": "k-123",
        "RELAY_SERVING__ADMIN_TOKEN": "t-456",
        "RELAY_DB__PASSWORD": "pw",
    }
    env = relay_job_env(Settings(home=tmp_path), environ=environ)
    assert env == {
        "RELAY_PROFILE": "local",
        "RELAY_LAKE__URI": "s3://lake/relay",
        "RELAY_HOME": str(tmp_path.resolve()),
        "AWS_ENDPOINT_URL": "http://minio:9000",
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    assert "very-secret" not in "".join(env.values())


@pytest.mark.parametrize(
    ("name", "value", "secret"),
    [
        ("RELAY_SERVING__MAX_BODY_BYTES", "1048576", False),
        ("RELAY_ROLLOUT__GUARD_SUSTAIN_S", "180", False),
        ("RELAY_LAKE__URI", "s3://lake/relay", False),
        ("RELAY_FEATURES__REDIS", "redis://redis:6379/0", False),
        ("RELAY_FEATURES__REDIS", "redis://user:pw@redis:6379/0", True),
        ("RELAY_FEAST__REDIS_CONNECTION", "redis:6379", False),
        ("RELAY_FEAST__REDIS_CONNECTION", "redis:6379,password=hunter2", True),
        ("RELAY_SERVING__CANARY_SALT_KEY", "x", True),
        ("RELAY_MONKEY", "x", False),
    ],
)
def test_a_secret_is_known_by_its_name_or_a_url_with_credentials(
    name: str, value: str, secret: bool
) -> None:
    assert is_secret(name, value) is secret


def test_serve_deployments_get_no_secret_in_their_runtime_env(monkeypatch, tmp_path):
    from serving.app import model_application, router_application

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret")
    monkeypatch.setenv("RELAY_FEATURES__ONLINE_STORE_URL", "redis://:hunter2@redis:6379/0")
    monkeypatch.setenv("RELAY_SERVING__MAX_JSON_DEPTH", "9")
    settings = Settings(home=tmp_path)
    for app in (model_application("v1", settings), router_application(settings)):
        env = app._bound_deployment.ray_actor_options["runtime_env"]["env_vars"]
        assert env["RELAY_SERVING__MAX_JSON_DEPTH"] == "9"
        assert not any(is_secret(k, v) for k, v in env.items()), env
        assert "very-secret" not in str(env) and "hunter2" not in str(env)


def test_relay_job_env_sets_an_absolute_home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = relay_job_env(Settings(home=Path("var")), environ={})
    assert Path(env["RELAY_HOME"]).is_absolute()
    assert env == {"RELAY_HOME": str(tmp_path.resolve() / "var")}


def test_relay_job_env_does_not_modify_the_given_environment(tmp_path):
    environ = {"RELAY_RAY__ADDRESS": "ray://head:10001", "RELAY_X": "1"}
    relay_job_env(Settings(home=tmp_path), environ=environ)
    assert environ == {"RELAY_RAY__ADDRESS": "ray://head:10001", "RELAY_X": "1"}


# JobFollower -------------------------------------------------------------------------------


def test_follower_emits_each_complete_line_once_and_holds_a_partial_one():
    c = FakeJobClient(
        logs=["one\ntw", "one\ntwo\nthree\n", "one\ntwo\nthree\n", "one\ntwo\nthree\nfo"]
    )
    f = JobFollower(JOB, c)
    assert f.new_lines() == ["one"]  # "tw" is held until its newline arrives
    assert f.new_lines() == ["two", "three"]
    assert f.new_lines() == []  # nothing new
    assert f.new_lines() == []  # "fo" has no newline yet
    assert f.flush() == ["fo"]  # the job ended: the unterminated line goes out too
    assert f.flush() == []
    assert f.tail == ["one", "two", "three", "fo"]


def test_follower_flush_without_partial_line():
    f = JobFollower(JOB, FakeJobClient(logs=["a\nb\n"]))
    assert f.flush() == ["a", "b"]
    assert f.tail == ["a", "b"]


def test_follower_keeps_only_the_last_tail_lines():
    text = "".join(f"line {i}\n" for i in range(10))
    f = JobFollower(JOB, FakeJobClient(logs=[text[:30], text + "last"]), tail_lines=3)
    emitted = f.new_lines() + f.flush()
    assert emitted == [f"line {i}" for i in range(10)] + ["last"]
    assert f.tail == ["line 8", "line 9", "last"]


def test_follower_poll_flushes_once_the_job_is_terminal():
    c = FakeJobClient(logs=["a\nb", "a\nb"], statuses=["RUNNING", "SUCCEEDED"])
    f = JobFollower(JOB, c)
    assert f.poll() == ("RUNNING", ["a"])
    assert f.poll() == ("SUCCEEDED", ["b"])


def test_outcome_succeeded_raises_nothing():
    c = FakeJobClient(info=Info("ignored"))
    assert JobFollower(JOB, c).outcome("SUCCEEDED") is None


@pytest.mark.parametrize("final", ["FAILED", "STOPPED"])
def test_outcome_raises_with_status_first_message_line_and_tail(final):
    c = FakeJobClient(
        logs=["loading\nTraceback (most recent call last):\nValueError: bad\n"],
        info=Info("Job entrypoint command failed with exit code 1\nmore detail"),
    )
    f = JobFollower(JOB, c, tail_lines=2)
    f.flush()
    with pytest.raises(RayJobFailed) as err:
        f.outcome(final)
    exc = err.value
    assert (exc.job_id, exc.status) == (JOB, final)
    assert exc.tail == ["Traceback (most recent call last):", "ValueError: bad"]
    msg = str(exc)
    assert f"Ray job {JOB} ended {final}: Job entrypoint command failed with exit code 1" in msg
    assert "more detail" not in msg
    assert "  | ValueError: bad" in msg
    assert "loading" not in msg


def test_outcome_of_a_job_ray_no_longer_knows_still_raises():
    f = JobFollower(JOB, FakeJobClient(info=None))  # get_job_info: 404 → RuntimeError
    with pytest.raises(RayJobFailed, match=f"Ray job {JOB} ended FAILED: \n"):
        f.outcome("FAILED")


# follow --------------------------------------------------------------------------------------


def test_follow_emits_lines_in_order_and_returns_succeeded():
    c = FakeJobClient(
        logs=["", "start\n", "start\nepoch 1\nepo", "start\nepoch 1\nepoch 2\ndone"],
        statuses=["PENDING", "RUNNING", "RUNNING", "SUCCEEDED"],
        info=Info(),
    )
    clock, emitted = FakeClock(), []
    st = follow(JOB, c, emitted.append, poll_interval_s=5, clock=clock, wait=clock.wait)
    assert st == "SUCCEEDED"
    assert emitted == ["start", "epoch 1", "epoch 2", "done"]
    assert clock.waits == [5, 5, 5]  # no wait after the terminal poll
    assert c.stopped == []


def test_follow_raises_on_failed_after_emitting_everything():
    c = FakeJobClient(
        logs=["step 1\n", "step 1\nboom"],
        statuses=["RUNNING", "FAILED"],
        info=Info("exit code 1"),
    )
    clock, emitted = FakeClock(), []
    with pytest.raises(RayJobFailed) as err:
        follow(JOB, c, emitted.append, clock=clock, wait=clock.wait)
    assert emitted == ["step 1", "boom"]
    assert err.value.status == "FAILED"
    assert err.value.tail == ["step 1", "boom"]
    assert c.stopped == []


def test_follow_stops_the_job_and_raises_timeout_error():
    c = FakeJobClient(logs=["working\n"], statuses=["RUNNING"])
    clock, emitted = FakeClock(), []
    with pytest.raises(TimeoutError, match="still running after 10"):
        follow(
            JOB, c, emitted.append, poll_interval_s=3, timeout_s=10, clock=clock, wait=clock.wait
        )
    assert c.stopped == [JOB]
    assert emitted == ["working"]
    assert clock.t > 10
    assert clock.t <= 10 + 3  # stopped at the first poll past the deadline


def test_follow_without_timeout_waits_as_long_as_it_takes():
    c = FakeJobClient(logs=["x\n"], statuses=["RUNNING"] * 500 + ["SUCCEEDED"], info=Info())
    clock = FakeClock()
    assert follow(JOB, c, lambda _: None, poll_interval_s=60, clock=clock, wait=clock.wait) == (
        "SUCCEEDED"
    )
    assert c.stopped == []
    assert clock.t == 500 * 60


# submit --------------------------------------------------------------------------------------


def test_submit_attaches_to_an_existing_job_without_submitting(tmp_path):
    c = FakeJobClient(info=Info("running"))
    spec = JobSpec(entrypoint="python -m ray_jobs.train", submission_id=JOB)
    assert submit(spec, Settings(home=tmp_path), job_client=c) == JOB
    assert c.submitted == []


def test_submit_merges_the_relay_environment_with_the_specs(tmp_path, monkeypatch):
    monkeypatch.setenv("RELAY_TRAIN__MAX_EPOCHS", "3")
    monkeypatch.setenv("RELAY_DATA__SEED", "11")
    monkeypatch.setenv("RELAY_AIRFLOW__DATABASE_URL", "postgresql://u:p@db/airflow")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret")
    c = FakeJobClient(info=None)
    spec = JobSpec(
        entrypoint="python -m ray_jobs.train --day 2026-11-21",
        submission_id=JOB,
        env_vars={"RELAY_TRAIN__MAX_EPOCHS": "5", "EXTRA": "spec"},
        runtime_env={
            "working_dir": ".",
            "env_vars": {"RELAY_DATA__SEED": "99", "EXTRA": "runtime_env", "OTHER": "kept"},
        },
        entrypoint_num_gpus=1,
        metadata={"dag": "eta_training"},
    )
    assert submit(spec, Settings(home=tmp_path), job_client=c) == JOB
    assert len(c.submitted) == 1
    call = c.submitted[0]
    assert call["entrypoint"] == spec.entrypoint
    assert call["submission_id"] == JOB
    assert call["entrypoint_num_gpus"] == 1
    assert call["metadata"] == {"dag": "eta_training"}
    runtime_env = call["runtime_env"]
    assert runtime_env["working_dir"] == "."
    env = runtime_env["env_vars"]
    assert env["RELAY_TRAIN__MAX_EPOCHS"] == "5"  # spec.env_vars win over the environment
    assert env["RELAY_DATA__SEED"] == "99"  # runtime_env's env_vars win over the environment
    assert env["EXTRA"] == "spec"  # spec.env_vars win over runtime_env's
    assert env["OTHER"] == "kept"
    assert env["AWS_REGION"] == "eu-west-1"
    assert env["RELAY_HOME"] == str(tmp_path.resolve())
    assert "RELAY_AIRFLOW__DATABASE_URL" not in env
    assert "AWS_SECRET_ACCESS_KEY" not in env
    # The spec itself is left as it was.
    assert spec.runtime_env["env_vars"] == {
        "RELAY_DATA__SEED": "99",
        "EXTRA": "runtime_env",
        "OTHER": "kept",
    }


def test_submit_sends_none_for_no_gpus_and_no_metadata(tmp_path):
    c = FakeJobClient(info=None)
    submit(JobSpec(entrypoint="true", submission_id=JOB), Settings(home=tmp_path), job_client=c)
    call = c.submitted[0]
    assert call["entrypoint_num_gpus"] is None
    assert call["metadata"] is None
    assert set(call["runtime_env"]) == {"env_vars"}
