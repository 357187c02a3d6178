"""Models: one file per kind, the shared base, the config and the registry (``build_model``).

The public names of the modules below, so that ``from harness.models import X`` works; inside the
harness, modules import from the module that defines a name.
"""

from __future__ import annotations

from harness.models.base import (  # noqa: F401
    CharLanguageModel,
)
from harness.models.bigram import (  # noqa: F401
    BigramLanguageModel,
)
from harness.models.config import (  # noqa: F401
    ATTENTION_SCALE_CHOICES,
    INIT_CHOICES,
    LAYER_NORM_CHOICES,
    ModelConfig,
)
from harness.models.ffn import (  # noqa: F401
    FeedForwardLanguageModel,
)
from harness.models.gpt import (  # noqa: F401
    MLP,
    Block,
    CausalSelfAttention,
    GPTLanguageModel,
)
from harness.models.registry import (  # noqa: F401
    MODEL_KINDS,
    MODELS,
    build_model,
    count_parameters,
)
