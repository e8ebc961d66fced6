"""Who may call what: API keys on /v1/eta, the admin token on the admin routes, and the salt
that keeps a client from choosing the version that answers it."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.errors import ConfigError
from relay.serve.auth import Credentials, SecretFiles, read_secret, unauthorized
from relay.serve.traffic import TrafficSplit, bucket


def _files(tmp_path: Path, keys: str = "# rotated weekly\nold-key\n\nnew-key\n") -> SecretFiles:
    (tmp_path / "keys").write_text(keys)
    (tmp_path / "admin").write_text("admin-token\n")
    (tmp_path / "salt").write_text("s3cret-salt\n")
    return SecretFiles(tmp_path / "keys", tmp_path / "admin", tmp_path / "salt")


def test_without_files_everything_is_open_and_unsalted():
    open_ = Credentials.load(SecretFiles())
    assert unauthorized({}, open_, admin=False) is None
    assert unauthorized({}, open_, admin=True) is None
    assert open_.salt == b""


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        ({"authorization": "Bearer old-key"}, True),
        ({"authorization": "bearer new-key"}, True),
        ({"x-api-key": "new-key"}, True),
        ({}, False),
        ({"authorization": "Bearer nope"}, False),
        ({"authorization": "Basic new-key"}, False),
        ({"authorization": "Bearer "}, False),
        ({"authorization": "Bearer admin-token"}, False),  # the admin token is no API key
        ({"x-api-key": "# rotated weekly"}, False),  # a comment is no key
    ],
)
def test_eta_needs_one_of_the_api_keys(tmp_path, headers, ok):
    creds = Credentials.load(_files(tmp_path))
    why = unauthorized(headers, creds, admin=False)
    assert (why is None) == ok, why
    if not ok:
        assert "Authorization: Bearer" in str(why)


def test_admin_routes_need_the_admin_token_and_not_an_api_key(tmp_path):
    creds = Credentials.load(_files(tmp_path))
    assert unauthorized({"authorization": "Bearer admin-token"}, creds, admin=True) is None
    assert unauthorized({"authorization": "Bearer new-key"}, creds, admin=True) is not None
    assert unauthorized({"x-api-key": "admin-token"}, creds, admin=True) is not None


def test_a_named_file_that_is_missing_or_empty_refuses_to_start(tmp_path):
    with pytest.raises(ConfigError, match=r"API_KEYS_FILE.*No such file"):
        Credentials.load(SecretFiles(api_keys=tmp_path / "absent"))
    (tmp_path / "empty").write_text("# nothing yet\n\n")
    with pytest.raises(ConfigError, match=r"BUCKET_SALT_FILE.*holds no secret"):
        Credentials.load(SecretFiles(bucket_salt=tmp_path / "empty"))


def test_a_client_reads_its_own_first_key(tmp_path):
    files = _files(tmp_path)
    assert read_secret(files.api_keys, "API_KEYS_FILE") == "old-key"
    assert read_secret(None, "API_KEYS_FILE") is None


def test_the_salt_reshuffles_which_orders_reach_the_candidate_and_keeps_the_share():
    ids = [f"order-{i}" for i in range(20_000)]
    split = TrafficSplit("v1", "v2", 0.1)
    plain = set(split.assign(ids)["v2"])
    salted = set(split.assign(ids, salt=b"s3cret-salt")["v2"])
    other = set(split.assign(ids, salt=b"another-salt")["v2"])
    for chosen in (plain, salted, other):
        assert abs(len(chosen) / len(ids) - 0.1) < 0.01
    # Knowing the unsalted hash tells nothing: the overlap is what chance gives (10% of 10%).
    assert len(plain & salted) / len(plain) < 0.15 and len(salted & other) / len(salted) < 0.15
    assert split.assign(ids, salt=b"s3cret-salt")["v2"] == sorted(salted)  # stable
    assert bucket("order-1", b"s3cret-salt") == bucket("order-1", b"s3cret-salt")
