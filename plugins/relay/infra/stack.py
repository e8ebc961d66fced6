"""The local stack behind ``make up`` / ``make down``: Airflow, a Ray head, the Serve endpoint.

Every process is started here in a session of its own, its process group id in
``{home}/run/<name>.pid`` and its output in ``{home}/logs/<name>.log``; :func:`stop_all` stops
exactly those groups (never ``ray stop``, which would stop every Ray on the machine): for Ray,
every daemon ``ray start`` left behind. Airflow runs from ``{home}/airflow`` on the database in
``RELAY_AIRFLOW__DATABASE_URL`` (SQLite by default, PostgreSQL in the prod profile).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from relay.settings import Settings, get_settings

ADMIN_USER = "admin"
GPU_POOL = "ray_gpu"


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def _secret(path: Path) -> str:
    """A random secret kept in a file of the stack's home (created once, mode 600)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def airflow_env(settings: Settings | None = None) -> dict[str, str]:
    """Environment for every Airflow command of this stack (on top of ``os.environ``)."""
    s = settings or get_settings()
    home = s.home / "airflow"
    api = urllib.parse.urlparse(s.airflow.api_url)
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(project_root() / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(project_root() / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # 2 cores: a few task processes at once, not Airflow's default 32.
        "AIRFLOW__CORE__PARALLELISM": str(s.airflow.parallelism),
        # New DAGs wait paused; `relay stack up` unpauses the ones it runs.
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": str(s.airflow.database_url),
        "AIRFLOW__API__HOST": api.hostname or "127.0.0.1",
        "AIRFLOW__API__PORT": str(api.port or 8080),
        "AIRFLOW__API__BASE_URL": s.airflow.api_url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{s.airflow.api_url.rstrip('/')}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__API_AUTH__JWT_SECRET": _secret(home / ".jwt_secret"),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
    }
    return env


def admin_password(settings: Settings | None = None) -> str:
    """The Airflow admin's password (Airflow generates it on first start)."""
    s = settings or get_settings()
    data = json.loads((s.home / "airflow" / "passwords.json").read_text())
    return str(data[ADMIN_USER])


def _run_dir(s: Settings) -> Path:
    path = s.home / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def start_process(
    name: str, argv: list[str], env: Mapping[str, str], s: Settings, daemonizes: bool = False
) -> int:
    """Start a process in a session of its own; record its process group; log to a file.

    Args:
        daemonizes: the command starts daemons and exits (``ray start``): wait for it, then
            the group it leaves behind is what :func:`stop_all` stops.

    Returns:
        The process group id (the started command's PID).
    """
    pid_file = _run_dir(s) / f"{name}.pid"
    if pid_file.exists() and _alive(int(pid_file.read_text())):
        return int(pid_file.read_text())
    logs = s.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(  # the stack's own commands, no shell
            argv,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=project_root(),
        )
    pid_file.write_text(str(proc.pid))
    if daemonizes and proc.wait() != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed; see {logs / f'{name}.log'}")
    return proc.pid


def _alive(pgid: int) -> bool:
    """Whether any process of the group is still running."""
    try:
        os.killpg(pgid, 0)
    except OSError:
        return False
    return True


def stop_all(settings: Settings | None = None, timeout_s: float = 30.0) -> list[str]:
    """Stop every process this stack started: each recorded process group and every process
    descended from it that left the group (Serve's HAProxy runs in a session of its own).
    SIGTERM first, SIGKILL after ``timeout_s``."""
    s = settings or get_settings()
    stopped = []
    for pid_file in sorted(_run_dir(s).glob("*.pid")):
        pgid = int(pid_file.read_text())
        strays = _descendants(pgid)
        if _alive(pgid) or strays:
            _signal_group(pgid, signal.SIGTERM)
            _signal_each(strays, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while (_alive(pgid) or any(_pid_alive(p) for p in strays)) and (
                time.monotonic() < deadline
            ):
                time.sleep(0.2)  # waiting for processes to exit, bounded
            _signal_group(pgid, signal.SIGKILL)
            _signal_each(strays, signal.SIGKILL)
            stopped.append(pid_file.stem)
        pid_file.unlink()
    return stopped


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _signal_each(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def _descendants(pgid: int) -> list[int]:
    """Processes descended from members of group ``pgid`` that are not in it (Linux /proc)."""
    parent: dict[int, int] = {}
    group: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        pid = int(stat.parent.name)
        parent[pid], group[pid] = int(fields[1]), int(fields[2])
    members = {p for p, g in group.items() if g == pgid}
    found: set[int] = set()
    frontier = set(members)
    while frontier:
        children = {p for p, pp in parent.items() if pp in frontier} - members - found
        found |= children
        frontier = children
    return sorted(found)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(OSError):  # the group ended meanwhile
        os.killpg(pgid, sig)


def wait_until(
    check: Callable[[], bool], what: str, timeout_s: float = 180.0, every_s: float = 1.0
) -> None:
    """Poll ``check`` until it is true; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, urllib.error.URLError, ValueError):
            pass  # not up yet
        time.sleep(every_s)  # polling a service that is starting, bounded by the deadline
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s")


def _http_ok(url: str, headers: Mapping[str, str] | None = None) -> bool:
    req = urllib.request.Request(url, headers=dict(headers or {}))  # noqa: S310, loopback URLs
    with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310, loopback URLs from settings
        return bool(resp.status == 200)


def start_ray(settings: Settings | None = None) -> int:
    """A Ray head with its dashboard (Jobs API), Serve's HAProxy ingress enabled."""
    from relay.serve.control import HAPROXY_ENV

    s = settings or get_settings()
    dash = urllib.parse.urlparse(s.ray.dashboard_url)
    argv = [
        _bin("ray"),
        "start",
        "--head",
        f"--port={s.ray.gcs_port}",
        f"--num-cpus={s.ray.num_cpus}",
        f"--dashboard-host={dash.hostname or '127.0.0.1'}",
        f"--dashboard-port={dash.port or 8265}",
        "--disable-usage-stats",
    ]
    # Job entrypoints say `python`: make it this environment's, wherever make up was run from.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**HAPROXY_ENV, "RELAY_HOME": str(s.home), "PATH": path}
    pid = start_process("ray", argv, env, s, daemonizes=True)
    from relay.infra.rayjobs import auth_headers

    url = f"{s.ray.dashboard_url}/api/version"
    wait_until(lambda: _http_ok(url, auth_headers()), "Ray dashboard", 180)
    return pid


def airflow(args: list[str], settings: Settings | None = None, check: bool = True) -> str:
    """Run an ``airflow`` command with the stack's environment; returns its stdout."""
    env = {**os.environ, **airflow_env(settings)}
    res = subprocess.run(  # the stack's own command, no shell
        [_bin("airflow"), *args], env=env, capture_output=True, text=True, check=False
    )
    if check and res.returncode != 0:
        raise RuntimeError(f"airflow {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return res.stdout


def start_airflow(settings: Settings | None = None) -> None:
    """Migrate the database, create the GPU pool, start the four Airflow services."""
    s = settings or get_settings()
    (s.home / "airflow").mkdir(parents=True, exist_ok=True)
    airflow(["db", "migrate"], s)
    airflow(
        ["pools", "set", GPU_POOL, str(s.airflow.gpu_pool_slots), "Ray jobs that may use a GPU"], s
    )
    env = airflow_env(s)
    for service in ("api-server", "scheduler", "dag-processor", "triggerer"):
        start_process(f"airflow-{service}", [_bin("airflow"), service], env, s)
    wait_until(lambda: _http_ok(f"{s.airflow.api_url}/api/v2/monitor/health"), "Airflow API", 240)


class AirflowAPI:
    """Airflow's REST API v2, as the UI uses it (token from ``/auth/token``)."""

    def __init__(self, url: str, username: str, password: str) -> None:
        self.url = url.rstrip("/")
        token = self._call("POST", "/auth/token", {"username": username, "password": password})
        self.token = str(token["access_token"])

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310
        req.add_header("Content-Type", "application/json")
        if getattr(self, "token", None):
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310, loopback API
            return json.loads(resp.read() or b"null")

    def get(self, path: str) -> Any:
        return self._call("GET", path)

    def unpause(self, dag_id: str) -> Any:
        return self._call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(
        self, dag_id: str, conf: Mapping[str, Any], slot: Mapping[str, str] | None = None
    ) -> str:
        """Trigger a run; with ``slot`` (its ``logical_date`` and data interval) in place of
        the scheduled run for that slot."""
        body = {"logical_date": None, **(slot or {}), "conf": dict(conf)}
        run = self._call("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)
        return str(run["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        q = urllib.parse.quote(run_id, safe="")
        return str(self.get(f"/api/v2/dags/{dag_id}/dagRuns/{q}")["state"])

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        q = urllib.parse.quote(run_id, safe="")
        items = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{q}/taskInstances")["task_instances"]
        return {t["task_id"]: str(t["state"]) for t in items}

    def wait(
        self,
        dag_id: str,
        run_id: str,
        timeout_s: float,
        on_change: Callable[[dict[str, str]], None] | None = None,
    ) -> str:
        """Poll the run until it ends; ``on_change`` sees task states as they move."""
        deadline = time.monotonic() + timeout_s
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            try:
                states = self.task_states(dag_id, run_id)
                state = self.run_state(dag_id, run_id)
            except (TimeoutError, urllib.error.URLError) as exc:
                # A busy API server (2 cores, four Airflow services) is not a failed run.
                if isinstance(exc, urllib.error.HTTPError) and exc.code < 500:
                    raise
                time.sleep(2)  # retrying a busy server, bounded by the deadline
                continue
            if states != seen and on_change:
                on_change(states)
            seen = states
            if state in ("success", "failed"):
                return state
            time.sleep(2)  # polling a DAG run, bounded by the deadline
        raise TimeoutError(f"{dag_id} run {run_id} still running after {timeout_s:.0f} s")


def task_progress(emit: Callable[[str], None], dag_id: str) -> Callable[[dict[str, str]], None]:
    """An ``on_change`` for :meth:`AirflowAPI.wait` that prints each task once it ends."""
    shown: dict[str, str] = {}
    ended = ("success", "failed", "skipped", "upstream_failed")

    def progress(states: dict[str, str]) -> None:
        for task, state in states.items():
            if state in ended and shown.get(task) != state:
                emit(f"  {dag_id}.{task}: {state}")
                shown[task] = state

    return progress


def api(settings: Settings | None = None) -> AirflowAPI:
    s = settings or get_settings()
    return AirflowAPI(s.airflow.api_url, ADMIN_USER, admin_password(s))


def wait_for_dag(client: AirflowAPI, dag_id: str, timeout_s: float = 180) -> None:
    """Wait until the dag-processor has parsed ``dag_id``."""

    def parsed() -> bool:
        try:
            client.get(f"/api/v2/dags/{dag_id}")
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return False
            raise
        return True

    wait_until(parsed, f"DAG {dag_id}", timeout_s)


def first_run_conf(today: dt.date, days: int = 3) -> dict[str, Any]:
    """The first ``eta_training`` run of ``make up``: the ``days`` before today, no search."""
    return {
        "start_date": (today - dt.timedelta(days=days)).isoformat(),
        "end_date": (today - dt.timedelta(days=1)).isoformat(),
        "skip_tuning": True,
        "epochs": 8,
        "reason": "make up: first run",
    }


def up(
    settings: Settings | None = None,
    emit: Callable[[str], None] = print,
    first_run: bool = True,
    timeout_s: float = 1800,
) -> dict[str, Any]:
    """Start Ray, Airflow and (through the first ``eta_training`` run) the Serve endpoint.

    Returns the URLs and, when a first run was triggered, its id and state.
    """
    s = settings or get_settings()
    emit(f"Ray head (dashboard {s.ray.dashboard_url}) ...")
    start_ray(s)
    emit(
        f"Airflow on {s.airflow.database_url.split('@')[-1] if s.airflow.database_url else ''} ..."
    )
    start_airflow(s)
    client = api(s)
    for dag_id in ("eta_training", "eta_monitoring", "eta_rollback"):
        wait_for_dag(client, dag_id)
    info: dict[str, Any] = {"airflow": s.airflow.api_url, "ray": s.ray.dashboard_url}
    from relay.registry import Registry

    production = Registry(s).stage_version("production")
    if production is not None:
        # A restarted stack: serve what was in production instead of training again.
        emit(f"production is {production.id}: serving it again ...")
        info["restored"] = restore_serving(production.id, s, emit)
    elif first_run:
        # The first run takes the schedule's pending slot (yesterday's interval), triggered
        # while the DAG is still paused: unpausing would otherwise start a scheduled run for
        # that interval first, and the two would train on the same days one after the other.
        # With the slot's data interval too: the scheduler then moves on to the next slot.
        conf = first_run_conf(dt.datetime.now(dt.UTC).date())
        run_id = client.trigger("eta_training", conf, next_slot(client, "eta_training"))
        client.unpause("eta_training")
        emit(f"eta_training {run_id} triggered; waiting (progress in the Airflow UI) ...")
        progress = task_progress(emit, "eta_training")

        info["first_run"] = run_id
        info["first_run_state"] = client.wait("eta_training", run_id, timeout_s, progress)
    client.unpause("eta_training")
    client.unpause("eta_monitoring")
    return info


def next_slot(client: AirflowAPI, dag_id: str) -> dict[str, str] | None:
    """The logical date and data interval of the DAG's next scheduled run (None: none)."""
    dag = client.get(f"/api/v2/dags/{dag_id}")
    keys = {
        "logical_date": "next_dagrun_logical_date",
        "data_interval_start": "next_dagrun_data_interval_start",
        "data_interval_end": "next_dagrun_data_interval_end",
    }
    slot = {k: dag.get(v) for k, v in keys.items()}
    return slot if all(slot.values()) else None


def restore_serving(
    version: str, settings: Settings | None = None, emit: Callable[[str], None] = print
) -> str:
    """Deploy ``version`` with all traffic through a Ray job (as ``eta_rollback`` does)."""
    from relay.infra import rayjobs

    s = settings or get_settings()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    spec = rayjobs.JobSpec(
        entrypoint=f"python -m ray_jobs.rollout restore --version {version}",
        submission_id=rayjobs.submission_id("stack-up-restore", version, stamp),
        env_vars={"RELAY_RESTORE_REASON": "stack restarted: serving production again"},
        metadata={"relay": "stack up"},
    )
    c = rayjobs.client(s)
    job_id = rayjobs.submit(spec, s, c)
    rayjobs.follow(job_id, c, lambda line: None, timeout_s=600)
    emit(f"  Ray job {job_id}: {version} serving")
    return version
