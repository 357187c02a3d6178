"""GPT step speed: a plain loop written like the lecture's vs the harness loop, same weights, same batches.

Rows (``--rows``; all three on a GPU, the first two on a CPU):

- ``ladder``: the ladder's last rung at the lecture's small size (3 blocks x 4 heads, n_embd 32, block 8,
  batch 32), where per-op overhead dominates: the harness loop's target is 4x the plain loop on one CPU thread;
- ``gpt-cpu``: experiments/gpt-cpu.yaml's size (4 x 4, n_embd 128, block 64, batch 12);
- ``gpt-shakespeare``: the lecture's final model (6 x 6, n_embd 384, block 256, batch 64), GPU only by default.

The plain loop is the lecture's code (karpathy/ng-video-lecture v2.py @0016836, MIT) written out below: one
``Head`` module per head with its own key/query/value, a tril mask and softmax, ``torch.cat`` of the heads,
trained by the lecture's loop (``step_speed.reference_loop``: batches stacked from a Python list, ``zero_grad``,
plain ``torch.optim.AdamW``). The harness loop is what
``Trainer.run`` does per step (``sample_starts``, ``step_loss``, grads to None, backward, fused AdamW) without
its evaluations. Both start from the same weights (the harness model's, copied head by head into the lecture's
modules) and draw the same window starts, with dropout 0, so their per-step fp32 losses must agree: the first
``--compare-steps`` (50) steps are compared and ``max_loss_diff`` must stay below 1e-4.

Timing: ``--rounds`` (3) rounds of both loops from fresh copies of the same weights, the order alternating.
On a shared or throttled CPU a slow spell hits one loop of one round, so ``speedup`` is the median of the
rounds' own ratios (``speedup_min`` and ``speedup_max`` their range), and the steps/s columns are medians.

On a GPU the harness loop also runs with ``--precision bf16 --compile`` if asked, and the row reports MFU: model
FLOPs per step (nanoGPT's estimate, 6 N + 12 L T C per token) times steps/s over the card's peak (``--peak-tflops``,
989 for an H100 SXM's dense bf16).

Run:
    make bench                                    # CPU rows, 1 thread, both bench scripts
    python benchmarks/gpt_speed.py --steps 300
    python benchmarks/gpt_speed.py --device cuda --precision bf16 --compile
Writes results/bench/gpt_speed.csv (or ``--out``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from step_speed import harness_loop, max_abs_diff, reference_loop, synchronize, write_csv  # noqa: E402

from harness.data.corpora import DataConfig, load_corpus, resolve_data_dir  # noqa: E402
from harness.models.config import ModelConfig  # noqa: E402
from harness.models.registry import build_model, count_parameters
from harness.train.config import TrainConfig  # noqa: E402
from harness.train.device import pick_device
from harness.train.trainer import Trainer

SEED = 1337
LR = 1e-3
LOSS_TOLERANCE = 1e-4  # the bar: fp32, dropout 0, 50 steps
DEFAULT_OUT = "results/bench/gpt_speed.csv"


@dataclass(frozen=True)
class GPTRow:
    name: str
    n_layer: int
    n_head: int
    n_embd: int
    context_length: int
    batch_size: int
    lr: float
    cpu: bool  # part of the default CPU rows


ROWS = (
    GPTRow("ladder", 3, 4, 32, 8, 32, 1e-3, cpu=True),
    GPTRow("gpt-cpu", 4, 4, 128, 64, 12, 1e-3, cpu=True),
    GPTRow("gpt-shakespeare", 6, 6, 384, 256, 64, 3e-4, cpu=False),
)


# -- the lecture's model (v2.py @0016836), sizes as arguments -------------------------------------------


class LectureHead(nn.Module):
    """One head of self-attention: separate key/query/value, a tril mask, softmax, as in the lecture."""

    def __init__(self, n_embd: int, head_size: int, block_size: int):
        super().__init__()
        self.key = nn.Linear(n_embd, head_size, bias=False)
        self.query = nn.Linear(n_embd, head_size, bias=False)
        self.value = nn.Linear(n_embd, head_size, bias=False)
        self.register_buffer("tril", torch.tril(torch.ones(block_size, block_size)))

    def forward(self, x):
        B, T, C = x.shape
        k = self.key(x)
        q = self.query(x)
        wei = q @ k.transpose(-2, -1) * C**-0.5  # the lecture scales by n_embd (C), not the head size
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float("-inf"))
        wei = F.softmax(wei, dim=-1)
        return wei @ self.value(x)


class LectureMultiHead(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int):
        super().__init__()
        self.heads = nn.ModuleList([LectureHead(n_embd, n_embd // n_head, block_size) for _ in range(n_head)])
        self.proj = nn.Linear(n_embd, n_embd)

    def forward(self, x):
        return self.proj(torch.cat([h(x) for h in self.heads], dim=-1))


class LectureBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int):
        super().__init__()
        self.sa = LectureMultiHead(n_embd, n_head, block_size)
        self.ffwd = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.ReLU(), nn.Linear(4 * n_embd, n_embd))
        self.ln1 = nn.LayerNorm(n_embd)
        self.ln2 = nn.LayerNorm(n_embd)

    def forward(self, x):
        x = x + self.sa(self.ln1(x))
        return x + self.ffwd(self.ln2(x))


class LectureGPT(nn.Module):
    """Residual blocks, pre-LayerNorm, a final LayerNorm, lm_head: the lecture's model at its LayerNorm commit."""

    def __init__(self, vocab_size: int, n_embd: int, n_head: int, n_layer: int, block_size: int):
        super().__init__()
        self.token_embedding_table = nn.Embedding(vocab_size, n_embd)
        self.position_embedding_table = nn.Embedding(block_size, n_embd)
        self.blocks = nn.Sequential(*[LectureBlock(n_embd, n_head, block_size) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size)

    def forward(self, idx, targets):
        B, T = idx.shape
        x = self.token_embedding_table(idx) + self.position_embedding_table(torch.arange(T, device=idx.device))
        logits = self.lm_head(self.ln_f(self.blocks(x)))
        B, T, C = logits.shape
        return logits, F.cross_entropy(logits.view(B * T, C), targets.view(B * T))


@torch.no_grad()
def copy_weights(ours, lecture: LectureGPT) -> None:
    """The harness GPT's weights into the lecture's modules: the fused q/k/v rows split head by head."""
    lecture.token_embedding_table.weight.copy_(ours.wte.weight)
    lecture.position_embedding_table.weight.copy_(ours.wpe.weight)
    for mine, theirs in zip(ours.blocks, lecture.blocks, strict=True):
        C = mine.attn.c_attn.weight.shape[1]
        q, k, v = mine.attn.c_attn.weight.split(C, dim=0)
        hs = C // len(theirs.sa.heads)
        for h, head in enumerate(theirs.sa.heads):
            rows = slice(h * hs, (h + 1) * hs)
            head.query.weight.copy_(q[rows])
            head.key.weight.copy_(k[rows])
            head.value.weight.copy_(v[rows])
        theirs.sa.proj.load_state_dict(mine.attn.c_proj.state_dict())
        theirs.ln1.load_state_dict(mine.ln_1.state_dict())
        theirs.ln2.load_state_dict(mine.ln_2.state_dict())
        theirs.ffwd[0].load_state_dict(mine.mlp.c_fc.state_dict())
        theirs.ffwd[2].load_state_dict(mine.mlp.c_proj.state_dict())
    lecture.ln_f.load_state_dict(ours.ln_f.state_dict())
    lecture.lm_head.load_state_dict(ours.lm_head.state_dict())


# -- rows -----------------------------------------------------------------------------------------------


def model_config(row: GPTRow) -> ModelConfig:
    """The lecture's block at the row's size: residual, 4x feed-forward, pre-LayerNorm, biases, scaled by n_embd."""
    return ModelConfig(
        kind="gpt",
        n_layer=row.n_layer,
        n_head=row.n_head,
        n_embd=row.n_embd,
        dropout=0.0,
        bias=True,
        attention_scale="n_embd",
        init="pytorch",
        feed_forward=True,
        ffn_multiplier=4,
        residual=True,
        layer_norm="pre",
    )


def new_trainer(row: GPTRow, corpus, device, steps: int, precision: str = "fp32", compile: bool = False) -> Trainer:
    torch.manual_seed(SEED)
    model = build_model(model_config(row), corpus.tokenizer.vocab_size, row.context_length)
    config = TrainConfig(
        steps=steps,
        batch_size=row.batch_size,
        context_length=row.context_length,
        lr=row.lr,
        seed=SEED,
        device=str(device),
        precision=precision,
        compile=compile,
    )
    return Trainer(model, corpus, config, device)


def flops_per_step(row: GPTRow, n_params: int) -> float:
    """nanoGPT's estimate: 6 N + 12 L T C FLOPs per token (forward and backward), times the tokens of a step."""
    per_token = 6 * n_params + 12 * row.n_layer * row.context_length * row.n_embd
    return per_token * row.context_length * row.batch_size


def one_round(row: GPTRow, corpus, data, device, steps: int, warmup: int, plain_first: bool):
    """Both loops once, from the same fresh weights: (plain losses, plain steps/s, harness losses, steps/s)."""
    trainer = new_trainer(row, corpus, device, steps)
    lecture = LectureGPT(corpus.tokenizer.vocab_size, row.n_embd, row.n_head, row.n_layer, row.context_length)
    copy_weights(trainer.model, lecture.to(device))

    def plain():
        return reference_loop(
            lecture, data, row.batch_size, steps, warmup, device, block_size=row.context_length, lr=row.lr
        )

    if plain_first:
        plain_losses, plain_speed = plain()
        losses, speed = harness_loop(trainer, steps, warmup)
    else:
        losses, speed = harness_loop(trainer, steps, warmup)
        plain_losses, plain_speed = plain()
    return plain_losses, plain_speed, losses, speed, trainer


def bench_row(row: GPTRow, corpus, device: torch.device, args) -> dict:
    steps = args.steps
    warmup = min(args.warmup, steps // 2)
    data = corpus.train.to(device)
    compare = min(args.compare_steps, steps)
    # Rounds of both loops, the order alternating: a shared or throttled CPU slows whichever loop it lands on,
    # so each round's ratio is its own, and the row gives their median (and range).
    plain_speeds, harness_speeds = [], []
    for round_ in range(args.rounds):
        plain_losses, plain_speed, losses, speed, trainer = one_round(
            row, corpus, data, device, steps, warmup, plain_first=round_ % 2 == 0
        )
        plain_speeds.append(plain_speed)
        harness_speeds.append(speed)
    ratios = torch.tensor(harness_speeds) / torch.tensor(plain_speeds)
    speed, plain_speed = float(torch.tensor(harness_speeds).median()), float(torch.tensor(plain_speeds).median())
    n_params = count_parameters(trainer.model) - trainer.model.wpe.weight.numel()
    result = {
        "row": row.name,
        "n_layer": row.n_layer,
        "n_head": row.n_head,
        "n_embd": row.n_embd,
        "context_length": row.context_length,
        "batch_size": row.batch_size,
        "params": count_parameters(trainer.model),
        "steps": steps,
        "timed_steps": steps - warmup,
        "device": str(device),
        "threads": torch.get_num_threads() if device.type == "cpu" else "",
        "plain_steps_per_s": plain_speed,
        "harness_steps_per_s": speed,
        "rounds": args.rounds,
        "speedup": float(ratios.median()),  # the median of the rounds' own ratios
        "speedup_min": float(ratios.min()),
        "speedup_max": float(ratios.max()),
        "harness_tokens_per_s": speed * row.batch_size * row.context_length,
        "compare_steps": compare,
        "max_loss_diff": max_abs_diff(plain_losses[:compare], losses[:compare]),
        "precision": "fp32",
        "compile": False,
    }
    if device.type == "cuda":
        result["harness_mfu"] = flops_per_step(row, n_params) * speed / (args.peak_tflops * 1e12)
        if args.precision != "fp32" or args.compile:
            fast = new_trainer(row, corpus, device, steps, args.precision, args.compile)
            _, fast_speed = harness_loop(fast, steps, warmup)
            result.update(
                {
                    "fast_precision": args.precision,
                    "fast_compile": args.compile,
                    "fast_steps_per_s": fast_speed,
                    "fast_tokens_per_s": fast_speed * row.batch_size * row.context_length,
                    "fast_mfu": flops_per_step(row, n_params) * fast_speed / (args.peak_tflops * 1e12),
                }
            )
    synchronize(device)
    return result


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300, help="steps per loop and row (default %(default)s)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of both loops, order alternating; medians (default 3)"
    )
    parser.add_argument("--warmup", type=int, default=20, help="untimed first steps (at most half of the steps)")
    parser.add_argument(
        "--compare-steps", type=int, default=50, help="first steps whose losses must agree (default 50)"
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument(
        "--rows", nargs="+", choices=[r.name for r in ROWS], help="default: the CPU rows on a CPU, all on a GPU"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: per-op overhead, as in the issue)"
    )
    parser.add_argument(
        "--precision", default="fp32", choices=("fp32", "bf16"), help="GPU: an extra harness run in this precision"
    )
    parser.add_argument("--compile", action="store_true", help="GPU: an extra harness run with torch.compile")
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="the card's dense bf16 peak, for MFU (H100 SXM: 989)"
    )
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--data-dir", help="folder holding the datasets (default: HARNESS_DATA_DIR, else download)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = pick_device(args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    # the lecture's vocabulary: the corpus's 65 characters
    corpus = load_corpus(DataConfig("tinyshakespeare", extra_chars=False).resolved(), resolve_data_dir(args.data_dir))
    rows = [r for r in ROWS if (r.name in args.rows if args.rows else (r.cpu or device.type == "cuda"))]
    results = []
    for row in rows:
        result = bench_row(row, corpus, device, args)
        results.append(result)
        print(
            f"{row.name:16} plain {result['plain_steps_per_s']:8.1f} steps/s  "
            f"harness {result['harness_steps_per_s']:8.1f} steps/s ({result['harness_tokens_per_s']:,.0f} tokens/s)  "
            f"x{result['speedup']:.2f} (rounds {result['speedup_min']:.2f}-{result['speedup_max']:.2f})  "
            f"max |loss diff| over {result['compare_steps']} steps {result['max_loss_diff']:.2e}"
            + (f"  MFU {result['harness_mfu']:.1%}" if "harness_mfu" in result else "")
            + (
                f"  {args.precision}{'+compile' if args.compile else ''}: {result['fast_steps_per_s']:.1f} steps/s, "
                f"MFU {result['fast_mfu']:.1%}"
                if "fast_mfu" in result
                else ""
            ),
            flush=True,
        )
        if result["max_loss_diff"] > LOSS_TOLERANCE:
            print(
                f"  FAIL: the two loops' losses differ by {result['max_loss_diff']:.2e} > {LOSS_TOLERANCE}", flush=True
            )
    table = pd.DataFrame(results)
    table.insert(0, "torch", torch.__version__)
    write_csv(table, args.out)
    return table


if __name__ == "__main__":
    main()
