"""The write-up's bigram model: a vocab x vocab embedding read as the next token's logits."""

from __future__ import annotations

import torch.nn as nn

from harness.models.base import CharLanguageModel
from harness.models.config import ModelConfig


class BigramLanguageModel(CharLanguageModel):
    """The write-up's model: row ``i`` of a vocab x vocab table is the logits after token ``i``."""

    position_wise = True

    def __init__(self, config: ModelConfig, vocab_size: int, context_length: int):
        super().__init__(context_length)
        self.token_embedding_table = nn.Embedding(vocab_size, vocab_size)

    def logits_for_tokens(self, tokens):
        return self.token_embedding_table(tokens)

    def logits_table(self):
        return self.token_embedding_table.weight  # the table is the model: no lookup needed
