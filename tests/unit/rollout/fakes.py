"""Shared test helpers for the rollout package: a registry version walked to Validated."""

from __future__ import annotations

from relay.registry import Lineage, Registry


def validated(reg: Registry) -> str:
    """Register a version and walk it to Validated; returns its id."""
    v = reg.register(
        {"model.pt": b"weights", "preprocessor.json": b"{}"},
        lineage=Lineage(feature_service="eta_v1", data_partitions=["2026-11-20"]),
        owner="ci",
    )
    for state in ("training", "trained", "evaluating", "validated"):
        reg.transition(v.id, state, f"pipeline reached {state}")
    return v.id
