"""--executor ray on a real two-node Ray cluster on this machine: ``ray start --head`` and a second
``ray start --address`` node with its own resources, both from the command line as a user starts them. The sweep
reaches the cluster by address; its variants land on both nodes (the ``ray_node_id`` tag) and log through the
PostgreSQL-backed tracking server (``make server DB=postgres``), never a shared file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from subprocesses import free_port, harness_env, kill_group

pytestmark = pytest.mark.skipif(shutil.which("ray") is None and not (Path(sys.prefix) / "bin" / "ray").exists(),
                                reason="Ray is not installed (pip install -e '.[ray]')")  # fmt: skip

SPEC = """
    name: two-nodes
    base:
      data: {dataset: tinyshakespeare}
      model: {kind: bigram}
      train: {steps: 3000, eval_interval: 100, device: cpu, threads: 1}
      sample: {max_new_tokens: 5}
    grid:
      train.batch_size: [16, 32]
"""


def _ray_node(*args: str, log: Path) -> subprocess.Popen:
    """``ray start --block ...`` in a process group of its own, so that the test stops exactly what it started."""
    ports = {  # a second node on one machine needs its own agent ports (the defaults are fixed numbers)
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--metrics-export-port": free_port(),
        "--runtime-env-agent-port": free_port(),
    }
    command = [
        str(Path(sys.prefix) / "bin" / "ray"),
        "start",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        "--object-store-memory=100000000",
        *[f"{flag}={port}" for flag, port in ports.items()],
        *args,
    ]
    with open(log, "w") as sink:
        return subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, env=_cluster_env(os.environ)
        )


def _cluster_env(environ) -> dict:
    """The environment of every process of the cluster (nodes, probe, driver): without
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER, which tests/test_ray.py sets to 0 in every xdist worker (it keeps a
    one-machine Ray on loopback, but ``ray start --address`` then refuses a second node), and with RAY_AUTH_MODE
    stated: a local ``ray.init()`` earlier in the suite writes ~/.ray/auth_token, after which a new head turns token
    auth on while its clients, mode unset, send none ("InvalidAuthToken"). All on loopback, so disabled."""
    env = {k: v for k, v in environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env["RAY_AUTH_MODE"] = "disabled"
    return env


@pytest.fixture
def two_nodes(tmp_path):
    """A head (1 CPU, resource ``head``) and a second node (1 CPU, resource ``second``); yields the address."""
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # Ray's socket paths must stay short
    env_status = {**_cluster_env(os.environ), "RAY_ADDRESS": f"127.0.0.1:{port}"}
    nodes = [
        _ray_node(
            "--head",
            f"--port={port}",
            "--include-dashboard=false",
            f"--temp-dir={temp}",
            "--resources=" + json.dumps({"head": 1}),
            log=tmp_path / "head.log",
        )
    ]
    try:
        started = time.monotonic()
        _wait_nodes(env_status, 1, nodes, tmp_path)
        head_s = time.monotonic() - started
        nodes.append(
            _ray_node(
                f"--address=127.0.0.1:{port}", "--resources=" + json.dumps({"second": 1}), log=tmp_path / "second.log"
            )
        )
        _wait_nodes(env_status, 2, nodes, tmp_path)
        print(f"ray head up in {head_s:.1f} s, two nodes in {time.monotonic() - started:.1f} s")
        yield f"127.0.0.1:{port}"
    finally:
        # Both nodes asked to stop at once; a node still up after 5 s (the second one took the whole 15 s it was
        # once given, in CI) is killed with its group: the cluster is thrown away.
        for node in reversed(nodes):
            kill_group(node.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for node in reversed(nodes):
            try:
                node.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill_group(node.pid)
                node.wait()
        shutil.rmtree(temp, ignore_errors=True)


def _wait_nodes(env: dict, count: int, nodes, tmp_path: Path, timeout: float = 180) -> None:
    probe = "import ray; ray.init(); print(sum(n['Alive'] for n in ray.nodes()))"
    deadline = time.monotonic() + timeout
    while True:
        for node in nodes:
            if node.poll() is not None:
                logs = "\n".join(p.read_text() for p in tmp_path.glob("*.log"))
                pytest.fail(f"ray start ended (exit {node.returncode}):\n{logs[-3000:]}")
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        assert time.monotonic() < deadline, out.stdout + out.stderr
        time.sleep(1)


@pytest.fixture
def server(team_server):
    return team_server


@pytest.mark.slow
def test_variants_land_on_both_nodes_of_a_two_node_cluster_and_log_through_the_server(
    two_nodes, server, tmp_path, data_dir
):
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent(SPEC), encoding="utf-8")
    work = tmp_path / "driver"
    work.mkdir()
    env = _cluster_env(harness_env(server.uri, data_dir, MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING="false"))
    command = [sys.executable, "-m", "harness", "run", str(spec), "--executor", "ray", "--ray-address", two_nodes]
    proc = subprocess.run(
        [*command, "--no-progress", "--results-dir", str(tmp_path / "results")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "is a local store" not in proc.stderr, "a server URI draws no warning"
    client = MlflowClient(server.uri)
    runs = client.search_runs([client.get_experiment_by_name("two-nodes").experiment_id])
    children = [r for r in runs if "config_hash" in r.data.tags]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in runs)
    nodes = {r.data.tags["ray_node_id"] for r in children}
    assert len(nodes) == 2, "one CPU per node: the two variants trained side by side, one on each node"
    for run in children:
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")
        assert {"summary/val_loss", "loss/val"} <= set(run.data.metrics)
    assert not (work / "mlruns").exists() and not (work / "mlflow.db").exists(), "nothing beside the driver"
