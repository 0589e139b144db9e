"""Attention capture: the attention of generated tokens to image and anomaly-word tokens (paper Eq. 1-2).

``output_attentions=True`` needs eager attention, which materialises every layer's full N x N matrix
(and SDPA silently returns nothing for it). Instead readl registers one transformers attention
function, ``"readl_capture"``: it always returns the normal SDPA output, and while a
:func:`capture_attention` context is active it also computes, for the kept query rows only, the
softmax normaliser over all keys and the probabilities of the selected key columns (image tokens,
anomaly-word tokens), averaged over heads. The per-layer rows are summed on the fly, so memory is
O(rows x selected columns), never O(N^2) per layer.

Row convention (``localization.query_row``; the paper does not say). By default (``producing``) the
attention map of completion token ``c_j`` is the attention row of the query that *produced* it: position
``P + j - 1`` for a prompt of padded length ``P``. This is the row seen at the decoding step that emits
``c_j``, so the teacher-forced pass (:func:`capture_attention` around one forward over prompt +
completion, ``query_start = P - 1``) and the capture during generation give the same maps. With
``own`` it is ``c_j``'s own row (position ``P + j``): the same capture, rows shifted by one
(:func:`readl.model.inference.query_row_offset`).

Usage::

    enable_capture(model)  # registers "readl_capture" (importing readl registers nothing) and switches to it
    with capture_attention(key_index=cols, query_start=P - 1) as cap:
        model(**inputs)
    maps = cap.result()  # (B, Q, K) mean over heads and layers
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

__all__ = ["CAPTURE_IMPLEMENTATION", "AttentionCapture", "capture_attention", "enable_capture", "register_capture"]

CAPTURE_IMPLEMENTATION = "readl_capture"
_ROW_CHUNK = 64  # query rows per softmax chunk: bounds the transient (B, H, rows, N) logits


@dataclass
class AttentionCapture:
    """What one capture keeps, and its running sum over layers.

    Attributes:
        key_index: ``(B, K)`` int64, the key positions (columns) to keep per batch row, e.g. the 225
            image-token positions followed by the anomaly-word positions. Positions index the full
            (padded) sequence.
        query_start: first absolute query position kept; every later position is kept, in order.
        layers: decoder layer indices to average over; ``None`` = all layers.
        chunks: the running sum over layers of the ``(B, rows, K)`` fp32 head-means, one tensor per forward
            call (decoding appends one per step), in row order: memory is one layer's worth, not L of them.
        rows_seen: per captured layer, how many rows it has added so far.
        layer_calls: per chunk, how many layers have been added into it.
    """

    key_index: torch.Tensor
    query_start: int
    layers: frozenset[int] | None = None
    chunks: list[torch.Tensor] = field(default_factory=list)
    rows_seen: dict[int, int] = field(default_factory=dict)
    layer_calls: list[int] = field(default_factory=list)
    _chunk_at: dict[int, int] = field(default_factory=dict)  # first row of a chunk -> its index in chunks

    def wants(self, layer_idx: int) -> bool:
        return self.layers is None or layer_idx in self.layers

    def add(self, layer_idx: int, probs: torch.Tensor) -> None:
        """Add one layer's ``(B, rows, K)`` head-mean rows (the next rows of that layer) into the sum.

        Raises:
            RuntimeError: the rows do not line up with the other layers' (a layer called with another
                query length, e.g. a skipped or repeated layer).
        """
        start = self.rows_seen.get(layer_idx, 0)
        self.rows_seen[layer_idx] = start + probs.shape[1]
        at = self._chunk_at.get(start)
        if at is None:
            if start != sum(c.shape[1] for c in self.chunks):
                raise RuntimeError(f"layer {layer_idx}: rows from {start} do not follow the captured ones")
            self._chunk_at[start] = len(self.chunks)
            self.chunks.append(probs.clone())
            self.layer_calls.append(1)
            return
        if self.chunks[at].shape != probs.shape:
            raise RuntimeError(
                f"layer {layer_idx}: rows {tuple(probs.shape)} != {tuple(self.chunks[at].shape)} "
                "of the other layers at this step"
            )
        self.chunks[at] += probs
        self.layer_calls[at] += 1

    def result(self) -> torch.Tensor:
        """Mean over the captured layers: ``(B, Q, K)`` float32, rows in position order.

        Raises:
            RuntimeError: nothing was captured (no forward ran inside the context, or the model does
                not use the ``readl_capture`` attention: call :func:`enable_capture` first), or the layers
                captured different row counts.
        """
        if not self.chunks:
            raise RuntimeError(
                "no attention was captured: run the model inside capture_attention() after enable_capture(model)"
            )
        rows = set(self.rows_seen.values())
        if len(rows) != 1 or len(set(self.layer_calls)) != 1:
            raise RuntimeError(f"layers captured different row counts {sorted(rows)}; was a layer skipped?")
        return torch.cat(self.chunks, dim=1) / self.layer_calls[0]  # (B, Q, K)


_ACTIVE: contextvars.ContextVar[AttentionCapture | None] = contextvars.ContextVar("readl_capture", default=None)


@contextlib.contextmanager
def capture_attention(
    key_index: torch.Tensor, query_start: int, layers: Sequence[int] | None = None
) -> Iterator[AttentionCapture]:
    """Capture attention rows from ``query_start`` on, to the columns ``key_index``, in this block.

    Args:
        key_index: ``(B, K)`` int64 key positions per batch row (same K for all rows).
        query_start: absolute position of the first query row to keep (``P - 1`` for completion
            tokens after a padded prompt of length ``P``; see the module docstring).
        layers: decoder layer indices to average; default all (paper Eq. 1 averages over layers).

    Yields:
        The :class:`AttentionCapture`; call ``.result()`` after the forward pass(es).

    Raises:
        ValueError: ``key_index`` is not a 2-D integer tensor, or ``query_start`` is negative.
    """
    if key_index.ndim != 2 or key_index.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"key_index must be a (B, K) integer tensor, got {tuple(key_index.shape)} {key_index.dtype}")
    if query_start < 0:
        raise ValueError(f"query_start must be >= 0, got {query_start}")
    cap = AttentionCapture(key_index.long(), int(query_start), frozenset(layers) if layers is not None else None)
    token = _ACTIVE.set(cap)
    try:
        yield cap
    finally:
        _ACTIVE.reset(token)


def _selected_probs(
    query: torch.Tensor,  # (B, H, q, D)
    key: torch.Tensor,  # (B, KVH, N, D)
    mask: torch.Tensor | None,  # (B, 1|H, q, N) bool (True = attend) or additive float; None = causal
    scaling: float,
    q_pos: torch.Tensor,  # (q,) absolute positions of the query rows
    key_index: torch.Tensor,  # (B, K)
) -> torch.Tensor:
    """Head-mean softmax probabilities of the selected columns: ``(B, q, K)`` float32.

    Per chunk of rows: logits = q k^T * scale + mask over all N keys (the softmax normaliser needs
    them), logsumexp over N, then exp(logit - lse) of the K kept columns only. GQA is handled by
    grouping query heads per KV head (no repeated keys).
    """
    b, h, q, d = query.shape
    kvh, n = key.shape[1], key.shape[2]
    g = h // kvh
    if mask is None:  # causal: key j is visible from query position p iff j <= p
        visible = torch.arange(n, device=query.device)[None, :] <= q_pos[:, None]  # (q, N)
        bias = torch.zeros((1, 1, q, n), device=query.device).masked_fill_(~visible, float("-inf"))
    elif mask.dtype == torch.bool:
        bias = torch.zeros(mask[..., :n].shape, device=query.device).masked_fill_(~mask[..., :n], float("-inf"))
    else:
        bias = mask[..., :n].float()  # (B, 1|H, q, N)
    if bias.shape[1] == 1:
        bias = bias.unsqueeze(1)  # (B|1, 1, 1, q, N): same for every head
    else:
        bias = bias.reshape(bias.shape[0], kvh, g, q, n)  # (B, KVH, G, q, N)
    k_t = key.float().transpose(-1, -2)  # (B, KVH, D, N)
    cols = key_index.to(query.device)[:, None, :, None]  # (B, 1, K, 1) -> broadcast over KVH
    out = []
    for lo in range(0, q, _ROW_CHUNK):
        hi = min(q, lo + _ROW_CHUNK)
        r = hi - lo
        qc = query[:, :, lo:hi].float().reshape(b, kvh, g * r, d)  # (B, KVH, G*r, D)
        logits = torch.matmul(qc, k_t).mul_(scaling).view(b, kvh, g, r, n)  # (B, KVH, G, r, N)
        logits += bias[..., lo:hi, :]
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # (B, KVH, G, r, 1)
        idx = cols.expand(b, kvh, -1, 1).reshape(b, kvh, 1, 1, -1).expand(b, kvh, g, r, -1)  # (B, KVH, G, r, K)
        probs = torch.gather(logits, -1, idx).sub_(lse).exp_()  # (B, KVH, G, r, K)
        out.append(probs.mean(dim=(1, 2)))  # (B, r, K)
    return torch.cat(out, dim=1)


def readl_capture_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: SDPA output, plus capture of the selected rows/columns.

    Same signature and return value as ``transformers.integrations.sdpa_attention.sdpa_attention_forward``
    (``query (B, H, q, D)``, ``key/value (B, KVH, N, D)``, output ``(B, q, H, D)``). Only causal decoder
    layers (modules with a ``layer_idx``) are captured; the vision tower passes straight to SDPA.
    """
    out, _ = sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )
    cap = _ACTIVE.get()
    layer_idx = getattr(module, "layer_idx", None)
    if cap is None or layer_idx is None or not getattr(module, "is_causal", False) or not cap.wants(layer_idx):
        return out, None
    n, q = key.shape[2], query.shape[2]
    q_pos = torch.arange(n - q, n, device=query.device)  # absolute positions of this call's query rows
    keep = q_pos >= cap.query_start
    if not bool(keep.any()):
        return out, None
    first = int(keep.nonzero()[0, 0])
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    mask = attention_mask[:, :, first:, :] if attention_mask is not None else None
    with torch.no_grad():
        probs = _selected_probs(query[:, :, first:], key, mask, scale, q_pos[first:], cap.key_index)
    cap.add(layer_idx, probs)
    return out, None


