"""The pair-table loss of position-wise models and the bigram floor.

A bigram or FFN's output at a position depends only on the token there, so the loss over B x T positions equals
a loss over a (distinct token x vocab) logits table weighted by how often each (current, next) pair occurs
(``table_pair_loss``); the same pair counts give the bigram floor H(next | current) of a split.
"""

from __future__ import annotations

import torch

from harness.models.base import CharLanguageModel

SUBSET_ROWS_MIN_VOCAB = 256


IGNORE_INDEX = -100  # F.cross_entropy's default: targets that are not scored


class _TablePairNLL(torch.autograd.Function):
    """Mean NLL of (row, next-token) pairs against a logits table, one pass forward and one back.

    Equal to ``cross_entropy`` over the positions the pairs came from: each row's log-sum-exp is
    counted once per occurrence of that row, and each pair's logit is subtracted once. Pairs come as
    flat indices into the table (large tables) or as a dense count matrix (small ones, fewer ops).
    Dense counts may carry leading dimensions, one table per stacked seed (harness/train/stacking.py): the loss
    then has those dimensions, one mean per table.
    """

    @staticmethod
    def forward(ctx, table, row_counts, pairs, n_positions):
        lse = torch.logsumexp(table, dim=-1)
        dense = pairs.dtype != torch.long
        picked = (pairs * table).sum(dim=(-2, -1)) if dense else table.reshape(-1).index_select(0, pairs).sum()
        ctx.save_for_backward(table, lse, row_counts, pairs)
        ctx.n_positions = n_positions
        return ((row_counts * lse).sum(dim=-1) - picked) / n_positions

    @staticmethod
    def backward(ctx, grad_output):
        table, lse, row_counts, pairs = ctx.saved_tensors
        n = ctx.n_positions
        grad = torch.exp(table - lse[..., None]).mul_((row_counts / n)[..., None])
        if pairs.dtype != torch.long:
            grad.sub_(pairs, alpha=1.0 / n)
        else:
            grad.view(-1).index_add_(0, pairs, torch.full(pairs.shape, -1.0 / n, dtype=grad.dtype, device=grad.device))
        return grad * grad_output[..., None, None], None, None, None


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Softmax statistics in fp32 under bf16 autocast; fp64 stays fp64 (the exactness tests use it)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


DENSE_PAIRS_MAX_CELLS = 1 << 16  # up to a 256-token vocabulary, count pairs densely (fewer, cheaper ops)


def table_pair_loss(table: torch.Tensor, pair_counts: torch.Tensor, n_positions: int) -> torch.Tensor:
    """Mean NLL from a full (vocab x vocab) logits table and the batch's dense pair counts; with a leading
    dimension on both, (S, vocab, vocab), one mean per table: (S,)."""
    table = _at_least_fp32(table)
    pair_counts = pair_counts.to(table.dtype)
    return _TablePairNLL.apply(table, pair_counts.sum(dim=-1), pair_counts, n_positions)


def count_ids(ids: torch.Tensor, size: int, sync_free: bool) -> torch.Tensor:
    """How often each of ``size`` ids occurs in ``ids``, as float32.

    ``torch.bincount`` reads the largest id back to the host to size its output, a sync per call on a GPU;
    ``sync_free`` counts with ``index_add_`` into a fixed-size buffer instead (counts below 2**24 are exact
    in float32, so the order of the atomic adds does not matter). On a CPU bincount is faster and syncs nothing.
    """
    if not sync_free:
        return torch.bincount(ids, minlength=size).to(torch.float32)
    ones = torch.ones(ids.shape, dtype=torch.float32, device=ids.device)
    return torch.zeros(size, dtype=torch.float32, device=ids.device).index_add_(0, ids, ones)


def batch_loss_fast(
    model: CharLanguageModel, x: torch.Tensor, y: torch.Tensor, vocab: int, subset_rows: bool, sync_free: bool = False
) -> torch.Tensor:
    """The batch loss from a logits table over the batch's distinct tokens (or all ``vocab`` tokens).

    ``subset_rows`` finds the distinct tokens with ``nonzero``, a host sync: only for a CPU."""
    row_counts = count_ids(x.reshape(-1), vocab, sync_free)
    if subset_rows:
        present = row_counts > 0
        tokens = present.nonzero().squeeze(1)
        rows = (present.cumsum(0) - 1)[x]
        table = model.logits_for_tokens(tokens)
        row_counts = row_counts[tokens]
    else:
        rows = x
        table = model.logits_table()
    pairs = (rows * vocab + y).reshape(-1)
    table = _at_least_fp32(table)
    return _TablePairNLL.apply(table, row_counts.to(table.dtype), pairs, x.numel())


def pair_counts(data: torch.Tensor, vocab: int) -> torch.Tensor:
    """Matrix of (current, next) occurrences in ``data``."""
    flat = data[:-1] * vocab + data[1:]
    return torch.bincount(flat, minlength=vocab * vocab).view(vocab, vocab).to(torch.float32)


def bigram_floor(counts: torch.Tensor) -> float:
    """H(next | current) in nats: the lowest loss any model that sees only the current token can reach."""
    row_totals = counts.sum(dim=1, keepdim=True)
    nz = counts > 0
    conditional = counts[nz] / row_totals.expand_as(counts)[nz]
    return float(-(counts[nz] * conditional.log()).sum() / counts.sum())
