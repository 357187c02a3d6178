"""Statistics of a sweep's runs table: seed-folded summaries, paired effects and the sentences that answer
the write-up's questions. Pure pandas and scipy.special's t distribution (no MLflow), so it is tested on
hand-made tables.

A "factor" is a column of the runs table that the sweep varied (an axis of the grid, or one column per zip
group); the seed axis is kept apart: summaries fold it, effects pair on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import stdtrit  # the t quantile scipy.stats.t.ppf calls; scipy.stats costs ~1.5 s to import

from harness.report import verdicts
from harness.train.evaluation import LOSS_NOISE_MIN_STEPS

CONFIDENCE = 0.95
SUMMARY_METRICS = ["final_train_loss", "final_val_loss", "excess_loss", "loss_noise"]
EFFECT_METRICS = [
    "final_val_loss",
    "loss_noise",
]  # the effect on val loss is the headline; noise for the batch question
FINISHED = "FINISHED"
# The tokenizer's keys: the same text cut into other tokens. An axis over them is a treatment (not different data),
# and its losses are compared in bits per character only: nats per token do not compare across tokenizers.
TOKENIZER_KEYS = ("data.tokenizer", "data.vocab_size", "data.extra_chars")
BITS_OF = {"final_val_loss": "final_val_bpc", "final_train_loss": "final_train_bpc"}  # nats/token -> bits/char


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
    if std == 0.0:  # every value equal: scipy would return NaN bounds for a zero scale
        return Interval(n, mean, std, mean, mean)
    half = float(stdtrit(n - 1, (1 + CONFIDENCE) / 2)) * std / math.sqrt(n)
    return Interval(n, mean, std, mean - half, mean + half)


def finished(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["status"] == FINISHED]


def levels(table: pd.DataFrame, factor: str, order: list | None = None) -> list:
    """A factor's values in the order the spec lists them: a named axis's ``order`` (its level names as
    written), else the runs table's order (it follows the grid, missing runs included)."""
    present = list(dict.fromkeys(table[factor].tolist()))
    if order:
        return [v for v in order if v in present] + [v for v in present if v not in order]
    return present


def short_name(key: str) -> str:
    return key.split(".")[-1]


def corpus_label(values: dict) -> str:
    """'dataset=korean-chatbot' for a combination of data factors; '' for none."""
    return ", ".join(f"{short_name(k)}={v}" for k, v in values.items())


def combinations(table: pd.DataFrame, factors: list[str]) -> list[dict]:
    """Every combination of ``factors`` present in the table, in table order ([{}] for no factors)."""
    if not factors:
        return [{}]
    return [dict(zip(factors, row, strict=True)) for row in table[factors].drop_duplicates().itertuples(index=False)]


def select(table: pd.DataFrame, values: dict) -> pd.DataFrame:
    mask = pd.Series(True, index=table.index)
    for key, value in values.items():
        mask &= table[key].isna() if pd.isna(value) else table[key] == value
    return table[mask]


# -- convergence: verdicts only from runs that have stopped moving ------------------------------------------

CONVERGENCE_WINDOW = 0.10  # the last 10% of the steps run
CONVERGENCE_TOLERANCE = 0.01  # nats
CONVERGENCE_RULE = (
    f"A run is *near convergence* when its exact val loss (the `loss/val` curve) changed by less than "
    f"{CONVERGENCE_TOLERANCE} nats over the last {CONVERGENCE_WINDOW:.0%} of its steps: |val(last step) - val(last "
    f"evaluation at or before {1 - CONVERGENCE_WINDOW:.0%} of the steps)| < {CONVERGENCE_TOLERANCE}, where that "
    f"evaluation comes after {1 - 2 * CONVERGENCE_WINDOW:.0%} of them (else the curve cannot tell). The budget is part "
    f"of the verdict: an effect is judged at the steps actually run (better, worse, equivalent, undecided), and one "
    f'whose runs are still moving says "still improving at N steps; more steps may change the order". Only questions '
    f"about the limit (closest to the floor, whether the FFN's capacity is too large for the data) need every run "
    f'they use near convergence; otherwise they say "too short to judge" and why, and show the numbers. '
    f"The intervals are over the pairs and seeds each row states, whatever the convergence."
)


def val_movement(history: pd.DataFrame | None) -> tuple[int | None, float]:
    """(steps run, val(end) - val(at or before 90% of them)) from a run's val curve; the change is NaN when
    the curve cannot tell (no curve, or no evaluation from 80% to 90% of the steps: a change since an earlier
    one is not the last 10%'s)."""
    if history is None or history.empty:
        return None, math.nan
    steps = int(history["step"].max())
    window = math.ceil(CONVERGENCE_WINDOW * steps)
    before = history[history["step"].between(steps - 2 * window, steps - window)]
    if steps == 0 or before.empty:
        return steps, math.nan
    end = float(history.loc[history["step"] == steps, "value"].iloc[-1])
    return steps, end - float(before.sort_values("step")["value"].iloc[-1])


