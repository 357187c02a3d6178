"""The byte-level BPE tokenizer: Hugging Face ``tokenizers`` trained on the train text, cached by its content.

The base alphabet is the 256 byte values, so every text encodes and decodes back exactly; training adds
``vocab_size - 256`` merges learned from the train text alone (no special tokens). As in GPT-2, the text is
first cut into pre-tokens (words with their leading space, runs of digits, of punctuation, of whitespace) and
merges never cross a pre-token's edge.

Encoding cuts long text into chunks of about ``CHUNK_CHARS`` at a newline that follows a non-space character.
Such a newline always begins a pre-token (no pre-token holds a non-space character followed by a newline), so
the chunks' ids, concatenated, are those of the whole text encoded at once; ``encode_batch`` then encodes the
chunks in parallel (Tiny Shakespeare on 2 cores: 0.35-0.45 s instead of 0.8-1.3 s). Training reads the same chunks.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import tokenizers
import torch
from tokenizers import decoders, models, pre_tokenizers, trainers

from harness.data.tokenizers.base import Tokenizer, as_id_array

BASE_ALPHABET = 256  # one token per byte value
CHUNK_CHARS = 4096


def byte_of_symbol() -> dict[str, int]:
    """GPT-2's printable stand-in for each byte, reversed: byte-level token strings are made of these symbols."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    symbols = {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(others)}
    return {symbol: b for b, symbol in symbols.items()}


def chunks(text: str, size: int = CHUNK_CHARS) -> Iterator[str]:
    """``text`` in pieces of at least ``size`` characters (the last may be shorter), cut only before a newline
    that follows a non-space character: a pre-token boundary, so the pieces encode as the whole does."""
    start = 0
    while len(text) - start > size:
        cut = text.find("\n", start + max(size, 1))
        # str.isspace holds for every character the pre-tokenizer's \s matches (and for U+001C..U+001F too),
        # so a character it calls non-space is non-space for the pre-tokenizer as well.
        while cut != -1 and text[cut - 1].isspace():
            cut = text.find("\n", cut + 1)
        if cut == -1:
            break
        yield text[start:cut]
        start = cut
    yield text[start:]


def cache_filename(train_text: str, vocab_size: int) -> str:
    digest = hashlib.sha256(train_text.encode("utf-8")).hexdigest()[:16]
    return f"bpe-{digest}-{vocab_size}-{tokenizers.__version__}.json"


def _train(train_text: str, vocab_size: int) -> tokenizers.Tokenizer:
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    hf.train_from_iterator(chunks(train_text), trainer=trainer)
    return hf


class BPETokenizer(Tokenizer):
    """A trained Hugging Face byte-level BPE; build it with ``BPETokenizer.train``."""

    name = "bpe"

    def __init__(self, hf: tokenizers.Tokenizer):
        self.hf = hf
        byte_of = byte_of_symbol()
        vocab = hf.get_vocab()
        # token_bytes[id]: the bytes a token stands for; decoding joins them and reads UTF-8.
        self.token_bytes: list[bytes] = [b""] * len(vocab)
        for token, i in vocab.items():
            try:
                self.token_bytes[i] = bytes(byte_of[symbol] for symbol in token)
            except KeyError as exc:
                raise ValueError(f"token {token!r} is not made of byte-level symbols: not a byte-level BPE") from exc

    @classmethod
    def train(cls, train_text: str, vocab_size: int, cache_dir: Path | None = None) -> BPETokenizer:
        """Learn ``vocab_size - 256`` merges from ``train_text``, or load them from ``cache_dir`` if done before."""
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < BASE_ALPHABET:
            raise ValueError(
                f"bpe vocab_size must be an integer of at least {BASE_ALPHABET}, got {vocab_size!r}: the byte-level "
                f"base alphabet alone is {BASE_ALPHABET} tokens (one per byte); vocab_size is {BASE_ALPHABET} + merges"
            )
        path = None if cache_dir is None else Path(cache_dir) / cache_filename(train_text, vocab_size)
        if path is not None and path.is_file():
            return cls(tokenizers.Tokenizer.from_file(str(path)))
        hf = _train(train_text, vocab_size)
        reached = hf.get_vocab_size()
        if reached < vocab_size:
            raise ValueError(
                f"bpe: training on this text reached only {reached} tokens ({BASE_ALPHABET} bytes + "
                f"{reached - BASE_ALPHABET} merges), fewer than the vocab_size {vocab_size} asked for: the text has "
                f"no more pairs to merge. Ask for at most {reached}, or train on more text"
            )
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            try:
                hf.save(tmp)
                os.replace(tmp, path)  # atomic: a concurrent reader sees no file or the whole file
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return cls(hf)

    @property
    def vocab_size(self) -> int:
        return len(self.token_bytes)

    def to_json(self) -> dict:
        """The Hugging Face tokenizer file itself, under ``bpe``."""
        return {"name": self.name, "bpe": json.loads(self.hf.to_str())}

    @classmethod
    def from_json(cls, data: dict) -> BPETokenizer:
        bpe = data.get("bpe") if isinstance(data, dict) else None
        if not isinstance(bpe, dict):
            raise ValueError(
                f"tokenizer 'bpe': expected its Hugging Face tokenizer file as an object 'bpe', got {bpe!r}"
            )
        try:
            hf = tokenizers.Tokenizer.from_str(json.dumps(bpe))
        except Exception as exc:  # the library's own parse error: not a tokenizer file
            raise ValueError(f"tokenizer 'bpe': not a Hugging Face tokenizer file ({exc})") from None
        return cls(hf)

    def encode_tensor(self, text: str) -> torch.Tensor:
        encodings = self.hf.encode_batch(list(chunks(text)), add_special_tokens=False)
        return torch.from_numpy(np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encodings]))

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """UTF-8 with ``errors="replace"``: a sample cut inside a character ends in U+FFFD."""
        token_bytes = self.token_bytes
        return b"".join([token_bytes[i] for i in as_id_array(ids, self.vocab_size).tolist()]).decode(
            "utf-8", errors="replace"
        )
