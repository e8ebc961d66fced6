"""The rollout controller tests' world (a registry, a rollout store, a lease, a fake Serve)."""

from tests.unit.rollout.test_controller import world  # noqa: F401
