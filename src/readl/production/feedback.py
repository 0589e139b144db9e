"""``readl feedback export``: the inspectors' verdicts as an image-level curate source, and its params entry.

:func:`export` writes the ``feedback`` layout (:mod:`readl.data.sources.feedback`: ``labels.csv`` + ``images/``,
no masks) to ``data/raw/feedback`` as a whole (the old export stays until the new one is complete), for
``dvc add data/raw``. One row per image: OK -> label 0, NG -> label 1. An image whose reviewers disagree (OK and
NG) is a conflict: listed in ``conflicts.csv`` and reported, never exported with a guessed label. NG verdicts with
different defect types keep the image with ``defect_type`` ``unknown``. ``category`` is the product the line makes
(e.g. ``metal_plate``): curate's reasoning references and warmup's targets name it ("The metal_plate shows a scratch
defect."). ``export.json`` records the time, counts and the newest verdict time. :func:`add_source` lists the
export in params.yaml ``curate.train``.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from readl.atomic import atomic_dir, write_text
from readl.production.store import Store, utcnow

__all__ = ["ExportResult", "add_source", "entry_line", "export"]


def entry_line(root: str = "feedback", indent: str = "    ") -> str:
    """The params.yaml line :func:`add_source` inserts under ``curate.train`` (``root`` under data/raw)."""
    return (
        f"{indent}- {{name: feedback, layout: feedback, root: {root}}}  # inspectors' verdicts (readl feedback export)"
    )


@dataclass
class ExportResult:
    """What :func:`export` wrote: images per label, conflicts (image hash, reviewers and their verdicts)."""

    out: Path
    ok: int = 0
    ng: int = 0
    conflicts: list[dict] = field(default_factory=list)

    @property
    def images(self) -> int:
        return self.ok + self.ng


def export(store: Store, category: str, out: Path = Path("data/raw/feedback")) -> ExportResult:
    """Write every image with an agreed verdict to ``out`` (module docstring).

    Raises:
        ValueError: ``category`` is not a plain name (letters, digits, ``_ . -``), or ``out`` is a folder that is
            not an earlier export (no ``export.json``): the export replaces ``out`` as a whole, so ``--out
            data/raw`` or a benchmark's folder would be deleted.
        FileNotFoundError: an inspected image's stored copy is gone (the message names it and the image's origin).
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", category or ""):
        raise ValueError(f"--category {category!r}: the product's name, e.g. metal_plate (letters, digits, _ . -)")
    out = Path(out)
    if out.exists() and not (out / "export.json").is_file() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(
            f"--out {out}: exists and is not an earlier feedback export (no export.json); the export replaces its "
            f"folder as a whole, so pass a new or empty folder, e.g. data/raw/feedback"
        )
    by_image: dict[str, list] = defaultdict(list)
    for insp, v in store.reviewed():
        by_image[insp.image_hash].append((insp, v))
    result = ExportResult(Path(out))
    rows, conflict_rows = [], []
    newest = max((v.decided_at for pairs in by_image.values() for _, v in pairs), default=None)
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        for image_hash, pairs in sorted(by_image.items()):
            insp = pairs[0][0]
            verdicts = {v.verdict for _, v in pairs}
            reviewers = ";".join(f"{v.reviewer}={v.verdict}" for _, v in pairs)
            if len(verdicts) > 1:
                conflict_rows.append({"image_hash": image_hash, "origin": insp.origin, "verdicts": reviewers})
                continue
            src = Path(insp.image_path)
            if not src.is_file():
                raise FileNotFoundError(
                    f"the stored copy {src} of {insp.origin} (image {image_hash[:12]}) is gone; restore the "
                    f"production folder's images/ or drop the image's verdicts"
                )
            rel = f"images/{image_hash}{src.suffix}"
            shutil.copyfile(src, tmp / rel)
            label = int(verdicts == {"ng"})
            types = {v.defect_type for _, v in pairs if v.defect_type}
            rows.append(
                {
                    "image": rel,
                    "label": label,
                    "defect_type": (types.pop() if len(types) == 1 else "unknown") if label else "good",
                    "category": category,
                    "reviewers": reviewers,
                    "decided_at": max(v.decided_at for _, v in pairs).isoformat(timespec="seconds"),
                    "model_version": insp.model_version or "",
                }
            )
            result.ng += label
            result.ok += 1 - label
        _csv(tmp / "labels.csv", rows, ["image", "label", "defect_type", "category", "reviewers", "decided_at"])
        _csv(tmp / "conflicts.csv", conflict_rows, ["image_hash", "origin", "verdicts"])
        summary = {
            "exported_at": utcnow().isoformat(timespec="seconds"),
            "images": result.images,
            "ok": result.ok,
            "ng": result.ng,
            "conflicts": len(conflict_rows),
            "newest_verdict": newest.isoformat(timespec="seconds") if newest else None,
        }
        (tmp / "export.json").write_text(json.dumps(summary, indent=2) + "\n")
    result.conflicts = conflict_rows
    return result


def _csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns + [c for c in (rows[0] if rows else {}) if c not in columns])
        w.writeheader()
        w.writerows(rows)


def add_source(params_file: Path = Path("params.yaml"), root: str = "feedback") -> bool:
    """Insert :func:`entry_line` as the first source of ``curate.train`` in ``params_file``, at the indentation of
    the list's items, keeping every other line (comments included); False when a ``feedback`` layout source is
    listed there already.

    Raises:
        ValueError: ``params_file`` is not valid YAML, has no block-style ``curate:`` / ``  train:`` list to insert
            into (the message shows the line to add by hand), or the result does not validate.
    """
    import yaml

    from readl.config import Params

    text = params_file.read_text()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{params_file}: not valid YAML ({exc})") from None
    if any(s.get("layout") == "feedback" for s in (raw.get("curate") or {}).get("train") or []):
        return False
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if re.match(r"^curate:\s*(#.*)?$", line)), None)
    at = indent = None
    for i in range(start + 1 if start is not None else len(lines), len(lines)):
        if re.match(r"^\S", lines[i]):
            break
        if at is None and re.match(r"^  train:\s*(#.*)?$", lines[i]):
            at = i + 1
        elif at is not None and (m := re.match(r"^(\s*)- ", lines[i])):
            indent = m.group(1)  # the items' own indentation ("    - " here, "  - " from yaml.safe_dump)
            break
    if at is None:
        raise ValueError(
            f"{params_file}: no block-style `curate:` / `  train:` list; add under curate.train:\n{entry_line(root)}"
        )
    new = "".join([*lines[:at], entry_line(root, "    " if indent is None else indent) + "\n", *lines[at:]])
    try:
        Params.model_validate(yaml.safe_load(new))
    except yaml.YAMLError as exc:
        raise ValueError(f"{params_file}: could not insert the feedback source ({exc}); add it by hand") from None
    write_text(params_file, new)
    return True
