"""A recorded run: ``run_variant(variant) -> result`` trains one variant (``run_stacked`` a stack of seeds) into
its MLflow run, with params, datasets, curves, samples and a config artifact, and always closes the run
(FAILED with the reason when it fails).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import textwrap
import threading
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mlflow.entities import Dataset as DatasetEntity
from mlflow.entities import DatasetInput, InputTag, Param, RunTag
from mlflow.tracking import MlflowClient

from harness.data.corpora import CATALOG, Corpus, DataConfig, content_sha256, load_corpus
from harness.metrics import SUMMARY_STEP
from harness.models.registry import build_model
from harness.spec.keys import IDENTITY_VERSION
from harness.spec.records import Variant
from harness.tracking import claims
from harness.tracking.logged_model import log_model
from harness.tracking.naming import run_name
from harness.tracking.store import (
    OUTAGE,
    PARENT_TAG,
    SAMPLES_TABLE,
    WRAP_COLUMNS,
    BufferedMetrics,
    bound_http_waits,
    closing,
    git_commit,
    log_dataset_inputs,
    retrying,
    source_tags,
    tracking_uri,
)
from harness.train.device import pick_device
from harness.train.graphs import graph_status
from harness.train.trainer import DivergedError, Trainer

log = logging.getLogger(__name__)

# Held from ``torch.manual_seed`` to the built model and Trainer, so that runs trained by threads of one process
# (--executor threads) each start from exactly the weights their seed gives alone.
SEEDED_BUILD = threading.Lock()
PHASE_TAG = "phase"  # tune: a run that chose a variant's point; decide: a run whose metric the verdicts use
DIVERGED_TAG = "diverged"  # a tuning run whose loss became NaN or inf: FINISHED, its value the worst


SYSTEM_METRICS_INTERVAL_S = 5.0  # MLflow's MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL wins


def _param_value(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


@dataclass
class VariantResult:
    variant_id: str
    run_id: str
    status: str  # FINISHED, FAILED, KILLED, or SKIPPED (claimed elsewhere; error says why)
    metrics: dict[str, float]
    error: str | None = None


def wrap(text: str, width: int = WRAP_COLUMNS) -> str:
    """``text`` with lines of at most ``width`` characters; the model's own newlines stay."""
    lines = text.split("\n")
    return "\n".join(
        line if len(line) <= width else "\n".join(textwrap.wrap(line, width, replace_whitespace=False))
        for line in lines
    )


def dataset_name(config: DataConfig) -> str:
    return config.dataset if config.dataset in CATALOG else Path(config.path).name


def dataset_inputs(config: DataConfig, data_dir: Path | None, corpus: Corpus) -> list[DatasetInput]:
    """The corpus as two MLflow datasets, ``NAME/train`` and ``NAME/val`` (contexts train and val).

    The digest is the file's sha256 (cut to MLflow's 36 characters; the profile holds all of it). The
    two splits need names of their own: MLflow keeps one input per (name, digest) and run.
    """
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    sha256 = content_sha256(config, data_dir)
    name = dataset_name(config)
    if config.dataset in CATALOG:
        source = HTTPDatasetSource(CATALOG[config.dataset].url)
    else:
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": two local-file sources, alike
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(Path(config.path).expanduser().resolve()))
    inputs = []
    for context, tokens in (("train", corpus.train), ("val", corpus.val)):
        meta = MetaDataset(source, name=f"{name}/{context}", digest=sha256[:36])
        profile = {
            "sha256": sha256,
            "split": config.split,
            "train_fraction": config.train_fraction,
            "tokens": len(tokens),
            "vocab_size": corpus.tokenizer.vocab_size,
        }
        entity = DatasetEntity(**meta.to_dict(), profile=json.dumps(profile))
        inputs.append(DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)]))
    return inputs


def note(variant: Variant, name: str) -> str:
    """The run's description in the UI: what this variant varies, in one line."""
    varies = ", ".join(f"{key}={value}" for key, value in variant.axes.items()) or "nothing (the base config)"
    return f"**{name}**: variant `{variant.id}`; varies {varies}. Full config: `config.yaml`."


def start_system_metrics(run_id: str, uri: str):
    """MLflow's CPU/memory (and GPU, with pynvml) monitor on ``run_id``, or None where it cannot run.

    ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false`` turns it off; MLflow's sampling variables apply.
    """
    if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true").strip().lower() in ("false", "0", "no"):
        return None
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # not four INFO lines per run
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, tracking_uri=uri)
        monitor.harness_first_step = monitor._logging_step  # to tell, at the end, whether it logged anything
    except Exception as exc:  # psutil missing, or a monitor that cannot start here: train without it
        log.warning("no system metrics for run %s: %s", run_id, exc)
        return None
    monitor.start()
    return monitor


