"""Verdicts in effects.csv on a spec with two axes, ``harness plan`` and ``harness run --until-decided`` end to end
(bigram, 20 CPU steps, real data, a SQLite MLflow store under tmp_path), and the bad inputs that exit 2 with the
store untouched. Expected numbers are worked out here from runs.csv, not with the report's own code."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from harness.cli import main

BASE = (
    "base:\n"
    "  data: {dataset: tinyshakespeare}\n"
    "  model: {kind: bigram}\n"
    "  train: {steps: 20, eval_interval: 2, device: cpu, threads: 1, context_length: 8, batch_size: 8}\n"
    "  sample: {max_new_tokens: 5}\n"
)


def _spec(folder: Path, name: str, grid: str, seeds: str = "[1, 2, 3]", extra: str = "") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\n{BASE}grid: {grid}\nseeds: {seeds}\n{extra}", encoding="utf-8")
    return path


def _data(data_dir) -> list[str]:
    return ["--data-dir", str(data_dir)] if data_dir else []


def _holm(p: list[float]) -> list[float]:
    """Holm (1979) written out: the i-th smallest of N times (N - i), a running maximum, at most 1 (NaN as 1)."""
    p = [1.0 if math.isnan(x) else x for x in p]
    order = sorted(range(len(p)), key=lambda i: p[i])
    adjusted, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def _t2(p: float) -> float:
    """The p quantile of Student's t with 2 degrees of freedom, in closed form: (2p - 1) / sqrt(2 p (1 - p))."""
    return (2 * p - 1) / math.sqrt(2 * p * (1 - p))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_axes_get_a_verdict_each_in_effects_csv_and_report(mlflow_store, tmp_path, data_dir, capsys):
    spec = _spec(tmp_path, "two-axes", "{train.lr: [0.01, 0.1], train.batch_size: [8, 32]}")
    assert main(["run", str(spec), *_data(data_dir), "--no-progress"]) == 0
    out = Path("results/two-axes")
    effects = pd.read_csv(out / "effects.csv")
    runs = pd.read_csv(out / "runs.csv")
    for column in ("verdict", "adj_ci_low", "adj_ci_high", "p_difference", "adj_p_difference", "seeds_needed"):
        assert column in effects
    val = effects[effects["metric"] == "final_val_loss"]
    assert set(val["axis"]) == {"train.lr", "train.batch_size"}  # both axes get a verdict
    assert set(effects["verdict"]) <= {"better", "worse", "equivalent", "undecided"}

    # Each effect by hand: 6 pairs (2 levels of the other axis x 3 seeds), d = level - baseline.
    # 4 effects (val loss and loss_noise of each axis); loss_noise needs 1,530 steps, so its effects have no pairs
    # and test nothing: the family is the two val-loss effects, 4 hypotheses
    testable = effects["n_pairs"] >= 2
    delta, family = 0.01, 2 * int(testable.sum())
    assert family == 4
    p_all = []
    for _, effect in effects.iterrows():
        axis, other = effect["axis"], ({"train.lr", "train.batch_size"} - {effect["axis"]}).pop()
        metric = effect["metric"]
        at = runs.set_index([axis, other, "train.seed"])[metric]
        d = np.array(
            [
                at[(float(effect["level"]), o, s)] - at[(float(effect["baseline"]), o, s)]
                for o in sorted(runs[other].unique())
                for s in (1, 2, 3)
            ]
        )
        d = d[np.isfinite(d)]
        if len(d) == 0:  # no pairs: undecided, outside the family
            assert effect["n_pairs"] == 0 and effect["verdict"] == "undecided"
            assert "not in the family" in effect["reason"]
            continue
        mean, sd, n = d.mean(), d.std(ddof=1), len(d)
        assert (effect["n_pairs"], effect["mean_difference"], effect["std"]) == (
            n,
            pytest.approx(mean),
            pytest.approx(sd),
        )
        se = sd / math.sqrt(n)
        p_difference = 2 * stats.t.sf(abs(mean) / se, n - 1)
        p_equivalence = max(stats.t.sf((mean + delta) / se, n - 1), stats.t.cdf((mean - delta) / se, n - 1))
        assert effect["p_difference"] == pytest.approx(p_difference, rel=1e-6, abs=1e-12)
        assert effect["p_equivalence"] == pytest.approx(p_equivalence, rel=1e-6, abs=1e-12)
        half = stats.t.ppf(1 - 0.05 / family / 2, n - 1) * se  # Bonferroni's 1 - alpha/4 interval
        assert (effect["adj_ci_low"], effect["adj_ci_high"]) == (pytest.approx(mean - half), pytest.approx(mean + half))
        p_all += [p_difference, p_equivalence]
    adjusted = _holm(p_all)
    for i, (_, effect) in enumerate(effects[testable].iterrows()):
        adj_difference, adj_equivalence = adjusted[2 * i], adjusted[2 * i + 1]
        assert effect["adj_p_difference"] == pytest.approx(adj_difference, rel=1e-6, abs=1e-12)
        expected = (
            ("better" if effect["mean_difference"] < 0 else "worse")
            if adj_difference < 0.05
            else "equivalent"
            if adj_equivalence < 0.05
            else "undecided"
        )
        assert effect["verdict"] == expected
        if expected == "undecided" and effect["n_pairs"] > 1:
            # Stein's total in pairs from this spread (t at alpha/4, 5 df), 2 pairs per seed.
            t = stats.t.ppf(1 - 0.05 / family / 2, effect["n_pairs"] - 1)
            pairs = max(effect["n_pairs"], math.ceil((t * effect["std"] / (delta / 2)) ** 2))
            assert effect["seeds_needed"] == math.ceil(pairs / 2)
        # 20 steps: every run is still moving, and each verdict says so
        assert "still improving at 20 steps; more steps may change the order" in effect["reason"]

    text = (out / "report.md").read_text(encoding="utf-8")
    found = text[text.index("## What the sweep found") : text.index("## Effects")]
    counts = effects[effects["kind"] == "treatment"]["verdict"].value_counts()
    assert (
        f"Of 4 effects of a treatment: {counts.get('better', 0)} better, {counts.get('worse', 0)} worse, "
        f"{counts.get('equivalent', 0)} equivalent, {counts.get('undecided', 0)} undecided (2 of them not measured"
    ) in found
    appendix = text[text.index("## Appendix: how the verdicts are drawn") :]
    assert "Holm's step-down over a family of 4 hypotheses" in appendix
    assert "alpha = 0.05" in appendix and "±δ = ±0.01 nats" in appendix
    assert "TOST" in appendix and "Stein" in appendix
    assert "| verdict" in text and "| adjusted CI" in text and "| in bits/char" in text
    open_ = effects[(effects["verdict"] == "undecided") & effects["seeds_needed"].notna()]
    if (open_["seeds_needed"] <= 1000).any():  # a plan within reach: its command
        assert "harness run two-axes.yaml --until-decided --max-seeds" in found or "--seeds 1 2 3 4" in found
    elif len(open_):  # beyond 1,000 seeds: in words, no number
        assert "more than 1,000 seeds per variant" in found
        assert not any(f"{int(n)}" in found for n in open_["seeds_needed"])


