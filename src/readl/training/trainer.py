"""CGRO: TRL's GRPOTrainer plus one attention-capture pass that feeds the consistency reward (paper Sec. 4.2).

After TRL samples the G rollouts of each image, :class:`CGROTrainer` runs ONE no-grad,
teacher-forced forward of the CURRENT policy over prompt + completion with the ReAL capture on
(:mod:`readl.localization.attention`; no eager ``output_attentions``), in eval mode (dropout, LoRA dropout
included, off during it), then per rollout:

1. reasoning tokens = completion tokens inside ``<think>`` (:func:`readl.model.inference.reasoning_token_mask`);
   their image maps A_{r,I} ``(R, h, w)`` (Eq. 1) and anomaly-word attention ``(R, E)``;
2. S_T (Eq. 2) and S_I (Eq. 3, binarised as ``train.localization.binarize``);
3. per IMAGE (the G rollouts of one prompt, gathered across processes): min-max normalisation of S_T and
   S_I over all reasoning tokens of all its rollouts (S_I inverted) -- the project page's figure 2 shows
   the rollouts of one image normalised together; thresholds tau_t / tau_i by the configured rules
   (``train.localization.tau_t/tau_i``: max_curvature / median over that image's normalised scores, or fixed);
4. weights w = 1[kept] (alpha S_T^ + beta S_I^) (Eq. 4, ``train.localization.mode``); the consistency reward
   ranks tokens by w. Tokens not kept rank below every kept token, in the order of their unfiltered
   alpha S_T^ + beta S_I^, so the top-k always exists when R >= k (figure 2: the top-3 are drawn even when
   their scores are low);
5. the rows get ``readl_maps`` / ``readl_weights`` columns, which TRL passes to the reward functions.

The R1 baseline (no ``consistency`` reward) skips the capture pass entirely. The hooks into TRL (the rollouts'
prompt ids, the pass before the rewards) come from :class:`readl.training.trl_adapter.GRPOAdapter`, the only
module that overrides TRL's private methods; the batch of the pass is built by
:func:`readl.model.teacher_forcing.teacher_forced_batch`, the same builder as inference's.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from accelerate.utils import gather_object

from readl.localization.anomaly_map import token_weights
from readl.localization.attention import capture_attention, enable_capture
from readl.localization.scores import normalize_scores, semantic_relevance, spatial_entropy
from readl.localization.thresholds import Threshold, resolve_threshold
from readl.model.families import family_of, family_of_processor
from readl.model.prompting import QUESTION
from readl.model.teacher_forcing import left_pad, split_token_maps, teacher_forced_batch
from readl.model.tokens import anomaly_token_positions, image_token_positions, query_row_offset, reasoning_token_mask
from readl.training.rewards import MAPS_KEY, WEIGHTS_KEY, ConsistencyReward, consistency_j
from readl.training.trl_adapter import PROMPT_IDS_KEY, EpochSeededRepeatSampler, GRPOAdapter

__all__ = ["CGROTrainer", "EpochSeededRepeatSampler", "capture_completion_attention", "group_rank_weights"]

log = logging.getLogger(__name__)


@torch.no_grad()
def capture_completion_attention(
    model: torch.nn.Module,
    image_processor,
    tokenizer,
    images: list,
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    image_token_id: int,
    question: str = QUESTION,
    layers: list[int] | None = None,
    batch_size: int | None = None,
    query_row: str = "producing",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Teacher-forced attention of each completion token to the image and anomaly-word tokens (Eq. 1-2).

    Unlike :meth:`readl.model.inference.Predictor.capture`, this uses the exact prompt ids the rollouts were
    sampled from, appends nothing (no answer prefix: training needs no P(Yes)) and computes logits for one
    position only (a 7B vocabulary over every completion position would cost GBs), in chunks.
    The model is called as-is: the caller sets eval mode and ``enable_capture``.

    Args:
        model: the policy (``PeftModel`` or plain Qwen2.5-VL) with the ``readl_capture`` attention.
        image_processor: the processor's image processor (sizes as used for generation).
        tokenizer: its tokenizer (pad id).
        images: one PIL image per row.
        prompt_ids: per row, the unpadded prompt token ids used for generation (``P_b`` each).
        completion_ids: per row, the completion token ids (``T_b`` each; a trailing EOS is fine).
        image_token_id: ``<|image_pad|>`` id.
        question: the question whose anomaly-word tokens define S_T.
        layers: decoder layers averaged (``None`` = all, Eq. 1).
        batch_size: rows per forward (``None`` = all at once).
        query_row: ``"producing"`` (the map of token j is the attention row that produced it, query at
            position j - 1) or ``"own"`` (token j's own row, query at j); ``localization.query_row``, the
            same convention as :class:`readl.model.inference.Predictor`.

    Returns:
        Per row ``(image_attn, anomaly_attn)``: ``(T_b, h, w)`` and ``(T_b, E)`` float32, rows = completion
        tokens in order.

    Raises:
        ValueError: unknown ``query_row``.
    """
    offset = query_row_offset(query_row)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    family = family_of(model)  # the backbone seam (readl.model.families): vision inputs, token grids
    n = len(images)
    batch_size = batch_size or n
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for lo in range(0, n, batch_size):
        hi = min(n, lo + batch_size)
        vis = image_processor(images=images[lo:hi], return_tensors="pt")
        p_ids, p_mask = left_pad(prompt_ids[lo:hi], pad)  # (b, P) each, as in TRL's forward passes
        p_len = p_ids.shape[1]
        completions = completion_ids[lo:hi]
        batch = teacher_forced_batch(p_ids.to(device), p_mask.to(device), completions, pad)  # (b, P + T)
        img_pos = image_token_positions(p_ids, image_token_id)  # (b, n_img)
        anom_pos = anomaly_token_positions(p_ids, tokenizer, question)  # (b, E)
        key_index = torch.cat([img_pos, anom_pos], dim=1).to(device)  # (b, n_img + E)
        vision = {k: v.to(device) for k, v in vis.items()}  # the vision tower casts pixel_values to its dtype
        with capture_attention(key_index, query_start=p_len - 1, layers=layers) as cap:
            model(
                **batch,
                **family.vision_inputs(vision, batch["input_ids"], image_token_id),  # the backbone seam
                use_cache=False,
                logits_to_keep=1,
            )
        attn = cap.result().float().cpu()  # (b, T + 1, n_img + E): row j = query at position P - 1 + j
        grids = family.token_grids(vis, image_processor)  # (h, w) per row
        out.extend(split_token_maps(attn, grids, img_pos.shape[1], [len(c) for c in completions], offset))
    return out


