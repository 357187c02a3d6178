"""The optimiser: PyTorch's fused AdamW, stepped without importing ``torch._dynamo`` on the plain path.

``torch.optim.AdamW`` imports ``torch._dynamo`` when it is built and first stepped: ``add_param_group``,
``zero_grad``, ``state_dict`` and ``load_state_dict`` are wrapped in ``torch._disable_dynamo``, which imports the
compiler on the first call, and so are ``step`` (``_use_grad_for_differentiable``) and the functional ``adam``.
That is about 2 s of every process's start on a 2-core CPU, for a compiler a plain run never uses (torch.compile
still works: a compiled model's optimiser is not compiled here). ``FusedAdamW`` is ``torch.optim.AdamW`` (same
state, ``state_dict``, hyper-parameters and kernel) that calls those four methods unwrapped (``__wrapped__``, the
function ``_disable_dynamo`` wraps) and, in the plain case (fused, not capturable, not differentiable, no grad
scaler), the same fused kernel directly; anything else goes to AdamW's own step. tests/test_optim.py checks that
both give the same parameters and state bit for bit, and that the compiler stays unimported.
"""

from __future__ import annotations

import torch
from torch.optim import adam as torch_adam


def _unwrapped(name: str):
    """``torch.optim.Optimizer.<name>`` without its ``_disable_dynamo`` wrapper (itself if it has none)."""
    method = getattr(torch.optim.Optimizer, name)
    return getattr(method, "__wrapped__", method)


class FusedAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW(..., fused=True)`` that leaves ``torch._dynamo`` unimported on the plain path."""

    _direct = hasattr(torch_adam, "_fused_adam") and hasattr(torch.optim.Adam, "_init_group")
    _add_param_group = staticmethod(_unwrapped("add_param_group"))
    _zero_grad = staticmethod(_unwrapped("zero_grad"))
    _state_dict = staticmethod(_unwrapped("state_dict"))
    _load_state_dict = staticmethod(_unwrapped("load_state_dict"))

    def add_param_group(self, param_group) -> None:
        self._add_param_group(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._zero_grad(self, set_to_none)

    def state_dict(self):
        return self._state_dict(self)

    def load_state_dict(self, state_dict) -> None:
        self._load_state_dict(self, state_dict)

    def _plain(self) -> bool:
        return (
            self._direct
            and getattr(self, "grad_scale", None) is None
            and getattr(self, "found_inf", None) is None
            and all(g["fused"] and not g["capturable"] and not g["differentiable"] for g in self.param_groups)
        )

    def step(self, closure=None):
        if closure is not None or not self._plain():
            return super().step(closure)
        with torch.no_grad():
            for group in self.param_groups:
                params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = [], [], [], [], [], []
                has_complex = self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps)
                beta1, beta2 = group["betas"]
                torch_adam._fused_adam(
                    params,
                    grads,
                    exp_avgs,
                    exp_avg_sqs,
                    max_exp_avg_sqs,
                    steps,
                    None,
                    None,
                    amsgrad=group["amsgrad"],
                    has_complex=has_complex,
                    beta1=beta1,
                    beta2=beta2,
                    lr=group["lr"],
                    weight_decay=group["weight_decay"],
                    eps=group["eps"],
                    maximize=group["maximize"],
                    capturable=False,
                    differentiable=False,
                    decoupled_weight_decay=group["decoupled_weight_decay"],
                )
        return None
