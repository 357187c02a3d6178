"""Several sweeps on one spec and one store: every variant trains exactly once, dead owners are taken over.

Real processes and a real SQLite store throughout. The claim protocol is checked on its own (contenders
released at the same instant), then through whole ``harness run`` processes, concurrent and killed.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import EXPERIMENTS, shrink_args
from mlflow.tracking import MlflowClient
from subprocesses import harness_env

from harness.spec.expansion import expand, parse_overrides
from harness.spec.parsing import load_spec
from harness.sweep import run_sweep
from harness.tracking import claims as runs
from harness.tracking.recorded import run_variant
from harness.tracking.store import experiment_id_for

SPEC = """
    name: {name}
    base:
      data: {{dataset: tinyshakespeare}}
      model: {{kind: bigram}}
      train: {{steps: {steps}, eval_interval: 100, checkpoint_interval: {every}, device: cpu, threads: 1}}
      sample: {{max_new_tokens: 5}}
    grid:
      train.batch_size: [8, 16, 24, 32]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _env(tmp_path: Path, data_dir, **more) -> dict:
    return harness_env(f"sqlite:///{tmp_path / 'mlflow.db'}", data_dir, **more)


def _command(spec: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "harness",
        "run",
        str(spec),
        "--no-progress",
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        "--results-dir",
        str(tmp_path / "results"),
        *extra,
    ]


def _all_runs(uri: str, name: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=1000)


