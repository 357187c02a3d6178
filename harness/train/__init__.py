"""Training: the trainer and what it is made of (optimiser, schedule, losses, evaluation, checkpoint files, batch draws,
seed stacks, CUDA graphs)."""

from __future__ import annotations

from harness.exports import lazy_exports

_MODULES = {
    "config": (
        "DEVICE_CHOICES",
        "PRECISION_CHOICES",
        "LR_SCHEDULE_CHOICES",
        "MAX_CURVE_POINTS",
        "MIN_EVALUATIONS",
        "EVAL_SCORING_CHOICES",
        "TrainConfig",
        "SampleConfig",
    ),
    "device": ("pick_device",),
    "schedule": ("set_lr", "learning_rate"),
    "optim": ("FusedAdamW",),
    "graphs": (
        "WARMUP_STEPS",
        "CAPTURE_LOCK",
        "GraphBackend",
        "CudaGraphs",
        "off_default_stream",
        "CapturedStep",
        "graph_status",
    ),
    "losses": (
        "SUBSET_ROWS_MIN_VOCAB",
        "IGNORE_INDEX",
        "DENSE_PAIRS_MAX_CELLS",
        "table_pair_loss",
        "count_ids",
        "batch_loss_fast",
        "pair_counts",
        "bigram_floor",
    ),
    "evaluation": (
        "LOSS_NOISE_WINDOW",
        "LOSS_NOISE_MIN_WINDOWS",
        "LOSS_NOISE_MIN_STEPS",
        "EVAL_SEED",
        "EVAL_BATCH_TOKENS",
        "EVAL_MAX_TOKENS",
        "exact_loss",
        "loss_noise",
        "EvalWindows",
        "eval_stride",
        "tile_windows",
        "sample_windows",
        "windows_loss",
    ),
    "scoring": ("PairTableLoss", "PerPositionLoss"),
    "checkpoint": ("CheckpointError", "CHECKPOINT_KEYS", "save_checkpoint", "load_checkpoint"),
    "draws": ("DRAW_BLOCK_STEPS", "WindowDraws"),
    "trainer": ("DivergedError", "MetricSink", "TrainState", "Trainer"),
    "stacking": ("SeedOutcome", "stack_key", "StackedTrainer"),
}
__getattr__, __all__ = lazy_exports(__name__, _MODULES)
