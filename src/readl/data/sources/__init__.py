"""Source adapters: one per benchmark layout, each reading the layout as published.

``ADAPTERS`` maps a layout name to a callable ``adapter(root, **options) -> Iterator[Record]``.
Every adapter checks ``root`` eagerly (FileNotFoundError naming the path, ``readl fetch SOURCE`` and
the benchmark's download page) and yields :class:`~readl.data.sources.base.Record` objects.

============== ===================================== =========================================
name           layout                                module
============== ===================================== =========================================
mvtec          MVTec AD (also hazelnut_toy, MPDD,    :mod:`.mvtec`
               WFDD, DTD-Synthetic: aliases below)
btad           BTAD (MVTec layout, ok/ko folders)    :mod:`.mvtec`
goodsad        GoodsAD (MVTec layout)                :mod:`.goodsad`
pr_real        PR-REAL (assumed MVTec layout)        :mod:`.pr_real`
mvtec_loco     MVTec LOCO (mask folders, OR-ed)      :mod:`.mvtec_loco`
mvtec_3d       MVTec 3D-AD (RGB images, gt masks)    :mod:`.mvtec_3d`
mvtec_ad2      MVTec AD 2 (labelled splits only)     :mod:`.mvtec_ad2`
visa           VisA split_csv/1cls.csv               :mod:`.visa`
real_iad       Real-IAD JSON per category            :mod:`.real_iad`
vision         VISION Datasets (COCO polygons)       :mod:`.vision`
bsdata         BSData (labelme polygons)             :mod:`.bsdata`
sdd            KolektorSDD (kosNN, label from mask)  :mod:`.sdd`
ksdd2          KolektorSDD2 (_GT masks)              :mod:`.sdd`
folder         anomalib "folder" format              :mod:`.folder`
images_masks   images/ + masks/ (label from mask)    :mod:`.images_masks`
feedback       inspectors' verdicts (labels.csv,     :mod:`.feedback`
               image-level, ``readl feedback export``)
synthetic      CutPaste / scar / DRAEM anomalies of  :mod:`.synthetic`
               another source's normal images
               (made by curate)
============== ===================================== =========================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from .base import DOWNLOAD_HINTS, MASK_KINDS, LayoutError, Record, records_to_frame
from .bsdata import bsdata
from .feedback import feedback
from .folder import folder
from .goodsad import goodsad
from .images_masks import images_masks
from .mvtec import btad, dtd, mpdd, mvtec, wfdd
from .mvtec_3d import mvtec_3d
from .mvtec_ad2 import mvtec_ad2
from .mvtec_loco import mvtec_loco
from .pr_real import pr_real
from .real_iad import real_iad
from .sdd import ksdd2, sdd
from .synthetic import synthetic
from .visa import visa
from .vision import vision

__all__ = [
    "ADAPTERS",
    "DOWNLOAD_HINTS",
    "LayoutError",
    "MASK_KINDS",
    "Record",
    "UnknownLayoutError",
    "get_adapter",
    "read_source",
    "records_to_frame",
]

Adapter = Callable[..., Iterator[Record]]


class UnknownLayoutError(KeyError, ValueError):
    """Unknown layout name (a ValueError; also a KeyError so ``dict`` idioms keep working)."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0])


class _Registry(dict):
    def __missing__(self, key: str) -> Adapter:
        raise UnknownLayoutError(f"unknown source layout {key!r}; known layouts: {', '.join(sorted(self))}")


ADAPTERS: dict[str, Adapter] = _Registry(
    {
        "mvtec": mvtec,
        "mvtec_ad": mvtec,
        "mpdd": mpdd,
        "wfdd": wfdd,
        "dtd": dtd,
        "btad": btad,
        "goodsad": goodsad,
        "pr_real": pr_real,
        "mvtec_loco": mvtec_loco,
        "mvtec_3d": mvtec_3d,
        "mvtec_ad2": mvtec_ad2,
        "visa": visa,
        "real_iad": real_iad,
        "vision": vision,
        "bsdata": bsdata,
        "sdd": sdd,
        "ksdd2": ksdd2,
        "folder": folder,
        "images_masks": images_masks,
        "feedback": feedback,
        "synthetic": synthetic,
    }
)
"""Layout name -> adapter. Aliases (mvtec_ad, mpdd, wfdd, dtd) differ only in ``Record.source``."""


def get_adapter(layout: str) -> Adapter:
    """Return the adapter registered under ``layout``.

    Raises:
        ValueError: unknown name; the message lists the known ones.
    """
    return ADAPTERS[layout]


def read_source(layout: str, root, **options) -> Iterator[Record]:
    """``get_adapter(layout)(root, **options)``: the records of one source.

    Raises:
        ValueError: unknown layout. FileNotFoundError / LayoutError: see the adapter.
    """
    return get_adapter(layout)(root, **options)
