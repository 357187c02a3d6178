"""MLflow plumbing and ``run_variant(variant) -> metrics``, which always closes its run.

Everything goes through ``MlflowClient`` with explicit run ids (no global active run), so the same
code serves the main process, worker processes and Ray tasks.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import time
import traceback
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from harness.data import load_corpus
from harness.models import build_model
from harness.spec import Variant
from harness.train import Trainer, pick_device

PARENT_TAG = "mlflow.parentRunId"
METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call
FLUSH_SECONDS = 15.0


class TrackingError(Exception):
    """The tracking store cannot be used; raised before any training."""


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else a SQLite store ``mlflow.db`` in the current folder (the project root)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def check_tracking_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not after MLflow's minutes of retries, when a tracking server is down."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise TrackingError(
            f"MLflow tracking server {uri} is not reachable ({getattr(exc, 'reason', exc)}). "
            "Start it (make server) or unset MLFLOW_TRACKING_URI to use the local SQLite store."
        ) from exc


def retrying(call: Callable[[], Any], attempts: int = 8) -> Any:
    """Retry a store call that lost a race for SQLite's write lock ("database is locked")."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:  # MLflow wraps the sqlite error in its own exception types
            if "locked" not in str(exc).lower() or attempt == attempts - 1:
                raise
            time.sleep(0.05 * 2**attempt)


