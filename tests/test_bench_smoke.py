"""benchmarks/step_speed.py runs end to end at a few steps and writes the CSVs it promises."""

import importlib.util
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.data.corpora import DataConfig, DataError, load_corpus

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "step_speed.py"
STEP_COLUMNS = [
    "corpus",
    "model",
    "batch_size",
    "steps",
    "ref_steps_per_s",
    "harness_steps_per_s",
    "speedup",
    "max_loss_diff",
    "final_loss_diff",
    "max_loss_diff_fp64",
    "device",
    "threads",
    "torch_version",
]
NUMBERS = [
    "ref_steps_per_s",
    "harness_steps_per_s",
    "speedup",
    "max_loss_diff",
    "final_loss_diff",
    "max_loss_diff_fp64",
]


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCH.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("step_speed")


@pytest.fixture
def shakespeare_dir(data_dir):
    """conftest's ``data_dir``, once it is known to hold the corpus (skip where it cannot be had)."""
    try:
        load_corpus(DataConfig(dataset="tinyshakespeare"), data_dir)
    except DataError as exc:
        pytest.skip(f"tinyshakespeare not available (set HARNESS_DATA_DIR): {exc}")
    return data_dir


def run_bench(bench, data_dir, tmp_path, *extra):
    argv = [
        "--steps",
        "4",
        "--warmup",
        "1",
        "--fp64-steps",
        "3",
        "--rows",
        "tinyshakespeare,bigram,32",
        "--out",
        str(tmp_path / "step_speed.csv"),
        *extra,
    ]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    return bench.main(argv)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_step_speed_csv(bench, shakespeare_dir, tmp_path, precision):
    run_bench(bench, shakespeare_dir, tmp_path, "--skip-logging", "--precision", precision)
    table = pd.read_csv(tmp_path / "step_speed.csv")
    assert not (tmp_path / "logging_overhead.csv").exists()
    assert set(STEP_COLUMNS) <= set(table.columns)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row.corpus, row.model, row.batch_size, row.steps) == ("tinyshakespeare", "bigram", 32, 4)
    assert all(math.isfinite(row[c]) for c in NUMBERS)
    assert row.ref_steps_per_s > 0 and row.harness_steps_per_s > 0
    # Same weights, same windows: the losses may differ only by rounding.
    assert row.max_loss_diff < 1e-4 and row.max_loss_diff_fp64 < 1e-9
    if precision == "bf16":
        assert row.final_loss_diff_vs_fp32 < 1e-2


@pytest.mark.slow  # a fresh MLflow SQLite store and 200 single log_metric calls: ~10 s
def test_logging_overhead_csv(bench, shakespeare_dir, tmp_path):
    run_bench(bench, shakespeare_dir, tmp_path, "--log-steps", "20", "--log-repeats", "1", "--fp64-steps", "0")
    overhead = pd.read_csv(tmp_path / "logging_overhead.csv")
    row = overhead.iloc[0]
    for column in (
        "wall_s_tracking_off",
        "wall_s_tracking_on",
        "overhead_pct",
        "log_metric_ms_per_call",
        "log_batch_ms_per_point",
    ):
        assert math.isfinite(row[column]), column
    assert row.metric_points > 20  # every batch loss plus the evaluations
    assert math.isnan(pd.read_csv(tmp_path / "step_speed.csv").iloc[0].max_loss_diff_fp64)  # --fp64-steps 0 skips it


def test_rows_filter(bench):
    assert [r.name for r in bench.select_rows(["korean-chatbot,ffn"])] == [
        "korean-chatbot/ffn/B32",
        "korean-chatbot/ffn/B128",
    ]
    assert len(bench.select_rows(None)) == 8
    with pytest.raises(SystemExit):
        bench.select_rows(["korean,ffn"])


def test_gpt_bench_runs_both_loops_from_the_same_weights_and_agrees(shakespeare_dir, tmp_path):
    """benchmarks/gpt_speed.py: the lecture's modules and the harness GPT, same weights and batches, fp32."""
    out = tmp_path / "gpt_speed.csv"
    load_benchmark("gpt_speed").main(
        [
            "--steps",
            "8",
            "--warmup",
            "2",
            "--compare-steps",
            "8",
            "--rows",
            "ladder",
            "--out",
            str(out),
            *(["--data-dir", str(shakespeare_dir)] if shakespeare_dir else []),
        ]
    )
    (row,) = pd.read_csv(out).to_dict("records")
    assert row["row"] == "ladder" and row["params"] == 42_369  # the lecture's model at 0016836 has 42,369 (V = 65)
    assert row["max_loss_diff"] < 1e-4
    assert row["plain_steps_per_s"] > 0 and row["harness_steps_per_s"] > 0


