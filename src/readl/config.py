"""Typed view of ``params.yaml``: one pydantic model per section (DVC reads the same file).

Unknown keys are errors (a typo in params.yaml must not silently fall back to a default).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from readl.localization.anomaly_map import SelectionMode
from readl.localization.thresholds import ThresholdSpec

__all__ = [
    "RuntimeConfig",
    "ModelConfig",
    "ThresholdConfig",
    "ThresholdSpec",
    "LocalizationConfig",
    "TrainLoraConfig",
    "WarmupConfig",
    "ConsistencyConfig",
    "ConsistencySettings",
    "TrainConfig",
    "EvaluateConfig",
    "CalibrateConfig",
    "CurateSource",
    "CurateConfig",
    "ScheduleConfig",
    "RegisterConfig",
    "Params",
    "load_params",
]


class _Section(BaseModel):
    """A params section: unknown keys, NaN / inf, and a string or boolean where a number belongs are errors (a YAML
    ``"12"`` or ``true`` is never silently converted). One exception: PyYAML reads ``1e-5`` (no dot) as a string,
    so a float field takes a string that is a plain decimal or scientific number."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _numbers_are_numbers(cls, data):
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                kinds = _numeric(field.annotation)
                v = data.get(name)
                if not kinds or not isinstance(v, (bool, str)):
                    continue
                if isinstance(v, str) and float in kinds and _SCIENTIFIC.fullmatch(v.strip()):
                    continue  # YAML 1.1's `1e-5`
                raise ValueError(f"{name}: {v!r} is not a number")
        return data


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _numeric(annotation) -> set:
    """The number types of an ``int`` / ``float`` annotation (or an optional / union of them only), else empty."""
    args = set(get_args(annotation)) - {type(None)} if get_args(annotation) else {annotation}
    return args if args and args <= {int, float} else set()


class RuntimeConfig(_Section):
    """``runtime:`` the floating-point path of every stage that runs the model (ours; applied by
    :func:`readl.runtime.configure`, recorded with the seeds in MLflow and metrics.json).

    One machine, thread count and library build give bit-identical results; another thread count changes the
    order of floating-point sums, so it is a parameter, not a property of the machine.
    """

    threads: int | None = Field(None, gt=0)  # torch intra-op threads (torch.set_num_threads); null = torch's
    # default, which depends on the machine (params.yaml sets 2)
    deterministic: bool = True  # torch.use_deterministic_algorithms (warn-only) + cuDNN/cuBLAS deterministic settings


class ModelConfig(_Section):
    """``model:`` the base model and how it is prompted and decoded."""

    base: str = (
        "tiny"  # a random tiny kit (tiny = Qwen2.5-VL, tiny-qwen2-vl, tiny-qwen3-vl, tiny-internvl) | HF id | folder
    )
    image_size: int = Field(420, gt=0, multiple_of=28)  # paper Sec. 5.1: images resized to 420x420
    max_new_tokens: int = Field(256, gt=0)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(4, gt=0)  # images per generation/capture call (left-padded prompts) and per predict chunk
    # completions written by transformers' generate (default, tested) or vLLM (optional extra `readl[vllm]`, GPU
    # only, untested on CPU); the attention capture stays the teacher-forced HF pass either way (readl.model.generation)
    generation_backend: Literal["hf", "vllm"] = "hf"


# One ReAL threshold (a rule applied to normalised token scores, or a fixed value): the dataclass of
# readl.localization.thresholds, validated by pydantic (unknown keys are errors there too). One type, two names.
ThresholdConfig = ThresholdSpec


