"""CGRO training on the tiny Qwen2.5-VL (CPU): real GRPO steps with LoRA, the consistency reward fed by the
policy's own attention, kill-and-resume through the CLI, MLflow logging."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from readl.config import LocalizationConfig, Params, load_params
from readl.model.loading import load_model
from readl.training.checkpoints import last_complete_checkpoint
from readl.training.data import load_manifest
from readl.training.lora import DEFAULT_TARGET_REGEX, lora_config, lora_targets
from readl.training.tracking import MlflowMetricsCallback
from readl.training.train import build_trainer, grpo_args, run_params
from readl.training.trainer import CGROTrainer, capture_completion_attention, group_rank_weights
from readl.training.trl_adapter import PROMPT_IDS_KEY

REPO = Path(__file__).resolve().parents[3]
IMAGES = [  # (path relative to the repo root, label): 4 hazelnut_toy + 4 MVTec grid, mixed labels
    ("data/raw/hazelnut_toy/hazelnut/test/colour/00.jpg", 1),
    ("data/raw/hazelnut_toy/hazelnut/test/colour/01.jpg", 1),
    ("data/raw/hazelnut_toy/hazelnut/test/good/04.jpg", 0),
    ("data/raw/hazelnut_toy/hazelnut/test/good/05.jpg", 0),
    ("data/raw/mvtec_ad/grid/test/bent/000.png", 1),
    ("data/raw/mvtec_ad/grid/test/broken/000.png", 1),
    ("data/raw/mvtec_ad/grid/test/good/000.png", 0),
    ("data/raw/mvtec_ad/grid/test/good/001.png", 0),
]
# 112 px -> a 4x4 token map; 8 rollouts per step (2 images x G=4). The untrained tiny model never writes the
# format, so the consistency reward ignores it here (require_format: false) and uses a low support quantile so
# that the J values of the rollouts differ (non-zero advantages -> a real gradient in the first step).
TRAIN = {
    "max_steps": 1,
    "num_generations": 4,
    "per_device_train_batch_size": 8,
    "max_completion_length": 12,
    "learning_rate": 1e-3,
    "save_steps": 100,
    "lora": {"r": 8, "alpha": 16, "dropout": 0.05},
    "consistency": {"quantile": 0.5, "delta1": 0.15, "delta2": 0.15, "require_format": False},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, sample_dir) -> Path:
    path = tmp_path_factory.mktemp("curated") / "train.parquet"
    frame = pd.DataFrame(IMAGES, columns=["image_path", "label"]).assign(source="bundled", category="x")
    frame.to_parquet(path)
    return path


def _params(**train) -> Params:
    return Params.model_validate({"model": {"base": "tiny", "image_size": 112}, "train": {**TRAIN, **train}})


# --- data, LoRA targets, errors ---------------------------------------------------------------------------------
def test_manifest_contract_and_errors(tmp_path, manifest):
    frame = load_manifest(manifest, root=REPO)
    assert len(frame) == 8 and frame["label"].tolist() == [y for _, y in IMAGES]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in frame["image_path"])
    with pytest.raises(
        FileNotFoundError, match=r"nope\.parquet not found; run `readl curate` \(or `dvc repro curate`\)"
    ):
        load_manifest(tmp_path / "nope.parquet")
    pd.DataFrame({"image_path": [], "label": []}).to_parquet(tmp_path / "empty.parquet")
    with pytest.raises(ValueError, match=r"empty\.parquet is empty .*readl curate"):
        load_manifest(tmp_path / "empty.parquet")
    pd.DataFrame({"image_path": [IMAGES[0][0]], "label": [3]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="label must be 0 or 1"):
        load_manifest(tmp_path / "bad.parquet", root=REPO)


def test_lora_targets_language_and_merger_never_vision_blocks(tiny):
    model, _ = tiny
    names = lora_targets(model)
    assert len(names) == 2 * 7 + 2  # 2 decoder layers x q,k,v,o,gate,up,down + merger mlp.0, mlp.2
    assert {n.rsplit(".", 1)[-1] for n in names} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "0",
        "2",
    }
    assert not [n for n in names if "visual.blocks" in n]
    assert any(n.endswith("visual.merger.mlp.0") for n in names)
    with pytest.raises(ValueError, match="vision encoder"):
        lora_targets(model, r".*mlp\.(gate|up|down)_proj")  # the naive pattern also hits visual.blocks.N.mlp
    # the default LoRA config (what build_trainer uses when train.lora.target_modules is null) adapts exactly these
    from peft import get_peft_model

    adapted = get_peft_model(copy.deepcopy(model), lora_config(4, 8.0, 0.0))
    lora_modules = {n.removeprefix("base_model.model.") for n, m in adapted.named_modules() if hasattr(m, "lora_A")}
    assert lora_modules == set(names)


def test_trainer_requires_a_qwen_processor(tiny):
    model, processor = tiny
    with pytest.raises(ValueError, match="image-only .*Qwen2.5-VL.* processor"):
        CGROTrainer(
            model=model, reward_funcs=[], processing_class=processor.tokenizer, localization=LocalizationConfig()
        )


def test_group_weights_normalise_over_all_rollouts_of_an_image():
    loc = LocalizationConfig(tau_t={"rule": "fixed", "value": 0.5}, tau_i={"rule": "fixed", "value": 0.5})
    s_t = [np.array([0.0, 1.0]), np.array([2.0, 4.0])]  # min 0, max 4 over BOTH rollouts
    s_i = [np.array([1.0, 3.0]), np.array([0.0, 1.0])]  # inverted: (3 - s) / 3
    w, rank, fits = group_rank_weights(s_t, s_i, loc)
    assert fits["tau_t"].value == 0.5 and fits["tau_t"].fallback is None  # fixed: never falls back
    t_hat = np.array([0.0, 0.25, 0.5, 1.0])
    i_hat = np.array([2 / 3, 0.0, 1.0, 2 / 3])
    keep = (t_hat > 0.5) & (i_hat > 0.5)  # only token 1 of rollout 2
    np.testing.assert_allclose(np.concatenate(w), np.where(keep, t_hat + i_hat, 0.0))
    r = np.concatenate(rank)
    assert r[3] > 0 and (r[:3] < 0).all()  # kept first, then the others by alpha S_T^ + beta S_I^
    assert np.argsort(-r).tolist() == [3, 2, 0, 1]
    w, _, fits = group_rank_weights([np.zeros(0), np.zeros(0)], [np.zeros(0), np.zeros(0)], LocalizationConfig())
    assert [len(x) for x in w] == [0, 0]
    assert fits["tau_i"].n == 0 and fits["tau_i"].fallback == "no scores"  # the trainer counts groups with n > 0 only


# --- the GRPO objective (paper Eq. 9-10) -------------------------------------------------------------------------
OBJECTIVE = ("loss_type", "num_iterations", "scale_rewards", "importance_sampling_level")


def test_grpo_objective_is_named_and_defaults_to_the_papers_reading(tiny, tmp_path):
    model, _ = tiny
    args = grpo_args(_params(), tmp_path, model)
    # Eq. 9: 1/G sum_i 1/|o_i| sum_t (TRL "grpo"; TRL's own default is "dapo"), mu = 1; Eq. 10: group std
    assert tuple(getattr(args, k) for k in OBJECTIVE) == ("grpo", 1, "group", "token")
    other = {
        "loss_type": "dr_grpo",
        "num_iterations": 2,
        "scale_rewards": "none",
        "importance_sampling_level": "sequence",
    }
    args = grpo_args(_params(**other), tmp_path, model)
    assert tuple(getattr(args, k) for k in OBJECTIVE) == tuple(other.values())
    with pytest.raises(ValueError, match="loss_type"):
        _params(loss_type="ppo")
    train = yaml.safe_load((REPO / "params.yaml").read_text())["train"]
    assert set(OBJECTIVE) <= train.keys()  # named in params.yaml, not left to TRL's defaults


def test_reward_weights_reach_grpo_and_are_one_per_reward(tiny, tmp_path):
    """train.reward_weights: null = TRL's all-ones sum (Eq. 8); [1, 1, 0] = R1 with the consistency J still logged."""
    model, _ = tiny
    assert grpo_args(_params(), tmp_path, model).reward_weights is None  # TRL: all 1
    assert grpo_args(_params(reward_weights=[1, 1, 0]), tmp_path, model).reward_weights == [1.0, 1.0, 0.0]
    for bad in ([1, 1], [1, -1, 0]):
        with pytest.raises(ValueError, match="reward_weights"):
            _params(reward_weights=bad)


