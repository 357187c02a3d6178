"""One training loop for every variant, so that comparisons stay fair.

How a batch and a split are scored is one strategy object, picked from the model's ``position_wise``:

- ``PairTableLoss`` (bigram, FFN: the output at a position depends only on the token there). The loss over
  B x T positions equals a loss over a (distinct token x vocab) logits table weighted by how often each
  (current, next) pair occurs in the batch. The same holds for a whole split, which makes the logged
  ``train_loss``/``val_loss`` exact (no sampled estimate).
- ``PerPositionLoss`` (models that read context): ``cross_entropy`` over every position of the B x T
  windows, and evaluation on a fixed set of windows (``tile_windows``) that is the same for every variant,
  evaluation and seed.

Every model gets the bigram floor H(next | current) of the train split: the lowest loss a model that sees
only the current token can reach. Models that read context are expected to go below it.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from harness.config import ADDED_V2, EXECUTION
from harness.data import Corpus
from harness.graphs import CapturedStep, CudaGraphs, GraphBackend
from harness.models import CharLanguageModel

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
PRECISION_CHOICES = ("fp32", "bf16")
LR_SCHEDULE_CHOICES = ("constant", "cosine")
MAX_CURVE_POINTS = 2000
MIN_EVALUATIONS = 50
SUBSET_ROWS_MIN_VOCAB = 256
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
EVAL_SCORING_CHOICES = ("all-positions", "second-half")
IGNORE_INDEX = -100  # F.cross_entropy's default: targets that are not scored


@dataclass(frozen=True)
class TrainConfig:
    """The write-up's loop: AdamW at ``lr`` for ``steps`` steps on random windows.

    Keys marked EXECUTION change how a run executes or is observed, not its math, and are not part of
    its identity. ``eval_interval: null`` picks a cadence from ``steps`` (at least ~50 evaluations,
    at most ~2,000 points per curve).
    """

    steps: int = 5000
    batch_size: int = 32
    context_length: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, ...] = field(default=(0.9, 0.999), metadata=ADDED_V2)
    lr_schedule: str = field(default="constant", metadata=ADDED_V2)  # constant | cosine
    warmup_steps: int = field(default=0, metadata=ADDED_V2)  # linear warmup from 0, either schedule
    min_lr: float = field(default=0.0, metadata=ADDED_V2)  # where cosine ends
    grad_clip: float = field(default=0.0, metadata=ADDED_V2)  # max global grad norm; 0 = off
    seed: int = 1337
    precision: str = "fp32"
    # How a context model's train/val loss is scored (bigram/FFN are exact either way). all-positions: every
    # token once, in consecutive windows of context_length, each with the context its position in the window
    # gives (the lecture's estimate_loss averages the same positions over random windows; the quantity the
    # training loss estimates). second-half: windows every context_length/2, scoring only targets with at
    # least half a window of context. Not training math, but it changes what val_loss means: hashed when set.
    eval_scoring: str = field(default="all-positions", metadata=ADDED_V2)
    eval_interval: int | None = field(default=None, metadata=EXECUTION)
    device: str = field(default="auto", metadata=EXECUTION)
    fast_path: bool = field(default=True, metadata=EXECUTION)
    compile: bool = field(default=False, metadata=EXECUTION)
    threads: int = field(default=0, metadata=EXECUTION)  # torch CPU threads; 0 = torch's default
    checkpoint_interval: int = field(default=0, metadata=EXECUTION)  # steps between checkpoints; 0 = none
    # Variants that differ only in train.seed train as one stacked model (harness/stacking.py): true, false,
    # or null (the default) for "where it helps": on a GPU, where a step of these small models is launch-bound
    # (not for a GPT there: vmap over CUDA attention failed on an H200; see harness/sweep.py stacks_seeds).
    stack_seeds: bool | None = field(default=None, metadata=EXECUTION)
    # On a CUDA device, capture a whole training step as a CUDA graph and replay it (harness/graphs.py): one
    # launch per step; 6.7x faster on the seed grid on an H200 (results/bench/grid_gpu.csv). Off by default until
    # the path as fixed since (graphs captured on a thread's own stream) is measured there too; ignored elsewhere.
    cuda_graphs: bool = field(default=False, metadata=EXECUTION)

    def problems(self) -> list[tuple[str, str]]:
        found = []
        for key in ("steps", "batch_size", "context_length", "eval_interval"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                found.append((key, f"must be >= 1, got {getattr(self, key)}"))
        if not self.lr > 0:
            found.append(("lr", f"must be > 0, got {self.lr}"))
        if self.weight_decay < 0:
            found.append(("weight_decay", f"must be >= 0, got {self.weight_decay}"))
        if not _two_betas(self.betas):
            found.append(("betas", f"must be two numbers in [0, 1), got {_as_list(self.betas)}"))
        if self.eval_scoring not in EVAL_SCORING_CHOICES:
            found.append(("eval_scoring", f"unknown scoring {self.eval_scoring!r}; choices: {', '.join(EVAL_SCORING_CHOICES)}"))
        if self.lr_schedule not in LR_SCHEDULE_CHOICES:
            found.append(("lr_schedule", f"unknown schedule {self.lr_schedule!r}; choices: {', '.join(LR_SCHEDULE_CHOICES)}"))
        if self.warmup_steps < 0:
            found.append(("warmup_steps", f"must be >= 0, got {self.warmup_steps}"))
        elif self.warmup_steps and self.steps >= 1 and self.warmup_steps >= self.steps:
            found.append(("warmup_steps", f"must be < steps ({self.steps}), got {self.warmup_steps}"))
        if self.min_lr < 0:
            found.append(("min_lr", f"must be >= 0, got {self.min_lr}"))
        elif self.lr > 0 and self.min_lr > self.lr:
            found.append(("min_lr", f"must be <= lr ({self.lr}), got {self.min_lr}"))
        if self.grad_clip < 0:
            found.append(("grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip}"))
        base_device = self.device.split(":")[0]
        if base_device not in DEVICE_CHOICES:
            found.append(("device", f"unknown device {self.device!r}; choices: {', '.join(DEVICE_CHOICES)} (or cuda:N)"))
        if self.precision not in PRECISION_CHOICES:
            found.append(("precision", f"unknown precision {self.precision!r}; choices: {', '.join(PRECISION_CHOICES)}"))
        if self.threads < 0 or self.checkpoint_interval < 0:
            key = "threads" if self.threads < 0 else "checkpoint_interval"
            found.append((key, f"must be >= 0, got {getattr(self, key)}"))
        return found

    @property
    def scheduled(self) -> bool:
        """Whether the lr changes during the run (otherwise the optimizer keeps ``lr`` and no curve is logged)."""
        return self.lr_schedule != "constant" or self.warmup_steps > 0


def _as_list(value) -> list | object:
    return list(value) if isinstance(value, (list, tuple)) else value


def _two_betas(betas) -> bool:
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        return False
    return all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group's lr; a tensor lr (a CUDA graph reads it from memory) is filled in place."""
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def learning_rate(config: TrainConfig, step: int) -> float:
    """The lr of (0-based) ``step``: a linear warmup from 0 over ``warmup_steps``, then ``lr`` (constant)
    or a half cosine from ``lr`` down to ``min_lr``, which it reaches at the last step (nanoGPT's shape)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / (config.warmup_steps + 1)
    if config.lr_schedule == "constant":
        return config.lr
    span = config.steps - 1 - config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / span) if span > 0 else 1.0
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)


@dataclass(frozen=True)
class SampleConfig:
    """What to generate before and after training (observation only: never part of a run's identity)."""

    prompt: str = field(default=" ", metadata=EXECUTION)
    max_new_tokens: int = field(default=200, metadata=EXECUTION)

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if not self.prompt:
            found.append(("prompt", "must be at least one character"))
        if self.max_new_tokens < 0:
            found.append(("max_new_tokens", f"must be >= 0, got {self.max_new_tokens}"))
        return found


class DivergedError(RuntimeError):
    """The loss stopped being a finite number."""


class MetricSink(Protocol):
    def log(self, key: str, value: float, step: int) -> None: ...


def pick_device(requested: str) -> torch.device:
    """``auto`` means CUDA, then MPS, then CPU; an explicit device that is missing is an error."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is {requested!r} but CUDA is not available here; use auto or cpu")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("train.device is 'mps' but MPS is not available here; use auto or cpu")
    return torch.device(requested)


class _TablePairNLL(torch.autograd.Function):
    """Mean NLL of (row, next-token) pairs against a logits table, one pass forward and one back.

    Equal to ``cross_entropy`` over the positions the pairs came from: each row's log-sum-exp is
    counted once per occurrence of that row, and each pair's logit is subtracted once. Pairs come as
    flat indices into the table (large tables) or as a dense count matrix (small ones, fewer ops).
    Dense counts may carry leading dimensions, one table per stacked seed (harness/stacking.py): the loss
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


def batch_loss_fast(model: CharLanguageModel, x: torch.Tensor, y: torch.Tensor, vocab: int, subset_rows: bool,
                    sync_free: bool = False) -> torch.Tensor:
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


def sample_windows(n_tokens: int, context_length: int, n_scored: int, seed: int = EVAL_SEED,
                   stride: int | None = None) -> EvalWindows:
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


def windows_loss(model: CharLanguageModel, data: torch.Tensor, windows: EvalWindows,
                 batch_tokens: int = EVAL_BATCH_TOKENS) -> float:
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


class PairTableLoss:
    """Position-wise models: a batch's loss from a logits table and its (current, next) pairs; exact
    split losses from the split's pair counts. ``fast_step=False`` (``train.fast_path: false``) keeps the
    exact evaluation but takes each step the write-up's way, ``cross_entropy`` over B x T."""

    def __init__(self, model: CharLanguageModel, train_data: torch.Tensor, windows: torch.Tensor, train_counts: torch.Tensor,
                 val_data: torch.Tensor, vocab: int, device: torch.device, fast_step: bool = True, compile: bool = False,
                 sync_free: bool = False):
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

    def evaluate(self) -> dict[str, float]:
        return {
            "train_loss": exact_loss(self.model, self.train_counts),
            "val_loss": exact_loss(self.model, self.val_counts),
        }


class PerPositionLoss:
    """Models that read context: ``cross_entropy`` over every position of the batch's windows; split
    losses over fixed windows (val: ``tile_windows``, train: ``sample_windows`` with val's token count),
    spaced as ``train.eval_scoring`` says."""

    def __init__(self, model: CharLanguageModel, windows: torch.Tensor, train_data: torch.Tensor,
                 val_data: torch.Tensor, context_length: int, compile: bool = False, max_tokens: int | None = EVAL_MAX_TOKENS,
                 scoring: str = "all-positions"):
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

    def step_loss(self, starts: torch.Tensor) -> torch.Tensor:
        chunk = self.windows.index_select(0, starts)
        _, loss = self.forward(chunk[:, :-1], chunk[:, 1:])
        return loss.float()

    def evaluate(self) -> dict[str, float]:
        return {
            "train_loss": windows_loss(self.model, self.train_data, self.train_windows),
            "val_loss": windows_loss(self.model, self.val_data, self.val_windows),
        }


# -- checkpoints ------------------------------------------------------------------------------------


class CheckpointError(Exception):
    """A checkpoint that cannot be read or trusted; the message names the file and why."""


CHECKPOINT_KEYS = ("model", "optimizer", "generator", "step", "step_losses", "train_time_s")  # + "generator_step"
_PLAIN = (torch.Tensor, str, int, float, bool, type(None))


def _check_plain(value, where: str) -> None:
    """Tensors and plain containers only: what ``torch.load(weights_only=True)`` reads back."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, f"{where} key")
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise CheckpointError(f"checkpoint {where} is a {type(value).__name__}: save only tensors and plain containers")


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` atomically: a reader sees the previous checkpoint or this one, never half of one."""
    _check_plain(state, "state")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint with ``weights_only=True``: a file holding anything but tensors and plain containers
    (a crafted pickle that would run code, a foreign file) raises ``CheckpointError`` and runs nothing."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)  # load_state_dict moves it to the device
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: no such file") from None
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        why = next((line for line in lines if "unsupported" in line.lower()), lines[0] if lines else type(exc).__name__)
        why = why.rstrip(".")
        raise CheckpointError(
            f"checkpoint {path} is not a harness checkpoint (only tensors and plain containers are loaded, "
            f"nothing in it was executed): {why}; delete it to train the variant from the start"
        ) from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(saved).__name__}, not a dict of trainer state")
    return saved


