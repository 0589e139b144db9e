"""The floating-point path of a stage: torch threads and deterministic algorithms (``params.yaml`` ``runtime:``).

Every random source of the pipeline is seeded from params (curate sampling ``curate.seed``, synthetic variants
``options.seed``, warm-up augmentation and data order ``warmup.seed``, GRPO sampling and data order
``train.seed``, bootstrap ``evaluate.bootstrap_seed``; evaluation decodes greedily). What a seed does not fix
is the order of floating-point sums, which follows the thread count: :func:`configure` pins it, and
:func:`record` is what the stages write next to the seeds (MLflow params, ``metrics.json`` ``runtime``).
"""

from __future__ import annotations

import os
import platform

import torch

from readl.config import RuntimeConfig

__all__ = ["configure", "record"]


def configure(cfg: RuntimeConfig) -> dict:
    """Apply ``runtime:`` to this process and return :func:`record`.

    ``threads`` -> ``torch.set_num_threads`` (``None`` leaves torch's default, which depends on the machine);
    ``deterministic`` -> ``torch.use_deterministic_algorithms(deterministic, warn_only=True)`` (an op without a
    deterministic kernel warns instead of failing) and, when true, cuDNN benchmarking off and
    ``CUBLAS_WORKSPACE_CONFIG`` set for CUDA when the environment does not set it.
    """
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    return record()


def record() -> dict:
    """``{"threads", "deterministic", "torch", "machine"}`` of this process: what the numbers depend on besides the
    seeds (``machine`` = CPU architecture; a different CPU kernel set may change the last bits too)."""
    return {
        "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