def test_second_iteration_has_an_importance_ratio_not_one_and_logs_clipping(tiny_dir, manifest, tmp_path, monkeypatch):
    """num_iterations = 2 (mu): the second optimizer step reuses the first step's rollouts under the moved policy,
    so pi_theta / pi_theta_old (Eq. 9) leaves 1; the clip fractions reach MLflow."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    params = _params(max_steps=2, num_iterations=2, lora={"r": 8, "alpha": 16, "dropout": 0.0})  # no dropout noise
    trainer = build_trainer(
        params,
        load_manifest(manifest, root=REPO),
        tmp_path / "ckpt",
        model_and_processor=load_model("tiny", device="cpu"),
    )
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("readl-test")).info.run_id
    trainer.add_callback(MlflowMetricsCallback(run_id))
    ratios, generations, grad_logps = [], [], {}
    orig_loss, orig_logps, orig_gen = (
        trainer._compute_loss,
        trainer._get_per_token_logps_and_entropies,
        trainer._generate_and_score_completions,
    )

    def logps(*a, **k):
        out = orig_logps(*a, **k)
        if torch.is_grad_enabled():  # the policy forward of the loss (old / ref log-probs run under no_grad)
            grad_logps["last"] = out[0].detach()
        return out

    def compute_loss(model, inputs):
        loss = orig_loss(model, inputs)
        mask = inputs["completion_mask"].bool()  # (B, T)
        ratios.append(torch.exp(grad_logps["last"] - inputs["old_per_token_logps"])[mask])
        return loss

    def generate(inputs):
        generations.append(len(inputs))
        return orig_gen(inputs)

    trainer._compute_loss, trainer._get_per_token_logps_and_entropies = compute_loss, logps
    trainer._generate_and_score_completions = generate
    trainer.train()
    assert trainer.state.global_step == 2 and len(generations) == 1 and len(ratios) == 2  # one batch, two steps
    torch.testing.assert_close(ratios[0], torch.ones_like(ratios[0]), atol=1e-4, rtol=0)  # pi_theta = pi_theta_old
    assert float((ratios[1] - 1).abs().max()) > 1e-3
    for key in ("clip_ratio/region_mean", "clip_ratio/low_mean", "clip_ratio/high_mean"):
        assert {m.step for m in client.get_metric_history(run_id, key)} == {1, 2}, key


# --- train-time vs evaluation-time token selection (paper Table 5 on one fixed model) ------------------------------
def test_train_reads_its_own_token_selection_not_the_evaluation_one(tiny_dir, manifest, tmp_path):
    loc = {"mode": "s_t", "tau_i": {"rule": "median"}}
    params = Params.model_validate(
        {
            "model": {"base": "tiny", "image_size": 112},
            "localization": {"mode": "all"},
            "train": {**TRAIN, "localization": loc},
        }
    )
    assert params.train.localization == LocalizationConfig(**loc) != params.localization
    trainer = build_trainer(
        params,
        load_manifest(manifest, root=REPO),
        tmp_path / "ckpt",
        model_and_processor=load_model("tiny", device="cpu"),
    )
    assert trainer.localization == params.train.localization
    # the checkpoint fingerprint / MLflow params: an evaluation-side change does not touch the training run
    other = params.model_copy(update={"localization": LocalizationConfig(tau_i={"rule": "median"})})
    assert run_params(other) == run_params(params) and "localization" not in run_params(params)
    # by default the reward selects tokens as evaluation does (one ReAL, paper Sec. 4.1-4.2)
    repo = load_params(REPO / "params.yaml")
    assert repo.train.localization == repo.localization


# --- a real GRPO step ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stepped(tiny_dir, manifest, tmp_path_factory):
    """One real CGRO step on a fresh tiny model + LoRA; records what the reward saw."""
    params = _params()
    trainer = build_trainer(
        params,
        load_manifest(manifest, root=REPO),
        tmp_path_factory.mktemp("ckpt"),
        model_and_processor=load_model("tiny", device="cpu"),
    )
    seen = {}
    orig_rewards, orig_capture = trainer._calculate_rewards, trainer._policy_attention

    def calculate_rewards(inputs, prompts, completions, completion_ids_list):
        seen.update(inputs=inputs, prompts=prompts, completions=completions, ids=completion_ids_list)
        seen["rewards"] = orig_rewards(inputs, prompts, completions, completion_ids_list)
        return seen["rewards"]

    def policy_attention(inputs, completion_ids_list):
        seen["captured"] = orig_capture(inputs, completion_ids_list)
        seen["prompt_ids"] = [x[PROMPT_IDS_KEY] for x in inputs]  # per row, from TRL's _generate (trl_adapter)
        seen["reference"] = _predictor_capture(trainer, inputs, completion_ids_list)
        return seen["captured"]

    trainer._calculate_rewards, trainer._policy_attention = calculate_rewards, policy_attention
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    seen["consistency"] = trainer.last_consistency
    return trainer, before, seen


def test_run_summary_counts_steps_with_reward_variance_and_reads_lora_b(stepped, tmp_path):
    """train_run.json's summary (readl.training.summary): TRL's per-step reward std / zero-std fraction are in the
    logs, the step counts as learning (the consistency rewards of a group differ), and max |lora_B| of the saved
    adapter is > 0 after the step (PEFT initialises B to 0)."""
    from readl.training.summary import log_summary, max_abs_lora_b, train_summary

    trainer, _, _ = stepped
    logged = [r for r in trainer.state.log_history if "reward" in r]
    assert logged and {"reward_std", "frac_reward_zero_std", "consistency/J_mean"} <= set(logged[0])
    trainer.model.save_pretrained(tmp_path / "adapter")
    summary = train_summary(trainer.state.log_history, tmp_path / "adapter")
    assert summary["n_logged_steps"] == 1
    assert summary["frac_steps_nonzero_reward_std"] == (1.0 if logged[0]["frac_reward_zero_std"] < 1 else 0.0) == 1.0
    assert summary["J_mean"] == pytest.approx(logged[0]["consistency/J_mean"])
    assert set(summary["rewards"]) == {"format", "accuracy", "consistency"}
    assert summary["max_abs_lora_B"] > 0
    # a fresh (untrained) adapter: B is all zero; records without rewards are not steps
    fresh = log_summary(
        [
            {"reward": 0.0, "reward_std": 0.0, "frac_reward_zero_std": 1.0},
            {"train_loss": 0.1},
            {"reward": 1.0, "reward_std": 0.5, "frac_reward_zero_std": 0.5},
        ]
    )
    assert fresh["n_logged_steps"] == 2 and fresh["frac_steps_nonzero_reward_std"] == 0.5 and fresh["J_mean"] is None
    from peft import get_peft_model

    from readl.training.lora import lora_config

    model, _ = load_model("tiny", device="cpu")
    get_peft_model(model, lora_config(4, 8, 0.0, DEFAULT_TARGET_REGEX)).save_pretrained(tmp_path / "fresh")
    assert max_abs_lora_b(tmp_path / "fresh") == 0.0
    with pytest.raises(FileNotFoundError, match="readl train"):
        max_abs_lora_b(tmp_path)


def test_j_and_r_cons_are_logged_per_image_label(stepped):
    """The learning check reads J and R_cons of anomalous and normal rollouts apart (CGRO should raise J on the
    one and lower it on the other): the logged values are the means over exactly the rows of that label."""
    trainer, _, seen = stepped
    hist = trainer.state.log_history[0]
    labels = np.array([int(x["label"]) for x in seen["inputs"]])
    js = np.array(seen["consistency"]["j"], dtype=np.float64)
    r_cons = seen["rewards"][:, trainer.reward_func_names.index("consistency")].numpy()
    for label, name in ((1, "anomalous"), (0, "normal")):
        rows = labels == label
        if not rows.any():  # the one-step batch may hold one label: then that label logs nothing
            assert f"consistency/R_cons_{name}" not in hist and f"consistency/J_{name}" not in hist
            continue
        assert hist[f"consistency/R_cons_{name}"] == pytest.approx(float(r_cons[rows].mean()))
        if np.isfinite(js[rows]).any():
            assert hist[f"consistency/J_{name}"] == pytest.approx(float(np.nanmean(js[rows])))
    assert 0.0 <= hist["consistency/tau_i_fallback_frac"] <= 1.0  # the per-image rule: share of groups that fell back


def _predictor_capture(trainer, inputs, completion_ids_list):
    """The inference path's teacher-forced capture (readl.model.inference.Predictor) on the same policy."""
    from readl.model.inference import Predictor

    model = trainer.model
    was = model.training
    model.eval()
    try:
        pred = Predictor(model, trainer.processing_class, image_size=112)
        enc = pred.encode([x["image"] for x in inputs])
        eos = set(trainer.eos_token_ids) | {trainer._tokenizer.pad_token_id}
        comps = [[t for t in ids if t not in eos] for ids in completion_ids_list]
        caps = pred.capture(enc, comps)
        prompt_rows = [row[m.bool()].tolist() for row, m in zip(enc["input_ids"], enc["attention_mask"])]
        return caps, prompt_rows
    finally:
        model.train(was)


