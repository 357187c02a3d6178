"""Models: one file per kind, the shared base, the config and the registry (``build_model``)."""

from __future__ import annotations

from harness.exports import lazy_exports

_MODULES = {
    "config": ("LAYER_NORM_CHOICES", "INIT_CHOICES", "ATTENTION_SCALE_CHOICES", "ModelConfig"),
    "base": ("CharLanguageModel",),
    "bigram": ("BigramLanguageModel",),
    "ffn": ("FeedForwardLanguageModel",),
    "gpt": ("CausalSelfAttention", "MLP", "Block", "GPTLanguageModel"),
    "registry": ("MODELS", "MODEL_KINDS", "build_model", "count_parameters"),
}
__getattr__, __all__ = lazy_exports(__name__, _MODULES)