def default_artifact_location(uri: str, name: str) -> str | None:
    """Artifacts of a SQLite store live beside the database file, not wherever the command ran."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri[len("sqlite:///"):])
    return (database.parent / "mlartifacts" / name).resolve().as_uri()


def experiment_id_for(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=default_artifact_location(client.tracking_uri, name))
    except Exception:  # another process created it first
        return client.get_experiment_by_name(name).experiment_id


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit the code ran from, with ``-dirty`` when the tree had uncommitted changes."""
    here = Path(__file__).resolve().parent  # the harness's own checkout, wherever the command runs from
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class BufferedMetrics:
    """Collects metric points and writes them with ``log_batch``: one store call per ~1000 points.

    ``auto_flush=False`` holds points until ``flush()`` (used with checkpoints, so that a resumed run
    never logs a step twice).
    """

    def __init__(self, client: MlflowClient, run_id: str, auto_flush: bool = True):
        self.client = client
        self.run_id = run_id
        self.auto_flush = auto_flush
        self.pending: list[Metric] = []
        self.last_flush = time.monotonic()
        self.logged = 0
        self.stored_through: dict[str, int] = {}  # key -> last step already in the store (set on resume)

    def log(self, key: str, value: float, step: int) -> None:
        if step <= self.stored_through.get(key, -1):
            return
        self.pending.append(Metric(key, float(value), int(time.time() * 1000), int(step)))
        if self.auto_flush and (len(self.pending) >= METRICS_PER_BATCH or time.monotonic() - self.last_flush > FLUSH_SECONDS):
            self.flush()

    def log_dict(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.log(key, value, step)

    def flush(self) -> None:
        while self.pending:
            chunk = self.pending[:METRICS_PER_BATCH]
            retrying(lambda: self.client.log_batch(self.run_id, metrics=chunk))
            self.logged += len(chunk)
            del self.pending[: len(chunk)]
        self.last_flush = time.monotonic()


def _param_value(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


@dataclass
class VariantResult:
    variant_id: str
    run_id: str
    status: str  # FINISHED, FAILED, KILLED, or SKIPPED (claimed elsewhere; error says why)
    metrics: dict[str, float]
    error: str | None = None


def checkpoint_path(checkpoint_dir: Path, variant: Variant) -> Path:
    return checkpoint_dir / f"{variant.config.config_hash()}.pt"


def run_variant(
    variant: Variant,
    *,
    experiment_id: str,
    parent_run_id: str | None = None,
    data_dir: Path | None = None,
    uri: str | None = None,
    checkpoint_dir: Path | None = None,
    checkpoint_store: str = "local",
    finished_before_ms: int | None = None,
    threads: int = 0,
    progress_position: int = 1,
    show_progress: bool = True,
) -> VariantResult:
    """Train one variant into its own MLflow run; the run ends FINISHED, FAILED (with why) or KILLED.

    The run is claimed first (harness/runs.py): a variant FINISHED or live elsewhere comes back SKIPPED
    with the reason; a stale or KILLED run with a checkpoint is resumed.
    """
    from tqdm.auto import tqdm

    from harness import runs
    from harness.checkpoints import checkpoint_store as make_checkpoint_store

    client = MlflowClient(uri or tracking_uri())
    config = variant.config
    tags = {
        "variant": variant.id,
        "config_hash": config.config_hash(),
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
        tags[runs.DRIVER_TAG] = parent_run_id
    store = make_checkpoint_store(checkpoint_store, client, checkpoint_dir) if config.train.checkpoint_interval else None

    def create_run() -> str:
        claim_tags = {**tags, **runs.owner_tags(), runs.CLAIM_TAG: "pending"}
        return retrying(lambda: client.create_run(experiment_id, run_name=variant.id, tags=claim_tags)).info.run_id

    # Resume only from the run's own checkpoint: restarting at step 0 inside a run that already holds
    # metrics would log its steps twice, so without one a stale run is closed and a new one started.
    claim = runs.claim_variant(client, experiment_id, variant, create_run, driver=parent_run_id,
                               load_checkpoint=(lambda rid: store.load(rid, variant)) if store else (lambda rid: None),
                               finished_before_ms=finished_before_ms, log=tqdm.write)
    if claim.skip:
        return VariantResult(variant.id, claim.run_id, "SKIPPED", {}, claim.skip)
    run_id, saved = claim.run_id, claim.saved
    heartbeat = runs.Heartbeat(client, run_id).start()

    metrics = BufferedMetrics(client, run_id, auto_flush=store is None)
    bar = None
    try:  # from here on, whatever happens (Ctrl-C during setup included) closes the run
        if saved is None:
            params = [Param(k, _param_value(v)) for k, v in config.flat().items()]
            retrying(lambda: client.log_batch(run_id, params=params))
            retrying(lambda: client.log_text(run_id, config.to_yaml(), "config.yaml"))
        if threads:
            torch.set_num_threads(threads)
        elif config.train.threads:
            torch.set_num_threads(config.train.threads)
        device = pick_device(config.train.device)
        corpus = load_corpus(config.data, data_dir)
        torch.manual_seed(config.train.seed)
        model = build_model(config.model, corpus.tokenizer.vocab_size, config.train.context_length)
        trainer = Trainer(model, corpus, config.train, device)
        retrying(lambda: client.log_batch(run_id, tags=[RunTag("device", str(device)), RunTag("vocab_size", str(corpus.tokenizer.vocab_size))]))
        resumed_from = 0
        if saved is not None:
            trainer.load_state_dict(saved)
            resumed_from = trainer.state.step
            # A kill between a checkpoint's flush and its save leaves points past the checkpoint in the
            # store; the resumed run recomputes them, and must not log them twice.
            metrics.stored_through = _stored_through(client, run_id)
            retrying(lambda: client.set_tag(run_id, "resumed_from_step", str(resumed_from)))
        if resumed_from == 0:
            before = trainer.sample(corpus.tokenizer, config.sample.prompt, config.sample.max_new_tokens)
            retrying(lambda: client.log_text(run_id, before, "samples/before.txt"))

        bar = tqdm(total=config.train.steps, initial=resumed_from, desc=variant.id, position=progress_position,
                   leave=False, disable=not show_progress, dynamic_ncols=True, unit="step")

        def on_progress(done: int, train_loss: float) -> None:
            bar.update(done - bar.n)
            bar.set_postfix(train_loss=f"{train_loss:.4f}")

        def on_checkpoint(t: Trainer) -> None:
            metrics.flush()  # points up to here are stored before the state that produced them
            store.save(run_id, variant, t.state_dict())

        final = trainer.run(metrics, on_progress, on_checkpoint if store is not None else None)
        after = trainer.sample(corpus.tokenizer, config.sample.prompt, config.sample.max_new_tokens)
        retrying(lambda: client.log_text(run_id, after, "samples/after.txt"))
        metrics.log_dict(final, config.train.steps)
        metrics.flush()
        retrying(lambda: client.set_terminated(run_id, status="FINISHED"))
        if store is not None:
            store.discard(run_id, variant)
        return VariantResult(variant.id, run_id, "FINISHED", final)
    except KeyboardInterrupt:
        _close(client, metrics, run_id, "KILLED", "interrupted (Ctrl-C)", None)
        raise
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        _close(client, metrics, run_id, "FAILED", reason, traceback.format_exc())
        return VariantResult(variant.id, run_id, "FAILED", {}, reason)
    finally:
        heartbeat.stop()
        if bar is not None:
            bar.close()


def _stored_through(client: MlflowClient, run_id: str) -> dict[str, int]:
    """The last step of each metric already stored for ``run_id``."""
    keys = retrying(lambda: client.get_run(run_id)).data.metrics
    return {key: max((m.step for m in retrying(lambda: client.get_metric_history(run_id, key))), default=-1) for key in keys}


def _close(client: MlflowClient, metrics: BufferedMetrics, run_id: str, status: str, reason: str, details: str | None) -> None:
    """Record why a run stopped, keeping every point already collected; never raise from here."""
    # A KILLED run with checkpoints resumes from its last one: points after it would be logged twice.
    keep_pending = metrics.auto_flush or status != "KILLED"
    for action in (
        metrics.flush if keep_pending else (lambda: None),
        lambda: client.set_tag(run_id, "error", reason[:5000]),
        lambda: client.log_text(run_id, details or reason, "error.txt"),
        lambda: client.set_terminated(run_id, status=status),
    ):
        try:
            retrying(action)
        except Exception:  # the store itself is failing; the other steps may still work
            pass
