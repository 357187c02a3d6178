"""Seeds as one model: seed-steps/s of S seeds trained as one stack against one seed alone, on one CPU thread.

Rows: the ladder's LayerNorm rung (experiments/gpt-ladder.yaml, English) and experiments/gpt-cpu.yaml's GPT
(English), each at S = 1, 4, 8 and 16 seeds (seeds 1337, 1338, ...). S = 1 is ``Trainer.train_step``, a lone
run's step; S > 1 is ``StackedTrainer.train_step``, the step ``harness run`` takes for the seeds of one variant
(for a GPT without dropout, harness/models/gpt_stack.py: batched matmuls over the seed dimension, one
``causal_attention`` call over seeds x batch). Only steps are timed (no evaluations, no MLflow), after
``--warmup`` untimed steps, in chunks of 10 steps, the fastest of which counts; ``speedup`` is seed-steps/s
over the lone seed's steps/s. ``path`` says which stack the trainer chose (``StackedTrainer.path``: ``native``
or ``vmap`` for a GPT). ``--attention auto sdpa`` times each S with the model's attention as it is and with SDPA
forced, their chunks taking turns (``attention`` column).

    python benchmarks/seed_stacking.py [--steps 200] [--seeds 1 4 8 16] [--attention auto sdpa]
        [--out results/bench/seed_stacking.csv]
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

import harness.models.attention as attention  # noqa: E402
from harness.data.corpora import load_corpus, resolve_data_dir  # noqa: E402
from harness.models.registry import build_model  # noqa: E402
from harness.spec.expansion import expand  # noqa: E402
from harness.spec.parsing import load_spec  # noqa: E402
from harness.train.stacking import StackedTrainer  # noqa: E402
from harness.train.trainer import Trainer  # noqa: E402

EXPERIMENTS = ROOT / "experiments"
CHUNK = 10  # steps per timed chunk
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


def seed_steps_per_s(config, corpus, seeds: int, steps: int, warmup: int, kinds: list[str]) -> dict:
    """{attention kind: (seed-steps/s, path)}: the kinds' steppers take turns in chunks of ``CHUNK`` steps and
    each keeps its fastest chunk, so that a slow spell of a shared CPU costs one chunk, not one setting."""
    steppers = {}
    for kind in kinds:
        group = trainers(config, corpus, seeds)
        steppers[kind] = (group[0] if seeds == 1 else StackedTrainer(group), group)
    short_context = attention.SHORT_CONTEXT
    size = min(CHUNK, steps)
    best = dict.fromkeys(kinds, float("inf"))
    try:
        for chunk in range(-1, steps // size):  # chunk -1: the untimed warm-up steps
            for kind, (stepper, group) in steppers.items():
                attention.SHORT_CONTEXT = 0 if kind == "sdpa" else short_context
                first = warmup + chunk * size if chunk >= 0 else 0
                count = size if chunk >= 0 else warmup
                started = time.perf_counter()
                for i in range(first, first + count):
                    stepper.train_step(i)
                if seeds == 1:  # the last loss, so no work is left pending
                    group[0].state.step_losses[first + count - 1].item()
                else:
                    stepper.step_losses[:, first + count - 1].sum().item()
                if chunk >= 0:
                    best[kind] = min(best[kind], time.perf_counter() - started)
    finally:
        attention.SHORT_CONTEXT = short_context
    return {
        kind: (seeds * size / best[kind], "alone" if seeds == 1 else stepper.path)
        for kind, (stepper, _) in steppers.items()
    }


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per measurement, in chunks of 10")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument(
        "--attention",
        nargs="+",
        default=["auto"],
        choices=("auto", "sdpa"),
        help="auto: the model's causal_attention as it is; sdpa: SDPA forced (SHORT_CONTEXT 0); both take turns",
    )
    parser.add_argument("--out", default=str(ROOT / "results" / "bench" / "seed_stacking.csv"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data_dir = resolve_data_dir() or ROOT.parent / "shared" / "data"
    rows = []
    for name in args.rows:
        spec_name, axes = ROWS[name]
        config = variant_config(spec_name, axes, args.warmup + args.steps)
        corpus = load_corpus(config.data, data_dir)
        alone = {}
        for seeds in args.seeds:
            rates = seed_steps_per_s(config, corpus, seeds, args.steps, args.warmup, args.attention)
            for kind, (rate, path) in rates.items():
                alone[kind] = rate if seeds == 1 else alone.get(kind)
                rows.append(
                    {
                        "row": name,
                        "seeds": seeds,
                        "path": path,
                        "attention": kind,
                        "seed_steps_per_s": round(rate, 1),
                        "speedup": round(rate / alone[kind], 2) if alone.get(kind) else None,
                        "n_layer": config.model.n_layer,
                        "n_embd": config.model.n_embd,
                        "context_length": config.train.context_length,
                        "batch_size": config.train.batch_size,
                        "steps": args.steps,
                        "threads": 1,
                        "torch": torch.__version__,
                    }
                )
                print(f"{name:24s} S={seeds:2d} {path:6s} {kind:4s} {rate:8.1f} seed-steps/s", flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    write_csv(table, Path(args.out))
    return table


if __name__ == "__main__":
    main()
