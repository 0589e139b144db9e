"""``readl fetch SOURCE``: download a public benchmark archive into ``data/raw/<SOURCE>``.

One download = resume + checksum + atomic extraction:

* The archive is downloaded to ``<dest>/.fetch/<archive>.part``, with its URL recorded beside it
  in ``<archive>.part.url`` (as a SHA-256 digest: a URL may hold credentials). An interrupted download of the SAME
  URL resumes from the bytes
  already there (a ``.part`` with no record, or a record of another URL, is deleted and the
  download starts over): ``Range: bytes=N-`` for http(s) (via ``urllib``; a server that
  ignores ranges restarts the file), ``get_object(Range="bytes=N-")`` for ``s3://`` URLs (boto3,
  :mod:`readl.storage`; unsigned for public buckets, endpoint from ``--endpoint-url`` /
  ``$READL_S3_ENDPOINT_URL`` / ``$AWS_ENDPOINT_URL``).
* The whole file's SHA-256 is checked against :data:`SOURCES` (or ``--sha256``). A mismatch deletes
  the download and raises :class:`ChecksumError` (nothing is extracted); with no known checksum the
  computed one is returned and printed, to pin it next time.
* A kept archive (``--keep-archive``) is reused only when its sidecar ``<archive>.json`` (written
  after a verified download: ``url``, ``size`` in bytes, ``sha256``) matches the requested URL and
  the file's current size and SHA-256 (and the expected checksum, when known); otherwise it is
  deleted and downloaded again. An archive that fails to extract is deleted with its sidecar.
* ``SOURCE`` must be a plain folder name (no ``/``, ``..``, absolute path): it becomes
  ``<dest>/<SOURCE>`` and can never point outside ``dest``.
* tar (any compression) and zip archives are extracted into a temporary folder beside the target,
  which is renamed to ``<dest>/<SOURCE>`` only when complete (a single top-level folder is
  unwrapped, so ``BSData-main/data/...`` lands as ``data/raw/bsdata/data/...``). Members that would
  escape the folder (absolute paths, ``..``, links out) are refused (tar "data" filter).

Benchmarks without a direct public download raise :class:`ManualDownloadRequired` whose message
says where to get the data and which layout to put under ``data/raw/<SOURCE>``. The direct URLs and
checksums below are the ones anomalib uses (``anomalib.data.datamodules.image.*.DOWNLOAD_INFO``).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from readl.atomic import atomic_dir, write_json, write_text
from readl.data.archives import extract
from readl.data.fetch_catalogue import BUNDLED, SOURCES, RemoteSource
from readl.data.fetch_errors import ChecksumError, FetchError, ManualDownloadRequired, UnknownSourceError
from readl.redact import redact

__all__ = [
    "ChecksumError",
    "FetchError",
    "FetchResult",
    "ManualDownloadRequired",
    "SOURCES",
    "UnknownSourceError",
    "RemoteSource",
    "download",
    "extract",
    "fetch",
    "sha256_file",
]

log = logging.getLogger(__name__)

CHUNK = 1 << 20
ByteProgress = Callable[[int, int | None], None]
"""``progress(done_bytes, total_bytes_or_None)``."""


@dataclass(frozen=True)
class FetchResult:
    """Outcome of :func:`fetch`: the extracted folder, the archive's SHA-256 (hex), and whether it
    was checked against a known value (False: unknown checksum, print it to pin it)."""

    path: Path
    sha256: str
    verified: bool


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 (lower-case hex) of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# download with resume


class _Interrupted(Exception):
    """A transient failure (connection lost, 5xx): :func:`download` retries, resuming."""


def _chunks(read: Callable[[], bytes], transient: tuple[type[BaseException], ...]) -> Iterator[bytes]:
    """Yield ``read()`` results until b""; a transient read error becomes :class:`_Interrupted`."""
    while True:
        try:
            chunk = read()
        except transient as exc:
            raise _Interrupted(f"connection lost while reading ({type(exc).__name__}: {exc})") from None
        if not chunk:
            return
        yield chunk


def _range_start(content_range: str | None) -> int | None:
    """First byte of a ``Content-Range: bytes S-E/T`` header (None without one). Some servers
    answer a range request with status 200 plus Content-Range, so the header decides, not 206."""
    if not content_range or not content_range.startswith("bytes "):
        return None
    try:
        return int(content_range[6:].split("-", 1)[0])
    except ValueError:
        return None


def _download_http(url: str, part: Path, progress: ByteProgress | None, timeout: float) -> None:
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "readl-fetch", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left after `offset`: the file is complete
            return
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Interrupted(f"HTTP {exc.code} {exc.reason} for {redact(url)}") from None
        raise FetchError(f"HTTP {exc.code} {exc.reason} for {redact(url)}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Interrupted(f"cannot reach {redact(url)}: {getattr(exc, 'reason', exc)}") from None
    with resp:
        start = _range_start(resp.headers.get("Content-Range"))
        if start is None:  # no Content-Range: the whole file (range ignored) -> start over
            offset = 0
        elif start != offset:
            raise FetchError(
                f"{redact(url)}: asked for bytes {offset}- but the server sent "
                f"{resp.headers.get('Content-Range')!r}; delete {part} and retry"
            )
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with open(part, "ab" if offset else "wb") as out:
            done = offset
            if progress:
                progress(done, total)
            for chunk in _chunks(lambda: resp.read(CHUNK), (OSError, http.client.HTTPException)):
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)


def _download_s3(url: str, part: Path, progress: ByteProgress | None, endpoint_url: str | None, unsigned: bool) -> None:
    from botocore.exceptions import BotoCoreError

    from readl.storage import object_size, parse_s3_url, s3_client, s3_errors

    bucket, key = parse_s3_url(url)
    client = s3_client(endpoint_url, unsigned=unsigned)
    total = object_size(client, bucket, key)
    offset = part.stat().st_size if part.exists() else 0
    if offset > total:  # a different (older, larger) object: start over
        offset = 0
    if progress:
        progress(offset, total)
    if offset == total and total:
        return
    with s3_errors(client, bucket, key):
        kwargs = {"Range": f"bytes={offset}-"} if offset else {}
        body = client.get_object(Bucket=bucket, Key=key, **kwargs)["Body"]
        with open(part, "ab" if offset else "wb") as out:
            done = offset
            for chunk in _chunks(lambda: body.read(CHUNK), (OSError, BotoCoreError)):
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    progress: ByteProgress | None = None,
    endpoint_url: str | None = None,
    unsigned: bool = False,
    timeout: float = 60.0,
    attempts: int = 4,
) -> Path:
    """Download ``url`` to the file ``dest``, resuming from ``dest + ".part"`` if present.

    Args:
        url: ``https://``/``http://`` (urllib, HTTP Range) or ``s3://bucket/key`` (boto3 ranged
            ``get_object``).
        dest: final file path; data goes to ``<dest>.part`` and is renamed when complete.
            ``<dest>.part.url`` records the URL's SHA-256 of the partial file: a ``.part`` is resumed
            only for the same URL, otherwise deleted first.
        progress: ``progress(done_bytes, total_bytes_or_None)``.
        endpoint_url, unsigned: S3 only (see :func:`readl.storage.s3_client`).
        timeout: seconds per HTTP connection attempt.
        attempts: tries in all; a lost connection or a 5xx answer is retried after 1, 2, 4 s,
            resuming from the bytes already downloaded.
    Returns:
        ``dest`` as a Path.
    Raises:
        FetchError: unsupported scheme, HTTP 4xx, still unreachable after ``attempts`` tries
            (the .part file is kept: run again to resume).
        readl.storage.StorageError: S3 endpoint unreachable, object missing, access denied.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    record = dest.with_name(dest.name + ".part.url")
    dest.parent.mkdir(parents=True, exist_ok=True)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ("http", "https", "s3"):
        raise FetchError(f"unsupported URL {redact(url)!r}: expected https://, http:// or s3://")
    recorded = record.read_text() if record.is_file() else None
    digest = "sha256:" + _url_digest(url)  # the record never holds the URL (it may carry credentials)
    if part.exists() and recorded != digest:  # another URL's bytes (or unknown): never resume them
        log.warning("%s: partial download of another URL than %s; starting over", part, redact(url))
        part.unlink()
    if recorded != digest:
        write_text(record, digest)
    for attempt in range(1, attempts + 1):
        try:
            if scheme == "s3":
                _download_s3(url, part, progress, endpoint_url, unsigned)
            else:
                _download_http(url, part, progress, timeout)
            break
        except _Interrupted as exc:
            if attempt == attempts:
                raise FetchError(
                    f"{exc}; gave up after {attempts} attempts (the partial "
                    f"download {part} is kept: run again to resume)"
                ) from None
            log.warning("%s; retrying (%d/%d)", exc, attempt + 1, attempts)
            time.sleep(2 ** (attempt - 1))
    os.replace(part, dest)
    record.unlink(missing_ok=True)
    return dest


