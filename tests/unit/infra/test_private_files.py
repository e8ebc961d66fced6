"""The stack's secrets are files only their owner can read, from the moment they exist."""

from __future__ import annotations

import json
import os
import stat

from relay.infra.airflow_services import airflow_env, ensure_admin_password
from relay.infra.secret_files import write_private
from relay.settings import get_settings


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_files_are_created_600_even_under_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        assert write_private(tmp_path / "a" / "secret", "x")
        assert not write_private(tmp_path / "a" / "secret", "y")  # kept as it was
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a" / "secret") == 0o600
    assert (tmp_path / "a" / "secret").read_text() == "x"


def test_airflows_password_and_jwt_files_are_600(tmp_path, monkeypatch):
    s = get_settings().model_copy(deep=True)
    s.home = tmp_path
    old = os.umask(0o022)
    try:
        passwords = ensure_admin_password(s)
        env = airflow_env(s)
    finally:
        os.umask(old)
    assert _mode(passwords) == 0o600 and len(json.loads(passwords.read_text())["admin"]) >= 16
    jwt = tmp_path / "airflow" / ".jwt_secret"
    assert _mode(jwt) == 0o600 and env["AIRFLOW__API_AUTH__JWT_SECRET"] == jwt.read_text()


def test_rays_token_file_is_600_whether_relay_or_ray_made_it(tmp_path, monkeypatch):
    from relay.infra.stack import ray_token_file

    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "ray" / "auth_token"))
    made = ray_token_file()
    assert _mode(made) == 0o600 and len(made.read_text()) == 64
    made.chmod(0o644)  # as Ray 2.60 writes it
    assert _mode(ray_token_file()) == 0o600 and len(made.read_text()) == 64
