"""--executor slurm on a real one-node SLURM (scripts/slurm.sh: munge, slurmctld, slurmd), logging to the
PostgreSQL-backed server of ``make server DB=postgres``.

A shrunk grid lands every variant FINISHED; SLURM's warning signal mid-run checkpoints and requeues, and the
requeued task ends its run where an uninterrupted run ends; a task killed with -9 fails its variant within a
bound and a rerun trains it; Ctrl-C of the driver cancels the array and closes the run KILLED.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import EXPERIMENTS
from mlflow.tracking import MlflowClient
from servers import postgres_missing
from subprocesses import harness_env

from harness.cli import main
from harness.spec.expansion import expand, parse_overrides
from harness.spec.parsing import load_spec
from harness.tracking.claims import OWNER_TAG, open_store
from harness.tracking.recorded import run_variant
from harness.tracking.store import experiment_id_for

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONF = Path("/tmp/harness-slurm/slurm.conf")  # where scripts/slurm.sh puts it (and .ci/run starts it)


def _slurm_conf() -> tuple[Path | None, str]:
    conf = Path(os.environ.get("SLURM_CONF") or DEFAULT_CONF)
    if not conf.is_file():
        return None, f"no SLURM cluster ({conf} missing): start one with sudo scripts/slurm.sh start"
    try:
        ping = subprocess.run(
            ["scontrol", "ping"],
            env={**os.environ, "SLURM_CONF": str(conf)},
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"SLURM's commands do not run here ({exc})"
    if "UP" not in ping.stdout:
        return None, f"SLURM's controller does not answer ({ping.stdout.strip()}): sudo scripts/slurm.sh start"
    return conf, ""


CONF, WHY_NOT = _slurm_conf()
needs_daemons = [
    pytest.mark.skipif(CONF is None, reason=WHY_NOT),
    pytest.mark.skipif(postgres_missing() is not None, reason=postgres_missing() or ""),
    pytest.mark.slow,
]


def _marked(test):
    for mark in needs_daemons:
        test = mark(test)
    return test


SPEC = """
    name: {name}
    base:
      data: {{dataset: tinyshakespeare}}
      model: {{kind: bigram}}
      train: {{steps: {steps}, eval_interval: 100, checkpoint_interval: {every}, device: cpu, threads: 1}}
      sample: {{max_new_tokens: 5}}
    grid:
      train.batch_size: [16]
