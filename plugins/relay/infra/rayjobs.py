"""Ray work submitted through the Ray Jobs API, without Airflow.

The Airflow operator (:mod:`relay.airflow.operators`) is a thin shell around this module: it
submits a :class:`JobSpec`, follows it with :class:`JobFollower` (new log lines and the status
at each poll) and turns the end state into a task result. Keeping that here means the same
code runs from a DAG, from ``make demo`` and from the tests.

A job runs with the submitter's Relay configuration: its ``RELAY_*`` variables (not Airflow's),
the S3 endpoint and region, and ``RELAY_HOME`` resolved to an absolute path go into the job's
``runtime_env``, so the job reads and writes the same lake, registry and Feast store. Secrets
(AWS keys, database passwords) are not forwarded: Ray shows a runtime_env in its dashboard.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from relay.errors import RelayError
from relay.settings import Settings, get_settings

#: Terminal states of a Ray job (``ray.job_submission.JobStatus`` values).
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
_AWS_PUBLIC = frozenset({"AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION"})
#: Names that hold a secret, and values that carry one: a URL with credentials
#: (``redis://:pw@host``) or a connection string's ``password=`` (Feast's Redis string).
_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|(^|_)(API_)?KEY($|_)", re.I)
_SECRET_VALUE = re.compile(r"://[^/@\s]*:[^/@\s]*@|(^|[,;?&\s])pass(word)?=", re.I)
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class RayJobFailed(RelayError):
    """A Ray job ended FAILED or STOPPED; the message carries its last log lines."""

    def __init__(self, job_id: str, status: str, message: str, tail: list[str]) -> None:
        self.job_id = job_id
        self.status = status
        self.tail = tail
        last = "\n".join(f"  | {line}" for line in tail)
        super().__init__(f"Ray job {job_id} ended {status}: {message}\nlast log lines:\n{last}")


@dataclass(frozen=True)
class JobSpec:
    """What to run on the Ray cluster.

    Attributes:
        entrypoint: shell command run by the job's driver, e.g. ``python -m ray_jobs.train …``.
        submission_id: a stable id, so a retried submission is recognised (see
            :func:`submission_id`).
        env_vars: extra environment for the job, on top of :func:`relay_job_env`.
        runtime_env: extra ``runtime_env`` keys (``working_dir``, ``pip``, …).
        entrypoint_num_gpus: GPUs reserved for the driver (0: the driver only submits work).
        metadata: shown in the Ray dashboard's job list.
    """

    entrypoint: str
    submission_id: str
    env_vars: Mapping[str, str] = field(default_factory=dict)
    runtime_env: Mapping[str, Any] = field(default_factory=dict)
    entrypoint_num_gpus: float = 0
    metadata: Mapping[str, str] = field(default_factory=dict)


def submission_id(*parts: str) -> str:
    """A Ray-safe submission id from ``parts`` (dag, task, run id, try number, …)."""
    raw = "-".join(p for p in parts if p)
    return _ID_UNSAFE.sub("_", raw)[:200]


def is_secret(name: str, value: str) -> bool:
    """Whether an environment variable holds a secret, by its name or its value."""
    return bool(_SECRET_NAME.search(name) or _SECRET_VALUE.search(value))


def public_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Relay's variables that may travel in a Ray ``runtime_env`` (the dashboard shows it):
    ``RELAY_*`` but Airflow's own and any secret, and AWS's endpoint and region. Secrets reach
    Ray's nodes through their own environment (compose's ``environment:``, a secret file)."""
    return {
        k: v
        for k, v in environ.items()
        if ((k.startswith("RELAY_") and not k.startswith("RELAY_AIRFLOW__")) or k in _AWS_PUBLIC)
        and not is_secret(k, v)
    }


