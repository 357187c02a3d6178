"""Comparison tables from MLflow alone: ``results/<name>/runs.csv`` and friends."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from harness.spec import Spec, all_dotted_keys

METRIC_COLUMNS = [
    "final_train_loss",
    "final_val_loss",
    "bigram_floor",
    "excess_loss",
    "loss_noise",
    "train_time_s",
    "steps_per_s",
    "tokens_per_s",
]
STATUS_RANK = {"FINISHED": 0, "RUNNING": 1, "KILLED": 2, "FAILED": 3}


class ReportError(Exception):
    pass


def _typed(series: pd.Series) -> pd.Series:
    """Params come back as strings; give numbers back their numeric type."""
    converted = pd.to_numeric(series, errors="coerce")
    return converted if converted.notna().sum() == series.notna().sum() else series


def variant_runs(uri: str, spec: Spec) -> pd.DataFrame:
    """All child runs of the spec's experiment, as ``mlflow.search_runs`` gives them."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(spec.name)
    if experiment is None:
        raise ReportError(f"no MLflow experiment {spec.name!r} at {uri}; run `harness run {spec.path}` first")
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_ids=[experiment.experiment_id], output_format="pandas")
    if runs.empty or "tags.variant" not in runs:
        raise ReportError(f"experiment {spec.name!r} at {uri} has no variant runs yet")
    return runs[runs["tags.variant"].notna()].copy()


def runs_table(runs: pd.DataFrame, spec: Spec) -> pd.DataFrame:
    """One row per variant: its best-status latest run (FINISHED first), axes, metrics, full config."""
    runs = runs.assign(_rank=runs["status"].map(STATUS_RANK).fillna(9))
    runs = runs.sort_values(["_rank", "start_time"], ascending=[True, False])
    latest = runs.drop_duplicates("tags.variant", keep="first")
    table = pd.DataFrame({"variant": latest["tags.variant"], "status": latest["status"]})
    for key in spec.axis_keys:
        column = f"params.{key}"
        table[key] = _typed(latest[column]) if column in latest else None
    for metric in METRIC_COLUMNS:
        column = f"metrics.{metric}"
        table[metric] = latest[column] if column in latest else float("nan")
    table["error"] = latest["tags.error"] if "tags.error" in latest else None
    table["run_id"] = latest["run_id"]
    table["config_hash"] = latest["tags.config_hash"]
    for key in all_dotted_keys():
        column = f"params.{key}"
        if key not in table and column in latest:
            table[key] = _typed(latest[column])
    return table.sort_values(spec.axis_keys or ["variant"], kind="stable").reset_index(drop=True)


def write_runs_csv(uri: str, spec: Spec, results_dir: Path) -> tuple[pd.DataFrame, Path]:
    table = runs_table(variant_runs(uri, spec), spec)
    out = Path(results_dir) / spec.name
    out.mkdir(parents=True, exist_ok=True)
    path = out / "runs.csv"
    table.to_csv(path, index=False)
    return table, path


def format_table(table: pd.DataFrame, spec: Spec) -> str:
    """The short view printed at the end of a run: axes and the headline metrics."""
    columns = ["variant", "status", *spec.axis_keys, "final_train_loss", "final_val_loss", "train_time_s", "tokens_per_s"]
    shown = table[[c for c in columns if c in table]].drop(columns=[k for k in spec.axis_keys if k in table])
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.float_format", "{:.4f}".format):
        return shown.to_string(index=False)
