"""The artifact store on a local (or shared POSIX) folder.

Writes go to a temp file in the target's folder, are fsynced and then ``os.replace``-d into place,
so a crash leaves the previous object whole. Compare-and-set takes an exclusive ``flock`` on a
per-document lock file, compares the document's current sha256 with the expected tag, and only
then replaces it: two writers with the same tag are serialised and the second one is refused.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from relay.registry.errors import ConcurrentUpdate, ObjectNotFound
from relay.registry.store import ArtifactStore, Tagged, check_key, encode_json


class LocalStore(ArtifactStore):
    """Objects as files under ``root``; created lazily on the first write."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` under ``key`` atomically (temp file, fsync, rename)."""
        _atomic_write(self._path(key), data)

    def get_bytes(self, key: str) -> bytes:
        """The bytes under ``key``; raises ObjectNotFound when there are none."""
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(f"no object {key!r} in {self.uri}") from None

    def exists(self, key: str) -> bool:
        """Whether a file is stored under ``key``."""
        return self._path(key).is_file()

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key starting with ``prefix``, sorted; temp and lock files are hidden."""
        check_key(prefix, prefix=True)
        folder, _, _ = prefix.rpartition("/")
        base = self.root / folder
        keys = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for filename in filenames:
                if filename.startswith("."):
                    continue
                key = (Path(dirpath) / filename).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def read_json(self, key: str) -> Tagged | None:
        """The document under ``key`` tagged with the sha256 of its bytes, or None."""
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        return Tagged(json.loads(data), _etag(data))

    def cas_json(self, key: str, doc: Mapping[str, Any], expected_etag: str | None) -> str:
        """Replace the document only if its tag is still ``expected_etag`` (None: absent)."""
        path = self._path(key)
        data = encode_json(doc)
        with _locked(path):
            try:
                current: str | None = _etag(path.read_bytes())
            except FileNotFoundError:
                current = None
            if current != expected_etag:
                raise ConcurrentUpdate(
                    f"{key} in {self.uri} changed since it was read "
                    f"(expected {expected_etag or 'no document'}, found {current or 'none'}); "
                    f"read it again and retry"
                )
            _atomic_write(path, data)
        return _etag(data)


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    # flock locks belong to the open file description, so this excludes other threads of this
    # process as well as other processes. The lock file is left behind: deleting it would race.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent / f".{path.name}.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the bytes must be on disk before the rename makes them visible
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
