"""The seed grid on one device, lever by lever: how long experiments/seed.yaml takes to train.

Rows (one device, one process, one run of this script):

- ``baseline``: every variant alone, one after the other, with the step as it was before issue 9 (on a GPU,
  ``bincount`` reads the largest id back to the host: a sync per step);
- ``sync-free``: every variant alone, no host sync inside a step (``Trainer(sync_free=True)``);
- ``sync-free+stacked``: the seeds of each variant as one stacked model (``harness.stacking``; needs 2+ seeds);
- ``graphs`` and ``graphs+stacked``: the same, each step captured once as a CUDA graph and replayed
  (``train.cuda_graphs``, harness/graphs.py; CUDA only, a CPU row records why it did not run).

These three time the training loops only (every step and every evaluation at the default cadence, no MLflow).
Then, end to end with every lever at its default (MLflow store, samples, reports, process start):

- ``harness-run-jobs-N``, for each N of ``--jobs`` (1 2 8): ``harness run experiments/seed.yaml`` itself, with N
  worker processes sharing the device.

The table is rewritten after every row, so a run stopped at a time limit keeps the rows it finished; a row that
fails records its error and the next one runs.

Columns: ``wall_s`` is measured at ``steps`` steps per variant. ``wall_50k_s`` is ``wall_s`` scaled to the
spec's 50,000 steps, a projection (the column says so), equal to the measurement when ``--steps 50000``.
``max_loss_diff_vs_cpu``: before any timing, every variant trains ``--check-steps`` (200) steps on the device path
(no host syncs, seeds stacked) and as a separate run on the CPU; the largest per-step fp32 loss difference.

Run:
    python benchmarks/grid_gpu.py --device cuda --seeds 1337 1338          # everything at 5,000 steps: the levers' shares
    python benchmarks/grid_gpu.py --device cuda --levers sync-free+stacked --run-steps 50000   # the goal, measured
    python benchmarks/grid_gpu.py --device cpu --steps 20 --run-steps 20    # a smoke run anywhere
The first fits a 10-minute device slot if a step runs at the H100's measured 500-1,000 steps/s or faster; run
it before the second, whose length depends on what it finds.
Writes results/bench/grid_gpu.csv (or ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

from harness.data import load_corpus, resolve_data_dir  # noqa: E402
from harness.models import build_model  # noqa: E402
from harness.spec import expand, load_spec, parse_overrides, with_seeds  # noqa: E402
from harness.graphs import WARMUP_STEPS, graph_status  # noqa: E402
from harness.stacking import StackedTrainer  # noqa: E402
from harness.sweep import plan_units  # noqa: E402
from harness.train import Trainer, pick_device  # noqa: E402
from step_speed import synchronize, write_csv  # noqa: E402

SPEC = ROOT / "experiments" / "seed.yaml"
SPEC_STEPS = 50_000
DEFAULT_OUT = "results/bench/grid_gpu.csv"


class Discard:
    """A metric sink that keeps nothing: the levers are timed without MLflow."""

    def log(self, key, value, step):
        pass


def variants(seeds: list[int], steps: int, device: str, pinned: dict):
    overrides = {**pinned, "train.steps": steps, "train.device": device, "train.stack_seeds": True}
    return expand(with_seeds(load_spec(SPEC), seeds), overrides)


def trainer_for(variant, data_dir, corpora: dict, sync_free: bool, graphs: bool = False) -> Trainer:
    config = variant.config
    if config.data.dataset not in corpora:
        corpora[config.data.dataset] = load_corpus(config.data, data_dir)
    corpus = corpora[config.data.dataset]
    torch.manual_seed(config.train.seed)
    model = build_model(config.model, corpus.tokenizer.vocab_size, config.train.context_length)
    device = pick_device(config.train.device)
    if graphs and device.type != "cuda":
        raise RuntimeError(f"CUDA graphs need a CUDA device, not {device}")
    train = replace(config.train, cuda_graphs=graphs)  # the lever decides, not a --set
    return Trainer(model, corpus, train, device, sync_free=sync_free)


def time_lever(units, data_dir, device: torch.device, sync_free: bool, stacked: bool, graphs: bool = False) -> float:
    """Seconds of training (steps and evaluations) of every unit, one after the other."""
    corpora: dict = {}
    total = 0.0
    for unit in units:
        trainers = [trainer_for(v, data_dir, corpora, sync_free, graphs) for v in unit]
        synchronize(device)
        started = time.perf_counter()
        if stacked and len(trainers) > 1:
            stack = StackedTrainer(trainers)
            outcomes = stack.run([Discard() for _ in trainers])
            failed = [o for o in outcomes if isinstance(o, Exception)]
            if failed:
                raise failed[0]
            steppers = [stack]
        else:
            for trainer in trainers:
                trainer.run(Discard())
            steppers = trainers
        synchronize(device)
        total += time.perf_counter() - started
        eager = [status for status in map(graph_status, steppers) if status not in (None, "replayed")]
        if eager:  # the row would time the eager step under the graphs' name
            raise RuntimeError(f"this lever's steps were not CUDA graphs: {eager[0]}")
    return total


@contextlib.contextmanager
def syncs_counted(device: torch.device, found: list[str]):
    """On CUDA, every operation inside that makes the host wait for the GPU is appended to ``found``
    (``torch.cuda.set_sync_debug_mode("warn")``): the sync-free claim, checked on the device itself."""
    if device.type != "cuda":
        yield
        return
    before = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(before)
    found += [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]


def loss_gap_vs_cpu(units, data_dir, device: torch.device, steps: int, graphs: bool = False) -> tuple[float, list[str]]:
    """Largest per-step fp32 loss difference, over every variant and ``steps`` steps, between the device path
    (no host syncs, seeds stacked, with ``graphs`` replayed) and separate runs on the CPU (the issue's bar: 1e-4
    over 200 steps); and the host syncs the device path's steps made after the warmup and capture (CUDA only)."""
    corpora: dict = {}
    gap = 0.0
    syncs: list[str] = []
    for unit in units:
        on_device = [trainer_for(v, data_dir, corpora, sync_free=True, graphs=graphs) for v in unit]
        stack = StackedTrainer(on_device) if len(on_device) > 1 else None
        for i in range(steps):
            watched = syncs_counted(device, syncs) if i > WARMUP_STEPS else contextlib.nullcontext()
            with watched:  # the warmup and the capture itself may sync; the steps after it must not
                stack.train_step(i) if stack else on_device[0].train_step(i)
        for variant, trainer in zip(unit, on_device):
            on_cpu = cpu_losses(variant, corpora[variant.config.data.dataset], steps)
            gap = max(gap, (trainer.state.step_losses[:steps].cpu() - on_cpu).abs().max().item())
    return gap, syncs