def test_grpo_step_changes_lora_weights_and_leaves_the_base_untouched(stepped):
    trainer, before, _ = stepped
    hist = trainer.state.log_history[0]
    assert trainer.state.global_step == 1 and hist["grad_norm"] > 0
    for key in ("rewards/format/mean", "rewards/accuracy/mean", "rewards/consistency/mean", "consistency/J_mean"):
        assert key in hist
    changed_lora, changed_base = [], []
    for name, p in trainer.model.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        if "lora_" in name:
            assert p.requires_grad
            changed_lora.append(name) if moved else None
        else:
            assert not p.requires_grad, name
            changed_base.append(name) if moved else None
    assert changed_base == []
    assert any("lora_B" in n for n in changed_lora) and any("merger" in n for n in changed_lora)
    assert not [n for n in changed_lora if "visual.blocks" in n]


def test_consistency_reward_reads_the_policys_own_attention(stepped):
    trainer, _, seen = stepped
    (reference, predictor_prompts) = seen["reference"]
    # the capture ran on exactly the prompts the rollouts were sampled from ...
    assert seen["prompt_ids"] == predictor_prompts
    # ... and equals the inference path's capture of the same policy, token by token
    for (img, anom), ref, ids in zip(seen["captured"], reference, seen["ids"]):
        t = ref.image_attn.shape[0]
        np.testing.assert_allclose(img[:t], ref.image_attn, atol=1e-5)
        np.testing.assert_allclose(anom[:t], ref.anomaly_attn, atol=1e-5)
        assert img.shape[1:] == (4, 4) and t <= len(ids)
    # the reward inputs are those maps (reasoning tokens only) and J was computed from them
    cons = seen["consistency"]
    assert len(cons["maps"]) == len(seen["ids"]) == 8
    assert all(m.shape[1:] == (4, 4) and len(w) == len(m) for m, w in zip(cons["maps"], cons["weights"]))
    assert len(cons["j"]) == 8 and np.isfinite(cons["j"]).any()