# -- batches ------------------------------------------------------------------------------------------

DRAW_BLOCK_STEPS = 256  # steps of window starts drawn, and copied to the device, at once


class WindowDraws:
    """Each step's window starts as the lecture's ``get_batch`` draws them: ``torch.randint`` on a CPU
    generator seeded with ``train.seed``, on every device.

    Why the CPU: a CUDA generator (Philox) draws other numbers than a CPU one (Mersenne Twister) from the same
    seed, and ``train.device`` is not part of a run's identity, so a run must train on the same batches
    wherever it runs; its checkpoint then resumes on any device too. Starts are drawn DRAW_BLOCK_STEPS steps at
    a time (one ``randint`` of (k, B) draws what k draws of (B,) draw, tests/test_train.py) and copied to the
    device once per block, without waiting, so a step never waits for the host.
    """

    def __init__(self, n_windows: int, batch_size: int, seed: int, device: torch.device):
        self.n_windows = n_windows
        self.batch_size = batch_size
        self.device = device
        self.generator = torch.Generator().manual_seed(seed)
        self.drawn_to = 0  # the step whose starts the generator draws next
        self._resume_point = (0, self.generator.get_state())  # (step, generator state) of the last draw, or the start
        self._block: torch.Tensor | None = None
        self._block_start = 0

    def __call__(self, step: int) -> torch.Tensor:
        """The (batch_size,) window starts of step ``step`` (0-based), on the device."""
        offset = step - self._block_start
        if self._block is None or not 0 <= offset < len(self._block):
            self._draw_from(step)
            offset = 0
        return self._block[offset]

    def _draw_from(self, step: int) -> None:
        if step < self.drawn_to:
            raise ValueError(f"window starts of step {step} were drawn already (the generator is at step "
                             f"{self.drawn_to}); draws only go forward")
        self._resume_point = (self.drawn_to, self.generator.get_state())
        drawn = torch.randint(self.n_windows, (step - self.drawn_to + DRAW_BLOCK_STEPS, self.batch_size),
                              generator=self.generator)
        self.drawn_to += len(drawn)
        block = drawn[len(drawn) - DRAW_BLOCK_STEPS:]  # the rows before ``step`` belong to steps already trained
        if self.device.type == "cuda":  # pinned: the copy runs behind the queued steps instead of waiting for them
            block = block.pin_memory().to(self.device, non_blocking=True)
        else:
            block = block.to(self.device)
        self._block, self._block_start = block, step

    def state_dict(self) -> dict:
        """A step at or before the current one and the generator's state there (a resume redraws from it)."""
        step, state = self._resume_point
        return {"generator": state, "generator_step": step}

    def load_state_dict(self, saved: dict) -> None:
        """``generator_step`` is absent from checkpoints older than block draws: their state is at ``step``."""
        state = saved["generator"]
        if state.numel() != self.generator.get_state().numel():
            raise CheckpointError(
                f"checkpoint: its batch generator state is not a CPU generator's ({state.numel()} bytes); it was "
                "written on a GPU by a harness that drew batches there, and cannot resume the same batches; "
                "delete it to train the variant from the start"
            )
        self.generator.set_state(state)
        self.drawn_to = int(saved.get("generator_step", saved["step"]))
        self._resume_point = (self.drawn_to, state)
        self._block = None


