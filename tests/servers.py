"""Real daemons for the tests past one machine: a throwaway PostgreSQL cluster (scripts/postgres.sh) and an MLflow
tracking server on it or on SQLite, started with the command a user types (``make server``), stoppable and
restartable (the outage tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from subprocesses import free_port, kill_group

ROOT = Path(__file__).resolve().parents[1]
POSTGRES = ROOT / "scripts" / "postgres.sh"


def postgres_missing() -> str | None:
    """Why a PostgreSQL-backed server cannot run here, or None."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install -e '.[server]')"
    if not shutil.which("make"):
        return "no make"
    if not (shutil.which("pg_ctl") or list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))):
        return "PostgreSQL's server binaries are not installed (apt-get install postgresql)"
    return None


def healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(uri + "/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class TrackingServer:
    """``make server DB=...`` in ``folder`` on a free port; ``stop()`` and ``start()`` again keep its store."""

    def __init__(self, folder: Path, db: str = "postgres", port: int | None = None):
        self.folder, self.db = Path(folder), db
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.artifacts = self.folder / "mlartifacts"
        # PostgreSQL runs as the postgres user when the tests run as root: its folder must be one that user enters.
        self.pg_dir = Path(tempfile.mkdtemp(prefix="harness-pg-"))
        self.pg_dir.chmod(0o755)
        self.startup_s: list[float] = []

    def start(self, timeout_s: float = 240) -> TrackingServer:
        env = {**os.environ, "POSTGRES_FSYNC": "off", "VIRTUAL_ENV": sys.prefix}
        env.pop("CONDA_PREFIX", None)
        started = time.monotonic()
        with open(self.folder / "server.log", "a") as log:
            self.proc = subprocess.Popen(
                ["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "server", f"DB={self.db}",
                 f"PORT={self.port}", f"PG_DIR={self.pg_dir}", "SERVER_ARGS=--workers 2"],
                cwd=self.folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        while not healthy(self.uri):
            if self.proc.poll() is not None or time.monotonic() - started > timeout_s:
                log = (self.folder / "server.log").read_text()
                self.stop()
                pytest.fail(f"make server DB={self.db} did not start:\n{log[-3000:]}")
            time.sleep(0.2)
        self.startup_s.append(time.monotonic() - started)
        return self

    def stop(self) -> None:
        """Kill -9 the server and its workers (the group make started), as a crash would; the database stays."""
        if self.proc is None:
            return
        kill_group(self.proc.pid)
        self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        if (self.pg_dir / "data").exists():
            subprocess.run([str(POSTGRES), "stop", str(self.pg_dir)], check=False, timeout=60)
        shutil.rmtree(self.pg_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def team_server(tmp_path_factory):
    """One ``make server DB=postgres`` for the session (registered in conftest.py): the team's store of
    tests/test_team_server.py, tests/test_slurm.py and tests/test_ray_cluster.py, each in experiments of its own."""
    why = postgres_missing()
    if why:
        pytest.skip(why)
    server = TrackingServer(tmp_path_factory.mktemp("team-server"), db="postgres")
    try:
        yield server.start()
    finally:
        server.close()
