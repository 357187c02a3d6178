"""The report's tokenizer view: per tokenizer, what a window holds in characters and the losses in bits per character.

Nats per token do not compare across tokenizers (a jamo model predicts about 2.5 tokens per Hangul syllable, a
byte model 3), so this view ranks only bits per character: total nats over the split / (characters of its text x
ln 2). The effects of a tokenizer axis are in effects.csv under ``final_val_bpc`` (``analysis.tokenizer_factors``).
"""

from __future__ import annotations

import math

import pandas as pd

from harness.report.analysis import finished, mean_ci

TOKENIZER_COLUMNS = [
    "setting",
    "data.dataset",
    "data.tokenizer",
    "data.vocab_size",
    "runs",
    "chars_per_token",
    "context_tokens",
    "context_chars",
    "val_bpc",
    "val_bpc_ci_low",
    "val_bpc_ci_high",
    "val_loss_nats_per_token",
    "bigram_floor_nats_per_token",
    "bigram_floor_bpc",
    "note",
]


def varies_tokenizer(table: pd.DataFrame) -> bool:
    """Whether the runs use more than one tokenizer setting (the view is only written then)."""
    columns = [c for c in ("data.tokenizer", "data.vocab_size") if c in table]
    return bool(columns) and len(table[columns].astype(str).drop_duplicates()) > 1


