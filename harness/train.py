"""One training loop for every variant, so that comparisons stay fair.

The fast path: a bigram or FFN output at a position depends only on the token there, so the loss over
B x T positions equals a loss over a (distinct token x vocab) logits table weighted by how often each
(current, next) pair occurs in the batch. The same holds for the whole split, which makes the logged
``train_loss``/``val_loss`` exact (no sampled estimate) and gives the bigram floor H(next | current).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from harness.config import ADDED_V2, EXECUTION
from harness.data import Corpus, get_batch
from harness.models import CharLanguageModel

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
PRECISION_CHOICES = ("fp32", "bf16")
MAX_CURVE_POINTS = 2000
MIN_EVALUATIONS = 50
SUBSET_ROWS_MIN_VOCAB = 256


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
    eval_interval: int | None = field(default=None, metadata=EXECUTION)
    device: str = field(default="auto", metadata=EXECUTION)
    fast_path: bool = field(default=True, metadata=EXECUTION)
    compile: bool = field(default=False, metadata=EXECUTION)
    threads: int = field(default=0, metadata=EXECUTION)  # torch CPU threads; 0 = torch's default
    checkpoint_interval: int = field(default=0, metadata=EXECUTION)  # steps between checkpoints; 0 = none

    def problems(self) -> list[tuple[str, str]]:
        found = []
        for key in ("steps", "batch_size", "context_length", "eval_interval"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                found.append((key, f"must be >= 1, got {getattr(self, key)}"))
        if not self.lr > 0:
            found.append(("lr", f"must be > 0, got {self.lr}"))
        if self.weight_decay < 0:
            found.append(("weight_decay", f"must be >= 0, got {self.weight_decay}"))
        base_device = self.device.split(":")[0]
        if base_device not in DEVICE_CHOICES:
            found.append(("device", f"unknown device {self.device!r}; choices: {', '.join(DEVICE_CHOICES)} (or cuda:N)"))
        if self.precision not in PRECISION_CHOICES:
            found.append(("precision", f"unknown precision {self.precision!r}; choices: {', '.join(PRECISION_CHOICES)}"))
        if self.threads < 0 or self.checkpoint_interval < 0:
            key = "threads" if self.threads < 0 else "checkpoint_interval"
            found.append((key, f"must be >= 0, got {getattr(self, key)}"))
        return found


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
    """

    @staticmethod
    def forward(ctx, table, row_counts, pairs, n_positions):
        lse = torch.logsumexp(table, dim=-1)
        dense = pairs.dtype != torch.long
        picked = (pairs * table).sum() if dense else table.reshape(-1).index_select(0, pairs).sum()
        ctx.save_for_backward(table, lse, row_counts, pairs)
        ctx.n_positions = n_positions
        return ((row_counts * lse).sum() - picked) / n_positions

    @staticmethod
    def backward(ctx, grad_output):
        table, lse, row_counts, pairs = ctx.saved_tensors
        n = ctx.n_positions
        grad = torch.exp(table - lse[:, None]).mul_((row_counts / n)[:, None])
        if pairs.dtype != torch.long:
            grad.sub_(pairs, alpha=1.0 / n)
        else:
            grad.view(-1).index_add_(0, pairs, torch.full(pairs.shape, -1.0 / n, dtype=grad.dtype, device=grad.device))
        return grad * grad_output, None, None, None


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Softmax statistics in fp32 under bf16 autocast; fp64 stays fp64 (the exactness tests use it)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


DENSE_PAIRS_MAX_CELLS = 1 << 16  # up to a 256-token vocabulary, count pairs densely (fewer, cheaper ops)


def table_pair_loss(table: torch.Tensor, pair_counts: torch.Tensor, n_positions: int) -> torch.Tensor:
    """Mean NLL from a full (vocab x vocab) logits table and the batch's dense pair counts."""
    table = _at_least_fp32(table)
    pair_counts = pair_counts.to(table.dtype)
    return _TablePairNLL.apply(table, pair_counts.sum(dim=1), pair_counts, n_positions)


