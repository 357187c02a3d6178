"""Whole-step CUDA graphs (``train.cuda_graphs``): one launch per training step instead of one per op.

A step of these small models is some 35-85 ATen ops (bigram, FFN; a 3-layer GPT ~350), each a kernel launch that
costs more than the kernel runs;
a CUDA graph captures one step's kernels once and replays them with one launch. A replay runs the captured
kernels on the captured memory with the captured arguments, so everything that changes from step to step lives
in a static tensor that the caller refreshes before each replay (the window starts, the learning rate) or reads
after it (the loss). Nothing in a step may read a value back to the host (the sync-free step guarantees it).

``CapturedStep`` runs the step eagerly for its first ``WARMUP_STEPS`` calls (CUDA wants lazy initialisation,
the AdamW state included, done outside a capture), captures it on the next call, and replays it from then on. If
the capture fails, it says why once and the run goes on eagerly: same math, only slower.

The capture backend is pluggable: ``CudaGraphs`` on a GPU; tests/test_graphs.py replays recorded ATen ops with
the same static-memory rules on a CPU, so the trainer's use of a graph is tested where there is no GPU.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable
from typing import Protocol

import torch

WARMUP_STEPS = 3  # eager steps before the capture (cuBLAS handles, AdamW state, autograd's lazy setup), as
# torch.cuda.make_graphed_callables warms up


CAPTURE_LOCK = threading.Lock()


class GraphBackend(Protocol):
    def eager(self, body: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run ``body`` once, as a warmup step."""

    def capture(self, body: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        """Capture ``body`` without running it; return (replay, the static tensor its result lands in)."""


class CudaGraphs:
    """``torch.cuda.CUDAGraph``, warmed up and captured off the default stream, as PyTorch's whole-network capture
    recipe asks: on the caller's own stream (a worker of ``--executor threads``), or, from the default stream, on
    one side stream kept for the purpose.

    Never on a fresh ``torch.cuda.Stream()``: those come round-robin from a pool of 32 per device, so under
    ``--executor threads`` a fresh one can be a stream another thread is training or capturing on, and one thread's
    kernels then land in the other's graph. On an H200, stacked seeds in 8 threads did exactly that: captures
    failed with "capturing stream has unjoined work" and an index_add went out of range.
    """

    def eager(self, body):
        with off_default_stream():
            return body()

    def capture(self, body):
        graph = torch.cuda.CUDAGraph()
        # One capture at a time in a process, each checked only against its own thread's calls: other threads
        # (--executor threads) may go on training on their own streams meanwhile.
        with (
            CAPTURE_LOCK,
            off_default_stream() as stream,
            torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"),
        ):
            out = body()
        return graph.replay, out


_SIDE_STREAMS: dict[int, torch.cuda.Stream] = {}
_SIDE_LOCK = threading.Lock()


@contextlib.contextmanager
def off_default_stream():
    """The current CUDA stream if it is not the device's default stream (which cannot be captured), else the
    device's side stream, ordered after and before the default stream's work."""
    current = torch.cuda.current_stream()
    if current != torch.cuda.default_stream(current.device):
        yield current
        return
    with _SIDE_LOCK:
        if current.device.index not in _SIDE_STREAMS:
            _SIDE_STREAMS[current.device.index] = torch.cuda.Stream(current.device)
        side = _SIDE_STREAMS[current.device.index]
    side.wait_stream(current)
    try:
        with torch.cuda.stream(side):
            yield side
    finally:
        current.wait_stream(side)


class CapturedStep:
    """``body`` (one training step reading only static tensors; returns its loss) run eagerly, then replayed.

    ``params``' gradients are set to None before every eager run and before the capture, so that the captured
    backward writes fresh gradient buffers instead of adding into old ones; after the capture they are the
    graph's and stay put.
    """

    def __init__(
        self,
        body: Callable[[], torch.Tensor],
        params: list[torch.Tensor],
        backend: GraphBackend,
        warmup: int = WARMUP_STEPS,
    ):
        self.body = body
        self.params = params
        self.backend = backend
        self.warmup = warmup
        self.calls = 0
        self.replay: Callable[[], None] | None = None
        self.out: torch.Tensor | None = None
        self.failure: str | None = None  # why the capture failed, if it did: the run goes on eagerly

    @property
    def captured(self) -> bool:
        return self.replay is not None

    def __call__(self) -> torch.Tensor:
        """One step; the returned loss tensor is overwritten by the next step (copy it to keep it)."""
        self.calls += 1
        if self.replay is None:
            self._clear_grads()
            if self.failure is not None:
                return self.body()
            if self.calls <= self.warmup:
                return self.backend.eager(self.body)
            try:
                self.replay, self.out = self.backend.capture(self.body)
            except Exception as exc:  # noqa: BLE001 - any model the graph cannot hold still trains, eagerly
                self.failure = f"{type(exc).__name__}: {exc}".splitlines()[0]
                warnings.warn(f"CUDA graph capture failed, training eagerly instead: {self.failure}", stacklevel=2)
                self._clear_grads()
                return self.body()
        self.replay()
        return self.out

    def _clear_grads(self) -> None:
        for p in self.params:
            p.grad = None


def graph_status(stepper) -> str | None:
    """How a run's steps ran, for its ``cuda_graphs`` tag: "replayed", or "eager: why"; None where graphs were off.
    ``stepper`` is what ran them: a Trainer or a StackedTrainer (each has ``captured``)."""
    captured = getattr(stepper, "captured", None)
    if captured is None:
        return None
    if captured.failure is not None:
        return f"eager: capture failed: {captured.failure}"[:5000]
    return "replayed" if captured.captured else "eager: the run ended before the capture"


# The warmup steps run a capturable AdamW outside a capture by design, and a failed capture says so itself;
# torch's advice to drop capturable=True is for optimizers that are never captured.
warnings.filterwarnings(
    "ignore", message=r".*capturable=True.*running without CUDA graph capture", category=UserWarning
)
