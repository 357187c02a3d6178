"""Faults a night-long grid must survive: bad specs stop before training, one bad variant stops only itself.

The malformed-spec table checks the promise of spec.py: exit 2, a message naming the key (or the file),
and no traceback. The others check that a diverging, raising or dying variant ends FAILED with its
reason while the rest of the grid finishes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import EXPERIMENTS
from mlflow.tracking import MlflowClient
from subprocesses import harness_env, kill_group

from harness.cli import main
from harness.spec.expansion import expand
from harness.spec.parsing import load_spec
from harness.sweep import run_sweep
from harness.tracking import recorded as tracking

OK_BASE = """
name: faults
base:
  data: {dataset: tinyshakespeare}
  train: {steps: 10, eval_interval: 5, device: cpu}
  sample: {max_new_tokens: 5}
"""

# (id, spec text or None for "no file", extra CLI words, what the message must name)
MALFORMED = [
    ("unknown-top-level-key", OK_BASE + "nmae: x\n", [], "'nmae'"),
    ("missing-name", "base:\n  data: {dataset: tinyshakespeare}\n", [], "'name'"),
    ("unknown-section", "name: t\nbase:\n  trian: {steps: 10}\n", [], "'trian'"),
    (
        "typo-with-suggestion",
        "name: t\nbase:\n  data: {dataset: tinyshakespeare}\n  train: {bach_size: 32}\n",
        [],
        "did you mean 'batch_size'",
    ),
    ("string-for-int", OK_BASE.replace("steps: 10", "steps: many"), [], "train.steps"),
    ("bool-for-int", OK_BASE.replace("steps: 10", "steps: true"), [], "train.steps"),
    ("list-for-str", OK_BASE + "grid:\n  model.kind: [[bigram]]\n", [], "model.kind"),
    ("batch-size-zero", OK_BASE.replace("steps: 10", "steps: 10, batch_size: 0"), [], "train.batch_size"),
    ("lr-zero", OK_BASE.replace("steps: 10", "steps: 10, lr: 0"), [], "train.lr"),
    ("lr-negative", OK_BASE.replace("steps: 10", "steps: 10, lr: -0.001"), [], "train.lr"),
    (
        "context-longer-than-split",
        "name: t\nbase:\n  data: {path: DATA/tiny.txt}\n  train: {steps: 10, context_length: 64}\n",
        [],
        "train.context_length",
    ),
    ("unknown-model-kind", OK_BASE + "grid:\n  model.kind: [bigram, transformer]\n", [], "model.kind"),
    ("unknown-dataset", OK_BASE.replace("dataset: tinyshakespeare", "dataset: wikipedia"), [], "data.dataset"),
    ("missing-spec-file", None, [], "spec file not found"),
    ("missing-data-file", "name: t\nbase:\n  data: {path: DATA/nowhere.txt}\n", [], "data.path"),
    ("invalid-yaml", "name: t\nbase: {data: [\n", [], "invalid YAML at line"),
    ("empty-file", "", [], "empty"),
    ("list-not-mapping", "- name: t\n- base: {}\n", [], "must be a mapping"),
    ("grid-value-not-list", OK_BASE + "grid:\n  train.batch_size: 32\n", [], "train.batch_size"),
    (
        "zip-lengths-differ",
        OK_BASE + "zip:\n  - train.batch_size: [16, 32]\n    train.lr: [0.1, 0.2, 0.3]\n",
        [],
        "same length",
    ),
    (
        "exclude-not-an-axis",
        OK_BASE + "grid:\n  train.batch_size: [16, 32]\nexclude:\n  - {train.lr: 0.1}\n",
        [],
        "train.lr is not an axis",
    ),
    (
        "prompt-outside-vocabulary",
        OK_BASE.replace("max_new_tokens: 5", "max_new_tokens: 5, prompt: '한'"),
        [],
        "sample.prompt",
    ),
    ("wrong-encoding", "name: t\nbase:\n  data: {path: DATA/korean-cp949.txt}\n", [], "data.encoding"),
    ("unknown-encoding", "name: t\nbase:\n  data: {path: DATA/tiny.txt, encoding: klingon}\n", [], "data.encoding"),
    ("unknown-override-key", OK_BASE, ["train.setps=5"], "'train.setps'"),
    ("override-bad-value", OK_BASE, ["train.steps=-3"], "train.steps"),
    (
        "train-fraction-out-of-range",
        OK_BASE.replace("dataset: tinyshakespeare", "dataset: tinyshakespeare, train_fraction: 1.5"),
        [],
        "data.train_fraction",
    ),
    ("seeds-not-integers", OK_BASE + "seeds: [1, two]\n", [], "seeds"),
    ("unknown-device", OK_BASE.replace("device: cpu", "device: tpu"), [], "train.device"),
    ("hidden-size-zero", OK_BASE + "grid:\n  model.hidden_sizes: [[256, 0]]\n", [], "model.hidden_sizes"),
]


def _write_data(folder):
    folder.mkdir(exist_ok=True)
    (folder / "tiny.txt").write_text("abcdefghij" * 5, encoding="utf-8")  # 45 train / 5 val characters
    (folder / "korean-cp949.txt").write_bytes(("안녕하세요 반갑습니다\n" * 50).encode("cp949"))


@pytest.mark.parametrize("case, text, extra, named", MALFORMED, ids=[m[0] for m in MALFORMED])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_malformed_spec_exits_2_naming_the_key(
    tmp_path, mlflow_store, data_dir, capsys, case, text, extra, named, command
):
    _write_data(tmp_path / "data")
    spec = tmp_path / "spec.yaml"
    if text is not None:
        spec.write_text(text.replace("DATA/", f"{tmp_path / 'data'}/"), encoding="utf-8")
    data = ["--data-dir", str(data_dir)] if data_dir else []
    code = main(
        [command, str(spec), *extra, *data]
        + (["--no-progress", "--results-dir", str(tmp_path / "r")] if command == "run" else [])
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert named in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "mlflow.db").exists() or not MlflowClient(mlflow_store).search_runs(
        [e.experiment_id for e in MlflowClient(mlflow_store).search_experiments()]
    ), "nothing may run before the error"


KOREAN_SPEC = OK_BASE.replace("name: faults", "name: faults\ndescription: 한국어 실험")
# (id, the spec file's bytes, what the message must say); every one exits 2 naming the file
UNREADABLE = [
    (
        "control-character",
        OK_BASE.replace("name: faults", 'name: faults\ndescription: "bell\x07"').encode(),
        ":3:19: invalid YAML: character #x0007 (a control character) is not allowed",
    ),
    (
        "utf-16-with-bom",
        KOREAN_SPEC.encode("utf-16"),
        "UTF-16 text, not UTF-8 (it starts with a UTF-16 byte-order mark)",
    ),
    (
        "utf-16-without-bom",
        KOREAN_SPEC.encode("utf-16-le"),
        "UTF-16 text, not UTF-8 (it has NUL bytes, as UTF-16 text does)",
    ),
    ("cp949", KOREAN_SPEC.encode("cp949"), ":3:14: not UTF-8 text"),
    (
        "duplicate-key",
        (OK_BASE + "  data: {dataset: korean-chatbot}\n").encode(),
        ":7:3: base.data: duplicate key (first at line 4)",
    ),
]


@pytest.mark.parametrize("case, raw, named", UNREADABLE, ids=[u[0] for u in UNREADABLE])
def test_a_spec_file_yaml_cannot_read_as_written_exits_2_naming_where(tmp_path, capsys, case, raw, named):
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(raw)
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert (f"{spec}{named}" if named.startswith(":") else named) in err and str(spec) in err, err
    assert "Traceback" not in err


def test_a_utf8_spec_with_a_byte_order_mark_is_read(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(b"\xef\xbb\xbf" + KOREAN_SPEC.encode())
    assert main(["validate", str(spec)]) == 0


def test_malformed_spec_from_the_shell_has_no_traceback(tmp_path):
    """The same promise through a real process: what a user sees in the terminal."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(OK_BASE.replace("steps: 10", "steps: 10, bach_size: 32"), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "validate", str(spec)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 2
    assert "did you mean 'batch_size'" in proc.stderr and "Traceback" not in proc.stderr


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path, data_dir):
    """`harness validate SPEC | head -1`: the reader closes the pipe while the variants are still being listed."""
    env = {**os.environ, "HARNESS_DATA_DIR": str(data_dir)} if data_dir else dict(os.environ)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "harness", "validate", str(EXPERIMENTS / "gpt-ladder.yaml")],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=600,
        )
    finally:
        os.close(write)
    assert proc.returncode == 141, proc.stderr  # a shell's code for a command ended by SIGPIPE
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr


