"""The tracking store at the bottom of the tracking layer: its URI, retried writes, experiments, source tags and
buffered metrics. Everything goes through ``MlflowClient`` with explicit run ids (no global active run), so the
same code serves the main process, worker processes and Ray tasks.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.entities import DatasetInput, Metric
from mlflow.tracking import MlflowClient

from harness.metrics import mlflow_key

PARENT_TAG = "mlflow.parentRunId"
METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call
FLUSH_SECONDS = 15.0
# MLflow 3 opens an experiment on its GenAI "Overview" unless the UI's workflow type is "machine
# learning". The UI of 3.17 takes that from ``?workflowType=`` or the browser's last choice; older 3.x
# UIs read this experiment tag. Both are set: the tag here, the URL by ``runs_url`` (``make ui``).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
SAMPLES_TABLE = "samples.json"
WRAP_COLUMNS = 100  # samples/*.txt: lines a browser shows without scrolling sideways


@contextmanager
def quiet_downloads():
    """No 'Downloading artifacts' progress bar per file: a report reads dozens of tiny files, a logged model
    copies its three files in."""
    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous


class TrackingError(Exception):
    """The tracking store cannot be used; raised before any training."""


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else a SQLite store ``mlflow.db`` in the current folder (the project root)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def is_tracking_server(uri: str) -> bool:
    """Whether ``uri`` names an MLflow tracking server (over HTTP) rather than a local store."""
    return uri.startswith(("http://", "https://"))


def check_tracking_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not after MLflow's minutes of retries, when a tracking server is down."""
    if not is_tracking_server(uri):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise TrackingError(
            f"MLflow tracking server {uri} is not reachable ({getattr(exc, 'reason', exc)}). "
            "Start it (make server) or unset MLFLOW_TRACKING_URI to use the local SQLite store."
        ) from exc


LOST_WRITE_RACES = ("locked",)
"""Store errors that mean "another writer was first": the same call, repeated, succeeds."""

DATASET_RACES = (
    "unique constraint failed: datasets",  # SQLite
    '"dataset_pk"',  # PostgreSQL, seen in CI: duplicate key value violates unique constraint "dataset_pk"
    "duplicate entry",  # MySQL and MariaDB word it "Duplicate entry '...' for key ..." (not run here)
)
"""MLflow registers a dataset by check-then-insert; two runs logging one new corpus at once make the second
insert fail, each database in its own words (matched lowercased; only ``log_inputs`` retries on them). Repeated,
the call finds the row the other run wrote and links to it."""


class InterruptsHeld:
    """Ctrl-C (SIGINT) and SIGTERM that arrive during a store call take effect when the call returns.

    A KeyboardInterrupt raised inside a SQLite write leaves the statement it interrupted open for as long as the
    exception lives, and SQLAlchemy's close of that connection then leaves it open too (sqlite3_close_v2 waits for
    open statements), holding the write lock. Every write that closes a run KILLED, this process's and any other's,
    then waits for it (MLflow's busy timeout is 20 s) and fails "database is locked": in CI a worker stopped by
    Ctrl-C inside a metrics flush printed MLflow's tracebacks of such failures. Signals are Python's to handle in
    the main thread only; elsewhere this does nothing. Held one attempt at a time: ``retrying`` delivers them
    between attempts. Not held where the store is a tracking server (``MLFLOW_TRACKING_URI=http...``): an
    interrupted request locks nothing, and a server that stopped answering must not make Ctrl-C wait out
    MLflow's retries of it."""

    _active = False  # in the main thread, a store call is under way (calls nest: the outermost one holds)

    def __enter__(self) -> InterruptsHeld:
        self.previous: dict[int, Any] = {}
        self.arrived: list[int] = []
        if InterruptsHeld._active or threading.current_thread() is not threading.main_thread():
            return self
        if is_tracking_server(os.environ.get("MLFLOW_TRACKING_URI", "")):
            return self
        previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
        if any(handler is None for handler in previous.values()):  # set outside Python: cannot be put back
            return self
        for signum in previous:
            signal.signal(signum, self._hold)
        self.previous, InterruptsHeld._active = previous, True
        return self

    def _hold(self, signum: int, frame) -> None:
        self.arrived.append(signum)

    def __exit__(self, *exc_info) -> None:
        if not self.previous:
            return
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        InterruptsHeld._active = False
        for signum in dict.fromkeys(self.arrived):  # each once, to the handler it came for
            signal.raise_signal(signum)


SERVER_WAIT_S = 300.0
"""How long a write waits for a tracking server that stopped answering (``HARNESS_SERVER_WAIT_S``): a restart or a
short network cut fits, and nothing is lost; past it the sweep gives up (``TrackingUnreachable``)."""

