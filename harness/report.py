"""Comparison tables from MLflow alone: ``results/<name>/runs.csv``.

A variant's row comes from the run with its config hash (FINISHED first, then the latest), so a
table always describes exactly the variants of the spec, whatever else the experiment holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from harness.spec import Spec, Variant

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
SWEEP_TAG = "harness.sweep"  # marks parent runs; their params record the overrides and seeds used


class ReportError(Exception):
    pass


def experiment_runs(uri: str, spec: Spec) -> pd.DataFrame:
    """Every run of the spec's experiment, as ``mlflow.search_runs`` gives them."""
    experiment = MlflowClient(uri).get_experiment_by_name(spec.name)
    if experiment is None:
        raise ReportError(f"no MLflow experiment {spec.name!r} at {uri}; run `harness run {spec.path}` first")
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_ids=[experiment.experiment_id], output_format="pandas")


def last_sweep_arguments(runs: pd.DataFrame) -> tuple[dict, list[int] | None]:
    """The overrides and seeds of the latest sweep, so that ``harness report SPEC`` needs no repeat of them."""
    column = f"tags.{SWEEP_TAG}"
    if runs.empty or column not in runs or runs[column].isna().all():
        return {}, None
    latest = runs[runs[column].notna()].sort_values("start_time").iloc[-1]
    overrides = json.loads(latest.get("params.overrides") or "{}")
    seeds = json.loads(latest.get("params.seeds") or "null")
    return overrides, seeds


def runs_table(runs: pd.DataFrame, variants: list[Variant]) -> pd.DataFrame:
    """One row per variant: id, status, axes, metrics, run id, then the full resolved config."""
    if not runs.empty and "tags.config_hash" in runs:
        runs = runs[runs["tags.config_hash"].notna()].assign(_rank=runs["status"].map(STATUS_RANK).fillna(9))
        runs = runs.sort_values(["_rank", "start_time"], ascending=[True, False])
        best = {h: row for h, row in runs.drop_duplicates("tags.config_hash").set_index("tags.config_hash").iterrows()}
    else:
        best = {}
    rows = []
    for variant in variants:
        run = best.get(variant.config.config_hash())
        row = {"variant": variant.id, "status": "MISSING" if run is None else run["status"], **variant.axes}
        for metric in METRIC_COLUMNS:
            row[metric] = run.get(f"metrics.{metric}", float("nan")) if run is not None else float("nan")
        row["error"] = run.get("tags.error") if run is not None else None
        row["run_id"] = run["run_id"] if run is not None else None
        row["config_hash"] = variant.config.config_hash()
        for key, value in variant.config.flat().items():
            row.setdefault(key, ",".join(map(str, value)) if isinstance(value, list) else value)
        rows.append(row)
    return pd.DataFrame(rows)


def write_runs_csv(uri: str, spec: Spec, variants: list[Variant], results_dir: Path, runs: pd.DataFrame | None = None):
    runs = experiment_runs(uri, spec) if runs is None else runs
    table = runs_table(runs, variants)
    out = Path(results_dir) / spec.name
    out.mkdir(parents=True, exist_ok=True)
    path = out / "runs.csv"
    table.to_csv(path, index=False)
    return table, path


def format_table(table: pd.DataFrame) -> str:
    """The short view printed at the end of a run."""
    columns = ["variant", "status", "final_train_loss", "final_val_loss", "excess_loss", "train_time_s", "tokens_per_s"]
    shown = table[[c for c in columns if c in table]]
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.float_format", "{:.4f}".format):
        return shown.to_string(index=False)
