"""``readl curate`` (DVC stage ``curate``): the curated train / calib / eval manifests and 420x420 images.

One linear entry, :func:`run`: the ``curate:`` params -> check every source folder -> read, filter, decode,
resize, de-duplicate (leakage guard) and synthesise (:mod:`readl.data.curate`) -> replace ``data/curated``
atomically (manifests, images, masks, ``rejected.csv``, ``leakage.csv``, ``summary.json``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from readl.config import Params
from readl.data.curate import CurateResult, curate

__all__ = ["main", "run"]


def run(
    params: Params,
    raw: Path = Path("data/raw"),
    out: Path = Path("data/curated"),
    progress: Callable[[int, int | None], None] | None = None,
) -> CurateResult:
    """Curate ``raw`` into ``out`` with ``params.curate``.

    Args:
        params: validated params (the ``curate:`` section: sources, sizes, splits, leakage guard, synthesis).
        raw: folder holding the sources' root folders (``data/raw``).
        out: the curated folder, replaced as a whole (readers see the old or the new content, never a mix).
        progress: called as ``progress(advance, total)`` per decoded image.

    Returns:
        :class:`~readl.data.curate.CurateResult` (images per split, rejected, leaked, seconds, summary).

    Raises:
        readl.data.curate.SourceMissingError (a FileNotFoundError): a configured source folder is absent (the
            message says ``readl fetch SOURCE``); nothing is written.
        ValueError: ``out`` is, or holds, ``raw`` (replacing it would delete the raw data); a source does not follow
            its layout, a references CSV is bad, an unknown layout or option.
    """
    r, o = Path(raw).resolve(), Path(out).resolve()
    if r == o or o in r.parents:
        raise ValueError(
            f"--out {out}: it holds the raw data {raw}, which replacing it would delete; curate into a "
            f"folder of its own (default data/curated)"
        )
    if r in o.parents:
        raise ValueError(
            f"--out {out}: it lies inside the raw data {raw}; curate into a folder of its own (default data/curated)"
        )
    return curate(params.curate, raw, out, progress=progress)


def main(params: Path | None = None, raw: Path = Path("data/raw"), out: Path = Path("data/curated")) -> None:
    """Build the curated train / calib / eval manifests and 420x420 images (the first DVC stage).

    ``readl curate`` and ``python -m readl.stages.curate`` (dvc.yaml): :func:`run` with a progress bar, then its
    one-line summary on stdout."""
    from readl.stages.console import load_params_file, progress

    cfg = load_params_file(params)
    with progress() as bar:
        task = bar.add_task("curate", total=None)
        result = run(cfg, raw, out, progress=lambda n, total: bar.update(task, advance=n, total=total))
    print(result.one_line())


if __name__ == "__main__":
    from readl.stages.console import script

    script(main)
