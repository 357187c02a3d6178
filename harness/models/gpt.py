"""A decoder-only Transformer whose parts are switches: the lecture's ladder as settings.

Karpathy's "Let's build GPT" (karpathy/ng-video-lecture, ``v2.py``) grows a bigram model into a GPT one
step per commit. Each step is a key of ``ModelConfig``, so that a rung of the ladder is a list of settings
(see /work/shared/references/lecture-ladder.md for the commits):

- ``n_layer: 0``                 token + position embedding -> lm_head ("bigram, factored", 28e5fd7);
- ``n_head: 1``, attention only  one head of size n_embd (10024b1); ``n_head: 4``: 4 heads of 8 (a6e0bee);
- ``feed_forward``               Linear(n_embd, n_embd) + ReLU after attention (97dd3f9);
- ``n_layer: 3``                 3 blocks, still no residual (the video);
- ``residual``                   x + proj(attn(x)), x + mlp(x), mlp = Linear(n, 4n), ReLU, Linear(4n, n) (5c3a2d2);
- ``layer_norm: pre``            LayerNorm before attention and before mlp, and one before lm_head (0016836);
- ``dropout``                    on attention weights, after the projection, after the mlp (482b15d).

With ``residual: false`` the heads' concatenation is the block's attention output (no projection) and the
feed-forward is one Linear(n_embd, n_embd) + ReLU, as in the lecture before its residual commit; so
``ffn_multiplier`` must be 1 there (a config error otherwise, see ``ModelConfig.problems``).

``bias`` follows nanoGPT (Linear layers and LayerNorms), except q/k/v, which have no bias in any setting,
as in the lecture. ``init: pytorch`` keeps PyTorch's defaults (the lecture's code); ``init: nanogpt`` is
nanoGPT's ``_init_weights``: N(0, 0.02) weights, zero biases, residual projections N(0, 0.02/sqrt(2 n_layer)).
Unlike nanoGPT there is no dropout on the embeddings and no weight tying: the lecture has neither.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.models.attention import causal_attention
from harness.models.base import CharLanguageModel
from harness.models.config import ModelConfig


class CausalSelfAttention(nn.Module):
    """All heads at once: one fused q/k/v Linear, then ``causal_attention`` (SDPA, or its short-context CPU form)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        # The lecture's Head has key/query/value Linears with bias=False; fused, they are one (n, 3n) Linear
        # with the same parameters and the same default init (fan_in = n_embd either way).
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        # The lecture scaled scores by C**-0.5 with C = n_embd; SDPA's default is head_size**-0.5.
        self.scale = config.n_embd**-0.5 if config.attention_scale == "n_embd" else None
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias) if config.residual else None
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = causal_attention(q, k, v, scale=self.scale, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # the heads side by side, as torch.cat in the lecture
        if self.c_proj is not None:
            y = self.c_proj(y)
        return self.resid_dropout(y)


class MLP(nn.Module):
    """With residual: Linear(n, m n), ReLU, Linear(m n, n). Without: Linear(n, n), ReLU (the lecture's first one)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        n, hidden = config.n_embd, config.ffn_multiplier * config.n_embd
        if config.residual:
            self.c_fc = nn.Linear(n, hidden, bias=config.bias)
            self.c_proj = nn.Linear(hidden, n, bias=config.bias)
        else:  # problems() makes sure that ffn_multiplier is 1 here
            self.c_fc = nn.Linear(n, n, bias=config.bias)
            self.c_proj = None
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.c_fc(x))
        if self.c_proj is not None:
            x = self.c_proj(x)
        return self.dropout(x)


class Block(nn.Module):
    """Communication (attention) then computation (mlp); each part optional, residual and LayerNorm switchable."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.residual = config.residual
        self.ln_1 = _layer_norm(config) if config.attention else None
        self.attn = CausalSelfAttention(config) if config.attention else None
        self.ln_2 = _layer_norm(config) if config.feed_forward else None
        self.mlp = MLP(config) if config.feed_forward else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn is not None:
            y = self.attn(self.ln_1(x))
            x = x + y if self.residual else y
        if self.mlp is not None:
            y = self.mlp(self.ln_2(x))
            x = x + y if self.residual else y
        return x


class GPTLanguageModel(CharLanguageModel):
    """Token (+ position) embedding, ``n_layer`` blocks, (final LayerNorm,) lm_head."""

    position_wise = False  # attention reads the whole context; even with n_layer 0, the position embedding does

    def __init__(self, config: ModelConfig, vocab_size: int, context_length: int):
        super().__init__(context_length)
        self.config = config
        self.wte = nn.Embedding(vocab_size, config.n_embd)
        self.wpe = nn.Embedding(context_length, config.n_embd) if config.position_embedding else None
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = _layer_norm(config)
        self.lm_head = nn.Linear(config.n_embd, vocab_size, bias=config.bias)
        if config.init == "nanogpt":
            self.apply(_init_weights)
            for name, p in self.named_parameters():  # residual projections: the sum of 2 n_layer of them
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        B, T = idx.shape
        if T > self.context_length:
            raise ValueError(f"input of {T} tokens is longer than context_length {self.context_length}")
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe.weight[:T]  # (T, C): the rows of positions 0..T-1, broadcast over the batch
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(B * T, -1), targets.reshape(B * T))
        return logits, loss


def _layer_norm(config: ModelConfig) -> nn.Module:
    """``layer_norm: pre``: a LayerNorm (with a bias if ``bias``); ``none``: nothing at all."""
    return nn.LayerNorm(config.n_embd, bias=config.bias) if config.layer_norm == "pre" else nn.Identity()


def _init_weights(module: nn.Module) -> None:
    """nanoGPT's init: N(0, 0.02) for Linear and Embedding weights, zero biases (LayerNorms keep 1 and 0)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
