"""Split losses: exact ones from pair counts, fixed evaluation windows for context models, and loss noise.

Every variant, evaluation and seed scores the same windows (``tile_windows`` for val, ``sample_windows`` with
``EVAL_SEED`` for train), so their curves compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.models.base import CharLanguageModel
from harness.train.losses import IGNORE_INDEX

# loss_noise: a centred moving average of LOSS_NOISE_WINDOW steps over the last 10% of the steps, which
# must hold LOSS_NOISE_MIN_WINDOWS windows; shorter runs get NaN (too few residuals to mean anything).
LOSS_NOISE_WINDOW = 51
LOSS_NOISE_MIN_WINDOWS = 3
LOSS_NOISE_MIN_STEPS = 10 * LOSS_NOISE_MIN_WINDOWS * LOSS_NOISE_WINDOW  # 1,530
# Evaluation of context models: the train windows are drawn with this seed (never train.seed), and windows
# are scored in batches of about this many tokens (a batch size independent of train.batch_size).
EVAL_SEED = 0
EVAL_BATCH_TOKENS = 1 << 14
# None: every val token is scored at every evaluation. A number caps the scored tokens of each split (val then
# takes a fixed, seeded subset of its windows too): one evaluation of the whole tinyshakespeare val split costs
# about 470 training steps of the ladder's small GPT, so ~50 evaluations can outweigh the training itself.
EVAL_MAX_TOKENS: int | None = None


@torch.no_grad()
def exact_loss(model: CharLanguageModel, counts: torch.Tensor) -> float:
    """The mean next-token loss over every position of a split, from its pair counts."""
    table = model.logits_table().float()
    logp = F.log_softmax(table, dim=-1)
    return float(-(counts * logp).sum() / counts.sum())


def loss_noise(step_losses: torch.Tensor, window: int = LOSS_NOISE_WINDOW) -> float:
    """Std of per-step minibatch loss around its centred moving average, over the last 10% of steps.

    The write-up judged batch-size oscillation from a plot; this makes it a number. NaN when the last 10%
    holds fewer than ``LOSS_NOISE_MIN_WINDOWS`` windows (runs shorter than ``LOSS_NOISE_MIN_STEPS`` at the
    default window): a std of a handful of residuals says nothing.
    """
    tail = step_losses[len(step_losses) - len(step_losses) // 10 :].double()
    if len(tail) < LOSS_NOISE_MIN_WINDOWS * window:
        return float("nan")
    kernel = torch.ones(1, 1, window, dtype=tail.dtype) / window
    smooth = F.conv1d(tail.view(1, 1, -1), kernel).view(-1)
    half = window // 2
    residual = tail[half : len(tail) - half] - smooth
    return float(residual.std())


# -- evaluation windows of context models ----------------------------------------------------------


@dataclass(frozen=True)
class EvalWindows:
    """Windows of one split: inputs ``data[s : s + length]``, targets one token later, and in each window
    only the targets from offset ``first`` on are scored (the others are context)."""

    starts: torch.Tensor  # (n,) long
    first: torch.Tensor  # (n,) long, in [0, length)
    length: int

    @property
    def tokens(self) -> int:
        """How many targets the windows score."""
        return int((self.length - self.first).sum())


def eval_stride(context_length: int, scoring: str) -> int:
    """Window spacing of a scoring scheme: consecutive windows, or every half window."""
    return context_length if scoring == "all-positions" else math.ceil(context_length / 2)


def tile_windows(n_tokens: int, context_length: int, stride: int | None = None) -> EvalWindows:
    """Every target of a split scored exactly once, in windows of ``T = context_length`` every ``stride`` tokens.

    The last window is aligned to the end of the split. Each window scores the targets that the windows
    before it did not: its last ``stride`` targets (more in the last one). With ``stride = T`` (the default)
    that is every target of consecutive windows; with ``ceil(T/2)``, the second half of each window, so each
    scored target has >= T/2 tokens of context. The first window scores all its targets: the split's first
    tokens have no more context to give. A split shorter than ``T + 1`` tokens is one shorter window.
    """
    n_targets = n_tokens - 1
    length = min(context_length, n_targets)
    if length < 1:
        raise ValueError(f"a split of {n_tokens} token(s) has nothing to score")
    stride = min(stride or length, length)
    last = n_targets - length
    starts = torch.tensor([*range(0, last, stride), last], dtype=torch.long)
    # window s predicts the tokens at s+1 .. s+length; the window before it scored up to (previous s) + length
    first = torch.cat([starts.new_zeros(1), starts[:-1] + length - starts[1:]])
    return EvalWindows(starts, first, length)


def sample_windows(
    n_tokens: int, context_length: int, n_scored: int, seed: int = EVAL_SEED, stride: int | None = None
) -> EvalWindows:
    """A fixed subset of ``tile_windows`` of a split scoring ``n_scored`` targets (train's match to val).

    The windows are interior tiles (each scores its last ``stride`` targets) drawn with ``seed``, in order of
    start; the last one drawn scores only as many of its last targets as complete ``n_scored``. A split with
    too few tiles gives all of its tiles.
    """
    tiles = tile_windows(n_tokens, context_length, stride)
    per_tile = min(stride or tiles.length, tiles.length)
    interior = torch.arange(1, len(tiles.starts) - 1)
    needed = math.ceil(n_scored / per_tile)
    if needed > len(interior):
        return tiles
    picked = interior[torch.randperm(len(interior), generator=torch.Generator().manual_seed(seed))[:needed]]
    picked, _ = picked.sort()
    first = torch.full((needed,), tiles.length - per_tile, dtype=torch.long)
    first[-1] = tiles.length - (n_scored - per_tile * (needed - 1))
    return EvalWindows(tiles.starts[picked], first, tiles.length)


def windows_loss(
    model: CharLanguageModel, data: torch.Tensor, windows: EvalWindows, batch_tokens: int = EVAL_BATCH_TOKENS
) -> float:
    """Mean next-token loss over the scored targets of ``windows``, in fixed batches (no_grad is the caller's)."""
    length = windows.length
    view = data.as_strided((len(data) - length, length + 1), (1, 1))
    starts, first = windows.starts.to(data.device), windows.first.to(data.device)
    offsets = torch.arange(length, device=data.device)
    rows = max(1, batch_tokens // length)
    total = torch.zeros((), dtype=torch.float64, device=data.device)
    for i in range(0, len(starts), rows):
        chunk = view.index_select(0, starts[i : i + rows])
        x, y = chunk[:, :-1], chunk[:, 1:]
        logits, _ = model(x)
        if logits.shape[:2] != x.shape:
            raise RuntimeError(
                f"{type(model).__name__}.forward(idx) returned logits of shape {tuple(logits.shape)} for input "
                f"{tuple(x.shape)}: evaluation needs logits at every position"
            )
        y = y.masked_fill(offsets < first[i : i + rows, None], IGNORE_INDEX)
        logits = logits.float().reshape(-1, logits.shape[-1])
        losses = F.cross_entropy(logits, y.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none")
        total += losses.double().sum()  # ignored targets add 0
    return float(total) / windows.tokens


# -- the loss strategies ----------------------------------------------------------------------------
