"""What monitoring remembers between runs: its verdicts and the gate's rejections of retrains.

Both live in the registry's artifact store (a folder or ``s3://bucket/prefix``), beside the
model's versions and rollouts, so the Airflow workers, the CLI and a restarted scheduler all see
the same history::

    {model}/monitoring/verdicts/{run_key}.json   one per window; running it again overwrites
    {model}/monitoring/rejections.json           the last REJECTIONS_KEPT gate rejections

A window's verdict has one writer (the run of that window, ``max_active_runs=1``), so it is a
plain overwrite. Rejections come from any training run and are changed by compare-and-set.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from relay.clock import utcnow
from relay.monitor.retrain import GateRejection
from relay.registry.backends import registry_store
from relay.registry.errors import ConcurrentUpdate
from relay.registry.records import UPDATE_ATTEMPTS
from relay.registry.store import ArtifactStore
from relay.registry.versions import check_name
from relay.settings import Settings, get_settings

#: Rejections kept: a rejection older than a few retrains has been overtaken by newer data.
REJECTIONS_KEPT = 50


class MonitoringHistory:
    """The monitoring verdicts and retrain rejections of ``settings.registry.model_name``."""

    def __init__(
        self, settings: Settings | None = None, *, store: ArtifactStore | None = None
    ) -> None:
        """The history beside the registry's documents.

        Args:
            settings: defaults to :func:`get_settings`.
            store: overrides the registry store named by ``settings.registry.uri``.
        """
        s = settings or get_settings()
        self.store = registry_store(s, store)
        model = check_name(s.registry.model_name)
        self.verdict_prefix = f"{model}/monitoring/verdicts/"
        self.rejections_key = f"{model}/monitoring/rejections.json"

    # Verdicts ------------------------------------------------------------------------------

    def record_verdict(self, verdict: Mapping[str, Any]) -> str:
        """Store one window's verdict (its ``run_key`` names it) with the time it was recorded.

        Returns:
            The store key written.

        Raises:
            ValueError: the verdict has no ``run_key``.
        """
        run_key = str(verdict.get("run_key") or "")
        if not run_key:
            raise ValueError("a verdict to record needs its run_key (the window's end)")
        key = f"{self.verdict_prefix}{check_name(run_key, 'run key')}.json"
        doc = {**verdict, "recorded_at": utcnow().isoformat()}
        # default=str: a verdict is XCom-ready already; a stray datetime must not lose the run.
        self.store.put_bytes(key, json.dumps(doc, indent=2, sort_keys=True, default=str).encode())
        return key

    def verdicts(self, last: int = 10) -> list[dict[str, Any]]:
        """The ``last`` recorded verdicts, newest window first (run keys sort by time)."""
        if last < 1:
            return []
        keys = [k for k in self.store.list_keys(self.verdict_prefix) if k.endswith(".json")]
        return [json.loads(self.store.get_bytes(k)) for k in reversed(keys[-last:])]

    # Rejections ----------------------------------------------------------------------------

    def rejections(self) -> list[GateRejection]:
        """The remembered gate rejections of retrains, oldest first."""
        tagged = self.store.read_json(self.rejections_key)
        docs = [] if tagged is None else tagged.doc.get("rejections", [])
        return [GateRejection.model_validate(d) for d in docs]

    def add_rejection(self, rejection: GateRejection) -> None:
        """Remember a rejection (again: the run's earlier entry is replaced), keeping the
        newest :data:`REJECTIONS_KEPT`.

        Raises:
            ConcurrentUpdate: others kept writing for ``UPDATE_ATTEMPTS`` attempts.
        """
        for _ in range(UPDATE_ATTEMPTS):
            tagged = self.store.read_json(self.rejections_key)
            docs = [] if tagged is None else list(tagged.doc.get("rejections", []))
            docs = [d for d in docs if d.get("run_id") != rejection.run_id]
            docs.append(rejection.model_dump(mode="json"))
            docs.sort(key=lambda d: str(d["rejected_at"]))
            doc = {"rejections": docs[-REJECTIONS_KEPT:]}
            etag = None if tagged is None else tagged.etag
            try:
                self.store.cas_json(self.rejections_key, doc, etag)
            except ConcurrentUpdate:
                continue  # another training run wrote meanwhile: merge into its list
            return
        raise ConcurrentUpdate(
            f"{self.rejections_key} changed {UPDATE_ATTEMPTS} times while we added "
            f"{rejection.run_id}; run the task again"
        )
