"""``--executor slurm``: the sweep as one SLURM job array (submitit), a task per unit, all logging to one store.

Install with ``pip install 'nanoko-harness[slurm]'``; run the sweep where ``sbatch`` works (a login node).
Each task runs the same ``run_unit`` as every other executor, so claims, heartbeats and checkpoints behave the
same. The driver polls the tasks (``squeue``; no accounting database needed) and the runs' heartbeats:

- **Preemption and time limits.** SLURM's warning signal (``--signal=USR2@slurm_signal_delay_s``, or a
  preemption) stops the unit at its next evaluation, saves a checkpoint, closes the run KILLED ("preempted") and
  requeues the task (submitit's checkpointing). The requeued task claims the variant again, resumes that run from
  the checkpoint and ends where an uninterrupted run ends. Needs ``train.checkpoint_interval`` (a resume point)
  and a checkpoint store the nodes share: ``--checkpoint-store mlflow`` (or a shared ``--checkpoint-dir``).
- **A task that dies without a word** (kill -9, out of memory, a lost node): SLURM reports its end without a
  result, or its run's heartbeat goes stale while SLURM still lists it; either way its variant is FAILED with the
  reason within ``poll_s`` plus ``HARNESS_STALE_AFTER_S``, the sweep goes on, and a rerun trains it.
- **Ctrl-C or SIGTERM of the driver** cancels the array (``scancel``); running tasks close their runs KILLED
  (SLURM's SIGTERM), and what never started stays unrecorded.

The nodes must reach the tracking store: an MLflow server (``make server``, ``MLFLOW_TRACKING_URI=http://...``).
A SQLite file is refused unless ``--slurm-shared-store`` says it sits on a file system every node mounts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from harness.executors.base import ExecutorError, could_not_start, interrupted
from harness.spec.records import Variant
from harness.tracking.claims import (
    DRIVER_TAG,
    close_lost_run,
    close_run,
    describe_owner,
    heartbeat_interval_s,
    is_live,
    owner_gone,
    variant_runs,
)
from harness.tracking.recorded import VariantResult, run_unit
from harness.tracking.store import is_tracking_server, tracking_uri

ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
PREEMPTED_REASON = "preempted by SLURM: checkpointed and requeued"


@dataclass
class SlurmOptions:
    """The job array's request; ``None`` leaves SLURM's (or the partition's) default."""

    partition: str | None = None
    time_min: int = 60  # each task's time limit; the warning signal comes signal_delay_s before it
    gpus: int = 0  # per task
    cpus: int = 1  # per task (torch's threads)
    parallelism: int = 64  # tasks of the array running at once at most
    signal_delay_s: int = 90
    folder: Path = Path(".harness") / "slurm"  # submitit's pickles and the tasks' logs (a folder the nodes share)
    shared_store: bool = False  # a SQLite store on a file system every node mounts
    poll_s: float = 2.0
    cancel_grace_s: float = 60.0  # after scancel, how long tasks get to close their runs KILLED


class _Preemption:
    """Set by SLURM's warning signal in a task; the unit stops at its next evaluation (``should_stop``)."""

    reason = PREEMPTED_REASON

    def __init__(self):
        self.signalled = False

    def __call__(self) -> bool:
        return self.signalled


def _checkpointable():
    import submitit

    class UnitTask(submitit.helpers.Checkpointable):
        """A task of the array: ``run_unit`` in the driver's folder; requeued by SLURM's warning signal."""

        def __init__(self, train_kwargs: dict, cwd: str):
            self.train_kwargs, self.cwd = train_kwargs, cwd

        def __call__(self, unit: list[Variant]) -> list[VariantResult]:
            if os.path.isdir(self.cwd):
                os.chdir(self.cwd)
            preemption = _Preemption()
            requeue = signal.getsignal(signal.SIGUSR2)  # submitit's: checkpoint(), scontrol requeue, exit

            def warned(signum, frame):
                preemption.signalled = True

            def cancelled(signum, frame):  # scancel (the driver's Ctrl-C): close the runs KILLED
                raise KeyboardInterrupt

            signal.signal(signal.SIGUSR2, warned)
            signal.signal(signal.SIGTERM, cancelled)
            try:
                results = run_unit(unit, **self.train_kwargs, should_stop=preemption)
                _tag_where(self.train_kwargs["uri"], results)
                return results
            except KeyboardInterrupt:
                if preemption.signalled and callable(requeue):
                    requeue(signal.SIGUSR2, None)  # exits the task; SLURM starts it again
                return interrupted(unit)
            except Exception as exc:
                return could_not_start(unit, exc)

    return UnitTask


def _tag_where(uri: str, results: list[VariantResult]) -> None:
    """Which task and node trained each run, for post-mortems (``slurm_job_id`` is the array's ``JOB_TASK``)."""
    from harness.tracking.store import retrying

    env = os.environ
    task = f"{env.get('SLURM_ARRAY_JOB_ID', env.get('SLURM_JOB_ID', '?'))}_{env.get('SLURM_ARRAY_TASK_ID', '0')}"
    tags = {"executor": "slurm", "slurm_job_id": task, "slurm_node": env.get("SLURMD_NODENAME", "?")}
    client = MlflowClient(uri)
    for result in results:
        if result.run_id and result.status != "SKIPPED":
            for key, value in tags.items():
                try:
                    retrying(lambda key=key, value=value, run=result.run_id: client.set_tag(run, key, value))
                except Exception:  # a nice-to-have; the run itself is closed already
                    pass


def _squeue(array_id: str) -> dict[str, str]:
    """``{task id: state}`` of the array's tasks SLURM still knows (``123_4``: ``RUNNING``)."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-t", "all", "-j", array_id, "-o", "%i %T"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(line.split(maxsplit=1) for line in out.splitlines() if " " in line)


class SlurmExecutor:
    name = "slurm"

    def __init__(self, options: SlurmOptions | None = None):
        self.options = options or SlurmOptions()

    def prepare(self) -> None:
        """Fail before any run exists: no submitit, no SLURM, or a store the nodes cannot share."""
        try:
            import submitit  # noqa: F401
        except ImportError as exc:
            raise ExecutorError(
                f"--executor slurm needs submitit ({exc}); install it with: pip install 'nanoko-harness[slurm]'"
            ) from exc
        uri = tracking_uri()
        if not is_tracking_server(uri) and not self.options.shared_store:
            raise ExecutorError(
                f"--executor slurm: the tracking store {uri} is a local file the nodes cannot share. Start a "
                "server (make server DB=postgres; MLFLOW_TRACKING_URI=http://HOST:PORT), or pass "
                "--slurm-shared-store if that path is on a file system every node mounts"
            )
        try:
            ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            raise ExecutorError(f"--executor slurm: SLURM's commands do not run here ({exc})") from exc
        if ping.returncode != 0 or "UP" not in ping.stdout:
            raise ExecutorError(
                f"--executor slurm: no SLURM controller answers (scontrol ping: {(ping.stdout + ping.stderr).strip()})"
            )

    def _submitit_executor(self, name: str):
        import submitit

        opts = self.options
        executor = submitit.AutoExecutor(folder=str(Path(opts.folder).resolve() / "%j"), cluster="slurm")
        executor.update_parameters(
            name=name,
            timeout_min=opts.time_min,
            cpus_per_task=opts.cpus,
            slurm_array_parallelism=opts.parallelism,
            slurm_signal_delay_s=opts.signal_delay_s,
            **({"gpus_per_node": opts.gpus} if opts.gpus else {}),
            **({"slurm_partition": opts.partition} if opts.partition else {}),
        )
        return executor

    def run(self, units, train_kwargs: dict, on_result) -> None:
        """Submit the array, then report each unit as its task ends; Ctrl-C scancels the array."""
        if not units:
            return
        opts = self.options
        kwargs = dict(train_kwargs, show_progress=False, threads=opts.cpus)
        for key in ("data_dir", "checkpoint_dir"):
            if kwargs.get(key):
                kwargs[key] = Path(kwargs[key]).resolve()
        client = MlflowClient(train_kwargs["uri"])
        experiment_id, parent = train_kwargs["experiment_id"], train_kwargs["parent_run_id"]
        executor = self._submitit_executor(f"harness {units[0][0].id.split('=')[0]}")
        jobs = executor.map_array(_checkpointable()(kwargs, os.getcwd()), units)
        array_id = jobs[0].job_id.split("_")[0]
        logs = Path(opts.folder) / f"{array_id}_*"
        print(f"slurm: job array {array_id}, {len(jobs)} task(s); their logs: {logs}", file=sys.stderr, flush=True)
        pending = dict(zip((job.job_id for job in jobs), zip(jobs, units, strict=True), strict=True))
        ended_at: dict[str, float] = {}  # task id -> when SLURM first said it ended without a result

        def report(task_id: str, results: list[VariantResult]) -> None:
            _, unit = pending.pop(task_id)
            by_id = {variant.id: variant for variant in unit}
            for result in results:
                if not result.run_id and result.status in ("KILLED", "FAILED") and result.variant_id in by_id:
                    # stopped before its run was its own (SIGTERM during the claim): the run it opened is still open
                    variant, why = by_id[result.variant_id], result.error or result.status
                    run_id = close_lost_run(client, experiment_id, parent, variant, result.status, why)
                    result = VariantResult(result.variant_id, run_id, result.status, result.metrics, result.error)
                on_result(result)

        def lost(task_id: str, unit, status: str, reason: str) -> list[VariantResult]:
            results = []
            for variant in unit:
                run_id = close_lost_run(client, experiment_id, parent, variant, status, reason)
                results.append(VariantResult(variant.id, run_id, status, {}, reason))
            return results

        next_look = 0.0  # when to look at the running tasks' heartbeats again (a store query per unit)
        try:
            while pending:
                states = _squeue(array_id)
                look = time.monotonic() >= next_look
                if look:
                    next_look = time.monotonic() + max(opts.poll_s, heartbeat_interval_s())
                for task_id, (job, unit) in list(pending.items()):
                    if job.paths.result_pickle.exists():
                        try:
                            results = job.result()
                        except Exception as exc:  # the task raised outside run_unit (unpickling, import)
                            results = lost(task_id, unit, "FAILED", f"SLURM task {task_id} failed: {exc}"[:5000])
                        report(task_id, results)
                        continue
                    state = states.get(task_id, "").split()[0] if states.get(task_id) else "GONE"
                    if state in ENDED or state == "GONE":  # give the result file a moment to appear
                        first = ended_at.setdefault(task_id, time.monotonic())
                        if time.monotonic() - first > 3 * opts.poll_s:
                            reason = (
                                f"SLURM task {task_id} ended ({state.lower()}) without a result: killed, out of "
                                f"memory or its node lost; see {job.paths.stderr}"
                            )
                            report(task_id, lost(task_id, unit, "FAILED", reason))
                        continue
                    ended_at.pop(task_id, None)
                    if state == "RUNNING" and look:
                        stale = self._stale_run(client, experiment_id, parent, unit)
                        if stale:
                            reason = f"SLURM task {task_id} went silent: {stale}"
                            where = (client, experiment_id, parent)
                            report(task_id, self._end_silent(task_id, array_id, unit, reason, lost, *where))
                if pending:
                    time.sleep(opts.poll_s)
        except BaseException:  # Ctrl-C, SIGTERM, or the sweep stopping: cancel the array, let tasks close their runs
            subprocess.run(["scancel", array_id], capture_output=True, timeout=30)
            print(f"slurm: cancelled job array {array_id}", file=sys.stderr)
            deadline = time.monotonic() + opts.cancel_grace_s
            while pending and time.monotonic() < deadline:
                states = _squeue(array_id)
                for task_id, (job, unit) in list(pending.items()):
                    if job.paths.result_pickle.exists():
                        try:
                            report(task_id, job.result())
                        except Exception:
                            report(task_id, lost(task_id, unit, "KILLED", "interrupted (Ctrl-C)"))
                    elif states.get(task_id, "GONE").split()[0] in (*ENDED, "GONE"):
                        report(task_id, lost(task_id, unit, "KILLED", "interrupted (Ctrl-C)"))
                time.sleep(opts.poll_s / 2)
            for task_id, (_, unit) in list(pending.items()):
                pending.pop(task_id)
                for result in lost(task_id, unit, "KILLED", "interrupted (Ctrl-C)"):
                    if result.run_id:
                        on_result(result)
            raise

    def _end_silent(
        self, task_id: str, array_id: str, unit, reason: str, lost, client, experiment_id: str, parent: str
    ) -> list[VariantResult]:
        """Cancel a silent task and fail its variants, with the last word. scancel wakes a frozen task with SIGCONT
        and SIGTERM (seen on SLURM 22.05, even with --signal=KILL), and it may close its run KILLED meanwhile: the
        runs are closed FAILED once SLURM says the task ended (or after ``cancel_grace_s``, for a node that is gone)."""
        subprocess.run(["scancel", task_id], capture_output=True, timeout=30)
        deadline = time.monotonic() + self.options.cancel_grace_s
        while time.monotonic() < deadline:
            if _squeue(array_id).get(task_id, "GONE").split()[0] in (*ENDED, "GONE"):
                break
            time.sleep(self.options.poll_s / 2)
        results = lost(task_id, unit, "FAILED", reason)
        for result, variant in zip(results, unit, strict=True):
            if not result.run_id:  # the woken task closed it itself: find it among this sweep's runs
                runs = variant_runs(client, experiment_id, variant)
                mine = [r for r in runs if r.data.tags.get(DRIVER_TAG) == parent]
                if mine:
                    close_run(client, mine[-1].info.run_id, "FAILED", reason)
                    result.run_id = mine[-1].info.run_id
        return results

    @staticmethod
    def _stale_run(client, experiment_id: str, parent: str, unit) -> str | None:
        """Why a unit's task, still RUNNING for SLURM, is dead: a run of this sweep whose heartbeat stopped."""
        for variant in unit:
            for run in variant_runs(client, experiment_id, variant, "RUNNING"):
                if run.data.tags.get(DRIVER_TAG) == parent and not is_live(run):
                    if owner_gone(run):  # on this machine (a one-node cluster): its process has ended
                        return f"its process is gone ({describe_owner(run)})"
                    return f"no heartbeat from {describe_owner(run)}"
        return None
