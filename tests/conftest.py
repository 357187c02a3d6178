"""Shared fixtures: real data, a throwaway MLflow store, and a spec shrunk to a few steps."""

from __future__ import annotations

import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # one core per worker (make test): torch's intra-op threads would contend
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # read when torch is first imported, just below; children inherit it

import pytest  # noqa: E402
from servers import team_server  # noqa: E402, F401 (a session fixture: one PostgreSQL-backed server for all tests)

from harness.data.corpora import CATALOG, DataError, locate_catalog_file, resolve_data_dir  # noqa: E402
from harness.spec.expansion import expand  # noqa: E402
from harness.spec.parsing import load_spec  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = PROJECT_ROOT / "experiments"
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"

# Few steps on the CPU: enough to see a loss move, fast enough for every variant of a grid.
SHRINK = {"train.steps": 40, "train.eval_interval": 10, "train.device": "cpu", "sample.max_new_tokens": 20}


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``HARNESS_DATA_DIR``, else ``../shared/data`` beside the project, else the download cache.

    Without a folder the corpora are downloaded once into the cache; offline, every test that needs them ends
    with the harness's own message (where to put the files), not a traceback of the failed connection.
    """
    if os.environ.get("HARNESS_DATA_DIR"):
        return resolve_data_dir()
    if SHARED_DATA.is_dir():
        return SHARED_DATA
    try:
        folders = {locate_catalog_file(name, None).parent for name in CATALOG}
    except DataError as exc:
        problem = str(exc)
    else:
        (folder,) = folders  # the cache holds them all
        return folder
    pytest.fail(f"these tests read the real corpora. {problem}", pytrace=False)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """A real SQLite MLflow store under tmp_path; the test runs from tmp_path."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


@pytest.fixture
def shrink():
    """``shrink(spec_path, **more)`` -> the spec's variants at a few CPU steps."""

    def _shrink(spec_path, **more):
        overrides = {**SHRINK, **{k.replace("__", "."): v for k, v in more.items()}}
        return expand(load_spec(spec_path), overrides)

    return _shrink


def shrink_args(**more) -> list[str]:
    """The SHRINK overrides as command-line ``key=value`` words."""
    values = {**SHRINK, **more}
    return [f"{k}={v}" for k, v in values.items()]
