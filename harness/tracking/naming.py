"""Short run names for the MLflow UI: only the varying axes, compact, distinct within 20 characters.

The runs table cuts names at about 20 characters, so ``kind=ffn,batch_size=128,dataset=korean-chatbot``
shows as ``kind=ffn,batch_…`` for four runs alike. A run name here is one token per varying axis, in the
spec's order: a word value as itself (``ffn``, ``korean``), a number behind a short label (``b128``,
``s1337``, ``lr0.001``), a named level (issue 10's ``rung: one-head``) as its level name. When the names of
a sweep still share their first 20 characters, the longest word tokens are cut to the shortest prefix
that still tells their axis's values apart (``bigram`` -> ``big``). The full id stays in the ``variant`` tag.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

DISTINCT_CHARS = 20  # what the runs table shows of a name before it cuts it
MIN_WORD = 3  # shortest cut of a word token: "big", "kor", "sha" still read as words

# Labels for numeric axes; any other field is labelled by its initials (warmup_steps -> "ws").
LABELS = {
    "batch_size": "b",
    "seed": "s",
    "lr": "lr",
    "min_lr": "minlr",
    "steps": "n",
    "context_length": "ctx",
    "n_layer": "L",
    "n_head": "H",
    "n_embd": "E",
    "hidden_sizes": "h",
    "dropout": "drop",
    "train_fraction": "tf",
    "warmup_steps": "wu",
    "grad_clip": "clip",
    "ffn_multiplier": "ffx",
    "max_new_tokens": "tok",
}
# Words that stand for a whole value; the catalog's corpora are the common case.
WORDS = {"tinyshakespeare": "shakespeare", "korean-chatbot": "korean"}


def _field(axis: str) -> str:
    return axis.rsplit(".", 1)[-1]


def _label(axis: str) -> str:
    name = _field(axis)
    return LABELS.get(name) or "".join(part[0] for part in name.split("_") if part)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def token(axis: str, value: Any) -> tuple[str, bool]:
    """``(text, is_word)`` for one axis value; only words may be cut shorter later."""
    if isinstance(value, bool):
        return (_field(axis) if value else f"no-{_field(axis)}"), False
    if isinstance(value, (int, float)):
        return _label(axis) + _number(value), False
    if isinstance(value, (list, tuple)):
        return _label(axis) + "x".join(_number(v) for v in value), False
    text = str(value)
    return WORDS.get(text, text), True


def _shortest_distinct(words: list[str], length: int) -> int:
    """The smallest cut >= ``length`` at which the distinct ``words`` stay distinct."""
    longest = max(map(len, words))
    while length < longest and len({w[:length] for w in words}) < len(set(words)):
        length += 1
    return length


def run_names(axes_of: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Names for a sweep: ``{variant id: name}`` from ``{variant id: variant.axes}``.

    Names are the tokens joined by spaces; when two share their first 20 characters, word tokens are
    cut (longest first) while that keeps each axis's values apart. Ids whose axes are all fixed get "base".
    """
    tokens = {vid: {axis: token(axis, value) for axis, value in axes.items()} for vid, axes in axes_of.items()}
    cut: dict[str, int] = {}  # axis -> length its words are cut to

    def name(vid: str) -> str:
        parts = [
            text[: cut[axis]] if is_word and axis in cut else text for axis, (text, is_word) in tokens[vid].items()
        ]
        return " ".join(parts) or "base"

    def clash() -> bool:
        heads = [name(vid)[:DISTINCT_CHARS] for vid in tokens]
        return len(set(heads)) < len(heads)

    while clash():
        candidates = {}
        for axis in {a for t in tokens.values() for a, (_, is_word) in t.items() if is_word}:
            words = sorted({t[axis][0] for t in tokens.values() if axis in t})
            current = cut.get(axis, max(map(len, words)))
            shorter = _shortest_distinct(words, MIN_WORD)
            if shorter < current:
                candidates[axis] = (current, shorter)
        if not candidates:
            break  # nothing left to cut: the names stay distinct in full, if not within 20 characters
        axis = max(candidates, key=lambda a: candidates[a][0])
        cut[axis] = candidates[axis][1]
    return {vid: name(vid) for vid in tokens}


def run_name(variant, variants: Iterable | None = None) -> str:
    """The run name of ``variant``, cut as needed to stay apart from ``variants`` (its sweep)."""
    others = {v.id: v.axes for v in (variants or [])}
    others[variant.id] = variant.axes
    return run_names(others)[variant.id]
