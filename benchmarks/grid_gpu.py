"""The seed grid on one device, lever by lever: how long experiments/seed.yaml takes to train.

Rows (one device, one process, one run of this script):

- ``baseline``: every variant alone, one after the other, with the step as it was before issue 9 (on a GPU,
  ``bincount`` reads the largest id back to the host: a sync per step);
- ``sync-free``: every variant alone, no host sync inside a step (``Trainer(sync_free=True)``);
- ``sync-free+stacked``: the seeds of each variant as one stacked model (``harness.stacking``; needs 2+ seeds).

These three time the training loops only (every step and every evaluation at the default cadence, no MLflow).
Then, end to end with every lever at its default (MLflow store, samples, reports, process start):

- ``harness-run-jobs-1`` and ``harness-run-jobs-N``: ``harness run experiments/seed.yaml`` itself, with N
  workers sharing the device.

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
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

from harness.data import load_corpus, resolve_data_dir  # noqa: E402
from harness.models import build_model  # noqa: E402
from harness.spec import expand, load_spec, parse_overrides, with_seeds  # noqa: E402
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


def trainer_for(variant, data_dir, corpora: dict, sync_free: bool) -> Trainer:
    config = variant.config
    if config.data.dataset not in corpora:
        corpora[config.data.dataset] = load_corpus(config.data, data_dir)
    corpus = corpora[config.data.dataset]
    torch.manual_seed(config.train.seed)
    model = build_model(config.model, corpus.tokenizer.vocab_size, config.train.context_length)
    return Trainer(model, corpus, config.train, pick_device(config.train.device), sync_free=sync_free)


def time_lever(units, data_dir, device: torch.device, sync_free: bool, stacked: bool) -> float:
    """Seconds of training (steps and evaluations) of every unit, one after the other."""
    corpora: dict = {}
    total = 0.0
    for unit in units:
        trainers = [trainer_for(v, data_dir, corpora, sync_free) for v in unit]
        synchronize(device)
        started = time.perf_counter()
        if stacked and len(trainers) > 1:
            outcomes = StackedTrainer(trainers).run([Discard() for _ in trainers])
            failed = [o for o in outcomes if isinstance(o, Exception)]
            if failed:
                raise failed[0]
        else:
            for trainer in trainers:
                trainer.run(Discard())
        synchronize(device)
        total += time.perf_counter() - started
    return total


def loss_gap_vs_cpu(units, data_dir, device: torch.device, steps: int) -> float:
    """Largest per-step fp32 loss difference, over every variant and ``steps`` steps, between the device path
    (no host syncs, seeds stacked) and separate runs on the CPU (the issue's bar: 1e-4 over 200 steps)."""
    corpora: dict = {}
    gap = 0.0
    for unit in units:
        on_device = [trainer_for(v, data_dir, corpora, sync_free=True) for v in unit]
        stack = StackedTrainer(on_device) if len(on_device) > 1 else None
        for i in range(steps):
            stack.train_step(i) if stack else on_device[0].train_step(i)
        for variant, trainer in zip(unit, on_device):
            cpu_variant = variant.config.train.__class__(**{**vars(variant.config.train), "device": "cpu"})
            corpus = corpora[variant.config.data.dataset]
            torch.manual_seed(cpu_variant.seed)
            model = build_model(variant.config.model, corpus.tokenizer.vocab_size, cpu_variant.context_length)
            on_cpu = Trainer(model, corpus, cpu_variant, torch.device("cpu"))
            for i in range(steps):
                on_cpu.train_step(i)
            gap = max(gap, (trainer.state.step_losses[:steps].cpu() - on_cpu.state.step_losses[:steps]).abs().max().item())
    return gap


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
    parser.add_argument("--jobs", type=int, default=2, help="workers sharing the device in the last row")
    parser.add_argument("--check-steps", type=int, default=200,
                        help="steps of the device-vs-CPU loss comparison of every variant (0: skip)")
    parser.add_argument("--levers", default="baseline,sync-free,sync-free+stacked")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides that pin grid axes (a smaller grid for a smoke run), as harness run takes them")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=str(ROOT / DEFAULT_OUT))
    args = parser.parse_args(argv)

    pinned = parse_overrides(args.set)
    device = pick_device(args.device)
    data_dir = resolve_data_dir(args.data_dir)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    rows = []

    check_units = plan_units(variants(args.seeds, args.check_steps, str(device), pinned)) if args.check_steps else []
    gap = loss_gap_vs_cpu(check_units, data_dir, device, args.check_steps) if args.check_steps else float("nan")
    print(f"device path vs separate CPU runs: max per-step fp32 loss difference {gap:.2e} over {args.check_steps} steps",
          flush=True)

    def add(lever: str, steps: int, wall: float, what: str) -> None:
        rows.append({"lever": lever, "measures": what, "seeds": len(args.seeds), "variants": n_variants,
                     "steps": steps, "wall_s": round(wall, 2), "wall_50k_s": round(wall * SPEC_STEPS / steps, 1),
                     "wall_50k_is": "measured" if steps == SPEC_STEPS else f"projected from {steps} steps",
                     "max_loss_diff_vs_cpu": gap, "check_steps": args.check_steps,
                     "device": str(device), "gpu": gpu, "torch_version": torch.__version__})
        print(f"{lever:24s} {steps:6d} steps  {wall:8.2f} s  (50k steps: {wall * SPEC_STEPS / steps:8.1f} s)", flush=True)

    units = plan_units(variants(args.seeds, args.steps, str(device), pinned))
    n_variants = sum(len(unit) for unit in units)
    levers = {"baseline": (False, False), "sync-free": (True, False), "sync-free+stacked": (True, True)}
    for lever in args.levers.split(","):
        sync_free, stacked = levers[lever]
        add(lever, args.steps, time_lever(units, data_dir, device, sync_free, stacked), "training loops")
    if args.run_steps:
        for jobs in dict.fromkeys((1, args.jobs)):
            wall = time_harness_run(args.seeds, args.run_steps, jobs, str(device), data_dir, pinned)
            add(f"harness-run-jobs-{jobs}", args.run_steps, wall, "end to end")
    table = pd.DataFrame(rows)
    write_csv(table, args.out)
    return table


if __name__ == "__main__":
    main()