# --------------------------------------------------------------------------------------------
# the command


def manual_instructions(spec: RemoteSource, dest: Path) -> str:
    """The explanation printed for a benchmark that must be downloaded by hand."""
    target = dest / spec.name
    return (
        f"{spec.name} cannot be downloaded automatically. {spec.note}\n"
        f"  Where: {spec.page}\n"
        f"  Put it under {target}/ so that it reads: {target}/{spec.tree}\n"
        f"  (read by the '{spec.layout}' adapter, readl.data.sources.{spec.layout}); then "
        f"list it in params.yaml curate: as {{name: {spec.name}, layout: {spec.layout}, "
        f"root: {spec.name}}}."
    )


def _check_name(name: str, dest: Path) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name or os.path.isabs(name) or Path(name).name != name:
        raise FetchError(
            f"SOURCE {name!r} must be a plain folder name (no '/', '..' or absolute "
            f"path): the data goes to {dest}/<SOURCE>; use --dest to choose another "
            f"raw-data folder"
        )


def _sidecar(archive: Path) -> Path:
    return archive.with_name(archive.name + ".json")


def _url_digest(url: str) -> str:
    """SHA-256 of a URL: how the download records name it (never the URL itself: it may carry credentials)."""
    return hashlib.sha256(url.encode()).hexdigest()