def group_rank_weights(
    s_t: list[np.ndarray], s_i: list[np.ndarray], localization
) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, Threshold]]:
    """Eq. 4 weights of the rollouts of ONE image, normalised together, and the consistency ranking key.

    Args:
        s_t, s_i: per rollout, ``(R_g,)`` raw S_T / S_I of its reasoning tokens (R_g may be 0).
        localization: ``LocalizationConfig`` (alpha, beta, mode, tau_t, tau_i, ties).

    Returns:
        ``(w, rank, fits)``: per rollout ``(R_g,)`` float64. ``w`` = Eq. 4 (0 for tokens not kept, >= 0);
        ``rank`` = ``w`` for kept tokens and ``alpha S_T^ + beta S_I^ - (|alpha| + |beta|) - 1`` (< 0, below
        any kept token) for the others; ``fits``: ``{"tau_t", "tau_i"}`` -> the image's
        :class:`~readl.localization.thresholds.Threshold` (its ``fallback`` says whether the rule fell back).
    """
    sizes = [len(x) for x in s_t]
    flat_t = np.concatenate(s_t) if s_t else np.zeros(0)  # (sum R_g,)
    flat_i = np.concatenate(s_i) if s_i else np.zeros(0)
    t_hat, i_hat = normalize_scores(flat_t, flat_i)  # min-max over ALL rollouts of the image
    loc = localization
    fits = {
        "tau_t": resolve_threshold(loc.tau_t, t_hat, loc.ties),  # over all rollouts of the image
        "tau_i": resolve_threshold(loc.tau_i, i_hat, loc.ties),
    }
    w, keep = token_weights(
        t_hat, i_hat, fits["tau_t"].value, fits["tau_i"].value, loc.alpha, loc.beta, loc.mode
    )  # (sum R_g,) each
    composite = loc.alpha * t_hat + loc.beta * i_hat
    rank = np.where(keep, w, composite - (abs(loc.alpha) + abs(loc.beta)) - 1.0)
    cuts = np.cumsum(sizes)[:-1]
    return np.split(w, cuts), np.split(rank, cuts), fits


