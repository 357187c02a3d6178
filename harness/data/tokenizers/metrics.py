"""Measures that compare tokenizers on one scale: bits per character and characters per token."""

from __future__ import annotations

import math

from harness.data.tokenizers.base import Tokenizer


def bits_per_character(total_nats: float, n_chars: int) -> float:
    """A summed cross-entropy (in nats, over all the tokens of a text) per character of that text, in bits.

    ``n_chars`` counts the characters (code points) of the original text, whatever the tokenizer, so that
    a byte-, jamo- or BPE-level model and a character-level one are measured on the same scale.
    """
    if n_chars <= 0:
        raise ValueError(f"n_chars must be positive, got {n_chars}")
    return total_nats / (n_chars * math.log(2))


def chars_per_token(text: str, tokenizer: Tokenizer) -> float:
    """How many characters of ``text`` one token covers on average (1 for char, below 1 for jamo and bytes)."""
    n_tokens = len(tokenizer.encode_tensor(text))
    if n_tokens == 0:
        raise ValueError("chars_per_token of an empty text")
    return len(text) / n_tokens
