"""Content hashes (SHA-256) of files and folders: what caches and registry fingerprints are keyed by."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

__all__ = ["file_digest"]


def file_digest(paths: Sequence[str | Path], root: Path | None = None, max_bytes: int | None = None) -> str:
    """SHA-256 (hex, 64 chars) over the relative names and bytes of ``paths``.

    Args:
        paths: files, or folders walked recursively in sorted order (``__pycache__`` skipped).
        root: names are taken relative to it (default: each folder itself, or a file's parent).
        max_bytes: files larger than this contribute their name and size only, not their bytes (for
            multi-GB model weights, whose name + size identify a published checkpoint); None = all bytes.

    Raises:
        FileNotFoundError / PermissionError: a listed file cannot be read.
    """
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        files = sorted(f for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts) if p.is_dir() else [p]
        for f in files:
            name = f.relative_to(root or (p if p.is_dir() else p.parent)).as_posix()
            h.update(name.encode() + b"\0")
            size = f.stat().st_size
            if max_bytes is not None and size > max_bytes:
                h.update(f"size={size}".encode())
            else:
                with open(f, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
            h.update(b"\0")
    return h.hexdigest()
