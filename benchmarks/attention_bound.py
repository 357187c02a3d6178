"""How far attention keeps the GPT step from the lecture's: the ladder's last rung with three attentions and none.

At the ladder's last rung (3 blocks x 4 heads, n_embd 32, block 8, batch 32; one CPU thread) this times the
lecture's loop (``gpt_speed.LectureGPT``, ``step_speed.reference_step``) and the harness loop (``harness_step``) with
``causal_attention`` as it is (SDPA, or the written-out short-context form at this block size), with SDPA forced
(``SHORT_CONTEXT = 0``), and with attention replaced by ``v`` itself: no attention cost at all, an upper bound
for any attention kernel (that model computes something else; its losses are not compared). The four settings
take turns in chunks of ``--chunk`` steps, ``--rounds`` times; each keeps its fastest chunk, so a slow spell of
a shared CPU costs a chunk, not a setting.

    python benchmarks/attention_bound.py [--rounds 60] [--chunk 20] [--out results/bench/attention_bound.csv]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from gpt_speed import ROWS, LectureGPT, copy_weights, new_trainer  # noqa: E402
from step_speed import harness_step, reference_step, write_csv  # noqa: E402

import harness.models.attention as attention  # noqa: E402
import harness.models.gpt as gpt  # noqa: E402
from harness.data.corpora import DataConfig, load_corpus, resolve_data_dir  # noqa: E402

SETTINGS = ("lecture", "harness", "harness, SDPA forced", "harness, no attention (bound)")


def no_attention(q, k, v, scale=None, dropout_p=0.0):
    return v * 1.0  # a new tensor, as any attention returns


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--chunk", type=int, default=20, help="steps per timed chunk")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench" / "attention_bound.csv"))
    parser.add_argument("--data-dir", help="folder holding the datasets (default: HARNESS_DATA_DIR, else download)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    corpus = load_corpus(DataConfig("tinyshakespeare", extra_chars=False).resolved(), resolve_data_dir(args.data_dir))
    row = next(r for r in ROWS if r.name == "ladder")
    trainer = new_trainer(row, corpus, torch.device("cpu"), steps=10**7)
    lecture = LectureGPT(corpus.tokenizer.vocab_size, row.n_embd, row.n_head, row.n_layer, row.context_length)
    copy_weights(trainer.model, lecture)
    optimizer = torch.optim.AdamW(lecture.parameters(), lr=row.lr)
    g = torch.Generator().manual_seed(1337)
    harness_steps = itertools.count()  # the Trainer's step numbers, one draw of window starts each

    def one_step(setting: str) -> None:
        if setting == "lecture":
            reference_step(lecture, optimizer, corpus.train, row.batch_size, row.context_length, g)
        else:
            harness_step(trainer, next(harness_steps))

    as_it_is, short_context = gpt.causal_attention, attention.SHORT_CONTEXT

    def chunk_ms(setting: str) -> float:
        gpt.causal_attention = no_attention if setting.endswith("(bound)") else as_it_is
        attention.SHORT_CONTEXT = 0 if setting.endswith("SDPA forced") else short_context
        start = time.perf_counter()
        for _ in range(args.chunk):
            one_step(setting)
        return (time.perf_counter() - start) / args.chunk * 1e3

    best = dict.fromkeys(SETTINGS, float("inf"))
    try:
        for _ in range(args.rounds):
            for setting in SETTINGS:
                best[setting] = min(best[setting], chunk_ms(setting))
    finally:
        gpt.causal_attention, attention.SHORT_CONTEXT = as_it_is, short_context
    table = pd.DataFrame(
        {
            "setting": list(SETTINGS),
            "ms_per_step": [best[s] for s in SETTINGS],
            "ratio_to_lecture": [best["lecture"] / best[s] for s in SETTINGS],
            "rounds": args.rounds,
            "chunk_steps": args.chunk,
            "row": row.name,
            "threads": 1,
            "torch": torch.__version__,
        }
    )
    for _, r in table.iterrows():
        print(f"{r.setting:32} {r.ms_per_step:7.3f} ms/step  x{r.ratio_to_lecture:.2f} the lecture's", flush=True)
    write_csv(table, args.out)
    return table


if __name__ == "__main__":
    main()
