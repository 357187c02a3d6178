"""The interface every tokenizer implements, and the error for a character it cannot encode."""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import ClassVar

import numpy as np
import torch


class UnknownCharacterError(ValueError):
    """A character the vocabulary cannot encode; the message names it and its U+ code."""


class Tokenizer(abc.ABC):
    """Text to 1-D int64 ids and back.

    ``decode`` returns readable text: the char tokenizer joins its characters, jamo recomposes syllables
    by NFC, and the byte-level tokenizers (bytes, bpe) decode UTF-8 with ``errors="replace"`` so that a
    sample cut off in the middle of a character still decodes.
    """

    name: ClassVar[str]  # the registry key: "char", "jamo", "bpe", "bytes"

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    @abc.abstractmethod
    def encode_tensor(self, text: str) -> torch.Tensor:
        """The ids of ``text`` as a 1-D int64 tensor."""

    def encode(self, text: str) -> list[int]:
        return self.encode_tensor(text).tolist()

    @abc.abstractmethod
    def decode(self, ids: Iterable[int] | torch.Tensor) -> str: ...

    @abc.abstractmethod
    def to_json(self) -> dict:
        """What rebuilds this tokenizer (``tokenizer_from_json``): its name and its vocabulary or merges, as plain
        JSON data (a logged model keeps it beside its weights; nothing in it is code)."""

    @classmethod
    @abc.abstractmethod
    def from_json(cls, data: dict) -> Tokenizer:
        """The tokenizer ``to_json`` described; a ``ValueError`` naming what is wrong for anything else."""


def describe(char: str) -> str:
    """``'é' (U+00E9)``: a character as error messages name it."""
    return f"{char!r} (U+{ord(char):04X})"


def as_id_array(ids: Iterable[int] | torch.Tensor, vocab_size: int) -> np.ndarray:
    """``ids`` as a 1-D int64 array, each checked to be a token of a vocabulary of ``vocab_size``."""
    if isinstance(ids, torch.Tensor):
        array = ids.detach().cpu().numpy().astype(np.int64, copy=False).reshape(-1)
    else:
        array = np.asarray(list(ids), dtype=np.int64).reshape(-1)
    outside = (array < 0) | (array >= vocab_size)
    if outside.any():
        raise ValueError(f"token id {int(array[np.argmax(outside)])} is outside the vocabulary (0..{vocab_size - 1})")
    return array