"""


@pytest.fixture
def server(team_server):
    return team_server


@pytest.mark.parametrize("flags", [[], ["--slurm-cpus", "0"]])
def test_a_local_sqlite_store_or_a_bad_request_is_refused_before_any_run(flags, tmp_path, mlflow_store, capsys):
    pytest.importorskip("submitit")
    spec = tmp_path / "refused.yaml"
    spec.write_text(textwrap.dedent(SPEC.format(name="refused", steps=10, every=0)), encoding="utf-8")
    code = main(["run", str(spec), "--executor", "slurm", "--no-progress", *flags])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    if flags:
        assert "--slurm-cpus must be at least 1, got 0" in err, err
    else:
        assert f"the tracking store {mlflow_store} is a local file the nodes cannot share" in err, err
        assert "make server DB=postgres" in err and "--slurm-shared-store" in err, err
    client = MlflowClient(mlflow_store)
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()]), "nothing recorded"


def _env(server, data_dir) -> dict:
    return harness_env(
        server.uri,
        data_dir,
        SLURM_CONF=str(CONF),
        HARNESS_HEARTBEAT_S="1",
        HARNESS_STALE_AFTER_S="10",
        MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING="false",
    )


def _command(spec: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "harness",
        "run",
        str(spec),
        "--executor",
        "slurm",
        "--no-progress",
        "--slurm-folder",
        str(tmp_path / "slurm"),
        "--results-dir",
        str(tmp_path / "results"),
        *extra,
    ]


def _runs(uri: str, name: str) -> list:
    client = MlflowClient(uri)
    try:
        experiment = client.get_experiment_by_name(name)
        return client.search_runs([experiment.experiment_id]) if experiment else []
    except Exception:
        return []


def _children(uri: str, name: str) -> list:
    return [r for r in _runs(uri, name) if "config_hash" in r.data.tags]


def _wait_for(predicate, proc, out: Path, what: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while True:
        found = predicate()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended (exit {proc.returncode}) before {what}:\n{out.read_text()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{out.read_text()}"
        time.sleep(0.3)


def _start(command, tmp_path: Path, env: dict, name: str) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / f"{name}.out"
    with open(out, "w") as sink:
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT)
    return proc, out


def _array_id(out: Path) -> str | None:
    match = re.search(r"slurm: job array (\d+)", out.read_text())
    return match.group(1) if match else None


@_marked
def test_a_shrunk_grid_lands_every_variant_finished_in_the_postgres_server(server, tmp_path, data_dir):
    spec = EXPERIMENTS / "seed.yaml"
    # the English half of the grid: 4 tasks, two at a time (each task is an interpreter importing torch and MLflow)
    overrides = [
        "data.dataset=tinyshakespeare",
        "train.steps=20",
        "train.eval_interval=10",
        "sample.max_new_tokens=5",
        "train.device=cpu",
    ]
    proc = subprocess.run(
        _command(spec, tmp_path, *overrides, "--slurm-parallelism", "2"),
        cwd=tmp_path,
        env=_env(server, data_dir),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    array = re.search(r"slurm: job array (\d+), (\d+) task\(s\)", proc.stderr)
    variants = expand(load_spec(spec), parse_overrides(overrides))
    assert len(variants) == 4 and array and int(array.group(2)) == 4, proc.stderr  # one array, a task per unit
    name = load_spec(spec).name
    runs = _runs(server.uri, name)
    children = [r for r in runs if "config_hash" in r.data.tags]
    assert sorted(r.data.tags["config_hash"] for r in children) == sorted(v.config.config_hash() for v in variants)
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.status, r.data.tags.get("error")) for r in runs]
    tasks = {r.data.tags["slurm_job_id"] for r in children}
    assert tasks == {f"{array.group(1)}_{i}" for i in range(len(variants))}, tasks
    assert all(
        r.data.tags["executor"] == "slurm" and r.info.artifact_uri.startswith("mlflow-artifacts:") for r in children
    )


@_marked
def test_preemption_checkpoints_requeues_and_ends_at_the_loss_of_an_uninterrupted_run(
    server, tmp_path, data_dir, monkeypatch
):
    spec = tmp_path / "preempt.yaml"
    spec.write_text(textwrap.dedent(SPEC.format(name="slurm-preempt", steps=8000, every=500)), encoding="utf-8")
    proc, out = _start(
        _command(spec, tmp_path, "--checkpoint-store", "mlflow"), tmp_path, _env(server, data_dir), "preempt"
    )
    client = MlflowClient(server.uri)

    def checkpointed():
        for run in _children(server.uri, "slurm-preempt"):
            history = client.get_metric_history(run.info.run_id, "loss/val") if run.info.status == "RUNNING" else []
            if history and max(m.step for m in history) >= 500:
                return run
        return None

    try:
        first = _wait_for(checkpointed, proc, out, "a checkpoint")
        # what SLURM sends signal_delay_s before the time limit, or on preemption (one task: the job itself)
        subprocess.run(["scancel", "--signal=USR2", _array_id(out)], env=_env(server, data_dir), check=True)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
    text = out.read_text()
    assert proc.returncode == 0, text
    (run,) = _children(server.uri, "slurm-preempt")  # one run: the requeued task continued it
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED", run.data.tags.get("error")
    resumed = int(run.data.tags["resumed_from_step"])
    assert 500 <= resumed < 8000, resumed
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss/val")]
    assert sorted(steps) == list(range(0, 8001, 100)), "every evaluation once across the requeue"
    log = "\n".join(p.read_text() for p in (tmp_path / "slurm").rglob("*_log.err"))
    assert "this job is preempted" in log, log[-3000:]  # submitit's handler, called by the task after its checkpoint

    # The same variant, uninterrupted, in this process: the same final losses.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'alone.db'}")
    (variant,) = expand(load_spec(spec))
    alone = run_variant(
        variant,
        experiment_id=experiment_id_for(open_store(f"sqlite:///{tmp_path / 'alone.db'}"), "alone"),
        data_dir=data_dir,
        show_progress=False,
    )
    assert alone.status == "FINISHED"
    assert run.data.metrics["summary/val_loss"] == pytest.approx(alone.metrics["final_val_loss"], abs=1e-6)
    assert run.data.metrics["summary/train_loss"] == pytest.approx(alone.metrics["final_train_loss"], abs=1e-6)


@_marked
def test_a_task_killed_9_fails_its_variant_in_bounded_time_ctrl_c_cancels_and_a_rerun_trains_it(
    server, tmp_path, data_dir
):
    spec = tmp_path / "death.yaml"
    spec.write_text(textwrap.dedent(SPEC.format(name="slurm-death", steps=6000, every=0)), encoding="utf-8")
    env = _env(server, data_dir)
    command = _command(spec, tmp_path)

    def running():
        return next((r for r in _children(server.uri, "slurm-death") if r.info.status == "RUNNING"), None)

    # kill -9 of the task's process: no handler runs, SLURM sees the step fail
    proc, out = _start(command, tmp_path, env, "death")
    try:
        run = _wait_for(running, proc, out, "the task training")
        os.kill(int(run.data.tags[OWNER_TAG].rpartition(":")[2]), signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(timeout=300)
        seen_after = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.read_text()
    print(f"kill -9 seen, sweep ended {seen_after:.1f} s after it")
    assert proc.returncode == 1, text
    # Two ways see the dead task, whichever comes first: SLURM lists the task ended with no result file, or its
    # run's owner is gone (one node: its pid no longer exists) while SLURM still lists it (seen in clean-clone CI
    # runs under load); the run's error says which
    seen = ("ended (failed) without a result", "went silent: its process is gone")
    assert any(way in text for way in seen) and "Traceback" not in text, text
    failed = MlflowClient(server.uri).get_run(run.info.run_id)
    assert failed.info.status == "FAILED" and any(way in failed.data.tags["error"] for way in seen), failed.data.tags
    assert seen_after < 60, text  # 3 polls of 2 s after SLURM's own report, plus a loaded machine's slack

    # Ctrl-C of the driver: scancel of the array, the run closed KILLED by its task
    proc, out = _start(command, tmp_path, env, "ctrl-c")
    try:
        run = _wait_for(
            lambda: next((r for r in [running()] if r and r.info.run_id != failed.info.run_id), None),
            proc,
            out,
            "the rerun training",
        )
        proc.send_signal(signal.SIGINT)
        stopped_at = time.monotonic()
        proc.wait(timeout=300)
        stop_took = time.monotonic() - stopped_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.read_text()
    assert proc.returncode == 130, text
    assert f"slurm: cancelled job array {_array_id(out)}" in text, text
    killed = MlflowClient(server.uri).get_run(run.info.run_id)
    assert killed.info.status == "KILLED" and killed.data.tags["error"] == "interrupted (Ctrl-C)", killed.data.tags
    queue = subprocess.run(["squeue", "-h", "-j", _array_id(out)], env=env, capture_output=True, text=True).stdout
    assert "R" not in queue.split() and "PD" not in queue.split(), queue
    assert stop_took < 60, f"{stop_took:.1f} s"

    # the rerun trains it
    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert [r.info.status for r in _children(server.uri, "slurm-death")].count("FINISHED") == 1


@_marked
def test_a_task_frozen_while_slurm_lists_it_running_is_failed_by_its_heartbeat(server, tmp_path, data_dir):
    """A lost node: SLURM still says RUNNING, but the run's heartbeat stops (SIGSTOP here). Past
    HARNESS_STALE_AFTER_S (10 s in these tests) the driver cancels the task and fails the variant with why."""
    spec = tmp_path / "frozen.yaml"
    spec.write_text(textwrap.dedent(SPEC.format(name="slurm-frozen", steps=6000, every=0)), encoding="utf-8")
    proc, out = _start(_command(spec, tmp_path), tmp_path, _env(server, data_dir), "frozen")
    try:
        run = _wait_for(
            lambda: next((r for r in _children(server.uri, "slurm-frozen") if r.info.status == "RUNNING"), None),
            proc,
            out,
            "the task training",
        )
        os.kill(int(run.data.tags[OWNER_TAG].rpartition(":")[2]), signal.SIGSTOP)
        frozen_at = time.monotonic()
        proc.wait(timeout=300)
        seen_after = time.monotonic() - frozen_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.read_text()
    print(f"frozen task failed {seen_after:.1f} s after SIGSTOP")
    assert proc.returncode == 1, text
    failed = MlflowClient(server.uri).get_run(run.info.run_id)
    assert failed.info.status == "FAILED", failed.data.tags
    assert re.match(
        r"SLURM task \d+ went silent: no heartbeat from \S+, heartbeat \d+ s ago", failed.data.tags["error"]
    )
    assert 10 <= seen_after < 60, text  # the stale age, then one look every 2 s, on a loaded machine
