"""The write-up's deeper variant: the bigram's embedding, then a feed-forward net (256 -> 128) to the logits."""

from __future__ import annotations

import torch.nn as nn

from harness.models.base import CharLanguageModel
from harness.models.config import ModelConfig


class FeedForwardLanguageModel(CharLanguageModel):
    """The write-up's deeper variant: vocab x vocab embedding -> 256 -> ReLU -> 128 -> ReLU -> vocab."""

    position_wise = True

    def __init__(self, config: ModelConfig, vocab_size: int, context_length: int):
        super().__init__(context_length)
        self.token_embedding_table = nn.Embedding(vocab_size, vocab_size)
        layers: list[nn.Module] = []
        width = vocab_size
        for hidden in config.hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, vocab_size))
        self.net = nn.Sequential(*layers)

    def logits_for_tokens(self, tokens):
        return self.net(self.token_embedding_table(tokens))

    def logits_table(self):
        return self.net(self.token_embedding_table.weight)
