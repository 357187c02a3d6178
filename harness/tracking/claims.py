"""Run bookkeeping in the tracking store: who trains which variant, and closing runs whose owner died.

Several sweeps (``harness run`` processes, Ray drivers) may share one spec and one store. Each variant
is trained exactly once through a *claim* kept in MLflow itself, so it works for SQLite and for a
tracking server alike:

- every run records its owner (``harness.owner`` = HOST:PID) and a heartbeat (``harness.heartbeat``,
  unix seconds), refreshed by a thread every ``HARNESS_HEARTBEAT_S`` seconds (default 30);
- a RUNNING run is *live* while its heartbeat is younger than ``HARNESS_STALE_AFTER_S`` (default four
  intervals), and *stale* after that, or at once when its owner ran on this machine and its process is gone;
- a live run is skipped ("running elsewhere"), never resumed; a stale one is taken over by the next
  claim of its variant: resumed from its checkpoint, or closed KILLED with the reason.

The claim itself (``claim_variant``) is race-free between processes that start at the same moment,
with nothing but create/read/tag calls: each contender creates its run first (``harness.claim`` =
pending), reads every live run of the variant, and drops out when another one already won or sorts
before it by (start_time, run_id); otherwise it marks itself ``won`` and reads once more, dropping out
if an earlier contender appeared meanwhile. Two contenders can never both pass: whichever wrote
``won`` first is seen by the other's first read, or the other is seen by its second read. Both may
drop out in a close race; the loop then tries again after a random pause.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from harness.tracking.store import await_migration, closing, create_sqlite_store, retrying

SWEEP_TAG = "harness.sweep"  # marks parent runs; their params record the overrides and seeds used
OWNER_TAG = "harness.owner"  # HOST:PID of the process that trains (or drives) the run now
OWNER_PROC_TAG = "harness.owner_proc"  # the owner's process table (boot id, pid namespace): is PID ours to check?
HEARTBEAT_TAG = "harness.heartbeat"  # unix seconds of the owner's last sign of life
CLAIM_TAG = "harness.claim"  # pending | won | lost
DRIVER_TAG = "harness.driver"  # the parent run of the sweep that trains the variant now
RESUMED_FROM_SWEEP_TAG = "harness.resumed_from_sweep"  # a resumed run's parent before this sweep took it over
NOTE_TAG = "mlflow.note.content"  # MLflow's description field: runs and experiments

CLAIM_ATTEMPTS = 5


def heartbeat_interval_s() -> float:
    """Seconds between heartbeats (``HARNESS_HEARTBEAT_S``; tests shorten it)."""
    return float(os.environ.get("HARNESS_HEARTBEAT_S") or 30.0)


def stale_after_s() -> float:
    """A RUNNING run whose heartbeat is older than this is stale (``HARNESS_STALE_AFTER_S``, default 4 beats)."""
    return float(os.environ.get("HARNESS_STALE_AFTER_S") or 4 * heartbeat_interval_s())


def open_store(uri: str) -> MlflowClient:
    """A client for ``uri``. A new SQLite file is created (its tables migrated) by one process at a time:
    two sweeps that open a fresh store together would otherwise both migrate it, and one fails. A store that
    another program is migrating (``mlflow ui`` started at the same moment) is waited for."""
    if not uri.startswith("sqlite:///"):
        return MlflowClient(uri)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here; a fresh store opened twice at once may fail
        return MlflowClient(uri)
    database = Path(uri[len("sqlite:///") :])
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + "-lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not database.exists():
                create_sqlite_store(database)
            await_migration(database)
            return MlflowClient(uri)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# -- owners --------------------------------------------------------------------------------------


def _process_table() -> str:
    """Identifies this machine's process table, so a PID is only checked where it means the same process."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:  # not Linux: staleness by heartbeat only
        return ""


