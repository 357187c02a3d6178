"""The spec reference page (``docs/spec-reference.md``), generated from the keys, types, defaults and choices in code.

Every dotted key of every section needs one line of meaning in ``MEANINGS``; the rest (type, default, choices,
whether it is part of a run's identity, the model kinds it applies to) is read from the config dataclasses, so the
page cannot drift from them. ``harness reference`` rewrites it; ``--check`` (CI, via a test) says when it is stale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.spec.identity import _plain
from harness.spec.keys import (
    CHOICES,
    PRACTICAL_DIFFERENCE,
    REFERENCE_METRICS,
    SECTIONS,
    TUNE_EXTEND,
    TUNE_METRICS,
    _annotation,
    _type_name,
    all_dotted_keys,
    config_field,
    default_of,
)
from harness.train.config import DEVICE_CHOICES, EVAL_SCORING_CHOICES

REFERENCE_PATH = Path(__file__).resolve().parents[2] / "docs" / "spec-reference.md"

# Choices checked by a section's own problems() rather than by CHOICES (a device may also be cuda:N).
MORE_CHOICES: dict[str, tuple[str, ...]] = {
    "train.eval_scoring": EVAL_SCORING_CHOICES,
    "train.device": (*DEVICE_CHOICES, "cuda:N"),
}

SECTION_INTRO = {
    "data": "Which text trains and validates, and how it becomes tokens.",
    "model": "Which model, and its sizes and switches. A key of one model kind is an error under another.",
    "train": "The one training loop every variant goes through: AdamW on random windows of the train split.",
    "sample": "Text generated before and after training, logged with the run. Never part of a run's identity.",
}

# One line per key, for users. A key added to a section without a line here fails the generator (and its test).
MEANINGS: dict[str, str] = {
    "data.dataset": "`tinyshakespeare` (Karpathy's 1 MB of Shakespeare), `korean-chatbot` (songys/Chatbot_data, each "
    "row's question then answer), or `file` with `data.path`. Downloaded once and checked by sha256; see "
    "[Getting started](getting-started.md#the-data).",
    "data.path": "Any local text file (then `dataset: file` may be left out). Its identity is its content: editing "
    "the file makes a new variant, moving it does not.",
    "data.encoding": "The file's encoding, e.g. `cp949` for Korean files saved on Windows.",
    "data.train_fraction": "The share of the corpus that trains; the rest validates.",
    "data.split": "`position`: the first part trains (the lecture's split). `shuffled-rows`: whole rows shuffled with "
    "a fixed seed, then cut. Unset, each corpus takes its own default: `korean-chatbot` is sorted by topic, so it "
    "shuffles rows; the others split by position.",
    "data.extra_chars": "The write-up's vocabulary adds digits, ASCII punctuation, space and newline to the corpus's "
    "characters, so any prompt encodes; `false` is the lecture's vocabulary (the corpus's characters only). "
    "`bytes` and `bpe` ignore it.",
    "data.tokenizer": "`char`: one token per character (the write-up's); `jamo`: each Hangul syllable split into its "
    "letters; `bpe`: a byte-level BPE of `vocab_size` tokens learnt from the train split; `bytes`: UTF-8 bytes. "
    "See [Tokenizers](tokenizers.md).",
    "data.vocab_size": "`bpe` only, and required there: 256 byte tokens plus the merges learnt.",
    "model.kind": "`bigram`: a vocab x vocab table read as logits. `ffn`: embedding, then the `hidden_sizes` with "
    "ReLU, then the vocabulary. `gpt`: a Transformer whose parts are the switches below.",
    "model.hidden_sizes": "The hidden widths of the feed-forward net.",
    "model.n_layer": "Transformer blocks (0: embeddings straight to the output layer).",
    "model.n_head": "Attention heads per block; `n_embd` must divide by it.",
    "model.n_embd": "The width of the embeddings and of every block. The block size is `train.context_length`.",
    "model.dropout": "Dropout after attention and feed-forward, in [0, 1).",
    "model.bias": "Bias terms in the linear layers and LayerNorms.",
    "model.position_embedding": "Add a learnt position embedding to the token embedding.",
    "model.attention": "Self-attention in each block; `false` leaves blocks of feed-forward only.",
    "model.attention_scale": "Attention scores divided by the square root of the head size, or of `n_embd` as in "
    "the lecture's commits.",
    "model.feed_forward": "A feed-forward layer after attention in each block.",
    "model.ffn_multiplier": "The feed-forward layer's hidden width, in multiples of `n_embd` (1 without residual "
    "connections, as in the lecture).",
    "model.residual": "Residual connections around attention and feed-forward, with their output projections.",
    "model.layer_norm": "`pre`: LayerNorm before attention and feed-forward, and a final one; `none`: no LayerNorm.",
    "model.init": "`pytorch`: PyTorch's default initialisation (the lecture's code); `nanogpt`: N(0, 0.02), residual "
    "projections scaled by 1/sqrt(2 n_layer).",
    "train.steps": "Optimizer steps.",
    "train.batch_size": "Windows per step.",
    "train.context_length": "Tokens per window: the block size of a GPT.",
    "train.lr": "AdamW's learning rate (its peak, with a schedule).",
    "train.weight_decay": "AdamW's weight decay.",
    "train.betas": "AdamW's two betas.",
    "train.lr_schedule": "`constant`, or `cosine` decay to `min_lr` at the last step.",
    "train.warmup_steps": "Steps of linear warmup from 0, with either schedule.",
    "train.min_lr": "Where the cosine schedule ends.",
    "train.grad_clip": "Clip the global gradient norm to this; 0 turns clipping off.",
    "train.seed": "The run's seed: initial weights and the batches drawn. `seeds:` or `--seeds` repeats variants "
    "over several.",
    "train.precision": "`fp32`, or `bf16` autocast (for GPUs).",
    "train.eval_scoring": "How a context model's losses are scored: `all-positions` scores every token once, in "
    "consecutive windows; `second-half` scores only tokens with at least half a window of context. Bigram and "
    "FFN losses are exact either way. See [Verdicts and statistics](verdicts.md#what-a-loss-is).",
    "train.eval_interval": "Steps between evaluations; unset, 1/50 of the steps (at least about 50 points, at most "
    "about 2,000).",
    "train.eval_curve_tokens": "Targets per split that score each point of a context model's loss curves (the same "
    "windows for every variant and seed); unset scores the whole split every time. The final losses are always "
    "scored on the whole split.",
    "train.device": "`auto` takes `cuda`, then `mps`, then `cpu`.",
    "train.fast_path": "Bigram and FFN: compute the loss once per distinct (current, next) pair of the batch, the same "
    "math as per position, much faster; `false` computes it per position.",
    "train.compile": "`torch.compile` the model.",
    "train.threads": "torch's CPU threads; 0 leaves torch's default.",
    "train.checkpoint_interval": "Steps between checkpoints, from which a killed run resumes; 0: none.",
    "train.log_model": "Log the trained model to MLflow when the run finishes (safetensors weights, config, "
    "tokenizer), for `harness sample`, `mlflow.pyfunc.load_model` and the registry ([Models](models.md)).",
    "train.stack_seeds": "Train the seeds of one variant as one stacked model, each seed on its own path: `true`, "
    "`false`, or unset for where it was measured faster. See [Speed](speed.md#seeds-stacked).",
    "train.cuda_graphs": "On a CUDA device, capture a whole training step as a CUDA graph and replay it; ignored "
    "elsewhere. See [Speed](speed.md#on-a-gpu).",
    "sample.prompt": "The text generation starts from (every character must be in the vocabulary).",
    "sample.max_new_tokens": "Tokens generated before and after training; 0: none.",
}

TOP_LEVEL: list[tuple[str, str, str]] = [
    ("name", "required", "The MLflow experiment and the `results/<name>/` folder: letters, digits and `-_.`."),
    ("description", "—", "Shown as the experiment's description in the MLflow UI."),
    ("base", "—", "Settings every variant shares: `data`, `model`, `train`, `sample` (the sections below)."),
    (
        "grid",
        "—",
        "Axes crossed in full, in the order written: a dotted key with a list of values, or a named axis whose "
        "levels are bundles of settings (`rung: {bigram: {model.kind: bigram}, ...}`).",
    ),
    ("zip", "—", "Groups of equally long lists varied together, one axis per group."),
    ("exclude", "—", "Partial assignments to drop from the grid (`{model.kind: ffn, data.dataset: korean-chatbot}`)."),
    ("seeds", "—", "Every variant repeated per seed (`--seeds` on the command line replaces them)."),
    (
        "references",
        "—",
        "Published values shown beside the measured ones: `match` (axis or key -> value), `metric` (one of "
        + ", ".join(f"`{m}`" for m in REFERENCE_METRICS)
        + "), `value`, `source`.",
    ),
    (
        "practical_difference",
        f"{PRACTICAL_DIFFERENCE}",
        "δ in nats: the smallest difference in loss that matters to the report's verdicts "
        "([Verdicts and statistics](verdicts.md)). Part of no run's identity.",
    ),
    (
        "tune",
        "—",
        "Every variant at its own best point before the verdicts ([Tuning](tuning.md)): `train.*`/`model.*` keys with "
        "their values (a range `{low, high, log}` with `search: tpe`), `seeds` (tuning seeds, disjoint from "
        "`seeds`), `metric` (one of " + ", ".join(f"`{m}`" for m in TUNE_METRICS) + f"), `extend` ({TUNE_EXTEND}), "
        "`search` (`grid` or `tpe`), `trials` (TPE), `compare_untuned` (`false`). Part of no run's identity.",
    ),
]


def _cell(value: Any) -> str:
    """A value as a spec would write it, in a table cell."""
    plain = _plain(value)
    if plain is None:
        return "unset"
    if isinstance(plain, bool):
        return f"`{str(plain).lower()}`"
    if isinstance(plain, list):
        return "`[" + ", ".join(str(v) for v in plain) + "]`"
    if isinstance(plain, str):
        return f'`"{plain}"`' if plain.strip() != plain or not plain else f"`{plain}`"
    return f"`{plain}`"


def _identity(key: str) -> str:
    meta = config_field(key).metadata
    if not meta.get("identity", True):
        return "no"
    if key == "data.path":
        return "yes: the file's sha256"
    kinds = meta.get("kinds")
    where = f" (kind {', '.join(kinds)})" if kinds else ""
    if meta.get("since", 1) > 1:
        return f"yes{where}, when not the default"
    return f"yes{where}"


def _choices(key: str) -> str:
    choices = CHOICES.get(key) or MORE_CHOICES.get(key)
    return ", ".join(f"`{c}`" for c in choices) if choices else ""


def reference_text() -> str:
    keys = all_dotted_keys()
    missing = [k for k in keys if k not in MEANINGS]
    stale = [k for k in MEANINGS if k not in keys]
    if missing or stale:
        raise ValueError(
            f"harness/spec/reference.py MEANINGS: {'no line for ' + ', '.join(missing) if missing else ''}"
            f"{'; ' if missing and stale else ''}{'no such key: ' + ', '.join(stale) if stale else ''}"
        )
    lines = [
        "# Spec reference",
        "",
        "<!-- Generated by `harness reference` (make schema) from the config sections in the code; do not edit. -->",
        "",
        "A spec is one YAML file in `experiments/`. Its top-level keys say what varies; `base` holds the settings "
        "every variant shares, in four sections. Any key can also be set on the command line as `section.key=value` "
        "(`harness run experiments/seed.yaml train.steps=200`), winning over the spec for every variant.",
        "",
        "**In the run's identity** says whether a key is hashed into the run's `config_hash`: what decides which "
        "runs are the same variant, what a rerun skips as already finished and which run a report row comes from. "
        '"When not the default": a key added after the first runs were recorded is hashed only when set to '
        "something else, so adding it retrains nothing. Keys that only change how a run executes or is observed "
        "(device, threads, checkpoints, samples) are never hashed.",
        "",
        "## Top-level keys",
        "",
        "| key | default | meaning |",
        "|---|---|---|",
        *(f"| `{key}` | {default} | {meaning} |" for key, default, meaning in TOP_LEVEL),
    ]
    for section in SECTIONS:
        lines += [
            "",
            f"## {section}",
            "",
            SECTION_INTRO[section],
            "",
            "| key | type | default | choices | in the run's identity | meaning |",
            "|---|---|---|---|---|---|",
        ]
        for key in (k for k in keys if k.startswith(f"{section}.")):
            name = key.split(".", 1)[1]
            lines.append(
                f"| `{name}` | {_type_name(_annotation(key))} | {_cell(default_of(key))} | {_choices(key)} "
                f"| {_identity(key)} | {MEANINGS[key]} |"
            )
    return "\n".join(lines) + "\n"
