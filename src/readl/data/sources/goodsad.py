"""GoodsAD (PKU-GoodsAD, Zhang et al., IEEE RA-L 2024) as published.

Documented at https://github.com/jianzhang96/GoodsAD: 6 categories (cigarette_box, drink_bottle,
drink_can, food_bottle, food_box, food_package), 3000x3000 images named with 6 digits, "the
dataset format is same as MVTec AD"::

    <root>/<category>/train/good/<NNNNNN>.jpg
    <root>/<category>/test/{good,<defect>}/<NNNNNN>.jpg
    <root>/<category>/ground_truth/<defect>/<NNNNNN>[_mask].png

Assumed (not stated on the page; to double-check on the real download): image suffix .jpg, mask
named either ``<stem>_mask.<ext>`` (MVTec style) or ``<stem>.<ext>``; both are tried, in that order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from .base import Record
from .mvtec import mvtec

__all__ = ["CATEGORIES", "goodsad"]

CATEGORIES = ("cigarette_box", "drink_bottle", "drink_can", "food_bottle", "food_box", "food_package")


def goodsad(
    root: str | os.PathLike[str], *, source: str = "goodsad", categories: Sequence[str] | None = None
) -> Iterator[Record]:
    """Yield GoodsAD Records (see module docstring); otherwise exactly :func:`.mvtec.mvtec`.

    Raises:
        FileNotFoundError: ``root`` or a requested category folder is missing.
        LayoutError: no category folder with train/ or test/ under ``root``.
    """
    return mvtec(root, source=source, categories=categories, mask_suffixes=("_mask", ""))
