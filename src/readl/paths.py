"""Where the pipeline's files are, and which model a stage runs: decided here, once per stage.

A stage calls :func:`resolve_model` once and hands the :class:`ModelRef` down; library code (training, evaluation,
registry, predictor) never reads params to pick a model and never probes ``models/`` for one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # an annotation only: the CLI imports this module for its defaults without pydantic
    from readl.config import Params

__all__ = ["DEFAULT_PATHS", "ModelRef", "Paths", "resolve_model"]


@dataclass(frozen=True)
class Paths:
    """The model folder's files (relative to the working directory, as dvc.yaml names them)."""

    models: Path = Path("models")

    @property
    def warmup(self) -> Path:
        """The warm-started model (``readl warmup``): a full model folder."""
        return self.models / "warmup"

    @property
    def adapter(self) -> Path:
        """The LoRA adapter (``readl train``)."""
        return self.models / "adapter"

    @property
    def thresholds(self) -> Path:
        """tau_t, tau_i and the decision threshold (``readl calibrate``)."""
        return self.models / "thresholds.json"

    @property
    def train_run(self) -> Path:
        """The training run's record (``readl train``)."""
        return self.models / "train_run.json"

    @property
    def warmup_run(self) -> Path:
        """The cold start's record (``readl warmup``)."""
        return self.models / "warmup_run.json"

    @property
    def registered(self) -> Path:
        """The registered version's record (``readl register``)."""
        return self.models / "registered.json"


DEFAULT_PATHS = Paths()  # the pipeline's own files (dvc.yaml): the stages' and the CLI's defaults


@dataclass(frozen=True)
class ModelRef:
    """The base model a stage runs.

    Attributes:
        base: what :func:`readl.model.loading.load_model` gets: ``models/warmup`` after the cold start, else
            ``params.model.base`` (a kit name, a local folder or an HF id).
        configured: ``params.model.base``.
    """

    base: str
    configured: str

    @property
    def warm_started(self) -> bool:
        """True when :attr:`base` is the cold start's output, not the configured model."""
        return self.base != self.configured


def resolve_model(params: Params, paths: Paths | None = None) -> ModelRef:
    """The base model of the stages after the cold start: ``models/warmup`` when ``warmup.enabled`` and the
    warm-started model is there, else ``model.base`` (the paper recipe starts GRPO from Qwen2.5-VL-Instruct
    itself, Sec. 5.1). A missing warm-started model is logged as a warning (run ``dvc repro warmup``): the stage
    then runs on ``model.base``.

    Args:
        params: validated params.
        paths: the pipeline's folders (default ``models/`` in the working directory).
    """
    warm = (paths or Paths()).warmup
    configured = params.model.base
    if not params.warmup.enabled:
        return ModelRef(configured, configured)
    if (warm / "config.json").is_file():
        return ModelRef(str(warm), configured)
    logging.getLogger(__name__).warning(
        "no warm-started model at %s (run `dvc repro warmup`); using %s", warm, configured
    )
    return ModelRef(configured, configured)
