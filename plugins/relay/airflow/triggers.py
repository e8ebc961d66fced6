"""Triggers that wait on Ray in Airflow's triggerer instead of a worker slot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from relay.infra import rayjobs


class RayJobTrigger(BaseTrigger):
    """Fires once the Ray job ``job_id`` has ended, with its status.

    The Ray client is blocking; each poll runs in a thread so the triggerer's loop stays free.
    """

    def __init__(self, job_id: str, dashboard_url: str, poll_interval_s: float = 5.0) -> None:
        super().__init__()
        self.job_id = job_id
        self.dashboard_url = dashboard_url
        self.poll_interval_s = poll_interval_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_id": self.job_id,
                "dashboard_url": self.dashboard_url,
                "poll_interval_s": self.poll_interval_s,
            },
        )

    def _client(self) -> Any:
        from relay.settings import get_settings

        s = get_settings().model_copy(deep=True)
        s.ray.dashboard_url = self.dashboard_url
        return rayjobs.client(s)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        c = await asyncio.to_thread(self._client)
        while True:
            status = await asyncio.to_thread(rayjobs.status, self.job_id, c)
            if status in rayjobs.TERMINAL:
                yield TriggerEvent({"job_id": self.job_id, "status": status})
                return
            await asyncio.sleep(self.poll_interval_s)  # poll interval of a remote job
