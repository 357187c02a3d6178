"""Run every variant of a spec: pre-flight checks, resume, a parent run, local or parallel execution."""

from __future__ import annotations

import json
import multiprocessing
import os
import shlex
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
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

    parent = retrying(lambda: client.create_run(experiment_id, run_name=f"{spec.name} sweep", tags={
        SWEEP_TAG: "true", "spec": str(spec.path), "command": shlex.join(sys.argv), "git_commit": git_commit(),
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
                outcome.results.append(run_variant(variant, resume_run_id=resume, **common))
                overall.update()
        else:
            threads = max(1, (os.cpu_count() or 1) // jobs)
            todo.sort(key=lambda item: -costs[item[0].id])  # longest first: the pool ends together
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
                pending = {
                    pool.submit(run_variant, variant, resume_run_id=resume, threads=threads,
                                progress_position=1 + i % jobs, **common): variant
                    for i, (variant, resume) in enumerate(todo)
                }
                try:
                    while pending:
                        done, _ = wait(pending, return_when=FIRST_COMPLETED)
                        for future in done:
                            variant = pending.pop(future)
                            outcome.results.append(_result_of(future, variant))
                            overall.update()
                except KeyboardInterrupt:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    except KeyboardInterrupt:
        outcome.interrupted = True
    finally:
        overall.close()
        status = "KILLED" if outcome.interrupted else ("FAILED" if outcome.failed else "FINISHED")
        retrying(lambda: client.set_terminated(parent_id, status=status))
    return outcome


def _result_of(future, variant: Variant) -> VariantResult:
    """A worker that crashed outright (not a training error, which run_variant records) still reports."""
    try:
        return future.result()
    except Exception as exc:
        return VariantResult(variant.id, "", "FAILED", {}, f"worker crashed: {type(exc).__name__}: {exc}")
