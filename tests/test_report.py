"""The report: statistics on hand-made tables, then a real tiny sweep (SQLite MLflow, real data) end to end."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.metrics import mlflow_key
from harness.report import analysis, plots
from harness.report.tables import (
    display_command,
    display_path,
    factor_table,
    ladder_view,
    md_text,
    overrides_folder,
    pre_block,
    runs_table,
    scrub_paths,
    write_report,
)
from harness.spec.expansion import expand
from harness.spec.parsing import load_spec

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SMOKE = PROJECT_ROOT / "experiments" / "smoke.yaml"
# 40 steps: every variant of the grid in seconds (loss_noise may be NaN that short, and the report says why);
# one torch thread because a second one only spins when the machine is busy; short windows because the loss
# is position-wise.
TINY = [
    "train.steps=40",
    "train.eval_interval=10",
    "train.device=cpu",
    "train.threads=1",
    "train.context_length=16",
    "sample.max_new_tokens=30",
]
HANGUL = re.compile("[\uac00-\ud7a3]")


# -- statistics on hand-made tables -------------------------------------------------------------------------


def test_mean_ci_matches_textbook_t_intervals():
    # t_{0.975, 2} = 4.303 and t_{0.975, 1} = 12.706 from a printed t table; the intervals worked by hand.
    interval = analysis.mean_ci([1.0, 2.0, 3.0])  # mean 2, std 1, half-width 4.303 / sqrt(3) = 2.484
    assert (interval.n, interval.mean, interval.std) == (3, 2.0, 1.0)
    assert interval.low == pytest.approx(-0.484, abs=1e-3) and interval.high == pytest.approx(4.484, abs=1e-3)
    assert interval.direction == "overlap"
    pair = analysis.mean_ci([2.99, 3.01])  # std 0.01414, half-width 12.706 * 0.01 = 0.1271
    assert pair.low == pytest.approx(2.8729, abs=1e-4) and pair.high == pytest.approx(3.1271, abs=1e-4)
    many = analysis.mean_ci([0.0, 1.0] * 50)  # n=100, std 0.5025, t_{0.975,99} = 1.984: half-width 0.0997
    assert many.high - many.mean == pytest.approx(0.0997, abs=1e-4)
    assert analysis.mean_ci([5.0, 5.0]).low == analysis.mean_ci([5.0, 5.0]).high == 5.0  # no spread, no width


def test_mean_ci_single_and_empty_and_nan():
    one = analysis.mean_ci([4.0])
    assert one.n == 1 and one.mean == 4.0 and math.isnan(one.std) and math.isnan(one.low)
    assert "no interval is possible" in one.describe("seeds")
    assert analysis.mean_ci([]).n == 0
    assert analysis.mean_ci([1.0, float("nan"), 3.0]).n == 2


def _grid_table() -> pd.DataFrame:
    """model in (bigram, ffn) x batch in (32, 128) x seed in (1, 2): val = 3 + 1.0*ffn - 0.1*(batch 128) + noise."""
    rows = []
    noise = {1: 0.01, 2: -0.01}
    for model in ("bigram", "ffn"):
        for batch in (32, 128):
            for seed in (1, 2):
                val = 3.0 + (1.0 if model == "ffn" else 0.0) - (0.1 if batch == 128 else 0.0) + noise[seed]
                rows.append(
                    {
                        "variant": f"{model},{batch},{seed}",
                        "setting": f"kind={model},batch_size={batch}",
                        "status": "FINISHED",
                        "model.kind": model,
                        "train.batch_size": batch,
                        "train.seed": seed,
                        "final_train_loss": val - 0.05,
                        "final_val_loss": val,
                        "excess_loss": val - 2.5,
                        "loss_noise": 0.05 if batch == 32 else 0.02 + noise[seed] / 10,
                        "bigram_floor": 2.45,
                        "steps_run": 50_000,
                        "val_change_last_10pct": -0.001,
                        "near_convergence": True,
                    }
                )
    return pd.DataFrame(rows)


FACTORS = ["model.kind", "train.batch_size"]


def test_summarize_folds_seeds():
    summary = analysis.summarize(_grid_table(), FACTORS)
    assert len(summary) == 4 and (summary["n"] == 2).all()
    first = summary.iloc[0]
    assert first["setting"] == "kind=bigram,batch_size=32"
    assert first["final_val_loss_mean"] == pytest.approx(3.0)
    assert first["final_val_loss_ci_high"] == pytest.approx(3.1271, abs=1e-4)  # 3.01 and 2.99: see the t-interval test
    assert first["n_near_convergence"] == 2 and first["steps_run"] == "50,000"


def test_summarize_leaves_out_failed_runs():
    table = _grid_table()
    table.loc[0, "status"] = "FAILED"
    summary = analysis.summarize(table, FACTORS)
    assert summary.loc[0, "runs"] == 2 and summary.loc[0, "n"] == 1
    assert math.isnan(summary.loc[0, "final_val_loss_ci_low"])


def test_effects_pairs_on_other_axes_and_seed_and_sorts_by_size():
    effects = analysis.effects(_grid_table(), FACTORS, seed="train.seed")
    val = effects[effects["metric"] == "final_val_loss"].reset_index(drop=True)
    assert list(val["axis"]) == ["model.kind", "train.batch_size"]  # |+1.0| before |-0.1|
    assert val.loc[0, "n_pairs"] == 4 and val.loc[0, "mean_difference"] == pytest.approx(1.0)
    assert val.loc[1, "mean_difference"] == pytest.approx(-0.1)
    # Paired on the seed, the noise cancels: the interval has no width.
    assert val.loc[0, "ci_low"] == pytest.approx(1.0) and val.loc[0, "ci_high"] == pytest.approx(1.0)
    assert list(effects["metric"].unique()) == ["final_val_loss", "loss_noise"]


def _corpus_table() -> pd.DataFrame:
    """The grid table on two corpora; Korean is ln 2 nats (1 bit per character) harder than English."""
    english = _grid_table().assign(**{"data.dataset": "tinyshakespeare", "data.split": "position"})
    korean = _grid_table().assign(**{"data.dataset": "korean-chatbot", "data.split": "shuffled-rows"})
    korean["final_val_loss"] += math.log(2)
    korean.loc[korean["model.kind"] == "ffn", "final_val_loss"] += 0.5  # the FFN is 1.5 worse on Korean, 1.0 on English
    return pd.concat([english, korean], ignore_index=True)


def test_a_data_axis_is_different_data_never_a_treatment():
    table = _corpus_table()
    factors = FACTORS + ["data.dataset"]
    assert analysis.data_factors(table, factors, "train.seed") == ["data.dataset"]
    effects = analysis.effects(table, factors, "train.seed", metrics=["final_val_loss"], data=["data.dataset"])
    treatments = effects[effects["kind"] == "treatment"]
    assert "data.dataset" not in set(treatments["axis"])
    model = treatments[treatments["axis"] == "model.kind"].set_index("data")
    assert model.loc["dataset=tinyshakespeare", "mean_difference"] == pytest.approx(1.0)
    assert model.loc["dataset=korean-chatbot", "mean_difference"] == pytest.approx(1.5)
    assert (model["n_pairs"] == 4).all()  # 2 batch sizes x 2 seeds within each corpus
    corpora = effects[effects["kind"] == "different data"].iloc[0]
    assert corpora["axis"] == "data.dataset" and corpora["n_pairs"] == 8
    # (ln 2 + 0.5 * half the pairs) nats; ln 2 nats is exactly 1 bit per character.
    assert corpora["mean_difference"] == pytest.approx(math.log(2) + 0.25)
    assert corpora["mean_difference_bits"] == pytest.approx(1.0 + 0.25 / math.log(2))
    assert list(effects["kind"]) == ["treatment"] * 4 + ["different data"]  # corpora never ranked among treatments
    (sentence,) = analysis.between_corpora(table, factors, "train.seed", ["data.dataset"])
    assert sentence.startswith("korean-chatbot vs tinyshakespeare (different data, not a treatment)")
    assert "differs by +0.9431 nats = +1.3607 bits per character" in sentence  # ln 2 + 0.25 nats; 1 + 0.25/ln 2 bits
    assert "n=8 pairs" in sentence


def test_an_axis_whose_levels_change_the_data_is_a_data_factor():
    table = _corpus_table().rename(columns={"data.dataset": "corpus"}).assign(**{"data.dataset": lambda t: t["corpus"]})
    assert analysis.data_factors(table, FACTORS + ["corpus"], "train.seed") == ["corpus"]
    assert analysis.data_factors(_grid_table(), FACTORS, "train.seed") == []


def _ladder_table() -> pd.DataFrame:
    """A named axis written as table, mlp, deeper (not alphabetical), two corpora, two seeds."""
    published = {"table": 2.50, "mlp": 2.40, "deeper": 2.28}
    rows = []
    for corpus, shift in (("tinyshakespeare", 0.0), ("korean-chatbot", 0.4)):
        for level, val in reversed(published.items()):  # rows in reverse: the order must come from ORDER
            for seed, noise in ((1, 0.01), (2, -0.01)):
                rows.append(
                    {
                        "variant": f"{level},{corpus},{seed}",
                        "setting": f"rung={level},dataset={corpus}",
                        "status": "FINISHED",
                        "rung": level,
                        "data.dataset": corpus,
                        "train.seed": seed,
                        "final_val_loss": val + shift + noise,
                        "loss_noise": 0.01,
                        "bigram_floor": 2.45,
                        "steps_run": 5000,
                        "val_change_last_10pct": -0.002,
                        "near_convergence": True,
                    }
                )
    return pd.DataFrame(rows)


ORDER = {"rung": ["table", "mlp", "deeper"]}


def test_named_axis_compares_each_level_with_the_previous_one():
    effects = analysis.effects(
        _ladder_table(),
        ["rung", "data.dataset"],
        "train.seed",
        metrics=["final_val_loss"],
        data=["data.dataset"],
        orders=ORDER,
    )
    english = effects[(effects["kind"] == "treatment") & (effects["data"] == "dataset=tinyshakespeare")]
    steps = {(r.level, r.baseline): r.mean_difference for r in english.itertuples()}
    assert steps == {("mlp", "table"): pytest.approx(-0.10), ("deeper", "mlp"): pytest.approx(-0.12)}
    assert set(english["comparison"]) == {"previous level"} and (english["n_pairs"] == 2).all()
    assert list(english["level"]) == ["mlp", "deeper"]  # the order written, not the size (-0.12 is larger)


def test_references_give_measured_ci_published_and_difference():
    refs = [
        SimpleNamespace(
            match={"rung": "mlp", "data.dataset": "tinyshakespeare"},
            metric="final_val_loss",
            value=2.38,
            source="lecture v2.py @a6e0bee",
        )
    ]
    table = _ladder_table()
    found = analysis.references(table, refs).iloc[0]
    assert found["n"] == 2 and found["measured_mean"] == pytest.approx(2.40)
    assert found["measured_ci_low"] == pytest.approx(2.40 - 0.1271, abs=1e-4)  # 2.41 and 2.39: half-width 0.1271
    assert found["difference"] == pytest.approx(0.02) and found["published_in_ci"]
    assert found["source"] == "lecture v2.py @a6e0bee" and found["near_convergence"]
    summary = analysis.attach_references(analysis.summarize(table, ["rung", "data.dataset"]), table, refs)
    hit = summary[summary["final_val_loss_reference"].notna()]
    assert list(hit["setting"]) == ["rung=mlp,dataset=tinyshakespeare"]
    assert hit["final_val_loss_reference_difference"].iloc[0] == pytest.approx(0.02)
    assert hit["final_val_loss_reference_source"].iloc[0] == "lecture v2.py @a6e0bee"


def test_ladder_rows_keep_the_written_order_with_one_column_group_per_corpus():
    table = _ladder_table()
    refs = [
        SimpleNamespace(
            match={"rung": "mlp", "data.dataset": "tinyshakespeare"},
            metric="final_val_loss",
            value=2.38,
            source="lecture",
        )
    ]
    effects = analysis.effects(
        table, ["rung", "data.dataset"], "train.seed", metrics=["final_val_loss"], data=["data.dataset"], orders=ORDER
    )
    ladder = ladder_view(table, effects, "rung", ORDER["rung"], ["data.dataset"], refs)
    assert list(ladder["rung"]) == ["table", "mlp", "deeper"]
    assert list(ladder.columns) == [
        "rung",
        "tinyshakespeare [95% CI]",
        "tinyshakespeare published",
        "tinyshakespeare change from previous",
        "korean-chatbot [95% CI]",
        "korean-chatbot change from previous",
        "near convergence",
    ]
    mlp = ladder.iloc[1]
    assert mlp["tinyshakespeare [95% CI]"] == "2.4000 [2.2729, 2.5271]"
    assert mlp["tinyshakespeare published"] == "2.3800" and ladder.iloc[0]["tinyshakespeare published"] == "-"
    assert mlp["korean-chatbot change from previous"].startswith("-0.1000")
    assert ladder.iloc[0]["tinyshakespeare change from previous"] == "-"


# -- convergence: the rule behind every verdict ----------------------------------------------------------------


def _curve(steps: int, every: int, start: float, per_step: float) -> pd.DataFrame:
    points = list(range(0, steps + 1, every))
    return pd.DataFrame({"step": points, "value": [start - per_step * p for p in points]})


def test_val_movement_is_the_change_over_the_last_tenth_of_the_steps():
    # 300 steps evaluated every 6: the last 10% starts after step 270; 30 steps at -0.001 per step = -0.03 nats.
    assert analysis.val_movement(_curve(300, 6, 4.2, 0.001)) == (300, pytest.approx(-0.03))
    # Evaluated every 40: the last point at or before step 270 is 240, so the change covers 60 steps.
    assert analysis.val_movement(
        _curve(300, 40, 4.2, 0.001)[lambda c: c["step"] <= 280].pipe(
            lambda c: pd.concat([c, pd.DataFrame({"step": [300], "value": [3.9]})])
        )
    ) == (300, pytest.approx(-0.06))
    steps, change = analysis.val_movement(pd.DataFrame({"step": [300], "value": [3.9]}))
    assert steps == 300 and math.isnan(change)
    # 100 steps of a spec that evaluates every 250: points at 0 and 100 only; a change since step 0 is not the
    # last 10%'s, so the curve cannot tell
    steps, change = analysis.val_movement(pd.DataFrame({"step": [0, 100], "value": [7.6, 4.2]}))
    assert steps == 100 and math.isnan(change)
    assert analysis.val_movement(None)[0] is None


def test_runs_still_moving_get_too_short_to_judge_not_a_verdict():
    table = _corpus_table()
    table.loc[table["model.kind"] == "ffn", ["val_change_last_10pct", "near_convergence"]] = [-0.04, False]
    table["steps_run"] = 300
    factors = FACTORS + ["data.dataset"]
    summary = analysis.summarize(table, factors)
    answers = analysis.findings(table, summary, factors, "train.seed")
    text = "\n".join(s for sentences in answers.values() for s in sentences)
    assert text.count("too short to judge") == 4  # two corpora, the batch question, closest to the floor
    assert "8 of 16 runs were still moving" in text and "0.0400 nats over the last 10% of their 300 steps" in text
    for verdict in (
        "the FFN is worse",
        "the FFN is better",
        "cannot tell",
        "oscillates less",
        "Closest to the floor: kind",
    ):
        assert verdict not in text
    assert "+1.0000" in text  # the number is still shown


def test_a_nan_loss_noise_says_why():
    table = _grid_table().assign(loss_noise=float("nan"), steps_run=300)
    sentences = analysis.batch_noise(table, FACTORS, "train.seed")
    assert sentences[0].startswith("Batch 128 vs 32: not measurable: loss_noise needs")
    assert "these runs ran 300 steps" in sentences[0]


def test_context_models_below_the_floor_are_said_to_be_below():
    table = _grid_table()
    table["excess_loss"] = -0.3
    sentences = analysis.floor_distance(analysis.summarize(table, FACTORS), table, FACTORS)
    assert sentences[0].startswith("kind=bigram,batch_size=32: final train loss is 0.3000 nats below its bigram floor")
    assert "excess_loss -0.3000" in sentences[0]


def test_every_plot_draws_the_bigram_floor():
    table = _ladder_table().assign(
        run_id=lambda t: t["variant"],
        bigram_floor=lambda t: t["data.dataset"].map({"tinyshakespeare": 2.45, "korean-chatbot": 2.76}),
    )
    histories = {
        r: {"val_loss": _curve(5000, 100, 3.0, 0.0001), "train_loss": _curve(5000, 100, 2.9, 0.0001)}
        for r in table["run_id"]
    }
    factors = ["rung", "data.dataset"]
    for factor in factors:
        figure = plots.loss_curves(table, histories, factor, factors)
        for ax in (a for a in figure.axes if a.get_visible() and a.get_lines()):
            floors = {round(line.get_ydata()[0], 6) for line in ax.get_lines() if line.get_linestyle() == ":"}
            assert floors & {2.45, 2.76}, f"{factor}: panel {ax.get_title()} has no floor"
    summary = analysis.summarize(table, factors)
    bars = plots.final_val_loss_bars(summary, table, factors)
    drawn = {round(float(seg[0][1]), 6) for c in bars.axes[0].collections for seg in c.get_segments()}
    assert {2.45, 2.76} <= drawn
    low, high = bars.axes[0].get_ylim()
    assert low < 2.45 and high > 2.76


def test_effects_drop_pairs_of_failed_runs():
    table = _grid_table()
    table.loc[table["variant"] == "ffn,128,2", "status"] = "FAILED"
    effects = analysis.effects(table, FACTORS, seed="train.seed")
    model = effects[(effects["metric"] == "final_val_loss") & (effects["axis"] == "model.kind")].iloc[0]
    assert model["n_pairs"] == 3


def test_findings_give_numbers_intervals_and_n():
    table = _grid_table().assign(**{"data.dataset": "tinyshakespeare"})
    summary = analysis.summarize(table, FACTORS)
    answers = analysis.findings(table, summary, FACTORS, "train.seed")
    text = "\n".join(s for sentences in answers.values() for s in sentences)
    assert "FFN minus the bigram is +1.0000" in text and "n=4 pairs" in text and "the FFN is worse" in text
    assert "oscillates less" in text
    assert "n=2 seeds" in text and "Closest to the floor: kind=bigram,batch_size=128" in text


def test_findings_with_one_run_say_no_interval():
    table = _grid_table()
    table = table[(table["train.seed"] == 1) & (table["train.batch_size"] == 32)]
    summary = analysis.summarize(table, ["model.kind"])
    answers = analysis.findings(table, summary, ["model.kind"], None)
    ffn, floor = answers.values()  # no batch axis, so no batch question (not a "not answerable" either)
    assert "n=1, so no interval is possible" in ffn[0] and "the single pair says the FFN is worse" in ffn[0]
    assert "Does a larger batch oscillate less (loss_noise)?" not in answers
    assert all("n=1, so no interval is possible" in s for s in floor[:-1])


def _effect(**values) -> dict:
    """One row of effects.csv with verdict columns, as a reader would build it by hand."""
    row = {
        "metric": "final_val_loss",
        "kind": "treatment",
        "data": "dataset=tinyshakespeare",
        "axis": "model.kind",
        "level": "ffn",
        "baseline": "bigram",
        "n_pairs": 6,
        "n_seeds": 3,
        "mean_difference": -0.0693,
        "mean_difference_bits": -0.0693 / math.log(2),  # one token a character: bits = nats / ln 2
        "level_steps": 300.0,
        "baseline_steps": 300.0,
        "near_convergence": True,
        "verdict": "better",
        "adj_p_equivalence": 1.0,
    }
    return {**row, **values}


def test_each_effect_is_one_plain_sentence_with_verdict_size_n_and_budget():
    sentence = analysis.effect_sentence(_effect())
    assert sentence == (
        "Better: ffn vs bigram (model.kind, dataset=tinyshakespeare): final val loss 0.0693 nats lower "
        "(0.1000 bits per character), n = 6 pairs from 3 seeds, at 300 steps."
    )
    moving = analysis.effect_sentence(
        _effect(
            verdict="undecided", mean_difference=0.002, mean_difference_bits=0.002 / math.log(2), near_convergence=False
        )
    )
    assert moving == (
        "Undecided: ffn vs bigram (model.kind, dataset=tinyshakespeare): final val loss 0.0020 nats higher "
        "(0.0029 bits per character), n = 6 pairs from 3 seeds, at 300 steps: neither a difference nor "
        "equivalence within ±δ is shown yet; its runs are still improving, so more steps may change it."
    )
    # A ladder's rungs run different budgets; a small real difference says it is below δ.
    rung = analysis.effect_sentence(
        _effect(
            axis="rung",
            level="mlp",
            baseline="table",
            level_steps=5000.0,
            baseline_steps=3000.0,
            adj_p_equivalence=0.01,
        )
    )
    assert rung.endswith("at 5,000 vs 3,000 steps, a real difference but smaller than δ.")
    # A bits-per-character metric: 0.5 bits = 0.5 x ln 2 = 0.3466 nats per character.
    bits = analysis.effect_sentence(_effect(metric="final_val_bpc", mean_difference=-0.5, verdict="better"))
    assert "final val loss per character 0.3466 nats lower (0.5000 bits per character)" in bits
    # Across tokenizers a loss in nats per token is not one per character: bits x ln 2 leads, per token follows.
    mixed = analysis.effect_sentence(_effect(mean_difference=-0.3059, mean_difference_bits=-0.8873))
    assert "final val loss 0.6150 nats lower (0.8873 bits per character; -0.3059 nats per token, across" in mixed
    corpora = analysis.effect_sentence(
        _effect(
            kind="different data",
            data="",
            axis="data.dataset",
            level="korean-chatbot",
            baseline="tinyshakespeare",
            verdict="",
            mean_difference=0.4374,
            mean_difference_bits=0.4374 / math.log(2),
            n_pairs=4,
            n_seeds=1,
        )
    )
    assert corpora == (
        "Different data, not a treatment: korean-chatbot vs tinyshakespeare (data.dataset): final val loss 0.4374 "
        "nats higher (0.6310 bits per character), n = 4 pairs from 1 seed, at 300 steps."
    )


def test_verdict_counts_add_up_and_leave_corpora_out():
    # The seed-ablations grid at 300 steps: 4 val-loss effects (2 better, 2 undecided), 4 loss_noise effects without
    # a pair (too short to measure: undecided), and 2 comparisons of corpora (no verdict). 2 + 0 + 0 + 6 = 8.
    rows = [_effect(verdict=v) for v in ("better", "undecided", "better", "undecided")]
    rows += [_effect(metric="loss_noise", n_pairs=0, verdict="undecided") for _ in range(4)]
    rows += [_effect(kind="different data", verdict="", n_pairs=n) for n in (4, 0)]
    text = analysis.verdict_counts(pd.DataFrame(rows))
    assert text == (
        "Of 8 effects of a treatment: 2 better, 0 worse, 0 equivalent, 6 undecided (4 of them not measured: no "
        "pairs). 2 comparisons between corpora are measurements of different data, with no verdict."
    )
    corpora_only = analysis.verdict_counts(pd.DataFrame(rows[-2:]))  # gpt-cpu.yaml: two corpora, one model
    assert corpora_only == (
        "This sweep varies no treatment, only the data, so nothing gets a verdict. 2 comparisons between corpora "
        "are measurements of different data, with no verdict."
    )
    one = analysis.verdict_counts(pd.DataFrame([_effect(verdict="equivalent")]))
    assert one == "Of 1 effect of a treatment: 0 better, 0 worse, 1 equivalent, 0 undecided."


def test_the_write_ups_questions_appear_only_with_their_axes():
    table = _grid_table().assign(**{"data.dataset": "tinyshakespeare"})
    everything = analysis.findings(table, analysis.summarize(table, FACTORS), FACTORS, "train.seed")
    assert list(everything) == [
        "Is the FFN worse than the bigram on each corpus?",
        "Does a larger batch oscillate less (loss_noise)?",
        "How far is each variant from the bigram floor (excess_loss)?",
    ]
    # A dropout sweep of one model: none of the write-up's questions is about it.
    one_model = table[(table["model.kind"] == "ffn") & (table["train.batch_size"] == 32)]
    dropout = pd.concat(
        [
            one_model.assign(**{"model.dropout": 0.0, "setting": "dropout=0.0"}),
            one_model.assign(**{"model.dropout": 0.2, "setting": "dropout=0.2", "final_val_loss": 3.5}),
        ]
    )
    summary = analysis.summarize(dropout, ["model.dropout"])
    assert analysis.findings(dropout, summary, ["model.dropout"], "train.seed") == {}


def test_samples_are_escaped_and_keep_blank_lines():
    block = pre_block("a <b> & c\n\n| *x* 안녕")
    assert block == "<pre>a &lt;b&gt; &amp; c\n<span></span>\n| *x* 안녕</pre>"
    assert "\n\n" not in block  # a blank line would end the HTML block in markdown
    assert md_text("kind=a|b *c* _x batch_size") == "kind=a\\|b \\*c\\* \\_x batch_size"


def test_zip_group_is_one_factor_and_list_values_group(tmp_path):
    spec_path = tmp_path / "zipped.yaml"
    spec_path.write_text(
        "name: zipped\n"
        "base: {data: {dataset: tinyshakespeare}, model: {kind: ffn}, train: {steps: 40, device: cpu}}\n"
        "grid: {model.hidden_sizes: [[8], [16, 8]]}\n"
        "zip: {train.batch_size: [32, 128], train.lr: [0.001, 0.002]}\n"
        "seeds: [1, 2]\n",
        encoding="utf-8",
    )
    spec = load_spec(spec_path)
    variants = expand(spec)
    table, factors, seed = factor_table(runs_table(pd.DataFrame(), variants), spec, variants)
    assert factors == ["model.hidden_sizes", "train.batch_size+train.lr"] and seed == "train.seed"
    assert levels_of(table, "model.hidden_sizes") == ["8", "16x8"]
    assert levels_of(table, "train.batch_size+train.lr") == ["32/0.001", "128/0.002"]
    table = table.assign(status="FINISHED", final_val_loss=[1.0 + 0.5 * (i // 2 % 2) for i in range(len(table))])
    effects = analysis.effects(table, factors, seed, metrics=["final_val_loss"])
    zipped = effects[effects["axis"] == "train.batch_size+train.lr"].iloc[0]
    assert zipped["n_pairs"] == 4 and zipped["mean_difference"] == pytest.approx(0.5)
    assert len(analysis.summarize(table, factors)) == 4


def levels_of(table, factor):
    return analysis.levels(table, factor)


# -- paths and folders --------------------------------------------------------------------------------------


def test_committed_text_holds_no_machine_paths():
    root = str(PROJECT_ROOT)
    assert display_path(f"{root}/experiments/seed.yaml") == "experiments/seed.yaml"
    assert display_path("/somewhere/else/data") == ".../data"
    assert (
        display_command(f"/tmp/x/harness/__main__.py run {root}/experiments/seed.yaml --data-dir /srv/data")
        == "harness run experiments/seed.yaml --data-dir .../data"
    )
    assert (
        scrub_paths(f'File "{root}/harness/train.py", line 3, ratio 1/2')
        == 'File "harness/train.py", line 3, ratio 1/2'
    )


def test_overrides_folder_is_a_short_stable_hash_of_overrides_and_seeds():
    first = overrides_folder({"train.steps": 500}, None)
    assert re.fullmatch(r"overrides-[0-9a-f]{8}", first)
    assert first == overrides_folder({"train.steps": 500}, None)
    assert (
        len({first, overrides_folder({"train.steps": 501}, None), overrides_folder({"train.steps": 500}, [1, 2])}) == 3
    )


# -- recorded runs without training: old and new metric names, named levels --------------------------------


def _record(client: MlflowClient, experiment_id: str, variant, val: float, flat_names: bool) -> None:
    """A FINISHED run as the harness logs one: before the metric sections (flat names) or after
    (loss/val, final/...)."""
    from mlflow.entities import Metric

    name = (lambda key: key) if flat_names else mlflow_key
    run = client.create_run(experiment_id, tags={"config_hash": variant.config.config_hash(), "variant": variant.id})
    curve = [
        Metric(
            name("val_loss"),
            val + 0.5 * (1000 - step) / 1000 if step < 900 else val + 0.001 * (1000 - step) / 100,
            0,
            step,
        )
        for step in range(0, 1001, 100)
    ]
    finals = {
        "final_train_loss": val - 0.05,
        "final_val_loss": val,
        "bigram_floor": 2.45,
        "excess_loss": val - 2.5,
        "loss_noise": 0.01,
        "eval_tokens": 100_000,
    }
    client.log_batch(run.info.run_id, metrics=curve + [Metric(name(k), v, 0, 1000) for k, v in finals.items()])
    client.set_terminated(run.info.run_id, "FINISHED")


def test_report_reads_stores_with_old_and_new_metric_names(mlflow_store, tmp_path):
    spec_path = tmp_path / "names.yaml"
    spec_path.write_text(
        "name: names\nbase: {data: {dataset: tinyshakespeare}, train: {steps: 1000}}\n"
        "grid: {model.kind: [bigram, ffn]}\nseeds: [1, 2]\n",
        encoding="utf-8",
    )
    spec = load_spec(spec_path)
    variants = expand(spec)
    client = MlflowClient(mlflow_store)
    experiment_id = client.create_experiment("names")
    values = [2.50, 2.52, 2.40, 2.41]  # FFN - bigram: -0.10 and -0.11, an interval below 0
    for k, (variant, val) in enumerate(zip(variants, values, strict=True)):
        _record(client, experiment_id, variant, val, flat_names=k % 2 == 0)
    report = write_report(mlflow_store, spec, variants, tmp_path / "results", log_to_mlflow=False)
    runs = pd.read_csv(report.directory / "runs.csv")
    assert report.directory == tmp_path / "results" / "names"  # the spec as written: the reference folder
    assert list(runs["final_val_loss"]) == pytest.approx(values)
    assert list(runs["eval_tokens"]) == [100_000] * 4 and list(runs["steps_run"]) == [1000] * 4
    # The val curve moved 0.001 over the last 100 of 1,000 steps: near convergence, so a verdict is drawn.
    assert runs["near_convergence"].all() and list(runs["val_change_last_10pct"]) == pytest.approx([-0.001] * 4)
    text = (report.directory / "report.md").read_text(encoding="utf-8")
    answers = text[text.index("## The write-up's questions") : text.index("## Effects")]
    assert "too short to judge" not in answers and "still improving" not in answers
    # The opening: the counts (loss_noise is 0.01 in every run: a zero difference, equivalent), one sentence per
    # effect (FFN - bigram = -0.105 nats = -0.105 / ln 2 = -0.1515 bits), and, from 2 seeds, the pilot to run first.
    found = text[text.index("## What the sweep found") : text.index("## The write-up's questions")]
    assert "Of 2 effects of a treatment: 0 better, 0 worse, 1 equivalent, 1 undecided." in found
    assert (
        "- **Undecided**: ffn vs bigram (model.kind, dataset=tinyshakespeare): final val loss 0.1050 nats lower "
        "(0.1515 bits per character), n = 2 pairs from 2 seeds, at 1,000 steps: neither a difference nor "
        "equivalence within ±δ is shown yet." in found
    )
    assert "No seed plan from 2 seeds per variant" in found and "    harness run names.yaml --seeds 1 2 3" in found
    assert "2 more runs" in found
    # Two seeds: t = 0.105 / (0.00707 / sqrt 2) = 21 on 1 df, p = 1 - 2 atan(21) / pi = 0.0303. The family is 4
    # hypotheses (val loss and loss_noise, a difference and an equivalence each); loss_noise is equal in every run
    # (p 1 and 0), so Holm multiplies 0.0303 by 3: 0.0909 > 0.05, undecided, and the verdict says so.
    effects = pd.read_csv(report.directory / "effects.csv")
    val = effects[effects["metric"] == "final_val_loss"].iloc[0]
    assert val["p_difference"] == pytest.approx(0.0303, abs=1e-4)
    assert val["adj_p_difference"] == pytest.approx(0.0909, abs=2e-4) and val["verdict"] == "undecided"
    assert "undecided" in answers and "cannot tell yet whether the FFN is worse" in answers


def test_named_levels_references_and_ladder_in_the_report(mlflow_store, tmp_path):
    spec_path = tmp_path / "ladder.yaml"
    spec_path.write_text(
        "name: ladder\n"
        "base: {data: {dataset: tinyshakespeare}, train: {steps: 1000}, model: {hidden_sizes: [16]}}\n"
        "grid:\n"
        "  rung:\n"
        "    table: {model.kind: bigram}\n"
        "    mlp: {model.kind: ffn}\n"
        "    deeper: {model.kind: ffn, model.hidden_sizes: [32, 16]}\n"
        "  data.dataset: [tinyshakespeare, korean-chatbot]\n"
        "seeds: [1, 2]\n"
        "references:\n"
        "  - {match: {rung: mlp, data.dataset: tinyshakespeare}, metric: final_val_loss, value: 2.38,\n"
        "     source: 'ng-video-lecture v2.py @a6e0bee'}\n",
        encoding="utf-8",
    )
    try:
        spec = load_spec(spec_path)
    except Exception as exc:  # before the spec parses named levels (issue 10)
        pytest.skip(f"this harness's spec has no named levels yet: {exc}")
    variants = expand(spec)
    assert [v.axes["rung"] for v in variants[::4]] == ["table", "mlp", "deeper"]
    client = MlflowClient(mlflow_store)
    experiment_id = client.create_experiment("ladder")
    base = {"table": 2.50, "mlp": 2.40, "deeper": 2.28}
    for variant in variants:
        axes = variant.axes
        noise = 0.01 if axes["train.seed"] == 1 else -0.01
        shift = 0.4 if axes["data.dataset"] == "korean-chatbot" else 0.0
        _record(client, experiment_id, variant, base[axes["rung"]] + shift + noise, flat_names=False)
    report = write_report(mlflow_store, spec, variants, tmp_path / "results", log_to_mlflow=False)
    text = (report.directory / "report.md").read_text(encoding="utf-8")
    ladder = text[text.index("## Ladder: rung") :]
    rows = [line for line in ladder.splitlines() if line.startswith("| ")][1:4]
    assert [row.split("|")[1].strip() for row in rows] == ["table", "mlp", "deeper"]
    assert "2.4000 [2.2729, 2.5271]" in rows[1] and "2.3800" in rows[1]
    references = text[text.index("## Published references") :]
    assert "ng-video-lecture v2.py @a6e0bee" in references and "+0.0200" in references
    summary = pd.read_csv(report.directory / "summary.csv")
    hit = summary[summary["final_val_loss_reference"].notna()].iloc[0]
    assert hit["final_val_loss_reference_difference"] == pytest.approx(0.02)
    effects = pd.read_csv(report.directory / "effects.csv")
    rung = effects[(effects["axis"] == "rung") & (effects["metric"] == "final_val_loss")]
    assert set(zip(rung["level"], rung["baseline"], strict=True)) == {("mlp", "table"), ("deeper", "mlp")}


# -- a real tiny sweep --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_dir):
    """16 variants (2 models x 2 batch sizes x 2 corpora x 2 seeds) at 40 steps, then its report."""
    root = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.chdir(root)
        data = ["--data-dir", str(data_dir)] if data_dir else []
        code = main(["run", str(SMOKE), *TINY, "--seeds", "1", "2", *data, "--results-dir", "results", "--no-progress"])
        assert code == 0
        # Overrides and --seeds: the report goes beside the spec's own, never over it.
        assert not (root / "results" / "smoke" / "report.md").exists()
        (out,) = (root / "results" / "smoke").glob("overrides-*")
        yield out, MlflowClient(uri), root


def _runs(client: MlflowClient):
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("harness.sweep") == "true")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children


def test_summary_has_n_and_finite_intervals(sweep):
    out, _, _ = sweep
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 8 and (summary["n"] == 2).all()
    for metric in ("final_train_loss", "final_val_loss", "excess_loss"):
        for stat in ("mean", "std", "ci_low", "ci_high"):
            assert summary[f"{metric}_{stat}"].map(math.isfinite).all(), f"{metric}_{stat}"
        assert (summary[f"{metric}_ci_low"] <= summary[f"{metric}_ci_high"]).all()
    runs = pd.read_csv(out / "runs.csv")
    assert {"eval_tokens", "steps_run", "val_change_last_10pct", "near_convergence"} <= set(runs)
    assert (runs["steps_run"] == 40).all()
    if runs["loss_noise"].isna().any():  # 40 steps may be too few for its window: the report says so
        assert "loss\\_noise is NaN for" in (out / "report.md").read_text(encoding="utf-8")


def test_effects_within_each_corpus_and_corpora_as_different_data(sweep):
    out, _, _ = sweep
    effects = pd.read_csv(out / "effects.csv", keep_default_na=False)
    val = effects[effects["metric"] == "final_val_loss"]
    treatments = val[val["kind"] == "treatment"]
    assert set(treatments["axis"]) == {"model.kind", "train.batch_size"}
    assert set(treatments["data"]) == {"dataset=tinyshakespeare", "dataset=korean-chatbot"}
    assert (treatments["n_pairs"].astype(int) == 4).all()  # 2 other levels x 2 seeds within a corpus
    model = treatments[treatments["axis"] == "model.kind"].iloc[0]
    assert (model["level"], model["baseline"]) == ("ffn", "bigram")
    for _, corpus in treatments.groupby("data"):
        sizes = corpus["mean_difference"].astype(float).abs().tolist()
        assert sizes == sorted(sizes, reverse=True)
    corpora = val[val["kind"] == "different data"]
    assert list(corpora["axis"]) == ["data.dataset"] and int(corpora["n_pairs"].iloc[0]) == 8
    assert math.isfinite(float(corpora["mean_difference_bits"].iloc[0]))  # its value: the hand-made corpus test
    assert val.index[val["kind"] == "different data"].min() > val.index[val["kind"] == "treatment"].max()


def test_figures_written_and_logged_to_the_sweep_run_only(sweep):
    out, client, _ = sweep
    names = {"curves_model_kind.png", "curves_train_batch_size.png", "curves_data_dataset.png", "final_val_loss.png"}
    for name in names:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000
    parent, children = _runs(client)
    assert len(children) == 16
    logged = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "report")}
    assert names | {"report.md", "summary.csv", "effects.csv"} <= logged
    for child in children:
        assert client.list_artifacts(child.info.run_id, "report") == []


def test_report_md_has_provenance_tables_answers_and_korean_samples(sweep):
    out, _, root = sweep
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "harness report experiments/smoke.yaml train.steps=40" in text and "--seeds 1 2" in text
    # The overrides that applied, beside the spec's own values; the method in the appendix, after the tables.
    assert "**Overrides applied**: train.steps=40 (the spec: 30); train.eval_interval=10 (the spec: 10)" in text
    assert "seeds 1, 2 (the spec: one run per variant at train.seed 1337)" in text
    assert "Steps actually run: 40 (the spec as written: 30)" in text
    assert text.index("## What the sweep found") < text.index("## Effects") < text.index("## Appendix: how the")
    assert text.index("## Samples") < text.index("Holm 1979") and "Stein 1945" in text
    assert "FFN minus the bigram" in text and "On korean-chatbot" in text and "n=4 pairs" in text
    assert "nats above its bigram floor" in text and "n=2 seeds" in text
    assert "| korean-chatbot  | shuffled-rows" in text and "| tinyshakespeare | position" in text
    assert "| setting" in text and "| metric" in text
    assert "![final_val_loss](final_val_loss.png)" in text
    samples = text[text.index("## Samples") :]
    assert samples.count("<pre>") == 32 and HANGUL.search(samples)
    assert "(not logged)" not in samples
    # Nothing of this machine: no absolute paths (the command had them), no "-dirty" snapshot.
    for name in ("report.md", "runs.csv", "summary.csv", "effects.csv"):
        content = (out / name).read_text(encoding="utf-8")
        for machine in (str(PROJECT_ROOT), str(root), "/tmp/", "-dirty"):
            assert machine not in content, f"{name} holds {machine}"


def test_a_300_step_run_is_too_short_to_judge(mlflow_store, data_dir):
    data = ["--data-dir", str(data_dir)] if data_dir else []
    words = [
        "train.steps=300",
        "train.context_length=8",
        "train.threads=1",
        "train.device=cpu",
        "sample.max_new_tokens=10",
    ]
    assert (
        main(["run", str(SMOKE), *words, "train.batch_size=32", "data.dataset=tinyshakespeare", *data, "--no-progress"])
        == 0
    )
    (out,) = Path("results/smoke").glob("overrides-*")
    text = (out / "report.md").read_text(encoding="utf-8")
    answers = text[text.index("## The write-up's questions") : text.index("## Effects")]
    assert "Steps actually run: 300" in text
    assert "too short to judge" in answers and "still moving" in answers and "300 steps" in answers
    # The budget is part of the verdict: given at the steps run, with the note; only the limit waits for convergence.
    assert "still improving at 300 steps; more steps may change the order" in answers
    assert "capacity is too large for the data" in answers and "Closest to the floor: too short to judge" in answers
    for verdict in (
        "the FFN is worse",
        "the FFN is better",
        "cannot tell",
        "the single pair says",
        "Closest to the floor: kind",
    ):
        assert verdict not in answers
    runs = pd.read_csv(out / "runs.csv")
    bigram = runs[runs["model.kind"] == "bigram"].iloc[0]
    assert (
        not bigram["near_convergence"] and bigram["val_change_last_10pct"] < -0.01
    )  # still falling, 2 nats above its floor


def test_report_rebuilds_the_same_csvs_from_mlflow_alone(sweep):
    out, _, _ = sweep
    before = {name: pd.read_csv(out / name) for name in ("runs.csv", "summary.csv", "effects.csv")}
    shutil.rmtree(out.parent)
    assert main(["report", str(SMOKE), "--results-dir", "results"]) == 0  # overrides and seeds of the last sweep
    for name, frame in before.items():
        pd.testing.assert_frame_equal(pd.read_csv(out / name), frame, obj=name)
    assert (out / "report.md").exists() and (out / "final_val_loss.png").stat().st_size > 0


def test_report_survives_failed_and_missing_variants(sweep):
    out, client, _ = sweep
    _, children = _runs(client)
    failed = next(c for c in children if c.data.tags["variant"].startswith("kind=ffn,batch_size=128,dataset=korean"))
    client.update_run(failed.info.run_id, status="FAILED")
    try:
        # Seeds 1 2 3: seed 3 never ran, so 8 variants are MISSING and one more is FAILED.
        assert main(["report", str(SMOKE), *TINY, "--seeds", "1", "2", "3", "--results-dir", "partial"]) == 0
    finally:
        client.update_run(failed.info.run_id, status="FINISHED")
    (partial,) = (Path("partial") / "smoke").glob("overrides-*")
    runs = pd.read_csv(partial / "runs.csv")
    assert (runs["status"] == "MISSING").sum() == 8 and (runs["status"] == "FAILED").sum() == 1
    summary = pd.read_csv(partial / "summary.csv")
    assert set(summary["n"]) == {1, 2}
    effects = pd.read_csv(partial / "effects.csv")
    model = effects[(effects["metric"] == "final_val_loss") & (effects["axis"] == "model.kind")]
    assert sorted(model["n_pairs"]) == [3, 4]  # the failed Korean FFN run drops one Korean pair
    text = (partial / "report.md").read_text(encoding="utf-8")
    assert "Not finished: 9 variant(s)" in text and "MISSING" in text
    # No sweep ran these variants, so the sweep's own report in MLflow stays as it was.
    parent, _ = _runs(client)
    logged = Path(client.download_artifacts(parent.info.run_id, "report/report.md", "downloaded"))
    assert "Not finished" not in logged.read_text(encoding="utf-8")


def test_report_with_one_seed_says_no_interval(sweep):
    assert main(["report", str(SMOKE), *TINY, "--seeds", "1", "--results-dir", "one-seed"]) == 0
    (out,) = (Path("one-seed") / "smoke").glob("overrides-*")
    summary = pd.read_csv(out / "summary.csv")
    assert (summary["n"] == 1).all() and summary["final_val_loss_ci_low"].isna().all()
    text = (out / "report.md").read_text(encoding="utf-8")
    # What is said about n is true of the rows beside it: the summary's n = 1, the effects' pairs across other axes.
    summary_part = text[text.index("## Summary") : text.index("## Data")]
    assert "One seed per setting: n = 1 in every row below, so no interval here" in summary_part
    found = text[text.index("## What the sweep found") : text.index("## The write-up's questions")]
    assert "One seed per variant: an effect's n counts its pairs matched on the other axes" in found
    assert "n = 2 pairs from 1 seed" in found and "no interval is possible" not in found
    assert "One run per variant (no seeds)" not in text
    # Below a pilot of 3 seeds: no plan, the pilot's command, reusing seed 1.
    assert "No seed plan from 1 seed per variant" in found and "--seeds 1 2 3" in found
    assert not re.search(r"needs [0-9,]+ seeds", found)


def test_a_report_rebuilds_from_its_runs_csv_without_a_store(sweep, monkeypatch):
    # A clone has results/<name>/ but no MLflow store: the report rebuilds from runs.csv in its folder, with the
    # overrides and seeds read off the table, the same statistics, and the curves and samples of the report there.
    out, _, root = sweep
    copy = root / "from-csv" / out.name
    shutil.copytree(out, copy)
    before = {name: pd.read_csv(out / name) for name in ("runs.csv", "summary.csv", "effects.csv")}
    curves = (copy / "curves_model_kind.png").read_bytes()
    for name in ("summary.csv", "effects.csv", "final_val_loss.png"):
        (copy / name).unlink()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'absent' / 'none.db'}")  # no store to read
    assert main(["report", str(SMOKE), "--from-csv", str(copy / "runs.csv")]) == 0
    assert not (root / "absent").exists()
    for name, frame in before.items():
        pd.testing.assert_frame_equal(pd.read_csv(copy / name), frame, obj=name)
    assert (copy / "curves_model_kind.png").read_bytes() == curves and (copy / "final_val_loss.png").exists()
    text = (copy / "report.md").read_text(encoding="utf-8")
    original = (out / "report.md").read_text(encoding="utf-8")
    assert (
        text[text.index("## Samples") :].split("## Appendix")[0]
        == original[original.index("## Samples") :].split("## Appendix")[0]
    )
    # The overrides that changed something, beside experiments/smoke.yaml's values (eval_interval=10 and device=cpu
    # are its own already; threads is 0 by default).
    assert (
        "**Overrides applied**: train.steps=40 (the spec: 30); train.context_length=16 (the spec: 128); "
        "train.threads=1 (the spec: 0); sample.max_new_tokens=30 (the spec: 50); seeds 1, 2 (the spec: one run "
        "per variant at train.seed 1337)" in text
    )
    assert "- Rebuild this report: `harness report experiments/smoke.yaml --from-csv " in text
    assert "(no MLflow store at hand)" in text and "- Sweep: `harness run experiments/smoke.yaml" in text
    # A runs.csv of another spec is refused, naming the file.
    other = root / "from-csv" / "other.csv"
    before["runs.csv"].assign(config_hash="0123456789abcdef").to_csv(other, index=False)
    assert main(["report", str(SMOKE), *TINY, "--seeds", "1", "2", "--from-csv", str(other)]) == 2


def test_a_stage_of_its_own_inserts_its_section_where_it_says():
    from harness.report.tables import Section, insert_section, join_sections

    sections = [Section("header", ["# x", ""]), Section("findings", ["## Found", ""]), Section("effects", ["## E"])]
    tuned = insert_section(sections, Section("tuning", ["## Tuning", ""]), after="findings")
    assert [s.key for s in tuned] == ["header", "findings", "tuning", "effects"]
    assert [s.key for s in insert_section(sections, Section("end", ["z"]), after="absent")][-1] == "end"
    assert join_sections(tuned) == "# x\n\n## Found\n\n## Tuning\n\n## E"


def test_the_effects_table_says_over_1000_seeds_in_words():
    from harness.report.tables import _effects_view

    rows = [
        _effect(verdict="undecided", seeds_needed=57, adj_ci_low=-0.1, adj_ci_high=0.1, ci_low=-0.1, ci_high=0.1),
        _effect(verdict="undecided", seeds_needed=4050, adj_ci_low=-0.1, adj_ci_high=0.1, ci_low=-0.1, ci_high=0.1),
    ]
    frame = pd.DataFrame(rows).assign(ci_excludes_zero=False, ci_low_bits=-0.1, ci_high_bits=0.1)
    assert list(_effects_view(frame)["seeds needed"]) == ["57", "over 1,000"]
