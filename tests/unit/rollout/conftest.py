"""The controller tests' world (a registry, a rollout store, a lease and a fake Serve), shared."""

from tests.unit.rollout.test_controller import world  # noqa: F401
