"""A team's store: ``make server DB=postgres``, a PostgreSQL-backed MLflow server that serves the artifacts itself.

Two sweeps of one spec from two working directories, each sharing no file with the server or with the other,
train every variant exactly once, and every artifact reaches the server over HTTP.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXPERIMENTS, shrink_args
from mlflow.tracking import MlflowClient
from servers import postgres_missing
from subprocesses import harness_env
from test_concurrent import _assert_trained_once

from harness.spec.expansion import expand, parse_overrides
from harness.spec.parsing import load_spec

pytestmark = pytest.mark.skipif(postgres_missing() is not None, reason=postgres_missing() or "")


def _worker_env(home: Path, uri: str, data_dir) -> dict:
    """A worker's environment: its own HOME and temporary folder, the store only as a URL."""
    home.mkdir(parents=True, exist_ok=True)
    env = harness_env(uri, data_dir, HOME=str(home), TMPDIR=str(home))
    env.pop("XDG_CACHE_HOME", None)
    return env


@pytest.mark.slow
def test_two_sweeps_into_the_postgres_server_train_each_variant_once_over_http_only(team_server, tmp_path, data_dir):
    uri = team_server.uri
    assert "postgresql" in (team_server.folder / "server.log").read_text(), "the backend is PostgreSQL"
    spec = EXPERIMENTS / "smoke.yaml"
    overrides = shrink_args(**{"train.steps": 20, "sample.max_new_tokens": 5})
    workers = [tmp_path / "worker-a", tmp_path / "worker-b"]
    procs = []
    for folder in workers:
        env = _worker_env(folder / "home", uri, data_dir)
        env |= {"HARNESS_HEARTBEAT_S": "1", "HARNESS_STALE_AFTER_S": "60"}
        command = [sys.executable, "-m", "harness", "run", str(spec), *overrides, "--no-progress"]
        procs.append(
            subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outs = [proc.communicate(timeout=900)[0] for proc in procs]
    for proc, out in zip(procs, outs, strict=True):
        assert proc.returncode == 0, out
        assert "Traceback" not in out, out
    trained = [
        int(line.split()[1].rstrip(",")) for out in outs for line in out.splitlines() if line.startswith("finished ")
    ]
    variants = expand(load_spec(spec), parse_overrides(overrides))
    assert sum(trained) == len(variants), outs
    done = _assert_trained_once(uri, "smoke", variants)

    client = MlflowClient(uri)
    for run in done.values():
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), "artifacts go through the server"
        names = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
        assert {"samples/before.txt", "samples/after.txt"} <= names
    experiment_id = client.get_experiment_by_name("smoke").experiment_id
    stored = [p.name for p in (team_server.artifacts / experiment_id).rglob("*") if p.is_file()]
    assert stored.count("config.yaml") == len(variants), "the server's own folder holds every run's artifacts"
    for folder in workers:  # nothing of the store beside either worker: no mlruns/, no mlflow.db, no mlartifacts/
        written = {p.relative_to(folder).parts[0] for p in folder.iterdir()}
        assert written <= {"home", "results", ".harness"}, written
        assert not list(folder.rglob("config.yaml")) and not list(folder.rglob("*.db"))
