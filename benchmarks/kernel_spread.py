"""How far float32 and float64 training losses move with the CPU's kernel path (``ATEN_CPU_CAPABILITY``).

Float32 rounding depends on which vector kernels ATen picks (default, avx2, avx512), and training magnifies it;
the tests' bounds come from this spread. Runs the 40 default steps of tests/test_train.py's pinned case in a
child process per capability and dtype and prints the first and last minibatch loss, the final train and val
loss, and the largest difference between capabilities:

    python benchmarks/kernel_spread.py [--capabilities default avx2 avx512]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = [
    ("tinyshakespeare", "bigram"),
    ("tinyshakespeare", "ffn"),
    ("korean-chatbot", "bigram"),
    ("korean-chatbot", "ffn"),
]


def losses(dataset: str, kind: str, dtype: str) -> list[float]:
    import torch

    from harness.data.corpora import DataConfig, load_corpus, resolve_data_dir
    from harness.models.config import ModelConfig
    from harness.models.registry import build_model
    from harness.train.config import TrainConfig
    from harness.train.trainer import Trainer

    class Drop:
        def log(self, key, value, step):
            pass

    corpus = load_corpus(DataConfig(dataset), resolve_data_dir() or ROOT.parent / "shared" / "data")
    config = TrainConfig(steps=40, batch_size=16, context_length=32, device="cpu")
    torch.set_num_threads(2)
    torch.set_default_dtype(getattr(torch, dtype))  # this child process trains one case, in one dtype
    torch.manual_seed(1337)
    trainer = Trainer(
        build_model(ModelConfig(kind), corpus.tokenizer.vocab_size, 32), corpus, config, torch.device("cpu")
    )
    final = trainer.run(Drop())
    steps = trainer.state.step_losses
    return [float(steps[0]), float(steps[-1]), final["final_train_loss"], final["final_val_loss"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capabilities", nargs="+", default=["default", "avx2"])
    parser.add_argument("--child", nargs=3, metavar=("DATASET", "KIND", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(losses(*args.child)))
        return
    for dtype in ("float32", "float64"):
        for dataset, kind in CASES:
            rows = {}
            for capability in args.capabilities:
                env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "PYTHONPATH": str(ROOT)}
                out = subprocess.run(
                    [sys.executable, __file__, "--child", dataset, kind, dtype],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                rows[capability] = json.loads(out.strip().splitlines()[-1])
            values = list(rows.values())
            spread = max(abs(a - b) for row in values for other in values for a, b in zip(row, other, strict=True))
            for capability, row in rows.items():
                print(f"{dtype} {dataset:16} {kind:7} {capability:8} " + " ".join(repr(v) for v in row))
            print(f"{dtype} {dataset:16} {kind:7} spread   {spread:.3e}")


if __name__ == "__main__":
    main()
