"""Fill a production store without a model: inspections of bundled real images with chosen scores."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from readl.production.store import Store, utcnow

IMAGES = "mpdd_derived/metal_plate/test/images"


def fill(
    store: Store, home: Path, sample_dir: Path, scores: list[float], version: str = "readl/1", start: int = 0
) -> list[str]:
    """One inspection per score (decision at threshold 0.5), over distinct bundled images from the ``start``-th;
    their hashes."""
    files = sorted((sample_dir / IMAGES).glob("*.png"))[start : start + len(scores)]
    assert len(files) == len(scores), "not enough bundled images"
    (home / "images").mkdir(parents=True, exist_ok=True)
    hashes = []
    for f, score in zip(files, scores):
        h = hashlib.sha256(f.read_bytes()).hexdigest()
        copy = home / "images" / f"{h}.png"
        shutil.copyfile(f, copy)
        record = {
            "score": score,
            "answer": "Yes" if score >= 0.5 else "No",
            "tokens": ["The", " plate", " is", " bent"],
            "selected_tokens": [{"index": 3, "token": " bent", "w": 1.0}],
            "reasoning": "The plate is bent",
        }
        store.add_inspection(
            {
                "image_hash": h,
                "origin": str(f),
                "image_path": str(copy),
                "inspected_at": utcnow(),
                "model_version": version,
                "record": record,
                "error": None,
                "score": score,
                "decision": "anomalous" if score >= 0.5 else "normal",
                "threshold": 0.5,
                "margin": abs(score - 0.5),
                "overlay_path": str(copy),
            }
        )
        hashes.append(h)
    return hashes
