"""``readl fetch SOURCE``: download a public benchmark archive into ``data/raw/<SOURCE>``.

One download = resume + checksum + atomic extraction:

* The archive is downloaded to ``<dest>/.fetch/<archive>.part``, with its URL recorded beside it
  in ``<archive>.part.url``. An interrupted download of the SAME URL resumes from the bytes
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
import lzma
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from readl.atomic import atomic_dir, write_json, write_text

__all__ = ["ChecksumError", "FetchError", "FetchResult", "ManualDownloadRequired", "SOURCES",
           "RemoteSource", "download", "extract", "fetch", "sha256_file"]

log = logging.getLogger(__name__)

CHUNK = 1 << 20
ByteProgress = Callable[[int, int | None], None]
"""``progress(done_bytes, total_bytes_or_None)``."""


class FetchError(RuntimeError):
    """A download that cannot proceed (bad URL, HTTP error, archive format); message says why."""


class ManualDownloadRequired(FetchError):
    """The benchmark has no direct public download: the message explains where and how."""


class ChecksumError(FetchError):
    """The downloaded archive's SHA-256 differs from the expected one (download deleted)."""


@dataclass(frozen=True)
class RemoteSource:
    """Where a benchmark comes from.

    Attributes:
        name: ``readl fetch`` name = folder under ``data/raw`` = params ``curate`` source name.
        layout: the curate adapter that reads it (``readl.data.sources.ADAPTERS`` key).
        tree: the expected folder layout under ``data/raw/<name>`` (shown to the user).
        url: ``https://`` or ``s3://`` archive URL; None when only a manual download exists.
        sha256: SHA-256 of the archive (lower-case hex), None when unknown.
        unsigned: read ``s3://`` anonymously (public bucket).
        page: the benchmark's page (license, manual download).
        note: license / access note printed before downloading, or the manual-download steps.
    """

    name: str
    layout: str
    tree: str
    url: str | None = None
    sha256: str | None = None
    unsigned: bool = False
    page: str = ""
    note: str = ""


def _mvtec_tree(cat: str = "<category>") -> str:
    return (f"{cat}/train/good/*.png, {cat}/test/<defect>/*.png, "
            f"{cat}/ground_truth/<defect>/*_mask.png")


