"""Which artifact store a registry root names: a local folder or ``s3://bucket/prefix``."""

from __future__ import annotations

from relay.errors import ConfigError
from relay.registry.local_store import LocalStore
from relay.registry.s3_store import S3Store
from relay.registry.store import ArtifactStore
from relay.settings import Settings


def open_store(uri: str, settings: Settings) -> ArtifactStore:
    """The store for a registry root: ``s3://bucket/prefix`` or a local folder.

    Raises:
        ConfigError: The URI has a scheme other than ``s3://`` or ``file://``.
    """
    if uri.startswith("s3://"):
        return S3Store(uri, settings.s3)
    if "://" in uri and not uri.startswith("file://"):
        raise ConfigError(
            f"registry URI {uri!r} is neither a local path nor s3://bucket/prefix; "
            f"set RELAY_REGISTRY__URI to one of those"
        )
    return LocalStore(uri.removeprefix("file://"))


def registry_store(settings: Settings, store: ArtifactStore | None = None) -> ArtifactStore:
    """``store``, or else the registry's artifact store that ``settings.registry.uri`` names:
    where records that live beside the registry's documents (rollouts, the lease, monitoring's
    history) are kept."""
    if store is not None:
        return store
    if settings.registry.uri is None:  # pragma: no cover, the settings validator fills it
        raise ValueError("registry URI not set")
    return open_store(settings.registry.uri, settings)
