"""The batch draws: each step's window starts, drawn as the lecture's ``get_batch`` draws them, on every device."""

from __future__ import annotations

import torch

from harness.train.checkpoint import CheckpointError

DRAW_BLOCK_STEPS = 256  # steps of window starts drawn, and copied to the device, at once


class WindowDraws:
    """Each step's window starts as the lecture's ``get_batch`` draws them: ``torch.randint`` on a CPU
    generator seeded with ``train.seed``, on every device.

    Why the CPU: a CUDA generator (Philox) draws other numbers than a CPU one (Mersenne Twister) from the same
    seed, and ``train.device`` is not part of a run's identity, so a run must train on the same batches
    wherever it runs; its checkpoint then resumes on any device too. Starts are drawn DRAW_BLOCK_STEPS steps at
    a time (one ``randint`` of (k, B) draws what k draws of (B,) draw, tests/test_train.py) and copied to the
    device once per block, without waiting, so a step never waits for the host.
    """

    def __init__(self, n_windows: int, batch_size: int, seed: int, device: torch.device):
        self.n_windows = n_windows
        self.batch_size = batch_size
        self.device = device
        self.generator = torch.Generator().manual_seed(seed)
        self.drawn_to = 0  # the step whose starts the generator draws next
        self._resume_point = (0, self.generator.get_state())  # (step, generator state) of the last draw, or the start
        self._block: torch.Tensor | None = None
        self._block_start = 0

    def __call__(self, step: int) -> torch.Tensor:
        """The (batch_size,) window starts of step ``step`` (0-based), on the device."""
        offset = step - self._block_start
        if self._block is None or not 0 <= offset < len(self._block):
            self._draw_from(step)
            offset = 0
        return self._block[offset]

    def _draw_from(self, step: int) -> None:
        if step < self.drawn_to:
            raise ValueError(
                f"window starts of step {step} were drawn already (the generator is at step "
                f"{self.drawn_to}); draws only go forward"
            )
        self._resume_point = (self.drawn_to, self.generator.get_state())
        drawn = torch.randint(
            self.n_windows, (step - self.drawn_to + DRAW_BLOCK_STEPS, self.batch_size), generator=self.generator
        )
        self.drawn_to += len(drawn)
        block = drawn[len(drawn) - DRAW_BLOCK_STEPS :]  # the rows before ``step`` belong to steps already trained
        if self.device.type == "cuda":  # pinned: the copy runs behind the queued steps instead of waiting for them
            block = block.pin_memory().to(self.device, non_blocking=True)
        else:
            block = block.to(self.device)
        self._block, self._block_start = block, step

    def state_dict(self) -> dict:
        """A step at or before the current one and the generator's state there (a resume redraws from it)."""
        step, state = self._resume_point
        return {"generator": state, "generator_step": step}

    def load_state_dict(self, saved: dict) -> None:
        """``generator_step`` is absent from checkpoints older than block draws: their state is at ``step``."""
        state = saved["generator"]
        if state.numel() != self.generator.get_state().numel():
            raise CheckpointError(
                f"checkpoint: its batch generator state is not a CPU generator's ({state.numel()} bytes); it was "
                "written on a GPU by a harness that drew batches there, and cannot resume the same batches; "
                "delete it to train the variant from the start"
            )
        self.generator.set_state(state)
        self.drawn_to = int(saved.get("generator_step", saved["step"]))
        self._resume_point = (self.drawn_to, state)
        self._block = None
