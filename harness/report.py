"""Reports from MLflow alone: ``results/<name>/`` with runs.csv, summary.csv, effects.csv, PNGs and report.md.

A variant's row comes from the run with its config hash (FINISHED first, then the latest), so a
table always describes exactly the variants of the spec, whatever else the experiment holds.
``write_report`` builds everything; ``harness run`` and ``harness report`` both call it.
"""

from __future__ import annotations

import html
import json
import os
import re
import shlex
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from harness import analysis
from harness.metrics import mlflow_key
from harness.spec import SEED_KEY, Spec, Variant, variant_id

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
    return _json_param(latest, "overrides", {}), _json_param(latest, "seeds", None)


def _json_param(run: pd.Series, name: str, default):
    """A sweep run's JSON param; a sweep that died before logging it has NaN there."""
    value = run.get(f"params.{name}")
    return json.loads(value) if isinstance(value, str) and value else default


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
            row[metric] = run.get(f"metrics.{mlflow_key(metric)}", float("nan")) if run is not None else float("nan")
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


# -- the full report ---------------------------------------------------------------------------------------

HISTORY_KEYS = ("train_loss", "val_loss", "batch_loss")
FIGURE_FOLDER = "report"  # artifact folder of the figures on the sweep run and on each variant run


@dataclass
class Report:
    directory: Path
    runs: pd.DataFrame
    summary: pd.DataFrame
    effects: pd.DataFrame
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _level_text(value) -> object:
    """Axis values as the table's grouping keys: lists (e.g. hidden_sizes) become '256x128' like variant ids."""
    return "x".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def factor_table(table: pd.DataFrame, spec: Spec, variants: list[Variant]) -> tuple[pd.DataFrame, list[str], str | None]:
    """The runs table with one column per factor, and a ``setting`` label (the variant id without its seed).

    A zip group varies its keys together, so it is one factor (column ``a+b``, values ``x/y``); pairing on its
    keys separately would never find a partner.
    """
    axis_keys = list(variants[0].axes) if variants else []
    table = table.copy()
    for key in axis_keys:
        table[key] = table[key].map(_level_text)
    zipped = {}
    for group in spec.zip_groups:
        keys = [k for k in group if k in axis_keys]
        if len(keys) > 1:
            name = "+".join(keys)
            table[name] = table[keys].astype(str).agg("/".join, axis=1)
            zipped.update({k: name for k in keys})
    factors = list(dict.fromkeys(zipped.get(k, k) for k in axis_keys if k != SEED_KEY))
    table["setting"] = [variant_id({k: v for k, v in var.axes.items() if k != SEED_KEY}) for var in variants]
    return table, factors, (SEED_KEY if SEED_KEY in axis_keys else None)


def sweep_run(runs: pd.DataFrame, overrides: dict, seeds: list[int] | None) -> pd.Series | None:
    """The latest sweep run with exactly these overrides and seeds: where the report's files go.

    None when no sweep matches: a report of other variants must not overwrite that sweep's report.
    """
    column = f"tags.{SWEEP_TAG}"
    if runs.empty or column not in runs:
        return None
    sweeps = runs[runs[column].notna()].sort_values("start_time", ascending=False)
    for _, run in sweeps.iterrows():
        if (_json_param(run, "overrides", {}) == json.loads(json.dumps(overrides or {}))
                and _json_param(run, "seeds", None) == (seeds or None)):
            return run
    return None


def metric_histories(client: MlflowClient, run_ids: list[str]) -> dict[str, dict[str, pd.DataFrame]]:
    """run id -> key -> (step, value), sorted by step, for the loss curves."""
    histories = {}
    for run_id in run_ids:
        histories[run_id] = {}
        for key in HISTORY_KEYS:
            points = client.get_metric_history(run_id, mlflow_key(key))
            frame = pd.DataFrame({"step": [p.step for p in points], "value": [p.value for p in points]})
            histories[run_id][key] = frame.sort_values("step").drop_duplicates("step", keep="last")
    return histories


def run_samples(client: MlflowClient, run_id: str) -> dict[str, str | None]:
    """samples/before.txt and samples/after.txt of a run (None where it logged none)."""
    found = {"before": None, "after": None}
    with tempfile.TemporaryDirectory() as tmp, _quiet_downloads():
        try:
            folder = Path(client.download_artifacts(run_id, "samples", tmp))
        except Exception:  # no samples folder: the run failed before sampling
            return found
        for name in found:
            path = folder / f"{name}.txt"
            if path.exists():
                found[name] = path.read_text(encoding="utf-8")
    return found


@contextmanager
def _quiet_downloads():
    """No 'Downloading artifacts' progress bar per run: a report reads dozens of tiny files."""
    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous


