"""Seeds as one model: seed-steps/s of S seeds trained as one stack against one seed alone, on one CPU thread.

Rows: the ladder's LayerNorm rung (experiments/gpt-ladder.yaml, English) and experiments/gpt-cpu.yaml's GPT
(English), each at S = 1, 4, 8 and 16 seeds (seeds 1337, 1338, ...). S = 1 is ``Trainer.train_step``, a lone
run's step; S > 1 is ``StackedTrainer.train_step``, the step ``harness run`` takes for the seeds of one variant
(for a GPT without dropout, harness/models/gpt_stack.py: batched matmuls over the seed dimension, one
``causal_attention`` call over seeds x batch). Only steps are timed (no evaluations, no MLflow), after
``--warmup`` untimed steps; ``speedup`` is seed-steps/s over the lone seed's steps/s. ``path`` says which stack
the trainer chose (``StackedTrainer.path``: ``native`` or ``vmap`` for a GPT).

    python benchmarks/seed_stacking.py [--steps 200] [--seeds 1 4 8 16] [--out results/bench/seed_stacking.csv]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
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
from harness.train.stacking import StackedTrainer  # noqa: E402
from harness.train.trainer import Trainer  # noqa: E402

EXPERIMENTS = ROOT / "experiments"
ROWS = {  # row -> (spec, the variant's axes besides the dataset)
    "ladder layer-norm rung": ("gpt-ladder.yaml", {"rung": "layer-norm"}),
    "gpt-cpu": ("gpt-cpu.yaml", {}),
}


def variant_config(spec_name: str, axes: dict, steps: int):
    overrides = {"train.steps": steps, "train.device": "cpu", "train.eval_interval": steps}
    for variant in expand(load_spec(EXPERIMENTS / spec_name), overrides):
        if variant.config.data.dataset == "tinyshakespeare" and all(variant.axes.get(k) == v for k, v in axes.items()):
            return variant.config
    raise LookupError(f"no English variant with {axes} in {spec_name}")


def trainers(config, corpus, seeds: int) -> list[Trainer]:
    made = []
    for s in range(seeds):
        train = dataclasses.replace(config.train, seed=config.train.seed + s)
        torch.manual_seed(train.seed)
        model = build_model(config.model, corpus.tokenizer.vocab_size, train.context_length)
        made.append(Trainer(model, corpus, train, torch.device("cpu")))
    return made


def seed_steps_per_s(config, corpus, seeds: int, steps: int, warmup: int) -> tuple[float, str]:
    group = trainers(config, corpus, seeds)
    stepper = group[0] if seeds == 1 else StackedTrainer(group)
    path = "alone" if seeds == 1 else stepper.path
    for i in range(warmup):
        stepper.train_step(i)
    started = time.perf_counter()
    for i in range(warmup, warmup + steps):
        stepper.train_step(i)
    if seeds == 1:
        group[0].state.step_losses[warmup + steps - 1].item()  # the last loss, so no work is left pending
    else:
        stepper.step_losses[:, warmup + steps - 1].sum().item()
    return seeds * steps / (time.perf_counter() - started), path


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--out", default=str(ROOT / "results" / "bench" / "seed_stacking.csv"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data_dir = resolve_data_dir() or ROOT.parent / "shared" / "data"
    rows = []
    for name in args.rows:
        spec_name, axes = ROWS[name]
        config = variant_config(spec_name, axes, args.warmup + args.steps)
        corpus = load_corpus(config.data, data_dir)
        alone = None
        for seeds in args.seeds:
            rate, path = seed_steps_per_s(config, corpus, seeds, args.steps, args.warmup)
            alone = rate if seeds == 1 else alone
            rows.append(
                {
                    "row": name,
                    "seeds": seeds,
                    "path": path,
                    "seed_steps_per_s": round(rate, 1),
                    "speedup": round(rate / alone, 2) if alone else None,
                    "n_layer": config.model.n_layer,
                    "n_embd": config.model.n_embd,
                    "context_length": config.train.context_length,
                    "batch_size": config.train.batch_size,
                    "steps": args.steps,
                    "threads": 1,
                    "torch": torch.__version__,
                }
            )
            print(f"{name:24s} S={seeds:2d} {path:6s} {rate:8.1f} seed-steps/s", flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    write_csv(table, Path(args.out))
    return table


if __name__ == "__main__":
    main()