def test_consistency_inputs_change_when_the_policys_attention_changes(stepped, monkeypatch):
    trainer, _, seen = stepped
    inputs, ids = seen["inputs"], seen["ids"]
    base = trainer._attach_maps(inputs, ids)
    # dropout is off during the capture: two passes with the model in train mode agree exactly
    trainer.model.train()
    again = trainer._attach_maps(inputs, ids)
    assert all(np.array_equal(a["readl_maps"], b["readl_maps"]) for a, b in zip(base, again))
    # perturb the policy's attention (LoRA on q/k of every layer): the maps the reward reads move
    with torch.no_grad():
        saved = {n: p.clone() for n, p in trainer.model.named_parameters() if "lora_B" in n and "_proj" in n}
        gen = torch.Generator().manual_seed(0)
        for n, p in trainer.model.named_parameters():
            if n in saved and ("q_proj" in n or "k_proj" in n):
                p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    try:
        moved = trainer._attach_maps(inputs, ids)
    finally:
        with torch.no_grad():
            for n, p in trainer.model.named_parameters():
                if n in saved:
                    p.copy_(saved[n])
    diff = max(
        float(np.abs(a["readl_maps"] - b["readl_maps"]).max()) for a, b in zip(base, moved) if a["readl_maps"].size
    )
    assert diff > 1e-3


