"""Metric names, in one place: what the trainer returns, what MLflow shows, what runs.csv calls it.

MLflow groups charts by the prefix before ``/`` and orders the sections alphabetically (its own
"system" section last): the per-step curves go under ``loss/`` and ``opt/``, the end-of-run numbers
under ``summary/``, so the chart view shows the curves first and the summaries in a section of their
own. (``final/`` would sort before ``loss/``.) The summaries are logged at step 0, as MLflow logs a
metric without a step, so the chart view draws them as one bar per run rather than a lone dot. The
CSV columns keep the flat names they always had.
"""

from __future__ import annotations

# per-step curves: trainer key -> MLflow key
# (train_bpc, val_bpc: the same losses in bits per character of the text, comparable across tokenizers.)
CURVES = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_bpc": "loss/train_bpc",
    "val_bpc": "loss/val_bpc",
    "batch_loss": "loss/batch",
    "lr": "opt/lr",
}

SUMMARY_STEP = 0  # the step the end-of-run numbers are logged at

# end-of-run numbers: trainer key (= runs.csv column) -> MLflow key
FINALS = {
    "final_train_loss": "summary/train_loss",
    "final_val_loss": "summary/val_loss",
    "final_train_bpc": "summary/train_bpc",
    "final_val_bpc": "summary/val_bpc",
    "chars_per_token": "summary/chars_per_token",
    "bigram_floor_bpc": "summary/bigram_floor_bpc",
    "bigram_floor": "summary/bigram_floor",
    "excess_loss": "summary/excess_loss",
    "loss_noise": "summary/loss_noise",
    "eval_tokens": "summary/eval_tokens",
    "train_time_s": "summary/train_time_s",
    "steps_per_s": "summary/steps_per_s",
    "tokens_per_s": "summary/tokens_per_s",
}

MLFLOW_NAME = {**CURVES, **FINALS}
TRAINER_NAME = {mlflow_key: key for key, mlflow_key in MLFLOW_NAME.items()}


def mlflow_key(key: str) -> str:
    """The MLflow name of a trainer metric (unknown keys pass through unchanged)."""
    return MLFLOW_NAME.get(key, key)


def csv_column(mlflow_name: str) -> str:
    """The runs.csv column (trainer key) of an MLflow metric name."""
    return TRAINER_NAME.get(mlflow_name, mlflow_name)
