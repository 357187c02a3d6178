"""How a batch and a split are scored: one strategy object per kind of model, picked from ``position_wise``.

- ``PairTableLoss`` (bigram, FFN: the output at a position depends only on the token there): each step's loss
  from a logits table and the batch's (current, next) pairs; exact split losses from the split's pair counts.
- ``PerPositionLoss`` (models that read context): ``cross_entropy`` over every position of the B x T windows,
  and evaluation on fixed windows that are the same for every variant, evaluation and seed.
"""

from __future__ import annotations

import torch

from harness.models.base import CharLanguageModel
from harness.train.evaluation import (
    EVAL_MAX_TOKENS,
    eval_stride,
    exact_loss,
    sample_windows,
    tile_windows,
    windows_loss,
)
from harness.train.losses import (
    DENSE_PAIRS_MAX_CELLS,
    SUBSET_ROWS_MIN_VOCAB,
    batch_loss_fast,
    count_ids,
    pair_counts,
    table_pair_loss,
)


class PairTableLoss:
    """Position-wise models: a batch's loss from a logits table and its (current, next) pairs; exact
    split losses from the split's pair counts. ``fast_step=False`` (``train.fast_path: false``) keeps the
    exact evaluation but takes each step the write-up's way, ``cross_entropy`` over B x T."""

    def __init__(
        self,
        model: CharLanguageModel,
        train_data: torch.Tensor,
        windows: torch.Tensor,
        train_counts: torch.Tensor,
        val_data: torch.Tensor,
        vocab: int,
        device: torch.device,
        fast_step: bool = True,
        compile: bool = False,
        sync_free: bool = False,
    ):
        self.model = model
        self.windows = windows
        self.vocab = vocab
        self.fast_step = fast_step
        self.sync_free = sync_free
        self.train_counts = train_counts
        self.val_counts = pair_counts(val_data, vocab)
        self.eval_tokens = len(val_data) - 1
        # On a CPU, a table row of a large vocabulary costs more than finding the batch's distinct tokens
        # (a host sync, which only a CPU can afford).
        self.subset_rows = device.type == "cpu" and not sync_free and vocab >= SUBSET_ROWS_MIN_VOCAB
        self.dense_pairs = fast_step and not self.subset_rows and vocab**2 <= DENSE_PAIRS_MAX_CELLS
        if self.dense_pairs:  # the same windows as (current, next) pair ids, for a bincount per batch
            ids = (train_data[:-1] * vocab + train_data[1:]).to(torch.int32)
            self.pair_windows = ids.as_strided((len(windows), windows.shape[1] - 1), (1, 1))
        if compile:  # both entry points of the fast path, and forward for the direct one
            model.logits_for_tokens = torch.compile(model.logits_for_tokens, dynamic=True)
            model.logits_table = torch.compile(model.logits_table)

    def step_loss(self, starts: torch.Tensor) -> torch.Tensor:
        if self.dense_pairs:
            pairs = self.pair_windows.index_select(0, starts).view(-1)
            counts = count_ids(pairs, self.vocab**2, self.sync_free).view(self.vocab, self.vocab)
            return table_pair_loss(self.model.logits_table(), counts, pairs.numel())
        chunk = self.windows.index_select(0, starts)
        x, y = chunk[:, :-1], chunk[:, 1:]
        if self.fast_step:
            return batch_loss_fast(self.model, x, y, self.vocab, self.subset_rows, self.sync_free)
        _, loss = self.model(x, y)
        return loss.float()

    curve_is_exact = True  # exact split losses cost a table, not a pass over the split

    def evaluate(self, final: bool = True) -> dict[str, float]:
        return {
            "train_loss": exact_loss(self.model, self.train_counts),
            "val_loss": exact_loss(self.model, self.val_counts),
        }


class PerPositionLoss:
    """Models that read context: ``cross_entropy`` over every position of the batch's windows; split
    losses over fixed windows (val: ``tile_windows``, train: ``sample_windows`` with val's token count),
    spaced as ``train.eval_scoring`` says. Curve points score a fixed subset of ``curve_tokens`` targets of
    each split (``sample_windows``, the same for every variant, seed and evaluation); the final losses the
    whole windows."""

    def __init__(
        self,
        model: CharLanguageModel,
        windows: torch.Tensor,
        train_data: torch.Tensor,
        val_data: torch.Tensor,
        context_length: int,
        compile: bool = False,
        max_tokens: int | None = EVAL_MAX_TOKENS,
        scoring: str = "all-positions",
        curve_tokens: int | None = None,
    ):
        self.model = model
        self.forward = torch.compile(model) if compile else model  # state_dict stays the model's own
        self.windows = windows
        self.train_data, self.val_data = train_data, val_data
        stride = eval_stride(context_length, scoring)
        self.val_windows = tile_windows(len(val_data), context_length, stride)
        if max_tokens is not None and self.val_windows.tokens > max_tokens:
            self.val_windows = sample_windows(len(val_data), context_length, max_tokens, stride=stride)
        self.train_windows = sample_windows(len(train_data), context_length, self.val_windows.tokens, stride=stride)
        self.eval_tokens = self.val_windows.tokens
        self.curve_is_exact = curve_tokens is None or curve_tokens >= self.val_windows.tokens
        if not self.curve_is_exact:
            self.curve_windows = {
                key: (data, sample_windows(len(data), context_length, curve_tokens, stride=stride))
                for key, data in (("train_loss", train_data), ("val_loss", val_data))
            }

    def step_loss(self, starts: torch.Tensor) -> torch.Tensor:
        chunk = self.windows.index_select(0, starts)
        _, loss = self.forward(chunk[:, :-1], chunk[:, 1:])
        return loss.float()

    def evaluate(self, final: bool = True) -> dict[str, float]:
        if not final and not self.curve_is_exact:
            return {key: windows_loss(self.model, data, windows) for key, (data, windows) in self.curve_windows.items()}
        return {
            "train_loss": windows_loss(self.model, self.train_data, self.train_windows),
            "val_loss": windows_loss(self.model, self.val_data, self.val_windows),
        }