def stop_system_metrics(monitor) -> None:
    """Stop the monitor once (the success path stops it before closing the run; ``finally`` makes sure).

    A run shorter than one sampling interval would end with no sample at all: it gets one, taken now.
    """
    if monitor is None or getattr(monitor, "harness_stopped", False):
        return
    monitor.harness_stopped = True
    try:
        monitor.finish()
        if monitor._logging_step == monitor.harness_first_step:  # nothing was published while it ran
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
    except Exception:  # the run's own outcome matters more than its system metrics
        pass


class _VariantRun:
    """One variant's MLflow run while it trains, in phases, so that one run (``run_variant``) and a stack
    of seeds (``run_stacked``) open, record and close their runs the same way."""

    def __init__(
        self,
        variant: Variant,
        *,
        experiment_id: str,
        parent_run_id: str | None = None,
        data_dir: Path | None = None,
        uri: str | None = None,
        checkpoint_dir: Path | None = None,
        checkpoint_store: str = "local",
        finished_before_ms: int | None = None,
        progress_position: int = 1,
        show_progress: bool = True,
        names: dict[str, str] | None = None,
        should_stop: Callable[[], bool] | None = None,
        phase: str | None = None,
    ):
        from harness.tracking.checkpoints import checkpoint_store as make_checkpoint_store

        self.variant, self.experiment_id, self.parent_run_id = variant, experiment_id, parent_run_id
        self.data_dir, self.finished_before_ms = data_dir, finished_before_ms
        self.progress_position, self.show_progress = progress_position, show_progress
        self.should_stop = (
            should_stop  # asked at every evaluation; True stops the run as Ctrl-C does (--executor threads)
        )
        self.uri = uri or tracking_uri()
        bound_http_waits()
        self.client = MlflowClient(self.uri)
        self.config = variant.config
        self.name = (names or {}).get(variant.id) or run_name(variant)
        self.tags = {
            "variant": variant.id,
            "config_hash": self.config.config_hash(),
            "identity_version": str(IDENTITY_VERSION),
            "git_commit": git_commit(),
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "mlflow.note.content": note(variant, self.name),
            **source_tags(),
        }
        if parent_run_id:
            self.tags[PARENT_TAG] = parent_run_id
            self.tags[claims.DRIVER_TAG] = parent_run_id
        self.phase = phase
        if phase:  # tune (choosing a variant's point) or decide (its verdicts): filter on tags.phase in the UI
            self.tags[PHASE_TAG] = phase
        self.store = (
            make_checkpoint_store(checkpoint_store, self.client, checkpoint_dir)
            if self.config.train.checkpoint_interval
            else None
        )
        self.run_id = ""
        self.heartbeat = self.metrics = self.monitor = self.bar = self.trainer = None
        self.stop_reason: str | None = None
        self.killed = False
        self.corpus = self.before = None

    def claim(self) -> VariantResult | None:
        """Claim the variant in the store (harness/tracking/claims.py); a VariantResult SKIPPED when it is not ours."""

        client = self.client

        def create_run() -> str:
            claim_tags = {**self.tags, **claims.owner_tags(), claims.CLAIM_TAG: "pending"}
            return retrying(
                lambda: client.create_run(self.experiment_id, run_name=self.name, tags=claim_tags)
            ).info.run_id

        store, variant = self.store, self.variant
        # Resume only from the run's own checkpoint: restarting at step 0 inside a run that already holds
        # metrics would log its steps twice, so without one a stale run is closed and a new one started.
        claim = claims.claim_variant(
            client,
            self.experiment_id,
            variant,
            create_run,
            driver=self.parent_run_id,
            load_checkpoint=(lambda rid: store.load(rid, variant)) if store else (lambda rid: None),
            finished_before_ms=self.finished_before_ms,
            log=tqdm_write,
        )
        if claim.skip:
            return VariantResult(variant.id, claim.run_id, "SKIPPED", {}, claim.skip)
        self.run_id, self.saved = claim.run_id, claim.saved
        self.heartbeat = claims.Heartbeat(client, self.run_id).start()
        self.metrics = BufferedMetrics(client, self.run_id, auto_flush=store is None)
        return None

    def prepare(self, threads: int = 0) -> Trainer:
        """Record the config and data, build the Trainer (resumed from the run's checkpoint), sample before."""
        from tqdm.auto import tqdm

        client, run_id, config, saved = self.client, self.run_id, self.config, self.saved
        self.monitor = start_system_metrics(run_id, self.uri)
        if saved is None:
            params = [Param(k, _param_value(v)) for k, v in config.flat().items()]
            retrying(lambda: client.log_batch(run_id, params=params))
            retrying(lambda: client.log_text(run_id, config.to_yaml(), "config.yaml"))
        if threads:
            torch.set_num_threads(threads)
        elif config.train.threads:
            torch.set_num_threads(config.train.threads)
        device = pick_device(config.train.device)
        corpus = self.corpus = load_corpus(config.data, self.data_dir)
        if saved is None:
            log_dataset_inputs(client, run_id, dataset_inputs(config.data, self.data_dir, corpus))
        with SEEDED_BUILD:  # the global generator is this run's from the seed to the built model
            torch.manual_seed(config.train.seed)
            model = build_model(config.model, corpus.tokenizer.vocab_size, config.train.context_length)
            trainer = self.trainer = Trainer(model, corpus, config.train, device)
        retrying(
            lambda: client.log_batch(
                run_id, tags=[RunTag("device", str(device)), RunTag("vocab_size", str(corpus.tokenizer.vocab_size))]
            )
        )
        resumed_from = 0
        if saved is not None:
            trainer.load_state_dict(saved)
            resumed_from = trainer.state.step
            # A kill between a checkpoint's flush and its save leaves points past the checkpoint in the
            # store; the resumed run recomputes them, and must not log them twice.
            self.metrics.stored_through = _stored_through(client, run_id)
            retrying(lambda: client.set_tag(run_id, "resumed_from_step", str(resumed_from)))
        if resumed_from == 0:
            self.before = trainer.sample(corpus.tokenizer, config.sample.prompt, config.sample.max_new_tokens)
            retrying(lambda: client.log_text(run_id, wrap(self.before), "samples/before.txt"))
        else:  # sampled by the run's first process; the wrapped text is what is left of it
            self.before = _read_artifact(client, run_id, "samples/before.txt")
        self.bar = tqdm(
            total=config.train.steps,
            initial=resumed_from,
            desc=self.name,
            position=self.progress_position,
            leave=False,
            disable=progress_off(self.show_progress),
            dynamic_ncols=True,
            unit="step",
        )
        return trainer

    def on_progress(self, done: int, train_loss: float) -> None:
        if self.should_stop is not None and self.should_stop():
            # A stop that says why (a SLURM preemption) keeps the progress: a checkpoint here, resumed on requeue.
            self.stop_reason = getattr(self.should_stop, "reason", None)
            if self.stop_reason and self.store is not None and self.trainer is not None:
                self.on_checkpoint(self.trainer)
            raise KeyboardInterrupt  # closes the run KILLED, as Ctrl-C does
        if OUTAGE.overdue():  # the heartbeat has found the server silent for too long: stop here, not at the next write
            raise OUTAGE.give_up(RuntimeError(f"no answer while training {self.variant.id}"))
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix(train_loss=f"{train_loss:.4f}")

    def on_checkpoint(self, trainer: Trainer) -> None:
        self.metrics.flush()  # points up to here are stored before the state that produced them
        self.store.save(self.run_id, self.variant, trainer.state_dict())

    def train(self, trainer: Trainer) -> VariantResult:
        """Train alone and close the run: FINISHED, or FAILED with why (Ctrl-C is the caller's to handle)."""
        try:
            final = trainer.run(self.metrics, self.on_progress, self.on_checkpoint if self.store is not None else None)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            return self.fail(exc)
        return self.conclude(trainer, final)

    def conclude(self, trainer: Trainer, outcome: dict | Exception, stepper=None) -> VariantResult:
        """Close the run from a training outcome: its final metrics (FINISHED) or why it stopped (FAILED).
        ``stepper``: what ran the steps, if not ``trainer`` (a ``StackedTrainer``)."""
        if isinstance(outcome, Exception):
            return self.fail(outcome)
        try:
            return self.finish(trainer, outcome, stepper or trainer)
        except Exception as exc:
            return self.fail(exc)

    def finish(self, trainer: Trainer, final: dict[str, float], stepper) -> VariantResult:
        """Sample after training, log the summary and samples, and close the run FINISHED. ``stepper``: what
        ran the steps (``trainer`` or its stack)."""
        client, run_id, config = self.client, self.run_id, self.config
        graphs = graph_status(stepper)
        if graphs is not None:  # asked for: say whether the steps were replayed or why they ran eagerly
            retrying(lambda: client.set_tag(run_id, GRAPHS_TAG, graphs))
        after = trainer.sample(self.corpus.tokenizer, config.sample.prompt, config.sample.max_new_tokens)
        retrying(lambda: client.log_text(run_id, wrap(after), "samples/after.txt"))
        # One row per run. The experiment page's artifact view pivots the runs' tables: grouped by its
        # first column (the prompt, the same in every run) and comparing the second, it lays the runs'
        # samples side by side.
        row = {
            "prompt": [config.sample.prompt],
            "after": [after],
            "before": [self.before],
            "variant": [self.variant.id],
        }
        retrying(lambda: client.log_table(run_id, data=row, artifact_file=SAMPLES_TABLE))
        self.metrics.log_dict(final, SUMMARY_STEP)
        self.metrics.flush()
        if config.train.log_model:  # before FINISHED: a finished run has its model (a failure here fails the run)
            log_model(
                client,
                run_id,
                self.experiment_id,
                trainer.model,
                self.corpus.tokenizer,
                config,
                self.variant.id,
                step=config.train.steps,
            )
        stop_system_metrics(self.monitor)
        retrying(lambda: client.set_terminated(run_id, status="FINISHED"))
        if self.store is not None:
            self.store.discard(run_id, self.variant)
        return VariantResult(self.variant.id, run_id, "FINISHED", final)

    def fail(self, exc: BaseException) -> VariantResult:
        """Close the run FAILED with why (and the traceback as error.txt). A tuning run that diverged is a
        result, not a failure: it closes FINISHED with the tag ``diverged`` (a rerun does not train it again).
        An error raised while a Ctrl-C unwound (``interrupted_by``) is the Ctrl-C: the run closes KILLED and
        KeyboardInterrupt is raised again."""
        if interrupted_by(exc):
            self.kill()
            raise KeyboardInterrupt from exc
        if self.phase == "tune" and isinstance(exc, DivergedError):
            return self.diverged(exc)
        stop_system_metrics(self.monitor)
        reason = f"{type(exc).__name__}: {exc}"
        details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        _close(self.client, self.metrics, self.run_id, "FAILED", reason, details)
        return VariantResult(self.variant.id, self.run_id, "FAILED", {}, reason)

    def diverged(self, exc: DivergedError) -> VariantResult:
        stop_system_metrics(self.monitor)
        client, run_id = self.client, self.run_id
        self.metrics.flush()
        retrying(
            lambda: client.log_batch(
                run_id, tags=[RunTag(DIVERGED_TAG, "true"), RunTag("error", f"diverged: {exc}"[:5000])]
            )
        )
        retrying(lambda: client.set_terminated(run_id, status="FINISHED"))
        if self.store is not None:
            self.store.discard(run_id, self.variant)
        return VariantResult(self.variant.id, run_id, "FINISHED", {}, f"diverged: {exc}")

    def kill(self) -> None:
        if self.killed:  # closed KILLED already (a Ctrl-C seen by ``fail``, then by the caller)
            return
        self.killed = True
        stop_system_metrics(self.monitor)
        _close(self.client, self.metrics, self.run_id, "KILLED", self.stop_reason or "interrupted (Ctrl-C)", None)

    def release(self) -> None:
        stop_system_metrics(self.monitor)
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self.bar is not None:
            self.bar.close()


