"""harness/models/attention.py: the short-context CPU attention against the lecture's own formula and SDPA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.models.attention import SHORT_CONTEXT, ShortCausalAttention, causal_attention


def lecture_attention(q, k, v, scale):
    """The lecture's Head (v2.py): wei = q k^T * scale, masked_fill(tril == 0, -inf), softmax, wei @ v."""
    T = q.shape[-2]
    tril = torch.tril(torch.ones(T, T, dtype=torch.bool))
    wei = (q @ k.transpose(-2, -1)) * scale
    wei = wei.masked_fill(~tril, float("-inf"))
    return F.softmax(wei, dim=-1) @ v


def _qkv(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=dtype, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize("shape", [(32, 4, 8, 8), (3, 2, 1, 4), (5, 16, 6), (2, 3, 16, 8)])
def test_values_and_gradients_are_the_lectures_in_float64(shape):
    q, k, v = _qkv(shape, torch.float64)
    grad = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    scale = 32**-0.5
    ours = causal_attention(q, k, v, scale=scale)
    theirs = lecture_attention(q, k, v, scale)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-13)
    for a, b in zip(
        torch.autograd.grad(ours, (q, k, v), grad), torch.autograd.grad(theirs, (q, k, v), grad), strict=True
    ):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_the_written_out_backward_passes_gradcheck():
    q, k, v = _qkv((2, 2, 5, 3), torch.float64, seed=2)
    assert torch.autograd.gradcheck(lambda q, k, v: ShortCausalAttention.apply(q, k, v, 0.7), (q, k, v))


def test_the_first_token_attends_only_to_itself_and_later_tokens_change_nothing_before_them():
    """Causality, by its meaning: position 0's output is v[0]; perturbing token 3 leaves positions 0-2 alone."""
    q, k, v = (t.detach() for t in _qkv((1, 1, 6, 4), torch.float64, seed=3))
    y = causal_attention(q, k, v)
    assert torch.equal(y[..., 0, :], v[..., 0, :])
    k2, v2 = k.clone(), v.clone()
    k2[..., 3, :] += 5.0
    v2[..., 3, :] -= 5.0
    y2 = causal_attention(q, k2, v2)
    assert torch.equal(y2[..., :3, :], y[..., :3, :]) and not torch.allclose(y2[..., 3:, :], y[..., 3:, :])


def test_float32_agrees_with_sdpa_and_scale_none_is_head_size():
    q, k, v = (t.detach() for t in _qkv((32, 4, 8, 8), torch.float32, seed=4))
    ours = causal_attention(q, k, v)  # scale None: 8**-0.5
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert (ours - sdpa).abs().max().item() < 1e-6
    assert (ours - lecture_attention(q, k, v, 8**-0.5)).abs().max().item() < 1e-6


def test_long_contexts_dropout_and_bf16_take_sdpa():
    """The written-out path is one autograd node; SDPA's is not: grad_fn names which one ran."""
    short = _qkv((2, 2, SHORT_CONTEXT, 4), torch.float32)
    long = _qkv((2, 2, SHORT_CONTEXT + 1, 4), torch.float32)
    assert type(causal_attention(*short).grad_fn).__name__ == "ShortCausalAttentionBackward"
    assert type(causal_attention(*long).grad_fn).__name__ != "ShortCausalAttentionBackward"
    assert type(causal_attention(*short, dropout_p=0.1).grad_fn).__name__ != "ShortCausalAttentionBackward"
    bf16 = _qkv((2, 2, SHORT_CONTEXT, 4), torch.bfloat16)  # what a Linear gives under bf16 autocast
    assert type(causal_attention(*bf16).grad_fn).__name__ != "ShortCausalAttentionBackward"