def _spec(tmp_path, body: str):
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def _runs(uri: str, name: str):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    return [r for r in client.search_runs([experiment.experiment_id]) if "config_hash" in r.data.tags]


def test_diverging_variant_fails_with_reason_and_the_others_finish(tmp_path, mlflow_store, data_dir, capsys):
    spec = _spec(
        tmp_path,
        """
        name: nan-run
        base:
          data: {dataset: tinyshakespeare}
          train: {steps: 20, eval_interval: 10, device: cpu}
          sample: {max_new_tokens: 5}
        grid:
          train.lr: [1.0e-3, 1.0e6, 2.0e-3]
    """,
    )
    data = ["--data-dir", str(data_dir)] if data_dir else []
    code = main(["run", str(spec), "--no-progress", "--results-dir", str(tmp_path / "results"), *data])
    err = capsys.readouterr().err
    assert code == 1
    by_lr = {float(r.data.params["train.lr"]): r for r in _runs(mlflow_store, "nan-run")}
    assert {lr: r.info.status for lr, r in by_lr.items()} == {1e-3: "FINISHED", 1e6: "FAILED", 2e-3: "FINISHED"}
    reason = by_lr[1e6].data.tags["error"]
    assert "DivergedError" in reason and "lower train.lr" in reason
    # the CLI says which variant failed and why (ids show the typed value: 1.0e6 is the number 1000000.0)
    assert "FAILED lr=1000000.0: DivergedError" in err
    assert "summary/train_loss" in by_lr[2e-3].data.metrics


