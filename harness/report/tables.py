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
    sweeps = runs[runs[column].notna()].sort_values("start_time", ascending=False)
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
        view.insert(at + 2, "seeds needed", ["-" if pd.isna(n) else str(int(n)) for n in effects["seeds_needed"]])
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

UNCAPPED = 1_000_000  # a report says how many seeds each effect needs, whatever a --max-seeds would allow


def stein_pilot(spec: Spec, seeds: list[int] | None) -> list[int] | None:
    """The pilot of a Stein second stage: the spec's own seeds (2 or more) when ``seeds`` extends them; else None."""
    pilot = list(spec.seeds or [])
    seeds = list(seeds or [])
    return pilot if len(pilot) >= 2 and len(seeds) > len(pilot) and seeds[: len(pilot)] == pilot else None


def extend_seeds(seeds: list[int], total: int) -> list[int]:
    """``seeds`` continued with max(seeds) + 1, + 2, ... up to ``total`` seeds."""
    seeds = list(seeds)
    nxt = max(seeds) + 1 if seeds else 1
    while len(seeds) < total:
        seeds.append(nxt)
        nxt += 1
    return seeds


def train_command(spec: Spec, overrides: dict | None, seeds: list[int]) -> str:
    """The ``harness run`` command line that trains these seeds of every variant (finished ones are skipped)."""
    words = ["harness", "run", display_path(spec.path)]
    words += [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in (overrides or {}).items()]
    if list(seeds) != list(spec.seeds or []):
        words += ["--seeds", *map(str, seeds)]
    return shlex.join(words)


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
    """Stein's second stage from the pilot's spreads, the seeds it means and the one command that trains them,
    with a wall time estimated from the train times the pilot's runs recorded (one job; a stacked seed's share of
    its stack's time)."""
    delta = spec.practical_difference if delta is None else delta
    plan = analysis.seed_plan(effects, delta, len(pilot), max_seeds)
    seeds = extend_seeds(pilot, plan.seeds)
    extra = len([s for s in seeds if s not in set(trained or pilot)])
    done = analysis.finished(frame)
    settings = frame["setting"].nunique() if "setting" in frame else 0
    times = pd.to_numeric(done.get("train_time_s", pd.Series(dtype=float)), errors="coerce")
    if "stacked_seeds" in done:  # a stacked seed records the whole stack's time: its share is time / seeds
        times = times / pd.to_numeric(done["stacked_seeds"], errors="coerce").fillna(1).clip(lower=1)
    per_setting = times.groupby(done["setting"]).mean() if "setting" in done and times.notna().any() else None
    seconds = float(per_setting.sum() * extra) if per_setting is not None else math.nan
    words = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in (overrides or {}).items()]
    until = shlex.join(
        ["harness", "run", display_path(spec.path), *words, "--until-decided", "--max-seeds", str(plan.seeds)]
    )
    return SeedPlan(plan, seeds, list(pilot), train_command(spec, overrides, seeds), until, extra * settings, seconds)