class LocalizationConfig(_Section):
    """``localization:`` ReAL (paper Sec. 4.1) at evaluation time; the same type is ``train.localization``,
    the selection inside the consistency reward."""

    layers: list[int] | None = None  # decoder layers averaged (Eq. 1); null = all
    binarize: Literal["mean"] | float = "mean"  # S_I binarisation (Eq. 3): above the map mean, or a quantile
    alpha: float = Field(1.0, ge=0)  # Eq. 4 weight of S_T^
    beta: float = Field(1.0, ge=0)  # Eq. 4 weight of S_I^
    mode: SelectionMode = "both"  # token selection (paper Table 3; the one list: readl.localization.anomaly_map)
    tau_t: ThresholdSpec = ThresholdSpec(rule="median")  # supplement Table 5: median for tau_t
    tau_i: ThresholdSpec = ThresholdSpec(rule="max_curvature")  # supplement Table 5: max curvature for tau_i
    # (ours) a rule whose tau keeps no token: re-applied below the block tied at the max (localization.thresholds)
    ties: Literal["set_aside", "strict"] = "set_aside"
    # (ours) no token passed the thresholds: the plain mean over all reasoning tokens (mode `all`) or an empty map
    fallback: Literal["all_mean", "empty"] = "all_mean"
    # (ours) map of token r: the attention row that PRODUCED r (query r - 1, = the decoding step) or r's OWN row
    query_row: Literal["producing", "own"] = "producing"

    @field_validator("layers")
    @classmethod
    def _layers_are_indices(cls, v: list[int] | None) -> list[int] | None:
        # a layer index past the model's depth is checked when the model is known (readl.localization.attention)
        if v is not None and (not v or min(v) < 0 or len(set(v)) != len(v)):
            raise ValueError(f"layers must be null (all) or distinct decoder layer indices >= 0, got {v}")
        return v


class TrainLoraConfig(_Section):
    """``train.lora``: LoRA on the language and cross-modal layers, vision encoder frozen (paper Sec. 5.1;
    the paper gives no rank/alpha/dropout: these are ours)."""

    r: int = Field(16, gt=0)
    alpha: float = Field(32.0, gt=0)  # scale = alpha / r
    dropout: float = Field(0.05, ge=0, lt=1)
    # PEFT full-match regex over module names; null = the backbone family's: decoder q/k/v/o/gate/up/down_proj +
    # the vision-language merger(s) (readl.model.families; the vision blocks' qkv/proj/mlp are never matched).
    target_modules: str | None = None


class WarmupConfig(_Section):
    """``warmup:`` the supervised cold start before CGRO (``readl warmup``; R1-style as in Vision-R1).

    The paper starts GRPO from Qwen2.5-VL-Instruct (Sec. 5.1): its recipe sets ``enabled: false``. Every
    other value is ours (the paper has no cold start).
    """

    enabled: bool = True
    trainable: Literal["auto", "full", "lora"] = "auto"  # auto: full for `tiny`, LoRA (train.lora, merged) otherwise
    learning_rate: float = Field(1e-3, gt=0)
    lr_scheduler_type: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "cosine"  # decays to 0
    lr_warmup_steps: int = Field(0, ge=0)  # linear learning-rate warm-up (HF `warmup_steps`)
    max_steps: int = Field(600, gt=0)  # optimizer steps
    per_device_train_batch_size: int = Field(8, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    weight_decay: float = Field(0.0, ge=0)  # AdamW decoupled weight decay (a regulariser against memorising)
    decision_tokens: int = Field(2, ge=0)  # reasoning tokens after <think> weighted by decision_weight
    decision_weight: float = Field(20.0, ge=0)  # loss weight of those tokens (the per-label opening decides)
    answer_weight: float = Field(5.0, ge=0)  # loss weight of the answer word after <answer>
    balance: bool = (
        True  # class-balanced rows: the minority label's images repeated (readl.training.data.balanced_rows)
    )
    augment: bool = True  # random flips / 90-degree rotations / grey conversion of each read (labels kept)
    augment_grayscale: float = Field(0.25, ge=0, le=1)  # probability of the grey conversion of a read
    seed: int = 0
    save_steps: int = Field(100, gt=0)  # checkpoint every N steps (models/warmup_checkpoints)
    save_total_limit: int | None = Field(2, gt=0)  # checkpoints kept while training (null = all)
    keep_checkpoints: bool = False  # keep models/warmup_checkpoints after a successful run (checkpoint studies)
    logging_steps: int = Field(10, gt=0)


# ``train.consistency``: the consistency reward (paper Eq. 6-7; supplement: k=3, delta1=0.3, delta2=0.1): one
# dataclass, validated by pydantic (unknown keys are errors); readl.training.rewards computes the reward with it.
# It lives here, not in readl.training, so that params validation imports nothing of the training package.
SUPPORT_QUANTILE = 0.95  # paper Sec. 4.2: each selected token's map is thresholded at its 95th percentile
REWARD_NAMES = ("format", "accuracy", "consistency")  # paper Eq. 8: R_fmt, R_acc, R_cons (readl.training.rewards)


@dataclass(frozen=True)
class ConsistencySettings:
    """Parameters of the consistency reward, ``train.consistency`` (paper Eq. 6-7; supplement ablation: k=3,
    delta1=0.3, delta2=0.1); the one type, used by :mod:`readl.training.rewards`.

    Attributes:
        k: number of top-weighted reasoning tokens whose supports are intersected (>= 1).
        delta1: anomalous images (y=1) are rewarded when J > delta1.
        delta2: normal images (y=0) are rewarded when J < delta2.
        quantile: per-map support threshold (0.95 = the paper's 95th percentile), in (0, 1).
        require_format: a broken format gets reward 0 (paper figure 2). ``False`` only for diagnostics such
            as ``benchmarks/learning_check.py`` on the untrained tiny model, which never writes the format.
    """

    k: int = 3
    delta1: float = 0.3
    delta2: float = 0.1
    quantile: float = SUPPORT_QUANTILE
    require_format: bool = True

    def __post_init__(self):
        if isinstance(self.k, bool) or int(self.k) != self.k or self.k < 1:
            raise ValueError(f"consistency k must be a positive integer, got {self.k!r}")
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"consistency quantile must lie in (0, 1), got {self.quantile!r}")


