"""The model kinds by name: a new kind is one file in harness/models/ plus one line in ``MODELS``."""

from __future__ import annotations

from torch import nn

from harness.models.base import CharLanguageModel
from harness.models.bigram import BigramLanguageModel
from harness.models.config import ModelConfig
from harness.models.ffn import FeedForwardLanguageModel
from harness.models.gpt import GPTLanguageModel

MODELS: dict[str, type[CharLanguageModel]] = {
    "bigram": BigramLanguageModel,
    "ffn": FeedForwardLanguageModel,
    "gpt": GPTLanguageModel,
}
MODEL_KINDS = tuple(MODELS)


def build_model(config: ModelConfig, vocab_size: int, context_length: int) -> CharLanguageModel:
    """The model of ``config.kind``; ``context_length`` is ``train.context_length`` (the GPT's block size)."""
    return MODELS[config.kind](config, vocab_size, context_length)


def count_parameters(model: nn.Module) -> int:
    """All parameters, as the lecture prints them (``sum(p.numel() for p in m.parameters())``)."""
    return sum(p.numel() for p in model.parameters())
