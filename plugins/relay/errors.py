"""Named errors: each message says what went wrong and what to do about it."""

from __future__ import annotations


class RelayError(Exception):
    """Base class for Relay's errors."""


class ConfigError(RelayError):
    """The settings are inconsistent or incomplete."""


class PartitionNotFound(RelayError):
    """A lake partition that a step needs does not exist."""


class DataValidationFailed(RelayError):
    """A data batch failed its expectation suite; nothing downstream was touched."""

    def __init__(self, message: str, verdict: object | None = None) -> None:
        super().__init__(message)
        self.verdict = verdict


class FeatureStoreError(RelayError):
    """The feature store is not in a state the step expects (not applied, not materialized)."""