def _run_grid_benchmark(data_dir, out, kind: str, *args: str) -> pd.DataFrame:
    """grid_gpu.py on the CPU, one English variant of ``kind`` (batch 32) x seeds 1 and 2; the table it wrote."""
    argv = [
        "--device",
        "cpu",
        "--seeds",
        "1",
        "2",
        "--out",
        str(out),
        *args,
        "--set",
        f"model.kind={kind}",
        "train.batch_size=32",
        "data.dataset=tinyshakespeare",
    ]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    load_benchmark("grid_gpu").main(argv)
    return pd.read_csv(out)


GRID_COLUMNS = [
    "lever",
    "measures",
    "spec",
    "seeds",
    "variants",
    "steps",
    "units_at_once",
    "wall_s",
    "wall_50k_s",
    "wall_50k_is",
    "error",
    "runs_cuda_graphs",
    "max_loss_diff_threads_vs_one_at_a_time",
    "max_loss_diff_vs_cpu",
    "max_loss_diff_graphs_vs_cpu",
    "max_loss_diff_first_10_steps",
    "max_loss_diff_cpu_1ulp",
    "syncs_in_checked_steps",
    "syncs_in_checked_graph_steps",
    "check_steps",
    "overrides",
    "device",
    "gpu",
    "torch_version",
]
CHECK_COLUMNS = [
    "variant",
    "seed",
    "steps",
    "max_diff",
    "max_diff_first_10",
    "cpu_1ulp",
    "cpu_1ulp_first_10",
    "spec",
    "path",
    "device",
    "gpu",
    "torch_version",
]


@pytest.mark.slow
def test_grid_benchmark_times_every_lever_and_a_harness_run(shakespeare_dir, tmp_path):
    """benchmarks/grid_gpu.py on a CPU, shrunk to one variant x 2 seeds: every row it promises, with times > 0."""
    out = tmp_path / "grid.csv"
    table = _run_grid_benchmark(
        shakespeare_dir,
        out,
        "ffn",
        "--steps",
        "10",
        "--run-steps",
        "10",
        "--check-steps",
        "30",
        "--jobs",
        "2",
        "--executors",
        "local",
        "threads",
        "--levers",
        "baseline,sync-free,sync-free+stacked,sync-free+threads",
        "--threads",
        "2",
    )
    assert list(table.columns) == GRID_COLUMNS
    assert list(table.lever) == [
        "baseline",
        "sync-free",
        "sync-free+stacked",
        "sync-free+threads",
        "harness-run-jobs-2",
        "harness-run-threads-jobs-2",
    ]
    # the two seeds in two threads at once: the losses of the sync-free row, one run after the other, exactly
    assert table.max_loss_diff_threads_vs_one_at_a_time.tolist()[3] == 0.0
    assert table.max_loss_diff_threads_vs_one_at_a_time.drop(index=3).isna().all()
    assert table.units_at_once.tolist() == [1, 1, 1, 2, 2, 2]  # --threads 2 for the lever, --jobs 2 end to end
    assert (table.variants == 2).all() and (table.wall_s > 0).all() and table.error.isna().all()
    assert (table.wall_50k_is == "projected from 10 steps").all()
    # the stacked FFN seeds against separate runs (here both on the CPU): the same path, so within fp32 rounding
    assert (table.check_steps == 30).all() and (table.max_loss_diff_vs_cpu <= 1e-5).all()
    # wall_s is rounded to 0.01 s, and 50,000 / 10 steps scales that rounding by 5,000
    assert ((table.wall_50k_s - table.wall_s * 5000).abs() <= 0.005 * 5000 + 0.05).all()
    # per variant: the gap, and how far the CPU run moves from itself when its initial weights move one ulp
    check = pd.read_csv(tmp_path / "grid_check.csv")
    assert list(check.columns) == CHECK_COLUMNS and len(check) == 2 and set(check.seed) == {1, 2}
    assert (check.cpu_1ulp > 0).all() and (check.cpu_1ulp_first_10 <= check.cpu_1ulp).all()