# -- markdown ------------------------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*\[\]|#<>&~])|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def md_text(text) -> str:
    """Plain text safe in markdown: specials escaped (an underscore inside a word like batch_size is left alone)."""
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), str(text))


def pre_block(text: str | None) -> str:
    """A sample as an HTML <pre>, exactly as generated: HTML-escaped, blank lines as an empty <span>.

    A blank line would end the surrounding HTML block in CommonMark and let markdown parse the rest.
    """
    if text is None:
        return "<pre>(not logged)</pre>"
    lines = html.escape(text.replace("\r\n", "\n").replace("\r", "\n"), quote=False).split("\n")
    return "<pre>" + "\n".join(line if line.strip() else "<span></span>" for line in lines) + "</pre>"


def _interval_text(mean: float, low: float, high: float, n: int) -> str:
    if n == 0 or pd.isna(mean):
        return "-"
    if n == 1 or pd.isna(low):
        return f"{mean:.4f} (n=1)"
    return f"{mean:.4f} [{low:.4f}, {high:.4f}]"


def _summary_view(summary: pd.DataFrame) -> pd.DataFrame:
    view = summary[["setting", "runs", "n"]].assign(setting=summary["setting"].map(md_text))
    for metric in analysis.SUMMARY_METRICS:
        view[metric] = [_interval_text(r[f"{metric}_mean"], r[f"{metric}_ci_low"], r[f"{metric}_ci_high"], r["n"])
                        for _, r in summary.iterrows()]
    return view


def _effects_view(effects: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "metric": effects["metric"], "axis": effects["axis"].map(md_text),
        "level vs baseline": [md_text(f"{a} vs {b}") for a, b in zip(effects["level"], effects["baseline"])],
        "n pairs": effects["n_pairs"],
        "mean difference [95% CI]": [_interval_text(m, lo, hi, n).replace(" (n=1)", " (n=1, no CI)") for m, lo, hi, n in
                                     zip(effects["mean_difference"], effects["ci_low"], effects["ci_high"], effects["n_pairs"])],
        "CI excludes 0": effects["ci_excludes_zero"].map({True: "yes", False: "no"}),
    })


def _runs_view(table: pd.DataFrame) -> pd.DataFrame:
    columns = ["variant", "status", "final_train_loss", "final_val_loss", "excess_loss", "loss_noise", "bigram_floor"]
    view = table[columns].assign(variant=table["variant"].map(md_text))
    if table["error"].notna().any():
        view["error"] = table["error"].map(lambda e: md_text(str(e)[:120]) if isinstance(e, str) else "")
    return view


def _markdown_table(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, floatfmt=".4f") if len(frame) else "(none)"


def report_command(spec: Spec, overrides: dict, seeds: list[int] | None, results_dir: Path) -> str:
    """The ``harness report`` command line that rebuilds this report."""
    words = ["harness", "report", str(spec.path)]
    words += [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in (overrides or {}).items()]
    if seeds:
        words += ["--seeds", *map(str, seeds)]
    if Path(results_dir) != Path("results"):
        words += ["--results-dir", str(results_dir)]
    return shlex.join(words)


def render_markdown(spec: Spec, uri: str, table: pd.DataFrame, summary: pd.DataFrame, effects: pd.DataFrame,
                    answers: dict[str, list[str]], figures: list[Path], samples: dict[str, dict],
                    provenance: dict[str, str]) -> str:
    from harness.tracking import git_commit

    lines = [f"# {md_text(spec.name)}: sweep report", ""]
    if spec.description:
        lines += [f"> {md_text(spec.description)}", ""]
    lines += [
        f"- Rebuild this report: `{provenance['rebuild']}`",
        (f"- Sweep: `{provenance.get('sweep_command') or 'unknown'}` at git commit "
         f"`{provenance.get('sweep_commit') or 'unknown'}` (MLflow run `{provenance['sweep_run']}`)"
         if provenance.get("sweep_run") else
         "- Sweep: no sweep run with these overrides and seeds; the variants' runs come from earlier sweeps, if any"),
        f"- Report written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC at git commit `{git_commit()}`, "
        f"from MLflow `{uri}`, experiment `{md_text(spec.name)}`",
        f"- {len(table)} variant(s): {', '.join(f'{s} {c}' for s, c in table['status'].value_counts().items())}",
        "",
    ]
    if len(summary) and summary["runs"].max() <= 1:
        lines += ["One run per variant (no seeds): n is at most 1, so summary.csv has NaN std and CI and no "
                  "interval is possible. Repeat the sweep with `--seeds 1 2 3` for intervals.", ""]
    not_finished = table[table["status"] != analysis.FINISHED]
    if len(not_finished):
        lines += [f"**Not finished: {len(not_finished)} variant(s)** (shown below, left out of every statistic): "
                  + ", ".join(f"{md_text(v)} ({s})" for v, s in zip(not_finished["variant"], not_finished["status"])), ""]

    lines += ["## Answers", "",
              f"Intervals are {analysis.CONFIDENCE:.0%} t-intervals; differences are paired (same other axes and seed).", ""]
    for question, sentences in answers.items():
        lines += [f"**{question}**", ""] + [f"- {md_text(s)}" for s in sentences] + [""]

    lines += ["## Summary (seeds folded)", "",
              f"Mean [{analysis.CONFIDENCE:.0%} CI] over the n finished seeds of each setting (summary.csv has std too).", "",
              _markdown_table(_summary_view(summary)), "",
              "## Effects", "",
              "Each axis level against the axis's first level, paired on every other axis and the seed; "
              "largest effect on final val loss first (effects.csv).", "",
              _markdown_table(_effects_view(effects)), "",
              "## Plots", ""]
    lines += [f"![{path.stem}]({path.name})" + "\n" for path in figures]
    lines += ["## Runs", "", _markdown_table(_runs_view(table)), "", "## Samples", "",
              "Generated text before and after training, exactly as sampled (HTML-escaped).", ""]
    for _, row in table.iterrows():
        found = samples.get(row["variant"], {"before": None, "after": None})
        lines += [f"### {md_text(row['variant'])} ({row['status']})", "",
                  "<table><tr><th>before training</th><th>after training</th></tr>",
                  f"<tr><td>{pre_block(found['before'])}</td>",
                  f"<td>{pre_block(found['after'])}</td></tr></table>", ""]
    return "\n".join(lines)


