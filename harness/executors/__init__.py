"""Executors: where the variants of a sweep train. One small interface, one file per kind.

An executor gets the units to train (``sweep.plan_units``: a variant alone, or seeds that train as one
stacked model) and ``train_kwargs`` for ``run_unit`` (experiment, parent run, store, data, checkpoints), and
calls ``on_result(VariantResult)`` as each variant ends. ``run_unit`` claims each variant itself
(harness/tracking/claims.py), so two sweeps, or two executors, never train one twice;
an executor's own duties are only to run it somewhere, and to close the run of a worker that died
before reporting (``harness.tracking.claims.close_lost_run``). On Ctrl-C it closes what runs KILLED and re-raises
KeyboardInterrupt.

To add one (Kubernetes, ...), write ``harness/executors/<name>.py`` with a class that has:

- ``name``: the ``--executor`` choice;
- ``prepare()``: fail with ``ExecutorError`` before any run exists (missing package, unreachable cluster);
- ``run(units, train_kwargs, on_result)``: ``run_unit(unit, **train_kwargs)`` somewhere, for each unit.

and register it in ``EXECUTORS`` and ``make_executor`` below.
"""

from __future__ import annotations

from harness.executors.base import Executor, ExecutorError, could_not_start, interrupted

__all__ = ["EXECUTORS", "Executor", "ExecutorError", "could_not_start", "interrupted", "make_executor"]

EXECUTORS = ("local", "threads", "ray", "slurm")  # --executor choices; "local" with --jobs N > 1 means worker processes


def make_executor(kind: str = "local", *, jobs: int = 1, ray_address: str | None = None, slurm=None) -> Executor:
    """The executor for ``--executor KIND --jobs N`` (``slurm``: its ``SlurmOptions``)."""
    if kind == "slurm":
        from harness.executors.slurm import SlurmExecutor

        return SlurmExecutor(slurm)
    if kind == "ray":
        from harness.executors.ray import RayExecutor

        return RayExecutor(ray_address)
    if kind == "threads":
        from harness.executors.threads import ThreadExecutor

        return ThreadExecutor(jobs)
    if kind != "local":
        raise ExecutorError(f"--executor {kind!r}: choices are {', '.join(EXECUTORS)}")
    if jobs > 1:
        from harness.executors.processes import ProcessExecutor

        return ProcessExecutor(jobs)
    from harness.executors.local import InProcessExecutor

    return InProcessExecutor()
