"""Tuning (harness/tuning.py, harness/report/tuning.py): the choice on hand-made tables, LR sensitivity and the
optimism against hand computations, the tune section's bad inputs, and shrunk specs end to end (grid with an
extension at the edge, a diverged run, TPE), each rerun training nothing."""

from __future__ import annotations

import math
import re
import textwrap

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from harness.cli import main
from harness.report import tuning
from harness.spec.expansion import expand
from harness.spec.parsing import load_spec


def _runs(rows) -> pd.DataFrame:
    """Tuning runs from (setting, lr, seed, value, diverged, status) tuples."""
    return pd.DataFrame(rows, columns=["setting", "train.lr", "seed", "value", "diverged", "status"])


def _chosen(points: pd.DataFrame, setting: str) -> pd.Series:
    return points[(points["setting"] == setting) & points["chosen"]].iloc[0]


# -- the choice ------------------------------------------------------------------------------------------------


def test_the_choice_minimises_the_mean_over_tuning_seeds():
    # 1e-3: seeds 2.0 and 3.0 (mean 2.5); 3e-3: 2.4 and 2.7 (mean 2.55): the best single run (2.0) does not choose
    runs = _runs(
        [
            ("a", 1e-3, 1, 2.0, False, "FINISHED"),
            ("a", 1e-3, 2, 3.0, False, "FINISHED"),
            ("a", 3e-3, 1, 2.4, False, "FINISHED"),
            ("a", 3e-3, 2, 2.7, False, "FINISHED"),
            ("a", 1e-2, 1, 2.9, False, "FINISHED"),
            ("a", 1e-2, 2, 2.9, False, "FINISHED"),
        ]
    )
    points = tuning.choose(tuning.point_values(runs, ["train.lr"]), ["train.lr"])
    best = _chosen(points, "a")
    assert best["train.lr"] == 1e-3 and best["mean"] == pytest.approx(2.5)
    assert best["at_edge"] == "train.lr low"  # the smallest value tried
    assert points["chosen"].sum() == 1
    assert tuning.choices(points, ["train.lr"]) == {"a": {"train.lr": 1e-3}}


def test_a_tie_goes_to_the_smaller_value_and_an_interior_choice_is_not_at_the_edge():
    runs = _runs(
        [
            ("a", 1e-2, 1, 2.2, False, "FINISHED"),
            ("a", 3e-3, 1, 2.2, False, "FINISHED"),
            ("a", 1e-3, 1, 2.5, False, "FINISHED"),
            ("a", 3e-2, 1, 2.6, False, "FINISHED"),
        ]
    )
    best = _chosen(tuning.choose(tuning.point_values(runs, ["train.lr"]), ["train.lr"]), "a")
    assert best["train.lr"] == 3e-3
    assert best["at_edge"] == ""


def test_a_diverged_seed_makes_its_point_the_worst():
    # 1e-2's other seed is the best run of all, but one of its seeds diverged
    runs = _runs(
        [
            ("a", 1e-3, 1, 2.6, False, "FINISHED"),
            ("a", 1e-3, 2, 2.6, False, "FINISHED"),
            ("a", 1e-2, 1, 1.9, False, "FINISHED"),
            ("a", 1e-2, 2, math.nan, True, "FINISHED"),
            ("a", 3e-3, 1, 2.8, False, "FINISHED"),
            ("a", 3e-3, 2, 2.8, False, "FINISHED"),
        ]
    )
    points = tuning.choose(tuning.point_values(runs, ["train.lr"]), ["train.lr"])
    gone = points[points["train.lr"] == 1e-2].iloc[0]
    assert gone["diverged"] and gone["mean"] == math.inf
    assert _chosen(points, "a")["train.lr"] == 1e-3


