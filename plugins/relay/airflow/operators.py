"""``RayJobOperator``: run an entrypoint on the Ray cluster through the Ray Jobs API.

The Airflow worker only submits and watches; the work runs on Ray. While the job runs, its log
lines stream into the task log. The task fails when the job fails (with the job's last lines in
the error), and the job is stopped when the task is cancelled (marked failed or success in the
UI, or killed) or runs past its ``execution_timeout``.

With ``deferrable=True`` the task gives its worker slot back while the job runs: a
:class:`~relay.airflow.triggers.RayJobTrigger` waits in the triggerer, and the job's whole log
is copied into the task log when it resumes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from airflow.sdk import BaseOperator

from relay.infra import rayjobs


class RayJobOperator(BaseOperator):
    """Submit ``entrypoint`` as a Ray job and wait for it.

    Args:
        entrypoint: the job's shell command (templated), e.g.
            ``python -m ray_jobs.train --training-set {{ ti.xcom_pull('training_set') }} …``.
        env_vars: extra environment for the job (templated); Relay's ``RELAY_*``/``AWS_*``
            settings are forwarded anyway.
        runtime_env: extra Ray ``runtime_env`` keys (``working_dir``, ``pip``, …; templated).
        entrypoint_num_gpus: GPUs reserved for the job's driver.
        dashboard_url: the Ray dashboard / Jobs API address; default ``RELAY_RAY__DASHBOARD_URL``.
        poll_interval_s: seconds between status and log polls.
        deferrable: wait in the triggerer instead of holding a worker slot.

    Returns (XCom):
        The Ray submission id.
    """

    template_fields: Sequence[str] = ("entrypoint", "env_vars", "runtime_env")
    template_fields_renderers: ClassVar[dict[str, str]] = {
        "entrypoint": "bash",
        "env_vars": "json",
        "runtime_env": "json",
    }
    ui_color = "#d6e8ff"

    def __init__(
        self,
        *,
        entrypoint: str,
        env_vars: Mapping[str, str] | None = None,
        runtime_env: Mapping[str, Any] | None = None,
        entrypoint_num_gpus: float = 0,
        dashboard_url: str | None = None,
        poll_interval_s: float = 2.0,
        deferrable: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.entrypoint = entrypoint
        self.env_vars = dict(env_vars or {})
        self.runtime_env = dict(runtime_env or {})
        self.entrypoint_num_gpus = entrypoint_num_gpus
        self.dashboard_url = dashboard_url
        self.poll_interval_s = poll_interval_s
        self.deferrable = deferrable
        self.job_id: str | None = None

    def _settings(self) -> Any:
        from relay.settings import get_settings

        s = get_settings()
        if self.dashboard_url:
            s = s.model_copy(deep=True)
            s.ray.dashboard_url = self.dashboard_url
        return s

    def _client(self) -> Any:
        return rayjobs.client(self._settings())

    def execute(self, context: Any) -> str:
        ti = context["ti"]
        spec = rayjobs.JobSpec(
            entrypoint=self.entrypoint,
            # One job per task try: a retry submits afresh; a re-run of the same try attaches.
            submission_id=rayjobs.submission_id(
                ti.dag_id, ti.task_id, ti.run_id, str(ti.map_index), str(ti.try_number)
            ),
            env_vars={str(k): str(v) for k, v in self.env_vars.items()},
            runtime_env=self.runtime_env,
            entrypoint_num_gpus=self.entrypoint_num_gpus,
            metadata={"airflow_dag": ti.dag_id, "airflow_task": ti.task_id, "run": ti.run_id},
        )
        c = self._client()
        self.job_id = rayjobs.submit(spec, self._settings(), c)
        settings = self._settings()
        self.log.info(
            "submitted Ray job %s to %s: %s (Ray dashboard: %s/#/jobs/%s)",
            self.job_id,
            settings.ray.dashboard_url,
            self.entrypoint,
            settings.ray.dashboard_url,
            self.job_id,
        )
        if self.deferrable:
            from relay.airflow.triggers import RayJobTrigger

            self.defer(
                trigger=RayJobTrigger(
                    self.job_id, settings.ray.dashboard_url, max(self.poll_interval_s, 1.0)
                ),
                method_name="execute_complete",
                kwargs={"job_id": self.job_id},
                timeout=self.execution_timeout,
            )
        rayjobs.follow(
            self.job_id, c, emit=self._emit, poll_interval_s=self.poll_interval_s, timeout_s=None
        )
        self.log.info("Ray job %s SUCCEEDED", self.job_id)
        return self.job_id

    def execute_complete(self, context: Any, event: dict[str, Any]) -> str:
        """Resume after the trigger fired: copy the job's log and fail unless it succeeded."""
        self.job_id = str(event["job_id"])
        follower = rayjobs.JobFollower(self.job_id, self._client())
        for line in follower.flush():
            self._emit(line)
        follower.outcome(str(event["status"]))
        return self.job_id

    def on_kill(self) -> None:
        """Cancelled or timed out: stop the Ray job too, so nothing keeps running unseen."""
        if self.job_id is None:
            return
        try:
            stopped = rayjobs.stop(self.job_id, self._client())
            self.log.warning("task killed: Ray job %s stop requested (%s)", self.job_id, stopped)
        except Exception:  # the task is dying anyway; say why the job may still run
            self.log.exception("could not stop Ray job %s", self.job_id)

    def _emit(self, line: str) -> None:
        self.log.info("[ray job] %s", line)


