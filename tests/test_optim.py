"""FusedAdamW: the same parameters and state as torch's fused AdamW, bit for bit, without importing torch._dynamo."""

from __future__ import annotations

import subprocess
import sys

import torch

from harness.train.optim import FusedAdamW


def _train(optimizer_class, steps: int = 7, **options) -> tuple[list[torch.Tensor], dict]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(11, 6), torch.nn.Linear(6, 11))
    optimizer = optimizer_class(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1, fused=True, **options)
    data = torch.randint(0, 11, (steps, 16), generator=torch.Generator().manual_seed(1))
    for i in range(steps):
        loss = torch.nn.functional.cross_entropy(model(data[i, :-1]), data[i, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i == 3:
            optimizer.param_groups[0]["lr"] = 1e-3  # a schedule changes lr between steps
    return [p.detach().clone() for p in model.parameters()], optimizer.state_dict()


def test_fused_adamw_equals_torch_adamw_bit_for_bit():
    ours, our_state = _train(FusedAdamW)
    theirs, their_state = _train(torch.optim.AdamW)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    for key in their_state["state"]:
        for name, value in their_state["state"][key].items():
            assert torch.equal(our_state["state"][key][name], value), (key, name)
    assert our_state["param_groups"] == their_state["param_groups"]


def test_a_state_dict_moves_between_the_two():
    _, state = _train(torch.optim.AdamW, steps=3)
    model = torch.nn.Linear(6, 11)
    ours = FusedAdamW(model.parameters(), lr=1e-3, fused=True)
    ours.load_state_dict({"state": {}, "param_groups": [{**state["param_groups"][0], "params": [0, 1]}]})
    assert ours.param_groups[0]["weight_decay"] == 0.1


def test_a_plain_step_does_not_import_the_compiler():
    code = (
        "import sys, torch\n"
        "from harness.train.optim import FusedAdamW\n"
        "m = torch.nn.Linear(4, 4); o = FusedAdamW(m.parameters(), lr=1e-3, fused=True)\n"
        "m(torch.ones(2, 4)).sum().backward(); o.step()\n"
        "print('torch._dynamo' in sys.modules)\n"
        "o2 = torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True)\n"
        "m(torch.ones(2, 4)).sum().backward(); o2.step()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"], "ours skips the import; torch's own step makes it (so the check can fail)"
