"""Run every variant of a spec: pre-flight checks, a parent run, and an executor that trains what is left.

Several sweeps may run one spec into one store at once: each variant is claimed in the store before it
trains (harness/tracking/claims.py), so it trains exactly once, and the run of a sweep that died is taken over.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from harness.data.corpora import DataError, load_corpus
from harness.data.tokenizers.base import UnknownCharacterError
from harness.data.tokenizers.jamo import NotNFCError
from harness.executors import make_executor
from harness.models.registry import build_model, count_parameters
from harness.spec.problems import SpecError
from harness.spec.records import Spec, Variant
from harness.tracking import claims
from harness.tracking.claims import SWEEP_TAG
from harness.tracking.naming import run_names
from harness.tracking.recorded import PHASE_TAG, VariantResult, progress_off
from harness.tracking.store import (
    OUTAGE,
    TrackingUnreachable,
    bound_http_waits,
    check_tracking_reachable,
    closing,
    experiment_id_for,
    git_commit,
    retrying,
    source_tags,
    tracking_uri,
)
from harness.train.device import pick_device

DEFAULT_CHECKPOINT_DIR = Path(".harness") / "checkpoints"


def estimated_cost(variant: Variant, vocab: int) -> float:
    """Relative training cost (multiply-adds of a step x steps), to start the longest first.

    Bigram and FFN take a step over one table of ``vocab`` rows (the fast path); a context model, forward
    and backward (~3x the forward's multiply-adds) over every position of the batch, counted on an empty
    (meta) copy of the model.
    """
    model, train = variant.config.model, variant.config.train
    if model.kind == "bigram":
        return float(train.steps * vocab * vocab)
    if model.kind == "ffn":
        per_row = vocab * model.hidden_sizes[0] + sum(
            a * b for a, b in zip(model.hidden_sizes, [*model.hidden_sizes[1:], vocab], strict=True)
        )
        return float(train.steps * vocab * per_row)
    with torch.device("meta"):
        params = count_parameters(build_model(model, vocab, train.context_length))
    return float(train.steps * 3 * train.batch_size * train.context_length * params)


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
            if str(exc).startswith("data.tokenizer"):  # the tokenizer could not be built for this text
                key = "data.vocab_size" if config.data.tokenizer == "bpe" else "data.tokenizer"
                raise SpecError(f"{variant.where(key)}: {key}: variant {variant.id}: {exc}") from exc
            raise SpecError(f"variant {variant.id}: {exc}") from exc
        shortest = min(len(corpus.train), len(corpus.val))
        if config.train.context_length >= shortest:
            raise SpecError(
                f"variant {variant.id}: train.context_length {config.train.context_length} must be smaller than "
                f"the shortest split ({len(corpus.train)} train / {len(corpus.val)} val tokens "
                f"of {config.data.dataset!r})"
            )
        try:
            corpus.tokenizer.encode_tensor(config.sample.prompt)
        except UnknownCharacterError as exc:
            raise SpecError(f"variant {variant.id}: sample.prompt: {exc} of dataset {config.data.dataset!r}") from exc
        except NotNFCError as exc:
            raise SpecError(
                f"{variant.where('sample.prompt')}: sample.prompt: variant {variant.id} (tokenizer jamo): {exc}"
            ) from exc
        costs[variant.id] = estimated_cost(variant, corpus.tokenizer.vocab_size)
    return costs


@dataclass
class SweepOutcome:
    parent_run_id: str
    results: list[VariantResult] = field(default_factory=list)  # what this sweep trained (or tried to)
    skipped: dict[str, str] = field(default_factory=dict)  # variant id -> FINISHED run id
    elsewhere: dict[str, str] = field(default_factory=dict)  # variant id -> why not here ("running elsewhere: ...")
    interrupted: bool = False
    unreachable: str | None = None  # why the sweep stopped: the tracking server stopped answering
    unrecorded: list[str] = field(default_factory=list)  # variants whose end the store does not hold

    @property
    def failed(self) -> list[VariantResult]:
        return [r for r in self.results if r.status != "FINISHED"]

    def add(self, result: VariantResult) -> None:
        if result.status != "SKIPPED":
            self.results.append(result)
        elif result.error and result.error.startswith("already FINISHED"):  # by another sweep, meanwhile
            self.skipped[result.variant_id] = result.run_id
        else:
            self.elsewhere[result.variant_id] = result.error or "claimed elsewhere"


def plan_sweep(client: MlflowClient, experiment_id: str, variants: list[Variant], force: bool):
    """Split variants into (FINISHED: id -> run id, live elsewhere: id -> why, to train: [variant]).

    A first look only: each variant is claimed again right before it trains, when the store may have changed.
    """
    by_hash = claims.existing_runs(client, experiment_id)
    skip, elsewhere, todo = {}, {}, []
    for variant in variants:
        previous = [r for h in claims.variant_hashes(variant) for r in by_hash.get(h, [])]
        finished = [r for r in previous if r.info.status == "FINISHED"]
        live = [r for r in previous if claims.is_live(r) and r.data.tags.get(claims.CLAIM_TAG, "won") == "won"]
        if finished and not force:
            skip[variant.id] = finished[0].info.run_id
        elif live:
            elsewhere[variant.id] = f"running elsewhere: {claims.describe_owner(live[0])}"
        else:
            todo.append(variant)
    return skip, elsewhere, todo


def left_to_train(spec: Spec, variants: list[Variant]) -> list[Variant]:
    """The ``variants`` the store holds no FINISHED run of (all of them in a new experiment)."""
    client = claims.open_store(tracking_uri())
    experiment = retrying(lambda: client.get_experiment_by_name(spec.name))
    if experiment is None:
        return list(variants)
    _, elsewhere, todo = plan_sweep(client, experiment.experiment_id, variants, force=False)
    return [v for v in variants if v in todo or v.id in elsewhere]


CPU_STACK_MAX_ACTIVATIONS = 32_768
"""On a CPU a GPT's seeds stack by default while batch_size x context_length x n_embd (one seed's activations
of one layer) is at most this. benchmarks/seed_stacking.py, one thread (results/bench/seed_stacking.csv): the
ladder's LayerNorm rung (32 x 8 x 32 = 8,192) trains 4-16 stacked seeds at 1.5-2.0x one seed's seed-steps/s;
gpt-cpu.yaml's GPT (12 x 64 x 128 = 98,304), whose matmuls already fill the core, at 0.72-0.87x."""


