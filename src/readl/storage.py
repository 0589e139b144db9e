"""S3 access through boto3: one client factory, S3 URL parsing, and errors that say what to do.

Endpoint: the ``endpoint_url`` argument, else ``$READL_S3_ENDPOINT_URL``, else ``$AWS_ENDPOINT_URL_S3``,
else ``$AWS_ENDPOINT_URL``, else AWS itself. Credentials come ONLY from boto3's own chain
(environment variables, ``~/.aws/credentials`` / ``~/.aws/config``, instance roles): this module
never takes keys as arguments. Public buckets (e.g. VisA's ``s3://amazon-visual-anomaly``) are read
with unsigned requests (``botocore.UNSIGNED``), so no credentials are needed for them.

Transient failures (throttling, 5xx, dropped connections) are retried by botocore's ``standard``
retry mode (``max_attempts`` in total, exponential backoff with jitter); the errors that retrying
cannot fix are turned into :class:`StorageError` with a message naming the endpoint / object and the
fix. Source: botocore "Retries" and "Config" documentation; boto3 credentials documentation.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

__all__ = [
    "ENDPOINT_ENV_VARS",
    "StorageError",
    "object_size",
    "parse_s3_url",
    "resolve_endpoint",
    "s3_client",
    "s3_errors",
]

ENDPOINT_ENV_VARS = ("READL_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
"""Environment variables read, in order, when no endpoint is given."""


class StorageError(RuntimeError):
    """An S3 operation that failed for a reason retrying does not fix (message says which, and how)."""


def resolve_endpoint(endpoint_url: str | None = None) -> str | None:
    """The endpoint to use: the argument, else the first set variable of :data:`ENDPOINT_ENV_VARS`,
    else ``None`` (AWS)."""
    if endpoint_url:
        return endpoint_url
    for var in ENDPOINT_ENV_VARS:
        if os.environ.get(var):
            return os.environ[var]
    return None


def parse_s3_url(url: str) -> tuple[str, str]:
    """``"s3://bucket/some/key"`` -> ``("bucket", "some/key")``.

    Raises:
        ValueError: not an ``s3://`` URL, or no bucket / key.
    """
    parsed = urlparse(url)
    key = parsed.path.lstrip("/")
    if parsed.scheme != "s3" or not parsed.netloc or not key:
        raise ValueError(f"expected s3://BUCKET/KEY, got {url!r}")
    return parsed.netloc, key


def s3_client(
    endpoint_url: str | None = None,
    *,
    unsigned: bool = False,
    region_name: str | None = None,
    max_attempts: int = 5,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
) -> Any:
    """A boto3 S3 client (``botocore.client.S3``).

    Args:
        endpoint_url: S3 endpoint (``http://127.0.0.1:9000`` for MinIO / a local server); see
            :func:`resolve_endpoint` for the fallbacks.
        unsigned: send anonymous requests (public buckets); no credentials are looked up.
        region_name: signing region; default ``$AWS_REGION`` / ``$AWS_DEFAULT_REGION`` / AWS config,
            else ``us-east-1`` (any value works for MinIO-style servers).
        max_attempts: total attempts per request, first try included (botocore ``standard`` mode).
        connect_timeout, read_timeout: seconds.
    Returns:
        The client. Path-style addressing is used with a custom endpoint (bucket in the path), as
        MinIO, rclone and most S3-compatible servers expect.
    """
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    endpoint = resolve_endpoint(endpoint_url)
    session = boto3.session.Session()
    region = region_name or session.region_name or "us-east-1"
    config = Config(
        retries={"max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        signature_version=UNSIGNED if unsigned else None,
        s3={"addressing_style": "path"} if endpoint else None,
        # validate response checksums only when asked: some S3-compatible servers return the
        # whole object's checksum on ranged GETs (resume), which botocore would then reject;
        # readl checks archives by SHA-256 itself
        response_checksum_validation="when_required",
        request_checksum_calculation="when_required",
    )
    return session.client("s3", endpoint_url=endpoint, region_name=region, config=config)


def _where(client: Any, bucket: str, key: str | None) -> str:
    url = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    return f"{url} (endpoint {client.meta.endpoint_url})"


@contextmanager
def s3_errors(client: Any, bucket: str, key: str | None = None):
    """Turn botocore's exceptions inside the block into :class:`StorageError` with a fix.

    Unreachable endpoint, missing bucket/object, access denied / bad credentials, no credentials.
    Other ``ClientError`` codes are re-raised as StorageError with the server's code and message.
    """
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    where = _where(client, bucket, key)
    try:
        yield
    except (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError, ReadTimeoutError) as exc:
        raise StorageError(
            f"cannot reach the S3 endpoint for {where}: {exc}. Check the address "
            f"(--endpoint-url, ${ENDPOINT_ENV_VARS[0]} or $AWS_ENDPOINT_URL) and that the server "
            f"is running; retries are exhausted."
        ) from None
    except NoCredentialsError:
        raise StorageError(
            f"no AWS credentials found for {where}: set AWS_ACCESS_KEY_ID / "
            f"AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment, or read a public bucket "
            f"unsigned."
        ) from None
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound") or status == 404:
            what = "bucket" if code == "NoSuchBucket" else "object"
            raise StorageError(f"{what} not found: {where}. Check the bucket and key (and the endpoint).") from None
        if (
            code
            in ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled")
            or status == 403
        ):
            raise StorageError(
                f"access denied to {where} ({code or status}): check the credentials in the "
                f"environment / AWS config (they are never read from the command line), and "
                f"that the key may read this bucket; a public bucket must be read unsigned."
            ) from None
        raise StorageError(f"S3 error on {where}: {code or status}: {err.get('Message', exc)}") from None


def object_size(client: Any, bucket: str, key: str) -> int:
    """Size in bytes of ``s3://bucket/key`` (HEAD request).

    Raises:
        StorageError: unreachable endpoint, missing object, access denied (see :func:`s3_errors`).
    """
    with s3_errors(client, bucket, key):
        return int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
