"""--jobs N into one SQLite store: every run and every metric point arrives, none twice.

SQLite lets one writer in at a time; the others get "database is locked", which ``retrying`` absorbs.
The count is exact: each run must hold what train.py's schedule says it logged.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter

import pytest
from conftest import EXPERIMENTS
from mlflow.tracking import MlflowClient
from subprocesses import harness_env

from harness.spec.expansion import expand, with_seeds
from harness.spec.parsing import load_spec
from harness.sweep import longest_first, plan_units, preflight

# 200 steps with an evaluation every 5 (the overrides below): 41 points per loss curve (steps 0, 5, ..., 200),
# one batch loss per step, and each end-of-run number once, at step 0 (as MLflow logs a stepless metric).
EVALS = list(range(0, 201, 5))
SUMMARIES = (
    "train_loss",
    "val_loss",
    "train_bpc",
    "val_bpc",
    "chars_per_token",
    "bigram_floor_bpc",
    "bigram_floor",
    "excess_loss",
    "loss_noise",
    "eval_tokens",
    "train_time_s",
    "steps_per_s",
    "tokens_per_s",
)
EXPECTED = {
    "loss/train": EVALS,
    "loss/val": EVALS,
    "loss/train_bpc": EVALS,
    "loss/val_bpc": EVALS,
    "loss/batch": list(range(1, 201)),
    **{f"summary/{name}": [0] for name in SUMMARIES},
}
PER_RUN = 4 * 41 + 200 + 13


@pytest.mark.slow
def test_four_workers_into_sqlite_lose_no_run_and_no_point(tmp_path, data_dir):
    overrides = {"train.steps": 200, "train.eval_interval": 5, "sample.max_new_tokens": 10}
    spec = EXPERIMENTS / "smoke.yaml"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = harness_env(uri, data_dir)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "run",
            str(spec),
            *(f"{k}={v}" for k, v in overrides.items()),
            "--jobs",
            "4",
            "--no-progress",
            "--results-dir",
            str(tmp_path / "results"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    variants = {v.config.config_hash(): v for v in expand(load_spec(spec), overrides)}
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if "config_hash" in r.data.tags]
    assert len(runs) == len(variants) + 1, "8 variant runs and their parent"
    assert sorted(r.data.tags["config_hash"] for r in children) == sorted(variants)
    assert all(r.info.status == "FINISHED" for r in runs)

    expected_total = stored_total = 0
    for run in children:
        logged = {key for key in run.data.metrics if not key.startswith("system/")}  # system metrics: by time
        assert logged == set(EXPECTED), run.data.tags["variant"]
        for key, steps in EXPECTED.items():
            got = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert not [s for s, n in Counter(got).items() if n > 1], f"{key} logged twice"
            assert sorted(got) == steps, f"{run.data.tags['variant']}: {key}"
            expected_total += len(steps)
            stored_total += len(got)
    assert stored_total == expected_total == 8 * PER_RUN  # 3,016 points, 0 lost


WRITER = textwrap.dedent("""
    import sys
    from mlflow.tracking import MlflowClient
    from harness.tracking import BufferedMetrics, retrying
    uri, experiment_id, worker = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = MlflowClient(uri)
    run_id = retrying(lambda: client.create_run(experiment_id, run_name=f"writer-{worker}")).info.run_id
    metrics = BufferedMetrics(client, run_id)
    for step in range(600):
        metrics.log("x", step * 0.5, step)
        metrics.log("y", -step, step)
        if step % 4 == 3:  # many small transactions: as much lock contention as 4 processes can make
            metrics.flush()
    metrics.flush()
    retrying(lambda: client.set_terminated(run_id))
    print(run_id)
""")


@pytest.mark.slow
def test_four_raw_writers_with_small_batches_lose_nothing(tmp_path):
    """The retry on 'database is locked' under 4 x 150 concurrent small commits."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("writers")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, uri, experiment_id, str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for i in range(4)
    ]
    run_ids = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        run_ids.append(out.strip().splitlines()[-1])
    for run_id in run_ids:
        assert client.get_run(run_id).info.status == "FINISHED"
        for key in ("x", "y"):
            steps = [m.step for m in client.get_metric_history(run_id, key)]
            assert sorted(steps) == list(range(600)), f"{run_id} {key}"


def test_retrying_waits_out_a_locked_database_and_raises_anything_else(monkeypatch):
    """SQLite's own busy wait (20 s in MLflow) covers most contention; past it, ``retrying`` tries again."""
    from harness.tracking import store as tracking

    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "stored"

    assert tracking.retrying(flaky) == "stored" and len(calls) == 3

    def broken():
        calls.append(1)
        raise ValueError("no such run")

    calls.clear()
    with pytest.raises(ValueError):
        tracking.retrying(broken)
    assert len(calls) == 1, "only a lost lock race is retried"


def test_with_jobs_the_units_that_take_longest_start_first(data_dir):
    """Measured on this 2-core CPU (results/seed-ablations/overrides-217b9bd5/runs.csv, 50,000 steps): a Korean FFN
    run trains 2,353-2,751 s, an English bigram 33-38 s; the first must start first, the second last."""
    variants = expand(with_seeds(load_spec(EXPERIMENTS / "seed.yaml"), [1337, 1338]), {}, data_dir)
    order = longest_first(plan_units(variants), preflight(variants, data_dir))
    assert len(order) == 16  # CPU: seeds are not stacked by default
    runs = [(unit[0].config.model.kind, unit[0].config.data.dataset) for unit in order]
    assert runs[:4] == [("ffn", "korean-chatbot")] * 4
    assert runs[-4:] == [("bigram", "tinyshakespeare")] * 4