def test_exception_in_one_variant_does_not_stop_the_others(tmp_path, mlflow_store, data_dir, monkeypatch):
    """A bug that raises inside one variant (here: building the FFN) fails that run alone, with its traceback."""
    real_build = tracking.build_model

    def build(config, vocab, context_length):
        if config.kind == "ffn":
            raise RuntimeError("simulated bug in the ffn model")
        return real_build(config, vocab, context_length)

    monkeypatch.setattr(tracking, "build_model", build)
    spec_path = _spec(
        tmp_path,
        """
        name: raising
        base:
          data: {dataset: tinyshakespeare}
          train: {steps: 20, eval_interval: 10, device: cpu}
          sample: {max_new_tokens: 5}
        grid:
          model.kind: [ffn, bigram]
    """,
    )
    spec = load_spec(spec_path)
    outcome = run_sweep(
        spec,
        expand(spec),
        data_dir=data_dir,
        checkpoint_dir=tmp_path / "ckpt",
        show_progress=False,
        log=lambda *a: None,
    )
    status = {r.variant_id: r.status for r in outcome.results}
    assert status == {"kind=ffn": "FAILED", "kind=bigram": "FINISHED"}
    client = MlflowClient(mlflow_store)
    for result in outcome.failed:
        run = client.get_run(result.run_id)
        assert run.info.status == "FAILED" and "simulated bug" in run.data.tags["error"]
        assert any(a.path == "error.txt" for a in client.list_artifacts(result.run_id))
    assert client.get_run(outcome.parent_run_id).info.status == "FAILED"


def _children(pid: int) -> list[tuple[int, bytes]]:
    """The child processes of ``pid`` (Linux /proc) with their command lines."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                found.append((int(entry), cmdline))
    return found


def _workers(pid: int) -> list[int]:
    """The --jobs worker processes of the sweep ``pid``, oldest first: the children of its forkserver (or, where
    workers are spawned, its own spawned children); not multiprocessing's resource tracker."""
    found = []
    for child, cmdline in _children(pid):
        if b"spawn_main" in cmdline:
            found.append(child)
        elif b"forkserver" in cmdline:
            found.extend(worker for worker, _ in _children(child))
    return sorted(found)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds worker processes through /proc")