def relay_job_env(
    settings: Settings | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment a job needs to see the same Relay as the submitter.

    Ray shows a job's ``runtime_env`` in its dashboard, so no secret travels this way
    (:func:`public_env`): Airflow's own settings, AWS keys, passwords, tokens and URLs with
    credentials stay behind; the Ray cluster has its own.
    """
    s = settings or get_settings()
    out = public_env(environ if environ is not None else os.environ)
    out["RELAY_HOME"] = str(s.home)
    # The job joins the cluster it runs on, whatever address the submitter used.
    out.pop("RELAY_RAY__ADDRESS", None)
    return out


def client(settings: Settings | None = None) -> Any:
    """A ``JobSubmissionClient`` for the configured Ray dashboard (``RELAY_RAY__DASHBOARD_URL``).

    Ray's token authentication, when the cluster has it on, takes ``RAY_AUTH_TOKEN`` from the
    environment; it is sent as a bearer header, never logged.
    """
    # ray.job_submission uses packaging.version without importing it (Ray 2.60); in a fresh
    # Airflow task process nothing else has imported it yet.
    import packaging.version  # noqa: F401
    from ray.job_submission import JobSubmissionClient

    s = settings or get_settings()
    return JobSubmissionClient(s.ray.dashboard_url, headers=auth_headers() or None)


def auth_headers() -> dict[str, str]:
    """Ray's token header, for clusters with token auth: ``RAY_AUTH_TOKEN``, the file in
    ``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token`` (``ray start`` turns auth on if it exists).
    """
    from pathlib import Path

    token = os.environ.get("RAY_AUTH_TOKEN")
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
        token = path.read_text().strip() if path.is_file() else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def submit(spec: JobSpec, settings: Settings | None = None, job_client: Any = None) -> str:
    """Submit ``spec``; when a job with its submission id exists already, attach to it.

    Returns:
        The submission id.
    """
    c = job_client or client(settings)
    existing = _job_info(c, spec.submission_id)
    if existing is not None:
        return spec.submission_id
    runtime_env = dict(spec.runtime_env)
    runtime_env["env_vars"] = {
        **relay_job_env(settings),
        **runtime_env.get("env_vars", {}),
        **spec.env_vars,
    }
    c.submit_job(
        entrypoint=spec.entrypoint,
        submission_id=spec.submission_id,
        runtime_env=runtime_env,
        entrypoint_num_gpus=spec.entrypoint_num_gpus or None,
        metadata=dict(spec.metadata) or None,
    )
    return spec.submission_id


def _job_info(c: Any, job_id: str) -> Any:
    try:
        return c.get_job_info(job_id)
    except RuntimeError:  # the client's answer to an unknown id (HTTP 404)
        return None


def status(job_id: str, job_client: Any) -> str:
    """The job's status as a string (``PENDING``, ``RUNNING``, ``SUCCEEDED``, …)."""
    return str(job_client.get_job_status(job_id).value)


def stop(job_id: str, job_client: Any) -> bool:
    """Ask Ray to stop the job (SIGTERM to its driver, then SIGKILL). False if it had ended."""
    return bool(job_client.stop_job(job_id))


class JobFollower:
    """Follows one job: the log lines it printed since the last poll, and its status.

    Ray returns a job's whole log on every call; the follower remembers how much it has already
    handed out, so each line is emitted once.
    """

    def __init__(self, job_id: str, job_client: Any, tail_lines: int = 30) -> None:
        self.job_id = job_id
        self.client = job_client
        self._seen = 0
        self._partial = ""
        self.tail: list[str] = []
        self._tail_lines = tail_lines

    def new_lines(self) -> list[str]:
        """Complete log lines printed since the previous call."""
        logs: str = self.client.get_job_logs(self.job_id)
        chunk = logs[self._seen :]
        self._seen = len(logs)
        text = self._partial + chunk
        *lines, self._partial = text.split("\n")
        self.tail = (self.tail + lines)[-self._tail_lines :]
        return lines

    def flush(self) -> list[str]:
        """Every remaining line, the unterminated last one included (call once the job ended)."""
        lines = self.new_lines()
        if self._partial:
            lines.append(self._partial)
            self.tail = [*self.tail, self._partial][-self._tail_lines :]
            self._partial = ""
        return lines

    def poll(self) -> tuple[str, list[str]]:
        """The status, and the lines printed since the last poll."""
        st = status(self.job_id, self.client)
        lines = self.flush() if st in TERMINAL else self.new_lines()
        return st, lines

    def outcome(self, final_status: str) -> None:
        """Raise :class:`RayJobFailed` unless ``final_status`` is SUCCEEDED."""
        if final_status == "SUCCEEDED":
            return
        info = _job_info(self.client, self.job_id)
        message = getattr(info, "message", "") or ""
        raise RayJobFailed(self.job_id, final_status, message.split("\n", 1)[0], self.tail)


def follow(
    job_id: str,
    job_client: Any,
    emit: Callable[[str], None],
    poll_interval_s: float = 2.0,
    timeout_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    wait: Callable[[float], None] = time.sleep,
) -> str:
    """Emit the job's log lines as they come until it ends; return its final status.

    Raises:
        RayJobFailed: the job ended FAILED or STOPPED.
        TimeoutError: ``timeout_s`` passed first (the job is stopped).
    """
    f = JobFollower(job_id, job_client)
    deadline = None if timeout_s is None else clock() + timeout_s
    for st, lines in _polls(f, poll_interval_s, wait):
        for line in lines:
            emit(line)
        if st in TERMINAL:
            f.outcome(st)
            return st
        if deadline is not None and clock() > deadline:
            stop(job_id, job_client)
            raise TimeoutError(f"Ray job {job_id} still running after {timeout_s} s: stopped")
    raise AssertionError("unreachable")  # pragma: no cover, _polls never ends by itself


def _polls(
    f: JobFollower, interval_s: float, wait: Callable[[float], None]
) -> Iterator[tuple[str, list[str]]]:
    while True:
        yield f.poll()
        wait(interval_s)  # the poll interval of a remote job, not synchronisation
