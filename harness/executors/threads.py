"""``--executor threads --jobs N``: N units at a time in this process, each worker thread on its own CUDA stream.

Why threads on a GPU: worker processes each hold their own CUDA context, and a GPU runs one context at a time,
so ``--jobs`` processes take turns on it. Threads of one process share a context: on separate streams the small
kernels of N units run side by side, and the card is busy instead of waiting on one tiny step after another.
On a CPU the threads share its cores (torch ops release the GIL while they compute).

What keeps the numbers those of a run alone:

- model initialisation draws from torch's global generator, so a unit is seeded and built while no other is
  (``tracking.SEEDED_BUILD``); after that a bigram, FFN or dropout-free GPT step draws nothing from it;
- a model that draws random numbers while it trains (``model.dropout`` > 0) would share that generator with
  every unit being seeded: such units train after the others, one at a time;
- each running unit has a CUDA stream no other unit uses (``WorkerStreams``), and its graph is captured on it;
  captures take turns (``graphs.CAPTURE_LOCK``), each in ``thread_local`` mode.

Ctrl-C: no new unit starts, running units stop at their next evaluation and close KILLED, then
KeyboardInterrupt is re-raised. A second Ctrl-C leaves at once; runs not yet closed are then stale, and the
next sweep closes or resumes them (harness/tracking/claims.py).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque

import torch

from harness.executors.base import ExecutorError, could_not_start, interrupted
from harness.tracking.recorded import VariantResult, run_unit
from harness.train.device import pick_device

MAX_JOBS = 32  # torch.cuda.Stream() draws from 32 streams per device


def draws_random_while_training(unit) -> bool:
    """Whether a unit's training steps draw from torch's global generator (dropout)."""
    return any(variant.config.model.dropout > 0 for variant in unit)


class WorkerStreams:
    """A CUDA stream for each unit running at once, each a different CUDA stream: one thread's kernels never land
    on another's stream (nor in a graph it is capturing there).

    ``torch.cuda.Stream()`` hands out streams round-robin from a pool of 32 per device, so two of them may be one
    CUDA stream; the streams here are checked to differ. At most ``count`` units hold one at a time.
    """

    def __init__(self, count: int):
        self.count = count
        self.free: dict[torch.device, queue.SimpleQueue] = {}
        self.lock = threading.Lock()

    def _streams_for(self, device: torch.device) -> queue.SimpleQueue:
        with self.lock:
            if device not in self.free:
                made: dict[int, torch.cuda.Stream] = {}
                for _ in range(4 * self.count + 64):  # the pool is round-robin: 32 more draws reach every stream
                    stream = torch.cuda.Stream(device)
                    made.setdefault(stream.cuda_stream, stream)
                    if len(made) == self.count:
                        break
                else:
                    raise RuntimeError(
                        f"--jobs {self.count}: PyTorch has only {len(made)} distinct streams on {device}"
                    )
                self.free[device] = queue.SimpleQueue()
                for stream in made.values():
                    self.free[device].put(stream)
            return self.free[device]

    @contextlib.contextmanager
    def held(self, device: torch.device):
        """One of ``device``'s streams, no other holder's, until the block ends."""
        free = self._streams_for(device)
        stream = free.get()
        try:
            yield stream
        finally:
            free.put(stream)

    @contextlib.contextmanager
    def use(self, unit):
        """The unit's device's current stream, while it trains: one of these (CUDA), else nothing changes."""
        device = pick_device(unit[0].config.train.device)
        if device.type != "cuda":
            yield
            return
        with self.held(device) as stream, torch.cuda.stream(stream):
            yield


def train_unit(unit, kwargs: dict, streams: WorkerStreams) -> list[VariantResult]:
    """``run_unit`` on a stream of its own, with a failure to even start reported as FAILED results (as the other
    executors do)."""
    try:
        with streams.use(unit):
            return run_unit(unit, **kwargs)
    except KeyboardInterrupt:
        return interrupted(unit)
    except Exception as exc:
        return could_not_start(unit, exc)


class ThreadExecutor:
    name = "threads"

    def __init__(self, jobs: int):
        self.jobs = max(1, jobs)

    def prepare(self) -> None:
        if self.jobs > MAX_JOBS:
            raise ExecutorError(
                f"--executor threads --jobs {self.jobs}: at most {MAX_JOBS} (PyTorch keeps {MAX_JOBS} "
                "streams per device, and each running unit needs one of its own)"
            )

    def run(self, units, train_kwargs: dict, on_result) -> None:
        """Train ``jobs`` units at a time; ``on_result`` is called from this thread as each variant ends."""
        stop = threading.Event()
        shared = deque(unit for unit in units if not draws_random_while_training(unit))
        alone = [unit for unit in units if draws_random_while_training(unit)]
        finished: queue.Queue = queue.Queue()
        kwargs = dict(train_kwargs, should_stop=stop.is_set)
        streams = WorkerStreams(self.jobs)

        def worker(row: int) -> None:
            while not stop.is_set():
                try:
                    unit = shared.popleft()
                except IndexError:
                    break
                finished.put(train_unit(unit, dict(kwargs, progress_position=row), streams))
            finished.put(None)  # this worker is done

        workers = [
            threading.Thread(target=worker, args=(row,), name=f"harness worker {row}", daemon=True)
            for row in range(1, min(self.jobs, len(shared)) + 1)
        ]
        live = len(workers)

        def report_until_workers_end() -> None:
            nonlocal live
            while live:
                results = finished.get()
                if results is None:  # a worker found nothing left to train
                    live -= 1
                    continue
                for result in results:
                    on_result(result)

        try:
            for thread in workers:
                thread.start()
            report_until_workers_end()
            for unit in alone:
                for result in train_unit(unit, dict(kwargs, progress_position=1), streams):
                    on_result(result)
        except KeyboardInterrupt:
            stop.set()  # running units stop at their next evaluation (``should_stop``) and close KILLED
            report_until_workers_end()
            raise
