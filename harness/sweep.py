"""Run every variant of a spec: pre-flight checks, resume, a parent run, local or parallel execution."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import os
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from harness.data import DataError, UnknownCharacterError, load_corpus
from harness.report import SWEEP_TAG
from harness.spec import Spec, SpecError, Variant
from harness.tracking import (
    PARENT_TAG,
    VariantResult,
    check_tracking_reachable,
    checkpoint_path,
    experiment_id_for,
    git_commit,
    retrying,
    run_variant,
    tracking_uri,
)

DEFAULT_CHECKPOINT_DIR = Path(".harness") / "checkpoints"


def estimated_cost(variant: Variant, vocab: int) -> float:
    """Relative training cost (multiply-adds of a fast-path step x steps), to start the longest first."""
    model = variant.config.model
    per_row = vocab if model.kind == "bigram" else vocab * model.hidden_sizes[0] + sum(
        a * b for a, b in zip(model.hidden_sizes, [*model.hidden_sizes[1:], vocab]))
    return float(variant.config.train.steps * vocab * per_row)


def preflight(variants: list[Variant], data_dir: Path | None) -> dict[str, float]:
    """Load each dataset once and check what depends on it, so no variant fails after others trained.

    Returns each variant's estimated cost.
    """
    costs = {}
    for variant in variants:
        config = variant.config
        try:
            corpus = load_corpus(config.data, data_dir)
        except DataError as exc:
            raise SpecError(f"variant {variant.id}: {exc}") from exc
        shortest = min(len(corpus.train), len(corpus.val))
        if config.train.context_length >= shortest:
            raise SpecError(
                f"variant {variant.id}: train.context_length {config.train.context_length} must be smaller than "
                f"the shortest split ({len(corpus.train)} train / {len(corpus.val)} val tokens of {config.data.dataset!r})"
            )
        try:
            corpus.tokenizer.encode_tensor(config.sample.prompt)
        except UnknownCharacterError as exc:
            raise SpecError(f"variant {variant.id}: sample.prompt: {exc} of dataset {config.data.dataset!r}") from exc
        costs[variant.id] = estimated_cost(variant, corpus.tokenizer.vocab_size)
    return costs


@dataclass
class SweepOutcome:
    parent_run_id: str
    results: list[VariantResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # variant id -> FINISHED run id
    interrupted: bool = False

    @property
    def failed(self) -> list[VariantResult]:
        return [r for r in self.results if r.status != "FINISHED"]


def existing_runs(client: MlflowClient, experiment_id: str) -> dict[str, list]:
    """Variant runs already in the experiment, by config hash."""
    by_hash: dict[str, list] = {}
    page_token = None
    while True:
        page = client.search_runs([experiment_id], filter_string="tags.config_hash != ''", max_results=1000, page_token=page_token)
        for run in page:
            by_hash.setdefault(run.data.tags.get("config_hash"), []).append(run)
        page_token = page.token
        if not page_token:
            return by_hash


def plan_resume(client, experiment_id, variants, force, checkpoint_dir):
    """Split variants into (to skip: id -> run id, to run: [(variant, run id to resume or None)])."""
    runs = existing_runs(client, experiment_id)
    skip, todo = {}, []
    for variant in variants:
        previous = runs.get(variant.config.config_hash(), [])
        finished = [r for r in previous if r.info.status == "FINISHED"]
        if finished and not force:
            skip[variant.id] = finished[0].info.run_id
            continue
        resume = None
        unfinished = sorted((r for r in previous if r.info.status in ("RUNNING", "KILLED")), key=lambda r: -r.info.start_time)
        if unfinished and not force and checkpoint_path(checkpoint_dir, variant).exists():
            resume = unfinished[0].info.run_id
        for stale in unfinished:
            if stale.info.run_id != resume and stale.info.status == "RUNNING":
                # Left RUNNING by a process that died (kill -9): close it so the UI tells the truth.
                retrying(lambda: client.set_tag(stale.info.run_id, "error", "process died; superseded by a rerun"))
                retrying(lambda: client.set_terminated(stale.info.run_id, status="KILLED"))
        todo.append((variant, resume))
    return skip, todo


def run_sweep(
    spec: Spec,
    variants: list[Variant],
    *,
    data_dir: Path | None = None,
    jobs: int = 1,
    executor: str = "local",
    ray_address: str | None = None,
    force: bool = False,
    overrides: dict | None = None,
    command: str | None = None,
    checkpoint_dir: Path = DEFAULT_CHECKPOINT_DIR,
    show_progress: bool = True,
    log=print,
) -> SweepOutcome:
    """Train what is not already FINISHED; every variant ends in its own closed MLflow run."""
    from tqdm.auto import tqdm

    uri = tracking_uri()
    check_tracking_reachable(uri)
    costs = preflight(variants, data_dir)
    client = MlflowClient(uri)
    experiment_id = retrying(lambda: experiment_id_for(client, spec.name))
    skip, todo = plan_resume(client, experiment_id, variants, force, checkpoint_dir)
    for vid, run_id in skip.items():
        log(f"skip {vid}: already FINISHED in run {run_id} (--force reruns it)")
    if executor == "ray" and todo:  # before the parent run: a missing or unreachable Ray exits 2, nothing recorded
        from harness.ray_executor import connect

        connect(ray_address)

    parent = retrying(lambda: client.create_run(experiment_id, run_name=f"{spec.name} sweep", tags={
        SWEEP_TAG: "true", "spec": str(spec.path), "command": command or shlex.join(sys.argv), "git_commit": git_commit(),
        "variants": str(len(variants)), "skipped": str(len(skip)),
    }))
    parent_id = parent.info.run_id
    # What `harness report SPEC` needs to rebuild exactly this sweep's table later.
    retrying(lambda: client.log_batch(parent_id, params=[
        Param("overrides", json.dumps(overrides or {}, sort_keys=True)),
        Param("seeds", json.dumps(spec.seeds or None)),
    ]))
    retrying(lambda: client.log_artifact(parent_id, str(spec.path)))
    outcome = SweepOutcome(parent_id, skipped=skip)
    overall = tqdm(total=len(todo), desc=f"{spec.name}", position=0, disable=not show_progress, unit="variant", dynamic_ncols=True)
    common = dict(experiment_id=experiment_id, parent_run_id=parent_id, data_dir=data_dir, uri=uri,
                  checkpoint_dir=checkpoint_dir, show_progress=show_progress)
    try:
        if executor == "ray":
            from harness.ray_executor import run_on_ray

            for result in run_on_ray(todo, ray_address=ray_address, **common):
                outcome.results.append(result)
                overall.update()
        elif jobs <= 1:
            for variant, resume in todo:
                try:
                    result = run_variant(variant, resume_run_id=resume, **common)
                except Exception as exc:  # the run could not even be opened; the next variants still train
                    result = VariantResult(variant.id, resume or "", "FAILED", {}, f"could not start: {type(exc).__name__}: {exc}")
                outcome.results.append(result)
                overall.update()
        else:
            threads = max(1, (os.cpu_count() or 1) // jobs)
            todo.sort(key=lambda item: -costs[item[0].id])  # longest first: the pool ends together

            def on_result(result: VariantResult) -> None:
                outcome.results.append(result)
                overall.update()

            run_in_processes(todo, jobs, on_result, threads=threads, **common)
    except KeyboardInterrupt:
        outcome.interrupted = True
    finally:
        overall.close()
        status = "KILLED" if outcome.interrupted else ("FAILED" if outcome.failed else "FINISHED")
        retrying(lambda: client.set_terminated(parent_id, status=status))
    return outcome


def close_lost_run(client: MlflowClient, experiment_id: str, parent_run_id: str, variant: Variant,
                   resume: str | None, status: str, reason: str) -> str:
    """Close the run of a worker that died without closing it (kill -9, out of memory); returns its id or ''."""
    try:
        run_ids = [r.info.run_id for r in retrying(lambda: client.search_runs(
            [experiment_id], filter_string=f"tags.config_hash = '{variant.config.config_hash()}' and "
            f"tags.`{PARENT_TAG}` = '{parent_run_id}' and attributes.status = 'RUNNING'"))]
        if resume and retrying(lambda: client.get_run(resume)).info.status == "RUNNING":
            run_ids.insert(0, resume)  # a resumed run keeps the parent tag of the sweep that began it
        for run_id in run_ids:
            retrying(lambda: client.set_tag(run_id, "error", reason))
            retrying(lambda: client.set_terminated(run_id, status=status))
        return run_ids[0] if run_ids else (resume or "")
    except Exception:  # the store is failing too; the rerun's plan_resume closes it later
        return resume or ""


# -- worker processes (--jobs N) -------------------------------------------------------------------
# One spawned process per variant rather than a ProcessPoolExecutor: a worker that dies (out of memory,
# a crash in native code) then takes down only its own variant, where a broken pool fails them all.


def _worker_main(conn, variant: Variant, kwargs: dict) -> None:
    """A worker process: train one variant and send its VariantResult back through ``conn``."""

    def on_interrupt(signum, frame):  # Ctrl-C, or SIGTERM from a scheduler: close the run KILLED
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the run's closing short
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # but the sweep's terminate() still ends a stuck worker
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_interrupt)
    signal.signal(signal.SIGTERM, on_interrupt)
    parent = os.getppid()

    def watch_parent():  # the sweep was killed (kill -9): stop as after Ctrl-C, closing the run KILLED
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch_parent, daemon=True).start()
    try:
        result = run_variant(variant, **kwargs)
    except KeyboardInterrupt:
        result = VariantResult(variant.id, "", "KILLED", {}, "interrupted (Ctrl-C)")
    except Exception as exc:
        result = VariantResult(variant.id, kwargs.get("resume_run_id") or "", "FAILED", {}, f"could not start: {type(exc).__name__}: {exc}")
    try:
        conn.send(result)
        conn.close()
    except OSError:  # the sweep is gone (kill -9); the run is closed all the same
        pass


def run_in_processes(todo, jobs: int, on_result, *, threads: int, experiment_id: str, parent_run_id: str, uri: str,
                     grace_s: float = 60.0, **common) -> None:
    """Train ``jobs`` variants at a time in spawned processes, calling ``on_result`` as each one ends.

    On Ctrl-C the running workers close their runs KILLED (they get SIGINT too, or from here), nothing
    new starts, and KeyboardInterrupt is re-raised once they have stopped.
    """
    context = multiprocessing.get_context("spawn")
    queue = list(todo)
    running: dict = {}  # receiving end of a worker's pipe -> (process, variant, resume run id, progress bar row)
    client = MlflowClient(uri)

    def collect(conn, interrupted: bool) -> None:
        process, variant, resume, _ = running.pop(conn)
        try:
            result = conn.recv()
        except (EOFError, OSError):
            result = None
        conn.close()
        process.join()
        if result is None and interrupted:  # stopped by Ctrl-C before it reported (or before it began)
            run_id = close_lost_run(client, experiment_id, parent_run_id, variant, resume, "KILLED", "interrupted (Ctrl-C)")
            result = VariantResult(variant.id, run_id, "KILLED", {}, "interrupted (Ctrl-C)") if run_id else None
        elif result is None:
            reason = (f"worker process died (exit code {process.exitcode}) before reporting: "
                      "killed by the OS (out of memory?) or a crash in native code")
            run_id = close_lost_run(client, experiment_id, parent_run_id, variant, resume, "FAILED", reason)
            result = VariantResult(variant.id, run_id, "FAILED", {}, reason)
        if result is not None:
            on_result(result)

    try:
        while queue or running:
            while queue and len(running) < jobs:
                variant, resume = queue.pop(0)
                receive, send = context.Pipe(duplex=False)
                row = min(set(range(1, jobs + 1)) - {r[3] for r in running.values()})  # a free progress bar row
                kwargs = dict(resume_run_id=resume, threads=threads, progress_position=row,
                              experiment_id=experiment_id, parent_run_id=parent_run_id, uri=uri, **common)
                process = context.Process(target=_worker_main, args=(send, variant, kwargs), name=f"harness {variant.id}")
                process.start()
                send.close()  # only the worker's end stays open, so a dead worker reads as EOF
                running[receive] = (process, variant, resume, row)
            for conn in multiprocessing.connection.wait(list(running)):
                collect(conn, interrupted=False)
    except KeyboardInterrupt:
        deadline = time.monotonic() + grace_s
        for process, *_ in running.values():
            if process.is_alive():  # Ctrl-C in a terminal reached them already; kill -INT of this process did not
                try:
                    os.kill(process.pid, signal.SIGINT)
                except OSError:
                    pass
        try:
            while running and time.monotonic() < deadline:
                for conn in multiprocessing.connection.wait(list(running), timeout=max(0.0, deadline - time.monotonic())):
                    collect(conn, interrupted=True)
        finally:  # past the grace period, or a second Ctrl-C: stop them now
            for conn in list(running):
                running[conn][0].terminate()
                collect(conn, interrupted=True)
        raise