def stacks_seeds(variant: Variant) -> bool:
    """Whether ``variant`` may train stacked with its other seeds (``train.stack_seeds``; null: where the benchmark
    shows it faster). On a GPU: every kind, a GPT only without dropout. Such a GPT stacks natively
    (harness/models/gpt_stack.py): on an H200 gpt-cpu.yaml's 2 seeds stacked trained 1.31x faster eager, as fast
    as CUDA graphs, and 1.20x faster with graphs in threads (results/bench/grid_gpu.csv, device call 3). A GPT with
    dropout would stack by vmap, and vmap over CUDA attention failed in the backward on an H200 ("LSE is not
    correctly aligned"). On a CPU: a small GPT without dropout (``CPU_STACK_MAX_ACTIVATIONS``), but not the bigram
    or FFN, whose one-table steps gain nothing."""
    choice = variant.config.train.stack_seeds
    if choice is None:
        config = variant.config
        device, model = pick_device(config.train.device).type, config.model
        if device == "cuda":
            return model.kind != "gpt" or model.dropout == 0
        small = config.train.batch_size * config.train.context_length * model.n_embd <= CPU_STACK_MAX_ACTIVATIONS
        return device == "cpu" and model.kind == "gpt" and model.dropout == 0 and small
    return choice


def plan_units(todo: list[Variant]) -> list[list[Variant]]:
    """The executor's units of work: variants that differ only in ``train.seed`` (and may stack) form one
    unit, trained as one stacked model; every other variant is a unit of its own. Order of first appearance."""
    from harness.train.stacking import stack_key

    units: dict[str, list[Variant]] = {}
    for variant in todo:
        key = stack_key(variant.config) if stacks_seeds(variant) else f"alone:{variant.id}"
        units.setdefault(key, []).append(variant)
    return list(units.values())


def parent_note(command: str, overrides: dict | None, seeds: list[int] | None) -> str:
    """The parent run's description in the MLflow UI: how to run this sweep again."""
    lines = ["Sweep run by:", "", f"    {command}", "", "Overrides (applied to every variant):", ""]
    lines += [f"- `{k}={v}`" for k, v in sorted((overrides or {}).items())] or ["- none"]
    if seeds:
        lines += ["", f"Seeds: {', '.join(map(str, seeds))}"]
    return "\n".join(lines)


def longest_first(units: list[list[Variant]], costs: dict[str, float]) -> list[list[Variant]]:
    """The units by estimated cost, costliest first, so that parallel workers end together (a stack costs what
    its seeds cost together)."""
    return sorted(units, key=lambda unit: -sum(costs[v.id] for v in unit))