class CGROTrainer(GRPOAdapter):
    """``GRPOTrainer`` whose consistency reward sees the current policy's own ReAL attention.

    Args (besides ``GRPOTrainer``'s; pass ``processing_class=`` the ReadlQwenProcessor explicitly, else TRL
    trains text-only):
        localization: ``LocalizationConfig`` (layers, binarize, alpha, beta, mode, tau_t, tau_i, ties, query_row):
            the train-time token selection, ``params.train.localization`` (not the evaluation-side ``localization:``).
        question: the prompt's question (anomaly words for S_T).

    Attributes:
        last_consistency: after each scored batch, a dict with this process's rows: ``maps`` (list of
            ``(R, h, w)``), ``weights`` (ranking key, list of ``(R,)``), ``w`` (Eq. 4), ``s_t``, ``s_i``,
            ``j`` (J per row, NaN where R < k: :func:`readl.training.rewards.consistency_j`).

    Raises:
        ValueError: ``processing_class`` is not a readl image-only processor (:mod:`readl.model.families`), or
            the ``consistency`` reward function is not a :class:`~readl.training.rewards.ConsistencyReward`.
    """

    def __init__(self, *args, localization, question: str = QUESTION, **kwargs):
        try:
            family_of_processor(kwargs.get("processing_class"))
        except ValueError as exc:
            raise ValueError(f"CGROTrainer needs processing_class= {exc}; without it TRL trains text-only") from None
        super().__init__(*args, **kwargs)
        self.localization = localization
        self.question = question
        self._needs_maps = "consistency" in self.reward_func_names
        if self._needs_maps:
            fn = self.reward_funcs[self.reward_func_names.index("consistency")]
            if not isinstance(fn, ConsistencyReward):
                raise ValueError(f"the consistency reward must be a ConsistencyReward (make_reward_funcs), got {fn!r}")
            self.consistency = fn.settings
        self.last_consistency: dict | None = None
        enable_capture(self.model, localization.layers)

    def reward_inputs(self, inputs, completion_ids_list):
        """The rows with the ``readl_maps`` / ``readl_weights`` columns of the capture pass (module docstring)."""
        return self._attach_maps(inputs, completion_ids_list) if self._needs_maps else inputs

    def rewards_done(self, inputs, rewards):
        if self._needs_maps:
            self._log_consistency(inputs, rewards[:, self.reward_func_names.index("consistency")])

    def _policy_attention(self, inputs, completion_ids_list) -> list[tuple[np.ndarray, np.ndarray]]:
        """Capture pass of the current policy, eval mode (dropout off), no grad."""
        model = self.model
        was_training = model.training
        model.eval()
        try:
            with self.accelerator.autocast():
                return capture_completion_attention(
                    model,
                    self.processing_class.image_processor,
                    self.trl_tokenizer,
                    [x["image"] for x in inputs],
                    [x[PROMPT_IDS_KEY] for x in inputs],  # the exact prompt ids each rollout was sampled from
                    [list(c) for c in completion_ids_list],
                    image_token_id=model.config.image_token_id,
                    question=self.question,
                    layers=self.localization.layers,
                    batch_size=self.args.per_device_train_batch_size,
                    query_row=self.localization.query_row,
                )
        finally:
            model.train(was_training)

    def _attach_maps(self, inputs, completion_ids_list):
        t0 = time.perf_counter()
        captured = self._policy_attention(inputs, completion_ids_list)
        maps, anomaly = [], []
        for ids, (img, anom) in zip(completion_ids_list, captured):
            keep, _ = reasoning_token_mask(self.trl_tokenizer, list(ids))  # (T,) bool
            maps.append(img[keep])  # (R, h, w)
            anomaly.append(anom[keep])  # (R, E)
        s_t = [semantic_relevance(a) for a in anomaly]  # (R,) each
        s_i = [spatial_entropy(m, binarize=self.localization.binarize) for m in maps]  # (R,) each

        # Normalise per image over its G rollouts; a group may span processes, so gather the scores first.
        all_t, all_i = gather_object(s_t), gather_object(s_i)
        g = self.group_size()
        offset = self.accelerator.process_index * len(inputs)
        w_local, rank_local = [None] * len(inputs), [None] * len(inputs)
        fell_back = {"tau_t": [], "tau_i": []}  # per image group with tokens: did its rule fall back?
        for start in range(0, len(all_t), g):
            members = range(start, min(start + g, len(all_t)))
            if not any(offset <= m < offset + len(inputs) for m in members):
                continue
            w, rank, fits = group_rank_weights(
                [all_t[m] for m in members], [all_i[m] for m in members], self.localization
            )
            for key, fit in fits.items():
                if fit.n > 0:
                    fell_back[key].append(fit.fallback is not None)
            for m, wm, rm in zip(members, w, rank):
                if offset <= m < offset + len(inputs):
                    w_local[m - offset], rank_local[m - offset] = wm, rm
        self.last_consistency = {"maps": maps, "weights": rank_local, "w": w_local, "s_t": s_t, "s_i": s_i}
        self.record_metric("consistency/capture_s", time.perf_counter() - t0)
        self.record_metric("consistency/reasoning_tokens", float(np.mean([len(m) for m in maps])))
        for (
            key,
            flags,
        ) in fell_back.items():  # share of image groups whose per-image rule fell back (max curv. -> median)
            if flags:
                self.record_metric(f"consistency/{key}_fallback_frac", float(np.mean(flags)))
        return [{**x, MAPS_KEY: m, WEIGHTS_KEY: r} for x, m, r in zip(inputs, maps, rank_local)]

    def _log_consistency(self, inputs, r_cons):
        """J of this process's rows (the values the consistency reward thresholded), gathered and logged; J and
        R_cons (``r_cons``: the gathered ``(B_global,)`` consistency rewards) also per image label."""
        js = consistency_j([x[MAPS_KEY] for x in inputs], [x[WEIGHTS_KEY] for x in inputs], self.consistency)
        if self.last_consistency is not None:
            self.last_consistency["j"] = js
        all_j = np.asarray(gather_object(js), dtype=np.float64)  # (B_global,), NaN where R < k
        labels = np.asarray(gather_object([int(x["label"]) for x in inputs]), dtype=np.int64)  # (B_global,)
        ok = all_j[np.isfinite(all_j)]
        self.record_metric("consistency/valid_frac", float(ok.size / max(1, all_j.size)))
        if ok.size:
            self.record_metric("consistency/J_mean", float(ok.mean()))
            self.record_metric("consistency/J_min", float(ok.min()))
            self.record_metric("consistency/J_max", float(ok.max()))
        r_cons = r_cons.detach().float().cpu().numpy()  # (B_global,)
        for label, name in ((1, "anomalous"), (0, "normal")):  # CGRO raises J on the one, lowers it on the other
            sel = all_j[(labels == label) & np.isfinite(all_j)]
            if sel.size:
                self.record_metric(f"consistency/J_{name}", float(sel.mean()))
            if (labels == label).any():
                self.record_metric(f"consistency/R_cons_{name}", float(np.nanmean(r_cons[labels == label])))
