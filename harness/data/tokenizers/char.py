"""The character tokenizer: one id per character of the corpus (plus ``EXTRA_CHARS``), ids in code point order."""

from __future__ import annotations

import string
from collections.abc import Iterable

import numpy as np
import torch

from harness.data.tokenizers.base import Tokenizer, UnknownCharacterError, describe

# The write-up adds these to the corpus characters so that prompts with digits and punctuation encode.
EXTRA_CHARS = string.digits + string.punctuation + " \n"


def codes_of(text: str) -> np.ndarray:
    """The code point of each character of ``text``, as int64."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)


def lookup(codes: np.ndarray, codepoints: np.ndarray) -> tuple[np.ndarray, int]:
    """Vectorised ``[stoi[c] for c in codes]`` over a sorted vocabulary of code points.

    Returns the ids and the index of the first code not in the vocabulary (-1 when all are).
    """
    if len(codepoints) == 0:
        codepoints = np.array([-1], dtype=np.int64)  # matches no code: every character is unknown
    ids = np.searchsorted(codepoints, codes)
    ids_clipped = np.minimum(ids, len(codepoints) - 1)
    unknown = codepoints[ids_clipped] != codes
    return ids, int(np.argmax(unknown)) if unknown.any() else -1


def vocabulary_chars(data: dict, name: str) -> str:
    """The ``chars`` of a char or jamo tokenizer's JSON, checked to be a non-empty string."""
    chars = data.get("chars") if isinstance(data, dict) else None
    if not isinstance(chars, str) or not chars:
        raise ValueError(f"tokenizer {name!r}: expected its vocabulary as a non-empty string 'chars', got {chars!r}")
    return chars


class CharTokenizer(Tokenizer):
    """The write-up's tokenizer: sorted corpus characters plus ``EXTRA_CHARS``, one id each."""

    name = "char"

    def __init__(self, chars: str):
        self.chars = "".join(sorted(set(chars)))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self._codepoints = np.array([ord(c) for c in self.chars], dtype=np.int64)

    @classmethod
    def from_text(cls, text: str, extra_chars: bool = True) -> CharTokenizer:
        return cls("".join(set(text)) + (EXTRA_CHARS if extra_chars else ""))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode_tensor(self, text: str) -> torch.Tensor:
        """Vectorised ``[stoi[c] for c in text]``: a 1M-character corpus in milliseconds."""
        ids, bad = lookup(codes_of(text), self._codepoints)
        if bad >= 0:
            raise UnknownCharacterError(f"character {describe(text[bad])} is not in the vocabulary")
        return torch.from_numpy(ids)

    def to_json(self) -> dict:
        return {"name": self.name, "chars": self.chars}

    @classmethod
    def from_json(cls, data: dict) -> CharTokenizer:
        return cls(vocabulary_chars(data, cls.name))

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()  # the same characters; iterating a tensor element by element is ~40x slower
        return "".join(self.chars[i] for i in ids)
