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
import re
import shlex
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import mlflow
import numpy as np
import pandas as pd
import yaml
from mlflow.tracking import MlflowClient

from harness.metrics import FINALS, mlflow_key
from harness.report import analysis, tokenizers
from harness.report import tuning as tuning_report
from harness.spec.expansion import variant_id
from harness.spec.keys import SEED_KEY
from harness.spec.records import Spec, Variant
from harness.tracking.claims import SWEEP_TAG  # marks parent runs; their params record the overrides and seeds used
from harness.tracking.store import quiet_downloads

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


def _deciding_sweeps(runs: pd.DataFrame) -> pd.DataFrame:
    """The sweep runs whose variants a report is of: not a tuning phase's, nor the untuned comparison's."""
    sweeps = runs[runs[f"tags.{SWEEP_TAG}"].notna()]
    if "tags.phase" in sweeps:
        sweeps = sweeps[~sweeps["tags.phase"].isin(["tune", "untuned"])]
    return sweeps


def last_sweep_arguments(runs: pd.DataFrame) -> tuple[dict, list[int] | None]:
    """The overrides and seeds of the latest sweep, so that ``harness report SPEC`` needs no repeat of them."""
    column = f"tags.{SWEEP_TAG}"
    if runs.empty or column not in runs or runs[column].isna().all():
        return {}, None
    sweeps = _deciding_sweeps(runs)
    if sweeps.empty:
        return {}, None
    latest = sweeps.sort_values("start_time").iloc[-1]
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
        stack = run.get("tags.stacked_seeds") if run is not None else None  # its train_time_s is the stack's
        row["stacked_seeds"] = len(stack.split(",")) if isinstance(stack, str) and stack else 1
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
BITS_HISTORY_KEYS = ("train_bpc", "val_bpc")  # read too when the tokenizer varies: the curves are drawn in bits
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
    sweeps = _deciding_sweeps(runs).sort_values("start_time", ascending=False)
    for _, run in sweeps.iterrows():
        if _json_param(run, "overrides", {}) == json.loads(json.dumps(overrides or {})) and _json_param(
            run, "seeds", None
        ) == (seeds or None):
            return run
    return None


def metric_histories(
    client: MlflowClient, run_ids: list[str], keys: tuple[str, ...] = HISTORY_KEYS
) -> dict[str, dict[str, pd.DataFrame]]:
    """run id -> trainer key -> (step, value), sorted by step, for the loss curves: read under the MLflow name
    (``loss/val``), else the flat name of runs recorded before (``val_loss``)."""
    histories = {}
    for run_id in run_ids:
        histories[run_id] = {}
        for key in keys:
            points = client.get_metric_history(run_id, mlflow_key(key)) or client.get_metric_history(run_id, key)
            frame = pd.DataFrame({"step": [p.step for p in points], "value": [p.value for p in points]})
            histories[run_id][key] = frame.sort_values("step").drop_duplicates("step", keep="last")
    return histories


def run_samples(client: MlflowClient, run_id: str) -> dict[str, str | None]:
    """samples/before.txt and samples/after.txt of a run (None where it logged none)."""
    found = {"before": None, "after": None}
    with tempfile.TemporaryDirectory() as tmp, quiet_downloads():
        try:
            folder = Path(client.download_artifacts(run_id, "samples", tmp))
        except Exception:  # no samples folder: the run failed before sampling
            return found
        for name in found:
            path = folder / f"{name}.txt"
            if path.exists():
                found[name] = path.read_text(encoding="utf-8")
    return found


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
    if "verdict" in effects:
        at = list(view.columns).index("mean difference [95% CI]") + 1
        view.insert(at, "verdict", effects["verdict"].to_numpy())
        view.insert(
            at + 1,
            "adjusted CI",
            [
                "-" if pd.isna(lo) else f"[{lo:+.4f}, {hi:+.4f}]"
                for lo, hi in zip(effects["adj_ci_low"], effects["adj_ci_high"], strict=True)
            ],
        )
        cap = analysis.verdicts.PRACTICAL_MAX_SEEDS
        view.insert(
            at + 2,
            "seeds needed",
            ["-" if pd.isna(n) else f"over {cap:,}" if n > cap else str(int(n)) for n in effects["seeds_needed"]],
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


# -- verdicts and the seeds that would decide the undecided ----------------------------------------------------

UNCAPPED = 1_000_000  # a report's plan is cut by no --max-seeds (needs past PRACTICAL_MAX_SEEDS: in words)


def stein_pilot(spec: Spec, seeds: list[int] | None) -> list[int] | None:
    """The pilot of a Stein second stage: the spec's own seeds (2 or more) when ``seeds`` extends them; else None."""
    pilot = list(spec.seeds or [])
    seeds = list(seeds or [])
    return pilot if len(pilot) >= 2 and len(seeds) > len(pilot) and seeds[: len(pilot)] == pilot else None


def _tuning_seeds(spec: Spec) -> list[int]:
    """A tuned spec's tuning seeds, which a plan's fresh seeds pass over."""
    return list(spec.tune.seeds) if getattr(spec, "tune", None) else []


def extend_seeds(seeds: list[int], total: int, avoid: list[int] | None = None) -> list[int]:
    """``seeds`` continued with max(seeds) + 1, + 2, ... up to ``total`` seeds, passing over ``avoid`` (a tuned
    spec's tuning seeds: the seeds that decide must be fresh)."""
    seeds = list(seeds)
    nxt = max(seeds) + 1 if seeds else 1
    while len(seeds) < total:
        if nxt not in set(avoid or []):
            seeds.append(nxt)
        nxt += 1
    return seeds


def _override_words(overrides: dict | None) -> list[str]:
    return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in (overrides or {}).items()]


def _seed_words(seeds: list[int]) -> str:
    """``--seeds 1 2 3``; a long run of consecutive seeds as ``--seeds $(seq 1 40)`` (a command one can type)."""
    seeds = list(seeds)
    if len(seeds) > 12 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"--seeds $(seq {seeds[0]} {seeds[-1]})"
    return shlex.join(["--seeds", *map(str, seeds)])


def train_command(spec: Spec, overrides: dict | None, seeds: list[int]) -> str:
    """The ``harness run`` command line that trains these seeds of every variant (finished ones are skipped)."""
    words = shlex.join(["harness", "run", display_path(spec.path), *_override_words(overrides)])
    return words if list(seeds) == list(spec.seeds or []) else f"{words} {_seed_words(seeds)}"


