"""``--executor ray``: every variant as one Ray task, all of them logging to one MLflow store.

Install with ``pip install 'nanoko-harness[ray]'``. Without ``--ray-address`` a local Ray instance is
started for the sweep and shut down after it; with one, the tasks go to that cluster. A task asks for a
GPU (``num_gpus=1``) when its variant trains on CUDA, else one CPU.

On a cluster of several machines the tracking URI must be a server every node reaches
(``MLFLOW_TRACKING_URI=http://...``, see ``make server``): a SQLite file only works when all tasks run on
this machine. Checkpoints (``train.checkpoint_interval``) are files in ``--checkpoint-dir`` on the node
that trained, so a resume finds them only on the same machine (or a shared file system), unless
``--checkpoint-store mlflow`` keeps them in the run's artifacts, which every node reaches.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from harness.executors.base import ExecutorError
from harness.spec.records import Variant
from harness.tracking.recorded import VariantResult
from harness.tracking.store import is_tracking_server

CANCEL_GRACE_S = 60.0  # how long cancelled tasks get to close their runs KILLED before Ray shuts down
_connected_here = False  # connect() started or joined Ray, so run_on_ray shuts it down when done


def connect(ray_address: str | None = None) -> None:
    """Start a local Ray instance (no address) or join a cluster, unless this process already did."""
    global _connected_here
    if not ray_address and "ray" not in sys.modules:
        # Read by Ray at import: on Linux it would bind a local instance to the machine's network address
        # (resolving even _node_ip_address="127.0.0.1" back to it); a one-machine sweep needs loopback only.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError as exc:
        raise ExecutorError(
            f"--executor ray needs Ray ({exc}); install it with: pip install 'nanoko-harness[ray]'"
        ) from exc
    if ray.is_initialized():
        return
    if ray_address:
        _check_reachable(ray_address)
    try:
        if ray_address:
            ray.init(address=ray_address, include_dashboard=False)
        else:  # a local instance for this sweep: keep all of its traffic on loopback
            ray.init(include_dashboard=False, _node_ip_address="127.0.0.1")
    except Exception as exc:  # Ray raises plain Exception/ConnectionError for a dead address or a slow start
        where = f"connect to the Ray cluster at {ray_address}" if ray_address else "start a local Ray instance"
        raise ExecutorError(f"--executor ray: could not {where}: {exc}") from exc
    _connected_here = True


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds where ray.init would retry a dead HOST:PORT for many minutes."""
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        return  # 'auto', 'local': Ray resolves those itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ExecutorError(
            f"--ray-address {address}: nothing answers there ({exc}). Start the cluster "
            "(ray start --head) or leave --ray-address out to start a local Ray instance."
        ) from exc


def absolute_uri(uri: str) -> str:
    """A relative ``sqlite:///mlflow.db`` would open another file from a worker's own folder."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def wants_gpu(device: str, cluster_gpus: float) -> bool:
    """``cuda``/``cuda:N`` always; ``auto`` when the cluster has GPUs (Ray then picks one per task)."""
    return device.startswith("cuda") or (device == "auto" and cluster_gpus > 0)


def _train(variant: Variant, kwargs: dict, cwd: str) -> VariantResult:
    """The Ray task. Runs in the driver's folder where it exists, so relative paths mean the same."""
    if os.path.isdir(cwd):
        os.chdir(cwd)
    import ray
    from mlflow.tracking import MlflowClient

    from harness.tracking.recorded import run_variant
    from harness.tracking.store import retrying

    result = run_variant(variant, show_progress=False, **kwargs)
    if result.run_id and result.status != "SKIPPED":  # which machine trained it, for post-mortems
        node = {
            "executor": "ray",
            "ray_node_ip": ray.util.get_node_ip_address(),
            "ray_node_id": ray.get_runtime_context().get_node_id(),
        }
        client = MlflowClient(kwargs["uri"])
        for key, value in node.items():
            try:
                retrying(lambda key=key, value=value: client.set_tag(result.run_id, key, value))
            except Exception:  # a nice-to-have; the run itself is closed already
                pass
    return result


