"""Resume: finished variants are skipped, and a sweep stopped by Ctrl-C or kill -9 picks up where it was.

The checkpoint promise is checked twice: at the unit level (Trainer state round trip) and with a real
process killed by SIGKILL mid-run, whose variant must resume in the same MLflow run and end at the same
loss as an uninterrupted run.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from subprocesses import harness_env

from harness.data.corpora import load_corpus
from harness.models.registry import build_model
from harness.spec.expansion import expand
from harness.spec.parsing import load_spec
from harness.sweep import plan_sweep, run_sweep
from harness.tracking import claims as runs
from harness.tracking.checkpoints import LocalCheckpoints
from harness.tracking.recorded import run_variant
from harness.tracking.store import PARENT_TAG, experiment_id_for
from harness.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from harness.train.trainer import Trainer

# Tiny Shakespeare bigram: thousands of steps a second, so a kill lands mid-run with time to spare.
KILL_SPEC = """
    name: {name}
    base:
      data: {{dataset: tinyshakespeare}}
      model: {{kind: bigram}}
      train: {{steps: {steps}, eval_interval: 100, checkpoint_interval: {every}, device: cpu, threads: 1}}
      sample: {{max_new_tokens: 5}}
    grid:
      train.batch_size: [16, 32]
"""


class Points:
    """A metric sink that keeps what it is given."""

    def __init__(self):
        self.points = []

    def log(self, key, value, step):
        self.points.append((key, value, step))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _trainer(variant, data_dir) -> Trainer:
    config = variant.config
    corpus = load_corpus(config.data, data_dir)
    torch.manual_seed(config.train.seed)
    return Trainer(
        build_model(config.model, corpus.tokenizer.vocab_size, config.train.context_length),
        corpus,
        config.train,
        torch.device("cpu"),
    )


@pytest.mark.parametrize("kind", ["bigram", "ffn"])
def test_trainer_resumed_from_a_checkpoint_matches_an_uninterrupted_run(tmp_path, data_dir, kind):
    model = "{kind: ffn, hidden_sizes: [32]}" if kind == "ffn" else "{kind: bigram}"  # hidden_sizes is an ffn key
    spec = _write(
        tmp_path,
        f"""
        name: unit
        base:
          data: {{dataset: tinyshakespeare}}
          model: {model}
          train: {{steps: 60, eval_interval: 10, checkpoint_interval: 20, device: cpu}}
    """,
    )
    variant = expand(load_spec(spec))[0]
    straight = _trainer(variant, data_dir)
    ckpt = tmp_path / "ckpt" / "unit.pt"

    def keep_first(t: Trainer) -> None:  # through a file, as run_variant does
        if not ckpt.exists():
            save_checkpoint(ckpt, t.state_dict())

    expected = straight.run(Points(), on_checkpoint=keep_first)

    resumed = _trainer(variant, data_dir)  # a fresh process would build the model again from the seed
    resumed.load_state_dict(load_checkpoint(ckpt))
    assert resumed.state.step == 20
    sink = Points()
    got = resumed.run(sink)
    assert got["final_train_loss"] == pytest.approx(expected["final_train_loss"], abs=1e-6)
    assert got["final_val_loss"] == pytest.approx(expected["final_val_loss"], abs=1e-6)
    assert torch.allclose(resumed.state.step_losses, straight.state.step_losses, atol=1e-6)
    assert min(step for _, _, step in sink.points) > 20, "a resumed run logs only the steps after its checkpoint"


def _unit_variant(tmp_path, steps=50, every=7, eval_interval=10):
    spec = _write(
        tmp_path,
        f"""
        name: unit
        base:
          data: {{dataset: tinyshakespeare}}
          model: {{kind: bigram}}
          train: {{steps: {steps}, eval_interval: {eval_interval}, checkpoint_interval: {every}, device: cpu}}
    """,
    )
    return expand(load_spec(spec))[0]


def test_checkpoints_come_exactly_every_interval_not_only_at_evaluations(tmp_path, data_dir):
    trainer = _trainer(_unit_variant(tmp_path, steps=50, every=7, eval_interval=10), data_dir)
    at, logged_through = [], []
    sink = Points()

    def on_checkpoint(t: Trainer) -> None:
        at.append(t.state.step)
        logged_through.append(max(s for k, _, s in sink.points if k == "batch_loss"))

    trainer.run(sink, on_checkpoint=on_checkpoint)
    assert at == [7, 14, 21, 28, 35, 42, 49]
    assert logged_through == at, "every batch loss up to a checkpoint is logged before it is saved"


def test_train_time_accumulates_across_a_resume(tmp_path, data_dir):
    variant = _unit_variant(tmp_path, steps=40, every=20, eval_interval=10)
    first = _trainer(variant, data_dir)
    ckpt = tmp_path / "time.pt"

    def slow_progress(done: int, loss: float) -> None:  # time spent in the loop counts as training time
        if done <= 20:
            time.sleep(0.1)

    def save_once(t: Trainer) -> None:
        if not ckpt.exists():
            save_checkpoint(ckpt, t.state_dict())

    first.run(Points(), on_progress=slow_progress, on_checkpoint=save_once)
    saved_time = load_checkpoint(ckpt)["train_time_s"]
    assert saved_time >= 0.2, "two evaluations before the checkpoint slept 0.1 s each"

    resumed = _trainer(variant, data_dir)
    resumed.load_state_dict(load_checkpoint(ckpt))
    started = time.perf_counter()
    result = resumed.run(Points())
    wall = time.perf_counter() - started
    assert saved_time < result["train_time_s"] <= saved_time + wall
    assert result["steps_per_s"] == pytest.approx(40 / result["train_time_s"])


class _RunsACommand:
    """Unpickling this calls os.system: what a crafted checkpoint in a shared store could do."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_crafted_checkpoint_is_refused_without_running_its_code(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "crafted.pt"
    payload = {"model": {}, "step": 1, "evil": _RunsACommand(f"touch {marker}")}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(CheckpointError, match=r"crafted\.pt is not a harness checkpoint .*nothing in it was executed"):
        load_checkpoint(path)
    assert not marker.exists(), "loading the checkpoint ran its code"


