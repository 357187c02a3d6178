"""Tokenizers: text to ids and back. A new tokenizer is one file here plus one line in ``TOKENIZERS``."""

from __future__ import annotations

from harness.data.tokenizers.base import Tokenizer, UnknownCharacterError
from harness.data.tokenizers.char import EXTRA_CHARS, CharTokenizer

TOKENIZERS: dict[str, type[Tokenizer]] = {"char": CharTokenizer}

__all__ = ["EXTRA_CHARS", "TOKENIZERS", "CharTokenizer", "Tokenizer", "UnknownCharacterError"]
