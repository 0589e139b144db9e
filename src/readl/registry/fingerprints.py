"""Content hashes and tags of a registered version: the model fingerprint (idempotent registration), the data
manifest and params hashes, the git commit and the flattened metrics (version tags ``metrics.*``)."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from readl.digest import file_digest

__all__ = [
    "FINGERPRINT_TAG",
    "METRIC_TAG_PREFIX",
    "flatten_metrics",
    "git_commit",
    "manifest_digest",
    "model_fingerprint",
    "params_digest",
]

FINGERPRINT_TAG = "readl.fingerprint"
METRIC_TAG_PREFIX = "metrics."


def manifest_digest(manifests: Sequence[str | Path]) -> str:
    """SHA-256 of the curated manifests that exist (``"none"`` when none does)."""
    present = [Path(m) for m in manifests if Path(m).is_file()]
    if not present:
        return "none"
    return file_digest(present, root=Path(present[0]).parent)


def params_digest(params: Mapping) -> str:
    """SHA-256 of the params as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


def git_commit(cwd: str | Path = ".") -> str:
    """``git rev-parse HEAD`` in ``cwd``; ``"unknown"`` outside a git checkout or without git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def flatten_metrics(metrics: Mapping, prefix: str = "") -> dict[str, float | None]:
    """Numeric leaves of metrics.json with dotted keys: ``{"image": {"AUROC": .9}}`` -> ``{"image.AUROC": .9}``.

    ``null`` / NaN become ``None``; strings, lists and booleans are skipped.
    """
    out: dict[str, float | None] = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_metrics(v, key + "."))
        elif v is None:
            out[key] = None
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = None if (isinstance(v, float) and not math.isfinite(v)) else float(v)
    return out


def model_fingerprint(
    adapter: Path | None, thresholds: Path, metrics: Path, params: Mapping, base_dir: Path | None = None
) -> str:
    """SHA-256 identifying the registered content: adapter files, thresholds, metrics, params and the
    warm-started base model's files (``base_dir``, when the pipeline has one)."""
    h = hashlib.sha256()
    if base_dir is not None:
        h.update(b"base:" + file_digest([base_dir]).encode())
    h.update(b"adapter:" + (file_digest([adapter]) if adapter else "none").encode())
    h.update(b"thresholds:" + file_digest([thresholds]).encode())
    h.update(b"metrics:" + file_digest([metrics]).encode())
    h.update(b"params:" + params_digest(params).encode())
    return h.hexdigest()