def reward_names(names: Sequence[str]) -> list[str]:
    """Validate ``train.rewards`` names against :data:`REWARD_NAMES` (the keys of ``readl.training.rewards.REWARDS``).

    Raises:
        ValueError: an unknown or repeated name, or an empty list; the message lists the known names.
    """
    names = list(names)
    if not names:
        raise ValueError(f"train.rewards is empty; choose from {sorted(REWARD_NAMES)}")
    unknown = [n for n in names if n not in REWARD_NAMES]
    if unknown:
        raise ValueError(f"unknown reward(s) {unknown}; known rewards: {sorted(REWARD_NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"train.rewards lists a reward twice: {names}")
    return names


ConsistencyConfig = ConsistencySettings


class TrainConfig(_Section):
    """``train:`` GRPO/CGRO fine-tuning (paper Sec. 4.2, 5.1). Defaults: a CPU run on the tiny kit.

    The GRPO objective (Eq. 9-10) is named here rather than left to TRL's defaults: ``loss_type`` ``grpo`` =
    1/G sum_i 1/|o_i| sum_t (the per-sequence mean of Eq. 9; TRL's default is ``dapo``), ``scale_rewards``
    ``group`` = Eq. 10's per-group std, ``importance_sampling_level`` ``token`` = the per-token ratio of GRPO
    (DeepSeekMath/R1, the paper's [12]; ``sequence`` = GSPO), ``num_iterations`` = mu (1: the ratio is
    always 1 and the clip never acts). ``localization`` is the token selection INSIDE the consistency reward
    (train time); the top-level ``localization:`` is the evaluation-time one (calibrate / evaluate / predict),
    so a threshold-rule ablation (supplement Table 5) re-runs calibrate and evaluate on one trained model.
    """

    rewards: list[str] = ["format", "accuracy", "consistency"]  # [format, accuracy] = the paper's "R1" baseline
    # one weight per reward in the sum (TRL GRPOConfig.reward_weights); null = all 1 (paper Eq. 8). A weight of 0
    # keeps a reward computed and logged but out of the advantage: [1, 1, 0] = R1 with J monitored
    reward_weights: list[float] | None = None
    consistency: ConsistencySettings = ConsistencySettings()  # k, delta1, delta2, quantile, require_format
    # (ours, not Eq. 8) a broken format earns no accuracy reward either (the paper's figure 2 rollout gets all 0)
    accuracy_requires_format: bool = True
    localization: LocalizationConfig = LocalizationConfig()  # ReAL selection feeding R_cons (Eq. 4 -> Eq. 6)
    # Eq. 9 token aggregation, TRL GRPOConfig.loss_type; only TRL's clipped-surrogate variants (its cispo / sapo /
    # luspo / vespo are other objectives than Eq. 9)
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "grpo"
    num_iterations: int = Field(1, ge=1)  # mu: optimizer passes per batch of rollouts (ratio != 1 from the 2nd)
    scale_rewards: Literal["group", "batch", "none"] = "group"  # Eq. 10: advantage / std of the group
    importance_sampling_level: Literal["token", "sequence"] = "token"  # pi_theta / pi_theta_old per token (GRPO)
    lora: TrainLoraConfig = TrainLoraConfig()
    learning_rate: float = Field(1e-4, gt=0)
    lr_scheduler_type: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    max_steps: int = Field(30, ge=-1)  # optimizer steps; -1 or 0 = num_train_epochs over the manifest
    num_train_epochs: float = Field(1.0, gt=0)
    per_device_train_batch_size: int = Field(8, gt=0)  # completions per device per micro-step
    gradient_accumulation_steps: int = Field(1, gt=0)
    num_generations: int = Field(4, ge=2)  # G rollouts per image (paper: 8)
    max_completion_length: int = Field(64, gt=0)
    temperature: float = Field(1.0, gt=0)
    beta: float = Field(0.04, ge=0)  # KL coefficient (Eq. 9); the value is ours (the paper gives none)
    epsilon: float = Field(0.2, gt=0)  # clipping range (Eq. 9); the value is ours (TRL's default)
    max_grad_norm: float = Field(1.0, gt=0)
    gradient_checkpointing: bool = False
    seed: int = 0
    balance: bool = (
        True  # class-balanced rows (readl.training.data.balanced_rows; ours: the paper's 4K set is balanced)
    )
    save_steps: int = Field(10, gt=0)  # checkpoint every N optimizer steps (models/checkpoints)
    save_total_limit: int | None = Field(2, gt=0)
    logging_steps: int = Field(1, gt=0)
    experiment: str = "readl"  # MLflow experiment
    keep_checkpoints: bool = False  # keep models/checkpoints after a successful run
    # GRPO rollouts by vLLM (TRL GRPOConfig.use_vllm / vllm_mode; GPU + the `vllm` extra): colocate = in the
    # training processes, server = a separate `trl vllm-serve` node at vllm_server_base_url (null = TRL's
    # http://0.0.0.0:8000). The consistency reward's capture stays the teacher-forced HF pass of the policy.
    use_vllm: bool = False
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_server_base_url: str | None = None
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1)  # colocate: GPU memory share vLLM may take

    @field_validator("rewards")
    @classmethod
    def _known_rewards(cls, v: list[str]) -> list[str]:
        return reward_names(v)  # REWARD_NAMES: the keys of readl.training.rewards.REWARDS

    @model_validator(mode="after")
    def _one_weight_per_reward(self):
        w = self.reward_weights
        if w is not None and (len(w) != len(self.rewards) or any(x < 0 for x in w)):
            raise ValueError(f"train.reward_weights must be one weight >= 0 per reward {self.rewards}, got {w}")
        return self


