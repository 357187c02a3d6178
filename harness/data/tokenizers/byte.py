"""The byte tokenizer: the UTF-8 bytes of the text, one id per byte value (a vocabulary of 256)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from harness.data.tokenizers.base import Tokenizer, as_id_array


class ByteTokenizer(Tokenizer):
    """Every text encodes; a Hangul syllable is three ids, an ASCII character one."""

    name = "bytes"

    @property
    def vocab_size(self) -> int:
        return 256

    def encode_tensor(self, text: str) -> torch.Tensor:
        return torch.from_numpy(np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64))

    def to_json(self) -> dict:
        return {"name": self.name}

    @classmethod
    def from_json(cls, data: dict) -> ByteTokenizer:
        return cls()

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """UTF-8 with ``errors="replace"``: a sample cut inside a character ends in U+FFFD."""
        return as_id_array(ids, 256).astype(np.uint8).tobytes().decode("utf-8", errors="replace")