CLOSE_WAIT_S = 10.0
"""After Ctrl-C, SIGTERM or giving up, how long the writes that close runs may wait for the server (``closing``)."""

HTTP_TIMEOUT_S = "15"
"""MLflow's ``MLFLOW_HTTP_REQUEST_TIMEOUT`` unless set: a server that accepts connections but never answers (hung,
or cut off mid-request) is one in 15 s, not MLflow's 120 s."""

UNREACHABLE_SIGNS = (
    "max retries exceeded",
    "connection aborted",
    "connection broken",  # killed while it sent the answer: IncompleteRead
    "connection reset",
    "broken pipe",
    "connection refused",
    "remotedisconnected",
    "timed out",
    "timeout exception",
    "502 error responses",
    "503 error responses",
    "504 error responses",
)
"""Words in MLflow's "API request to URL failed with exception ..." that mean the server did not answer at all."""


class TrackingUnreachable(Exception):
    """The tracking server has not answered for ``server_wait_s()``: the sweep stops, saying what it could not
    record."""


def server_wait_s() -> float:
    return float(os.environ.get("HARNESS_SERVER_WAIT_S") or SERVER_WAIT_S)


def bound_http_waits() -> None:
    """Let ``retrying`` alone decide how long to wait for a tracking server: MLflow's own retries (7, with
    exponential backoff: minutes per call) and 120 s timeout would hide an outage inside every call. A user's
    ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``MLFLOW_HTTP_REQUEST_TIMEOUT`` still win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", HTTP_TIMEOUT_S)


def is_unreachable(exc: BaseException) -> bool:
    """The error says a tracking server did not answer (down, hung, restarting), not that it refused the call."""
    if isinstance(exc, TrackingUnreachable):  # a wait already given up on: not to be waited out again
        return False
    message = str(exc).lower()
    if type(exc).__name__ in ("ConnectionError", "Timeout", "ConnectTimeout", "ReadTimeout"):
        return True
    return "api request to" in message and any(sign in message for sign in UNREACHABLE_SIGNS)


class _Outage:
    """This process's view of the tracking server: answering, or silent since when. Shared by its threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.since: float | None = None  # monotonic time of the first unanswered call of this outage
        self.server = ""  # the base URL that did not answer, from MLflow's message
        self.gone = False  # waited past server_wait_s(): calls fail at once unless /health answers again
        self.cap: float | None = None  # closing(): no wait past this monotonic time

    def failed(self, exc: BaseException) -> None:
        with self.lock:
            if self.since is None:
                self.since = time.monotonic()
                match = re.search(r"(https?://[^/\s]+)", str(exc))
                self.server = match.group(1) if match else "the tracking server"
                print(
                    f"tracking server {self.server} is not answering ({time.strftime('%H:%M:%S')}): writes wait up "
                    f"to {server_wait_s():.0f} s for it (HARNESS_SERVER_WAIT_S); nothing is lost meanwhile",
                    file=sys.stderr,
                    flush=True,
                )

    def answered(self) -> None:
        if self.since is None:
            return
        with self.lock:
            if self.since is not None:
                print(
                    f"tracking server {self.server} answers again after {time.monotonic() - self.since:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
            self.since, self.gone = None, False

    def deadline(self, wait_s: float | None) -> float:
        """When the current call stops waiting."""
        start = self.since if self.since is not None else time.monotonic()
        limit = start + (server_wait_s() if wait_s is None else wait_s)
        return min(limit, self.cap) if self.cap is not None else limit

    def overdue(self) -> bool:
        """Silent for longer than ``server_wait_s()`` (a heartbeat noticed it; no write of this thread may have)."""
        since = self.since
        return since is not None and time.monotonic() - since > server_wait_s()

    def give_up(self, exc: BaseException) -> TrackingUnreachable:
        self.gone = True
        waited = time.monotonic() - (self.since or time.monotonic())
        return TrackingUnreachable(
            f"tracking server {self.server} has not answered for {waited:.0f} s "
            f"(HARNESS_SERVER_WAIT_S={server_wait_s():.0f}): {exc}"
        )

    def still_gone(self) -> bool:
        """After giving up: one quick look at /health, so that a dead server costs no wait per call."""
        if not self.gone:
            return False
        try:
            with urllib.request.urlopen(self.server + "/health", timeout=2) as response:
                response.read()
        except (urllib.error.URLError, OSError, ValueError):
            return True
        self.answered()
        return False


OUTAGE = _Outage()


def server_gone() -> bool:
    """This process gave up waiting for the tracking server (and it has not answered since)."""
    return OUTAGE.gone


class closing:  # noqa: N801 (used as a context manager, like contextlib's)
    """Writes that close runs after Ctrl-C, SIGTERM or an outage: they wait at most ``CLOSE_WAIT_S`` in all."""

    def __init__(self, wait_s: float = CLOSE_WAIT_S):
        self.wait_s = wait_s

    def __enter__(self) -> closing:
        self.previous = OUTAGE.cap
        cap = time.monotonic() + self.wait_s
        OUTAGE.cap = cap if self.previous is None else min(cap, self.previous)
        return self

    def __exit__(self, *exc_info) -> None:
        OUTAGE.cap = self.previous


def retrying(
    call: Callable[[], Any], attempts: int = 8, races: tuple[str, ...] = LOST_WRITE_RACES, wait_s: float | None = None
) -> Any:
    """Retry a store call that lost a race with another writer (by default, for SQLite's write lock), and one that a
    tracking server did not answer, for up to ``wait_s`` (default ``server_wait_s()``) from the start of the outage:
    past it, ``TrackingUnreachable``. Ctrl-C during an attempt takes effect when the attempt returns
    (``InterruptsHeld``); Ctrl-C during a wait at once."""
    attempt = pause = 0
    while True:
        if OUTAGE.still_gone() or (OUTAGE.cap is not None and time.monotonic() >= OUTAGE.cap and OUTAGE.since):
            raise TrackingUnreachable(f"tracking server {OUTAGE.server} is not answering; not recorded")
        try:
            with InterruptsHeld():
                result = call()
        except Exception as exc:  # MLflow wraps the sqlite error in its own exception types
            if is_unreachable(exc):
                OUTAGE.failed(exc)
                left = OUTAGE.deadline(wait_s) - time.monotonic()
                if left <= 0:  # a full wait, or a closing window, gives the server up (a heartbeat's look does not)
                    if wait_s is None and OUTAGE.cap is None:
                        raise OUTAGE.give_up(exc) from exc
                    OUTAGE.gone = OUTAGE.gone or wait_s is None  # later closing writes: one look at /health each
                    raise TrackingUnreachable(f"tracking server {OUTAGE.server} is not answering: {exc}") from exc
                pause = min(max(2 * pause, 0.5), 5.0, left)
                time.sleep(pause)
                continue
            message = str(exc).lower()
            if not any(race in message for race in races) or attempt == attempts - 1:
                raise
            time.sleep(0.05 * 2**attempt)
            attempt += 1
        else:
            OUTAGE.answered()
            return result


def store_template_dir() -> Path:
    """Where the empty, migrated SQLite store is kept (one per MLflow version)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nanoko-harness" / "mlflow"


def empty_store_template() -> Path:
    """The empty SQLite store MLflow migrated once, made on first use, one per MLflow version, in
    ``store_template_dir()``. It is written to a temporary file and renamed, so processes that race to make it
    never see half of one."""
    import mlflow
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    template = store_template_dir() / f"empty-{mlflow.__version__}.db"
    if not template.is_file():
        template.parent.mkdir(parents=True, exist_ok=True)
        scratch = template.with_name(f"{template.name}.{os.getpid()}.tmp")
        store = SqlAlchemyStore(f"sqlite:///{scratch}", str(template.parent / "unused-artifacts"))
        store.engine.dispose()
        os.replace(scratch, template)
    return template


def create_sqlite_store(database: Path) -> None:
    """A new SQLite store as a copy of an empty one that MLflow migrated once, instead of its ~60 alembic
    migrations on every new file (1.3-2.4 s on 2 cores; every test store and first sweep paid it).

    In the copy of ``empty_store_template()``, the Default experiment's artifact location is set to what MLflow
    itself would have written here (``./mlruns/0`` of this folder). The copy is hard-linked into place, so a file
    that another program created meanwhile is kept, not replaced.
    """
    from mlflow.utils.uri import append_to_uri_path, resolve_uri_if_local

    scratch = database.with_name(f"{database.name}.{os.getpid()}.tmp")
    shutil.copyfile(empty_store_template(), scratch)
    with sqlite3.connect(scratch) as db:
        db.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
            (append_to_uri_path(resolve_uri_if_local("./mlruns"), "0"),),
        )
    db.close()
    try:  # never over a file another program (``mlflow ui``, a notebook) created since the caller looked
        os.link(scratch, database)
    except FileExistsError:
        pass
    except OSError:  # a filesystem without hard links
        if not database.exists():
            os.replace(scratch, database)
    finally:
        scratch.unlink(missing_ok=True)


def schema_revision(database: Path) -> str | None:
    """The alembic revision a SQLite store's schema is at; None while it has none (or cannot be read yet)."""
    try:
        with contextlib.closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=5)) as db:
            row = db.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:  # no such table yet, or the file is locked by a migration
        return None
    return row[0] if row else None


