"""Putting registry versions into service: first deployment, canary rollout, restore.

These drivers join the registry (which version is where) and the Serve endpoint (which version
answers). They run where Ray is reachable: as Ray jobs submitted by the DAGs
(``python -m ray_jobs.rollout …``) or from the ``relay serve`` CLI. Decisions stay pure in
:func:`relay.rollout.rules.decide`; this module only measures, asks and acts.

The registry records every move: a version entering canary or production starts Deploying and
becomes Serving once the endpoint answers with it; a candidate rolled back by live metrics
becomes Degraded with the failing checks as the reason.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from relay.registry import ModelState, Registry
from relay.rollout.rules import Action, QualityWindow, RolloutVerdict, decide, next_step
from relay.rollout.step_windows import step_window, windows
from relay.serve.traffic import TrafficSplit
from relay.serve.windows import VersionWindow
from relay.settings import Settings, get_settings


class Endpoint(Protocol):
    """What the drivers need of the Serve endpoint (``relay.serve.control`` provides it)."""

    def current_traffic(self, settings: Settings | None = None) -> TrafficSplit | None: ...

    def deploy_model(self, version: str, settings: Settings | None = None) -> str: ...

    def set_traffic(
        self, split: TrafficSplit, settings: Settings | None = None
    ) -> TrafficSplit: ...

    def live_metrics(self, settings: Settings | None = None) -> dict[str, Any]: ...

    def remove_model(self, version: str) -> None: ...

    def deployed_models(self) -> list[str]: ...


@dataclass
class RolloutOutcome:
    """How a rollout ended.

    Attributes:
        version: the candidate.
        outcome: ``first_deploy`` (nothing served before: it became stable at once),
            ``promoted``, ``rolled_back`` or ``already_serving``.
        stable: the version serving all traffic at the end.
        steps: the verdict of each step, in order (empty for a first deployment).
    """

    version: str
    outcome: str
    stable: str
    steps: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: Path | str) -> Path:
        """Write the outcome as JSON (what the DAG's next task reads)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), indent=2, default=str))
        return p


def _endpoint() -> Endpoint:
    from relay.serve import control

    return control


def deploy_stable(
    version: str,
    settings: Settings | None = None,
    *,
    registry: Registry | None = None,
    endpoint: Endpoint | None = None,
    reason: str = "",
) -> TrafficSplit:
    """Serve ``version`` with all traffic, as the stable one, and point production at it.

    Used for the very first version, and to restore an earlier one (rollback from the UI or
    by the monitoring DAG). The previous stable version keeps running, so moving back is quick.
    """
    s = settings or get_settings()
    reg = registry or Registry(s)
    ep = endpoint or _endpoint()
    current = reg.stage_version("production")
    if current is None or current.id != version:
        reg.promote(version, "production", reason=reason or "deployed as stable")
    ep.deploy_model(version, s)
    split = ep.set_traffic(TrafficSplit(stable=version), s)
    _mark_serving(reg, version, "serving all traffic")
    return split


def free_idle_models(
    endpoint: Endpoint | None = None,
    settings: Settings | None = None,
    emit: Callable[[str], None] = print,
) -> list[str]:
    """Delete the deployed model versions that take no traffic; returns them.

    A promotion keeps the replaced version running so that a rollback that day is quick; the
    next training run calls this first, because on a small cluster those replicas hold the CPUs
    its workers need (`make demo` waited forever for 1 CPU with two versions deployed).
    """
    ep = endpoint or _endpoint()
    deployed = ep.deployed_models()
    if not deployed:  # asking for the split would start Serve on a cluster without it
        return []
    split = ep.current_traffic(settings)
    keep = set(split.versions()) if split else set(deployed)
    idle = [v for v in deployed if v not in keep]
    for version in idle:
        ep.remove_model(version)
        emit(f"freed {version}: deployed, no traffic")
    return idle


def _mark_serving(reg: Registry, version: str, reason: str) -> None:
    if reg.get(version).state is ModelState.DEPLOYING:
        reg.transition(version, ModelState.SERVING, reason)


def run_rollout(
    version: str,
    settings: Settings | None = None,
    *,
    registry: Registry | None = None,
    endpoint: Endpoint | None = None,
    emit: Callable[[str], None] = print,
    clock: Callable[[], float] = time.monotonic,
    wait: Callable[[float], None] = time.sleep,
    poll_s: float = 1.0,
) -> RolloutOutcome:
    """Roll ``version`` out: canary steps judged on live metrics, then promote or roll back.

    With nothing serving yet, the version simply becomes stable. Otherwise it is deployed
    beside the stable version and walks through ``settings.rollout.steps``. At each step the
    live windows of both versions since the step began go to :func:`relay.rollout.rules.decide`;
    an advance moves to the next share, a promotion makes it stable, a rollback sends all
    traffic back to stable at once (among the rules: a step that would still hold after
    ``settings.rollout.step_timeout_s``, too little traffic to judge).
    """
    s = settings or get_settings()
    reg = registry or Registry(s)
    ep = endpoint or _endpoint()
    r = s.rollout
    now_split = ep.current_traffic(s)
    if now_split is None:
        emit(f"nothing is serving: {version} becomes the stable version")
        split = deploy_stable(version, s, registry=reg, endpoint=ep, reason="first deployment")
        return RolloutOutcome(version, "first_deploy", split.stable)
    stable = now_split.stable
    if stable == version:
        emit(f"{version} already serves all traffic")
        return RolloutOutcome(version, "already_serving", stable)

    reg.promote(version, "canary", reason=f"canary against {stable}")
    ep.deploy_model(version, s)
    steps: list[dict[str, Any]] = []
    share = next_step(0.0, r.steps)
    reference: VersionWindow | None = None  # stable's last window, for the 100% step
    while share is not None:
        ep.set_traffic(TrafficSplit(stable, version, share), s)
        _mark_serving(reg, version, f"canary at {share:.0%}")
        emit(f"step {share:.0%}: {version} takes {share:.0%} of orders, {stable} the rest")
        verdict, reference = _judge_step(
            ep, s, stable, version, share, emit, clock, wait, poll_s, reference
        )
        steps.append(verdict.to_dict())
        emit(verdict.summary())
        if verdict.action is Action.ROLLBACK:
            ep.set_traffic(TrafficSplit(stable=stable), s)
            # Free its replicas: a rolled-back version left running holds CPUs the next
            # training job waits for (seen in `make demo`).
            ep.remove_model(version)
            failed = ", ".join(verdict.failed_checks)
            reg.transition(version, ModelState.DEGRADED, f"canary rolled back ({failed})")
            emit(f"ROLLED BACK: all traffic on {stable}")
            return RolloutOutcome(version, "rolled_back", stable, steps)
        if verdict.action is Action.PROMOTE:
            break
        share = verdict.next_share
    ep.set_traffic(TrafficSplit(stable=version), s)
    reg.promote(version, "production", reason=f"canary passed every step against {stable}")
    emit(f"PROMOTED: {version} serves all traffic; {stable} stays deployed for a quick rollback")
    return RolloutOutcome(version, "promoted", version, steps)


def _judge_step(
    ep: Endpoint,
    s: Settings,
    stable: str,
    candidate: str,
    share: float,
    emit: Callable[[str], None],
    clock: Callable[[], float],
    wait: Callable[[float], None],
    poll_s: float,
    reference: VersionWindow | None = None,
) -> tuple[RolloutVerdict, VersionWindow | None]:
    """Judge one step until it stops holding; returns the verdict and stable's window over
    the step (the next step's latency reference when stable takes no traffic in it)."""
    start = clock()
    started_at = dt.datetime.now(dt.UTC)
    first = windows(ep.live_metrics(s), [stable, candidate], time.time())
    healthy_since = start
    last_action = None
    quality: QualityWindow | None = None
    quality_at = start
    while True:
        wait(poll_s)  # the metrics poll interval; the step's length is measured by clock()
        now = windows(ep.live_metrics(s), [stable, candidate], time.time())
        cand = step_window(now[candidate], first[candidate])
        stab = step_window(now[stable], first[stable])
        if clock() - quality_at >= s.rollout.quality_every_s:
            quality, quality_at = live_quality(stable, candidate, started_at, s), clock()
        verdict = decide(
            cand,
            stab,
            s.rollout,
            step_share=share,
            healthy_for_s=clock() - healthy_since,
            step_elapsed_s=clock() - start,
            quality=quality,
            stable_reference=reference,
        )
        if verdict.action is not last_action:
            emit(
                f"  {share:.0%}: {verdict.action.value} after {clock() - start:.0f} s "
                f"({cand.requests} candidate requests, {stab.requests} stable)"
            )
            last_action = verdict.action
        if verdict.action is not Action.HOLD:
            return verdict, (stab if stab.requests else reference)


def live_quality(
    stable: str, candidate: str, since: dt.datetime, settings: Settings | None = None
) -> QualityWindow | None:
    """Both versions' MAE on the predictions served since ``since`` whose actual delivery
    times have landed (serving log joined with actuals); None until both have labels."""
    from relay.data.lake import Lake
    from relay.errors import RelayError
    from relay.serve.log_read import quality_by_version, read_served

    try:
        served = read_served(Lake(settings or get_settings()), since)
    except (RelayError, FileNotFoundError):
        return None  # nothing logged yet
    live, _ = quality_by_version(served)
    if candidate not in live or stable not in live:
        return None
    cand, stab = live[candidate], live[stable]
    se = None
    if cand.mae_se is not None and stab.mae_se is not None:
        se = math.hypot(cand.mae_se, stab.mae_se)
    return QualityWindow(candidate_mae=cand.mae, stable_mae=stab.mae, n_labelled=cand.n, diff_se=se)
