"""Where Ray Train checkpoints and Ray Tune results go: a local path (the local profile) or S3.

Ray writes them from every node that runs a worker, so in prod they go to S3
(``RELAY_TRAIN__STORAGE_URI``, default ``{artifacts}/ray_results``), never to one node's disk.
"""

from __future__ import annotations

import os

import pyarrow.fs as pafs

from relay.settings import S3Settings


def ray_storage(uri: str, s3: S3Settings) -> tuple[str, pafs.FileSystem | None]:
    """``storage_path`` and ``storage_filesystem`` for a Ray ``RunConfig``.

    An ``s3://`` URI gets a pyarrow ``S3FileSystem`` on ``RELAY_S3__ENDPOINT_URL`` (MinIO, moto)
    and the bucket path without its scheme, as Ray expects with a filesystem. The filesystem
    holds no keys: Ray pickles it to every worker, and each node reads its own ``AWS_*``
    variables. A local path is made absolute (Ray refuses relative ones).
    """
    if not uri.startswith("s3://"):
        return os.path.abspath(uri), None
    kwargs: dict[str, object] = {"region": s3.region}
    if s3.endpoint_url:
        scheme, _, host = s3.endpoint_url.partition("://")
        kwargs.update(endpoint_override=host, scheme=scheme)
    return uri.removeprefix("s3://").rstrip("/"), pafs.S3FileSystem(**kwargs)
