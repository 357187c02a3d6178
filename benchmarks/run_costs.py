"""Where a run's time goes besides its training steps: evaluation, and a sweep's start-up.

- **Evaluation share**: the ladder's LayerNorm rung (experiments/gpt-ladder.yaml, English) trained by
  ``Trainer.run`` at the default cadence (``eval_interval: null``: ~50 curve points) on one CPU thread, with
  ``train.eval_curve_tokens`` at its default (a fixed subset per curve point) and at ``null`` (the whole split
  at every point, as before). Every call of ``Trainer.evaluate`` is timed; the share is evaluation seconds
  over the run's wall seconds, the exact final evaluation included.
- **Start-up**: ``harness run`` of one 10-step bigram variant end to end (a fresh process, a new SQLite store
  under a temporary folder, the store template already made by a warm-up run, ``--no-progress``) against the
  import floor ``python -c "import torch; from mlflow.tracking import MlflowClient"``, and the cost of each
  extra variant (16 variants against 1). A second floor adds the libraries any such run loads besides: MLflow's
  SQLite store (SQLAlchemy), pandas and matplotlib's figure; ``ratio_to_library_floor`` is what is left to the
  harness's own code and its store calls. The rows run in rounds, in turn, and keep their best.

    python benchmarks/run_costs.py [--steps 5000] [--repeats 3] [--out results/bench/run_costs.csv]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from step_speed import write_csv  # noqa: E402

from harness.data.corpora import load_corpus, resolve_data_dir  # noqa: E402
from harness.models.registry import build_model  # noqa: E402
from harness.spec.expansion import expand  # noqa: E402
from harness.spec.parsing import load_spec  # noqa: E402
from harness.train.trainer import Trainer  # noqa: E402

LADDER = ROOT / "experiments" / "gpt-ladder.yaml"
FLOOR = "import torch; from mlflow.tracking import MlflowClient"
# What a run must load besides: MLflow's SQLite store (SQLAlchemy), pandas for the tables, matplotlib's Agg figure
LIBRARY_FLOOR = FLOOR + "; import mlflow.store.tracking.sqlalchemy_store, pandas, matplotlib.figure"


class Drop:
    def log(self, key, value, step):
        pass


def evaluation_share(steps: int, curve_tokens: int | None, data_dir) -> dict:
    """One English LayerNorm-rung run at the default cadence; seconds in evaluate() vs the whole run."""
    variant = next(
        v
        for v in expand(load_spec(LADDER), {"train.steps": steps, "train.eval_interval": None, "train.device": "cpu"})
        if v.axes["rung"] == "layer-norm" and v.config.data.dataset == "tinyshakespeare" and v.config.train.seed == 1337
    )
    config = variant.config
    train = dataclasses.replace(config.train, eval_curve_tokens=curve_tokens)
    corpus = load_corpus(config.data, data_dir)
    torch.manual_seed(train.seed)
    trainer = Trainer(
        build_model(config.model, corpus.tokenizer.vocab_size, train.context_length), corpus, train, torch.device("cpu")
    )
    spent = {"curve": 0.0, "final": 0.0, "points": 0}
    evaluate = trainer.evaluate

    def timed(final: bool = True):
        started = time.perf_counter()
        try:
            return evaluate(final)
        finally:
            spent["final" if final else "curve"] += time.perf_counter() - started
            spent["points"] += not final

    trainer.evaluate = timed
    started = time.perf_counter()
    trainer.run(Drop())
    wall = time.perf_counter() - started
    evaluation = spent["curve"] + spent["final"]
    return {
        "measure": "evaluation share",
        "setting": f"layer-norm rung, tinyshakespeare, {steps} steps, eval_curve_tokens={curve_tokens}",
        "wall_s": round(wall, 2),
        "curve_points": spent["points"],
        "curve_eval_s": round(spent["curve"], 2),
        "final_eval_s": round(spent["final"], 2),
        "eval_share": round(evaluation / wall, 3),
    }


def timed_command(args: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(args, env=env, check=True, capture_output=True, cwd=env["HOME"])
    return time.perf_counter() - started


def startup(repeats: int, data_dir) -> list[dict]:
    rows = []
    base = (
        "base:\n  data: {dataset: tinyshakespeare}\n  model: {kind: bigram}\n"
        "  train: {steps: 10, eval_interval: 5, device: cpu}\n  sample: {max_new_tokens: 10}\n"
    )
    grid = (
        "grid:\n  train.lr: [1.0e-3, 2.0e-3, 3.0e-3, 4.0e-3, 5.0e-3, 6.0e-3, 7.0e-3, 8.0e-3]\n"
        "  train.batch_size: [16, 32]\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        one, sixteen = Path(tmp) / "one.yaml", Path(tmp) / "sixteen.yaml"
        one.write_text("name: one\n" + base, encoding="utf-8")
        sixteen.write_text("name: sixteen\n" + base + grid, encoding="utf-8")
        commands = [
            ("import floor", [sys.executable, "-c", FLOOR]),
            ("import floor with the store, pandas and matplotlib", [sys.executable, "-c", LIBRARY_FLOOR]),
            ("harness run, 1 variant", [sys.executable, "-m", "harness", "run", str(one), "--no-progress"]),
            ("harness run, 16 variants", [sys.executable, "-m", "harness", "run", str(sixteen), "--no-progress"]),
        ]
        times = {label: [] for label, _ in commands}
        # Rounds of the three commands in turn (round -1 warms the cache: a user's first run makes the store
        # template), so that a slow spell of a shared CPU costs one round of each, not one row's every run.
        for r in range(-1, repeats):
            for label, args in commands:
                home = Path(tmp) / f"{label.replace(' ', '_').replace(',', '')}-{r}"
                home.mkdir()
                env = {
                    **os.environ,
                    "HOME": str(home),
                    "XDG_CACHE_HOME": str(Path(tmp) / "cache"),  # the store template, made by the warm-up run
                    "PYTHONPATH": str(ROOT),
                    "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
                    "HARNESS_DATA_DIR": str(data_dir),
                }
                seconds = timed_command(args, env)
                if r >= 0:
                    times[label].append(seconds)
        for label, _ in commands:
            rows.append(
                {"measure": "start-up", "setting": label, "wall_s": round(min(times[label]), 2), "repeats": repeats}
            )
    floor, library_floor = rows[0]["wall_s"], rows[1]["wall_s"]
    one, sixteen = rows[2]["wall_s"], rows[3]["wall_s"]
    rows[1]["ratio_to_floor"] = round(library_floor / floor, 2)
    rows[2]["ratio_to_floor"] = round(one / floor, 2)
    rows[2]["ratio_to_library_floor"] = round(one / library_floor, 2)
    rows[3]["per_extra_run_s"] = round((sixteen - one) / 15, 3)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5000, help="the ladder's steps")
    parser.add_argument("--repeats", type=int, default=3, help="start-up rounds (the best of each row is kept)")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench" / "run_costs.csv"))
    parser.add_argument("--skip-startup", action="store_true")
    parser.add_argument("--skip-eval", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data_dir = resolve_data_dir() or ROOT.parent / "shared" / "data"
    rows = [] if args.skip_eval else [evaluation_share(args.steps, tokens, data_dir) for tokens in (4096, None)]
    if not args.skip_startup:
        rows += startup(args.repeats, data_dir)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    write_csv(table, Path(args.out))


if __name__ == "__main__":
    main()
