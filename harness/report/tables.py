"""Reports from MLflow alone: ``results/<name>/`` with runs.csv, summary.csv, effects.csv, PNGs and report.md.

A variant's row comes from the run with its config hash (FINISHED first, then the latest), so a
table always describes exactly the variants of the spec, whatever else the experiment holds.
``write_report`` builds everything; ``harness run`` and ``harness report`` both call it.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
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

from harness.metrics import FINALS, mlflow_key
from harness.report import analysis, tokenizers
from harness.spec.expansion import variant_id
from harness.spec.keys import SEED_KEY
from harness.spec.records import Spec, Variant
from harness.tracking.claims import SWEEP_TAG  # marks parent runs; their params record the overrides and seeds used

METRIC_COLUMNS = list(FINALS)  # the runs.csv metric columns, in harness.metrics's order
PROJECT_ROOT = Path(__file__).resolve().parents[2]
STATUS_RANK = {"FINISHED": 0, "RUNNING": 1, "KILLED": 2, "FAILED": 3}


class ReportError(Exception):
    pass


# -- where reports go, and what they may say about this machine ----------------------------------------------


def overrides_folder(overrides: dict | None, seeds: list[int] | None) -> str:
    """``overrides-<8 hex>``: a short hash of the overrides and seeds, so each such run has a folder of its own."""
    canonical = json.dumps({"overrides": overrides or {}, "seeds": seeds or None}, sort_keys=True, default=str)
    return "overrides-" + hashlib.sha256(canonical.encode()).hexdigest()[:8]


def as_written(spec: Spec, overrides: dict | None, seeds: list[int] | None) -> bool:
    """True when the report describes the spec as written: no overrides, and the spec's own seeds."""
    return not overrides and (seeds is None or list(seeds) == list(spec.seeds or []))


def report_directory(
    results_dir: Path, spec: Spec, overrides: dict | None = None, seeds: list[int] | None = None
) -> Path:
    """``results/<name>/`` for the spec as written (the committed reference); with overrides or other seeds,
    ``results/<name>/overrides-<hash>/`` beside it, so a quick run never overwrites the reference."""
    out = Path(results_dir) / spec.name
    return out if as_written(spec, overrides, seeds) else out / overrides_folder(overrides, seeds)


def display_path(path: str | Path) -> str:
    """A path as a committed report may show it: relative to the project root (or the working directory);
    elsewhere only ``.../<name>``, never this machine's folders."""
    path = Path(path)
    if not path.is_absolute():
        return str(path)
    for root in (PROJECT_ROOT, Path.cwd().resolve()):
        try:
            return str(path.resolve().relative_to(root))
        except ValueError:
            continue
    return f".../{path.name}"


_ABSOLUTE = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"`,;:()]+/)*[^\s/'\"`,;:()]*")


def scrub_paths(text: str) -> str:
    """Every absolute path in a text (a command line, an error) shown as :func:`display_path` shows it."""
    return _ABSOLUTE.sub(lambda m: display_path(m.group(0)) if len(m.group(0)) > 1 else m.group(0), text)


def display_command(command: str | None) -> str | None:
    """A recorded command line without machine paths; ``.../__main__.py`` (``python -m harness``) shown as
    ``harness``."""
    if not command:
        return command
    try:
        words = shlex.split(command)
    except ValueError:
        return scrub_paths(command)
    if words and words[0].endswith("harness/__main__.py"):
        words[0] = "harness"
    return shlex.join(scrub_paths(w) for w in words)


def display_uri(uri: str) -> str:
    """The tracking URI relative to the project (``sqlite:///mlflow.db``); a local store elsewhere is omitted."""
    for scheme in ("sqlite:///", "file://", ""):
        if uri.startswith(scheme) and (scheme or "://" not in uri):
            shown = display_path(uri[len(scheme) :])
            return "(a local store outside the project)" if shown.startswith(".../") else f"`{scheme}{shown}`"
    return f"`{uri}`"


