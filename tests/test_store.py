"""A new SQLite store is a copy of an empty one MLflow migrated once: the same schema, the same Default experiment.
A store another program is migrating is waited for, never replaced. Ctrl-C during a store write leaves the store
unlocked."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from harness.tracking.claims import open_store
from harness.tracking.store import (
    await_migration,
    create_sqlite_store,
    empty_store_template,
    retrying,
    schema_revision,
    store_template_dir,
)


def schema(database) -> tuple[dict, list]:
    """Each table's columns and indexes (not the CREATE text: MLflow's batch migrations may order a table's
    constraints differently from one run to the next), and the alembic revision."""
    with sqlite3.connect(database) as db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        described = {
            table: (
                list(db.execute(f"PRAGMA table_info('{table}')")),
                sorted(row[1] for row in db.execute(f"PRAGMA index_list('{table}')")),
            )
            for table in tables
        }
        return described, list(db.execute("SELECT version_num FROM alembic_version"))


def test_a_new_store_from_the_template_is_the_store_mlflow_migrates(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    migrated = tmp_path / "migrated.db"
    MlflowClient(f"sqlite:///{migrated}").search_experiments()  # MLflow's own migrations, from scratch
    copied = tmp_path / "copied.db"
    client = open_store(f"sqlite:///{copied}")
    assert any(store_template_dir().glob("empty-*.db")), "the template is kept for the next store"
    assert schema(copied) == schema(migrated)
    [default] = client.search_experiments()
    [mlflows_default] = MlflowClient(f"sqlite:///{migrated}").search_experiments()
    assert (default.name, default.artifact_location) == (mlflows_default.name, mlflows_default.artifact_location)
    experiment = client.create_experiment("works")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "loss", 1.0)
    assert client.get_run(run.info.run_id).data.metrics == {"loss": 1.0}


def test_an_existing_store_is_opened_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = open_store(uri).create_experiment("kept")
    assert open_store(uri).get_experiment(first).name == "kept"


def test_a_store_mlflow_is_still_migrating_is_waited_for_and_both_programs_work(tmp_path, monkeypatch):
    """``mlflow ui`` (or ``make ui``, or a notebook) started with a first sweep: MLflow's own migrations of the new
    file run for about 1.5 s, and a sweep that opened it meanwhile failed on the half-made schema ("no such column:
    spans.dimension_attributes") or made the other program's migration fail. Seen in CI as a sweep that exited 1
    before training while a test polled the same new store."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    head = schema_revision(empty_store_template())
    database = tmp_path / "mlflow.db"
    uri = f"sqlite:///{database}"
    other = subprocess.Popen(
        [sys.executable, "-c", f"from mlflow import MlflowClient; MlflowClient({uri!r}).search_experiments()"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        while not database.exists():  # SQLite makes the file as MLflow's first migration begins
            assert other.poll() is None, other.stdout.read()
            time.sleep(0.002)
        met = schema_revision(database)
        client = open_store(uri)
        experiment = client.create_experiment("after-the-migration")
        run_id = client.create_run(experiment).info.run_id
        client.log_metric(run_id, "loss", 1.0)
        assert client.get_run(run_id).data.metrics == {"loss": 1.0}
        out, _ = other.communicate(timeout=120)
    finally:
        other.kill()
        other.wait()
    assert met != head, "the test did not meet the migration under way"
    assert other.returncode == 0, out
    assert schema_revision(database) == head


def test_a_file_another_program_made_meanwhile_is_kept_not_replaced(tmp_path, monkeypatch):
    """Between open_store's look and its copy of the template, another program may create the file."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    database = tmp_path / "mlflow.db"
    with sqlite3.connect(database) as theirs:
        theirs.execute("CREATE TABLE theirs (x)")
    theirs.close()
    create_sqlite_store(database)
    with sqlite3.connect(database) as db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    db.close()
    assert tables == ["theirs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "mlflow.db"], "no scratch copy is left behind"


def test_an_older_store_that_no_one_migrates_is_left_to_mlflow_after_a_bounded_wait(tmp_path, monkeypatch):
    """A store from an older MLflow stays at its revision: the wait ends once it has not changed for settle_s, and
    MLflow's own message (how to upgrade it) follows."""
    from alembic.script import ScriptDirectory
    from mlflow.exceptions import MlflowException
    from mlflow.store.db.utils import _get_alembic_config

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    database = tmp_path / "mlflow.db"
    uri = f"sqlite:///{database}"
    create_sqlite_store(database)
    head = schema_revision(database)
    older = ScriptDirectory.from_config(_get_alembic_config(uri)).get_revision(head).down_revision
    with sqlite3.connect(database) as db:
        db.execute("UPDATE alembic_version SET version_num = ?", (older,))
    db.close()
    started = time.monotonic()
    await_migration(database, settle_s=0.5)
    waited = time.monotonic() - started
    assert 0.5 <= waited < 10, waited
    assert schema_revision(database) == older
    with pytest.raises(MlflowException, match="out-of-date database schema"):
        MlflowClient(uri).search_experiments()


def _ctrl_c_inside(statement_start: str):
    """A listener that presses Ctrl-C once, inside the store's write transaction, just after a statement that
    begins with ``statement_start`` ran: where the CI worker's interrupt landed (MLflow's log_batch selects the
    latest metrics after inserting the points)."""
    pressed = []

    def listener(conn, cursor, statement, parameters, context, executemany):
        if not pressed and statement.lstrip().startswith(statement_start):
            pressed.append(statement)
            signal.raise_signal(signal.SIGINT)  # the KeyboardInterrupt comes up through SQLAlchemy from here

    return listener, pressed


def test_ctrl_c_during_a_store_write_takes_effect_after_it_and_leaves_the_store_unlocked(tmp_path, monkeypatch):
    """In CI a worker stopped inside a metrics flush kept SQLite's write lock while its KeyboardInterrupt lived,
    and the writes closing the runs KILLED failed "database is locked" after MLflow's 20 s busy timeout."""
    assert threading.current_thread() is threading.main_thread(), "signals are handled in the main thread only"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    database = tmp_path / "mlflow.db"
    client = open_store(f"sqlite:///{database}")
    experiment = client.create_experiment("ctrl-c", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    client.log_batch(run_id, metrics=[Metric("train_loss", 4.2, 0, 0)])
    listener, pressed = _ctrl_c_inside("SELECT latest_metrics")
    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "after_cursor_execute", listener)
    try:
        with pytest.raises(KeyboardInterrupt) as interrupted:  # kept alive, as run_variant's handler keeps it
            retrying(lambda: client.log_batch(run_id, metrics=[Metric("train_loss", 3.9, 0, 1)]))
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "after_cursor_execute", listener)
    assert pressed and interrupted.value is not None
    other_writer = sqlite3.connect(database, timeout=1.0)  # another process closing its run, say
    other_writer.execute("UPDATE experiments SET name = 'renamed' WHERE name = 'ctrl-c'")
    other_writer.commit()
    other_writer.close()
    client.set_terminated(run_id, status="KILLED")  # this process's own close
    assert [m.value for m in client.get_metric_history(run_id, "train_loss")] == [4.2, 3.9], "the write completed"
    assert client.get_run(run_id).info.status == "KILLED"


def test_ctrl_c_during_a_call_to_a_tracking_server_is_not_held(monkeypatch):
    """A server that stopped answering must not make Ctrl-C wait out MLflow's retries of the request."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    reached = []

    def a_request_under_way():
        signal.raise_signal(signal.SIGINT)
        reached.append("after the interrupt")  # a held Ctrl-C would let the call go on to here

    with pytest.raises(KeyboardInterrupt):
        retrying(a_request_under_way)
    assert reached == []


def test_a_server_cut_off_mid_answer_is_an_outage_and_a_refused_call_is_not():
    """MLflow's wording of a server killed mid-response (seen in CI: IncompleteRead) is waited out, like a
    refused connection; an HTTP error the server did send (a 404) is not."""
    from mlflow.exceptions import MlflowException

    from harness.tracking.store import is_unreachable

    url = "http://127.0.0.1:5000/api/2.0/mlflow/runs/get"
    cut = f"API request to {url} failed with exception ('Connection broken: IncompleteRead(0 bytes read, 2292 more expected)', IncompleteRead(0 bytes read, 2292 more expected))"  # noqa: E501
    refused = f"API request to {url} failed with exception HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded with url: /api/2.0/mlflow/runs/get (Caused by NewConnectionError('Failed to establish a new connection: [Errno 111] Connection refused'))"  # noqa: E501
    answered = "API request to endpoint /api/2.0/mlflow/runs/get failed with error code 404 != 200. Response body: ''"
    assert is_unreachable(MlflowException(cut)) and is_unreachable(MlflowException(refused))
    assert not is_unreachable(MlflowException(answered))


# What a SLURM task got back from the PostgreSQL-backed server in CI when another task logged the same new corpus
# a moment before it (abridged: the SQL statement and its parameters followed).
POSTGRES_DATASET_RACE = (
    "BAD_REQUEST: (psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint "
    '"dataset_pk"\nDETAIL:  Key (experiment_id, name, digest)=(1, tinyshakespeare/train, '
    "86c4e6aa9db7c042ec79f339dcb96d42b007) already exists.\n\n[SQL: INSERT INTO datasets (dataset_uuid, ...)]"
)


@pytest.mark.parametrize(
    "message",
    [POSTGRES_DATASET_RACE, "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, ..."],
    ids=["postgres", "sqlite"],
)
def test_a_lost_race_to_register_a_corpus_is_repeated_in_each_databases_words(message):
    from mlflow.exceptions import RestException

    from harness.tracking.store import log_dataset_inputs

    class FirstInsertLoses:
        calls = 0

        def log_inputs(self, run_id, datasets):
            self.calls += 1
            if self.calls == 1:
                raise RestException({"error_code": "BAD_REQUEST", "message": message})

    client = FirstInsertLoses()
    log_dataset_inputs(client, "run", [])
    assert client.calls == 2


def test_another_integrity_error_while_logging_a_corpus_is_not_repeated():
    from mlflow.exceptions import RestException

    from harness.tracking.store import log_dataset_inputs

    class Refuses:
        calls = 0

        def log_inputs(self, run_id, datasets):
            self.calls += 1
            raise RestException({"error_code": "BAD_REQUEST", "message": 'violates foreign key constraint "fk_run"'})

    client = Refuses()
    with pytest.raises(RestException, match="foreign key"):
        log_dataset_inputs(client, "run", [])
    assert client.calls == 1
