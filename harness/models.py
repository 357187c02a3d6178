"""The models: the write-up's bigram table and deeper feed-forward net, and the lecture's GPT (harness.gpt).

Every concrete model declares what it reads. The bigram and FFN models read only the current token, so they
declare ``position_wise = True``: the training loop then computes logits once per distinct token instead of
once per position (see harness.train). The GPT looks back up to ``context_length`` tokens and declares
False. There is no default: a model that forgot the flag would silently get context-free losses.
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
        if self.kind == "gpt":
            found += self._gpt_problems()
        return found

    def _gpt_problems(self) -> list[tuple[str, str]]:
        """Only for kind gpt: the other kinds never read these keys (the spec refuses them there)."""
        found = []
        for key, low in (("n_layer", 0), ("n_head", 1), ("n_embd", 1), ("ffn_multiplier", 1)):
            if getattr(self, key) < low:
                found.append((key, f"must be >= {low}, got {getattr(self, key)}"))
        if not 0 <= self.dropout < 1:
            found.append(("dropout", f"must be in [0, 1), got {self.dropout}"))
        for key, choices in (("layer_norm", LAYER_NORM_CHOICES), ("init", INIT_CHOICES),
                             ("attention_scale", ATTENTION_SCALE_CHOICES)):
            if getattr(self, key) not in choices:
                found.append((key, f"unknown choice {getattr(self, key)!r}; choices: {', '.join(choices)}"))
        if found or self.n_layer == 0:
            return found  # with no blocks, the block switches below mean nothing
        if self.attention and self.n_embd % self.n_head:
            found.append(("n_embd", f"must be divisible by model.n_head ({self.n_head}), got {self.n_embd}"))
        if not self.attention and not self.feed_forward:
            found.append(("attention", "and model.feed_forward are both false: a block would be empty; "
                                       "for a model with no blocks set model.n_layer: 0"))
        if self.feed_forward and not self.residual and self.ffn_multiplier != 1:
            found.append(("ffn_multiplier", f"must be 1 with model.residual: false (the feed-forward is then one "
                                            f"Linear(n_embd, n_embd) + ReLU, as in the lecture), "
                                            f"got {self.ffn_multiplier}"))
        return found


class CharLanguageModel(nn.Module):
    """Shared interface: ``forward`` as in the write-up, ``generate``, and for position-wise models the fast path.

    Every concrete subclass declares ``position_wise: bool`` (True: logits at a position depend on the token
    there only, so ``logits_for_tokens``/``logits_table`` give them all; False: they depend on the context).
    """

    position_wise: bool  # no default, on purpose: checked when a model is built

    def __init__(self, context_length: int):
        super().__init__()
        declared = getattr(type(self), "position_wise", None)
        if not isinstance(declared, bool):
            got = "does not declare position_wise" if declared is None else f"declares position_wise = {declared!r}"
            raise TypeError(
                f"{type(self).__name__} {got}: set the class attribute position_wise = True if its logits "
                f"at a position read only the token there, else False"
            )
        self.context_length = context_length

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
        """Append ``max_new_tokens`` tokens sampled from the softmax, one at a time (multinomial).

        The model sees at most what it was built for: the last ``context_length`` tokens (the last one for a
        position-wise model), so prompts of any length work, trained or not.
        """
        keep = 1 if self.position_wise else self.context_length
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -keep:])
            probs = F.softmax(logits[:, -1, :].float(), dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


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


def build_model(config: ModelConfig, vocab_size: int, context_length: int) -> CharLanguageModel:
    """The model of ``config.kind``; ``context_length`` is ``train.context_length`` (the GPT's block size)."""
    from harness.gpt import GPTLanguageModel  # harness.gpt builds on this module

    classes = {"bigram": BigramLanguageModel, "ffn": FeedForwardLanguageModel, "gpt": GPTLanguageModel}
    return classes[config.kind](config, vocab_size, context_length)


def count_parameters(model: nn.Module) -> int:
    """All parameters, as the lecture prints them (``sum(p.numel() for p in m.parameters())``)."""
    return sum(p.numel() for p in model.parameters())
