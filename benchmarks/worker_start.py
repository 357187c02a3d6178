"""What ``--jobs N`` costs before the first step: a sweep of short variants with each worker spawned, or forked.

Each ``--jobs N`` worker is a fresh process that trains one unit (harness/executors/processes.py). A spawned one
starts a new interpreter and imports torch, MLflow and the harness before it trains; one forked from a forkserver
that imported them once does not. On short variants (a tuning study's, a smoke run's) that start is most of a unit.

The sweep is the README's first look shrunk to ``train.steps=5``: experiments/seed.yaml's 8 variants, ``--jobs 2``,
each repeat into a fresh SQLite store under a temporary folder, with the corpora of ``HARNESS_DATA_DIR``. The
spawned case replaces ``processes._worker_context`` with spawn for that process only; nothing else differs.
``wall_s`` is the whole command (start-up, training, report); the best and the median of ``--repeats`` are kept.
``load_average_1m``: how busy the (shared) machine was.

    python benchmarks/worker_start.py [--repeats 3] [--jobs 2] [--out results/bench/worker_start.csv]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import pandas as pd  # noqa: E402
from step_speed import write_csv  # noqa: E402

SPEC = ROOT / "experiments" / "seed.yaml"
RUN = (
    "import sys, multiprocessing\n"
    "import harness.executors.processes as processes\n"
    "if sys.argv[1] == 'spawn':\n"
    "    processes._worker_context = lambda: multiprocessing.get_context('spawn')\n"
    "from harness.cli import main\n"
    "raise SystemExit(main(sys.argv[2:]))\n"
)


def one_sweep(method: str, jobs: int, steps: int) -> float:
    """Seconds for the whole sweep, ``method`` being how its workers start ("spawn" or "forkserver")."""
    with tempfile.TemporaryDirectory() as folder:
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        command = [sys.executable, "-c", RUN, method, "run", str(SPEC), f"train.steps={steps}"]
        command += ["--jobs", str(jobs), "--no-progress", "--results-dir", f"{folder}/results"]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
        took = time.perf_counter() - started
    if done.returncode != 0 or "failed 0" not in done.stdout:
        raise SystemExit(f"{method}: the sweep did not finish every variant:\n{done.stdout}\n{done.stderr}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "results" / "bench" / "worker_start.csv"))
    args = parser.parse_args()
    if not os.environ.get("HARNESS_DATA_DIR"):
        raise SystemExit("set HARNESS_DATA_DIR to the folder with the corpora (the benchmark downloads nothing)")
    times: dict[str, list[float]] = {"spawn": [], "forkserver": []}
    for _ in range(args.repeats):  # interleaved, so that a busy spell of the machine falls on both
        for method in times:
            times[method].append(one_sweep(method, args.jobs, args.steps))
    rows = [
        {
            "worker_start": method,
            "spec": SPEC.name,
            "variants": 8,
            "steps": args.steps,
            "jobs": args.jobs,
            "wall_s_best": round(min(took), 2),
            "wall_s_median": round(statistics.median(took), 2),
            "wall_s_all": " ".join(f"{t:.2f}" for t in took),
            "repeats": args.repeats,
            "load_average_1m": round(os.getloadavg()[0], 2),
            "cpus": os.cpu_count(),
        }
        for method, took in times.items()
    ]
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    write_csv(table, args.out)


if __name__ == "__main__":
    main()
