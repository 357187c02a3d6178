"""Statistics of a sweep's runs table: seed-folded summaries, paired effects and the sentences that answer
the write-up's questions. Pure pandas and arithmetic (no MLflow, no scipy), so it is tested on hand-made tables.

A "factor" is a column of the runs table that the sweep varied (an axis of the grid, or one column per zip
group); the seed axis is kept apart: summaries fold it, effects pair on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

CONFIDENCE = 0.95
SUMMARY_METRICS = ["final_train_loss", "final_val_loss", "excess_loss", "loss_noise"]
EFFECT_METRICS = ["final_val_loss", "loss_noise"]  # the effect on val loss is the headline; noise for the batch question
FINISHED = "FINISHED"

# Two-sided 95% quantiles t_{0.975, df} for df = 1..30 (from scipy.stats.t.ppf, to 9 digits).
_T975 = [
    12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252, 2.306004135,
    2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688, 2.131449546, 2.119905299,
    2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845, 2.073873068, 2.068657610, 2.063898562,
    2.059538553, 2.055529439, 2.051830516, 2.048407142, 2.045229642, 2.042272456,
]
_Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: a table up to 30, then the Cornish-Fisher expansion around the normal (error < 1e-6)."""
    if df < 1:
        return math.nan
    if df <= len(_T975):
        return _T975[df - 1]
    z, v = _Z975, float(df)
    return (z + (z**3 + z) / (4 * v) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4))


@dataclass(frozen=True)
class Interval:
    """Mean of n values with a t-interval; std and bounds are NaN below n=2 (one value has no spread)."""

    n: int
    mean: float
    std: float
    low: float
    high: float

    @property
    def direction(self) -> str:
        """'up' / 'down' when the interval excludes 0, 'overlap' when it does not, 'point' for n=1, 'none' for n=0."""
        if self.n == 0:
            return "none"
        if self.n == 1 or math.isnan(self.low):
            return "point"
        return "up" if self.low > 0 else "down" if self.high < 0 else "overlap"

    def describe(self, unit: str, signed: bool = False) -> str:
        """'+0.1234 (95% CI +0.1000 to +0.1468, n=4 pairs)', or why there is no interval."""
        sign = "+" if signed else ""
        if self.n == 0:
            return f"no finished {unit}"
        value = f"{self.mean:{sign}.4f}"
        if self.n == 1:
            return f"{value} (n=1, so no interval is possible)"
        return f"{value} ({CONFIDENCE:.0%} CI {self.low:{sign}.4f} to {self.high:{sign}.4f}, n={self.n} {unit})"


