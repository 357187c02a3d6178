"""The model section of a spec: ``kind`` and the settings of each kind, one frozen dataclass that owns its defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.config import applies_to

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
        for key, choices in (
            ("layer_norm", LAYER_NORM_CHOICES),
            ("init", INIT_CHOICES),
            ("attention_scale", ATTENTION_SCALE_CHOICES),
        ):
            if getattr(self, key) not in choices:
                found.append((key, f"unknown choice {getattr(self, key)!r}; choices: {', '.join(choices)}"))
        if found or self.n_layer == 0:
            return found  # with no blocks, the block switches below mean nothing
        if self.attention and self.n_embd % self.n_head:
            found.append(("n_embd", f"must be divisible by model.n_head ({self.n_head}), got {self.n_embd}"))
        if not self.attention and not self.feed_forward:
            found.append(
                (
                    "attention",
                    "and model.feed_forward are both false: a block would be empty; "
                    "for a model with no blocks set model.n_layer: 0",
                )
            )
        if self.feed_forward and not self.residual and self.ffn_multiplier != 1:
            found.append(
                (
                    "ffn_multiplier",
                    f"must be 1 with model.residual: false (the feed-forward is then one "
                    f"Linear(n_embd, n_embd) + ReLU, as in the lecture), "
                    f"got {self.ffn_multiplier}",
                )
            )
        return found