def verdict_effects(
    frame: pd.DataFrame,
    spec: Spec,
    factors: list[str],
    seed: str | None,
    seeds: list[int] | None,
    delta: float | None = None,
    alpha: float = analysis.ALPHA,
) -> tuple[pd.DataFrame, analysis.verdicts.Family, list[int] | None]:
    """effects.csv with its verdicts, the family, and the Stein pilot (None unless ``seeds`` extends the spec's)."""
    named = {axis: list(names) for axis, names in getattr(spec, "named_axes", {}).items() if axis in factors}
    data = analysis.data_factors(frame, factors, seed)
    pilot = stein_pilot(spec, seeds)
    effects = analysis.effects(frame, factors, seed, data=data, orders=named, pilot=pilot)
    done = analysis.finished(frame)
    moving = None
    if "near_convergence" in done and len(done) and not done["near_convergence"].astype(bool).all():
        moving = analysis.still_moving(frame)
    delta = spec.practical_difference if delta is None else delta
    effects, family = analysis.with_verdicts(effects, delta, alpha, moving=moving)
    return effects, family, pilot


@dataclass
class SeedPlan:
    """What a report or ``harness plan`` says about seeds: Stein's plan, the seeds it means, and the command."""

    plan: analysis.verdicts.Plan
    seeds: list[int]  # the seeds to have trained, the pilot's first
    pilot: list[int]
    command: str
    until_decided: str
    new_runs: int
    seconds: float  # estimated from the recorded train times (NaN when none is recorded)
    effects: pd.DataFrame | None = None  # the pilot's effects with their (provisional) verdicts
    family: analysis.verdicts.Family | None = None


def _train_seconds(frame: pd.DataFrame, seeds: int) -> float:
    """Wall time at one job of ``seeds`` more seeds of every setting, from the train times the runs recorded (a
    stacked seed's share of its stack's time); NaN when none is recorded."""
    done = analysis.finished(frame)
    times = pd.to_numeric(done.get("train_time_s", pd.Series(dtype=float)), errors="coerce")
    if "stacked_seeds" in done:  # a stacked seed records the whole stack's time: its share is time / seeds
        times = times / pd.to_numeric(done["stacked_seeds"], errors="coerce").fillna(1).clip(lower=1)
    per_setting = times.groupby(done["setting"]).mean() if "setting" in done and times.notna().any() else None
    return float(per_setting.sum() * seeds) if per_setting is not None else math.nan


def report_plan(
    frame: pd.DataFrame,
    effects: pd.DataFrame,
    spec: Spec,
    overrides: dict | None,
    pilot: list[int],
    delta: float | None = None,
    max_seeds: int = UNCAPPED,
    trained: list[int] | None = None,
) -> SeedPlan:
    """Stein's second stage from the pilot's spreads (a pilot of ``MIN_PILOT_SEEDS`` or more), the seeds it means
    and the one command that trains them, with a wall time estimated from the train times the pilot's runs recorded
    (one job; a stacked seed's share of its stack's time)."""
    delta = spec.practical_difference if delta is None else delta
    plan = analysis.seed_plan(effects, delta, len(pilot), max_seeds)
    seeds = extend_seeds(pilot, plan.seeds, _tuning_seeds(spec))
    extra = len([s for s in seeds if s not in set(trained or pilot)])
    settings = frame["setting"].nunique() if "setting" in frame else 0
    until = shlex.join(
        [
            "harness",
            "run",
            display_path(spec.path),
            *_override_words(overrides),
            "--until-decided",
            "--max-seeds",
            str(plan.seeds),
        ]
    )
    return SeedPlan(
        plan,
        seeds,
        list(pilot),
        train_command(spec, overrides, seeds),
        until,
        extra * settings,
        _train_seconds(frame, extra),
    )


@dataclass
class PilotAdvice:
    """Below a pilot of ``MIN_PILOT_SEEDS`` seeds per variant no plan is made: the seeds to run first instead."""

    have: list[int]  # the seeds trained (the base config's one seed when the sweep has no seed axis)
    seeds: list[int]  # the pilot to train: ``have`` continued to MIN_PILOT_SEEDS
    command: str
    new_runs: int
    seconds: float

    def describe(self) -> str:
        have = len(self.have)
        return (
            f"No seed plan from {have} seed{'s' if have != 1 else ''} per variant: a plan is built on the spread of "
            f"a pilot of {analysis.verdicts.MIN_PILOT_SEEDS} seeds per variant at least (with fewer, that spread "
            f"is too uncertain to plan from). Run the pilot first ({self.new_runs} more runs, "
            f"{at_one_job(self.seconds)}); the report then plans the rest from it"
        )


def pilot_advice(frame: pd.DataFrame, spec: Spec, overrides: dict | None, have: list[int]) -> PilotAdvice:
    """The seeds to run before anything can be planned: ``have`` (the seeds trained) continued to a pilot of
    ``MIN_PILOT_SEEDS``, and the command. A sweep without a seed axis ran the base config's ``train.seed``: the
    pilot starts from it, so that run is reused."""
    seeds = extend_seeds(have, analysis.verdicts.MIN_PILOT_SEEDS, _tuning_seeds(spec))
    extra = len(seeds) - len(have)
    settings = frame["setting"].nunique() if "setting" in frame else 0
    return PilotAdvice(
        list(have), seeds, train_command(spec, overrides, seeds), extra * settings, _train_seconds(frame, extra)
    )


def trained_seeds(frame: pd.DataFrame, seed: str | None, seeds: list[int] | None) -> list[int]:
    """The seeds these runs were trained with: the seed axis's, else the one ``train.seed`` of the base config."""
    if seeds:
        return list(seeds)
    column = seed or SEED_KEY
    values = pd.to_numeric(frame[column], errors="coerce").dropna().astype(int) if column in frame else []
    return list(dict.fromkeys(int(v) for v in values))


def pilot_plan(
    uri: str,
    spec: Spec,
    overrides: dict | None,
    pilot: list[int],
    delta: float | None,
    max_seeds: int,
    adjust: Callable[[list[Variant]], list[Variant]] | None = None,
) -> SeedPlan:
    """Stein's plan from the pilot's runs that MLflow holds (the variants of ``pilot`` seeds with ``overrides``;
    ``adjust`` turns them into the variants that ran, e.g. each at its tuned point); a ReportError when nothing
    of them is recorded."""
    from harness.spec.expansion import expand, with_seeds

    database = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else None
    if database is not None and not Path(database).exists():  # opening it would create a store
        raise ReportError(f"nothing recorded for {spec.path}: no MLflow store at {display_path(database)}")
    runs = experiment_runs(uri, spec)
    if len(pilot) < analysis.verdicts.MIN_PILOT_SEEDS:
        raise ReportError(
            f"{spec.path}: a plan needs a pilot of {analysis.verdicts.MIN_PILOT_SEEDS} seeds or more (the spec's "
            f"`seeds`, or the last sweep's --seeds); this one has {len(pilot) or 'none'}"
        )
    if max_seeds < len(pilot):
        raise ReportError(f"--max-seeds {max_seeds} is below the pilot's {len(pilot)} seeds")
    variants = expand(with_seeds(spec, pilot), overrides)
    if adjust is not None:
        variants = adjust(variants)
    table = runs_table(runs, variants)
    if not (table["status"] == analysis.FINISHED).any():
        raise ReportError(
            f"nothing recorded for {spec.path} with seeds {' '.join(map(str, pilot))}"
            + (f" and overrides {overrides}" if overrides else "")
            + f": no FINISHED run of its {len(variants)} variants; run `{train_command(spec, overrides, pilot)}` first"
        )
    frame, factors, seed = factor_table(table, spec, variants)
    effects, family, _ = verdict_effects(frame, spec, factors, seed, pilot, delta)
    found = report_plan(frame, effects, spec, overrides, pilot, delta, max_seeds)
    found.effects, found.family = effects, family
    return found