def _reusable(archive: Path, url: str, expected: str | None) -> str | None:
    """The archive's SHA-256 when its sidecar record matches ``url``, its size and its content
    (and ``expected``); None otherwise (the stale archive and sidecar are deleted)."""
    import json

    if not archive.is_file():
        return None
    try:
        rec = json.loads(_sidecar(archive).read_text())
    except (OSError, ValueError):
        rec = None
    digest = None
    if (
        isinstance(rec, dict)
        and rec.get("url_sha256") == _url_digest(url)
        and rec.get("size") == archive.stat().st_size
    ):
        digest = sha256_file(archive)
        if digest != rec.get("sha256") or (expected is not None and digest != expected):
            digest = None
    if digest is None:
        log.warning("%s: not a verified download of %s; downloading again", archive, redact(url))
        _drop(archive)
    return digest


def _drop(archive: Path) -> None:
    archive.unlink(missing_ok=True)
    _sidecar(archive).unlink(missing_ok=True)
    work = archive.parent
    if work.is_dir() and not any(work.iterdir()):
        work.rmdir()


def fetch(
    name: str,
    dest: str | os.PathLike[str] = "data/raw",
    *,
    url: str | None = None,
    sha256: str | None = None,
    endpoint_url: str | None = None,
    unsigned: bool | None = None,
    force: bool = False,
    keep_archive: bool = False,
    progress: ByteProgress | None = None,
) -> FetchResult:
    """Download, verify and extract benchmark ``name`` into ``<dest>/<name>``.

    Args:
        name: a key of :data:`SOURCES`, or any folder name together with ``url``.
        dest: the raw-data folder (``data/raw``).
        url: override the archive URL (a mirror; tests use a local S3 server).
        sha256: expected SHA-256 (hex); default the table's (also for a ``url`` mirror). Unknown
            -> computed and returned (``verified=False``).
        endpoint_url: S3 endpoint for ``s3://`` URLs (default from the environment).
        unsigned: anonymous S3 requests; default the table's (True for public buckets).
        force: replace an existing ``<dest>/<name>`` (atomically, once the new one is extracted).
        keep_archive: keep ``<dest>/.fetch/<archive>`` after extracting.
        progress: byte progress callback (see :func:`download`).
    Returns:
        :class:`FetchResult`.
    Raises:
        ManualDownloadRequired: no direct download (message: where to get it, which layout).
        FileExistsError: ``<dest>/<name>`` exists and ``force`` is False.
        ChecksumError: SHA-256 mismatch (the download is deleted, nothing extracted).
        FetchError / readl.storage.StorageError: download or archive problems (message says which).
        KeyError: unknown ``name`` without ``url`` (message lists the known names).
        FetchError: also ``name`` is not a plain folder name (it would escape ``dest``).
    """
    dest = Path(dest)
    _check_name(name, dest)
    spec = SOURCES.get(name)
    if spec is None and url is None:
        if name in BUNDLED:
            raise ManualDownloadRequired(
                f"{name} is part of the bundled sample: restore it with `dvc pull data.dvc` (or `make data`)."
            )
        raise UnknownSourceError(
            f"unknown source {name!r}; known: {', '.join(sorted(SOURCES))} (or pass --url for any archive)"
        )
    source_url = url or (spec.url if spec else None)
    if source_url is None:
        raise ManualDownloadRequired(manual_instructions(spec, dest))
    target = dest / name
    if target.exists() and not force:
        raise FileExistsError(
            f"{target} already exists; pass --force to replace it (the new "
            f"copy replaces it only once completely extracted)"
        )
    expected = (sha256 or (spec.sha256 if spec else None) or "").lower() or None
    work = dest / ".fetch"
    file_name = source_url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    archive = work / (file_name if file_name not in ("", ".", "..") else name)
    digest = _reusable(archive, source_url, expected)
    if digest is None:
        download(
            source_url,
            archive,
            progress=progress,
            endpoint_url=endpoint_url,
            unsigned=(spec.unsigned if spec and unsigned is None else bool(unsigned)),
        )
        digest = sha256_file(archive)
        if expected is not None and digest != expected:
            _drop(archive)
            raise ChecksumError(
                f"{archive.name}: SHA-256 {digest} does not match the expected "
                f"{expected}; the download was deleted. A changed upstream file "
                f"or a corrupt transfer: run again, or pass --sha256 after "
                f"checking it."
            )
        write_json(
            _sidecar(archive),
            {
                "url": redact(source_url),
                "url_sha256": _url_digest(source_url),
                "size": archive.stat().st_size,
                "sha256": digest,
            },
        )
    try:
        with atomic_dir(target) as tmp:
            extract(archive, tmp)
    except FetchError:
        _drop(archive)
        raise
    if not keep_archive:
        _drop(archive)
    return FetchResult(target, digest, expected is not None)