def owner_tags() -> dict[str, str]:
    return {
        OWNER_TAG: f"{socket.gethostname()}:{os.getpid()}",
        OWNER_PROC_TAG: _process_table(),
        HEARTBEAT_TAG: f"{time.time():.3f}",
    }


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process, alive
        return False
    try:  # a killed child its parent has not reaped yet is a zombie: gone all the same
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def heartbeat_age_s(run, now: float | None = None) -> float:
    """Seconds since the run's last heartbeat (its start for runs recorded before heartbeats existed)."""
    now = time.time() if now is None else now
    try:
        last = float(run.data.tags[HEARTBEAT_TAG])
    except (KeyError, ValueError):
        last = run.info.start_time / 1000
    return max(0.0, now - last)


def owner_gone(run) -> bool:
    """The owner ran in this process table and its process no longer exists."""
    tags = run.data.tags
    table, owner = tags.get(OWNER_PROC_TAG), tags.get(OWNER_TAG, "")
    if not table or table != _process_table() or not owner.rpartition(":")[2].isdigit():
        return False
    pid = int(owner.rpartition(":")[2])
    return pid != os.getpid() and _pid_gone(pid)


def is_live(run, now: float | None = None) -> bool:
    """RUNNING, not a lost claim, and its owner showed signs of life recently."""
    return (
        run.info.status == "RUNNING"
        and run.data.tags.get(CLAIM_TAG) != "lost"
        and heartbeat_age_s(run, now) < stale_after_s()
        and not owner_gone(run)
    )


def describe_owner(run) -> str:
    """``host:pid, heartbeat 12 s ago (run 1a2b3c)`` for messages."""
    owner = run.data.tags.get(OWNER_TAG, "unknown owner")
    return f"{owner}, heartbeat {heartbeat_age_s(run):.0f} s ago (run {run.info.run_id})"


class Heartbeat:
    """Refreshes a run's heartbeat tag from a daemon thread until ``stop()``."""

    def __init__(self, client: MlflowClient, run_id: str, interval_s: float | None = None):
        self.client, self.run_id = client, run_id
        self.interval_s = heartbeat_interval_s() if interval_s is None else interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {run_id}", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                beat = f"{time.time():.3f}"
                retrying(lambda beat=beat: self.client.set_tag(self.run_id, HEARTBEAT_TAG, beat), wait_s=0)
            except Exception:  # a store hiccup; the next beat tries again, and staleness allows a few misses
                pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


# -- finding runs --------------------------------------------------------------------------------


def _search(client: MlflowClient, experiment_id: str, filter_string: str) -> list:
    found, token = [], None
    while True:
        page = retrying(
            lambda token=token: client.search_runs(
                [experiment_id], filter_string=filter_string, max_results=1000, page_token=token
            )
        )
        found += list(page)
        token = page.token
        if not token:
            return found


def variant_hashes(variant) -> list[str]:
    """The identity hash, and the hash the variant had under the previous scheme when it differs."""
    hashes = [variant.config.config_hash()]
    legacy = getattr(variant, "legacy_hash", None)  # harness/spec/identity.py (identity v2); absent before it
    return hashes + ([legacy] if legacy and legacy not in hashes else [])


def variant_runs(client: MlflowClient, experiment_id: str, variant, status: str | None = None) -> list:
    """Every run of the variant (by identity hash, old hash included), oldest first."""
    where = f" and attributes.status = '{status}'" if status else ""
    runs = [
        run
        for h in variant_hashes(variant)
        for run in _search(client, experiment_id, f"tags.config_hash = '{h}'{where}")
    ]
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def existing_runs(client: MlflowClient, experiment_id: str) -> dict[str, list]:
    """Variant runs already in the experiment, by config hash."""
    by_hash: dict[str, list] = {}
    for run in _search(client, experiment_id, "tags.config_hash != ''"):
        by_hash.setdefault(run.data.tags.get("config_hash"), []).append(run)
    return by_hash


