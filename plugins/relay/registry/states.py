"""Lifecycle states, stages and the transition table of a model version (pure, no I/O).

The happy path is Created → Training → Trained → Evaluating → Validated → Deploying → Serving,
then Serving → Deprecated → Archived when a newer version replaces it. Beyond the issue's table
three edges exist so that no version is stuck: Training → Failed and Deploying → Failed (a job
that crashes), and Deprecated → Deploying (a rollback brings a replaced version back).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from relay.registry.errors import IllegalTransition


class ModelState(StrEnum):
    """Where a model version is in its life."""

    CREATED = "created"
    TRAINING = "training"
    TRAINED = "trained"
    EVALUATING = "evaluating"
    VALIDATED = "validated"
    FAILED = "failed"
    DEPLOYING = "deploying"
    SERVING = "serving"
    DEGRADED = "degraded"
    DEPRECATED = "deprecated"
    ARCHIVED = "archived"


class Stage(StrEnum):
    """Which traffic a version takes. The first three have one pointer per model."""

    STAGING = "staging"
    CANARY = "canary"
    PRODUCTION = "production"
    ARCHIVED = "archived"


S = ModelState

TRANSITIONS: Mapping[ModelState, frozenset[ModelState]] = MappingProxyType(
    {
        S.CREATED: frozenset({S.TRAINING, S.ARCHIVED}),
        S.TRAINING: frozenset({S.TRAINED, S.FAILED}),
        S.TRAINED: frozenset({S.EVALUATING}),
        S.EVALUATING: frozenset({S.VALIDATED, S.FAILED}),
        S.VALIDATED: frozenset({S.DEPLOYING, S.ARCHIVED}),
        S.FAILED: frozenset({S.ARCHIVED}),
        S.DEPLOYING: frozenset({S.SERVING, S.FAILED}),
        S.SERVING: frozenset({S.DEGRADED, S.DEPRECATED}),
        S.DEGRADED: frozenset({S.SERVING, S.DEPRECATED}),
        S.DEPRECATED: frozenset({S.ARCHIVED, S.DEPLOYING}),
        S.ARCHIVED: frozenset(),
    }
)
"""Every legal ``from → {to}`` of the lifecycle; anything else is refused."""

INITIAL_STATES = frozenset({S.CREATED, S.TRAINED})
"""States a version may be registered in: Trained when its weights come from a finished run."""

POINTER_STAGES = (Stage.STAGING, Stage.CANARY, Stage.PRODUCTION)
"""Stages with a pointer to one version per model."""

SERVING_STAGES = frozenset({Stage.CANARY, Stage.PRODUCTION})
"""Stages that take live traffic."""

PROMOTABLE: Mapping[Stage, frozenset[ModelState]] = MappingProxyType(
    {
        Stage.STAGING: frozenset({S.TRAINED, S.EVALUATING, S.VALIDATED}),
        # Deprecated is allowed so that a replaced version can be brought back deliberately.
        Stage.CANARY: frozenset({S.VALIDATED, S.DEPLOYING, S.SERVING, S.DEPRECATED}),
        Stage.PRODUCTION: frozenset({S.VALIDATED, S.DEPLOYING, S.SERVING, S.DEPRECATED}),
    }
)
"""The states a version must be in to be promoted into each pointer stage."""


def legal_targets(from_state: ModelState | str) -> frozenset[ModelState]:
    """The states a version in ``from_state`` may move to."""
    return TRANSITIONS[ModelState(from_state)]


def is_legal(from_state: ModelState | str, to_state: ModelState | str) -> bool:
    """Whether ``from_state → to_state`` is in the transition table."""
    return ModelState(to_state) in legal_targets(from_state)


def check_transition(from_state: ModelState | str, to_state: ModelState | str) -> ModelState:
    """Refuse an illegal lifecycle change.

    Args:
        from_state: The version's current state.
        to_state: The state asked for.

    Returns:
        ``to_state`` as a :class:`ModelState`.

    Raises:
        IllegalTransition: The table has no such edge; the message lists the legal targets.
    """
    source, target = ModelState(from_state), ModelState(to_state)
    legal = TRANSITIONS[source]
    if target not in legal:
        raise IllegalTransition(source.value, target.value, (s.value for s in legal))
    return target


def entering_serving_state(state: ModelState) -> ModelState:
    """The state a version takes when a serving stage's pointer moves to it.

    A validated or deprecated version starts deploying; one already deploying or serving stays.
    """
    if state in (S.VALIDATED, S.DEPRECATED):
        return check_transition(state, S.DEPLOYING)
    return state


def leaving_serving_state(state: ModelState) -> ModelState:
    """The state a version takes when a serving stage's pointer moves away from it.

    Serving and degraded versions are deprecated; others keep their state (never served).
    """
    if S.DEPRECATED in TRANSITIONS[state]:
        return S.DEPRECATED
    return state
