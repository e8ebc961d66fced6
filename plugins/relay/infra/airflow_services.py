"""Airflow of the local stack: its environment, its CLI and its four services.

Airflow runs from ``{home}/airflow`` on the database in ``RELAY_AIRFLOW__DATABASE_URL`` (SQLite
by default, PostgreSQL in the prod profile), with the DAGs of ``dags/`` and an ``admin`` user:
the simple auth manager's by default, FAB's (users and roles in the metadata database) with
``RELAY_AIRFLOW__AUTH_MANAGER=fab``. Either way its password is in a file Relay creates mode 600.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import urllib.parse
from pathlib import Path

from relay.infra.processes import http_ok, project_root, start_process, venv_bin, wait_until
from relay.infra.secret_files import write_private
from relay.settings import Settings, get_settings

ADMIN_USER = "admin"
FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
GPU_POOL = "ray_gpu"
SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")
#: The scheduler's and triggerer's log servers bind every interface (Airflow hard-codes it) and
#: serve logs to remote workers only: here the api-server reads the task logs from local disk.
SERVICE_ARGS = {"scheduler": ["--skip-serve-logs"], "triggerer": ["--skip-serve-logs"]}


def _secret(path: Path) -> str:
    """A random secret kept in a file of the stack's home (created once, mode 600)."""
    write_private(path, secrets.token_urlsafe(32))
    return path.read_text().strip()


def ensure_admin_password(settings: Settings | None = None) -> Path:
    """The simple auth manager's password file, created by Relay (mode 600) before Airflow
    starts: Airflow would write it with the default umask (world-readable)."""
    s = settings or get_settings()
    path = s.home / "airflow" / "passwords.json"
    write_private(path, json.dumps({ADMIN_USER: secrets.token_urlsafe(16)}))
    return path


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
        **_auth_manager_env(s),
        "AIRFLOW__API_AUTH__JWT_SECRET": _secret(home / ".jwt_secret"),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        # Its health server binds 0.0.0.0 by default: every service of the stack is loopback.
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
    }
    return env


def _auth_manager_env(s: Settings) -> dict[str, str]:
    home = s.home / "airflow"
    if s.airflow.auth_manager == "fab":
        return {
            "AIRFLOW__CORE__AUTH_MANAGER": FAB_AUTH_MANAGER,
            # FAB's Flask app signs its sessions with it.
            "AIRFLOW__API__SECRET_KEY": _secret(home / ".api_secret_key"),
        }
    return {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
    }


def create_fab_admin(settings: Settings | None = None) -> bool:
    """The FAB auth manager's admin (role Admin), with the password of Relay's 0600 file;
    returns whether it was created (False: it exists, its password as it was set)."""
    s = settings or get_settings()
    listed = airflow(["users", "list", "--output", "json"], s).strip().splitlines()
    # Airflow prints its warnings on stdout too: the list is the last line.
    users = json.loads(listed[-1]) if listed and listed[-1].startswith("[") else []
    if any(user.get("username") == ADMIN_USER for user in users):
        return False
    # Through the prompt, not `--password`: an argument is visible to every user in `ps`.
    password = admin_password(s)
    who = ["--email", f"{ADMIN_USER}@localhost", "--firstname", "Relay", "--lastname", "Admin"]
    airflow(
        ["users", "create", "--username", ADMIN_USER, "--role", "Admin", *who],
        s,
        stdin=f"{password}\n{password}\n",
    )
    return True


def admin_password(settings: Settings | None = None) -> str:
    """The Airflow admin's password (Airflow generates it on first start)."""
    s = settings or get_settings()
    data = json.loads((s.home / "airflow" / "passwords.json").read_text())
    return str(data[ADMIN_USER])


def airflow(
    args: list[str], settings: Settings | None = None, check: bool = True, stdin: str = ""
) -> str:
    """Run an ``airflow`` command with the stack's environment, ``stdin`` its input; returns its
    stdout. No controlling terminal (a session of its own): a prompt reads ``stdin``."""
    env = {**os.environ, **airflow_env(settings)}
    res = subprocess.run(  # the stack's own command, no shell
        [venv_bin("airflow"), *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        start_new_session=True,
    )
    if check and res.returncode != 0:
        raise RuntimeError(f"airflow {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return res.stdout


def start_airflow(settings: Settings | None = None) -> None:
    """Migrate the database, create the GPU pool, start the four Airflow services."""
    s = settings or get_settings()
    (s.home / "airflow").mkdir(parents=True, exist_ok=True)
    ensure_admin_password(s)
    airflow(["db", "migrate"], s)
    if s.airflow.auth_manager == "fab":
        create_fab_admin(s)
    airflow(
        ["pools", "set", GPU_POOL, str(s.airflow.gpu_pool_slots), "Ray jobs that may use a GPU"], s
    )
    env = airflow_env(s)
    for service in SERVICES:
        argv = [venv_bin("airflow"), service, *SERVICE_ARGS.get(service, [])]
        start_process(f"airflow-{service}", argv, env, s)
    wait_until(lambda: http_ok(f"{s.airflow.api_url}/api/v2/monitor/health"), "Airflow API", 240)