_CPU_LOSSES: dict[tuple[str, int], torch.Tensor] = {}


def cpu_losses(variant, corpus, steps: int) -> torch.Tensor:
    """A variant's per-step losses as a separate CPU run (the lecture's path), trained once per variant."""
    key = (variant.id, steps)
    if key not in _CPU_LOSSES:
        cpu_train = replace(variant.config.train, device="cpu", cuda_graphs=False)
        torch.manual_seed(cpu_train.seed)
        model = build_model(variant.config.model, corpus.tokenizer.vocab_size, cpu_train.context_length)
        on_cpu = Trainer(model, corpus, cpu_train, torch.device("cpu"))
        for i in range(steps):
            on_cpu.train_step(i)
        _CPU_LOSSES[key] = on_cpu.state.step_losses[:steps]
    return _CPU_LOSSES[key]


def time_harness_run(seeds: list[int], steps: int, jobs: int, device: str, data_dir, pinned: dict) -> float:
    """Wall seconds of ``harness run experiments/seed.yaml`` into a fresh store (what ``make ablations`` runs)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{Path(tmp) / 'mlflow.db'}"}
        if data_dir:
            env["HARNESS_DATA_DIR"] = str(data_dir)
        command = [sys.executable, "-m", "harness", "run", str(SPEC), *(f"{k}={v}" for k, v in pinned.items()),
                   f"train.steps={steps}", f"train.device={device}",
                   "--seeds", *map(str, seeds), "--jobs", str(jobs), "--no-progress", "--results-dir", str(Path(tmp) / "results"),
                   "--checkpoint-dir", str(Path(tmp) / "ckpt")]
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"harness run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return wall


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (the point of this benchmark) or cpu (a smoke run)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1338])
    parser.add_argument("--steps", type=int, default=5000, help="steps per variant for the lever rows")
    parser.add_argument("--run-steps", type=int, default=5000,
                        help="steps per variant for the harness-run rows (0: skip; 50000 for the spec's real figure)")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 8],
                        help="a harness-run row for each number of workers sharing the device")
    parser.add_argument("--check-steps", type=int, default=200,
                        help="steps of the device-vs-CPU loss comparison of every variant (0: skip)")
    parser.add_argument("--levers", default="baseline,sync-free,sync-free+stacked,graphs,graphs+stacked")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides that pin grid axes (a smaller grid for a smoke run), as harness run takes them")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=str(ROOT / DEFAULT_OUT))
    args = parser.parse_args(argv)

    levers = {"baseline": (False, False, False), "sync-free": (True, False, False), "sync-free+stacked": (True, True, False),
              "graphs": (True, False, True), "graphs+stacked": (True, True, True)}
    unknown = [lever for lever in args.levers.split(",") if lever not in levers]
    if unknown:
        parser.error(f"--levers {','.join(unknown)}: choices are {', '.join(levers)}")
    pinned = parse_overrides(args.set)
    device = pick_device(args.device)
    data_dir = resolve_data_dir(args.data_dir)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    rows = []

    units = plan_units(variants(args.seeds, args.steps, str(device), pinned))
    n_variants = sum(len(unit) for unit in units)

    def add(lever: str, steps: int, measure: Callable[[], float], what: str) -> None:
        """Time one row and write the table so far (a row that fails says why, and the next one runs)."""
        row = {"lever": lever, "measures": what, "seeds": len(args.seeds), "variants": n_variants, "steps": steps,
               "wall_s": float("nan"), "wall_50k_s": float("nan"), "wall_50k_is": "", "error": ""}
        try:
            wall = measure()
            row.update(wall_s=round(wall, 2), wall_50k_s=round(wall * SPEC_STEPS / steps, 1),
                       wall_50k_is="measured" if steps == SPEC_STEPS else f"projected from {steps} steps")
            print(f"{lever:24s} {steps:6d} steps  {wall:8.2f} s  (50k steps: {wall * SPEC_STEPS / steps:8.1f} s)", flush=True)
        except Exception as exc:  # noqa: BLE001 - one broken lever must not cost the others' figures
            row["error"] = f"{type(exc).__name__}: {exc}"[-2000:]
            print(f"{lever:24s} FAILED: {row['error']}", flush=True)
        rows.append({**row, "max_loss_diff_vs_cpu": gap, "max_loss_diff_graphs_vs_cpu": gap_graphs,
                     "syncs_in_checked_steps": sync_counts["sync-free"], "syncs_in_checked_graph_steps": sync_counts["graphs"],
                     "check_steps": args.check_steps,
                     "device": str(device), "gpu": gpu, "torch_version": torch.__version__})
        write_csv(pd.DataFrame(rows), args.out)

    def check(graphs: bool) -> float:
        """The device path against separate CPU runs; NaN where it cannot run (graphs off a GPU) or fails."""
        if not args.check_steps or (graphs and device.type != "cuda"):
            return float("nan")
        path = "with CUDA graphs" if graphs else "sync-free, stacked"
        try:
            units = plan_units(variants(args.seeds, args.check_steps, str(device), pinned))
            found, syncs = loss_gap_vs_cpu(units, data_dir, device, args.check_steps, graphs)
            print(f"device path ({path}) vs separate CPU runs: max per-step fp32 loss difference {found:.2e} over "
                  f"{args.check_steps} steps; host syncs inside steps: {len(syncs)}"
                  + (f" (first: {syncs[0]})" if syncs else ""), flush=True)
            sync_counts["graphs" if graphs else "sync-free"] = len(syncs) if device.type == "cuda" else float("nan")
            return found
        except Exception as exc:  # noqa: BLE001 - the timings still run; the column stays NaN
            print(f"device-vs-CPU check ({path}) FAILED: {type(exc).__name__}: {exc}", flush=True)
            return float("nan")

    sync_counts = {"sync-free": float("nan"), "graphs": float("nan")}
    gap, gap_graphs = check(graphs=False), check(graphs=True)

    for lever in args.levers.split(","):
        sync_free, stacked, graphs = levers[lever]
        add(lever, args.steps, partial(time_lever, units, data_dir, device, sync_free, stacked, graphs), "training loops")
    if args.run_steps:
        for jobs in dict.fromkeys(args.jobs):
            add(f"harness-run-jobs-{jobs}", args.run_steps,
                partial(time_harness_run, args.seeds, args.run_steps, jobs, str(device), data_dir, pinned), "end to end")
    return pd.DataFrame(rows)


if __name__ == "__main__":
    main()