def test_worker_killed_by_the_os_fails_only_its_variant(tmp_path, data_dir):
    """kill -9 of one --jobs worker (as the OOM killer would): its run ends FAILED with why; the other finishes."""
    spec = _two_worker_spec(tmp_path, "worker-crash", "steps: 4000, eval_interval: 100, checkpoint_interval: 200")
    env = _store_env(tmp_path, data_dir)
    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness",
            "run",
            str(spec),
            "--jobs",
            "2",
            "--no-progress",
            "--checkpoint-dir",
            str(ckpt),
            "--results-dir",
            str(tmp_path / "results"),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not (ckpt.is_dir() and len(list(ckpt.glob("*.pt"))) == 2):  # both workers are training
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoints appeared"
            time.sleep(0.02)
        victim = _workers(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 1, out
    runs = _runs(env["MLFLOW_TRACKING_URI"], "worker-crash")
    statuses = sorted(r.info.status for r in runs)
    assert statuses == ["FAILED", "FINISHED"], out
    failed = next(r for r in runs if r.info.status == "FAILED")
    assert "worker process died (exit code -9)" in failed.data.tags["error"]
    assert "worker process died" in out and "Traceback" not in out


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds worker processes through /proc")
def test_a_sweep_killed_alone_leaves_its_workers_to_close_their_runs_killed_and_exit(tmp_path, data_dir):
    """kill -9 of the sweep process only (not its group, as an OOM killer picks one process): each --jobs worker
    sees the sweep gone, closes its run KILLED and exits, and no forkserver is left behind."""
    spec = _two_worker_spec(tmp_path, "sweep-killed", "steps: 200000, eval_interval: 100")
    env = _store_env(tmp_path, data_dir)
    command = [sys.executable, "-m", "harness", "run", str(spec), "--jobs", "2", "--no-progress"]
    command += ["--results-dir", str(tmp_path / "results")]
    log = tmp_path / "sweep.log"
    with open(log, "w") as out:  # a file, not a pipe: no one reads it while the sweep runs
        proc = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    left: list[int] = []
    try:
        deadline = time.monotonic() + 600
        while len(_training(env["MLFLOW_TRACKING_URI"], "sweep-killed")) < 2:  # both past their claims, training
            assert proc.poll() is None and time.monotonic() < deadline, f"the workers did not start:\n{log.read_text()}"
            time.sleep(0.1)
        server = [child for child, cmdline in _children(proc.pid) if b"forkserver" in cmdline]
        workers = _workers(proc.pid)
        assert len(workers) == 2, workers
        proc.kill()  # the sweep alone
        proc.wait()
        deadline = time.monotonic() + 60
        while any(_alive(pid) for pid in workers + server) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [pid for pid in workers + server if _alive(pid)]
    finally:
        kill_group(proc.pid)  # whatever is left of the group: nothing, when the test passes
    assert not left, f"still running 60 s after the sweep was killed: {left}"
    runs = _runs(env["MLFLOW_TRACKING_URI"], "sweep-killed")
    assert [(r.info.status, r.data.tags.get("error")) for r in runs] == [("KILLED", "interrupted (Ctrl-C)")] * 2


def _two_worker_spec(tmp_path, name: str, train: str):
    """Two bigram variants on Tiny Shakespeare (batch 16 and 32): one per --jobs 2 worker."""
    body = f"""
        name: {name}
        base:
          data: {{dataset: tinyshakespeare}}
          train: {{{train}, device: cpu}}
          sample: {{max_new_tokens: 5}}
        grid:
          train.batch_size: [16, 32]
    """
    return _spec(tmp_path, body)


def _store_env(tmp_path, data_dir) -> dict[str, str]:
    return harness_env(f"sqlite:///{tmp_path / 'mlflow.db'}", data_dir)


def _training(uri: str, name: str) -> list:
    """The RUNNING runs of experiment ``name`` that have logged an evaluation past step 0. The store is read once
    the sweep has made it: a client opened first would migrate the new file itself, as a second program."""
    if not Path(uri.removeprefix("sqlite:///")).exists():
        return []
    try:
        running = [r for r in _runs(uri, name) if r.info.status == "RUNNING"]
        client = MlflowClient(uri)
        return [r for r in running if any(m.step > 0 for m in client.get_metric_history(r.info.run_id, "loss/val"))]
    except Exception:  # the store or the experiment does not exist yet
        return []


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
