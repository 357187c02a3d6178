"""Causal self-attention's core, softmax(q k^T * scale + causal mask) v, picked for the device and the context.

``causal_attention(q, k, v, scale, dropout_p)`` takes (..., T, head_size) tensors and returns the same shape.
It is ``F.scaled_dot_product_attention(is_causal=True)`` everywhere except in one case: on a CPU, in float32
or float64, without dropout, for contexts of at most ``SHORT_CONTEXT`` tokens (the ladder's 8). There
``ShortCausalAttention`` computes it as three batched matmuls and a softmax written out, with its backward
written out too (one autograd node instead of SDPA's).

Why: at the ladder's size (4 heads of 8 over 8 tokens) SDPA's CPU kernel and ``torch.softmax`` over a last
dimension of 8 are bound by per-row overhead, not arithmetic, and a seed stack multiplies the rows. Measured on
one CPU thread (``benchmarks/seed_stacking.py --attention auto sdpa``, results/bench/seed_stacking_attention.csv),
the ladder's LayerNorm rung trains 12-13% more seed-steps/s in stacks of 4 to 16 seeds; a lone run is no faster
(results/bench/attention_bound.csv). At 32 and 64 tokens SDPA was the faster of the two (forward and backward
of one call), hence the bound of 16. The two agree to rounding, the same math in another order (float64: about
1e-15, ``tests/test_attention.py``). Which one ran is an execution detail, like the device: it is in no run's
identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SHORT_CONTEXT = 16  # the written-out path's longest context; from 32 tokens on SDPA was faster


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None, dropout_p: float = 0.0
) -> torch.Tensor:
    """softmax(q k^T * scale, causal) v over the last two dims; ``scale`` None is head_size**-0.5, as in SDPA."""
    if (
        q.device.type == "cpu"
        and dropout_p == 0.0
        and q.shape[-2] <= SHORT_CONTEXT
        and q.dtype in (torch.float32, torch.float64)  # bf16 autocast makes q bf16: SDPA
    ):
        return ShortCausalAttention.apply(q, k, v, q.shape[-1] ** -0.5 if scale is None else scale)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, scale=scale)


class ShortCausalAttention(torch.autograd.Function):
    """Forward: s = q k^T * scale + mask, p = softmax(s), y = p v. Backward, with g = dL/dy:
    dv = p^T g; dp = g v^T; ds = p * (dp - rowsum(dp * p)); dq = scale * ds k; dk = scale * ds^T q."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        shape = q.shape
        T, head_size = shape[-2], shape[-1]
        q3, k3, v3 = (t.reshape(-1, T, head_size) for t in (q, k, v))  # (N, T, hs): every batch and head
        mask = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu_(1)  # -inf above the diagonal
        scores = torch.baddbmm(mask, q3, k3.transpose(1, 2), alpha=scale)  # (N, T, T)
        scores = scores.sub_(scores.amax(-1, keepdim=True)).exp_()  # the diagonal is never masked: max is finite
        p = scores.div_(scores.sum(-1, keepdim=True))
        ctx.save_for_backward(q3, k3, v3, p)
        ctx.scale = scale
        return torch.bmm(p, v3).view(shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q3, k3, v3, p = ctx.saved_tensors
        g = grad.reshape(p.shape[0], p.shape[1], -1)
        dv = torch.bmm(p.transpose(1, 2), g)
        dp = torch.bmm(g, v3.transpose(1, 2))
        ds = dp.sub_((dp * p).sum(-1, keepdim=True)).mul_(p)
        dq = torch.bmm(ds, k3).mul_(ctx.scale)
        dk = torch.bmm(ds.transpose(1, 2), q3).mul_(ctx.scale)
        shape = grad.shape
        return dq.view(shape), dk.view(shape), dv.view(shape), None