SOURCES: dict[str, RemoteSource] = {s.name: s for s in [
    RemoteSource(
        "visa", "visa", "split_csv/1cls.csv, <object>/Data/Images/{Normal,Anomaly}/*.JPG, "
        "<object>/Data/Masks/Anomaly/*.png",
        url="s3://amazon-visual-anomaly/VisA_20220922.tar",
        sha256="2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
        unsigned=True, page="https://github.com/amazon-science/spot-diff",
        note="VisA (CC BY 4.0), public AWS bucket; ~1.9 GB."),
    RemoteSource(
        "mvtec_ad", "mvtec", _mvtec_tree(),
        url="https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
            "420938113-1629952094/mvtec_anomaly_detection.tar.xz",
        sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
        page="https://www.mvtec.com/company/research/datasets/mvtec-ad",
        note="MVTec AD is CC BY-NC-SA 4.0 (non-commercial); downloading it means accepting "
             "MVTec's terms. ~4.9 GB. If the link has expired, download it from the page."),
    RemoteSource(
        "mvtec_loco", "mvtec_loco",
        "<category>/{train,validation,test}/<defect>/*.png, "
        "<category>/ground_truth/<defect>/<NNN>/*.png",
        url="https://www.mydrive.ch/shares/48237/1b9106ccdfbb09a0c414bd49fe44a14a/download/"
            "430647091-1646842701/mvtec_loco_anomaly_detection.tar.xz",
        sha256="9e7c84dba550fd2e59d8e9e231c929c45ba737b6b6a6d3814100f54d63aae687",
        page="https://www.mvtec.com/company/research/datasets/mvtec-loco",
        note="MVTec LOCO AD is CC BY-NC-SA 4.0 (non-commercial). If the link has expired, "
             "download it from the page."),
    RemoteSource(
        "mvtec_3d", "mvtec_3d",
        "<category>/{train,validation}/good/rgb/*.png, <category>/test/<defect>/rgb/*.png, "
        "<category>/test/<defect>/gt/*.png (xyz/ folders are ignored)",
        page="https://www.mvtec.com/company/research/datasets/mvtec-3d-ad",
        note="MVTec 3D-AD is CC BY-NC-SA 4.0 (non-commercial); download "
             "mvtec_3d_anomaly_detection.tar.xz from the page after accepting MVTec's terms "
             "(~13 GB) and extract it."),
    RemoteSource(
        "mvtec_ad2", "mvtec_ad2",
        "<object>/{train,validation}/good/*.png, <object>/test_public/{good,bad}/*.png, "
        "<object>/test_public/ground_truth/bad/*_mask.png, <object>/test_private*/*.png "
        "(unlabelled: for readl predict only)",
        page="https://www.mvtec.com/company/research/datasets/mvtec-ad-2",
        note="MVTec AD 2 is CC BY-NC-SA 4.0 (non-commercial); download it from the page after "
             "accepting MVTec's terms and extract every object's archive."),
    RemoteSource(
        "sdd", "sdd", "kos01/Part0.jpg + kos01/Part0_label.bmp, ... kos50/",
        url="https://go.vicos.si/kolektorsdd",
        sha256="65dc621693418585de9c4467d1340ea7958a6181816f0dc2883a1e8b61f9d4dc",
        page="https://www.vicos.si/resources/kolektorsdd/",
        note="KolektorSDD (CC BY-NC-SA 4.0)."),
    RemoteSource(
        "btad", "btad", "01/{train/ok,test/ok,test/ko,ground_truth/ko}/*",
        url="https://avires.dimi.uniud.it/papers/btad/btad.zip",
        sha256="461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a",
        page="https://github.com/pankajmishra000/VT-ADL", note="BTAD (CC BY-SA 4.0)."),
    RemoteSource(
        "bsdata", "bsdata", "data/*.jpg, label/*.json (labelme)",
        url="https://github.com/2Obe/BSData/archive/refs/heads/main.zip",
        page="https://github.com/2Obe/BSData",
        note="BSData (CC BY 4.0), the repository's current main branch (no pinned checksum: "
             "the SHA-256 is printed; pass it as --sha256 next time to pin it)."),
    RemoteSource(
        "goodsad", "goodsad", _mvtec_tree("<category>").replace(".png", ".jpg", 2),
        page="https://github.com/jianzhang96/GoodsAD",
        note="GoodsAD is distributed through the links in its GitHub README (cloud drives that "
             "need a browser)."),
    RemoteSource(
        "vision", "vision", "<Dataset>/<split>/_annotations.coco.json + the images beside it",
        page="https://huggingface.co/datasets/VISION-Workshop/VISION-Datasets",
        note="VISION Datasets is gated on the Hugging Face Hub: accept its terms on the page, "
             "then `huggingface-cli download VISION-Workshop/VISION-Datasets --repo-type dataset "
             "--local-dir data/raw/vision` and extract the per-dataset archives there."),
    RemoteSource(
        "pr_real", "pr_real", _mvtec_tree(),
        page="the PR-REAL release cited by the ReAL paper (its ref. [37])",
        note="No public download of PR-REAL is known to readl; obtain it from its authors. The "
             "adapter assumes the MVTec AD layout (see readl.data.sources.pr_real)."),
    RemoteSource(
        "real_iad", "real_iad",
        "realiad_1024/<category>/{OK,NG}/..., realiad_jsons/<category>.json",
        page="https://realiad4ad.github.io/Real-IAD/",
        note="Real-IAD needs an application form (access is granted per request), after which "
             "it is downloaded from https://huggingface.co/datasets/Real-IAD/Real-IAD."),
    RemoteSource(
        "wfdd", "wfdd", _mvtec_tree("grey_cloth"),
        page="https://github.com/cqylunlun/GLASS",
        note="WFDD is shared through a cloud-drive link in the GLASS README (browser needed)."),
    RemoteSource(
        "dtd", "dtd", _mvtec_tree("Woven_001"),
        page="DTD-Synthetic (Aota et al., WACV 2023), linked from anomalib's documentation",
        note="DTD-Synthetic is shared through a cloud-drive link (browser needed)."),
    RemoteSource(
        "mpdd", "mpdd", _mvtec_tree("metal_plate"),
        page="https://github.com/stepanje/MPDD",
        note="MPDD is shared through a cloud-drive link in its GitHub README (browser needed)."),
    RemoteSource(
        "ksdd2", "ksdd2", "{train,test}/<stem>.png + <stem>_GT.png",
        page="https://www.vicos.si/resources/kolektorsdd2/",
        note="KolektorSDD2 is downloaded from its page (CC BY-NC-SA 4.0)."),
]}
"""Known benchmarks. Bundled-sample folders (hazelnut_toy, mpdd_derived, visa_metadata_only, the
MVTec grid subset) come from ``dvc pull data.dvc`` instead."""

