"""Where the registry keeps its bytes: a key-value artifact store with compare-and-set.

Two backends share this interface: a local folder (:mod:`relay.registry.local_store`) and S3 or
MinIO (:mod:`relay.registry.s3_store`); :func:`relay.registry.backends.open_store` picks one.
Keys are ``/``-separated and relative to the store's root. Every write replaces a whole object
atomically: a reader sees the old bytes or the new ones, never a mix. Names starting with a dot
are reserved for the store's own temp and lock files.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from relay.registry.errors import InvalidName


@dataclass(frozen=True)
class Tagged:
    """A JSON document and the tag of the bytes it was read from (an S3 ETag or a sha256)."""

    doc: dict[str, Any]
    etag: str


class ArtifactStore(ABC):
    """Bytes under keys, plus compare-and-set writes of small JSON documents."""

    uri: str

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` under ``key``, replacing any object there atomically."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The bytes under ``key``.

        Raises:
            ObjectNotFound: Nothing is stored under ``key``.
        """

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abstractmethod
    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key starting with ``prefix`` (a plain string prefix, as in S3), sorted."""

    @abstractmethod
    def read_json(self, key: str) -> Tagged | None:
        """The JSON document under ``key`` with its tag, or None when there is none."""

    @abstractmethod
    def cas_json(self, key: str, doc: Mapping[str, Any], expected_etag: str | None) -> str:
        """Write ``doc`` only if the object under ``key`` still has ``expected_etag``.

        Args:
            key: Where the document lives.
            doc: A JSON-serialisable mapping.
            expected_etag: The tag from :meth:`read_json`, or None to create the document only
                if there is none yet.

        Returns:
            The new tag.

        Raises:
            ConcurrentUpdate: The object changed (or appeared, or vanished) since it was read.
        """


def encode_json(doc: Mapping[str, Any]) -> bytes:
    """Stable, readable JSON bytes for a registry document."""
    return json.dumps(doc, indent=2, sort_keys=True).encode()


def check_key(key: str, *, prefix: bool = False) -> str:
    """Refuse keys that could escape the store's root or clash with its own files.

    Args:
        key: A ``/``-separated key.
        prefix: Accept the empty string and a trailing ``/`` (a listing prefix).

    Raises:
        InvalidName: The key is absolute, or has an empty, ``..`` or dot-led segment.
    """
    if prefix and key == "":
        return key
    body = key[:-1] if prefix and key.endswith("/") else key
    parts = body.split("/")
    if "\\" in key or any(part == "" or part.startswith(".") for part in parts):
        raise InvalidName(
            f"store key {key!r} is not usable: it must be relative, without empty segments "
            f"or segments starting with '.'"
        )
    return key