def close_run(client: MlflowClient, run_id: str, status: str, reason: str) -> None:
    """Close a run with why; never raises (the store itself may be what failed), waits for a silent server at most
    ``store.CLOSE_WAIT_S``."""
    with closing():
        for action in (
            lambda: client.set_tag(run_id, "error", reason[:5000]),
            lambda: client.set_terminated(run_id, status=status),
        ):
            try:
                retrying(action)
            except Exception:
                pass


# -- claims --------------------------------------------------------------------------------------


@dataclass
class Claim:
    """The outcome of ``claim_variant``: a run to train in, or why not (``skip``)."""

    run_id: str
    skip: str | None = None  # "already FINISHED in run ...", "running elsewhere: host:pid, ..."
    saved: dict | None = None  # the checkpoint to resume from (run_id is then the resumed run)
    finished: bool = False  # skipped because a FINISHED run exists


def _contend(client: MlflowClient, experiment_id: str, variant, mine: str) -> tuple[bool, object | None]:
    """Run the two-read protocol for our run ``mine``; returns (won, the run we lost to or None)."""

    def rivals():
        runs = [r for r in variant_runs(client, experiment_id, variant, "RUNNING") if r.info.run_id != mine]
        return [r for r in runs if is_live(r)]

    me = retrying(lambda: client.get_run(mine))
    key = (me.info.start_time, mine)
    for round_ in ("first", "second"):
        for rival in rivals():
            state = rival.data.tags.get(CLAIM_TAG, "won")  # a live run from before claims holds its variant
            if state == "won" or (rival.info.start_time, rival.info.run_id) < key:
                return False, rival
        if round_ == "first":
            retrying(lambda: client.set_tag(mine, CLAIM_TAG, "won"))
    return True, None


def claim_variant(
    client: MlflowClient,
    experiment_id: str,
    variant,
    create_run: Callable[[], str],
    *,
    load_checkpoint: Callable[[str], dict | None] = lambda run_id: None,
    driver: str | None = None,
    finished_before_ms: int | None = None,
    log=print,
) -> Claim:
    """Claim ``variant`` for this process: a new run from ``create_run``, or a stale/KILLED run to resume.

    ``create_run()`` creates the run (with ``owner_tags()`` and ``harness.claim=pending``) and returns its
    id. ``load_checkpoint(run_id)`` returns that run's checkpoint or None. FINISHED runs count only when
    they started at or after ``finished_before_ms`` (``--force`` passes the sweep's start).
    """
    for attempt in range(CLAIM_ATTEMPTS):
        runs = variant_runs(client, experiment_id, variant)
        finished = [
            r
            for r in runs
            if r.info.status == "FINISHED" and (finished_before_ms is None or r.info.start_time >= finished_before_ms)
        ]
        if finished:
            return Claim(
                finished[0].info.run_id, skip=f"already FINISHED in run {finished[0].info.run_id}", finished=True
            )
        live = [r for r in runs if is_live(r) and r.data.tags.get(CLAIM_TAG, "won") == "won"]
        if live:
            return Claim(live[0].info.run_id, skip=f"running elsewhere: {describe_owner(live[0])}")
        mine = create_run()
        try:
            won, rival = _contend(client, experiment_id, variant, mine)
            if won:
                return _take_over(client, experiment_id, variant, mine, load_checkpoint, driver, log)
        except KeyboardInterrupt:  # between creating our run and holding the claim: it would stay RUNNING
            close_run(client, mine, "KILLED", "interrupted (Ctrl-C)")  # waits CLOSE_WAIT_S at most
            raise
        retrying(lambda mine=mine: client.set_tag(mine, CLAIM_TAG, "lost"))
        close_run(
            client, mine, "KILLED", f"lost the claim to run {rival.info.run_id} ({rival.data.tags.get(OWNER_TAG, '?')})"
        )
        time.sleep(random.uniform(0.05, 0.5) * (attempt + 1))  # then look again: the rival may have dropped out too
    return Claim("", skip=f"could not claim it in {CLAIM_ATTEMPTS} attempts (other sweeps kept racing for it)")


