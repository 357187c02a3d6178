"""Seeds as one model: variants that differ only in ``train.seed`` train as one stack.

Each seed's parameters get a leading seed dimension (``torch.func.stack_module_state``) and a step runs the
model over all of them at once (``torch.func.vmap``), so a GPU launches one set of kernels for S seeds where
S separate runs would launch S sets (HFTA, MLSys'21, fuses repeated jobs the same way). The loss is the sum
of the seeds' mean losses, so the gradient of a seed's slice is that seed's own gradient; AdamW is elementwise
and gradient clipping is done per seed, so each slice follows the path of a separate run
(tests/test_stacking.py: within 1e-5 over 200 steps). A seed whose loss stops being finite fails alone: no
operation mixes slices.

Everything but the step stays per seed and unchanged. Each seed keeps its own ``Trainer`` (its batch
generator, evaluation, samples, checkpoints); ``sync(s)`` gives that Trainer's model (and, for a
checkpoint, its optimizer) the seed's slice before they are read. A checkpoint of a stacked seed is an
ordinary one, so it resumes either stacked or alone.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import torch
import torch.nn as nn
from torch.func import functional_call, stack_module_state, vmap

from harness.models import gpt_stack
from harness.models.gpt import GPTLanguageModel
from harness.train.graphs import CapturedStep
from harness.train.losses import count_ids, table_pair_loss
from harness.train.optim import FusedAdamW
from harness.train.schedule import learning_rate, set_lr
from harness.train.trainer import DivergedError, MetricSink, Trainer

SeedOutcome = dict | Exception  # a seed's final metrics, or why it failed


class _LogitsTable(nn.Module):
    """``model.logits_table()`` as a forward, so that ``functional_call`` can run it with a seed's parameters."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self):
        return self.model.logits_table()


def stack_key(config) -> str:
    """What the seeds of one stack share: the whole run config but ``train.seed`` (identity and execution keys)."""
    return repr(sorted((key, repr(value)) for key, value in config.flat().items() if key != "train.seed"))