class CurateSource(_Section):
    """One benchmark feeding a curated split (an entry of ``curate.train`` / ``calib`` / ``eval``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")  # Record.source, `readl fetch NAME`, output folder
    layout: str  # adapter name in readl.data.sources.ADAPTERS (mvtec, visa, images_masks, ...)
    root: str  # folder under data/raw
    options: dict[str, Any] = {}  # extra adapter keyword arguments, e.g. {categories: [grid]}
    published_splits: list[str] | None = None  # the source's own splits to draw from; null = all
    normal: int | None = Field(None, ge=0)  # images with label 0 to draw; null = all available
    anomalous: int | None = Field(None, ge=0)  # images with label 1 to draw; null = all available
    # CSV `image,reference` of reasoning references (image = raw path relative to `root`); relative CSV paths are
    # under data/raw (tracked by data.dvc). null = curate.references (readl.data.references)
    references: str | None = None

    @field_validator("name")
    @classmethod
    def _a_folder_name(cls, v: str) -> str:
        if v in (".", ".."):  # the output sub-folder: `..` would write outside the split's folder
            raise ValueError(f"curate source name {v!r} is not a folder name of its own; use e.g. 'mvtec_ad'")
        return v


def _src(name: str, layout: str, **kw: Any) -> CurateSource:
    return CurateSource(name=name, layout=layout, root=name, **kw)


def _bottle(**kw: Any) -> CurateSource:
    return CurateSource(name="bottle", layout="mvtec", root="mvtec_ad", options={"categories": ["bottle"]}, **kw)


class CurateConfig(_Section):
    """``curate:`` the curate stage (paper Sec. 5.1); defaults = the bundled sample (params.yaml)."""

    image_size: int = Field(420, gt=0)  # paper Sec. 5.1: 420x420 (keep equal to model.image_size)
    seed: int = 0  # numpy Generator seed of the stratified sampling
    leakage_max_distance: int = Field(3, ge=0, le=64)  # pHash bits: eval images this close are leakage candidates
    leakage_min_ssim: float = Field(0.95, ge=-1.0, le=1.0)  # SSIM (64x64 grey) confirming a candidate; -1: pHash alone
    workers: int = Field(2, ge=1)  # decoding processes
    # `reference` of images from sources without a references CSV: a sentence from category + defect type + label
    # (a documented substitute for MVTec-COT, which is not public; readl.data.references), or none
    references: Literal["template", "none"] = "template"
    train: list[CurateSource] = [
        _src("hazelnut_toy", "mvtec", normal=26, anomalous=12),
        _src("mpdd_derived", "images_masks", published_splits=["test"], normal=6, anomalous=8),
        _bottle(normal=14),
        # synthetic anomalies of the normal train images (no masks in train)
        CurateSource(
            name="synthetic",
            layout="synthetic",
            root=".",
            options={
                "base": ["hazelnut_toy", "mpdd_derived", "bottle"],
                "recipes": ["draem"],
                "texture": "procedural",
                "per_image": 1,
                "seed": 0,
            },
        ),
    ]
    calib: list[CurateSource] = [
        _src("hazelnut_toy", "mvtec", normal=8, anomalous=5),
        _src("mpdd_derived", "images_masks", published_splits=["test"], normal=2, anomalous=4),
        _bottle(normal=6),
    ]
    eval: list[CurateSource] = [
        _src("mvtec_ad", "mvtec", options={"categories": ["grid"]}),
        # real defects of a trained category: the MPDD metal_plate photos train/calib never draw from
        CurateSource(name="mpdd", layout="images_masks", root="mpdd_derived", published_splits=["train", "val"]),
        # synthetic anomalies (+ the normals) of 40 held-out MVTec AD bottle photos
        CurateSource(
            name="synthetic",
            layout="synthetic",
            root="mvtec_ad",
            normal=40,
            options={
                "base_layout": "mvtec",
                "base_options": {"categories": ["bottle"]},
                "recipes": ["draem"],
                "texture": "procedural",
                "per_image": 3,
                "seed": 0,
                "normals": True,
            },
        ),
    ]

    @model_validator(mode="after")
    def _unique_names(self):
        for split in ("train", "calib", "eval"):
            names = [s.name for s in getattr(self, split)]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"curate.{split}: source name(s) {dup} listed twice")
        return self


class EvaluateConfig(_Section):
    """``evaluate:`` how the evaluate stage scores and reports (paper Sec. 5)."""

    malformed: Literal["fallback", "score"] = "fallback"  # no <answer>Yes|No: score 0.5 + empty map, or keep P(Yes)
    gallery_per_dataset: int = Field(4, ge=0)  # gallery images per dataset: highest- + lowest-scored of each label
    # computed in the same run, next to every image/pixel AUROC (readl.evaluation.comparison): untrained =
    # model.base without adapter, warmup = models/warmup before CGRO (skipped when warmup is off), contrast =
    # a training-free colour-contrast map. Each model baseline runs the model over the eval split once (cached).
    baselines: list[Literal["untrained", "warmup", "contrast"]] = ["untrained", "warmup", "contrast"]
    # tau_t / tau_i of the model baselines: `calibrated` = fitted on the calibration split exactly as `readl
    # calibrate` fits the model's (a threshold belongs to one model's attention: comparing a calibrated model with
    # per-image rules would credit calibration to training); `per_image` = the localization rules on each image.
    baseline_thresholds: Literal["calibrated", "per_image"] = "calibrated"
    bootstrap_resamples: int = Field(1000, ge=0)  # percentile bootstrap of the AUROCs, resampling images; 0 = none
    bootstrap_seed: int = 0  # numpy Generator seed of the resampling
    bootstrap_ci: float = Field(0.95, gt=0, lt=1)  # interval mass
    # the datasets whose reasoning ROUGE-L / SBERT make metrics.json `reasoning` (paper Table 1: MVTec AD only);
    # per-dataset numbers are under datasets.<name>.reasoning
    reasoning_datasets: list[str] = ["mvtec_ad"]

    @field_validator("baselines")
    @classmethod
    def _unique_baselines(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"evaluate.baselines lists a baseline twice: {v}")
        return v


class CalibrateConfig(_Section):
    """``calibrate:`` the image-level OK/NG decision fitted on the calibration split (ours: the paper reports only
    the Yes/No answer's ACC). ``anomalous`` when the image score P(Yes) >= the threshold (readl.evaluation.decision)."""

    decision: Literal["f1_max", "false_alarm_rate"] = "f1_max"  # F1-max threshold, or a false-alarm budget
    false_alarm_rate: float = Field(0.05, gt=0, lt=1)  # rule false_alarm_rate: share of normal images flagged
    # pixel.ACC's threshold t_pixel (ours; the paper does not say): this share of the normal calibration images'
    # pixels is flagged (readl.evaluation.calibration.pixel_thresholds); image-level labels only, no mask.
    pixel_false_alarm_rate: float = Field(0.01, gt=0, lt=1)


class ScheduleConfig(_Section):
    """``register.schedule``: when the Prefect ``retrain`` deployment runs (prefect.yaml must say the same)."""

    cron: str = "0 3 * * 1"  # 5-field cron: Mondays 03:00
    timezone: str = "UTC"  # IANA time zone of the cron

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, v: str) -> str:
        fields = v.split()
        if len(fields) != 5 or not all(re.fullmatch(r"[0-9A-Za-z*/,?-]+", f) for f in fields):
            raise ValueError(
                f"cron {v!r}: expected 5 fields (minute hour day-of-month month day-of-week), e.g. '0 3 * * 1'"
            )
        return v

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {v!r}: not an IANA time zone (e.g. UTC, Europe/Berlin)") from None
        return v


