"""Airflow's REST API v2, as the UI uses it: what ``make up`` and ``make demo`` drive it with."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from relay.infra.airflow_services import ADMIN_USER, admin_password
from relay.infra.processes import wait_until
from relay.settings import Settings, get_settings


class AirflowAPI:
    """Airflow's REST API v2 with a token from ``/auth/token``.

    Calls raise :class:`httpx.HTTPStatusError` on a 4xx or 5xx answer (its ``response`` holds
    Airflow's explanation) and :class:`httpx.TransportError` when the server does not answer.
    """

    def __init__(self, url: str, username: str, password: str) -> None:
        self.url = url.rstrip("/")
        self.token: str | None = None
        token = self._call("POST", "/auth/token", {"username": username, "password": password})
        self.token = str(token["access_token"])

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        resp = httpx.request(method, self.url + path, json=body, headers=headers, timeout=60)
        resp.raise_for_status()
        return resp.json() if resp.content else None

    def get(self, path: str) -> Any:
        """GET ``path`` (from ``/api/v2/…``); the decoded JSON."""
        return self._call("GET", path)

    def unpause(self, dag_id: str) -> Any:
        """Unpause a DAG; the DAG as Airflow returns it."""
        return self._call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(
        self, dag_id: str, conf: Mapping[str, Any], slot: Mapping[str, str] | None = None
    ) -> str:
        """Trigger a run; with ``slot`` (its ``logical_date`` and data interval) in place of
        the scheduled run for that slot."""
        body = {"logical_date": None, **(slot or {}), "conf": dict(conf)}
        run = self._call("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)
        return str(run["dag_run_id"])

    def _run_path(self, dag_id: str, run_id: str) -> str:
        return f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"

    def run_state(self, dag_id: str, run_id: str) -> str:
        """The run's state (``queued``, ``running``, ``success``, ``failed``)."""
        return str(self.get(self._run_path(dag_id, run_id))["state"])

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        """Each task's state in the run, by task id."""
        items = self.get(f"{self._run_path(dag_id, run_id)}/taskInstances")["task_instances"]
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
            except httpx.HTTPError as exc:
                # A busy API server (2 cores, four Airflow services) is not a failed run.
                if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code < 500:
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
    """A client of this stack's Airflow, logged in as its admin."""
    s = settings or get_settings()
    return AirflowAPI(s.airflow.api_url, ADMIN_USER, admin_password(s))


def wait_for_dag(client: AirflowAPI, dag_id: str, timeout_s: float = 180) -> None:
    """Wait until the dag-processor has parsed ``dag_id``."""

    def parsed() -> bool:
        try:
            client.get(f"/api/v2/dags/{dag_id}")
        except httpx.HTTPStatusError as err:
            if err.response.status_code == 404:
                return False
            raise
        return True

    wait_until(parsed, f"DAG {dag_id}", timeout_s)


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