# -- the trainer ------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """Everything a checkpoint must hold to resume bit-for-bit."""

    step: int
    step_losses: torch.Tensor  # per-step minibatch loss, on the training device
    train_time_s: float = 0.0  # training wall time of the steps so far, summed over resumes


class Trainer:
    """Trains one model on one corpus; ``run`` returns the final metrics."""

    def __init__(self, model: CharLanguageModel, corpus: Corpus, config: TrainConfig, device: torch.device,
                 sync_free: bool | None = None, graphs: GraphBackend | None = None):
        """``sync_free`` (default: on any device but a CPU): a training step never waits for the device, so
        that a GPU runs ahead of Python. Window starts are copied to the device in blocks, and the loss is
        read back only at evaluations, in blocks.

        ``graphs``: capture the step as a graph and replay it (default: ``CudaGraphs`` when
        ``config.cuda_graphs`` and the device is CUDA; tests pass a CPU stand-in). Implies ``sync_free``.
        """
        self.config = config
        self.device = device
        if graphs is None and config.cuda_graphs and device.type == "cuda":
            graphs = CudaGraphs()
        self.graph_backend = graphs
        self.sync_free = (device.type != "cpu" if sync_free is None else sync_free) or graphs is not None
        self.model = model.to(device)
        self.vocab = corpus.tokenizer.vocab_size
        self.train_data = corpus.train.to(device)
        self.val_data = corpus.val.to(device)
        fused = device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.AdamW(  # a graph replays the lr it finds in memory, and AdamW's step count there
            model.parameters(), lr=self._lr_value(config.lr), betas=tuple(config.betas), weight_decay=config.weight_decay,
            fused=fused, capturable=graphs is not None,
        )
        self.train_counts = pair_counts(self.train_data, self.vocab)  # the bigram floor, for every model
        self.state = TrainState(0, torch.zeros(config.steps, device=device))
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.captured = None
        if graphs is not None:  # the graph reads each step's batch from one buffer that train_step refreshes
            self._starts = torch.empty(config.batch_size, dtype=torch.long, device=device)
            self.captured = CapturedStep(lambda: self._update(self._starts), self.params, graphs)
        # Every window of the train split as a strided view: a batch is one index_select of B rows.
        T = config.context_length
        self.n_windows = len(self.train_data) - T
        self.windows = self.train_data.as_strided((self.n_windows, T + 1), (1, 1))
        self.draws = WindowDraws(self.n_windows, config.batch_size, config.seed, device)
        if model.position_wise:
            self.loss = PairTableLoss(model, self.train_data, self.windows, self.train_counts, self.val_data, self.vocab, device,
                                      fast_step=config.fast_path, compile=config.compile, sync_free=self.sync_free)
        else:
            self.loss = PerPositionLoss(model, self.windows, self.train_data, self.val_data, T, compile=config.compile,
                                        scoring=config.eval_scoring)

    # -- schedule -------------------------------------------------------------------------------
    @property
    def eval_every(self) -> int:
        """``eval_interval`` (default: ~MIN_EVALUATIONS per run), widened so that no curve exceeds ~MAX_CURVE_POINTS."""
        chosen = self.config.eval_interval or max(1, self.config.steps // MIN_EVALUATIONS)
        return max(chosen, math.ceil(self.config.steps / MAX_CURVE_POINTS))

    @property
    def batch_loss_stride(self) -> int:
        return max(1, math.ceil(self.config.steps / MAX_CURVE_POINTS))

    # -- pieces ---------------------------------------------------------------------------------
    def _autocast(self):
        if self.config.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()  # fp32: not even a disabled autocast on the hot path

    def sample_starts(self, step: int) -> torch.Tensor:
        """Step ``step``'s window starts, as ``get_batch`` draws them (``WindowDraws``)."""
        return self.draws(step)

    def step_loss(self, starts: torch.Tensor) -> torch.Tensor:
        """The minibatch loss of the windows at ``starts``, as the loss strategy computes it."""
        with self._autocast():
            return self.loss.step_loss(starts)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Train and val loss: exact for position-wise models, over fixed windows for the others."""
        self.model.eval()
        try:
            with self._autocast():
                return self.loss.evaluate()
        finally:
            self.model.train()

    @torch.no_grad()
    def sample(self, tokenizer, prompt: str, max_new_tokens: int) -> str:
        self.model.eval()
        try:
            idx = tokenizer.encode_tensor(prompt).to(self.device).view(1, -1)
            gen = torch.Generator(device=self.device).manual_seed(self.config.seed)
            return tokenizer.decode(self.model.generate(idx, max_new_tokens, gen)[0].tolist())
        finally:
            self.model.train()

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Tensors and plain containers only (see ``save_checkpoint``)."""
        optimizer = self.optimizer.state_dict()  # the lr as a number: the checkpoint resumes with or without graphs
        optimizer["param_groups"] = [{**group, "lr": float(group["lr"])} for group in optimizer["param_groups"]]
        return {
            "model": self.model.state_dict(),
            "optimizer": optimizer,
            **self.draws.state_dict(),  # "generator", "generator_step"
            "step": self.state.step,
            "step_losses": self.state.step_losses.cpu(),
            "train_time_s": self.state.train_time_s,
        }

    def load_state_dict(self, saved: dict) -> None:
        missing = [key for key in CHECKPOINT_KEYS if key not in saved]
        if missing:
            raise CheckpointError(f"checkpoint lacks {', '.join(missing)}; it was not written by this harness's Trainer")
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        for group in self.optimizer.param_groups:  # this trainer's way of running AdamW, not the writer's
            group["capturable"] = self.graph_backend is not None
            group["lr"] = self._lr_value(group["lr"])
        self.draws.load_state_dict(saved)
        self.state = TrainState(saved["step"], saved["step_losses"].to(self.device), float(saved["train_time_s"]))

    # -- the loop -------------------------------------------------------------------------------
    def train_step(self, i: int) -> None:
        """Step ``i`` (0-based): one AdamW update; its minibatch loss stays on the device in ``step_losses``.

        With ``sync_free`` nothing here waits for the device (tests/test_train.py records the ops to check).
        """
        if self.config.scheduled:
            set_lr(self.optimizer, learning_rate(self.config, i))
        if self.captured is None:
            for p in self.params:  # zero_grad(set_to_none=True) without its per-call overhead
                p.grad = None
            self.state.step_losses[i] = self._update(self.sample_starts(i))
        else:  # the graph reads its batch from one static buffer
            self._starts.copy_(self.sample_starts(i))
            self.state.step_losses[i] = self.captured()

    def _update(self, starts: torch.Tensor) -> torch.Tensor:
        """Forward, backward, clipping and AdamW on the windows at ``starts``: what a graph captures."""
        loss = self.step_loss(starts)
        loss.backward()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.optimizer.step()
        return loss.detach()

    def _lr_value(self, lr: float) -> float | torch.Tensor:
        return torch.tensor(float(lr), device=self.device) if self.graph_backend is not None else float(lr)

    def run(
        self,
        metrics: MetricSink,
        on_progress: Callable[[int, float], None] = lambda done, loss: None,
        on_checkpoint: Callable[["Trainer"], None] | None = None,
    ) -> dict[str, float]:
        """Train from ``self.state.step`` to ``config.steps``; log curves; return final metrics.

        ``on_checkpoint`` is called after every ``checkpoint_interval``-th step (not after the last: the
        finished run supersedes it), with every point up to that step already given to ``metrics``.
        """
        cfg = self.config
        evaluated = self._log_eval(metrics, 0) if self.state.step == 0 else None
        start_step = self.state.step
        time_before = self.state.train_time_s
        started = time.perf_counter()
        last_logged_batch = start_step
        checkpoint_every = cfg.checkpoint_interval if on_checkpoint else 0
        for i in range(start_step, cfg.steps):
            self.train_step(i)
            done = i + 1
            self.state.step = done
            if done % self.eval_every == 0 or done == cfg.steps:
                self._log_batch_losses(metrics, last_logged_batch, done)
                last_logged_batch = done
                evaluated = self._log_eval(metrics, done)
                on_progress(done, evaluated["train_loss"])
            if checkpoint_every and done % checkpoint_every == 0 and done < cfg.steps:
                self._log_batch_losses(metrics, last_logged_batch, done)  # a resume starts logging after `done`
                last_logged_batch = done
                self.state.train_time_s = time_before + time.perf_counter() - started
                on_checkpoint(self)
        if self.device.type == "cuda":  # this run's stream only: other threads' runs may share the device
            torch.cuda.current_stream(self.device).synchronize()
        self.state.train_time_s = time_before + time.perf_counter() - started
        return self.final_metrics(evaluated if evaluated is not None else self.evaluate())  # the last step was just evaluated

    def final_metrics(self, final: dict[str, float]) -> dict[str, float]:
        """The run's summary from its last evaluation and ``state`` (time, per-step losses)."""
        cfg = self.config
        elapsed = self.state.train_time_s
        result = {
            "final_train_loss": final["train_loss"],
            "final_val_loss": final["val_loss"],
            "eval_tokens": self.loss.eval_tokens,
            "train_time_s": elapsed,
            "steps_per_s": cfg.steps / elapsed if elapsed > 0 else float("nan"),
            "tokens_per_s": cfg.steps * cfg.batch_size * cfg.context_length / elapsed if elapsed > 0 else float("nan"),
            "loss_noise": loss_noise(self.state.step_losses.cpu()),
        }
        floor = bigram_floor(self.train_counts)
        result["bigram_floor"] = floor
        result["excess_loss"] = final["train_loss"] - floor  # negative: the model beats any context-free one
        return result

    def _log_batch_losses(self, metrics: MetricSink, start: int, end: int) -> None:
        chunk = self.state.step_losses[start:end].cpu()
        if not torch.isfinite(chunk).all():
            bad = int((~torch.isfinite(chunk)).nonzero()[0])
            raise DivergedError(
                f"train loss became {float(chunk[bad])} at step {start + bad + 1} "
                f"(lr={self.config.lr}); lower train.lr"
            )
        stride = self.batch_loss_stride
        for step in range(start + 1, end + 1):
            if step % stride == 0 or step == self.config.steps:
                metrics.log("batch_loss", float(chunk[step - start - 1]), step)
                if self.config.scheduled:
                    metrics.log("lr", learning_rate(self.config, step - 1), step)

    def _log_eval(self, metrics: MetricSink, step: int) -> dict[str, float]:
        evaluated = self.evaluate()
        for key, value in evaluated.items():
            if not math.isfinite(value):
                raise DivergedError(f"{key} became {value} at step {step} (lr={self.config.lr}); lower train.lr")
            metrics.log(key, value, step)
        return evaluated
