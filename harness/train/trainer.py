"""One training loop for every variant, so that comparisons stay fair: ``Trainer.run`` returns the final metrics.

How a batch and a split are scored is a strategy (harness.train.scoring). Every model gets the bigram floor
H(next | current) of the train split: the lowest loss a model that sees only the current token can reach.
Models that read context are expected to go below it.
"""

from __future__ import annotations

import contextlib
import math
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from harness.data.corpora import Corpus
from harness.models.base import CharLanguageModel
from harness.models.sampling import sample_texts
from harness.train.checkpoint import CHECKPOINT_KEYS, CheckpointError
from harness.train.config import MAX_CURVE_POINTS, MIN_EVALUATIONS, TrainConfig
from harness.train.draws import WindowDraws
from harness.train.evaluation import loss_noise
from harness.train.graphs import CapturedStep, CudaGraphs, GraphBackend
from harness.train.losses import bigram_floor, pair_counts
from harness.train.optim import FusedAdamW
from harness.train.schedule import learning_rate, set_lr
from harness.train.scoring import PairTableLoss, PerPositionLoss


class DivergedError(RuntimeError):
    """The loss stopped being a finite number."""


class MetricSink(Protocol):
    def log(self, key: str, value: float, step: int) -> None: ...


@dataclass
class TrainState:
    """Everything a checkpoint must hold to resume bit-for-bit."""

    step: int
    step_losses: torch.Tensor  # per-step minibatch loss, on the training device
    train_time_s: float = 0.0  # training wall time of the steps so far, summed over resumes


class Trainer:
    """Trains one model on one corpus; ``run`` returns the final metrics."""

    def __init__(
        self,
        model: CharLanguageModel,
        corpus: Corpus,
        config: TrainConfig,
        device: torch.device,
        sync_free: bool | None = None,
        graphs: GraphBackend | None = None,
    ):
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
        self.optimizer = FusedAdamW(  # a graph replays the lr it finds in memory, and AdamW's step count there
            model.parameters(),
            lr=self._lr_value(config.lr),
            betas=tuple(config.betas),
            weight_decay=config.weight_decay,
            fused=fused,
            capturable=graphs is not None,
        )
        self.train_counts = pair_counts(self.train_data, self.vocab)  # the bigram floor, for every model
        # nats per token -> bits per character of the split's text: x tokens/char / ln 2 (the mean loss times the
        # split's tokens is its total nats, which over its characters and ln 2 is bits per character).
        self.bits_per_nat = {split: corpus.tokens_per_char(split) / math.log(2) for split in ("train", "val")}
        self.chars_per_token = corpus.chars_per_token
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
            self.loss = PairTableLoss(
                model,
                self.train_data,
                self.windows,
                self.train_counts,
                self.val_data,
                self.vocab,
                device,
                fast_step=config.fast_path,
                compile=config.compile,
                sync_free=self.sync_free,
            )
        else:
            self.loss = PerPositionLoss(
                model,
                self.windows,
                self.train_data,
                self.val_data,
                T,
                compile=config.compile,
                scoring=config.eval_scoring,
                curve_tokens=config.eval_curve_tokens,
            )

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
    def evaluate(self, final: bool = True) -> dict[str, float]:
        """Train and val loss: exact for position-wise models, over fixed windows for the others; a curve
        point (``final=False``) of a context model scores the fixed subset of ``train.eval_curve_tokens``."""
        self.model.eval()
        try:
            with self._autocast():
                return self.loss.evaluate(final)
        finally:
            self.model.train()

    def sample(self, tokenizer, prompt: str, max_new_tokens: int) -> str:
        """The run's sample: drawn as ``harness sample`` draws it (harness.models.sampling), with the run's seed."""
        if max_new_tokens == 0:  # sample.max_new_tokens: 0 logs the prompt alone
            return unicodedata.normalize("NFC", tokenizer.decode(tokenizer.encode_tensor(prompt).tolist()))
        return sample_texts(self.model, tokenizer, prompt, max_new_tokens, seed=self.config.seed)[0]

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
            raise CheckpointError(
                f"checkpoint lacks {', '.join(missing)}; it was not written by this harness's Trainer"
            )
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
        on_checkpoint: Callable[[Trainer], None] | None = None,
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
        return self.final_metrics(self.final_evaluation(evaluated))

    def final_evaluation(self, last_point: dict[str, float] | None) -> dict[str, float]:
        """The exact final losses: the last curve point when it was exact (it is the final step's), else the
        whole windows, scored once."""
        if last_point is not None and self.loss.curve_is_exact:
            return last_point
        final = self.evaluate()
        for key, value in final.items():
            if not math.isfinite(value):
                raise DivergedError(f"final {key} became {value} (lr={self.config.lr}); lower train.lr")
        return final

    def final_metrics(self, final: dict[str, float]) -> dict[str, float]:
        """The run's summary from its last evaluation and ``state`` (time, per-step losses)."""
        cfg = self.config
        elapsed = self.state.train_time_s
        result = {
            "final_train_loss": final["train_loss"],
            "final_val_loss": final["val_loss"],
            "final_train_bpc": final["train_loss"] * self.bits_per_nat["train"],
            "final_val_bpc": final["val_loss"] * self.bits_per_nat["val"],
            "chars_per_token": self.chars_per_token,
            "eval_tokens": self.loss.eval_tokens,
            "train_time_s": elapsed,
            "steps_per_s": cfg.steps / elapsed if elapsed > 0 else float("nan"),
            "tokens_per_s": cfg.steps * cfg.batch_size * cfg.context_length / elapsed if elapsed > 0 else float("nan"),
            "loss_noise": loss_noise(self.state.step_losses.cpu()),
        }
        floor = bigram_floor(self.train_counts)
        result["bigram_floor"] = floor
        result["bigram_floor_bpc"] = floor * self.bits_per_nat["train"]
        result["excess_loss"] = final["train_loss"] - floor  # negative: the model beats any context-free one
        return result

    def _log_batch_losses(self, metrics: MetricSink, start: int, end: int) -> None:
        chunk = self.state.step_losses[start:end].cpu()
        if not torch.isfinite(chunk).all():
            bad = int((~torch.isfinite(chunk)).nonzero()[0])
            raise DivergedError(
                f"train loss became {float(chunk[bad])} at step {start + bad + 1} (lr={self.config.lr}); lower train.lr"
            )
        stride = self.batch_loss_stride
        for step in range(start + 1, end + 1):
            if step % stride == 0 or step == self.config.steps:
                metrics.log("batch_loss", float(chunk[step - start - 1]), step)
                if self.config.scheduled:
                    metrics.log("lr", learning_rate(self.config, step - 1), step)

    def _log_eval(self, metrics: MetricSink, step: int) -> dict[str, float]:
        evaluated = self.evaluate(final=False)
        for key, value in evaluated.items():
            if not math.isfinite(value):
                raise DivergedError(f"{key} became {value} at step {step} (lr={self.config.lr}); lower train.lr")
            metrics.log(key, value, step)
        for split in ("train", "val"):
            metrics.log(f"{split}_bpc", evaluated[f"{split}_loss"] * self.bits_per_nat[split], step)
        return evaluated
