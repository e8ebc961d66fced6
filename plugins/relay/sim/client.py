"""Replay's side of the wire: the endpoint's URL, the loopback rule, and an HTTP client that
keeps connections alive across the sender threads."""

from __future__ import annotations

import ipaddress
import socket
import time
from urllib.parse import urlsplit

import httpx

from relay.settings import Settings, get_settings
from relay.sim.config import ReplayError

LOOPBACK_NAMES = frozenset({"localhost"})
# What a keep-alive connection the server had closed looks like once a request is on it.
_STALE = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class NotLoopback(ReplayError, ValueError):
    """The replay URL's host is not a loopback address."""


class EndpointUnreachable(ReplayError):
    """Nothing listens at the replay URL."""


def endpoint_url(settings: Settings | None = None) -> str:
    """The ETA endpoint of the configured Serve HTTP proxy (a wildcard host means loopback)."""
    return f"{(settings or get_settings()).serving.url}/v1/eta"


def require_loopback(url: str) -> str:
    """``url`` when it is http(s) to a loopback host, with a port; else :class:`NotLoopback`.

    Replay sends a burst of traffic; only a local endpoint may receive it.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise NotLoopback(f"replay URL must be http:// or https://, got {url!r}")
    try:
        parts.port  # noqa: B018, a port outside 0..65535 raises ValueError
    except ValueError as exc:
        raise NotLoopback(f"replay URL {url!r} has an invalid port") from exc
    host = parts.hostname or ""
    try:
        loopback = host in LOOPBACK_NAMES or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost
        loopback = False
    if not loopback:
        raise NotLoopback(
            f"replay only sends to a loopback address (127.0.0.1, localhost, ::1); "
            f"{url!r} points at {host or 'no host'!r}. Port-forward the endpoint to "
            "127.0.0.1 to replay against it."
        )
    return url


def preflight(url: str, timeout_s: float) -> None:
    """Raise :class:`EndpointUnreachable` unless something accepts connections at ``url``."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        raise EndpointUnreachable(
            f"nothing answers at {url} ({exc}); start the endpoint with `relay serve up`"
        ) from exc


class EndpointClient:
    """POSTs to one URL over keep-alive connections, ``connections`` of them at most.

    Thread-safe: the sender threads share it. Proxy variables do not apply (the URL is a
    loopback address).

    Args:
        url: the endpoint.
        timeout_s: the limit on connecting, and on each read or write.
        connections: connections kept open at most (the requests in flight at most).
        api_key: sent as ``Authorization: Bearer`` (an endpoint with API keys).
    """

    def __init__(
        self, url: str, timeout_s: float, connections: int, api_key: str | None = None
    ) -> None:
        self.url = url
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._http = httpx.Client(timeout=timeout_s, limits=limits, trust_env=False)
        self._auth = {} if api_key is None else {"Authorization": f"Bearer {api_key}"}

    def post(self, body: bytes, request_id: str) -> tuple[int, bytes]:
        """POST ``body``; its status and body. One retry when a kept-alive connection turns
        out closed (the same ``x-request-id``, so the serving log keeps one copy).

        Raises:
            httpx.RequestError: no HTTP answer (refused, reset, timed out).
        """
        headers = {"Content-Type": "application/json", "x-request-id": request_id, **self._auth}
        try:
            resp = self._http.post(self.url, content=body, headers=headers)
        except _STALE:
            resp = self._http.post(self.url, content=body, headers=headers)
        return resp.status_code, resp.content

    def post_idempotent(self, body: bytes, patience_s: float) -> int:
        """POST an idempotent body (events), sent again on a 429/503 (honouring its
        Retry-After, at most 5 s) or no answer, for up to ``patience_s``: a router still opening
        its event store answers 503 for a few seconds. Returns the last status (0: no answer)."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                resp = self._http.post(
                    self.url,
                    content=body,
                    headers={"Content-Type": "application/json", **self._auth},
                )
                status, wait = resp.status_code, _retry_after(resp.headers.get("Retry-After"))
            except httpx.RequestError:
                status, wait = 0, 0.5
            if status not in (0, 429, 503) or time.monotonic() + wait > deadline:
                return status
            time.sleep(wait)  # the server's own back-off, bounded by the deadline

    def close(self) -> None:
        """Close every connection."""
        self._http.close()


def _retry_after(value: str | None) -> float:
    """Seconds a Retry-After header asks for (1 s when absent or a date), within [0.1, 5]."""
    try:
        seconds = float(value) if value is not None else 1.0
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.1), 5.0)
