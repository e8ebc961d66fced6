"""Who is told what happened to production, and how long telling them may take.

Part of :mod:`relay.settings` (import them from there); kept apart only to keep each module
small.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr


class NotifySettings(BaseModel):
    """Notifications (:mod:`relay.notify`): a rollback, a gate rejection, a drift retrain, a
    rollout held past its time or aborted, a failed DAG run.

    Each is logged, and POSTed as JSON to ``webhook_url`` when one is set. Sending never fails
    the caller: a rollback must not fail because a chat server is down. The longest a send can
    take is ``attempts × timeout_s`` plus the back-offs (``retry_backoff_s``, doubling): 7.5 s by
    default, well inside the rollout controller's lease (``RELAY_ROLLOUT__LEASE_TTL_S``).
    """

    webhook_url: SecretStr | None = Field(
        None,
        description="POST each notification here as JSON (http or https: another scheme is not "
        "used); None: notifications are only logged. Such URLs often carry a token (Slack, "
        "Teams): kept secret, never shown in a settings dump or a log, where only its scheme and "
        "host appear",
    )
    token_file: Path | None = Field(
        None,
        description="A file holding a bearer token sent as Authorization with every POST "
        "(a secret: read at send time, never logged); None: no Authorization header",
    )
    timeout_s: float = Field(
        2.0, gt=0, description="One POST waits this long to connect, and for each read"
    )
    attempts: int = Field(
        3, ge=1, le=10, description="POSTs per notification at most (refused 4xx: one only)"
    )
    retry_backoff_s: float = Field(
        0.5, ge=0, description="The wait before the second POST; doubled before each next one"
    )