class RayExecutor:
    name = "ray"

    def __init__(self, ray_address: str | None = None):
        self.ray_address = ray_address

    def prepare(self) -> None:
        connect(self.ray_address)

    def run(self, units, train_kwargs: dict, on_result) -> None:
        """One task per variant, seeds of a stack included: Ray places each where it has room."""
        variants = [variant for unit in units for variant in unit]
        for result in run_on_ray(variants, ray_address=self.ray_address, **train_kwargs):
            on_result(result)


def run_on_ray(
    todo: list[Variant],
    *,
    ray_address: str | None = None,
    experiment_id: str,
    parent_run_id: str | None,
    data_dir: Path | None,
    uri: str,
    checkpoint_dir: Path | None,
    show_progress: bool = True,
    **more,
) -> Iterator[VariantResult]:
    """Submit every variant as a task and yield each VariantResult as it ends.

    Ctrl-C (or the caller stopping) cancels the tasks: Ray raises KeyboardInterrupt inside each running
    one, whose run then closes KILLED, as in a local sweep.
    """
    global _connected_here
    if not todo:
        return
    connect(ray_address)
    import ray

    uri = absolute_uri(uri)
    if ray_address and not is_tracking_server(uri):
        print(
            f"warning: tracking URI {uri} is a local store; Ray workers on other machines cannot write to it "
            "(use an MLflow server: make server, MLFLOW_TRACKING_URI=http://HOST:PORT)",
            file=sys.stderr,
        )
    kwargs = dict(
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        data_dir=Path(data_dir).resolve() if data_dir else None,
        uri=uri,
        checkpoint_dir=Path(checkpoint_dir).resolve() if checkpoint_dir else None,
        **more,  # checkpoint_store, finished_before_ms
    )
    local = ray_address is None and _connected_here  # a local instance started for this sweep
    pending: dict = {}  # ObjectRef -> variant
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        task = ray.remote(_train)
        for variant in todo:
            # A local instance without GPUs cannot grow one: asking would leave the task waiting forever;
            # without the request it fails at once, FAILED with "CUDA is not available", like a local run.
            gpu = wants_gpu(variant.config.train.device, gpus) and (gpus > 0 or not local)
            ref = task.options(
                num_gpus=1 if gpu else 0, num_cpus=1, max_retries=0, name=f"harness {variant.id}"
            ).remote(variant, kwargs, os.getcwd())
            pending[ref] = variant
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                variant = pending.pop(ref)
                yield _result(ray, ref, variant, kwargs)
    except BaseException:  # Ctrl-C, an error, or the caller stopped listening (GeneratorExit)
        for ref in pending:
            ray.cancel(ref)
        if pending:
            ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_GRACE_S)
            for ref, variant in pending.items():
                _result(ray, ref, variant, kwargs, interrupted=True)  # closes what a task left open
        raise
    finally:
        if _connected_here:
            ray.shutdown()
            _connected_here = False


def _result(ray, ref, variant: Variant, kwargs: dict, interrupted: bool = False) -> VariantResult:
    """The task's VariantResult; a task that was cancelled or whose worker died still gets a closed run."""
    try:
        return ray.get(ref, timeout=0 if interrupted else None)
    except Exception as exc:
        from mlflow.tracking import MlflowClient

        from harness.tracking.claims import close_lost_run

        cancelled = interrupted or isinstance(exc, ray.exceptions.TaskCancelledError)
        status = "KILLED" if cancelled else "FAILED"
        reason = "interrupted (Ctrl-C)" if cancelled else f"Ray task failed: {type(exc).__name__}: {exc}"[:5000]
        client = MlflowClient(kwargs["uri"])
        run_id = close_lost_run(client, kwargs["experiment_id"], kwargs["parent_run_id"], variant, status, reason)
        return VariantResult(variant.id, run_id, status, {}, reason)