def write_report(uri: str, spec: Spec, variants: list[Variant], results_dir: Path, runs: pd.DataFrame | None = None,
                 overrides: dict | None = None, seeds: list[int] | None = None, log_to_mlflow: bool = True) -> Report:
    """Everything in results/<name>/ from MLflow alone; the files also go to the matching sweep run (under
    ``report/``) and the figures to each of its finished variant runs."""
    from harness import plots

    runs = experiment_runs(uri, spec) if runs is None else runs
    client = MlflowClient(uri)
    out = Path(results_dir) / spec.name
    out.mkdir(parents=True, exist_ok=True)
    table = runs_table(runs, variants)
    report = Report(out, table, pd.DataFrame(), pd.DataFrame())
    table.to_csv(out / "runs.csv", index=False)
    report.files.append(out / "runs.csv")

    frame, factors, seed = factor_table(table, spec, variants)
    report.summary = analysis.summarize(frame, factors)
    report.effects = analysis.effects(frame, factors, seed)
    for name, data in (("summary.csv", report.summary), ("effects.csv", report.effects)):
        data.to_csv(out / name, index=False)
        report.files.append(out / name)

    done = analysis.finished(frame)
    histories = metric_histories(client, list(done["run_id"]))
    for stale in out.glob("curves_*.png"):  # figures of axes this sweep no longer has
        stale.unlink()
    figures = {f"curves_{re.sub(r'[^A-Za-z0-9_-]+', '_', factor)}.png": plots.loss_curves(frame, histories, factor, factors)
               for factor in factors}
    if not factors:
        figures["curves.png"] = plots.loss_curves(frame, histories, "setting", [])
    figures["final_val_loss.png"] = plots.final_val_loss_bars(report.summary, frame, factors)
    figure_paths = []
    for name, figure in figures.items():
        figure.savefig(out / name)
        figure_paths.append(out / name)
    report.files += figure_paths

    samples = {row["variant"]: run_samples(client, row["run_id"]) for _, row in frame.iterrows()
               if isinstance(row["run_id"], str)}
    answers = analysis.findings(frame, report.summary, factors, seed)
    parent = sweep_run(runs, overrides or {}, seeds)
    provenance = {"rebuild": report_command(spec, overrides or {}, seeds, results_dir)}
    if parent is not None:
        provenance.update(sweep_command=parent.get("tags.command"), sweep_commit=parent.get("tags.git_commit"),
                          sweep_run=parent["run_id"])
    markdown = render_markdown(spec, uri, table, report.summary, report.effects, answers, figure_paths, samples, provenance)
    (out / "report.md").write_text(markdown, encoding="utf-8")
    report.files.append(out / "report.md")

    if log_to_mlflow and parent is not None:  # only the report of a recorded sweep goes into MLflow
        try:
            for path in report.files:
                client.log_artifact(parent["run_id"], str(path), FIGURE_FOLDER)
            for run_id in done["run_id"]:
                for path in figure_paths:
                    client.log_artifact(run_id, str(path), FIGURE_FOLDER)
        except Exception as exc:  # the files are written; MLflow copies are a convenience
            report.warnings.append(f"could not log the report to MLflow: {type(exc).__name__}: {exc}")
    elif log_to_mlflow:
        report.warnings.append("no sweep run with these overrides and seeds: the report is not logged to MLflow")
    return report
