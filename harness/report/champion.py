"""The champion: the best variant of a sweep registered in MLflow's Model Registry under the spec's name.

Best is the report's own statistic: the lowest mean over seeds of a loss (``analysis.summarize``, the rows of
summary.csv), so the registry and the report never disagree. Of the winning setting's seeds, the one with the
lowest value of the metric gives the registered model. The version's tags say how it was chosen, with the mean,
its 95% t-interval and the runner-up's; the alias ``champion`` points at it, and moves when a later sweep's best
is another model. Whether the best really differs from the runner-up is the report's verdict (effects.csv),
not the registry's: the tags state the numbers, never a verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from mlflow.tracking import MlflowClient

from harness.report import analysis
from harness.report.tables import ReportError, factor_table, runs_table
from harness.report.tokenizers import varies_tokenizer
from harness.spec.records import Spec, Variant
from harness.tracking.logged_model import NoModelError, run_model_id

ALIAS = "champion"
METRICS = ("final_val_loss", "final_val_bpc", "final_train_loss", "final_train_bpc")  # lower is better
PER_TOKEN = {"final_val_loss": "final_val_bpc", "final_train_loss": "final_train_bpc"}
TAG = "harness."  # the version tags' prefix


@dataclass
class Choice:
    """What ``register_champion`` registered: the version, the setting and seed run it came from, why, and the
    version the alias pointed at before (None when there was none)."""

    name: str
    version: str
    run_id: str
    model_id: str
    variant: str
    tags: dict[str, str]
    previous: str | None
    created: bool


def _interval(row: pd.Series, metric: str) -> str:
    n = int(row["n"])
    low, high = row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]
    if n < 2 or math.isnan(low):
        return f"n={n}: no interval"
    return f"[{low:.4f}, {high:.4f}] (95% t-interval, n={n} seeds)"


def rank_settings(frame: pd.DataFrame, factors: list[str], metric: str) -> pd.DataFrame:
    """The report's summary rows with at least one finished run, best (lowest mean ``metric``) first."""
    summary = analysis.summarize(frame, factors, metrics=[metric])
    ranked = summary[summary["n"] > 0].sort_values(f"{metric}_mean", kind="stable")
    return ranked.reset_index(drop=True)


def choose(
    runs: pd.DataFrame, spec: Spec, variants: list[Variant], metric: str
) -> tuple[pd.Series, pd.Series | None, pd.DataFrame, pd.DataFrame]:
    """(best setting's summary row, the runner-up's or None, the best setting's finished runs, every row ranked)."""
    if metric not in METRICS:
        raise ReportError(f"unknown metric {metric!r} for register; choices: {', '.join(METRICS)} (lower is better)")
    table = runs_table(runs, variants)
    if metric in PER_TOKEN and varies_tokenizer(table):
        raise ReportError(
            f"{spec.path}: the sweep varies the tokenizer, so {metric} (nats per token) does not compare across its "
            f"variants; use --metric {PER_TOKEN[metric]} (bits per character), as the report does"
        )
    frame, factors, _ = factor_table(table, spec, variants)
    ranked = rank_settings(frame, factors, metric)
    if ranked.empty:
        raise ReportError(f"no finished run of {spec.path}'s variants in the store: nothing to register")
    best = ranked.iloc[0]
    runner_up = ranked.iloc[1] if len(ranked) > 1 else None
    members = analysis.finished(frame[frame["setting"] == best["setting"]])
    return best, runner_up, members.sort_values(metric, kind="stable"), ranked


def register_champion(uri: str, spec: Spec, variants: list[Variant], runs: pd.DataFrame, metric: str) -> Choice:
    """Register the best setting's best seed under ``spec.name`` (one version per model: a model registered before
    is found again, not registered twice) and point the alias ``champion`` at it."""
    best, runner_up, members, ranked = choose(runs, spec, variants, metric)
    client = MlflowClient(uri)
    chosen, model_id, missing = None, None, []
    for _, run in members.iterrows():
        try:
            model_id = run_model_id(client, run["run_id"])
        except NoModelError as exc:
            missing.append(str(exc))
            continue
        chosen = run
        break
    if chosen is None:
        raise ReportError(
            f"the best setting {best['setting']} has no run with a logged model to register: " + "; ".join(missing)
        )
    tags = {
        "chosen_by": f"lowest mean {metric} over seeds among {len(ranked)} settings (harness register; the "
        "report's summary.csv), then that setting's seed with the lowest value",
        "metric": metric,
        "setting": str(best["setting"]),
        "mean": f"{best[f'{metric}_mean']:.6f}",
        "ci95": _interval(best, metric),
        "seeds": str(int(best["n"])),
        "value": f"{chosen[metric]:.6f}",
        "runner_up": "none (one setting)" if runner_up is None else str(runner_up["setting"]),
        "runner_up_mean": "" if runner_up is None else f"{runner_up[f'{metric}_mean']:.6f}",
        "runner_up_ci95": "" if runner_up is None else _interval(runner_up, metric),
        "spec": str(spec.path),
        "config_hash": str(chosen["config_hash"]),
    }
    tags = {f"{TAG}{key}": value for key, value in tags.items() if value != ""}
    name = spec.name
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, description=f"The best variant of {spec.path} by `harness register` (alias `{ALIAS}`)."
        )
    existing = [v for v in client.search_model_versions(f"name = '{name}'") if v.run_id == chosen["run_id"]]
    existing = [v for v in existing if getattr(v, "model_id", None) in (None, model_id)]
    created = not existing
    if existing:
        version = max(existing, key=lambda v: int(v.version))
        for key, value in tags.items():
            client.set_model_version_tag(name, version.version, key, value)
    else:
        version = client.create_model_version(
            name, source=f"models:/{model_id}", run_id=chosen["run_id"], tags=tags, model_id=model_id
        )
    try:
        previous = str(client.get_model_version_by_alias(name, ALIAS).version)
    except MlflowException:
        previous = None
    client.set_registered_model_alias(name, ALIAS, version.version)
    return Choice(name, str(version.version), chosen["run_id"], model_id, chosen["variant"], tags, previous, created)
