"""Named errors of the model registry: each message says what went wrong and what to do."""

from __future__ import annotations

from collections.abc import Iterable

from relay.errors import RelayError


class RegistryError(RelayError):
    """Base class for the model registry's errors."""


class IllegalTransition(RegistryError):
    """A lifecycle change that the transition table does not allow."""

    def __init__(self, from_state: str, to_state: str, legal: Iterable[str]) -> None:
        self.from_state = from_state
        self.to_state = to_state
        self.legal = tuple(sorted(legal))
        targets = ", ".join(self.legal) or "none: it is a final state"
        super().__init__(
            f"A model version cannot go from {from_state!r} to {to_state!r}; "
            f"from {from_state!r} it may go to: {targets}."
        )

    def __reduce__(self) -> tuple[type, tuple[str, str, tuple[str, ...]]]:
        # Pickled by its own arguments (Exception's default passes the message as all of them),
        # so that it crosses a Ray task's or a process's boundary as itself.
        return type(self), (self.from_state, self.to_state, self.legal)


class ConcurrentUpdate(RegistryError):
    """Someone else changed a registry document between our read and our write."""


class VersionConflict(ConcurrentUpdate):
    """A concurrent registration took the version number this one computed."""


class VersionNotFound(RegistryError):
    """No registered model version has this id."""


class ArtifactNotFound(RegistryError):
    """A model version has no artifact of that name, or its stored bytes are gone."""


class ArtifactIntegrityError(RegistryError):
    """An artifact's stored bytes do not match the sha256 recorded at registration."""

    def __init__(self, version_id: str, name: str, expected: str, actual: str) -> None:
        self.version_id = version_id
        self.name = name
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"Artifact {name!r} of {version_id} failed its integrity check: recorded sha256 "
            f"{expected}, stored bytes hash to {actual}. Do not load it; restore the artifact "
            f"from a backup or register the model again."
        )

    def __reduce__(self) -> tuple[type, tuple[str, str, str, str]]:
        # As IllegalTransition's: a load checked in a Ray task raises it in the caller.
        return type(self), (self.version_id, self.name, self.expected, self.actual)


class ObjectNotFound(RegistryError):
    """The artifact store has no object under this key."""


class NothingToRollBack(RegistryError):
    """The stage records no previous version to restore."""


class InvalidPromotion(RegistryError):
    """The version's state does not allow it into the requested stage."""


class RolledBackVersion(InvalidPromotion):
    """The version was rolled back once: no automatic move puts it on traffic again."""


class InvalidVersion(RegistryError):
    """A semantic version or a version id that does not parse."""


class InvalidName(RegistryError):
    """A model name, artifact name or store key that cannot be used as a storage key."""