def test_consistency_reward_follows_the_captured_maps(stepped, monkeypatch):
    """Replace the captured attention by maps where every token looks at one cell: J = 1 -> R_cons = y."""
    import readl.training.trainer as trainer_module

    trainer, _, seen = stepped

    def focused(model, image_processor, tokenizer, images, prompt_ids, completion_ids, **kw):
        out = []
        for c in completion_ids:
            m = np.full((len(c), 4, 4), 0.01, dtype=np.float32)
            m[:, 2, 1] = 1.0
            out.append((m, np.ones((len(c), 2), dtype=np.float32)))
        return out

    monkeypatch.setattr(trainer_module, "capture_completion_attention", focused)
    rewards = trainer._calculate_rewards(seen["inputs"], seen["prompts"], seen["completions"], seen["ids"])
    col = trainer.reward_func_names.index("consistency")
    labels = [x["label"] for x in seen["inputs"]]
    assert rewards[:, col].tolist() == [float(y) for y in labels]  # J = 1 > delta1 for y=1, not < delta2 for y=0
    assert trainer.last_consistency["j"] == [1.0] * 8


def test_capture_is_deterministic_under_dropout_only_in_eval_mode(stepped):
    trainer, _, seen = stepped
    model = trainer.model
    args = (
        model,
        trainer.processing_class.image_processor,
        trainer._tokenizer,
        [x["image"] for x in seen["inputs"]][:2],
        seen["prompt_ids"][:2],
        [list(c) for c in seen["ids"][:2]],
    )
    for module in model.modules():  # make LoRA dropout strong enough to see
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    try:
        model.train()
        noisy = [capture_completion_attention(*args, image_token_id=model.config.image_token_id) for _ in range(2)]
        assert not np.array_equal(noisy[0][0][0], noisy[1][0][0])  # train mode: dropout changes the maps
        seen_twice = [trainer._policy_attention(seen["inputs"][:2], seen["ids"][:2]) for _ in range(2)]
        assert np.array_equal(seen_twice[0][0][0], seen_twice[1][0][0])  # the trainer's pass: eval semantics
        assert model.training  # and it restores train mode
    finally:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.05


