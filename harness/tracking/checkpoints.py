"""Where a run's checkpoint lives: a local folder (default) or the run's own MLflow artifacts.

``--checkpoint-store local`` keeps ``<checkpoint-dir>/<config hash>.pt`` on the machine that trained, so
a resume finds it only there (or on a shared file system). ``--checkpoint-store mlflow`` logs it as the
run's artifact ``checkpoint/state.pt``: any machine that reaches the tracking store (a Ray node, another
host) can resume the run. Either way a checkpoint belongs to one run (it records its ``run_id``) and is
loaded with ``weights_only=True``: tensors and plain containers, never arbitrary pickled objects.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from harness.tracking.store import retrying
from harness.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

STORES = ("local", "mlflow")
ARTIFACT_DIR = "checkpoint"
ARTIFACT_NAME = "state.pt"


class LocalCheckpoints:
    """``<directory>/<config hash>.pt``, written atomically."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def path(self, variant) -> Path:
        return self.directory / f"{variant.config.config_hash()}.pt"

    def save(self, run_id: str, variant, state: dict) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        save_checkpoint(self.path(variant), {**state, "run_id": run_id})

    def load(self, run_id: str, variant) -> dict | None:
        """The checkpoint saved by run ``run_id``, or None (none, unreadable, or another run's)."""
        path = self.path(variant)
        if not path.exists():
            return None
        try:
            saved = load_checkpoint(path)  # weights_only: nothing in the file is executed
        except CheckpointError:
            return None
        return saved if isinstance(saved, dict) and saved.get("run_id") == run_id else None

    def discard(self, run_id: str, variant) -> None:
        self.path(variant).unlink(missing_ok=True)


class MlflowCheckpoints:
    """The run's artifact ``checkpoint/state.pt``, in whatever artifact store the tracking store uses."""

    def __init__(self, client: MlflowClient):
        self.client = client

    def save(self, run_id: str, variant, state: dict) -> None:
        with tempfile.TemporaryDirectory(prefix="harness-ckpt-") as folder:
            path = Path(folder) / ARTIFACT_NAME
            save_checkpoint(path, {**state, "run_id": run_id})
            retrying(lambda: self.client.log_artifact(run_id, str(path), ARTIFACT_DIR))

    def load(self, run_id: str, variant) -> dict | None:
        try:
            if not any(f.path.endswith(ARTIFACT_NAME) for f in self.client.list_artifacts(run_id, ARTIFACT_DIR)):
                return None
            with tempfile.TemporaryDirectory(prefix="harness-ckpt-") as folder:
                path = self.client.download_artifacts(run_id, f"{ARTIFACT_DIR}/{ARTIFACT_NAME}", folder)
                saved = load_checkpoint(path)
        except Exception:  # unreadable (a copy cut short by a kill): start afresh rather than resume garbage
            return None
        return saved if isinstance(saved, dict) and saved.get("run_id") == run_id else None

    def discard(self, run_id: str, variant) -> None:
        """Delete it once the run finished; a store that cannot delete artifacts just keeps it."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        try:
            artifact_uri = retrying(lambda: self.client.get_run(run_id)).info.artifact_uri
            get_artifact_repository(artifact_uri).delete_artifacts(ARTIFACT_DIR)
        except Exception:
            pass


def checkpoint_store(kind: str, client: MlflowClient, directory: Path | None):
    """The store for ``--checkpoint-store``; None when checkpoints are off (no local folder given)."""
    if kind == "mlflow":
        return MlflowCheckpoints(client)
    if kind == "local":
        return LocalCheckpoints(directory) if directory else None
    raise ValueError(f"--checkpoint-store {kind!r}: choices are {', '.join(STORES)}")
