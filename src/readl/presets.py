"""Named sets of parameter overrides: ``readl preset NAME`` writes one into params.yaml.

:data:`PRESETS` is the registry. ``paper`` is the paper's recipe (Sec. 5.1, supplement Tables 4-5) on real data and
a GPU host: every Table 1 / supplement row of README "Reproducing the paper" is ``dvc exp run`` on top of it. Each
override carries its source: ``paper ...`` where the paper gives the value, ``ours: ...`` where it does not.
"""

from __future__ import annotations

import copy
from typing import Any

from readl.config import Params

__all__ = ["PAPER", "PRESETS", "apply_preset", "set_dotted"]

_REAL_DATA = "paper Sec. 5.1 sources (image-level labels); per-source counts ours (README 'Using real data')"


def _src(name: str, normal: int, anomalous: int) -> dict:
    return {"name": name, "layout": name, "root": name, "normal": normal, "anomalous": anomalous}


# dotted params key -> (value, source)
PAPER: dict[str, tuple[Any, str]] = {
    "model.base": ("Qwen/Qwen2.5-VL-7B-Instruct", "paper Sec. 5.1 (Table 1 also reports the 3B)"),
    "model.image_size": (420, "paper Sec. 5.1: 420x420 -> 15x15 image tokens"),
    "warmup.enabled": (False, "paper Sec. 5.1: GRPO starts from Qwen2.5-VL-Instruct, no cold start"),
    "train.rewards": (["format", "accuracy", "consistency"], "paper Eq. 8"),
    "train.num_generations": (8, "paper Sec. 5.1: G = 8"),
    "train.per_device_train_batch_size": (16, "ours: rollouts per GPU and micro-step"),
    "train.gradient_accumulation_steps": (
        4,
        "ours: 2 GPUs x 16 x 4 = 128 rollouts = the paper's 16 images x G 8 per step (Sec. 5.1)",
    ),
    "train.consistency.k": (3, "paper supplement Table 4"),
    "train.consistency.delta1": (0.3, "paper supplement Table 4"),
    "train.consistency.delta2": (0.1, "paper supplement Table 4"),
    "train.consistency.quantile": (0.95, "paper Sec. 4.2: 95th-percentile support"),
    "train.consistency.require_format": (True, "ours: a broken format earns no R_cons (figure 2; not in Eq. 6-7)"),
    "train.accuracy_requires_format": (True, "ours: a broken format earns no R_acc (figure 2; not in Eq. 8)"),
    "localization.tau_i": ({"rule": "max_curvature"}, "paper supplement Table 5"),
    "localization.tau_t": ({"rule": "median"}, "paper supplement Table 5"),
    "train.localization.tau_i": ({"rule": "max_curvature"}, "paper supplement Table 5"),
    "train.localization.tau_t": ({"rule": "median"}, "paper supplement Table 5"),
    "localization.ties": ("set_aside", "ours: the paper leaves ties at the top open (README 'How ReAL works here')"),
    "localization.fallback": ("all_mean", "ours: the map when no token passes (the paper does not say)"),
    "localization.query_row": ("producing", "ours: the attention row that produced each token"),
    "train.localization.ties": ("set_aside", "ours"),
    "train.localization.query_row": ("producing", "ours"),
    "train.lora.target_modules": (
        None,
        "paper Sec. 5.1: LoRA on the language and cross-modal (merger) layers, vision encoder frozen",
    ),
    "train.lora.r": (16, "ours: the paper gives no rank"),
    "train.lora.alpha": (32.0, "ours"),
    "train.learning_rate": (1.0e-5, "ours: the paper gives no learning rate"),
    "train.max_steps": (-1, "ours: epochs instead of steps"),
    "train.num_train_epochs": (2.0, "ours: the paper gives no schedule length"),
    "train.max_completion_length": (512, "ours"),
    "train.gradient_checkpointing": (True, "ours: memory (README 'Memory plan')"),
    "train.beta": (0.04, "ours: the paper gives no KL coefficient"),
    "train.epsilon": (0.2, "ours: the paper gives no clip range"),
    "train.save_steps": (25, "ours"),
    "train.balance": (False, "ours: no resampling (the paper's set is balanced by construction)"),
    "curate.train": (
        [
            _src("visa", 500, 500),
            _src("real_iad", 500, 500),
            _src("goodsad", 300, 300),
            _src("vision", 250, 250),
            _src("bsdata", 250, 250),
            _src("pr_real", 200, 200),
        ],
        _REAL_DATA,
    ),
    "curate.calib": (
        [_src(n, 50, 50) for n in ("visa", "real_iad", "goodsad", "vision", "bsdata", "pr_real")],
        "ours: the paper's calibration split is unspecified (50 + 50 held out per source)",
    ),
    "curate.eval": (
        [
            {"name": "mvtec_ad", "layout": "mvtec", "root": "mvtec_ad", "published_splits": ["test"]},
            {"name": "wfdd", "layout": "wfdd", "root": "wfdd", "published_splits": ["test"]},
            {"name": "sdd", "layout": "sdd", "root": "sdd"},
            {"name": "dtd", "layout": "dtd", "root": "dtd", "published_splits": ["test"]},
        ],
        "paper Sec. 5: MVTec-AD, WFDD, SDD, DTD-Synthetic test sets (SDD: all 399 images)",
    ),
}
PRESETS: dict[str, dict[str, tuple[Any, str]]] = {"paper": PAPER}


def set_dotted(raw: dict, key: str, value: Any) -> dict:
    """Set ``raw["a"]["b"]["c"] = value`` for ``key`` ``"a.b.c"`` (missing levels created), in place, as
    ``dvc exp run -S`` does; returns ``raw``."""
    *path, last = key.split(".")
    node = raw
    for k in path:
        node = node.setdefault(k, {})
    node[last] = value
    return raw


def apply_preset(raw: dict, name: str) -> tuple[dict, Params]:
    """``raw`` params (a parsed params.yaml) with preset ``name``'s overrides set; the result validated.

    Returns:
        ``(new_raw, params)``: the nested dict to write and its validated :class:`readl.config.Params`.

    Raises:
        ValueError: an unknown preset (the message lists the known ones), or a result that does not validate.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    out = copy.deepcopy(raw)
    for key, (value, _) in PRESETS[name].items():
        set_dotted(out, key, copy.deepcopy(value))
    return out, Params.model_validate(out)
