"""Atomic file writes: a crash never leaves a half-written output (write to a temp file, then rename).

Permissions: the temporary file / folder (``mkstemp`` / ``mkdtemp`` create them 0600 / 0700) is given the
mode a plain ``open`` / ``mkdir`` would give under the process umask before it is renamed into place, so
outputs are 0644 / 0755 under the usual umask 0022 and can be shared (metrics, adapter, gallery). Everything
written into an :func:`atomic_dir` gets those modes too, also files their writer created 0600 (safetensors).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_dir", "atomic_write", "write_json", "write_text", "current_umask", "make_dir_temp"]


def current_umask() -> int:
    """The process umask (e.g. ``0o022``), read without changing it where Linux exposes it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not atomic w.r.t. other threads)
    os.umask(mask)
    return mask


def make_dir_temp(path: str | Path, kind: str = "tmp") -> Path:
    """A new empty folder ``.<name>.<kind>-XXXX`` beside ``path`` with the mode of a plain ``mkdir`` (umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{kind}-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it onto ``path``.

    The rename is atomic on POSIX file systems, so readers see the old file or the new one, never a
    partial one; on error the temporary file is removed and the error propagates. The file gets mode
    ``0o666 & ~umask`` (0644 under umask 0022), like a file created by ``open(path, "w")``.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~current_umask())  # after write: a writer may have re-created the file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj) -> Path:
    """Atomically write ``obj`` as indented JSON to ``path``."""
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _apply_umask(root: Path) -> None:
    """Give every file and folder below ``root`` the mode a plain ``open`` / ``mkdir`` would (0666 / 0777, 0777
    for a file with any executable bit, then the umask). Writers that create their files 0600 (safetensors'
    ``save_file``,
    so PEFT's and transformers' ``save_pretrained``; anything through ``mkstemp``) would otherwise leave model
    weights unreadable to a worker or server running as another user."""
    mask = current_umask()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            f = os.path.join(dirpath, name)
            if not os.path.islink(f):
                executable = os.lstat(f).st_mode & 0o111
                os.chmod(f, (0o777 if executable else 0o666) & ~mask)
        for name in dirnames:
            d = os.path.join(dirpath, name)
            if not os.path.islink(d):
                os.chmod(d, 0o777 & ~mask)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a new empty folder beside ``path``; on success it replaces ``path`` as a whole.

    Write everything into the yielded folder. When the block ends normally, the old ``path`` (if
    any) is renamed aside, the new folder renamed onto ``path``, and the old one deleted; when the
    block raises, the new folder is deleted and ``path`` is left as it was. Readers therefore see
    the old content or the new content, never a mix; only a crash between the two renames leaves
    ``path`` absent, with the complete old content beside it as ``.<name>.old-*``.

    Yields:
        The temporary folder (``Path``), on the same file system as ``path``, with the
        permissions of a normal ``mkdir`` (umask applied).
    """
    path = Path(path)
    tmp = make_dir_temp(path)
    try:
        yield tmp
        _apply_umask(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists() or path.is_symlink():
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:12]}")
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