def display_commit(commit: str | None) -> str:
    """A commit as a report may cite it: the hash of a clean tree, or 'uncommitted changes' (no hash reproduces it)."""
    if not commit or commit == "unknown":
        return "code: unknown commit"
    if commit.endswith("-dirty"):
        return "code: uncommitted changes, so no commit reproduces it exactly"
    return f"code: git commit `{commit[:12]}`"


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


def run_metric(run: pd.Series | None, key: str) -> float:
    """A trainer metric of a run as ``search_runs`` gives it: under its MLflow name (``final/val_loss``), or the
    flat name (``final_val_loss``) that runs recorded before the metric sections used."""
    if run is None:
        return float("nan")
    for column in (f"metrics.{mlflow_key(key)}", f"metrics.{key}"):
        value = run.get(column)
        if value is not None and not pd.isna(value):
            return float(value)
    return float("nan")


def runs_table(runs: pd.DataFrame, variants: list[Variant]) -> pd.DataFrame:
    """One row per variant: id, status, axes, metrics, run id, then the full resolved config.

    A run is found by the variant's identity hash, else by its old (v1) hash for runs recorded before."""
    if not runs.empty and "tags.config_hash" in runs:
        runs = runs[runs["tags.config_hash"].notna()].assign(_rank=runs["status"].map(STATUS_RANK).fillna(9))
        runs = runs.sort_values(["_rank", "start_time"], ascending=[True, False])
        best = {h: row for h, row in runs.drop_duplicates("tags.config_hash").set_index("tags.config_hash").iterrows()}
    else:
        best = {}
    rows = []
    for variant in variants:
        run = best.get(variant.config.config_hash())
        if run is None and getattr(variant, "legacy_hash", None):
            run = best.get(variant.legacy_hash)
        row = {"variant": variant.id, "status": "MISSING" if run is None else run["status"], **variant.axes}
        for metric in METRIC_COLUMNS:
            row[metric] = run_metric(run, metric)
        error = run.get("tags.error") if run is not None else None
        row["error"] = scrub_paths(error) if isinstance(error, str) else None
        row["run_id"] = run["run_id"] if run is not None else None
        row["config_hash"] = variant.config.config_hash()
        for key, value in variant.config.flat().items():
            value = ",".join(map(str, value)) if isinstance(value, list) else value
            row.setdefault(key, scrub_paths(value) if key == "data.path" and isinstance(value, str) else value)
        rows.append(row)
    return pd.DataFrame(rows)


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


def factor_table(
    table: pd.DataFrame, spec: Spec, variants: list[Variant]
) -> tuple[pd.DataFrame, list[str], str | None]:
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
        if _json_param(run, "overrides", {}) == json.loads(json.dumps(overrides or {})) and _json_param(
            run, "seeds", None
        ) == (seeds or None):
            return run
    return None


def metric_histories(client: MlflowClient, run_ids: list[str]) -> dict[str, dict[str, pd.DataFrame]]:
    """run id -> trainer key -> (step, value), sorted by step, for the loss curves: read under the MLflow name
    (``loss/val``), else the flat name of runs recorded before (``val_loss``)."""
    histories = {}
    for run_id in run_ids:
        histories[run_id] = {}
        for key in HISTORY_KEYS:
            points = client.get_metric_history(run_id, mlflow_key(key)) or client.get_metric_history(run_id, key)
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


def _interval_text(mean: float, low: float, high: float, n: int, signed: bool = False) -> str:
    fmt = "+.4f" if signed else ".4f"
    if n == 0 or pd.isna(mean):
        return "-"
    if n == 1 or pd.isna(low):
        return f"{mean:{fmt}} (n=1)"
    return f"{mean:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def _summary_view(summary: pd.DataFrame) -> pd.DataFrame:
    view = summary[["setting", "runs", "n"]].assign(setting=summary["setting"].map(md_text))
    if "n_near_convergence" in summary:
        view["near convergence"] = [
            f"{int(k)}/{n}" for k, n in zip(summary["n_near_convergence"], summary["n"], strict=True)
        ]
    for metric in analysis.SUMMARY_METRICS:
        view[metric] = [
            _interval_text(r[f"{metric}_mean"], r[f"{metric}_ci_low"], r[f"{metric}_ci_high"], r["n"])
            for _, r in summary.iterrows()
        ]
    return view


