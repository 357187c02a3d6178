"""The report's figures, from the runs table and the metric histories (plain pandas in, matplotlib Figures out).

Figures are built with ``matplotlib.figure.Figure`` (the Agg canvas), never pyplot: no GUI backend, no global
state, nothing left open between reports. Labels are ASCII only: matplotlib's default font has no Hangul, and
Korean belongs to the samples in report.md, not to axis labels.
"""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from harness.report.analysis import combinations as _panels
from harness.report.analysis import finished, levels, short_name
from harness.report.analysis import select as _select

DPI = 100


def ascii_label(value) -> str:
    """A label the default font can draw: non-ASCII characters become escapes."""
    return str(value).encode("ascii", "backslashreplace").decode("ascii")


def _setting(values: dict) -> str:
    return ascii_label(", ".join(f"{short_name(k)}={v}" for k, v in values.items()) or "all runs")


def loss_curves(
    table: pd.DataFrame,
    histories: dict[str, dict[str, pd.DataFrame]],
    factor: str,
    factors: list[str],
    order: list | None = None,
    bits: bool = False,
) -> Figure:
    """One panel per combination of the other factors; in each, ``factor``'s levels overlaid by colour.

    Solid: exact val loss; dashed: exact train loss; faint: the per-step minibatch loss (its wiggle is
    what loss_noise measures); dotted: the bigram floor. Every seed is drawn, so their spread shows.
    ``order``: a named axis's level names as written. ``bits``: in bits per character (the curves
    ``val_bpc``/``train_bpc`` and ``bigram_floor_bpc``; no minibatch loss, which is per token), for runs whose
    tokenizers differ: nats per token do not compare across them.
    """
    curves = (
        (("train_bpc", dict(lw=1.2, ls="--")), ("val_bpc", dict(lw=1.6)))
        if bits
        else (
            ("batch_loss", dict(lw=0.6, alpha=0.3)),
            ("train_loss", dict(lw=1.2, ls="--")),
            ("val_loss", dict(lw=1.6)),
        )
    )
    floor_column = "bigram_floor_bpc" if bits else "bigram_floor"
    others = [f for f in factors if f != factor]
    panels = _panels(table, others)
    ncols = min(len(levels(table, others[-1])), 4) if others else 1
    nrows = math.ceil(len(panels) / ncols)
    factor_levels = levels(table, factor, order)
    width = max(4.8 * ncols, 6.4)
    legend_cols = max(1, min(len(factor_levels) + 4, int(width // 1.6)))
    legend_rows = math.ceil((len(factor_levels) + 4) / legend_cols)
    bottom = 0.75 + 0.22 * legend_rows  # inches for the x label and the legend under the panels
    height = 3.2 * nrows + 0.55 + bottom
    fig = Figure(figsize=(width, height), dpi=DPI)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    # Fixed margins in inches: constrained layout would draw every figure twice, and reports draw many.
    fig.subplots_adjust(
        left=0.7 / width, right=1 - 0.2 / width, top=1 - 0.55 / height, bottom=bottom / height, hspace=0.45, wspace=0.25
    )
    for ax, panel in zip(axes, panels, strict=False):
        runs = finished(_select(table, panel))
        floors = {}
        for k, level in enumerate(factor_levels):
            color = f"C{k % 10}"
            at_level = runs[runs[factor] == level]
            for _, run in at_level.iterrows():
                history = histories.get(run["run_id"], {})
                for key, style in curves:
                    points = history.get(key)
                    if points is not None and len(points):
                        ax.plot(points["step"], points["value"], color=color, **style)
            floor = at_level[floor_column].mean() if floor_column in at_level and len(at_level) else math.nan
            if math.isfinite(floor):
                floors[color] = floor
        # The floor belongs to the corpus: one black line when the levels share it, one per colour when they do not.
        shared = len({round(f, 6) for f in floors.values()}) == 1
        for color, floor in floors.items():
            ax.axhline(floor, color="k" if shared else color, ls=":", lw=1.2)
            if shared:
                break
        if runs.empty:
            ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(_setting(panel), fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("bits per character" if bits else "loss (nats)")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    handles = [
        Line2D([], [], color=f"C{k % 10}", lw=2, label=ascii_label(f"{short_name(factor)}={level}"))
        for k, level in enumerate(factor_levels)
    ]
    handles += [
        Line2D([], [], color="gray", lw=1.6, label="val (exact)"),
        Line2D([], [], color="gray", lw=1.2, ls="--", label="train (exact)"),
        *([] if bits else [Line2D([], [], color="gray", lw=0.6, alpha=0.5, label="minibatch")]),
        Line2D([], [], color="k", lw=1.2, ls=":", label="bigram floor"),
    ]
    fig.legend(handles=handles, loc="lower center", ncols=legend_cols, fontsize=8)
    unit = " (bits per character)" if bits else ""
    fig.suptitle(ascii_label(f"loss curves{unit}: {factor} overlaid"), fontsize=11)
    return fig


def final_val_loss_bars(
    summary: pd.DataFrame, table: pd.DataFrame, factors: list[str], label: str = "setting", bits: bool = False
) -> Figure:
    """Mean final val loss per setting with its 95% CI (seeds as dots), and the bigram floor of its corpus.

    The floor is H(next | current) of the train split: the best loss any model that sees one token can reach.
    ``bits``: val bits per character (``final_val_bpc``, summarized) and the floor in bits, when tokenizers differ.
    """
    metric, floor_column = ("final_val_bpc", "bigram_floor_bpc") if bits else ("final_val_loss", "bigram_floor")
    width, height = max(6.0, 1.9 * len(summary)), 5.0
    fig = Figure(figsize=(width, height), dpi=DPI)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.7 / width, right=1 - 0.2 / width, top=1 - 0.4 / height, bottom=0.9 / height)
    colour_by = factors[0] if factors else None
    colour_levels = levels(summary, colour_by) if colour_by else [None]
    floor_labelled = False
    for x, (_, row) in enumerate(summary.iterrows()):
        color = f"C{colour_levels.index(row[colour_by]) % 10}" if colour_by else "C0"
        mean = row[f"{metric}_mean"]
        if row["n"] == 0 or not math.isfinite(mean):
            ax.text(x, 0, "no finished\nruns", ha="center", va="bottom", fontsize=8)
            continue
        err = mean - row[f"{metric}_ci_low"] if math.isfinite(row[f"{metric}_ci_low"]) else 0.0
        ax.bar(x, mean, color=color, alpha=0.75, yerr=err, capsize=4)
        runs = finished(_select(table, {f: row[f] for f in factors}))
        ax.plot([x] * len(runs), runs[metric], "k.", ms=4)
        ax.text(x, mean + err, f"n={row['n']}", ha="center", va="bottom", fontsize=8)
        floor = row.get(floor_column, math.nan)
        if math.isfinite(floor):
            ax.hlines(
                floor,
                x - 0.45,
                x + 0.45,
                colors="k",
                linestyles="--",
                lw=1.2,
                label=None if floor_labelled else "bigram floor (train split)",
            )
            floor_labelled = True
    ax.set_xticks(range(len(summary)), [ascii_label(s).replace(",", "\n") for s in summary[label]], fontsize=7)
    # Zoom onto the values and floors: differences of a few hundredths are the point, not the height from 0.
    values = list(table.loc[table["status"] == "FINISHED", metric].dropna())
    values += [v for v in summary.get(floor_column, pd.Series(dtype=float)).dropna()]
    if values:
        low, high = min(values), max(values)
        margin = max(0.05 * (high - low), 0.02)
        ax.set_ylim(low - 3 * margin, high + 2 * margin)
    what = "final val bits per character" if bits else "final val loss"
    ax.set_ylabel(f"{what} ({'bits/char' if bits else 'nats'}; axis does not start at 0)")
    ax.set_title(f"{what} per variant: mean, 95% CI over seeds (dots: single runs)", fontsize=10)
    handles = (
        [
            Line2D([], [], color=f"C{k % 10}", lw=6, alpha=0.75, label=ascii_label(f"{short_name(colour_by)}={v}"))
            for k, v in enumerate(colour_levels)
        ]
        if colour_by
        else []
    )
    if floor_labelled:
        handles.append(Line2D([], [], color="k", ls="--", lw=1.2, label="bigram floor (train split)"))
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return fig
