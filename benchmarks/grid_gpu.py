"""The seed grid on one device, lever by lever: how long experiments/seed.yaml (or ``--spec``) takes to train.

Rows (one device, one process, one run of this script):

- ``baseline``: every variant alone, one after the other, with the step as it was before issue 9 (on a GPU,
  ``bincount`` reads the largest id back to the host: a sync per step);
- ``sync-free``: every variant alone, no host sync inside a step (``Trainer(sync_free=True)``);
- ``sync-free+stacked``: the seeds of each variant as one stacked model (``harness.train.stacking``; needs 2+ seeds);
- ``graphs`` and ``graphs+stacked``: the same, each step captured once as a CUDA graph and replayed
  (``train.cuda_graphs``, harness/train/graphs.py; CUDA only, a CPU row records why it did not run);
- ``sync-free+threads``, ``graphs+threads`` and ``graphs+stacked+threads``: ``--threads`` units at a time in threads
  of this process, each on a CUDA stream of its own (what ``--executor threads`` does), so that their kernels
  overlap; ``max_loss_diff_threads_vs_one_at_a_time`` compares their losses with the same lever's row without
  threads (if it ran first): it must be 0.

These time the training loops only (every step and every evaluation at the default cadence, no MLflow).
Then, end to end with every lever at its default or as ``--set`` pins it (MLflow store, samples, reports, process
start):

- ``harness-run-jobs-N`` for each N of ``--jobs`` (1 2 8): ``harness run`` itself, with N worker processes sharing
  the device; with ``--executors threads`` also ``harness-run-threads-jobs-N``: N threads of one process.
  ``runs_cuda_graphs`` counts what the runs' ``cuda_graphs`` tags say ("replayed x8").

The table is rewritten after every row, so a run stopped at a time limit keeps the rows it finished; a row that
fails records its error and the next one runs.

Columns: ``wall_s`` is measured at ``steps`` steps per variant. ``wall_50k_s`` is ``wall_s`` scaled to the
spec's 50,000 steps, a projection (the column says so), equal to the measurement when ``--steps 50000``.
Before any timing, every variant trains ``--check-steps`` (200) steps on the device path (no host syncs, seeds
stacked; then the same with graphs) and as a separate run on the CPU. ``<out>_check.csv`` has, per variant, the
largest per-step fp32 loss difference over all steps and over the first 10, beside how far the CPU run moves from
itself when its initial weights move one ulp (``cpu_1ulp``): the size of a pure rounding difference after AdamW
has amplified it. The main table has the largest of each.

Run:
    python benchmarks/grid_gpu.py --device cuda --seeds 1337 1338 --steps 2000 --run-steps 0   # the levers' shares
    python benchmarks/grid_gpu.py --device cuda --levers '' --check-steps 0 --seeds 1337 --run-steps 50000 \
        --jobs 8 --executors threads --set train.cuda_graphs=true                               # the goal, measured
    python benchmarks/grid_gpu.py --device cpu --steps 20 --run-steps 20    # a smoke run anywhere
On an H200 the first took 185 s with every lever and the second 58 s (results/bench/grid_gpu.csv).
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
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

from step_speed import synchronize, write_csv  # noqa: E402

from harness.data.corpora import load_corpus, resolve_data_dir  # noqa: E402
from harness.executors.threads import WorkerStreams  # noqa: E402
from harness.models.registry import build_model  # noqa: E402
from harness.spec.expansion import expand, parse_overrides, with_seeds  # noqa: E402
from harness.spec.parsing import load_spec  # noqa: E402
from harness.sweep import plan_units  # noqa: E402
from harness.tracking.recorded import GRAPHS_TAG  # noqa: E402
from harness.train.device import pick_device  # noqa: E402
from harness.train.graphs import WARMUP_STEPS, graph_status  # noqa: E402
from harness.train.stacking import StackedTrainer  # noqa: E402
from harness.train.trainer import Trainer  # noqa: E402

SPEC = ROOT / "experiments" / "seed.yaml"
SPEC_STEPS = 50_000
DEFAULT_OUT = "results/bench/grid_gpu.csv"
# lever -> (sync-free, seeds stacked, CUDA graphs, --threads units at a time)
LEVERS = {
    "baseline": (False, False, False, False),
    "sync-free": (True, False, False, False),
    "sync-free+stacked": (True, True, False, False),
    "graphs": (True, False, True, False),
    "graphs+stacked": (True, True, True, False),
    "sync-free+threads": (True, False, False, True),
    "graphs+threads": (True, False, True, True),
    "graphs+stacked+threads": (True, True, True, True),
}


class Discard:
    """A metric sink that keeps nothing: the levers are timed without MLflow."""

    def log(self, key, value, step):
        pass


def variants(seeds: list[int], steps: int, device: str, pinned: dict, spec: Path = SPEC):
    overrides = {**pinned, "train.steps": steps, "train.device": device, "train.stack_seeds": True}
    return expand(with_seeds(load_spec(spec), seeds), overrides)


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


_LEVER_LOSSES: dict[tuple[bool, bool, bool], dict[str, torch.Tensor]] = {}  # per-step losses of the rows so far


def time_lever(
    units, data_dir, device: torch.device, sync_free: bool, stacked: bool, graphs: bool = False, threads: int = 0
) -> tuple[float, dict]:
    """Seconds of training (steps and evaluations) of every unit: one after the other, or with ``threads``, that
    many units at a time in threads of this process, each on its own CUDA stream (``--executor threads``).

    A threads row also gives the largest per-step loss difference from the same lever one unit at a time, if
    that row ran before: the same kernels in the same order on other streams, so it must be 0."""
    corpora: dict = {}
    built = [[trainer_for(v, data_dir, corpora, sync_free, graphs) for v in unit] for unit in units]
    streams = WorkerStreams(threads) if threads else None  # one after the other: the default stream, as `harness run`

    def train(unit_and_trainers) -> list:
        """Train one unit; what ran its steps."""
        unit, trainers = unit_and_trainers
        with streams.use(unit) if streams else contextlib.nullcontext():
            if stacked and len(trainers) > 1:
                stack = StackedTrainer(trainers)
                failed = [o for o in stack.run([Discard() for _ in trainers]) if isinstance(o, Exception)]
                if failed:
                    raise failed[0]
                return [stack]
            for trainer in trainers:
                trainer.run(Discard())
            return trainers

    synchronize(device)
    started = time.perf_counter()
    if threads:
        with ThreadPoolExecutor(threads) as pool:
            steppers = [s for ran in pool.map(train, zip(units, built, strict=True)) for s in ran]
    else:
        steppers = [s for pair in zip(units, built, strict=True) for s in train(pair)]
    synchronize(device)
    total = time.perf_counter() - started
    eager = [status for status in map(graph_status, steppers) if status not in (None, "replayed")]
    if eager:  # the row would time the eager step under the graphs' name
        raise RuntimeError(f"this lever's steps were not CUDA graphs: {eager[0]}")
    losses = {
        v.id: t.state.step_losses.cpu()
        for unit, trainers in zip(units, built, strict=True)
        for v, t in zip(unit, trainers, strict=True)
    }
    alone = _LEVER_LOSSES.get((sync_free, stacked, graphs)) if threads else None
    if not threads:
        _LEVER_LOSSES[(sync_free, stacked, graphs)] = losses
    gap = max((losses[v] - alone[v]).abs().max().item() for v in losses) if alone else float("nan")
    return total, {"max_loss_diff_threads_vs_one_at_a_time": gap}


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
    messages = [str(w.message).splitlines()[0] for w in caught]  # less the notice that the mode is a prototype
    found += [m for m in messages if "synchroniz" in m.lower() and "prototype" not in m.lower()]


def loss_gap_vs_cpu(
    units, data_dir, device: torch.device, steps: int, graphs: bool = False
) -> tuple[list[dict], list[str]]:
    """Per variant, the largest per-step fp32 loss difference between the device path (no host syncs, seeds
    stacked, with ``graphs`` replayed) and a separate run on the CPU, over ``steps`` steps and over the first
    ``EARLY_STEPS``; and the host syncs the device path's steps made after the warmup and capture (CUDA only).

    Beside it, ``cpu_1ulp``: how far the CPU run itself moves when its initial weights move by one ulp. Two
    correct fp32 implementations of the same math (another summation order) drift apart by about that much:
    AdamW divides each gradient by its own running size, so a rounding difference in a gradient near zero
    becomes a full lr-sized step, and training amplifies it (the issue's 1e-4 bar assumes it does not)."""
    corpora: dict = {}
    rows: list[dict] = []
    syncs: list[str] = []
    for unit in units:
        on_device = [trainer_for(v, data_dir, corpora, sync_free=True, graphs=graphs) for v in unit]
        stack = StackedTrainer(on_device) if len(on_device) > 1 else None
        for i in range(steps):
            watched = syncs_counted(device, syncs) if i > WARMUP_STEPS else contextlib.nullcontext()
            with watched:  # the warmup and the capture itself may sync; the steps after it must not
                stack.train_step(i) if stack else on_device[0].train_step(i)
        for variant, trainer in zip(unit, on_device, strict=True):
            corpus = corpora[variant.config.data.dataset]
            on_cpu = cpu_losses(variant, corpus, steps)
            diff = (trainer.state.step_losses[:steps].cpu() - on_cpu).abs()
            ulp = (cpu_losses(variant, corpus, steps, nudged=True) - on_cpu).abs()
            rows.append(
                {
                    "variant": variant.id,
                    "seed": variant.config.train.seed,
                    "steps": steps,
                    "max_diff": diff.max().item(),
                    f"max_diff_first_{EARLY_STEPS}": diff[:EARLY_STEPS].max().item(),
                    "cpu_1ulp": ulp.max().item(),
                    f"cpu_1ulp_first_{EARLY_STEPS}": ulp[:EARLY_STEPS].max().item(),
                }
            )
    return rows, syncs


EARLY_STEPS = 10  # steps before AdamW has amplified rounding differences much (see loss_gap_vs_cpu)
_CPU_LOSSES: dict[tuple[str, int, bool], torch.Tensor] = {}


def cpu_losses(variant, corpus, steps: int, nudged: bool = False) -> torch.Tensor:
    """A variant's per-step losses as a separate CPU run (the lecture's path), trained once per variant; with
    ``nudged``, every initial weight moved one ulp up first."""
    key = (variant.id, steps, nudged)
    if key not in _CPU_LOSSES:
        cpu_train = replace(variant.config.train, device="cpu", cuda_graphs=False)
        torch.manual_seed(cpu_train.seed)
        model = build_model(variant.config.model, corpus.tokenizer.vocab_size, cpu_train.context_length)
        if nudged:
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(torch.nextafter(p, torch.full_like(p, float("inf"))))
        on_cpu = Trainer(model, corpus, cpu_train, torch.device("cpu"))
        for i in range(steps):
            on_cpu.train_step(i)
        _CPU_LOSSES[key] = on_cpu.state.step_losses[:steps]
    return _CPU_LOSSES[key]


def time_harness_run(
    seeds: list[int],
    steps: int,
    jobs: int,
    device: str,
    data_dir,
    pinned: dict,
    executor: str = "local",
    spec: Path = SPEC,
) -> tuple[float, dict]:
    """Wall seconds of ``harness run experiments/seed.yaml`` into a fresh store (what ``make ablations`` runs)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{Path(tmp) / 'mlflow.db'}"}
        if data_dir:
            env["HARNESS_DATA_DIR"] = str(data_dir)
        settings = [*(f"{k}={v}" for k, v in pinned.items()), f"train.steps={steps}", f"train.device={device}"]
        command = [sys.executable, "-m", "harness", "run", str(spec), *settings, "--seeds", *map(str, seeds)]
        command += ["--jobs", str(jobs), "--executor", executor, "--no-progress"]
        command += ["--results-dir", str(Path(tmp) / "results"), "--checkpoint-dir", str(Path(tmp) / "ckpt")]
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"harness run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return wall, {"runs_cuda_graphs": graph_tags(env["MLFLOW_TRACKING_URI"])}


def graph_tags(store: str) -> str:
    """What the runs' ``cuda_graphs`` tags say, counted ("replayed x8"): whether a harness-run row timed replayed
    graphs or an eager fallback. Empty where no run was asked for graphs."""
    from mlflow import MlflowClient  # only the harness-run rows need MLflow

    client = MlflowClient(store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    counts = Counter(
        run.data.tags[GRAPHS_TAG]
        for run in client.search_runs(experiments, max_results=10_000)
        if GRAPHS_TAG in run.data.tags
    )
    return "; ".join(f"{status} x{n}" for status, n in counts.items())


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (the point of this benchmark) or cpu (a smoke run)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1338])
    parser.add_argument("--steps", type=int, default=5000, help="steps per variant for the lever rows")
    parser.add_argument(
        "--run-steps",
        type=int,
        default=5000,
        help="steps per variant for the harness-run rows (0: skip; 50000 for the spec's real figure)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        nargs="+",
        default=[1, 2, 8],
        help="a harness-run row for each number of workers sharing the device",
    )
    parser.add_argument(
        "--check-steps",
        type=int,
        default=200,
        help="steps of the device-vs-CPU loss comparison of every variant (0: skip)",
    )
    parser.add_argument(
        "--levers",
        default=",".join(LEVERS),
        help="comma-separated lever rows to time ('' for none: only the harness-run rows)",
    )
    parser.add_argument("--threads", type=int, default=8, help="units at a time in the +threads lever rows")
    parser.add_argument(
        "--executors",
        nargs="+",
        default=["local"],
        choices=("local", "threads"),
        help="a set of harness-run rows (one per --jobs) for each executor",
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="overrides that pin grid axes (a smaller grid for a smoke run), as harness run takes them",
    )
    parser.add_argument("--spec", type=Path, default=SPEC, help="the grid to time (default: the seed grid)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=str(ROOT / DEFAULT_OUT))
    args = parser.parse_args(argv)

    chosen = [lever for lever in args.levers.split(",") if lever]
    unknown = [lever for lever in chosen if lever not in LEVERS]
    if unknown:
        parser.error(f"--levers {','.join(unknown)}: choices are {', '.join(LEVERS)}")
    pinned = parse_overrides(args.set)
    device = pick_device(args.device)
    data_dir = resolve_data_dir(args.data_dir)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    rows = []

    units = plan_units(variants(args.seeds, args.steps, str(device), pinned, args.spec))
    n_variants = sum(len(unit) for unit in units)

    def add(lever: str, steps: int, measure: Callable[[], tuple[float, dict]], what: str, at_once: int) -> None:
        """Time one row and write the table so far (a row that fails says why, and the next one runs)."""
        row = {
            "lever": lever,
            "measures": what,
            "spec": Path(args.spec).name,
            "seeds": len(args.seeds),
            "variants": n_variants,
            "steps": steps,
            "units_at_once": at_once,
            "wall_s": float("nan"),
            "wall_50k_s": float("nan"),
            "wall_50k_is": "",
            "error": "",
            "runs_cuda_graphs": "",
            "max_loss_diff_threads_vs_one_at_a_time": float("nan"),
        }
        try:
            wall, more = measure()  # seconds, and the row's own columns
            row.update(more)
            row.update(
                wall_s=round(wall, 4),  # 5 bigram steps take about 1 ms on a fast CPU: at 2 decimals they read 0.0
                wall_50k_s=round(wall * SPEC_STEPS / steps, 1),
                wall_50k_is="measured" if steps == SPEC_STEPS else f"projected from {steps} steps",
            )
            print(
                f"{lever:24s} {steps:6d} steps  {wall:8.2f} s  (50k steps: {wall * SPEC_STEPS / steps:8.1f} s)",
                flush=True,
            )
        except Exception as exc:  # noqa: BLE001 - one broken lever must not cost the others' figures
            row["error"] = f"{type(exc).__name__}: {exc}"[-2000:]
            print(f"{lever:24s} FAILED: {row['error']}", flush=True)
        rows.append(
            {
                **row,
                "max_loss_diff_vs_cpu": eager_check["max_diff"],
                "max_loss_diff_graphs_vs_cpu": graph_check["max_diff"],
                f"max_loss_diff_first_{EARLY_STEPS}_steps": pd.Series(
                    [eager_check[f"max_diff_first_{EARLY_STEPS}"], graph_check[f"max_diff_first_{EARLY_STEPS}"]]
                ).max(),
                "max_loss_diff_cpu_1ulp": eager_check["cpu_1ulp"],
                "syncs_in_checked_steps": eager_check["syncs"],
                "syncs_in_checked_graph_steps": graph_check["syncs"],
                "check_steps": args.check_steps,
                "overrides": " ".join(args.set),
                "device": str(device),
                "gpu": gpu,
                "torch_version": torch.__version__,
            }
        )
        write_csv(pd.DataFrame(rows), args.out)

    def check(graphs: bool) -> dict:
        """The device path against separate CPU runs (a row per variant in the ``_check`` table); NaN where it
        cannot run (graphs off a GPU) or fails."""
        found = {
            "max_diff": float("nan"),
            f"max_diff_first_{EARLY_STEPS}": float("nan"),
            "cpu_1ulp": float("nan"),
            "syncs": float("nan"),
        }
        if not args.check_steps or (graphs and device.type != "cuda"):
            return found
        path = "with CUDA graphs" if graphs else "sync-free, stacked"
        try:
            units = plan_units(variants(args.seeds, args.check_steps, str(device), pinned, args.spec))
            per_variant, syncs = loss_gap_vs_cpu(units, data_dir, device, args.check_steps, graphs)
        except Exception as exc:  # noqa: BLE001 - the timings still run; the columns stay NaN
            print(f"device-vs-CPU check ({path}) FAILED: {type(exc).__name__}: {exc}", flush=True)
            return found
        table = pd.DataFrame(per_variant).assign(
            spec=Path(args.spec).name, path=path, device=str(device), gpu=gpu, torch_version=torch.__version__
        )
        checks.append(table)
        write_csv(pd.concat(checks), check_out)
        print(
            f"device path ({path}) vs separate CPU runs, per-step fp32 loss difference over {args.check_steps} "
            f"steps (first {EARLY_STEPS}), and the CPU run against itself with its initial weights 1 ulp up:"
        )
        for row in per_variant:
            print(
                f"  {row['variant']}: {row['max_diff']:.2e} ({row[f'max_diff_first_{EARLY_STEPS}']:.2e})"
                f"   cpu 1 ulp: {row['cpu_1ulp']:.2e} ({row[f'cpu_1ulp_first_{EARLY_STEPS}']:.2e})",
                flush=True,
            )
        print(f"  host syncs inside steps: {len(syncs)}" + (f" (first: {syncs[0]})" if syncs else ""), flush=True)
        return {key: float(table[key].max()) for key in found if key != "syncs"} | {
            "syncs": len(syncs) if device.type == "cuda" else float("nan")
        }

    checks: list[pd.DataFrame] = []
    check_out = str(Path(args.out).with_name(Path(args.out).stem + "_check.csv"))
    eager_check, graph_check = check(graphs=False), check(graphs=True)

    for lever in chosen:
        sync_free, stacked, graphs, threaded = LEVERS[lever]
        threads = args.threads if threaded else 0
        add(
            lever,
            args.steps,
            partial(time_lever, units, data_dir, device, sync_free, stacked, graphs, threads),
            "training loops",
            max(1, threads),
        )
    if args.run_steps:
        for executor in dict.fromkeys(args.executors):
            for jobs in dict.fromkeys(args.jobs):
                name = f"harness-run-jobs-{jobs}" if executor == "local" else f"harness-run-{executor}-jobs-{jobs}"
                add(
                    name,
                    args.run_steps,
                    partial(
                        time_harness_run,
                        args.seeds,
                        args.run_steps,
                        jobs,
                        str(device),
                        data_dir,
                        pinned,
                        executor,
                        args.spec,
                    ),
                    "end to end",
                    jobs,
                )
    return pd.DataFrame(rows)


if __name__ == "__main__":
    main()