def test_plan_and_until_decided_train_the_planned_seeds_then_stein_verdicts(mlflow_store, tmp_path, data_dir, capsys):
    spec = _spec(tmp_path, "pilot", "{train.lr: [0.01, 0.1]}")
    data = _data(data_dir)
    assert main(["run", str(spec), *data, "--no-progress"]) == 0  # the pilot: seeds 1 2 3
    pilot = pd.read_csv(Path("results/pilot/effects.csv"))
    lr = pilot[pilot["metric"] == "final_val_loss"].iloc[0]
    # The family: the val-loss effect alone, 2 hypotheses (loss_noise needs 1,530 steps: no pairs, no test).
    assert lr["n_pairs"] == 3 and len(pilot) == 2
    # δ chosen so that Stein's N is 5: t(0.05 / 2 two-sided, 2 df) = 0.975 / sqrt(2 x 0.9875 x 0.0125) = 6.205 from
    # the closed form; with h = δ/2, (t * s0 / h)^2 = 4.5, so N = ceil(4.5) = 5 seeds.
    t = _t2(1 - 0.05 / 2 / 2)
    assert t == pytest.approx(6.205, abs=1e-3)
    s0 = float(lr["std"])
    delta = 2 * t * s0 / math.sqrt(4.5)
    capsys.readouterr()

    assert main(["plan", str(spec), "--delta", f"{delta:.10f}", "--max-seeds", "6"]) == 0
    printed = capsys.readouterr().out
    assert "train 5 seeds per variant" in printed and "4 more runs" in printed
    assert "harness run pilot.yaml --seeds 1 2 3 4 5" in printed
    assert "harness run pilot.yaml --until-decided --max-seeds 5" in printed

    def until_decided(max_seeds: int) -> int:
        words = ["--until-decided", "--delta", f"{delta:.10f}", "--max-seeds", str(max_seeds)]
        return main(["run", str(spec), *data, "--no-progress", *words])

    # Capped at 4 seeds: seed 4 trains, and the report says the effect hit the cap.
    assert until_decided(4) == 0
    (capped,) = Path("results/pilot").glob("overrides-*")
    effects = pd.read_csv(capped / "effects.csv")
    row = effects[effects["metric"] == "final_val_loss"].iloc[0]
    assert row["design"] == "Stein two-stage" and row["n_pairs"] == 4 and row["pilot_pairs"] == 3
    assert str(row["precision_reached"]) == "False"
    text = (capped / "report.md").read_text(encoding="utf-8")
    assert "Hit the seed cap (short of ±δ): final_val_loss, train.lr: 0.1 vs 0.01" in text

    # Up to 6: the plan asks for 5, so only seed 5 trains (1 to 4 are FINISHED), and ±δ is reached.
    capsys.readouterr()
    assert until_decided(6) == 0
    printed = capsys.readouterr().out
    assert "finished 2, skipped 8" in printed
    final = next(p for p in Path("results/pilot").glob("overrides-*") if p != capped)
    effects = pd.read_csv(final / "effects.csv")
    runs = pd.read_csv(final / "runs.csv")
    row = effects[effects["metric"] == "final_val_loss"].iloc[0]
    assert row["n_pairs"] == 5 and row["design"] == "Stein two-stage" and str(row["precision_reached"]) == "True"
    at = runs.set_index(["train.lr", "train.seed"])["final_val_loss"]
    d = np.array([at[(0.1, s)] - at[(0.01, s)] for s in range(1, 6)])
    pilot_sd = d[:3].std(ddof=1)
    assert row["pilot_std"] == pytest.approx(pilot_sd) and pilot_sd == pytest.approx(s0)
    half = t * pilot_sd / math.sqrt(5)  # Stein's final interval: the mean of all 5, the pilot's sd, t on 2 df
    assert half <= delta / 2
    assert (row["adj_ci_low"], row["adj_ci_high"]) == (pytest.approx(d.mean() - half), pytest.approx(d.mean() + half))
    assert row["verdict"] != "undecided"
    text = (final / "report.md").read_text(encoding="utf-8")
    assert "Reached ±δ (final adjusted interval at most δ/2 each side): final_val_loss, train.lr" in text
    assert "seeds 1, 2, 3 (the spec's own, n0 = 3) were the pilot" in text
    experiment = MlflowClient(mlflow_store).get_experiment_by_name("pilot")
    children = [
        r
        for r in MlflowClient(mlflow_store).search_runs([experiment.experiment_id])
        if r.data.tags.get("harness.sweep") != "true"
    ]
    assert len(children) == 10 and {r.info.status for r in children} == {"FINISHED"}

    # Bad input with a store that holds runs: exit 2, the store byte for byte as it was.
    before = _sha(tmp_path / "mlflow.db")
    for words in (
        ["run", str(spec), "--until-decided", "--max-seeds", "2"],
        ["run", str(spec), "--until-decided", "--delta", "0"],
        ["run", str(spec), "--until-decided", "--delta", "-0.1"],
        ["plan", str(spec), "--delta", "nan"],
        ["run", str(spec), "--delta", "0.1"],  # --delta without --until-decided
    ):
        assert main([*words, *data, "--no-progress"] if words[0] == "run" else words) == 2, words
    assert _sha(tmp_path / "mlflow.db") == before