def pilot_plan(
    uri: str, spec: Spec, overrides: dict | None, pilot: list[int], delta: float | None, max_seeds: int
) -> SeedPlan:
    """Stein's plan from the pilot's runs that MLflow holds (the variants of ``pilot`` seeds with ``overrides``);
    a ReportError when nothing of them is recorded."""
    from harness.spec.expansion import expand, with_seeds

    database = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else None
    if database is not None and not Path(database).exists():  # opening it would create a store
        raise ReportError(f"nothing recorded for {spec.path}: no MLflow store at {display_path(database)}")
    runs = experiment_runs(uri, spec)
    if len(pilot) < 2:
        raise ReportError(
            f"{spec.path}: a plan needs a pilot of 2 seeds or more (the spec's `seeds`, or the last sweep's "
            f"--seeds); this one has {len(pilot) or 'none'}, so no spread"
        )
    if max_seeds < len(pilot):
        raise ReportError(f"--max-seeds {max_seeds} is below the pilot's {len(pilot)} seeds")
    variants = expand(with_seeds(spec, pilot), overrides)
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
    counts = effects["verdict"].value_counts()
    lines.append(
        "pilot verdicts (provisional): " + ", ".join(f"{counts.get(v, 0)} {v}" for v in analysis.verdicts.VERDICTS)
    )
    members = effects[analysis.in_family(effects)]
    needs = dict(zip(members.index, found.plan.needed, strict=True))
    for index, effect in effects.iterrows():
        if effect["verdict"] != "undecided":
            continue
        need = needs.get(index)
        label = analysis.effect_label(effect)
        lines.append(
            f"  undecided {label}: needs {need} seeds"
            + (f" (over --max-seeds {max_seeds})" if need > max_seeds else "")
            if need is not None
            else f"  undecided {label}: {effect['reason']}"
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
    spec: Spec, overrides: dict | None, seeds: list[int] | None, delta: float | None, max_seeds: int
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
    pilot = list(spec.seeds) if len(spec.seeds or []) >= 2 else list(seeds or [])
    return plan_lines(spec, pilot_plan(uri, spec, overrides, pilot, delta, max_seeds), max_seeds)


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


def verdicts_section(
    effects: pd.DataFrame,
    family: analysis.verdicts.Family,
    pilot: list[int] | None,
    seeds: list[int],
    plan: SeedPlan | None,
) -> list[str]:
    """The report's Verdicts section: the method, family size, alpha and δ, the counts, the Stein stage, and for
    undecided effects the seeds needed and the command that trains them."""
    lines = [
        "## Verdicts",
        "",
        f"Every effect below gets a verdict: better or worse (the level minus the baseline is below or above 0), "
        f"equivalent (within ±δ = ±{family.delta:g} nats, the spec's `practical_difference`), or undecided. "
        f"Method: {md_text(family.describe())}",
        "",
        md_text(analysis.verdicts.METHOD),
        "",
    ]
    if len(effects):
        counts = effects["verdict"].value_counts()
        lines += [
            "Here: " + ", ".join(f"{counts.get(v, 0)} {v}" for v in analysis.verdicts.VERDICTS) + f" of {len(effects)}"
            " effects (effects.csv has each one's adjusted interval, p values, seeds needed and reason).",
            "",
        ]
    else:
        lines += ["No effects: this sweep varies nothing but the seed, so there is nothing to compare.", ""]
    if pilot is not None and len(effects):
        stein = effects[effects["design"] == analysis.STEIN]
        reached = [analysis.effect_label(e) for _, e in stein.iterrows() if e["precision_reached"] is True]
        short = [analysis.effect_label(e) for _, e in stein.iterrows() if e["precision_reached"] is not True]
        lines += [
            f"Stein's second stage: seeds {', '.join(map(str, pilot))} (the spec's own, n0 = {len(pilot)}) were the "
            f"pilot; with seeds {', '.join(map(str, seeds[len(pilot) :]))} each effect's verdict uses the mean of all "
            f"{len(seeds)} seeds, the pilot's sd and t with {len(pilot) - 1} degrees of freedom.",
            "",
            f"- Reached ±δ (final adjusted interval at most δ/2 each side): {md_text('; '.join(reached) or 'none')}",
            f"- Hit the seed cap (short of ±δ): {md_text('; '.join(short) or 'none')}",
            "",
        ]
    undecided = effects[effects["verdict"] == "undecided"] if len(effects) else effects
    if len(undecided):
        needs = [
            f"{analysis.effect_label(e)} needs {int(e['seeds_needed'])} seeds"
            if not pd.isna(e["seeds_needed"])
            else f"{analysis.effect_label(e)}: {e['reason']}"
            for _, e in undecided.iterrows()
        ]
        lines += ["Undecided:", ""] + [f"- {md_text(n)}" for n in needs] + [""]
        if plan is not None and plan.new_runs:
            lines += [
                f"{md_text(plan.plan.describe())} From the pilot's spreads, every effect's (the plan must not look at "
                f"the means); {plan.new_runs} more runs, about {duration_text(plan.seconds)} at one job:",
                "",
                f"    {plan.command if len(plan.seeds) <= 24 else plan.until_decided}",
                "",
                f"or, the same: `{plan.until_decided}`." if len(plan.seeds) <= 24 else "",
                "",
            ]
    return lines


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
    verdict_lines: list[str] | None = None,
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

    lines += verdict_lines or []

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
        f"Intervals are {analysis.CONFIDENCE:.0%} t-intervals (Student's t); differences are paired "
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
    delta: float | None = None,
) -> Report:
    """Everything in results/<name>/ (or its overrides-<hash>/ folder) from MLflow alone; the files also go to
    the matching sweep run (under ``report/``). Sweep-wide figures go on that parent run only, not on each child.
    ``delta``: δ of the verdicts (default: the spec's ``practical_difference``)."""
    from harness.report import plots

    runs = experiment_runs(uri, spec) if runs is None else runs
    client = MlflowClient(uri)
    out = report_directory(results_dir, spec, overrides, seeds)
    out.mkdir(parents=True, exist_ok=True)
    table = runs_table(runs, variants)
    with_run = table[table["run_id"].map(lambda r: isinstance(r, str)) & (table["status"] == analysis.FINISHED)]
    bits = tokenizers.varies_tokenizer(table)  # then the figures and the summary speak bits per character
    keys = HISTORY_KEYS + (BITS_HISTORY_KEYS if bits else ())
    histories = metric_histories(client, list(with_run["run_id"]), keys)
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
    metrics = [*analysis.SUMMARY_METRICS, *(["final_val_bpc"] if bits else [])]
    report.summary = analysis.attach_references(analysis.summarize(frame, factors, metrics=metrics), frame, refs)
    report.effects, family, pilot = verdict_effects(frame, spec, factors, seed, seeds, delta)
    used = list(seeds if seeds is not None else spec.seeds or [])
    first = pilot or used
    plan = None
    if len(first) >= 2 and len(report.effects) and (report.effects["verdict"] == "undecided").any():
        pilot_frame = frame[frame[seed].isin(first)] if seed else frame
        plan = report_plan(pilot_frame, report.effects, spec, overrides, first, delta, trained=used)
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
            frame, histories, factor, factors, named.get(factor), bits=bits
        )
        for factor in factors
    }
    if not factors:
        figures["curves.png"] = plots.loss_curves(frame, histories, "setting", [], bits=bits)
    figures["final_val_loss.png"] = plots.final_val_loss_bars(report.summary, frame, factors, bits=bits)
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
    answers = analysis.findings(frame, report.summary, factors, seed, data=data, effects=report.effects)
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
        verdict_lines=verdicts_section(report.effects, family, pilot, used, plan),
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
