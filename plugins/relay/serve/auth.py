"""Who may call the endpoint, and the secret that keeps clients from choosing their version.

Three secrets, each in a file named by a setting (``RELAY_SERVING__API_KEYS_FILE``,
``__ADMIN_TOKEN_FILE``, ``__BUCKET_SALT_FILE``), read by each router replica on its own node:
a path is not a secret, so only paths travel in a deployment's arguments and ``runtime_env``,
where the Ray dashboard shows them. The prod profile requires all three; the local profile binds
loopback and may leave them unset (open, and the canary hashes order ids unsalted).

* ``POST /v1/eta`` needs ``Authorization: Bearer <key>`` (or ``X-API-Key: <key>``) with one of
  the API keys (one per line; blank lines and ``#`` comments skipped), so a key can be rotated
  by listing old and new for a while.
* ``/v1/models``, ``/v1/metrics`` and ``/metrics`` need ``Authorization: Bearer <admin token>``
  (Prometheus: ``authorization: {credentials_file: ...}``).
* The salt keys the order hash that picks a canary's orders: without it, anyone who knows the
  hash (crc32, in this open source) picks order ids that reach the candidate, and can pump or
  poison its numbers.

Keys are compared as SHA-256 digests with :func:`hmac.compare_digest`: no timing tells how much
of a key was right.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from relay.errors import ConfigError
from relay.settings import ServingSettings

AUTH_HEADER = "authorization"
API_KEY_HEADER = "x-api-key"


@dataclass(frozen=True)
class SecretFiles:
    """Where a router reads its secrets (paths only: safe to pass to a replica)."""

    api_keys: Path | None = None
    admin_token: Path | None = None
    bucket_salt: Path | None = None

    @classmethod
    def of(cls, serving: ServingSettings) -> SecretFiles:
        """The files the serving settings name."""
        return cls(serving.api_keys_file, serving.admin_token_file, serving.bucket_salt_file)


@dataclass(frozen=True)
class Credentials:
    """What a router checks requests against.

    Attributes:
        api_keys: SHA-256 digests of the accepted API keys; None: ``/v1/eta`` is open.
        admin: SHA-256 digest of the admin token; None: the admin routes are open.
        salt: the canary hash's key; empty: unsalted.
    """

    api_keys: tuple[bytes, ...] | None = None
    admin: bytes | None = None
    salt: bytes = b""

    @classmethod
    def load(cls, files: SecretFiles) -> Credentials:
        """Read the secrets.

        Raises:
            ConfigError: a file is named but missing, unreadable or empty (a router that
                silently ran open would be worse than one that does not start).
        """
        keys = None
        if files.api_keys is not None:
            keys = tuple(_digest(k) for k in _lines(files.api_keys, "API_KEYS_FILE"))
        admin = None
        if files.admin_token is not None:
            admin = _digest(_lines(files.admin_token, "ADMIN_TOKEN_FILE")[0])
        salt = b""
        if files.bucket_salt is not None:
            salt = _lines(files.bucket_salt, "BUCKET_SALT_FILE")[0].encode()
        return cls(keys, admin, salt)


def _lines(path: Path, setting: str) -> list[str]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"RELAY_SERVING__{setting}={path}: {exc.strerror or exc}") from None
    lines = [x.strip() for x in text.splitlines()]
    secrets = [x for x in lines if x and not x.startswith("#")]
    if not secrets:
        raise ConfigError(f"RELAY_SERVING__{setting}={path} holds no secret")
    return secrets


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _presented(headers: Mapping[str, str], api_key_header: bool) -> str | None:
    auth = headers.get(AUTH_HEADER)
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None
    return headers.get(API_KEY_HEADER) if api_key_header else None


def _accepts(presented: str | None, digests: tuple[bytes, ...]) -> bool:
    if not presented:
        return False
    got = _digest(presented)
    # Every digest compared, always: the time taken says nothing about which matched.
    return sum(hmac.compare_digest(got, d) for d in digests) > 0


def unauthorized(headers: Mapping[str, str], credentials: Credentials, admin: bool) -> str | None:
    """Why a request may not have what it asks for, or None when it may.

    Args:
        headers: the request's headers (lower-case names, as Starlette gives them).
        credentials: the router's.
        admin: the route is an admin one (the admin token), else ``/v1/eta`` (an API key).
    """
    if admin:
        if credentials.admin is None:
            return None
        ok = _accepts(_presented(headers, api_key_header=False), (credentials.admin,))
        return None if ok else "an admin route: send Authorization: Bearer <admin token>"
    if credentials.api_keys is None:
        return None
    if _accepts(_presented(headers, api_key_header=True), credentials.api_keys):
        return None
    return "send Authorization: Bearer <API key> (or X-API-Key) with a valid key"


def read_secret(path: Path | None, setting: str) -> str | None:
    """The first secret in a file (a client's own key or token), or None without a file."""
    return None if path is None else _lines(path, setting)[0]