@pytest.mark.parametrize(
    "words, extra, seeds",
    [
        (["run", "--until-decided"], "", "[1]"),  # one seed: no spread, no plan
        (["run", "--until-decided"], "", "[1, 2]"),  # a pilot of 2 seeds: too few to plan from
        (["run", "--until-decided"], "", None),  # no seeds axis at all
        (["run", "--until-decided", "--max-seeds", "2"], "", "[1, 2, 3]"),  # cap below the pilot
        (["run", "--until-decided", "--delta", "0"], "", "[1, 2, 3]"),
        (["run", "--until-decided", "--delta", "-1"], "", "[1, 2, 3]"),
        (["run", "--until-decided", "--seeds", "1", "2"], "", "[1, 2, 3]"),
        (["run", "--until-decided"], "practical_difference: 0\n", "[1, 2, 3]"),
        (["run"], "practical_difference: -0.01\n", "[1, 2, 3]"),
        (["run"], "practical_difference: lots\n", "[1, 2, 3]"),
        (["plan"], "", "[1, 2, 3]"),  # nothing recorded
        (["plan", "--delta", "0"], "", "[1, 2, 3]"),
        (["plan"], "practical_difference: 0\n", "[1, 2, 3]"),
    ],
)
def test_bad_input_exits_2_and_records_nothing(mlflow_store, tmp_path, data_dir, capsys, words, extra, seeds):
    path = tmp_path / "bad.yaml"
    seeds_line = f"seeds: {seeds}\n" if seeds else ""
    path.write_text(f"name: bad\n{BASE}grid: {{train.lr: [0.01, 0.1]}}\n{seeds_line}{extra}", encoding="utf-8")
    command = [words[0], str(path), *words[1:], *(_data(data_dir) + ["--no-progress"] if words[0] == "run" else [])]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "error" in err
    if extra:
        assert "bad.yaml:" in err and "practical_difference: expected a number of nats > 0" in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "results").exists()