class RegisterConfig(_Section):
    """``register:`` MLflow registration and the promotion gate (``readl register`` / ``readl promote``)."""

    model_name: str = Field("readl", pattern=r"^[A-Za-z0-9_.-]+$")  # MLflow registered model name
    primary_metric: str = "image.AUROC"  # dotted metrics.json key (mean over eval datasets); higher is better
    min_improvement: float = 0.0  # challenger must exceed champion + this on primary_metric (a tie never promotes)
    # no-regression limits, per evaluation dataset: metric -> largest allowed drop (absolute, in [0, 1] units)
    max_drop: dict[str, float] = {"image.AUROC": 0.02, "pixel.AUROC": 0.02, "pixel.AUPRO": 0.02}
    schedule: ScheduleConfig = ScheduleConfig()

    @field_validator("max_drop")
    @classmethod
    def _non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: d for k, d in v.items() if d < 0}
        if bad:
            raise ValueError(f"max_drop values must be >= 0: {bad}")
        return v


# `register` is also ABCMeta.register (a class method); as an instance field it is harmless. Pydantic notes the
# shadowing once, when the class is created: silenced for that moment only (no process-wide warnings filter).
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "register" in "Params" shadows', category=UserWarning)

    class Params(BaseModel):
        """All of ``params.yaml``; an unknown top-level section is an error (not silently the defaults)."""

        model_config = ConfigDict(extra="forbid", frozen=True)  # a misspelt section (`localisation:`) is an error

        runtime: RuntimeConfig = RuntimeConfig()
        model: ModelConfig = ModelConfig()
        localization: LocalizationConfig = LocalizationConfig()
        evaluate: EvaluateConfig = EvaluateConfig()
        warmup: WarmupConfig = WarmupConfig()
        calibrate: CalibrateConfig = CalibrateConfig()
        train: TrainConfig = TrainConfig()
        curate: CurateConfig = CurateConfig()
        register: RegisterConfig = RegisterConfig()


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; a missing file gives the defaults.

    Raises:
        ValueError: the file is not valid YAML or a value is invalid; the message names the file and
            the offending keys.
    """
    path = Path(path)
    if not path.is_file():
        return Params()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return Params.model_validate(raw)
    except (yaml.YAMLError, ValidationError) as exc:
        raise ValueError(f"{path}: invalid parameters:\n{exc}") from exc