def batch_loss_fast(model: CharLanguageModel, x: torch.Tensor, y: torch.Tensor, vocab: int, subset_rows: bool) -> torch.Tensor:
    """The batch loss from a logits table over the batch's distinct tokens (or all ``vocab`` tokens)."""
    row_counts = torch.bincount(x.reshape(-1), minlength=vocab)
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


def exact_loss(model: CharLanguageModel, counts: torch.Tensor) -> float:
    """The mean next-token loss over every position of a split, from its pair counts."""
    table = model.logits_table().float()
    logp = F.log_softmax(table, dim=-1)
    return float(-(counts * logp).sum() / counts.sum())


def loss_noise(step_losses: torch.Tensor, window: int = 51) -> float:
    """Std of per-step minibatch loss around its centred moving average, over the last 10% of steps.

    The write-up judged batch-size oscillation from a plot; this makes it a number.
    """
    tail = step_losses[-max(len(step_losses) // 10, 3):].double()
    window = min(window, len(tail) if len(tail) % 2 else len(tail) - 1)
    if window < 3:
        return float("nan")
    kernel = torch.ones(1, 1, window, dtype=tail.dtype) / window
    smooth = F.conv1d(tail.view(1, 1, -1), kernel).view(-1)
    half = window // 2
    residual = tail[half : len(tail) - half] - smooth
    return float(residual.std()) if len(residual) > 1 else float("nan")


@dataclass
class TrainState:
    """Everything a checkpoint must hold to resume bit-for-bit."""

    step: int
    step_losses: torch.Tensor  # per-step minibatch loss, on the training device


class Trainer:
    """Trains one model on one corpus; ``run`` returns the final metrics."""

    def __init__(self, model: CharLanguageModel, corpus: Corpus, config: TrainConfig, device: torch.device):
        self.config = config
        self.device = device
        self.model = model.to(device)
        self.vocab = corpus.tokenizer.vocab_size
        self.train_data = corpus.train.to(device)
        self.val_data = corpus.val.to(device)
        fused = device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=fused
        )
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self.exact = model.position_wise  # exact eval is a property of the model, not of the step
        # On a CPU, a table row of a large vocabulary costs more than finding the batch's distinct tokens.
        self.subset_rows = device.type == "cpu" and self.vocab >= SUBSET_ROWS_MIN_VOCAB
        self.train_counts = pair_counts(self.train_data, self.vocab) if model.position_wise else None
        self.val_counts = pair_counts(self.val_data, self.vocab) if model.position_wise else None
        self.state = TrainState(0, torch.zeros(config.steps, device=device))
        self.params = [p for p in model.parameters() if p.requires_grad]
        # Every window of the train split as a strided view: a batch is one index_select of B rows.
        T = config.context_length
        self.n_windows = len(self.train_data) - T
        self.windows = self.train_data.as_strided((self.n_windows, T + 1), (1, 1))
        self.dense_pairs = config.fast_path and self.exact and not self.subset_rows and self.vocab**2 <= DENSE_PAIRS_MAX_CELLS
        if self.dense_pairs:  # the same windows as (current, next) pair ids, for a bincount per batch
            ids = (self.train_data[:-1] * self.vocab + self.train_data[1:]).to(torch.int32)
            self.pair_windows = ids.as_strided((self.n_windows, T), (1, 1))
        if config.compile:  # both entry points of the fast path, and forward for the direct one
            model.logits_for_tokens = torch.compile(model.logits_for_tokens, dynamic=True)
            model.logits_table = torch.compile(model.logits_table)

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

    def sample_starts(self) -> torch.Tensor:
        """Window starts as ``get_batch`` draws them: same generator, same batches."""
        return torch.randint(self.n_windows, (self.config.batch_size,), generator=self.generator, device=self.device)

    def step_loss(self, starts: torch.Tensor) -> torch.Tensor:
        """The minibatch loss of the windows at ``starts``: fast path or the write-up's direct one."""
        with self._autocast():
            if self.dense_pairs:
                pairs = self.pair_windows.index_select(0, starts).view(-1)
                counts = torch.bincount(pairs, minlength=self.vocab**2).view(self.vocab, self.vocab).to(torch.float32)
                return table_pair_loss(self.model.logits_table(), counts, pairs.numel())
            chunk = self.windows.index_select(0, starts)
            x, y = chunk[:, :-1], chunk[:, 1:]
            if self.config.fast_path and self.model.position_wise:
                return batch_loss_fast(self.model, x, y, self.vocab, self.subset_rows)
            _, loss = self.model(x, y)
            return loss.float()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Train and val loss: exact from pair counts when the model allows it, else sampled."""
        self.model.eval()
        try:
            with self._autocast():
                if self.exact:
                    return {
                        "train_loss": exact_loss(self.model, self.train_counts),
                        "val_loss": exact_loss(self.model, self.val_counts),
                    }
                eval_gen = torch.Generator(device=self.device).manual_seed(self.config.seed + 1)
                out = {}
                for key, data in (("train_loss", self.train_data), ("val_loss", self.val_data)):
                    losses = [
                        self.model(*get_batch(data, self.config.batch_size, self.config.context_length, eval_gen))[1]
                        for _ in range(50)
                    ]
                    out[key] = float(torch.stack(losses).float().mean())
                return out
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
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "step": self.state.step,
            "step_losses": self.state.step_losses.cpu(),
        }

    def load_state_dict(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.generator.set_state(saved["generator"])
        self.state = TrainState(saved["step"], saved["step_losses"].to(self.device))

    # -- the loop -------------------------------------------------------------------------------
    def run(
        self,
        metrics: MetricSink,
        on_progress: Callable[[int, float], None] = lambda done, loss: None,
        on_checkpoint: Callable[["Trainer"], None] | None = None,
    ) -> dict[str, float]:
        """Train from ``self.state.step`` to ``config.steps``; log curves; return final metrics."""
        cfg = self.config
        if self.state.step == 0:
            self._log_eval(metrics, 0)
        start_step = self.state.step
        started = time.perf_counter()
        last_logged_batch = start_step
        for i in range(start_step, cfg.steps):
            loss = self.step_loss(self.sample_starts())
            for p in self.params:  # zero_grad(set_to_none=True) without its per-call overhead
                p.grad = None
            loss.backward()
            self.optimizer.step()
            self.state.step_losses[i] = loss.detach()
            done = i + 1
            self.state.step = done
            if done % self.eval_every == 0 or done == cfg.steps:
                self._log_batch_losses(metrics, last_logged_batch, done)
                last_logged_batch = done
                evaluated = self._log_eval(metrics, done)
                on_progress(done, evaluated["train_loss"])
                if on_checkpoint and cfg.checkpoint_interval and (
                    done // cfg.checkpoint_interval > (done - self.eval_every) // cfg.checkpoint_interval
                ) and done < cfg.steps:
                    on_checkpoint(self)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        final = self.evaluate()
        trained_steps = cfg.steps - start_step
        result = {
            "final_train_loss": final["train_loss"],
            "final_val_loss": final["val_loss"],
            "train_time_s": elapsed,
            "steps_per_s": trained_steps / elapsed if elapsed > 0 else float("nan"),
            "tokens_per_s": trained_steps * cfg.batch_size * cfg.context_length / elapsed if elapsed > 0 else float("nan"),
            "loss_noise": loss_noise(self.state.step_losses.cpu()),
        }
        if self.train_counts is not None:
            floor = bigram_floor(self.train_counts)
            result["bigram_floor"] = floor
            result["excess_loss"] = final["train_loss"] - floor
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

    def _log_eval(self, metrics: MetricSink, step: int) -> dict[str, float]:
        evaluated = self.evaluate()
        for key, value in evaluated.items():
            if not math.isfinite(value):
                raise DivergedError(f"{key} became {value} at step {step} (lr={self.config.lr}); lower train.lr")
            metrics.log(key, value, step)
        return evaluated
