"""Airflow with the FAB auth manager (the prod compose's): an admin from Relay's 0600 password
file, a REST API that lets in that admin's token and no one else."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from relay.settings import get_settings, reset_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def fab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from relay.infra import airflow_services as af
    from relay.infra import processes
    from tests.integration.conftest import _free_port

    home = tmp_path_factory.mktemp("fab")
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {
            "RELAY_HOME": str(home),
            "RELAY_AIRFLOW__AUTH_MANAGER": "fab",
            "RELAY_AIRFLOW__API_URL": url,
        }.items():
            mp.setenv(k, v)
        reset_settings()
        s = get_settings()
        try:
            (s.home / "airflow").mkdir(parents=True)
            af.ensure_admin_password(s)
            af.airflow(["db", "migrate"], s)
            created = af.create_fab_admin(s)
            again = af.create_fab_admin(s)
            argv = [processes.venv_bin("airflow"), "api-server"]
            processes.start_process("airflow-api-server", argv, af.airflow_env(s), s)
            processes.wait_until(
                lambda: processes.http_ok(f"{url}/api/v2/monitor/health"), "Airflow API", 240
            )
            yield {"url": url, "settings": s, "created": created, "again": again}
        finally:
            processes.stop_all(s, timeout_s=10)  # the api-server drains for 30 s on SIGTERM
            reset_settings()


def test_the_admin_is_created_once_from_relays_private_password_file(fab) -> None:
    from relay.infra.airflow_services import airflow_env

    assert fab["created"] and not fab["again"]  # idempotent: a second start keeps the user
    password_file = fab["settings"].home / "airflow" / "passwords.json"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    env = airflow_env(fab["settings"])
    assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("FabAuthManager")
    assert not any(k.startswith("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER") for k in env)


def test_the_rest_api_lets_in_the_admins_token_and_no_one_else(fab) -> None:
    from relay.infra.airflow_api import AirflowAPI
    from relay.infra.airflow_services import ADMIN_USER, admin_password

    url = fab["url"]
    wrong = httpx.post(f"{url}/auth/token", json={"username": ADMIN_USER, "password": "guess"})
    assert wrong.status_code == 401, wrong.text
    assert httpx.get(f"{url}/api/v2/dags", timeout=30).status_code == 401
    forged = {"Authorization": "Bearer not-a-token"}
    assert httpx.get(f"{url}/api/v2/dags", headers=forged, timeout=30).status_code in (401, 403)
    # Relay's own client (make up, the CLI) logs in as the admin and reads the API.
    api = AirflowAPI(url, ADMIN_USER, admin_password(fab["settings"]))
    assert "dags" in api.get("/api/v2/dags")