def await_migration(database: Path, settle_s: float = 10.0) -> None:
    """Returns once the SQLite store ``database`` is at MLflow's current schema, or once its schema has stopped
    changing for ``settle_s`` seconds (an older store: MLflow then says how to upgrade it).

    Another program that opened the new file first (``mlflow ui``, a notebook's ``MlflowClient``)
    migrates it for about 1.5 s; MLflow opened meanwhile fails on a half-made schema ("no such column"), and a
    second migration fails the first.
    """
    head = schema_revision(empty_store_template())
    last, since = schema_revision(database), time.monotonic()
    while last != head:
        time.sleep(0.1)
        current = schema_revision(database)
        if current != last:
            last, since = current, time.monotonic()
        elif time.monotonic() - since > settle_s:
            return


def log_dataset_inputs(client: MlflowClient, run_id: str, inputs: list[DatasetInput]) -> None:
    """``client.log_inputs``, safe when several runs log the same new dataset at the same moment."""
    retrying(lambda: client.log_inputs(run_id, datasets=inputs), races=(*LOST_WRITE_RACES, *DATASET_RACES))


def default_artifact_location(uri: str, name: str) -> str | None:
    """Artifacts of a SQLite store live beside the database file, not wherever the command ran."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri[len("sqlite:///") :])
    return (database.parent / "mlartifacts" / name).resolve().as_uri()


def experiment_id_for(client: MlflowClient, name: str) -> str:
    """The experiment ``name`` (created, or restored if deleted), marked as model training."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # a store from before this tag
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return experiment.experiment_id
    try:
        return client.create_experiment(
            name,
            artifact_location=default_artifact_location(client.tracking_uri, name),
            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
        )
    except Exception:  # another process created it first
        return client.get_experiment_by_name(name).experiment_id


