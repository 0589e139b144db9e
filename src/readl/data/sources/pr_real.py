"""PR-REAL, one of the ReAL paper's training sources (its ref. [37]).

UNVERIFIED LAYOUT. The ReAL paper lists PR-REAL among its auxiliary training sets (Sec. 5.1) but
readl could not find its publication or download page, so its layout is not documented here. This
adapter assumes the MVTec AD layout that most industrial anomaly benchmarks are released in (or
converted to, e.g. by anomalib)::

    <root>/<category>/{train,test}/{good,<defect>}/<image>
    <root>/<category>/ground_truth/<defect>/<stem>[_mask].<ext>

and fails loudly (LayoutError from :func:`.mvtec.mvtec`) when the files do not look like that. If
the real release is a flat images+masks folder, use the ``images_masks`` adapter instead; if it is
image-level only (no masks), the records still come out (masks None) and the manifest schema decides
whether that is acceptable for the split they end up in.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from .base import Record
from .mvtec import mvtec

__all__ = ["pr_real"]


def pr_real(
    root: str | os.PathLike[str], *, source: str = "pr_real", categories: Sequence[str] | None = None
) -> Iterator[Record]:
    """Yield PR-REAL Records assuming the MVTec layout (see module docstring).

    Raises:
        FileNotFoundError: ``root`` or a requested category folder is missing.
        LayoutError: the tree is not MVTec-like.
    """
    return mvtec(root, source=source, categories=categories, good_names=("good", "ok", "normal"))
