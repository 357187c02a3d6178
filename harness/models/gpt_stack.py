"""The GPT over a leading seed dimension: S seeds' weights, S batches, one set of kernels, no ``vmap``.

``stacked_losses(config, params, idx, targets)`` computes what ``GPTLanguageModel.forward`` computes for each
seed ``s`` with the weights ``{name: params[name][s]}`` on ``idx[s]``, as batched ops: every Linear one
``baddbmm`` over the seeds, attention one ``causal_attention`` call over seeds x batch (the lone model's
own, SDPA or its short-context form; it runs on a CPU and on CUDA alike, where ``vmap`` of attention failed),
the embeddings and LayerNorms per seed where a batched form would round differently from a lone run.
``params`` are ``torch.func.stack_module_state``'s: the model's own parameter names, each with a leading seed
dimension. Dropout is not stacked (its draws would differ from a lone run's): ``supports(config)`` says when
this path applies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.models.attention import causal_attention
from harness.models.config import ModelConfig


def supports(config: ModelConfig) -> bool:
    """Whether ``stacked_losses`` computes this GPT (no dropout: its draws are a lone run's own)."""
    return config.kind == "gpt" and config.dropout == 0.0


def _linear(x: torch.Tensor, params: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """(S, N, in) -> (S, N, out) with seed s's ``name.weight`` (and ``name.bias``)."""
    weight = params[f"{name}.weight"].transpose(1, 2)  # (S, in, out)
    bias = params.get(f"{name}.bias")
    if bias is None:
        return torch.bmm(x, weight)
    return torch.baddbmm(bias.unsqueeze(1), x, weight)


def _layer_norm(x: torch.Tensor, params: dict[str, torch.Tensor], name: str, config: ModelConfig) -> torch.Tensor:
    if config.layer_norm == "none":
        return x
    S = x.shape[0]
    weight, bias = params[f"{name}.weight"], params.get(f"{name}.bias")
    out = [F.layer_norm(x[s], x.shape[-1:], weight[s], None if bias is None else bias[s]) for s in range(S)]
    return torch.stack(out)


def _attention(x: torch.Tensor, params: dict[str, torch.Tensor], prefix: str, config: ModelConfig, B: int, T: int):
    S, _, C = x.shape
    q, k, v = _linear(x, params, f"{prefix}.c_attn").split(C, dim=2)  # (S, B*T, C) each
    q, k, v = (t.reshape(S * B, T, config.n_head, C // config.n_head).transpose(1, 2) for t in (q, k, v))
    scale = config.n_embd**-0.5 if config.attention_scale == "n_embd" else None
    y = causal_attention(q, k, v, scale=scale)  # (S*B, nh, T, hs)
    y = y.transpose(1, 2).reshape(S, B * T, C)
    return _linear(y, params, f"{prefix}.c_proj") if config.residual else y


def _mlp(x: torch.Tensor, params: dict[str, torch.Tensor], prefix: str, config: ModelConfig) -> torch.Tensor:
    x = F.relu(_linear(x, params, f"{prefix}.c_fc"))
    return _linear(x, params, f"{prefix}.c_proj") if config.residual else x


def stacked_losses(
    config: ModelConfig, params: dict[str, torch.Tensor], idx: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Each seed's mean next-token loss (S,) on its (B, T) windows ``idx[s]`` -> ``targets[s]``."""
    S, B, T = idx.shape
    wte = params["wte.weight"]
    x = torch.stack([F.embedding(idx[s], wte[s]) for s in range(S)])  # (S, B, T, C), as a lone run's lookup
    if config.position_embedding:
        x = x + params["wpe.weight"][:, None, :T]
    x = x.reshape(S, B * T, -1)
    for i in range(config.n_layer):
        prefix = f"blocks.{i}"
        if config.attention:
            y = _attention(_layer_norm(x, params, f"{prefix}.ln_1", config), params, f"{prefix}.attn", config, B, T)
            x = x + y if config.residual else y
        if config.feed_forward:
            y = _mlp(_layer_norm(x, params, f"{prefix}.ln_2", config), params, f"{prefix}.mlp", config)
            x = x + y if config.residual else y
    logits = _linear(_layer_norm(x, params, "ln_f", config), params, "lm_head")  # (S, B*T, V)
    return torch.stack([F.cross_entropy(logits[s], targets[s].reshape(-1)) for s in range(S)])
