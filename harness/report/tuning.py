"""Tuning's numbers: each variant's choice on its tuning seeds, the edge of the grid, LR sensitivity, the optimism
of the choice, the figure and the report's Tuning section. Pure pandas/numpy (no MLflow), tested on hand-made
tables; harness/tuning.py trains the runs and hands their results here.

The rules, the same for every variant:
- a point's value is the mean of ``tune.metric`` over the tuning seeds; a seed that diverged (NaN or inf) makes
  the point's value +inf, the worst; a point with a seed not FINISHED has no value, and no choice is made;
- the choice minimises the value; a tie (equal means) goes to the smallest values, key by key in the order the
  spec writes them (for a learning rate, the smaller one);
- a choice at an end of a numeric list (2 values or more) is at the edge: that list is extended one step beyond
  it, at the list's own ratio (``extension``), up to ``tune.extend`` times; still at an end after that, the
  report says "at the edge of the grid".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.special import stdtrit

from harness.report.analysis import CONFIDENCE, mean_ci, short_name

DPI = 100
LR_KEY = "train.lr"


# -- the edge of a list ------------------------------------------------------------------------------------


def is_numeric(values: list) -> bool:
    return len(values) >= 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _round(value: float, integer: bool) -> float | int:
    if integer:
        return int(round(value))
    return float(f"{value:.6g}")  # 3e-4 * 1e-4 / 1e-3 is 2.9999999999999997e-05: the list's own digits


def extension(values: list, side: str) -> float | int | None:
    """One step beyond the ``side`` ("low" or "high") end of a numeric list, at the list's own ratio: the step
    between the two values before the end, repeated from the one before it (next = v[-2] * v[-1] / v[-3]), so a
    half-decade grid 1e-3, 3e-3, 1e-2, 3e-2 continues 1e-1 and a geometric one continues at its ratio; with two
    values, their ratio. A list with a value <= 0 steps by differences instead. None when the step would give no
    new value (an integer list whose step rounds to nothing)."""
    ordered = sorted(values)
    if side == "low":
        ordered = ordered[::-1]
    integer = all(isinstance(v, int) for v in ordered)
    last, before = ordered[-1], ordered[-2]
    third = ordered[-3] if len(ordered) >= 3 else None
    if all(v > 0 for v in ordered):
        step = (last / third) if third is not None else (last / before)
        nxt = (before if third is not None else last) * step
    else:
        step = (last - third) if third is not None else (last - before)
        nxt = (before if third is not None else last) + step
    nxt = _round(nxt, integer)
    beyond = nxt > last if side == "high" else nxt < last
    if not beyond or nxt in values or (integer and side == "low" and all(v > 0 for v in ordered) and nxt <= 0):
        return None
    return nxt


# -- the choice --------------------------------------------------------------------------------------------


def point_values(frame: pd.DataFrame, keys: list[str], metric: str = "value") -> pd.DataFrame:
    """One row per (setting, point) from one row per tuning run (columns ``setting``, the keys, ``seed``,
    ``value``, ``diverged``, ``status``): the seeds' values, their mean and CI, whether a seed diverged, whether
    every seed FINISHED. A diverged seed's value is +inf and so is its point's mean."""
    rows = []
    for (setting, *point), runs in frame.groupby(["setting", *keys], sort=False, dropna=False):
        diverged = bool(runs["diverged"].astype(bool).any())
        complete = bool((runs["status"] == "FINISHED").all()) and len(runs) > 0
        values = runs[metric].astype(float)
        interval = mean_ci(values[~runs["diverged"].astype(bool)])
        mean = math.inf if diverged else (interval.mean if complete else math.nan)
        row = {"setting": setting, **dict(zip(keys, point, strict=True))}
        row.update(
            {
                "n_seeds": len(runs),
                "mean": mean,
                "ci_low": math.nan if diverged else interval.low,
                "ci_high": math.nan if diverged else interval.high,
                "diverged": diverged,
                "complete": complete,
            }
        )
        for seed, value, gone in zip(runs["seed"], values, runs["diverged"].astype(bool), strict=True):
            row[f"seed_{seed}"] = math.inf if gone else value
        rows.append(row)
    return pd.DataFrame(rows)


def choose(points: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``points`` with ``chosen`` (one point per setting whose every point is complete) and ``at_edge`` (the
    chosen point sits at an end of a numeric key's tried values: "low" or "high", per key, else "")."""
    points = points.copy()
    points["chosen"] = False
    points["at_edge"] = ""
    for _, rows in points.groupby("setting", sort=False):
        if not rows["complete"].all():
            continue
        ordered = rows.sort_values(["mean", *keys], kind="stable")  # ties: the smallest values, key by key
        best = ordered.index[0]
        points.loc[best, "chosen"] = True
        edges = []
        for key in keys:
            tried = list(dict.fromkeys(rows[key]))
            if not is_numeric(tried):
                continue
            value = points.loc[best, key]
            if value == min(tried):
                edges.append(f"{key} low")
            elif value == max(tried):
                edges.append(f"{key} high")
        points.loc[best, "at_edge"] = ", ".join(edges)
    return points