def plan_lines(spec: Spec, found: SeedPlan, max_seeds: int) -> list[str]:
    """What ``harness plan`` prints: the family, each undecided effect's seeds, the plan and the one command."""
    family, effects = found.family, found.effects
    lines = [
        f"{display_path(spec.path)}: pilot seeds {' '.join(map(str, found.pilot))} (n0 = {len(found.pilot)}), "
        f"{family.effects} effects; {family.describe()}"
    ]
    undecided = effects[effects["verdict"] == "undecided"]
    lines.append(f"pilot verdicts (provisional): {analysis.verdict_counts(effects)}")
    members = effects[analysis.in_family(effects)]
    needs = dict(zip(members.index, found.plan.needed, strict=True))
    for index, effect in effects.iterrows():
        if effect["verdict"] != "undecided":
            continue
        need = needs.get(index)
        label = analysis.effect_label(effect)
        if need is None:
            lines.append(f"  undecided {label}: {effect['reason']}")
        elif need > analysis.verdicts.PRACTICAL_MAX_SEEDS:
            sd = effect["pilot_std"] if "pilot_std" in effect and not pd.isna(effect["pilot_std"]) else effect["std"]
            words = analysis.verdicts.out_of_reach(effect["mean_difference"], sd, found.plan.delta)
            lines.append(f"  undecided {label}: {words}")
        else:
            lines.append(
                f"  undecided {label}: needs {need} seeds"
                + (f" (over --max-seeds {max_seeds})" if need > max_seeds else "")
            )
    if undecided.empty:
        lines.append("  no effect is undecided")
    lines.append(found.plan.describe([analysis.effect_label(e) for _, e in members.iterrows()]))
    if found.new_runs:
        lines += [
            f"train them ({found.new_runs} more runs, about {duration_text(found.seconds)} at one job, from the "
            "recorded train times):",
            f"  {found.command}",
        ]
        if len(spec.seeds or []) >= 2 and list(found.pilot) == list(spec.seeds):
            lines.append(f"  (the same: {found.until_decided})")
    else:
        lines.append("nothing to train: the pilot's seeds are all the plan needs")
    return lines


def plan_from_store(
    spec: Spec,
    overrides: dict | None,
    seeds: list[int] | None,
    delta: float | None,
    max_seeds: int,
    adjust: Callable[[list[Variant]], list[Variant]] | None = None,
) -> list[str]:
    """``harness plan``: the pilot (the spec's own seeds, else the last sweep's) and overrides (the last sweep's
    unless given) read from MLflow, and Stein's plan from it."""
    from harness.tracking.store import tracking_uri

    uri = tracking_uri()
    database = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else None
    if database is not None and not Path(database).exists():
        raise ReportError(f"nothing recorded for {spec.path}: no MLflow store at {display_path(database)}")
    runs = experiment_runs(uri, spec)
    if not overrides and seeds is None:
        overrides, seeds = last_sweep_arguments(runs)
    enough = analysis.verdicts.MIN_PILOT_SEEDS
    pilot = list(spec.seeds) if len(spec.seeds or []) >= enough else list(seeds or spec.seeds or [])
    if len(pilot) < enough:
        from harness.spec.expansion import expand, with_seeds

        variants = expand(with_seeds(spec, pilot or None), overrides)
        if adjust is not None:
            variants = adjust(variants)
        frame, _, seed = factor_table(runs_table(runs, variants), spec, variants)
        advice = pilot_advice(frame, spec, overrides, trained_seeds(frame, seed, pilot))
        return [f"{display_path(spec.path)}: {advice.describe()}:", f"  {advice.command}"]
    return plan_lines(spec, pilot_plan(uri, spec, overrides, pilot, delta, max_seeds, adjust), max_seeds)


def at_one_job(seconds: float) -> str:
    """'about 12 min at one job', or why there is no estimate."""
    if not math.isfinite(seconds):
        return "time unknown: no train time recorded"
    return f"about {duration_text(seconds)} at one job"