def test_no_choice_while_a_point_lacks_a_finished_seed():
    runs = _runs(
        [
            ("a", 1e-3, 1, 2.6, False, "FINISHED"),
            ("a", 3e-3, 1, math.nan, False, "MISSING"),
            ("b", 1e-3, 1, 2.6, False, "FINISHED"),
            ("b", 3e-3, 1, 2.5, False, "FINISHED"),
        ]
    )
    points = tuning.choose(tuning.point_values(runs, ["train.lr"]), ["train.lr"])
    assert tuning.choices(points, ["train.lr"]) == {"b": {"train.lr": 3e-3}}
    assert tuning.edges_to_extend(points, ["train.lr"]) == {"b": [("train.lr", "high")]}


@pytest.mark.parametrize(
    "values, side, expected",
    [
        ([1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2], "high", 1e-1),  # the half-decade grid continues 1e-1
        ([1e-3, 3e-3, 1e-2, 3e-2, 1e-1], "high", 3e-1),
        ([1e-4, 3e-4, 1e-3], "low", 3e-5),
        ([1e-3, 3e-3], "high", 9e-3),  # two values: their ratio
        ([16, 32, 64], "high", 128),
        ([0.0, 0.1, 0.2], "high", 0.3),  # a value <= 0: steps by differences
        ([1, 2], "low", None),  # 0.5 rounds to 0 for an integer: no step
    ],
)
def test_the_extension_continues_the_list_at_its_own_ratio(values, side, expected):
    found = tuning.extension(values, side)
    assert found == (pytest.approx(expected) if expected is not None else None)


# -- LR sensitivity and the optimism ------------------------------------------------------------------------------


def test_lr_sensitivity_against_a_hand_computation():
    # l0 = 4.2. Per lr, the mean over seeds of min(loss, l0), a diverged seed at l0:
    # 1e-3: (2.5 + 2.7) / 2 = 2.6; 3e-3: (2.2 + 2.4) / 2 = 2.3; 1e-2: (4.2 + 4.2) / 2 = 4.2 (diverged, and 5.0 > l0)
    # best 2.3; mean excess (0.3 + 0 + 1.9) / 3 = 0.7333...
    losses = {1e-3: [2.5, 2.7], 3e-3: [2.2, 2.4], 1e-2: [math.inf, 5.0]}
    assert tuning.lr_sensitivity(losses, 4.2) == pytest.approx(2.2 / 3)
    assert tuning.lr_sensitivity({1e-3: [2.0], 3e-3: [2.0]}, 4.2) == 0.0  # flat: nothing to lose


def test_the_optimism_is_welchs_interval_of_tuning_minus_fresh():
    tuning_values, fresh = [2.0, 2.2, 2.1], [2.3, 2.5, 2.4, 2.6]
    found = tuning.optimism(tuning_values, fresh)
    assert found.difference == pytest.approx(2.1 - 2.45)
    expected = stats.ttest_ind(tuning_values, fresh, equal_var=False).confidence_interval(0.95)
    assert (found.low, found.high) == (pytest.approx(expected.low), pytest.approx(expected.high))
    assert math.isnan(tuning.optimism([2.0], fresh).low)  # one tuning seed: no interval


# -- bad input ----------------------------------------------------------------------------------------------


BASE = """\
name: bad-tune
base:
  data: {dataset: tinyshakespeare}
  model: {kind: bigram}
grid:
  train.batch_size: [16, 32]
seeds: [1, 2]
"""