class StackedTrainer:
    """Trains the models of ``trainers`` (one per seed, same config but the seed, same step) as one stack."""

    def __init__(self, trainers: list[Trainer]):
        first = trainers[0]
        if len({_without_seed(t.config) for t in trainers}) != 1:
            raise ValueError("stacked trainers must share every setting but train.seed")
        if len({t.state.step for t in trainers}) != 1:
            raise ValueError(f"stacked trainers must be at one step, got {[t.state.step for t in trainers]}")
        self.trainers = trainers
        self.config = first.config
        self.device = first.device
        self.sync_free = first.sync_free
        self.seeds = len(trainers)
        self.template = first.model
        self.position_wise = first.model.position_wise
        self.params, self.buffers = stack_module_state([t.model for t in trainers])
        cfg = self.config
        self.graph_backend = first.graph_backend
        self.optimizer = FusedAdamW(
            list(self.params.values()),
            lr=first._lr_value(cfg.lr),
            betas=tuple(cfg.betas),
            weight_decay=cfg.weight_decay,
            fused=self.device.type in ("cpu", "cuda"),
            capturable=self.graph_backend is not None,
        )
        self._stack_optimizer_state()
        # One (S, steps) tensor; each Trainer's step_losses is its row, so its checks and checkpoints see it.
        self.step_losses = torch.stack([t.state.step_losses for t in trainers])
        for s, t in enumerate(trainers):
            t.state.step_losses = self.step_losses[s]
        self.starts = torch.empty(self.seeds, cfg.batch_size, dtype=torch.long, device=self.device)  # static: graphs
        self.captured = (
            None
            if self.graph_backend is None
            else CapturedStep(self._update, list(self.params.values()), self.graph_backend)
        )
        self.failed: dict[int, Exception] = {}
        # How a step computes the seeds' losses: "pair-table" (a bigram or FFN: one logits table per seed),
        # "native" (a GPT without dropout, harness/models/gpt_stack.py) or "vmap" (anything else).
        self.path = "pair-table" if self.position_wise else "vmap"
        if self.position_wise:
            V = first.vocab  # seed s counts its pairs in table s of one (S * V * V) buffer
            self._table_offsets = torch.arange(self.seeds, device=self.device).view(-1, 1, 1) * (V * V)
            self._table = _LogitsTable(self.template)
            self._table_of = vmap(
                lambda p, b: functional_call(
                    self._table, ({f"model.{k}": v for k, v in p.items()}, {f"model.{k}": v for k, v in b.items()}), ()
                )
            )
        elif isinstance(self.template, GPTLanguageModel) and gpt_stack.supports(self.template.config):
            self.path = "native"
            model_config = self.template.config  # batched ops over the seed dimension (harness/models/gpt_stack.py)
            self._losses_of = lambda p, b, x, y: gpt_stack.stacked_losses(model_config, p, x, y).float()
        else:

            def seed_loss(p, b, x, y):
                return functional_call(self.template, (p, b), (x, y))[1].float()

            self._losses_of = vmap(seed_loss, randomness="different")  # dropout draws differ per seed

    # -- state between the stack and the seeds' Trainers -----------------------------------------------
    def _stack_optimizer_state(self) -> None:
        """A resumed stack: its AdamW state is the seeds' states, stacked (fresh ones have none)."""
        states = [[t.optimizer.state.get(p) for p in t.model.parameters()] for t in self.trainers]
        if not any(states[0]):
            return
        for i, stacked in enumerate(self.params.values()):
            self.optimizer.state[stacked] = {
                key: (
                    torch.stack([seed[i][key] for seed in states]).to(stacked.device)
                    if _per_element(value, stacked.shape[1:])
                    else _copy(value)
                )  # else: the step count, shared
                for key, value in states[0][i].items()
            }

    @torch.no_grad()
    def sync(self, s: int, optimizer: bool = True) -> Trainer:
        """Seed ``s``'s Trainer, its model (and, with ``optimizer``, its AdamW state, which only a checkpoint
        reads) set to the seed's slice of the stack."""
        trainer = self.trainers[s]
        for name, p in trainer.model.named_parameters():
            p.copy_(self.params[name][s])
        for name, b in trainer.model.named_buffers():
            if name in self.buffers:
                b.copy_(self.buffers[name][s])
        if not optimizer:
            return trainer
        for p, stacked in zip(trainer.model.parameters(), self.params.values(), strict=True):
            state = self.optimizer.state.get(stacked)
            if state:
                trainer.optimizer.state[p] = {
                    key: value[s].clone() if _per_element(value, stacked.shape) else _copy(value)
                    for key, value in state.items()
                }
        return trainer

    # -- the step -----------------------------------------------------------------------------------
    def seed_losses(self) -> torch.Tensor:
        """Each seed's minibatch loss (S,) on the windows at ``self.starts`` (one row per seed)."""
        first = self.trainers[0]
        T = self.config.context_length
        chunk = first.windows.index_select(0, self.starts.view(-1)).view(self.seeds, self.config.batch_size, T + 1)
        with first._autocast():
            if not self.position_wise:
                return self._losses_of(self.params, self.buffers, chunk[..., :-1], chunk[..., 1:])
            return self._pair_table_losses(chunk)

    def _pair_table_losses(self, chunk: torch.Tensor) -> torch.Tensor:
        """Position-wise models: each seed's loss from its (vocab x vocab) logits table and its batch's pair counts."""
        V = self.trainers[0].vocab
        ids = (chunk[..., :-1] * V + chunk[..., 1:] + self._table_offsets).reshape(-1)
        counts = count_ids(ids, self.seeds * V * V, self.sync_free).view(self.seeds, V, V)
        n_positions = chunk.shape[1] * (chunk.shape[2] - 1)
        return table_pair_loss(self._table_of(self.params, self.buffers), counts, n_positions)  # (S, V, V) -> (S,)

    def train_step(self, i: int) -> None:
        """Step ``i`` of every seed: one AdamW update of the stack; the losses stay on the device."""
        cfg = self.config
        if cfg.scheduled:
            set_lr(self.optimizer, learning_rate(cfg, i))
        torch.stack([t.sample_starts(i) for t in self.trainers], out=self.starts)  # each seed's own draws
        if self.captured is None:
            for p in self.params.values():
                p.grad = None
            self.step_losses[:, i] = self._update()
        else:
            self.step_losses[:, i] = self.captured()

    def _update(self) -> torch.Tensor:
        """Forward, backward, per-seed clipping and AdamW of the whole stack: what a graph captures."""
        losses = self.seed_losses()
        losses.sum().backward()
        if self.config.grad_clip > 0:
            self._clip_per_seed(self.config.grad_clip)
        self.optimizer.step()
        return losses.detach()

    @torch.no_grad()
    def _clip_per_seed(self, max_norm: float) -> None:
        """``clip_grad_norm_`` of each seed's own gradients: its norm computed by the same torch function on
        the same slices (so rounding agrees too), then max_norm / (norm + 1e-6), at most 1, as a factor."""
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        norms = torch.stack([torch.nn.utils.get_total_norm([g[s] for g in grads]) for s in range(self.seeds)])
        scale = torch.clamp(max_norm / (norms + 1e-6), max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))

    # -- the loop -----------------------------------------------------------------------------------
    def run(
        self,
        sinks: list[MetricSink],
        on_progress: Callable[[int, float], None] = lambda done, loss: None,
        on_checkpoint: Callable[[int, Trainer], None] | None = None,
    ) -> list[SeedOutcome]:
        """Train every seed to ``config.steps``; seed ``s``'s curves go to ``sinks[s]``.

        Returns, per seed, its final metrics or the exception that stopped it (a diverged seed stops alone).
        ``on_checkpoint(s, trainer)`` is called for each live seed every ``checkpoint_interval`` steps.
        """
        cfg = self.config
        first = self.trainers[0]
        start_step = first.state.step
        evaluated: list[dict | None] = [None] * self.seeds
        if start_step == 0:
            for s in range(self.seeds):
                evaluated[s] = self._guarded(s, lambda t, s=s: t._log_eval(sinks[s], 0))
        time_before = [t.state.train_time_s for t in self.trainers]
        started = time.perf_counter()
        last_logged = start_step
        every = first.eval_every
        checkpoint_every = cfg.checkpoint_interval if on_checkpoint else 0
        for i in range(start_step, cfg.steps):
            if len(self.failed) == self.seeds:
                break
            self.train_step(i)
            done = i + 1
            for t in self.trainers:
                t.state.step = done
            if done % every == 0 or done == cfg.steps:
                for s in self._live():
                    self._guarded(
                        s,
                        lambda t, s=s, since=last_logged, done=done: t._log_batch_losses(sinks[s], since, done),
                        weights=False,
                    )
                    if s not in self.failed:  # a seed whose steps diverged is not evaluated
                        evaluated[s] = self._guarded(s, lambda t, s=s, done=done: t._log_eval(sinks[s], done))
                last_logged = done
                live = self._live()
                if live:
                    on_progress(done, evaluated[live[0]]["train_loss"])
            if checkpoint_every and done % checkpoint_every == 0 and done < cfg.steps:
                elapsed = time.perf_counter() - started
                for s in self._live():
                    self._guarded(
                        s,
                        lambda t, s=s, since=last_logged, done=done: t._log_batch_losses(sinks[s], since, done),
                        weights=False,
                    )
                for s in self._live():
                    self.trainers[s].state.train_time_s = time_before[s] + elapsed
                    on_checkpoint(s, self.sync(s))
                last_logged = done
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # this stack's stream only (--executor threads)
        elapsed = time.perf_counter() - started
        outcomes: list[SeedOutcome] = []
        for s, trainer in enumerate(self.trainers):
            if s in self.failed:
                outcomes.append(self.failed[s])
                continue
            trainer.state.train_time_s = time_before[s] + elapsed
            self.sync(s)
            try:
                outcomes.append(trainer.final_metrics(trainer.final_evaluation(evaluated[s])))
            except DivergedError as exc:  # the exact final losses of this seed alone
                outcomes.append(exc)
        return outcomes

    def _live(self) -> list[int]:
        return [s for s in range(self.seeds) if s not in self.failed]

    def _guarded(self, s: int, action: Callable[[Trainer], dict | None], weights: bool = True):
        """``action`` on seed ``s``'s Trainer (given the seed's weights first, unless ``weights`` is False: its
        per-step losses are a row of the stack's already); a DivergedError marks that seed failed, and only it."""
        try:
            return action(self.sync(s, optimizer=False) if weights else self.trainers[s])
        except DivergedError as exc:
            self.failed[s] = exc
            return None


def _per_element(value, shape: torch.Size) -> bool:
    """Whether an AdamW state entry has one value per parameter element (exp_avg...), not one per tensor (step)."""
    return torch.is_tensor(value) and value.dim() > 0 and value.shape == shape


def _copy(value):
    return value.clone() if torch.is_tensor(value) else value


def _without_seed(config) -> str:
    return repr(sorted((k, v) for k, v in vars(config).items() if k != "seed"))


# vmap has no batching rule for the CPU flash-attention kernel and runs it seed by seed: known, and harmless
# (a CPU is not where stacking pays); said once here rather than at every step.
warnings.filterwarnings("ignore", message=".*batching rule for aten::_scaled_dot_product", category=UserWarning)
