"""The jamo tokenizer: each Hangul syllable split into its conjoining jamo, then one id per character.

A precomposed syllable (U+AC00..U+D7A3) becomes its Unicode NFD: a leading consonant (U+1100..), a vowel
(U+1161..) and, if it has one, a trailing consonant (U+11A8..): '한' is 'ᄒ' 'ᅡ' 'ᆫ'. Every other character
stays as it is (the text as a whole is not NFD'd, so 'é' stays one character). Decoding maps ids back to
characters and recomposes the syllables by NFC.

Only NFC text is accepted. Decoding by NFC would turn 'e' + U+0301 into 'é', and decomposed jamo typed in
the input ('ᄒ' 'ᅡ' 'ᆫ') into '한', so such text could not come back as it went in; it is refused with
``NotNFCError`` naming the first character that NFC would change. For NFC text the round trip is exact.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

import numpy as np
import torch

from harness.data.tokenizers.base import Tokenizer, UnknownCharacterError, as_id_array, describe
from harness.data.tokenizers.char import EXTRA_CHARS, codes_of, lookup, vocabulary_chars

SYLLABLE_FIRST, N_SYLLABLES = 0xAC00, 11172  # '가' .. '힣'
LEAD_FIRST, VOWEL_FIRST, TAIL_BEFORE = 0x1100, 0x1161, 0x11A7  # a tail index of 0 means no trailing consonant
N_VOWELS, N_TAILS = 21, 28  # a syllable is SYLLABLE_FIRST + (lead * N_VOWELS + vowel) * N_TAILS + tail
_SYLLABLE = re.compile("[\uac00-\ud7a3]")


class NotNFCError(ValueError):
    """Text that Unicode NFC would change, which the jamo tokenizer could not give back unchanged."""


def has_hangul(text: str) -> bool:
    """Whether ``text`` holds a precomposed Hangul syllable (the only characters the jamo tokenizer splits)."""
    return _SYLLABLE.search(text) is not None


def decompose_codes(text: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The code points of ``text`` with each syllable replaced by its jamo, and where each character's begin.

    The second array holds, for each character of ``text``, the index of its first code in the first
    (None when there is no syllable: the codes are then the characters one to one).
    """
    codes = codes_of(text)
    s = codes - SYLLABLE_FIRST
    syllable = (s >= 0) & (s < N_SYLLABLES)
    if not syllable.any():
        return codes, None
    tail = np.where(syllable, s % N_TAILS, 0)
    lengths = 1 + syllable + (tail > 0)
    starts = np.cumsum(lengths) - lengths
    out = np.empty(int(lengths.sum()), dtype=np.int64)
    out[starts] = np.where(syllable, LEAD_FIRST + s // (N_VOWELS * N_TAILS), codes)
    out[starts[syllable] + 1] = VOWEL_FIRST + (s[syllable] % (N_VOWELS * N_TAILS)) // N_TAILS
    out[starts[tail > 0] + 2] = TAIL_BEFORE + tail[tail > 0]
    return out, starts


def decompose(text: str) -> str:
    """``text`` with each Hangul syllable replaced by its conjoining jamo; other characters unchanged."""
    codes, _ = decompose_codes(text)
    return codes.astype(np.uint32).tobytes().decode("utf-32-le")


def check_nfc(text: str) -> None:
    """Raise ``NotNFCError`` naming the first character of ``text`` that NFC would change."""
    if unicodedata.is_normalized("NFC", text):
        return
    nfc = unicodedata.normalize("NFC", text)
    first_diff = next((i for i, (a, b) in enumerate(zip(text, nfc, strict=False)) if a != b), min(len(text), len(nfc)))
    # NFC changed something at or after first_diff: the culprit is the first character whose prefix stops being
    # NFC (a combining mark or a jamo composing with the character before it, or a singleton such as U+212B).
    culprit = next(
        (j for j in range(first_diff, len(text)) if not unicodedata.is_normalized("NFC", text[: j + 1])), first_diff
    )
    char = text[culprit]
    name = unicodedata.name(char, "unnamed")
    raise NotNFCError(
        f"text is not in Unicode NFC: NFC changes character {describe(char)} {name} at position {culprit} "
        f"(composes it with what precedes it, reorders it or replaces it). The jamo tokenizer decodes by NFC, so "
        f"it could not give this text back unchanged; normalize it first: unicodedata.normalize('NFC', text)"
    )


class JamoTokenizer(Tokenizer):
    """A character vocabulary over the text with its Hangul syllables split into jamo."""

    name = "jamo"

    def __init__(self, chars: str):
        """``chars``: the characters to encode; a syllable among them adds its jamo, not itself."""
        self.equals_char = not has_hangul(chars)  # no syllable: the vocabulary and ids are CharTokenizer's
        self.chars = "".join(sorted(set(decompose(chars))))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self._codepoints = np.array([ord(c) for c in self.chars], dtype=np.int64)

    @classmethod
    def from_text(cls, text: str, extra_chars: bool = True) -> JamoTokenizer:
        check_nfc(text)
        return cls("".join(set(text)) + (EXTRA_CHARS if extra_chars else ""))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode_tensor(self, text: str) -> torch.Tensor:
        check_nfc(text)
        codes, starts = decompose_codes(text)
        ids, bad = lookup(codes, self._codepoints)
        if bad >= 0:
            at = bad if starts is None else int(np.searchsorted(starts, bad, side="right")) - 1
            jamo = chr(int(codes[bad]))
            part = "" if jamo == text[at] else f": its jamo {describe(jamo)}"
            raise UnknownCharacterError(
                f"character {describe(text[at])} at position {at}{part} is not in the vocabulary"
            )
        return torch.from_numpy(ids)

    def to_json(self) -> dict:
        return {"name": self.name, "chars": self.chars}  # the jamo themselves: rebuilding decomposes nothing

    @classmethod
    def from_json(cls, data: dict) -> JamoTokenizer:
        return cls(vocabulary_chars(data, cls.name))

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """The characters of ``ids``, syllables recomposed by NFC."""
        codes = self._codepoints[as_id_array(ids, self.vocab_size)]
        return unicodedata.normalize("NFC", codes.astype(np.uint32).tobytes().decode("utf-32-le"))
