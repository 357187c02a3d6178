"""Training: the trainer and what it is made of (schedule, losses, evaluation, checkpoint files, batch draws,
seed stacks, CUDA graphs).

The public names of the modules below, so that ``from harness.train import X`` works; inside the
harness, modules import from the module that defines a name.
"""

from __future__ import annotations

from harness.train.checkpoint import (  # noqa: F401
    CHECKPOINT_KEYS,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from harness.train.config import (  # noqa: F401
    DEVICE_CHOICES,
    EVAL_SCORING_CHOICES,
    LR_SCHEDULE_CHOICES,
    MAX_CURVE_POINTS,
    MIN_EVALUATIONS,
    PRECISION_CHOICES,
    SampleConfig,
    TrainConfig,
)
from harness.train.device import (  # noqa: F401
    pick_device,
)
from harness.train.draws import (  # noqa: F401
    DRAW_BLOCK_STEPS,
    WindowDraws,
)
from harness.train.evaluation import (  # noqa: F401
    EVAL_BATCH_TOKENS,
    EVAL_MAX_TOKENS,
    EVAL_SEED,
    LOSS_NOISE_MIN_STEPS,
    LOSS_NOISE_MIN_WINDOWS,
    LOSS_NOISE_WINDOW,
    EvalWindows,
    eval_stride,
    exact_loss,
    loss_noise,
    sample_windows,
    tile_windows,
    windows_loss,
)
from harness.train.graphs import (  # noqa: F401
    CAPTURE_LOCK,
    WARMUP_STEPS,
    CapturedStep,
    CudaGraphs,
    GraphBackend,
    graph_status,
    off_default_stream,
)
from harness.train.losses import (  # noqa: F401
    DENSE_PAIRS_MAX_CELLS,
    IGNORE_INDEX,
    SUBSET_ROWS_MIN_VOCAB,
    batch_loss_fast,
    bigram_floor,
    count_ids,
    pair_counts,
    table_pair_loss,
)
from harness.train.schedule import (  # noqa: F401
    learning_rate,
    set_lr,
)
from harness.train.scoring import (  # noqa: F401
    PairTableLoss,
    PerPositionLoss,
)
from harness.train.stacking import (  # noqa: F401
    SeedOutcome,
    StackedTrainer,
    stack_key,
)
from harness.train.trainer import (  # noqa: F401
    DivergedError,
    MetricSink,
    Trainer,
    TrainState,
)