def with_convergence(table: pd.DataFrame, val_curves: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The runs table plus ``steps_run``, ``val_change_last_10pct`` and ``near_convergence`` (run id -> val curve)."""
    steps, changes = [], []
    for run_id in table["run_id"]:
        step, change = val_movement(val_curves.get(run_id)) if isinstance(run_id, str) else (None, math.nan)
        steps.append(step)
        changes.append(change)
    changes = pd.Series(changes, index=table.index, dtype="float64")
    return table.assign(
        steps_run=pd.Series(steps, index=table.index, dtype="Int64"),
        val_change_last_10pct=changes,
        near_convergence=changes.abs() < CONVERGENCE_TOLERANCE,
    )


def _steps_text(runs: pd.DataFrame) -> str:
    steps = sorted({int(s) for s in runs.get("steps_run", pd.Series(dtype="Int64")).dropna()})
    return "/".join(f"{s:,}" for s in steps) or "an unknown number of"


def too_short(runs: pd.DataFrame) -> str | None:
    """None when every finished run is near convergence; otherwise why a verdict from them would be premature."""
    done = finished(runs)
    if done.empty:
        return None
    if "near_convergence" not in done:
        return "no val curves were read, so convergence is unknown"
    moving = done[~done["near_convergence"].astype(bool)]
    if moving.empty:
        return None
    changes = moving["val_change_last_10pct"].abs().dropna()
    if changes.empty:
        return (
            f"{len(moving)} of {len(done)} runs have no evaluation from {1 - 2 * CONVERGENCE_WINDOW:.0%} to "
            f"{1 - CONVERGENCE_WINDOW:.0%} of their steps ({_steps_text(done)} steps run): train.eval_interval "
            "is too long for them to tell"
        )
    return (
        f"{len(moving)} of {len(done)} runs were still moving: their val loss changed by up to {changes.max():.4f} "
        f"nats over the last {CONVERGENCE_WINDOW:.0%} of their {_steps_text(done)} steps "
        f"(near convergence means less than {CONVERGENCE_TOLERANCE})"
    )


def loss_noise_reason(runs: pd.DataFrame) -> str:
    """Why loss_noise is NaN: too few steps for its moving-average window (train.LOSS_NOISE_MIN_STEPS)."""
    need = f"at least {LOSS_NOISE_MIN_STEPS:,} steps"
    return f"loss_noise needs {need} for its moving-average window; these runs ran {_steps_text(finished(runs))} steps"


# -- tables --------------------------------------------------------------------------------------------------


def summarize(
    table: pd.DataFrame, factors: list[str], label: str = "setting", metrics: list[str] = SUMMARY_METRICS
) -> pd.DataFrame:
    """One row per setting (every factor but the seed): n finished runs, then mean/std/CI of each metric.

    ``runs`` counts the setting's variants whatever their status; statistics use FINISHED runs only.
    """
    groups = table.groupby(factors, sort=False, dropna=False) if factors else [((), table)]
    rows = []
    for _, group in groups:
        done = finished(group)
        row = {
            label: group[label].iloc[0],
            **{f: group[f].iloc[0] for f in factors},
            "runs": len(group),
            "n": len(done),
        }
        for metric in metrics:
            interval = mean_ci(done[metric] if metric in done else [])
            row.update(
                {
                    f"{metric}_mean": interval.mean,
                    f"{metric}_std": interval.std,
                    f"{metric}_ci_low": interval.low,
                    f"{metric}_ci_high": interval.high,
                }
            )
        row["bigram_floor"] = mean_ci(done["bigram_floor"] if "bigram_floor" in done else []).mean
        if "final_val_bpc" in metrics:
            row["bigram_floor_bpc"] = mean_ci(done["bigram_floor_bpc"] if "bigram_floor_bpc" in done else []).mean
        if "near_convergence" in done:
            row["n_near_convergence"] = int(done["near_convergence"].astype(bool).sum())
            row["steps_run"] = _steps_text(done)
        rows.append(row)
    return pd.DataFrame(rows)


def paired_differences(
    table: pd.DataFrame, factor: str, level, baseline, metric: str, pair_on: list[str]
) -> pd.DataFrame:
    """Runs at ``level`` matched to the run at ``baseline`` with equal ``pair_on`` values;
    ``difference`` = level - baseline.

    Only FINISHED runs with a finite metric pair up, so a failed or missing run drops its pair, not the table.
    """
    usable = finished(table)
    values = pd.to_numeric(usable[metric], errors="coerce").astype("float64")
    usable = usable[np.isfinite(values)]
    carried = pair_on + [metric] + [c for c in ("near_convergence", "run_id", "steps_run") if c in usable]
    treated = usable[usable[factor] == level][carried]
    control = usable[usable[factor] == baseline][carried]
    if pair_on:
        pairs = treated.merge(control, on=pair_on, suffixes=("", "_baseline"))
    else:
        pairs = treated.merge(control, how="cross", suffixes=("", "_baseline"))
    return pairs.assign(difference=pairs[metric] - pairs[f"{metric}_baseline"])


def data_factors(table: pd.DataFrame, factors: list[str], seed: str | None = None) -> list[str]:
    """The factors that change the data: a ``data.*`` axis, or one (a named level, a zip group) whose levels
    differ in some ``data.*`` setting with everything else held fixed. These are never ranked as treatments."""
    data_columns = [c for c in table.columns if c.startswith("data.") and c not in factors and c not in TOKENIZER_KEYS]
    found = []
    for factor in factors:
        parts = factor.split("+")
        if any(part.startswith("data.") and part not in TOKENIZER_KEYS for part in parts):
            found.append(factor)
            continue
        if not all(part in TOKENIZER_KEYS for part in parts) and _varies_within(
            table, factor, factors, seed, data_columns
        ):
            found.append(factor)
    return found


def _varies_within(table: pd.DataFrame, factor: str, factors: list[str], seed: str | None, columns: list[str]) -> bool:
    """Whether ``factor``'s levels differ in one of ``columns`` with every other factor (and the seed) held fixed."""
    if not columns or table.empty:
        return False
    others = [f for f in factors if f != factor] + ([seed] if seed else [])
    grouped = table.assign(_all=0).groupby(others or ["_all"], dropna=False, sort=False)
    return bool((grouped[columns].nunique(dropna=False) > 1).any().any())


EFFECT_COLUMNS = [
    "metric",
    "kind",
    "data",
    "axis",
    "level",
    "baseline",
    "comparison",
    "n_pairs",
    "mean_difference",
    "std",
    "ci_low",
    "ci_high",
    "level_mean",
    "baseline_mean",
    "ci_excludes_zero",
    "near_convergence",
    "mean_difference_bits",
    "ci_low_bits",
    "ci_high_bits",
    "n_seeds",
    "level_steps",
    "baseline_steps",
]
PILOT_COLUMNS = ["pilot_pairs", "pilot_std"]  # effects of a Stein second stage: the pilot's pairs and their sd


def tokenizer_factors(table: pd.DataFrame, factors: list[str], seed: str | None = None) -> list[str]:
    """The factors whose levels cut the text into other tokens (a ``TOKENIZER_KEYS`` axis, or a named or zipped
    one whose levels differ in one, all else fixed): compared in bits per character, never in nats per token."""
    columns = [c for c in TOKENIZER_KEYS if c in table.columns]
    found = []
    for factor in factors:
        if any(part in TOKENIZER_KEYS for part in factor.split("+")) or _varies_within(
            table, factor, factors, seed, columns
        ):
            found.append(factor)
    return found


def _bits(pairs: pd.DataFrame, metric: str, table: pd.DataFrame) -> Interval | None:
    """The pairs' difference in bits per character: the metric's own when it is in bits, else that of its bits
    twin (``BITS_OF``) over the same pairs; None when neither (then nats / ln 2, right for one token a character)."""
    if metric in BITS_OF.values():
        return mean_ci(pairs["difference"])
    twin = BITS_OF.get(metric)
    if twin is None or twin not in table or not len(pairs) or "run_id" not in pairs:
        return None
    runs = table[table["run_id"].map(lambda r: isinstance(r, str))].drop_duplicates("run_id")  # missing: no run
    bits = pd.to_numeric(runs.set_index("run_id")[twin], errors="coerce")
    difference = pairs["run_id"].map(bits) - pairs["run_id_baseline"].map(bits)
    return mean_ci(difference) if difference.notna().all() else None


def _compare(
    table: pd.DataFrame,
    factor: str,
    order: list | None,
    pair_on: list[str],
    metric: str,
    seed: str | None = None,
    pilot: list | None = None,
    chain: bool | None = None,
) -> list[dict]:
    """Rows of one factor: each level against the first level, or against the previous one for a named axis
    (``chain``, default: whether the axis is named; tokenizers are alternatives to the first, not a ladder).
    With ``pilot`` (the seeds of a Stein pilot), also the pilot's pairs and their sd."""
    values = levels(table, factor, order)
    chain = bool(order) if chain is None else chain
    rows = []
    for i, level in enumerate(values[1:], start=1):
        baseline = values[i - 1] if chain else values[0]
        pairs = paired_differences(table, factor, level, baseline, metric, [k for k in pair_on if k != factor])
        interval = mean_ci(pairs["difference"])
        # Without a seed axis every pair comes from the one seed of the base config.
        seeds = int(pairs[seed].nunique()) if seed and seed in pairs else min(interval.n, 1)
        extra = {}
        if pilot is not None:
            in_pilot = pairs[seed].isin(pilot) if seed and seed in pairs else pd.Series(True, index=pairs.index)
            first = mean_ci(pairs.loc[in_pilot, "difference"])
            extra = {"pilot_pairs": first.n, "pilot_std": first.std}
        bits = _bits(pairs, metric, table)
        if bits is None:
            n, *nats = interval.n, interval.mean, interval.std, interval.low, interval.high
            bits = Interval(n, *(x / math.log(2) for x in nats))
        converged = (
            bool(pairs["near_convergence"].astype(bool).all() and pairs["near_convergence_baseline"].astype(bool).all())
            if "near_convergence" in pairs and len(pairs)
            else None
        )
        rows.append(
            {
                "axis": factor,
                "level": level,
                "baseline": baseline,
                "comparison": "previous level" if chain else "first level",
                "n_pairs": interval.n,
                "mean_difference": interval.mean,
                "std": interval.std,
                "ci_low": interval.low,
                "ci_high": interval.high,
                "level_mean": pairs[metric].mean() if len(pairs) else math.nan,
                "baseline_mean": pairs[f"{metric}_baseline"].mean() if len(pairs) else math.nan,
                "ci_excludes_zero": interval.direction in ("up", "down"),
                "near_convergence": converged,
                # bits per character: from the runs' bits per character (any tokenizer), else nats / ln 2
                "mean_difference_bits": bits.mean,
                "ci_low_bits": bits.low,
                "ci_high_bits": bits.high,
                "n_seeds": seeds,
                "level_steps": _most_steps(pairs, "steps_run"),
                "baseline_steps": _most_steps(pairs, "steps_run_baseline"),
                **extra,
            }
        )
    return rows


def _most_steps(pairs: pd.DataFrame, column: str) -> float:
    """The most steps any of these runs ran (NaN when unknown): the budget an effect is judged at."""
    steps = pd.to_numeric(pairs[column], errors="coerce") if column in pairs else pd.Series(dtype=float)
    return float(steps.max()) if steps.notna().any() else math.nan


def effects(
    table: pd.DataFrame,
    factors: list[str],
    seed: str | None = None,
    metrics: list[str] = EFFECT_METRICS,
    data: list[str] | None = None,
    orders: dict[str, list] | None = None,
    pilot: list | None = None,
) -> pd.DataFrame:
    """The paired differences of each factor, per metric.

    Treatments (factors that keep the data) are compared within each corpus (``data``: the data factors; every
    combination of them is one corpus), paired on every other factor and the seed, so a difference is the
    factor's alone. A data factor is never a treatment: its rows have kind "different data" (bits per character
    given too, as for every row). A named axis (``orders``: axis -> level names in order) compares each level
    with the previous one ("what adding this component did"). Rows: metric order, treatments first, corpora in
    order, then the axis with the largest absolute effect first (a named axis's levels in the order written).
    """
    data = [f for f in (data or []) if f in factors]
    orders = orders or {}
    pair_keys = factors + ([seed] if seed else [])
    treatments = [f for f in factors if f not in data]
    corpora = combinations(table, data)
    fixed_corpus = ""
    if not data and "data.dataset" in table and table["data.dataset"].nunique() == 1:
        fixed_corpus = f"dataset={table['data.dataset'].iloc[0]}"
    # A tokenizer axis is compared in bits per character (its metric's twin), or not at all (e.g. loss_noise).
    tokenizer_axes = set(tokenizer_factors(table, treatments, seed))
    rows = []
    for metric in [*metrics, *(BITS_OF[m] for m in metrics if m in BITS_OF)]:
        if metric not in table:
            continue
        for c, corpus in enumerate(corpora):
            subset = select(table, corpus)
            for factor in treatments:
                if (factor in tokenizer_axes) != (metric in BITS_OF.values()):
                    continue
                chain, within = None, [{}]
                if factor in tokenizer_axes:
                    # Tokenizers are alternatives to the first level, compared within each level of the other axes:
                    # the vocabulary is the model's input and output, so a tokenizer's effect depends on the model
                    # (a bigram table of 2,048 rows against a 32-wide GPT), and an average over models answers nothing.
                    chain, within = False, combinations(subset, [f for f in treatments if f != factor])
                for condition in within:
                    label = corpus_label({**corpus, **condition}) or fixed_corpus
                    for row in _compare(
                        select(subset, condition), factor, orders.get(factor), pair_keys, metric, seed, pilot, chain
                    ):
                        rows.append({"metric": metric, "kind": "treatment", "data": label, "_corpus": c, **row})
        for factor in data if metric not in BITS_OF.values() else []:  # different data: bits columns suffice
            for row in _compare(table, factor, orders.get(factor), pair_keys, metric, seed, pilot):
                rows.append({"metric": metric, "kind": "different data", "data": "", "_corpus": len(corpora), **row})
    result = pd.DataFrame(rows, columns=EFFECT_COLUMNS + (PILOT_COLUMNS if pilot is not None else []) + ["_corpus"])
    if result.empty:
        return result.drop(columns=["_corpus"])
    order = {m: i for i, m in enumerate([*metrics, *BITS_OF.values()])}
    size = result["mean_difference"].abs()
    block = size.groupby([result["metric"], result["_corpus"], result["axis"]]).transform("max")
    within = pd.Series(
        [
            -float(v) if not orders.get(axis) else float(i)
            for i, (axis, v) in enumerate(zip(result["axis"], size.fillna(-1.0), strict=True))
        ],
        index=result.index,
    )
    result = result.assign(_metric=result["metric"].map(order), _block=block.fillna(-1.0), _within=within)
    # Largest axis first; within an axis, a named one keeps its levels in the order written, others largest first.
    result = result.sort_values(
        ["_metric", "_corpus", "_block", "axis", "_within"], ascending=[True, True, False, True, True], kind="stable"
    )
    return result.drop(columns=["_metric", "_block", "_within", "_corpus"]).reset_index(drop=True)


# -- verdicts: every effect of the report in one family ------------------------------------------------------

ALPHA = 0.05  # the family-wise error rate of a report's verdicts
VERDICT_COLUMNS = [
    "design",
    "verdict",
    "adj_ci_low",
    "adj_ci_high",
    "p_difference",
    "p_equivalence",
    "adj_p_difference",
    "adj_p_equivalence",
    "seeds_needed",
    "reason",
]
PAIRED_T, STEIN = "paired t", "Stein two-stage"


def _stein_rows(effects: pd.DataFrame) -> pd.Series:
    """Rows of a Stein second stage: the pilot had a spread (2 pairs or more) and more pairs came after it."""
    if "pilot_pairs" not in effects:
        return pd.Series(False, index=effects.index)
    pilot = pd.to_numeric(effects["pilot_pairs"], errors="coerce").fillna(0)
    return (pilot >= 2) & (effects["n_pairs"] > pilot) & effects["pilot_std"].notna()


def pairs_per_seed(effects: pd.DataFrame) -> list[int]:
    """k of each effect: its pairs per seed (an effect paired on other axes too has one pair per other level)."""
    seeds = effects["n_seeds"] if "n_seeds" in effects else effects["n_pairs"]
    return [max(1, round(n / s)) if s and s > 0 else 1 for n, s in zip(effects["n_pairs"], seeds, strict=True)]


def verdict_rows(effects: pd.DataFrame, pilot_only: bool = False) -> list[verdicts.Row]:
    """(n, mean, sd, df) of each effect for ``verdicts``: a Stein row (all pairs' mean, the pilot's sd and degrees of
    freedom) after a second stage, else the paired t's; ``pilot_only``: the pilot's own (n, sd), for a seed plan."""
    stein = _stein_rows(effects)
    rows = []
    for (_, effect), second in zip(effects.iterrows(), stein, strict=True):
        n, mean = int(effect["n_pairs"]), float(effect["mean_difference"])
        if second:
            pilot = int(effect["pilot_pairs"])
            rows.append(
                (pilot, mean, float(effect["pilot_std"]), pilot - 1)
                if pilot_only
                else (n, mean, float(effect["pilot_std"]), pilot - 1)
            )
        else:
            rows.append((n, mean, float(effect["std"]), n - 1))
    return rows


def still_moving(table: pd.DataFrame) -> str:
    """The note of a verdict from runs that are not near convergence: still improving, or (when no curve can
    tell, e.g. no evaluation late enough) not shown to have converged."""
    done = finished(table)
    steps = _steps_text(done)
    if "near_convergence" in done:
        done = done[~done["near_convergence"].astype(bool)]
    changes = done["val_change_last_10pct"].abs() if "val_change_last_10pct" in done else pd.Series(dtype=float)
    if changes.notna().any() or changes.empty:
        return f"still improving at {steps} steps; more steps may change the order"
    return f"not shown to have converged at {steps} steps (the val curve cannot tell); more steps may change the order"


def _scale(effects: pd.DataFrame) -> np.ndarray:
    """Per effect, what turns its unit into nats per character: ln 2 for a bits-per-character metric, else 1. A
    verdict is unchanged by a change of unit when δ changes with it, so one δ (nats) serves every row."""
    return np.where(effects["metric"].isin(list(BITS_OF.values())), math.log(2), 1.0)


def in_family(effects: pd.DataFrame) -> pd.Series:
    """The effects the verdicts are adjusted over: treatments with a testable spread (2 pairs or more, a finite sd).
    A corpus against another is a measurement of different data, not a treatment; an effect without pairs (e.g. a
    loss_noise of runs too short to measure it) tests nothing, so it neither spends alpha nor plans seeds."""
    rows = verdict_rows(effects)
    testable = [n >= 2 and df >= 1 and math.isfinite(mean) and math.isfinite(sd) for n, mean, sd, df in rows]
    return (effects["kind"] == "treatment") & pd.Series(testable, index=effects.index, dtype=bool)


def with_verdicts(
    effects: pd.DataFrame, delta: float, alpha: float = ALPHA, method: str = "holm", moving: str | None = None
) -> tuple[pd.DataFrame, verdicts.Family]:
    """effects.csv with a verdict per effect (``VERDICT_COLUMNS``), the report's testable treatment effects one family
    (``in_family``, ``verdicts.decide_family``); a bits-per-character effect is decided in nats per character
    (``_scale``) and its intervals given back in bits. ``moving``: the note appended to the reason of an effect
    whose runs are still moving. After a Stein second stage (``pilot_pairs`` columns), ``precision_reached`` says
    whether its final adjusted interval is at most δ/2 each side (else the seed cap stopped it short)."""
    member = in_family(effects)
    members = effects[member]
    scale = _scale(members)
    rows = [(n, mean * k, sd * k, df) for (n, mean, sd, df), k in zip(verdict_rows(members), scale, strict=True)]
    family = verdicts.decide_family(rows, delta, alpha, method, pairs_per_seed(members))
    decided = family.frame().set_axis(members.index)
    for column in ("mean", "std", "ci_low", "ci_high", "adj_ci_low", "adj_ci_high"):
        decided[column] = decided[column] / scale
    frame = pd.DataFrame(index=effects.index, columns=decided.columns, dtype=object)
    frame.loc[members.index] = decided
    for index, effect in effects[~member].iterrows():
        if effect["kind"] != "treatment":
            why = "different data: how far apart the corpora are, a measurement, not a treatment; no verdict"
            frame.loc[index, ["verdict", "reason"]] = ["", why]
        else:
            n = int(effect["n_pairs"])
            why = "no pairs" if n == 0 else "one pair: no spread" if n == 1 else "no spread"
            frame.loc[index, ["verdict", "reason"]] = [
                "undecided",
                f"undecided: {why}, so nothing to test and no seed plan (not in the family)",
            ]
    stein = _stein_rows(effects)
    reasons = list(frame["reason"])
    if moving and "near_convergence" in effects:
        reasons = [
            r + f"; {moving}" if k == "treatment" and c is not None and not pd.isna(c) and not bool(c) else r
            for r, c, k in zip(reasons, effects["near_convergence"], effects["kind"], strict=True)
        ]
    values = {c: frame[c] for c in VERDICT_COLUMNS if c not in ("design", "reason")}
    values["seeds_needed"] = pd.array(frame["seeds_needed"].tolist(), dtype="Int64")
    for c in ("adj_ci_low", "adj_ci_high", "p_difference", "p_equivalence", "adj_p_difference", "adj_p_equivalence"):
        values[c] = pd.to_numeric(frame[c], errors="coerce")
    result = effects.assign(
        design=[(STEIN if s else PAIRED_T) if m else "" for s, m in zip(stein, member, strict=True)],
        **values,
        reason=reasons,
    )
    if "pilot_pairs" in effects:
        half = (result["adj_ci_high"] - result["adj_ci_low"]) / 2 * _scale(result)
        reached = (half <= delta / 2 * (1 + 1e-9)).astype(object).where(stein & member, None)
        result = result.assign(precision_reached=reached)
    return result, family


def seed_plan(
    effects: pd.DataFrame, delta: float, pilot_n: int, max_seeds: int, alpha: float = ALPHA, method: str = "holm"
) -> verdicts.Plan:
    """Stein's second stage from the pilot's spreads (of every effect, decided or not: the plan must not look at
    the means): the seeds per variant to train."""
    members = effects[in_family(effects)]
    rows = [
        (n, mean * k, sd * k, df)
        for (n, mean, sd, df), k in zip(verdict_rows(members, pilot_only=True), _scale(members), strict=True)
    ]
    return verdicts.plan_seeds(
        rows, delta, alpha, pilot_n=pilot_n, max_seeds=max_seeds, method=method, pairs_per_seed=pairs_per_seed(members)
    )


def effect_label(effect) -> str:
    """'final_val_loss, model.kind: ffn vs bigram (dataset=tinyshakespeare)'."""
    data = f" ({effect['data']})" if isinstance(effect["data"], str) and effect["data"] else ""
    level, baseline = (_value(effect[k]) for k in ("level", "baseline"))
    return f"{effect['metric']}, {effect['axis']}: {level} vs {baseline}{data}"


def _value(value) -> str:
    """A level as written: 32, not the 32.0 a column of mixed axes holds."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


METRIC_WORDS = {
    "final_val_loss": "final val loss",
    "final_train_loss": "final train loss",
    "final_val_bpc": "final val loss per character",
    "final_train_bpc": "final train loss per character",
    "loss_noise": "loss noise (the minibatch loss's wiggle)",
}


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _steps_of(effect) -> str:
    """'at 300 steps', or 'at 5,000 vs 3,000 steps' when the level and its baseline ran different budgets."""
    level, baseline = (effect.get(k, math.nan) for k in ("level_steps", "baseline_steps"))
    if pd.isna(level) and pd.isna(baseline):
        return "at an unknown number of steps"
    if pd.isna(level) or pd.isna(baseline) or level == baseline:
        return f"at {int(level if not pd.isna(level) else baseline):,} steps"
    return f"at {int(level):,} vs {int(baseline):,} steps"


def _size(effect) -> str:
    """'final val loss 0.0123 nats lower (0.0177 bits per character)': both units per character, whichever the
    metric is in. Where the tokenizer varies, a loss in nats per token is not one per character: then the nats per
    character (bits x ln 2) lead and the nats per token follow."""
    metric = effect["metric"]
    words = METRIC_WORDS.get(metric, metric)
    if metric in BITS_OF.values():  # measured in bits per character: nats per character = bits x ln 2
        bits, per_token = float(effect["mean_difference"]), None
    else:
        bits, per_token = float(effect["mean_difference_bits"]), float(effect["mean_difference"])
    nats = bits * math.log(2) if math.isfinite(bits) else per_token
    if nats == 0:
        return f"{words} unchanged (0 nats)"
    text = f"{words} {abs(nats):.4f} nats {'lower' if nats < 0 else 'higher'} ({abs(bits):.4f} bits per character"
    if per_token is not None and not math.isclose(per_token, nats, rel_tol=1e-6, abs_tol=1e-9):
        text += f"; {per_token:+.4f} nats per token, across tokenizers"
    return text + ")"


def _n_text(effect) -> str:
    n, seeds = int(effect["n_pairs"]), effect.get("n_seeds", math.nan)
    pairs = _plural(n, "pair")
    text = f"n = {pairs}" if pd.isna(seeds) or int(seeds) == 0 else f"n = {pairs} from {_plural(int(seeds), 'seed')}"
    return text + (" (no interval from one)" if n == 1 else "")


def effect_sentence(effect, alpha: float = ALPHA) -> str:
    """One plain sentence on an effect with a size: its verdict word, the size in nats and in bits per character, n
    and the budget. 'Better: ffn vs bigram (model.kind, dataset=tinyshakespeare): final val loss 2.1612 nats lower
    (3.1180 bits per character), n = 4 pairs from 2 seeds, at 300 steps.' Lower is better for every metric."""
    where = ", ".join(str(x) for x in (effect["axis"], effect["data"]) if isinstance(x, str) and x)
    subject = f"{_value(effect['level'])} vs {_value(effect['baseline'])} ({where})"
    body = f"{subject}: {_size(effect)}, {_n_text(effect)}, {_steps_of(effect)}"
    if effect["kind"] != "treatment":
        return f"Different data, not a treatment: {body}."
    verdict = effect["verdict"]
    if verdict == "equivalent":
        return f"Equivalent within ±δ: {body}."
    extra = ""
    if verdict in ("better", "worse") and effect.get("adj_p_equivalence", math.nan) < alpha:
        extra = ", a real difference but smaller than δ"
    if verdict == "undecided":
        extra = ": neither a difference nor equivalence within ±δ is shown yet"
    moving = effect.get("near_convergence")
    if moving is not None and not pd.isna(moving) and not bool(moving):
        extra += "; its runs are still improving, so more steps may change it"
    return f"{verdict.capitalize()}: {body}{extra}."


def unmeasured(effects: pd.DataFrame) -> pd.DataFrame:
    """Treatment effects without a single pair (e.g. a loss_noise of runs too short to measure it): undecided,
    with nothing to say about their size."""
    return effects[(effects["kind"] == "treatment") & (effects["n_pairs"] == 0)]


def verdict_counts(effects: pd.DataFrame) -> str:
    """The counts, which add up: 'Of 8 effects of a treatment: 2 better, 0 worse, 0 equivalent, 6 undecided (4 of
    them not measured: no pairs). 2 comparisons between corpora are measurements of different data, with no
    verdict.'"""
    treatments = effects[effects["kind"] == "treatment"]
    counts = treatments["verdict"].value_counts()
    text = f"Of {_plural(len(treatments), 'effect')} of a treatment: " + ", ".join(
        f"{counts.get(v, 0)} {v}" for v in verdicts.VERDICTS
    )
    if treatments.empty:
        text = "This sweep varies no treatment, only the data, so nothing gets a verdict"
    missing = len(unmeasured(effects))
    if missing:
        text += f" ({missing} of them not measured: no pairs)"
    text += "."
    others = len(effects) - len(treatments)
    if others:
        are = "is a measurement" if others == 1 else "are measurements"
        text += f" {_plural(others, 'comparison')} between corpora {are} of different data, with no verdict."
    return text


def _effect_row(effects: pd.DataFrame | None, metric: str, axis: str, level, baseline, data: str | None = None):
    """(the effects row of level vs baseline, False), or of baseline vs level (True: the sign is the other way);
    (None, False) without verdicts or without exactly one such row."""
    if effects is None or "verdict" not in effects or effects.empty:
        return None, False
    for first, second, flipped in ((level, baseline, False), (baseline, level, True)):
        hit = effects[
            (effects["metric"] == metric)
            & (effects["kind"] == "treatment")
            & (effects["axis"] == axis)
            & (effects["level"].astype(str) == str(first))
            & (effects["baseline"].astype(str) == str(second))
        ]
        if data is not None:
            hit = hit[hit["data"] == data]
        if len(hit) == 1:
            return hit.iloc[0], flipped
    return None, False


FLIPPED = {"better": "worse", "worse": "better"}


# -- published references ------------------------------------------------------------------------------------


def _matches(table: pd.DataFrame, match: dict) -> pd.Series:
    """Rows whose axis values equal a reference's ``match`` (compared as text: 32 == '32', [8, 8] == '8x8')."""
    mask = pd.Series(True, index=table.index)
    for key, value in match.items():
        if key not in table:
            return pd.Series(False, index=table.index)
        text = "x".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        mask &= table[key].astype(str) == text
    return mask


def references(table: pd.DataFrame, refs: list) -> pd.DataFrame:
    """One row per published reference: the measured mean [95% CI] of its metric over the finished runs its
    match selects, the published value, and measured minus published."""
    rows = []
    for ref in refs:
        runs = finished(table[_matches(table, ref.match)])
        interval = mean_ci(runs[ref.metric] if ref.metric in runs else [])
        rows.append(
            {
                "match": ", ".join(f"{k}={v}" for k, v in ref.match.items()),
                "metric": ref.metric,
                "n": interval.n,
                "measured_mean": interval.mean,
                "measured_ci_low": interval.low,
                "measured_ci_high": interval.high,
                "published": float(ref.value),
                "difference": interval.mean - float(ref.value),
                "published_in_ci": bool(interval.low <= ref.value <= interval.high) if interval.n > 1 else None,
                "near_convergence": too_short(runs) is None if len(runs) else None,
                "source": ref.source,
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "match",
            "metric",
            "n",
            "measured_mean",
            "measured_ci_low",
            "measured_ci_high",
            "published",
            "difference",
            "published_in_ci",
            "near_convergence",
            "source",
        ],
    )


def attach_references(summary: pd.DataFrame, table: pd.DataFrame, refs: list, label: str = "setting") -> pd.DataFrame:
    """summary.csv with ``<metric>_reference``, ``_reference_difference`` and ``_reference_source`` on each setting
    a reference selects (the setting's own mean minus the published value)."""
    summary = summary.copy()
    for ref in refs:
        settings = set(table.loc[_matches(table, ref.match), label])
        if not settings:
            continue
        hit = summary[label].isin(settings)
        for suffix in ("", "_difference", "_source"):
            if f"{ref.metric}_reference{suffix}" not in summary:
                summary[f"{ref.metric}_reference{suffix}"] = pd.Series(
                    dtype="object" if suffix == "_source" else "float64"
                )
        summary.loc[hit, f"{ref.metric}_reference"] = float(ref.value)
        summary.loc[hit, f"{ref.metric}_reference_difference"] = summary.loc[hit, f"{ref.metric}_mean"] - float(
            ref.value
        )
        summary.loc[hit, f"{ref.metric}_reference_source"] = ref.source
    return summary


# -- the write-up's questions, answered in sentences generated from the numbers ---------------------------


def _joined(names: list[str]) -> str:
    names = [short_name(n) for n in names]
    return " and ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " and " + names[-1]


def _pairing(pair_on: list[str]) -> str:
    return f"pairs matched on {_joined(pair_on)}" if pair_on else "pairs"


def ffn_vs_bigram(
    table: pd.DataFrame,
    factors: list[str],
    seed: str | None,
    model: str = "model.kind",
    dataset: str = "data.dataset",
    effects: pd.DataFrame | None = None,
) -> list[str]:
    """Is the FFN worse than the bigram on each corpus? The report's verdict on that effect (``effects`` with
    verdict columns), given at the steps run; whether the FFN's capacity is too large for the data (the write-up's
    claim, a question about the limit) only from runs near convergence."""
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
        head = (
            f"{where}, final val loss of the FFN minus the bigram is "
            f"{interval.describe(_pairing([k for k in pair_on if k != dataset]), signed=True)}"
        )
        premature = too_short(subset[subset[model].isin(["ffn", "bigram"])])
        label = None if corpus is None else f"{short_name(dataset)}={corpus}"
        row, flipped = _effect_row(effects, "final_val_loss", model, "ffn", "bigram", label)
        if row is not None and interval.n:
            verdict = FLIPPED.get(row["verdict"], row["verdict"]) if flipped else row["verdict"]
            subject = {
                "worse": "the FFN is worse",
                "better": "the FFN is better",
                "equivalent": "the FFN and the bigram are equivalent",
                "undecided": "undecided",
            }[verdict]
            sentence = f"{head}: {subject} ({row['level']} vs {row['baseline']}: {row['reason']})"
            if premature:
                sentence += (
                    ". Whether the FFN's capacity is too large for the data (the write-up's claim, a question "
                    f"about the limit): too short to judge: {premature}."
                )
            else:
                sentence += {
                    "worse": ", as the write-up claims.",
                    "better": ", so these runs do not support the write-up's claim that it is worse.",
                    "equivalent": ", so these runs do not support the write-up's claim that it is worse.",
                    "undecided": ", so these runs cannot tell yet whether the FFN is worse.",
                }[verdict]
            sentences.append(sentence)
            continue
        if interval.n and premature:
            sentences.append(f"{head}: too short to judge: {premature}.")
            continue
        verdict = {
            "up": "the FFN is worse, as the write-up claims.",
            "down": "the FFN is better, so these runs do not support the write-up's claim that it is worse.",
            "overlap": "the interval includes 0, so these runs cannot tell whether the FFN is worse.",
            "point": f"the single pair says the FFN is {'worse' if interval.mean > 0 else 'better'}, "
            "which may be noise.",
            "none": "no finished FFN/bigram pair to compare.",
        }[interval.direction]
        sentences.append(f"{head}: {verdict}" if interval.n else f"{where}: {verdict}")
    return sentences


def batch_noise(
    table: pd.DataFrame,
    factors: list[str],
    seed: str | None,
    batch: str = "train.batch_size",
    effects: pd.DataFrame | None = None,
) -> list[str]:
    """Does a larger batch oscillate less? loss_noise = std of the minibatch loss around its moving average.
    With ``effects`` (verdict columns): the report's verdict on loss_noise per corpus, at the steps run."""
    if batch not in factors or len(levels(table, batch)) < 2:
        return [f"Batch size and oscillation: not answerable, this sweep does not vary {batch}."]
    values = levels(table, batch)
    pair_on = [f for f in factors if f != batch] + ([seed] if seed else [])
    sentences = []
    for level in values[1:]:
        pairs = paired_differences(table, batch, level, values[0], "loss_noise", pair_on)
        interval = mean_ci(pairs["difference"])
        used = table[table[batch].isin([level, values[0]])]
        if interval.n == 0:
            done = finished(used)
            why = (
                loss_noise_reason(used)
                if len(done)
                and "loss_noise" in done
                and pd.to_numeric(done["loss_noise"], errors="coerce").isna().all()
                else "no finished pair with a loss_noise"
            )
            sentences.append(f"Batch {level} vs {values[0]}: not measurable: {why}.")
            continue
        head = (
            f"Batch {level} vs {values[0]}: loss_noise changes by {interval.describe(_pairing(pair_on), signed=True)}, "
            f"from a mean of {pairs['loss_noise_baseline'].mean():.4f} at {values[0]} "
            f"to {pairs['loss_noise'].mean():.4f} at {level}"
        )
        found = (
            []
            if effects is None or "verdict" not in effects
            else [
                e
                for _, e in effects.iterrows()
                if e["metric"] == "loss_noise"
                and e["kind"] == "treatment"
                and e["axis"] == batch
                and str(e["level"]) == str(level)
                and str(e["baseline"]) == str(values[0])
            ]
        )
        if found:
            words = {
                "better": f"batch {level} oscillates less",
                "worse": f"batch {level} oscillates more",
                "equivalent": "equivalent within ±δ: no difference in oscillation beyond δ",
                "undecided": "undecided",
            }
            verdicts_text = "; ".join(
                f"{e['data'] or 'all runs'}: {words[e['verdict']]} ({e['reason']})" for e in found
            )
            sentences.append(f"{head}. Verdicts per corpus: {verdicts_text}.")
            continue
        premature = too_short(used)
        if premature:
            sentences.append(f"{head}: too short to judge: {premature}.")
            continue
        verdict = {
            "up": f"batch {level} oscillates more.",
            "down": f"batch {level} oscillates less.",
            "overlap": "the interval includes 0, so no difference in oscillation is shown.",
            "point": f"the single pair says batch {level} oscillates {'more' if interval.mean > 0 else 'less'}, "
            "which may be noise.",
        }[interval.direction]
        sentences.append(f"{head}: {verdict}")
    return sentences


def floor_distance(summary: pd.DataFrame, table: pd.DataFrame, factors: list[str], label: str = "setting") -> list[str]:
    """How far is each setting from the bigram floor? excess_loss = final train loss - H(next | current) of the
    train split. A model that reads only the current character cannot go below it; one that reads context can."""
    sentences = []
    groups = table.groupby(factors, sort=False, dropna=False) if factors else [((), table)]
    for _, group in groups:
        name = group[label].iloc[0]
        interval = mean_ci(finished(group)["excess_loss"]) if "excess_loss" in group else mean_ci([])
        if interval.n == 0:
            sentences.append(f"{name}: no finished run with an excess_loss.")
            continue
        floor = mean_ci(finished(group)["bigram_floor"]).mean
        side = "above" if interval.mean >= 0 else "below"
        extra = "" if side == "above" else " (it reads context, which a one-character model cannot)"
        sentences.append(
            f"{name}: final train loss is {abs(interval.mean):.4f} nats {side} its bigram floor of "
            f"{floor:.4f}{extra}; excess_loss {interval.describe('seeds', signed=True)}."
        )
    done = summary[summary["excess_loss_mean"].notna()] if "excess_loss_mean" in summary else summary.iloc[:0]
    if len(done) > 1:
        best = done.loc[done["excess_loss_mean"].idxmin()]
        premature = too_short(table)
        if premature:
            sentences.append(f"Closest to the floor: too short to judge: {premature}.")
        else:
            sentences.append(f"Closest to the floor: {best[label]} (mean excess {best['excess_loss_mean']:+.4f}).")
    return sentences


def between_corpora(table: pd.DataFrame, factors: list[str], seed: str | None, data: list[str]) -> list[str]:
    """How far apart the corpora are: a measurement of different data, in nats and bits per character, never a
    treatment effect (the texts, alphabets and splits differ)."""
    rows = effects(table, factors, seed, metrics=["final_val_loss"], data=data)
    rows = rows[rows["kind"] == "different data"]
    sentences = []
    for row in rows.itertuples():
        head = (
            f"{row.level} vs {row.baseline} (different data, not a treatment): final val loss differs by "
            f"{row.mean_difference:+.4f} nats = {row.mean_difference_bits:+.4f} bits per character"
        )
        if row.n_pairs > 1:
            head += (
                f" ({CONFIDENCE:.0%} CI {row.ci_low:+.4f} to {row.ci_high:+.4f} nats = {row.ci_low_bits:+.4f} to "
                f"{row.ci_high_bits:+.4f} bits, n={row.n_pairs} pairs)"
            )
        sentences.append(head + ".")
    return sentences or ["Only one corpus in this sweep."]


def findings(
    table: pd.DataFrame,
    summary: pd.DataFrame,
    factors: list[str],
    seed: str | None,
    label: str = "setting",
    data: list[str] | None = None,
    effects: pd.DataFrame | None = None,
) -> dict[str, list[str]]:
    """The write-up's questions that this sweep can answer: question -> sentences, each with its interval and n.
    A question appears only when the sweep has the axes it is about: the FFN against the bigram needs a model axis
    over both, the batch's oscillation a batch axis, the distance from the bigram floor an axis over the model, the
    corpora a data axis. With ``effects`` (verdict columns) the answers are named cases of the report's verdicts."""
    answers = {}
    model, batch = "model.kind", "train.batch_size"
    if model in factors and {"bigram", "ffn"} <= set(levels(table, model)):
        answers["Is the FFN worse than the bigram on each corpus?"] = ffn_vs_bigram(
            table, factors, seed, effects=effects
        )
    if batch in factors and len(levels(table, batch)) > 1:
        answers["Does a larger batch oscillate less (loss_noise)?"] = batch_noise(table, factors, seed, effects=effects)
    if model in table and any(
        model in f.split("+") or _varies_within(table, f, factors, seed, [model]) for f in factors
    ):
        answers["How far is each variant from the bigram floor (excess_loss)?"] = floor_distance(
            summary, table, factors, label
        )
    if data:
        answers["How far apart are the corpora?"] = between_corpora(table, factors, seed, data)
    return answers
