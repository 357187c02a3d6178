"""--executor ray on a local Ray instance that the test starts, reached with --ray-address like a cluster.

Needs the optional extra (``pip install -e '.[ray]'``); the pure helpers are tested without it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from subprocesses import harness_env

from harness.cli import main
from harness.executors.ray import absolute_uri, wants_gpu
from harness.spec.expansion import expand
from harness.spec.parsing import load_spec
from harness.tracking.checkpoints import LocalCheckpoints

# Before Ray is imported: keep the test's Ray instance (and the sweeps that join it) on 127.0.0.1. On Linux
# Ray otherwise binds to this machine's network address, and resolves even _node_ip_address="127.0.0.1" to it.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

SPEC = """
    name: {name}
    base:
      data: {{dataset: tinyshakespeare}}
      train: {{steps: {steps}, eval_interval: 10, checkpoint_interval: {every}, device: cpu}}
      sample: {{max_new_tokens: 5}}
    grid:
      train.batch_size: [16, 32]
"""


def test_gpu_request_follows_the_device():
    assert wants_gpu("cuda", 0) and wants_gpu("cuda:0", 4)
    assert wants_gpu("auto", 2) and not wants_gpu("auto", 0)
    assert not wants_gpu("cpu", 8) and not wants_gpu("mps", 8)


def test_relative_sqlite_uri_is_made_absolute_for_workers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert absolute_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert absolute_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def _no_runs(uri: str) -> bool:
    client = MlflowClient(uri)
    return not client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.parametrize("problem", ["not-installed", "dead-address"])
def test_ray_missing_or_unreachable_exits_2_before_any_run(
    problem, tmp_path, mlflow_store, data_dir, monkeypatch, capsys
):
    if problem == "not-installed":
        monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
        address, expected = [], "pip install 'nanoko-harness[ray]'"
    else:
        ray = pytest.importorskip("ray")
        monkeypatch.setattr(
            ray, "init", lambda *a, **k: pytest.fail("ray.init retries a dead address for many minutes")
        )
        with socket.socket() as s:  # a loopback port where nothing listens
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        address, expected = ["--ray-address", f"127.0.0.1:{port}"], "nothing answers there"
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent(SPEC.format(name="no-ray", steps=10, every=0)), encoding="utf-8")
    data = ["--data-dir", str(data_dir)] if data_dir else []
    code = main(
        ["run", str(spec), "--executor", "ray", *address, "--no-progress", "--results-dir", str(tmp_path / "r"), *data]
    )
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert _no_runs(mlflow_store), "no parent run for a sweep that never started"


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance for this module (2 CPUs, no dashboard); yields its address."""
    ray = pytest.importorskip("ray")
    # Loopback only: Ray would otherwise bind to and dial the machine's network address.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _sweep(tmp_path: Path, spec: Path, address: str, data_dir) -> tuple[list[str], dict]:
    env = harness_env(f"sqlite:///{tmp_path / 'mlflow.db'}", data_dir)
    command = [
        sys.executable,
        "-m",
        "harness",
        "run",
        str(spec),
        "--executor",
        "ray",
        "--ray-address",
        address,
        "--no-progress",
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        "--results-dir",
        str(tmp_path / "results"),
    ]
    return command, env


def _runs(uri: str, name: str):
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name(name).experiment_id])


@pytest.mark.slow
def test_every_variant_runs_as_a_ray_task_into_one_store(ray_cluster, tmp_path, data_dir):
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent(SPEC.format(name="on-ray", steps=30, every=0)), encoding="utf-8")
    command, env = _sweep(tmp_path, spec, ray_cluster, data_dir)
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = _runs(env["MLFLOW_TRACKING_URI"], "on-ray")
    children = [r for r in runs if "config_hash" in r.data.tags]
    parent = next(r for r in runs if r.data.tags.get("harness.sweep") == "true")
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in runs)
    for run in children:
        assert run.data.tags["executor"] == "ray" and run.data.tags["ray_node_id"]
        assert run.data.tags["ray_node_ip"] == "127.0.0.1", "the test's Ray stays on loopback"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert "summary/train_loss" in run.data.metrics
    assert "finished 2, skipped 0, failed 0" in proc.stdout

    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "finished 0, skipped 2" in again.stdout, "resume works the same on Ray"


@pytest.mark.slow
def test_ctrl_c_cancels_ray_tasks_and_their_runs_end_killed(ray_cluster, tmp_path, data_dir):
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent(SPEC.format(name="ray-ctrl-c", steps=200_000, every=500)), encoding="utf-8")
    variants = expand(load_spec(spec))
    command, env = _sweep(tmp_path, spec, ray_cluster, data_dir)
    proc = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not any(LocalCheckpoints(tmp_path / "ckpt").path(v).exists() for v in variants):  # a task is training
            assert proc.poll() is None and time.monotonic() < deadline, (
                proc.stdout.read() if proc.poll() is not None else "timeout"
            )
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # reaches the driver only: the tasks run in the cluster's workers
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, out
    runs = _runs(env["MLFLOW_TRACKING_URI"], "ray-ctrl-c")
    children = [r for r in runs if "config_hash" in r.data.tags]
    assert children and all(r.info.status == "KILLED" for r in runs), [
        (r.data.tags.get("variant"), r.info.status) for r in runs
    ]


@pytest.mark.slow
def test_two_ray_drivers_on_one_spec_train_each_variant_once(ray_cluster, tmp_path, data_dir):
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent(SPEC.format(name="two-drivers", steps=30, every=0)), encoding="utf-8")
    command, env = _sweep(tmp_path, spec, ray_cluster, data_dir)
    drivers = [
        subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outs = [driver.communicate(timeout=600)[0] for driver in drivers]
    assert [driver.returncode for driver in drivers] == [0, 0], outs
    children = [r for r in _runs(env["MLFLOW_TRACKING_URI"], "two-drivers") if "config_hash" in r.data.tags]
    finished = sorted(r.data.tags["config_hash"] for r in children if r.info.status == "FINISHED")
    assert finished == sorted(v.config.config_hash() for v in expand(load_spec(spec))), outs
    assert not [r for r in children if r.info.status in ("FAILED", "RUNNING")]
    print("\n".join(line for out in outs for line in out.splitlines() if line.startswith(("finished ", "skip "))))