BUNDLED = ("hazelnut_toy", "mpdd_derived", "visa_metadata_only")


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


def _chunks(read: Callable[[], bytes], transient: tuple[type[BaseException], ...]
            ) -> Iterator[bytes]:
    """Yield ``read()`` results until b""; a transient read error becomes :class:`_Interrupted`."""
    while True:
        try:
            chunk = read()
        except transient as exc:
            raise _Interrupted(f"connection lost while reading ({type(exc).__name__}: {exc})") \
                from None
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
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                      timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left after `offset`: the file is complete
            return
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Interrupted(f"HTTP {exc.code} {exc.reason} for {url}") from None
        raise FetchError(f"HTTP {exc.code} {exc.reason} for {url}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Interrupted(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
    with resp:
        start = _range_start(resp.headers.get("Content-Range"))
        if start is None:  # no Content-Range: the whole file (range ignored) -> start over
            offset = 0
        elif start != offset:
            raise FetchError(f"{url}: asked for bytes {offset}- but the server sent "
                             f"{resp.headers.get('Content-Range')!r}; delete {part} and retry")
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


def _download_s3(url: str, part: Path, progress: ByteProgress | None, endpoint_url: str | None,
                 unsigned: bool) -> None:
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


def download(url: str, dest: str | os.PathLike[str], *, progress: ByteProgress | None = None,
             endpoint_url: str | None = None, unsigned: bool = False,
             timeout: float = 60.0, attempts: int = 4) -> Path:
    """Download ``url`` to the file ``dest``, resuming from ``dest + ".part"`` if present.

    Args:
        url: ``https://``/``http://`` (urllib, HTTP Range) or ``s3://bucket/key`` (boto3 ranged
            ``get_object``).
        dest: final file path; data goes to ``<dest>.part`` and is renamed when complete.
            ``<dest>.part.url`` records the URL of the partial file: a ``.part`` is resumed
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
        raise FetchError(f"unsupported URL {url!r}: expected https://, http:// or s3://")
    recorded = record.read_text() if record.is_file() else None
    if part.exists() and recorded != url:  # another URL's bytes (or unknown): never resume them
        log.warning("%s: partial download of %s, not of %s; starting over", part,
                    recorded or "an unrecorded URL", url)
        part.unlink()
    if recorded != url:
        write_text(record, url)
    for attempt in range(1, attempts + 1):
        try:
            if scheme == "s3":
                _download_s3(url, part, progress, endpoint_url, unsigned)
            else:
                _download_http(url, part, progress, timeout)
            break
        except _Interrupted as exc:
            if attempt == attempts:
                raise FetchError(f"{exc}; gave up after {attempts} attempts (the partial "
                                 f"download {part} is kept: run again to resume)") from None
            log.warning("%s; retrying (%d/%d)", exc, attempt + 1, attempts)
            time.sleep(2 ** (attempt - 1))
    os.replace(part, dest)
    record.unlink(missing_ok=True)
    return dest


# --------------------------------------------------------------------------------------------
# extraction


def _safe_zip_extract(zf: zipfile.ZipFile, into: Path) -> None:
    base = into.resolve()
    for info in zf.infolist():
        target = (into / info.filename).resolve()
        if not target.is_relative_to(base):
            raise FetchError(f"zip member {info.filename!r} would be written outside the target "
                             f"folder; refusing to extract this archive")
    zf.extractall(into)


def extract(archive: str | os.PathLike[str], into: str | os.PathLike[str]) -> Path:
    """Extract a tar (plain/gz/bz2/xz) or zip archive into the existing empty folder ``into``.

    A single top-level folder is unwrapped (its content moved up into ``into``).

    Returns:
        ``into`` as a Path.
    Raises:
        FetchError: not a tar or zip archive, a corrupt one, or a member that would escape
            ``into``.
    """
    archive, into = Path(archive), Path(into)
    try:
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tf:
                tf.extractall(into, filter="data")
        elif zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                _safe_zip_extract(zf, into)
        else:
            raise FetchError(f"{archive} is neither a tar nor a zip archive; cannot extract it")
    except tarfile.FilterError as exc:
        raise FetchError(f"{archive}: unsafe member refused ({exc})") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise FetchError(f"{archive} is corrupt ({type(exc).__name__}: {exc}); delete it and "
                         f"run again") from None
    entries = [p for p in into.iterdir() if p.name not in ("__MACOSX",)]
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        inner = entries[0]
        staging = into / f".unwrap-{os.getpid()}"
        inner.rename(staging)
        for child in staging.iterdir():
            child.rename(into / child.name)
        staging.rmdir()
        shutil.rmtree(into / "__MACOSX", ignore_errors=True)
    return into


# --------------------------------------------------------------------------------------------
# the command


def manual_instructions(spec: RemoteSource, dest: Path) -> str:
    """The explanation printed for a benchmark that must be downloaded by hand."""
    target = dest / spec.name
    return (f"{spec.name} cannot be downloaded automatically. {spec.note}\n"
            f"  Where: {spec.page}\n"
            f"  Put it under {target}/ so that it reads: {target}/{spec.tree}\n"
            f"  (read by the '{spec.layout}' adapter, readl.data.sources.{spec.layout}); then "
            f"list it in params.yaml curate: as {{name: {spec.name}, layout: {spec.layout}, "
            f"root: {spec.name}}}.")


def _check_name(name: str, dest: Path) -> None:
    if (not name or name in (".", "..") or "/" in name or "\\" in name or os.path.isabs(name)
            or Path(name).name != name):
        raise FetchError(f"SOURCE {name!r} must be a plain folder name (no '/', '..' or absolute "
                         f"path): the data goes to {dest}/<SOURCE>; use --dest to choose another "
                         f"raw-data folder")


def _sidecar(archive: Path) -> Path:
    return archive.with_name(archive.name + ".json")


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
    if (isinstance(rec, dict) and rec.get("url") == url
            and rec.get("size") == archive.stat().st_size):
        digest = sha256_file(archive)
        if digest != rec.get("sha256") or (expected is not None and digest != expected):
            digest = None
    if digest is None:
        log.warning("%s: not a verified download of %s; downloading again", archive, url)
        _drop(archive)
    return digest


def _drop(archive: Path) -> None:
    archive.unlink(missing_ok=True)
    _sidecar(archive).unlink(missing_ok=True)
    work = archive.parent
    if work.is_dir() and not any(work.iterdir()):
        work.rmdir()


def fetch(name: str, dest: str | os.PathLike[str] = "data/raw", *, url: str | None = None,
          sha256: str | None = None, endpoint_url: str | None = None,
          unsigned: bool | None = None, force: bool = False, keep_archive: bool = False,
          progress: ByteProgress | None = None) -> FetchResult:
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
            raise ManualDownloadRequired(f"{name} is part of the bundled sample: restore it with "
                                         f"`dvc pull data.dvc` (or `make data`).")
        raise KeyError(f"unknown source {name!r}; known: {', '.join(sorted(SOURCES))} "
                       f"(or pass --url for any archive)")
    source_url = url or (spec.url if spec else None)
    if source_url is None:
        raise ManualDownloadRequired(manual_instructions(spec, dest))
    target = dest / name
    if target.exists() and not force:
        raise FileExistsError(f"{target} already exists; pass --force to replace it (the new "
                              f"copy replaces it only once completely extracted)")
    expected = (sha256 or (spec.sha256 if spec else None) or "").lower() or None
    work = dest / ".fetch"
    file_name = source_url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    archive = work / (file_name if file_name not in ("", ".", "..") else name)
    digest = _reusable(archive, source_url, expected)
    if digest is None:
        download(source_url, archive, progress=progress, endpoint_url=endpoint_url,
                 unsigned=(spec.unsigned if spec and unsigned is None else bool(unsigned)))
        digest = sha256_file(archive)
        if expected is not None and digest != expected:
            _drop(archive)
            raise ChecksumError(f"{archive.name}: SHA-256 {digest} does not match the expected "
                                f"{expected}; the download was deleted. A changed upstream file "
                                f"or a corrupt transfer: run again, or pass --sha256 after "
                                f"checking it.")
        write_json(_sidecar(archive), {"url": source_url, "size": archive.stat().st_size,
                                       "sha256": digest})
    try:
        with atomic_dir(target) as tmp:
            extract(archive, tmp)
    except FetchError:
        _drop(archive)
        raise
    if not keep_archive:
        _drop(archive)
    return FetchResult(target, digest, expected is not None)
