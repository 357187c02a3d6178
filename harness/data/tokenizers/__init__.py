"""The tokenizer registry: a name (``char``, ``jamo``, ``bpe``, ``bytes``) to a tokenizer built for a corpus."""

from __future__ import annotations

import os
from pathlib import Path

from harness.data.tokenizers.base import Tokenizer, UnknownCharacterError
from harness.data.tokenizers.bpe import BASE_ALPHABET, BPETokenizer
from harness.data.tokenizers.byte import ByteTokenizer
from harness.data.tokenizers.char import EXTRA_CHARS, CharTokenizer
from harness.data.tokenizers.jamo import JamoTokenizer, NotNFCError, has_hangul
from harness.data.tokenizers.metrics import bits_per_character, chars_per_token

TOKENIZERS: dict[str, type[Tokenizer]] = {
    "char": CharTokenizer,
    "jamo": JamoTokenizer,
    "bpe": BPETokenizer,
    "bytes": ByteTokenizer,
}
TOKENIZER_CHOICES = tuple(TOKENIZERS)


def tokenizer_cache_dir() -> Path:
    """Where trained BPE merges are kept, by content (``$XDG_CACHE_HOME/nanoko-harness/tokenizers``): a sweep
    learns each (train text, vocab_size) once, and every later run and process loads it."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nanoko-harness" / "tokenizers"


def tokenizer_from_json(data: dict) -> Tokenizer:
    """The tokenizer a ``Tokenizer.to_json()`` describes (a logged model's ``tokenizer.json``)."""
    name = data.get("name") if isinstance(data, dict) else None
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; choices: {', '.join(TOKENIZER_CHOICES)}")
    return TOKENIZERS[name].from_json(data)


def build_tokenizer(
    name: str,
    train_text: str,
    full_text: str,
    *,
    extra_chars: bool = True,
    vocab_size: int | None = None,
    cache_dir: Path | None = None,
) -> Tokenizer:
    """The tokenizer ``name`` for a corpus.

    char and jamo take their vocabulary from ``full_text``, the whole corpus (as the harness always has), plus
    ``EXTRA_CHARS`` when ``extra_chars``; bpe learns ``vocab_size - 256`` merges from ``train_text`` only,
    cached in ``cache_dir``. bytes and bpe encode every text, so ``extra_chars`` changes nothing for them.
    """
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; choices: {', '.join(TOKENIZER_CHOICES)}")
    if name == "bpe":
        if vocab_size is None:
            raise ValueError("tokenizer 'bpe' needs a vocab_size: at least 256 (the bytes) plus the merges to learn")
        return BPETokenizer.train(train_text, vocab_size, cache_dir)
    if vocab_size is not None:
        raise ValueError(f"vocab_size is only for bpe; tokenizer {name!r} takes its vocabulary from the text")
    if name == "bytes":
        return ByteTokenizer()
    if name == "jamo":
        return JamoTokenizer.from_text(full_text, extra_chars)
    return CharTokenizer.from_text(full_text, extra_chars)


__all__ = [
    "BASE_ALPHABET",
    "EXTRA_CHARS",
    "TOKENIZERS",
    "TOKENIZER_CHOICES",
    "BPETokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "JamoTokenizer",
    "NotNFCError",
    "Tokenizer",
    "UnknownCharacterError",
    "bits_per_character",
    "build_tokenizer",
    "chars_per_token",
    "has_hangul",
    "tokenizer_cache_dir",
    "tokenizer_from_json",
]