def register_capture() -> None:
    """Register ``"readl_capture"`` with transformers' attention and attention-mask interfaces. Idempotent.

    Importing readl registers nothing; this runs when a model is loaded for capture
    (:func:`readl.model.loading.load_model`, which passes ``attn_implementation="readl_capture"``) or switched
    to it (:func:`enable_capture`).
    """
    if AttentionInterface._global_mapping.get(CAPTURE_IMPLEMENTATION) is not readl_capture_attention:
        AttentionInterface.register(CAPTURE_IMPLEMENTATION, readl_capture_attention)
    if AttentionMaskInterface._global_mapping.get(CAPTURE_IMPLEMENTATION) is not sdpa_mask:
        AttentionMaskInterface.register(CAPTURE_IMPLEMENTATION, sdpa_mask)


def enable_capture(model: torch.nn.Module, layers: Sequence[int] | None = None) -> torch.nn.Module:
    """Register the capture attention (:func:`register_capture`) and switch ``model``'s attention to
    ``"readl_capture"`` (SDPA + optional capture). Idempotent.

    Outside a :func:`capture_attention` block the model computes exactly what SDPA computes.

    Args:
        model: the (PEFT-wrapped or plain) vision-language model.
        layers: the decoder layers the caller will capture (``localization.layers``); checked against the
            model's depth here, before any generation.

    Returns:
        The same model.

    Raises:
        ValueError: a layer index the model's text decoder does not have.
    """
    text = getattr(model.config, "text_config", None) or model.config
    depth = getattr(text, "num_hidden_layers", None)
    missing = sorted(i for i in (layers or ()) if depth is not None and not 0 <= i < depth)
    if missing:
        raise ValueError(
            f"localization.layers {missing}: this model's text decoder has layers 0..{depth - 1} "
            "(params.yaml localization.layers / train.localization.layers; null = all)"
        )
    register_capture()
    if getattr(model.config, "_attn_implementation", None) != CAPTURE_IMPLEMENTATION:
        model.set_attn_implementation(CAPTURE_IMPLEMENTATION)
    return model
