"""Safe archive extraction for ``readl fetch``: zip / tar (gz, bz2, xz), no path escapes, one top folder unwrapped."""

from __future__ import annotations

import lzma
import os
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path

from readl.data.fetch_errors import FetchError

__all__ = ["extract"]


def _safe_zip_extract(zf: zipfile.ZipFile, into: Path) -> None:
    base = into.resolve()
    for info in zf.infolist():
        target = (into / info.filename).resolve()
        if not target.is_relative_to(base):
            raise FetchError(
                f"zip member {info.filename!r} would be written outside the target "
                f"folder; refusing to extract this archive"
            )
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
        raise FetchError(f"{archive} is corrupt ({type(exc).__name__}: {exc}); delete it and run again") from None
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
