"""Reference texts for the reasoning metrics (ROUGE-L, SBERT; paper Table 1), as the manifest's ``reference``.

The paper scores the ``<think>`` reasoning against MVTec-COT (supplement Sec. 8, "MVTec-COT Construction":
descriptions synthesised from MMAD annotations and verified by people), which is not public. The documented
substitute built here needs only what every benchmark publishes, the category and defect-type names and the
label (:func:`template_reference`)::

    label 1, hazelnut / colour          -> "The hazelnut shows a discoloured patch."
    label 1, metal_nut / scratch+bent   -> "The metal nut shows a scratch and a bent part."
    label 1, bottle / draem (synthetic) -> "The bottle shows a patch of foreign texture."
    label 1, kolektorsdd / unknown      -> "The kolektorsdd shows a defect."
    label 0, grid                       -> "The grid looks normal, no defect."

Defects are named as an inspector would (:data:`DEFECT_WORDS`: "a discoloured patch", not "a colour defect"; a
synthetic recipe by what it looks like, never by its name "draem"). The warm-up's target texts
(:mod:`readl.training.reasoning_targets`) use the same defect words in OTHER sentences: a model that copies
its training targets does not score as if it had copied the references (:data:`REFERENCE_SENTENCES`).

Numbers against these references measure whether the reasoning names the object and the kind of defect; they
are NOT comparable to the paper's MVTec-COT numbers (README "Metrics"). Users with real references bring them
per source as a CSV with header ``image,reference`` (``image`` = the raw image path relative to the source's
``root`` folder, e.g. ``grid/test/bent/000.png``): :func:`read_references`, joined in curate
(``curate.<split>[i].references``).
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

__all__ = [
    "DEFECT_WORDS",
    "GENERIC_DEFECT_TYPES",
    "REFERENCE_SENTENCES",
    "ReferenceFileError",
    "References",
    "defect_words",
    "read_references",
    "template_reference",
]

GENERIC_DEFECT_TYPES = frozenset({"unknown", "ko", "bad", "defect", "defective", "anomaly", "abnormal", "ng"})
"""Defect-type names that name no kind of defect (adapters use them where the source publishes none)."""


DEFECT_WORDS = {
    "draem": "a patch of foreign texture",  # DRAEM: a texture pasted through a Perlin-noise mask
    "cutpaste": "a displaced patch",  # CutPaste: a patch of the image pasted elsewhere
    "colour": "a discoloured patch",
    "color": "a discoloured patch",
    "bent": "a bent part",
    "broken": "a broken part",
    "glue": "a glue stain",
    "thread": "a stray thread",
    "metal_contamination": "metal contamination",
    "contamination": "contamination",
    "liquid": "a liquid stain",
    "oil": "an oil stain",
    "print": "a printed mark",
    "poke": "a puncture",
    "rough": "a rough patch",
    "fold": "a fold",
    "squeeze": "a squeezed part",
    "faulty_imprint": "a faulty imprint",
    "crack": "a crack",
    "cut": "a cut",
    "hole": "a hole",
    "scratch": "a scratch",
}
"""Published or synthetic defect-type names -> how an inspector names what is seen (ours). Names not listed read
"a <name> defect"; names in :data:`GENERIC_DEFECT_TYPES` (and ``good``) name no kind (None)."""

REFERENCE_SENTENCES = {
    1: "The {obj} shows {what}.",
    0: "The {obj} looks normal, no defect.",
    "unnamed": "The {obj} shows a defect.",
}
"""The template references' sentences; the warm-up's targets must share no 4-word sequence with them (a test)."""


def defect_words(defect_type: str | None) -> str | None:
    """An inspector's words for a defect type (:data:`DEFECT_WORDS`), ``+``-joined names joined by "and".

    Returns:
        e.g. ``"a scratch and a bent part"``; None when no name says what kind of defect it is (``good``,
        empty, :data:`GENERIC_DEFECT_TYPES`, ``synthetic``).
    """
    kinds = []
    for part in str(defect_type or "").split("+"):
        key = re.sub(r"[\s-]+", "_", part.strip().lower())
        if not key or key in GENERIC_DEFECT_TYPES or key in ("good", "synthetic", "anomalous"):
            continue
        words = DEFECT_WORDS.get(key) or f"{'an' if key[0] in 'aeiou' else 'a'} {_words(key)} defect"
        if words not in kinds:
            kinds.append(words)
    return " and ".join(kinds) or None


class ReferenceFileError(ValueError):
    """A references CSV that cannot be used (the message names the file, the row and the fix)."""


def _words(name: str) -> str:
    return re.sub(r"[_\s]+", " ", name).strip().lower()


def template_reference(category: str, defect_type: str, label: int) -> str:
    """The template reference of one image (module docstring).

    Args:
        category: the source's category name (underscores read as spaces; a trailing ``_NNN`` index, as in
            DTD-Synthetic's ``Woven_001``, is dropped).
        defect_type: the published defect name, in an inspector's words (:func:`defect_words`; ``+``-joined
            names, as in BSData and VISION, become "a and b"); names in :data:`GENERIC_DEFECT_TYPES` give
            "shows a defect".
        label: 0 (normal) or 1 (anomalous).

    Returns:
        One English sentence.

    Raises:
        ValueError: ``label`` is not 0 or 1.
    """
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {label!r}")
    obj = _words(re.sub(r"[_\s-]*\d+$", "", category)) or _words(category) or "object"
    if label == 0:
        return REFERENCE_SENTENCES[0].format(obj=obj)
    what = defect_words(defect_type)
    return REFERENCE_SENTENCES[1].format(obj=obj, what=what) if what else REFERENCE_SENTENCES["unnamed"].format(obj=obj)


def read_references(path: str | Path) -> dict[str, str]:
    """A references CSV (header ``image,reference``; UTF-8) as ``{image: reference}``.

    ``image`` values are POSIX paths relative to the source's root folder (a leading ``./`` and backslashes
    are normalised). Extra columns are ignored.

    Raises:
        ReferenceFileError: the file is missing or not UTF-8 CSV, lacks the ``image`` / ``reference`` columns,
            or a row has an empty image or reference, or repeats an image (the message names the file and
            the line).
    """
    path = Path(path)
    if not path.is_file():
        raise ReferenceFileError(f"{path}: references file not found (a CSV with header image,reference)")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = {"image", "reference"} - set(reader.fieldnames or [])
            if missing:
                raise ReferenceFileError(
                    f"{path}: header {reader.fieldnames} lacks {sorted(missing)}; expected "
                    "a CSV with header image,reference"
                )
            out: dict[str, str] = {}
            for line, row in enumerate(reader, start=2):
                image = (row.get("image") or "").strip().replace("\\", "/").removeprefix("./")
                text = (row.get("reference") or "").strip()
                if not image or not text:
                    raise ReferenceFileError(
                        f"{path}, line {line}: empty {'image' if not image else 'reference'}; every row needs both"
                    )
                if image in out:
                    raise ReferenceFileError(f"{path}, line {line}: image {image!r} listed twice")
                out[image] = text
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ReferenceFileError(f"{path}: not a UTF-8 CSV ({exc})") from None
    if not out:
        raise ReferenceFileError(f"{path}: no rows (a CSV with header image,reference and one row per image)")
    return out


class References:
    """The ``reference`` of each curated image: the source's CSV (``curate.<split>[i].references``) when it
    has one, else the template (``curate.references: template``) or none (``none``).

    Args:
        cfg: ``CurateConfig``.
        raw_root: the raw folder (``data/raw``); relative CSV paths are resolved against it, so a CSV kept
            there is tracked by ``data.dvc`` and is a dependency of the curate stage.

    Raises:
        ReferenceFileError: a CSV that cannot be read (:func:`read_references`); read here, before any image.
    """

    def __init__(self, cfg, raw_root: str | Path) -> None:
        self.raw_root = Path(raw_root)
        self.default = cfg.references
        self.tables: dict[str, dict[str, str]] = {}
        for split in ("train", "calib", "eval"):
            for entry in getattr(cfg, split):
                if entry.references is not None and entry.references not in self.tables:
                    self.tables[entry.references] = read_references(self.csv_path(entry))

    def csv_path(self, entry) -> Path:
        return self.raw_root / entry.references  # an absolute path stays as it is

    def key(self, entry, image_path: str | Path) -> str:
        """The CSV key of a raw image: its path relative to the source's root folder, POSIX."""
        return Path(os.path.relpath(Path(image_path).resolve(), (self.raw_root / entry.root).resolve())).as_posix()

    def check_matches(self, entry, image_paths: list[str | Path], where: str) -> None:
        """Raise when a source's CSV names none of its images (a CSV keyed by other paths).

        Raises:
            ReferenceFileError: no image of ``image_paths`` is in the CSV; the message shows an expected key.
        """
        if entry.references is None or not image_paths:
            return
        table = self.tables[entry.references]
        keys = [self.key(entry, p) for p in image_paths]
        if not any(k in table for k in keys):
            raise ReferenceFileError(
                f"{self.csv_path(entry)} ({where}): none of its {len(table)} image(s) is an image of the source "
                f"(e.g. {next(iter(table))!r}); `image` is the path relative to {self.raw_root / entry.root}, "
                f"e.g. {sorted(keys)[0]!r}"
            )

    def __call__(self, entry, record) -> str | None:
        """The reference of one Record of source ``entry`` (None: not in its CSV, or ``references: none``)."""
        if entry.references is not None:
            return self.tables[entry.references].get(self.key(entry, record.image_path))
        if self.default == "template":
            return template_reference(record.category, record.defect_type, record.label)
        return None