def _take_over(client, experiment_id, variant, mine, load_checkpoint, driver, log) -> Claim:
    """We hold the claim: resume the newest unfinished run that has a checkpoint, close stale ones KILLED."""
    me = owner_tags()[OWNER_TAG]
    unfinished = [
        r
        for r in variant_runs(client, experiment_id, variant)
        if r.info.run_id != mine
        and r.info.status in ("RUNNING", "KILLED")
        and not is_live(r)
        and r.data.tags.get(CLAIM_TAG) != "lost"
    ]
    unfinished.sort(key=lambda r: -r.info.start_time)
    resume = saved = None
    for run in unfinished:
        saved = load_checkpoint(run.info.run_id)
        if saved is not None:
            resume = run
            break
    for run in unfinished:
        if run is not resume and run.info.status == "RUNNING":
            reason = (
                f"stale claim: owner {describe_owner(run)}, "
                f"{'process gone' if owner_gone(run) else 'no heartbeat for too long'}; taken over by {me}"
            )
            log(f"{variant.id}: {reason}")
            close_run(client, run.info.run_id, "KILLED", reason)
    if resume is None:
        return Claim(mine)
    # Hand the claim over to the resumed run before giving up ours: at every moment one of them is live and won.
    run_id = resume.info.run_id
    tags = {**owner_tags(), CLAIM_TAG: "won", **({DRIVER_TAG: driver} if driver else {})}
    earlier_sweep = resume.data.tags.get(MLFLOW_PARENT_RUN_ID)
    if driver and earlier_sweep and earlier_sweep != driver:  # it ends in this sweep: the UI lists it there
        tags |= {MLFLOW_PARENT_RUN_ID: driver, RESUMED_FROM_SWEEP_TAG: earlier_sweep}
    retrying(lambda: client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()]))
    if "error" in resume.data.tags:  # why it stopped then ("interrupted (Ctrl-C)"); resumed_from_step says it did
        retrying(lambda: client.delete_tag(run_id, "error"))
    retrying(lambda: client.update_run(run_id, status="RUNNING"))
    if resume.info.status == "RUNNING":
        log(f"{variant.id}: stale claim of {describe_owner(resume)} taken over by {me}; resuming")
    retrying(lambda: client.delete_run(mine))  # it only held the claim
    return Claim(run_id, saved=saved)


# -- parents and lost runs -----------------------------------------------------------------------


def close_stale_parents(client: MlflowClient, experiment_id: str, log=print) -> list[str]:
    """Close KILLED the sweep runs whose driver died (kill -9, a lost machine): they would stay RUNNING forever."""
    closed = []
    for run in _search(client, experiment_id, f"tags.`{SWEEP_TAG}` = 'true' and attributes.status = 'RUNNING'"):
        if not is_live(run):
            why = "process gone" if owner_gone(run) else "no heartbeat for too long"
            reason = (
                f"sweep stopped without closing its run: {describe_owner(run)}, {why}; "
                f"closed by {owner_tags()[OWNER_TAG]}"
            )
            close_run(client, run.info.run_id, "KILLED", reason)
            log(f"closed stale sweep run {run.info.run_id}: {reason}")
            closed.append(run.info.run_id)
    return closed


def close_lost_run(
    client: MlflowClient, experiment_id: str, parent_run_id: str, variant, status: str, reason: str
) -> str:
    """Close the run of a worker that died without closing it (kill -9, out of memory); returns its id or ''."""
    try:
        lost = [
            r
            for r in variant_runs(client, experiment_id, variant, "RUNNING")
            if r.data.tags.get(DRIVER_TAG) == parent_run_id
        ]  # a run another sweep took over is not ours
        for run in lost:
            close_run(client, run.info.run_id, status, reason)
        return lost[-1].info.run_id if lost else ""
    except Exception:  # the store is failing too; the next claim of the variant closes it as stale
        return ""