def run_sweep(
    spec: Spec,
    variants: list[Variant],
    *,
    data_dir: Path | None = None,
    jobs: int = 1,
    executor: str = "local",
    ray_address: str | None = None,
    slurm=None,
    force: bool = False,
    overrides: dict | None = None,
    command: str | None = None,
    checkpoint_dir: Path = DEFAULT_CHECKPOINT_DIR,
    checkpoint_store: str = "local",
    show_progress: bool = True,
    phase: str | None = None,
    run_label: str = "sweep",
    log=print,
) -> SweepOutcome:
    """Train what is not FINISHED or live elsewhere; every variant this sweep trains ends in its own closed run.

    ``phase`` (tune, decide, untuned; harness/tuning.py) tags the parent run and, but for untuned, which is a
    decide run too, every run it trains; ``run_label`` names the parent run ("<name> <run_label>")."""
    from tqdm.auto import tqdm

    uri = tracking_uri()
    bound_http_waits()
    check_tracking_reachable(uri)
    costs = preflight(variants, data_dir)
    client = claims.open_store(uri)
    experiment_id = retrying(lambda: experiment_id_for(client, spec.name))
    if spec.description:  # the experiment's description in the MLflow UI
        retrying(lambda: client.set_experiment_tag(experiment_id, claims.NOTE_TAG, spec.description))
    claims.close_stale_parents(client, experiment_id, log=log)
    skip, elsewhere, todo = plan_sweep(client, experiment_id, variants, force)
    for vid, run_id in skip.items():
        log(f"skip {vid}: already FINISHED in run {run_id} (--force reruns it)")
    for vid, why in elsewhere.items():
        log(f"skip {vid}: {why}")
    runner = make_executor(executor, jobs=jobs, ray_address=ray_address, slurm=slurm)
    if todo:  # before the parent run: a missing or unreachable Ray exits 2, nothing recorded
        runner.prepare()

    command = command or shlex.join(sys.argv)
    commit = git_commit()
    tags = {
        SWEEP_TAG: "true",
        "spec": str(spec.path),
        "command": command,
        "git_commit": commit,
        "variants": str(len(variants)),
        "skipped": str(len(skip)),
        claims.NOTE_TAG: parent_note(command, overrides, spec.seeds),
        **source_tags(),
        "mlflow.source.name": str(spec.path),  # a sweep's source is its spec
        **claims.owner_tags(),
        **({PHASE_TAG: phase} if phase else {}),
    }
    parent = retrying(lambda: client.create_run(experiment_id, run_name=f"{spec.name} {run_label}", tags=tags))
    parent_id = parent.info.run_id
    heartbeat = claims.Heartbeat(client, parent_id).start()
    # What `harness report SPEC` needs to rebuild exactly this sweep's table later.
    retrying(
        lambda: client.log_batch(
            parent_id,
            params=[
                Param("overrides", json.dumps(overrides or {}, sort_keys=True)),
                Param("seeds", json.dumps(spec.seeds or None)),
            ],
        )
    )
    retrying(lambda: client.log_artifact(parent_id, str(spec.path)))
    outcome = SweepOutcome(parent_id, skipped=skip, elsewhere=elsewhere)
    overall = tqdm(
        total=len(todo),
        desc=f"{spec.name}",
        position=0,
        disable=progress_off(show_progress),
        unit="variant",
        dynamic_ncols=True,
    )
    names = run_names({v.id: v.axes for v in variants})  # names of the whole sweep, so that they differ early
    train_kwargs = dict(
        experiment_id=experiment_id,
        parent_run_id=parent_id,
        data_dir=data_dir,
        uri=uri,
        names=names,
        checkpoint_dir=checkpoint_dir,
        checkpoint_store=checkpoint_store,
        show_progress=show_progress,
        finished_before_ms=parent.info.start_time if force else None,
        **({"phase": "decide" if phase == "untuned" else phase} if phase else {}),
    )
    units = plan_units(todo)
    if jobs > 1:
        units = longest_first(units, costs)

    ended = itertools.count(1)

    def on_result(result: VariantResult) -> None:
        outcome.add(result)
        overall.update()
        count = next(ended)
        if result.status == "SKIPPED":
            log(f"skip {result.variant_id}: {result.error}")
        elif result.status == "FINISHED" and overall.disable:  # no bar (not a terminal, or --no-progress): a line
            log(f"[{count}/{len(todo)}] done {result.variant_id}")  # per variant says how far the sweep is
        marker = f"{TrackingUnreachable.__name__}: "
        if marker in (result.error or ""):  # this process or a worker gave up waiting for the server
            raise TrackingUnreachable(result.error.partition(marker)[2])

    try:
        runner.run(units, train_kwargs, on_result)
    except KeyboardInterrupt:
        outcome.interrupted = True
    except TrackingUnreachable as exc:
        outcome.unreachable = str(exc)
    finally:
        overall.close()
        heartbeat.stop()
        stopped = outcome.interrupted or outcome.unreachable is not None
        status = "KILLED" if stopped else ("FAILED" if outcome.failed else "FINISHED")
        try:
            with closing() if stopped else contextlib.nullcontext():
                retrying(lambda: client.set_terminated(parent_id, status=status))
        except TrackingUnreachable as exc:
            outcome.unreachable = outcome.unreachable or str(exc)
    if outcome.unreachable or (outcome.interrupted and OUTAGE.since is not None):
        # what the store may not hold: every variant this sweep did not see FINISHED
        finished = {r.variant_id for r in outcome.results if r.status == "FINISHED"}
        outcome.unrecorded = [v.id for v in todo if v.id not in finished]
    return outcome
