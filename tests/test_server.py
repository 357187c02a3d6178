"""A real MLflow tracking server (what ``make server`` starts) as the store, and one that is not there.

The server runs on a free loopback port with a SQLite backend and its own artifact folder; the sweep
reaches it only through ``MLFLOW_TRACKING_URI=http://...``, as workers on other machines would.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import EXPERIMENTS
from mlflow.tracking import MlflowClient
from subprocesses import free_port, harness_env, kill_group

from harness.cli import main
from harness.tracking.recorded import wrap

SHORT = ["train.steps=20", "train.eval_interval=10", "sample.max_new_tokens=10"]


@pytest.fixture
def server(tmp_path):
    """``mlflow server`` with a SQLite backend and an artifact folder; yields (uri, artifact folder)."""
    port = free_port()
    artifacts = tmp_path / "mlartifacts"
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("mlflow server did not start:\n" + (tmp_path / "server.log").read_text())
            time.sleep(0.5)
        yield uri, artifacts
    finally:
        # The server and its workers (the group this fixture started), killed: its store is thrown away, and a
        # graceful stop waits on this process's idle keep-alive connections (13 s in CI).
        kill_group(proc.pid)
        proc.wait()
        log.close()


@pytest.mark.slow
def test_smoke_grid_against_a_real_tracking_server(server, tmp_path, data_dir):
    uri, artifacts = server
    env = harness_env(uri, data_dir)
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "run",
            str(EXPERIMENTS / "smoke.yaml"),
            *SHORT,
            "--jobs",
            "2",
            "--no-progress",
            "--results-dir",
            str(tmp_path / "results"),
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list((tmp_path / "results" / "smoke").glob("overrides-*/runs.csv"))  # overrides: beside the spec's own

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if "config_hash" in r.data.tags]
    parent = next(r for r in runs if r.data.tags.get("harness.sweep") == "true")
    assert len(children) == 8 and len(runs) == 9
    assert all(r.info.status == "FINISHED" for r in runs)
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.params["train.steps"] == "20"
        assert {"summary/train_loss", "summary/val_loss", "loss/train", "loss/val", "loss/batch"} <= set(
            run.data.metrics
        )
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/train")] == [0, 10, 20]
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        names |= {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
        assert {"config.yaml", "samples/before.txt", "samples/after.txt"} <= names
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), "artifacts go through the server"
        config = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
        assert "steps: 20" in open(config, encoding="utf-8").read()
    assert any(a.path == "smoke.yaml" for a in client.list_artifacts(parent.info.run_id))
    stored = {p.name for p in artifacts.rglob("*") if p.is_file()}
    assert {"config.yaml", "before.txt", "after.txt", "smoke.yaml"} <= stored, "the server's artifact folder holds them"
    assert not (work / "mlruns").exists() and not (work / "mlflow.db").exists(), "nothing written beside the sweep"
    assert {"model.safetensors", "model.json", "tokenizer.json", "MLmodel"} <= stored, "logged models go through it too"
    from harness.tracking.logged_model import load_run_model

    for run in children:  # each variant's model, read back through the server, draws the run's own sample
        after = client.download_artifacts(run.info.run_id, "samples/after.txt", str(tmp_path / run.info.run_id))
        sample = load_run_model(uri, run.info.run_id).sample()[0]
        assert wrap(sample) == open(after, encoding="utf-8").read()


def test_unreachable_tracking_server_fails_in_seconds_before_training(tmp_path, monkeypatch, capsys, data_dir):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    data = ["--data-dir", str(data_dir)] if data_dir else []
    started = time.monotonic()
    code = main(
        ["run", str(EXPERIMENTS / "smoke.yaml"), *SHORT, "--no-progress", "--results-dir", str(tmp_path / "r"), *data]
    )
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2
    assert elapsed < 30, f"took {elapsed:.1f}s"
    assert uri in err and "not reachable" in err and "make server" in err
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists() and not (tmp_path / ".harness").exists() and not (tmp_path / "mlruns").exists()
