"""Connect to the configured Ray cluster, or start a small local one (CLI and Ray jobs)."""

from __future__ import annotations

import os
from typing import Any

from relay.settings import Settings, get_settings


def connect(settings: Settings | None = None, require_running: bool = False) -> Any:
    """``ray.init`` on ``RELAY_RAY__ADDRESS``; without one, a local Ray sized by settings.

    Inside a Ray job the address is already set by Ray and ``auto`` joins that cluster.
    """
    import ray

    s = settings or get_settings()
    if ray.is_initialized():
        return ray
    if os.environ.get("RAY_ADDRESS"):  # a Ray job's driver: join the cluster it runs on
        ray.init(address="auto", namespace="relay")
    elif s.ray.address or require_running:
        # Serving must outlive this process: join a running cluster (`ray start --head`).
        ray.init(address=s.ray.address or "auto", namespace="relay")
    else:
        try:
            # The dashboard stays on: without it Train/Tune never release finished placement
            # groups.
            ray.init(num_cpus=s.ray.num_cpus, include_dashboard=True)
        except ValueError as err:
            # A head on this machine (`make up`) is found without an address; ray.init refuses
            # sizing a cluster it did not start, so join that one as it is.
            if "existing cluster" not in str(err):
                raise
            ray.init(address="auto", namespace="relay")
    return ray
