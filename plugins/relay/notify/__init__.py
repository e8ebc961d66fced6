"""Telling people: a rollback, a gate rejection, a drift retrain, a rollout held past its time
or aborted, a failed DAG run (settings: ``RELAY_NOTIFY__*``).

Build a :class:`Notification`, hand it to :func:`send`; sending never fails the caller.
"""

from relay.notify.message import Notification, NotificationKind
from relay.notify.webhook import send

__all__ = ["Notification", "NotificationKind", "send"]