def duration_text(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown (no train time recorded)"
    if seconds < 1:
        return "under 1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# -- report.md: a list of sections, in reading order ------------------------------------------------------------


class Section(NamedTuple):
    """One part of report.md: a key (for ``insert_section``) and its markdown lines."""

    key: str
    lines: list[str]


def insert_section(sections: list[Section], section: Section, after: str) -> list[Section]:
    """``sections`` with ``section`` placed after the one keyed ``after`` (at the end when there is none): how a
    stage of its own (e.g. tuning) adds its part to the report."""
    keys = [s.key for s in sections]
    at = keys.index(after) + 1 if after in keys else len(sections)
    return [*sections[:at], section, *sections[at:]]


def join_sections(sections: list[Section]) -> str:
    return "\n".join(line for section in sections for line in section.lines)


@dataclass
class ReportParts:
    """Everything report.md is written from (``report_sections`` turns it into sections)."""

    spec: Spec
    table: pd.DataFrame  # runs.csv
    summary: pd.DataFrame
    effects: pd.DataFrame
    family: analysis.verdicts.Family | None
    answers: dict[str, list[str]]
    figures: list[Path]
    provenance: dict
    data: list[str] = field(default_factory=list)
    refs: pd.DataFrame | None = None
    ladders: dict[str, pd.DataFrame] = field(default_factory=dict)
    tokenizer_view: pd.DataFrame | None = None
    samples: dict[str, dict] | None = None  # variant -> before/after; None: ``carried_samples`` instead
    carried_samples: list[str] | None = None  # the Samples section of the report this one rebuilds from runs.csv
    pilot: list[int] | None = None  # a Stein second stage's pilot
    seeds: list[int] = field(default_factory=list)  # the seeds trained
    plan: SeedPlan | None = None
    advice: PilotAdvice | None = None
    applied: list[str] = field(default_factory=list)  # each override with the spec's own value
    spec_steps: list[int] = field(default_factory=list)  # train.steps as the spec writes them


def _count_text(values) -> str:
    return ", ".join(f"{v:,}" for v in sorted(set(values)))


def header_section(parts: ReportParts) -> Section:
    """The title, what ran (the overrides that applied beside the spec's own values, the steps, the seeds) and what
    did not finish."""
    spec, table, provenance = parts.spec, parts.table, parts.provenance
    lines = [f"# {md_text(spec.name)}: sweep report", ""]
    if spec.description:
        lines += [f"> {md_text(spec.description)}", ""]
    if parts.applied:
        lines.append(
            f"- **Overrides applied**: {md_text('; '.join(parts.applied))}. The description above is the spec's; "
            f"every number below is from these runs. This report is in `{provenance['folder']}`, beside the spec's "
            "own report, never over it."
        )
    steps = table["steps_run"].dropna().astype(int) if "steps_run" in table else pd.Series(dtype=int)
    written = f"the spec as written: {_count_text(parts.spec_steps)}" if parts.spec_steps else ""
    if parts.spec_steps and set(steps) == set(parts.spec_steps):
        written = "as the spec says"
    lines.append(f"- Steps actually run: {_count_text(steps) or 'none'}" + (f" ({written})" if written else ""))
    statuses = ", ".join(f"{s} {c}" for s, c in table["status"].value_counts().items())
    seeds = parts.seeds
    seed_text = (
        f"one seed per variant (train.seed {seeds[0]})"
        if len(seeds) == 1
        else f"{len(seeds)} seeds per variant ({', '.join(map(str, seeds))})"
        if seeds
        else "seeds unknown"
    )
    lines += [f"- {len(table)} variant(s): {statuses}; {seed_text}", ""]
    not_finished = table[table["status"] != analysis.FINISHED]
    if len(not_finished):
        lines += [
            f"**Not finished: {len(not_finished)} variant(s)** (shown below, left out of every statistic): "
            + ", ".join(
                f"{md_text(v)} ({s})" for v, s in zip(not_finished["variant"], not_finished["status"], strict=True)
            ),
            "",
        ]
    return Section("header", lines)


def _unmeasured_reason(table: pd.DataFrame, rows: pd.DataFrame) -> str:
    done = analysis.finished(table)
    if (rows["metric"] == "loss_noise").all() and "loss_noise" in done and done["loss_noise"].isna().all():
        return analysis.loss_noise_reason(table)
    return "no finished pair of runs with this metric"


def findings_section(parts: ReportParts) -> Section:
    """What the sweep found: the counts (which add up), one plain sentence per effect, and what to run next."""
    effects, family = parts.effects, parts.family
    lines = ["## What the sweep found", ""]
    if not len(effects):
        return Section("findings", [*lines, "No effects: this sweep varies nothing but the seed.", ""])
    lines += [
        md_text(analysis.verdict_counts(effects))
        + (
            f" δ = ±{family.delta:g} nats (the spec's `practical_difference`): a smaller difference counts as none. "
            f"The chance of any false verdict in this report is held at {family.alpha:.0%} (how: the appendix)."
            if family is not None and (effects["kind"] == "treatment").any()
            else ""
        ),
        "",
    ]
    missing = analysis.unmeasured(effects)
    for _, effect in effects.drop(index=missing.index).iterrows():
        if effect["n_pairs"] == 0:  # different data without pairs: nothing to say
            continue
        word, rest = analysis.effect_sentence(effect).split(": ", 1)
        lines.append(f"- **{md_text(word)}**: {md_text(rest)}")
    if len(missing):
        names = [
            f"{analysis.METRIC_WORDS.get(e['metric'], e['metric']).split(' (')[0]} of "
            f"{analysis._value(e['level'])} vs {analysis._value(e['baseline'])} ({e['axis']}"
            + (f", {e['data']})" if e["data"] else ")")
            for _, e in missing.iterrows()
        ]
        lines.append(
            f"- Not measured, so undecided: {md_text('; '.join(names))}. "
            f"Why: {md_text(_unmeasured_reason(parts.table, missing))}."
        )
    lines.append("")
    if len(parts.seeds) == 1 and (effects["n_pairs"] > 1).any():
        lines += [
            "One seed per variant: an effect's n counts its pairs matched on the other axes, not repeated seeds, "
            "so its interval (effects.csv, the Effects table) says how steady it is across those axes, not across "
            "seeds.",
            "",
        ]
    lines += _seeds_lines(parts)
    return Section("findings", lines)


def _seeds_lines(parts: ReportParts) -> list[str]:
    """After a Stein second stage, which effects reached ±δ; then what to run next, if anything: the pilot when
    there are fewer than MIN_PILOT_SEEDS seeds, else Stein's plan (a need beyond the practical cap in words)."""
    effects, pilot, plan, advice = parts.effects, parts.pilot, parts.plan, parts.advice
    lines = []
    if pilot is not None:
        stein = effects[effects["design"] == analysis.STEIN]
        reached = [analysis.effect_label(e) for _, e in stein.iterrows() if e["precision_reached"] is True]
        short = [analysis.effect_label(e) for _, e in stein.iterrows() if e["precision_reached"] is not True]
        lines += [
            f"Stein's second stage: seeds {', '.join(map(str, pilot))} (the spec's own, n0 = {len(pilot)}) were the "
            f"pilot; with seeds {', '.join(map(str, parts.seeds[len(pilot) :]))} each effect's verdict uses the mean "
            f"of all {len(parts.seeds)} seeds, the pilot's sd and t with {len(pilot) - 1} degrees of freedom.",
            "",
            f"- Reached ±δ (final adjusted interval at most δ/2 each side): {md_text('; '.join(reached) or 'none')}",
            f"- Hit the seed cap (short of ±δ): {md_text('; '.join(short) or 'none')}",
            "",
        ]
    open_ = effects[(effects["kind"] == "treatment") & (effects["verdict"] == "undecided") & (effects["n_pairs"] > 0)]
    if open_.empty:
        return lines
    if advice is not None:
        return [*lines, f"**Next**: {md_text(advice.describe())}:", "", f"    {advice.command}", ""]
    if plan is None:
        return lines
    members = effects[analysis.in_family(effects)]
    text = md_text(plan.plan.describe([analysis.effect_label(e) for _, e in members.iterrows()]))
    if not plan.new_runs:
        return [*lines, f"**Next**: {text} Nothing more to train for it.", ""]
    lines += [
        f"**Next**: {text} It uses every effect's pilot spread and never the means (a look at them would spend "
        f"the pilot twice); {plan.new_runs} more runs, {at_one_job(plan.seconds)}:",
        "",
        f"    {plan.command}",
        "",
    ]
    if list(plan.pilot) == list(parts.spec.seeds or []):
        lines += [f"or, the same: `{plan.until_decided}`.", ""]
    return lines


def questions_section(parts: ReportParts) -> Section:
    """The write-up's questions this sweep has the axes for (none: no section)."""
    if not parts.answers:
        return Section("questions", [])
    lines = [
        "## The write-up's questions",
        "",
        f"Intervals are {analysis.CONFIDENCE:.0%} t-intervals (Student's t); differences are paired "
        "(same other axes and seed).",
        "",
    ]
    for question, sentences in parts.answers.items():
        lines += [f"**{question}**", ""] + [f"- {md_text(s)}" for s in sentences] + [""]
    return Section("questions", lines)


def effects_section(parts: ReportParts) -> Section:
    return Section(
        "effects",
        [
            "## Effects",
            "",
            "Treatments are compared within each corpus, paired on every other axis and the seed: each level "
            "against the axis's first level, or against the previous level for a named axis (its levels in the "
            "order written); within a corpus, the axis with the largest effect first (effects.csv). "
            'Rows with corpus "-" are different data, not a treatment. Bits per character = nats / ln 2. '
            "n pairs: the pairs each row's interval is over.",
            "",
            _markdown_table(_effects_view(parts.effects)),
            "",
        ],
    )


def summary_section(parts: ReportParts) -> Section:
    summary = parts.summary
    lines = [
        "## Summary (seeds folded)",
        "",
        f"Mean [{analysis.CONFIDENCE:.0%} CI] over the n finished seeds of each setting (summary.csv has std too).",
        "",
    ]
    if len(summary) and summary["n"].max() <= 1:
        lines += [
            "One seed per setting: n = 1 in every row below, so no interval here (summary.csv's std and CI are "
            "empty). For intervals over seeds, run the pilot the findings give.",
            "",
        ]
    return Section("summary", [*lines, _markdown_table(_summary_view(summary)), ""])


def data_section(parts: ReportParts) -> Section:
    return Section(
        "data",
        [
            "## Data",
            "",
            "Which split each corpus's val loss comes from (`data.split`: `position` = the last part "
            "of the file, as in the lecture; `shuffled-rows` = a seeded shuffle of whole rows). Differences between "
            'corpora are labelled "different data", never ranked as a treatment.',
            "",
            _markdown_table(_data_view(parts.table, parts.data)),
            "",
        ],
    )


def references_section(parts: ReportParts) -> Section:
    if parts.refs is None or not len(parts.refs):
        return Section("references", [])
    return Section(
        "references",
        [
            "## Published references",
            "",
            "Each reference of the spec beside the measured mean of its metric over the finished runs it "
            "matches; difference = measured - published.",
            "",
            _markdown_table(_references_view(parts.refs)),
            "",
        ],
    )


def ladders_section(parts: ReportParts) -> Section:
    lines = []
    for axis, ladder in parts.ladders.items():
        lines += [
            f"## Ladder: {md_text(axis)}",
            "",
            f"One row per level of `{md_text(axis)}` in the order written; final val loss mean [95% CI] over "
            "seeds; the change is paired against the previous level (same seed and corpus).",
            "",
            _markdown_table(ladder),
            "",
        ]
    return Section("ladders", lines)


def tokenizers_section(parts: ReportParts) -> Section:
    if parts.tokenizer_view is None:
        return Section("tokenizers", [])
    return Section("tokenizers", tokenizers.tokenizer_markdown(parts.tokenizer_view, parts.effects))


def plots_section(parts: ReportParts) -> Section:
    lines = [
        "## Plots",
        "",
        "The dotted/dashed black lines are the bigram floor of each corpus's train split: the best a model "
        "that reads one character can do. Models that read context are expected to go below it.",
        "",
    ]
    if parts.provenance.get("from_csv"):
        lines += [
            "Rebuilt from runs.csv, which holds no loss curves: the curve figures are those drawn from these same "
            "runs' MLflow histories when the report was last built from the store; final\\_val\\_loss.png is "
            "redrawn.",
            "",
        ]
    return Section("plots", [*lines, *(f"![{path.stem}]({path.name})\n" for path in parts.figures)])


def runs_section(parts: ReportParts) -> Section:
    return Section("runs", ["## Runs", "", _markdown_table(_runs_view(parts.table)), ""])


def samples_section(parts: ReportParts) -> Section:
    if parts.samples is None:
        return Section(
            "samples",
            parts.carried_samples
            or [
                "## Samples",
                "",
                "Not in runs.csv: each run's samples are in MLflow, under its samples/ artifacts (run ids in "
                "the Runs table).",
                "",
            ],
        )
    lines = ["## Samples", "", "Generated text before and after training, exactly as sampled (HTML-escaped).", ""]
    for _, row in parts.table.iterrows():
        found = parts.samples.get(row["variant"], {"before": None, "after": None})
        lines += [
            f"### {md_text(row['variant'])} ({row['status']})",
            "",
            "<table><tr><th>before training</th><th>after training</th></tr>",
            f"<tr><td>{pre_block(found['before'])}</td>",
            f"<td>{pre_block(found['after'])}</td></tr></table>",
            "",
        ]
    return Section("samples", lines)


def method_section(parts: ReportParts) -> Section:
    """The appendix: how verdicts are drawn (Holm, TOST, Stein, with their citations), the seed-plan rules and the
    convergence rule, with how these runs fare under it."""
    family, done = parts.family, analysis.finished(parts.table)
    lines = ["## Appendix: how the verdicts are drawn", ""]
    if family is not None:
        lines += [
            f"Every effect of a treatment gets a verdict: better or worse (the level minus the baseline is below "
            f"or above 0), equivalent (within ±δ = ±{family.delta:g} nats, the spec's `practical_difference`), or "
            f"undecided. Method: {md_text(family.describe())}",
            "",
            md_text(analysis.verdicts.METHOD),
            "",
            f"Plans a person can follow: below a pilot of {analysis.verdicts.MIN_PILOT_SEEDS} seeds per variant no "
            "plan is made (the report gives the command for the pilot); an effect that would need more than "
            f"{analysis.verdicts.PRACTICAL_MAX_SEEDS:,} seeds per variant is described in words (its difference "
            "against the noise of its pairs) and left out of the plan, which depends on its spread alone, so the "
            "others keep Stein's guarantee.",
            "",
        ]
    lines += [analysis.CONVERGENCE_RULE, ""]
    if "near_convergence" in done and len(done):
        moving = int((~done["near_convergence"].astype(bool)).sum())
        lines += [
            f"Here {len(done) - moving} of {len(done)} finished runs are near convergence"
            + (
                f"; {md_text(analysis.too_short(done))}. Their verdicts are given anyway, "
                f"{md_text(analysis.still_moving(done))}."
                if moving
                else "."
            ),
            "",
        ]
    if "loss_noise" in done and len(done) and done["loss_noise"].isna().any():
        nan_runs = done[done["loss_noise"].isna()]
        lines += [
            f"loss\\_noise is NaN for {len(nan_runs)} run(s): {md_text(analysis.loss_noise_reason(nan_runs))}.",
            "",
        ]
    return Section("method", lines)


def provenance_section(parts: ReportParts) -> Section:
    from harness.tracking.store import git_commit

    provenance, spec = parts.provenance, parts.spec
    if provenance.get("sweep_line"):
        sweep = provenance["sweep_line"]
    elif provenance.get("sweep_run"):
        sweep = (
            f"- Sweep: `{display_command(provenance.get('sweep_command')) or 'unknown'}` "
            f"({display_commit(provenance.get('sweep_commit'))}; MLflow run `{provenance['sweep_run']}`)"
        )
    else:
        sweep = (
            "- Sweep: no sweep run with these overrides and seeds; the variants' runs come from earlier sweeps, if any"
        )
    source = (
        f"from `{provenance['from_csv']}` (no MLflow store at hand)"
        if provenance.get("from_csv")
        else f"from MLflow {display_uri(provenance['uri'])}, experiment `{md_text(spec.name)}`"
    )
    return Section(
        "provenance",
        [
            "## Appendix: provenance",
            "",
            f"- Rebuild this report: `{provenance['rebuild']}`",
            sweep,
            f"- Report written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC ({display_commit(git_commit())}) "
            f"{source}",
            "",
        ],
    )


SECTIONS = (
    header_section,
    findings_section,
    questions_section,
    tokenizers_section,
    ladders_section,
    references_section,
    effects_section,
    summary_section,
    data_section,
    plots_section,
    runs_section,
    samples_section,
    method_section,
    provenance_section,
)  # report.md in reading order: the answer first, then the tables, then how (the appendix)


def report_sections(parts: ReportParts) -> list[Section]:
    """report.md's sections in reading order; empty ones (no questions, no ladder, ...) left out."""
    return [section for section in (build(parts) for build in SECTIONS) if section.lines]


def render_markdown(parts: ReportParts) -> str:
    return join_sections(report_sections(parts))


def report_command(
    spec: Spec, overrides: dict, seeds: list[int] | None, results_dir: Path, from_csv: Path | None = None
) -> str:
    """The ``harness report`` command line that rebuilds this report."""
    words = ["harness", "report", display_path(spec.path)]
    if from_csv is not None:
        return shlex.join([*words, "--from-csv", display_path(from_csv)])
    words += _override_words(overrides)
    if seeds and list(seeds) != list(spec.seeds or []):
        words += ["--seeds", *map(str, seeds)]
    if Path(results_dir) != Path("results"):
        words += ["--results-dir", display_path(results_dir)]
    return shlex.join(words)


# -- what the report is built from: MLflow, or a committed runs.csv ------------------------------------------------


def _display_value(value) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return f"[{', '.join(map(str, value))}]"  # as an override is written: model.hidden_sizes=[16,4]
    return str(value)


def applied_overrides(spec: Spec, overrides: dict | None, seeds: list[int] | None) -> list[str]:
    """Each override beside the spec's own value ('train.steps=300 (the spec: 50,000)'), and other seeds beside
    the spec's; empty for the spec as written."""
    from harness.spec.expansion import expand

    if as_written(spec, overrides, seeds):
        return []
    own = [variant.config.flat() for variant in expand(spec)] if overrides else []
    applied = []
    for key, value in (overrides or {}).items():
        values = list(dict.fromkeys(_display_value(flat.get(key)) for flat in own))
        applied.append(f"{key}={_display_value(value)} (the spec: {', '.join(values) or 'unset'})")
    if seeds and list(seeds) != list(spec.seeds or []):
        base = expand(spec)[0].config.train.seed if not spec.seeds else None
        written = ", ".join(map(str, spec.seeds)) if spec.seeds else f"one run per variant at train.seed {base}"
        applied.append(f"seeds {', '.join(map(str, seeds))} (the spec: {written})")
    return applied


RECORDED_COLUMNS = ("status", *METRIC_COLUMNS, "error", "run_id", "stacked_seeds")
CONVERGENCE_COLUMNS = ("steps_run", "val_change_last_10pct", "near_convergence")
_TEXT_COLUMNS = {"variant": str, "config_hash": str, "run_id": str, "error": str, "status": str}


def read_runs_csv(path: Path) -> pd.DataFrame:
    """A runs.csv as written by ``write_report`` (its hashes and run ids as text)."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"--from-csv: no file {path}")
    table = pd.read_csv(path, dtype=_TEXT_COLUMNS)
    missing = [c for c in ("variant", "status", "config_hash", "final_val_loss") if c not in table]
    if missing:
        raise ReportError(f"{path} is not a runs.csv of a report: no column {', '.join(missing)}")
    return table


def _cell_override(value):
    """A runs.csv cell as ``harness run key=value`` would have typed it (YAML), so the folder hash matches."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return int(value) if float(value).is_integer() and not isinstance(value, float) else float(value)
    return yaml.safe_load(str(value))


def _same(recorded, written) -> bool:
    if isinstance(written, (list, tuple)):
        written = ",".join(map(str, written))
    if pd.isna(recorded) if not isinstance(recorded, (list, tuple)) else False:
        return written is None or (isinstance(written, float) and math.isnan(written))
    if written is None:
        return False
    try:
        return math.isclose(float(recorded), float(written), rel_tol=1e-12, abs_tol=0.0)
    except (TypeError, ValueError):
        return str(recorded) == str(written)


def recorded_arguments(spec: Spec, recorded: pd.DataFrame) -> tuple[dict, list[int] | None]:
    """The overrides and seeds a runs.csv was made with: the seeds of its seed axis, and each config key whose
    value differs from the spec's in every row the same way."""
    from harness.spec.expansion import expand, with_seeds

    seeded = recorded["variant"].str.contains(r"(?:^|,)seed=", regex=True).any()
    seeds = list(dict.fromkeys(int(s) for s in recorded[SEED_KEY])) if seeded and SEED_KEY in recorded else None
    written = {v.id: v.config.flat() for v in expand(with_seeds(spec, seeds))}
    overrides = {}
    for key in [c for c in recorded.columns if "." in c and c != SEED_KEY and c != "data.path"]:
        differing = [
            row[key]
            for _, row in recorded.iterrows()
            if row["variant"] in written
            and key in written[row["variant"]]
            and not _same(row[key], written[row["variant"]][key])
        ]
        if not differing:
            continue
        values = set(map(str, recorded[key]))
        if len(values) > 1:
            raise ReportError(
                f"runs.csv differs from {spec.path} in {key} with several values ({', '.join(sorted(values))}): "
                "give the overrides the sweep used, e.g. `harness report SPEC key=value --from-csv ...`"
            )
        value = recorded[key].iloc[0]
        listed = any(isinstance(flat.get(key), (list, tuple)) for flat in written.values())
        overrides[key] = [yaml.safe_load(v) for v in str(value).split(",")] if listed else _cell_override(value)
    return overrides, seeds


def recorded_table(recorded: pd.DataFrame, variants: list[Variant], path: Path) -> pd.DataFrame:
    """runs.csv's measured columns on the spec's variants (matched by config hash), as ``runs_table`` and
    ``with_convergence`` would have made them from MLflow; a ReportError when a row matches no variant."""
    by_hash = recorded.drop_duplicates("config_hash").set_index("config_hash")
    hashes = [v.config.config_hash() for v in variants]
    unknown = sorted(set(by_hash.index) - set(hashes))
    if unknown:
        raise ReportError(
            f"{display_path(path)}: {len(unknown)} row(s) match no variant of this spec with these overrides "
            f"(config_hash {', '.join(unknown[:3])}): give the overrides and --seeds the sweep used"
        )
    table = analysis.with_convergence(runs_table(pd.DataFrame(), variants), {})
    for column in (*RECORDED_COLUMNS, *CONVERGENCE_COLUMNS):
        if column not in by_hash:
            continue
        values = [by_hash.at[h, column] if h in by_hash.index else None for h in hashes]
        if column == "status":
            values = [v if isinstance(v, str) else "MISSING" for v in values]
        elif column == "steps_run":
            values = pd.array([None if pd.isna(v) else int(v) for v in values], dtype="Int64")
        elif column == "near_convergence":
            values = [str(v) == "True" for v in values]
        elif column == "stacked_seeds":
            values = [1 if pd.isna(v) else int(v) for v in values]
        table[column] = values
    return table


def _previous_report(path: Path) -> tuple[str | None, list[str] | None]:
    """The Sweep line and the Samples section of the report.md that a rebuild from runs.csv replaces (they come from
    the same runs, and runs.csv holds neither)."""
    if not path.is_file():
        return None, None
    lines = path.read_text(encoding="utf-8").split("\n")
    sweep = next((line for line in lines if line.startswith("- Sweep: ")), None)
    if "## Samples" not in lines:
        return sweep, None
    start = lines.index("## Samples")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    samples = lines[start:end]
    while samples and not samples[-1].strip():
        samples.pop()
    return sweep, [*samples, ""]


def _convergence_beside_metrics(table: pd.DataFrame) -> pd.DataFrame:
    """runs.csv's column order: the convergence columns beside the metrics, not after the config."""
    columns = [c for c in table.columns if c not in CONVERGENCE_COLUMNS]
    at = columns.index("config_hash")
    columns[at:at] = list(CONVERGENCE_COLUMNS)
    return table[columns]


def _tuning_files(
    tuning: tuning_report.TuningResult,
    frame: pd.DataFrame,
    spec: Spec,
    seeds: list[int] | None,
    delta: float | None,
    runs: pd.DataFrame,
    untuned: list[Variant] | None,
    out: Path,
    report: Report,
) -> list[str]:
    """tuning.csv, tuning.png and (compare_untuned) effects_untuned.csv in ``out``; the Tuning section's lines.
    The fresh seeds' values come from ``frame`` (phase 2's runs), the untuned verdicts from ``untuned``'s runs."""
    done = analysis.finished(frame)
    metric = tuning.metric
    tuning.fresh = {
        setting: [float(v) for v in rows[metric] if pd.notna(v)] for setting, rows in done.groupby("setting")
    }
    if untuned:
        table = runs_table(runs, untuned)
        untuned_frame, untuned_factors, untuned_seed = factor_table(table, spec, untuned)
        tuning.untuned_effects, _, _ = verdict_effects(untuned_frame, spec, untuned_factors, untuned_seed, seeds, delta)
        tuning.untuned_effects.to_csv(out / "effects_untuned.csv", index=False)
        report.files.append(out / "effects_untuned.csv")
    tuning.csv().to_csv(out / "tuning.csv", index=False)
    report.files.append(out / "tuning.csv")
    figure_name = None
    if len(tuning.points):
        tuning_report.tuning_figure(tuning).savefig(out / "tuning.png")
        report.files.append(out / "tuning.png")
        figure_name = "tuning.png"
    return tuning_report.tuning_markdown(tuning, report.effects, figure_name)


def write_report(
    uri: str,
    spec: Spec,
    variants: list[Variant],
    results_dir: Path,
    runs: pd.DataFrame | None = None,
    overrides: dict | None = None,
    seeds: list[int] | None = None,
    log_to_mlflow: bool = True,
    delta: float | None = None,
    from_csv: Path | None = None,
    extra_sections: list[tuple[str, Section]] = (),
    tuning: tuning_report.TuningResult | None = None,
    untuned: list[Variant] | None = None,
) -> Report:
    """Everything in results/<name>/ (or its overrides-<hash>/ folder) from MLflow alone; the files also go to
    the matching sweep run (under ``report/``). Sweep-wide figures go on that parent run only, not on each child.
    ``delta``: δ of the verdicts (default: the spec's ``practical_difference``). ``from_csv``: built from a runs.csv
    instead (no store), written in its folder: the statistics, tables and bar chart are rebuilt; the loss curves and
    samples, which runs.csv does not hold, are kept from the report being replaced. ``extra_sections``: (the key of
    the section to follow, a Section) pairs a stage of its own adds to report.md (``insert_section``). ``tuning``:
    what the spec's tuning phase found (``variants`` are then each at its chosen point): tuning.csv, its figure and
    the Tuning section; ``untuned``: the same variants at the spec's own settings, whose verdicts it sets beside."""
    out = report_directory(results_dir, spec, overrides, seeds) if from_csv is None else Path(from_csv).parent
    carried_sweep, carried_samples = _previous_report(out / "report.md") if from_csv is not None else (None, None)
    if from_csv is None:
        runs = experiment_runs(uri, spec) if runs is None else runs
        client = MlflowClient(uri)
        table = runs_table(runs, variants)
        with_run = table[table["run_id"].map(lambda r: isinstance(r, str)) & (table["status"] == analysis.FINISHED)]
        bits = tokenizers.varies_tokenizer(table)  # then the figures and the summary speak bits per character
        keys = HISTORY_KEYS + (BITS_HISTORY_KEYS if bits else ())
        histories = metric_histories(client, list(with_run["run_id"]), keys)
        table = analysis.with_convergence(table, {r: h.get("val_loss") for r, h in histories.items()})
    else:
        client, histories = None, {}
        table = recorded_table(read_runs_csv(from_csv), variants, Path(from_csv))
        bits = tokenizers.varies_tokenizer(table)
    table = _convergence_beside_metrics(table)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out, table, pd.DataFrame(), pd.DataFrame())
    table.to_csv(out / "runs.csv", index=False)
    report.files.append(out / "runs.csv")

    frame, factors, seed = factor_table(table, spec, variants)
    named = {axis: list(names) for axis, names in getattr(spec, "named_axes", {}).items() if axis in factors}
    data = analysis.data_factors(frame, factors, seed)
    refs = list(getattr(spec, "references", []) or [])
    metrics = [*analysis.SUMMARY_METRICS, *(["final_val_bpc"] if bits else [])]
    report.summary = analysis.attach_references(analysis.summarize(frame, factors, metrics=metrics), frame, refs)
    report.effects, family, pilot = verdict_effects(frame, spec, factors, seed, seeds, delta)
    used = trained_seeds(frame, seed, list(seeds if seeds is not None else spec.seeds or []))
    first = pilot or used
    plan, advice = None, None
    undecided = (
        len(report.effects) and ((report.effects["verdict"] == "undecided") & (report.effects["n_pairs"] > 0)).any()
    )
    if undecided and len(first) < analysis.verdicts.MIN_PILOT_SEEDS:
        advice = pilot_advice(frame, spec, overrides, first)
    elif undecided:
        pilot_frame = frame[frame[seed].isin(first)] if seed else frame
        plan = report_plan(pilot_frame, report.effects, spec, overrides, first, delta, trained=used)
    references = analysis.references(frame, refs)
    for name, content in (("summary.csv", report.summary), ("effects.csv", report.effects)):
        content.to_csv(out / name, index=False)
        report.files.append(out / name)
    tuning_lines = None
    if tuning is not None:
        tuning_lines = _tuning_files(tuning, frame, spec, seeds, delta, runs, untuned, out, report)
    tokenizer_view = tokenizers.tokenizer_table(frame) if tokenizers.varies_tokenizer(frame) else None
    if tokenizer_view is not None:
        tokenizer_view.to_csv(out / "tokenizers.csv", index=False)
        report.files.append(out / "tokenizers.csv")

    figure_paths = _figures(out, frame, histories, factors, named, report.summary, bits, from_csv is not None)
    report.files += figure_paths

    samples = (
        {
            row["variant"]: run_samples(client, row["run_id"])
            for _, row in frame.iterrows()
            if isinstance(row["run_id"], str)
        }
        if client is not None
        else None
    )
    answers = analysis.findings(frame, report.summary, factors, seed, data=data, effects=report.effects)
    ladders = {axis: ladder_view(frame, report.effects, axis, order, data, refs) for axis, order in named.items()}
    parent = sweep_run(runs, overrides or {}, seeds) if runs is not None else None
    provenance = {"rebuild": report_command(spec, overrides or {}, seeds, results_dir, from_csv), "uri": uri}
    if not as_written(spec, overrides, seeds):
        provenance["folder"] = display_path(out)
    if from_csv is not None:
        provenance.update(from_csv=display_path(from_csv), sweep_line=carried_sweep)
    if parent is not None:
        commits = [
            parent.get(f"tags.{t}") for t in ("git_commit", "mlflow.source.git.commit")
        ]  # the first knows -dirty
        provenance.update(
            sweep_command=parent.get("tags.command"),
            sweep_commit=next((c for c in commits if isinstance(c, str) and c), None),
            sweep_run=parent["run_id"],
        )
    spec_steps = sorted({int(v) for v in table["train.steps"].dropna()}) if "train.steps" in table else []
    if overrides and "train.steps" in overrides:
        from harness.spec.expansion import expand

        spec_steps = sorted({v.config.train.steps for v in expand(spec)})
    parts = ReportParts(
        spec=spec,
        table=table,
        summary=report.summary,
        effects=report.effects,
        family=family,
        answers=answers,
        figures=figure_paths,
        provenance=provenance,
        data=data,
        refs=references,
        ladders=ladders,
        tokenizer_view=tokenizer_view,
        samples=samples,
        carried_samples=carried_samples,
        pilot=pilot,
        seeds=used,
        plan=plan,
        advice=advice,
        applied=applied_overrides(spec, overrides, seeds),
        spec_steps=spec_steps,
    )
    sections = report_sections(parts)
    if tuning_lines:
        sections = insert_section(sections, Section("tuning", tuning_lines), "findings")
    for after, section in extra_sections:
        sections = insert_section(sections, section, after)
    (out / "report.md").write_text(join_sections(sections), encoding="utf-8")
    report.files.append(out / "report.md")

    if log_to_mlflow and parent is not None:  # only the report of a recorded sweep goes into MLflow
        try:
            for path in report.files:
                client.log_artifact(parent["run_id"], str(path), FIGURE_FOLDER)
        except Exception as exc:  # the files are written; MLflow copies are a convenience
            report.warnings.append(f"could not log the report to MLflow: {type(exc).__name__}: {exc}")
    elif log_to_mlflow and from_csv is None:
        report.warnings.append("no sweep run with these overrides and seeds: the report is not logged to MLflow")
    return report


def _figures(out: Path, frame, histories, factors, named, summary, bits: bool, from_csv: bool) -> list[Path]:
    """The loss curves per factor (from the histories; from a runs.csv, the curves already in ``out`` are kept) and
    the final val loss bars; the paths written or kept, in the report's order."""
    from harness.report import plots

    names = [f"curves_{re.sub(r'[^A-Za-z0-9_-]+', '_', factor)}.png" for factor in factors] or ["curves.png"]
    figures = {}
    if from_csv:
        kept = [out / name for name in names if (out / name).is_file()]
    else:
        for stale in out.glob("curves_*.png"):  # figures of axes this sweep no longer has
            stale.unlink()
        kept = []
        for name, factor in zip(names, factors or ["setting"], strict=True):
            figures[name] = plots.loss_curves(
                frame, histories, factor, factors if factors else [], named.get(factor), bits=bits
            )
    figures["final_val_loss.png"] = plots.final_val_loss_bars(summary, frame, factors, bits=bits)
    paths = list(kept)
    for name, figure in figures.items():
        figure.savefig(out / name)
        paths.append(out / name)
    return paths
