"""``--jobs N``: N units at a time (a variant, or seeds stacked as one model), each in a worker process of its own.

One new process per unit rather than a ProcessPoolExecutor: a worker that dies (out of memory, a crash in native
code) then takes down only its own unit, where a broken pool fails them all. Workers are forked from a forkserver
that has imported the harness once (spawned where there is none), so a short unit does not pay for the imports.
On a machine with one GPU the workers share it: each trains on ``train.device`` as it resolves there,
and the sweep hands out the costliest units first (``sweep.estimated_cost``).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time

from mlflow.tracking import MlflowClient

from harness.executors.base import could_not_start, interrupted
from harness.spec.records import Variant
from harness.tracking.claims import close_lost_run
from harness.tracking.recorded import VariantResult, run_unit


def _ignore_signal(signum, frame) -> None:
    """A worker closing its run KILLED lets no second Ctrl-C or SIGTERM cut that short (the sweep ends a stuck
    one with SIGKILL after its grace period)."""


def _worker_main(conn, alive, unit: list[Variant], kwargs: dict, environ: dict[str, str]) -> None:
    """A worker process: train one unit and send its VariantResults back through ``conn``.

    ``alive`` is a pipe the sweep never writes to: it reads as closed once the sweep is gone (kill -9), and the
    worker then stops as after Ctrl-C, closing its run KILLED. (A forkserver's worker cannot watch its parent
    process: that is the forkserver, which outlives the sweep while its workers run.) ``environ`` is the sweep's
    environment when it started this unit: a forkserver keeps the one it was started with, and a worker must see
    what the sweep sees now (its tracking URI, heartbeat, the variables set since).
    """
    os.environ.clear()
    os.environ.update(environ)

    def on_interrupt(signum, frame):  # Ctrl-C, or SIGTERM from a scheduler: close the run KILLED
        # A Python handler, not SIG_IGN or SIG_DFL: a signal that came with this one (a scheduler's SIGTERM to the
        # whole group and the sweep's own SIGINT) is handled after it, and CPython prints a traceback ("Signal 15
        # ignored due to race condition") for one whose handler has meanwhile become SIG_IGN or SIG_DFL.
        signal.signal(signal.SIGINT, _ignore_signal)
        signal.signal(signal.SIGTERM, _ignore_signal)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_interrupt)
    signal.signal(signal.SIGTERM, on_interrupt)
    trained = threading.Event()

    def watch_sweep():
        try:
            alive.recv()  # blocks until the sweep's end closes: the sweep is gone, or has this unit's result
        except (EOFError, OSError):
            pass
        if not trained.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch_sweep, daemon=True).start()
    try:
        result = run_unit(unit, **kwargs)
    except KeyboardInterrupt:
        result = interrupted(unit)
    except Exception as exc:
        result = could_not_start(unit, exc)
    trained.set()
    try:
        conn.send(result)
        conn.close()
    except OSError:  # the sweep is gone (kill -9); the run is closed all the same
        pass


# What every worker imports before it trains. A forkserver imports it once and each worker is forked from it with
# torch and MLflow loaded, where a spawned worker spent seconds importing them (results/bench/worker_start.csv).
# Importing starts no thread and touches no device, so a worker forked from it is as fresh as a spawned one.
PRELOAD = ["harness.tracking.recorded"]


def _worker_context():
    """Each worker a fresh process forked from a forkserver that has imported ``PRELOAD`` (spawn where there is no
    forkserver: Windows)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


class ProcessExecutor:
    name = "processes"

    def __init__(self, jobs: int, grace_s: float = 60.0):
        self.jobs = jobs
        self.grace_s = grace_s

    def prepare(self) -> None:
        pass

    def run(self, units, train_kwargs: dict, on_result) -> None:
        """Train ``jobs`` units at a time, calling ``on_result`` as each variant ends.

        On Ctrl-C the running workers close their runs KILLED (they get SIGINT too, or from here), nothing
        new starts, and KeyboardInterrupt is re-raised once they have stopped.
        """
        jobs = self.jobs
        context = _worker_context()
        queue = list(units)
        running: dict = {}  # receiving end of a worker's pipe -> (process, unit, progress bar row, alive pipe)
        client = MlflowClient(train_kwargs["uri"])
        experiment_id, parent_run_id = train_kwargs["experiment_id"], train_kwargs["parent_run_id"]
        threads = max(1, (os.cpu_count() or 1) // jobs)

        def collect(conn, interrupted: bool) -> None:
            process, unit, _, alive = running.pop(conn)
            try:
                results = conn.recv()
            except (EOFError, OSError):
                results = None
            conn.close()
            process.join()
            alive.close()
            if results is None:
                results = []
                for variant in unit:
                    if interrupted:  # stopped by Ctrl-C before it reported (or before it began)
                        run_id = close_lost_run(
                            client, experiment_id, parent_run_id, variant, "KILLED", "interrupted (Ctrl-C)"
                        )
                        if run_id:
                            results.append(VariantResult(variant.id, run_id, "KILLED", {}, "interrupted (Ctrl-C)"))
                    else:
                        reason = (
                            f"worker process died (exit code {process.exitcode}) before reporting: "
                            "killed by the OS (out of memory?) or a crash in native code"
                        )
                        run_id = close_lost_run(client, experiment_id, parent_run_id, variant, "FAILED", reason)
                        results.append(VariantResult(variant.id, run_id, "FAILED", {}, reason))
            for result in results:
                on_result(result)

        try:
            while queue or running:
                while queue and len(running) < jobs:
                    unit = queue.pop(0)
                    receive, send = context.Pipe(duplex=False)
                    watched, alive = context.Pipe(duplex=False)  # the worker's end closes only with this sweep
                    row = min(set(range(1, jobs + 1)) - {r[2] for r in running.values()})  # a free progress bar row
                    kwargs = dict(train_kwargs, threads=threads, progress_position=row)
                    process = context.Process(
                        target=_worker_main,
                        args=(send, watched, unit, kwargs, dict(os.environ)),
                        name=f"harness {unit[0].id}",
                    )
                    process.start()
                    send.close()  # only the worker's end stays open, so a dead worker reads as EOF
                    watched.close()
                    running[receive] = (process, unit, row, alive)
                for conn in multiprocessing.connection.wait(list(running)):
                    collect(conn, interrupted=False)
        except BaseException:  # Ctrl-C, or the sweep stopping (the tracking server is gone): stop the workers
            deadline = time.monotonic() + self.grace_s
            for process, *_ in running.values():
                if process.is_alive():  # Ctrl-C in a terminal reached them already; kill -INT of this process did not
                    try:
                        os.kill(process.pid, signal.SIGINT)
                    except OSError:
                        pass
            try:
                while running and time.monotonic() < deadline:
                    for conn in multiprocessing.connection.wait(
                        list(running), timeout=max(0.0, deadline - time.monotonic())
                    ):
                        collect(conn, interrupted=True)
            finally:  # past the grace period, or a second Ctrl-C: stop them now (they ignore SIGINT and SIGTERM now)
                for conn in list(running):
                    running[conn][0].kill()
                    collect(conn, interrupted=True)
            raise