def choices(points: pd.DataFrame, keys: list[str]) -> dict[str, dict[str, Any]]:
    """setting -> its chosen values (dotted key -> value), for the settings with a choice."""
    chosen = points[points["chosen"]]
    return {row["setting"]: {k: _plain(row[k]) for k in keys} for _, row in chosen.iterrows()}


def _plain(value):
    """numpy scalars as Python numbers (configs hash them with json)."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def edges_to_extend(points: pd.DataFrame, keys: list[str]) -> dict[str, list[tuple[str, str]]]:
    """setting -> the (key, side) lists its choice sits at the end of."""
    out = {}
    for _, row in points[points["chosen"] & (points["at_edge"] != "")].iterrows():
        out[row["setting"]] = [tuple(edge.split(" ")) for edge in row["at_edge"].split(", ")]
    return out


# -- what the choice tells ------------------------------------------------------------------------------------


def lr_sensitivity(losses: dict[float, list[float | None]], initial: float) -> float:
    """LR sensitivity (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training
    instabilities", §2.2): E_η[min(ℓ(η), ℓ0) − ℓ*] over the learning-rate sweep, where ℓ(η) is the final loss at
    learning rate η, ℓ0 the loss at initialisation and ℓ* = min_η ℓ(η). A diverged run (None, NaN or inf) counts
    at ℓ0. The expectation is the mean over the sweep's learning rates (here log-spaced, as the paper's sweep is);
    ℓ(η) is the mean over the tuning seeds of each run's min(loss, ℓ0)."""
    per_lr = []
    for values in losses.values():
        capped = [initial if v is None or not math.isfinite(v) else min(v, initial) for v in values]
        per_lr.append(float(np.mean(capped)))
    if not per_lr:
        return math.nan
    best = min(per_lr)
    return float(np.mean([v - best for v in per_lr]))


@dataclass(frozen=True)
class Optimism:
    """The tuning seeds' mean at the chosen point minus the fresh seeds' mean there, with Welch's interval."""

    tuning_mean: float
    fresh_mean: float
    difference: float
    low: float
    high: float
    n_tuning: int
    n_fresh: int


def optimism(tuning: list[float], fresh: list[float]) -> Optimism:
    """How much better the choice looked on the seeds that chose it than on fresh seeds: mean(tuning) −
    mean(fresh), with Welch's t-interval (Welch 1947, "The generalization of Student's problem when several
    different population variances are involved"): the two sets are different seeds, so unpaired, and their
    spreads need not be equal. Negative: the choice was optimistic (the selection bias Cawley & Talbot 2010
    describe). NaN bounds below 2 values on either side."""
    a = np.asarray([v for v in tuning if math.isfinite(v)], dtype=float)
    b = np.asarray([v for v in fresh if math.isfinite(v)], dtype=float)
    if len(a) == 0 or len(b) == 0:
        return Optimism(math.nan, math.nan, math.nan, math.nan, math.nan, len(a), len(b))
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return Optimism(float(a.mean()), float(b.mean()), diff, math.nan, math.nan, len(a), len(b))
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Optimism(float(a.mean()), float(b.mean()), diff, diff, diff, len(a), len(b))
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch–Satterthwaite
    half = float(stdtrit(df, (1 + CONFIDENCE) / 2)) * se
    return Optimism(float(a.mean()), float(b.mean()), diff, diff - half, diff + half, len(a), len(b))


# -- the record of a tuning phase ------------------------------------------------------------------------------