class RolloutWaitOperator(BaseOperator):
    """Wait for the rollout a ``rollout`` task began to end; return (and write) its outcome.

    Reads what the rollout job wrote (``begun``, templated: a JSON path or an ``s3://`` URI).
    Nothing to wait for (a first deployment, a version already serving): returns at once.
    Otherwise the wait runs in the triggerer (:class:`~relay.airflow.triggers.RolloutTrigger`),
    which logs each step's verdict as it lands, for as long as the rollout's plan may last. The
    outcome (each step's verdict and its reasons) goes to ``outcome`` (templated, like
    ``begun``) and XCom.
    """

    template_fields: Sequence[str] = ("begun", "outcome")
    ui_color = "#e8f5d6"

    def __init__(self, *, begun: str, outcome: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.begun = begun
        self.outcome = outcome

    def execute(self, context: Any) -> dict[str, Any]:
        import datetime as dt
        import json

        from relay.flows import run_store
        from relay.rollout.store import RolloutStore
        from relay.settings import get_settings

        begun = json.loads(run_store.read_text(self.begun))
        if not begun.get("rollout_id"):
            return self._done(begun)
        rollout = RolloutStore().get(begun["rollout_id"]).rollout
        self.log.info(
            "following rollout %s of %s (`relay rollout status`)", rollout.id, rollout.candidate
        )
        if rollout.state.final:
            from relay.rollout.runner import outcome_of

            return self._done(outcome_of(rollout))
        from relay.airflow.triggers import RolloutTrigger

        longest = sum(step.max_duration_s for step in rollout.plan.steps)
        self.defer(
            trigger=RolloutTrigger(rollout.id, get_settings().rollout.follow_poll_s),
            method_name="execute_complete",
            # The plan's longest life, plus slack for a controller down for a while.
            timeout=dt.timedelta(seconds=longest * 1.5 + 3600),
        )
        raise AssertionError("unreachable: defer raises")

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        return self._done(event)

    def _done(self, outcome: dict[str, Any]) -> dict[str, Any]:
        import json

        from relay.flows import run_store

        for step in outcome.get("steps", []):
            self.log.info("step %s (%s): %s", step["step"], step["target"], step["action"])
            for reason in step["reasons"]:
                self.log.info("    %s", reason)
        self.log.info(
            "%s: %s; stable is %s", outcome["version"], outcome["outcome"], outcome["stable"]
        )
        # The run folder: a path, or S3 in prod (relay.flows.run_store).
        run_store.write_text(self.outcome, json.dumps(outcome, indent=2))
        return outcome
