"""A new SQLite store is a copy of an empty one MLflow migrated once: the same schema, the same Default experiment."""

from __future__ import annotations

import sqlite3

from mlflow.tracking import MlflowClient

from harness.tracking.claims import open_store
from harness.tracking.store import store_template_dir


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