def mean_ci(values) -> Interval:
    """Mean and 95% t-interval of the finite values (NaNs, e.g. a metric a run did not log, are dropped)."""
    series = pd.to_numeric(pd.Series(values, dtype="object"), errors="coerce").astype("float64")
    series = series[np.isfinite(series)]
    n = len(series)
    if n == 0:
        return Interval(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(series.mean())
    if n == 1:
        return Interval(1, mean, math.nan, math.nan, math.nan)
    std = float(series.std(ddof=1))
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    return Interval(n, mean, std, mean - half, mean + half)


def finished(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["status"] == FINISHED]


def levels(table: pd.DataFrame, factor: str) -> list:
    """A factor's values in the order the spec lists them (the runs table follows the grid, missing runs included)."""
    return list(dict.fromkeys(table[factor].tolist()))


def short_name(key: str) -> str:
    return key.split(".")[-1]


def summarize(table: pd.DataFrame, factors: list[str], label: str = "setting",
              metrics: list[str] = SUMMARY_METRICS) -> pd.DataFrame:
    """One row per setting (every factor but the seed): n finished runs, then mean/std/CI of each metric.

    ``runs`` counts the setting's variants whatever their status; statistics use FINISHED runs only.
    """
    groups = table.groupby(factors, sort=False, dropna=False) if factors else [((), table)]
    rows = []
    for _, group in groups:
        done = finished(group)
        row = {label: group[label].iloc[0], **{f: group[f].iloc[0] for f in factors}, "runs": len(group), "n": len(done)}
        for metric in metrics:
            interval = mean_ci(done[metric] if metric in done else [])
            row.update({f"{metric}_mean": interval.mean, f"{metric}_std": interval.std,
                        f"{metric}_ci_low": interval.low, f"{metric}_ci_high": interval.high})
        row["bigram_floor"] = mean_ci(done["bigram_floor"] if "bigram_floor" in done else []).mean
        rows.append(row)
    return pd.DataFrame(rows)


def paired_differences(table: pd.DataFrame, factor: str, level, baseline, metric: str,
                       pair_on: list[str]) -> pd.DataFrame:
    """Runs at ``level`` matched to the run at ``baseline`` with equal ``pair_on`` values; ``difference`` = level - baseline.

    Only FINISHED runs with a finite metric pair up, so a failed or missing run drops its pair, not the table.
    """
    usable = finished(table)
    values = pd.to_numeric(usable[metric], errors="coerce").astype("float64")
    usable = usable[np.isfinite(values)]
    treated = usable[usable[factor] == level][pair_on + [metric]]
    control = usable[usable[factor] == baseline][pair_on + [metric]]
    if pair_on:
        pairs = treated.merge(control, on=pair_on, suffixes=("", "_baseline"))
    else:
        pairs = treated.merge(control, how="cross", suffixes=("", "_baseline"))
    return pairs.assign(difference=pairs[metric] - pairs[f"{metric}_baseline"])


def effects(table: pd.DataFrame, factors: list[str], seed: str | None = None,
            metrics: list[str] = EFFECT_METRICS) -> pd.DataFrame:
    """For each factor and each level against the factor's first level: the mean paired difference of each metric.

    Pairs agree on every other factor and on the seed, so the difference is the factor's alone. Rows are
    grouped by metric (``metrics`` order), the largest absolute effect first.
    """
    pair_keys = factors + ([seed] if seed else [])
    rows = []
    for metric in metrics:
        if metric not in table:
            continue
        for factor in factors:
            values = levels(table, factor)
            for level in values[1:]:
                pairs = paired_differences(table, factor, level, values[0], metric, [k for k in pair_keys if k != factor])
                interval = mean_ci(pairs["difference"])
                rows.append({
                    "metric": metric, "axis": factor, "level": level, "baseline": values[0], "n_pairs": interval.n,
                    "mean_difference": interval.mean, "std": interval.std, "ci_low": interval.low, "ci_high": interval.high,
                    "level_mean": pairs[metric].mean() if len(pairs) else math.nan,
                    "baseline_mean": pairs[f"{metric}_baseline"].mean() if len(pairs) else math.nan,
                    "ci_excludes_zero": interval.direction in ("up", "down"),
                })
    columns = ["metric", "axis", "level", "baseline", "n_pairs", "mean_difference", "std", "ci_low", "ci_high",
               "level_mean", "baseline_mean", "ci_excludes_zero"]
    result = pd.DataFrame(rows, columns=columns)
    if result.empty:
        return result
    order = {m: i for i, m in enumerate(metrics)}
    result = result.assign(_metric=result["metric"].map(order), _size=result["mean_difference"].abs())
    result = result.sort_values(["_metric", "_size"], ascending=[True, False], na_position="last", kind="stable")
    return result.drop(columns=["_metric", "_size"]).reset_index(drop=True)


# -- the write-up's questions, answered in sentences generated from the numbers ---------------------------

def _joined(names: list[str]) -> str:
    names = [short_name(n) for n in names]
    return " and ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " and " + names[-1]


def _pairing(pair_on: list[str]) -> str:
    return f"pairs matched on {_joined(pair_on)}" if pair_on else "pairs"


def ffn_vs_bigram(table: pd.DataFrame, factors: list[str], seed: str | None,
                  model: str = "model.kind", dataset: str = "data.dataset") -> list[str]:
    """Is the FFN worse than the bigram on each corpus? (The write-up: 'capacity too large for the data'.)"""
    if model not in factors or not {"bigram", "ffn"} <= set(levels(table, model)):
        return [f"FFN vs bigram: not answerable, this sweep does not vary {model} over bigram and ffn."]
    pair_on = [f for f in factors if f != model] + ([seed] if seed else [])
    corpora = levels(table, dataset) if dataset in factors else [None]
    sentences = []
    for corpus in corpora:
        subset = table if corpus is None else table[table[dataset] == corpus]
        where = f"On {corpus}" if corpus is not None else "Across this sweep"
        pairs = paired_differences(subset, model, "ffn", "bigram", "final_val_loss", pair_on)
        interval = mean_ci(pairs["difference"])
        head = (f"{where}, final val loss of the FFN minus the bigram is "
                f"{interval.describe(_pairing([k for k in pair_on if k != dataset]), signed=True)}")
        verdict = {
            "up": "the FFN is worse, as the write-up claims.",
            "down": "the FFN is better, so these runs do not support the write-up's claim that it is worse.",
            "overlap": "the interval includes 0, so these runs cannot tell whether the FFN is worse.",
            "point": f"the single pair says the FFN is {'worse' if interval.mean > 0 else 'better'}, which may be noise.",
            "none": "no finished FFN/bigram pair to compare.",
        }[interval.direction]
        sentences.append(f"{head}: {verdict}" if interval.n else f"{where}: {verdict}")
    return sentences


def batch_noise(table: pd.DataFrame, factors: list[str], seed: str | None, batch: str = "train.batch_size") -> list[str]:
    """Does a larger batch oscillate less? loss_noise = std of the minibatch loss around its moving average."""
    if batch not in factors or len(levels(table, batch)) < 2:
        return [f"Batch size and oscillation: not answerable, this sweep does not vary {batch}."]
    values = levels(table, batch)
    pair_on = [f for f in factors if f != batch] + ([seed] if seed else [])
    sentences = []
    for level in values[1:]:
        pairs = paired_differences(table, batch, level, values[0], "loss_noise", pair_on)
        interval = mean_ci(pairs["difference"])
        if interval.n == 0:
            sentences.append(f"Batch {level} vs {values[0]}: no finished pair with a loss_noise to compare.")
            continue
        verdict = {
            "up": f"batch {level} oscillates more.",
            "down": f"batch {level} oscillates less.",
            "overlap": "the interval includes 0, so no difference in oscillation is shown.",
            "point": f"the single pair says batch {level} oscillates {'more' if interval.mean > 0 else 'less'}, which may be noise.",
        }[interval.direction]
        sentences.append(
            f"Batch {level} vs {values[0]}: loss_noise changes by {interval.describe(_pairing(pair_on), signed=True)}, "
            f"from a mean of {pairs['loss_noise_baseline'].mean():.4f} at {values[0]} "
            f"to {pairs['loss_noise'].mean():.4f} at {level}: {verdict}")
    return sentences


def floor_distance(summary: pd.DataFrame, table: pd.DataFrame, factors: list[str], label: str = "setting") -> list[str]:
    """How close does each setting get to the bigram floor? excess_loss = final train loss - H(next | current)."""
    sentences = []
    groups = table.groupby(factors, sort=False, dropna=False) if factors else [((), table)]
    for _, group in groups:
        name = group[label].iloc[0]
        interval = mean_ci(finished(group)["excess_loss"]) if "excess_loss" in group else mean_ci([])
        if interval.n == 0:
            sentences.append(f"{name}: no finished run with an excess_loss.")
            continue
        floor = mean_ci(finished(group)["bigram_floor"]).mean
        sentences.append(f"{name}: final train loss is {interval.describe('seeds')} nats above "
                         f"its bigram floor of {floor:.4f}.")
    done = summary[summary["excess_loss_mean"].notna()] if "excess_loss_mean" in summary else summary.iloc[:0]
    if len(done) > 1:
        best = done.loc[done["excess_loss_mean"].idxmin()]
        sentences.append(f"Closest to the floor: {best[label]} (mean excess {best['excess_loss_mean']:.4f}).")
    return sentences


def findings(table: pd.DataFrame, summary: pd.DataFrame, factors: list[str], seed: str | None,
             label: str = "setting") -> dict[str, list[str]]:
    """The report's answers: question -> sentences, each with its interval and n."""
    return {
        "Is the FFN worse than the bigram on each corpus?": ffn_vs_bigram(table, factors, seed),
        "Does a larger batch oscillate less (loss_noise)?": batch_noise(table, factors, seed),
        "How close does each variant get to the bigram floor (excess_loss)?": floor_distance(summary, table, factors, label),
    }
