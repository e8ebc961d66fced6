"""How big a model version's deployment is: its stored needs, within the operator's settings.

A version records what a replica needs (:class:`relay.registry.ServingRequirements`: CPUs,
GPUs, memory, replicas), because a bigger model needs more, whatever the platform's defaults. The
settings stay the floor for the replica count (the prod profile's two, so one replica dying
never leaves a version dark); CPUs and memory are the version's when it states them, the
settings' otherwise.
"""

from __future__ import annotations

from typing import Any

from relay.registry import ServingRequirements
from relay.settings import ServingSettings

_MIB = 1024 * 1024


def model_replica_options(
    needs: ServingRequirements | None, serving: ServingSettings
) -> dict[str, Any]:
    """``num_replicas`` and the ``ray_actor_options`` sizes for one version's deployment."""
    needs = needs or ServingRequirements()
    actor: dict[str, Any] = {"num_cpus": needs.cpus or serving.model_cpus}
    gpus = needs.gpus if needs.gpus is not None else serving.model_gpus
    if gpus:
        actor["num_gpus"] = gpus  # the replica then sees its GPU (CUDA_VISIBLE_DEVICES)
    if needs.memory_mb is not None:
        actor["memory"] = needs.memory_mb * _MIB
    return {
        "num_replicas": max(needs.replicas or 0, serving.model_replicas),
        "ray_actor_options": actor,
    }


def stored_needs(version: str) -> ServingRequirements | None:
    """The version's stored requirements; None when the registry does not know it (a stand-in
    model in a test, say): the settings alone size it then. A registry that fails raises."""
    from relay.registry import Registry
    from relay.registry.errors import InvalidVersion, VersionNotFound

    try:
        return Registry().get(version).serving
    except (VersionNotFound, InvalidVersion):
        return None
