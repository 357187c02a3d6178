"""Metric names, in one place: what the trainer returns, what MLflow shows, what runs.csv calls it.

MLflow groups charts by the prefix before ``/``: the per-step curves go under ``loss/`` and the
end-of-run numbers under ``final/``, so the chart view shows the curves first and the summaries in a
section of their own. The CSV columns keep the flat names they always had.
"""

from __future__ import annotations

# per-step curves: trainer key -> MLflow key
CURVES = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "batch_loss": "loss/batch",
    "lr": "opt/lr",
}

# end-of-run numbers: trainer key (= runs.csv column) -> MLflow key
FINALS = {
    "final_train_loss": "final/train_loss",
    "final_val_loss": "final/val_loss",
    "bigram_floor": "final/bigram_floor",
    "excess_loss": "final/excess_loss",
    "loss_noise": "final/loss_noise",
    "eval_tokens": "final/eval_tokens",
    "train_time_s": "final/train_time_s",
    "steps_per_s": "final/steps_per_s",
    "tokens_per_s": "final/tokens_per_s",
}

MLFLOW_NAME = {**CURVES, **FINALS}
TRAINER_NAME = {mlflow_key: key for key, mlflow_key in MLFLOW_NAME.items()}


def mlflow_key(key: str) -> str:
    """The MLflow name of a trainer metric (unknown keys pass through unchanged)."""
    return MLFLOW_NAME.get(key, key)


def csv_column(mlflow_name: str) -> str:
    """The runs.csv column (trainer key) of an MLflow metric name."""
    return TRAINER_NAME.get(mlflow_name, mlflow_name)