def _effects_view(effects: pd.DataFrame) -> pd.DataFrame:
    view = pd.DataFrame(
        {
            "metric": effects["metric"],
            "corpus": effects["data"].map(lambda d: md_text(d) if d else "-"),
            "axis": effects["axis"].map(md_text),
            "level vs baseline": [
                md_text(f"{a} vs {b}") for a, b in zip(effects["level"], effects["baseline"], strict=True)
            ],
            "n pairs": effects["n_pairs"],
            "mean difference [95% CI]": [
                _interval_text(m, lo, hi, n, signed=True).replace(" (n=1)", " (n=1, no CI)")
                for m, lo, hi, n in zip(
                    effects["mean_difference"], effects["ci_low"], effects["ci_high"], effects["n_pairs"], strict=True
                )
            ],
            "in bits/char": [
                _interval_text(m, lo, hi, n, signed=True).replace(" (n=1)", "")
                for m, lo, hi, n in zip(
                    effects["mean_difference_bits"],
                    effects["ci_low_bits"],
                    effects["ci_high_bits"],
                    effects["n_pairs"],
                    strict=True,
                )
            ],
            "CI excludes 0": effects["ci_excludes_zero"].map({True: "yes", False: "no"}),
            "near convergence": effects["near_convergence"].map({True: "yes", False: "no"}).fillna("-"),
        }
    )
    return view


def _runs_view(table: pd.DataFrame) -> pd.DataFrame:
    columns = [
        "variant",
        "status",
        "steps_run",
        "final_train_loss",
        "final_val_loss",
        "val_change_last_10pct",
        "excess_loss",
        "loss_noise",
        "bigram_floor",
        "eval_tokens",
    ]
    view = table[[c for c in columns if c in table]].assign(variant=table["variant"].map(md_text))
    if "steps_run" in view:
        view["steps_run"] = view["steps_run"].map(lambda s: "-" if pd.isna(s) else f"{int(s):,}")
    if "eval_tokens" in view:
        view["eval_tokens"] = view["eval_tokens"].map(lambda s: "-" if pd.isna(s) else f"{int(s):,}")
    view = view.rename(columns={"val_change_last_10pct": "val change, last 10%"})
    if table["error"].notna().any():
        view["error"] = table["error"].map(lambda e: md_text(str(e)[:120]) if isinstance(e, str) else "")
    return view


def _markdown_table(frame: pd.DataFrame) -> str:
    """Floats with 4 decimals, NaN as '-'; strings as written (no number parsing, so '+0.0200' keeps its sign)."""
    if not len(frame):
        return "(none)"
    shown = frame.copy()
    for column in shown.columns:
        if pd.api.types.is_float_dtype(shown[column]):
            shown[column] = shown[column].map(lambda v: "-" if pd.isna(v) else f"{v:.4f}")
    return shown.to_markdown(index=False, disable_numparse=True)


def _data_view(table: pd.DataFrame, data: list[str]) -> pd.DataFrame:
    """Each corpus with the split its val loss comes from, and its bigram floor."""
    keys = [k for k in ("data.dataset", "data.path", "data.split", "data.train_fraction") if k in table]
    rows = []
    for corpus in analysis.combinations(table, list(dict.fromkeys(keys))):
        runs = analysis.select(table, corpus)
        done = analysis.finished(runs)
        row = {
            k.split(".")[1]: ("-" if v is None or (isinstance(v, float) and math.isnan(v)) else md_text(v))
            for k, v in corpus.items()
        }
        row["bigram floor (nats)"] = analysis.mean_ci(done["bigram_floor"]).mean if "bigram_floor" in done else math.nan
        row["val tokens scored"] = (
            f"{int(done['eval_tokens'].max()):,}"
            if "eval_tokens" in done and done["eval_tokens"].notna().any()
            else "-"
        )
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame[[c for c in frame.columns if frame[c].ne("-").any()]]


