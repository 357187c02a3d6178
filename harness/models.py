"""The models of the write-up: a bigram table and a deeper feed-forward net.

Both read only the current token, so they declare ``position_wise = True``: the training loop
then computes logits once per distinct token instead of once per position (see harness.train).
A model that looks further back sets it to False and gets the plain per-position loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.config import applies_to

import torch
import torch.nn as nn
import torch.nn.functional as F

MODEL_KINDS = ("bigram", "ffn", "gpt")
LAYER_NORM_CHOICES = ("none", "pre")
INIT_CHOICES = ("pytorch", "nanogpt")
ATTENTION_SCALE_CHOICES = ("head_size", "n_embd")


@dataclass(frozen=True)
class ModelConfig:
    """``kind`` picks the model; the other keys belong to one kind each (see ``applies_to``).

    ffn: ``hidden_sizes`` (the write-up's 256, 128). gpt: sizes, then one switch per step of the
    lecture's ladder, so that the ladder is a list of settings rather than code changes.
    """

    kind: str = "bigram"
    hidden_sizes: tuple[int, ...] = field(default=(256, 128), metadata=applies_to("ffn"))
    n_layer: int = field(default=4, metadata=applies_to("gpt", since=2))
    n_head: int = field(default=4, metadata=applies_to("gpt", since=2))
    n_embd: int = field(default=128, metadata=applies_to("gpt", since=2))
    dropout: float = field(default=0.0, metadata=applies_to("gpt", since=2))
    bias: bool = field(default=True, metadata=applies_to("gpt", since=2))
    position_embedding: bool = field(default=True, metadata=applies_to("gpt", since=2))
    attention: bool = field(default=True, metadata=applies_to("gpt", since=2))
    attention_scale: str = field(default="head_size", metadata=applies_to("gpt", since=2))  # lecture: n_embd
    feed_forward: bool = field(default=True, metadata=applies_to("gpt", since=2))
    ffn_multiplier: int = field(default=4, metadata=applies_to("gpt", since=2))
    residual: bool = field(default=True, metadata=applies_to("gpt", since=2))
    layer_norm: str = field(default="pre", metadata=applies_to("gpt", since=2))
    init: str = field(default="nanogpt", metadata=applies_to("gpt", since=2))

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.kind not in MODEL_KINDS:
            found.append(("kind", f"unknown model {self.kind!r}; choices: {', '.join(MODEL_KINDS)}"))
        if not self.hidden_sizes or any(h < 1 for h in self.hidden_sizes):
            found.append(("hidden_sizes", f"must be a non-empty list of sizes >= 1, got {list(self.hidden_sizes)}"))
        return found


class CharLanguageModel(nn.Module):
    """Shared interface: ``forward`` as in the write-up, ``logits_for_tokens`` for the fast path."""

    position_wise = True

    def logits_for_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits for each token in ``tokens`` (shape ``tokens.shape + (vocab,)``)."""
        raise NotImplementedError

    def logits_table(self) -> torch.Tensor:
        """Next-token logits after every token of the vocabulary: (vocab, vocab)."""
        table = self.token_embedding_table.weight
        return self.logits_for_tokens(torch.arange(table.shape[0], device=table.device))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.logits_for_tokens(idx)
        if targets is None:
            return logits, None
        B, T, V = logits.shape
        loss = F.cross_entropy(logits.reshape(B * T, V), targets.reshape(B * T))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, generator: torch.Generator | None = None):
        """Append ``max_new_tokens`` tokens sampled from the softmax, one at a time (multinomial)."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -1:] if self.position_wise else idx)
            probs = F.softmax(logits[:, -1, :].float(), dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


class BigramLanguageModel(CharLanguageModel):
    """The write-up's model: row ``i`` of a vocab x vocab table is the logits after token ``i``."""

    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        self.token_embedding_table = nn.Embedding(vocab_size, vocab_size)

    def logits_for_tokens(self, tokens):
        return self.token_embedding_table(tokens)

    def logits_table(self):
        return self.token_embedding_table.weight  # the table is the model: no lookup needed


class FeedForwardLanguageModel(CharLanguageModel):
    """The write-up's deeper variant: vocab x vocab embedding -> 256 -> ReLU -> 128 -> ReLU -> vocab."""

    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
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


def build_model(config: ModelConfig, vocab_size: int) -> CharLanguageModel:
    classes = {"bigram": BigramLanguageModel, "ffn": FeedForwardLanguageModel}
    return classes[config.kind](config, vocab_size)