def _assert_trained_once(uri: str, name: str, variants) -> dict[str, object]:
    """Each variant: exactly one FINISHED run, none FAILED, no metric step stored twice. Returns hash -> run."""
    client = MlflowClient(uri)
    children = [r for r in _all_runs(uri, name) if "config_hash" in r.data.tags]
    assert not [r for r in children if r.info.status == "FAILED"], [r.data.tags.get("error") for r in children]
    finished = Counter(r.data.tags["config_hash"] for r in children if r.info.status == "FINISHED")
    assert finished == {v.config.config_hash(): 1 for v in variants}, finished
    assert not [r for r in children if r.info.status == "RUNNING"], "every run is closed"
    for run in children:
        if run.info.status == "KILLED":  # a lost claim or a taken-over stale run: says why
            assert run.data.tags["error"].startswith(("lost the claim", "stale claim")), run.data.tags["error"]
    done = {}
    for run in children:
        if run.info.status != "FINISHED":
            continue
        assert run.data.metrics, run.data.tags["variant"]
        for key in run.data.metrics:  # whatever the metric names are
            steps = Counter(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert not [s for s, n in steps.items() if n > 1], f"{run.data.tags['variant']}: {key} logged twice"
        done[run.data.tags["config_hash"]] = run
    return done


# -- the claim on its own ----------------------------------------------------------------------

CONTENDER = textwrap.dedent("""
    import sys, time
    from mlflow.tracking import MlflowClient
    from harness.tracking import claims as runs
    from harness.spec import expand, load_spec, parse_overrides
    from harness.tracking import retrying
    uri, experiment_id, spec, start_at = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    client = MlflowClient(uri)
    variants = expand(load_spec(spec))
    time.sleep(max(0.0, start_at - time.time()))  # every contender is released at the same instant
    for variant in variants:
        def create():
            tags = {"variant": variant.id, "config_hash": variant.config.config_hash(), **runs.owner_tags(),
                    runs.CLAIM_TAG: "pending"}
            return retrying(lambda: client.create_run(experiment_id, tags=tags)).info.run_id
        claim = runs.claim_variant(client, experiment_id, variant, create, log=lambda line: None)
        print(variant.id, "SKIP" if claim.skip else "WON", claim.run_id, flush=True)
    time.sleep(3)  # hold the claims (alive) while the others look
""")


@pytest.mark.slow
def test_contenders_released_together_leave_exactly_one_claim_per_variant(tmp_path):
    spec = _write(tmp_path, SPEC.format(name="race", steps=10, every=0))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = experiment_id_for(client, "race")
    start_at = time.time() + 8  # after every interpreter has imported mlflow
    env = _env(tmp_path, None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONTENDER, uri, experiment_id, str(spec), str(start_at)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    lines = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        lines += out.split("\n")
    won = Counter(line.split()[0] for line in lines if " WON " in line)
    assert won == {v.id: 1 for v in expand(load_spec(spec))}, lines
    running = [r for r in client.search_runs([experiment_id]) if r.info.status == "RUNNING"]
    assert len(running) == 4 and all(r.data.tags[runs.CLAIM_TAG] == "won" for r in running)


DATASET_LOGGER = textwrap.dedent("""
    import sys, time
    from mlflow.tracking import MlflowClient
    from harness.data import DataConfig, load_corpus, resolve_data_dir
    from harness.tracking import dataset_inputs, log_dataset_inputs, retrying
    uri, experiment_id, start_at = sys.argv[1], sys.argv[2], float(sys.argv[3])
    client = MlflowClient(uri)
    config, data_dir = DataConfig(dataset="tinyshakespeare"), resolve_data_dir()
    inputs = dataset_inputs(config, data_dir, load_corpus(config, data_dir))
    run_id = retrying(lambda: client.create_run(experiment_id)).info.run_id
    time.sleep(max(0.0, start_at - time.time()))  # every logger is released at the same instant
    log_dataset_inputs(client, run_id, inputs)
    print(run_id, flush=True)
""")


@pytest.mark.slow
def test_runs_logging_one_new_corpus_at_the_same_instant_all_link_to_it(tmp_path, data_dir):
    """MLflow registers a dataset by check-then-insert, so the loser of the race used to FAIL its variant."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = experiment_id_for(client, "datasets")
    start_at = time.time() + 10  # after every interpreter has imported mlflow and read the corpus
    env = _env(tmp_path, data_dir)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DATASET_LOGGER, uri, experiment_id, str(start_at)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    run_ids = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        run_ids.append(out.strip())
    for run_id in run_ids:  # each run lists both splits, and every run points at the same two datasets
        inputs = client.get_run(run_id).inputs.dataset_inputs
        assert sorted(i.dataset.name for i in inputs) == ["tinyshakespeare/train", "tinyshakespeare/val"]
    digests = {(i.dataset.name, i.dataset.digest) for r in run_ids for i in client.get_run(r).inputs.dataset_inputs}
    assert digests == {
        ("tinyshakespeare/train", "86c4e6aa9db7c042ec79f339dcb96d42b0075e16"[:36]),
        ("tinyshakespeare/val", "86c4e6aa9db7c042ec79f339dcb96d42b0075e16"[:36]),
    }


def _foreign_run(client, experiment_id, variant, heartbeat_age_s: float) -> str:
    """A run claimed by a process on another machine, last heard of ``heartbeat_age_s`` ago."""
    tags = {
        "variant": variant.id,
        "config_hash": variant.config.config_hash(),
        runs.OWNER_TAG: "elsewhere.example:4242",
        runs.OWNER_PROC_TAG: "another-machine",
        runs.HEARTBEAT_TAG: f"{time.time() - heartbeat_age_s:.3f}",
        runs.CLAIM_TAG: "won",
    }
    return client.create_run(experiment_id, tags=tags).info.run_id


def test_a_live_claim_is_skipped_and_a_stale_one_taken_over(tmp_path, mlflow_store, data_dir, monkeypatch):
    monkeypatch.setenv("HARNESS_STALE_AFTER_S", "60")
    spec = load_spec(_write(tmp_path, SPEC.format(name="claims", steps=20, every=0)))
    live_variant, stale_variant = expand(spec)[:2]
    client = MlflowClient(mlflow_store)
    experiment_id = experiment_id_for(client, spec.name)
    live = _foreign_run(client, experiment_id, live_variant, heartbeat_age_s=12)
    stale = _foreign_run(client, experiment_id, stale_variant, heartbeat_age_s=600)
    common = dict(experiment_id=experiment_id, data_dir=data_dir, show_progress=False)

    skipped = run_variant(live_variant, **common)
    assert skipped.status == "SKIPPED" and skipped.run_id == live
    assert re.match(
        rf"running elsewhere: elsewhere\.example:4242, heartbeat 1\d s ago \(run {live}\)", skipped.error
    ), skipped.error
    assert client.get_run(live).info.status == "RUNNING", "a live run is never touched"

    taken = run_variant(stale_variant, **common)
    assert taken.status == "FINISHED" and taken.run_id != stale
    closed = client.get_run(stale)
    assert closed.info.status == "KILLED"
    assert re.match(r"stale claim: owner elsewhere\.example:4242, heartbeat 6\d\d s ago", closed.data.tags["error"])
    assert f"taken over by {socket.gethostname()}:{os.getpid()}" in closed.data.tags["error"]
    mine = client.get_run(taken.run_id).data.tags
    assert mine[runs.OWNER_TAG] == f"{socket.gethostname()}:{os.getpid()}" and mine[runs.CLAIM_TAG] == "won"


def test_ctrl_c_between_creating_a_run_and_holding_its_claim_closes_that_run_killed(
    tmp_path, mlflow_store, data_dir, monkeypatch
):
    """The claim creates the run first, then contends for the variant: a Ctrl-C in between (in CI: a sweep killed
    while its workers were claiming) used to leave that run RUNNING, without an error, until a rerun's takeover."""
    spec = load_spec(_write(tmp_path, SPEC.format(name="claim-ctrl-c", steps=20, every=0)))
    variant = expand(spec)[0]
    client = MlflowClient(mlflow_store)
    experiment_id = experiment_id_for(client, spec.name)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "_contend", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_variant(variant, experiment_id=experiment_id, data_dir=data_dir, show_progress=False)
    (run,) = client.search_runs([experiment_id])
    assert (run.info.status, run.data.tags.get("error")) == ("KILLED", "interrupted (Ctrl-C)")


def test_a_sweep_closes_a_stale_parent_and_skips_what_runs_elsewhere(tmp_path, mlflow_store, data_dir, monkeypatch):
    monkeypatch.setenv("HARNESS_STALE_AFTER_S", "60")
    spec = load_spec(_write(tmp_path, SPEC.format(name="parents", steps=20, every=0)))
    variants = expand(spec)
    client = MlflowClient(mlflow_store)
    experiment_id = experiment_id_for(client, spec.name)
    dead = client.create_run(
        experiment_id,
        tags={
            runs.SWEEP_TAG: "true",
            runs.OWNER_TAG: "gone.example:7",
            runs.HEARTBEAT_TAG: f"{time.time() - 3600:.3f}",
        },
    ).info.run_id
    live = _foreign_run(client, experiment_id, variants[0], heartbeat_age_s=1)
    logged = []
    outcome = run_sweep(
        spec,
        variants,
        data_dir=data_dir,
        show_progress=False,
        log=logged.append,
        command="harness run spec.yaml",
        overrides={"train.steps": 20},
    )
    assert client.get_run(dead).info.status == "KILLED"
    assert "sweep stopped without closing its run: gone.example:7" in client.get_run(dead).data.tags["error"]
    assert list(outcome.elsewhere) == [variants[0].id] and client.get_run(live).info.status == "RUNNING"
    assert sorted(r.variant_id for r in outcome.results) == sorted(v.id for v in variants[1:])
    assert any(line.startswith(f"skip {variants[0].id}: running elsewhere: elsewhere.example:4242") for line in logged)

    parent = client.get_run(outcome.parent_run_id)  # issue 8's conventions, and what `harness report` reads
    assert parent.info.status == "FINISHED" and parent.data.tags[runs.SWEEP_TAG] == "true"
    assert "harness run spec.yaml" in parent.data.tags["mlflow.note.content"]
    assert "`train.steps=20`" in parent.data.tags["mlflow.note.content"]
    assert parent.data.tags["mlflow.source.name"] == str(spec.path)
    assert len(parent.data.tags["mlflow.source.git.commit"]) == 40
    assert parent.data.params["overrides"] == '{"train.steps": 20}'
    assert float(parent.data.tags[runs.HEARTBEAT_TAG]) > time.time() - 600


def test_the_experiment_description_is_the_spec_description(tmp_path, mlflow_store, data_dir):
    spec = load_spec(EXPERIMENTS / "smoke.yaml")
    run_sweep(spec, [], data_dir=data_dir, show_progress=False, log=lambda line: None)
    experiment = MlflowClient(mlflow_store).get_experiment_by_name("smoke")
    assert experiment.tags["mlflow.note.content"] == spec.description


# -- whole sweeps --------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_concurrent_sweeps_train_every_variant_once(tmp_path, data_dir):
    spec = EXPERIMENTS / "smoke.yaml"
    # the English half of the grid (4 variants): two sweeps of two workers each still contend for every variant
    overrides = shrink_args(**{"train.steps": 20, "sample.max_new_tokens": 5, "data.dataset": "tinyshakespeare"})
    env = _env(tmp_path, data_dir, HARNESS_HEARTBEAT_S="1", HARNESS_STALE_AFTER_S="60")
    procs = [
        subprocess.Popen(
            _command(spec, tmp_path, *overrides, "--jobs", "2"),
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [proc.communicate(timeout=1200)[0] for proc in procs]
    for proc, out in zip(procs, outs, strict=True):
        assert proc.returncode == 0, out
        assert "Traceback" not in out, out
    print("\n".join(line for out in outs for line in out.splitlines() if line.startswith(("finished ", "skip "))))
    variants = expand(load_spec(spec), parse_overrides(overrides))
    _assert_trained_once(env["MLFLOW_TRACKING_URI"], "smoke", variants)
    trained = [
        int(line.split()[1].rstrip(",")) for out in outs for line in out.splitlines() if line.startswith("finished ")
    ]
    assert sum(trained) == len(variants), outs
    parents = [r for r in _all_runs(env["MLFLOW_TRACKING_URI"], "smoke") if r.data.tags.get(runs.SWEEP_TAG)]
    assert [p.info.status for p in parents] == ["FINISHED", "FINISHED"]


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended (exit {proc.returncode}) before {what}:\n{proc.stdout.read()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("store", ["local", "mlflow"])
def test_kill_9_of_a_sweep_then_a_rerun_takes_over_and_finishes_the_rest(tmp_path, data_dir, store):
    spec = _write(tmp_path, SPEC.format(name="kill9", steps=1500, every=300))
    variants = expand(load_spec(spec))
    env = _env(tmp_path, data_dir, HARNESS_HEARTBEAT_S="1", HARNESS_STALE_AFTER_S="60")
    uri = env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(uri)
    command = _command(spec, tmp_path, "--jobs", "2", "--checkpoint-store", store)

    def checkpointed() -> bool:  # a variant is mid-way, with a checkpoint to resume from
        if store == "local":
            return any((tmp_path / "ckpt").glob("*.pt"))
        try:
            found = _all_runs(uri, "kill9")
        except Exception:  # the experiment does not exist yet
            return False
        return any(
            r.info.status == "RUNNING" and any(f.path == "checkpoint" for f in client.list_artifacts(r.info.run_id))
            for r in found
            if "config_hash" in r.data.tags
        )

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
        _wait_for(checkpointed, proc, "a checkpoint")
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers: no handler runs, runs stay RUNNING
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    proc.stdout.close()
    before = _all_runs(uri, "kill9")
    orphans = [r for r in before if r.info.status == "RUNNING" and "config_hash" in r.data.tags]
    (dead_parent,) = [r for r in before if r.data.tags.get(runs.SWEEP_TAG)]
    assert orphans and dead_parent.info.status == "RUNNING", "kill -9 leaves the runs open"

    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "finished " in rerun.stdout and "Traceback" not in rerun.stdout + rerun.stderr
    print(rerun.stdout)
    done = _assert_trained_once(uri, "kill9", variants)
    closed = client.get_run(dead_parent.info.run_id)
    assert closed.info.status == "KILLED" and "process gone" in closed.data.tags["error"]
    resumed = [run for run in done.values() if "resumed_from_step" in run.data.tags]
    assert resumed, "an orphan with a checkpoint resumes in its own run"
    assert {r.info.run_id for r in resumed} <= {r.info.run_id for r in orphans}
    for run in resumed:
        curve = next(k for k in ("loss/train", "train_loss") if k in run.data.metrics)  # harness/metrics.py names
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, curve))
        assert steps == list(range(0, 1501, 100)), "every evaluation once across the kill"