def _references_view(refs: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "match": refs["match"].map(md_text),
            "metric": refs["metric"],
            "measured mean [95% CI]": [
                _interval_text(m, lo, hi, n) + ("" if n == 1 or n == 0 else f" (n={n})")
                for m, lo, hi, n in zip(
                    refs["measured_mean"], refs["measured_ci_low"], refs["measured_ci_high"], refs["n"], strict=True
                )
            ],
            "published": refs["published"],
            "difference": [("-" if pd.isna(d) else f"{d:+.4f}") for d in refs["difference"]],
            "near convergence": refs["near_convergence"].map({True: "yes", False: "no"}).fillna("-"),
            "source": refs["source"].map(md_text),
        }
    )


def ladder_view(
    table: pd.DataFrame,
    effects: pd.DataFrame,
    axis: str,
    order: list,
    data: list[str],
    refs: list,
    metric: str = "final_val_loss",
) -> pd.DataFrame:
    """One row per level of a named axis, in the order written: per corpus, the measured mean [95% CI], the
    published value where a reference gives one, and the paired change from the previous level."""
    corpora = analysis.combinations(table, data)
    rows = []
    for level in analysis.levels(table, axis, order):
        row = {axis: md_text(level)}
        at_level = table[table[axis] == level]
        for corpus in corpora:
            name = "/".join(map(str, corpus.values())) or "val"
            runs = analysis.finished(analysis.select(at_level, corpus))
            interval = analysis.mean_ci(runs[metric] if metric in runs else [])
            row[f"{name} [95% CI]"] = _interval_text(interval.mean, interval.low, interval.high, interval.n)
            cell = {axis: level, **corpus}
            published = [
                r.value
                for r in refs
                if r.metric == metric
                and set(r.match) <= set(cell)
                and all(str(cell[k]) == str(_level_text(v)) for k, v in r.match.items())
            ]
            row[f"{name} published"] = f"{published[0]:.4f}" if published else "-"
            change = effects[
                (effects["metric"] == metric)
                & (effects["kind"] == "treatment")
                & (effects["axis"] == axis)
                & (effects["level"] == level)
                & (effects["data"] == (analysis.corpus_label(corpus) or effects["data"]))
            ]
            row[f"{name} change from previous"] = (
                "-"
                if change.empty
                else _interval_text(
                    change["mean_difference"].iloc[0],
                    change["ci_low"].iloc[0],
                    change["ci_high"].iloc[0],
                    change["n_pairs"].iloc[0],
                    signed=True,
                )
            )
        done = analysis.finished(at_level)
        if "near_convergence" in done:
            row["near convergence"] = f"{int(done['near_convergence'].astype(bool).sum())}/{len(done)}"
        rows.append(row)
    frame = pd.DataFrame(rows)
    published = [c for c in frame.columns if c.endswith(" published")]
    return frame[[c for c in frame.columns if c not in published or frame[c].ne("-").any()]]


def report_command(spec: Spec, overrides: dict, seeds: list[int] | None, results_dir: Path) -> str:
    """The ``harness report`` command line that rebuilds this report."""
    words = ["harness", "report", display_path(spec.path)]
    words += [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in (overrides or {}).items()]
    if seeds and list(seeds) != list(spec.seeds or []):
        words += ["--seeds", *map(str, seeds)]
    if Path(results_dir) != Path("results"):
        words += ["--results-dir", display_path(results_dir)]
    return shlex.join(words)