@pytest.mark.parametrize(
    "tune, line, expected",
    [
        ("tune:\n  train.lrr: [1.0e-3]\n  seeds: [7]\n", 9, "unknown key 'train.lrr'.*did you mean 'lr'"),
        ("tune:\n  train.lr: 1.0e-3\n  seeds: [7]\n", 9, "expected a non-empty list of values"),
        ("tune:\n  train.batch_size: [8]\n  seeds: [7]\n", 9, "also a grid or zip axis"),
        ("tune:\n  train.lr: [1.0e-3]\n  seeds: [7, 2]\n", 10, "seed 2 is also one of the spec's `seeds`"),
        ("tune:\n  train.lr: [1.0e-3]\n  seeds: [7]\n  metric: accuracy\n", 11, "unknown metric 'accuracy'"),
        ("tune:\n  train.lr: [1.0e-3]\n  seeds: [7]\n  search: tpe\n", 8, "search: tpe needs `trials`"),
        (
            "tune:\n  train.lr: {low: 1.0e-3, high: 1.0e-1}\n  seeds: [7]\n  search: tpe\n  trials: 0\n",
            12,
            "tune.trials: expected a whole number from 1 to 1000",
        ),
        (
            "tune:\n  train.lr: {low: 1.0e-1, high: 1.0e-3}\n  seeds: [7]\n  search: tpe\n  trials: 2\n",
            9,
            "low 0.1 must be below high 0.001",
        ),
        (
            "tune:\n  train.lr: {low: 0.0, high: 1.0e-3, log: true}\n  seeds: [7]\n  search: tpe\n  trials: 2\n",
            9,
            "a log range needs low > 0",
        ),
        ("tune:\n  train.lr: [1.0e-3]\n  seeds: [7]\n  extend: -1\n", 11, "tune.extend: expected a whole number"),
        ("tune:\n  train.lr: [.inf]\n  seeds: [7]\n", 9, "expected a finite number"),
        ("tune:\n  train.seed: [1, 2]\n  seeds: [7]\n", 9, "the seed is what tuning averages over"),
    ],
)
def test_a_bad_tune_section_is_named_at_its_line_and_nothing_trains(tmp_path, capsys, tune, line, expected):
    path = tmp_path / "spec.yaml"
    path.write_text(BASE + tune, encoding="utf-8")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"{re.escape(str(path))}:{line}:\d+: .*{expected}", err), err
    assert "Traceback" not in err
    assert not (tmp_path / "mlflow.db").exists()