# --- CLI: kill and resume, MLflow --------------------------------------------------------------------------------
SLOW_SITE = """
import os, time
delay = float(os.environ.get("READL_TEST_STEP_DELAY", "0"))
if delay:
    from transformers import Trainer
    _orig = Trainer.training_step
    def training_step(self, *a, **k):
        time.sleep(delay)
        return _orig(self, *a, **k)
    Trainer.training_step = training_step
"""


def _launch(workdir: Path, params: Path, manifest: Path, delay: float = 0.0) -> subprocess.Popen:
    site = workdir.parent / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(textwrap.dedent(SLOW_SITE))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(site), str(REPO / "src")]),
        "READL_TEST_STEP_DELAY": str(delay),
        "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlruns.db'}",
        "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.5",
        "MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "readl.cli",
        "train",
        "--params",
        str(params),
        "--manifest",
        str(manifest),
        "--output",
        str(workdir / "models"),
    ]
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir / "train.log", "w")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait(proc: subprocess.Popen, workdir: Path, timeout: float = 120) -> None:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert rc == 0, (workdir / "train.log").read_text()[-3000:]


def _adapter(workdir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(workdir / "models" / "adapter" / "adapter_model.safetensors")


@pytest.mark.slow
def test_kill_and_resume_matches_an_uninterrupted_run(tiny_dir, manifest, tmp_path):
    params = tmp_path / "params.yaml"
    train = {**TRAIN, "max_steps": 6, "save_steps": 2, "save_total_limit": None, "experiment": "readl-test"}
    params.write_text(yaml.safe_dump({"model": {"base": "tiny", "image_size": 112}, "train": train}))
    straight = _launch(tmp_path / "straight", params, manifest)
    killed = _launch(tmp_path / "killed", params, manifest, delay=0.6)
    ckpt_dir = tmp_path / "killed" / "models" / "checkpoints"
    deadline = time.monotonic() + 120
    while last_complete_checkpoint(ckpt_dir) is None:  # the first COMPLETE checkpoint (trainer_state.json parses)
        assert killed.poll() is None, (tmp_path / "killed" / "train.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "models" / "adapter").exists()  # it died mid-way
    first = last_complete_checkpoint(ckpt_dir)
    run_id = json.loads((ckpt_dir / "run.json").read_text())["mlflow_run_id"]
    # a checkpoint cut off mid-write (no parsable trainer_state.json) must be skipped on restart
    torn = ckpt_dir / "checkpoint-5"
    torn.mkdir()
    (torn / "trainer_state.json").write_text('{"global_step": 5, "log_hi')

    resumed = _launch(tmp_path / "killed", params, manifest)
    _wait(straight, tmp_path / "straight")
    _wait(resumed, tmp_path / "killed")

    a, b = _adapter(tmp_path / "straight"), _adapter(tmp_path / "killed")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5)
    record = json.loads((tmp_path / "killed" / "models" / "train_run.json").read_text())
    assert record["run_id"] == run_id and record["global_step"] == 6  # the same MLflow run, continued
    summary = record["summary"]  # over all 6 steps (the log history is restored from the checkpoint)
    assert summary["n_logged_steps"] == 6 and 0.0 <= summary["frac_steps_nonzero_reward_std"] <= 1.0
    assert summary["max_abs_lora_B"] > 0
    assert record["resumed_from"].endswith(first.name) and first.name in ("checkpoint-2", "checkpoint-4")
    assert not ckpt_dir.exists()  # checkpoints are removed after success (train.keep_checkpoints: false)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'killed' / 'mlruns.db'}")
    run = client.get_run(run_id)
    assert run.data.params["train.rewards"] == "['format', 'accuracy', 'consistency']"
    for key in (
        "rewards/format/mean",
        "rewards/accuracy/mean",
        "rewards/consistency/mean",
        "reward",
        "consistency/valid_frac",
        "kl",
        "learning_rate",
        "completions/mean_length",
        "reward_std",
        "frac_reward_zero_std",
    ):
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == list(range(1, 7)), (key, steps)  # each step once: re-run steps are not logged twice
    # J exists only at steps where some rollout had >= k reasoning tokens (valid_frac > 0): which steps those are
    # depends on the sampled completions, i.e. on the machine's floating-point path, never on the kill
    valid = sorted(m.step for m in client.get_metric_history(run_id, "consistency/valid_frac") if m.value > 0)
    for key in ("consistency/J_mean", "consistency/J_min", "consistency/J_max"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == valid, key
    assert any(k.startswith("system/") for k in run.data.metrics), sorted(run.data.metrics)


def test_a_changed_warm_start_is_never_resumed_onto(tmp_path, monkeypatch, manifest):
    """A checkpoint of a run that began from other starting weights (a warm-up re-made after a code or params change)
    must not be resumed: the resume key holds the warm-started model's bytes, not only params and data."""
    from readl.paths import resolve_model
    from readl.stages.train import resume_key

    monkeypatch.chdir(tmp_path)
    params = Params()
    warm = tmp_path / "models" / "warmup"
    warm.mkdir(parents=True)
    (warm / "config.json").write_text("{}")
    (warm / "model.safetensors").write_bytes(b"weights v1")
    key = lambda: resume_key(params, manifest, resolve_model(params).base)  # noqa: E731
    first = key()
    assert key() == first  # a crashed run resumes
    (warm / "model.safetensors").write_bytes(b"weights v2")  # `dvc repro` re-made the warm start
    assert key() != first