@dataclass
class TuningResult:
    """What tuning found, for the report: one row per (setting, point) (tuning.csv), the choices, TPE's
    best-so-far per trial, the budget and what is missing."""

    keys: list[str]
    metric: str
    seeds: list[int]
    search: str
    steps: dict[str, int]  # setting -> train.steps of its runs
    points: pd.DataFrame  # point_values + choose (+ trial for TPE)
    choices: dict[str, dict[str, Any]]
    rounds: int = 0  # grid: extension rounds done
    extend: int = 0
    written: int = 0  # points as the spec writes them (grid), or trials (TPE)
    initial: dict[str, float] = field(default_factory=dict)  # setting -> ℓ0, the tuning runs' loss at step 0
    incomplete: dict[str, str] = field(default_factory=dict)  # setting -> why it has no choice
    untuned_effects: pd.DataFrame | None = None  # the verdicts at the spec's own settings (compare_untuned)
    fresh: dict[str, list[float]] = field(default_factory=dict)  # setting -> the deciding seeds' metric values

    def budget(self, setting: str) -> tuple[int, int, int]:
        """(points tried, tuning seeds, steps per run) of a setting."""
        rows = self.points[self.points["setting"] == setting]
        return len(rows), len(self.seeds), self.steps.get(setting, 0)

    def csv(self) -> pd.DataFrame:
        columns = ["setting", *(["trial"] if "trial" in self.points else []), *self.keys]
        seeds = [c for c in self.points.columns if c.startswith("seed_")]
        rest = ["n_seeds", "mean", "ci_low", "ci_high", "diverged", "complete", "chosen", "at_edge"]
        frame = self.points[columns + seeds + rest].rename(
            columns={"setting": "variant", "mean": f"mean_{self.metric}"}
        )
        return frame

    def sensitivity(self, setting: str) -> float:
        """LR sensitivity of a setting over its learning rates, its other tuned keys at their chosen values."""
        if self.search != "grid" or LR_KEY not in self.keys or setting not in self.choices:
            return math.nan  # a sweep over learning rates, not TPE's samples of them
        if setting not in self.initial:
            return math.nan
        rows = self.points[self.points["setting"] == setting]
        for key in self.keys:
            if key != LR_KEY:
                rows = rows[rows[key] == self.choices[setting][key]]
        seeds = [c for c in rows.columns if c.startswith("seed_")]
        losses = {row[LR_KEY]: [row[c] for c in seeds if not pd.isna(row[c])] for _, row in rows.iterrows()}
        if len(losses) < 2:
            return math.nan
        return lr_sensitivity(losses, self.initial[setting])

    def optimism(self, setting: str) -> Optimism | None:
        rows = self.points[(self.points["setting"] == setting) & self.points["chosen"]]
        if rows.empty or setting not in self.fresh:
            return None
        seeds = [c for c in rows.columns if c.startswith("seed_")]
        return optimism([float(rows.iloc[0][c]) for c in seeds if not pd.isna(rows.iloc[0][c])], self.fresh[setting])


# -- the figure --------------------------------------------------------------------------------------------


def _ascii(value) -> str:
    return str(value).encode("ascii", "backslashreplace").decode("ascii")


def _log_spaced(values: list) -> bool:
    values = sorted(v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool))
    if len(values) < 3 or values[0] <= 0:
        return len(values) == 2 and values[0] > 0 and values[1] / values[0] >= 10
    ratios = [b / a for a, b in zip(values, values[1:], strict=False)]
    return max(ratios) / min(ratios) < 2 and min(ratios) > 1.5  # steps about equal on a log scale


