"""The stack's processes: each started in a session of its own, stopped by its process group.

Every process is started here with its process group id in ``{home}/run/<name>.pid`` and its
output in ``{home}/logs/<name>.log``; :func:`stop_all` stops exactly those groups (never
``ray stop``, which would stop every Ray on the machine): for Ray, every daemon ``ray start``
left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx

from relay.settings import Settings, get_settings


def venv_bin(name: str) -> str:
    """The path of a command of this Python environment (``ray``, ``airflow``)."""
    return str(Path(sys.executable).with_name(name))


def project_root() -> Path:
    """The checkout: DAGs, plugins and the Ray job entrypoints are found from here."""
    return Path(__file__).resolve().parents[3]


def _run_dir(s: Settings) -> Path:
    path = s.home / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def start_process(
    name: str, argv: list[str], env: Mapping[str, str], s: Settings, daemonizes: bool = False
) -> int:
    """Start a process in a session of its own; record its process group; log to a file.

    Args:
        name: names the pid and log files.
        argv: the command.
        env: set on top of ``os.environ``.
        s: Relay's settings (the stack's home).
        daemonizes: the command starts daemons and exits (``ray start``): wait for it, then
            the group it leaves behind is what :func:`stop_all` stops.

    Returns:
        The process group id (the started command's PID).
    """
    pid_file = _run_dir(s) / f"{name}.pid"
    if pid_file.exists() and _alive(int(pid_file.read_text()), group=True):
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


def stop_all(settings: Settings | None = None, timeout_s: float = 30.0) -> list[str]:
    """Stop every process this stack started: each recorded process group and every process
    descended from it that left the group (Serve's HAProxy runs in a session of its own).
    SIGTERM first, SIGKILL after ``timeout_s``."""
    s = settings or get_settings()
    stopped = []
    for pid_file in sorted(_run_dir(s).glob("*.pid")):
        pgid = int(pid_file.read_text())
        strays = _descendants(pgid)
        if _alive(pgid, group=True) or strays:
            _signal(pgid, strays, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while (_alive(pgid, group=True) or any(_alive(p) for p in strays)) and (
                time.monotonic() < deadline
            ):
                time.sleep(0.2)  # waiting for processes to exit, bounded
            _signal(pgid, strays, signal.SIGKILL)
            stopped.append(pid_file.stem)
        pid_file.unlink()
    _forget_ray_cluster(s.ray.gcs_port)
    return stopped


def _forget_ray_cluster(gcs_port: int) -> None:
    """Remove Ray's note of the last cluster started here when it names the head just stopped:
    left behind, every later plain ``ray.init()`` on this machine tries to join a dead cluster."""
    marker = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"
    marker /= "ray_current_cluster"
    if marker.exists() and marker.read_text().strip().endswith(f":{gcs_port}"):
        marker.unlink(missing_ok=True)


def _alive(pid: int, group: bool = False) -> bool:
    """Whether process ``pid`` (with ``group``: any process of group ``pid``) still runs. A
    zombie does not: a service this process started and killed stays one until reaped, and
    waiting for it to exit would wait out the whole timeout."""
    try:
        (os.killpg if group else os.kill)(pid, 0)
    except OSError:
        return False
    members = _members(pid) if group else {pid}
    return any(_state(p) not in ("Z", "") for p in members)


def _state(pid: int) -> str:
    """A process's state letter (``R``, ``S``, ``Z`` …; Linux /proc), empty once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _signal(pgid: int, strays: list[int], sig: int) -> None:
    """Send ``sig`` to group ``pgid`` and to each of ``strays`` (any may have ended meanwhile)."""
    with contextlib.suppress(OSError):
        os.killpg(pgid, sig)
    for pid in strays:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def stack_pids(settings: Settings | None = None) -> set[int]:
    """Every live process this stack started: the recorded groups' members and descendants."""
    pids: set[int] = set()
    for pid_file in sorted(_run_dir(settings or get_settings()).glob("*.pid")):
        pgid = int(pid_file.read_text())
        pids |= _members(pgid) | set(_descendants(pgid))
    return pids


def _members(pgid: int) -> set[int]:
    return {pid for pid, group in _proc_table()[1].items() if group == pgid}


def _proc_table() -> tuple[dict[int, int], dict[int, int]]:
    """Each live process's parent and process group (Linux /proc)."""
    parent: dict[int, int] = {}
    group: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        pid = int(stat.parent.name)
        parent[pid], group[pid] = int(fields[1]), int(fields[2])
    return parent, group


def _descendants(pgid: int) -> list[int]:
    """Processes descended from members of group ``pgid`` that are not in it (Linux /proc)."""
    parent, group = _proc_table()
    members = {p for p, g in group.items() if g == pgid}
    found: set[int] = set()
    frontier = set(members)
    while frontier:
        children = {p for p, pp in parent.items() if pp in frontier} - members - found
        found |= children
        frontier = children
    return sorted(found)


def wait_until(
    check: Callable[[], bool], what: str, timeout_s: float = 180.0, every_s: float = 1.0
) -> None:
    """Poll ``check`` until it is true; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, httpx.HTTPError, ValueError):
            pass  # not up yet
        time.sleep(every_s)  # polling a service that is starting, bounded by the deadline
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s")


def http_ok(url: str, headers: Mapping[str, str] | None = None) -> bool:
    """Whether a GET of ``url`` (a loopback URL from the settings) answers 200."""
    return httpx.get(url, headers=dict(headers or {}), timeout=5).status_code == 200
