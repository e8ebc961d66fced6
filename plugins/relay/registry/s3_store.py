"""The artifact store on S3 or MinIO, through boto3.

A single PUT replaces an object atomically, so plain writes need nothing more. Compare-and-set
uses S3's conditional writes: ``IfMatch=<etag>`` to replace a document only if it is unchanged,
``IfNoneMatch='*'`` to create one only if absent. S3 (since 2024) and MinIO evaluate the
condition and the write as one step; a writer that loses gets 412 PreconditionFailed (or 409
ConditionalRequestConflict while another conditional write is in flight). Keys come from the
standard ``AWS_*`` variables (or any other source boto3 reads), never from Relay's settings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import boto3
from botocore.exceptions import ClientError

from relay.registry.errors import ConcurrentUpdate, ObjectNotFound
from relay.registry.store import ArtifactStore, Tagged, check_key, encode_json
from relay.settings import S3Settings

_LOST_RACE = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


class S3Store(ArtifactStore):
    """Objects under ``s3://bucket/prefix``; the bucket must exist."""

    def __init__(self, uri: str, s3: S3Settings) -> None:
        self.uri = uri.rstrip("/")
        self.bucket, _, prefix = self.uri.removeprefix("s3://").partition("/")
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self._client = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name=s3.region)

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` under ``key`` with one PUT."""
        self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        """The bytes under ``key``; raises ObjectNotFound when there are none."""
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as err:
            if _code(err) in _MISSING:
                raise ObjectNotFound(f"no object {key!r} in {self.uri}") from None
            raise
        return bytes(response["Body"].read())

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key`` (a HEAD request)."""
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as err:
            if _code(err) in _MISSING:
                return False
            raise
        return True

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key starting with ``prefix``, sorted."""
        check_key(prefix, prefix=True)
        paginator = self._client.get_paginator("list_objects_v2")
        keys: list[str] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            keys.extend(obj["Key"].removeprefix(self.prefix) for obj in page.get("Contents", []))
        return sorted(keys)

    def read_json(self, key: str) -> Tagged | None:
        """The document under ``key`` with its ETag, or None."""
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as err:
            if _code(err) in _MISSING:
                return None
            raise
        return Tagged(json.loads(response["Body"].read()), str(response["ETag"]))

    def cas_json(self, key: str, doc: Mapping[str, Any], expected_etag: str | None) -> str:
        """A conditional PUT: ``IfMatch`` the expected ETag, or ``IfNoneMatch='*'`` to create."""
        condition = {"IfMatch": expected_etag} if expected_etag else {"IfNoneMatch": "*"}
        try:
            response = self._client.put_object(
                Bucket=self.bucket,
                Key=self._key(key),
                Body=encode_json(doc),
                ContentType="application/json",
                **condition,
            )
        except ClientError as err:
            # IfMatch on an object deleted meanwhile answers 404: that is a lost race too.
            if _code(err) in _LOST_RACE or (expected_etag and _code(err) in _MISSING):
                raise ConcurrentUpdate(
                    f"{key} in {self.uri} changed since it was read "
                    f"(expected {expected_etag or 'no document'}); read it again and retry"
                ) from err
            raise
        return str(response["ETag"])