def render_markdown(
    spec: Spec,
    uri: str,
    table: pd.DataFrame,
    summary: pd.DataFrame,
    effects: pd.DataFrame,
    answers: dict[str, list[str]],
    figures: list[Path],
    samples: dict[str, dict],
    provenance: dict[str, str],
    data: list[str] | None = None,
    refs: pd.DataFrame | None = None,
    ladders: dict[str, pd.DataFrame] | None = None,
    tokenizer_view: pd.DataFrame | None = None,
) -> str:
    from harness.tracking.store import git_commit

    data = data or []
    lines = [f"# {md_text(spec.name)}: sweep report", ""]
    if spec.description:
        lines += [f"> {md_text(spec.description)}", ""]
    lines += [
        f"- Rebuild this report: `{provenance['rebuild']}`",
        (
            f"- Sweep: `{display_command(provenance.get('sweep_command')) or 'unknown'}` "
            f"({display_commit(provenance.get('sweep_commit'))}; MLflow run `{provenance['sweep_run']}`)"
            if provenance.get("sweep_run")
            else "- Sweep: no sweep run with these overrides and seeds; the variants' runs come from earlier "
            "sweeps, if any"
        ),
        f"- Report written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC ({display_commit(git_commit())}) "
        f"from MLflow {display_uri(uri)}, experiment `{md_text(spec.name)}`",
        f"- {len(table)} variant(s): {', '.join(f'{s} {c}' for s, c in table['status'].value_counts().items())}",
    ]
    done = analysis.finished(table)
    if "steps_run" in table:
        steps = table["steps_run"].dropna().astype(int)
        lines.append(
            f"- Steps actually run: {', '.join(f'{s:,}' for s in sorted(set(steps))) or 'none'} "
            f"(spec: {', '.join(f'{s:,}' for s in sorted(set(table['train.steps'])))})"
            if "train.steps" in table
            else f"- Steps actually run: {sorted(set(steps))}"
        )
    if provenance.get("overrides") is not None:
        lines.append(
            f"- Overrides {md_text(provenance['overrides'])}: this report is in `{provenance['folder']}`, "
            "beside the spec's own report, never over it"
        )
    lines.append("")
    if len(summary) and summary["runs"].max() <= 1:
        lines += [
            "One run per variant (no seeds): n is at most 1, so summary.csv has NaN std and CI and no "
            "interval is possible. Repeat the sweep with `--seeds 1 2 3` for intervals.",
            "",
        ]
    not_finished = table[table["status"] != analysis.FINISHED]
    if len(not_finished):
        lines += [
            f"**Not finished: {len(not_finished)} variant(s)** (shown below, left out of every statistic): "
            + ", ".join(
                f"{md_text(v)} ({s})" for v, s in zip(not_finished["variant"], not_finished["status"], strict=True)
            ),
            "",
        ]

    lines += ["## How verdicts are drawn", "", analysis.CONVERGENCE_RULE, ""]
    if "near_convergence" in done and len(done):
        moving = int((~done["near_convergence"].astype(bool)).sum())
        lines += [
            f"Here {len(done) - moving} of {len(done)} finished runs are near convergence"
            + (f"; {md_text(analysis.too_short(done))}." if moving else "."),
            "",
        ]
    if "loss_noise" in done and len(done) and done["loss_noise"].isna().any():
        nan_runs = done[done["loss_noise"].isna()]
        lines += [
            f"loss\\_noise is NaN for {len(nan_runs)} run(s): {md_text(analysis.loss_noise_reason(nan_runs))}.",
            "",
        ]

    lines += [
        "## Data",
        "",
        "Which split each corpus's val loss comes from (`data.split`: `position` = the last part "
        "of the file, as in the lecture; `shuffled-rows` = a seeded shuffle of whole rows). Differences between "
        'corpora are labelled "different data", never ranked as a treatment.',
        "",
        _markdown_table(_data_view(table, data)),
        "",
    ]

    if tokenizer_view is not None:
        lines += tokenizers.tokenizer_markdown(tokenizer_view, effects)
    lines += [
        "## Answers",
        "",
        f"Intervals are {analysis.CONFIDENCE:.0%} t-intervals (scipy.stats); differences are paired "
        "(same other axes and seed).",
        "",
    ]
    for question, sentences in answers.items():
        lines += [f"**{question}**", ""] + [f"- {md_text(s)}" for s in sentences] + [""]

    if refs is not None and len(refs):
        lines += [
            "## Published references",
            "",
            "Each reference of the spec beside the measured mean of its metric over the finished runs it "
            "matches; difference = measured - published.",
            "",
            _markdown_table(_references_view(refs)),
            "",
        ]
    for axis, ladder in (ladders or {}).items():
        lines += [
            f"## Ladder: {md_text(axis)}",
            "",
            f"One row per level of `{md_text(axis)}` in the order written; final val loss mean [95% CI] over "
            "seeds; the change is paired against the previous level (same seed and corpus).",
            "",
            _markdown_table(ladder),
            "",
        ]

    lines += [
        "## Summary (seeds folded)",
        "",
        f"Mean [{analysis.CONFIDENCE:.0%} CI] over the n finished seeds of each setting (summary.csv has std too).",
        "",
        _markdown_table(_summary_view(summary)),
        "",
        "## Effects",
        "",
        "Treatments are compared within each corpus, paired on every other axis and the seed: each level "
        "against the axis's first level, or against the previous level for a named axis (its levels in the "
        "order written); within a corpus, the axis with the largest effect first (effects.csv). "
        'Rows with corpus "-" are different data, not a treatment. Bits per character = nats / ln 2.',
        "",
        _markdown_table(_effects_view(effects)),
        "",
        "## Plots",
        "",
        "The dotted/dashed black lines are the bigram floor of each corpus's train split: the best a model "
        "that reads one character can do. Models that read context are expected to go below it.",
        "",
    ]
    lines += [f"![{path.stem}]({path.name})" + "\n" for path in figures]
    lines += [
        "## Runs",
        "",
        _markdown_table(_runs_view(table)),
        "",
        "## Samples",
        "",
        "Generated text before and after training, exactly as sampled (HTML-escaped).",
        "",
    ]
    for _, row in table.iterrows():
        found = samples.get(row["variant"], {"before": None, "after": None})
        lines += [
            f"### {md_text(row['variant'])} ({row['status']})",
            "",
            "<table><tr><th>before training</th><th>after training</th></tr>",
            f"<tr><td>{pre_block(found['before'])}</td>",
            f"<td>{pre_block(found['after'])}</td></tr></table>",
            "",
        ]
    return "\n".join(lines)