def test_tune_without_the_specs_own_seeds_is_refused(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(BASE.replace("seeds: [1, 2]\n", "") + "tune:\n  train.lr: [1.0e-3]\n  seeds: [7]\n")
    assert main(["validate", str(path)]) == 2
    assert f"{path}:7:" in capsys.readouterr().err  # the tune section's line


def test_seeds_from_the_command_line_must_be_fresh_too(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(BASE + "tune:\n  train.lr: [1.0e-3]\n  seeds: [7, 8]\n")
    assert main(["validate", str(path), "--seeds", "3", "8"]) == 2
    assert "--seeds 8: also tuning seeds" in capsys.readouterr().err


def test_a_tune_section_changes_no_variants_identity(tmp_path):
    plain = tmp_path / "plain.yaml"
    plain.write_text(BASE)
    tuned = tmp_path / "tuned.yaml"
    tuned.write_text(BASE + "tune:\n  train.lr: [1.0e-3, 3.0e-3]\n  seeds: [7, 8]\n  compare_untuned: true\n")
    hashes = [[v.config.config_hash() for v in expand(load_spec(p))] for p in (plain, tuned)]
    assert hashes[0] == hashes[1]


# -- end to end ---------------------------------------------------------------------------------------------


SHRUNK = """\
name: tuned-small
base:
  data: {{dataset: tinyshakespeare}}
  model: {{kind: bigram, hidden_sizes: [16]}}
  train: {{steps: 30, eval_interval: 10, device: cpu, context_length: 8}}
  sample: {{max_new_tokens: 10}}
grid:
  model.kind: [bigram, ffn]
seeds: [1, 2]
tune:
{tune}
"""


def _sweep_runs(uri: str, name: str) -> pd.DataFrame:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return pd.DataFrame(
        [
            {
                "run_id": r.info.run_id,
                "status": r.info.status,
                "phase": r.data.tags.get("phase"),
                "sweep": r.data.tags.get("harness.sweep"),
                "diverged": r.data.tags.get("diverged"),
                "lr": r.data.params.get("train.lr"),
                "seed": r.data.params.get("train.seed"),
                "val": r.data.metrics.get("summary/val_loss"),
            }
            for r in runs
        ]
    )


@pytest.mark.slow
def test_a_grid_tunes_extends_at_the_edge_decides_on_fresh_seeds_and_a_rerun_trains_nothing(
    tmp_path, mlflow_store, data_dir, capsys
):
    spec = tmp_path / "tuned.yaml"
    tune = "  train.lr: [1.0e-3, 3.0e-3]\n  seeds: [7, 8]\n  extend: 1\n  compare_untuned: true"
    spec.write_text(SHRUNK.format(tune=tune), encoding="utf-8")
    args = ["run", str(spec), "--no-progress", "--data-dir", str(data_dir)]
    assert main(args) == 0
    out = capsys.readouterr().out
    # 30 steps: the larger rate is better for both, so each extends one step at the list's ratio (3): 9e-3
    assert "chose train.lr at the high end; extending it to 0.009" in out
    runs = _sweep_runs(mlflow_store, "tuned-small")
    variants = runs[runs["sweep"].isna()]
    tuned = variants[variants["phase"] == "tune"]
    assert len(tuned) == 2 * 3 * 2  # 2 variants x (2 points + 1 extension) x 2 tuning seeds
    assert set(tuned["seed"]) == {"7", "8"} and set(tuned["lr"].astype(float)) == {1e-3, 3e-3, 9e-3}
    decided = variants[variants["phase"] == "decide"]
    assert set(decided["seed"]) == {"1", "2"}
    # phase 2 at the choice (9e-3), and compare_untuned at the spec's own rate (1e-3, the default)
    assert sorted(decided["lr"].astype(float)) == [1e-3] * 4 + [9e-3] * 4

    folder = tmp_path / "results" / "tuned-small"
    table = pd.read_csv(folder / "tuning.csv")
    assert len(table) == 6 and table["chosen"].sum() == 2
    assert set(table.loc[table["chosen"], "train.lr"]) == {9e-3}
    assert set(table.loc[table["chosen"], "at_edge"]) == {"train.lr high"}
    report = (folder / "report.md").read_text(encoding="utf-8")
    assert "## Tuning" in report and "at the edge of the grid (train.lr high)" in report
    assert "3 x 2 x 30" in report  # points x tuning seeds x steps
    assert (folder / "effects_untuned.csv").exists() and (folder / "tuning.png").exists()
    # the verdicts come from phase 2 alone: runs.csv holds the decide runs at the chosen rate, seeds 1 and 2
    rows = pd.read_csv(folder / "runs.csv")
    assert set(rows["run_id"]) <= set(decided.loc[decided["lr"].astype(float) == 9e-3, "run_id"])
    assert list(rows["train.lr"]) == [9e-3] * 4

    # A rerun trains nothing and starts no run but its own sweep runs (decide and untuned)
    before = set(variants["run_id"])
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "tune: 8 tuning runs (variant x point x tuning seed), 8 already FINISHED" in out
    assert "tune extend 1: 12 tuning runs (variant x point x tuning seed), 12 already FINISHED" in out
    after = _sweep_runs(mlflow_store, "tuned-small")
    assert set(after.loc[after["sweep"].isna(), "run_id"]) == before

    # Make the tuning runs look far better than the fresh ones: the verdicts and the summary must not move,
    # and the optimism must show it
    client = MlflowClient(mlflow_store)
    chosen = tuned[tuned["lr"].astype(float) == 9e-3]
    for run_id in chosen["run_id"]:
        client.log_metric(run_id, "summary/val_loss", 0.5, step=10**9)
    summary_before = pd.read_csv(folder / "summary.csv")
    assert main(["report", str(spec)]) == 0
    summary_after = pd.read_csv(folder / "summary.csv")
    pd.testing.assert_frame_equal(summary_before, summary_after)
    report = (folder / "report.md").read_text(encoding="utf-8")
    fresh = decided[decided["lr"].astype(float) == 9e-3]
    for kind in ("bigram", "ffn"):
        fresh_mean = rows.loc[rows["model.kind"] == kind, "final_val_loss"].mean()
        assert f"| kind={kind} | lr 0.009 |" in report
        assert f"{0.5 - fresh_mean:+.4f}" in report  # the optimism: 0.5 - the fresh seeds' mean
    assert len(fresh) == 4


@pytest.mark.slow
def test_a_diverged_tuning_run_is_a_result_and_the_sweep_goes_on(tmp_path, mlflow_store, data_dir, capsys):
    spec = tmp_path / "diverging.yaml"
    body = SHRUNK.format(tune="  train.lr: [1.0e-2, 1.0e+36]\n  seeds: [7]\n  extend: 0")
    body = body.replace("model.kind: [bigram, ffn]", "model.kind: [bigram]").replace(", hidden_sizes: [16]", "")
    spec.write_text(body.replace("seeds: [1, 2]", "seeds: [1]"), encoding="utf-8")
    assert main(["run", str(spec), "--no-progress", "--data-dir", str(data_dir)]) == 0
    runs = _sweep_runs(mlflow_store, "tuned-small")
    gone = runs[runs["diverged"] == "true"]
    assert len(gone) == 1 and gone.iloc[0]["status"] == "FINISHED" and float(gone.iloc[0]["lr"]) == 1e36
    table = pd.read_csv(tmp_path / "results" / "tuned-small" / "tuning.csv")
    assert table.set_index("train.lr").loc[1e36, "diverged"]
    assert table.loc[table["chosen"], "train.lr"].tolist() == [1e-2]


@pytest.mark.slow
def test_tpe_tunes_the_same_trials_for_every_variant_and_a_rerun_continues_the_same_search(
    tmp_path, mlflow_store, data_dir, capsys
):
    spec = tmp_path / "tpe.yaml"
    tune = "  train.lr: {low: 1.0e-3, high: 1.0e-1, log: true}\n  seeds: [7]\n  search: tpe\n  trials: 3"
    spec.write_text(SHRUNK.format(tune=tune).replace("seeds: [1, 2]", "seeds: [1]"), encoding="utf-8")
    args = ["run", str(spec), "--no-progress", "--data-dir", str(data_dir)]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.count("tuning runs (variant x point x tuning seed)") == 3
    table = pd.read_csv(tmp_path / "results" / "tuned-small" / "tuning.csv")
    assert sorted(table["trial"].unique()) == [1, 2, 3] and table["chosen"].sum() == 2
    for _, rows in table.groupby("variant"):
        best = rows.loc[rows["mean_final_val_loss"].idxmin(), "train.lr"]
        assert rows.loc[rows["chosen"], "train.lr"].item() == best
        assert all(1e-3 <= lr <= 1e-1 for lr in rows["train.lr"])
    runs = _sweep_runs(mlflow_store, "tuned-small")
    before = set(runs.loc[runs["sweep"].isna(), "run_id"])
    assert main(args) == 0
    second = capsys.readouterr().out
    # the seeded sampler, told the same recorded results, asks the same points: all found FINISHED
    assert second.count("2 tuning runs (variant x point x tuning seed), 2 already FINISHED") == 3
    after = _sweep_runs(mlflow_store, "tuned-small")
    assert set(after.loc[after["sweep"].isna(), "run_id"]) == before
    assert pd.read_csv(tmp_path / "results" / "tuned-small" / "tuning.csv").equals(table)


def test_the_committed_tuned_ladder_is_a_valid_tuned_spec():
    spec = load_spec("experiments/gpt-ladder-tuned.yaml")
    assert spec.tune is not None and spec.tune.compare_untuned
    assert not set(spec.tune.seeds) & set(spec.seeds)
    assert textwrap.dedent(spec.path.read_text()).count("Run: harness run experiments/gpt-ladder-tuned.yaml") == 1


def test_a_plan_for_a_tuned_spec_passes_over_the_tuning_seeds():
    from harness.report.tables import extend_seeds

    assert extend_seeds([1, 2], 6, avoid=[3, 5]) == [1, 2, 4, 6, 7, 8]