def test_checkpoints_hold_only_tensors_and_plain_containers(tmp_path):
    with pytest.raises(CheckpointError, match=r"state\['where'\] is a PosixPath"):
        save_checkpoint(tmp_path / "x.pt", {"where": tmp_path})
    assert not (tmp_path / "x.pt").exists() and not list(tmp_path.iterdir())
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt is not a harness checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pt")


def test_finished_variants_are_skipped_and_force_reruns_them(tmp_path, mlflow_store, data_dir):
    spec = load_spec(_write(tmp_path, KILL_SPEC.format(name="skip", steps=20, every=0)))
    variants = expand(spec)
    logged = []
    sweep = dict(data_dir=data_dir, checkpoint_dir=tmp_path / "ckpt", show_progress=False, log=logged.append)
    first = run_sweep(spec, variants, **sweep)
    assert [r.status for r in first.results] == ["FINISHED", "FINISHED"]

    again = run_sweep(spec, variants, **sweep)
    assert again.results == [] and set(again.skipped) == {v.id for v in variants}
    assert set(again.skipped.values()) == {r.run_id for r in first.results}
    assert sum("already FINISHED" in line and "--force" in line for line in logged) == 2

    forced = run_sweep(spec, variants, force=True, **sweep)
    assert [r.status for r in forced.results] == ["FINISHED", "FINISHED"]
    assert not {r.run_id for r in forced.results} & {r.run_id for r in first.results}