def test_a_lever_that_fails_records_why_and_the_next_one_still_runs(shakespeare_dir, tmp_path):
    """A device run has one slot: one broken lever must not cost the other rows (the CSV is written per row).
    On a CPU the graphs lever cannot run, which makes it the failing row here."""
    out = tmp_path / "grid.csv"
    table = _run_grid_benchmark(
        shakespeare_dir,
        out,
        "bigram",
        "--steps",
        "5",
        "--run-steps",
        "0",
        "--check-steps",
        "0",
        "--levers",
        "graphs+stacked,sync-free",
    )
    assert list(table.lever) == ["graphs+stacked", "sync-free"]
    assert table.error[0] == "RuntimeError: CUDA graphs need a CUDA device, not cpu" and math.isnan(table.wall_s[0])
    assert pd.isna(table.error[1]) and table.wall_s[1] > 0
    assert table.max_loss_diff_graphs_vs_cpu.isna().all()
    with pytest.raises(SystemExit):
        load_benchmark("grid_gpu").main(["--levers", "graph", "--out", str(out)])


def test_seed_stacking_bench_times_one_seed_alone_and_a_native_stack(shakespeare_dir, tmp_path):
    """benchmarks/seed_stacking.py: S = 1 is a lone Trainer, S > 1 the native GPT stack, one row per S."""
    out = tmp_path / "seed_stacking.csv"
    import harness.models.attention as attention

    short_context = attention.SHORT_CONTEXT
    load_benchmark("seed_stacking").main(
        ["--steps", "3", "--warmup", "1", "--seeds", "1", "2", "--rows", "ladder layer-norm rung"]
        + ["--attention", "auto", "sdpa", "--out", str(out)]
    )
    rows = pd.read_csv(out).to_dict("records")
    assert [(r["seeds"], r["path"], r["attention"]) for r in rows] == [
        (1, "alone", "auto"),
        (1, "alone", "sdpa"),
        (2, "native", "auto"),
        (2, "native", "sdpa"),
    ]
    assert rows[0]["speedup"] == rows[1]["speedup"] == 1.0 and all(r["seed_steps_per_s"] > 0 for r in rows)
    assert attention.SHORT_CONTEXT == short_context  # put back after the sdpa turns
    assert (rows[0]["n_layer"], rows[0]["n_embd"], rows[0]["context_length"], rows[0]["batch_size"]) == (3, 32, 8, 32)


def test_attention_bound_times_four_settings_and_puts_attention_back(shakespeare_dir, tmp_path):
    """benchmarks/attention_bound.py: one row per setting, the lecture's at ratio 1; afterwards the model's
    attention is the real one again (the bound replaces it only while it is timed)."""
    import harness.models.attention as attention
    import harness.models.gpt as gpt

    before = (gpt.causal_attention, attention.SHORT_CONTEXT)
    out = tmp_path / "attention_bound.csv"
    load_benchmark("attention_bound").main(["--rounds", "1", "--chunk", "2", "--out", str(out)])
    table = pd.read_csv(out)
    assert list(table.setting) == ["lecture", "harness", "harness, SDPA forced", "harness, no attention (bound)"]
    assert table.ratio_to_lecture[0] == 1.0 and (table.ms_per_step > 0).all()
    assert (gpt.causal_attention, attention.SHORT_CONTEXT) == before


@pytest.mark.slow  # two `python -m harness validate` processes: ~12 s here
def test_spec_hostile_bench_times_validate_of_a_hostile_input_against_the_baseline(shakespeare_dir, tmp_path):
    bench = load_benchmark("spec_hostile")
    out = tmp_path / "spec_hostile.csv"
    bench.main(["--repeats", "1", "--rows", "alias-bomb", "--data-dir", str(shakespeare_dir), "--out", str(out)])
    table = pd.read_csv(out).set_index("input")
    assert list(table.index) == ["baseline", "alias-bomb"]
    assert list(table["exit_code"]) == [0, 2]
    assert table.loc["baseline", "cpu_above_baseline_s"] == 0 and table.loc["baseline", "peak_rss_mb"] > 0
    assert table.loc["alias-bomb", "message"].startswith("alias-bomb.yaml:7:8: the spec grows past 100,000 values")
    assert set(bench.inputs()) == {
        "baseline",
        "alias-bomb",
        "grid-10^8",
        "grid-10000",
        "file-2MB",
        "values-1MiB",
        "lr-.inf",
        "override-lr=.inf",
    }