def tuning_figure(result: TuningResult) -> Figure:
    """The metric against each tune key, one line per variant (mean and 95% CI over the tuning seeds, the other
    keys at their chosen values), the chosen point ringed, diverged points as x at the top; for TPE, the
    best-so-far against trials, per variant."""
    keys = result.keys
    tpe = result.search == "tpe"
    panels = 1 if tpe else len(keys)
    figure = Figure(figsize=(6.4 * panels, 4.4), dpi=DPI, layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    points = result.points
    finite = points.loc[np.isfinite(points["mean"].astype(float)), "mean"].astype(float)
    # The axis ends at the worst loss at initialisation: a point above it learnt nothing and is drawn at the top
    # (^), so that one blown-up run does not flatten every curve.
    top = max(result.initial.values()) if result.initial else (float(finite.max()) if len(finite) else 1.0)
    shown = points[points["mean"].astype(float) <= top]  # the band of a point drawn at the top is not drawn
    lows = pd.concat([shown["mean"], shown["ci_low"]]).astype(float).dropna()
    bottom = float(lows.min()) if len(lows) else 0.0
    colours = [f"C{i}" for i in range(10)] if points["setting"].nunique() <= 10 else None
    for s, (setting, rows) in enumerate(points.groupby("setting", sort=False)):
        colour = colours[s] if colours else matplotlib.colormaps["tab20"](s % 20)
        label = _ascii(setting)
        if tpe:
            rows = rows.sort_values("trial")
            best = rows["mean"].astype(float).cummin()
            axes[0].step(rows["trial"], best, where="post", color=colour, label=label)
            gone = rows[rows["diverged"]]
            axes[0].scatter(gone["trial"], [top] * len(gone), marker="x", color=colour)
            continue
        for ax, key in zip(axes, keys, strict=True):
            line = rows
            for other in keys:
                if other != key and setting in result.choices:
                    line = line[line[other] == result.choices[setting][other]]
            line = line.sort_values(key)
            ok = line[~line["diverged"] & line["complete"]]
            x = ok[key].astype(float) if is_numeric(list(ok[key])) else ok[key].astype(str)
            ax.plot(x, ok["mean"].clip(upper=top), marker="o", color=colour, label=label, lw=1.4)
            over = ok[ok["mean"] > top]
            if len(over):
                ox = over[key].astype(float) if is_numeric(list(ok[key])) else over[key].astype(str)
                ax.scatter(ox, [top] * len(over), marker="^", s=60, color=colour)
            spread = ok["ci_low"].notna() & (ok["mean"] <= top)
            if spread.any():
                ax.fill_between(
                    x[spread], ok.loc[spread, "ci_low"], ok.loc[spread, "ci_high"], color=colour, alpha=0.15
                )
            gone = line[line["diverged"]]
            if len(gone):
                gx = gone[key].astype(float) if is_numeric(list(line[key])) else gone[key].astype(str)
                ax.scatter(gx, [top] * len(gone), marker="x", s=50, color=colour)
            pick = line[line["chosen"]]
            if len(pick):
                px = pick[key].astype(float) if is_numeric(list(line[key])) else pick[key].astype(str)
                ax.scatter(px, pick["mean"], s=140, facecolors="none", edgecolors=colour, linewidths=2)
    metric = short_name(result.metric)
    if tpe:
        axes[0].set_xlabel("trial")
        axes[0].set_ylabel(f"best {metric} so far (mean over tuning seeds)")
    for ax, key in zip(axes, keys if not tpe else [], strict=False):
        tried = list(points[key].dropna().unique())
        if _log_spaced(tried):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(f"{metric}, mean over tuning seeds [{CONFIDENCE:.0%} CI]")
    if not tpe:
        span = top - bottom
        for ax in axes:
            ax.set_ylim(bottom - 0.03 * span, top + 0.05 * span)
    axes[0].set_title("o: a variant's choice; x: diverged; ^: above the loss at initialisation", fontsize=9)
    axes[-1].legend(fontsize=7, loc="best")
    return figure


# -- the report's section ------------------------------------------------------------------------------------


def _values_text(values: dict[str, Any]) -> str:
    return ", ".join(
        f"{short_name(k)} {v:g}" if isinstance(v, float) else f"{short_name(k)} {v}" for k, v in values.items()
    )


def changed_verdicts(tuned: pd.DataFrame, untuned: pd.DataFrame | None) -> pd.DataFrame:
    """The effects whose verdict differs between the tuned and the untuned runs (same metric, axis, level,
    baseline and corpus), with both verdicts and both differences."""
    if untuned is None or tuned is None or tuned.empty or untuned.empty or "verdict" not in tuned:
        return pd.DataFrame()
    on = ["metric", "kind", "data", "axis", "level", "baseline"]
    left = tuned[on + ["verdict", "mean_difference"]].astype({"level": str, "baseline": str})
    right = untuned[on + ["verdict", "mean_difference"]].astype({"level": str, "baseline": str})
    both = left.merge(right, on=on, suffixes=("_tuned", "_untuned"))
    return both[both["verdict_tuned"] != both["verdict_untuned"]].reset_index(drop=True)


def tuning_markdown(result: TuningResult, tuned_effects: pd.DataFrame | None, figure_name: str | None) -> list[str]:
    """The report's Tuning section: per variant the choice, the budget, LR sensitivity and the optimism; then
    every effect whose verdict changes when each variant is at its own best point."""
    tpe = result.search == "tpe"
    how = (
        f"TPE (Optuna's seeded TPESampler), {result.written} trials per variant"
        if tpe
        else f"a grid of {result.written} point(s) as written"
        + (f", extended one step beyond an end it chose, up to {result.extend} time(s)" if result.extend else "")
    )
    lines = [
        "## Tuning",
        "",
        f"Every variant tried {md(', '.join(result.keys))} ({how}) with tuning seeds "
        f"{', '.join(map(str, result.seeds))}; its choice minimises the mean {result.metric} over those seeds "
        "(a diverged run counts as the worst value; ties go to the smaller value). Every verdict above is decided "
        "on the spec's own seeds, fresh ones, each variant at its choice: choosing and deciding on the same seeds "
        "would bias the verdict toward the variant whose choice was luckiest (Cawley & Talbot, JMLR 2010). "
        "tuning.csv has every point.",
        "",
    ]
    header = "| variant | chosen | budget (points x seeds x steps) | LR sensitivity | optimism [95% CI] | note |"
    lines += [header, "|---|---|---|---|---|---|"]
    for setting in dict.fromkeys(result.points["setting"]):
        points, seeds, steps = result.budget(setting)
        chosen = result.choices.get(setting)
        note = result.incomplete.get(setting, "")
        row = result.points[(result.points["setting"] == setting) & result.points["chosen"]]
        if len(row) and row.iloc[0]["at_edge"] and not tpe:
            note = f"at the edge of the grid ({row.iloc[0]['at_edge']})"
        sensitivity = result.sensitivity(setting)
        opt = result.optimism(setting)
        opt_text = (
            "-"
            if opt is None or math.isnan(opt.difference)
            else f"{opt.difference:+.4f}"
            + (
                f" [{opt.low:+.4f}, {opt.high:+.4f}]"
                if not math.isnan(opt.low)
                else f" (n={opt.n_tuning}/{opt.n_fresh})"
            )
        )
        lines.append(
            f"| {md(setting)} | {md(_values_text(chosen)) if chosen else 'none'} | {points} x {seeds} x {steps:,} "
            f"| {'-' if math.isnan(sensitivity) else f'{sensitivity:.4f}'} | {opt_text} | {md(note)} |"
        )
    lines += [
        "",
        "LR sensitivity (Wortsman et al. 2023, §2.2): the mean over the learning rates tried of how far each is "
        "from the best one, min(loss, loss at initialisation) − best loss, a diverged run counted at the loss at "
        "initialisation; in nats, lower is more forgiving. Optimism: the tuning seeds' mean at the chosen point "
        "minus the fresh seeds' mean there, with Welch's 95% interval; below 0 the choice looked better on the "
        "seeds that made it.",
        "",
    ]
    if figure_name:
        lines += [f"![tuning]({figure_name})", ""]
    changed = changed_verdicts(tuned_effects, result.untuned_effects)
    if result.untuned_effects is not None:
        lines += ["### Tuned against untuned", ""]
        if changed.empty:
            lines += [
                "Every verdict is the same when each variant trains at the spec's own settings "
                "(`tune.compare_untuned`, on the same fresh seeds); effects_untuned.csv has them.",
                "",
            ]
        else:
            lines += [
                f"{len(changed)} verdict(s) change between the spec's own settings and each variant at its own "
                "best point (both on the same fresh seeds; effects_untuned.csv has the untuned ones):",
                "",
            ]
            for _, row in changed.iterrows():
                where = f" ({row['data']})" if isinstance(row["data"], str) and row["data"] else ""
                lines.append(
                    f"- {md(row['axis'])}: {md(row['level'])} vs {md(row['baseline'])}{md(where)}, {row['metric']}: "
                    f"{row['verdict_untuned']} ({row['mean_difference_untuned']:+.4f}) at the spec's settings, "
                    f"{row['verdict_tuned']} ({row['mean_difference_tuned']:+.4f}) with each at its best."
                )
            lines.append("")
    return lines


def md(text) -> str:
    """Markdown-safe text (the few specials a table cell or a sentence of this section can hold)."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")