def test_a_stale_run_without_its_checkpoint_is_closed_and_a_new_run_started(tmp_path, mlflow_store, data_dir):
    """A checkpoint that is gone (or another run's) must not restart step 0 inside a run holding metrics."""
    spec = load_spec(_write(tmp_path, KILL_SPEC.format(name="lost-ckpt", steps=20, every=10)))
    variant = expand(spec)[0]
    client = MlflowClient(mlflow_store)
    experiment_id = experiment_id_for(client, spec.name)
    stale = client.create_run(
        experiment_id,
        tags={
            "config_hash": variant.config.config_hash(),
            runs.OWNER_TAG: "gone:1",
            runs.HEARTBEAT_TAG: f"{time.time() - 3600:.3f}",
        },
    ).info.run_id
    result = run_variant(
        variant, experiment_id=experiment_id, data_dir=data_dir, checkpoint_dir=tmp_path / "ckpt", show_progress=False
    )
    assert result.status == "FINISHED" and result.run_id != stale
    assert client.get_run(stale).info.status == "KILLED"
    assert client.get_run(stale).data.tags["error"].startswith("stale claim: owner gone:1")
    assert "resumed_from_step" not in client.get_run(result.run_id).data.tags


def _env(tmp_path: Path, data_dir) -> dict:
    return harness_env(f"sqlite:///{tmp_path / 'mlflow.db'}", data_dir)


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


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the sweep ended (exit {proc.returncode}) before {what}:\n{out}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _variant_runs(uri: str, name: str) -> dict[str, list]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    runs: dict[str, list] = {}
    for run in client.search_runs([experiment.experiment_id], filter_string="tags.config_hash != ''"):
        runs.setdefault(run.data.tags["variant"], []).append(run)
    return runs


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_resumes_in_the_same_run_and_matches(tmp_path, data_dir):
    steps, every = 6000, 1000
    spec = _write(tmp_path, KILL_SPEC.format(name="kill9", steps=steps, every=every))
    first, second = expand(load_spec(spec))
    env = _env(tmp_path, data_dir)
    uri = env["MLFLOW_TRACKING_URI"]
    ckpt = LocalCheckpoints(tmp_path / "ckpt").path(first)

    proc = subprocess.Popen(
        _command(spec, tmp_path),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for(ckpt.exists, proc, "the first checkpoint")
        os.killpg(proc.pid, signal.SIGKILL)  # no handler runs: the run stays RUNNING, the points after it are lost
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    proc.stdout.close()
    killed = _variant_runs(uri, "kill9")
    assert [r.info.status for r in killed[first.id]] == ["RUNNING"]
    assert second.id not in killed, "the kill landed during the first variant"
    killed_id = killed[first.id][0].info.run_id
    saved_step = load_checkpoint(ckpt)["step"]
    assert 0 < saved_step < steps

    rerun = subprocess.run(_command(spec, tmp_path), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    after = _variant_runs(uri, "kill9")
    for variant in (first, second):
        assert [r.info.status for r in after[variant.id]] == ["FINISHED"], "one run per variant, FINISHED"
    resumed = after[first.id][0]
    assert resumed.info.run_id == killed_id
    assert int(resumed.data.tags["resumed_from_step"]) == saved_step
    assert not ckpt.exists(), "a finished variant removes its checkpoint"

    client = MlflowClient(uri)
    # 6,000 steps: an evaluation every 100 (the spec's), and a batch loss every 3rd step (at most ~2,000 points)
    for key, expected in (("loss/train", list(range(0, 6001, 100))), ("loss/batch", list(range(3, 6001, 3)))):
        history = sorted(m.step for m in client.get_metric_history(killed_id, key))
        assert history == expected, f"{key}: every step once, none twice"

    # The same variant straight through, in another store: the resumed run must end at the same loss.
    other = f"sqlite:///{tmp_path / 'straight.db'}"
    straight = run_variant(
        first,
        experiment_id=experiment_id_for(MlflowClient(other), "straight"),
        uri=other,
        data_dir=data_dir,
        threads=1,
        show_progress=False,
    )
    assert straight.status == "FINISHED"
    assert resumed.data.metrics["summary/train_loss"] == pytest.approx(straight.metrics["final_train_loss"], abs=1e-4)
    assert resumed.data.metrics["summary/val_loss"] == pytest.approx(straight.metrics["final_val_loss"], abs=1e-4)


def _ctrl_c_once_checkpointed(
    command: list[str], tmp_path: Path, env: dict, variants, sig: signal.Signals = signal.SIGINT
) -> tuple[int, str]:
    """Run ``command`` as a terminal's foreground group; once each of ``variants`` has a checkpoint, press Ctrl-C
    (or send ``sig`` to the group, as a scheduler stopping a job does with SIGTERM).

    Returns the exit code and what the command printed.
    """
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
        _wait_for(lambda: all(LocalCheckpoints(tmp_path / "ckpt").path(v).exists() for v in variants), proc, "training")
        os.killpg(proc.pid, sig)  # what Ctrl-C in a terminal does: the whole foreground group
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out


@pytest.mark.slow
@pytest.mark.parametrize(
    "jobs,executor,sig",
    [(1, "local", "SIGINT"), (2, "local", "SIGINT"), (2, "threads", "SIGINT"), (2, "local", "SIGTERM")],
)  # SIGTERM: a scheduler stopping the job
def test_ctrl_c_closes_running_variants_killed_and_exits_130(tmp_path, data_dir, jobs, executor, sig):
    spec = _write(tmp_path, KILL_SPEC.format(name="ctrl-c", steps=200_000, every=500))
    variants = expand(load_spec(spec))
    env = _env(tmp_path, data_dir)
    running = variants[:jobs]
    command = _command(spec, tmp_path, "--jobs", str(jobs), "--executor", executor)
    reference = tmp_path / "results" / "ctrl-c" / "runs.csv"  # a report of an earlier sweep (a committed one, say)
    if jobs == 1:
        reference.parent.mkdir(parents=True)
        reference.write_text("the reference\n", encoding="utf-8")
    code, out = _ctrl_c_once_checkpointed(command, tmp_path, env, running, getattr(signal, sig))
    assert code == 130, out
    assert "interrupted: 0 variant(s) finished before Ctrl-C" in out
    assert "Traceback" not in out
    assert f"finished 0, skipped 0, stopped {jobs}, failed 0" in out
    if jobs == 1:  # an interrupted sweep never replaces a report; where there was none it writes what it has
        assert reference.read_text(encoding="utf-8") == "the reference\n" and "keeps the report it had" in out
    else:
        assert "KILLED" in reference.read_text(encoding="utf-8")
    killed = _variant_runs(env["MLFLOW_TRACKING_URI"], "ctrl-c")
    assert {vid: [r.info.status for r in rs] for vid, rs in killed.items()} == {v.id: ["KILLED"] for v in running}
    for v in running:
        assert "interrupted" in killed[v.id][0].data.tags["error"]
        assert LocalCheckpoints(tmp_path / "ckpt").path(v).exists(), "kept, so that the rerun resumes from it"
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment_id = client.get_experiment_by_name("ctrl-c").experiment_id
    parents = client.search_runs([experiment_id], "tags.`harness.sweep` = 'true'")
    assert [p.info.status for p in parents] == ["KILLED"]

    # The same command again trains every variant, resuming each KILLED run from its checkpoint.
    skip, elsewhere, todo = plan_sweep(client, experiment_id, variants, False)
    assert not skip and not elsewhere and todo == variants
    store = LocalCheckpoints(tmp_path / "ckpt")
    for v in running:
        assert store.load(killed[v.id][0].info.run_id, v) is not None


@pytest.mark.slow
def test_a_run_resumed_after_ctrl_c_ends_under_the_sweep_that_finished_it_without_the_old_error(tmp_path, data_dir):
    spec = _write(tmp_path, KILL_SPEC.format(name="again", steps=20_000, every=500).replace("[16, 32]", "[16]"))
    (variant,) = expand(load_spec(spec))
    env = _env(tmp_path, data_dir)
    code, out = _ctrl_c_once_checkpointed(_command(spec, tmp_path), tmp_path, env, [variant])
    assert code == 130, out
    (killed,) = _variant_runs(env["MLFLOW_TRACKING_URI"], "again")[variant.id]
    assert killed.info.status == "KILLED" and killed.data.tags["error"] == "interrupted (Ctrl-C)"
    first_sweep = killed.data.tags[PARENT_TAG]

    rerun = subprocess.run(_command(spec, tmp_path), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    (run,) = _variant_runs(env["MLFLOW_TRACKING_URI"], "again")[variant.id]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    sweeps = client.search_runs([run.info.experiment_id], "tags.`harness.sweep` = 'true'", order_by=["start_time ASC"])
    assert [s.info.status for s in sweeps] == ["KILLED", "FINISHED"] and sweeps[0].info.run_id == first_sweep
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert int(run.data.tags["resumed_from_step"]) > 0
    assert "error" not in run.data.tags, "the interruption is history; the run ended well"
    assert run.data.tags[PARENT_TAG] == sweeps[1].info.run_id  # the UI lists it under the sweep that finished it
    assert run.data.tags["harness.resumed_from_sweep"] == first_sweep


def test_a_checkpoint_in_the_runs_artifacts_round_trips_and_is_removed_when_done(tmp_path, mlflow_store):
    """--checkpoint-store mlflow: any machine that reaches the store can resume the run."""
    from harness.tracking.checkpoints import MlflowCheckpoints

    variant = expand(load_spec(_write(tmp_path, KILL_SPEC.format(name="in-mlflow", steps=20, every=10))))[0]
    client = MlflowClient(mlflow_store)
    experiment_id = experiment_id_for(client, "in-mlflow")
    run_id, other = (client.create_run(experiment_id).info.run_id for _ in range(2))
    store = MlflowCheckpoints(client)
    store.save(run_id, variant, {"step": 3, "weights": torch.ones(2)})
    saved = store.load(run_id, variant)
    assert saved["step"] == 3 and saved["run_id"] == run_id and torch.equal(saved["weights"], torch.ones(2))
    assert store.load(other, variant) is None, "a checkpoint belongs to its own run"
    store.discard(run_id, variant)
    assert store.load(run_id, variant) is None


@pytest.mark.slow
def test_ctrl_c_of_stacked_seeds_closes_each_seed_killed_with_its_checkpoint(tmp_path, data_dir):
    """Seeds trained as one stack stop as separate runs do: each KILLED, each checkpoint kept for the rerun."""
    text = KILL_SPEC.format(name="ctrl-c-stacked", steps=200_000, every=500).replace(
        "threads: 1}", "threads: 1, stack_seeds: true}"
    )
    text = text.replace("train.batch_size: [16, 32]", "train.batch_size: [16]") + "    seeds: [1, 2]\n"
    spec = _write(tmp_path, text)
    variants = expand(load_spec(spec))
    assert [v.config.train.seed for v in variants] == [1, 2]
    env = _env(tmp_path, data_dir)
    code, out = _ctrl_c_once_checkpointed(_command(spec, tmp_path), tmp_path, env, variants)
    assert code == 130, out
    assert "Traceback" not in out
    killed = _variant_runs(env["MLFLOW_TRACKING_URI"], "ctrl-c-stacked")
    assert {vid: [r.info.status for r in rs] for vid, rs in killed.items()} == {v.id: ["KILLED"] for v in variants}
    store = LocalCheckpoints(tmp_path / "ckpt")
    for v in variants:
        run = killed[v.id][0]
        assert run.data.tags["stacked_seeds"] == "1,2" and "interrupted" in run.data.tags["error"]
        saved = store.load(run.info.run_id, v)
        assert saved is not None and saved["step"] % 500 == 0 and saved["step"] > 0
