"""Character offsets of a token sequence's decoded prefixes, in O(T) for byte-level BPE tokenizers.

``char_offsets(tok, ids)[j] == len(tok.decode(ids[:j], skip_special_tokens=True))`` for every j: what the
reasoning mask and the answer position (:mod:`readl.model.inference`) are read from. Decoding every prefix
costs O(T^2) (79 ms at T = 1024 on the training critical path); byte-level tokenizers (GPT-2 / Qwen2 family,
the tiny kit) get the same numbers from one pass over the tokens' bytes.
"""

from __future__ import annotations

import codecs
import functools

__all__ = ["char_offsets", "is_plain_byte_level"]


@functools.cache
def _byte_table() -> dict[str, int]:
    """GPT-2 byte-level BPE's char -> byte table (inverse of ``bytes_to_unicode``)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {c: b for b, c in bytes_to_unicode().items()}


def is_plain_byte_level(tokenizer) -> bool:
    """True when ``tokenizer.decode`` is exactly "map chars to bytes, join, decode UTF-8 with replacement"
    (a fast tokenizer with the ByteLevel decoder and no effective space clean-up: GPT-2 / Qwen2 family, the
    tiny kit)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or type(backend.decoder).__name__ != "ByteLevel":
        return False
    cleanup = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))
    if cleanup and type(backend.model).__name__ == "BPE":  # transformers skips the clean-up for BPE unless forced
        cleanup = bool(
            getattr(tokenizer, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False)
        )
    return not cleanup


def char_offsets(tokenizer, ids: list[int]) -> list[int]:
    """offsets[j] = length of ``tokenizer.decode(ids[:j], skip_special_tokens=True)`` (j = 0..T).

    O(T) for byte-level BPE tokenizers (the Rust decoder's own rule: a token's string maps to bytes char by
    char, or is taken as its UTF-8 bytes when a char is outside the byte table; special tokens are skipped;
    the bytes are decoded with U+FFFD replacement): the bytes are fed to an incremental UTF-8 decoder, and a
    prefix that ends inside a multi-byte character also counts the U+FFFD(s) its undecoded tail (<= 3 bytes)
    decodes to. Other tokenizers decode every prefix (O(T^2)).
    """
    if not is_plain_byte_level(tokenizer):
        return [len(tokenizer.decode(ids[:j], skip_special_tokens=True)) for j in range(len(ids) + 1)]
    table = _byte_table()
    special = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    n_chars, offsets = 0, [0]
    for i, token in zip(ids, tokenizer.convert_ids_to_tokens(ids)):
        if i not in special and token is not None:
            try:
                data = bytes(table[c] for c in token)
            except KeyError:  # a char outside the byte table: the token's own UTF-8 bytes
                data = token.encode("utf-8")
            n_chars += len(decoder.decode(data))
        pending = decoder.getstate()[0]  # <= 3 bytes of an unfinished character: what the prefix's decode ends with
        offsets.append(n_chars + (len(pending.decode("utf-8", errors="replace")) if pending else 0))
    return offsets
