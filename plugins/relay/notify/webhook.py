"""Deliver a notification: log it, and POST it as JSON to ``RELAY_NOTIFY__WEBHOOK_URL``.

:func:`send` never raises: it is called where a rollback, an abort or a gate decision has just
been recorded, and a chat server that is down or slow must not undo or stall that. Each POST
waits at most ``timeout_s``; a failed one (no connection, a timeout, a 5xx or 429) is tried
again up to ``attempts`` times after a doubling back-off, a refused one (another 4xx) is not.

Secrets stay out of the logs: webhook URLs often carry a token in their path (Slack, Teams), so
only the URL's scheme and host are ever logged, and the bearer token (``token_file``) is read at
send time and never logged. Exceptions are logged by type only. The standard library's client is
used on purpose: it logs nothing (httpx logs every request's full URL at INFO), and it is told
not to follow redirects, which would hand the token to another host.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from relay.notify.message import Notification
from relay.settings import NotifySettings, Settings, get_settings

log = logging.getLogger(__name__)

#: Responses worth another try: the server failed or asked to slow down.
_RETRIED = frozenset({408, 425, 429})


def send(
    notification: Notification,
    settings: Settings | None = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Log ``notification`` and POST it to the configured webhook; never raises.

    Args:
        notification: what to tell.
        settings: defaults to :func:`get_settings` (``settings.notify`` is used).
        sleep: waits the back-off between attempts (tests pass a recorder).

    Returns:
        Whether a webhook accepted it (2xx); False without a webhook, or when it could not be
        delivered (logged as a warning).
    """
    try:
        log.info("%s", notification.text())
        s = (settings or get_settings()).notify
        if s.webhook_url is None:
            return False
        return _deliver(notification, s, s.webhook_url.get_secret_value(), sleep)
    except Exception as exc:  # a notification must never fail the decision that sent it
        log.warning("notification %s not sent: %s", notification.kind.value, type(exc).__name__)
        return False


def where(url: str) -> str:
    """The part of a webhook URL that may be logged: scheme and host (with port)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme or '?'}://{host}{port}"


def _deliver(
    notification: Notification, s: NotifySettings, url: str, sleep: Callable[[float], None]
) -> bool:
    if urlsplit(url).scheme not in ("http", "https"):  # file:, ftp: are no webhooks
        log.warning("notification %s not sent: webhook_url is not http(s)", notification.kind.value)
        return False
    headers = {"content-type": "application/json", "user-agent": "relay-notify"}
    token = _token(s.token_file)
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    body = json.dumps(notification.payload()).encode()
    target, last = where(url), "no attempt"
    opener = urllib.request.build_opener(_NoRedirect)
    for attempt in range(s.attempts):
        if attempt:
            sleep(s.retry_backoff_s * 2 ** (attempt - 1))
        # http(s) only, checked above.
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
        try:
            with opener.open(request, timeout=s.timeout_s) as response:
                status = int(response.status)
        except urllib.error.HTTPError as exc:  # an answer all the same: 4xx, 5xx, a redirect
            status = exc.code
            exc.close()
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out
            last = type(exc).__name__
            continue
        if 200 <= status < 300:
            log.info("notification %s sent to %s", notification.kind.value, target)
            return True
        last = f"HTTP {status}"
        if status < 500 and status not in _RETRIED:
            break  # refused (or redirected): the same request will be refused again
    log.warning(
        "notification %s not delivered to %s after %d attempt(s): %s",
        notification.kind.value,
        target,
        attempt + 1,
        last,
    )
    return False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect would carry the bearer token to wherever it points: answered as refused.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _token(path: Path | None) -> str | None:
    # Read at every send: a rotated secret is picked up without a restart.
    if path is None:
        return None
    lines = [x.strip() for x in path.read_text().splitlines()]
    return next((x for x in lines if x and not x.startswith("#")), None)
