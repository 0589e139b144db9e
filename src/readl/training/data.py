"""The GRPO training set: the curated manifest -> a TRL-ready dataset of (prompt, image, label) rows.

Contract with the curate stage (``data/curated/train.parquet``): columns ``image_path`` (str, relative to
the repository root or absolute; the 420x420 image), ``label`` (int 0/1), ``source``, ``category``.

TRL 1.16 feeds images to vision-language models from a dataset column ``image`` (one PIL image per row)
next to a conversational ``prompt``; its ``prepare_multimodal_messages`` inserts the image into the
first user message. The prompt and the image are made on access (``Dataset.with_transform``): Arrow never
stores PIL images or the mixed-type message list, and only the rows of a batch are decoded.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
from datasets import Dataset
from PIL import Image

from readl.data.manifest import CURATE_HINT as _HINT
from readl.data.manifest import read_manifest
from readl.model.image_input import model_image
from readl.model.prompting import QUESTION, SYSTEM_PROMPT

__all__ = ["REQUIRED_COLUMNS", "load_manifest", "balanced_rows", "build_dataset", "fit_processor", "prompt_messages"]

REQUIRED_COLUMNS = ("image_path", "label")


def load_manifest(path: str | Path, root: str | Path = ".") -> pd.DataFrame:
    """Read and check the curated training manifest.

    Args:
        path: a ``.parquet`` (or ``.csv``) manifest with at least ``image_path`` and ``label``.
        root: folder that relative ``image_path`` values are resolved against (the repository root).

    Returns:
        The manifest with ``image_path`` resolved to absolute paths (str) and ``label`` as int64 in {0, 1}.

    Raises:
        FileNotFoundError: the manifest does not exist, or an image it lists does not (first few named).
        ValueError: the manifest is empty, lacks a required column, or has labels other than 0/1.
    """
    path = Path(path)
    df = read_manifest(path, REQUIRED_COLUMNS, what="training manifest")
    bad = sorted(set(df["label"].tolist()) - {0, 1})
    if bad:
        raise ValueError(f"training manifest {path}: label must be 0 or 1, found {bad}")
    root = Path(root)
    df = df.copy()
    df["image_path"] = [str((root / p).resolve()) for p in df["image_path"]]
    df["label"] = df["label"].astype("int64")
    absent = [p for p in df["image_path"] if not Path(p).is_file()]
    if absent:
        raise FileNotFoundError(f"{len(absent)} image(s) of {path} not found, e.g. {absent[:3]}; {_HINT}")
    return df.reset_index(drop=True)


def balanced_rows(labels, seed: int) -> list[int]:
    """Row indices in which label 0 and label 1 occur equally often (class-balanced sampling; ours).

    Every row appears once; the minority label's rows are added again, in a permutation seeded by ``seed``
    (cycled when the majority is more than twice the minority), until both labels count as many rows as the
    majority. A manifest with one label only is returned unchanged (``list(range(n))``).

    Args:
        labels: ``(N,)`` ints in {0, 1}. seed: numpy Generator seed (``warmup.seed`` / ``train.seed``).

    Returns:
        Row indices into ``labels``, length ``2 * max(n_0, n_1)`` (or ``N``), in row order then the extras.
    """
    import numpy as np

    labels = np.asarray(labels).astype(int)  # (N,)
    rows = list(range(len(labels)))
    n0, n1 = int((labels == 0).sum()), int((labels == 1).sum())
    if n0 == 0 or n1 == 0 or n0 == n1:
        return rows
    minority = np.flatnonzero(labels == (0 if n0 < n1 else 1))
    order = np.random.default_rng(seed).permutation(minority)
    extra = [int(order[i % len(order)]) for i in range(abs(n1 - n0))]
    return rows + extra


def prompt_messages(system_prompt: str = SYSTEM_PROMPT, question: str = QUESTION) -> list[dict]:
    """The conversational prompt of every row, with string contents (TRL inserts the image before the question)."""
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": question}]


def build_dataset(manifest: pd.DataFrame, image_size: int) -> Dataset:
    """A ``datasets.Dataset`` whose rows read as ``{"prompt", "image", "label", "image_path", ...}``.

    ``image`` is the RGB image resized (bicubic) to ``image_size`` x ``image_size``, decoded when the row is
    read; ``prompt`` is :func:`prompt_messages`. The other manifest columns pass through (TRL hands them to
    the reward functions as keyword lists).

    Args:
        manifest: from :func:`load_manifest` (absolute ``image_path``).
        image_size: side in pixels, a multiple of 28 (paper: 420).
    """
    keep = [c for c in manifest.columns if c in ("image_path", "label", "source", "category")]
    ds = Dataset.from_pandas(manifest[keep], preserve_index=False)

    def transform(batch: dict) -> dict:
        images = []
        for p in batch["image_path"]:
            with Image.open(p) as im:
                images.append(model_image(im, image_size))
        return {**batch, "prompt": [prompt_messages() for _ in images], "image": images}

    return ds.with_transform(transform)


def fit_processor(processor, image_size: int):
    """A copy of ``processor`` whose image processor keeps ``image_size``^2 images at the nearest size the
    model's patch grid allows (the family's :meth:`readl.model.families.Family.fit_image_processor`).

    Qwen's image processors resize to ``min_pixels <= h*w <= max_pixels`` (multiples of patch x merge: 28 px,
    32 px for Qwen3-VL); the tiny kits' are pinned to 420x420, so a 112x112 image would be upscaled. Pinning
    both bounds makes the token map the same for every image and every model of a family (7B included:
    420 -> 15x15 on Qwen2.5-VL, 13x13 on Qwen3-VL; InternVL: its fixed 448 px tile, 16x16).

    Raises:
        ValueError: ``image_size`` is smaller than one image token's side.
    """
    from readl.model.families import family_of_processor

    out = copy.copy(processor)
    out.image_processor = family_of_processor(processor).fit_image_processor(processor.image_processor, image_size)
    return out
