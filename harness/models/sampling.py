"""Text from a model: a prompt encoded, tokens drawn with a seeded generator, decoded to readable (NFC) text.

The one way every sample is drawn: the run's own samples (``Trainer.sample``), ``harness sample`` and the
logged MLflow model's ``predict``. So, on one device, the same seed, prompt and settings give the same text
everywhere, and at temperature 1 with no top-k ``harness sample`` reproduces the sample the run logged.
"""

from __future__ import annotations

import unicodedata

import torch

from harness.models.base import CharLanguageModel


class SamplingError(ValueError):
    """A setting or prompt that cannot be sampled from; the message names it."""


def check_settings(max_new_tokens: int, temperature: float, top_k: int | None, num_samples: int = 1) -> None:
    """Raise ``SamplingError`` naming each setting out of range."""
    problems = []
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        problems.append(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        problems.append(f"temperature must be a number > 0, got {temperature!r}")
    elif temperature == float("inf"):
        problems.append("temperature must be finite, got inf")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        problems.append(f"top_k must be an integer >= 1 (or none for no top-k), got {top_k!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        problems.append(f"num_samples must be an integer >= 1, got {num_samples!r}")
    if problems:
        raise SamplingError("; ".join(problems))


def encode_prompt(tokenizer, prompt: str) -> torch.Tensor:
    """The prompt's ids; a prompt the vocabulary cannot encode raises ``SamplingError`` naming every character
    outside it (the tokenizer's own error names only the first)."""
    if not isinstance(prompt, str) or not prompt:
        raise SamplingError("the prompt must be at least one character")
    try:
        ids = tokenizer.encode_tensor(prompt)
    except ValueError as exc:  # UnknownCharacterError, or the jamo tokenizer's NotNFCError
        outside = []
        for char in dict.fromkeys(prompt):
            try:
                tokenizer.encode_tensor(char)
            except ValueError:
                outside.append(f"{char!r} (U+{ord(char):04X})")
        if not outside:
            raise SamplingError(f"the prompt cannot be encoded: {exc}") from None
        raise SamplingError(
            f"the prompt has {len(outside)} character(s) outside the model's vocabulary: {', '.join(outside)}"
        ) from None
    if len(ids) == 0:
        raise SamplingError("the prompt encodes to no token")
    return ids


@torch.no_grad()
def sample_texts(
    model: CharLanguageModel,
    tokenizer,
    prompt: str,
    max_new_tokens: int,
    *,
    seed: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    num_samples: int = 1,
) -> list[str]:
    """``num_samples`` continuations of ``prompt`` (prompt included), drawn one after another from one generator
    seeded with ``seed`` on the model's device: the first is the one sample that seed gives alone."""
    check_settings(max_new_tokens, temperature, top_k, num_samples)
    device = next(model.parameters()).device
    idx = encode_prompt(tokenizer, prompt).to(device).view(1, -1)
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        return [
            unicodedata.normalize(
                "NFC", tokenizer.decode(model.generate(idx, max_new_tokens, generator, temperature, top_k)[0].tolist())
            )
            for _ in range(num_samples)
        ]
    finally:
        model.train(was_training)