def write_report(
    uri: str,
    spec: Spec,
    variants: list[Variant],
    results_dir: Path,
    runs: pd.DataFrame | None = None,
    overrides: dict | None = None,
    seeds: list[int] | None = None,
    log_to_mlflow: bool = True,
) -> Report:
    """Everything in results/<name>/ (or its overrides-<hash>/ folder) from MLflow alone; the files also go to
    the matching sweep run (under ``report/``). Sweep-wide figures go on that parent run only, not on each child."""
    from harness.report import plots

    runs = experiment_runs(uri, spec) if runs is None else runs
    client = MlflowClient(uri)
    out = report_directory(results_dir, spec, overrides, seeds)
    out.mkdir(parents=True, exist_ok=True)
    table = runs_table(runs, variants)
    with_run = table[table["run_id"].map(lambda r: isinstance(r, str)) & (table["status"] == analysis.FINISHED)]
    histories = metric_histories(client, list(with_run["run_id"]))
    table = analysis.with_convergence(table, {r: h.get("val_loss") for r, h in histories.items()})
    first_config = table.columns.get_loc("config_hash")  # convergence columns beside the metrics, not after the config
    columns = list(table.columns)
    for name in ("steps_run", "val_change_last_10pct", "near_convergence"):
        columns.remove(name)
    columns[first_config:first_config] = ["steps_run", "val_change_last_10pct", "near_convergence"]
    table = table[columns]
    report = Report(out, table, pd.DataFrame(), pd.DataFrame())
    table.to_csv(out / "runs.csv", index=False)
    report.files.append(out / "runs.csv")

    frame, factors, seed = factor_table(table, spec, variants)
    named = {axis: list(names) for axis, names in getattr(spec, "named_axes", {}).items() if axis in factors}
    data = analysis.data_factors(frame, factors, seed)
    refs = list(getattr(spec, "references", []) or [])
    report.summary = analysis.attach_references(analysis.summarize(frame, factors), frame, refs)
    report.effects = analysis.effects(frame, factors, seed, data=data, orders=named)
    references = analysis.references(frame, refs)
    for name, content in (("summary.csv", report.summary), ("effects.csv", report.effects)):
        content.to_csv(out / name, index=False)
        report.files.append(out / name)
    tokenizer_view = tokenizers.tokenizer_table(frame) if tokenizers.varies_tokenizer(frame) else None
    if tokenizer_view is not None:
        tokenizer_view.to_csv(out / "tokenizers.csv", index=False)
        report.files.append(out / "tokenizers.csv")

    for stale in out.glob("curves_*.png"):  # figures of axes this sweep no longer has
        stale.unlink()
    figures = {
        f"curves_{re.sub(r'[^A-Za-z0-9_-]+', '_', factor)}.png": plots.loss_curves(
            frame, histories, factor, factors, named.get(factor)
        )
        for factor in factors
    }
    if not factors:
        figures["curves.png"] = plots.loss_curves(frame, histories, "setting", [])
    figures["final_val_loss.png"] = plots.final_val_loss_bars(report.summary, frame, factors)
    figure_paths = []
    for name, figure in figures.items():
        figure.savefig(out / name)
        figure_paths.append(out / name)
    report.files += figure_paths

    samples = {
        row["variant"]: run_samples(client, row["run_id"])
        for _, row in frame.iterrows()
        if isinstance(row["run_id"], str)
    }
    answers = analysis.findings(frame, report.summary, factors, seed, data=data)
    ladders = {axis: ladder_view(frame, report.effects, axis, order, data, refs) for axis, order in named.items()}
    parent = sweep_run(runs, overrides or {}, seeds)
    provenance = {"rebuild": report_command(spec, overrides or {}, seeds, results_dir)}
    if not as_written(spec, overrides, seeds):
        words = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in (overrides or {}).items()]
        provenance.update(
            overrides=" ".join(words + (["--seeds", *map(str, seeds)] if seeds else [])), folder=display_path(out)
        )
    if parent is not None:
        commits = [
            parent.get(f"tags.{t}") for t in ("git_commit", "mlflow.source.git.commit")
        ]  # the first knows -dirty
        provenance.update(
            sweep_command=parent.get("tags.command"),
            sweep_commit=next((c for c in commits if isinstance(c, str) and c), None),
            sweep_run=parent["run_id"],
        )
    markdown = render_markdown(
        spec,
        uri,
        table,
        report.summary,
        report.effects,
        answers,
        figure_paths,
        samples,
        provenance,
        data=data,
        refs=references,
        ladders=ladders,
        tokenizer_view=tokenizer_view,
    )
    (out / "report.md").write_text(markdown, encoding="utf-8")
    report.files.append(out / "report.md")

    if log_to_mlflow and parent is not None:  # only the report of a recorded sweep goes into MLflow
        try:
            for path in report.files:
                client.log_artifact(parent["run_id"], str(path), FIGURE_FOLDER)
        except Exception as exc:  # the files are written; MLflow copies are a convenience
            report.warnings.append(f"could not log the report to MLflow: {type(exc).__name__}: {exc}")
    elif log_to_mlflow:
        report.warnings.append("no sweep run with these overrides and seeds: the report is not logged to MLflow")
    return report
