"""The write-up's ``get_batch``: random windows of a split, gathered in one indexing op."""

from __future__ import annotations

import torch


def get_batch(data: torch.Tensor, batch_size: int, context_length: int, generator: torch.Generator):
    """Random windows as in the write-up, gathered in one indexing op instead of a Python loop."""
    starts = torch.randint(len(data) - context_length, (batch_size,), generator=generator, device=data.device)
    chunk = data.as_strided((len(data) - context_length, context_length + 1), (1, 1)).index_select(0, starts)
    return chunk[:, :-1], chunk[:, 1:]