def runs_url(base_url: str, experiment_id: str) -> str:
    """The UI page of an experiment's runs table (not the GenAI overview MLflow 3 opens by default)."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit the code ran from, with ``-dirty`` when the tree had uncommitted changes."""
    here = Path(__file__).resolve().parents[1]  # the harness's own checkout, wherever the command runs from
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(maxsize=1)
def source_tags() -> dict[str, str]:
    """MLflow's own source tags, so the UI's Source column and run page show the code and its commit."""
    here = Path(__file__).resolve().parents[1]
    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": str(here)}
    commit = git_commit()
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
        try:
            remote = subprocess.run(
                ["git", "remote", "get-url", "origin"], cwd=here, capture_output=True, text=True, timeout=5
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            remote = ""
        if remote.startswith(("https://", "http://", "git@")):  # the UI links the commit there; a local path it cannot
            tags["mlflow.source.git.repoURL"] = remote
    try:
        tags["mlflow.user"] = getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        pass
    return tags


class BufferedMetrics:
    """Collects metric points and writes them with ``log_batch``: one store call per ~1000 points.

    ``auto_flush=False`` holds points until ``flush()`` (used with checkpoints, so that a resumed run
    never logs a step twice).
    """

    def __init__(self, client: MlflowClient, run_id: str, auto_flush: bool = True):
        self.client = client
        self.run_id = run_id
        self.auto_flush = auto_flush
        self.pending: list[Metric] = []
        self.last_flush = time.monotonic()
        self.logged = 0
        self.stored_through: dict[str, int] = {}  # key -> last step already in the store (set on resume)

    def log(self, key: str, value: float, step: int) -> None:
        """Log a trainer key (``train_loss``) under its MLflow name (``loss/train``)."""
        key = mlflow_key(key)
        if step <= self.stored_through.get(key, -1):
            return
        self.pending.append(Metric(key, float(value), int(time.time() * 1000), int(step)))
        if self.auto_flush and (
            len(self.pending) >= METRICS_PER_BATCH or time.monotonic() - self.last_flush > FLUSH_SECONDS
        ):
            self.flush()

    def log_dict(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.log(key, value, step)

    def flush(self) -> None:
        while self.pending:
            chunk = self.pending[:METRICS_PER_BATCH]
            retrying(lambda chunk=chunk: self.client.log_batch(self.run_id, metrics=chunk))
            self.logged += len(chunk)
            del self.pending[: len(chunk)]
        self.last_flush = time.monotonic()
