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


class RolloutTrigger(BaseTrigger):
    """Fires once the rollout ``rollout_id`` has ended, with its outcome.

    Each new step verdict is logged as it lands (Airflow shows a trigger's log in the task's),
    so the task log tells the rollout step by step while no worker slot is held.
    """

    def __init__(self, rollout_id: str, poll_interval_s: float = 10.0) -> None:
        super().__init__()
        self.rollout_id = rollout_id
        self.poll_interval_s = poll_interval_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"rollout_id": self.rollout_id, "poll_interval_s": self.poll_interval_s},
        )

    def _read(self) -> Any:
        from relay.rollout.store import RolloutStore

        return RolloutStore().get(self.rollout_id).rollout

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from relay.rollout.runner import outcome_of

        told = 0
        while True:
            rollout = await asyncio.to_thread(self._read)
            for verdict in rollout.verdicts[told:]:
                self.log.info("step %d: %s", verdict.step, verdict.action.value)
                for reason in verdict.reasons:
                    self.log.info("    %s", reason)
            told = len(rollout.verdicts)
            if rollout.state.final:
                yield TriggerEvent(outcome_of(rollout))
                return
            await asyncio.sleep(self.poll_interval_s)  # poll interval of a remote record
