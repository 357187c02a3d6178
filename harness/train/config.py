"""The train and sample sections of a spec: what the loop does, and what is generated before and after.

Each is a frozen dataclass that owns its defaults and checks its own values (``problems()``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.config import ADDED_V2, EXECUTION

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
PRECISION_CHOICES = ("fp32", "bf16")
LR_SCHEDULE_CHOICES = ("constant", "cosine")
MAX_CURVE_POINTS = 2000
MIN_EVALUATIONS = 50


EVAL_SCORING_CHOICES = ("all-positions", "second-half")


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
    # A context model's curve points (loss/train, loss/val at every evaluation but the exact final one) score a
    # fixed subset of this many targets per split, the same windows for every variant, seed and evaluation;
    # null scores the whole split at every point (all evaluations then cost as much as the final one). The
    # final train and val losses are always exact. Not training math: the curves are observation.
    eval_curve_tokens: int | None = field(default=4096, metadata=EXECUTION)
    device: str = field(default="auto", metadata=EXECUTION)
    fast_path: bool = field(default=True, metadata=EXECUTION)
    compile: bool = field(default=False, metadata=EXECUTION)
    threads: int = field(default=0, metadata=EXECUTION)  # torch CPU threads; 0 = torch's default
    checkpoint_interval: int = field(default=0, metadata=EXECUTION)  # steps between checkpoints; 0 = none
    # Variants that differ only in train.seed train as one stacked model (harness/train/stacking.py): true, false,
    # or null (the default) for "where it helps": on a GPU, where a step of these small models is launch-bound
    # (a GPT there only without dropout: its native stack; vmap over CUDA attention failed on an H200), and on a
    # CPU for a small GPT without dropout (see harness/sweep.py stacks_seeds).
    stack_seeds: bool | None = field(default=None, metadata=EXECUTION)
    # On a CUDA device, capture a whole training step as a CUDA graph and replay it (harness/train/graphs.py): one
    # launch per step; 6.7x faster on the seed grid on an H200 (results/bench/grid_gpu.csv). Off by default: the
    # seed grid end to end with graphs in threads took 70.6 s there, over the 60 s set for a default; ignored elsewhere.
    cuda_graphs: bool = field(default=False, metadata=EXECUTION)
    # A FINISHED run logs its final model as an MLflow model (harness/tracking/logged_model.py): weights
    # (safetensors), config and tokenizer; false skips it (harness sample and register then have nothing to load).
    log_model: bool = field(default=True, metadata=EXECUTION)

    def problems(self) -> list[tuple[str, str]]:
        found = []
        for key in ("steps", "batch_size", "context_length", "eval_interval", "eval_curve_tokens"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                found.append((key, f"must be >= 1, got {getattr(self, key)}"))
        if not self.lr > 0:
            found.append(("lr", f"must be > 0, got {self.lr}"))
        if self.weight_decay < 0:
            found.append(("weight_decay", f"must be >= 0, got {self.weight_decay}"))
        if not _two_betas(self.betas):
            found.append(("betas", f"must be two numbers in [0, 1), got {_as_list(self.betas)}"))
        if self.eval_scoring not in EVAL_SCORING_CHOICES:
            found.append(
                ("eval_scoring", f"unknown scoring {self.eval_scoring!r}; choices: {', '.join(EVAL_SCORING_CHOICES)}")
            )
        if self.lr_schedule not in LR_SCHEDULE_CHOICES:
            found.append(
                ("lr_schedule", f"unknown schedule {self.lr_schedule!r}; choices: {', '.join(LR_SCHEDULE_CHOICES)}")
            )
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
            found.append(
                ("device", f"unknown device {self.device!r}; choices: {', '.join(DEVICE_CHOICES)} (or cuda:N)")
            )
        if self.precision not in PRECISION_CHOICES:
            found.append(
                ("precision", f"unknown precision {self.precision!r}; choices: {', '.join(PRECISION_CHOICES)}")
            )
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
