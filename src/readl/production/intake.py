"""Intake: the new images under a folder or an S3 prefix, each identified by the sha256 of its bytes.

:func:`collect` lists a source, reads each image once, skips the contents the store already holds (a renamed or
re-uploaded copy is the same image: the key is the content, never the path) and keeps a copy under
``<home>/images/<hash><ext>``; the review page serves only these copies. Sources:

* a folder: every file with an image extension (:data:`readl.data.images.IMAGE_EXTENSIONS`) under it, recursively;
* ``s3://bucket/prefix``: every object with an image extension under the prefix (:mod:`readl.storage`: endpoint
  from ``$READL_S3_ENDPOINT_URL`` / ``$AWS_ENDPOINT_URL_S3`` / ``$AWS_ENDPOINT_URL``, credentials from boto3's
  chain).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from readl.atomic import atomic_write
from readl.data.images import IMAGE_EXTENSIONS

__all__ = ["Pending", "collect", "list_source", "shards"]


@dataclass(frozen=True)
class Pending:
    """An image not inspected yet: its content hash (sha256 hex), where it was found, its stored copy."""

    image_hash: str
    origin: str
    path: Path


def _folder(root: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    if not root.is_dir():
        raise FileNotFoundError(f"intake folder {root} not found: pass a folder of images or an s3://bucket/prefix")
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
            yield str(f), f.read_bytes


def _s3(url: str) -> Iterator[tuple[str, Callable[[], bytes]]]:
    from urllib.parse import urlparse

    from readl.storage import s3_client, s3_errors

    parsed = urlparse(url)
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    client = s3_client()
    with s3_errors(client, bucket, prefix or None):
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        keys = sorted(o["Key"] for page in pages for o in page.get("Contents", []))
    for key in keys:
        if os.path.splitext(key)[1].lower() in IMAGE_EXTENSIONS:

            def read(key: str = key) -> bytes:
                with s3_errors(client, bucket, key):
                    return client.get_object(Bucket=bucket, Key=key)["Body"].read()

            yield f"s3://{bucket}/{key}", read


def list_source(source: str | os.PathLike[str]) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """``(origin, read)`` for every image of ``source`` (module docstring), in name order.

    Raises:
        FileNotFoundError: the folder does not exist.
        readl.storage.StorageError: the bucket cannot be listed (the message names the endpoint and the fix).
    """
    s = str(source)
    return _s3(s) if s.startswith("s3://") else _folder(Path(s).expanduser())


def collect(
    source: str | os.PathLike[str], known: set[str], images_dir: Path, progress=None
) -> tuple[list[Pending], int]:
    """The images of ``source`` whose content is not in ``known`` (each distinct content once), copied to
    ``images_dir``; and how many were skipped as already inspected (or seen twice in this source).

    ``progress``: called with 1 after each file read.
    """
    pending: dict[str, Pending] = {}
    skipped = 0
    images_dir.mkdir(parents=True, exist_ok=True)
    for origin, read in list_source(source):
        data = read()
        digest = hashlib.sha256(data).hexdigest()
        if digest in known or digest in pending:
            skipped += 1
        else:
            copy = images_dir / f"{digest}{os.path.splitext(origin)[1].lower()}"
            if not copy.is_file():
                atomic_write(copy, lambda tmp, data=data: tmp.write_bytes(data))
            pending[digest] = Pending(digest, origin, copy)
        if progress is not None:
            progress(1)
    return list(pending.values()), skipped


def shards(items: list[Pending], n: int) -> list[list[Pending]]:
    """``items`` dealt round-robin into ``min(n, len(items))`` shards (at least one), order kept within each."""
    n = max(1, min(n, len(items)))
    return [items[i::n] for i in range(n)]