def test_practical_difference_is_a_report_setting_in_no_runs_hash(tmp_path):
    from harness.spec.expansion import expand
    from harness.spec.parsing import load_spec
    from harness.spec.problems import SpecError

    plain = load_spec(_spec(tmp_path, "same", "{train.lr: [0.01, 0.1]}"))
    wide_path = _spec(tmp_path, "same", "{train.lr: [0.01, 0.1]}", extra="practical_difference: 5e-2\n")
    wide = load_spec(wide_path)
    assert (plain.practical_difference, wide.practical_difference) == (0.01, 0.05)  # 5e-2: YAML 1.1 reads a string
    assert [v.config.config_hash() for v in expand(plain)] == [v.config.config_hash() for v in expand(wide)]
    wide_path.write_text(wide_path.read_text().replace("5e-2", "true"), encoding="utf-8")
    with pytest.raises(SpecError) as caught:
        load_spec(wide_path)
    (line,) = caught.value.problems
    # line 9, after "practical_difference: " (22 characters)
    assert line.startswith(f"{wide_path}:9:23: practical_difference: expected a number of nats > 0")


def test_the_plans_wall_time_counts_a_stacked_seed_as_its_share_of_the_stack(tmp_path):
    from harness.report.tables import report_plan
    from harness.spec.parsing import load_spec

    spec = load_spec(_spec(tmp_path, "times", "{train.lr: [0.01, 0.1]}", seeds="[1, 2, 3]"))
    # Setting a trained alone (10, 12 and 14 s: 12 s a seed); setting b as one stack of 3 seeds, each run recording
    # the stack's 45 s (15 s a seed).
    frame = pd.DataFrame(
        {
            "setting": ["a"] * 3 + ["b"] * 3,
            "status": ["FINISHED"] * 6,
            "train_time_s": [10.0, 12.0, 14.0, 45.0, 45.0, 45.0],
            "stacked_seeds": [1, 1, 1, 3, 3, 3],
        }
    )
    effects = pd.DataFrame(
        {
            "metric": ["final_val_loss"],
            "kind": ["treatment"],
            "n_pairs": [3],
            "n_seeds": [3],
            "mean_difference": [-0.1],
            # Stein: (t_0.9875,2 * 0.01 / 0.005)^2 = (6.2053 * 2)^2 = 154.02, so 155 seeds (t from the closed form):
            # within reach but over the cap, so the plan is the cap, 5 seeds, 2 more per setting
            "std": [0.01],
        }
    )
    assert math.ceil((_t2(1 - 0.05 / 2 / 2) * 0.01 / 0.005) ** 2) == 155
    found = report_plan(frame, effects, spec, None, [1, 2, 3], 0.01, 5)
    assert found.plan.seeds == 5 and found.seeds == [1, 2, 3, 4, 5] and found.plan.needed == (155,)
    assert found.seconds == pytest.approx((12 + 15) * 2)  # not (12 + 45) * 2


def test_a_two_seed_spec_gets_the_pilot_to_run_not_a_plan(mlflow_store, tmp_path, data_dir, capsys):
    # The case: a 2-seed spec of one's own was told "--max-seeds 6282 (12560 more runs, about 86.0 h)".
    # Batch 8 vs 9 at 20 steps: a difference of noise, undecided from 2 seeds (and δ too small for equivalence).
    spec = _spec(
        tmp_path, "two-seeds", "{train.batch_size: [8, 9]}", seeds="[1, 2]", extra="practical_difference: 1e-6\n"
    )
    assert main(["run", str(spec), *_data(data_dir), "--no-progress"]) == 0
    text = Path("results/two-seeds/report.md").read_text(encoding="utf-8")
    found = text[text.index("## What the sweep found") : text.index("## Effects")]
    assert "No seed plan from 2 seeds per variant: a plan is built on the spread of a pilot of 3 seeds" in found
    assert "Run the pilot first (2 more runs, about" in found  # seed 3 of the 2 settings
    assert "    harness run two-seeds.yaml --seeds 1 2 3\n" in found
    assert "--max-seeds" not in found and "seeds needed" not in found.lower()
    effects = pd.read_csv("results/two-seeds/effects.csv")
    assert effects["seeds_needed"].isna().all()
    capsys.readouterr()
    assert main(["plan", str(spec)]) == 0
    printed = capsys.readouterr().out
    assert (
        "No seed plan from 2 seeds per variant" in printed and "  harness run two-seeds.yaml --seeds 1 2 3" in printed
    )