def interrupted_by(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while a KeyboardInterrupt unwound (one is in its ``__context__`` chain).

    A library's clean-up can replace a Ctrl-C with its own error: SIGINT landing in ``torch.vmap`` between its
    ``try`` and its nesting increment makes the ``finally`` pop an empty stack, and the KeyboardInterrupt comes
    out as "RuntimeError: !dynamicLayerStack.empty() INTERNAL ASSERT FAILED". That is still a Ctrl-C, and the
    run it stopped is KILLED (with its checkpoint kept for the rerun), not FAILED.
    """
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        if isinstance(link, KeyboardInterrupt):
            return True
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return False


def progress_off(show_progress: bool) -> bool | None:
    """tqdm's ``disable`` for a bar: True when asked for none (``--no-progress``), else None, which tqdm reads as
    "off unless its output (stderr) is a terminal", so a log file or a CI job gets no bar redrawn line by line."""
    return True if not show_progress else None


def tqdm_write(line: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(line)


def run_variant(variant: Variant, *, threads: int = 0, **options) -> VariantResult:
    """Train one variant into its own MLflow run; the run ends FINISHED, FAILED (with why) or KILLED.

    The run is claimed first (harness/tracking/claims.py): a variant FINISHED or live elsewhere comes back SKIPPED
    with the reason; a stale or KILLED run with a checkpoint is resumed. ``options`` are ``_VariantRun``'s:
    ``experiment_id``, ``parent_run_id``, ``data_dir``, ``uri``, checkpoints, progress, and ``names`` (the
    sweep's run names by variant id, ``naming.run_names``, so that they differ early).
    """
    run = _VariantRun(variant, **options)
    skipped = run.claim()
    if skipped is not None:
        return skipped
    try:  # from here on, whatever happens (Ctrl-C during setup included) closes the run
        return run.train(run.prepare(threads))
    except KeyboardInterrupt:
        run.kill()
        raise
    except Exception as exc:
        return run.fail(exc)
    finally:
        run.release()


STACKED_TAG = "stacked_seeds"  # on each run of a stack: the seeds that trained together
GRAPHS_TAG = "cuda_graphs"  # on a run whose steps were to be CUDA graphs: graph_status's "replayed" or "eager: why"


def run_stacked(variants: list[Variant], *, threads: int = 0, **options) -> list[VariantResult]:
    """Train variants that differ only in ``train.seed`` as one stack (harness/train/stacking.py), one run each.

    Each seed is claimed, recorded and closed on its own, as by ``run_variant``: a seed claimed elsewhere is
    skipped, one that diverges fails alone. Seeds that resume from a checkpoint train alone (their steps differ).
    """
    from harness.train.stacking import StackedTrainer

    show_progress = options.pop("show_progress", True)
    runs_ = [_VariantRun(v, **options, show_progress=show_progress and i == 0) for i, v in enumerate(variants)]
    results: dict[str, VariantResult] = {}
    claimed = []
    for run in runs_:
        skipped = run.claim()
        if skipped is not None:
            results[run.variant.id] = skipped
        else:
            claimed.append(run)
    try:
        trainers = {}
        for run in claimed:
            try:
                trainers[run.variant.id] = run.prepare(threads)
            except Exception as exc:
                results[run.variant.id] = run.fail(exc)
        fresh = [run for run in claimed if run.variant.id in trainers and trainers[run.variant.id].state.step == 0]
        alone = [run for run in claimed if run.variant.id in trainers and run not in fresh]
        if len(fresh) < 2:
            alone, fresh = alone + fresh, []
        if fresh:
            seeds = ",".join(str(run.config.train.seed) for run in fresh)
            for run in fresh:
                retrying(lambda run=run: run.client.set_tag(run.run_id, STACKED_TAG, seeds))
            stack = None
            try:
                stack = StackedTrainer([trainers[run.variant.id] for run in fresh])
                checkpoint = (lambda s, t: fresh[s].on_checkpoint(t)) if fresh[0].store is not None else None
                outcomes = stack.run([run.metrics for run in fresh], fresh[0].on_progress, checkpoint)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # the stack itself failed (out of memory...): every seed in it did
                outcomes = [exc] * len(fresh)  # (an error that was a Ctrl-C: ``fail`` raises it again)
            for run, outcome in zip(fresh, outcomes, strict=True):
                results[run.variant.id] = run.conclude(trainers[run.variant.id], outcome, stack)
        for run in alone:
            results[run.variant.id] = run.train(trainers[run.variant.id])
    except KeyboardInterrupt:
        for run in claimed:
            if run.variant.id not in results:
                run.kill()
        raise
    finally:
        for run in claimed:
            run.release()
    return [results[v.id] for v in variants]


def run_unit(variants: list[Variant], **options) -> list[VariantResult]:
    """An executor's unit of work: one variant, or seeds that train as one stack (``sweep.plan_units``)."""
    if len(variants) == 1:
        return [run_variant(variants[0], **options)]
    return run_stacked(variants, **options)


def _read_artifact(client: MlflowClient, run_id: str, path: str) -> str:
    """A text artifact of ``run_id``, or '' when it is missing."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as tmp:
            return Path(retrying(lambda: client.download_artifacts(run_id, path, tmp))).read_text(encoding="utf-8")
    except Exception:
        return ""


def _stored_through(client: MlflowClient, run_id: str) -> dict[str, int]:
    """The last step of each metric already stored for ``run_id``."""
    keys = retrying(lambda: client.get_run(run_id)).data.metrics
    return {
        key: max((m.step for m in retrying(lambda key=key: client.get_metric_history(run_id, key))), default=-1)
        for key in keys
    }


def _close(
    client: MlflowClient, metrics: BufferedMetrics, run_id: str, status: str, reason: str, details: str | None
) -> None:
    """Record why a run stopped, keeping every point already collected; never raise from here, and wait for a silent
    tracking server at most ``store.CLOSE_WAIT_S`` in all."""
    # A KILLED run with checkpoints resumes from its last one: points after it would be logged twice.
    keep_pending = metrics.auto_flush or status != "KILLED"
    with closing():
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