def tokenizer_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per setting (a variant without its seed): its tokenizer, characters per token and per window,
    val bits per character (mean and 95% t-interval over seeds), and the bigram floor in both units."""
    done = finished(table)
    rows = []
    for setting, runs in done.groupby("setting", sort=False):
        first = runs.iloc[0]
        bpc = mean_ci(runs["final_val_bpc"]) if "final_val_bpc" in runs else mean_ci([])
        chars = float(pd.to_numeric(runs.get("chars_per_token"), errors="coerce").mean())
        tokenizer = first.get("data.tokenizer", "char")
        note = ""
        if tokenizer == "jamo" and chars == 1.0:
            note = "no Hangul in this corpus: jamo equals char (the same tokens)"
        rows.append(
            {
                "setting": setting,
                "data.dataset": first.get("data.dataset"),
                "data.tokenizer": tokenizer,
                "data.vocab_size": first.get("data.vocab_size"),
                "runs": bpc.n,
                "chars_per_token": chars,
                "context_tokens": int(first["train.context_length"]),
                "context_chars": chars * int(first["train.context_length"]),
                "val_bpc": bpc.mean,
                "val_bpc_ci_low": bpc.low,
                "val_bpc_ci_high": bpc.high,
                "val_loss_nats_per_token": float(pd.to_numeric(runs["final_val_loss"], errors="coerce").mean()),
                "bigram_floor_nats_per_token": float(pd.to_numeric(runs["bigram_floor"], errors="coerce").mean()),
                "bigram_floor_bpc": float(pd.to_numeric(runs.get("bigram_floor_bpc"), errors="coerce").mean()),
                "note": note,
            }
        )
    frame = pd.DataFrame(rows, columns=TOKENIZER_COLUMNS)
    return frame.sort_values(["data.dataset", "val_bpc"], kind="stable").reset_index(drop=True)


def _number(value: float, digits: int = 3) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def tokenizer_markdown(view: pd.DataFrame, effects: pd.DataFrame) -> list[str]:
    """The report's "Tokenizers" section: the table in bits per character, then the tokenizer effects."""
    lines = [
        "## Tokenizers, in bits per character",
        "",
        "Losses per token do not compare across tokenizers (a jamo model predicts about 2.5 tokens per Hangul "
        "syllable, a byte model 3), so tokenizers are ranked in bits per character only: total nats over the val "
        "split / (characters of its text x ln 2). `context` is `train.context_length` in tokens and, on average, in "
        "characters: what each model could read. The bigram floor (the best context-free model of the train "
        "split) is given in both units. Rows: lowest val bits per character first, per corpus.",
        "",
        "| setting | tokenizer | chars/token | context (tokens / chars) | val bits/char (95% CI) | "
        "val nats/token | bigram floor (nats/token / bits/char) | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, values in view.iterrows():
        tokenizer = values["data.tokenizer"]
        if tokenizer == "bpe" and pd.notna(values["data.vocab_size"]):
            tokenizer = f"bpe {int(values['data.vocab_size'])}"
        interval = (
            f"{_number(values['val_bpc'])} ({_number(values['val_bpc_ci_low'])} to "
            f"{_number(values['val_bpc_ci_high'])}, n={values['runs']})"
            if values["runs"] > 1
            else f"{_number(values['val_bpc'])} (n={values['runs']})"
        )
        lines.append(
            f"| {values['setting']} | {tokenizer} | {_number(values['chars_per_token'])} | "
            f"{values['context_tokens']} / {_number(values['context_chars'], 1)} | {interval} | "
            f"{_number(values['val_loss_nats_per_token'])} | {_number(values['bigram_floor_nats_per_token'])} / "
            f"{_number(values['bigram_floor_bpc'])} | {values['note']} |"
        )
    bits = effects[effects["metric"] == "final_val_bpc"] if "metric" in effects else effects.iloc[0:0]
    answers = best_tokenizers(bits)
    if answers:
        lines += ["", "**Which tokenizer gives the best model**, per corpus and model (val bits per character):", ""]
        lines += [f"- {answer}" for answer in answers]
    if len(bits):
        lines += [
            "",
            "Tokenizer effects (paired on everything else, seed included; bits per character, level - baseline, "
            "lower is better; verdicts and intervals as in the effects table):",
            "",
        ]
        for row in bits.itertuples(index=False):
            corpus = f" on {row.data}" if row.data else ""
            lines.append(
                f"- {row.axis}{corpus}: {row.level} vs {row.baseline}: {row.mean_difference:+.4f} bits/char "
                f"(95% CI {row.ci_low:+.4f} to {row.ci_high:+.4f}, n={row.n_pairs})"
                + (f": **{row.verdict}**" if "verdict" in bits and isinstance(row.verdict, str) else "")
            )
    return [*lines, ""]


def best_tokenizers(bits: pd.DataFrame) -> list[str]:
    """Per condition (corpus and the other axes' levels), the tokenizer with the lowest mean val bits per character,
    and how it stands against the first level (each effect's verdict), from the ``final_val_bpc`` effects."""
    answers = []
    for condition, rows in bits.groupby("data", sort=False):
        means = {rows["baseline"].iloc[0]: float(rows["baseline_mean"].iloc[0])}
        means.update(zip(rows["level"], rows["level_mean"].astype(float), strict=True))
        best = min(means, key=lambda level: means[level])
        baseline = rows["baseline"].iloc[0]
        where = f"{condition}: " if condition else ""
        if best == baseline:
            runner = rows.loc[rows["level_mean"].astype(float).idxmin()]
            answers.append(
                f"{where}**{best}** ({means[best]:.3f} bits/char); the nearest, {runner['level']}, is "
                f"{runner['mean_difference']:+.4f} bits/char (95% CI {runner['ci_low']:+.4f} to "
                f"{runner['ci_high']:+.4f}): {_verdict(runner)}"
            )
        else:
            row = rows[rows["level"] == best].iloc[0]
            interval = f"95% CI {row['ci_low']:+.4f} to {row['ci_high']:+.4f}, n={row['n_pairs']}"
            answers.append(
                f"{where}**{best}** ({means[best]:.3f} bits/char), {row['mean_difference']:+.4f} bits/char against "
                f"{baseline} ({interval}): {_verdict(row)}"
            )
    return answers


def _verdict(row) -> str:
    verdict = row.get("verdict")
    return f"**{verdict}**" if isinstance(verdict, str) and verdict else "no verdict"
